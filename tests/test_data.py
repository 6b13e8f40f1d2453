import functools
import hashlib
import http.server
import shutil
import threading

import numpy as np
import pytest
import torch

from shakegpt.data import CharDataModule, RandomWindows, locate_corpus
from shakegpt.errors import ShakeGPTError
from shakegpt.token_cache import TokenFile

SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
UNREACHABLE = "http://127.0.0.1:9/input.txt"  # the discard port: connection refused at once


def test_shakespeare_splits_ninety_ten(shakespeare_path):
    dm = CharDataModule(data_dir=str(shakespeare_path.parents[1]), url=UNREACHABLE, sha256=SHA256)
    dm.setup()
    assert dm.tokenizer.vocab_size == 65
    assert len(dm.train_tokens) == 1_003_854
    assert len(dm.val_tokens) == 111_540


def token_file(folder, ids: np.ndarray) -> TokenFile:
    ids.tofile(folder / "ids")
    return TokenFile(folder / "ids", ids.dtype, 0, len(ids))


def windows(tokens, **kw) -> RandomWindows:
    args = {"block_size": 8, "batch_size": 4, "seed": 1, "stream": 0, "rank": 0, "start": 0, "stop": 10, **kw}
    return RandomWindows(tokens, **args)


def test_batches_are_shifted_windows_of_the_corpus(tmp_path):
    tokens = token_file(tmp_path, np.arange(100, dtype=np.uint8))
    x, y = next(iter(windows(tokens)))
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 7, dtype=torch.long))  # contiguous windows


def test_batch_k_is_the_same_whatever_step_the_loader_starts_from(tmp_path):
    tokens = token_file(tmp_path, np.arange(1000, dtype=np.uint16))
    from_zero = list(windows(tokens))
    resumed = list(windows(tokens, start=6))
    assert len(resumed) == 4 and len(windows(tokens, start=6)) == 10  # the epoch stays 10 batches long
    assert all(torch.equal(a[0], b[0]) for a, b in zip(from_zero[6:], resumed, strict=True))


def test_ranks_and_seeds_draw_different_batches(tmp_path):
    tokens = token_file(tmp_path, np.arange(1000, dtype=np.uint16))
    base = next(iter(windows(tokens)))[0]
    assert not torch.equal(base, next(iter(windows(tokens, rank=1)))[0])
    assert not torch.equal(base, next(iter(windows(tokens, seed=2)))[0])


def test_eval_batches_repeat_at_every_evaluation(shakespeare_path):
    dm = CharDataModule(data_dir=str(shakespeare_path.parents[1]), url=UNREACHABLE, sha256=SHA256, batch_size=4)
    dm.setup()
    first = [[x for x, _ in loader] for loader in dm.val_dataloader()]
    second = [[x for x, _ in loader] for loader in dm.val_dataloader()]
    assert len(first) == 2 and len(first[0]) == 200
    assert all(
        torch.equal(a, b)
        for split_a, split_b in zip(first, second, strict=True)
        for a, b in zip(split_a, split_b, strict=True)
    )
    assert not torch.equal(first[0][0], first[1][0])


def test_missing_corpus_offline_says_where_it_looked_and_how_to_fix(tmp_path):
    with pytest.raises(ShakeGPTError) as err:
        locate_corpus(None, str(tmp_path), UNREACHABLE, SHA256)
    message = str(err.value)
    assert str(tmp_path / "tinyshakespeare" / "input.txt") in message
    assert "DATA_DIR" in message and UNREACHABLE in message
    assert list(tmp_path.iterdir()) == []  # neither a file nor the folder made for it


@pytest.fixture
def served(tmp_path, shakespeare_path):
    """tinyshakespeare and a corrupt copy served over HTTP on the loopback."""
    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(shakespeare_path, root / "input.txt")
    (root / "corrupt.txt").write_text("not shakespeare")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_missing_corpus_is_downloaded_and_verified(tmp_path, served):
    path = locate_corpus(None, str(tmp_path / "data"), f"{served}/input.txt", SHA256)
    assert path == tmp_path / "data" / "tinyshakespeare" / "input.txt"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA256


def test_a_corrupt_download_is_not_kept(tmp_path, served):
    with pytest.raises(ShakeGPTError, match="nothing was saved"):
        locate_corpus(None, str(tmp_path / "data"), f"{served}/corrupt.txt", SHA256)
    assert not (tmp_path / "data").exists()


def test_a_corrupt_corpus_on_disk_is_refused(tmp_path):
    corpus = tmp_path / "tinyshakespeare" / "input.txt"
    corpus.parent.mkdir()
    corpus.write_text("First Citizen:\nshortened\n")
    with pytest.raises(ShakeGPTError, match="corrupt: its sha256"):
        locate_corpus(None, str(tmp_path), UNREACHABLE, SHA256)
    assert corpus.read_text() == "First Citizen:\nshortened\n"


def make_module(path, **kw) -> CharDataModule:
    return CharDataModule(data_dir="unused", url=UNREACHABLE, sha256=SHA256, path=str(path), **kw)


def test_any_utf8_text_file_can_be_the_corpus(tmp_path):
    corpus = tmp_path / "poem.txt"
    corpus.write_text("Ünïcode verse, line after line.\n" * 20, encoding="utf-8")
    dm = make_module(corpus, block_size=16, batch_size=2)
    dm.setup()
    assert "Ü" in dm.tokenizer.chars


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\xff\xfe not utf-8 " * 50, "not UTF-8"),
        (b"", "is empty"),
        (b"a short corpus, far shorter than a window, in its val split " * 3, "val split holds"),
    ],
)
def test_unusable_corpora_are_refused(tmp_path, content, message):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    with pytest.raises(ShakeGPTError, match=message):
        make_module(corpus, block_size=32).setup()


def test_a_missing_data_path_is_named(tmp_path):
    with pytest.raises(ShakeGPTError, match="does not exist"):
        make_module(tmp_path / "nope.txt").setup()


def test_a_folder_given_as_the_corpus_is_called_a_folder(tmp_path):
    with pytest.raises(ShakeGPTError, match="is a folder"):
        locate_corpus(str(tmp_path), str(tmp_path), UNREACHABLE, SHA256)
