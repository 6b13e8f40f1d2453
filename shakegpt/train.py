"""Training entry point: `python -m shakegpt.train [overrides]`, or `-m` for a sweep."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from shakegpt.callbacks import RUN_RECORD, record_failure
from shakegpt.errors import ShakeGPTError
from shakegpt.model import GPTConfig
from shakegpt.module import GPTModule

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


def train(cfg: DictConfig) -> float:
    """Fit one model as the config says; returns the best val loss, the metric sweeps optimise."""
    trainer, module, datamodule = build(cfg)
    print(f"{module.model.num_parameters() / 1e6:.6f} M parameters", flush=True)
    trainer.logger.log_hyperparams(flat_hparams(cfg), metrics={"hp/best_val_loss": float("nan")})
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    return float(best) if best is not None else float("nan")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Runs train(); a failure is recorded in the run folder's run.json.

    Alone, a bad input ends the program with a one-line message. In a sweep, a failed job is logged and
    returns NaN (which Optuna records as a failed trial), so the other jobs and the sweep report go on.
    """
    try:
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
            return float("nan")
        if isinstance(err, ShakeGPTError):
            raise SystemExit(f"error: {err}") from None
        raise


if __name__ == "__main__":
    main()
