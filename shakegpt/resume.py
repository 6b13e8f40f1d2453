"""Resuming exactly: where a run starts, what its checkpoints carry, and stopping only where it can continue.

A run checkpoints (checkpoints/last.ckpt) at the end of every step that is followed by an evaluation, before
that evaluation, and at the end of whichever step it is in when Ctrl-C or SIGTERM arrives. Those are the only
moments: the optimizer has stepped, nothing of the next step has happened, and the checkpoint notes whether the
step's evaluation is still to be done. A resumed run does that evaluation first (evaluate_first), then goes on
with the next batch (training batches are indexed by step), so its losses, metrics.csv and TensorBoard scalars
are those of the uninterrupted run. A signal during an evaluation stops at once: the checkpoint from before it
stands. A kill at any moment leaves the last checkpoint, which was written whole (rundir.write_atomically).

On SLURM through hydra/launcher=slurm, the job gets SIGUSR2 ahead of its time limit or a preemption: the run
stops the same way, then submitit's handler requeues the job, which continues from that checkpoint
(start_point: a job SLURM requeued continues its own last checkpoint).
"""

from __future__ import annotations

import io
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.seed import isolate_rng

from shakegpt.checkpoint import read_checkpoint, resolve_checkpoint
from shakegpt.compat import kill_launched_ranks, load_fit_loop_state
from shakegpt.divergence import check_weights
from shakegpt.errors import STOP_SIGNALS, Interrupted, ShakeGPTError
from shakegpt.rundir import (
    BEST_CHECKPOINT,
    CHECKPOINTS,
    LAST_CHECKPOINT,
    METRICS,
    TENSORBOARD_EVENTS,
    RunStatus,
    copy_atomically,
    last_checkpoint,
    read_metrics,
    remove_stale_temp_files,
    write_atomically,
    write_metrics,
)

# The sections of a checkpoint that say how to continue it, beside Lightning's own (weights, optimizer,
# schedule, step, callbacks' states): whether the step's evaluation is done and the settings; the RNG states.
RESUME_KEY = "shakegpt_resume"
RNG_KEY = "rng_states"

# What SLURM sends a job launched through submitit before its time limit (`#SBATCH --signal=USR2@120`) or a
# preemption; submitit's handler for it requeues the job.
REQUEUE_SIGNAL = signal.SIGUSR2
TRAINING_STOP_SIGNALS = (*STOP_SIGNALS, REQUEUE_SIGNAL)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files are replaced whole, through a temporary file in their own folder: a kill or a full disk
    during a write leaves the previous checkpoint intact (Lightning's own writes go through $TMPDIR, which on
    another filesystem becomes a copy that can be cut short)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_atomically(Path(path), buffer.getbuffer())


def rng_states() -> dict[str, Any]:
    """The global generators' states: dropout draws from the CPU's on the CPU, from the device's own on CUDA
    (SDPA's dropout included) and MPS, so a resumed run continues exactly only with all of them."""
    states: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    if torch.backends.mps.is_available():
        states["mps"] = torch.mps.get_rng_state()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Put back what rng_states() saved, for the devices present here."""
    torch.set_rng_state(states["cpu"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "mps" in states and torch.backends.mps.is_available():
        torch.mps.set_rng_state(states["mps"])


def is_eval_step(trainer: L.Trainer, step: int) -> bool:
    """Evaluations come at step 0, every val_check_interval steps, and after the last step."""
    return step == trainer.max_steps or step % int(trainer.val_check_interval) == 0


def evaluating_before_training(trainer: L.Trainer) -> bool:
    """Whether the evaluation under way is the one a run does before it trains (evaluate_first)."""
    return trainer.state.fn == TrainerFn.VALIDATING


class RunCheckpoints(L.Callback):
    """Writes checkpoints/last.ckpt at the points a run resumes from exactly (see the module's docstring),
    checkpoints/best.ckpt after every evaluation that lowers the val loss, and turns Ctrl-C, SIGTERM and
    SIGUSR2 into a stop at the next such point. A second Ctrl-C stops at once; the last checkpoint then stands.
    After a stop on SIGUSR2, the handler that was there before (submitit's, on SLURM) requeues the job."""

    def __init__(self, run_dir: str, settings: dict[str, Any], run_id: str | None = None) -> None:
        self.dirpath = Path(run_dir) / CHECKPOINTS
        self.settings = settings
        self.run_id = run_id  # the run folder's (run.json): a checkpoint copied into another folder is known
        self.best_val_loss = float("inf")
        self.best_step = -1
        self.stop_signal: int | None = None
        self._eval_pending = False
        self._previous_handlers: dict[int, Any] = {}
        self._trainer: L.Trainer | None = None
        self._rng_states_to_restore: dict[str, Any] | None = None

    # --- what a checkpoint carries -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"best_val_loss": self.best_val_loss, "best_step": self.best_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A resumed run loads its checkpoint twice, for the evaluation before training and for training (see
        # evaluate_first): a best found by that evaluation is newer than the checkpoint's, and stays.
        if float(state_dict["best_val_loss"]) < self.best_val_loss:
            self.best_val_loss, self.best_step = float(state_dict["best_val_loss"]), int(state_dict["best_step"])

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._rng_states_to_restore = checkpoint.get(RNG_KEY)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[RESUME_KEY] = {"eval_pending": self._eval_pending, "settings": self.settings, "run_id": self.run_id}
        checkpoint[RNG_KEY] = rng_states()

    def _save(self, trainer: L.Trainer, pl_module: L.LightningModule, path: Path, eval_pending: bool) -> None:
        check_weights(pl_module.parameters(), trainer.global_step)
        self._eval_pending = eval_pending
        trainer.save_checkpoint(path, weights_only=False)

    # --- signals ---------------------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_signal = signum
        if self._trainer is not None:
            kill_launched_ranks(self._trainer, signum)  # the other DDP ranks stop at the same step

    def _install_handlers(self, trainer: L.Trainer) -> None:
        # After Lightning has installed its own SIGTERM handler (which would stop in the middle of an
        # evaluation); Lightning puts the handlers back at the end of fit, and teardown does too.
        self._trainer = trainer
        for signum in TRAINING_STOP_SIGNALS:
            if signum not in self._previous_handlers:
                self._previous_handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install_handlers(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install_handlers(trainer)
        # Restored as training starts, not on load: a resumed run loads its checkpoint twice (evaluate_first).
        states, self._rng_states_to_restore = self._rng_states_to_restore, None
        if states is not None:
            restore_rng_states(states)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # After the evaluation before training, and before the final sample (Lightning tears down, then calls
        # on_fit_end): a signal there meets the entry point's handler again, which ends the run at once; the last
        # checkpoint precedes the final evaluation, so a resume redoes it and the sample.
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def _stop_requested(self, trainer: L.Trainer) -> bool:
        requested = self.stop_signal is not None
        if trainer.world_size > 1:  # every rank stops at the same point
            requested = trainer.strategy.reduce_boolean_decision(requested, all=False)
        return requested

    # --- the points ------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.is_global_zero:
            remove_stale_temp_files(self.dirpath)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        pending, stop = is_eval_step(trainer, step), self._stop_requested(trainer)
        if pending or stop:
            self._save(trainer, pl_module, self.dirpath / LAST_CHECKPOINT, eval_pending=pending)
        if stop:
            self._stop(step)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._stop_requested(trainer):
            self._stop(trainer.global_step)

    def _stop(self, step: int) -> None:
        """Ends the run at a point it resumes from; on SIGUSR2 first hands over to the handler that was there
        before (submitit's: it requeues the job, and exits on the first rank)."""
        interrupted = Interrupted(self.stop_signal or signal.SIGTERM, step)
        handler = self._previous_handlers.get(REQUEUE_SIGNAL)
        if self.stop_signal == REQUEUE_SIGNAL and callable(handler):
            print(f"{interrupted}; the last checkpoint holds it", file=sys.stderr, flush=True)
            handler(REQUEUE_SIGNAL, None)
        raise interrupted

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        val_loss = pl_module.eval_losses["val"]
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_step = val_loss, trainer.global_step
            best = self.dirpath / BEST_CHECKPOINT
            if evaluating_before_training(trainer) and trainer.ckpt_path is not None:
                # A resumed run's weights are its checkpoint's, which holds the optimizer's state too (Lightning
                # sets up no optimizer to evaluate); resumed from, it redoes this evaluation and goes on exactly.
                if trainer.is_global_zero:
                    copy_atomically(Path(trainer.ckpt_path), best)
            else:
                self._save(trainer, pl_module, best, eval_pending=False)


@dataclass(frozen=True)
class StartPoint:
    """Where a run starts: a checkpoint (None for a new run), the steps it holds, whether the evaluation of that
    step is still to be done, and the training loop's state the checkpoint holds (Lightning's)."""

    checkpoint: Path | None = None
    step: int = 0
    eval_pending: bool = True
    loop_state: dict[str, Any] | None = field(default=None, repr=False, compare=False)

    @property
    def first_unrecorded_step(self) -> int:
        """Records (metrics.csv rows, TensorBoard events) from this step on belong to a future the checkpoint
        does not hold: an interrupted run may have written some, and the resumed run writes them again."""
        return self.step if self.eval_pending else self.step + 1


def finished(record: dict[str, Any], resume: bool | str, requeued: bool, max_steps: int) -> bool:
    """Whether the run whose run.json is record is skipped: resume=true (or a job SLURM requeued) on a run that
    ended (at max_steps or beyond, or stopped early), so re-running a sweep into its folder redoes no work."""
    status = RunStatus(record.get("status", RunStatus.RUNNING))
    return (resume is True or requeued) and status.ended(record.get("steps", 0), max_steps)


def forget_the_unrecorded(output_dir: Path, start: StartPoint) -> None:
    """An interrupted run may have recorded evaluations its checkpoint does not hold; the resumed run records
    them again. metrics.csv loses those rows; TensorBoard's events from that step on are hidden by the resumed
    run's logger (purge_step: StartPoint.first_unrecorded_step), and a run that starts again from scratch
    removes its earlier attempt's events files, which would otherwise hold every step twice."""
    step = start.first_unrecorded_step
    rows = read_metrics(output_dir / METRICS)
    kept = [row for row in rows if row.step < step]
    if len(kept) != len(rows):
        write_metrics(output_dir / METRICS, kept)
    if step == 0:
        for events in output_dir.glob(TENSORBOARD_EVENTS):
            events.unlink()


def start_point(
    output_dir: Path, resume: bool | str, settings: dict[str, Any], requeued: bool = False, run_id: str | None = None
) -> StartPoint:
    """Where a run starts, from the one `resume` setting: with true, the run folder's own last checkpoint if it
    has one; with a path, that checkpoint (a .ckpt file, or a run folder's last); else from scratch. A job the
    cluster requeued (requeued) continues its own last checkpoint whatever it was started with. Refuses a
    checkpoint that cannot continue with settings, and one in the folder that another run wrote (run_id: the
    folder's run, as its run.json says)."""
    own = last_checkpoint(output_dir)
    continues_own = (resume is True or requeued) and own.is_file()
    if continues_own:
        path = own
    elif isinstance(resume, str):
        path = resolve_checkpoint(resume, LAST_CHECKPOINT)
    else:
        return StartPoint()
    checkpoint = read_checkpoint(path)
    saved = checkpoint.get(RESUME_KEY, {})
    written_by = saved.get("run_id")
    if continues_own and None not in (written_by, run_id) and written_by != run_id:
        raise ShakeGPTError(
            f"{path} was written by another run (run {written_by}) than the one this folder holds (run {run_id}, "
            f"run.json): copied here? To continue from it in this folder, say so: resume={path}"
        )
    check_same_settings(path, saved.get("settings"), settings)
    return StartPoint(
        path,
        int(checkpoint.get("global_step", 0)),
        bool(saved.get("eval_pending", False)),
        checkpoint.get("loops", {}).get("fit_loop"),
    )


def evaluate_first(
    trainer: L.Trainer, module: L.LightningModule, datamodule: L.LightningDataModule, start: StartPoint
) -> None:
    """The evaluation a run does before it trains, when start says one is due: step 0's, or the one a resumed
    run's checkpoint was taken before. Lightning's validate does it, on the checkpoint's weights, at the
    checkpoint's step, with the callbacks that report every evaluation; fit then loads the checkpoint again and
    trains. The run's random stream goes on as if the evaluation had not been (its loaders draw a seed)."""
    if not start.eval_pending:
        return
    if start.loop_state is not None:
        load_fit_loop_state(trainer, start.loop_state)
    with isolate_rng():
        trainer.validate(module, datamodule=datamodule, ckpt_path=start.checkpoint, verbose=False)


# What a resumed run may change (config keys, with everything below them): where and on what it runs, how long,
# and what it reports. Every other setting decides the run's numbers, and a resume that changes one is refused.
MAY_CHANGE = (
    "resume",
    "paths",
    "hardware",
    "logger",
    "callbacks",
    "trainer.max_steps",
    # The Trainer's class and its sanity check decide nothing since the evaluation before training is ours
    # (evaluate_first); runs checkpointed before then recorded shakegpt's own Trainer and 200 sanity steps.
    "trainer._target_",
    "trainer.num_sanity_val_steps",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.precision",
    "trainer.default_root_dir",
    "trainer.profiler",
    "trainer.log_every_n_steps",
    "optimizer.fused",
    "data.data_dir",
    "data.cache_dir",
    "data.url",
    "data.pin_memory",
)


def run_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide a run's numbers, flat (`optimizer.lr`), from its resolved config: all but
    MAY_CHANGE. Checkpoints carry them; a resume compares them (check_same_settings)."""
    return {
        key: value
        for key, value in _flatten("", config).items()
        if not any(key == prefix or key.startswith(prefix + ".") for prefix in MAY_CHANGE)
    }


def _flatten(prefix: str, node: Any) -> dict[str, Any]:
    if isinstance(node, dict):
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(f"{prefix}.{key}" if prefix else str(key), value))
        return flat
    return {prefix: node}


def check_same_settings(path: Path, saved: dict[str, Any] | None, settings: dict[str, Any]) -> None:
    """A resumed run keeps the settings that decide its numbers; changing one would be recorded but not
    take effect (the optimizer's state, for one, comes from the checkpoint)."""
    if saved is None:
        return  # a checkpoint from before settings were recorded
    before, now = _flatten("", saved), _flatten("", settings)
    # A setting the checkpoint does not name came after it was written (a new option at its default then), or
    # was not recorded by the version that wrote it.
    changed = [
        f"{key}={now[key]!r} (was {before[key]!r})" for key in sorted(now) if before.get(key, now[key]) != now[key]
    ]
    if changed:
        raise ShakeGPTError(
            f"cannot resume {path} with other settings: {', '.join(changed)}; a resumed run keeps the settings that "
            "decide its numbers (it may change trainer.max_steps, hardware, paths and what it reports): drop those "
            "overrides, or start a new run in another folder"
        )
