"""The real entry points, run as a user runs them, and what they leave on disk."""

import json
import math
import os
import re
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from tensorboard import program
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from shakegpt.data import TINYSHAKESPEARE
from shakegpt.optim import warmup_cosine_lr
from shakegpt.report import write_report
from shakegpt.rundir import remove_unstarted

from .conftest import TINY, run_module

# The real training, sampling and evaluation entry points, in subprocesses: seconds each
# (`pytest -m "not slow"` leaves them out).
pytestmark = pytest.mark.slow

LOSSES = r"train loss ([\d.]+), val loss ([\d.]+) \(([\d.]+) / ([\d.]+) bpc\)"


def eval_lines(stdout: str) -> list[tuple[int, float, float]]:
    """The `step N: train loss X, val loss Y (X' / Y' bpc)` lines (the progress bar may share their terminal
    line), checking that their bits per character are the nats' in bits."""
    found = re.findall(r"step (\d+): " + LOSSES, stdout)
    for _, *losses in found:
        train, val, train_bpc, val_bpc = map(float, losses)
        assert (train_bpc, val_bpc) == pytest.approx((train / math.log(2), val / math.log(2)), abs=2e-4)
    return [(int(step), float(train), float(val)) for step, train, val, _, _ in found]


def events(folder: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_prints_parameters_and_classic_loss_lines(run):
    _, proc = run
    assert "0.036065 M parameters" in proc.stdout
    lines = eval_lines(proc.stdout)
    assert [step for step, _, _ in lines] == [0, 10, 20]
    assert abs(lines[0][1] - math.log(65)) < 0.1


def test_train_log_keeps_the_eval_lines_and_the_console_has_no_known_noise(run):
    folder, proc = run
    logged = (folder / "train.log").read_text()
    assert [step for step, _, _ in eval_lines(logged)] == [0, 10, 20]
    assert eval_lines(logged) == eval_lines(proc.stdout)
    for text in ("litlogger", "IterableDataset", "LeafSpec"):
        assert text not in proc.stderr + proc.stdout, text
    # Lightning's other notices, once each, plain, as Lightning prints them (though imported after Hydra set up
    # logging), and not in train.log.
    assert (proc.stderr + proc.stdout).splitlines().count("Seed set to 1337") == 1
    assert "Seed set to" not in logged


def test_generate_cli_samples_from_a_run_folder(run, tmp_path):
    folder, _ = run
    proc = run_module(
        "shakegpt.generate", f"ckpt_path={folder}", "prompt=ROMEO:", "max_new_tokens=40", "top_k=5", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ROMEO:") and len(proc.stdout.rstrip("\n")) >= 40
    assert list(tmp_path.iterdir()) == []  # sampling writes nothing


def test_a_sweep_jobs_folder_is_pasted_into_ckpt_path_as_it_is(sweep, tmp_path):
    folder, _ = sweep
    job = folder / "model.n_layer=1"  # '=' in the name, which Hydra's grammar reads (',' too: test_launch.py)
    proc = run_module("shakegpt.generate", f"ckpt_path={job}", "max_new_tokens=10", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) >= 10


def test_generate_names_unknown_prompt_characters(run, tmp_path):
    folder, _ = run
    proc = run_module("shakegpt.generate", f"ckpt_path={folder}", "prompt='ROMEO#'", cwd=tmp_path)
    assert proc.returncode == 1
    assert "'#'" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_gives_a_checkpoints_losses_on_the_runs_eval_batches_or_another_text(run, tmp_path):
    folder, proc = run
    same_batches = ("data.batch_size=8", "eval_batches=2", "hardware=cpu")  # the smoke run's evaluations
    evaluated = run_module(
        "shakegpt.evaluate", f"ckpt_path={folder}/checkpoints/last.ckpt", *same_batches, cwd=tmp_path
    )
    assert evaluated.returncode == 0, evaluated.stderr
    (losses,) = re.findall(LOSSES, evaluated.stdout)
    assert tuple(map(float, losses[:2])) == eval_lines(proc.stdout)[-1][1:]  # the weights of step 20's evaluation
    assert list(tmp_path.iterdir()) == []  # evaluating writes nothing

    text = (Path(os.environ["DATA_DIR"]) / TINYSHAKESPEARE).read_text()[:20_000]
    (tmp_path / "other.txt").write_text(text.lower())  # fewer characters than the model's 65, in its ids
    (tmp_path / "foreign.txt").write_text(text + "#~" * 100)
    other = run_module("shakegpt.evaluate", f"ckpt_path={folder}", "data.path=other.txt", *same_batches, cwd=tmp_path)
    assert other.returncode == 0, other.stderr
    assert re.fullmatch(LOSSES + "\n", other.stdout)
    foreign = run_module("shakegpt.evaluate", f"ckpt_path={folder}", "data.path=foreign.txt", cwd=tmp_path)
    assert foreign.returncode == 1 and "Traceback" not in foreign.stderr
    assert "foreign.txt cannot be read in the model's vocabulary" in foreign.stderr and "'#', '~'" in foreign.stderr


def test_resume_continues_from_the_last_checkpoint(run, tmp_path):
    folder, _ = run
    proc = run_module(
        "shakegpt.train",
        *TINY,
        "trainer.max_steps=30",
        f"resume={folder / 'checkpoints' / 'last.ckpt'}",
        f"hydra.run.dir={tmp_path / 'resumed'}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The checkpoint was taken before step 20's evaluation, so the resumed run does that one first.
    assert [step for step, _, _ in eval_lines(proc.stdout)] == [20, 30]
    assert "dataloader is not resumable" not in proc.stderr  # ours are: known noise, kept off the console


def test_sweep_gives_one_folder_per_job_named_by_what_the_sweep_varies(sweep):
    folder, proc = sweep
    jobs = sorted(path.name for path in folder.iterdir() if path.is_dir())
    assert jobs == [f"model.n_layer={n}" for n in (1, 2, 5)]  # the overrides all jobs share are not repeated
    assert (folder / "swept_keys.txt").read_text() == "model.n_layer\n"
    for n_layer in (1, 2):
        job = folder / f"model.n_layer={n_layer}"
        assert json.loads((job / "run.json").read_text())["label"] == f"model.n_layer={n_layer}"
        checkpoint = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)
        config = checkpoint["hyper_parameters"]["model_config"]
        assert config["n_layer"] == config["n_head"] == n_layer
        assert [e.step for e in events(job).Scalars("val/loss")] == [0, 10, 20]
    assert not (folder.parent / "outputs").exists()


def test_tensorboard_tells_a_sweeps_runs_apart(sweep):
    """Asked through TensorBoard's own server, as its HParams table asks: the rows (trials, also the run names of
    the Time Series view) are the swept values, and the first columns the swept settings."""
    folder, _ = sweep
    tensorboard = program.TensorBoard()
    tensorboard.configure(argv=[None, "--logdir", str(folder), "--port", "0", "--load_fast", "false"])
    url = tensorboard.launch()  # a daemon thread: it ends with the tests

    def ask(endpoint: str, request: dict) -> dict:
        body = json.dumps({"experimentName": "", **request}).encode()
        headers = {"Content-Type": "application/json"}
        post = urllib.request.Request(f"{url}data/plugin/hparams/{endpoint}", data=body, headers=headers)
        with urllib.request.urlopen(post, timeout=30) as response:
            return json.loads(response.read())

    deadline = time.monotonic() + 60
    while not (experiment := ask("experiment", {})).get("hparamInfos") and time.monotonic() < deadline:
        time.sleep(0.5)  # TensorBoard reads the event files in the background
    assert [info["name"] for info in experiment["hparamInfos"][:2]] == ["model.n_head", "model.n_layer"]
    assert not any(info.get("differs") for info in experiment["hparamInfos"][2:])
    trials = ask("session_groups", {"allowedStatuses": ["STATUS_SUCCESS"], "startIndex": 0, "sliceSize": 10})
    assert sorted(group["name"] for group in trials["sessionGroups"]) == ["model.n_layer=1", "model.n_layer=2"]


def test_a_failed_sweep_job_is_recorded_and_the_others_go_on(sweep):
    folder, proc = sweep
    record = json.loads((folder / "model.n_layer=5" / "run.json").read_text())
    assert record["status"] == "failed"
    assert "not divisible" in record["error"]
    assert "1 job(s) did not finish" in proc.stderr + proc.stdout
    assert json.loads((folder / "model.n_layer=2" / "run.json").read_text())["status"] == "finished"


@pytest.mark.parametrize(
    ("overrides", "env", "message"),
    [
        (["model.n_embd=30", "model.n_head=4"], {}, "not divisible by model.n_head"),
        (["hardware=mps"], {}, "hardware=mps was asked for"),
        (["data.url=http://127.0.0.1:9/input.txt"], {"DATA_DIR": "{tmp}/empty"}, "downloading it from"),
    ],
)
def test_bad_input_fails_with_a_clear_message(tmp_path, overrides, env, message):
    env = {key: value.format(tmp=tmp_path) for key, value in env.items()}
    proc = run_module("shakegpt.train", *TINY, *overrides, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, env=env)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()  # nothing in it but its setup: removed
    assert not (tmp_path / "empty").exists()  # no data folder left by a failed download


def test_only_a_folder_holding_nothing_but_a_runs_setup_is_removed(tmp_path):
    for name in ("run.json", "run.lock", "config.yaml", "train.log", ".hydra/config.yaml", ".hydra/overrides.yaml"):
        (tmp_path / "run" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "run" / name).write_text("x")
    (tmp_path / "run" / "notes.txt").write_text("the user's")
    assert not remove_unstarted(tmp_path / "run")
    assert len(list((tmp_path / "run").rglob("*"))) == 8  # all of it, .hydra/ included
    (tmp_path / "run" / "notes.txt").unlink()
    assert remove_unstarted(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_a_cosine_schedule_sets_and_logs_the_lr_of_every_step(tmp_path):
    schedule = ("lr_schedule=cosine", "lr_schedule.warmup_steps=5", "lr_schedule.min_lr=1e-5", "optimizer.lr=1e-3")
    proc = run_module(
        "shakegpt.train", *TINY, *schedule, "trainer.log_every_n_steps=1", f"hydra.run.dir={tmp_path}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = {event.step: event.value for event in events(tmp_path).Scalars("train/lr")}
    assert sorted(logged) == list(range(1, 21))
    # At step s (s updates done) the lr of the next update, number s; decay_steps follows trainer.max_steps (20).
    expected = {step: warmup_cosine_lr(step, 1e-3, 1e-5, 5, 20) for step in logged}
    assert logged == pytest.approx(expected, rel=1e-5)


def test_early_stopping_ends_a_run_that_stops_improving_and_says_so(tmp_path):
    folder = tmp_path / "run"
    # No evaluation improves by 10 nats: the first counts as the best (from infinity), the next two do not.
    stopping = (
        "early_stopping=on",
        "callbacks.early_stopping.patience=2",
        "callbacks.early_stopping.min_delta=10",
        "trainer.max_steps=200",
    )
    proc = run_module("shakegpt.train", *TINY, *stopping, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [step for step, _, _ in eval_lines(proc.stdout)] == [0, 10, 20, 30]
    record = json.loads((folder / "run.json").read_text())
    assert (record["status"], record["steps"]) == ("stopped early", 30)
    assert "did not improve by more than 10 for 2 evaluations" in record["stop_reason"]
    best = torch.load(folder / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["global_step"] == min(eval_lines(proc.stdout)[1:], key=lambda row: row[2])[0]
    again = run_module("shakegpt.train", *TINY, *stopping, f"hydra.run.dir={folder}", "resume=true", cwd=tmp_path)
    assert "finished already; skipped" in again.stdout + again.stderr
    assert "Stopped early at step 30" in write_report([folder], tmp_path / "report").read_text()
