"""The errors the entry points turn into one line and an exit status, and the stop signals' first handlers.

No imports beyond the standard library: the entry points install these handlers before their slow imports.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

# Ctrl-C and SIGTERM end the program from its first second to its last (SLURM's SIGUSR2 is the training's own).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class ShakeGPTError(Exception):
    """Bad input from the user (data, config, prompt, checkpoint).

    The entry points show these as a one-line message instead of a traceback.
    """


class Interrupted(Exception):
    """The run stopped on a signal (Ctrl-C, SIGTERM, SLURM's SIGUSR2), at a point it resumes from exactly."""

    def __init__(self, signum: int, step: int | None = None) -> None:
        where = f" at step {step}" if step is not None else ""
        super().__init__(f"interrupted by {signal.Signals(signum).name}{where}")
        self.signum, self.step = signum, step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what shells report for a process ended by that signal: 130, 143


def _exit_at_once(signum: int, frame: FrameType | None) -> None:
    print(f"interrupted by {signal.Signals(signum).name}; nothing was written", file=sys.stderr)
    sys.stderr.flush()
    os._exit(128 + signum)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def stop_on_signals(raise_interrupted: bool = False) -> None:
    """Make Ctrl-C and SIGTERM end the program within moments, whatever it is doing (a shell that starts it in
    the background would have Python ignore Ctrl-C; SIGTERM's default leaves no word). By default: one line and
    the signal's exit status at once, while nothing needs saving. With raise_interrupted: an Interrupted raised
    where the program is, for it to finish what it must before it exits (a run records itself in run.json,
    sampling ends its text); training replaces these handlers with its own, which stop at a step it resumes
    from."""
    handler = _raise_interrupted if raise_interrupted else _exit_at_once
    for signum in STOP_SIGNALS:
        signal.signal(signum, handler)
