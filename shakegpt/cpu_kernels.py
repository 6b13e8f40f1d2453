"""Dropout and attention-with-dropout for training on the CPU, where PyTorch's own are slow.

PyTorch's CPU dropout draws its mask with `bernoulli_`, one float per element from one thread: at n_layer 12
that was a third of a training step (scripts/profile_step.py, docs/performance.md), and
`scaled_dot_product_attention` with dropout falls back to the same masked softmax written out. Here the mask
takes 32 random bits per element from the same global generator (so seeding and resuming work as before),
and attention keeps its scores in the CPU's cache by working through the batch a few sequences at a time.
The arithmetic is the classic model's: the same dropout sites, probability and 1 / (1 - p) scaling.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from shakegpt.compat import softmax_backward

# Scores per chunk of the attention: 8 MB in bf16, which stays in cache through the passes over it.
CHUNK_SCORES = 2**22


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1 where an element is kept and 0 where it is dropped, each independently with probability p (to
    within 2**-32, finer than a float's 2**-24), in dtype: 32 random bits per element, drawn 64 at a time
    from the global generator, compared straight into dtype (multiplying by it is 10x faster than
    masked_fill with a boolean mask here)."""
    n = math.prod(shape)
    bits = torch.empty((n + 1) // 2, dtype=torch.int64, device=device).random_(-(2**63), None)
    threshold = min(round(p * 2**32) - 2**31, 2**31 - 1)
    keep = torch.empty(shape, dtype=dtype, device=device)
    return torch.ge(bits.view(torch.int32)[:n].view(shape), threshold, out=keep)


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """x with each element zeroed with probability p and the rest scaled by 1 / (1 - p)."""
    return x * keep_mask(x.shape, p, x.dtype, x.device).mul_(1.0 / (1.0 - p))


class CausalAttentionWithDropout(torch.autograd.Function):
    """softmax(q k^T / sqrt(d), causally masked), dropped out with probability p, times v, over
    (batch, head, time, channel) tensors of one window.

    Both passes go a few sequences at a time (CHUNK_SCORES), so each chunk's scores stay in cache. For the
    backward pass it keeps one tensor per chunk, in the inputs' dtype: the attention probabilities, negated
    where dropped. Probabilities are never negative, so their magnitude and the mask both come back from it
    exactly, in half the memory of keeping them apart. The 1 / sqrt(d) and 1 / (1 - p) scalings are applied
    to q and v, which are 2 * time / channel times smaller than the scores.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
        b, h, t, _ = q.shape
        scaled_q, scaled_v = q * (1.0 / math.sqrt(q.size(-1))), v * (1.0 / (1.0 - p))
        future = torch.full((t, t), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
        rows = max(1, CHUNK_SCORES // (h * t * t))
        outputs, signed_probs = [], []
        with torch.autocast(q.device.type, enabled=False):
            for i in range(0, b, rows):
                scores = scaled_q[i : i + rows] @ k[i : i + rows].transpose(-2, -1)
                probs = scores.add_(future).softmax(dim=-1)
                dropped = probs * keep_mask(probs.shape, p, q.dtype, q.device)
                outputs.append(dropped @ scaled_v[i : i + rows])
                # dropped - probs / 2 is +probs / 2 where kept and -probs / 2 where dropped, exactly.
                signed_probs.append(torch.sub(dropped, probs, alpha=0.5).mul_(2.0))
        ctx.save_for_backward(scaled_q, k, scaled_v, *signed_probs)
        ctx.scales = (1.0 / math.sqrt(q.size(-1)), 1.0 / (1.0 - p))
        ctx.rows = rows
        return torch.cat(outputs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        scaled_q, k, scaled_v, *signed_probs = ctx.saved_tensors
        grad_q, grad_k, grad_v = [], [], []
        with torch.autocast(grad.device.type, enabled=False):
            for signed, i in zip(signed_probs, range(0, scaled_q.size(0), ctx.rows), strict=True):
                rows = slice(i, i + ctx.rows)
                chunk_grad = grad[rows].to(signed.dtype)
                grad_v.append(signed.clamp(min=0.0).transpose(-2, -1) @ chunk_grad)
                keep = torch.gt(signed, 0.0, out=torch.empty_like(signed))  # where a probability is 0, either will do
                grad_probs = (chunk_grad @ scaled_v[rows].transpose(-2, -1)).mul_(keep)
                grad_scores = softmax_backward(grad_probs, signed.abs(), -1, signed.dtype)
                grad_q.append(grad_scores @ k[rows])
                grad_k.append(grad_scores.transpose(-2, -1) @ scaled_q[rows])
        q_scale, v_scale = ctx.scales
        return torch.cat(grad_q) * q_scale, torch.cat(grad_k), torch.cat(grad_v) * v_scale, None


def causal_attention_with_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    return CausalAttentionWithDropout.apply(q, k, v, p)
