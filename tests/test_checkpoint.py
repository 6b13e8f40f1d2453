"""Checkpoints: what a run writes loads safely; what is not ours, truncated or for another model is refused."""

from dataclasses import asdict

import pytest
import torch

from shakegpt.checkpoint import check_resumable, load_module, resolve_checkpoint
from shakegpt.errors import ShakeGPTError

# Each test reads the checkpoints of a real tiny run (conftest's `run`, a subprocess).
pytestmark = pytest.mark.slow


def test_a_runs_checkpoints_hold_only_tensors_and_plain_values(run):
    folder, _ = run
    for name in ("last.ckpt", "best.ckpt"):
        checkpoint = torch.load(folder / "checkpoints" / name, weights_only=True)  # refuses any other object
        assert set(checkpoint["hyper_parameters"]) == {"model_config", "vocab"}


def test_checkpoints_that_are_not_ours_or_truncated_are_refused(tmp_path, run):
    folder, _ = run
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((folder / "checkpoints" / "best.ckpt").read_bytes()[:5000])
    with pytest.raises(ShakeGPTError, match="not a readable checkpoint"):
        load_module(str(truncated))
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "epoch": 3}, foreign)
    with pytest.raises(ShakeGPTError, match="not a shakegpt checkpoint"):
        load_module(str(foreign))
    with pytest.raises(ShakeGPTError, match="no checkpoint at"):
        load_module(str(tmp_path / "nothing-here"))


def test_resuming_from_another_vocabulary_or_model_is_refused(run):
    folder, _ = run
    last = resolve_checkpoint(str(folder), "last.ckpt")
    module = load_module(str(folder))
    config, vocab = asdict(module.model.config), module.tokenizer.vocab
    check_resumable(last, config, vocab)
    with pytest.raises(ShakeGPTError, match="another vocabulary"):
        check_resumable(last, config, vocab[:-1])
    with pytest.raises(ShakeGPTError, match="resume with the model overrides"):
        check_resumable(last, {**config, "n_layer": 2}, vocab)
