"""Dropout, causal attention and the MLP's first layer on the CPU, where PyTorch's own are slow.

PyTorch's CPU dropout draws its mask with `bernoulli_`, one float per element from one thread: at n_layer 12
that was a third of a training step (scripts/profile_step.py, docs/performance.md), and
`scaled_dot_product_attention` with dropout falls back to the same masked softmax written out. Here the mask
takes 16 random bits per element from the same global generator (so seeding and resuming work as before),
and attention, with dropout for training and without for evaluation, computes only the causal (lower) part of
its scores, keeping them in the CPU's cache by working through the batch a few sequences at a time.
The MLP's first linear layer and its ReLU are one oneDNN product, which adds the bias and applies the ReLU as
it writes its output instead of in two more passes over it.
The arithmetic is the classic model's: the same dropout sites, probability (to within 2**-17) and 1 / (1 - p)
scaling.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from shakegpt.compat import onednn_linear_relu, onednn_multiplies_bf16, softmax_backward

# Scores per chunk of the attention: 8 MB in bf16, which stays in cache through the passes over it.
CHUNK_SCORES = 2**22
# Queries per block of the causal attention: at time 256, 64 measured fastest (docs/performance.md).
QUERY_BLOCK = 64
# Rows from which the MLP's first layer is one oneDNN product: with fewer (a sampling step's one row), oneDNN's
# fp32 product ran 1.1-3x slower than F.linear then relu, and with 256 (a window) or more 1.6-1.9x faster
# (machine D, docs/performance.md).
FUSED_MIN_ROWS = 256


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1 where an element is kept and 0 where it is dropped, each independently with probability p (to within
    2**-17: 0.2 is 0.199997, far finer than the bf16 activations it multiplies, whose steps are 2**-8), in
    dtype: 16 random bits per element, drawn 64 at a time from the global generator (2-4x faster than 32
    bits, docs/performance.md), compared straight into dtype (multiplying by it is 10x faster than
    masked_fill with a boolean mask here)."""
    n = math.prod(shape)
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)
    threshold = min(round(p * 2**16) - 2**15, 2**15 - 1)
    keep = torch.empty(shape, dtype=dtype, device=device)
    return torch.ge(bits.view(torch.int16)[:n].view(shape), threshold, out=keep)


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """x with each element zeroed with probability p and the rest scaled by 1 / (1 - p)."""
    return x * keep_mask(x.shape, p, x.dtype, x.device).mul_(1.0 / (1.0 - p))


class CausalAttentionWithDropout(torch.autograd.Function):
    """softmax(q k^T / sqrt(d), causally masked), dropped out with probability p, times v, over
    (batch, head, time, channel) tensors of one window.

    Causal: the queries go QUERY_BLOCK at a time, each block against the keys up to its last query only, so
    the scores, softmax and dropout masks of the upper triangle are skipped (at time 256, 62.5% of the full
    square is computed), and only the diagonal blocks are masked. Both passes go a few sequences at a time
    (CHUNK_SCORES), so each chunk's scores stay in cache. For the backward pass it keeps each block's attention
    probabilities and keep mask, in the inputs' dtype (keeping instead one tensor, the probabilities negated
    where dropped, took four more passes over the scores per block to save memory: at n_layer 12 a training
    step's peak went from 0.29x the classic model's to 0.34x, docs/performance.md). The 1 / sqrt(d) and
    1 / (1 - p) scalings are applied to q and v, which are 2 * time / channel times smaller than the scores.
    """

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
        b, h, t, c = q.shape
        scaled_q, k, scaled_v = _matrices(q * (1.0 / math.sqrt(c)), k, v * (1.0 / (1.0 - p)))
        block, rows = _blocking(t)
        output = torch.empty_like(scaled_q)
        probs_and_masks = []
        with torch.autocast(q.device.type, enabled=False):
            for chunk, start, end, probs in _causal_probs(scaled_q, k, block, rows):
                keep = keep_mask(probs.shape, p, q.dtype, q.device)
                torch.bmm(probs * keep, scaled_v[chunk, :end], out=output[chunk, start:end])
                probs_and_masks += [probs, keep]
        ctx.save_for_backward(scaled_q, k, scaled_v, *probs_and_masks)
        ctx.scales = (1.0 / math.sqrt(c), 1.0 / (1.0 - p))
        ctx.rows, ctx.block = rows, block
        return output.view(b, h, t, c)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        scaled_q, k, scaled_v, *probs_and_masks = ctx.saved_tensors
        shape = grad.shape
        grad = grad.to(scaled_q.dtype).reshape(scaled_q.shape)
        grad_q = torch.empty_like(scaled_q)
        grad_k, grad_v = torch.zeros_like(k), torch.zeros_like(scaled_v)
        blocks = iter(probs_and_masks)
        with torch.autocast(grad.device.type, enabled=False):
            for chunk in _chunks(scaled_q.size(0), ctx.rows):
                queries_of = {start: queries for start, _, queries in _query_blocks(scaled_q[chunk], ctx.block)}
                for start, end, chunk_grad in _query_blocks(grad[chunk], ctx.block):
                    probs, keep = next(blocks), next(blocks)
                    grad_v[chunk, :end] += torch.bmm((probs * keep).transpose(1, 2), chunk_grad)
                    grad_probs = torch.bmm(chunk_grad, scaled_v[chunk, :end].transpose(1, 2)).mul_(keep)
                    grad_scores = softmax_backward(grad_probs, probs, -1, probs.dtype)
                    torch.bmm(grad_scores, k[chunk, :end], out=grad_q[chunk, start:end])
                    grad_k[chunk, :end] += torch.bmm(grad_scores.transpose(1, 2), queries_of[start])
        q_scale, v_scale = ctx.scales
        return grad_q.mul_(q_scale).view(shape), grad_k.view(shape), grad_v.mul_(v_scale).view(shape), None


def _blocking(t: int) -> tuple[int, int]:
    """(queries per block, sequences x heads per chunk) for windows of t positions."""
    return min(QUERY_BLOCK, t), max(1, CHUNK_SCORES // (t * t))


def _chunks(n: int, rows: int) -> Iterator[slice]:
    return (slice(i, i + rows) for i in range(0, n, rows))


def _query_blocks(x: torch.Tensor, block: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, end, x[:, start:end] made contiguous) for each block of queries along x's time dimension."""
    for start in range(0, x.size(1), block):
        end = min(start + block, x.size(1))
        yield start, end, x[:, start:end].contiguous()


def _matrices(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(batch, head, time, channel) tensors as contiguous (sequence x head, time, channel) ones: CPU batched
    matmuls copy operands whose matrices are not evenly spaced (as the key and value prefixes k[chunk, :end]
    are, still)."""
    b, h, t, c = q.shape
    return tuple(x.reshape(b * h, t, c).contiguous() for x in (q, k, v))


def _causal_probs(
    scaled_q: torch.Tensor, k: torch.Tensor, block: int, rows: int
) -> Iterator[tuple[slice, int, int, torch.Tensor]]:
    """(chunk, start, end, softmax of the causally masked scores) for each block of queries start:end of
    each chunk of rows: the queries' scores against the keys up to their block's last, so that only the
    diagonal block needs a mask."""
    future = torch.full((block, block), float("-inf"), dtype=scaled_q.dtype, device=scaled_q.device).triu(1)
    for chunk in _chunks(scaled_q.size(0), rows):
        for start, end, queries in _query_blocks(scaled_q[chunk], block):
            scores = torch.bmm(queries, k[chunk, :end].transpose(1, 2))
            scores[..., start:].add_(future[: end - start, : end - start])
            yield chunk, start, end, scores.softmax(dim=-1)


def causal_attention_with_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    return CausalAttentionWithDropout.apply(q, k, v, p)


def causal_attention_without_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d), causally masked) times v, over (batch, head, time, channel) tensors of one
    window, without autograd: evaluation's attention, as the training kernel computes it without dropout
    (1.6-2x faster than scaled_dot_product_attention's CPU kernel in bf16, docs/performance.md)."""
    b, h, t, c = q.shape
    scaled_q, k, v = _matrices(q * (1.0 / math.sqrt(c)), k, v)
    output = torch.empty_like(scaled_q)
    with torch.autocast(q.device.type, enabled=False):
        for chunk, start, end, probs in _causal_probs(scaled_q, k, *_blocking(t)):
            torch.bmm(probs, v[chunk, :end], out=output[chunk, start:end])
    return output.view(b, h, t, c)


def product_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a linear layer multiplies x in: autocast's on x's device where autocast is on, else x's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def can_fuse_linear_relu(dtype: torch.dtype, rows: int) -> bool:
    """Whether linear_relu is the faster way to a CPU layer's relu(x weight^T + bias), for x of rows rows in
    dtype: oneDNN is in this PyTorch and not switched off, multiplies dtype (float32, or bfloat16 where the CPU
    has the instructions), and x has at least FUSED_MIN_ROWS rows."""
    if rows < FUSED_MIN_ROWS or not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and onednn_multiplies_bf16())


def linear_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """relu(x weight^T + bias) on the CPU as one oneDNN product that adds the bias and applies the ReLU while it
    writes its output, in product_dtype(x) (as F.linear would be): at the MLP's shape 1.3x faster than F.linear
    then relu in bf16, and 2.3x in fp32, where F.linear's product goes to MKL (machine C, docs/performance.md).
    Check can_fuse_linear_relu first."""
    dtype = product_dtype(x)
    return LinearReLU.apply(x.to(dtype), weight.to(dtype), bias.to(dtype))


class LinearReLU(torch.autograd.Function):
    """relu(x weight^T + bias) forward in one oneDNN call; backward as autograd differentiates F.linear then relu."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        output = onednn_linear_relu(x, weight, bias)
        ctx.save_for_backward(x, weight, output)
        return output

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, output = ctx.saved_tensors
        # The ReLU's output is positive exactly where its input is.
        grad = torch.ops.aten.threshold_backward(grad, output, 0).flatten(0, -2)
        grad_x = (grad @ weight).view(x.shape) if ctx.needs_input_grad[0] else None
        grad_weight = grad.t() @ x.flatten(0, -2) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias
