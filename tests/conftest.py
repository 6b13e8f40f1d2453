import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shakegpt.data import TINYSHAKESPEARE

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# The datasets: DATA_DIR when set; else ../shared/data, where CI keeps them; else ./data, where the README's
# first command downloaded tinyshakespeare (and where the MNIST corner downloads MNIST).
os.environ.setdefault("DATA_DIR", str(SHARED_DATA if SHARED_DATA.is_dir() else ROOT / "data"))
torch.set_num_threads(min(2, torch.get_num_threads()))

# A model and run small enough for seconds on a CPU, through the real entry point.
TINY = ["experiment=smoke", "hardware=cpu"]


def run_module(module: str, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300):
    """Run `python -m module args` as a user would; returns the CompletedProcess (text)."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    path = Path(os.environ["DATA_DIR"]) / TINYSHAKESPEARE
    if not path.is_file():
        pytest.fail(f"tinyshakespeare not found at {path}; set DATA_DIR to a folder holding tinyshakespeare/input.txt")
    return path


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """A real two-size sweep plus a job that cannot run (n_embd 48 is not divisible by 5 heads).

    Returns (sweep folder, completed process)."""
    tmp = tmp_path_factory.mktemp("sweep")
    folder = tmp / "sweep"
    proc = run_module("shakegpt.train", "-m", *TINY, "model.n_layer=1,2,5", f"hydra.sweep.dir={folder}", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder, proc


@contextlib.contextmanager
def own_signal_handlers():
    """Training installs its own signal handlers in this process; the tests after it get pytest's back."""
    from shakegpt.resume import TRAINING_STOP_SIGNALS

    before = {signum: signal.getsignal(signum) for signum in TRAINING_STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def train_in_process(folder: Path, *overrides: str) -> float:
    """shakegpt.training.train on a tiny run's config composed through Hydra's compose API, as a job of
    `python -m shakegpt.train` runs it (run folder: folder); returns the best val loss."""
    from shakegpt.compose import as_a_job
    from shakegpt.training import train

    settings = [*TINY, "callbacks.progress_bar.refresh_rate=0", f"paths.output_dir={folder}", *overrides]
    with as_a_job(settings) as cfg:
        return train(cfg)


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """One tiny run (20 steps, evaluations at 0, 10 and 20) trained in this process: its folder."""
    folder = tmp_path_factory.mktemp("trained") / "run"
    with own_signal_handlers():
        train_in_process(folder)
    return folder


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    """One tiny training run shared by the tests below: (run folder, completed process)."""
    tmp = tmp_path_factory.mktemp("train")
    folder = tmp / "run"
    proc = run_module("shakegpt.train", *TINY, f"hydra.run.dir={folder}", cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder, proc
