import pytest

from shakegpt.model import GPT, GPTConfig
from shakegpt.optim import adamw_decaying_matrices, warmup_cosine_lr

NANOGPT = {"lr": 1e-3, "min_lr": 1e-4, "warmup_steps": 100, "decay_steps": 5000}


@pytest.mark.parametrize(
    ("step", "lr"),
    [
        (0, 1e-3 / 101),  # warmup from (almost) zero, as nanoGPT's get_lr: lr * (it + 1) / (warmup + 1)
        (99, 1e-3 * 100 / 101),
        (100, 1e-3),  # the peak, then cosine
        (2550, 5.5e-4),  # halfway: the mean of lr and min_lr
        (5000, 1e-4),
        (7000, 1e-4),  # the floor after decay_steps
    ],
)
def test_warmup_cosine_is_nanogpts_schedule(step, lr):
    assert warmup_cosine_lr(step, **NANOGPT) == pytest.approx(lr)


def test_nanogpts_adamw_decays_matrices_only():
    model = GPT(GPTConfig(vocab_size=65, n_layer=1, n_head=1, n_embd=8, block_size=16))
    optimizer = adamw_decaying_matrices(model.parameters(), weight_decay=0.1, lr=1e-3, betas=(0.9, 0.99))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert {p.dim() for p in decayed["params"]} == {2} and {p.dim() for p in plain["params"]} == {1}
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    assert decayed["betas"] == (0.9, 0.99)
