"""The C++/CUDA ops of memdistill.engine.steps._C against the pure-PyTorch fused step, opcheck, and the fallback.

The ops are forward-only (no autograd formula is registered: they return the first and second
derivatives themselves), so gradcheck does not apply; their derivatives are checked against
FusedMLPStep, which tests/test_fused.py checks against autograd.
"""
from __future__ import annotations

import pytest
import torch
from conftest import mlp, rel

import memdistill as md
from memdistill.engine import dynamics
from memdistill.engine.steps import extension as ops
from memdistill.engine.steps.fused import FusedMLPStep

needs_ext = pytest.mark.skipif(not ops.extension_available(),
                               reason="memdistill.engine.steps._C not built: MEMDISTILL_BUILD_EXT=1 pip install --no-build-isolation -e .")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"))]

# (sizes, labels, x per model, y per model, B, dtype). B = 9 (float32) and 5 (float64) leave a
# partial group of SIMD lanes in the CPU kernel.
CASES = [
    ([2, 10, 10, 10, 1], "int", False, False, 4, torch.float32),   # the paper's MLP
    ([2, 10, 10, 10, 1], "soft", True, True, 1, torch.float64),
    ([3, 7, 4], "int", True, True, 4, torch.float64),
    ([3, 7, 4], "soft", False, False, 4, torch.float32),
    ([5, 3], "soft", True, False, 4, torch.float64),                 # one layer, multiclass
    ([1, 1], "int", False, True, 1, torch.float64),                  # one unit
    ([4, 9, 2, 6, 3], "int", False, True, 4, torch.float32),
    ([2, 6, 5, 1], "soft", True, False, 5, torch.float64),
    ([3, 5, 2], "soft", False, True, 9, torch.float32),
]
IDS = [f"{'-'.join(map(str, c[0]))}-{c[1]}-x{'B' if c[2] else '1'}-y{'B' if c[3] else '1'}-B{c[4]}-{str(c[5])[6:]}"
       for c in CASES]


def sample(sizes, labels, x_per_model, y_per_model, B, dtype, b=5, seed=0):
    """(reference step, θ [B, P], x, y, w) for B models of `sizes` around one random MLP."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    step = FusedMLPStep(mlp(sizes).to(dtype))
    theta = step.flatten() + 0.3 * torch.randn(B, step.flatten().shape[1], generator=g, dtype=dtype)
    w = torch.randn(theta.shape, generator=g, dtype=dtype)
    x = torch.randn(*(B,) * x_per_model, b, sizes[0], generator=g, dtype=dtype)
    lead, C = (B,) * y_per_model + (b,), sizes[-1]
    if labels == "int":
        y = torch.randint(0, max(C, 2), lead, generator=g)
    elif C == 1:
        y = torch.rand(lead, generator=g, dtype=dtype)
    else:
        y = torch.rand(*lead, C, generator=g, dtype=dtype).softmax(-1)
    return step, theta, x, y, w


def assert_close(got, want, dtype):
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for a, b in zip(got, want):
        assert (a is None) == (b is None)
        if b is not None:
            assert a.shape == b.shape and a.dtype == b.dtype and rel(a.cpu(), b) <= tol


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_ops_equal_pure_pytorch_step(case, device):
    ref, theta, x, y, w = sample(*case)
    step = ops.ExtensionMLPStep(ref.model)
    moved = [t.to(device) for t in (theta, x, y, w)]
    assert_close(step.value_and_grad(*moved[:3]), ref.value_and_grad(theta, x, y), case[-1])
    assert_close(step.reverse(*moved), ref.reverse(theta, x, y, w), case[-1])


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[4]], ids=[IDS[0], IDS[2], IDS[4]])
def test_opcheck(case, device):
    theta, x, y, w = (t.to(device) for t in sample(*case)[1:])
    theta.requires_grad_()  # forward-only: the outputs are constants for autograd
    sizes = case[0]
    torch.library.opcheck(torch.ops.memdistill.mlp_value_and_grad.default, (theta, x, y, sizes))
    torch.library.opcheck(torch.ops.memdistill.mlp_reverse.default, (theta, x, y, w, sizes))
    assert not any(t.requires_grad for t in ops.mlp_reverse(theta, x, y, w, sizes))


@needs_ext
@pytest.mark.parametrize("change, message", [
    (dict(sizes=[2, 10, 1]), r"theta must be \[B, P\] with P = 41"),
    (dict(sizes=[2]), "sizes must be \\[in, h1, ..., out\\]"),
    (dict(sizes=[2, 0, 1]), "sizes must be positive"),
    (dict(theta=lambda t: t.to(torch.float16)), "theta must be float32 or float64"),
    (dict(theta=lambda t: t.t().contiguous().t()), "theta must be contiguous"),
    (dict(x=lambda x: x.float()), "x must have theta's dtype"),
    (dict(x=lambda x: x[:, :1].contiguous()), r"x must be \[b, 3\] \(shared\) or \[4, b, 3\]"),
    (dict(y=lambda y: y.int()), "y must be int64 class ids or float targets"),
    (dict(y=lambda y: y[:3]), r"y must be \[5\] \(shared\) or \[4, 5\]"),
    (dict(y=lambda y: y + 4), "y holds class id"),
    (dict(w=lambda w: w[:2]), "w must have theta's shape"),
])
def test_input_checks(change, message):
    _, theta, x, y, w = sample(*CASES[2][:2], False, False, *CASES[2][4:])
    args = dict(theta=theta, x=x, y=y, w=w, sizes=CASES[2][0])
    args.update({k: v(args[k]) if callable(v) else v for k, v in change.items()})
    with pytest.raises(RuntimeError, match=message):
        torch.ops.memdistill.mlp_reverse(**args)
    if "w" not in change:
        with pytest.raises(RuntimeError, match=message):
            torch.ops.memdistill.mlp_value_and_grad(*(args[k] for k in ("theta", "x", "y", "sizes")))


def test_backend_info_and_fallback(monkeypatch):
    info = ops.backend_info()
    assert info["backend"] == ("cpp" if ops.extension_available() else "python")
    assert "CPU" in info["devices"] or not ops.extension_available()
    assert "MEMDISTILL_BUILD_EXT=1" in info["reason"]
    # Without the extension the wrappers run the pure-PyTorch step and ExtensionMLPStep refuses.
    monkeypatch.setattr(ops, "_C", None)
    assert ops.backend_info()["backend"] == "python" and ops.backend_info()["devices"] == []
    ref, theta, x, y, w = sample(*CASES[3])
    assert_close(ops.mlp_value_and_grad(theta, x, y, CASES[3][0]), ref.value_and_grad(theta, x, y), torch.float32)
    assert_close(ops.mlp_reverse(theta, x, y, w, CASES[3][0]), ref.reverse(theta, x, y, w), torch.float32)
    assert ops.mlp_reverse(theta, x, y.argmax(-1), w, CASES[3][0])[3].shape == (0,)
    with pytest.raises(RuntimeError, match="MEMDISTILL_BUILD_EXT=1"):
        ops.ExtensionMLPStep(ref.model)


def test_a_native_build_is_not_loaded_on_a_cpu_without_its_instruction_sets(tmp_path, monkeypatch):
    """setup.py leaves the building CPU's flags beside a native build; a CPU that lacks one of its
    instruction sets gets no extension (an illegal instruction would kill the process) and a
    reason that says which and what to do."""
    built, cpu = tmp_path / "_C.cpu_flags", tmp_path / "cpuinfo"
    built.write_text("fpu sse2 avx2 avx512f fma ht\n")
    cpu.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\n")
    assert ops.missing_instruction_sets(built, cpu) == ["avx512f"]
    cpu.write_text("flags\t\t: fpu sse2 avx2 avx512f fma\n")      # "ht" is no instruction set
    assert ops.missing_instruction_sets(built, cpu) == []
    assert ops.missing_instruction_sets(tmp_path / "portable", cpu) == []   # no file: a portable build
    assert ops.missing_instruction_sets(built, tmp_path / "no-cpuinfo") == []
    monkeypatch.setattr(ops, "missing_instruction_sets", lambda: ["avx512f"])
    module, reason = ops._load()
    assert module is None and "avx512f" in reason and "MEMDISTILL_PORTABLE=1" in reason


def sgd_case(case, per_row: bool, momentum: float, device: str):
    """The C++ step, and a state, adjoint, rate and batch of `case` on `device` for one SGD step."""
    ref, theta, x, y, w = sample(*case)
    g = torch.Generator().manual_seed(1)
    B, dtype = theta.shape[0], theta.dtype
    lr = (0.05 + torch.rand(B, 1, generator=g, dtype=dtype)) if per_row else torch.tensor(0.1, dtype=dtype)
    v = torch.randn(theta.shape, generator=g, dtype=dtype) if momentum else None
    adj = dynamics.Adjoint(w, torch.randn(theta.shape, generator=g, dtype=dtype) if momentum else None)
    move = lambda t: None if t is None else t.to(device)   # noqa: E731
    state = dynamics.State(move(theta), move(v))
    return (ops.ExtensionMLPStep(ref.model), state, move(x), move(y), move(lr),
            dynamics.Adjoint(move(adj.theta), move(adj.v)))


@needs_ext
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("per_row", [False, True], ids=["one-rate", "rate-per-model"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_sgd_ops_are_the_engine_equations(case, per_row, momentum, device, monkeypatch):
    """mlp_sgd_advance / mlp_sgd_reverse against dynamics.sgd_update and reverse_step composed
    from the step's two products: the same bits, but ∂L/∂η (its own summation order)."""
    step, state, x, y, lr, adj = sgd_case(case, per_row, momentum, device)
    assert step.fused_sgd
    fused = dynamics.State(*step.sgd_advance(state.theta, state.v, x, y, lr, momentum))
    fused_adj, fused_grads = dynamics.reverse_step(step, state, x, y, lr, momentum, adj)
    monkeypatch.setattr(ops.ExtensionMLPStep, "fused_sgd", False)
    composed = dynamics.sgd_update(state, step.grad(state.theta, x, y), lr, momentum)
    composed_adj, composed_grads = dynamics.reverse_step(step, state, x, y, lr, momentum, adj)
    for got, want in [(fused, composed), (fused_adj, composed_adj),
                      (fused_grads[1:], composed_grads[1:])]:
        for a, b in zip(got, want):
            assert (a is None and b is None) or torch.equal(a, b)
    assert fused_grads.lr.shape == lr.shape
    assert_close([fused_grads.lr], [composed_grads.lr], case[-1])


@needs_ext
def test_sgd_ops_opcheck_and_input_checks():
    step, state, x, y, lr, adj = sgd_case(CASES[0], True, 0.9, "cpu")
    sizes = step.widths
    torch.library.opcheck(torch.ops.memdistill.mlp_sgd_advance.default, (state.theta, state.v, x, y, lr, 0.9, sizes))
    torch.library.opcheck(torch.ops.memdistill.mlp_sgd_reverse.default,
                          (state.theta, state.v, x, y, lr, 0.9, adj.theta, adj.v, sizes))
    with pytest.raises(RuntimeError, match=r"lr must be 0-d or \[4, 1\]"):
        torch.ops.memdistill.mlp_sgd_advance(state.theta, state.v, x, y, lr[:2], 0.9, sizes)
    with pytest.raises(RuntimeError, match="v and adj_v must be given together"):
        torch.ops.memdistill.mlp_sgd_reverse(state.theta, state.v, x, y, lr, 0.9, adj.theta, None, sizes)
    with pytest.raises(RuntimeError, match="must have theta's shape"):
        torch.ops.memdistill.mlp_sgd_advance(state.theta, state.v[:2], x, y, lr, 0.9, sizes)
    with pytest.raises(RuntimeError, match="theta's dtype and device"):
        torch.ops.memdistill.mlp_sgd_advance(state.theta, state.v, x, y, lr.double(), 0.9, sizes)


@needs_ext
def test_sweeps_of_the_cpp_step_take_one_op_per_sgd_step(monkeypatch):
    """Every forward and reverse step of a checkpoint sweep on the C++ step is one fused op."""
    calls = {"sgd_advance": 0, "sgd_reverse": 0}
    for name in calls:
        original = getattr(ops.ExtensionMLPStep, name)

        def counted(self, *args, _name=name, _original=original):
            calls[_name] += 1
            return _original(self, *args)
        monkeypatch.setattr(ops.ExtensionMLPStep, name, counted)
    n, model = 12, mlp([2, 10, 1])
    out = md.hypergradient(model, torch.randn(4, 3, 2), torch.randint(0, 2, (4, 3)), torch.full((n,), 0.1),
                           torch.randn(16, 2), torch.randint(0, 2, (16,)), epochs=3, method="checkpoint", momentum=0.9)
    assert out.stats["step"] == "cpp"
    assert calls == {"sgd_advance": out.stats["forward_steps"], "sgd_reverse": n}
