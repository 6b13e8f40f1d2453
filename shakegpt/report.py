"""Turn finished (or running, or failed) runs into a publishable report.

    python -m shakegpt.report outputs/sweeps/<sweep> [more folders] [--out DIR]

writes report.md, loss_curves.png, scaling.png, results.csv (a row per run) and curves.csv (a row per run and
evaluation). It reads only what runs wrote into their folders (see shakegpt.rundir): run.json, metrics.csv,
samples/final.txt and .hydra/overrides.yaml.

Runs that differ only by their seed (`-m model.n_layer=1,2 seed=1,2,3`) form a group: the report adds each
group's mean, standard deviation and count of the best and final val loss, the plots show a group's mean with
a band (loss curves) or error bars (scaling), and results.csv gets a row per group after the rows per run.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from shakegpt.errors import ShakeGPTError
from shakegpt.rundir import (
    FINAL_SAMPLE,
    METRICS,
    RUN_RECORD,
    SAMPLES,
    RunStatus,
    bits_per_char,
    read_metrics,
    read_record,
)

log = logging.getLogger(__name__)


@dataclass
class Run:
    folder: Path
    label: str
    record: dict[str, Any]
    overrides: list[str] = field(default_factory=list)
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


def _overrides(folder: Path, record: dict[str, Any]) -> list[str]:
    """The run's overrides: run.json's, else those in .hydra/overrides.yaml (a run that failed before it
    started)."""
    if record.get("overrides"):
        return record["overrides"].split(",")
    overrides = folder / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        lines = [line.removeprefix("- ").strip() for line in overrides.read_text().splitlines()]
        return [line for line in lines if line and not line.startswith("hydra.")]
    return []


def load_run(folder: Path) -> Run:
    record = read_record(folder / RUN_RECORD)
    overrides = _overrides(folder, record)
    run = Run(folder, ",".join(overrides) or folder.name, record, overrides)
    run.evals = [(row.step, row.train_loss, row.val_loss) for row in read_metrics(folder / METRICS)]
    sample = folder / SAMPLES / FINAL_SAMPLE
    if sample.is_file():
        run.sample = sample.read_text(encoding="utf-8")
    return run


SEED = re.compile(r"^seed=")


def group_label(label: str) -> str:
    """A run's label less its seed: runs with the same group label differ only by seed."""
    return ",".join(part for part in label.split(",") if not SEED.match(part)) or "every seed"


@dataclass
class Group:
    label: str
    runs: list[Run]

    def values(self, pick: Any) -> list[float]:
        return [pick(run) for run in self.runs if run.evals]

    @property
    def best(self) -> list[float]:
        return self.values(lambda run: run.best[1])

    @property
    def final(self) -> list[float]:
        return self.values(lambda run: run.evals[-1][2])


def seed_groups(runs: list[Run]) -> list[Group]:
    """The groups of runs that differ only by seed, in the runs' order; none when every group has one run."""
    groups: dict[str, Group] = {}
    for run in runs:
        groups.setdefault(group_label(run.label), Group(group_label(run.label), [])).runs.append(run)
    return list(groups.values()) if any(len(group.runs) > 1 for group in groups.values()) else []


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summary(run: Run, out: Path) -> dict[str, Any]:
    """One row of the results table."""
    first = run.evals[0] if run.evals else None
    last = run.evals[-1] if run.evals else None
    best = run.best
    return {
        "kind": "run",
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
        "best_val_bpc": bits_per_char(best[1]) if best else None,
        "best_step": best[0] if best else None,
        "n": None,
        "best_val_loss_std": None,
        "val_loss_last_std": None,
        "wall_s": run.record.get("wall_s"),
        "tokens_per_s": run.record.get("tokens_per_s"),
        "device": run.record.get("device"),
        "precision": run.record.get("precision"),
        "status": run.status,
        "folder": os.path.relpath(run.folder, out),
    }


def group_summary(group: Group) -> dict[str, Any]:
    """A group's row of results.csv: the mean and standard deviation of its runs' best and final val loss."""
    best, best_std = mean_std(group.best)
    final, final_std = mean_std(group.final)
    row: dict[str, Any] = dict.fromkeys(summary(group.runs[0], Path()), None)
    return {
        **row,
        "kind": "group",
        "run": group.label,
        "val_loss_last": final,
        "best_val_loss": best,
        "best_val_bpc": bits_per_char(best) if best is not None else None,
        "n": len(group.best),
        "best_val_loss_std": best_std,
        "val_loss_last_std": final_std,
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
    """Labels the runs by the overrides that tell them apart (in one sweep, the values it varies, its job folder
    names; over several sweeps, what else differs too); returns the overrides every run shares."""
    first, *others = [run.overrides for run in runs]
    shared = [p for p in first if all(p in other for other in others)] if others else []
    for run in runs:
        run.label = ",".join(p for p in run.overrides if p not in shared) or run.label
    return shared


def _plus_minus(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{mean:.4f} ± {std:.4f}"


def markdown(runs: list[Run], rows: list[dict[str, Any]], shared: list[str], groups: list[Group]) -> str:
    lines = ["# shakegpt report", ""]
    if shared:
        lines += [f"Every run: `{' '.join(shared)}`.", ""]
    if groups:
        lines += [
            "Over seeds (mean ± standard deviation over the runs that differ only by seed; bpc = nats / ln 2):",
            "",
            "| runs | n | best val | best val (bpc) | final val |",
            "|---|---:|---:|---:|---:|",
        ]
        for group in groups:
            best, best_std = mean_std(group.best)
            bpc = _plus_minus(*(None if v is None else bits_per_char(v) for v in (best, best_std)))
            lines.append(
                f"| `{group.label}` | {len(group.best)} | {_plus_minus(best, best_std)} | {bpc} "
                f"| {_plus_minus(*mean_std(group.final))} |"
            )
        lines.append("")
    lines += [
        "| run | n_layer | n_head | parameters | steps | step 0 train / val | last train / val "
        "| best val (bpc, step) | wall time | tokens/s | device | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        params = f"{row['parameters'] / 1e6:.6f} M" if row["parameters"] else "–"
        device = f"{row['device']} ({row['precision']})" if row["device"] else "–"
        lines.append(
            f"| `{row['run']}` | {_fmt(row['n_layer'])} | {_fmt(row['n_head'])} | {params} | {_fmt(row['steps'])} "
            f"| {_fmt(row['train_loss_0'], '.4f')} / {_fmt(row['val_loss_0'], '.4f')} "
            f"| {_fmt(row['train_loss_last'], '.4f')} / {_fmt(row['val_loss_last'], '.4f')} "
            f"| {_fmt(row['best_val_loss'], '.4f')} ({_fmt(row['best_val_bpc'], '.4f')} bpc, step "
            f"{_fmt(row['best_step'])}) | {_duration(row['wall_s'])} "
            f"| {_fmt(row['tokens_per_s'], ',')} | {device} | {row['status']} |"
        )
    lines += ["", "![loss curves](loss_curves.png)", "", "![best val loss against parameters](scaling.png)", ""]
    for run in runs:
        lines += [f"## `{run.label}`", ""]
        if run.status == RunStatus.INTERRUPTED:  # no failure: resume=true continues it exactly
            lines += [f"Interrupted at step {run.record.get('steps')}; `resume=true` continues it.", ""]
        elif run.record.get("error"):
            lines += [f"Failed: `{run.record['error']}`", ""]
        if run.status == RunStatus.STOPPED_EARLY:
            lines += [f"Stopped early at step {run.record.get('steps')}: {run.record.get('stop_reason')}.", ""]
        if run.evals:
            best_step = run.best[0]
            lines += ["| step | train loss | val loss | train bpc | val bpc |", "|---:|---:|---:|---:|---:|"]
            for step, train, val in run.evals:
                mark = " **← best val**" if step == best_step else ""
                bits = f"{bits_per_char(train):.4f} | {bits_per_char(val):.4f}"
                lines.append(f"| {step} | {train:.4f} | {val:.4f} | {bits}{mark} |")
            lines.append("")
        if run.sample is not None:
            lines += ["500 new characters after training:", "", "```text", run.sample.strip("\n"), "```", ""]
    return "\n".join(lines)


def bpc_axis(ax: Any) -> None:
    """A second y axis on the right, in bits per character."""
    ax.secondary_yaxis("right", functions=(bits_per_char, lambda bits: bits * math.log(2))).set_ylabel(
        "bits per character"
    )


def group_curve(group: Group, column: int) -> tuple[list[int], list[float], list[float]]:
    """Steps every run of the group evaluated at, and the mean and standard deviation of a loss there."""
    curves = [{row[0]: row[column] for row in run.evals} for run in group.runs if run.evals]
    steps = sorted(set.intersection(*(set(curve) for curve in curves))) if curves else []
    stats = [mean_std([curve[step] for curve in curves]) for step in steps]
    return steps, [mean for mean, _ in stats], [std for _, std in stats]


def pyplot() -> Any:
    """matplotlib's pyplot, drawing into files only (no display needed); loaded when a plot is drawn, so that
    `shakegpt-report --help` answers without it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_losses(runs: list[Run], path: Path, groups: list[Group]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    if groups:
        for i, group in enumerate(groups):
            color = f"C{i % 10}"
            for column, style, name in ((2, "-", "val"), (1, "--", "train")):
                steps, mean, std = group_curve(group, column)
                ax.plot(steps, mean, style, color=color, label=f"{group.label} {name} (n={len(group.best)})")
                low, high = ([m - sign * s for m, s in zip(mean, std, strict=True)] for sign in (1, -1))
                ax.fill_between(steps, low, high, color=color, alpha=0.2, linewidth=0)
        title = "Loss over seeds, mean ± std: val solid, train dashed"
    else:
        for i, run in enumerate(run for run in runs if run.evals):
            steps = [row[0] for row in run.evals]
            color = f"C{i % 10}"
            ax.plot(steps, [row[2] for row in run.evals], "-", color=color, marker=".", label=f"{run.label} val")
            ax.plot(steps, [row[1] for row in run.evals], "--", color=color, label=f"{run.label} train")
        title = "Loss: val solid, train dashed"
    ax.set(xlabel="step", ylabel="loss (nats per character)", title=title)
    bpc_axis(ax)
    ax.grid(alpha=0.3)
    # Beside the curves (past the bpc axis), not over them: a report over several sweeps has many runs.
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.1, 1.0), borderaxespad=0.0)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_scaling(runs: list[Run], path: Path, groups: list[Group]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    for group in groups or [Group(run.label, [run]) for run in runs]:
        params = group.runs[0].record.get("parameters")
        best, std = mean_std(group.best)
        if params is None or best is None:
            continue
        ax.errorbar(params, best, yerr=std if groups else None, fmt="o", capsize=4)
        ax.annotate(group.label, (params, best), textcoords="offset points", xytext=(5, 5), fontsize="small")
    ax.set_xscale("log")
    ax.margins(x=0.15)  # room for the labels of the outermost points
    title = "Best val loss against model size" + (" (mean ± std over seeds)" if groups else "")
    ax.set(xlabel="parameters", ylabel="best val loss (nats per character)", title=title)
    bpc_axis(ax)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def load_runs(folders: list[Path]) -> list[Run]:
    return [load_run(folder) for folder in find_runs(folders)]


def render(runs: list[Run], out: Path) -> Path:
    """Write report.md, the plots and results.csv for runs into out; returns report.md."""
    shared = shorten_labels(runs)
    groups = seed_groups(runs)
    out.mkdir(parents=True, exist_ok=True)
    rows = [summary(run, out) for run in runs]
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + [group_summary(group) for group in groups])
    with (out / "curves.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "step", "train_loss", "val_loss", "train_bpc", "val_bpc"])
        for run in runs:
            writer.writerows(
                [run.label, step, *(f"{loss:.6f}" for loss in (train, val, bits_per_char(train), bits_per_char(val)))]
                for step, train, val in run.evals
            )
    plot_losses(runs, out / "loss_curves.png", groups)
    plot_scaling(runs, out / "scaling.png", groups)
    report = out / "report.md"
    report.write_text(markdown(runs, rows, shared, groups), encoding="utf-8")
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
        failed = [run.label for run in runs if run.status not in (RunStatus.FINISHED, RunStatus.STOPPED_EARLY)]
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
