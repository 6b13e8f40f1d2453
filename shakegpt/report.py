"""Turn finished (or running, or failed) runs into a publishable report.

    python -m shakegpt.report outputs/sweeps/<sweep> [more folders] [--out DIR]

writes report.md, loss_curves.png, scaling.png, results.csv (a row per run) and curves.csv (a row per run and
evaluation). It reads only what runs wrote into their folders (see shakegpt.rundir): run.json, metrics.csv,
samples/final.txt and .hydra/overrides.yaml.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from shakegpt.errors import ShakeGPTError  # noqa: E402
from shakegpt.rundir import METRICS, RUN_RECORD, SAMPLES, read_metrics, read_record  # noqa: E402

log = logging.getLogger(__name__)


@dataclass
class Run:
    folder: Path
    label: str
    record: dict[str, Any]
    evals: list[tuple[int, float, float]] = field(default_factory=list)  # step, train loss, val loss
    sample: str | None = None

    @property
    def status(self) -> str:
        return self.record.get("status", "failed before training (see its train.log)")

    @property
    def best(self) -> tuple[int, float] | None:
        if not self.evals:
            return None
        step, _, val = min(self.evals, key=lambda row: row[2])
        return step, val


def is_run(folder: Path) -> bool:
    return (folder / RUN_RECORD).is_file() or (folder / METRICS).is_file() or (folder / ".hydra").is_dir()


def natural_order(folder: Path) -> list[str | int]:
    """Sorts model.n_layer=2 before model.n_layer=12: numbers in the path compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(folder))]


def find_runs(folders: list[Path]) -> list[Path]:
    """The run folders at or below the given folders, in order."""
    runs: list[Path] = []
    for folder in folders:
        if not folder.is_dir():
            raise ShakeGPTError(f"{folder} is not a folder")
        if is_run(folder):
            runs.append(folder)
        else:
            runs.extend(sorted((path.parent for path in folder.rglob(".hydra") if path.is_dir()), key=natural_order))
    if not runs:
        raise ShakeGPTError(
            f"no runs in {', '.join(map(str, folders))}: a run folder holds .hydra/, run.json or metrics.csv "
            "(give a run folder, or a sweep folder under outputs/sweeps/)"
        )
    return runs


def _label(folder: Path, record: dict[str, Any]) -> str:
    if record.get("label"):
        return record["label"]
    overrides = folder / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        lines = [line.removeprefix("- ").strip() for line in overrides.read_text().splitlines()]
        kept = [line for line in lines if line and not line.startswith("hydra.")]
        if kept:
            return ",".join(kept)
    return folder.name


def load_run(folder: Path) -> Run:
    record = read_record(folder / RUN_RECORD)
    run = Run(folder, _label(folder, record), record)
    run.evals = [(row.step, row.train_loss, row.val_loss) for row in read_metrics(folder / METRICS)]
    sample = folder / SAMPLES / "final.txt"
    if sample.is_file():
        run.sample = sample.read_text(encoding="utf-8")
    return run


def summary(run: Run, out: Path) -> dict[str, Any]:
    """One row of the results table."""
    first = run.evals[0] if run.evals else None
    last = run.evals[-1] if run.evals else None
    best = run.best
    return {
        "run": run.label,
        "n_layer": run.record.get("n_layer"),
        "n_head": run.record.get("n_head"),
        "parameters": run.record.get("parameters"),
        "steps": run.record.get("steps", last[0] if last else None),
        "train_loss_0": first[1] if first else None,
        "val_loss_0": first[2] if first else None,
        "last_step": last[0] if last else None,
        "train_loss_last": last[1] if last else None,
        "val_loss_last": last[2] if last else None,
        "best_val_loss": best[1] if best else None,
        "best_step": best[0] if best else None,
        "wall_s": run.record.get("wall_s"),
        "tokens_per_s": run.record.get("tokens_per_s"),
        "device": run.record.get("device"),
        "precision": run.record.get("precision"),
        "status": run.status,
        "folder": os.path.relpath(run.folder, out),
    }


def _fmt(value: Any, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return format(value, spec)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m {secs:02d}s"


def shorten_labels(runs: list[Run]) -> list[str]:
    """Drops the overrides every run shares from the labels; returns those shared overrides."""
    parts = [run.label.split(",") for run in runs]
    shared = [p for p in parts[0] if all(p in other for other in parts[1:])] if len(runs) > 1 else []
    for run, run_parts in zip(runs, parts, strict=True):
        run.label = ",".join(p for p in run_parts if p not in shared) or run.label
    return shared


def markdown(runs: list[Run], rows: list[dict[str, Any]], shared: list[str]) -> str:
    lines = ["# shakegpt report", ""]
    if shared:
        lines += [f"Every run: `{' '.join(shared)}`.", ""]
    lines += [
        "| run | n_layer | n_head | parameters | steps | step 0 train / val | last train / val | best val (step) "
        "| wall time | tokens/s | device | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        params = f"{row['parameters'] / 1e6:.6f} M" if row["parameters"] else "–"
        device = f"{row['device']} ({row['precision']})" if row["device"] else "–"
        lines.append(
            f"| `{row['run']}` | {_fmt(row['n_layer'])} | {_fmt(row['n_head'])} | {params} | {_fmt(row['steps'])} "
            f"| {_fmt(row['train_loss_0'], '.4f')} / {_fmt(row['val_loss_0'], '.4f')} "
            f"| {_fmt(row['train_loss_last'], '.4f')} / {_fmt(row['val_loss_last'], '.4f')} "
            f"| {_fmt(row['best_val_loss'], '.4f')} ({_fmt(row['best_step'])}) | {_duration(row['wall_s'])} "
            f"| {_fmt(row['tokens_per_s'], ',')} | {device} | {row['status']} |"
        )
    lines += ["", "![loss curves](loss_curves.png)", "", "![best val loss against parameters](scaling.png)", ""]
    for run in runs:
        lines += [f"## `{run.label}`", ""]
        if run.record.get("error"):
            lines += [f"Failed: `{run.record['error']}`", ""]
        if run.evals:
            best_step = run.best[0]
            lines += ["| step | train loss | val loss |", "|---:|---:|---:|"]
            for step, train, val in run.evals:
                mark = " **← best val**" if step == best_step else ""
                lines.append(f"| {step} | {train:.4f} | {val:.4f}{mark} |")
            lines.append("")
        if run.sample is not None:
            lines += ["500 new characters after training:", "", "```text", run.sample.strip("\n"), "```", ""]
    return "\n".join(lines)


def plot_losses(runs: list[Run], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for i, run in enumerate(run for run in runs if run.evals):
        steps = [row[0] for row in run.evals]
        color = f"C{i % 10}"
        ax.plot(steps, [row[2] for row in run.evals], "-", color=color, marker=".", label=f"{run.label} val")
        ax.plot(steps, [row[1] for row in run.evals], "--", color=color, label=f"{run.label} train")
    ax.set(xlabel="step", ylabel="loss (nats per character)", title="Loss: val solid, train dashed")
    ax.grid(alpha=0.3)
    # Beside the curves, not over them: a report over several sweeps has many runs.
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_scaling(runs: list[Run], path: Path) -> None:
    points = [
        (run.record["parameters"], run.best[1], run.label) for run in runs if run.best and run.record.get("parameters")
    ]
    fig, ax = plt.subplots(figsize=(7, 5))
    for params, best, label in points:
        ax.scatter(params, best, s=40)
        ax.annotate(label, (params, best), textcoords="offset points", xytext=(5, 5), fontsize="small")
    ax.set_xscale("log")
    ax.set(xlabel="parameters", ylabel="best val loss", title="Best val loss against model size")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_runs(folders: list[Path]) -> list[Run]:
    return [load_run(folder) for folder in find_runs(folders)]


def render(runs: list[Run], out: Path) -> Path:
    """Write report.md, the plots and results.csv for runs into out; returns report.md."""
    shared = shorten_labels(runs)
    out.mkdir(parents=True, exist_ok=True)
    rows = [summary(run, out) for run in runs]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with (out / "curves.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "step", "train_loss", "val_loss"])
        for run in runs:
            writer.writerows([run.label, step, f"{train:.6f}", f"{val:.6f}"] for step, train, val in run.evals)
    plot_losses(runs, out / "loss_curves.png")
    plot_scaling(runs, out / "scaling.png")
    report = out / "report.md"
    report.write_text(markdown(runs, rows, shared), encoding="utf-8")
    return report


def write_report(folders: list[Path], out: Path | None = None) -> Path:
    """Write the report for the runs in folders into out (default: the first folder); returns report.md."""
    return render(load_runs(folders), out or folders[0])


class SweepReport(Callback):
    """A Hydra callback: when a sweep ends, writes its report into the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = Path(config.hydra.sweep.dir)
        try:
            runs = load_runs([sweep])
            log.info("Report: %s", render(runs, sweep))
        except (ShakeGPTError, OSError, ValueError) as err:  # a report must never fail the sweep itself
            log.warning("No sweep report: %s", err)
            return
        failed = [run.label for run in runs if run.status != "finished"]
        if failed:
            log.warning("%d job(s) did not finish: %s (see report.md)", len(failed), "; ".join(failed))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shakegpt.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep or run folders")
    parser.add_argument("--out", type=Path, help="where to write (default: the first folder)")
    args = parser.parse_args(argv)
    try:
        print(write_report(args.folders, args.out))
    except ShakeGPTError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
