"""One test per function of shakegpt/compat.py, the places shakegpt reaches past a library's public API: each
fails when the library changes what the function relies on."""

import signal
import subprocess
import sys

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.plugins.environments import LightningEnvironment
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from torch.utils.tensorboard import SummaryWriter

from shakegpt import compat


def quiet_trainer(**kwargs) -> L.Trainer:
    options = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(accelerator="cpu", devices=1, **options, **kwargs)


def test_a_checkpoints_loop_state_sets_the_step_before_fit(tmp_path):
    trainer = quiet_trainer(max_steps=3, limit_val_batches=0)
    trainer.fit(BoringModel())
    trainer.save_checkpoint(tmp_path / "three.ckpt")
    state = torch.load(tmp_path / "three.ckpt", weights_only=False)["loops"]["fit_loop"]

    fresh = quiet_trainer(max_steps=5)
    assert fresh.global_step == 0
    compat.load_fit_loop_state(fresh, state)
    assert fresh.global_step == 3


def test_the_ranks_a_launcher_started_are_listed_and_signalled():
    launcher = _SubprocessScriptLauncher(LightningEnvironment(), num_processes=2, num_nodes=1)
    strategy = type("Strategy", (), {"launcher": launcher})()
    trainer = type("Trainer", (), {"strategy": strategy})()
    assert compat.launched_ranks(trainer) == []
    rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    launcher.procs.append(rank)
    assert compat.launched_ranks(trainer) == [rank]
    compat.kill_launched_ranks(trainer, signal.SIGTERM)
    assert rank.wait(timeout=10) == -signal.SIGTERM


def test_early_stoppings_patience_is_read():
    stopper = EarlyStopping(monitor="val/loss", patience=2)
    assert not compat.patience_spent(stopper)
    stopper.load_state_dict({**stopper.state_dict(), "wait_count": 2})
    assert compat.patience_spent(stopper)


def test_summaries_go_to_the_writers_own_events_file(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard.summary import scalar

    writer = SummaryWriter(tmp_path)
    compat.tensorboard_file_writer(writer).add_summary(scalar("x", 1.5), global_step=7)
    writer.close()
    assert len(list(tmp_path.iterdir())) == 1
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("x")] == [(7, 1.5)]


def test_the_softmax_gradient_from_its_output_is_autograds():
    scores = torch.randn(3, 5, 5, dtype=torch.float64, requires_grad=True)
    probs = scores.softmax(-1)
    grad = torch.randn_like(probs)
    (expected,) = torch.autograd.grad(probs, scores, grad)
    assert torch.allclose(compat.softmax_backward(grad, probs.detach(), -1, torch.float64), expected)


def test_onednn_says_whether_it_multiplies_bf16():
    # The op behind the answer: if it went, every CPU would silently train in fp32.
    assert hasattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported") or not torch.backends.mkldnn.is_available()
    assert isinstance(compat.onednn_multiplies_bf16(), bool)
    if compat.onednn_multiplies_bf16():
        x, weight, bias = (torch.randn(shape, dtype=torch.bfloat16) for shape in ((8, 16), (4, 16), (4,)))
        assert compat.onednn_linear_relu(x, weight, bias).dtype == torch.bfloat16


def test_onednns_fused_linear_layer_is_linear_then_relu():
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this PyTorch has no oneDNN")
    x, weight, bias = (torch.randn(shape) for shape in ((2, 8, 16), (4, 16), (4,)))
    expected = torch.relu(torch.nn.functional.linear(x, weight, bias))
    assert (expected == 0).any() and (expected > 0).any()
    assert torch.allclose(compat.onednn_linear_relu(x, weight, bias), expected, atol=1e-5)


def test_overrides_are_parsed_as_hydra_parses_them():
    overrides = compat.parse_overrides(["model.n_layer=1,2", "+callbacks.x.y='a b'", "~seed"])
    assert [o.key_or_group for o in overrides] == ["model.n_layer", "callbacks.x.y", "seed"]
    assert [o.is_sweep_override() for o in overrides] == [True, False, False]
    assert overrides[1].value() == "a b" and overrides[0].input_line == "model.n_layer=1,2"


def test_a_ddp_rank_of_a_sweeps_job_runs_that_job_in_its_folder(tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from lightning.fabric.strategies.launchers.subprocess_script import _hydra_subprocess_cmd
    from omegaconf import read_write

    from shakegpt.compose import as_a_job

    sweep_argv = ["train.py", "-m", "model.n_layer=1,2", "hydra.sweep.dir=sweep"]
    monkeypatch.setattr(sys, "argv", list(sweep_argv))
    with as_a_job(["model.n_layer=2", f"paths.output_dir={tmp_path}"]):
        hydra_cfg = HydraConfig.get()
        with read_write(hydra_cfg):
            hydra_cfg.mode = RunMode.MULTIRUN
            hydra_cfg.runtime.output_dir = str(tmp_path / "model.n_layer=2")
            hydra_cfg.runtime.cwd = str(tmp_path)
            hydra_cfg.overrides.task = ["model.n_layer=2"]
        with compat.launchable_job():
            command, cwd = _hydra_subprocess_cmd(local_rank=1)
        assert sys.argv == sweep_argv
    arguments = command[command.index("model.n_layer=2") :]
    assert arguments[:2] == ["model.n_layer=2", f'hydra.run.dir="{tmp_path / "model.n_layer=2"}"']
    assert "-m" not in arguments and cwd == str(tmp_path)


def test_hydras_config_is_set_around_a_block_and_put_back():
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from shakegpt.config_dir import config_dir

    with initialize_config_dir(config_dir=config_dir("train"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["seed=7"], return_hydra_config=True)
    was_set = HydraConfig.initialized()
    with compat.hydra_config_of(cfg):
        assert list(HydraConfig.get().overrides.task) == ["seed=7"]
    assert HydraConfig.initialized() == was_set
