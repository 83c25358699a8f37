"""pytest-benchmark: the batched generic step (not part of the default test run): ``pytest bench``.

(a) One outer iteration of ``Distiller([lenet((1, 28, 28), 10)], steps=10, epochs=3,
    per_class=1, restarts=10)`` (n = 30, real batch 256) against ten ``restarts=None`` runs;
    the same on 1×8×8 (digits' size), where a step is small enough for vmap to pay.
(b) method="checkpoint" (on the generic step: the taped schedule, recorded segments) against
    method="autograd" (one hypergradient) for that LeNet and for the paper MLP 2-10-10-10-1
    forced onto the generic step. The groups run one after the other: for a ratio that the
    machine's drift does not move, interleave the two (README: best of 10 interleaved rounds).
(c) One reverse product for ten LeNet rows: vmap with each second-order mode, compiled
    (``compile=True``; compiled in the warm-up round, its seconds printed), and the loop.
(d) value_and_grad and reverse for ten LeNet 28x28 rows, 10 (a synthetic step) or 256 (the
    real batch) images each: vmap with the batched convolution of steps/conv.py, vmap with
    vmap's own conv2d rule, and the loop.
CPU, one thread, float32, rounds=3. Divide a row by the other row of its group for the ratio.
"""
from __future__ import annotations

import pytest
import torch

import memdistill as md
from memdistill.apps.profiling import mlp_problem
from memdistill.engine.steps import conv
from memdistill.engine.steps.generic import GenericStep
from memdistill.models import fresh_model

torch.set_num_threads(1)


def images(in_shape: tuple[int, ...], count: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(count, *in_shape, generator=g), torch.arange(count) % 10


def distill(in_shape, restarts, seed=0):
    X, y = images(in_shape)
    d = md.Distiller([md.lenet(in_shape, 10)], steps=10, epochs=3, per_class=1, restarts=restarts, seed=seed,
                     progress=False)
    return d.fit(X, y, outer_steps=1, batch_size=256)


@pytest.mark.parametrize("in_shape", [(1, 28, 28), (1, 8, 8)], ids=["28x28", "8x8"])
@pytest.mark.parametrize("how", ["restarts=10", "ten separate runs"])
def test_ten_restarts(benchmark, how, in_shape):
    benchmark.group = f"(a) LeNet {in_shape[1]}x{in_shape[2]}, one outer step, 10 restarts"
    if how == "restarts=10":
        benchmark.pedantic(distill, args=(in_shape, 10), rounds=3, iterations=1, warmup_rounds=1)
    else:
        benchmark.pedantic(lambda: [distill(in_shape, None, seed) for seed in range(10)], rounds=3, iterations=1,
                           warmup_rounds=1)


def lenet_problem():
    g = torch.Generator().manual_seed(0)
    model = fresh_model(md.lenet((1, 28, 28), 10), 0)
    x_syn, y_syn = torch.randn(10, 10, 1, 28, 28, generator=g), torch.arange(10).repeat(10, 1)
    x_real, y_real = images((1, 28, 28), 256)
    return (model, x_syn, y_syn, torch.full((30,), 0.1), x_real, y_real), 3


@pytest.mark.parametrize("method", ["autograd", "checkpoint"])
@pytest.mark.parametrize("model", ["lenet", "mlp-generic"])
def test_checkpoint_over_autograd(benchmark, model, method):
    benchmark.group = f"(b) {model}: checkpoint / autograd"
    args, epochs = lenet_problem() if model == "lenet" else (mlp_problem(), 5)
    benchmark.pedantic(md.hypergradient, args=args, kwargs=dict(epochs=epochs, method=method, step="generic"),
                       rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("path", ["vmap reverse", "vmap forward", "vmap reverse compiled", "loop"])
def test_reverse_product_ten_rows(benchmark, path):
    benchmark.group = "(c) one reverse product, 10 LeNet 28x28 rows, 10 images each"
    model = fresh_model(md.lenet((1, 28, 28), 10), 0)
    step = GenericStep(model, batched=path != "loop", second_order="forward" if "forward" in path else "reverse",
                       per_model=True, compile="compiled" in path)
    theta = torch.cat([step.flatten(fresh_model(md.lenet((1, 28, 28), 10), i)) for i in range(10)])
    x, y = torch.randn(10, 10, 1, 28, 28), torch.arange(10).repeat(10, 1)
    benchmark.pedantic(step.reverse, args=(theta, x, y, torch.randn_like(theta)), rounds=3, iterations=1,
                       warmup_rounds=1)
    if step.compile:
        print(f"compile: {step.compile_seconds:.1f} s ({step.why})")


@pytest.mark.parametrize("product, images", [("value_and_grad", 10), ("reverse", 10), ("value_and_grad", 256)])
@pytest.mark.parametrize("path", ["vmap, batched conv", "vmap, vmap's conv2d rule", "loop"])
def test_batched_conv_ten_rows(benchmark, monkeypatch, path, images, product):
    benchmark.group = f"(d) {product}, 10 LeNet 28x28 rows, {images} images each"
    if "rule" in path:
        monkeypatch.setattr(conv, "SMALL_MACS", float("inf"))  # BatchedConv2d calls F.conv2d
    model = fresh_model(md.lenet((1, 28, 28), 10), 0)
    step = GenericStep(model, batched=path != "loop", per_model=True)
    theta = torch.cat([step.flatten(fresh_model(md.lenet((1, 28, 28), 10), i)) for i in range(10)])
    x, y = torch.randn(10, images, 1, 28, 28), torch.randint(0, 10, (10, images))
    args = (theta, x, y) if product == "value_and_grad" else (theta, x, y, torch.randn_like(theta))
    with torch.no_grad():
        benchmark.pedantic(getattr(step, product), args=args, rounds=3, iterations=1, warmup_rounds=1)
