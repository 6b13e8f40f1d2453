"""What a run leaves in its folder: checkpoints, metrics, samples, TensorBoard's scalars, hyperparameters and
texts, the settings that took effect; on conftest's tiny run trained in this process (the console's lines are
tests/test_train.py's, from a real process)."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from shakegpt.checkpoint import load_module


def events(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_has_both_losses_the_hparams_and_text_samples(trained):
    folder = trained
    acc = events(folder)
    for tag in ("train/loss", "val/loss", "train/bpc", "val/bpc"):
        assert [event.step for event in acc.Scalars(tag)] == [0, 10, 20]
    val = [event.value for event in acc.Scalars("val/loss")]
    assert [event.value for event in acc.Scalars("val/bpc")] == pytest.approx([v / math.log(2) for v in val])
    assert val[-1] < val[0]
    assert acc.Scalars("hp/best_val_loss")[-1].value == pytest.approx(min(val))
    assert "_hparams_/session_start_info" in acc.summary_metadata
    # No experiment summary: TensorBoard then orders the HParams columns with a sweep's swept settings first.
    assert "_hparams_/experiment" not in acc.summary_metadata
    assert [event.step for event in acc.Tensors("samples/eval/text_summary")] == [0, 10, 20]
    assert len(acc.Tensors("samples/final/text_summary")) == 1


def test_the_settings_recorded_are_those_that_took_effect(trained):
    folder = trained
    settings = OmegaConf.load(folder / "config.yaml")
    assert "${" not in (folder / "config.yaml").read_text()
    record = json.loads((folder / "run.json").read_text())
    assert (settings.trainer.precision, settings.model.n_embd) == (record["precision"], 48)
    hparams = HParamsPluginData.FromString(
        events(folder).summary_metadata["_hparams_/session_start_info"].plugin_data.content
    ).session_start_info.hparams
    assert hparams["trainer.precision"].string_value == record["precision"]
    assert "hardware.precision" not in hparams and "hardware.matmul_precision" in hparams


def test_writes_checkpoints_metrics_and_samples_in_the_run_folder(trained):
    folder = trained
    assert (folder / "checkpoints" / "best.ckpt").is_file() and (folder / "checkpoints" / "last.ckpt").is_file()
    with (folder / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(row["step"]) for row in rows] == [0, 10, 20]
    assert len((folder / "samples" / "step_000000.txt").read_text()) == 1 + 20
    assert len((folder / "samples" / "final.txt").read_text()) == 1 + 500


def test_checkpoint_alone_rebuilds_the_model(trained):
    folder = trained
    checkpoint = torch.load(folder / "checkpoints" / "best.ckpt", weights_only=True)
    assert len(checkpoint["hyper_parameters"]["vocab"]) == 65
    module = load_module(str(folder))
    assert module.model.config.n_embd == 48
    text = module.sample("ROMEO:", 50, seed=7)
    assert text.startswith("ROMEO:") and len(text) == 56
    assert module.sample("ROMEO:", 50, seed=7) == text
