"""Every method against autograd through the whole unroll (float64, ≤ 1e-9 relative)."""
from __future__ import annotations

import pytest
import torch
from conftest import make_problem, rel

import memdistill as md
from memdistill.engine.steps.extension import extension_available

# method, snapshots, momentum: one shared table of variants drives every exactness check.
VARIANTS = [
    ("replay", None, 0.0), ("replay", None, 0.9),
    ("checkpoint", None, 0.0), ("checkpoint", None, 0.9),   # periodic √n
    ("checkpoint", 2, 0.0), ("checkpoint", 3, 0.9),         # binomial
    ("checkpoint", 1, 0.5),
    ("reversible", None, 0.9), ("reversible", None, 0.5),
]
CASES = [("mlp-binary", "int"), ("mlp-binary", "soft"), ("mlp-3class", "int"), ("mlp-3class", "soft"),
         ("conv-3class", "int")]


def expected_step(model: str, step: str) -> str:
    if not model.startswith("mlp") or step == "generic":
        return "generic"
    return "cpp" if step == "auto" and extension_available() else "fused"


def assert_matches(hg, ref, tol):
    assert rel(hg.loss, ref.loss) <= tol
    assert rel(hg.grad_x_syn, ref.grad_x_syn) <= tol
    assert rel(hg.grad_lrs, ref.grad_lrs) <= tol
    assert hg.grad_params.keys() == ref.grad_params.keys()
    for name in ref.grad_params:
        assert rel(hg.grad_params[name], ref.grad_params[name]) <= tol, name
    assert (hg.grad_y_syn is None) == (ref.grad_y_syn is None)
    if ref.grad_y_syn is not None:
        assert rel(hg.grad_y_syn, ref.grad_y_syn) <= tol


@pytest.mark.parametrize("step", ["auto", "fused", "generic"])
@pytest.mark.parametrize("model, labels", CASES)
@pytest.mark.parametrize("method, snapshots, momentum", VARIANTS)
def test_equals_autograd_float64(model, labels, method, snapshots, momentum, step):
    p = make_problem(model, labels=labels, s=5, epochs=3)   # n = 15: odd, several epochs
    kw = dict(epochs=p.epochs, momentum=momentum)
    if step == "fused" and not model.startswith("mlp"):
        with pytest.raises(ValueError, match="step='fused' needs an nn.Sequential"):
            md.hypergradient(*p.args(), method=method, snapshots=snapshots, step=step, **kw)
        return
    ref = md.hypergradient(*p.args(), method="autograd", **kw)
    hg = md.hypergradient(*p.args(), method=method, snapshots=snapshots, step=step, **kw)
    assert_matches(hg, ref, 1e-9)
    assert ref.grad_x_syn.abs().sum() > 0 and ref.grad_lrs.abs().sum() > 0  # a non-trivial check
    assert hg.stats["method"] == method and hg.stats["steps"] == 15 and ref.stats["step"] == "generic"
    assert hg.stats["step"] == expected_step(model, step)


@pytest.mark.parametrize("method, snapshots, momentum", VARIANTS)
def test_equals_autograd_float32(method, snapshots, momentum):
    p = make_problem("mlp-3class", dtype=torch.float32, s=4, epochs=2)
    kw = dict(epochs=p.epochs, momentum=momentum)
    ref = md.hypergradient(*p.args(), method="autograd", **kw)
    hg = md.hypergradient(*p.args(), method=method, snapshots=snapshots, **kw)
    assert hg.grad_x_syn.dtype == torch.float32 and hg.stats["step"] == expected_step("mlp", "auto")
    assert_matches(hg, ref, 2e-5)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_replay_and_checkpoint_give_identical_bits(momentum):
    p = make_problem("mlp-binary", s=7, epochs=3)
    runs = [md.hypergradient(*p.args(), epochs=3, momentum=momentum, method=m, snapshots=c)
            for m, c in [("replay", None), ("checkpoint", None), ("checkpoint", 1), ("checkpoint", 4)]]
    for hg in runs[1:]:
        assert torch.equal(hg.loss, runs[0].loss)
        assert torch.equal(hg.grad_x_syn, runs[0].grad_x_syn)
        assert torch.equal(hg.grad_lrs, runs[0].grad_lrs)


def test_frozen_parameters_and_buffers_are_constants():
    p = make_problem("mlp-binary", s=3, epochs=2)
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(2), *p.model).double().eval()
    model[0].running_mean.fill_(0.3)
    model[1].weight.requires_grad_(False)
    args = (model, *p.args()[1:])
    ref = md.hypergradient(*args, epochs=2, method="autograd")
    hg = md.hypergradient(*args, epochs=2, method="checkpoint", snapshots=2)
    assert "1.weight" not in hg.grad_params and "1.bias" in hg.grad_params
    assert_matches(hg, ref, 1e-9)


def test_batchnorm_in_training_mode_uses_batch_statistics_exactly():
    p = make_problem("mlp-binary", s=3, epochs=2)
    model = torch.nn.Sequential(torch.nn.BatchNorm1d(2), *p.model).double().train()
    before = model[0].running_mean.clone()
    ref = md.hypergradient(model, *p.args()[1:], epochs=2, momentum=0.9, method="autograd")
    hg = md.hypergradient(model, *p.args()[1:], epochs=2, method="reversible", momentum=0.9)
    assert torch.equal(model[0].running_mean, before)
    assert rel(hg.grad_x_syn, ref.grad_x_syn) <= 1e-9


@pytest.mark.parametrize("method", ["autograd", "replay", "checkpoint", "reversible"])
def test_caller_inputs_are_not_modified(method):
    p = make_problem("mlp-3class", labels="soft", s=3, epochs=2)
    before = [t.clone() for t in (*p.model.state_dict().values(), p.x_syn, p.y_syn, p.lrs, p.x_real, p.y_real)]
    md.hypergradient(*p.args(), epochs=2, momentum=0.9, method=method)
    after = [*p.model.state_dict().values(), p.x_syn, p.y_syn, p.lrs, p.x_real, p.y_real]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(q.grad is None for q in p.model.parameters())


def test_custom_loss_fn():
    p = make_problem("mlp-3class", labels="soft", s=3, epochs=2)
    def mse(out, y):
        return ((out.softmax(-1) - y) ** 2).sum(-1).mean()
    ref = md.hypergradient(*p.args(), epochs=2, method="autograd", loss_fn=mse)
    hg = md.hypergradient(*p.args(), epochs=2, method="checkpoint", loss_fn=mse)
    assert_matches(hg, ref, 1e-9)
    default = md.hypergradient(*p.args(), epochs=2, method="checkpoint")
    assert not torch.allclose(default.grad_x_syn, hg.grad_x_syn)


@pytest.mark.parametrize("method, momentum", [("checkpoint", 0.0), ("replay", 0.9), ("reversible", 0.9)])
def test_gradcheck_of_the_unrolled_loss(method, momentum):
    p = make_problem("mlp-binary", s=2, b=3, epochs=2, n_real=6)
    x_syn, lrs = p.x_syn.clone().requires_grad_(), p.lrs.clone().requires_grad_()

    def loss(x, lr):
        return md.unrolled_loss(p.model, x, p.y_syn, lr, p.x_real, p.y_real, epochs=2, momentum=momentum, method=method)

    assert torch.autograd.gradcheck(loss, (x_syn, lrs), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_unrolled_loss_backward_fills_grads():
    p = make_problem("mlp-binary", labels="soft", s=3, epochs=2)
    x_syn, y_syn, lrs = (t.clone().requires_grad_() for t in (p.x_syn, p.y_syn, p.lrs))
    (2 * md.unrolled_loss(p.model, x_syn, y_syn, lrs, p.x_real, p.y_real, epochs=2)).backward()
    ref = md.hypergradient(*p.args(), epochs=2, method="autograd")
    assert rel(x_syn.grad, 2 * ref.grad_x_syn) <= 1e-9
    assert rel(y_syn.grad, 2 * ref.grad_y_syn) <= 1e-9
    assert rel(lrs.grad, 2 * ref.grad_lrs) <= 1e-9


def test_forward_step_counts():
    p = make_problem("mlp-binary", s=5, epochs=3)
    count = {m: md.hypergradient(*p.args(), epochs=3, momentum=0.9, method=m, snapshots=c).stats["forward_steps"]
             for m, c in [("autograd", None), ("replay", None), ("checkpoint", None), ("reversible", None)]}
    assert count["autograd"] == count["replay"] == 15
    assert 15 < count["checkpoint"] < 30 and count["reversible"] == 30


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("method", ["checkpoint", "reversible"])
def test_cuda_matches_cpu(method):
    p = make_problem("mlp-binary", s=3, epochs=2)
    cuda = [t.cuda() if isinstance(t, torch.Tensor) else t.cuda() for t in p.args()]
    hg = md.hypergradient(*cuda, epochs=2, momentum=0.9, method=method)
    ref = md.hypergradient(*p.args(), epochs=2, momentum=0.9, method="autograd")
    assert hg.grad_x_syn.is_cuda and rel(hg.grad_x_syn.cpu(), ref.grad_x_syn) <= 1e-9
