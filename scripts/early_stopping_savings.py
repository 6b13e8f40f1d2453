"""Where early_stopping=on would have stopped the published 5000-step rows, and the training it would save.

    python scripts/early_stopping_savings.py                      # docs/results/original.csv, patience 1-3
    python scripts/early_stopping_savings.py --patience 2 5

Replays Lightning's EarlyStopping rule (as conf/train/early_stopping/on.yaml sets it: the val loss, checked at every
evaluation but step 0's, min_delta 0) on the published curves, evaluated every 500 steps. A stopped run has
trained to its stop step, and checkpoints/best.ckpt holds its best step, the same as the full run's whenever
the run stops after it.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

ORIGINAL = Path(__file__).resolve().parents[1] / "docs" / "results" / "original.csv"


def stop_step(curve: list[tuple[int, float]], patience: int) -> int:
    """The step at which the rule stops the run, or its last step."""
    best, waited = float("inf"), 0
    for step, val in curve[1:]:
        if val < best:
            best, waited = val, 0
        else:
            waited += 1
            if waited >= patience:
                return step
    return curve[-1][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patience", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--curves", type=Path, default=ORIGINAL, help="experiment,step,train_loss,val_loss CSV")
    args = parser.parse_args()
    with args.curves.open() as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        curves.setdefault(row["experiment"], []).append((int(row["step"]), float(row["val_loss"])))
    print("| row | best val (step) | patience | stops at | best val of the stopped run | steps saved |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, curve in curves.items():
        last = curve[-1][0]
        if last < 1000:
            continue  # exp1: two evaluations, nothing to stop
        best_step, best_val = min(curve, key=lambda point: point[1])
        for patience in args.patience:
            stop = stop_step(curve, patience)
            kept = min((point for point in curve if point[0] <= stop), key=lambda point: point[1])
            saved = (last - stop) / last
            print(
                f"| {name} | {best_val:.4f} ({best_step}) | {patience} | {stop} | {kept[1]:.4f} ({kept[0]}) "
                f"| {last - stop} ({saved:.0%}) |"
            )


if __name__ == "__main__":
    main()
