"""Where CUDA and MPS take another path than the CPU (docs/hardware.md), checked here on a CPU: what each hardware
group selects, which device is picked, and what a checkpoint carries of each device's generator."""

import json
import resource
import subprocess
import sys

import pytest
import torch

from shakegpt.compose import job_config
from shakegpt.errors import ShakeGPTError
from shakegpt.hardware import cpu_precision, pick_device, synchronize
from shakegpt.resume import restore_rng_states, rng_states

# docs/hardware.md's table, setting by setting.
SELECTED = {
    "auto": ("auto", "32-true", "highest", None, False, True),
    "cpu": ("cpu", cpu_precision(), "highest", None, False, True),
    "cuda": ("cuda", "bf16-mixed", "high", True, True, False),
    "mps": ("mps", "32-true", "highest", None, False, False),
}


@pytest.mark.parametrize("hardware", sorted(SELECTED))
def test_each_hardware_group_selects_what_the_docs_say(hardware, tmp_path):
    cfg = job_config([f"hardware={hardware}", f"paths.output_dir={tmp_path}"])
    hw = cfg.hardware
    selected = (hw.accelerator, hw.precision, hw.matmul_precision, hw.fused_optimizer, hw.pin_memory)
    assert (*selected, hw.keep_freed_memory) == SELECTED[hardware]
    # The trainer, the optimizer and the data loader take them from there, and nowhere else.
    assert (cfg.trainer.accelerator, cfg.trainer.precision) == (hw.accelerator, hw.precision)
    assert cfg.optimizer.fused == hw.fused_optimizer and cfg.data.pin_memory == hw.pin_memory
    assert hw.compile is False


def accelerators_present() -> dict[str, bool]:
    return {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}


def test_auto_picks_a_present_device_and_a_named_missing_one_is_refused_in_one_line():
    present = accelerators_present()
    assert pick_device("auto") == ("cuda" if present["cuda"] else "mps" if present["mps"] else "cpu")
    synchronize(pick_device("auto"))  # returns once the device's queued work is done; nothing is queued here
    for missing in [name for name, here in present.items() if not here]:
        with pytest.raises(ShakeGPTError, match=f"no {missing.upper()} device"):
            pick_device(missing)


def test_checkpoints_carry_the_generator_of_each_device_present_and_restore_its_draws():
    states = rng_states()
    assert set(states) == {"cpu"} | {name for name, here in accelerators_present().items() if here}
    first = torch.rand(3)
    restore_rng_states(states)
    assert torch.equal(torch.rand(3), first)


FAULTS_OF_FRESH_TENSORS = """
import json, resource, torch
from shakegpt.hardware import keep_freed_memory

def page_faults_of_a_fresh_64_mb_tensor():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(2**24)  # written once, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

default = [page_faults_of_a_fresh_64_mb_tensor() for _ in range(6)]
took = keep_freed_memory()
kept = [page_faults_of_a_fresh_64_mb_tensor() for _ in range(30)]
print(json.dumps({"default": default, "took": took, "kept": kept}))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="mallopt is glibc's")
def test_keep_freed_memory_stops_large_tensors_from_faulting_in_again():
    # A process of its own: the allocator's settings are process-wide, and another test's allocations would
    # move the heap.
    proc = subprocess.run([sys.executable, "-c", FAULTS_OF_FRESH_TENSORS], capture_output=True, text=True, check=True)
    faults = json.loads(proc.stdout)
    page_faults = 2**26 // resource.getpagesize()
    # By default glibc maps every such block afresh: each of its pages faults in, each time.
    assert min(faults["default"]) >= 0.9 * page_faults
    # Kept: once the heap has grown to hold it, the same block is handed out again, already in memory. Growing
    # takes a few blocks, up to 8 of them in 25 tries on a Xeon (glibc places the aligned blocks around the
    # interpreter's own small ones); then none faults in again.
    assert faults["took"] is True
    assert max(faults["kept"][-10:]) < 0.01 * page_faults, faults["kept"]
