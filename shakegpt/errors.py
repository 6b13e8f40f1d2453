"""The errors the entry points turn into one line and an exit status."""

from __future__ import annotations

import signal


class ShakeGPTError(Exception):
    """Bad input from the user (data, config, prompt, checkpoint).

    The entry points show these as a one-line message instead of a traceback.
    """


class Interrupted(Exception):
    """The run stopped on a signal (Ctrl-C, SIGTERM, SLURM's SIGUSR2), at a point it resumes from exactly."""

    def __init__(self, signum: int, step: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}")
        self.signum, self.step = signum, step

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # what shells report for a process ended by that signal: 130, 143
