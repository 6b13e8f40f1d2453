"""Training entry point: `python -m shakegpt.train [overrides]`, or `-m` for a sweep."""

from __future__ import annotations

import logging
import os
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
from omegaconf import DictConfig, OmegaConf, read_write

from shakegpt.callbacks import BEST_VAL_METRIC, RUN_RECORD, best_val_loss, read_record, record_failure
from shakegpt.checkpoint import check_resumable, resolve_checkpoint
from shakegpt.errors import ShakeGPTError
from shakegpt.model import GPTConfig
from shakegpt.module import GPTModule

# An absolute path, so the entry point also works when launchers import it as a module.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")

log = logging.getLogger(__name__)

# Run folders are named by start time and process id, so two runs started in the same second never share one.
OmegaConf.register_new_resolver("pid", os.getpid, replace=True)


def cpu_precision() -> str:
    """bf16-mixed where the CPU computes bf16 natively (AVX-512 BF16 or AMX): 2-3x faster training steps
    there (scripts/bench.py); elsewhere bf16 is emulated and slower than fp32, so 32-true."""
    try:
        native_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        native_bf16 = False
    return "bf16-mixed" if native_bf16 else "32-true"


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


def check_accelerator(accelerator: str) -> None:
    """Fail before any work when the asked-for hardware is not on this machine."""
    missing = {
        "mps": not torch.backends.mps.is_available(),
        "cuda": not torch.cuda.is_available(),
        "gpu": not torch.cuda.is_available(),
    }
    if missing.get(accelerator, False):
        raise ShakeGPTError(
            f"hardware={accelerator} was asked for, but this machine has no {accelerator.upper()} device "
            f"that PyTorch can use; run with hardware=cpu, or hardware=auto to take the best one present"
        )


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


def build(cfg: DictConfig, **trainer_kwargs) -> tuple[L.Trainer, GPTModule, L.LightningDataModule]:
    """Everything a run needs, from its config: the trainer, the model and the data."""
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

    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    callbacks += trainer_kwargs.pop("callbacks", [])
    trainer = instantiate(cfg.trainer, logger=instantiate(cfg.logger), callbacks=callbacks, **trainer_kwargs)
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


def train(cfg: DictConfig) -> float:
    """Fit one model as the config says; returns the best val loss, the metric sweeps optimise.

    With resume=true, a run folder whose run finished is skipped (its best val loss returned), and one whose
    run was interrupted continues from its last checkpoint: re-running a sweep into its folder redoes no work.
    """
    output_dir = Path(cfg.paths.output_dir)
    ckpt_path = resolve_checkpoint(cfg.ckpt_path, "last.ckpt") if cfg.ckpt_path else None
    if cfg.resume:
        record = read_record(output_dir / RUN_RECORD)
        if record.get("status") == "finished":
            log.info("%s finished already; skipped (resume=true)", output_dir)
            return float(record.get("best_val_loss", float("nan")))
        last = output_dir / "checkpoints" / "last.ckpt"
        if ckpt_path is None and last.is_file():
            ckpt_path = last
    trainer, module, datamodule = build(cfg)
    if ckpt_path is not None:
        check_resumable(ckpt_path, module.hparams.model_config, module.hparams.vocab)
    print(f"{module.model.num_parameters() / 1e6:.6f} M parameters", flush=True)
    trainer.logger.log_hyperparams(flat_hparams(cfg), metrics={BEST_VAL_METRIC: float("nan")})
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    # Wait for the ranks this process launched, so that none outlives its job.
    for rank_process in getattr(trainer.strategy.launcher, "procs", []):
        rank_process.wait()
    best = best_val_loss(trainer)
    return best if best is not None else float("nan")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Runs train(); a failure is recorded in the run folder's run.json.

    Alone, a bad input ends the program with a one-line message. In a sweep, a failed job is logged and
    returns None, so the other jobs and the sweep report go on; the Optuna sweeper records None as a failed
    trial (a NaN would make it crash instead).
    """
    try:
        with launchable_job():
            return train(cfg)
    except Exception as err:
        record_failure(Path(cfg.paths.output_dir) / RUN_RECORD, err)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error(
                "job %s failed: %s",
                HydraConfig.get().job.override_dirname,
                err,
                exc_info=not isinstance(err, ShakeGPTError),
            )
            return None
        if isinstance(err, ShakeGPTError):
            raise SystemExit(f"error: {err}") from None
        raise


if __name__ == "__main__":
    # Launchers that pickle the task function (submitit) would pickle this __main__ module's contents by
    # value, which fails; the imported module's main is pickled by reference.
    from shakegpt import train as importable

    importable.main()
