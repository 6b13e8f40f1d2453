"""Training entry point: `python -m shakegpt.train [overrides]`, or `-m` for a sweep."""

from __future__ import annotations

import os

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from shakegpt.errors import ShakeGPTError
from shakegpt.model import GPTConfig
from shakegpt.module import GPTModule

# Run folders are named by start time and process id, so two runs started in the same second never share one.
OmegaConf.register_new_resolver("pid", os.getpid, replace=True)


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


def train(cfg: DictConfig) -> float:
    """Fit one model as the config says; returns the best val loss, the metric sweeps optimise."""
    check_accelerator(cfg.hardware.accelerator)
    L.seed_everything(cfg.seed, workers=True)
    torch.set_float32_matmul_precision(cfg.hardware.matmul_precision)

    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    model_config = GPTConfig(vocab_size=datamodule.tokenizer.vocab_size, **cfg.model)
    module = GPTModule.from_model(model_config, datamodule.tokenizer, instantiate(cfg.optimizer))
    print(f"{module.model.num_parameters() / 1e6:.6f} M parameters", flush=True)
    if cfg.hardware.compile:
        module.model.compile()  # in place, so checkpoint keys stay free of `_orig_mod.`

    logger = instantiate(cfg.logger)
    callbacks = [instantiate(callback) for callback in cfg.callbacks.values()]
    trainer: L.Trainer = instantiate(cfg.trainer, logger=logger, callbacks=callbacks)
    logger.log_hyperparams(flat_hparams(cfg), metrics={"hp/best_val_loss": float("nan")})
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    best = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
    return float(best) if best is not None else float("nan")


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        return train(cfg)
    except ShakeGPTError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
