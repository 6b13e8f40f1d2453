"""The run folder: the names of what a run writes, its records, and the lock that keeps one writer per folder.

No torch or Lightning here, so reports and tools that only read run folders start fast.

    <run folder>/
      run.json                  what ran, how fast, and how it ended (status: running, finished, stopped
                                early, diverged, interrupted, failed)
      metrics.csv               one row per evaluation: step, train loss, val loss, elapsed seconds
      samples/step_NNNNNN.txt   a short sample after each evaluation; samples/final.txt after training
      checkpoints/last.ckpt     where the run continues from; checkpoints/best.ckpt, the lowest val loss
      run.lock                  held by the process writing the folder
      .hydra/                   the composed config and the overrides; events.out.tfevents.* for TensorBoard
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import json
import math
import os
import socket
import tempfile
import uuid
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from shakegpt.errors import Interrupted

RUN_RECORD = "run.json"
METRICS = "metrics.csv"
SAMPLES = "samples"
FINAL_SAMPLE = "final.txt"
CHECKPOINTS = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
BEST_CHECKPOINT = "best.ckpt"
LOCK = "run.lock"
# TensorBoard's files (TensorBoardLogger writes into the run folder itself).
TENSORBOARD_EVENTS = "events.out.tfevents.*"
# The settings that took effect, every interpolation resolved (beside what Hydra writes in .hydra/).
SETTINGS = "config.yaml"
METRICS_HEADER = ("step", "train_loss", "val_loss", "elapsed_s")

_UMASK = os.umask(0)
os.umask(_UMASK)


# What a run writes before its first step (train.log is Hydra's job log); a folder holding nothing else is
# removed when the run is refused for bad input.
SETUP_FILES = {
    RUN_RECORD,
    LOCK,
    SETTINGS,
    "train.log",
    ".hydra/config.yaml",
    ".hydra/hydra.yaml",
    ".hydra/overrides.yaml",
}


def remove_unstarted(folder: Path) -> bool:
    """Delete a run folder that holds only what a run writes before it starts; a folder with anything else
    (a checkpoint, metrics, a file of the user's) is left whole. True if it was removed."""
    entries = list(folder.rglob("*"))
    files = {path.relative_to(folder).as_posix() for path in entries if not path.is_dir()}
    folders = [path for path in entries if path.is_dir()]
    if not files <= SETUP_FILES or any(path != folder / ".hydra" for path in folders):
        return False
    for name in files:
        (folder / name).unlink()
    for path in (*folders, folder):
        path.rmdir()
    return True


def eval_sample(step: int) -> str:
    """The name of the text sampled after the evaluation at step, in SAMPLES."""
    return f"step_{step:06d}.txt"


def last_checkpoint(folder: Path) -> Path:
    return folder / CHECKPOINTS / LAST_CHECKPOINT


def copy_atomically(source: Path, path: Path) -> None:
    """Replace path with a copy of source, as write_atomically does."""
    write_atomically(path, source.read_bytes())


def write_atomically(path: Path, data: bytes) -> None:
    """Replace path with data so that a reader, a crash or a full disk never leaves half a file: a temporary
    file in the same folder, flushed to disk, then renamed over path. On failure path is as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # as open() would create it; mkstemp makes it private
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself reaches the disk with the folder's entry
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def remove_stale_temp_files(folder: Path) -> None:
    """Temporary files that a killed writer left behind (write_atomically's)."""
    if folder.is_dir():
        for stale in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()


def read_record(path: Path) -> dict[str, object]:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


class RunStatus(str, Enum):
    """How a run stands, as its run.json says (a str, so the JSON holds the plain word)."""

    RUNNING = "running"
    FINISHED = "finished"  # trained to trainer.max_steps
    STOPPED_EARLY = "stopped early"  # by early stopping
    DIVERGED = "diverged"  # to its end, with a loss shakegpt.divergence.blown_up on the way
    INTERRUPTED = "interrupted"  # by a signal, where resume=true continues it exactly
    FAILED = "failed"  # the record's error says why

    def ended(self, steps: int, max_steps: int) -> bool:
        """Whether the run needs no more work to reach max_steps (stopped early: none will help)."""
        return self is RunStatus.STOPPED_EARLY or (
            self in (RunStatus.FINISHED, RunStatus.DIVERGED) and steps >= max_steps
        )


def write_record(path: Path, **updates: object) -> dict[str, object]:
    """Merge updates into the run record at path; written whole, so readers never see half a file."""
    record = read_record(path)
    record.update(updates)
    write_atomically(path, (json.dumps(record, indent=2) + "\n").encode())
    return record


def record_failure(path: Path, error: BaseException, **updates: object) -> None:
    """Note in the run record that the run failed, and why (also for failures before training starts), or
    that it was interrupted (Ctrl-C, a signal), which is no failure: it resumes. Best effort: on a full disk
    the record stays as it was."""
    interrupted = isinstance(error, (KeyboardInterrupt, SystemExit, Interrupted))
    status = RunStatus.INTERRUPTED if interrupted else RunStatus.FAILED
    with contextlib.suppress(OSError):
        write_record(path, **updates, status=status, error=f"{type(error).__name__}: {error}")


def bits_per_char(nats: float) -> float:
    """A loss in bits per character, the unit char-level results are usually compared in."""
    return nats / math.log(2)


def losses_text(train_loss: float, val_loss: float) -> str:
    """`train loss X, val loss Y (X' / Y' bpc)`: the form every loss line takes, in nats then in bits."""
    return (
        f"train loss {train_loss:.4f}, val loss {val_loss:.4f} "
        f"({bits_per_char(train_loss):.4f} / {bits_per_char(val_loss):.4f} bpc)"
    )


@dataclass(frozen=True)
class EvalRow:
    step: int
    train_loss: float
    val_loss: float
    elapsed_s: float


def read_metrics(path: Path) -> list[EvalRow]:
    """The evaluations a run recorded, in order; an unreadable file reads as none."""
    if not path.is_file():
        return []
    try:
        with path.open(newline="") as f:
            return [
                EvalRow(int(row["step"]), float(row["train_loss"]), float(row["val_loss"]), float(row["elapsed_s"]))
                for row in csv.DictReader(f)
            ]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def write_metrics(path: Path, rows: list[EvalRow]) -> None:
    """The whole file, atomically: a kill or a full disk never leaves a half row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(METRICS_HEADER)
    for row in rows:
        writer.writerow([row.step, f"{row.train_loss:.6f}", f"{row.val_loss:.6f}", f"{row.elapsed_s:.2f}"])
    write_atomically(path, out.getvalue().encode())


def new_run_id() -> str:
    """A run's identity, kept in its run.json and its checkpoints for as long as the run goes on."""
    return uuid.uuid4().hex[:12]


class FolderInUse(Exception):
    """Another live process writes this run folder."""

    def __init__(self, folder: Path, holder: str) -> None:
        super().__init__(
            f"the run folder {folder} is in use by {holder}: wait for it to end, stop it, or choose another "
            "folder with hydra.run.dir=..."
        )
        self.holder = holder


class RunLock:
    """One writer per run folder: an exclusive lock on <folder>/run.lock for as long as the run lives.

    The operating system drops the lock when its process dies, however it dies (kill -9 included), so a stale
    lock file is simply taken over. The file names the holder, for the error the next process shows.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK
        self._file: io.TextIOWrapper | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = self.path.open("a+")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            holder = lock_file.read().strip() or "another process"
            lock_file.close()
            raise FolderInUse(self.path.parent, holder) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        lock_file.flush()
        self._file = lock_file

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock; the file stays, harmlessly
            self._file = None
