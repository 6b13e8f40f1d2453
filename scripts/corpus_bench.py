"""Preparation time and peak memory of the token cache against corpus size, and the training process' memory.

    python scripts/corpus_bench.py                       # 1, 10, 100 and 1000 MB; training at 10 and 1000 MB
    python scripts/corpus_bench.py --sizes 1 10 --train-sizes 10

The corpora are made here, once, in --folder: the first 10 MB of the Python standard library's sources (in path
order, cut at a character boundary), repeated until the size is reached, so that every corpus from 10 MB up has
the same vocabulary (209 characters with Python 3.11, so uint8 ids) and training runs differ only in the
corpus' size.

Each measurement runs alone in a fresh process: preparation encodes the corpus into an empty cache folder
(`load_tokens`, NumPy only); training runs `python -m shakegpt.train` on the prepared corpus for 100
steps of the smoke model at the classic batch (64 x 256) with evaluations. Peak memory is the process' peak
resident set (ru_maxrss), interpreter and imports included; the NumPy baseline is that of the same process
that prepares nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

MB = 10**6
BASE_MB = 10
PREPARE = (
    "import sys; from pathlib import Path; from shakegpt.token_cache import load_tokens; "
    "sys.argv[1] != '-' and load_tokens(Path(sys.argv[1]), sys.argv[2])"
)


def standard_library_text(size: int) -> bytes:
    """The first size bytes of the standard library's sources, whole characters only."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = sorted(p for p in stdlib.rglob("*.py") if "-packages" not in str(p))
    text = bytearray()
    for source in sources:
        text += source.read_bytes()
        if len(text) >= size:
            break
    return bytes(text[:size]).decode("utf-8", errors="ignore").encode()


def make_corpus(path: Path, size_mb: int) -> Path:
    """size_mb MB of the base text repeated, made once and kept in place for later runs."""
    size = size_mb * MB
    if path.is_file() and path.stat().st_size == size:
        return path
    base = standard_library_text(BASE_MB * MB)
    with open(path, "wb") as out:
        for _ in range(size // len(base)):
            out.write(base)
        rest = base[: size % len(base)].decode("utf-8", errors="ignore").encode()
        out.write(rest + b"\n" * (size % len(base) - len(rest)))
    return path


def measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(seconds, peak resident MB) of a command run alone in a fresh process."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"failed ({os.waitstatus_to_exitcode(status)}): {' '.join(command)}")
    return seconds, usage.ru_maxrss / 1024  # KiB on Linux


def train_command(corpus: Path, cache: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "shakegpt.train", "experiment=smoke", "hardware=cpu", f"data.path={corpus}",
        f"data.cache_dir={cache}", "data.batch_size=64", "data.block_size=256", "trainer.max_steps=100",
        "trainer.val_check_interval=50", "trainer.limit_val_batches=20", f"hydra.run.dir={out}",
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100, 1000], help="corpus sizes, MB")
    parser.add_argument("--train-sizes", type=int, nargs="*", default=[10, 1000], help="sizes to train on, MB")
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "shakegpt-corpora")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    env = {"OMP_NUM_THREADS": "2"}

    _, baseline = measured([sys.executable, "-c", PREPARE, "-", "-"], env)
    print(f"NumPy baseline (imports only): {baseline:.0f} MB peak resident", flush=True)
    print("| corpus | distinct characters | ids | preparation | peak memory | training peak memory |")
    print("|---:|---:|---:|---:|---:|---:|")
    for size_mb in args.sizes:
        corpus = make_corpus(args.folder / f"corpus_{size_mb}mb.txt", size_mb)
        cache = args.folder / f"cache_{size_mb}mb"
        shutil.rmtree(cache, ignore_errors=True)
        seconds, peak = measured([sys.executable, "-c", PREPARE, str(corpus), str(cache)], env)
        training = "-"
        if size_mb in args.train_sizes:
            with tempfile.TemporaryDirectory(prefix="shakegpt-corpus-run-") as out:
                _, train_peak = measured(train_command(corpus, cache, Path(out)), env)
            training = f"{train_peak:.0f} MB"
        (record,) = (json.loads(path.read_text()) for path in cache.glob("*.tokens.json"))
        print(
            f"| {size_mb} MB | {len(record['vocab'])} | {record['dtype']} | {seconds:.1f} s | {peak:.0f} MB "
            f"| {training} |",
            flush=True,
        )
        shutil.rmtree(cache)


if __name__ == "__main__":
    main()
