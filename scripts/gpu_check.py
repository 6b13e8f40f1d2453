"""The GPU check: one short call on a lent GPU machine proves the CUDA path and finishes the experiments table.

    python scripts/gpu_check.py prepare          # here, with the package registry: what the GPU machine lacks
    python3 scripts/gpu_check.py run             # there, from the repo root: results in $OUT (9 minutes at most)
    python scripts/gpu_check.py dry-run          # here: `run` end to end on this CPU at tiny sizes
    python scripts/gpu_check.py unpack DIR       # here: the files `run` returned into docs/, ready to commit

`prepare` fills .gpu_check/ (git-ignored, carried to the GPU machine): wheels of what `python -m shakegpt.train`
imports beyond the GPU machine's own packages (PyTorch, Lightning, TensorBoard, NumPy, matplotlib, PyYAML are
there; Hydra, OmegaConf and ANTLR's runtime are not) and tinyshakespeare (that machine reaches no network).

`run` installs those wheels into a folder of its own (`pip --no-index --no-deps --target`: the machine's torch
is not touched), then, each step time-boxed and a failed step not stopping the next:
  1. the CUDA path's first run: experiment=smoke with hardware=cuda;
  2. the table: rows exp1-exp5 at their full lengths, all five at once on the one GPU (small models leave it
     mostly idle, so five share it faster than they take turns), stopped by SIGTERM at the time box (they
     resume), which leaves two and a half minutes for the steps after it; each row's report and
     scripts/compare_original.py;
  3. the rest of the CUDA path: a run interrupted by SIGTERM and resumed (its metrics against an uninterrupted
     run's), generate and evaluate on the smoke run and its CUDA checkpoint sampled on the CPU, experiment=smoke
     compiled;
  4. scripts/bench.py: training and evaluation tokens/s and MFU, Lightning against the plain loop, n_layer 1, 2,
     6, 12, then compiled at n_layer 6 and 12; then 3 seeds of exp2 and exp4, as far as time is left;
  5. packs everything into $OUT: summary.md (what passed, what failed, the figures), summary.json,
     bench_gpu.jsonl, results.tar.gz (reports and run records, no checkpoints) and gpu_check.log.
`dry-run` is `run` with hardware=cpu and tiny models and step counts, into outputs/gpu_check/ (or --out).
`unpack` puts each returned row into docs/results/<row>/ where it reached at least as far as the one there,
bench_gpu.jsonl into docs/, and rewrites docs/results/README.md through scripts/compare_original.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREPARED = ROOT / ".gpu_check"
WHEELS = PREPARED / "wheels"
DATA = PREPARED / "data"
CORPUS = Path("tinyshakespeare") / "input.txt"
# What the training entry point imports that the GPU machine lacks (the device tool's list of its packages).
MISSING_THERE = ("hydra-core", "omegaconf", "antlr4-python3-runtime")
ROWS = ("exp1", "exp2", "exp3", "exp4", "exp5")
SEED_ROWS, MORE_SEEDS = ("exp2", "exp4"), "1,2"  # with the table's own seed 1337: three seeds
CARRY_LIMIT_MB = 64  # what travels to the GPU machine: the work tree and the carried folders together


@dataclass(frozen=True)
class Mode:
    """What differs between the real check and its rehearsal on a CPU."""

    hardware: str
    budget_s: int
    shrink: tuple[str, ...] = ()  # overrides for every run: tiny models and step counts
    resume_steps: tuple[int, int] = (2000, 500)  # the interrupted run's max_steps and val_check_interval
    # Memory, batch gathering and sampling are left out on the GPU: minutes of fresh processes for no question
    # asked there. The dry run keeps them, so its bench measures every kind.
    bench: tuple[str, ...] = ("--layers", "1", "2", "6", "12", "--rounds", "2", "--skip", "memory", "batch", "generate")
    bench_compiled: tuple[str, ...] = ("--layers", "6", "12", "--rounds", "1", "--skip", "memory", "batch", "generate")
    # Set for every command. The dry run turns torch.compile into a no-op (TORCH_COMPILE_DISABLE): the compiled
    # steps' plumbing runs, without minutes of C++ compiles on a CPU (tests/test_model.py compiles on the CPU).
    env: tuple[tuple[str, str], ...] = ()
    box_scale: float = 1.0  # the steps' time boxes are an H200's; a 2-core CPU takes longer at the tiny sizes


TINY = (
    "model.n_embd=48", "data.batch_size=8", "data.block_size=32", "trainer.max_steps=4",
    "trainer.val_check_interval=2", "trainer.limit_val_batches=2", "callbacks.text_samples.eval_tokens=10",
    "callbacks.text_samples.final_tokens=20",
)  # fmt: skip
TINY_BENCH = ("--layers", "1", "--rounds", "1", "--steps", "1", "--eval-batches", "2")
TINY_BENCH_ALL = (*TINY_BENCH, "--generate-layers", "1", "--new-tokens", "5")
MODES = {
    "run": Mode("cuda", budget_s=540),
    "dry-run": Mode(
        "cpu",
        budget_s=900,
        shrink=TINY,
        resume_steps=(40, 10),
        bench=TINY_BENCH_ALL,
        bench_compiled=(*TINY_BENCH, "--skip", "memory", "batch", "generate", "eval"),
        env=(("TORCH_COMPILE_DISABLE", "1"),),
        box_scale=2.5,
    ),
}


class StepFailed(Exception):
    """A step's one-line reason for failing."""


@dataclass
class Check:
    mode: Mode
    out: Path
    work: Path
    deadline: float
    log_path: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))  # install() adds the wheels' folder
    results: list[dict] = field(default_factory=list)
    machine: dict[str, str] = field(default_factory=dict)

    def log(self, text: str) -> None:
        with self.log_path.open("a") as log:
            log.write(text if text.endswith("\n") else text + "\n")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def start(self, command: list[str], stdout: Path | None = None) -> subprocess.Popen:
        """A command in a process group of its own (so a time box stops all of it), its output in the log."""
        self.log(f"$ {' '.join(command)}")
        log = self.log_path.open("a")
        out = stdout.open("w") if stdout else log
        return subprocess.Popen(
            command, cwd=ROOT, env=self.env, stdout=out, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def run(self, command: list[str], timeout: float, stdout: Path | None = None) -> int:
        """A command to its end or its time box; its exit status (a stopped command's, after SIGTERM)."""
        process = self.start(command, stdout)
        try:
            return process.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            stop(process)
            raise StepFailed(f"timed out after {timeout:.0f} s: {' '.join(command[2:6])} ...") from None

    def python(self, *args: str) -> list[str]:
        return [sys.executable, *args]

    def train(self, *overrides: str, sweep: bool = False) -> list[str]:
        """The training entry point on this mode's hardware and sizes; a sweep (-m) when sweep is true."""
        multirun = ["-m"] if sweep else []
        return self.python(
            "-m", "shakegpt.train", *multirun, f"hardware={self.mode.hardware}", *self.mode.shrink, *overrides
        )


def stop(process: subprocess.Popen, grace: float = 60) -> int:
    """SIGTERM to the process group (a run stops at its step's end and writes last.ckpt), SIGKILL after grace."""
    with _quiet():
        os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with _quiet():
            os.killpg(process.pid, signal.SIGKILL)
        return process.wait()


class _quiet:
    """Ignores a process group that is gone already."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, traceback) -> bool:
        return kind is ProcessLookupError


# --- prepare (here) ----------------------------------------------------------------------------------------
def prepare() -> None:
    if WHEELS.exists():
        shutil.rmtree(WHEELS)
    WHEELS.mkdir(parents=True)
    pins = [f"{name}=={metadata.version(name)}" for name in MISSING_THERE]  # the versions tested here
    # `pip wheel` builds antlr4-python3-runtime, published as source only, into a pure-Python wheel.
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(WHEELS), *pins], check=True)
    places = (Path(os.environ.get("DATA_DIR", "data")), ROOT / "data")
    corpus = next((place / CORPUS for place in places if (place / CORPUS).is_file()), None)
    if corpus is None:
        raise SystemExit(
            f"error: no {CORPUS} in DATA_DIR or ./data: run `python -m shakegpt.train experiment=smoke` once"
        )
    (DATA / CORPUS).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(corpus, DATA / CORPUS)
    prepared_mb = sum(p.stat().st_size for p in PREPARED.rglob("*") if p.is_file()) / 2**20
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True).stdout.split("\0")
    tree_mb = sum((ROOT / p).stat().st_size for p in tracked if p and (ROOT / p).is_file()) / 2**20
    print(f"{PREPARED.relative_to(ROOT)}: {', '.join(pins)} and {CORPUS}: {prepared_mb:.1f} MB")
    print(
        f"with the work tree ({tree_mb:.1f} MB): {prepared_mb + tree_mb:.1f} MB of the {CARRY_LIMIT_MB} MB that travel"
    )


# --- run and dry-run (there, and here) ---------------------------------------------------------------------
def install(check: Check) -> str:
    """The prepared wheels into a folder of this check's own, ahead of anything the machine has."""
    wheels = sorted(WHEELS.glob("*.whl"))
    if not wheels or not (DATA / CORPUS).is_file():
        raise StepFailed("nothing prepared: run `python scripts/gpu_check.py prepare` first, and carry .gpu_check")
    site = check.work / "site"
    pip = ["-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", str(site)]
    if check.run(check.python(*pip, *map(str, wheels)), timeout=120) != 0:
        raise StepFailed("pip could not install the prepared wheels (see gpu_check.log)")
    import_path = [str(site), str(ROOT)]
    # This process reads the runs' records through shakegpt too, and the GPU machine has it nowhere else.
    sys.path[:0] = import_path
    paths = {"PYTHONPATH": os.pathsep.join(import_path), "DATA_DIR": str(DATA)}
    check.env = {**os.environ, **paths, "PYTHONUNBUFFERED": "1", **dict(check.mode.env)}
    probe = check.work / "machine.json"
    script = (
        "import json, sys, hydra, omegaconf, torch, lightning, shakegpt.train; "
        "cuda = torch.cuda.is_available(); "
        "print(json.dumps({'python': sys.version.split()[0], 'torch': torch.__version__, "
        "'lightning': lightning.__version__, 'hydra': hydra.__version__, 'hydra_from': hydra.__file__, "
        "'device': torch.cuda.get_device_name() if cuda else 'cpu', 'cuda': str(torch.version.cuda)}))"
    )
    if check.run(check.python("-c", script), timeout=120, stdout=probe) != 0:
        raise StepFailed("shakegpt.train does not import with the prepared wheels (see gpu_check.log)")
    check.machine = json.loads(probe.read_text())
    if not check.machine["hydra_from"].startswith(str(site)):
        raise StepFailed(f"Hydra was imported from {check.machine['hydra_from']}, not from the prepared wheels")
    m = check.machine
    return f"{m['device']}; Python {m['python']}, torch {m['torch']} (CUDA {m['cuda']}), Lightning {m['lightning']}"


def eval_lines(folder: Path) -> list[tuple[int, float, float]]:
    from shakegpt.rundir import METRICS, read_metrics  # importable once the wheels are in place

    return [(row.step, row.train_loss, row.val_loss) for row in read_metrics(folder / METRICS)]


def status(folder: Path) -> str:
    from shakegpt.rundir import RUN_RECORD, read_record

    return str(read_record(folder / RUN_RECORD).get("status"))


def smoke(check: Check, *overrides: str, name: str, timeout: float) -> str:
    folder = check.work / name
    if check.run(check.train("experiment=smoke", *overrides, f"hydra.run.dir={folder}"), timeout) != 0:
        raise StepFailed(f"exit status not 0 (see gpu_check.log, {name})")
    lines = eval_lines(folder)
    if status(folder) != "finished" or not lines or lines[-1][2] >= lines[0][2]:
        raise StepFailed(f"{name}: status {status(folder)}, evaluations {lines}")
    return f"val loss {lines[0][2]:.3f} -> {lines[-1][2]:.3f}"


def interrupted_and_resumed(check: Check, timeout: float) -> str:
    """A run stopped by SIGTERM after its first evaluation past step 0, resumed, against an uninterrupted run."""
    deadline = time.monotonic() + timeout
    steps, every = check.mode.resume_steps
    settings = ["experiment=smoke", f"trainer.max_steps={steps}", f"trainer.val_check_interval={every}"]
    whole, cut = check.work / "uninterrupted", check.work / "interrupted"
    if check.run(check.train(*settings, f"hydra.run.dir={whole}"), deadline - time.monotonic()) != 0:
        raise StepFailed("the uninterrupted run failed (see gpu_check.log)")
    process = check.start(check.train(*settings, f"hydra.run.dir={cut}"))
    while not [row for row in (eval_lines(cut) if (cut / "metrics.csv").is_file() else []) if row[0] >= every]:
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            raise StepFailed("the run to interrupt ended, or never evaluated, before it could be stopped")
        time.sleep(0.05)
    code = stop(process)
    stopped_at = status(cut)
    if check.run(check.train(*settings, f"hydra.run.dir={cut}", "resume=true"), deadline - time.monotonic()) != 0:
        raise StepFailed("the resumed run failed (see gpu_check.log)")
    expected, got = eval_lines(whole), eval_lines(cut)
    if [row[0] for row in got] != [row[0] for row in expected]:
        raise StepFailed(
            f"evaluated at steps {[r[0] for r in got]}, the uninterrupted run at {[r[0] for r in expected]}"
        )
    difference = max(abs(a - b) for x, y in zip(got, expected, strict=True) for a, b in zip(x[1:], y[1:], strict=True))
    summary = (
        f"SIGTERM: exit {code}, status {stopped_at}; resumed: {len(got)} evaluations, max difference {difference:.1e}"
    )
    if difference > 1e-4:  # the same batches and RNG states; GPU kernels may round differently, not more
        raise StepFailed(summary)
    return summary


def cuda_path(check: Check) -> dict[str, Callable[[float], str]]:
    hardware = check.mode.hardware
    device = "cuda" if hardware == "cuda" else "cpu"

    def sample_and_evaluate(timeout: float) -> str:
        deadline = time.monotonic() + timeout
        run = str(check.work / "smoke")
        texts = {}
        for where in dict.fromkeys((device, "cpu")):  # the CUDA checkpoint read on the CPU too
            out = check.work / f"sample_{where}.txt"
            command = check.python(
                "-m", "shakegpt.generate", f"ckpt_path={run}", f"device={where}", "max_new_tokens=200"
            )
            if check.run(command, deadline - time.monotonic(), stdout=out) != 0:
                raise StepFailed(f"generate device={where} failed (see gpu_check.log)")
            texts[where] = out.read_text()
        out = check.work / "evaluate.txt"
        command = check.python("-m", "shakegpt.evaluate", f"ckpt_path={run}", f"hardware={hardware}", "eval_batches=20")
        if check.run(command, deadline - time.monotonic(), stdout=out) != 0:
            raise StepFailed("evaluate failed (see gpu_check.log)")
        lengths = ", ".join(f"{len(text)} characters on {where}" for where, text in texts.items())
        return f"generate: {lengths}; evaluate: {out.read_text().strip()}"

    return {
        f"train experiment=smoke hardware={hardware}": lambda t: smoke(check, name="smoke", timeout=t),
        f"train experiment=smoke hardware={hardware}, compiled": lambda t: smoke(
            check, "hardware.compile=true", name="compiled", timeout=t
        ),
        "SIGTERM mid-run, then resume=true": lambda t: interrupted_and_resumed(check, t),
        f"generate and evaluate (device={device}), the checkpoint on the CPU": sample_and_evaluate,
    }


def bench(check: Check, args: tuple[str, ...], overrides: tuple[str, ...], timeout: float) -> str:
    raw = check.work / f"bench{len(check.results)}.jsonl"
    command = check.python(
        str(ROOT / "scripts" / "bench.py"), "--hardware", check.mode.hardware, "--json", *args, "--", *overrides
    )
    try:
        code = check.run(command, timeout, stdout=raw)
    finally:  # what it measured before a time box stopped it still counts
        rows = [json.loads(line) for line in raw.read_text().splitlines() if line.startswith("{")]
        with (check.out / "bench_gpu.jsonl").open("a") as out:
            for row in rows:
                out.write(json.dumps({**row, "hardware": check.mode.hardware, "overrides": list(overrides)}) + "\n")
    failed = [
        f"{r['kind']} {r['contender']} n_layer {r['n_layer']}: {r.get('error') or r['skipped']}"
        for r in rows
        if r.get("error") or r.get("skipped")
    ]
    if code != 0 or failed:
        raise StepFailed(f"exit {code}; {'; '.join(failed)}")
    figures = [
        f"{r['kind']} {r['contender']} L{r['n_layer']}: {r['tokens_per_s']:,} tok/s, MFU {r['mfu']:.0%}"
        for r in rows
        if r["kind"] in ("train", "eval") and r["contender"] in ("model", "lightning") and r.get("mfu") is not None
    ]
    return "; ".join(figures)


def machine_line(check: Check) -> str:
    m = check.machine
    return f"{m['device']}, torch {m['torch']}, Lightning {m['lightning']}, hardware={check.mode.hardware}"


def table(check: Check, timeout: float) -> str:
    """Rows exp1-exp5 at once, to their end or the time box; then each row's report and the comparison."""
    deadline = time.monotonic() + timeout
    runs = check.work / "table"
    processes = {
        row: check.start(check.train(f"experiment={row}", f"hydra.sweep.dir={runs / row}", "resume=true", sweep=True))
        for row in ROWS
    }
    codes = wait_all(processes, deadline - 60)  # a minute for the reports and the comparison
    results = check.work / "results"
    reports(check, {row: [runs / row] for row in ROWS}, results)
    shutil.copyfile(ROOT / "docs" / "results" / "original.csv", results / "original.csv")
    command = f"python3 scripts/gpu_check.py run (rows: {' '.join(check.train('experiment=<row>', sweep=True)[2:])})"
    compare = [
        str(ROOT / "scripts" / "compare_original.py"),
        "--results",
        str(results),
        "--machine",
        machine_line(check),
    ]
    check.run(check.python(*compare, "--command", command), timeout=max(10, deadline - time.monotonic()))
    reached = "; ".join(f"{row} {row_summary(results / row)} (exit {codes[row]})" for row in ROWS)
    if any(code != 0 for code in codes.values()):
        raise StepFailed(reached)
    return reached


def seeds(check: Check, timeout: float) -> str:
    """Two more seeds of exp2 and exp4, reported with the table's own run of each as a three-seed group."""
    deadline = time.monotonic() + timeout
    runs = check.work / "seeds"
    processes = {
        row: check.start(
            check.train(f"experiment={row}", f"seed={MORE_SEEDS}", f"hydra.sweep.dir={runs / row}", sweep=True)
        )
        for row in SEED_ROWS
    }
    codes = wait_all(processes, deadline - 45)
    results = check.work / "results"
    reports(check, {f"{row}/seeds": [check.work / "table" / row, runs / row] for row in SEED_ROWS}, results)
    summary = "; ".join(f"{row}: {row_summary(results / row / 'seeds')} (exit {codes[row]})" for row in SEED_ROWS)
    if any(code != 0 for code in codes.values()):
        raise StepFailed(summary)
    return summary


def wait_all(processes: dict[str, subprocess.Popen], deadline: float) -> dict[str, int]:
    for process in processes.values():
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            stop(process)  # interrupted: it resumes from last.ckpt, and its report says how far it got
    return {name: process.wait() for name, process in processes.items()}


def reports(check: Check, sources: dict[str, list[Path]], results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    started = [
        check.start(check.python("-m", "shakegpt.report", *map(str, folders), "--out", str(results / name)))
        for name, folders in sources.items()
        if any(folder.is_dir() for folder in folders)
    ]
    for process in started:
        process.wait()


def row_summary(folder: Path) -> str:
    """How far a reported row got and its best val loss, from its results.csv."""
    import csv

    try:
        with (folder / "results.csv").open() as f:
            first = next(csv.DictReader(f))
    except (OSError, StopIteration):
        return "no report"
    return f"{first['status']} at step {first['steps']}, best val {first['best_val_loss']} (step {first['best_step']})"


def pack(check: Check) -> None:
    """At most 8 files in $OUT: the run records and reports without checkpoints, the summaries, the log."""
    with tarfile.open(check.out / "results.tar.gz", "w:gz") as tar:
        for name in ("results", "table", "seeds", "smoke", "compiled", "uninterrupted", "interrupted"):
            if (check.work / name).is_dir():
                tar.add(check.work / name, arcname=name, filter=without_checkpoints)
    passed = sum(r["status"] == "passed" for r in check.results)
    lines = [
        f"# GPU check ({'dry run, ' if check.mode.hardware == 'cpu' else ''}hardware={check.mode.hardware})",
        "",
        f"Machine: {check.machine.get('device', '?')}; {json.dumps(check.machine)}",
        "",
        f"{passed} passed, {len(check.results) - passed} failed",
        "",
        "| step | result | seconds | details |",
        "|---|---|---:|---|",
        *(f"| {r['step']} | {r['status']} | {r['seconds']:.0f} | {r['details']} |" for r in check.results),
    ]
    (check.out / "summary.md").write_text("\n".join(lines) + "\n")
    (check.out / "summary.json").write_text(
        json.dumps({"machine": check.machine, "hardware": check.mode.hardware, "steps": check.results}, indent=1)
    )
    shutil.copyfile(check.log_path, check.out / "gpu_check.log")
    print("\n".join(lines), flush=True)


def without_checkpoints(member: tarfile.TarInfo) -> tarfile.TarInfo | None:
    parts = Path(member.name).parts
    return None if "checkpoints" in parts or member.name.endswith((".ckpt", ".lock")) or "site" in parts else member


def run_check(mode_name: str, out: Path) -> int:
    mode = MODES[mode_name]
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():  # the files of an earlier check, replaced whole
        if old.is_file():
            old.unlink()
    work = Path(tempfile.mkdtemp(prefix="shakegpt-gpu-check-"))
    check = Check(mode, out, work, time.monotonic() + mode.budget_s, work / "gpu_check.log")
    steps: list[tuple[str, Callable[[float], str], float, float]] = [
        ("install the prepared wheels", lambda t: install(check), 120, 0),
    ]
    try:
        # Each step: its time box, and the least time to keep for the steps after it. The table comes right after
        # the first CUDA run: it is what the call is for, and 5000 steps of the 12-layer row take minutes even on
        # an H200. The other checks and the bench share what it leaves, two and a half minutes at least: by the
        # first call's timings the resume check and generate/evaluate take about two there.
        trained, compiled, resumed, sampled = cuda_path(check).items()
        steps += [
            (*trained, 60, 400),
            ("the table, exp1-exp5", lambda t: table(check, t), mode.budget_s, 150),
            (*resumed, 120, 30),
            (*sampled, 60, 30),
            (*compiled, 120, 30),
            ("bench", lambda t: bench(check, mode.bench, (), t), 120, 30),
            ("bench, compiled", lambda t: bench(check, mode.bench_compiled, ("hardware.compile=true",), t), 90, 30),
            (f"3 seeds of {' and '.join(SEED_ROWS)}", lambda t: seeds(check, t), mode.budget_s, 30),
        ]
        for name, step, box, keep in steps:
            started = time.monotonic()
            timeout = min(box * mode.box_scale, check.left() - keep)
            if timeout < 20:
                result = {"status": "skipped", "details": f"{check.left():.0f} s left"}
            else:
                print(f"[{mode.budget_s - check.left():4.0f} s] {name} ...", flush=True)
                check.log(f"\n=== {name} (time box {timeout:.0f} s)")
                try:
                    result = {"status": "passed", "details": step(timeout)}
                except StepFailed as failure:
                    result = {"status": "failed", "details": str(failure)}
                except Exception as err:  # a bug in a step must not cost the steps after it
                    result = {"status": "failed", "details": f"{type(err).__name__}: {err}"}
            check.results.append({"step": name, **result, "seconds": round(time.monotonic() - started, 1)})
            print(f"    {result['status']}: {result['details'][:400]}", flush=True)
            if name.startswith("install") and result["status"] != "passed":
                break
        pack(check)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if all(r["status"] != "failed" for r in check.results) else 1


# --- unpack (here) -----------------------------------------------------------------------------------------
def reached(folder: Path) -> int:
    import csv

    try:
        with (folder / "curves.csv").open() as f:
            return max(int(row["step"]) for row in csv.DictReader(f))
    except (OSError, ValueError):
        return -1


def unpack(returned: Path, docs: Path) -> None:
    results = docs / "results"
    summary = json.loads((returned / "summary.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(returned / "results.tar.gz") as tar:
            tar.extractall(tmp, filter="data")
        taken = []
        for row in ROWS:
            new, old = Path(tmp) / "results" / row, results / row
            if reached(new) >= 0 and reached(new) >= reached(old):
                shutil.rmtree(old, ignore_errors=True)
                shutil.copytree(new, old)
                taken.append(row)
            verdict = "taken" if row in taken else "kept"
            print(f"{row}: {verdict} (returned: step {reached(new)}, docs: step {reached(old)})")
    if (returned / "bench_gpu.jsonl").is_file():
        shutil.copyfile(returned / "bench_gpu.jsonl", docs / "bench_gpu.jsonl")
    if taken:
        gpu = summary["machine"]
        before = previous_line(results / "README.md", "Machine: ").rstrip(".")
        line = f"{', '.join(taken)} on {gpu['device']} (torch {gpu['torch']}, hardware={summary['hardware']})"
        commands = [
            previous_line(results / "README.md", "Command: ").strip("`"),
            "python scripts/gpu_check.py run; python scripts/gpu_check.py unpack <returned files>",
        ]
        compare = [sys.executable, str(ROOT / "scripts" / "compare_original.py"), "--results", str(results)]
        machine = f"{before}; {line}" if before else line
        subprocess.run([*compare, "--machine", machine, "--command", "; ".join(filter(None, commands))], check=True)


def previous_line(path: Path, prefix: str) -> str:
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.startswith(prefix):
            return line[len(prefix) :]
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["prepare", "run", "dry-run", "unpack"])
    parser.add_argument("returned", nargs="?", type=Path, help="unpack: the folder holding the files run returned")
    parser.add_argument("--out", type=Path, help="run: where the files go (default $OUT; dry-run: outputs/gpu_check)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="unpack: the docs folder to update")
    args = parser.parse_args()
    if args.mode == "prepare":
        prepare()
    elif args.mode == "unpack":
        if args.returned is None:
            parser.error("unpack needs the folder holding the returned files")
        unpack(args.returned, args.docs)
    else:
        default = os.environ.get("OUT") if args.mode == "run" else str(ROOT / "outputs" / "gpu_check")
        if not (args.out or default):
            parser.error("run needs --out or $OUT")
        sys.exit(run_check(args.mode, Path(args.out or default)))


if __name__ == "__main__":
    main()
