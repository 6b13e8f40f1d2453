"""Sampling entry point: `python -m shakegpt.generate ckpt_path=<run folder or .ckpt> prompt="ROMEO:"`."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from shakegpt.errors import ShakeGPTError
from shakegpt.module import GPTModule


def resolve_checkpoint(ckpt_path: str) -> Path:
    """A .ckpt file as given, or for a run folder its best checkpoint (lowest val loss)."""
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "best.ckpt"
    if not path.is_file():
        raise ShakeGPTError(f"no checkpoint at {path}: give a .ckpt file or a run folder holding checkpoints/")
    return path


def load_module(ckpt_path: str, device: str = "cpu") -> GPTModule:
    """Rebuild the model and its vocabulary from a checkpoint alone."""
    path = resolve_checkpoint(ckpt_path)
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile):
        raise ShakeGPTError(f"{path} is not a readable checkpoint: truncated, corrupt, or not a PyTorch file") from None
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if not {"model_config", "vocab"} <= hparams.keys() or "state_dict" not in checkpoint:
        raise ShakeGPTError(f"{path} is not a shakegpt checkpoint: it lacks the model config and vocabulary")
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


@hydra.main(version_base="1.3", config_path="../conf", config_name="generate")
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
