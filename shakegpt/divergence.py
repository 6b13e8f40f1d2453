"""When a run has diverged, and what happens then: one policy for training, resuming and sampling.

- A loss or a weight that is not a finite number ends the run with one line (a ShakeGPTError) before anything
  is written from it: the last checkpoint stands, and the line says to lower optimizer.lr. A checkpoint
  holding such weights is refused where it is read (shakegpt.checkpoint), for the same reason.
- A finite loss BLOWN_UP_FACTOR times the first evaluation's marks the run diverged (run.json, reports) with a
  warning, and the run goes on: it may recover, and its curve is what the user came for.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from shakegpt.errors import ShakeGPTError

if TYPE_CHECKING:
    import torch

BLOWN_UP_FACTOR = 1.5
ADVICE = "try a lower optimizer.lr"


def check_losses(losses: dict[str, float], step: int) -> None:
    """Ends the run if an evaluation's loss (per split) is not a finite number."""
    for split, loss in losses.items():
        if not math.isfinite(loss):
            raise ShakeGPTError(f"training diverged: the {split} loss is {loss} at step {step}; {ADVICE}")


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every floating-point value of tensors is a finite number."""
    return all(bool(t.isfinite().all()) for t in tensors if t.is_floating_point())


def check_weights(parameters: Iterable[torch.Tensor], step: int) -> None:
    """Ends the run before a checkpoint would keep weights that are not finite numbers."""
    if not all_finite(parameters):
        raise ShakeGPTError(
            f"training diverged: the weights hold non-finite values at step {step}; the last good checkpoint is "
            f"kept; {ADVICE}"
        )


def blown_up(losses: dict[str, float], first_loss: float) -> bool:
    """Whether an evaluation's losses say the run diverged, though finite."""
    return max(losses.values()) > BLOWN_UP_FACTOR * first_loss
