"""A corpus' characters as token ids, encoded once, stored in the smallest integer type that holds them, and
read by position, so memory stays flat whatever the corpus' size.

The cache is two files beside the corpus (`input.txt.tokens` and its `.json` record), or in another folder when
the corpus' folder is read-only or `cache_dir` is given. The record names the corpus, its size and modification
time, and the vocabulary; it is written last, so a cache whose record is missing, does not match the corpus, or
whose ids file has the wrong length is rebuilt, never trusted. One process builds while the others wait on a lock
(DDP ranks, parallel sweep jobs), and each file appears by an atomic rename.

Only NumPy is imported: preparing a corpus needs neither torch nor Lightning.
"""

from __future__ import annotations

import codecs
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shakegpt.errors import ShakeGPTError
from shakegpt.rundir import write_atomically
from shakegpt.user_cache import user_cache_dir

log = logging.getLogger(__name__)

FORMAT = 1
CHUNK_BYTES = 16 * 2**20  # of text per step: bounds memory (about 10x this at the peak) whatever the corpus' size
UNICODE_SIZE = 0x110000  # code points
CACHE_MODE = 0o644  # the ids file readable by everyone who can read the corpus (temporary files start private)


class TokenFile:
    """Token ids in a file, positions start to stop, read by position (os.pread) rather than memory-mapped: the
    pages of a memory map count toward the process' resident memory, and the kernel maps them by the megabyte
    (10,000 random windows of a 1 GB corpus mapped ~1 GB of it), so a long run's memory would grow to the
    corpus' size. A window costs one system call, about 2 microseconds."""

    def __init__(self, path: Path, dtype: np.dtype, start: int, stop: int) -> None:
        self.path, self.dtype, self.start, self.stop = path, np.dtype(dtype), start, stop
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, positions: slice) -> TokenFile:
        """Positions start:stop of these (no step), as another view of the same file."""
        start, stop, _ = positions.indices(len(self))
        return TokenFile(self.path, self.dtype, self.start + start, self.start + max(start, stop))

    def windows(self, starts: np.ndarray, length: int) -> np.ndarray:
        """The length ids from each start, one row per start."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        size = self.dtype.itemsize
        rows = [os.pread(self._fd, length * size, (self.start + int(start)) * size) for start in starts]
        return np.frombuffer(b"".join(rows), dtype=self.dtype).reshape(len(rows), length)

    def read(self) -> np.ndarray:
        """All of them (for small corpora and tests)."""
        return self.windows(np.zeros(1, dtype=np.int64), len(self))[0]

    def __del__(self) -> None:
        if self._fd is not None:
            os.close(self._fd)


@dataclass(frozen=True)
class Tokens:
    """A corpus as ids into its vocabulary: the corpus' distinct characters in code point order."""

    vocab: str
    ids: TokenFile  # uint8 / uint16 / uint32


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer type that holds every id."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise AssertionError("Unicode has fewer than 2**32 code points")


def writable(folder: Path) -> bool:
    # The mode bits too: root passes os.access on any folder, and would write into a dataset folder
    # that was made read-only on purpose.
    return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)


def cache_stem(corpus: Path, cache_dir: str | Path | None) -> Path:
    """Where a corpus' cache lives, less the suffixes: beside the corpus when its folder is writable and no
    cache_dir is given; else in cache_dir (or the user's cache), named apart from same-named corpora elsewhere."""
    if cache_dir is None and writable(corpus.parent):
        return corpus.parent / corpus.name
    folder = Path(cache_dir).expanduser() if cache_dir is not None else user_cache_dir() / "tokens"
    return folder / f"{corpus.name}-{hashlib.sha1(str(corpus).encode()).hexdigest()[:8]}"


def load_tokens(corpus: Path, cache_dir: str | Path | None = None) -> Tokens:
    """The corpus' tokens from its cache, built first when missing or stale."""
    corpus = corpus.resolve()
    stem = cache_stem(corpus, cache_dir)
    ids_path, record_path = stem.with_name(stem.name + ".tokens"), stem.with_name(stem.name + ".tokens.json")
    try:
        stem.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(stem.with_name(stem.name + ".tokens.lock")):
            record = valid_record(corpus, ids_path, record_path)
            if record is None:
                record = build(corpus, ids_path, record_path)
    except PermissionError as err:
        raise ShakeGPTError(
            f"cannot write the token cache of {corpus} ({err.strerror}: {err.filename}); "
            f"point data.cache_dir=... at a writable folder"
        ) from None
    return Tokens(record["vocab"], TokenFile(ids_path, np.dtype(record["dtype"]), 0, record["n_tokens"]))


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        yield


def corpus_identity(corpus: Path) -> dict:
    stat = corpus.stat()
    return {"format": FORMAT, "corpus": str(corpus), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def valid_record(corpus: Path, ids_path: Path, record_path: Path) -> dict | None:
    """The cache's record if it describes this corpus as it is now and the ids file is whole; else None."""
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if {key: record.get(key) for key in ("format", "corpus", "size", "mtime_ns")} != corpus_identity(corpus):
            return None
        expected_bytes = record["n_tokens"] * np.dtype(record["dtype"]).itemsize
        return record if ids_path.stat().st_size == expected_bytes else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def text_chunks(corpus: Path) -> Iterator[str]:
    """The corpus decoded piece by piece; a character split between two reads is completed by the next."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(corpus, "rb") as f:
        while True:
            data = f.read(CHUNK_BYTES)
            try:
                text = decoder.decode(data, final=not data)
            except UnicodeDecodeError as err:
                raise ShakeGPTError(
                    f"{corpus} is not UTF-8 text (the byte near offset {offset + err.start} cannot be decoded); "
                    f"convert it, e.g. with iconv"
                ) from None
            offset += len(data)
            if text:
                yield text
            if not data:
                return


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


def build(corpus: Path, ids_path: Path, record_path: Path) -> dict:
    """Two passes over the text: the vocabulary, then the ids, written to a temporary file and renamed."""
    identity = corpus_identity(corpus)
    log.info("encoding %s (%.1f MB) into %s", corpus, identity["size"] / 1e6, ids_path)
    started = time.perf_counter()
    present = np.zeros(UNICODE_SIZE, dtype=bool)
    for text in text_chunks(corpus):
        present[code_points(text)] = True
    vocab_points = np.flatnonzero(present)
    if len(vocab_points) == 0:
        raise ShakeGPTError(f"{corpus} is empty: give data.path a text file with something in it")
    dtype = id_dtype(len(vocab_points))
    id_of = np.zeros(UNICODE_SIZE, dtype=dtype)
    id_of[vocab_points] = np.arange(len(vocab_points), dtype=dtype)
    n_tokens = 0
    with tempfile.NamedTemporaryFile(dir=ids_path.parent, prefix=ids_path.name, delete=False) as tmp:
        os.fchmod(tmp.fileno(), CACHE_MODE)
        try:
            for text in text_chunks(corpus):
                ids = id_of[code_points(text)]
                ids.tofile(tmp)
                n_tokens += len(ids)
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            os.unlink(tmp.name)
            raise
    if corpus_identity(corpus) != identity:
        os.unlink(tmp.name)
        raise ShakeGPTError(f"{corpus} changed while it was being encoded; run again once it is written")
    os.replace(tmp.name, ids_path)
    record = {**identity, "dtype": dtype.name, "n_tokens": n_tokens, "vocab": "".join(map(chr, vocab_points))}
    write_atomically(record_path, json.dumps(record).encode())
    log.info(
        "encoded %d characters, %d distinct, as %s in %.1f s", n_tokens, len(vocab_points), dtype.name,
        time.perf_counter() - started,
    )  # fmt: skip
    return record
