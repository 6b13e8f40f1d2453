"""The launch plumbing: sweep job names, pasted folders, SLURM requeues, in-process; --help and completion."""

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from shakegpt.launch import help_text, quote_path_overrides, restarted_by_slurm
from shakegpt.resolvers import SWEPT_KEYS, SweptKeys, job_name

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
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "train"), version_base="1.3"):
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


COMMANDS = ("train", "generate", "evaluate")

# Hydra's own `--help` of each command, with an override, in a process of its own (Hydra configures logging).
HYDRAS_HELP = """
import sys, hydra
from shakegpt.config_dir import config_dir
from shakegpt.launch import HYDRA_VERSION_BASE
for name in sys.argv[1:]:
    sys.argv = [name, "--help", "seed=7"]
    try:
        hydra.main(version_base=HYDRA_VERSION_BASE, config_path=config_dir(name), config_name=name)(print)()
    except SystemExit:
        print("\\f", flush=True)
"""


# What a command loads before it answers --help or a TAB; then a config that needs every resolver conf/ uses,
# which Hydra resolves before any job runs (a SLURM launcher's GPUs), with nothing more loaded.
LIGHT = """
import sys
import shakegpt.train, shakegpt.generate, shakegpt.evaluate, shakegpt.report
print(*(name for name in ("torch", "lightning", "matplotlib") if name in sys.modules), sep=",")
from hydra import compose, initialize_config_dir
from shakegpt.config_dir import config_dir
from shakegpt.launch import HYDRA_VERSION_BASE
with initialize_config_dir(config_dir=config_dir("train"), version_base=HYDRA_VERSION_BASE):
    cfg = compose("train", ["hydra/launcher=slurm", "hardware=cuda", "hardware.devices=2"], return_hydra_config=True)
print(cfg.hydra.launcher.gpus_per_node, cfg.trainer.num_nodes)
"""


def test_help_is_hydras_own_text_and_the_commands_start_without_torch_or_lightning():
    hydras = subprocess.run(
        [sys.executable, "-c", HYDRAS_HELP, *COMMANDS], capture_output=True, text=True, check=True
    ).stdout.split("\f\n")
    for name, expected in zip(COMMANDS, hydras, strict=False):
        assert help_text(name, ["seed=7"]) + "\n" == expected, name
    assert "\nseed: 7\n" in hydras[0]  # the composed config, which training's help shows
    loaded = subprocess.run([sys.executable, "-c", LIGHT], capture_output=True, text=True, check=True).stdout
    assert loaded.splitlines() == ["", "2 1"]


def completions(command: str, line: str) -> list[str]:
    """What bash's TAB offers after `line` (Hydra's completion, as `-sc install=bash` sets it up)."""
    executable = Path(sys.executable).parent / f"shakegpt-{command}"
    env = {**os.environ, "COMP_LINE": f"shakegpt-{command} {line}"}
    return subprocess.run(
        [executable, "-sc", "query=bash"], env=env, capture_output=True, text=True, check=True
    ).stdout.split()


def test_each_command_completes_only_what_it_accepts():
    assert {"experiment=", "optimizer=", "hardware=", "data="} <= set(completions("train", ""))
    assert not {"ckpt_path=", "mnist", "mnist/"} & set(completions("train", ""))
    assert {"ckpt_path=", "prompt=", "kv_cache="} <= set(completions("generate", ""))
    assert not {"experiment=", "model=", "data=", "hardware="} & set(completions("generate", ""))
    assert {"ckpt_path=", "eval_batches=", "hardware=", "data="} <= set(completions("evaluate", ""))
    assert not {"experiment=", "optimizer=", "trainer="} & set(completions("evaluate", ""))
    assert "hardware=cuda" in completions("evaluate", "hardware=")
