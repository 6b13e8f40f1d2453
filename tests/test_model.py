import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from shakegpt.errors import ShakeGPTError
from shakegpt.model import GPT, GPTConfig, masked_softmax_attention


@pytest.mark.parametrize(("n_layer", "expected"), [(1, 1_922_369), (2, 3_695_681), (6, 10_788_929), (12, 21_428_801)])
def test_parameter_counts_are_the_contract(n_layer, expected):
    config = GPTConfig(vocab_size=65, block_size=256, n_layer=n_layer, n_head=n_layer, n_embd=384)
    assert GPT(config).num_parameters() == expected


def tiny(**overrides) -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(**{"vocab_size": 65, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, **overrides})
    return GPT(config)


def test_initial_loss_is_close_to_uniform():
    model = tiny(n_embd=64).eval()
    idx = torch.randint(65, (8, 16))
    _, loss = model(idx, idx)
    assert abs(loss.item() - math.log(65)) < 0.1


def test_init_is_normal_002_with_zero_biases():
    model = tiny(n_embd=128)
    assert abs(model.blocks[0].mlp[0].weight.std().item() - 0.02) < 0.002
    assert torch.count_nonzero(model.blocks[0].attn.proj.bias) == 0
    assert model.blocks[0].attn.qkv.bias is None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_embd": 30, "n_head": 4}, "not divisible"),
        ({"n_layer": 0}, "n_layer must be a positive integer"),
        ({"block_size": -1}, "block_size must be a positive integer"),
        ({"dropout": 1.5}, "dropout"),
    ],
)
def test_impossible_configs_are_rejected(overrides, message):
    with pytest.raises(ShakeGPTError, match=message):
        GPTConfig(**{"n_layer": 2, "n_head": 2, "n_embd": 32, **overrides})


def test_masked_softmax_matches_sdpa_without_dropout():
    q, k, v = torch.randn(3, 2, 4, 10, 8).unbind(0)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(masked_softmax_attention(q, k, v, 0.0), expected)


def test_training_forward_on_cpu_with_dropout_is_causal():
    """The CPU dropout path (masked softmax) must not let a position see later tokens."""
    model = tiny(dropout=0.1).train()
    idx = torch.randint(65, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 65
    torch.manual_seed(1)
    before, _ = model(idx)
    torch.manual_seed(1)
    after, _ = model(changed)
    torch.testing.assert_close(before[0, :10], after[0, :10])


def sample(model: GPT, mode: str, new_tokens: int, seed: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return model.generate(torch.zeros(1, 1, dtype=torch.long), new_tokens, kv_cache=mode, generator=generator)


def test_generate_crops_to_the_window_and_appends_tokens():
    model = tiny().eval()
    out = sample(model, "off", 40)
    assert out.shape == (1, 41)
    assert out.max() < 65


@pytest.mark.parametrize("new_tokens", [15, 40])
def test_exact_kv_cache_gives_the_tokens_of_the_full_recompute(new_tokens):
    model = tiny().eval()
    assert torch.equal(sample(model, "exact", new_tokens), sample(model, "off", new_tokens))


def test_fast_kv_cache_matches_inside_the_window_and_keeps_going_past_it():
    model = tiny().eval()
    fast, full = sample(model, "fast", 40), sample(model, "off", 40)
    assert fast.shape == full.shape
    assert torch.equal(fast[:, :16], full[:, :16])


def test_generate_rejects_a_non_positive_temperature():
    with pytest.raises(ShakeGPTError, match="temperature"):
        tiny().generate(torch.zeros(1, 1, dtype=torch.long), 3, temperature=0)


def test_compiling_in_place_keeps_checkpoint_keys():
    model = tiny()
    keys = set(model.state_dict())
    model.compile()  # what hardware.compile=true does; compiles lazily, on the first forward
    assert set(model.state_dict()) == keys
    assert not any("_orig_mod" in key for key in keys)


def classic_gpt_module():
    """scripts/classic_gpt.py, the classic script's model, loaded by path (scripts/ is not a package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "classic_gpt.py"
    spec = importlib.util.spec_from_file_location("classic_gpt", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def classic_and_ours(n_layer: int = 2, n_head: int = 4, dropout: float = 0.2):
    """The classic model and ours at the same tiny size, ours holding the classic model's weights."""
    classic_gpt = classic_gpt_module()
    sizes = {"vocab_size": 65, "block_size": 16, "n_layer": n_layer, "n_head": n_head, "n_embd": 32}
    torch.manual_seed(0)
    classic = classic_gpt.ClassicGPT(classic_gpt.ClassicConfig(**sizes, dropout=dropout))
    for parameter in classic.parameters():  # PyTorch's default init leaves zero-free biases: all weights matter
        torch.nn.init.normal_(parameter, std=0.3)
    ours = GPT(GPTConfig(**sizes, dropout=dropout))
    state = {
        "tok_emb.weight": classic.token_embedding_table.weight,
        "pos_emb.weight": classic.position_embedding_table.weight,
        "ln_f.weight": classic.ln_f.weight,
        "ln_f.bias": classic.ln_f.bias,
        "lm_head.weight": classic.lm_head.weight,
        "lm_head.bias": classic.lm_head.bias,
    }
    for i, block in enumerate(classic.blocks):
        heads = block.sa.heads
        # Our fused projection's rows are all heads' queries, then all keys, then all values.
        qkv = [head.query.weight for head in heads] + [head.key.weight for head in heads]
        state[f"blocks.{i}.attn.qkv.weight"] = torch.cat(qkv + [head.value.weight for head in heads])
        pairs = {
            "ln_1": block.ln1,
            "ln_2": block.ln2,
            "attn.proj": block.sa.proj,
            "mlp.0": block.ffwd[0],
            "mlp.2": block.ffwd[2],
        }
        for ours_name, layer in pairs.items():
            state[f"blocks.{i}.{ours_name}.weight"], state[f"blocks.{i}.{ours_name}.bias"] = layer.weight, layer.bias
    ours.load_state_dict(state)  # strict: every parameter of ours has its classic counterpart
    return classic, ours


class DropoutAsScaling(TorchFunctionMode):
    """Replaces every dropout call by a fixed scaling, so two models in training mode compute a deterministic
    function that still depends on where each applies dropout; also counts the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.dropout:
            self.calls += 1
            return args[0] * 0.5
        return func(*args, **kwargs)


def test_our_gpt_computes_the_classic_function_in_eval_mode():
    classic, ours = classic_and_ours()
    idx = torch.randint(65, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(idx)[0], classic.eval()(idx)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("n_layer", "n_head"), [(1, 1), (2, 4)])
def test_dropout_sits_where_the_classic_model_has_it(n_layer, n_head):
    """Attention weights, after the attention projection, after the MLP; none on the embeddings."""
    classic, ours = classic_and_ours(n_layer, n_head)
    idx = torch.randint(65, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), DropoutAsScaling() as classic_dropout:
        expected = classic.train()(idx)[0]
    with torch.no_grad(), DropoutAsScaling() as our_dropout:
        actual = ours.train()(idx)[0]
    assert classic_dropout.calls == n_layer * (n_head + 2)  # one per head's attention weights, then two
    assert our_dropout.calls > 0  # ours went through dropout at all (all heads at once, so fewer calls)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
