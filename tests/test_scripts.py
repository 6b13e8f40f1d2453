"""The scripts a user or a reader of docs/ runs, each run at a tiny size: what they print and what they write."""

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from shakegpt.hardware import cpu_precision

from .conftest import ROOT

# Real processes of seconds to minutes each (`pytest -m "not slow"` leaves them out).
pytestmark = pytest.mark.slow

CONTENDERS = {
    "memory": {"reference", "model", "lightning"},
    "gemm": {"fp32", "bf16"},
    "batch": {"reference", "model"},
    "train": {"reference", "model", "lightning", "gemms_only"},
    "eval": {"reference", "model", "lightning", "gemms_only"},
    "generate": {"recompute", "model_recompute", "kv_exact", "kv_fast"},
}


def script(name: str, *args: str, cwd: Path = ROOT, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(ROOT / "scripts" / name), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def json_rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_bench_reports_a_crashing_contender_as_a_crash_and_measures_the_others():
    # A Trainer flag Lightning refuses: only the contender that builds the real path crashes. The reference,
    # not asked for, is neither timed nor probed for memory.
    tiny = ["--layers", "1", "--rounds", "1", "--steps", "1", "--eval-batches", "2"]
    asked = ["--contenders", "model", "lightning", "--skip", "batch", "generate", "gemm", "eval"]
    proc = script("bench.py", *tiny, *asked, "--json", "--", "trainer.profiler=x")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {(row["kind"], row["contender"]): row for row in json_rows(proc.stdout)}
    assert set(rows) == {(kind, name) for kind in ("memory", "train") for name in ("model", "lightning")}
    memory, train = rows["memory", "lightning"], rows["train", "lightning"]
    assert memory["peak_mb"] is None and memory["error"].startswith("crashed: ") and "profiler" in memory["error"]
    assert "\n" not in train["error"] and "profiler" in train["error"]
    assert rows["memory", "model"]["peak_mb"] > 0 and rows["train", "model"]["tokens_per_s"] > 0


def test_bench_table_says_when_the_machines_matmul_speed_moved(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    bench = importlib.import_module("bench")
    gemm = {"kind": "gemm", "n_layer": None, "measurements": 5}
    rows = [
        {**gemm, "contender": "fp32", "gflops": 250.0, "slowest_gflops": 240.0},
        {**gemm, "contender": "bf16", "gflops": 1900.0, "slowest_gflops": 650.0},
    ]
    bench.print_table(rows, argparse.Namespace(hardware="cpu", rounds=3), torch.device("cpu"))
    out = capsys.readouterr().out
    assert "1900.0 GFLOP/s (best of 5, the slowest 650.0)" in out
    [note] = [line for line in out.splitlines() if line.startswith("note:")]
    assert note.startswith("note: bf16 products ran at 650 to 1,900 GFLOP/s in this run")


def test_profile_step_accounts_for_a_real_training_step():
    proc = script("profile_step.py", "--layers", "1", "--steps", "1", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [row] = json_rows(proc.stdout)
    per_kind = row["ms_per_step"]
    assert set(per_kind) >= {"matmuls", "dropout", "optimizer", "Lightning and Python"}
    assert per_kind["matmuls"] > 0 and sum(per_kind.values()) > per_kind["matmuls"]


@pytest.fixture(scope="module")
def gpu_check(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The GPU check prepared here and rehearsed on this CPU, as the README says: (its files, the process)."""
    prepared = script("gpu_check.py", "prepare")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert "MB of the 64 MB that travel" in prepared.stdout
    out = tmp_path_factory.mktemp("gpu_check")
    return out, script("gpu_check.py", "dry-run", "--out", str(out))


def test_gpu_check_dry_run_passes_every_step_and_returns_at_most_eight_files(gpu_check):
    out, proc = gpu_check
    assert proc.returncode == 0, proc.stdout[-5000:]
    summary = json.loads((out / "summary.json").read_text())
    steps = {step["step"]: step["status"] for step in summary["steps"]}
    assert set(steps.values()) == {"passed"}, steps
    assert any("resume=true" in name for name in steps) and any("seeds" in name for name in steps)
    assert "/site/" in summary["machine"]["hydra_from"]  # Hydra from the prepared wheels, not this venv
    assert sorted(path.name for path in out.iterdir()) == [
        "bench_gpu.jsonl", "gpu_check.log", "results.tar.gz", "summary.json", "summary.md",
    ]  # fmt: skip
    assert "passed, 0 failed" in (out / "summary.md").read_text()


def test_gpu_check_bench_measures_every_contender_and_kind(gpu_check):
    out, _ = gpu_check
    rows = [json.loads(line) for line in (out / "bench_gpu.jsonl").read_text().splitlines()]
    assert not [row for row in rows if row.get("error") or row.get("skipped")]
    plain = [row for row in rows if not row["overrides"]]
    found = {kind: {row["contender"] for row in plain if row["kind"] == kind} for kind in CONTENDERS}
    expected = {kind: set(names) for kind, names in CONTENDERS.items()}
    if cpu_precision() != "32-true":  # the mixed precision against fp32
        expected["train"].add("model_fp32")
        expected["eval"].add("model_fp32")
    assert found == expected
    for row in plain:
        figure = {"memory": "peak_mb", "gemm": "gflops", "batch": "windows_per_s"}.get(row["kind"], "tokens_per_s")
        assert row[figure] > 0, row
    for row in (row for row in plain if row["kind"] == "gemm"):  # at the start and before each round
        assert row["measurements"] >= 3 and 0 < row["slowest_gflops"] <= row["gflops"], row
    compiled = [row for row in rows if row["overrides"] == ["hardware.compile=true"]]
    assert {row["contender"] for row in compiled if row["kind"] == "train"} == expected["train"]


def test_gpu_check_results_unpack_into_docs(gpu_check, tmp_path):
    out, _ = gpu_check
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    for row in ("exp1", "exp2", "exp3", "exp4", "exp5"):
        assert f"results/{row}/report.md" in names and f"table/{row}" in names
    assert "results/exp2/seeds/report.md" in names and "results/README.md" in names
    assert not [name for name in names if "checkpoints" in name or name.endswith(".ckpt")]

    docs = tmp_path / "docs"
    (docs / "results").mkdir(parents=True)
    (docs / "results" / "original.csv").write_bytes((ROOT / "docs" / "results" / "original.csv").read_bytes())
    shutil.copytree(ROOT / "docs" / "results" / "exp1", docs / "results" / "exp1")  # reached step 99
    proc = script("gpu_check.py", "unpack", str(out), "--docs", str(docs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exp1: kept" in proc.stdout and "exp5: taken" in proc.stdout
    assert (docs / "results" / "exp1" / "report.md").read_bytes() == (ROOT / "docs/results/exp1/report.md").read_bytes()
    assert (docs / "results" / "exp5" / "report.md").is_file() and (docs / "bench_gpu.jsonl").is_file()
    table = (docs / "results" / "README.md").read_text()
    assert "| exp4 | 0 |" in table and "exp2, exp3, exp4, exp5 on cpu" in table
