"""The machine's accelerators: which exist, which to use, and which precision suits this CPU."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import platform
import time
from pathlib import Path

import torch

from shakegpt.compat import onednn_multiplies_bf16
from shakegpt.errors import ShakeGPTError
from shakegpt.rundir import write_atomically
from shakegpt.user_cache import user_cache_dir

# bf16-mixed pays for its casts only where bf16 matmuls are well ahead of fp32 ones (docs/performance.md).
BF16_SPEEDUP_NEEDED = 1.5
PRECISION_FILE = "cpu_precision.json"
# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


@functools.cache
def cpu_precision() -> str:
    """bf16-mixed where this CPU multiplies bf16 matrices at least BF16_SPEEDUP_NEEDED times as fast as fp32
    ones, else 32-true. The CPU's flags are not enough: one with AVX-512 BF16 measured 2.1x (bf16 trains
    faster there), another 0.55x (fp32 trains 1.4x faster there).

    Measured once per machine (CPU model, torch version, threads), in about 0.1 s, and kept in the user cache,
    so every run, sweep job and resume on the machine trains in the same precision: measured in each process,
    the choice flipped when other work loaded the machine, and a resumed run drifted from its first part.
    Delete the file (its path is in the README) to measure again."""
    path = user_cache_dir() / PRECISION_FILE
    key = f"{cpu_model()}; torch {torch.__version__}; {torch.get_num_threads()} threads"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = measured_cpu_precision()
        with contextlib.suppress(OSError):  # a read-only home: measured again by the next process
            write_atomically(path, json.dumps(known, indent=2).encode())
    return known[key]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def measured_cpu_precision(rounds: int = 7) -> str:
    if not onednn_multiplies_bf16():
        return "32-true"  # emulated bf16: slower than fp32 everywhere
    # Alternated, best of each: a burst of other work slows both alike instead of one.
    speed = {torch.float32: 0.0, torch.bfloat16: 0.0}
    for _ in range(rounds):
        for dtype in speed:
            speed[dtype] = max(speed[dtype], matmul_gflops(dtype, repeats=1))
    return "bf16-mixed" if speed[torch.bfloat16] >= BF16_SPEEDUP_NEEDED * speed[torch.float32] else "32-true"


def matmul_gflops(dtype: torch.dtype, size: int = 512, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """The best of a few size x size matrix products, in GFLOP/s (also scripts/bench.py's GEMM peak)."""
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    a @ b
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def synchronize(device: str | torch.device) -> None:
    """Wait for the device's queued work (CUDA and MPS run asynchronously), so that a clock around it is true."""
    kind = torch.device(device).type
    if kind == "cuda":
        torch.cuda.synchronize(device)
    elif kind == "mps":
        torch.mps.synchronize()


def keep_freed_memory() -> bool:
    """Have the C library keep the memory this process frees for its next allocations, instead of handing it
    back to the OS. glibc maps every block over 32 MB afresh and unmaps it when freed, so each of the hundreds
    of such blocks a CPU training step allocates (activations, their gradients) comes back as page faults on
    zeroed pages: a quarter of a training step at n_layer 6 and 12 (docs/performance.md). The process then keeps
    the step's peak resident between steps instead of dropping back. Returns whether it took effect: it does
    nothing where the C library has no mallopt (macOS)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return False
    # No fresh mappings for large blocks, and never trimming the heap's free top (-1: never, as mallopt(3) says).
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))


def check_accelerator(accelerator: str, setting: str = "hardware") -> None:
    """Fail before any work when the asked-for hardware is not on this machine."""
    missing = {
        "mps": not torch.backends.mps.is_available(),
        "cuda": not torch.cuda.is_available(),
        "gpu": not torch.cuda.is_available(),
    }
    if missing.get(accelerator, False):
        raise ShakeGPTError(
            f"{setting}={accelerator} was asked for, but this machine has no {accelerator.upper()} device "
            f"that PyTorch can use; run with {setting}=cpu, or {setting}=auto to take the best one present"
        )


def pick_device(device: str) -> str:
    """generate's device: auto takes CUDA, then MPS, then the CPU; one named must exist here."""
    if device != "auto":
        kind = str(device).split(":")[0]
        if kind not in ("cpu", "cuda", "mps"):
            raise ShakeGPTError(f"device must be auto, cpu, cuda (or cuda:N) or mps, got {device!r}")
        check_accelerator(kind, setting="device")
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"
