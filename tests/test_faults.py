"""Long runs survive anything: the real entry point, real signals, real kills, and what they leave on disk.

Every interrupted run here is resumed and compared with one uninterrupted run of the same settings: the same
metrics.csv rows, TensorBoard scalars and samples, no evaluation missing or repeated.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

from shakegpt.errors import ShakeGPTError
from shakegpt.generate import check_options
from shakegpt.hardware import pick_device
from shakegpt.launch import hydra_value
from shakegpt.rundir import read_metrics
from shakegpt.training import check_settings

from .conftest import ROOT, TINY, run_module

# Real runs in subprocesses, stopped by real signals: seconds each (`pytest -m "not slow"` leaves them out).
pytestmark = pytest.mark.slow

# 30 steps, evaluations at 0, 10, 20, 30 long enough (100 batches per split) to be interrupted in the middle.
SETTINGS = [*TINY, "trainer.max_steps=30", "trainer.limit_val_batches=100", "callbacks.progress_bar.refresh_rate=1"]


class Run:
    """The training entry point in a subprocess, its output collected as it comes (the progress bar writes
    without newlines), so a test can wait for a moment and then signal it."""

    def __init__(self, folder: Path, *overrides: str) -> None:
        self.folder = folder
        where = f"hydra.run.dir={hydra_value(folder)}"
        command = [sys.executable, "-m", "shakegpt.train", *SETTINGS, *overrides, where]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
        self.process = subprocess.Popen(
            command, cwd=folder.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.output, self._seen = "", 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while chunk := os.read(self.process.stdout.fileno(), 4096):
            self.output += chunk.decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        """Waits for pattern in the output printed since the previous wait's match (moments come in order)."""
        deadline = time.monotonic() + timeout
        while not (found := re.compile(pattern).search(self.output, self._seen)):
            assert self.process.poll() is None, f"ended before {pattern!r}:\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"no {pattern!r} in time:\n{self.output[-3000:]}"
            time.sleep(0.02)
        self._seen = found.end()

    def finish(self, timeout: float = 300) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code


def hold_still(run: Run) -> None:
    """Stops a live run where it is (SIGSTOP): it keeps its run folder's lock, and leaves the CPU to the process
    under test instead of slowing it down twofold on a small machine. SIGKILL ends it later as it is."""
    run.process.send_signal(signal.SIGSTOP)


def kill_at(folder: Path, moment: str) -> None:
    """A run killed with SIGKILL once its output shows moment: no chance to say anything."""
    run = Run(folder)
    run.wait_for(moment)
    run.process.kill()
    run.finish()


def resume(folder: Path, *overrides: str) -> Run:
    run = Run(folder, "resume=true", *overrides)
    assert run.finish() == 0, run.output[-3000:]
    return run


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {  # NaN (the HParams placeholder) as None, which compares equal to itself
        tag: [
            (event.step, None if math.isnan(event.value) else round(event.value, 5))
            for event in accumulator.Scalars(tag)
        ]
        for tag in accumulator.Tags()["scalars"]
        if tag != "epoch"
    }


def assert_same_outcome(folder: Path, expected: dict[str, object]) -> None:
    actual = outcome(folder)
    for key, value in expected.items():
        assert actual[key] == value, key


def outcome(folder: Path) -> dict[str, object]:
    """Everything a run's numbers show, clock times aside."""
    record = json.loads((folder / "run.json").read_text())
    return {
        "metrics": [(row.step, row.train_loss, row.val_loss) for row in read_metrics(folder / "metrics.csv")],
        "scalars": scalars(folder),
        "samples": {path.name: path.read_text() for path in sorted((folder / "samples").iterdir())},
        "status": record["status"],
        "error": record.get("error"),  # none left over from an interruption
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("faults") / "uninterrupted"
    folder.parent.mkdir(exist_ok=True)
    run = Run(folder)
    assert run.finish() == 0, run.output[-3000:]
    result = outcome(folder)
    assert [step for step, *_ in result["metrics"]] == [0, 10, 20, 30]
    return result


@pytest.mark.parametrize(
    ("moment", "signum"),
    [
        ("Validation DataLoader 1:", signal.SIGINT),  # Ctrl-C in the val half of an evaluation
        ("Validation DataLoader 0:", signal.SIGTERM),  # SIGTERM in the train half
        (r"step 10: train loss", signal.SIGINT),  # Ctrl-C between evaluations, in the middle of a step
        (None, signal.SIGTERM),  # between the evaluation before training and the first step, or in that step
    ],
    ids=["sigint-val-split", "sigterm-train-split", "sigint-mid-interval", "sigterm-before-training"],
)
def test_an_interrupted_run_resumes_to_the_uninterrupted_numbers(tmp_path, uninterrupted, moment, signum):
    folder = tmp_path / "run"
    run = Run(folder)
    run.wait_for(r"step 0: train loss")  # past the evaluation before training
    if moment is not None:
        run.wait_for(r"Epoch 0:.* 1/30 ")  # training has begun: the moment is in the step-10 evaluation or later
        run.wait_for(moment)
    run.process.send_signal(signum)
    code = run.finish()

    assert code == 128 + signum, run.output[-3000:]
    # Where training has not begun, the entry point's own handler ends the run: it knows no step.
    stopped = re.search(r"\ninterrupted by (SIG\w+)(?: at step (\d+))?; continue with: (.+)", run.output)
    assert stopped, run.output[-3000:]
    assert stopped.group(1) == signal.Signals(signum).name
    assert moment is None or stopped.group(2) is not None
    assert f"hydra.run.dir={folder} resume=true" in stopped.group(3)
    assert "Traceback" not in run.output
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "interrupted" and record["steps"] == int(stopped.group(2) or 0)

    resume(folder)
    assert_same_outcome(folder, uninterrupted)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_during_the_imports_ends_the_program_at_once_in_one_line(tmp_path, signum):
    # As a shell starts a program in the background: with Ctrl-C ignored, which Python would keep ignoring.
    command = [sys.executable, "-m", "shakegpt.train", *TINY, f"hydra.run.dir={tmp_path / 'run'}"]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    time.sleep(1.0)  # Python is up, Lightning and torch are still being imported
    sent = time.monotonic()
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signum and time.monotonic() - sent < 5
    assert stderr.strip() == f"interrupted by {signal.Signals(signum).name}; nothing was written"
    assert not (tmp_path / "run" / "run.json").exists()


def test_a_signal_during_the_final_sample_ends_the_run_and_a_resume_finishes_it(tmp_path, uninterrupted):
    folder = tmp_path / "run"
    run = Run(folder, "callbacks.text_samples.final_tokens=100000")  # a sample of minutes, as a big model's
    run.wait_for(r"sampling 100000 characters into ")
    sent = time.monotonic()
    run.process.send_signal(signal.SIGTERM)
    assert run.finish() == 143 and time.monotonic() - sent < 10, run.output[-3000:]
    assert "interrupted by SIGTERM; continue with: " in run.output and "Traceback" not in run.output
    assert json.loads((folder / "run.json").read_text())["status"] == "interrupted"
    assert not (folder / "samples" / "final.txt").exists()

    resume(folder, "callbacks.text_samples.final_tokens=500")
    assert_same_outcome(folder, uninterrupted)


def test_a_kill_after_an_evaluation_resumes_without_repeating_rows(tmp_path, uninterrupted):
    folder = tmp_path / "run"
    kill_at(folder, r"step 20: train loss")
    assert json.loads((folder / "run.json").read_text())["status"] == "running"  # it had no chance to say

    resumed = resume(folder)
    assert_same_outcome(folder, uninterrupted)
    # The progress bar counts the run's steps from where it resumed (step 20), to the run's length.
    assert re.search(r"Epoch 0:  67%\S* *\| 20/30 ", resumed.output), resumed.output[-2000:]
    assert "| 30/30 [" in resumed.output


def test_a_kill_before_the_first_checkpoint_starts_again_and_leaves_no_step_twice(tmp_path, uninterrupted):
    folder = tmp_path / "run"
    kill_at(folder, r"step 0: train loss")
    assert not (folder / "checkpoints" / "last.ckpt").exists()

    resume(folder)
    assert_same_outcome(folder, uninterrupted)
    steps = [  # every val/loss event in the raw files, as tools that read them without TensorBoard see them
        event.step
        for path in folder.glob("events.out.tfevents.*")
        for event in EventFileLoader(str(path)).Load()
        if any(value.tag == "val/loss" for value in event.summary.value)
    ]
    assert sorted(steps) == [0, 10, 20, 30]


def test_resuming_a_finished_run_completes_it_or_says_it_is_done(tmp_path, uninterrupted):
    folder = tmp_path / "run"
    run = Run(folder)
    assert run.finish() == 0
    # A kill after the last checkpoint, before the run could say it finished: it completes what was left.
    record = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps({**record, "status": "running"}))
    (folder / "samples" / "final.txt").unlink()
    resumed = resume(folder)
    assert "step 30: train loss" in resumed.output
    assert_same_outcome(folder, uninterrupted)

    again = resume(folder)
    assert "finished already; skipped" in again.output


def test_a_second_writer_is_refused_and_changes_nothing(tmp_path):
    folder = tmp_path / "run"
    first = Run(folder, "trainer.max_steps=100000")
    first.wait_for(r"step 0: train loss")
    hold_still(first)
    before = (folder / ".hydra" / "config.yaml").read_text()
    second = run_module("shakegpt.train", *TINY, "seed=2", f"hydra.run.dir={folder}", cwd=tmp_path)
    assert second.returncode == 1
    assert f"in use by process {first.process.pid}" in second.stderr and "Traceback" not in second.stderr
    assert (folder / ".hydra" / "config.yaml").read_text() == before
    assert json.loads((folder / "run.json").read_text())["status"] == "running"

    first.process.kill()  # the lock dies with its holder: the next process takes the folder over
    first.finish()
    resume(folder)


def test_a_resume_with_other_settings_or_another_runs_checkpoint_is_refused_and_records_nothing(run, tmp_path):
    folder, (other, _) = tmp_path / "run", run  # other: the shared tiny run, the same settings as this one
    assert run_module("shakegpt.train", *TINY, f"hydra.run.dir={folder}", cwd=tmp_path).returncode == 0
    before = (folder / ".hydra" / "config.yaml").read_text(), (folder / "run.json").read_text()
    proc = run_module(
        "shakegpt.train", *TINY, "optimizer.lr=1e3", "trainer.max_steps=30", f"hydra.run.dir={folder}",
        "resume=true", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "optimizer.lr=1000.0 (was 0.0003)" in proc.stderr and "Traceback" not in proc.stderr
    assert ((folder / ".hydra" / "config.yaml").read_text(), (folder / "run.json").read_text()) == before

    # The other run's last checkpoint, same settings, copied into this folder: said, not resumed.
    last = folder / "checkpoints" / "last.ckpt"
    last.write_bytes((other / "checkpoints" / "last.ckpt").read_bytes())
    copied = run_module(
        "shakegpt.train", f"hydra.run.dir={folder}", "resume=true", "trainer.max_steps=30", cwd=tmp_path
    )
    assert copied.returncode == 1 and "Traceback" not in copied.stderr
    assert f"{last} was written by another run (run " in copied.stderr
    assert f"To continue from it in this folder, say so: resume={last}" in copied.stderr
    assert ((folder / ".hydra" / "config.yaml").read_text(), (folder / "run.json").read_text()) == before
    meant = run_module(
        "shakegpt.train", f"hydra.run.dir={folder}", f"resume={last}", "trainer.max_steps=30", cwd=tmp_path
    )
    assert meant.returncode == 0, meant.stderr[-3000:]
    assert json.loads((folder / "run.json").read_text())["run_id"] == json.loads(before[1])["run_id"]


def test_a_run_folder_alone_continues_a_run_started_with_a_preset_and_refuses_other_numbers(tmp_path):
    folder = tmp_path / "run"
    started = run_module("shakegpt.train", *TINY, "trainer.max_steps=10", f"hydra.run.dir={folder}", cwd=tmp_path)
    assert started.returncode == 0, started.stderr[-3000:]
    # Neither the preset nor the hardware is given again: the folder remembers them.
    extended = run_module(
        "shakegpt.train", f"hydra.run.dir={folder}", "resume=true", "trainer.max_steps=20", cwd=tmp_path
    )
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert [row.step for row in read_metrics(folder / "metrics.csv")] == [0, 10, 20]
    assert "0.036065 M parameters" in extended.stdout  # the preset's tiny model, not the default one
    overrides = (folder / ".hydra" / "overrides.yaml").read_text()
    assert "experiment=smoke" in overrides and "trainer.max_steps=20" in overrides
    # Gradient clipping changes the numbers from the first step on: refused, like any such setting.
    clipped = run_module(
        "shakegpt.train", f"hydra.run.dir={folder}", "resume=true", "trainer.max_steps=30",
        "trainer.gradient_clip_val=1.0", cwd=tmp_path,
    )  # fmt: skip
    assert clipped.returncode == 1 and "trainer.gradient_clip_val=1.0 (was None)" in clipped.stderr
    assert [row.step for row in read_metrics(folder / "metrics.csv")] == [0, 10, 20]


def test_a_sweep_folder_alone_continues_every_job_of_the_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *TINY, "model.n_layer=1,2", "trainer.max_steps=10", f"hydra.sweep.dir={sweep}"]
    assert run_module("shakegpt.train", *args, cwd=tmp_path).returncode == 0
    proc = run_module(
        "shakegpt.train", "-m", f"hydra.sweep.dir={sweep}", "resume=true", "trainer.max_steps=20", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("model.n_layer=1", "model.n_layer=2"):
        assert [row.step for row in read_metrics(sweep / job / "metrics.csv")] == [0, 10, 20], job


def test_a_diverged_run_never_overwrites_a_good_checkpoint(tmp_path):
    """lr 1e3 turns the weights non-finite within steps: the checkpoints from before must survive."""
    folder = tmp_path / "run"
    proc = run_module(
        "shakegpt.train", *TINY, "optimizer.lr=1e3", "trainer.val_check_interval=1", f"hydra.run.dir={folder}",
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "diverged" in proc.stderr and "Traceback" not in proc.stderr
    failed_at = int(re.findall(r"at step (\d+)", proc.stderr)[-1])
    checkpoint = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert 0 < checkpoint["global_step"] <= failed_at
    assert all(torch.isfinite(value).all() for value in checkpoint["state_dict"].values())
    assert json.loads((folder / "run.json").read_text())["status"] == "failed"


def test_a_huge_but_finite_loss_is_recorded_as_diverged(tmp_path):
    folder = tmp_path / "run"
    proc = run_module("shakegpt.train", *TINY, "optimizer.lr=5", f"hydra.run.dir={folder}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "diverged" and record["diverged_at"] in (10, 20)
    assert "training diverged at step" in proc.stdout + proc.stderr


def test_checkpoint_writes_leave_no_temp_files_and_stale_ones_are_cleaned(tmp_path):
    folder = tmp_path / "run"
    (folder / "checkpoints").mkdir(parents=True)
    stale = folder / "checkpoints" / ".last.ckpt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert run_module("shakegpt.train", *TINY, f"hydra.run.dir={folder}", cwd=tmp_path).returncode == 0
    assert sorted(path.name for path in (folder / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not list(folder.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.max_steps=0", "trainer.max_steps must be a positive whole number"),
        ("trainer.val_check_interval=0", "trainer.val_check_interval must be a positive whole number"),
        ("optimizer.lr=-1", "optimizer.lr must be a positive number"),
        ("optimizer.lr=nan", "optimizer.lr must be a positive number"),
        ("optimizer.lr=1e38", "optimizer.lr must be at most 3.4e[+]37: AdamW's first step"),
        ("optimizer.weight_decay=-1", "optimizer.weight_decay must be a number, 0 or more"),
        ("data.train_fraction=1.0", "data.train_fraction must be between 0 and 1"),
        ("seed=abc", "seed must be a whole number"),
        ("seed=18446744073709551616", "seed must be a whole number"),
        ("data.batch_size=0", "data.batch_size must be a positive whole number"),
        ("trainer.accumulate_grad_batches=2", "accumulate_grad_batches is not supported"),
        ("resume=1", "resume must be true, false or a checkpoint"),
    ],
)
def test_bad_training_values_are_refused(override, message):
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "train"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY, override])
    with pytest.raises(ShakeGPTError, match=message):
        check_settings(cfg)


def test_a_bad_value_is_one_line_from_the_command_line(tmp_path):
    proc = run_module("shakegpt.train", *TINY, "data.batch_size=0", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: data.batch_size must be a positive whole number, got 0"]


class RunsCode:
    """Unpickling this runs a command: what a malicious checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_as_unsafe(tmp_path):
    marker = tmp_path / "it-ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"model_config": {}, "vocab": "ab"}, "x": RunsCode(marker)}, path)
    proc = run_module("shakegpt.generate", f"ckpt_path={path}", cwd=tmp_path)
    assert proc.returncode == 1
    assert "refused as unsafe" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("top_k=0", "top_k must be a positive whole number"),
        ("top_k=-3", "top_k must be a positive whole number"),
        ("temperature=nan", "temperature must be a positive number"),
        ("temperature=0", "temperature must be a positive number"),
        ("max_new_tokens=abc", "max_new_tokens must be a whole number"),
        ("max_new_tokens=2.5", "max_new_tokens must be a whole number"),
        ("max_new_tokens=-5", "max_new_tokens must be a whole number"),
        ("kv_cache=bogus", "kv_cache must be one of exact, fast, off"),
        ("device=tpu", "device must be auto, cpu"),
        (f"seed={2**64}", "seed must be a whole number from 0 to 18446744073709551615"),
        ("seed=-1", "seed must be a whole number from 0 to"),
    ],
)
def test_bad_sampling_options_are_refused(override, message):
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "generate"), version_base="1.3"):
        cfg = compose(config_name="generate", overrides=["ckpt_path=somewhere", override])
    with pytest.raises(ShakeGPTError, match=message):
        check_options(cfg)
        pick_device(cfg.device)


def test_ctrl_c_while_sampling_keeps_the_text_so_far(run, tmp_path):
    folder, _ = run
    text = tmp_path / "text"
    with text.open("w") as stdout:
        process = subprocess.Popen(
            [sys.executable, "-m", "shakegpt.generate", f"ckpt_path={folder}", "max_new_tokens=1000000"],
            stdout=stdout, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"},
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while text.stat().st_size < 100:  # the text comes as it is sampled
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 130 and stderr == "interrupted by SIGINT\n"
    kept = text.read_text()
    assert len(kept) >= 100 and kept.endswith("\n")


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_sampling_on_a_device_the_machine_lacks_says_so(run, tmp_path, device):
    if device == "cuda" and torch.cuda.is_available() or device == "mps" and torch.backends.mps.is_available():
        pytest.skip(f"this machine has {device}")
    folder, _ = run
    proc = run_module("shakegpt.generate", f"ckpt_path={folder}", f"device={device}", cwd=tmp_path)
    assert proc.returncode == 1
    assert f"device={device} was asked for" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 1.2 MB filesystem: room for the first checkpoints of a tiny run, not for the later ones."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_fails_in_one_line_and_keeps_the_checkpoints(small_disk, tmp_path):
    folder = small_disk / "run"
    proc = run_module("shakegpt.train", *TINY, "trainer.max_steps=100", f"hydra.run.dir={folder}", cwd=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: No space left on device")
    assert "Traceback" not in proc.stderr
    last = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)  # whole, loadable
    assert last["global_step"] == 10
    assert not list(folder.rglob(".*.tmp"))
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "failed" and "No space left" in record["error"]


def test_a_resumed_sweep_skips_the_jobs_a_live_process_holds(tmp_path):
    sweep = tmp_path / "sweep"
    held = sweep / "model.n_layer=1"
    sweep.mkdir()
    live = Run(held, "trainer.max_steps=100000")
    live.wait_for(r"step 0: train loss")
    hold_still(live)
    proc = run_module(
        "shakegpt.train", "-m", *TINY, "model.n_layer=1,2", f"hydra.sweep.dir={sweep}", "resume=true", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"skipped: the run folder {held} is in use by process {live.process.pid}" in proc.stdout + proc.stderr
    assert live.process.poll() is None  # untouched, still alive
    assert json.loads((held / "run.json").read_text())["status"] == "running"
    other = sweep / "model.n_layer=2"
    assert json.loads((other / "run.json").read_text())["status"] == "finished"
    live.process.kill()
    live.finish()
