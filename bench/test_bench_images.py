"""pytest-benchmark: one hypergradient of Wang et al.'s image setting, per method.

LeNet on ``digits-images`` (1×8×8) and on 1×28×28 inputs (MNIST's size, random pixels: no
files needed), 10 steps × 1 image per class × 3 epochs (n = 30), real batch 256 (the image
default) — the cost of one outer step of ``memdistill distill --data digits-images``, whose
default method is "auto" (here: the fastest that fits). The ratio checkpoint / autograd is the
price of bounded memory on a ConvNet.
"""
from __future__ import annotations

import pytest
import torch

import memdistill as md
from memdistill.models import fresh_model

torch.set_num_threads(1)
DIGITS = md.load_dataset("digits-images")
METHODS = ["autograd", "replay", "checkpoint", "auto"]


def problem(in_shape: tuple[int, ...]) -> tuple:
    """(model, x_syn [10, 10, *in_shape], y_syn [10, 10], lrs [30], x_real [256, ...], y_real)."""
    g = torch.Generator().manual_seed(0)
    x_syn = torch.randn(10, 10, *in_shape, generator=g)
    y_syn = torch.arange(10).repeat(10, 1)
    if in_shape == DIGITS.in_shape:
        x_real, y_real = DIGITS.x_train[:256], DIGITS.y_train[:256]
    else:
        x_real, y_real = torch.randn(256, *in_shape, generator=g), torch.arange(256) % 10
    model = fresh_model(md.lenet(in_shape, 10), 0)
    return model, x_syn, y_syn, torch.full((30,), 0.1), x_real, y_real


@pytest.mark.parametrize("in_shape", [(1, 8, 8), (1, 28, 28)], ids=["8x8", "28x28"])
@pytest.mark.parametrize("method", METHODS)
def test_lenet_hypergradient(benchmark, method, in_shape):
    benchmark.group = f"one LeNet hypergradient, n = 30, {in_shape[1]}x{in_shape[2]}"
    model, *args = problem(in_shape)
    benchmark.pedantic(md.hypergradient, args=(model, *args), kwargs={"epochs": 3, "method": method},
                       rounds=3, iterations=1, warmup_rounds=1)
