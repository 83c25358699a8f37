"""autograd's heap: the unroll trims the free heap (malloc_trim) after the steps of trim_points,
and that changes no bit of the hypergradient nor of the stored bytes it reports.

(Copying the saved tensors into one preallocated arena was tried; measured, it does not pay:
the heap's holes are the step's temporaries', see memdistill/engine/baseline.py.)"""
from __future__ import annotations

import math

import pytest
import torch
from conftest import make_problem

import memdistill as md
from memdistill.engine import baseline
from memdistill.engine.baseline import autograd_unroll, trim_points
from memdistill.engine.hypergradient import make_step
from memdistill.engine.loop import Data

needs_trim = pytest.mark.skipif(baseline._TRIM is None, reason="the C library has no malloc_trim (not glibc)")


def test_trim_points_every_8_steps_then_every_k_over_32():
    assert list(trim_points(7)) == []
    assert list(trim_points(40)) == [8, 16, 24, 32, 40]
    points = list(trim_points(2000))
    assert points[:32] == list(range(8, 257, 8))
    gaps = [b - a for a, b in zip(points, points[1:])]
    assert gaps == [max(8, a // 32) for a in points[:-1]]
    assert points[-1] <= 2000 < points[-1] + max(8, points[-1] // 32)


def test_trim_points_are_logarithmic_in_n():
    # every ⌊k/32⌋ steps after k = 256: about 32·ln(n/256) trims (a few more for the floor), not n/8
    for n in (10 ** 4, 10 ** 6):
        assert len(list(trim_points(n))) <= 32 + 33 * math.log(n / 256)


def lenet_problem(labels: str):
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    model = md.models.lenet((1, 8, 8), classes=3)().double()
    x_syn = torch.randn(4, 3, 1, 8, 8, generator=g, dtype=torch.float64)
    x_real = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64)
    if labels == "int":
        y_syn, y_real = torch.randint(0, 3, (4, 3), generator=g), torch.randint(0, 3, (6,), generator=g)
    else:
        y_syn = torch.rand(4, 3, 3, generator=g, dtype=torch.float64).softmax(-1)
        y_real = torch.rand(6, 3, generator=g, dtype=torch.float64).softmax(-1)
    lrs = torch.full((20,), 0.05, dtype=torch.float64)
    return model, x_syn, y_syn, lrs, x_real, y_real


F64 = torch.float64
CASES = [("mlp-binary", "int", 0.0, F64), ("mlp-binary", "int", 0.9, F64), ("mlp-3class", "soft", 0.9, F64),
         ("mlp-3class", "int", 0.9, torch.float32), ("conv-3class", "int", 0.5, F64),
         ("lenet", "int", 0.9, F64), ("lenet", "soft", 0.0, F64)]


def inputs(name: str, labels: str, momentum: float, dtype: torch.dtype = F64):
    """(step, data, lrs, θ0, momentum) of a 20-step problem: trims after steps 8 and 16."""
    if name == "lenet":
        model, x_syn, y_syn, lrs, x_real, y_real = lenet_problem(labels)
    else:
        p = make_problem(name, labels=labels, epochs=4, dtype=dtype)
        model, x_syn, y_syn, lrs, x_real, y_real = p.args()
    step = make_step(model, None, "generic")
    return step, Data(x_syn, y_syn, x_real, y_real), lrs, step.flatten(), momentum


@needs_trim
@pytest.mark.parametrize("name,labels,momentum,dtype", CASES)
def test_trimming_changes_no_bit(name, labels, momentum, dtype, monkeypatch):
    args = inputs(name, labels, momentum, dtype)
    plain = autograd_unroll(*args, trim=False)
    calls = []
    real = baseline._TRIM
    monkeypatch.setattr(baseline, "_TRIM", lambda: calls.append(real()))
    monkeypatch.setattr(baseline, "TRIM_FROM", 0)   # these tiny unrolls are trimmed too
    trimmed = autograd_unroll(*args)
    assert len(calls) == len(list(trim_points(args[2].shape[0]))) == 2
    for a, b in zip(plain, trimmed):
        if isinstance(a, torch.Tensor):
            assert a.dtype == dtype and torch.equal(a, b)
        else:
            assert a == b   # None (integer labels), forward_steps, peak_stored_bytes, level_peak_bytes


def test_no_trim_when_asked_not_to(monkeypatch):
    calls = []
    monkeypatch.setattr(baseline, "_TRIM", lambda: calls.append(1))
    args = inputs("mlp-binary", "int", 0.9)
    autograd_unroll(*args)
    assert calls == []     # 20 states of a tiny MLP: below TRIM_FROM
    monkeypatch.setattr(baseline, "TRIM_FROM", 20 * args[3].nbytes)
    autograd_unroll(*args, trim=False)
    assert calls == []
    autograd_unroll(*args)
    assert len(calls) == 2
