"""Reports built from real runs written by the training entry point."""

import csv

import pytest

from shakegpt.errors import ShakeGPTError
from shakegpt.report import find_runs, write_report
from shakegpt.report import main as report_main


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


def test_a_single_run_folder_reports_too(sweep, tmp_path):
    folder, _ = sweep
    report = write_report([folder / "experiment=smoke,hardware=cpu,model.n_layer=1"], tmp_path)
    assert "| `experiment=smoke,hardware=cpu,model.n_layer=1` |" in report.read_text()


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
