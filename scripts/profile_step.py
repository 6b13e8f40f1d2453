"""Where the time of a training step goes: torch.profiler over real training steps, grouped by kind.

    python scripts/profile_step.py                      # n_layer 6 and 12, hardware=cpu, 3 profiled steps
    python scripts/profile_step.py --layers 1 --steps 2 --json
    python scripts/profile_step.py --layers 6 -- hardware.compile=false   # extra Hydra overrides after --

The steps are the real path (`build()` from shakegpt.training, as `python -m shakegpt.train` runs it), profiled
after one warm-up step. Every profiled operator's self time is counted once, in the kind of the innermost
name on its call chain that says what it is for: an `aten::mul` inside a dropout is dropout, a cast inside a
linear layer is a cast. What the profiler does not see (Lightning's loop, hooks, Python between operators) is
the step's wall time less all of that.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import lightning as L
from bench import config, lightning_overrides  # scripts/ is on sys.path when this script runs
from torch.profiler import ProfilerActivity, profile, record_function

from shakegpt.training import build

KINDS = (
    "matmuls",
    "attention elementwise",
    "dropout",
    "layer norm",
    "casts",
    "compiled kernels",
    "optimizer",
    "data",
    "other operators",
    "Lightning and Python",
)
UPDATE_MARK = "shakegpt: optimizer update starts"
# Searched innermost-first along the call chain; the first name containing a key decides.
OPERATOR_RULES = (
    ("aten::random_", "dropout"),  # drawing masks (shakegpt.cpu_kernels.keep_mask)
    ("aten::ge", "dropout"),
    ("bernoulli", "dropout"),  # PyTorch's own dropout, on other devices
    ("causalattentionwithdropout", "attention elementwise"),  # the CPU kernel's own passes
    ("dropout", "dropout"),
    ("mulbackward", "dropout"),  # the model's only bare muls are dropout's x * mask
    ("layer_norm", "layer norm"),
    ("_to_copy", "casts"),
    ("tocopybackward", "casts"),
    ("aten::mm", "matmuls"),
    ("aten::addmm", "matmuls"),
    ("aten::bmm", "matmuls"),
    ("aten::matmul", "matmuls"),
    ("softmax", "attention elementwise"),
    ("scaled_dot_product", "attention elementwise"),
    ("compiled", "compiled kernels"),
)


def kind_of(chain: list[str]) -> str:
    """The kind of a model operator, given the names of its call chain, innermost first."""
    lowered = [name.lower() for name in chain]
    if lowered in (["aten::mul"], ["aten::mul_"]):
        return "dropout"  # x * mask and the mask's 1 / (1 - p), called from Python
    for name in lowered:
        for key, kind in OPERATOR_RULES:
            if key in name:
                return kind
    return "other operators"


class StepProfiler(L.Callback):
    """Profiles the training steps after the first, data loading between them included.

    Lightning runs the forward and backward passes inside the optimizer's step (as its closure), so the
    optimizer's own work is told apart by time: it starts at a mark set when the closure has returned.
    """

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.profiler = profile(activities=[ProfilerActivity.CPU])
        self.wall_s = 0.0
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 1:
            self.profiler.__enter__()
            self._start = time.perf_counter()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        with record_function(UPDATE_MARK):
            pass

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 1 + self.steps:
            self.wall_s = time.perf_counter() - self._start
            self.profiler.__exit__(None, None, None)


def breakdown(profiler: StepProfiler) -> dict[str, float]:
    """Milliseconds per step of each kind."""
    events = profiler.profiler.events()
    update_starts = sorted(event.time_range.start for event in events if event.name == UPDATE_MARK)
    totals = dict.fromkeys(KINDS, 0.0)
    for event in events:
        chain, node = [], event
        while node is not None:
            chain.append(node)
            node = node.cpu_parent
        names = [node.name for node in chain]
        step = next((node for node in chain if node.name.startswith("Optimizer.step")), None)
        if any(name.startswith("Optimizer.zero_grad") for name in names) or (
            step and any(step.time_range.start <= t <= event.time_range.start for t in update_starts)
        ):
            kind = "optimizer"
        elif any(name.startswith("enumerate(DataLoader)") for name in names):
            kind = "data"
        elif event is step:
            kind = "Lightning and Python"  # the step's own time: Lightning's closure around the passes
        else:
            kind = kind_of([name for name in names if not name.startswith("Optimizer.step")])
        totals[kind] += event.self_cpu_time_total / 1e3
    totals["Lightning and Python"] += max(0.0, profiler.wall_s * 1e3 - sum(totals.values()))
    return {kind: ms / profiler.steps for kind, ms in totals.items()}


def profile_training(hardware: str, n_layer: int, steps: int, overrides: list[str]) -> dict[str, float]:
    profiler = StepProfiler(steps)
    # One step more than profiled: the last step checkpoints and evaluates, which is not a training step's work.
    cfg = config(hardware, n_layer, *lightning_overrides(steps + 1, 0), *overrides)
    trainer, module, datamodule = build(cfg, callbacks=[profiler])
    with contextlib.redirect_stdout(sys.stderr):
        trainer.fit(module, datamodule=datamodule)
    return breakdown(profiler)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 12])
    parser.add_argument("--steps", type=int, default=3, help="profiled training steps, after one warm-up step")
    parser.add_argument("--hardware", default="cpu")
    parser.add_argument("--json", action="store_true", help="one JSON object per n_layer")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the run, after --")
    args = parser.parse_args()

    rows = {}
    for n_layer in args.layers:
        rows[n_layer] = profile_training(args.hardware, n_layer, args.steps, args.overrides)
        if args.json:
            print(json.dumps({"n_layer": n_layer, "overrides": args.overrides, "ms_per_step": rows[n_layer]}))
    if args.json:
        return
    print(f"\nms per training step, hardware={args.hardware} {' '.join(args.overrides)}")
    print(f"{'kind':<24}" + "".join(f"{f'n_layer {n}':>18}" for n in rows))
    for kind in (*KINDS, "total"):
        cells = []
        for per_kind in rows.values():
            total = sum(per_kind.values())
            ms = total if kind == "total" else per_kind[kind]
            cells.append(f"{ms:>10,.0f} ({ms / total:>4.0%})")
        print(f"{kind:<24}" + "".join(f"{cell:>18}" for cell in cells))


if __name__ == "__main__":
    main()
