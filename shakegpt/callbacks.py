"""What a run reports while it trains: loss lines, metrics files, TensorBoard scalars and text samples."""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, TQDMProgressBar
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.tensorboard.summary import hparams as hparams_summaries

from shakegpt.compat import patience_spent, tensorboard_file_writer
from shakegpt.divergence import ADVICE, blown_up
from shakegpt.module import GPTModule
from shakegpt.resume import RunCheckpoints, evaluating_before_training
from shakegpt.rundir import (
    FINAL_SAMPLE,
    METRICS,
    RUN_RECORD,
    SAMPLES,
    EvalRow,
    RunStatus,
    bits_per_char,
    eval_sample,
    losses_text,
    read_metrics,
    record_failure,
    write_metrics,
    write_record,
)

BEST_VAL_METRIC = "hp/best_val_loss"

log = logging.getLogger(__name__)
# The eval lines, for the run folder's train.log only (conf/train/hydra/default.yaml): the console has them already.
eval_log = logging.getLogger("shakegpt.evals")


def best_val_loss(trainer: L.Trainer) -> float | None:
    """The lowest val loss of the run so far (the one checkpoints/best.ckpt holds), if any."""
    for callback in trainer.callbacks:
        if isinstance(callback, RunCheckpoints) and math.isfinite(callback.best_val_loss):
            return callback.best_val_loss
    return None


@rank_zero_only  # the other ranks' TensorBoard writers write nothing
def log_hparams(logger: Logger | None, hparams: dict[str, object]) -> None:
    """The run's settings for TensorBoard's HParams tab (BEST_VAL_METRIC its measure) and hparams.yaml.

    Lightning's log_hyperparams would also write an experiment summary into every run, which fixes the table's
    columns to one run's settings in name order (data.* first, model.n_layer off screen). Without it TensorBoard
    builds the columns from all the runs it shows, those whose values differ first: a sweep's swept settings.
    """
    if not isinstance(logger, TensorBoardLogger):
        return
    logger.log_hyperparams(hparams)  # hparams.yaml only: without metrics it writes no summary (default_hp_metric)
    _, session_start, session_end = hparams_summaries(hparams, {BEST_VAL_METRIC: float("nan")})
    writer = tensorboard_file_writer(logger.experiment)  # where Lightning writes its own scalars
    writer.add_summary(session_start)
    writer.add_summary(session_end)


def early_stopper(trainer: L.Trainer) -> EarlyStopping | None:
    """The early-stopping callback if it ended this run before trainer.max_steps."""
    for callback in trainer.callbacks:
        if isinstance(callback, EarlyStopping) and patience_spent(callback):
            return callback if trainer.global_step < trainer.max_steps else None
    return None


class EvalReport(L.Callback):
    """After every evaluation: prints `step N: train loss X, val loss Y (X' / Y' bpc)`, logs both losses (in nats
    and in bits per character) and the best val loss so far to the loggers, and appends them to a CSV file that
    reports read back. Also logs the training batch loss and the learning rate every log_every_n_steps steps.

    Every evaluation is reported, the one a run does before it trains included (step 0's, or the one a resumed
    run's checkpoint was taken before: shakegpt.resume.evaluate_first)."""

    def __init__(self, run_dir: str) -> None:
        self.metrics_path = Path(run_dir) / METRICS
        self._rows: list[EvalRow] = []
        self._batch_loss: tuple[int, float] | None = None  # the latest logged: (step, loss)
        self._lr: float | None = None  # and the learning rate of that step's update
        self._start = time.monotonic()

    def state_dict(self) -> dict[str, object]:
        return {"batch_loss": self._batch_loss, "lr": self._lr}

    def load_state_dict(self, state_dict: dict[str, object]) -> None:
        self._batch_loss, self._lr = state_dict.get("batch_loss"), state_dict.get("lr")

    @rank_zero_only
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # A run resumed before its step's evaluation has TensorBoard hide everything the interrupted run logged
        # from that step on (the evaluation may have been logged in part); the batch loss of that step was
        # logged whole, and the checkpoint carries it, so it is logged again.
        resumed = evaluating_before_training(trainer) and trainer.global_step > 0
        if resumed and self._batch_loss is not None and self._batch_loss[0] == trainer.global_step:
            self._log_batch_loss(trainer, *self._batch_loss, self._lr)

    def _log_batch_loss(self, trainer: L.Trainer, step: int, loss: float, lr: float | None) -> None:
        self._batch_loss, self._lr = (step, loss), lr
        metrics = {"train/batch_loss": loss} if lr is None else {"train/batch_loss": loss, "train/lr": lr}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # A resumed run goes on with the rows its checkpoint covers (the entry point dropped any later ones),
        # and its clock goes on from theirs.
        self._rows = read_metrics(self.metrics_path)
        self._start = time.monotonic() - (self._rows[-1].elapsed_s if self._rows else 0.0)

    @rank_zero_only
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: GPTModule, outputs, batch, batch_idx: int) -> None:
        # Logged here rather than through self.log, which writes after every callback: a run stopped at the end
        # of this step by the checkpoint callback would otherwise never log it.
        if trainer.global_step % trainer.log_every_n_steps == 0:
            # The schedule has stepped already: the lr of update number global_step, the next one.
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            self._log_batch_loss(trainer, trainer.global_step, float(outputs["loss"]), lr)

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: GPTModule) -> None:
        step = trainer.global_step
        train_loss, val_loss = pl_module.eval_losses["train"], pl_module.eval_losses["val"]
        line = f"step {step}: {losses_text(train_loss, val_loss)}"
        # Through the progress bar when one is shown, so the line does not break it.
        bar = trainer.progress_bar_callback
        if bar is not None and bar.is_enabled:
            bar.print(line)
        else:
            print(line, flush=True)
        eval_log.info(line)
        # The checkpoint callback keeps the run's best and takes this evaluation in after this callback (which must
        # come first: it logs the batch loss before that one may stop the run).
        best = min(best_val_loss(trainer) or math.inf, val_loss)
        metrics = {
            "train/loss": train_loss,
            "val/loss": val_loss,
            BEST_VAL_METRIC: best,
            "train/bpc": bits_per_char(train_loss),
            "val/bpc": bits_per_char(val_loss),
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        # Last, and whole: a row in metrics.csv means everything of this evaluation was written.
        self._rows.append(EvalRow(step, train_loss, val_loss, time.monotonic() - self._start))
        write_metrics(self.metrics_path, self._rows)


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, which on a resumed run would show neither the run's length nor the time left,
    and a rate counted from step 0: a run is one epoch, and Lightning does not start an epoch it resumes in
    the middle of (no on_train_epoch_start), where its bar learns the total. And it ends its line when the run
    stops on an exception."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.global_step > 0:
            self.on_train_epoch_start(trainer)
            bar, done = self.train_progress_bar, trainer.global_step
            # The loader serves the steps left (shakegpt.data); the bar counts the run's steps, and its rate and
            # time left from the step resumed at.
            bar.total = done + bar.total if bar.total is not None else None
            bar.n = bar.initial = done
            bar.refresh()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # The line that says why the run stopped (a signal, an error) then starts a line of its own, not the end
        # of the bar's.
        for name in ("val_progress_bar", "train_progress_bar"):
            with contextlib.suppress(TypeError):  # Lightning's way of saying the bar was not made
                getattr(self, name).close()


class TextSamples(L.Callback):
    """Samples a short text after every evaluation and a long one after training, to files and TensorBoard."""

    def __init__(
        self,
        run_dir: str,
        prompt: str | None = None,
        eval_tokens: int = 200,
        final_tokens: int = 500,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 1337,
    ) -> None:
        self.out_dir = Path(run_dir) / SAMPLES
        self.prompt, self.eval_tokens, self.final_tokens = prompt, eval_tokens, final_tokens
        self.temperature, self.top_k, self.seed = temperature, top_k, seed

    def _write(self, trainer: L.Trainer, module: GPTModule, file_name: str, tag: str, tokens: int) -> None:
        step = trainer.global_step
        text = module.sample(self.prompt, tokens, temperature=self.temperature, top_k=self.top_k, seed=self.seed + step)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / file_name).write_text(text, encoding="utf-8")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                # Markdown would reflow the verse; a code block keeps its lines.
                logger.experiment.add_text(tag, "```\n" + text + "\n```", global_step=step)

    @rank_zero_only
    def on_validation_end(self, trainer: L.Trainer, pl_module: GPTModule) -> None:
        if self.eval_tokens > 0:
            self._write(trainer, pl_module, eval_sample(trainer.global_step), "samples/eval", self.eval_tokens)

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: GPTModule) -> None:
        # On fit end, not train end: a run resumed after its last step trains no more but still ends here.
        if self.final_tokens > 0:
            # Minutes for a large model on a CPU: say what the run is doing after its last evaluation.
            log.info("sampling %d characters into %s", self.final_tokens, self.out_dir / FINAL_SAMPLE)
            self._write(trainer, pl_module, FINAL_SAMPLE, "samples/final", self.final_tokens)


class RunRecord(L.Callback):
    """Keeps run.json in the run folder current: what ran, on what, how fast, and how it ended.

    Reports read it, together with metrics.csv and the samples, to tabulate runs that are still going,
    finished, diverged (shakegpt.divergence.blown_up), interrupted, or failed.
    """

    def __init__(self, run_dir: str, label: str, overrides: str, run_id: str | None = None) -> None:
        self.path = Path(run_dir) / RUN_RECORD
        self.run_id = run_id  # kept while the run goes on; its checkpoints carry it too (RunCheckpoints)
        self.label = label  # what tells the run apart (in a sweep, what the sweep varies)
        self.overrides = overrides  # all of them, comma-separated: reports name those every run shares
        self.first_loss: float | None = None
        self.diverged_at: int | None = None
        # Training time, steps and tokens, and wall time, over every process the run has had (a resumed run
        # goes on from the totals its checkpoint holds).
        self._train_s = 0.0
        self._steps = 0
        self._tokens = 0
        self._wall_before_s = 0.0
        self._batch_start = 0.0
        self._process_start = time.monotonic()
        self._started = False

    def _progress(self, trainer: L.Trainer) -> dict[str, object]:
        return {
            "steps": trainer.global_step,
            "wall_s": round(self._wall_s(), 2),
            "train_s": round(self._train_s, 2),
            "tokens_per_s": round(self._tokens / self._train_s) if self._train_s else None,
            "step_ms": round(1000 * self._train_s / self._steps, 2) if self._steps else None,
        }

    @rank_zero_only
    def setup(self, trainer: L.Trainer, pl_module: GPTModule, stage: str) -> None:
        # Once, before the evaluation a run may do before it trains (then validate and fit both set up).
        if self._started:
            return
        self._started = True
        config = pl_module.model.config
        device = trainer.strategy.root_device
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
        write_record(
            self.path,
            run_id=self.run_id,
            label=self.label,
            overrides=self.overrides,
            status=RunStatus.RUNNING,
            error=None,  # a resumed run's earlier interruption is over
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

    def _wall_s(self) -> float:
        return self._wall_before_s + time.monotonic() - self._process_start

    def state_dict(self) -> dict[str, float | int | None]:
        return {
            "first_loss": self.first_loss,
            "diverged_at": self.diverged_at,
            "train_s": self._train_s,
            "steps_timed": self._steps,
            "tokens": self._tokens,
            "wall_s": self._wall_s(),
        }

    def load_state_dict(self, state_dict: dict[str, float | int | None]) -> None:
        # Loaded twice on a resume with an evaluation before training (shakegpt.resume.evaluate_first): what that
        # evaluation found is newer than the checkpoint, and stays.
        self.first_loss = self.first_loss if self.first_loss is not None else state_dict["first_loss"]
        self.diverged_at = self.diverged_at if self.diverged_at is not None else state_dict["diverged_at"]
        self._train_s, self._steps = state_dict.get("train_s", 0.0), state_dict.get("steps_timed", 0)
        self._tokens, self._wall_before_s = state_dict.get("tokens", 0), state_dict.get("wall_s", 0.0)

    def on_validation_end(self, trainer: L.Trainer, pl_module: GPTModule) -> None:
        losses = pl_module.eval_losses
        if self.first_loss is None:
            self.first_loss = losses["val"]
        elif self.diverged_at is None and blown_up(losses, self.first_loss):
            self.diverged_at = trainer.global_step
            if trainer.is_global_zero:
                log.warning(
                    "training diverged at step %d: loss %.4g against %.4f at the start; %s",
                    trainer.global_step,
                    max(losses.values()),
                    self.first_loss,
                    ADVICE,
                )
        if trainer.is_global_zero:
            write_record(self.path, **self._progress(trainer))

    @rank_zero_only
    def on_fit_end(self, trainer: L.Trainer, pl_module: GPTModule) -> None:
        stopper = early_stopper(trainer)
        status = RunStatus.FINISHED if self.diverged_at is None else RunStatus.DIVERGED
        if stopper is not None and status is RunStatus.FINISHED:
            status = RunStatus.STOPPED_EARLY
        write_record(
            self.path,
            status=status,
            best_val_loss=best_val_loss(trainer),
            diverged_at=self.diverged_at,
            stop_reason=(
                f"the val loss did not improve by more than {abs(stopper.min_delta):g} for {stopper.patience} "
                f"evaluations in a row (callbacks.early_stopping.patience)"
                if stopper is not None
                else None
            ),
            **self._progress(trainer),
        )

    @rank_zero_only
    def on_exception(self, trainer: L.Trainer, pl_module: GPTModule, exception: BaseException) -> None:
        record_failure(self.path, exception, **self._progress(trainer))
