"""Sampling entry point: `python -m shakegpt.generate ckpt_path=<run folder or .ckpt> prompt="ROMEO:"`."""

from __future__ import annotations

import itertools
import math
import sys
from typing import get_args

from omegaconf import DictConfig

from shakegpt.errors import Interrupted, ShakeGPTError, stop_on_signals
from shakegpt.launch import entry_point


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
    seed = cfg.seed
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ShakeGPTError(f"seed must be a whole number from 0 to {2**64 - 1}, got {seed!r}")
    top_k = cfg.top_k
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
        raise ShakeGPTError(f"top_k must be a positive whole number, or null for no cut-off, got {top_k!r}")
    from shakegpt.model import KVCacheMode  # torch: after --help and shell completion, which answer without it

    if cfg.kv_cache not in get_args(KVCacheMode):
        raise ShakeGPTError(f"kv_cache must be one of {', '.join(get_args(KVCacheMode))}, got {cfg.kv_cache!r}")


@entry_point("generate")
def main(cfg: DictConfig) -> None:
    # torch and Lightning load here, once Hydra has a config to run: `--help` and shell completion answer
    # without them (seconds of imports on a small machine).
    from shakegpt.checkpoint import load_module
    from shakegpt.hardware import pick_device

    try:
        check_options(cfg)
        module = load_module(cfg.ckpt_path, pick_device(cfg.device))
        text = module.stream(cfg.prompt, cfg.max_new_tokens, cfg.temperature, cfg.top_k, cfg.seed, cfg.kv_cache)
        prompt = next(text)  # once it is known to be in the checkpoint's vocabulary
    except ShakeGPTError as err:
        raise SystemExit(f"error: {err}") from None
    # The text as it comes (minutes for a large model on a CPU); Ctrl-C keeps what came.
    stop_on_signals(raise_interrupted=True)
    try:
        for piece in itertools.chain([prompt], text):
            print(piece, end="", flush=True)
    except Interrupted as err:
        print(flush=True)
        print(err, file=sys.stderr)
        raise SystemExit(err.exit_code) from None
    print()


if __name__ == "__main__":
    main()
