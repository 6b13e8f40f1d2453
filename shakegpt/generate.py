"""Sampling entry point: `python -m shakegpt.generate ckpt_path=<run folder or .ckpt> prompt="ROMEO:"`."""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from shakegpt.checkpoint import read_checkpoint, resolve_checkpoint
from shakegpt.errors import ShakeGPTError
from shakegpt.module import GPTModule

# An absolute path, so the entry point also works when launchers import it as a module.
CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def load_module(ckpt_path: str, device: str = "cpu") -> GPTModule:
    """Rebuild the model and its vocabulary from a checkpoint alone (a run folder means its best one)."""
    path = resolve_checkpoint(ckpt_path, "best.ckpt")
    checkpoint = read_checkpoint(path, device)
    hparams = checkpoint["hyper_parameters"]
    module = GPTModule(hparams["model_config"], hparams["vocab"])
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise ShakeGPTError(f"{path} does not match the model its config describes: {err}") from None
    return module.to(device)


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="generate")
def main(cfg: DictConfig) -> None:
    try:
        if cfg.ckpt_path is None:
            raise ShakeGPTError("ckpt_path is required: a run folder or a .ckpt file")
        module = load_module(cfg.ckpt_path, pick_device(cfg.device))
        text = module.sample(cfg.prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.seed, cfg.kv_cache)
    except ShakeGPTError as err:
        raise SystemExit(f"error: {err}") from None
    print(text)


if __name__ == "__main__":
    main()
