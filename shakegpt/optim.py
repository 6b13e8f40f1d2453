"""The optimizers and learning-rate schedules the config groups name (conf/train/optimizer/, lr_schedule/)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR


def adamw_decaying_matrices(
    params: Iterable[torch.nn.Parameter], weight_decay: float, **kwargs: Any
) -> torch.optim.AdamW:
    """AdamW as nanoGPT sets it up: weight decay on the matrices (linear weights, embeddings), none on the
    biases and LayerNorm parameters. (torch.optim.AdamW alone, the classic script's, decays every parameter.)"""
    params = list(params)
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, **kwargs)


def warmup_cosine_lr(step: int, lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """nanoGPT's get_lr: linear warmup over warmup_steps, cosine decay to min_lr at decay_steps, min_lr after.
    step counts optimizer updates from 0; update `step` uses this learning rate."""
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if step > decay_steps:
        return min_lr
    ratio = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, decay_steps: int, min_lr: float) -> LambdaLR:
    """warmup_cosine_lr around the optimizer's own learning rate, stepped once per optimizer update."""
    lr = optimizer.param_groups[0]["lr"]
    return LambdaLR(optimizer, lambda step: warmup_cosine_lr(step, lr, min_lr, warmup_steps, decay_steps) / lr)


def constant(optimizer: torch.optim.Optimizer) -> None:
    """No schedule: optimizer.lr throughout, as in the classic script."""
    return None
