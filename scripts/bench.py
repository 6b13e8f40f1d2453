"""Throughput, MFU and memory of the training, evaluation and sampling paths, against the classic script.

    python scripts/bench.py                         # n_layer 1 2 6 12 on this machine's CPU settings
    python scripts/bench.py --layers 6 12 --rounds 3 --json
    python scripts/bench.py --hardware cuda --layers 6 12 -- hardware.compile=true

Contenders, at the classic config (batch 64, block 256, n_embd 384, dropout 0.2, AdamW 3e-4):
  reference  the classic single-file script's model (scripts/classic_gpt.py): one module per head, masked
             softmax, fp32, a plain loop;
  model      our GPT in a plain loop with the chosen hardware config's settings (precision, attention path);
  model_fp32 the same in fp32, where the hardware config trains in a mixed precision (is it worth it here?);
  lightning  the real path: our LightningModule, DataModule and Trainer, built as `python -m shakegpt.train`
             builds them (progress bar, logger and callbacks included);
  gemms_only nothing but the matrix products of our model's linear layers, at its shapes and in the hardware
             config's precision: the MFU this machine's matmuls allow these shapes, whatever else is done.
Contenders alternate round by round; the table gives medians and the median of paired ratios.
Generation, batch 1, from one token, fp32: recompute (the classic script's loop and model, in eval mode and
without autograd, which is kinder to it than the script itself), model_recompute (our GPT, kv_cache=off: the
same loop on our model), kv_exact and kv_fast (our generate); ratios against recompute.
Batches: the classic per-row slicing and stacking against RandomWindows' reads by position, windows per second.
MFU = tokens/s x FLOPs per token / the GEMM peak of the contender's precision, with nanoGPT's FLOPs per
token: 6N + 12 L T C for a training step, a third of that for a forward pass. The peak (a square matmul) is
measured at the start and before every round, and each row's MFU takes the best so far (its peak_gflops);
the gemm rows, last, give the best of all and the slowest. Where those differ by more than a quarter, the
machine's own speed moved during the run, and the table says so: MFUs of rows then do not compare.
Peak memory: each training contender alone in a fresh process for two steps: the process's peak resident
memory (ru_maxrss, imports included), or CUDA's peak allocation.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn as nn
from classic_gpt import ClassicConfig, ClassicGPT  # scripts/ is on sys.path when this script runs

from shakegpt.compose import job_config
from shakegpt.data import RandomWindows
from shakegpt.hardware import keep_freed_memory, matmul_gflops, pick_device, synchronize
from shakegpt.model import GPT, GPTConfig
from shakegpt.token_cache import TokenFile
from shakegpt.training import build

ROOT = Path(__file__).resolve().parents[1]
BATCH, BLOCK, N_EMBD, DROPOUT, VOCAB = 64, 256, 384, 0.2, 65
TRAINING_CONTENDERS = ["reference", "model", "model_fp32", "lightning", "gemms_only"]
# Run folders and token files of this process, removed when it exits (a training contender's run folder holds
# checkpoints: hundreds of MB per configuration).
SCRATCH = tempfile.TemporaryDirectory(prefix="shakegpt-bench-")


# --- helpers ---------------------------------------------------------------------------------------------
def config(hardware: str, n_layer: int, *overrides: str):
    """The config `python -m shakegpt.train` would run with, in a run folder of this process's own."""
    out = tempfile.mkdtemp(dir=SCRATCH.name)
    return job_config([f"hardware={hardware}", f"model.n_layer={n_layer}", f"paths.output_dir={out}", *overrides])


# The dtype a Lightning precision setting computes matmuls in (None: fp32, no autocast).
MIXED_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def autocast(device: torch.device, precision: str):
    dtype = MIXED_DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def flops_per_token(params: int, n_layer: int) -> float:
    return 6 * params + 12 * n_layer * BLOCK * N_EMBD


def batches(device: torch.device, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        tuple(t.to(device) for t in torch.randint(VOCAB, (2, BATCH, BLOCK), generator=g).unbind(0)) for _ in range(n)
    ]


def time_tokens(step: Callable[[torch.Tensor, torch.Tensor], object], device: torch.device, n_batches: int) -> float:
    """Tokens per second of step over n_batches batches, after one warm-up batch."""
    data = batches(device, n_batches + 1)
    step(*data[0])
    synchronize(device)
    start = time.perf_counter()
    for x, y in data[1:]:
        step(x, y)
    synchronize(device)
    return n_batches * BATCH * BLOCK / (time.perf_counter() - start)


def time_plain_training(model: nn.Module, device, precision, fused, steps: int) -> float:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=fused)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast(device, precision):
            _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return time_tokens(step, device, steps)


@torch.no_grad()
def time_plain_eval(model: nn.Module, device, precision, n_batches: int) -> float:
    model.eval()

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast(device, precision):
            model(x, y)

    return time_tokens(step, device, n_batches)


def linear_shapes(model: GPT) -> list[tuple[int, int]]:
    """(in, out) of every linear layer of model, in the order a forward pass uses them."""
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


def time_gemms_only(model: GPT, device, precision: str, backward: bool, n_batches: int) -> float:
    """Tokens per second of a step that did nothing but its linear layers' matrix products (forward; with
    backward, the input and weight gradients too) at the model's shapes, in the contender's precision: the
    MFU no implementation of this model exceeds with this machine's matmuls at these shapes (attention's
    products, counted in the FLOPs, come free here)."""
    dtype = MIXED_DTYPES.get(precision, torch.float32)
    operands = {}  # one set per distinct shape: every layer of a kind has the same
    for n_in, n_out in set(linear_shapes(model)):
        x, grad, weight = (torch.randn(*shape, dtype=dtype, device=device) for shape in
                           ((BATCH * BLOCK, n_in), (BATCH * BLOCK, n_out), (n_out, n_in)))  # fmt: skip
        operands[n_in, n_out] = x, grad, weight

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        for shape in linear_shapes(model):
            inputs, grad, weight = operands[shape]
            inputs @ weight.t()
            if backward:
                grad @ weight
                grad.t() @ inputs

    return time_tokens(step, device, n_batches)


def paired(samples: dict[str, list[float]], baseline: str) -> dict[str, tuple[float, float | None]]:
    """Per contender: the median, and the median of its round-by-round ratios to the baseline (if it ran)."""
    base = samples.get(baseline)
    summary = {}
    for name, values in samples.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)] if base else None
        summary[name] = (statistics.median(values), statistics.median(ratios) if ratios else None)
    return summary


class StepTimer(L.Callback):
    """Times `steps` training steps after the first (warm-up) one, and not the step after them: a run's last
    step also writes the checkpoint its final evaluation starts from, which a real run does once per
    evaluation interval, not once per few steps."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.start = self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 1:
            synchronize(pl_module.device)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 1 + self.steps:
            synchronize(pl_module.device)
            self.end = time.perf_counter()


def lightning_overrides(steps: int, eval_batches: int) -> list[str]:
    return [
        f"trainer.max_steps={steps + 1}",
        f"trainer.val_check_interval={10 * (steps + 1)}",
        f"trainer.limit_val_batches={max(1, eval_batches)}",
        "trainer.num_sanity_val_steps=0",
        "callbacks.progress_bar.refresh_rate=1",
    ]


def time_lightning_training(hardware: str, n_layer: int, steps: int, overrides: list[str]) -> float:
    timer = StepTimer(steps)
    # The warm-up step, the timed steps, and the last step (with the checkpoint write) untimed.
    cfg = config(hardware, n_layer, *overrides, *lightning_overrides(steps + 1, 0))
    trainer, module, datamodule = build(cfg, callbacks=[timer])
    with contextlib.redirect_stdout(sys.stderr):  # the progress bar runs, but stdout stays for the results
        trainer.fit(module, datamodule=datamodule)
    return steps * BATCH * BLOCK / (timer.end - timer.start)


class EvalTimer(L.Callback):
    """Times an evaluation's batches after its first (warm-up) one, through the end of its last split: what
    each of a real evaluation's 2 x 200 batches costs, without the fixed costs of building the loaders and
    recording the result, which 200 batches per split make small and a bench's few batches would magnify."""

    def __init__(self) -> None:
        self.batches, self.start, self.end = 0, 0.0, 0.0

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 1 and dataloader_idx == 0:
            synchronize(pl_module.device)
            self.start = time.perf_counter()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.batches += 1
        last_split = len(trainer.num_val_batches) - 1
        if dataloader_idx == last_split and batch_idx == trainer.num_val_batches[last_split] - 1:
            synchronize(pl_module.device)  # once, at the end: a wait per batch would slow a GPU's evaluation
            self.end = time.perf_counter()


def time_lightning_eval(hardware: str, n_layer: int, n_batches: int, overrides: list[str]) -> float:
    """Tokens per second of an evaluation of n_batches per split, all but its first batch timed."""
    timer = EvalTimer()
    cfg = config(hardware, n_layer, *overrides, *lightning_overrides(0, n_batches))
    trainer, module, datamodule = build(cfg, callbacks=[timer])
    with contextlib.redirect_stdout(sys.stderr):
        trainer.validate(module, datamodule=datamodule, verbose=False)
    return (timer.batches - 1) * BATCH * BLOCK / (timer.end - timer.start)


def time_batch_gathering(contender: str, rounds: int = 50) -> float:
    """Windows per second: the classic per-row slices and stack, or RandomWindows' reads from the token cache."""
    tokens = np.random.default_rng(0).integers(VOCAB, size=1_000_000, dtype=np.uint8)  # as the token cache holds it
    if contender == "reference":
        tensor = torch.from_numpy(tokens).long()  # the classic script's int64 tensor of the whole text

        def draw() -> torch.Tensor:
            starts = torch.randint(len(tensor) - BLOCK, (BATCH,))
            return torch.stack([tensor[i : i + BLOCK + 1] for i in starts])
    else:
        folder = Path(tempfile.mkdtemp(dir=SCRATCH.name))
        tokens.tofile(folder / "ids")  # as the token cache holds them, read by position
        ids = TokenFile(folder / "ids", tokens.dtype, 0, len(tokens))
        windows = RandomWindows(ids, BLOCK, BATCH, seed=0, stream=0, rank=0, start=0, stop=rounds)
        draw = partial(windows.batch, 0)
    draw()
    start = time.perf_counter()
    for _ in range(rounds):
        draw()
    return rounds * BATCH / (time.perf_counter() - start)


def peak_memory_mb(contender: str, hardware: str, n_layer: int, overrides: list[str]) -> dict:
    """Peak memory of two training steps of one contender, alone in a fresh process: {"peak_mb": MB}, or
    {"peak_mb": None, "error": why} when it failed: "killed" by a signal (out of memory, mostly) or "crashed",
    with the exception in one line."""
    script = (
        "import sys, json; sys.argv = ['bench']; import bench\n"
        f"try: peak = bench.measure_memory({contender!r}, {hardware!r}, {n_layer}, {overrides!r})\n"
        "except Exception as err: row = {'peak_mb': None, 'error': 'crashed: ' + bench.one_line(err)}\n"
        "else: row = {'peak_mb': round(peak)}\n"
        "print(json.dumps(row))"
    )
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'scripts'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False)
    if proc.returncode < 0:
        return {"peak_mb": None, "error": f"killed by signal {-proc.returncode} (out of memory?)"}
    rows = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not rows:  # it died before it could say why
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return {"peak_mb": None, "error": f"crashed: {last}"}
    return json.loads(rows[-1])


def measure_memory(contender: str, hardware: str, n_layer: int, overrides: list[str]) -> float:
    cfg = config(hardware, n_layer, *overrides)
    device = device_of(cfg.hardware.accelerator)
    if cfg.hardware.keep_freed_memory:  # as in the timed rounds
        keep_freed_memory()
    if contender == "lightning":
        time_lightning_training(hardware, n_layer, 1, overrides)
    else:
        model = reference_gpt(n_layer) if contender == "reference" else our_gpt(n_layer, cfg.hardware.compile)
        precision = "32-true" if contender == "reference" else cfg.hardware.precision
        fused = None if contender == "reference" else cfg.hardware.fused_optimizer
        time_plain_training(model.to(device), device, precision, fused, steps=1)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def our_gpt(n_layer: int, compile: bool) -> GPT:
    """Our GPT at the classic config, compiled in place where the hardware config compiles (as build() does)."""
    model = GPT(
        GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=n_layer, n_head=n_layer, n_embd=N_EMBD, dropout=DROPOUT)
    )
    if compile:
        model.compile()
    return model


def reference_gpt(n_layer: int) -> ClassicGPT:
    return ClassicGPT(ClassicConfig(VOCAB, BLOCK, n_layer, n_layer, N_EMBD, DROPOUT))


def device_of(accelerator: str) -> torch.device:
    """The device a hardware config's accelerator trains on (auto: CUDA, then MPS, then the CPU, as Lightning)."""
    return torch.device(pick_device("cuda" if accelerator == "gpu" else accelerator))


def one_line(err: BaseException, limit: int = 300) -> str:
    """An exception as one line: its type and its message's lines joined, cut at limit characters."""
    text = " / ".join(line.strip() for line in str(err).splitlines() if line.strip())
    text = f"{type(err).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- the benchmark, part by part; each emits its rows ------------------------------------------------------
Emit = Callable[[dict], None]


def bench_memory(args, emit: Emit) -> dict[tuple[str, int], bool]:
    """Peak memory of each training contender asked for (reference, model, lightning), in fresh processes;
    which of them fit in memory (a contender that crashed fits: it crashes again in the timed rounds, which
    report why)."""
    fits = {}
    for n_layer in args.layers:
        for name in [name for name in ("reference", "model", "lightning") if name in args.contenders]:
            measured = peak_memory_mb(name, args.hardware, n_layer, args.overrides)
            fits[name, n_layer] = not measured.get("error", "").startswith("killed")
            emit({"kind": "memory", "contender": name, "n_layer": n_layer, **measured})
    return fits


# Best over slowest GEMM measurement above which a run's MFUs are flagged as taken at different speeds.
SPEED_MOVED = 1.25


def bench_gemm(device: torch.device, peaks: dict[str, list[float]]) -> None:
    """Adds one more measurement of each precision's GEMM peak (GFLOP/s) to peaks. Measured again before every
    round of training and evaluation, and MFU taken against the best so far: a single measurement that a burst
    of other work slowed (once, at the start, to half this machine's speed) would inflate every MFU. The slowest
    is kept too: on some machines the matmuls' own speed moves (machine D of docs/performance.md: 2048-square
    bf16 products at 620-730 or 1,600-1,900 GFLOP/s, switching every few seconds)."""
    size = 8192 if device.type == "cuda" else 2048
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        peaks.setdefault(name, []).append(matmul_gflops(dtype, size, repeats=10, device=device))


def best_peak(peaks: dict[str, list[float]], precision: str) -> float | None:
    """The best GEMM peak measured so far for a Lightning precision ("32-true", "bf16-mixed", ...), if any."""
    measured = peaks.get("bf16" if "bf16" in precision else "fp32")
    return max(measured) if measured else None


def bench_batches(args, emit: Emit) -> None:
    gathered = {name: [time_batch_gathering(name) for _ in range(args.rounds)] for name in ("reference", "model")}
    for name, (median, ratio) in paired(gathered, "reference").items():
        emit({"kind": "batch", "contender": name, "n_layer": None, "windows_per_s": round(median),
              "ratio_vs_reference": round(ratio, 2)})  # fmt: skip


def bench_steps(args, n_layer: int, models, device, hw, fits, peaks: dict[str, list[float]], emit: Emit) -> None:
    """Training and evaluation throughput and MFU of each contender at n_layer, alternated round by round."""
    reference, ours = models
    train_flops = flops_per_token(ours.num_parameters(), n_layer)
    kinds: dict[str, dict[str, Callable[[], float]]] = {
        "train": {
            "reference": partial(time_plain_training, reference, device, "32-true", None, args.steps),
            "model": partial(time_plain_training, ours, device, hw.precision, hw.fused_optimizer, args.steps),
            "lightning": partial(time_lightning_training, args.hardware, n_layer, args.steps, args.overrides),
            "gemms_only": partial(time_gemms_only, ours, device, hw.precision, True, args.steps),
        },
        "eval": {
            "reference": partial(time_plain_eval, reference, device, "32-true", args.eval_batches),
            "model": partial(time_plain_eval, ours, device, hw.precision, args.eval_batches),
            # Lightning evaluates both splits: half the batches each, one more to warm up.
            "lightning": partial(
                time_lightning_eval, args.hardware, n_layer, args.eval_batches // 2 + 1, args.overrides
            ),
            "gemms_only": partial(time_gemms_only, ours, device, hw.precision, False, args.eval_batches),
        },
    }
    if hw.precision != "32-true":  # is the mixed precision worth it on this machine?
        kinds["train"]["model_fp32"] = partial(
            time_plain_training, ours, device, "32-true", hw.fused_optimizer, args.steps
        )
        kinds["eval"]["model_fp32"] = partial(time_plain_eval, ours, device, "32-true", args.eval_batches)
    for kind, contenders in kinds.items():
        if kind in args.skip:
            continue
        contenders = {name: measure for name, measure in contenders.items() if name in args.contenders}
        row = {"kind": kind, "n_layer": n_layer}
        if kind == "train":  # one that does not fit would take the whole benchmark down with it
            for name in [name for name in contenders if not fits.get((name, n_layer), True)]:
                emit({**row, "contender": name, "skipped": "out of memory (its memory probe was killed)"})
                del contenders[name]
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(args.rounds):
            if "gemm" not in args.skip:
                bench_gemm(device, peaks)
            for name, measure in list(contenders.items()):
                try:
                    samples[name].append(measure())
                except Exception as err:  # reported, and the other contenders go on
                    emit({**row, "contender": name, "error": one_line(err)})
                    del contenders[name], samples[name]
                free()
        flops = train_flops if kind == "train" else train_flops / 3
        for name, (tokens_per_s, ratio) in paired(samples, "reference").items():
            peak = best_peak(peaks, "32-true" if name in ("reference", "model_fp32") else hw.precision)
            emit(
                {
                    "kind": kind,
                    "contender": name,
                    "n_layer": n_layer,
                    "tokens_per_s": round(tokens_per_s),
                    "ratio_vs_reference": round(ratio, 3) if ratio is not None else None,
                    "mfu": round(tokens_per_s * flops / (peak * 1e9), 3) if peak else None,
                    "peak_gflops": round(peak, 1) if peak else None,
                    "rounds": args.rounds,
                }
            )


def bench_generation(args, n_layer: int, models, device, emit: Emit) -> None:
    """Tokens per second sampling from one token, batch 1: the classic loop against our generate's modes."""
    reference, ours = models
    reference.eval()
    ours.eval()
    for new_tokens in args.new_tokens:
        start_token = torch.zeros(1, 1, dtype=torch.long, device=device)
        samplers = {
            "recompute": torch.no_grad()(partial(reference.generate, start_token, new_tokens)),
            **{
                name: partial(ours.generate, start_token, new_tokens, kv_cache=mode)
                for name, mode in (("model_recompute", "off"), ("kv_exact", "exact"), ("kv_fast", "fast"))
            },
        }
        samples = {name: [] for name in samplers}
        for _ in range(args.rounds):
            for name, sample in samplers.items():
                start = time.perf_counter()
                sample()
                synchronize(device)
                samples[name].append(new_tokens / (time.perf_counter() - start))
        for name, (tokens_per_s, ratio) in paired(samples, "recompute").items():
            emit(
                {
                    "kind": "generate",
                    "contender": name,
                    "n_layer": n_layer,
                    "new_tokens": new_tokens,
                    "tokens_per_s": round(tokens_per_s, 1),
                    "ratio_vs_reference": round(ratio, 2),
                }
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 6, 12])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per contender and round")
    parser.add_argument("--eval-batches", type=int, default=4, help="timed eval batches per contender and round")
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[255, 500], help="generation lengths")
    parser.add_argument("--hardware", default="cpu", help="the hardware config the contenders use")
    parser.add_argument(
        "--contenders",
        nargs="+",
        default=TRAINING_CONTENDERS,
        choices=TRAINING_CONTENDERS,
        help="the training and evaluation contenders to time (ratios need the reference)",
    )
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["train", "eval", "generate", "memory", "gemm", "batch"]
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line per measurement")
    parser.add_argument(
        "--generate-layers", type=int, nargs="*", default=[6, 12], help="the n_layer values whose sampling is timed"
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every contender, after --")
    args = parser.parse_args()

    hw = config(args.hardware, 1, *args.overrides).hardware
    device = device_of(hw.accelerator)
    torch.set_float32_matmul_precision(hw.matmul_precision)
    if hw.keep_freed_memory:  # process-wide, so every contender, the reference included, runs with it
        keep_freed_memory()
    results: list[dict] = []

    def emit(row: dict) -> None:
        results.append(row)
        if args.json:
            print(json.dumps(row), flush=True)

    # Memory first, in fresh processes, while this one is still small. A contender whose training does not
    # fit in memory (the reference at n_layer 12 on a 24 GB machine) is left out of the training rounds,
    # where it would take the whole benchmark down with it.
    fits = bench_memory(args, emit) if "memory" not in args.skip else {}
    peaks: dict[str, list[float]] = {}
    if "gemm" not in args.skip:
        bench_gemm(device, peaks)
    if "batch" not in args.skip:
        bench_batches(args, emit)
    for n_layer in args.layers:
        torch.manual_seed(0)
        models = reference_gpt(n_layer).to(device), our_gpt(n_layer, hw.compile).to(device)
        bench_steps(args, n_layer, models, device, hw, fits, peaks, emit)
        if "generate" not in args.skip and n_layer in args.generate_layers:
            bench_generation(args, n_layer, models, device, emit)
        del models
        free()
    for name, measured in peaks.items():  # each row's MFU is against the best measured before it
        emit({"kind": "gemm", "contender": name, "n_layer": None, "gflops": round(max(measured), 1),
              "slowest_gflops": round(min(measured), 1), "measurements": len(measured)})  # fmt: skip

    if not args.json:
        print_table(results, args, device)


def print_table(results: list[dict], args, device) -> None:
    print(f"\ndevice: {device}, hardware={args.hardware}, threads={torch.get_num_threads()}, rounds={args.rounds}")
    print(f"{'kind':<9}{'contender':<16}{'n_layer':>8}{'extra':>8}{'tokens/s':>12}{'x ref':>8}{'MFU':>7}{'peak MB':>9}")
    for row in results:
        if row["kind"] == "gemm":
            spread = f"best of {row['measurements']}, the slowest {row['slowest_gflops']:.1f}"
            print(f"{'gemm':<9}{row['contender']:<16}{'':>8}{'':>8}{row['gflops']:>10.1f} GFLOP/s ({spread})")
            continue
        if row["kind"] == "batch":
            ratio = row["ratio_vs_reference"]
            print(
                f"{'batch':<9}{row['contender']:<16}{'':>8}{'':>8}{row['windows_per_s']:>10,} windows/s {ratio:>5.2f}"
            )
            continue
        failed = row.get("error") or row.get("skipped")
        if failed:
            print(f"{row['kind']:<9}{row['contender']:<16}{row['n_layer']:>8}  {failed}")
            continue
        tps = f"{row['tokens_per_s']:,}" if "tokens_per_s" in row else ""
        ratio = f"{row['ratio_vs_reference']:.2f}" if row.get("ratio_vs_reference") is not None else ""
        mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else ""
        extra = str(row.get("new_tokens", ""))
        peak = f"{row['peak_mb']:,}" if "peak_mb" in row else ""
        print(
            f"{row['kind']:<9}{row['contender']:<16}{row['n_layer']:>8}{extra:>8}{tps:>12}{ratio:>8}{mfu:>7}{peak:>9}"
        )
    for row in results:
        if row["kind"] == "gemm" and row["gflops"] > SPEED_MOVED * row["slowest_gflops"]:
            print(
                f"note: {row['contender']} products ran at {row['slowest_gflops']:,.0f} to {row['gflops']:,.0f} "
                "GFLOP/s in this run: the machine's speed moved, so the rows' MFUs do not compare (each is against "
                "the best peak measured before it); the ratios between contenders, measured round by round, do"
            )


if __name__ == "__main__":
    main()
