"""The MNIST corner: the hand-written backward pass, and both models learning through the real entry point."""

import re

import numpy as np
import pytest

from mnist.train import NumpyMLP

from .conftest import run_module


def test_numpy_backward_matches_finite_differences():
    rng = np.random.default_rng(0)
    model = NumpyMLP([12, 7, 5, 3], seed=1)
    model.weights = [w.astype(np.float64) for w in model.weights]
    model.biases = [b.astype(np.float64) + rng.normal(0, 0.1, b.shape) for b in model.biases]
    x, y = rng.normal(size=(6, 12)), rng.integers(0, 3, 6)
    _, grads = model.loss_and_grads(x, y)
    eps = 1e-6
    for param, grad in zip(model.params(), grads, strict=True):
        for index in [tuple(rng.integers(0, n) for n in param.shape) for _ in range(5)]:
            original = param[index]
            param[index] = original + eps
            up, _ = model.loss_and_grads(x, y)
            param[index] = original - eps
            down, _ = model.loss_and_grads(x, y)
            param[index] = original
            assert grad[index] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8)


def test_softmax_cross_entropy_of_uniform_logits_is_log_10():
    loss, grad = NumpyMLP.loss_and_grad_logits(np.zeros((4, 10)), np.array([0, 1, 2, 3]))
    assert loss == pytest.approx(np.log(10))
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "args", "floor"), [("numpy", ["model.epochs=2"], 0.85), ("torch", ["model.epochs=1"], 0.6)]
)
def test_each_model_learns_on_a_subset(tmp_path, model, args, floor):
    run = tmp_path / "run"
    proc = run_module("mnist.train", f"model={model}", "train_subset=3000", *args, f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracy = float(re.search(rf"{model} model: test accuracy ([\d.]+)", proc.stdout).group(1))
    assert accuracy > floor  # chance is 0.1
    for picture in ("confusion_matrix.png", "misclassified.png"):
        assert (run / picture).stat().st_size > 5_000
    assert list(run.glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_missing_mnist_offline_says_where_it_looked(tmp_path):
    proc = run_module("mnist.train", "download=false", cwd=tmp_path, env={"DATA_DIR": str(tmp_path / "nowhere")})
    assert proc.returncode == 1
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in proc.stderr and "Traceback" not in proc.stderr
