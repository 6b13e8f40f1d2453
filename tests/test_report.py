"""Reports built from real runs written by the training entry point."""

import csv

import pytest

from shakegpt.errors import ShakeGPTError
from shakegpt.report import find_runs, write_report
from shakegpt.report import main as report_main
from shakegpt.rundir import EvalRow, write_metrics, write_record

from .conftest import TINY, run_module


@pytest.mark.slow  # the sweep fixture: a real sweep
def test_sweep_end_writes_a_report_with_a_row_per_job(sweep):
    folder, _ = sweep
    report = (folder / "report.md").read_text()
    assert "Every run: `experiment=smoke hardware=cpu`." in report
    rows = [line for line in report.splitlines() if line.startswith("| `model.n_layer=")]
    assert len(rows) == 3
    assert "| 0.036065 M | 20 |" in rows[0] and rows[0].endswith("| finished |")
    assert "failed" in rows[2]
    assert "not divisible" in report  # the failed job's reason
    assert "**← best val**" in report and "```text" in report
    for png in ("loss_curves.png", "scaling.png"):
        assert (folder / png).stat().st_size > 10_000


@pytest.mark.slow  # the sweep fixture: a real sweep
def test_results_csv_holds_the_table(sweep, tmp_path):
    folder, _ = sweep
    write_report([folder], tmp_path)
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["run"] for row in rows] == [f"model.n_layer={n}" for n in (1, 2, 5)]
    assert [row["status"] for row in rows] == ["finished", "finished", "failed"]
    assert int(rows[1]["parameters"]) == 64_193
    assert float(rows[0]["best_val_loss"]) < float(rows[0]["val_loss_0"])
    assert int(rows[0]["last_step"]) == 20 and float(rows[0]["tokens_per_s"]) > 0


@pytest.mark.slow  # the sweep fixture: a real sweep
def test_a_single_run_folder_reports_too(sweep, tmp_path):
    folder, _ = sweep
    report = write_report([folder / "model.n_layer=1"], tmp_path)
    assert "| `experiment=smoke,hardware=cpu,model.n_layer=1` |" in report.read_text()  # alone: all its overrides


def test_a_folder_without_runs_is_refused(tmp_path, capsys):
    with pytest.raises(ShakeGPTError, match="no runs in"):
        write_report([tmp_path])
    with pytest.raises(SystemExit, match="no runs in"):
        report_main([str(tmp_path)])
    assert not (tmp_path / "report.md").exists()


def test_runs_are_ordered_by_their_numbers(tmp_path):
    for n_layer in (12, 2, 6, 1):
        (tmp_path / f"model.n_layer={n_layer}" / ".hydra").mkdir(parents=True)
    assert [path.name for path in find_runs([tmp_path])] == [f"model.n_layer={n}" for n in (1, 2, 6, 12)]


def hand_made_sweep(folder, seeds, finals):
    """Run folders as a sweep over model.n_layer x seed writes them; val loss falls to finals[n_layer, seed]."""
    for (n_layer, seed), final in zip([(n, s) for n in (1, 2) for s in seeds], finals, strict=True):
        run = folder / f"model.n_layer={n_layer},seed={seed}"
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- model.n_layer={n_layer}\n- seed={seed}\n")
        write_record(run / "run.json", status="finished", parameters=1000 * n_layer, n_layer=n_layer)
        rows = [EvalRow(0, 4.2, 4.2, 0.0), EvalRow(10, final + 0.1, final - 0.1, 1.0), EvalRow(20, final, final, 2.0)]
        write_metrics(run / "metrics.csv", rows)


def test_an_interrupted_run_is_reported_as_resumable_and_a_failed_one_as_failed(tmp_path):
    for name, status, error in [
        ("a", "interrupted", "Interrupted: interrupted by SIGTERM at step 734"),
        ("b", "failed", "RuntimeError: out of memory"),
    ]:
        run = tmp_path / name
        (run / ".hydra").mkdir(parents=True)
        write_record(run / "run.json", status=status, error=error, steps=734)
        write_metrics(run / "metrics.csv", [EvalRow(0, 4.2, 4.2, 0.0), EvalRow(500, 2.0, 2.1, 1.0)])
    text = write_report([tmp_path]).read_text()
    assert "Interrupted at step 734; `resume=true` continues it." in text and "SIGTERM" not in text
    assert "Failed: `RuntimeError: out of memory`" in text


def test_runs_differing_only_by_seed_are_reported_as_groups(tmp_path):
    finals = [2.0, 2.2, 2.4, 1.5, 1.6, 1.7]  # n_layer 1: seeds 1-3, then n_layer 2: seeds 1-3
    hand_made_sweep(tmp_path, (1, 2, 3), finals)
    report = write_report([tmp_path]).read_text()
    assert "| `model.n_layer=1` | 3 | 2.1000 ± 0.2000 | 3.0297 ± 0.2885 | 2.2000 ± 0.2000 |" in report
    assert "| `model.n_layer=2` | 3 | 1.5000 ± 0.1000 |" in report
    with (tmp_path / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["kind"] for row in rows] == ["run"] * 6 + ["group"] * 2
    assert [row["run"] for row in rows[-2:]] == ["model.n_layer=1", "model.n_layer=2"]
    assert float(rows[-1]["best_val_loss"]) == pytest.approx(1.5) and rows[-1]["n"] == "3"
    assert float(rows[-1]["val_loss_last_std"]) == pytest.approx(0.1)


def test_one_seed_per_setting_reports_as_before(tmp_path):
    hand_made_sweep(tmp_path, (1,), [2.0, 1.5])
    report = write_report([tmp_path]).read_text()
    assert "Over seeds" not in report
    assert "| 1.9000 (2.7411 bpc, step 10) |" in report  # best val 1.9 at step 10, in nats and bits
    with (tmp_path / "results.csv").open() as f:
        assert [row["kind"] for row in csv.DictReader(f)] == ["run", "run"]


def test_a_report_over_several_sweeps_labels_runs_by_all_that_differs(tmp_path):
    """Job folders (and run.json labels) name only what their sweep varies: two sweeps over model.n_layer at
    two learning rates have the same names, which the report tells apart by the overrides that differ."""
    for lr in ("1e-3", "3e-4"):
        for n_layer in (1, 2):
            run = tmp_path / f"sweep_lr{lr}" / f"model.n_layer={n_layer}"
            overrides = f"experiment=smoke,model.n_layer={n_layer},optimizer.lr={lr}"
            (run / ".hydra").mkdir(parents=True)
            write_record(run / "run.json", status="finished", label=run.name, overrides=overrides)
            write_metrics(run / "metrics.csv", [EvalRow(0, 4.2, 4.2, 0.0), EvalRow(10, 3.0, 3.1, 1.0)])
    report = write_report([tmp_path]).read_text()
    assert "Every run: `experiment=smoke`." in report
    for lr in ("1e-3", "3e-4"):
        for n_layer in (1, 2):
            assert f"| `model.n_layer={n_layer},optimizer.lr={lr}` |" in report


@pytest.mark.slow  # a real sweep over two seeds
def test_a_real_sweep_over_seeds_reports_its_group(tmp_path):
    folder = tmp_path / "sweep"
    proc = run_module("shakegpt.train", "-m", *TINY, "seed=1,2", f"hydra.sweep.dir={folder}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (folder / "report.md").read_text()
    (row,) = [line for line in report.splitlines() if line.startswith("| `every seed` | 2 |")]
    with (folder / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["kind"] for row in rows] == ["run", "run", "group"]
    best = [float(row["best_val_loss"]) for row in rows]
    assert best[2] == pytest.approx((best[0] + best[1]) / 2) and best[0] != best[1]  # seeds differ, mean reported
    assert f"{best[2]:.4f} ± " in row
