"""The corpus: where it lives, fetching and checking it, and serving random windows of its tokens."""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from shakegpt.errors import ShakeGPTError
from shakegpt.token_cache import TokenFile, load_tokens
from shakegpt.tokenizer import CharTokenizer

TINYSHAKESPEARE = Path("tinyshakespeare") / "input.txt"
DOWNLOAD_TIMEOUT_S = 10


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def download(url: str, dest: Path, sha256: str) -> None:
    """Fetch url into dest, verified, so that a failed or corrupt download never leaves a file (or a folder it
    made) behind."""
    made = [folder for folder in (dest.parent, *dest.parent.parents) if not folder.exists()]  # deepest first
    dest.parent.mkdir(parents=True, exist_ok=True)

    def clean_up(tmp_path: Path) -> None:
        tmp_path.unlink()
        for folder in made:
            folder.rmdir()

    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
                tmp.write(response.read())
        except (urllib.error.URLError, OSError) as err:
            clean_up(tmp_path)
            raise ShakeGPTError(
                f"{dest} is missing and downloading it from {url} failed ({err}). "
                f"Put the file there by hand, point the data directory elsewhere "
                f"(DATA_DIR=... or paths.data_dir=...), or use any UTF-8 text with data.path=..."
            ) from None
    actual = sha256_of(tmp_path)
    if actual != sha256:
        clean_up(tmp_path)
        raise ShakeGPTError(f"the download from {url} has sha256 {actual}, expected {sha256}; nothing was saved")
    os.replace(tmp_path, dest)


def locate_corpus(path: str | None, data_dir: str, url: str, sha256: str) -> Path:
    """The text file to train on: data.path when given, else tinyshakespeare in the data directory,
    downloaded there when missing and checked against its sha256."""
    if path is not None:
        corpus = Path(path).expanduser().resolve()
        if corpus.is_dir():
            raise ShakeGPTError(f"data.path={path} is a folder: give the text file in it to train on")
        if not corpus.is_file():
            raise ShakeGPTError(f"data.path={path} does not exist (looked at {corpus})")
        return corpus
    corpus = Path(data_dir).expanduser().resolve() / TINYSHAKESPEARE
    if not corpus.is_file():
        download(url, corpus, sha256)
    actual = sha256_of(corpus)
    if actual != sha256:
        raise ShakeGPTError(
            f"{corpus} is corrupt: its sha256 is {actual}, expected {sha256}. "
            f"Delete it to download it again, or copy a good one there"
        )
    return corpus


def split_tokens(tokens: TokenFile, train_fraction: float, block_size: int) -> tuple[TokenFile, TokenFile]:
    """First train_fraction for training, the rest for validation; each must hold one window."""
    n_train = int(train_fraction * len(tokens))
    train, val = tokens[:n_train], tokens[n_train:]
    for name, split in (("train", train), ("val", val)):
        if len(split) < block_size + 1:
            raise ShakeGPTError(
                f"the {name} split holds {len(split)} characters, fewer than data.block_size + 1 = "
                f"{block_size + 1}: use a longer corpus or a smaller data.block_size"
            )
    return train, val


class RandomWindows(IterableDataset):
    """Batches of random windows of block_size + 1 tokens, split into inputs and next-token targets.

    Batch number k is drawn from its own generator, seeded by (seed, stream, rank, k), so a resumed run sees the
    batches the uninterrupted run would have seen, and evaluations that start at k = 0 see the same batches
    every time. Windows are read from the token cache's file by position, whatever its integer type.
    """

    def __init__(
        self,
        tokens: TokenFile,
        block_size: int,
        batch_size: int,
        seed: int,
        stream: int,
        rank: int,
        start: int,
        stop: int,
        translation: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.seed, self.stream, self.rank, self.start, self.stop = seed, stream, rank, start, stop
        self.translation = translation  # token id -> the model's id, when the model has another vocabulary

    def __len__(self) -> int:
        # The whole epoch, batches 0 to stop - 1, also when iteration resumes at start: Lightning restores how
        # many batches of the epoch were done and would otherwise end the epoch early and start it again.
        return self.stop

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Hashes of int tuples are not randomised between processes, so seeds are stable.
        generator = torch.Generator().manual_seed(hash((self.seed, self.stream, self.rank, k)))
        starts = torch.randint(len(self.tokens) - self.block_size, (self.batch_size,), generator=generator)
        windows = self.tokens.windows(starts.numpy(), self.block_size + 1)
        if self.translation is not None:
            windows = self.translation[windows]
        windows = torch.from_numpy(windows.astype(np.int64))
        return windows[:, :-1], windows[:, 1:]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return (self.batch(k) for k in range(self.start, self.stop))


class CharDataModule(L.LightningDataModule):
    """Serves a character corpus: random training windows, and fixed evaluation batches on both splits.

    Validation has two dataloaders, the train split then the val split, so every evaluation reports the
    loss on both, as the classic script does. With a vocabulary (a checkpoint's), the corpus is read in its
    ids instead of its own, and a character outside it is refused.
    """

    def __init__(
        self,
        data_dir: str,
        url: str,
        sha256: str,
        path: str | None = None,
        batch_size: int = 64,
        block_size: int = 256,
        train_fraction: float = 0.9,
        seed: int = 1337,
        eval_seed: int = 0,
        pin_memory: bool = False,
        cache_dir: str | None = None,
        vocab: str | None = None,
    ) -> None:
        super().__init__()
        if batch_size <= 0 or block_size <= 0:
            raise ShakeGPTError(f"data.batch_size and data.block_size must be positive, got {batch_size}, {block_size}")
        if not 0.0 < train_fraction < 1.0:
            raise ShakeGPTError(f"data.train_fraction must be between 0 and 1, got {train_fraction}")
        self.path, self.data_dir, self.url, self.sha256 = path, data_dir, url, sha256
        self.batch_size, self.block_size, self.train_fraction = batch_size, block_size, train_fraction
        self.seed, self.eval_seed = seed, eval_seed
        self.pin_memory, self.cache_dir, self.vocab = pin_memory, cache_dir, vocab
        self.tokenizer: CharTokenizer | None = None
        self.translation: np.ndarray | None = None
        self.corpus: Path | None = None
        self.train_tokens: TokenFile | None = None
        self.val_tokens: TokenFile | None = None

    def prepare_data(self) -> None:
        """On the first rank only: fetch the corpus if needed and encode it into its token cache."""
        self.corpus = locate_corpus(self.path, self.data_dir, self.url, self.sha256)
        load_tokens(self.corpus, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        # prepare_data ran in this process only on the first rank; the others locate (and check) it here, and
        # wait on the cache's lock while the first rank encodes.
        corpus = self.corpus or locate_corpus(self.path, self.data_dir, self.url, self.sha256)
        tokens = load_tokens(corpus, self.cache_dir)
        self.train_tokens, self.val_tokens = split_tokens(tokens.ids, self.train_fraction, self.block_size)
        self.tokenizer = CharTokenizer(self.vocab or tokens.vocab)
        if self.vocab is not None and self.vocab != tokens.vocab:
            try:
                self.translation = np.array(self.tokenizer.encode(tokens.vocab), dtype=np.int64)
            except ShakeGPTError as err:
                raise ShakeGPTError(f"{corpus} cannot be read in the model's vocabulary: {err}") from None

    def _rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def _loader(self, tokens: TokenFile, seed: int, stream: int, start: int, stop: int) -> DataLoader:
        windows = RandomWindows(
            tokens, self.block_size, self.batch_size, seed, stream, self._rank(), start, stop, self.translation
        )
        # A generator of its own: otherwise every new iterator draws from the global RNG, which dropout uses,
        # and a resumed run (which creates iterators at other moments) would drift from an uninterrupted one.
        return DataLoader(windows, batch_size=None, pin_memory=self.pin_memory, generator=torch.Generator())

    def train_dataloader(self) -> DataLoader:
        start, stop = 0, 1_000_000
        if self.trainer is not None and self.trainer.max_steps > 0:
            start, stop = self.trainer.global_step, self.trainer.max_steps
        return self._loader(self.train_tokens, self.seed, 0, start, stop)

    def val_dataloader(self) -> list[DataLoader]:
        """One loader per split; each evaluation restarts them, so every evaluation sees the same batches."""
        n_batches = self.trainer.limit_val_batches if self.trainer is not None else 200
        if not isinstance(n_batches, int):
            raise ShakeGPTError(f"trainer.limit_val_batches is the number of eval batches per split, got {n_batches}")
        return [
            self._loader(tokens, self.eval_seed, stream, 0, n_batches)
            for stream, tokens in enumerate((self.train_tokens, self.val_tokens), start=1)
        ]
