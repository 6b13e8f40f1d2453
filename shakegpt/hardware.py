"""The machine's accelerators: which exist, which to use, and which precision suits this CPU."""

from __future__ import annotations

import torch

from shakegpt.errors import ShakeGPTError


def cpu_precision() -> str:
    """bf16-mixed where the CPU computes bf16 natively (AVX-512 BF16 or AMX): 2-3x faster training steps
    there (scripts/bench.py); elsewhere bf16 is emulated and slower than fp32, so 32-true."""
    try:
        native_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        native_bf16 = False
    return "bf16-mixed" if native_bf16 else "32-true"


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
