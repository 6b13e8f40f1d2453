"""One training run, from its composed config: the settings checked, the trainer, model and data built, the
model fitted (or the run skipped, when resume=true finds it finished). The entry point, shakegpt.train, imports
this module only once Hydra has composed a config, so that `--help` and shell completion answer without
loading Lightning and torch."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from shakegpt.callbacks import best_val_loss, log_hparams
from shakegpt.checkpoint import check_resumable
from shakegpt.errors import ShakeGPTError
from shakegpt.hardware import check_accelerator, keep_freed_memory
from shakegpt.launch import restarted_by_slurm, save_run_config, wait_for_ranks
from shakegpt.module import GPTModule
from shakegpt.resume import (
    AtomicCheckpointIO,
    StartPoint,
    evaluate_first,
    finished,
    forget_the_unrecorded,
    run_settings,
    start_point,
)
from shakegpt.rundir import RUN_RECORD, new_run_id, read_record

log = logging.getLogger(__name__)

# Past this, AdamW's first update (lr / (1 - beta1) = 10 x lr) is no float32 number and the optimizer fails
# with a traceback; below it, a learning rate too large diverges, which the run reports (RunCheckpoints).
LARGEST_LR = torch.finfo(torch.float32).max / 10


def flat_hparams(cfg: DictConfig) -> dict[str, object]:
    """The run's settings as flat key/value pairs for TensorBoard's HParams tab."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    keys = ("model", "data", "optimizer", "lr_schedule", "trainer", "hardware", "seed")
    container = {key: resolved[key] for key in keys}
    # The hardware group's accelerator, devices and precision are defaults for the trainer's, which took effect.
    container["hardware"] = {key: v for key, v in container["hardware"].items() if key not in resolved["trainer"]}
    # The run's folder differs in every run and says nothing about it: as a column it would come before the
    # settings a sweep varies (TensorBoard puts the columns whose values differ first).
    container["trainer"] = {key: v for key, v in container["trainer"].items() if key != "default_root_dir"}
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

    def number(value: object) -> bool:
        return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)

    lr, decay, fraction, seed = cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.data.train_fraction, cfg.seed
    if not number(lr) or lr <= 0:
        raise ShakeGPTError(f"optimizer.lr must be a positive number, got {lr!r}")
    if lr > LARGEST_LR:
        raise ShakeGPTError(
            f"optimizer.lr must be at most {LARGEST_LR:.1e}: AdamW's first step moves each weight by 10 x lr, and "
            f"float32 ends at 3.4e+38; got {lr!r}"
        )
    if not number(decay) or decay < 0:
        raise ShakeGPTError(f"optimizer.weight_decay must be a number, 0 or more, got {decay!r}")
    if not number(fraction) or not 0 < fraction < 1:
        raise ShakeGPTError(f"data.train_fraction must be between 0 and 1 (the rest is for val), got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ShakeGPTError(f"seed must be a whole number from 0 to {2**32 - 1}, got {seed!r}")
    if not isinstance(cfg.resume, (bool, str)) or cfg.resume == "":
        raise ShakeGPTError(
            f"resume must be true, false or a checkpoint (a .ckpt file or a run folder), got {cfg.resume!r}"
        )
    if cfg.trainer.get("accumulate_grad_batches", 1) != 1:
        raise ShakeGPTError(
            "trainer.accumulate_grad_batches is not supported: training batches and evaluations are counted in "
            "optimizer steps; raise data.batch_size, or add processes with trainer=ddp hardware.devices=N"
        )


def build(
    cfg: DictConfig,
    start: StartPoint | None = None,
    settings: dict[str, object] | None = None,
    run_id: str | None = None,
    **trainer_kwargs,
) -> tuple[L.Trainer, GPTModule, L.LightningDataModule]:
    """Everything a run needs, from its config: the trainer, the model and the data. A run continuing from a
    checkpoint (start) hides the TensorBoard events the interrupted run wrote past it. run_id: the run's
    identity (a new one if None)."""
    start = start or StartPoint()
    check_settings(cfg)
    check_accelerator(cfg.hardware.accelerator)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.hardware.matmul_precision)
    if cfg.hardware.keep_freed_memory:
        keep_freed_memory()

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    # Plain values, not instantiated: the module keeps them as the model config its checkpoints carry.
    model_config = {**OmegaConf.to_container(cfg.model, resolve=True), "vocab_size": datamodule.tokenizer.vocab_size}
    module = GPTModule(
        model_config, datamodule.tokenizer.vocab, instantiate(cfg.optimizer), instantiate(cfg.lr_schedule)
    )
    if cfg.hardware.compile:
        module.model.compile()  # in place, so checkpoint keys stay free of `_orig_mod.`

    # The checkpoints carry the settings that decide the run's numbers and the run's identity, for a resume to
    # compare; run.json carries the identity too.
    settings = settings if settings is not None else run_settings(OmegaConf.to_container(cfg, resolve=True))
    run_id = run_id or new_run_id()
    given = {"run_checkpoints": {"settings": settings, "run_id": run_id}, "run_record": {"run_id": run_id}}
    callbacks = [
        instantiate(callback, _convert_="all", **given.get(name, {})) for name, callback in cfg.callbacks.items()
    ]
    callbacks += trainer_kwargs.pop("callbacks", [])
    logger = instantiate(cfg.logger, **({"purge_step": start.first_unrecorded_step} if start.checkpoint else {}))
    trainer = instantiate(
        cfg.trainer, logger=logger, callbacks=callbacks, plugins=[AtomicCheckpointIO()], **trainer_kwargs
    )
    return trainer, module, datamodule


def train(cfg: DictConfig) -> float:
    """Fit one model as the config says; returns the best val loss, the metric sweeps optimise.

    With resume=true (and in a job SLURM requeued), a run folder whose run finished (at trainer.max_steps or
    beyond, or stopped early) is skipped, its best val loss returned, and one whose run was interrupted
    continues from its last checkpoint: re-running a sweep into its folder redoes no work.
    """
    output_dir = Path(cfg.paths.output_dir)
    check_settings(cfg)
    requeued = restarted_by_slurm()
    record = read_record(output_dir / RUN_RECORD)
    if finished(record, cfg.resume, requeued, cfg.trainer.max_steps):
        log.info("%s finished already; skipped (resume=true)", output_dir)
        return float(record.get("best_val_loss") or float("nan"))
    settings = run_settings(OmegaConf.to_container(cfg, resolve=True))
    run_id = record.get("run_id") or new_run_id()
    start = start_point(output_dir, cfg.resume, settings, requeued, run_id)
    if rank_zero_only.rank == 0:
        save_run_config(cfg, output_dir)
        forget_the_unrecorded(output_dir, start)
    trainer, module, datamodule = build(cfg, start, settings, run_id)
    if start.checkpoint is not None:
        check_resumable(start.checkpoint, module.hparams.model_config, module.hparams.vocab)
    print(f"{module.model.num_parameters() / 1e6:.6f} M parameters", flush=True)
    if start.checkpoint is None:  # a resumed run's TensorBoard folder has them already
        log_hparams(trainer.logger, flat_hparams(cfg))
    evaluate_first(trainer, module, datamodule, start)
    trainer.fit(module, datamodule=datamodule, ckpt_path=start.checkpoint)
    wait_for_ranks(trainer)
    best = best_val_loss(trainer)
    return best if best is not None else float("nan")
