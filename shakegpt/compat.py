"""The few places shakegpt reaches into a library past its public API, each with why the public API does not
serve. tests/test_compat.py holds one test per function here, which fails when the library changes what the
function relies on: a new Lightning, Hydra or torch that breaks one shows up there first, by name.

Light to import (the commands' --help loads this module through launch.py): the libraries load when called.

Two behaviours of Lightning are relied on without calling anything private; tests/test_faults.py (every kill
and signal resumes to the uninterrupted run's numbers) fails if they change: Lightning installs its SIGTERM
handler before the run's first hook, which resume.RunCheckpoints then replaces with its own (stop at the next
point a run continues from exactly, where Lightning's would stop mid-evaluation); and a resumed run's train
loader must report the whole run's length (data.RandomWindows.__len__), or Lightning, which restores how many
batches of the epoch were done, ends the epoch early and starts another.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning as L
    import torch
    from hydra.core.override_parser.types import Override
    from omegaconf import DictConfig
    from torch.utils.tensorboard import SummaryWriter


@contextmanager
def hydra_config_of(cfg: DictConfig) -> Iterator[None]:
    """Hydra's own config (HydraConfig.get(): the `${hydra:...}` interpolations, the job's folder) set to cfg's
    `hydra` node while the block runs, as Hydra sets it around a job; compose() alone sets none. Hydra's test
    utilities do the same; it offers no public way."""
    from hydra.core.hydra_config import HydraConfig

    instance = HydraConfig.instance()
    previous, instance.cfg = instance.cfg, None
    instance.set_config(cfg)
    try:
        yield
    finally:
        instance.cfg = previous


def load_fit_loop_state(trainer: L.Trainer, state: dict[str, Any]) -> None:
    """Put a checkpoint's training-loop state (its "loops"/"fit_loop" section) into trainer, so that an
    evaluation before fit runs at the checkpoint's step (trainer.global_step, and the step every callback logs
    and saves). Lightning restores the loops only inside fit; validate(ckpt_path=...) restores the weights alone.
    fit(ckpt_path=...) loads the same state again."""
    trainer.fit_loop.load_state_dict(state)


# What Lightning's subprocess launcher (DDP) puts in the environment for the ranks it starts.
DDP_LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def launchable_job() -> Iterator[None]:
    """Lets Lightning's DDP launcher start this job's other ranks, inside a Hydra multirun too.

    Lightning starts ranks 1..N-1 by running this program again with its command line plus
    `hydra.run.dir=<the run dir>` (its private _hydra_subprocess_cmd, which no option steers). In a multirun
    that command line is the whole sweep and the run dir is not the job's folder, so every rank would run every
    job, elsewhere. Here the command line becomes this job's
    overrides and the run dir its folder. Afterwards the process group is destroyed and the variables the
    launcher set are put back as they were: left set, LOCAL_RANK makes Lightning believe the next job's ranks
    exist already, and it waits for them forever.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import read_write

    hydra_cfg = HydraConfig.get()
    saved_argv = list(sys.argv)
    saved_env = {name: os.environ.get(name) for name in DDP_LAUNCHER_VARIABLES}
    if hydra_cfg.mode == RunMode.MULTIRUN:
        sys.argv = [sys.argv[0], *hydra_cfg.overrides.task]
        with read_write(hydra_cfg):
            hydra_cfg.run.dir = hydra_cfg.runtime.output_dir
    try:
        yield
    finally:
        import torch  # loaded by the job already

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        sys.argv = saved_argv
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def kill_launched_ranks(trainer: L.Trainer, signum: int) -> None:
    """Send signum to the DDP ranks this process started (Lightning's subprocess launcher keeps them), so they
    stop at the same step as this one: Lightning forwards no signal but its own SIGTERM handling's."""
    launcher = trainer.strategy.launcher
    if launcher is not None:
        launcher.kill(signum)


def launched_ranks(trainer: L.Trainer) -> list[Any]:
    """The processes (subprocess.Popen) of the DDP ranks this process started; Lightning has no public list."""
    return list(getattr(trainer.strategy.launcher, "procs", []))


def patience_spent(callback: Any) -> bool:
    """Whether Lightning's EarlyStopping callback stopped the run: it says so only in a log line, and keeps the
    evaluations without improvement in wait_count (a public attribute, not documented)."""
    return callback.wait_count >= callback.patience


def tensorboard_file_writer(writer: SummaryWriter) -> Any:
    """The events file writer behind a SummaryWriter, for writing summaries as they are (the HParams tab's
    session start and end): SummaryWriter.add_hparams would write them into a folder of their own."""
    return writer._get_file_writer()


def softmax_backward(grad: torch.Tensor, probs: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """The gradient of a softmax from its output, in one kernel (the one autograd uses): the same from public
    operations takes two more temporaries the size of the attention scores."""
    import torch

    return torch._softmax_backward_data(grad, probs, dim, dtype)


@functools.cache
def onednn_multiplies_bf16() -> bool:
    """Whether oneDNN multiplies bf16 matrices on this CPU natively (AVX-512 BF16, AMX) rather than emulating
    them; PyTorch has no public query for it. The same for the whole process, so asked once."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def onednn_linear_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """relu(x weight^T + bias) as one oneDNN product that applies the bias and the ReLU as it writes its output:
    the op Inductor lowers a CPU linear layer and its ReLU to; PyTorch offers no public fused linear and ReLU."""
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu", [], "")


def parse_overrides(lines: list[str]) -> list[Override]:
    """Hydra's parsing of command-line overrides (`key=value`, `+key=value`, sweeps), as Hydra itself and its
    sweeper plugins use it; Hydra documents the grammar but exports no function for it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(lines)
