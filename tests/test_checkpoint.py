"""Checkpoints: what a run writes loads safely; what is not ours, truncated or for another model is refused."""

import zipfile
from dataclasses import asdict

import pytest
import torch

from shakegpt.checkpoint import check_resumable, load_module, resolve_checkpoint
from shakegpt.errors import ShakeGPTError

# Each test reads the checkpoints of a real tiny run (conftest's `trained`, in this process).


def test_a_runs_checkpoints_hold_only_tensors_and_plain_values(trained):
    folder = trained
    for name in ("last.ckpt", "best.ckpt"):
        checkpoint = torch.load(folder / "checkpoints" / name, weights_only=True)  # refuses any other object
        assert set(checkpoint["hyper_parameters"]) == {"model_config", "vocab"}


def test_checkpoints_that_are_not_ours_or_truncated_are_refused(tmp_path, trained):
    folder = trained
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


def test_a_checkpoint_damaged_inside_or_holding_nan_weights_is_refused(tmp_path, trained):
    folder = trained
    best = folder / "checkpoints" / "best.ckpt"
    with zipfile.ZipFile(best) as archive:  # the largest tensor's bytes, in the middle
        member = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(best.read_bytes())
    header = 30 + int.from_bytes(data[member.header_offset + 26 : member.header_offset + 28], "little")
    header += int.from_bytes(data[member.header_offset + 28 : member.header_offset + 30], "little")
    data[member.header_offset + header + member.file_size // 2] ^= 0x40
    damaged = tmp_path / "damaged.ckpt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(ShakeGPTError, match=r"damaged\.ckpt is damaged: .* does not match its checksum"):
        load_module(str(damaged))

    checkpoint = torch.load(best, weights_only=True)
    next(iter(checkpoint["state_dict"].values())).view(-1)[0] = float("nan")
    diverged = tmp_path / "nan.ckpt"
    torch.save(checkpoint, diverged)
    with pytest.raises(ShakeGPTError, match="weights that are not finite numbers"):
        load_module(str(diverged))


def test_resuming_from_another_vocabulary_or_model_is_refused(trained):
    folder = trained
    last = resolve_checkpoint(str(folder), "last.ckpt")
    module = load_module(str(folder))
    config, vocab = asdict(module.model.config), module.tokenizer.vocab
    check_resumable(last, config, vocab)
    with pytest.raises(ShakeGPTError, match="another vocabulary"):
        check_resumable(last, config, vocab[:-1])
    with pytest.raises(ShakeGPTError, match="resume with the model overrides"):
        check_resumable(last, {**config, "n_layer": 2}, vocab)
