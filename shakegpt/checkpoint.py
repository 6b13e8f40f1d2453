"""Finding and reading shakegpt checkpoints, with clear errors for files that are not ours, and the model one holds."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from shakegpt.divergence import all_finite
from shakegpt.errors import ShakeGPTError
from shakegpt.module import GPTModule
from shakegpt.rundir import BEST_CHECKPOINT, CHECKPOINTS


def resolve_checkpoint(ckpt_path: str, default_name: str) -> Path:
    """A .ckpt file as given, or for a run folder its checkpoints/<default_name>."""
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        path = path / CHECKPOINTS / default_name
    if not path.is_file():
        raise ShakeGPTError(f"no checkpoint at {path}: give a .ckpt file or a run folder holding checkpoints/")
    return path


def read_checkpoint(path: Path, device: str = "cpu") -> dict[str, Any]:
    """The checkpoint's contents, once they are known to be a readable shakegpt checkpoint."""
    try:
        # Memory-mapped: checking a checkpoint before Lightning resumes from it reads only what is looked at.
        checkpoint = torch.load(path, map_location=device, weights_only=True, mmap=True)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" in str(err):
            raise ShakeGPTError(
                f"{path} was refused as unsafe: loading it would run code it carries (a pickled object other than "
                "tensors and plain values); shakegpt checkpoints never need that, so it is not ours"
            ) from None
        raise ShakeGPTError(f"{path} is not a readable checkpoint: truncated, corrupt, or not a PyTorch file") from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile):
        raise ShakeGPTError(f"{path} is not a readable checkpoint: truncated, corrupt, or not a PyTorch file") from None
    # torch.load reads past a damaged byte without a word (it checks no checksum); the zip's own say.
    with zipfile.ZipFile(path) as archive:
        damaged = archive.testzip()
    if damaged is not None:
        raise ShakeGPTError(
            f"{path} is damaged: {damaged} inside it does not match its checksum (a bad disk or copy); use "
            "another checkpoint, e.g. the run folder's other one in checkpoints/"
        )
    hparams = checkpoint.get("hyper_parameters", {}) if isinstance(checkpoint, dict) else {}
    if not {"model_config", "vocab"} <= hparams.keys() or "state_dict" not in checkpoint:
        raise ShakeGPTError(f"{path} is not a shakegpt checkpoint: it lacks the model config and vocabulary")
    return checkpoint


def load_module(ckpt_path: str, device: str = "cpu") -> GPTModule:
    """Rebuild the model and its vocabulary from a checkpoint alone (a run folder means its best one)."""
    path = resolve_checkpoint(ckpt_path, BEST_CHECKPOINT)
    checkpoint = read_checkpoint(path, device)
    hparams = checkpoint["hyper_parameters"]
    module = GPTModule(hparams["model_config"], hparams["vocab"])
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as err:
        raise ShakeGPTError(f"{path} does not match the model its config describes: {err}") from None
    if not all_finite(module.state_dict().values()):
        raise ShakeGPTError(
            f"{path} holds weights that are not finite numbers (NaN or infinite): the run diverged before it was "
            "written; use an earlier checkpoint, or train again with a lower optimizer.lr"
        )
    return module.to(device)


def check_resumable(path: Path, model_config: dict[str, Any], vocab: str) -> None:
    """Refuse to resume from a checkpoint of another vocabulary or another model shape."""
    hparams = read_checkpoint(path)["hyper_parameters"]
    if hparams["vocab"] != vocab:
        raise ShakeGPTError(
            f"{path} was trained on another vocabulary ({len(hparams['vocab'])} characters) than this run's data "
            f"({len(vocab)} characters): resume with the data it was trained on"
        )
    if hparams["model_config"] != model_config:
        raise ShakeGPTError(
            f"{path} holds a model with {hparams['model_config']}, but this run asks for {model_config}: "
            "resume with the model overrides it was trained with"
        )
