"""Evaluation entry point: `python -m shakegpt.evaluate ckpt_path=<run folder or .ckpt> [data.path=...]`.

The loss of a checkpoint on both splits, on the fixed evaluation batches every run draws (or on another text
file's), in nats and bits per character, without training and without writing anything.
"""

from __future__ import annotations

import contextlib
import sys

from hydra.utils import instantiate
from omegaconf import DictConfig

from shakegpt.errors import ShakeGPTError
from shakegpt.launch import entry_point
from shakegpt.rundir import losses_text


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """The checkpoint's mean loss per split (nats), on eval_batches batches of each."""
    if cfg.ckpt_path is None:
        raise ShakeGPTError("ckpt_path is required: a run folder or a .ckpt file")
    if isinstance(cfg.eval_batches, bool) or not isinstance(cfg.eval_batches, int) or cfg.eval_batches <= 0:
        raise ShakeGPTError(f"eval_batches must be a positive whole number, got {cfg.eval_batches!r}")
    # Lightning and torch load here, once Hydra has a config to run: `--help` and shell completion answer
    # without them (seconds of imports on a small machine).
    import lightning as L
    import torch

    from shakegpt.checkpoint import load_module
    from shakegpt.hardware import check_accelerator

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


@entry_point("evaluate")
def main(cfg: DictConfig) -> None:
    try:
        losses = evaluate(cfg)
    except ShakeGPTError as err:
        raise SystemExit(f"error: {err}") from None
    print(losses_text(losses["train"], losses["val"]))


if __name__ == "__main__":
    main()
