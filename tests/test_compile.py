"""GenericStep(compile=True): torch.compile'd products equal the eager ones, are shared by steps
of one architecture, and a compilation that fails falls back to eager, saying why."""
import types

import pytest
import torch
from torch import nn

import memdistill as md
from memdistill.engine.steps import generic
from memdistill.engine.steps.generic import GenericStep


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


@torch.no_grad()  # the engine's sweeps: compiled products serve grad-mode-off calls
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


def test_grad_mode_keeps_the_eager_path(backend):
    model, theta, x, y, w = data()
    step = GenericStep(model, compile=True)
    step.value_and_grad(theta, x, y)  # grad mode on: autograd may differentiate through it
    assert step.compile_seconds == 0.0


def test_hypergradient_and_distiller_with_compile(backend):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(16, 2)).double()
    x_syn, y_syn = torch.randn(3, 4, 1, 10, dtype=torch.float64), torch.randint(0, 2, (3, 4))
    x, y, lrs = torch.randn(16, 1, 10, dtype=torch.float64), torch.randint(0, 2, (16,)), torch.full((6,), 0.1).double()
    want = md.hypergradient(model, x_syn, y_syn, lrs, x, y, epochs=2, momentum=0.5, method="autograd")
    for method in ("checkpoint", "reversible", "autograd"):
        hg = md.hypergradient(model, x_syn, y_syn, lrs, x, y, epochs=2, momentum=0.5, method=method, compile=True)
        torch.testing.assert_close(hg.grad_x_syn, want.grad_x_syn, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(hg.grad_lrs, want.grad_lrs, rtol=1e-9, atol=1e-12)
        assert (hg.stats["compile_seconds"] > 0) == (method == "checkpoint"), method  # compiled once, then reused
    X, Y = torch.randn(64, 1, 10), torch.arange(64) % 2
    arch = lambda: nn.Sequential(nn.Conv1d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(16, 2))
    runs = [md.Distiller([arch, arch], steps=2, epochs=1, per_class=1, restarts=2, compile=c, progress=False).fit(
        X, Y, outer_epochs=1, batch_size=32) for c in (False, True)]
    for eager, compiled in zip(*runs):
        torch.testing.assert_close(compiled.x, eager.x, rtol=1e-5, atol=1e-6)
        assert compiled.config["compile"] and "compile" not in eager.config


def test_cli_and_job_files_take_compile(tmp_path):
    from memdistill.apps import jobfile
    from memdistill.apps.cli import build_parser
    assert build_parser().parse_args(["distill", "--compile", "--out", str(tmp_path)]).compile
    job = tmp_path / "job.toml"
    job.write_text("[[jobs]]\ncompile = true\n")
    assert jobfile.read(job).jobs[0].config.compile is True


def test_the_distillers_bar_shows_the_seconds_spent_compiling(backend, monkeypatch):
    from memdistill.distill import distiller

    postfixes = []

    class Bar:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def set_postfix(self, refresh=True, **values):
            postfixes.append(values)

        def update(self, n=1):
            pass

    monkeypatch.setattr(distiller, "tqdm", Bar)
    clock = iter(range(0, 1000, 7))   # generic's clock only: each compiling call takes 7 "seconds"
    monkeypatch.setattr(generic, "time", types.SimpleNamespace(perf_counter=lambda: float(next(clock))))
    X, Y = torch.randn(64, 1, 10), torch.arange(64) % 2
    arch = lambda: nn.Sequential(nn.Conv1d(1, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(24, 2))
    shapes = 0
    for compile_ in (True, False):
        md.Distiller([arch], steps=2, epochs=1, per_class=1, restarts=2, compile=compile_).fit(
            X, Y, outer_epochs=1, batch_size=32)
        shapes = shapes if compile_ is False else len(generic._COMPILED_SHAPES)  # products × shapes compiled
    compiled, eager = postfixes[:2], postfixes[2:]
    assert shapes >= 2 and [p["compiled"] for p in compiled] == [f"{7 * shapes}s"] * 2   # all in the first step
    assert all("compiled" not in p and "loss" in p for p in eager)
