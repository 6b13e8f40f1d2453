import json
import os
import subprocess
import sys

import numpy as np
import pytest

from shakegpt import token_cache
from shakegpt.errors import ShakeGPTError
from shakegpt.token_cache import load_tokens
from shakegpt.tokenizer import CharTokenizer


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def cache_files(folder):
    return sorted(path.name for path in folder.iterdir())


def distinct_characters(n):
    """n distinct printable code points, skipping the surrogates (not characters) and the line breaks."""
    points = (p for p in range(0x21, 0x110000) if not 0xD800 <= p < 0xE000)
    return "".join(chr(next(points)) for _ in range(n))


@pytest.mark.parametrize(("n_chars", "dtype"), [(65, "uint8"), (256, "uint8"), (257, "uint16"), (70_000, "uint32")])
def test_ids_take_the_smallest_type_and_decode_back_to_the_text(tmp_path, n_chars, dtype):
    text = distinct_characters(n_chars - 1) * 2 + "\n"  # n_chars distinct with the line break
    tokens = load_tokens(write(tmp_path / "corpus.txt", text))
    assert tokens.ids.dtype == np.dtype(dtype) and (
        tokens.ids.path.stat().st_size == len(text) * tokens.ids.dtype.itemsize
    )
    assert tokens.vocab == "".join(sorted(set(text)))
    assert CharTokenizer(tokens.vocab).decode(tokens.ids.read().tolist()) == text


def test_windows_and_slices_read_the_right_positions(tmp_path):
    text = distinct_characters(300) * 3
    tokens = load_tokens(write(tmp_path / "corpus.txt", text))
    ids = tokens.ids.read()
    tail = tokens.ids[500:]
    assert len(tail) == len(text) - 500 and tail.read().tolist() == ids[500:].tolist()
    rows = tail.windows(np.array([0, 7, 395]), 5)
    assert rows.tolist() == [ids[500 + start : 505 + start].tolist() for start in (0, 7, 395)]


def test_characters_split_between_reads_are_encoded_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(token_cache, "CHUNK_BYTES", 7)  # every multi-byte character below straddles some read
    text = "Ünïcode 🎭 verse, line ☙ after line.\n" * 5
    tokens = load_tokens(write(tmp_path / "corpus.txt", text))
    tokenizer = CharTokenizer.from_text(text)
    assert tokens.vocab == tokenizer.vocab and tokens.ids.read().tolist() == tokenizer.encode(text)


def test_the_cache_sits_beside_the_corpus_and_is_reused(tmp_path, caplog):
    corpus = write(tmp_path / "corpus.txt", "to be or not to be\n")
    with caplog.at_level("INFO", logger="shakegpt.token_cache"):
        load_tokens(corpus)
        load_tokens(corpus)
    assert cache_files(tmp_path) == [
        "corpus.txt",
        "corpus.txt.tokens",
        "corpus.txt.tokens.json",
        "corpus.txt.tokens.lock",
    ]
    assert sum("encoding" in message for message in caplog.messages) == 1


def spoil_by_truncating(corpus):
    ids = corpus.with_name(corpus.name + ".tokens")
    ids.write_bytes(ids.read_bytes()[:-1])


def spoil_by_editing_the_corpus(corpus):
    stat = corpus.stat()
    write(corpus, corpus.read_text().upper())  # same size: only the modification time tells
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))


def spoil_the_record(corpus):
    corpus.with_name(corpus.name + ".tokens.json").write_text('{"format": 1, "corpus"')


@pytest.mark.parametrize("spoil", [spoil_by_truncating, spoil_by_editing_the_corpus, spoil_the_record])
def test_a_stale_or_broken_cache_is_rebuilt(tmp_path, spoil):
    corpus = write(tmp_path / "corpus.txt", "to be or not to be\n")
    load_tokens(corpus)
    spoil(corpus)
    tokens = load_tokens(corpus)
    text = corpus.read_text()
    assert CharTokenizer(tokens.vocab).decode(tokens.ids.read().tolist()) == text
    record = json.loads(corpus.with_name("corpus.txt.tokens.json").read_text())
    assert record["n_tokens"] == len(text) and record["mtime_ns"] == corpus.stat().st_mtime_ns


def test_a_read_only_corpus_folder_caches_in_the_user_cache(tmp_path, monkeypatch):
    folder = tmp_path / "dataset"
    folder.mkdir()
    corpus = write(folder / "corpus.txt", "to be or not to be\n")
    folder.chmod(0o555)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    try:
        tokens = load_tokens(corpus)
    finally:
        folder.chmod(0o755)
    assert cache_files(folder) == ["corpus.txt"]
    (ids,) = (tmp_path / "cache" / "shakegpt" / "tokens").glob("corpus.txt-*.tokens")
    assert tokens.ids.path == ids


def test_an_explicit_cache_dir_keeps_same_named_corpora_apart(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    first = load_tokens(write(tmp_path / "a" / "input.txt", "aaaa\n"), tmp_path / "cache")
    second = load_tokens(write(tmp_path / "b" / "input.txt", "bbbb\n"), tmp_path / "cache")
    assert (first.vocab, second.vocab) == ("\na", "\nb")
    assert len(list((tmp_path / "cache").glob("input.txt-*.tokens"))) == 2


def test_processes_preparing_at_once_build_once_and_agree(tmp_path):
    corpus = write(tmp_path / "corpus.txt", distinct_characters(300) * 20_000)  # ~12 MB: a build takes a while
    script = (
        "import logging, sys; from pathlib import Path; logging.basicConfig(level='INFO'); "
        "from shakegpt.token_cache import load_tokens; "
        "t = load_tokens(Path(sys.argv[1])); print(len(t.vocab), int(t.ids.read().sum()))"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(corpus)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [(out.decode(), err.decode()) for out, err in (proc.communicate(timeout=120) for proc in procs)]
    assert all(proc.returncode == 0 for proc in procs), outputs
    assert outputs[0][0] == outputs[1][0] == f"300 {20_000 * sum(range(300))}\n"
    assert sum("encoding" in err for _, err in outputs) == 1
    assert cache_files(tmp_path) == [
        "corpus.txt",
        "corpus.txt.tokens",
        "corpus.txt.tokens.json",
        "corpus.txt.tokens.lock",
    ]


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"fine so far " * 10 + b"\xff", "byte near offset 120 cannot be decoded")],
)
def test_unusable_corpora_fail_in_one_line_and_leave_no_cache(tmp_path, content, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    with pytest.raises(ShakeGPTError, match=message):
        load_tokens(corpus)
    assert cache_files(tmp_path) == ["corpus.txt", "corpus.txt.tokens.lock"]


def test_the_cache_is_readable_by_whoever_reads_the_corpus(tmp_path):
    corpus = write(tmp_path / "corpus.txt", "to be or not to be\n")
    load_tokens(corpus)
    for name in ("corpus.txt.tokens", "corpus.txt.tokens.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
