"""What a run reports while it trains: loss lines, metrics files, TensorBoard scalars and text samples."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from shakegpt.module import GPTModule

RUN_RECORD = "run.json"

BEST_VAL_METRIC = "hp/best_val_loss"


def best_val_loss(trainer: L.Trainer) -> float | None:
    """The lowest val loss the best-checkpoint callback has seen, if any."""
    best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    return float(best) if best is not None else None


def _is_step_zero_eval(trainer: L.Trainer) -> bool:
    """Lightning's sanity check runs the eval loop before the first update; it serves as the step-0 eval.

    A resumed run sanity-checks again mid-run: that one repeats an eval already reported, so it is skipped.
    """
    return trainer.sanity_checking and trainer.global_step == 0


def _should_report(trainer: L.Trainer) -> bool:
    return not trainer.sanity_checking or _is_step_zero_eval(trainer)


class EvalReport(L.Callback):
    """After every evaluation: prints `step N: train loss X, val loss Y`, logs both losses and the best val
    loss so far to the loggers, and appends them to a CSV file that reports read back."""

    def __init__(self, metrics_path: str) -> None:
        self.metrics_path = Path(metrics_path)
        self.best_val_loss = math.inf
        self.best_step = -1
        self._start = time.monotonic()

    def state_dict(self) -> dict[str, float]:
        return {"best_val_loss": self.best_val_loss, "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.best_val_loss, self.best_step = state_dict["best_val_loss"], int(state_dict["best_step"])

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.monotonic()

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: GPTModule) -> None:
        if not _should_report(trainer):
            return
        step = trainer.global_step
        train_loss, val_loss = pl_module.eval_losses["train"], pl_module.eval_losses["val"]
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_step = val_loss, step
        line = f"step {step}: train loss {train_loss:.4f}, val loss {val_loss:.4f}"
        # Through the progress bar when one is shown, so the line does not break it.
        bar = trainer.progress_bar_callback
        if bar is not None and bar.is_enabled:
            bar.print(line)
        else:
            print(line, flush=True)
        metrics = {"train/loss": train_loss, "val/loss": val_loss, BEST_VAL_METRIC: self.best_val_loss}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self._append_row(step, train_loss, val_loss, time.monotonic() - self._start)

    def _append_row(self, step: int, train_loss: float, val_loss: float, elapsed_s: float) -> None:
        new_file = not self.metrics_path.exists()
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(["step", "train_loss", "val_loss", "elapsed_s"])
            writer.writerow([step, f"{train_loss:.6f}", f"{val_loss:.6f}", f"{elapsed_s:.2f}"])


class TextSamples(L.Callback):
    """Samples a short text after every evaluation and a long one after training, to files and TensorBoard."""

    def __init__(
        self,
        out_dir: str,
        prompt: str = "\n",
        eval_tokens: int = 200,
        final_tokens: int = 500,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 1337,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.prompt, self.eval_tokens, self.final_tokens = prompt, eval_tokens, final_tokens
        self.temperature, self.top_k, self.seed = temperature, top_k, seed

    def _write(self, trainer: L.Trainer, module: GPTModule, name: str, tag: str, tokens: int) -> None:
        step = trainer.global_step
        text = module.sample(self.prompt, tokens, self.temperature, self.top_k, seed=self.seed + step)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"{name}.txt").write_text(text, encoding="utf-8")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # Markdown would reflow the verse; a code block keeps its lines.
                logger.experiment.add_text(tag, "```\n" + text + "\n```", global_step=step)

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: GPTModule) -> None:
        if self.eval_tokens > 0 and _should_report(trainer):
            self._write(trainer, pl_module, f"step_{trainer.global_step:06d}", "samples/eval", self.eval_tokens)

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: GPTModule) -> None:
        if self.final_tokens > 0:
            self._write(trainer, pl_module, "final", "samples/final", self.final_tokens)


def read_record(path: Path) -> dict[str, object]:
    return json.loads(path.read_text()) if path.is_file() else {}


def write_record(path: Path, **updates: object) -> dict[str, object]:
    """Merge updates into the run record at path; written whole, so readers never see half a file."""
    record = read_record(path)
    record.update(updates)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return record


def record_failure(path: Path, error: BaseException) -> None:
    """Note in the run record that the run failed, and why (also for failures before training starts)."""
    # Ctrl-C raises KeyboardInterrupt; Lightning turns SIGTERM into a SystemExit.
    status = "interrupted" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "failed"
    write_record(path, status=status, error=f"{type(error).__name__}: {error}")


class RunRecord(L.Callback):
    """Keeps run.json in the run folder current: what ran, on what, how fast, and how it ended.

    Reports read it, together with metrics.csv and the samples, to tabulate runs that are still going,
    finished, or failed.
    """

    def __init__(self, path: str, label: str) -> None:
        self.path = Path(path)
        self.label = label
        # Training time, steps and tokens of this process (a resumed run counts from its resume).
        self._train_s = 0.0
        self._steps = 0
        self._tokens = 0
        self._batch_start = 0.0
        self._fit_start = time.monotonic()

    def _progress(self, trainer: L.Trainer) -> dict[str, object]:
        return {
            "steps": trainer.global_step,
            "wall_s": round(time.monotonic() - self._fit_start, 2),
            "train_s": round(self._train_s, 2),
            "tokens_per_s": round(self._tokens / self._train_s) if self._train_s else None,
            "step_ms": round(1000 * self._train_s / self._steps, 2) if self._steps else None,
        }

    @rank_zero_only
    def on_fit_start(self, trainer: L.Trainer, pl_module: GPTModule) -> None:
        self._fit_start = time.monotonic()
        config = pl_module.model.config
        device = trainer.strategy.root_device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        write_record(
            self.path,
            label=self.label,
            status="running",
            started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_embd=config.n_embd,
            block_size=config.block_size,
            parameters=pl_module.model.num_parameters(),
            max_steps=trainer.max_steps,
            device=name,
            precision=str(trainer.precision),
            world_size=trainer.world_size,
        )

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: GPTModule, batch, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: GPTModule, outputs, batch, batch_idx: int) -> None:
        self._train_s += time.perf_counter() - self._batch_start
        self._steps += 1
        self._tokens += batch[0].numel() * trainer.world_size

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: GPTModule) -> None:
        if not trainer.sanity_checking:
            write_record(self.path, **self._progress(trainer))

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, pl_module: GPTModule) -> None:
        write_record(self.path, status="finished", best_val_loss=best_val_loss(trainer), **self._progress(trainer))

    @rank_zero_only
    def on_exception(self, trainer: L.Trainer, pl_module: GPTModule, exception: BaseException) -> None:
        write_record(self.path, **self._progress(trainer))
        record_failure(self.path, exception)
