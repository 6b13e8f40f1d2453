"""The training pipeline in-process, as a job of `python -m shakegpt.train` runs it (shakegpt.training.train on a
config composed through Hydra's compose API): a tiny model trained, stopped by a real signal, and resumed."""

import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

from shakegpt.errors import Interrupted
from shakegpt.rundir import read_metrics, read_record

from .conftest import own_signal_handlers, train_in_process


class SignalAt(L.Callback):
    """Sends this process SIGTERM at the end of a step, as a scheduler would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture
def signal_handlers():
    with own_signal_handlers():
        yield


def outcome(folder) -> tuple:
    record = read_record(folder / "run.json")
    samples = {path.name: path.read_text() for path in sorted((folder / "samples").iterdir())}
    losses = [(row.step, row.train_loss, row.val_loss) for row in read_metrics(folder / "metrics.csv")]
    return losses, record["best_val_loss"], record["steps"], samples


@pytest.fixture(scope="module")
def uninterrupted(trained) -> tuple[Path, float, tuple]:
    """The run the interrupted ones are compared with (conftest's): its folder, best val loss and outcome."""
    return trained, read_record(trained / "run.json")["best_val_loss"], outcome(trained)


def test_a_run_stopped_by_a_signal_resumes_in_process_to_the_uninterrupted_numbers(
    tmp_path, signal_handlers, uninterrupted
):
    _, best, whole = uninterrupted
    assert [step for step, *_ in whole[0]] == [0, 10, 20] and whole[1] == best and whole[2] == 20
    assert set(whole[3]) == {"step_000000.txt", "step_000010.txt", "step_000020.txt", "final.txt"}

    stop_at = ["+callbacks.stop._target_=tests.test_training.SignalAt", "+callbacks.stop.step=12"]
    with pytest.raises(Interrupted) as stopped:
        train_in_process(tmp_path / "stopped", *stop_at)
    assert stopped.value.step == 13  # RunCheckpoints stops at the end of the step after the signal's
    assert [row.step for row in read_metrics(tmp_path / "stopped" / "metrics.csv")] == [0, 10]

    assert train_in_process(tmp_path / "stopped", "resume=true") == best
    assert outcome(tmp_path / "stopped") == whole
    # Resumed again when done: skipped, with the same best val loss.
    assert train_in_process(tmp_path / "stopped", "resume=true") == best


def test_a_run_stopped_before_its_last_evaluation_does_it_before_training_and_ends(
    tmp_path, signal_handlers, uninterrupted
):
    """The evaluation a resumed run owes (shakegpt.resume.evaluate_first), at the hardest point: after the last
    step, where fit trains no more; its best.ckpt is then the checkpoint it resumed from, optimizer included."""
    whole_folder, best, whole = uninterrupted
    stop_at = ["+callbacks.stop._target_=tests.test_training.SignalAt", "+callbacks.stop.step=19"]
    with pytest.raises(Interrupted) as stopped:
        train_in_process(tmp_path / "stopped", *stop_at)
    assert stopped.value.step == 20
    assert read_record(tmp_path / "stopped" / "run.json")["status"] == "interrupted"

    assert train_in_process(tmp_path / "stopped", "resume=true") == best
    assert outcome(tmp_path / "stopped") == whole
    ends = [
        torch.load(folder / "checkpoints" / "best.ckpt", weights_only=False)
        for folder in (whole_folder, tmp_path / "stopped")
    ]
    assert [end["global_step"] for end in ends] == [20, 20]
    assert all(torch.equal(ends[0]["state_dict"][key], value) for key, value in ends[1]["state_dict"].items())
    assert len(ends[1]["optimizer_states"]) == 1
