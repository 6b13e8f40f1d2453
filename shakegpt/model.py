"""A character-level GPT in plain PyTorch: no Lightning, no Hydra, no files.

The classic char-level GPT: token and learned position embeddings, pre-LayerNorm blocks of causal self-attention
and a 4x ReLU MLP, a final LayerNorm and a linear head. Dropout is applied at the classic model's three sites
only: on the attention weights, after the attention projection, and after the MLP; never on the embeddings.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from shakegpt.cpu_kernels import (
    can_fuse_linear_relu,
    causal_attention_with_dropout,
    causal_attention_without_dropout,
    dropout,
    linear_relu,
    product_dtype,
)
from shakegpt.errors import ShakeGPTError

KVCacheMode = Literal["exact", "fast", "off"]


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 256
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    # On the attention weights, after the attention projection and after the MLP.
    dropout: float = 0.2

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ShakeGPTError(f"model.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ShakeGPTError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}: each head gets "
                f"n_embd / n_head channels; pick n_head among the divisors of n_embd"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ShakeGPTError(f"model.dropout must be in [0, 1), got {self.dropout!r}")


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """Causal attention over (batch, head, time, channel) tensors, by the fastest path for the device.

    On CPU, scaled_dot_product_attention is slow: with dropout it falls back to a masked softmax written out,
    and without, its kernel is 1.6-2x slower in bf16 than shakegpt.cpu_kernels' batched products. So a window
    on the CPU takes shakegpt.cpu_kernels' attention: with dropout in training, without it where no gradient is
    needed (evaluation, a KV cache's first window). Everything else takes SDPA. A single query (a KV-cache step)
    attends to every cached key, so it needs no mask.
    """
    if q.device.type == "cpu" and dropout_p > 0.0:
        return causal_attention_with_dropout(q, k, v, dropout_p)
    if q.device.type == "cpu" and not torch.is_grad_enabled() and 1 < q.size(-2) == k.size(-2):
        return causal_attention_without_dropout(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=q.size(-2) > 1)


class Dropout(nn.Dropout):
    """nn.Dropout, drawing its mask with shakegpt.cpu_kernels on the CPU, where PyTorch's is slow."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.p > 0.0 and x.device.type == "cpu":
            return dropout(x, self.p)
        return super().forward(x)


class MLP(nn.Sequential):
    """The 4x ReLU MLP and its dropout. On the CPU, the first layer and its ReLU are one oneDNN product
    (shakegpt.cpu_kernels.linear_relu); a Sequential, so that its parameters keep their names (mlp.0, mlp.2)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(
            nn.Linear(config.n_embd, 4 * config.n_embd),
            nn.ReLU(),
            nn.Linear(4 * config.n_embd, config.n_embd),
            Dropout(config.dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc, relu, proj, drop = self
        # Compiled, Inductor fuses the bias and the ReLU itself (and cannot lower oneDNN's op with weights that
        # train).
        eager_on_cpu = x.device.type == "cpu" and not torch.compiler.is_compiling()
        if eager_on_cpu and can_fuse_linear_relu(product_dtype(x), x.numel() // x.size(-1)):
            return drop(proj(linear_relu(x, fc.weight, fc.bias)))
        return drop(proj(relu(fc(x))))


class LayerCache:
    """The keys and values one attention layer has seen so far during generation, in a buffer allocated once
    for the whole window, so a step writes one position instead of copying the cache."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.length = 0

    def extend(self, k: torch.Tensor, v: torch.Tensor, capacity: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None:
            shape = (*k.shape[:2], capacity, k.shape[3])
            self.k, self.v = k.new_empty(shape), v.new_empty(shape)
        end = self.length + k.size(2)
        self.k[:, :, self.length : end], self.v[:, :, self.length : end] = k, v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.block_size = config.block_size
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)
        self.proj = nn.Linear(config.n_embd, config.n_embd)
        self.resid_dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.extend(k, v, self.block_size)
        y = causal_attention(q, k, v, self.dropout if self.training else 0.0)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(b, t, c)))


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def hidden_states(self, idx: torch.Tensor, caches: list[LayerCache] | None = None) -> torch.Tensor:
        """The final layer-normed hidden state of every position; with caches, idx continues the sequence
        the caches hold (its positions start after it)."""
        start = 0 if caches is None else caches[0].length
        t = idx.size(1)
        if start + t > self.config.block_size:
            raise ValueError(f"sequence of {start + t} tokens exceeds block_size {self.config.block_size}")
        pos = torch.arange(start, start + t, device=idx.device)
        x = self.tok_emb(idx) + self.pos_emb(pos)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        return self.ln_f(x)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position, and the mean cross-entropy when targets are given."""
        logits = self.lm_head(self.hidden_states(idx))
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss

    def generate(self, idx: torch.Tensor, max_new_tokens: int, **options: Any) -> torch.Tensor:
        """idx (batch, time) with max_new_tokens sampled tokens appended; options as stream's."""
        return torch.cat([idx, *self.stream(idx, max_new_tokens, **options)], dim=1)

    @torch.inference_mode()
    def stream(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        kv_cache: KVCacheMode = "exact",
        generator: torch.Generator | None = None,
    ) -> Iterator[torch.Tensor]:
        """The max_new_tokens tokens sampled after idx (batch, time), one (batch, 1) tensor at a time, as they
        come; the context is cropped to block_size.

        kv_cache="off" recomputes the whole window for every token (the classic loop). "exact" reuses
        cached keys and values while the sequence fits the window, and gives the same tokens as "off";
        past the window every position shifts, so it recomputes the window per token. "fast" instead
        re-fills the cache from the last half window whenever it is full: much faster past the window,
        but the model then sees a shorter context than the classic loop, so its samples differ.
        Call it in eval mode, as sampling with dropout active changes the samples.
        """
        if temperature <= 0:
            raise ShakeGPTError(f"temperature must be positive, got {temperature}")
        block_size = self.config.block_size
        refill = block_size // 2 if kv_cache == "fast" else block_size
        caches: list[LayerCache] | None = None
        for _ in range(max_new_tokens):
            if caches is not None and caches[0].length < block_size:
                hidden = self.hidden_states(idx[:, -1:], caches)
            else:
                window = idx[:, -(block_size if caches is None else refill) :]
                caches = None if kv_cache == "off" else [LayerCache() for _ in self.blocks]
                hidden = self.hidden_states(window, caches)
            # Only the last position is sampled from, so only its logits are computed; scaled once the largest is
            # taken off, so that a temperature near 0 tends to the likeliest token instead of overflowing.
            logits = self.lm_head(hidden[:, -1, :]).float()
            logits = (logits - logits.max(dim=-1, keepdim=True).values) / temperature
            if top_k is not None:
                kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            next_token = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)
            idx = torch.cat([idx, next_token], dim=1)
            yield next_token
