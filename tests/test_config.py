"""The composed configuration: defaults, presets and hardware groups, through Hydra's compose API."""

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from shakegpt import compat, hardware, launch  # noqa: F401  (launch registers the resolvers conf/ uses)
from shakegpt.errors import ShakeGPTError
from shakegpt.hardware import check_accelerator, cpu_precision
from shakegpt.model import GPT, GPTConfig

from .conftest import ROOT


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "train"), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides))


def test_defaults_are_the_classic_values():
    cfg = composed()
    assert (cfg.data.batch_size, cfg.data.block_size) == (64, 256)
    assert (cfg.trainer.max_steps, cfg.trainer.val_check_interval, cfg.trainer.limit_val_batches) == (5000, 500, 200)
    assert cfg.optimizer.lr == 3e-4
    assert (cfg.model.n_embd, cfg.model.n_layer, cfg.model.n_head, cfg.model.dropout) == (384, 6, 6, 0.2)
    assert cfg.model.block_size == 256
    assert cfg.seed == 1337


def test_n_head_follows_n_layer_unless_set():
    assert composed("model.n_layer=2").model.n_head == 2
    assert composed("model.n_layer=2", "model.n_head=4").model.n_head == 4


@pytest.mark.parametrize(
    ("preset", "n_layer", "max_steps", "parameters"),
    [
        ("exp1", 1, 99, 1_922_369),
        ("exp2", 1, 5000, 1_922_369),
        ("exp3", 2, 5000, 3_695_681),
        ("exp4", 6, 5000, 10_788_929),
        ("exp5", 12, 5000, 21_428_801),
    ],
)
def test_experiment_presets_are_the_table_rows(preset, n_layer, max_steps, parameters):
    cfg = composed(f"experiment={preset}")
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.trainer.max_steps) == (n_layer, n_layer, max_steps)
    assert (cfg.trainer.val_check_interval, cfg.trainer.limit_val_batches, cfg.model.dropout) == (500, 200, 0.2)
    assert GPT(GPTConfig(vocab_size=65, **cfg.model)).num_parameters() == parameters


def test_the_nanogpt_preset_is_its_shakespeare_char_config():
    cfg = composed("experiment=nanogpt")
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.model.n_embd, cfg.model.dropout) == (6, 6, 384, 0.2)
    assert (cfg.data.batch_size, cfg.data.block_size, cfg.trainer.max_steps) == (64, 256, 5000)
    assert (cfg.optimizer.lr, list(cfg.optimizer.betas), cfg.optimizer.weight_decay) == (1e-3, [0.9, 0.99], 0.1)
    schedule = cfg.lr_schedule
    assert (schedule.warmup_steps, schedule.decay_steps, schedule.min_lr) == (100, 5000, 1e-4)
    assert (cfg.trainer.gradient_clip_val, cfg.trainer.val_check_interval) == (1.0, 250)
    model = GPT(GPTConfig(vocab_size=65, **cfg.model))
    optimizer = instantiate(cfg.optimizer, fused=None)(model.parameters())
    scheduler = instantiate(cfg.lr_schedule)(optimizer)
    lrs = []
    for _ in range(101):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-3 / 101) and lrs[100] == pytest.approx(1e-3)
    assert composed().lr_schedule._target_ == "shakegpt.optim.constant"  # the default: the classic constant lr


def test_quick_preset_is_small():
    cfg = composed("experiment=quick")
    assert cfg.model.n_embd < 384 and cfg.trainer.max_steps <= 2000


@pytest.mark.parametrize("preset", ["smoke", "quick"])
@pytest.mark.parametrize("n_layer", [1, 2, 6, 12])
def test_the_cheap_presets_compose_with_the_tables_sweep(preset, n_layer):
    cfg = composed(f"experiment={preset}", f"model.n_layer={n_layer}")
    assert GPT(GPTConfig(vocab_size=65, **cfg.model)).config.n_head == n_layer


@pytest.mark.parametrize(
    ("hardware", "accelerator", "precision"),
    [
        ("cpu", "cpu", cpu_precision()),
        ("cuda", "cuda", "bf16-mixed"),
        ("mps", "mps", "32-true"),
        ("auto", "auto", "32-true"),
    ],
)
def test_hardware_presets(hardware, accelerator, precision):
    cfg = composed(f"hardware={hardware}")
    assert (cfg.trainer.accelerator, cfg.trainer.precision) == (accelerator, precision)
    assert "bf16" not in composed("hardware=mps").trainer.precision


@pytest.mark.parametrize(("bf16_speed", "precision"), [(140.0, "32-true"), (160.0, "bf16-mixed"), (55.0, "32-true")])
def test_cpu_precision_follows_the_measured_matmul_speeds_once_per_machine(
    monkeypatch, tmp_path, bf16_speed, precision
):
    if not compat.onednn_multiplies_bf16():
        pytest.skip("this CPU has no native bf16: always 32-true")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    speeds = {torch.float32: 100.0, torch.bfloat16: bf16_speed}
    monkeypatch.setattr(hardware, "matmul_gflops", lambda dtype, repeats: speeds[dtype])
    hardware.cpu_precision.cache_clear()
    try:
        assert hardware.cpu_precision() == precision
        # Another process on this machine (a resume, a sweep job) takes the recorded choice without measuring,
        # however the machine is loaded then.
        hardware.cpu_precision.cache_clear()
        monkeypatch.setattr(
            hardware,
            "matmul_gflops",
            lambda dtype, repeats: speeds[torch.float32 if dtype == torch.bfloat16 else torch.bfloat16],
        )
        assert hardware.cpu_precision() == precision
        assert list(json.loads((tmp_path / "shakegpt" / "cpu_precision.json").read_text()).values()) == [precision]
    finally:
        hardware.cpu_precision.cache_clear()


def test_asking_for_missing_hardware_fails_before_any_work():
    with pytest.raises(ShakeGPTError, match="hardware=mps"):
        check_accelerator("mps")
    check_accelerator("cpu")


def test_lightnings_common_flags_need_no_plus(tmp_path):
    cfg = composed("trainer.gradient_clip_val=1.0", "trainer.profiler=simple", "trainer.max_epochs=3")
    trainer = instantiate(
        cfg.trainer, accelerator="cpu", precision="32-true", default_root_dir=str(tmp_path), logger=False
    )
    assert (trainer.gradient_clip_val, trainer.max_epochs, type(trainer.profiler).__name__) == (
        1.0,
        3,
        "SimpleProfiler",
    )


def test_the_help_screen_lists_every_config_group_and_option():
    with initialize_config_dir(config_dir=str(ROOT / "conf" / "train"), version_base="1.3"):
        template = compose(config_name="train", return_hydra_config=True).hydra.help.template
    groups = template.split("== Config groups (group=option) ==")[1].split("==")[0]
    train, shared = ROOT / "conf" / "train", ROOT / "conf" / "shared"
    folders = [folder for root in (train, shared) for folder in root.iterdir() if folder.is_dir()]
    for folder in [*folders, train / "hydra" / "launcher"]:
        if folder.name == "hydra":
            continue
        name = str(folder.relative_to(folder.parent.parent if folder.name == "launcher" else folder.parent))
        assert f"{name}: " in groups, name
        for option in folder.glob("*.yaml"):
            assert option.stem in groups, f"{name}={option.stem}"
    assert "mnist" not in template
