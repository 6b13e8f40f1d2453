"""The launch plumbing, in-process: sweep job names, pasted folders, SLURM requeues."""

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from shakegpt.launch import SWEPT_KEYS, SweptKeys, job_name, quote_path_overrides, restarted_by_slurm

from .conftest import ROOT


def test_pasted_folders_are_quoted_for_hydra_in_the_settings_that_take_one():
    job = "outputs/sweeps/s/model.n_layer=2,seed=1"
    argv = ["train", f"resume={job}", f"ckpt_path={job}", "resume=true", "model.n_layer=1,2", "ckpt_path='a=b'"]
    assert quote_path_overrides(argv) == [
        "train", f"resume='{job}'", f"ckpt_path='{job}'", "resume=true", "model.n_layer=1,2", "ckpt_path='a=b'"
    ]  # fmt: skip


def test_a_job_is_restarted_by_slurm_only_when_slurm_says_so(monkeypatch):
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert not restarted_by_slurm()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")
    assert not restarted_by_slurm()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    assert restarted_by_slurm()


def sweep_job(sweep_dir, job_overrides, sweep_overrides=None, mode="MULTIRUN", search=()):
    """The name a job gets: SweptKeys runs once as the sweep starts (given sweep_overrides), then job_name in
    the job, as Hydra's launchers do, with the job's own overrides."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        config = compose(
            "train",
            overrides=[*search, *job_overrides, f"hydra.sweep.dir={sweep_dir}", f"hydra.mode={mode}"],
            return_hydra_config=True,
        )
    if sweep_overrides is not None:
        with open_dict(config):
            config.hydra.overrides.task = sweep_overrides
        SweptKeys().on_multirun_start(config=config)
        config.hydra.overrides.task = [*search, *job_overrides]
    HydraConfig.instance().set_config(config)
    try:
        return job_name()
    finally:
        HydraConfig.instance().cfg = None  # as it was: the other tests compose outside any Hydra app


def test_sweep_jobs_are_named_by_what_the_sweep_varies(tmp_path):
    job = ["model.n_layer=2", "hardware=cpu", "seed=1"]
    name = sweep_job(tmp_path, job, ["model.n_layer=1,2", "hardware=cpu", "seed=range(1,3)"])
    assert name == "model.n_layer=2,seed=1"
    assert (tmp_path / SWEPT_KEYS).read_text() == "model.n_layer\nseed\n"
    # Continuing one job of the sweep (resume=true with one value each) finds its folder.
    assert sweep_job(tmp_path, job, job) == "model.n_layer=2,seed=1"


def test_optuna_trials_are_named_by_the_values_searched(tmp_path):
    trial = ["model.dropout=0.1", "optimizer.lr=0.001"]
    assert sweep_job(tmp_path, trial, [], search=["hparams_search=optuna"]) == "model.dropout=0.1,optimizer.lr=0.001"


def test_jobs_are_named_by_all_their_overrides_where_nothing_varies_or_the_folder_exists(tmp_path):
    job = ["experiment=exp3", "hardware=cpu"]
    assert sweep_job(tmp_path / "a", job, job) == "experiment=exp3,hardware=cpu"  # scripts/reproduce.sh's rows
    # A sweep started by an earlier version, whose job folders are named by all the overrides, is continued there.
    job, all_overrides = ["hardware=cpu", "model.n_layer=2"], "hardware=cpu,model.n_layer=2"
    (tmp_path / "b" / all_overrides).mkdir(parents=True)
    assert sweep_job(tmp_path / "b", job, ["hardware=cpu", "model.n_layer=1,2"]) == all_overrides
    assert sweep_job(tmp_path / "c", job, mode="RUN") == all_overrides
