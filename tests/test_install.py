"""The package as a user installs it: a wheel (not the checkout), its console commands, conf/ inside it."""

import os
import shutil
import subprocess
import sys

import pytest

from .conftest import ROOT, TINY

# A wheel built and installed, its commands run: seconds each (`pytest -m "not slow"` leaves them out).
pytestmark = pytest.mark.slow


def test_the_wheel_carries_its_config_and_its_commands_run_from_anywhere(tmp_path):
    source, wheels, target, elsewhere = (tmp_path / name for name in ("source", "wheels", "site", "elsewhere"))
    elsewhere.mkdir()
    # Built from a copy of what the wheel is made of, so the build's own folders stay out of the checkout.
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source)
    for name in ("shakegpt", "mnist", "conf"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, source], check=True)
    (wheel,) = wheels.glob("shakegpt-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", target, wheel], check=True)
    # The wheel's modules come first; the dependencies are the ones this interpreter has.
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "2"}

    def command(name: str, *args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [target / "bin" / name, *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    where = subprocess.run(
        [sys.executable, "-c", "from shakegpt.config_dir import config_dir; print(config_dir())"],
        cwd=elsewhere, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert where == str(target / "shakegpt" / "conf")

    run = elsewhere / "run"
    trained = command("shakegpt-train", *TINY, f"hydra.run.dir={run}")
    assert "step 20: train loss" in trained.stdout and (run / "checkpoints" / "best.ckpt").is_file()
    assert len(command("shakegpt-generate", f"ckpt_path={run}", "max_new_tokens=30").stdout) >= 30
    assert "bpc)" in command("shakegpt-evaluate", f"ckpt_path={run}", "eval_batches=1", "data.batch_size=2").stdout
    command("shakegpt-report", str(run))
    assert "| 20 |" in (run / "report.md").read_text()
    assert "shakegpt-mnist: MNIST two ways" in command("shakegpt-mnist", "--help").stdout
    env["COMP_LINE"] = "shakegpt-train experiment="  # what bash hands Hydra's completion
    assert "experiment=exp5" in command("shakegpt-train", "-sc", "query=bash").stdout.split()
    assert not (elsewhere / "outputs").exists()  # everything went where it was told
