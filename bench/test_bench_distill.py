"""pytest-benchmark: throughput of the paper's §5.2 job, 30 distillations at once.

§5.2: 3 architectures × 10 restarts, m = 3 internal models of the architecture, n = 200
(s = 40, e = 5), real batch 64, 800 outer iterations. One outer iteration of all 30
distillations is timed:
- "batched": three ``Distiller(restarts=10)`` (one per architecture), each one batched sweep
  of its 30 models per outer iteration (fused or C++ step, as available);
- "autograd": the paper's way, ``md.hypergradient(method="autograd")`` for each of the 90
  models one at a time.
Throughput = 1 / (seconds per outer iteration); the §5.2 job takes 800 of them.
- "§5.2 bound": 5 outer steps of ``Distiller([mlp("4-layer")] * 3, restarts=10)`` in one fit, on one
  thread and at torch's default threads, replay and checkpoint (same bits);
  ``extra_info["projected_s"]`` = 2,400 × the median per step (3 architectures × 800 outer
  iterations, the 4-layer bounding the other two). Target ≤ 300 s.
"""
from __future__ import annotations

import pytest
import torch

import memdistill as md
from memdistill.models import fresh_model

DEFAULT_THREADS = torch.get_num_threads()
torch.set_num_threads(1)
MOONS = md.load_dataset("moons")
ARCHS = ["1-layer", "2-layer", "4-layer"]


def batched_iteration(method: str) -> None:
    for name in ARCHS:
        distiller = md.Distiller([md.mlp(name)] * 3, steps=40, epochs=5, method=method, restarts=10, progress=False)
        distiller.fit(MOONS.x_train[:64], MOONS.y_train[:64], outer_epochs=1, batch_size=64)


def autograd_iteration() -> None:
    g = torch.Generator().manual_seed(0)
    x_syn, y_syn = torch.randn(40, 8, 2, generator=g), torch.arange(2).repeat_interleave(4).repeat(40, 1)
    lrs = torch.full((200,), 0.02)
    for name in ARCHS:
        for seed in range(30):
            model = fresh_model(md.mlp(name), seed)
            md.hypergradient(model, x_syn, y_syn, lrs, MOONS.x_train[:64], MOONS.y_train[:64], epochs=5,
                             method="autograd")


@pytest.mark.parametrize("method", ["replay", "checkpoint"])
def test_batched(benchmark, method):
    benchmark.group = "one outer iteration of the 30 distillations of §5.2"
    benchmark.extra_info["step"] = md.backend_info()["backend"]
    benchmark.pedantic(batched_iteration, args=(method,), rounds=3, iterations=1, warmup_rounds=1)


def test_autograd_baseline(benchmark):
    benchmark.group = "one outer iteration of the 30 distillations of §5.2"
    benchmark.pedantic(autograd_iteration, rounds=1, iterations=1)


@pytest.mark.parametrize("threads", [1, DEFAULT_THREADS])
@pytest.mark.parametrize("method", ["replay", "checkpoint"])
def test_section_5_2_bound(benchmark, method, threads):
    benchmark.group = "§5.2 bound: 5 outer steps of 30 4-layer distillations"
    benchmark.extra_info.update(step=md.backend_info()["backend"], threads=threads)

    def five_steps() -> None:
        distiller = md.Distiller([md.mlp("4-layer")] * 3, steps=40, epochs=5, method=method, restarts=10,
                                 progress=False)
        distiller.fit(MOONS.x_train, MOONS.y_train, outer_steps=5, batch_size=64)

    torch.set_num_threads(threads)
    try:
        benchmark.pedantic(five_steps, rounds=3, iterations=1, warmup_rounds=1)
    finally:
        torch.set_num_threads(1)
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["projected_s"] = 2400 * benchmark.stats.stats.median / 5
