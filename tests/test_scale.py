"""Scaling out: DDP (also inside a sweep), launchers, Optuna, resumed sweeps, checkpoints that are not ours."""

import json
import math
import re
import subprocess

import pytest
import torch
from omegaconf import OmegaConf

from shakegpt.errors import ShakeGPTError
from shakegpt.hardware import check_accelerator

from .conftest import TINY, run_module

# Real DDP runs, sweeps and launchers, in subprocesses: seconds each (`pytest -m "not slow"` leaves them out).
pytestmark = pytest.mark.slow


def job_records(sweep) -> dict[str, dict]:
    return {path.parent.name: json.loads(path.read_text()) for path in sweep.glob("*/run.json")}


def leftover_processes(marker: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


def test_ddp_inside_a_multirun_runs_each_job_once_in_its_own_folder(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_module(
        "shakegpt.train", "-m", *TINY, "trainer=ddp", "hardware.devices=2", "model.n_layer=1,2",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = job_records(sweep)
    assert sorted(records) == [f"model.n_layer={n}" for n in (1, 2)]
    for name, record in records.items():
        assert record["status"] == "finished" and record["world_size"] == 2
        assert record["n_layer"] == int(name.split("model.n_layer=")[1][0])
        assert (sweep / name / "train_ddp_process_1.log").is_file()  # rank 1 ran in this job's folder
    assert len(re.findall(r"step 20:", proc.stdout)) == 2  # two jobs, each reported once, by rank 0
    assert not (tmp_path / "outputs").exists()  # no rank re-ran the sweep elsewhere
    assert leftover_processes(str(sweep)) == []


def test_resume_skips_the_finished_jobs_of_a_sweep(sweep):
    folder, _ = sweep
    before = {
        name: (folder / name / "metrics.csv").read_text() for name in job_records(folder) if "n_layer=5" not in name
    }
    proc = run_module(
        "shakegpt.train",
        "-m",
        *TINY,
        "model.n_layer=1,2,5",
        f"hydra.sweep.dir={folder}",
        "resume=true",
        cwd=folder.parent,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(re.findall(r"finished already; skipped", proc.stdout + proc.stderr)) == 2
    assert {name: (folder / name / "metrics.csv").read_text() for name in before} == before
    assert sorted(job_records(folder)) == sorted([*before, "model.n_layer=5"])  # no new folders


def test_optuna_search_records_failed_and_diverged_trials_and_goes_on(tmp_path):
    sweep = tmp_path / "search"
    proc = run_module(
        "shakegpt.train", "hparams_search=optuna", *TINY, "hydra.sweeper.n_trials=4", "model.n_layer=choice(1,5)",
        "optimizer.lr=choice(3e-4,1e6)", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    statuses = [record["status"] for record in job_records(sweep).values()]
    assert len(statuses) == 4 and "finished" in statuses and "failed" in statuses
    errors = " ".join(record.get("error") or "" for record in job_records(sweep).values())
    assert "diverged" in errors or "not divisible" in errors
    best = OmegaConf.load(sweep / "optimization_results.yaml").best_value
    assert 3.0 < best < math.log(65)  # a finished trial's val loss, below guessing uniformly


@pytest.mark.parametrize("launcher", ["submitit_local", "joblib"])
def test_launchers_run_the_jobs_of_a_sweep(tmp_path, launcher):
    sweep = tmp_path / "sweep"
    proc = run_module(
        "shakegpt.train", "-m", f"hydra/launcher={launcher}", *TINY, "model.n_layer=1,2", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = job_records(sweep)
    assert len(records) == 2 and all(record["status"] == "finished" for record in records.values())
    # Each job ran in a process of its own, not the one that launched the sweep.
    pids = {path.name.split(".")[-2] for path in sweep.glob("*/events.out.tfevents.*")}
    assert len(pids) == 2 if launcher == "submitit_local" else len(pids) >= 1
    assert (sweep / "report.md").is_file()


def test_cuda_where_there_is_none_is_refused():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ShakeGPTError, match="hardware=cuda was asked for"):
        check_accelerator("cuda")


def test_an_output_folder_that_cannot_be_created_is_refused(tmp_path):
    (tmp_path / "a-file").write_text("")
    proc = run_module("shakegpt.train", *TINY, f"hydra.run.dir={tmp_path / 'a-file' / 'run'}", cwd=tmp_path)
    assert proc.returncode == 1
    assert "cannot create the output folder" in proc.stderr and "Traceback" not in proc.stderr
