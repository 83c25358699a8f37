"""The fused MLP step against the generic (autograd) step, product by product."""
from __future__ import annotations

import pytest
import torch
from conftest import MODELS, make_problem, mlp, rel
from torch import nn

import memdistill as md
from memdistill.engine.steps.extension import extension_available
from memdistill.engine.steps.fused import FusedMLPStep, is_plain_mlp
from memdistill.engine.steps.generic import GenericStep


def batch(model: str, labels: str, per_model: bool, B: int = 3):
    """θ [B, P] around θ0, a direction w, and one batch (shared, or one per model)."""
    p = make_problem(model, labels=labels, b=5)
    generic, fused = GenericStep(p.model), FusedMLPStep(p.model)
    g = torch.Generator().manual_seed(3)
    theta = generic.flatten() + 0.3 * torch.randn(B, generic.flatten().shape[1], generator=g, dtype=torch.float64)
    w = torch.randn(theta.shape, generator=g, dtype=torch.float64)
    if per_model:
        x, y = p.x_syn[:B], p.y_syn[:B]
    else:
        x, y = p.x_syn[0], p.y_syn[0]
    return generic, fused, theta, w, x, y


@pytest.mark.parametrize("per_model", [False, True])
@pytest.mark.parametrize("model, labels", [("mlp-binary", "int"), ("mlp-binary", "soft"),
                                           ("mlp-3class", "int"), ("mlp-3class", "soft")])
def test_fused_products_equal_generic(model, labels, per_model):
    generic, fused, theta, w, x, y = batch(model, labels, per_model)
    if per_model:  # the generic step, one model at a time
        rows = [generic.reverse(theta[j:j + 1], x[j], y[j], w[j:j + 1]) for j in range(3)]
        ref = (torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows]),
               torch.stack([r[2] for r in rows]), None if rows[0][3] is None else torch.stack([r[3] for r in rows]))
        ref_loss = sum(generic.value_and_grad(theta[j:j + 1], x[j], y[j])[0] for j in range(3))
    else:
        ref = generic.reverse(theta, x, y, w)
        ref_loss = generic.value_and_grad(theta, x, y)[0]
    got = fused.reverse(theta, x, y, w)
    loss, grad = fused.value_and_grad(theta, x, y)
    assert loss.shape == (3,) and rel(loss.sum(), ref_loss.sum()) <= 1e-12 and rel(grad, ref[0]) <= 1e-12
    for a, b in zip(got, ref):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.shape == b.shape and rel(a, b) <= 1e-12


@pytest.mark.parametrize("model, plain", [
    (mlp([2, 4, 1]), True),
    (nn.Sequential(nn.Linear(3, 2)), True),
    (nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)), False),
    (nn.Sequential(nn.Linear(2, 4, bias=False), nn.ReLU(), nn.Linear(4, 1)), False),
    (nn.Sequential(nn.Linear(2, 4), nn.ReLU(inplace=True), nn.Linear(4, 1)), False),
    (nn.Sequential(nn.Linear(2, 4), nn.ReLU()), False),
    (nn.Sequential(nn.BatchNorm1d(2), nn.Linear(2, 1)), False),
    (MODELS["conv-3class"][0](), False),
])
def test_plain_mlp_detection(model, plain):
    assert is_plain_mlp(model) is plain


def test_fused_is_chosen_automatically_and_can_be_refused():
    p = make_problem("mlp-binary", s=3, epochs=2)
    assert md.hypergradient(*p.args(), epochs=2).stats["step"] == ("cpp" if extension_available() else "fused")
    assert md.hypergradient(*p.args(), epochs=2, step="fused").stats["step"] == "fused"
    assert md.hypergradient(*p.args(), epochs=2, step="generic").stats["step"] == "generic"
    with pytest.raises(ValueError, match="step='fused' needs an nn.Sequential"):
        md.hypergradient(*p.args(), epochs=2, step="fused", loss_fn=torch.nn.functional.mse_loss)
    with pytest.raises(ValueError, match="unknown step 'fast'"):
        md.hypergradient(*p.args(), epochs=2, step="fast")


@pytest.mark.parametrize("method, momentum", [("replay", 0.0), ("checkpoint", 0.9), ("reversible", 0.9)])
def test_batched_sweep_equals_separate_hypergradients(method, momentum):
    """B models, each with its own synthetic data, learning rates and real batch, in one sweep."""
    from memdistill.engine.hypergradient import sweep
    from memdistill.engine.loop import Data

    probs = [make_problem("mlp-3class", labels="soft", s=3, epochs=3, seed=j) for j in range(4)]
    step = FusedMLPStep(probs[0].model)
    theta0 = torch.cat([FusedMLPStep(p.model).flatten() for p in probs])
    stack = lambda name, dim: torch.stack([getattr(p, name) for p in probs], dim)  # noqa: E731
    data = Data(stack("x_syn", 1), stack("y_syn", 1), stack("x_real", 0), stack("y_real", 0))
    _, got = sweep(step, data, stack("lrs", 1).unsqueeze(-1), theta0, momentum, method)
    for j, p in enumerate(probs):
        ref = md.hypergradient(*p.args(), epochs=3, momentum=momentum, method="autograd")
        assert rel(got.loss[j], ref.loss) <= 1e-9 and rel(got.grad_x_syn[:, j], ref.grad_x_syn) <= 1e-9
        assert rel(got.grad_y_syn[:, j], ref.grad_y_syn) <= 1e-9
        assert rel(got.grad_lrs[:, j, 0], ref.grad_lrs) <= 1e-9
        assert rel(got.grad_theta0[j], torch.cat([g.flatten() for g in ref.grad_params.values()])) <= 1e-9


def test_auto_takes_the_cpp_step_only_for_narrow_mlps():
    from memdistill.engine.hypergradient import CPP_MAX_WIDTH, make_step

    narrow, wide = mlp([2, CPP_MAX_WIDTH, 1]), mlp([2, CPP_MAX_WIDTH + 1, 1])
    assert make_step(narrow, None).name == ("cpp" if extension_available() else "fused")
    assert make_step(wide, None).name == "fused"


@pytest.mark.parametrize("sizes, b", [([2, 4, 1], 1), ([1, 1, 1], 4), ([3, 1, 5, 2], 3), ([2, 3], 2)])
@pytest.mark.parametrize("labels", ["int", "soft"])
def test_fused_products_at_unit_sizes(sizes, b, labels):
    """Widths, inputs or a batch of 1 make a contraction of length 1 (a broadcast product)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = mlp(sizes).double()
    generic, fused = GenericStep(model), FusedMLPStep(model)
    theta = generic.flatten() + 0.3 * torch.randn(3, generic.flatten().shape[1], generator=g, dtype=torch.float64)
    w = torch.randn(theta.shape, generator=g, dtype=torch.float64)
    x = torch.randn(b, sizes[0], generator=g, dtype=torch.float64)
    classes = max(sizes[-1], 2)
    if labels == "int":
        y = torch.randint(0, classes, (b,), generator=g)
    elif sizes[-1] == 1:
        y = torch.rand(b, generator=g, dtype=torch.float64)
    else:
        y = torch.rand(b, classes, generator=g, dtype=torch.float64).softmax(-1)
    for got, ref in zip(fused.reverse(theta, x, y, w), generic.reverse(theta, x, y, w)):
        assert (got is None) == (ref is None)
        if got is not None:
            assert got.shape == ref.shape and rel(got, ref) <= 1e-12
    assert rel(fused.value_and_grad(theta, x, y)[1], generic.value_and_grad(theta, x, y)[1]) <= 1e-12


def test_small_steps_run_on_one_thread_and_restore_the_count():
    """Below SERIAL_WORK the step sets torch to one thread for its kernels and restores the
    caller's count afterwards, also when it raises; the numbers do not depend on it."""
    from memdistill.engine.steps.fused import SERIAL_WORK

    generic, fused, theta, w, x, y = batch("mlp-binary", "int", per_model=False)
    seen = []

    def spy(*args):
        seen.append(torch.get_num_threads())
        return FusedMLPStep._reverse(fused, *args)

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        big = theta[:1].expand(SERIAL_WORK // (x.shape[0] * fused.widest) + 1, -1)
        assert fused._serial(theta, x) and not fused._serial(big, x)
        fused._reverse = spy
        got = fused.reverse(theta, x, y, w)
        assert seen == [1] and torch.get_num_threads() == 2
        with pytest.raises(RuntimeError):
            fused.reverse(theta, x[:, :1], y, w)   # wrong input width
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(got[:3], generic.reverse(theta, x, y, w)[:3]):
        assert rel(a, b) <= 1e-12
