"""Sampling entry point: `python -m shakegpt.generate ckpt_path=<run folder or .ckpt> prompt="ROMEO:"`."""

from __future__ import annotations

import math
from typing import get_args

import hydra
from omegaconf import DictConfig

from shakegpt.checkpoint import read_checkpoint, resolve_checkpoint
from shakegpt.config_dir import config_dir
from shakegpt.errors import ShakeGPTError
from shakegpt.hardware import pick_device
from shakegpt.launch import accepting_pasted_folders
from shakegpt.model import KVCacheMode
from shakegpt.module import GPTModule
from shakegpt.rundir import BEST_CHECKPOINT

CONFIG_DIR = config_dir()


def load_module(ckpt_path: str, device: str = "cpu") -> GPTModule:
    """Rebuild the model and its vocabulary from a checkpoint alone (a run folder means its best one)."""
    path = resolve_checkpoint(ckpt_path, BEST_CHECKPOINT)
    checkpoint = read_checkpoint(path, device)
    hparams = checkpoint["hyper_parameters"]
    module = GPTModule(hparams["model_config"], hparams["vocab"])
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise ShakeGPTError(f"{path} does not match the model its config describes: {err}") from None
    return module.to(device)


def check_options(cfg: DictConfig) -> None:
    """Sampling options that would give a traceback or silent nonsense, refused in one line."""
    if cfg.ckpt_path is None:
        raise ShakeGPTError("ckpt_path is required: a run folder or a .ckpt file")
    tokens = cfg.max_new_tokens
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ShakeGPTError(f"max_new_tokens must be a whole number, 0 or more, got {tokens!r}")
    temperature = cfg.temperature
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise ShakeGPTError(f"temperature must be a positive number, got {temperature!r}")
    top_k = cfg.top_k
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
        raise ShakeGPTError(f"top_k must be a positive whole number, or null for no cut-off, got {top_k!r}")
    if cfg.kv_cache not in get_args(KVCacheMode):
        raise ShakeGPTError(f"kv_cache must be one of {', '.join(get_args(KVCacheMode))}, got {cfg.kv_cache!r}")


@accepting_pasted_folders
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="generate")
def main(cfg: DictConfig) -> None:
    try:
        check_options(cfg)
        module = load_module(cfg.ckpt_path, pick_device(cfg.device))
        text = module.sample(cfg.prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.seed, cfg.kv_cache)
    except ShakeGPTError as err:
        raise SystemExit(f"error: {err}") from None
    print(text)


if __name__ == "__main__":
    main()
