"""pytest-benchmark suite (not part of the default test run): ``pytest bench``.

One hypergradient per method and step (generic autograd step, fused PyTorch step, C++ op) at
the paper's configuration (2-10-10-10-1, s = 40, e = 5, b = 8, real batch 64), and at
n = 1024 for a 2-256-256-256-1 MLP. Divide a row by the autograd row of its group for the
ratios the README reports.
"""
from __future__ import annotations

import pytest
import torch

import memdistill as md
from memdistill.apps.profiling import mlp_problem

torch.set_num_threads(1)
METHODS = [("autograd", 0.0), ("replay", 0.0), ("checkpoint", 0.0),
           ("autograd", 0.9), ("checkpoint", 0.9), ("reversible", 0.9)]


def run(benchmark, args, epochs, method, momentum, rounds, step="auto"):
    hg = benchmark.pedantic(md.hypergradient, args=args,
                            kwargs=dict(epochs=epochs, method=method, momentum=momentum, step=step),
                            rounds=rounds, iterations=1, warmup_rounds=1 if rounds > 1 else 0)
    benchmark.extra_info.update(peak_stored_bytes=hg.stats["peak_stored_bytes"],
                                forward_steps=hg.stats["forward_steps"])


STEPS = ["generic", "fused"] + (["cpp"] if md.backend_info()["backend"] == "cpp" else [])


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("method, momentum", METHODS)
def test_paper_config(benchmark, method, momentum, step):
    if method == "autograd" and step != "generic":
        pytest.skip("method='autograd' always runs the generic step")
    benchmark.group = f"paper config n=200, momentum {momentum}"
    run(benchmark, mlp_problem(), 5, method, momentum, rounds=5, step=step)


@pytest.mark.parametrize("method, momentum", [m for m in METHODS if m[1] == 0.9])
def test_wide_mlp_n1024(benchmark, method, momentum):
    benchmark.group = "2-256-256-256-1, n=1024, momentum 0.9"
    run(benchmark, mlp_problem(width=256, steps=32, epochs=32), 32, method, momentum, rounds=1)
