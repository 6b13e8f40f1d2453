import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

from shakegpt import cpu_kernels
from shakegpt import model as model_module
from shakegpt.errors import ShakeGPTError
from shakegpt.model import GPT, GPTConfig


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


@pytest.mark.parametrize("query_block", [64, 4], ids=["one-block", "blocks-of-4-and-a-partial-one"])
def test_cpu_attention_with_dropout_is_sdpa_where_nothing_is_dropped(query_block, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "QUERY_BLOCK", query_block)
    q, k, v = (t.requires_grad_() for t in torch.randn(3, 2, 4, 10, 8, dtype=torch.float64).unbind(0))
    # p = 1e-12 drops nothing (16-bit thresholds) and scales by 1: the same function as SDPA, gradients too.
    ours = cpu_kernels.causal_attention_with_dropout(q, k, v, 1e-12)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, expected)
    grads, expected_grads = (torch.autograd.grad(out.sum(), (q, k, v)) for out in (ours, expected))
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("query_block", [64, 4], ids=["one-block", "blocks-of-4-and-a-partial-one"])
def test_cpu_attention_without_dropout_is_sdpa(query_block, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "QUERY_BLOCK", query_block)
    monkeypatch.setattr(cpu_kernels, "CHUNK_SCORES", 3 * 10 * 10)  # three sequences x heads per chunk, three chunks
    q, k, v = torch.randn(3, 2, 4, 10, 8, dtype=torch.float64).unbind(0)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(cpu_kernels.causal_attention_without_dropout(q, k, v), expected)


def test_evaluation_on_cpu_takes_the_kernel_without_dropout_and_gives_sdpas_logits(monkeypatch):
    model = tiny().eval()
    idx = torch.randint(65, (3, 16))
    calls = []
    kernel = model_module.causal_attention_without_dropout
    monkeypatch.setattr(model_module, "causal_attention_without_dropout", lambda *qkv: calls.append(1) or kernel(*qkv))
    with torch.no_grad():
        ours, _ = model(idx)
    assert len(calls) == model.config.n_layer
    with torch.enable_grad():  # where a gradient may be needed: SDPA
        expected, _ = model(idx)
    assert len(calls) == model.config.n_layer
    torch.testing.assert_close(ours, expected)


@pytest.mark.slow  # a float64 gradcheck across chunks: tens of seconds on 2 cores
def test_cpu_attention_gradients_with_dropout_are_exact(monkeypatch):
    """The backward pass (recomputing the dropped probabilities, chunk by chunk) against finite differences."""
    monkeypatch.setattr(cpu_kernels, "CHUNK_SCORES", 2 * 3 * 6 * 6)  # two sequences per chunk, three chunks
    monkeypatch.setattr(cpu_kernels, "QUERY_BLOCK", 4)  # queries in a block of 4 and one of 2
    q, k, v = (t.requires_grad_() for t in torch.randn(3, 5, 3, 6, 4, dtype=torch.float64).unbind(0))

    def attention(q, k, v):
        torch.manual_seed(0)  # the same drop mask at every evaluation
        return cpu_kernels.causal_attention_with_dropout(q, k, v, 0.3)

    assert torch.autograd.gradcheck(attention, (q, k, v))


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fused_linear_relu_is_linear_then_relu_gradients_too(precision):
    bf16 = precision == "bf16-mixed"
    if not cpu_kernels.can_fuse_linear_relu(torch.bfloat16 if bf16 else torch.float32, cpu_kernels.FUSED_MIN_ROWS):
        pytest.skip("oneDNN does not multiply this dtype in this PyTorch or on this CPU")
    torch.manual_seed(0)
    x, weight, bias = (torch.randn(shape, requires_grad=True) for shape in ((3, 5, 8), (16, 8), (16,)))
    upstream = torch.randn(3, 5, 16)
    results = []
    for layer in (cpu_kernels.linear_relu, lambda *args: torch.relu(torch.nn.functional.linear(*args))):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            output = layer(x, weight, bias)
        results.append((output, torch.autograd.grad((output.float() * upstream).sum(), (x, weight, bias))))
    (fused, fused_grads), (expected, expected_grads) = results
    assert fused.dtype == expected.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert 0 < torch.count_nonzero(expected) < expected.numel()  # the ReLU cuts some and keeps some
    torch.testing.assert_close(fused, expected)
    for grad, expected_grad in zip(fused_grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-2 if bf16 else 1e-5, atol=1e-2 if bf16 else 1e-6)


def test_the_mlp_on_cpu_takes_the_fused_first_layer_where_onednn_multiplies_the_dtype_and_rows_are_many(
    monkeypatch,
):
    if not cpu_kernels.can_fuse_linear_relu(torch.float32, cpu_kernels.FUSED_MIN_ROWS):
        pytest.skip("this PyTorch has no oneDNN")
    model = tiny().eval()
    idx = torch.randint(65, (cpu_kernels.FUSED_MIN_ROWS // 16, 16))
    dtypes = []
    fused = model_module.linear_relu
    monkeypatch.setattr(model_module, "linear_relu", lambda x, *args: dtypes.append(x.dtype) or fused(x, *args))
    ours, _ = model(idx)
    assert dtypes == [torch.float32] * model.config.n_layer
    model(idx[:1, :5])  # a sampling step's few rows: linear then relu, faster there
    model.double()(idx)  # oneDNN has no float64 product: linear then relu
    assert len(dtypes) == model.config.n_layer
    monkeypatch.setattr(model_module, "can_fuse_linear_relu", lambda dtype, rows: False)
    expected, _ = model.float()(idx)
    torch.testing.assert_close(ours, expected)


def test_keep_mask_drops_with_probability_p_from_the_global_generator():
    torch.manual_seed(0)
    keep = cpu_kernels.keep_mask((4, 1000, 1000), 0.2, torch.bfloat16, torch.device("cpu"))
    assert keep.dtype == torch.bfloat16 and set(keep.unique().tolist()) == {0.0, 1.0}
    assert abs(keep.float().mean().item() - 0.8) < 5 * math.sqrt(0.2 * 0.8 / keep.numel())  # 5 sigma
    torch.manual_seed(0)
    assert torch.equal(keep, cpu_kernels.keep_mask((4, 1000, 1000), 0.2, torch.bfloat16, torch.device("cpu")))


def test_training_forward_on_cpu_with_dropout_is_causal():
    """The CPU dropout path (shakegpt.cpu_kernels) must not let a position see later tokens."""
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


def test_a_temperature_near_zero_samples_the_likeliest_tokens():
    model = tiny().eval()
    idx = torch.zeros(1, 1, dtype=torch.long)
    for _ in range(10):
        logits, _ = model(idx[:, -16:])
        idx = torch.cat([idx, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    assert torch.equal(model.generate(idx[:, :1], 10, temperature=1e-40), idx)


def test_generate_rejects_a_non_positive_temperature():
    with pytest.raises(ShakeGPTError, match="temperature"):
        tiny().generate(torch.zeros(1, 1, dtype=torch.long), 3, temperature=0)


def test_compiling_in_place_keeps_checkpoint_keys():
    model = tiny()
    keys = set(model.state_dict())
    model.compile()  # what hardware.compile=true does; compiles lazily, on the first forward
    assert set(model.state_dict()) == keys
    assert not any("_orig_mod" in key for key in keys)


@pytest.mark.slow  # Inductor compiles C++ for the CPU: about half a minute on 2 cores
def test_a_compiled_model_trains_and_evaluates_on_cpu_as_eager_does():
    """hardware.compile=true on the CPU: the CPU-only paths (the fused MLP layer, the attention kernels) compile
    or step aside, and the compiled model computes the eager one's logits."""
    model = tiny()
    idx = torch.randint(65, (3, 16))
    with torch.no_grad():
        expected, _ = model.eval()(idx)
    model.train().compile()
    _, loss = model(idx, idx)
    loss.backward()
    assert model.blocks[0].mlp[0].weight.grad.norm() > 0
    with torch.no_grad():
        compiled, _ = model.eval()(idx)
    torch.testing.assert_close(compiled, expected)


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


def fixed_pattern(shape) -> torch.Tensor:
    """1 or 0 by position in the last two dimensions: the same pattern for a head's (time, time) attention
    weights in the classic model as for ours, and for the (time, channel) outputs of both."""
    rows, columns = torch.arange(shape[-2])[:, None], torch.arange(shape[-1])
    return ((rows + 2 * columns) % 5 != 0).float().expand(shape)


class FixedClassicDropout(TorchFunctionMode):
    """The classic model's dropout calls with fixed_pattern as the mask; counts the calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.dropout:
            self.calls += 1
            x, p = args[0], kwargs.get("p", args[1] if len(args) > 1 else 0.5)
            return x * fixed_pattern(x.shape).to(x.dtype) / (1 - p)
        return func(*args, **kwargs)


def fix_our_dropout(monkeypatch) -> list[tuple[int, ...]]:
    """Our CPU dropout (shakegpt.cpu_kernels) with fixed_pattern as the mask; returns the masks' shapes."""
    shapes = []

    def fixed_keep_mask(shape, p, dtype, device):
        shapes.append(tuple(shape))
        return fixed_pattern(shape).to(dtype=dtype, device=device).contiguous()

    monkeypatch.setattr(cpu_kernels, "keep_mask", fixed_keep_mask)
    return shapes


def test_our_gpt_computes_the_classic_function_in_eval_mode():
    classic, ours = classic_and_ours()
    idx = torch.randint(65, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(idx)[0], classic.eval()(idx)[0], rtol=1e-5, atol=1e-5)


def loss_and_gradients(model, idx, precision: str):
    """The training loss and the gradients of the first block's MLP and the head, in training mode."""
    model.train().zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        logits = model(idx)[0]
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), idx.roll(-1, 1).flatten())
    loss.backward()
    first_mlp = model.blocks[0].ffwd[0] if hasattr(model.blocks[0], "ffwd") else model.blocks[0].mlp[0]
    return loss.detach(), [first_mlp.weight.grad, model.lm_head.weight.grad]


@pytest.mark.parametrize(("n_layer", "n_head"), [(1, 1), (2, 4)])
def test_dropout_sits_where_the_classic_model_has_it(n_layer, n_head, monkeypatch):
    """Attention weights, after the attention projection, after the MLP; none on the embeddings: with the
    same fixed masks, our training step (forward and backward) computes the classic one's, in fp32."""
    classic, ours = classic_and_ours(n_layer, n_head)
    idx = torch.randint(65, (3, 16), generator=torch.Generator().manual_seed(1))
    with FixedClassicDropout() as classic_dropout:
        expected_loss, expected_grads = loss_and_gradients(classic, idx, "32-true")
    ours_masks = fix_our_dropout(monkeypatch)
    loss, grads = loss_and_gradients(ours, idx, "32-true")
    assert classic_dropout.calls == n_layer * (n_head + 2)  # one per head's attention weights, then two
    # All heads at once, in one block of queries (time 16 < QUERY_BLOCK)
    assert ours_masks == [(3 * n_head, 16, 16), (3, 16, 32), (3, 16, 32)] * n_layer
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    for grad, expected in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6)


def test_the_fast_path_trains_like_the_plain_fp32_path(monkeypatch):
    """hardware=cpu's path (bf16-mixed autocast, shakegpt.cpu_kernels) against the classic model in fp32, with
    the same fixed masks: the loss within 0.1%, each gradient within 3% of its norm (bf16 keeps 8 bits)."""
    classic, ours = classic_and_ours(2, 4, dropout=0.2)
    idx = torch.randint(65, (3, 16), generator=torch.Generator().manual_seed(1))
    with FixedClassicDropout():
        expected_loss, expected_grads = loss_and_gradients(classic, idx, "32-true")
    fix_our_dropout(monkeypatch)
    loss, grads = loss_and_gradients(ours, idx, "bf16-mixed")
    assert abs(loss - expected_loss) < 1e-3 * expected_loss
    for grad, expected in zip(grads, expected_grads, strict=True):
        assert (grad - expected).norm() < 0.03 * expected.norm()
