"""pytest-benchmark: the C++ op step (memdistill.engine.steps._C) vs the pure-PyTorch fused step.

``pytest bench/test_bench_extension.py``: one value_and_grad / reverse of B paper MLPs
(2-10-10-10-1, b = 8, float32, class ids, one thread): B = 3 (the models of one distillation,
one shared batch) and B = 90 (30 distillations, a batch per model). In each group the "fused"
row over the "cpp" row is the speed-up; the issue's target is ≥ 2×.
"""
from __future__ import annotations

import pytest
import torch

from memdistill.apps.profiling import mlp_problem
from memdistill.engine.steps import extension as ops
from memdistill.engine.steps.fused import FusedMLPStep

torch.set_num_threads(1)
needs_ext = pytest.mark.skipif(not ops.extension_available(),
                               reason="memdistill.engine.steps._C not built: MEMDISTILL_BUILD_EXT=1 pip install --no-build-isolation -e .")
STEPS = {"fused": FusedMLPStep, "cpp": ops.ExtensionMLPStep}


def step_args(B: int) -> tuple:
    """(model, θ [B, P], x [8, 2] for B = 3 else [B, 8, 2], y [8], w [B, P])."""
    model, x_syn, y_syn, *_ = mlp_problem()
    g = torch.Generator().manual_seed(0)
    theta0 = FusedMLPStep(model).flatten()
    theta = theta0 + 0.1 * torch.randn(B, theta0.shape[1], generator=g)
    x = x_syn[0] if B == 3 else torch.randn(B, *x_syn[0].shape, generator=g)
    return model, theta, x, y_syn[0], torch.randn(theta.shape, generator=g)


@pytest.mark.parametrize("B", [3, 90])
@pytest.mark.parametrize("kind", ["fused", pytest.param("cpp", marks=needs_ext)])
@pytest.mark.parametrize("fn", ["value_and_grad", "reverse"])
def test_step(benchmark, fn, kind, B):
    benchmark.group = f"{fn}, B = {B}"
    model, theta, x, y, w = step_args(B)
    step = STEPS[kind](model)
    args = (theta, x, y) if fn == "value_and_grad" else (theta, x, y, w)
    benchmark(getattr(step, fn), *args)
