"""The launch plumbing, in-process: pasted folders, SLURM requeues."""

from shakegpt.launch import quote_path_overrides, restarted_by_slurm


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
