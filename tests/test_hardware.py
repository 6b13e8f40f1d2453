"""Where CUDA and MPS take another path than the CPU (docs/hardware.md), checked here on a CPU: what each hardware
group selects, which device is picked, and what a checkpoint carries of each device's generator."""

import pytest
import torch

from shakegpt.compose import job_config
from shakegpt.errors import ShakeGPTError
from shakegpt.hardware import cpu_precision, pick_device, synchronize
from shakegpt.resume import restore_rng_states, rng_states

# docs/hardware.md's table, setting by setting.
SELECTED = {
    "auto": ("auto", "32-true", "highest", None, False),
    "cpu": ("cpu", cpu_precision(), "highest", None, False),
    "cuda": ("cuda", "bf16-mixed", "high", True, True),
    "mps": ("mps", "32-true", "highest", None, False),
}


@pytest.mark.parametrize("hardware", sorted(SELECTED))
def test_each_hardware_group_selects_what_the_docs_say(hardware, tmp_path):
    cfg = job_config([f"hardware={hardware}", f"paths.output_dir={tmp_path}"])
    hw = cfg.hardware
    assert (hw.accelerator, hw.precision, hw.matmul_precision, hw.fused_optimizer, hw.pin_memory) == SELECTED[hardware]
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
