"""GenericStep(compile=True): torch.compile'd products equal the eager ones, are shared by steps
of one architecture, and a compilation that fails falls back to eager, saying why."""
import pytest
import torch
from torch import nn

from memdistill.engine.steps import generic
from memdistill.engine.steps.generic import GenericStep


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def products(step: GenericStep, theta, x, y, w):
    return (step.loss(theta, x, y), *step.value_and_grad(theta, x, y), *step.reverse(theta, x, y, w)[:3])


def data(B: int = 3):
    g = torch.Generator().manual_seed(1)
    model = tiny()
    theta = GenericStep(model).flatten().repeat(B, 1) + 0.1 * torch.randn(B, 26, generator=g, dtype=torch.float64)
    x = torch.randn(5, 3, generator=g, dtype=torch.float64)
    return model, theta, x, torch.tensor([0, 1, 1, 0, 1]), torch.randn(B, 26, generator=g, dtype=torch.float64)


@pytest.fixture(params=[pytest.param("inductor", marks=pytest.mark.slow), "eager"])
def backend(request, monkeypatch):
    """inductor: the real compiler (tens of seconds); eager: dynamo's trace without code generation."""
    monkeypatch.setattr(generic, "COMPILE_OPTIONS", {"dynamic": False, "backend": request.param})
    monkeypatch.setattr(generic, "_COMPILED", {})
    monkeypatch.setattr(generic, "_COMPILED_SHAPES", set())
    return request.param


def test_compiled_products_equal_eager_and_are_shared(backend):
    model, theta, x, y, w = data()
    compiled = GenericStep(model, compile=True)
    got = products(compiled, theta, x, y, w)
    want = products(GenericStep(model), theta, x, y, w)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert compiled.compile and compiled.compile_seconds > 0 and "torch.compile" in compiled.why, compiled.why
    twin = GenericStep(tiny(), compile=True)  # a fresh model of the same architecture: no recompile
    products(twin, theta, x, y, w)
    assert twin.compile_seconds == 0.0


def test_one_row_is_compiled_too(backend):
    model, theta, x, y, w = data(B=1)
    step = GenericStep(model, compile=True)
    for a, b in zip(products(step, theta, x, y, w), products(GenericStep(model), theta, x, y, w)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert step.compile_seconds > 0


def test_failed_compilation_falls_back_to_eager(monkeypatch):
    def broken(fn, **_):
        def run(*args):
            raise RuntimeError("no C++ compiler\nmore")
        return run
    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(generic, "_COMPILED", {})
    monkeypatch.setattr(generic, "_COMPILE_FAILED", {})
    model, theta, x, y, w = data()
    step = GenericStep(model, compile=True)
    got = products(step, theta, x, y, w)
    for a, b in zip(got, products(GenericStep(model), theta, x, y, w)):
        assert torch.equal(a, b)
    assert not step.compile and "torch.compile failed on loss (RuntimeError: no C++ compiler)" in step.why
    assert step.compile_seconds == 0.0
