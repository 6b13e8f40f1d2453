"""The LightningModule on its own."""

import pytest
import torch

from shakegpt.errors import ShakeGPTError
from shakegpt.module import GPTModule

TINY_MODEL = {"vocab_size": 5, "n_layer": 1, "n_head": 1, "n_embd": 8, "block_size": 4}


def test_the_optimizer_comes_from_the_config_and_has_no_default_of_its_own():
    with pytest.raises(ShakeGPTError, match="without an optimizer"):
        GPTModule(TINY_MODEL, "abcde").configure_optimizers()
    optimizer = GPTModule(TINY_MODEL, "abcde", lambda params: torch.optim.AdamW(params, lr=3e-4)).configure_optimizers()
    assert optimizer.param_groups[0]["lr"] == 3e-4


def test_sampling_without_a_prompt_works_for_a_vocabulary_without_a_newline():
    text = GPTModule(TINY_MODEL, "abcde").sample(None, 6, seed=1)
    assert len(text) == 7 and text[0] == "a" and set(text) <= set("abcde")


def test_a_sample_is_the_stream_joined_and_leaves_the_mode_as_it_was():
    module = GPTModule(TINY_MODEL, "abcde")
    module.train()
    options = {"temperature": 0.8, "top_k": 3, "seed": 5}
    text = module.sample("ab", 9, **options)
    assert module.model.training  # sampled in eval mode, then put back
    assert text == "".join(module.stream("ab", 9, **options)) and len(text) == 11
    assert module.sample("ab", 0) == "ab"
    with pytest.raises(ShakeGPTError, match="prompt is empty"):
        module.sample("", 3)
    with pytest.raises(ShakeGPTError, match="'z'"):  # before the prompt comes: generate prints nothing then
        next(module.stream("az", 3))
