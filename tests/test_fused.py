"""The fused MLP step against the generic (autograd) step, product by product."""
from __future__ import annotations

import pytest
import torch
from conftest import MODELS, make_problem, mlp, rel
from torch import Tensor, nn

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


def rows_problem(sizes: list[int], b: int, dtype: torch.dtype, labels: str, per_model: bool, B: int = 7):
    """θ, w [B, P] and a batch (shared [b, in] or [B, b, in]) for mlp(sizes) in ``dtype``."""
    g = torch.Generator().manual_seed(sum(sizes) + b)
    torch.manual_seed(0)
    step = FusedMLPStep(mlp(sizes).to(dtype))
    theta = step.flatten() + 0.5 * torch.randn(B, step.flatten().shape[1], generator=g, dtype=dtype)
    w = torch.randn(theta.shape, generator=g, dtype=dtype)
    lead = (B, b) if per_model else (b,)
    x = 2 * torch.randn(*lead, sizes[0], generator=g, dtype=dtype)
    if labels == "int":
        y = torch.randint(0, max(sizes[-1], 2), lead, generator=g)
    elif sizes[-1] == 1:
        y = torch.rand(lead, generator=g, dtype=dtype)
    else:
        y = torch.rand(*lead, sizes[-1], generator=g, dtype=dtype).softmax(-1)
    return step, theta, w, x, y


def row_products(step: FusedMLPStep, theta, w, x, y, rows: slice, per_model: bool) -> list[list[Tensor]]:
    """For each row of θ[rows] computed in one call: [loss, grad, g, Hw] and, with one batch per
    model, (∂g/∂x)ᵀw and (∂g/∂y)ᵀw (a shared batch's are sums over the rows); ``step.grad`` is
    checked to equal value_and_grad's gradient on the way."""
    x, y = (x[rows], y[rows]) if per_model else (x, y)
    loss, grad = step.value_and_grad(theta[rows], x, y)
    assert torch.equal(step.grad(theta[rows], x, y), grad), "grad without the losses differs from value_and_grad's"
    g, hw, dx, dy = step.reverse(theta[rows], x, y, w[rows])
    out = [loss, grad, g, hw] + ([dx] + ([] if dy is None else [dy]) if per_model else [])
    return [[t[j] for t in out] for j in range(len(loss))]


ROW_SHAPES = [([2, 10, 10, 10, 1], 8), ([2, 10, 10, 10, 1], 64), ([2, 10, 1], 4), ([2, 1], 64), ([40, 1], 10),
              ([1, 24, 3], 40), ([1, 20, 20, 1], 1), ([2, 7, 3], 5)]


def assert_rows_equal_rows_alone(problem: tuple, per_model: bool) -> None:
    """Row j of θ[start:start + B] has the bits of row j computed alone, for B = 2, 3, 6, 7."""
    alone = [row_products(*problem, slice(j, j + 1), per_model)[0] for j in range(7)]
    for start, B in [(0, 2), (5, 2), (1, 3), (0, 6), (1, 6), (0, 7)]:
        for j, got in enumerate(row_products(*problem, slice(start, start + B), per_model), start):
            for name, a, ref in zip(["loss", "grad", "g", "Hw", "dx", "dy"], got, alone[j]):
                assert torch.equal(a, ref), f"row {j} of B = {B} (from {start}): {name} differs from the row alone"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("labels", ["int", "soft"])
@pytest.mark.parametrize("per_model", [False, True], ids=["shared", "per-model"])
@pytest.mark.parametrize("sizes, b", ROW_SHAPES, ids=[f"{'-'.join(map(str, s))},b={b}" for s, b in ROW_SHAPES])
def test_each_row_equals_the_row_computed_alone(sizes, b, dtype, labels, per_model):
    """Batched restarts equal separate runs: each product of a B-row step, row by row, has the
    bits of that row computed alone (B = 1) and among other rows; the shapes reach torch's
    vectorised-loop tails, its matrix-vector paths (a width, input or batch of 1) and MKL sizes."""
    assert_rows_equal_rows_alone(rows_problem(sizes, b, dtype, labels, per_model), per_model)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_rows_do_not_depend_on_the_thread_switch(dtype):
    """B·b·widest crosses SERIAL_WORK between B = 1 and B = 6: rows alone run on one thread,
    six or seven rows on two (a parallel elementwise loop splits at other positions)."""
    step, theta, w, x, y = problem = rows_problem([2, 10, 10, 10, 1], 128, dtype, "soft", per_model=True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert step._serial(theta[:1], x[0]) and not step._serial(theta[:6], x[0])
        assert_rows_equal_rows_alone(problem, per_model=True)
    finally:
        torch.set_num_threads(threads)


def test_the_fused_sweep_runs_in_inference_mode_and_hands_out_normal_tensors(monkeypatch):
    """The analytic step's products run under torch.inference_mode (no autograd bookkeeping);
    what the sweep returns is made of normal tensors, which autograd and in-place ops accept."""
    seen = []
    reverse = FusedMLPStep._reverse
    monkeypatch.setattr(FusedMLPStep, "_reverse",
                        lambda self, *a: (seen.append(torch.is_inference_mode_enabled()), reverse(self, *a))[1])
    model, x_syn, y_syn, lrs, x, y = make_problem("mlp-binary", epochs=2).args()
    x_syn, lrs = x_syn.requires_grad_(), lrs.requires_grad_()
    loss = md.unrolled_loss(model, x_syn, y_syn, lrs, x, y, epochs=2, step="fused")
    loss.backward()
    assert seen and all(seen)
    assert not x_syn.grad.is_inference() and not lrs.grad.is_inference()
    hg = md.hypergradient(model, x_syn.detach(), y_syn, lrs.detach(), x, y, epochs=2, step="fused")
    assert not any(t.is_inference() for t in (hg.loss, hg.grad_x_syn, hg.grad_lrs, *hg.grad_params.values()))
    assert not torch.is_inference_mode_enabled()   # the mode ends with the sweep


def test_gathered_blocks_are_the_layers_matrices():
    """The blocks each call gathers from θ (and w) are [W, b; 0, 1] (the first with `in` zero
    columns, the last without [0, 1]) and [W, 0, b; Ẇ, W, ḃ; 0, 0, 1] of every layer."""
    torch.manual_seed(0)
    step = FusedMLPStep(mlp([3, 4, 2, 5]).double())
    B, P = 2, step.flatten().shape[1]
    theta, w = torch.randn(B, P, dtype=torch.float64), torch.randn(B, P, dtype=torch.float64)
    ends = torch.tensor([0.0, 1.0], dtype=torch.float64).repeat(B, 1)
    grad_fetch, _, pair_fetch, _ = step.indices[torch.device("cpu")]
    gathered = torch.cat([theta, ends], 1)[:, grad_fetch]
    pairs = torch.cat([theta, w, ends], 1)[:, pair_fetch]
    zeros, ones = (lambda *s: torch.zeros(B, *s, dtype=torch.float64)), (lambda *s: torch.ones(B, *s, dtype=torch.float64))
    for l, ((W, b), (Wd, bd)) in enumerate(zip(step.params(theta), step.params(w))):
        (o, i), last = W.shape[1:], l == len(step.layers) - 1
        rows = [W] + [zeros(o, i)] * (l == 0) + [b]
        G = torch.cat(rows, 2)
        G = G if last else torch.cat([G, torch.cat([zeros(1, G.shape[2] - 1), ones(1, 1)], 2)], 1)
        o_, i_, R, K, at, _ = step.grad_layout[l]
        assert (o_, i_, R, K) == (o, i, *G.shape[1:])
        assert torch.equal(gathered[:, at:at + R * K].view(B, R, K), G)
        F = torch.cat([torch.cat([W, zeros(o, i), b], 2), torch.cat([Wd, W, bd], 2),
                       torch.cat([zeros(1, 2 * i), ones(1, 1)], 2)], 1)
        at = step.pair_layout[l][2]
        assert torch.equal(pairs[:, at:at + F[0].numel()].view(B, *F.shape[1:]), F)


def test_held_constants_follow_the_call_and_serve_outside_inference_mode():
    """The step keeps the constant parts of its blocks for the last (B, b, dtype, device): calls
    that change them, in and out of inference mode, give what a fresh step gives."""
    problems = [rows_problem([2, 5, 1], b, dtype, "soft", per_model) for b, dtype, per_model in
                [(4, torch.float64, True), (3, torch.float32, False), (4, torch.float64, True)]]
    step = FusedMLPStep(mlp([2, 5, 1]))
    for k, (fresh, theta, w, x, y) in enumerate(problems):
        B = 3 + k
        args = (theta[:B], x[:B] if x.dim() == 3 else x, y[:B] if x.dim() == 3 else y)
        with torch.inference_mode(k % 2 == 0):
            got = step.reverse(*args, w[:B]) + (step.grad(*args),)
        ref = fresh.reverse(*args, w[:B]) + (fresh.grad(*args),)
        for a, b in zip(got, ref):
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b))
        assert not step._constants[1].is_inference() and step._constants[0][:3] == (B, args[1].shape[-2], theta.dtype)


def test_strided_theta_and_direction_give_the_same_bits():
    step, theta, w, x, y = rows_problem([2, 10, 10, 10, 1], 8, torch.float32, "int", per_model=True)
    wide = torch.zeros(theta.shape[0], 2 * theta.shape[1])
    strided_theta, strided_w = wide[:, ::2].copy_(theta), wide[:, 1::2].copy_(w)
    assert not strided_theta.is_contiguous()
    for a, b in zip(step.reverse(strided_theta, x, y, strided_w), step.reverse(theta, x, y, w)):
        assert (a is None and b is None) or torch.equal(a, b)
    assert torch.equal(step.grad(strided_theta, x, y), step.grad(theta, x, y))


@pytest.mark.parametrize("sizes, b", [([2, 10, 10, 10, 1], 8), ([3, 5, 4], 3), ([1, 4, 1], 1)])
@pytest.mark.parametrize("labels", ["int", "soft"])
@pytest.mark.parametrize("per_model", [False, True], ids=["shared", "per-model"])
def test_the_gathered_blocks_agree_with_the_views_of_theta(sizes, b, labels, per_model, monkeypatch):
    """Small steps take the gathered blocks; their products equal the views' (one product per
    term) to rounding, in float64."""
    step, theta, w, x, y = rows_problem(sizes, b, torch.float64, labels, per_model)
    assert step._blocks(x)
    blocks = step.reverse(theta, x, y, w) + step.value_and_grad(theta, x, y)
    monkeypatch.setattr(FusedMLPStep, "_blocks", lambda self, x: False)
    views = step.reverse(theta, x, y, w) + step.value_and_grad(theta, x, y)
    for a, ref in zip(blocks, views):
        assert (a is None) == (ref is None)
        if a is not None:
            assert a.shape == ref.shape and rel(a, ref) <= 1e-12


def test_which_steps_take_the_gathered_blocks():
    """The paper's MLPs on a synthetic batch do; no hidden layer, a layer wider than
    BLOCKS_WIDEST or a batch over BLOCKS_BATCH takes the views of θ, whatever B."""
    from memdistill.engine.steps.fused import BLOCKS_BATCH

    def takes(sizes, b):
        return FusedMLPStep(mlp(sizes))._blocks(torch.zeros(b, sizes[0]))

    assert takes([2, 10, 10, 10, 1], 8) and takes([2, 10, 1], BLOCKS_BATCH) and takes([2, 16, 16, 3], 1)
    assert not takes([2, 1], 8) and not takes([2, 17, 16, 1], 8) and not takes([2, 10, 1], BLOCKS_BATCH + 1)
