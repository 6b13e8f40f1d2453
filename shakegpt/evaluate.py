"""Evaluation entry point: `python -m shakegpt.evaluate ckpt_path=<run folder or .ckpt> [data.path=...]`.

The loss of a checkpoint on both splits, on the fixed evaluation batches every run draws (or on another text
file's), in nats and bits per character, without training and without writing anything.
"""

from __future__ import annotations

import contextlib
import sys

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from shakegpt.config_dir import config_dir
from shakegpt.errors import ShakeGPTError
from shakegpt.generate import load_module
from shakegpt.hardware import check_accelerator
from shakegpt.launch import accepting_pasted_folders
from shakegpt.rundir import losses_text

CONFIG_DIR = config_dir()


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """The checkpoint's mean loss per split (nats), on eval_batches batches of each."""
    if cfg.ckpt_path is None:
        raise ShakeGPTError("ckpt_path is required: a run folder or a .ckpt file")
    if isinstance(cfg.eval_batches, bool) or not isinstance(cfg.eval_batches, int) or cfg.eval_batches <= 0:
        raise ShakeGPTError(f"eval_batches must be a positive whole number, got {cfg.eval_batches!r}")
    check_accelerator(cfg.hardware.accelerator)
    torch.set_float32_matmul_precision(cfg.hardware.matmul_precision)
    module = load_module(cfg.ckpt_path)
    # The model's context and vocabulary, whatever the data group says: another corpus is read in its terms.
    datamodule = instantiate(cfg.data, block_size=module.model.config.block_size, vocab=module.tokenizer.vocab)
    trainer = L.Trainer(
        accelerator=cfg.hardware.accelerator,
        devices=1,
        precision=cfg.hardware.precision,
        limit_val_batches=cfg.eval_batches,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=sys.stderr.isatty(),
    )
    with contextlib.redirect_stdout(sys.stderr):  # Lightning's notices; stdout is the result alone
        trainer.validate(module, datamodule=datamodule, verbose=False)
    return module.eval_losses


@accepting_pasted_folders
@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        losses = evaluate(cfg)
    except ShakeGPTError as err:
        raise SystemExit(f"error: {err}") from None
    print(losses_text(losses["train"], losses["val"]))


if __name__ == "__main__":
    main()
