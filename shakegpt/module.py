"""The LightningModule: trains a GPT, evaluates it on both splits, and samples text from it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import lightning as L
import torch

from shakegpt.divergence import check_losses
from shakegpt.errors import ShakeGPTError
from shakegpt.model import GPT, GPTConfig, KVCacheMode
from shakegpt.tokenizer import CharTokenizer

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
ScheduleFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler | None]


class GPTModule(L.LightningModule):
    """Wraps a GPT for Lightning.

    Its hyperparameters (the model config and the vocabulary) are plain values saved in every checkpoint,
    so a checkpoint alone rebuilds the model and its tokenizer.
    """

    def __init__(
        self,
        model_config: dict[str, Any],
        vocab: str,
        optimizer: OptimizerFactory | None = None,
        lr_schedule: ScheduleFactory | None = None,
    ) -> None:
        super().__init__()
        # The entry point logs the whole run config as hyperparameters; these are for checkpoints.
        self.save_hyperparameters(ignore=["optimizer", "lr_schedule"], logger=False)
        self.model = GPT(GPTConfig(**model_config))
        self.tokenizer = CharTokenizer(vocab)
        # From the optimizer config group (conf/train/optimizer/); none when the module only samples.
        self.optimizer_factory = optimizer
        # From conf/train/lr_schedule/: a scheduler stepped after every optimizer update, or none (a constant lr).
        self.lr_schedule = lr_schedule
        # Mean loss per split at the latest evaluation; the val dataloaders come in this order.
        self.splits = ("train", "val")
        self.eval_losses: dict[str, float] = {}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        _, loss = self.model(*batch)
        # For the progress bar; the loggers get it from shakegpt.callbacks.EvalReport.
        self.log("train/batch_loss", loss, prog_bar=True, logger=False)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Lightning evaluates every val_check_interval steps; asking it to stop after the last step makes
        # it evaluate there too, as the classic script does.
        if self.trainer.max_steps > 0 and self.global_step >= self.trainer.max_steps:
            self.trainer.should_stop = True

    def on_validation_epoch_start(self) -> None:
        self._batch_losses: dict[str, list[torch.Tensor]] = {split: [] for split in self.splits}

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0):
        _, loss = self.model(*batch)
        self._batch_losses[self.splits[dataloader_idx]].append(loss.detach())

    def on_validation_epoch_end(self) -> None:
        # Averaged here rather than through self.log alone: the reporting callbacks read them as plain numbers at
        # every evaluation, the one before training (a validate call) included.
        self.eval_losses = {
            split: float(self.trainer.strategy.reduce(torch.stack(losses).mean(), reduce_op="mean"))
            for split, losses in self._batch_losses.items()
        }
        check_losses(self.eval_losses, self.global_step)
        for split, loss in self.eval_losses.items():
            # Already averaged over ranks; sync_dist only keeps Lightning from warning that it is not.
            self.log(f"{split}/loss", loss, logger=False, prog_bar=True, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        if self.optimizer_factory is None:
            raise ShakeGPTError("GPTModule was built without an optimizer (optimizer=...), so it cannot train")
        optimizer = self.optimizer_factory(self.parameters())
        scheduler = self.lr_schedule(optimizer) if self.lr_schedule is not None else None
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def sample(self, prompt: str | None, max_new_tokens: int, seed: int = 1337, **options: Any) -> str:
        """prompt (None: the tokenizer's default) followed by max_new_tokens sampled characters; options as
        stream's. The tokens leave the device once, at the end: a copy per character would wait for the GPU every
        time, and a GPU shared with other runs makes each wait long."""
        prompt, idx = self._encoded(prompt)
        with self._sampling(seed) as generator:
            tokens = self.model.generate(idx, max_new_tokens, generator=generator, **options)
        return prompt + self.tokenizer.decode(tokens[0, idx.size(1) :].tolist())

    def stream(
        self,
        prompt: str | None,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        seed: int = 1337,
        kv_cache: KVCacheMode = "exact",
    ) -> Iterator[str]:
        """prompt (None: the tokenizer's default), then max_new_tokens sampled characters one at a time, as they
        come; in eval mode, without touching the global RNG. The prompt comes once it is known to be in the
        vocabulary."""
        prompt, idx = self._encoded(prompt)
        yield prompt
        with self._sampling(seed) as generator:
            for token in self.model.stream(idx, max_new_tokens, temperature, top_k, kv_cache, generator):
                yield self.tokenizer.decode([token.item()])

    def _encoded(self, prompt: str | None) -> tuple[str, torch.Tensor]:
        """The prompt (None: the tokenizer's default) and its (1, time) tokens on the model's device."""
        if prompt is None:
            prompt = self.tokenizer.default_prompt
        if not prompt:
            raise ShakeGPTError("the prompt is empty: give at least one character, e.g. a newline")
        return prompt, torch.tensor([self.tokenizer.encode(prompt)], dtype=torch.long, device=self.device)

    @contextmanager
    def _sampling(self, seed: int) -> Iterator[torch.Generator]:
        """The model in eval mode, and a generator of the sampling's own on its device (the global RNG untouched)."""
        was_training = self.model.training
        self.model.eval()
        try:
            yield torch.Generator(device=self.device).manual_seed(seed)
        finally:
            self.model.train(was_training)
