"""Training entry point: `python -m shakegpt.train [overrides]`, or `-m` for a sweep."""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, read_write

from shakegpt.callbacks import BEST_VAL_METRIC, best_val_loss
from shakegpt.checkpoint import check_resumable
from shakegpt.errors import Interrupted, ShakeGPTError
from shakegpt.hardware import check_accelerator, cpu_precision
from shakegpt.model import GPTConfig
from shakegpt.module import GPTModule
from shakegpt.resume import AtomicCheckpointIO, StartPoint, start_point
from shakegpt.rundir import (
    METRICS,
    RUN_RECORD,
    FolderInUse,
    RunLock,
    read_metrics,
    read_record,
    record_failure,
    write_metrics,
)

# An absolute path, so the entry point also works when launchers import it as a module.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")

log = logging.getLogger(__name__)

# Run folders are named by start time and process id, so two runs started in the same second never share one.
OmegaConf.register_new_resolver("pid", os.getpid, replace=True)


OmegaConf.register_new_resolver("cpu_precision", cpu_precision, replace=True)


class OutputDirCheck(Callback):
    """A Hydra callback: fail with a one-line message, before anything runs, when the run or sweep folder
    cannot be created (Hydra itself would show a traceback)."""

    @staticmethod
    def _check(folder: str) -> None:
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SystemExit(
                f"error: cannot create the output folder {folder} ({err.strerror}); choose another with "
                "hydra.run.dir=... (or hydra.sweep.dir=... for a sweep)"
            ) from None

    def on_run_start(self, config: DictConfig, **kwargs: object) -> None:
        self._check(config.hydra.run.dir)

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        self._check(config.hydra.sweep.dir)


def flat_hparams(cfg: DictConfig) -> dict[str, object]:
    """The run's settings as flat key/value pairs for TensorBoard's HParams tab."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    container = {key: resolved[key] for key in ("model", "data", "optimizer", "trainer", "hardware", "seed")}
    flat: dict[str, object] = {}

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if not str(key).startswith("_"):
                    walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = node if isinstance(node, (int, float, str, bool)) else str(node)

    walk("", container)
    return flat


def check_settings(cfg: DictConfig) -> None:
    """Values that would fail deep inside a library, or silently train nonsense, refused in one line."""

    def positive_int(name: str, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ShakeGPTError(f"{name} must be a positive whole number, got {value!r}")

    for name in ("batch_size", "block_size"):
        positive_int(f"data.{name}", cfg.data[name])
    for name in ("max_steps", "val_check_interval", "limit_val_batches"):
        positive_int(f"trainer.{name}", cfg.trainer[name])
    lr = cfg.optimizer.lr
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ShakeGPTError(f"optimizer.lr must be a positive number, got {lr!r}")
    if cfg.trainer.get("accumulate_grad_batches", 1) != 1:
        raise ShakeGPTError(
            "trainer.accumulate_grad_batches is not supported: training batches and evaluations are counted in "
            "optimizer steps; raise data.batch_size, or add processes with trainer=ddp hardware.devices=N"
        )


def build(
    cfg: DictConfig, start: StartPoint | None = None, **trainer_kwargs
) -> tuple[L.Trainer, GPTModule, L.LightningDataModule]:
    """Everything a run needs, from its config: the trainer, the model and the data. A run continuing from a
    checkpoint (start) evaluates first only if the checkpoint was taken before an evaluation, and hides the
    TensorBoard events the interrupted run wrote past it."""
    start = start or StartPoint()
    check_settings(cfg)
    check_accelerator(cfg.hardware.accelerator)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.hardware.matmul_precision)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model_config = GPTConfig(vocab_size=datamodule.tokenizer.vocab_size, **cfg.model)
    module = GPTModule.from_model(model_config, datamodule.tokenizer, instantiate(cfg.optimizer))
    if cfg.hardware.compile:
        module.model.compile()  # in place, so checkpoint keys stay free of `_orig_mod.`

    callbacks = [instantiate(callback, _convert_="all") for callback in cfg.callbacks.values()]
    callbacks += trainer_kwargs.pop("callbacks", [])
    logger = instantiate(cfg.logger, **({"purge_step": start.first_unrecorded_step} if start.checkpoint else {}))
    if not start.eval_pending:
        trainer_kwargs["num_sanity_val_steps"] = 0
    trainer = instantiate(
        cfg.trainer, logger=logger, callbacks=callbacks, plugins=[AtomicCheckpointIO()], **trainer_kwargs
    )
    return trainer, module, datamodule


@contextmanager
def launchable_job() -> Iterator[None]:
    """Lets Lightning's DDP launcher start this job's other ranks, inside a Hydra multirun too.

    Lightning starts ranks 1..N-1 by running this program again with its command line plus
    `hydra.run.dir=<the run dir>`. In a multirun that command line is the whole sweep and the run dir is not
    the job's folder, so every rank would run every job, elsewhere. Here the command line becomes this job's
    overrides and the run dir its folder. Afterwards the process group is destroyed and the environment
    variables the launcher set are removed: left set, LOCAL_RANK makes Lightning believe the next job's ranks
    exist already, and it waits for them forever.
    """
    hydra_cfg = HydraConfig.get()
    saved_argv, saved_env = list(sys.argv), dict(os.environ)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)


def hydra_value(value: object) -> str:
    """value as a Hydra override accepts it: quoted when it holds characters Hydra's grammar reads (a sweep
    job's folder name holds '=' and ',')."""
    text = str(value)
    return text if re.fullmatch(r"[\w./~+-]*", text) else "'" + text.replace("'", "\\'") + "'"


def resume_command(output_dir: Path) -> str:
    """The command that continues this run (or, in a sweep, the whole sweep) where it stopped."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    own = ("resume=", "ckpt_path=", "hydra.run.dir=", "hydra.sweep.dir=", "-m", "--multirun")
    args = [arg for arg in hydra_cfg.overrides.task if not arg.startswith(own)]
    if multirun:
        folder = f"hydra.sweep.dir={hydra_value(hydra_cfg.sweep.dir)}"
        args = ["-m", *(arg for arg in sys.argv[1:] if not arg.startswith(own))]
    else:
        folder = f"hydra.run.dir={hydra_value(output_dir)}"
    return shlex.join(["python", "-m", "shakegpt.train", *args, folder, "resume=true"])


def save_run_config(cfg: DictConfig, output_dir: Path) -> None:
    """What Hydra would write into .hydra/ (it is told not to, see conf/hydra/default.yaml)."""
    hydra_cfg = HydraConfig.get()
    folder = output_dir / ".hydra"
    folder.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, folder / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), folder / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(hydra_cfg.overrides.task)), folder / "overrides.yaml")


def drop_records_from(output_dir: Path, step: int) -> None:
    """An interrupted run may have recorded evaluations its checkpoint does not hold; the resumed run records
    them again."""
    path = output_dir / METRICS
    rows = read_metrics(path)
    kept = [row for row in rows if row.step < step]
    if len(kept) != len(rows):
        write_metrics(path, kept)


def train(cfg: DictConfig) -> float:
    """Fit one model as the config says; returns the best val loss, the metric sweeps optimise.

    With resume=true, a run folder whose run finished (at trainer.max_steps or beyond) is skipped, its best val
    loss returned, and one whose run was interrupted continues from its last checkpoint: re-running a sweep
    into its folder redoes no work.
    """
    output_dir = Path(cfg.paths.output_dir)
    check_settings(cfg)
    record = read_record(output_dir / RUN_RECORD)
    done = record.get("status") in ("finished", "diverged") and record.get("steps", 0) >= cfg.trainer.max_steps
    if cfg.resume and done and not cfg.ckpt_path:
        log.info("%s finished already; skipped (resume=true)", output_dir)
        return float(record.get("best_val_loss") or float("nan"))
    settings = OmegaConf.to_container(cfg.callbacks.run_checkpoints.settings, resolve=True)
    start = start_point(output_dir, cfg.ckpt_path, cfg.resume, settings)
    if rank_zero_only.rank == 0:
        save_run_config(cfg, output_dir)
        drop_records_from(output_dir, start.first_unrecorded_step)
    trainer, module, datamodule = build(cfg, start)
    if start.checkpoint is not None:
        check_resumable(start.checkpoint, module.hparams.model_config, module.hparams.vocab)
    print(f"{module.model.num_parameters() / 1e6:.6f} M parameters", flush=True)
    if start.checkpoint is None:  # a resumed run's TensorBoard folder has them already
        trainer.logger.log_hyperparams(flat_hparams(cfg), metrics={BEST_VAL_METRIC: float("nan")})
    trainer.fit(module, datamodule=datamodule, ckpt_path=start.checkpoint)
    # Wait for the ranks this process launched, so that none outlives its job.
    for rank_process in getattr(trainer.strategy.launcher, "procs", []):
        rank_process.wait()
    best = best_val_loss(trainer)
    return best if best is not None else float("nan")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Runs train() holding the run folder's lock; a failure is recorded in the run folder's run.json.

    Alone, a bad input ends the program with a one-line message, and an interruption with one line saying how
    to continue and the signal's exit status (130 for Ctrl-C, 143 for SIGTERM). In a sweep, a failed job is
    logged and returns None, so the other jobs and the sweep report go on; the Optuna sweeper records None as a
    failed trial (a NaN would make it crash instead). An interruption stops the whole sweep.
    """
    output_dir = Path(cfg.paths.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    # DDP ranks other than the first write nothing; the first holds the lock for them.
    lock = RunLock(output_dir) if rank_zero_only.rank == 0 else None
    # A run refused before it starts (a resume with other settings) leaves the folder's record as it was.
    record_before = read_record(output_dir / RUN_RECORD)

    def record(err: BaseException) -> None:
        if not record_before or read_record(output_dir / RUN_RECORD) != record_before:
            record_failure(output_dir / RUN_RECORD, err)

    try:
        if lock is not None:
            lock.acquire()
        with launchable_job():
            return train(cfg)
    except FolderInUse as err:
        if multirun and cfg.resume:
            log.warning("job %s skipped: %s", HydraConfig.get().job.override_dirname, err)
            return None
        raise SystemExit(f"error: {err}") from None
    except Interrupted as err:
        record(err)
        print(f"{err}; continue with: {resume_command(output_dir)}", file=sys.stderr, flush=True)
        raise SystemExit(err.exit_code) from None
    except Exception as err:
        record(err)
        if multirun:
            log.error(
                "job %s failed: %s",
                HydraConfig.get().job.override_dirname,
                err,
                exc_info=not isinstance(err, (ShakeGPTError, OSError)),
            )
            return None
        if isinstance(err, ShakeGPTError):
            raise SystemExit(f"error: {err}") from None
        if isinstance(err, OSError):  # a full disk, a read-only folder: the earlier checkpoints are intact
            raise SystemExit(
                f"error: {err.strerror or err} ({err.filename or output_dir}); the earlier checkpoints are intact"
            ) from None
        raise
    finally:
        if lock is not None:
            lock.release()


if __name__ == "__main__":
    # Launchers that pickle the task function (submitit) would pickle this __main__ module's contents by
    # value, which fails; the imported module's main is pickled by reference.
    from shakegpt import train as importable

    importable.main()
