"""MNIST two ways, in one file: an MLP written in NumPy (forward, backward and SGD by hand) and a small CNN
in PyTorch trained with Lightning.

    python -m mnist.train model=numpy
    python -m mnist.train model=torch

Both read torchvision's MNIST from the data directory (paths.data_dir, i.e. DATA_DIR or ./data), print the
test accuracy and the time taken, log to TensorBoard in the run folder under outputs/, and draw a
confusion matrix and a grid of misclassified digits there.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import hydra
import lightning as L
import matplotlib
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig
from torch.utils.data import DataLoader, TensorDataset
from tqdm import tqdm

from shakegpt.config_dir import config_dir

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CONFIG_DIR = config_dir("mnist")

log = logging.getLogger(__name__)
MEAN, STD = 0.1307, 0.3081  # of the MNIST training pixels in [0, 1]


class DataError(Exception):
    """MNIST is missing and cannot be fetched, or its files are unreadable."""


# --- data -----------------------------------------------------------------------------------------------
def load_mnist(data_dir: str, download: bool = True) -> dict[str, np.ndarray]:
    """Train and test images (N, 28, 28) as float32, normalised, and labels, from <data_dir>/MNIST/raw."""
    from torchvision.datasets import MNIST

    root = Path(data_dir).expanduser().resolve()
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)  # offline, fail in seconds rather than minutes
    try:
        splits = {name: MNIST(str(root), train=(name == "train"), download=download) for name in ("train", "test")}
    except (RuntimeError, OSError) as err:
        raise DataError(
            f"MNIST is not in {root / 'MNIST' / 'raw'} and could not be downloaded ({err}). Copy the four "
            "*-ubyte files there (torchvision's layout) or point DATA_DIR / paths.data_dir at a folder holding "
            "MNIST/raw/"
        ) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
    arrays = {}
    for name, dataset in splits.items():
        arrays[f"x_{name}"] = ((dataset.data.numpy().astype(np.float32) / 255.0) - MEAN) / STD
        arrays[f"y_{name}"] = dataset.targets.numpy().astype(np.int64)
    return arrays


# --- the NumPy model --------------------------------------------------------------------------------------
class NumpyMLP:
    """784 -> hidden (ReLU) -> ... -> 10, softmax cross-entropy, mini-batch SGD with momentum. NumPy only."""

    def __init__(self, sizes: list[int], seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        # He initialisation keeps ReLU activations at a steady scale through the layers.
        self.weights = [
            rng.normal(0, np.sqrt(2 / m), (m, n)).astype(np.float32) for m, n in zip(sizes, sizes[1:], strict=False)
        ]
        self.biases = [np.zeros(n, dtype=np.float32) for n in sizes[1:]]
        self.velocity = [np.zeros_like(p) for p in self.params()]

    def params(self) -> list[np.ndarray]:
        return [*self.weights, *self.biases]

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Logits, and the input of every layer (kept for the backward pass)."""
        inputs = []
        h = x.reshape(len(x), -1)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            inputs.append(h)
            h = h @ w + b
            if i < len(self.weights) - 1:
                h = np.maximum(h, 0)
        return h, inputs

    @staticmethod
    def loss_and_grad_logits(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        """Mean softmax cross-entropy and its gradient with respect to the logits."""
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        n = len(y)
        loss = -log_probs[np.arange(n), y].mean()
        grad = np.exp(log_probs)
        grad[np.arange(n), y] -= 1
        return float(loss), grad / n

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
        logits, inputs = self.forward(x)
        loss, grad = self.loss_and_grad_logits(logits, y)
        grad_w, grad_b = [], []
        for i in reversed(range(len(self.weights))):
            grad_w.append(inputs[i].T @ grad)
            grad_b.append(grad.sum(axis=0))
            if i > 0:
                # Through the ReLU: gradient flows only where that layer's output was positive.
                grad = (grad @ self.weights[i].T) * (inputs[i] > 0)
        return loss, [*reversed(grad_w), *reversed(grad_b)]

    def sgd_step(self, grads: list[np.ndarray], lr: float, momentum: float, weight_decay: float) -> None:
        for p, g, v in zip(self.params(), grads, self.velocity, strict=True):
            v *= momentum
            v += g + weight_decay * p
            p -= lr * v

    def predict(self, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
        return np.concatenate([self.forward(x[i : i + batch_size])[0].argmax(1) for i in range(0, len(x), batch_size)])


def train_numpy(cfg: DictConfig, data: dict[str, np.ndarray], logger: TensorBoardLogger) -> np.ndarray:
    model = NumpyMLP([28 * 28, *cfg.model.hidden, 10], seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    x, y = data["x_train"], data["y_train"]
    steps_per_epoch = len(x) // cfg.model.batch_size
    total_steps = cfg.model.epochs * steps_per_epoch
    step = 0
    for epoch in range(cfg.model.epochs):
        order = rng.permutation(len(x))
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.model.epochs}", leave=False)
        for i in bar:
            idx = order[i * cfg.model.batch_size : (i + 1) * cfg.model.batch_size]
            loss, grads = model.loss_and_grads(x[idx], y[idx])
            lr = cfg.model.lr * 0.5 * (1 + np.cos(np.pi * step / total_steps))  # cosine decay to 0
            model.sgd_step(grads, lr, cfg.model.momentum, cfg.model.weight_decay)
            step += 1
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss:.3f}")
                logger.log_metrics({"train/loss": loss}, step=step)
        predictions = model.predict(data["x_test"])
        accuracy = float((predictions == data["y_test"]).mean())
        logger.log_metrics({"test/accuracy": accuracy}, step=step)
        log.info("epoch %d: test accuracy %.4f", epoch + 1, accuracy)
    return predictions


# --- the torch model --------------------------------------------------------------------------------------
class SmallCNN(L.LightningModule):
    """Two conv blocks (3x3 conv, batch norm, ReLU, 2x2 max-pool) and a two-layer classifier with dropout."""

    def __init__(self, lr: float = 3e-3, epochs: int = 3, steps_per_epoch: int = 469, dropout: float = 0.25) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(128, 10),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.unsqueeze(1)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("test/accuracy", (self(x).argmax(1) == y).float().mean(), prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
        total = self.hparams.epochs * self.hparams.steps_per_epoch
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=self.hparams.lr, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def train_torch(cfg: DictConfig, data: dict[str, np.ndarray], logger: TensorBoardLogger) -> np.ndarray:
    L.seed_everything(cfg.seed, workers=True)
    tensors = {key: torch.from_numpy(value) for key, value in data.items()}
    train = DataLoader(TensorDataset(tensors["x_train"], tensors["y_train"]), cfg.model.batch_size, shuffle=True)
    test = DataLoader(TensorDataset(tensors["x_test"], tensors["y_test"]), 1000)
    model = SmallCNN(cfg.model.lr, cfg.model.epochs, len(train), cfg.model.dropout)
    trainer = L.Trainer(
        max_epochs=cfg.model.epochs,
        logger=logger,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=cfg.paths.output_dir,
        accelerator="auto",
        devices=1,
    )
    trainer.fit(model, train, test)
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x.to(model.device)).argmax(1).cpu() for x, _ in test]).numpy()


# --- pictures ---------------------------------------------------------------------------------------------
def plot_confusion(y_true: np.ndarray, y_pred: np.ndarray, path: Path, title: str) -> None:
    matrix = np.zeros((10, 10), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    fig, ax = plt.subplots(figsize=(6.5, 6))
    ax.imshow(np.log1p(matrix), cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color="white" if i == j else "black")
    ax.set(xticks=range(10), yticks=range(10), xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_misclassified(images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, path: Path, count: int = 36) -> None:
    wrong = np.flatnonzero(y_true != y_pred)[:count]
    cols = 6
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.4, rows * 1.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong, strict=False):
        ax.imshow(images[i] * STD + MEAN, cmap="gray_r")
        ax.set_title(f"true {y_true[i]}, said {y_pred[i]}", fontsize=7)
    fig.suptitle(f"Misclassified test digits (first {len(wrong)} of {int((y_true != y_pred).sum())})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- entry point ------------------------------------------------------------------------------------------
def run(cfg: DictConfig) -> float:
    """Train the configured model; returns its test accuracy."""
    start = time.monotonic()
    data = load_mnist(cfg.paths.data_dir, cfg.download)
    if cfg.train_subset:
        data["x_train"], data["y_train"] = data["x_train"][: cfg.train_subset], data["y_train"][: cfg.train_subset]
    out = Path(cfg.paths.output_dir)
    logger = TensorBoardLogger(save_dir=str(out), name="", version="", default_hp_metric=False)
    trainers = {"numpy": train_numpy, "torch": train_torch}
    predictions = trainers[cfg.model.name](cfg, data, logger)
    accuracy = float((predictions == data["y_test"]).mean())
    elapsed = time.monotonic() - start
    logger.log_metrics({"test/final_accuracy": accuracy}, step=0)
    logger.finalize("success")
    title = f"{cfg.model.name} model: {accuracy:.2%} test accuracy"
    plot_confusion(data["y_test"], predictions, out / "confusion_matrix.png", title)
    plot_misclassified(data["x_test"], data["y_test"], predictions, out / "misclassified.png")
    print(f"{cfg.model.name} model: test accuracy {accuracy:.4f} ({accuracy:.2%}), {elapsed:.1f} s", flush=True)
    return accuracy


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float:
    try:
        return run(cfg)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
