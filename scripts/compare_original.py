"""Put the reproduced rows of the experiments table beside the published ones.

    python scripts/compare_original.py            # after scripts/reproduce.sh has written docs/results/<row>/

Reads docs/results/original.csv (the published figures) and each docs/results/<row>/curves.csv and
results.csv that scripts/reproduce.sh wrote; writes docs/results/README.md (one table with both sets of
figures and their differences at every evaluation reached) and docs/results/<row>/vs_original.png (ours solid,
the original dashed). The original evaluates its last point after 4999 updates, ours after 5000: that point is
compared with our last.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
Curve = dict[int, tuple[float, float]]  # step -> (train loss, val loss)


def read_original(path: Path) -> dict[str, Curve]:
    curves: dict[str, Curve] = defaultdict(dict)
    with path.open() as f:
        for row in csv.DictReader(line for line in f if not line.startswith("#")):
            curves[row["experiment"]][int(row["step"])] = (float(row["train_loss"]), float(row["val_loss"]))
    return curves


def read_ours(folder: Path) -> tuple[Curve, dict[str, str]]:
    with (folder / "curves.csv").open() as f:
        curve = {int(r["step"]): (float(r["train_loss"]), float(r["val_loss"])) for r in csv.DictReader(f)}
    with (folder / "results.csv").open() as f:
        summary = next(csv.DictReader(f))
    return curve, summary


def matched_step(step: int, original: Curve, ours: Curve, trained: int) -> int | None:
    """Our step that corresponds to the original's (its 4999 is our last, 5000, once we trained that far)."""
    if step in ours:
        return step
    if step == max(original) and trained in ours and trained - step == 1:
        return trained
    return None


def plot(row: str, original: Curve, ours: Curve, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for index, (name, color) in enumerate((("train", "C0"), ("val", "C1"))):
        ax.plot(
            sorted(ours), [ours[s][index] for s in sorted(ours)], "-", marker=".", color=color, label=f"{name}, here"
        )
        steps = sorted(original)
        ax.plot(steps, [original[s][index] for s in steps], "--", color=color, label=f"{name}, original")
    ax.set(xlabel="step", ylabel="loss (nats per character)", title=f"{row}: here (solid) and the original (dashed)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(label: str, folder: Path, original: Curve, lines: list[str]) -> str:
    """Appends the table rows of one reproduced run to lines, draws its plot; returns its summary row."""
    ours, summary = read_ours(folder)
    # How far it trained: a run stopped after its last evaluation (in its final sample, say) still matches 4999.
    trained = int(float(summary["steps"] or 0))
    for step in sorted(original):
        here = matched_step(step, original, ours, trained)
        if here is None:
            continue
        (ot, ov), (t, v) = original[step], ours[here]
        lines.append(
            f"| {label} | {step if here == step else f'{step} / {here}'} | {ot:.4f} / {ov:.4f} | {t:.4f} / {v:.4f} "
            f"| {t - ot:+.4f} / {v - ov:+.4f} |"
        )
    plot(label, original, ours, folder / "vs_original.png")
    link = folder.relative_to(folder.parents[1] if "," in label else folder.parent) / "vs_original.png"
    planned = max(original) + (1 if max(original) > 99 else 0)
    past = f", trained to {trained}" if trained > max(ours) else ""  # stopped between evaluations
    return (
        f"| {label} | step {max(ours)} of {planned}{past} ({summary['status']}) | {summary['device']}, "
        f"{summary['precision']} | {float(summary['wall_s'] or 0) / 60:.0f} min "
        f"| {float(summary['best_val_loss']):.4f} ({summary['best_step']}) | [vs_original.png]({link}) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="the results folder (default: docs/results)")
    parser.add_argument("--machine", default="", help="the machine the runs ran on, for the record")
    parser.add_argument("--command", default="", help="the command that ran them, for the record")
    args = parser.parse_args()
    originals = read_original(args.results / "original.csv")
    lines = [
        "# The experiments table, reproduced",
        "",
        "Written by `python scripts/compare_original.py` from the reports `scripts/reproduce.sh` leaves in this",
        "folder. Original: the published figures (an Apple M1 GPU). Differences are ours minus the original's.",
        "The original's last evaluation comes after 4999 updates, ours after 5000.",
        "",
        *([f"Machine: {args.machine}.", ""] if args.machine else []),
        *([f"Command: `{args.command}`", ""] if args.command else []),
        "| row | step | original train / val | here train / val | difference train / val |",
        "|---|---:|---:|---:|---:|",
    ]
    notes = [
        "",
        "| row | reached | hardware, precision | wall time | best val (step) | plot |",
        "|---|---|---|---:|---|---|",
    ]
    # A row's runs: docs/results/<row>/, and variants such as docs/results/fp32/<row>/ (other settings).
    variants = sorted(p.name for p in args.results.iterdir() if p.is_dir() and p.name not in originals)
    for row, original in sorted(originals.items()):
        folders = {row: args.results / row, **{f"{row}, {v}": args.results / v / row for v in variants}}
        if not any((folder / "curves.csv").is_file() for folder in folders.values()):
            notes.append(f"| {row} | not run yet | | | | |")
        for label, folder in folders.items():
            if (folder / "curves.csv").is_file():
                notes.append(compare(label, folder, original, lines))
    (args.results / "README.md").write_text("\n".join(lines + notes) + "\n", encoding="utf-8")
    print(args.results / "README.md")


if __name__ == "__main__":
    main()
