"""The training pipeline in-process, as a job of `python -m shakegpt.train` runs it (shakegpt.training.train on a
config composed through Hydra's compose API): a tiny model trained, stopped by a real signal, and resumed."""

import os
import signal

import lightning as L
import pytest

from shakegpt.compose import as_a_job
from shakegpt.errors import Interrupted
from shakegpt.resume import TRAINING_STOP_SIGNALS
from shakegpt.rundir import read_metrics, read_record
from shakegpt.training import train

from .conftest import TINY

SHORT = [*TINY, "trainer.max_steps=20", "trainer.val_check_interval=10", "callbacks.progress_bar.refresh_rate=0"]


class SignalAt(L.Callback):
    """Sends this process SIGTERM at the end of a step, as a scheduler would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture
def signal_handlers():
    """Training installs its own handlers in this process; the other tests get pytest's back."""
    before = {signum: signal.getsignal(signum) for signum in TRAINING_STOP_SIGNALS}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


def run(folder, *overrides: str) -> float:
    with as_a_job([*SHORT, f"paths.output_dir={folder}", *overrides]) as cfg:
        return train(cfg)


def outcome(folder) -> tuple:
    record = read_record(folder / "run.json")
    samples = {path.name: path.read_text() for path in sorted((folder / "samples").iterdir())}
    losses = [(row.step, row.train_loss, row.val_loss) for row in read_metrics(folder / "metrics.csv")]
    return losses, record["best_val_loss"], record["steps"], samples


def test_a_run_stopped_by_a_signal_resumes_in_process_to_the_uninterrupted_numbers(tmp_path, signal_handlers):
    best = run(tmp_path / "whole")
    whole = outcome(tmp_path / "whole")
    assert [step for step, *_ in whole[0]] == [0, 10, 20] and whole[1] == best and whole[2] == 20
    assert set(whole[3]) == {"step_000000.txt", "step_000010.txt", "step_000020.txt", "final.txt"}

    stop_at = ["+callbacks.stop._target_=tests.test_training.SignalAt", "+callbacks.stop.step=12"]
    with pytest.raises(Interrupted) as stopped:
        run(tmp_path / "stopped", *stop_at)
    assert stopped.value.step == 13  # RunCheckpoints stops at the end of the step after the signal's
    assert [row.step for row in read_metrics(tmp_path / "stopped" / "metrics.csv")] == [0, 10]

    assert run(tmp_path / "stopped", "resume=true") == best
    assert outcome(tmp_path / "stopped") == whole
    # Resumed again when done: skipped, with the same best val loss.
    assert run(tmp_path / "stopped", "resume=true") == best
