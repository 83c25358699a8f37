"""An exactness oracle written in the tests alone.

``method="autograd"`` shares GenericStep (flattening, functional_call, buffers, the default loss,
the ``k % s`` order) with the methods it checks. Here the reference is independent of all of it:
a plain loop of torch.optim.SGD-style momentum steps on real nn.Modules, every parameter its own
tensor, the losses written out below, autograd through the whole loop (create_graph=True). The
loop itself is checked against torch.optim.SGD, so the convention (v0 = 0, v = γ v + g,
θ = θ − η v, no dampening) is torch's, not ours.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

import memdistill as md

DTYPE = torch.float64


# ---------------------------------------------------------------- losses, written out


def bce(out: Tensor, y: Tensor) -> Tensor:
    """mean over b of log(1 + e^z) − y z, out [b, 1], y [b] (0/1 ids or float targets)."""
    z, y = out.squeeze(-1), y.to(out.dtype)
    return (z.clamp(min=0) - z * y + torch.log1p(torch.exp(-z.abs()))).mean()


def cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    """−mean log softmax(out)[y] for int ids y [b]; −mean Σ_c y_c log softmax(out)_c for y [b, C]."""
    log_p = out - out.logsumexp(-1, keepdim=True)
    if y.is_floating_point():
        return -(y * log_p).sum(-1).mean()
    return -log_p.gather(1, y[:, None]).mean()


def loss_for(out_features: int):
    return bce if out_features == 1 else cross_entropy


# ---------------------------------------------------------------- real modules


class ConvHead(nn.Module):
    """Conv2d → tanh → Linear: inputs [1, 4, 4]."""

    def __init__(self, classes: int):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.head = nn.Linear(2 * 4 * 4, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.conv(x)).flatten(1))


class ConvBatchNorm(nn.Module):
    """Conv2d (no bias: batch norm removes it) → BatchNorm2d in train mode → tanh → avg-pool → Linear."""

    def __init__(self, classes: int, side: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(2)
        self.head = nn.Linear(2 * (side // 2) ** 2, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.norm(self.conv(x)))
        return self.head(nn.functional.avg_pool2d(h, 2).flatten(1))


def plain_mlp(classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, classes))


ARCHS = {
    "conv": (ConvHead, (1, 4, 4)),
    "conv-bn": (ConvBatchNorm, (1, 4, 4)),
    "mlp": (plain_mlp, (2,)),
}


def problem(arch: str, classes: int, labels: str, *, s: int = 3, b: int = 4, epochs: int = 3, seed: int = 0):
    """(model, x_syn, y_syn, lrs, x_real, y_real) in float64; labels "int" or "soft"."""
    build, in_shape = ARCHS[arch]
    torch.manual_seed(seed)
    model = build(1 if classes == 2 else classes).to(DTYPE)
    g = torch.Generator().manual_seed(seed)
    x_syn = torch.randn(s, b, *in_shape, generator=g, dtype=DTYPE)
    x_real = torch.randn(12, *in_shape, generator=g, dtype=DTYPE)

    def targets(*lead: int) -> Tensor:
        if labels == "int":
            return torch.randint(0, classes, lead, generator=g)
        if classes == 2:
            return torch.rand(*lead, generator=g, dtype=DTYPE)
        return torch.rand(*lead, classes, generator=g, dtype=DTYPE).softmax(-1)

    lrs = 0.05 + 0.1 * torch.rand(s * epochs, generator=g, dtype=DTYPE)
    return model, x_syn, targets(s, b), lrs, x_real, targets(12)


# ---------------------------------------------------------------- the oracle


def unroll(model, x_syn, y_syn, lrs, x_real, y_real, *, epochs, momentum, loss):
    """Autograd through n = s·epochs momentum-SGD steps; returns (L, θ_n, {name: ∂L/∂·})."""
    net = copy.deepcopy(model)  # a train-mode batch norm writes its running statistics: keep the caller's
    names = [k for k, _ in net.named_parameters()]
    theta0 = [p.detach().clone().requires_grad_() for p in net.parameters()]
    buffers = dict(net.named_buffers())
    xs, lr = x_syn.detach().clone().requires_grad_(), lrs.detach().clone().requires_grad_()
    ys = y_syn.detach().clone().requires_grad_(y_syn.is_floating_point())

    def forward(theta, x):
        return functional_call(net, {**dict(zip(names, theta)), **buffers}, (x,))

    theta, v, s = theta0, [torch.zeros_like(t) for t in theta0], x_syn.shape[0]
    for k in range(s * epochs):
        g = torch.autograd.grad(loss(forward(theta, xs[k % s]), ys[k % s]), theta, create_graph=True)
        v = [momentum * vj + gj for vj, gj in zip(v, g)]
        theta = [t - lr[k] * vj for t, vj in zip(theta, v)]
    outer = loss(forward(theta, x_real), y_real)
    wrt = {"x_syn": xs, "lrs": lr, **({"y_syn": ys} if ys.requires_grad else {}), **dict(zip(names, theta0))}
    grads = torch.autograd.grad(outer, list(wrt.values()))
    return outer.detach(), [t.detach() for t in theta], dict(zip(wrt, grads))


def torch_sgd(model, x_syn, y_syn, lrs, *, epochs, momentum, loss):
    """θ_n of torch.optim.SGD itself (the learning rate set before each step)."""
    net = copy.deepcopy(model)
    optimiser = torch.optim.SGD(net.parameters(), lr=1.0, momentum=momentum)
    s = x_syn.shape[0]
    for k in range(s * epochs):
        optimiser.param_groups[0]["lr"] = float(lrs[k])
        optimiser.zero_grad()
        loss(net(x_syn[k % s]), y_syn[k % s]).backward()
        optimiser.step()
    return [p.detach() for p in net.parameters()]


def rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm())


VARIANTS = [("autograd", None), ("replay", None), ("checkpoint", None), ("checkpoint", 2), ("checkpoint", 1),
            ("reversible", None)]
CASES = [  # arch, classes, labels, momentum, step
    ("conv", 3, "int", 0.0, "auto"),
    ("conv", 3, "soft", 0.99, "auto"),
    ("conv-bn", 2, "int", 0.9, "auto"),
    ("conv-bn", 2, "soft", 0.99, "auto"),
    ("conv-bn", 3, "soft", 0.99, "auto"),
    ("mlp", 3, "soft", 0.99, "auto"),
    ("mlp", 3, "soft", 0.99, "generic"),
    ("mlp", 2, "int", 0.0, "auto"),
]


@pytest.mark.parametrize("arch, classes, labels, momentum, step", CASES)
def test_every_method_equals_the_hand_written_unroll(arch, classes, labels, momentum, step):
    model, x_syn, y_syn, lrs, x_real, y_real = problem(arch, classes, labels)
    before = copy.deepcopy(model.state_dict())
    loss = loss_for(1 if classes == 2 else classes)
    outer, theta_n, ref = unroll(model, x_syn, y_syn, lrs, x_real, y_real, epochs=3, momentum=momentum, loss=loss)
    for ours, torchs in zip(theta_n, torch_sgd(model, x_syn, y_syn, lrs, epochs=3, momentum=momentum, loss=loss)):
        assert rel(ours, torchs) <= 1e-12  # the oracle's loop is torch.optim.SGD's
    assert all(float(g.abs().max()) > 0 for g in ref.values())  # every gradient is a real check
    names = [k for k, _ in model.named_parameters()]
    for method, snapshots in VARIANTS:
        if method == "reversible" and momentum == 0:
            continue
        hg = md.hypergradient(model, x_syn, y_syn, lrs, x_real, y_real, epochs=3, momentum=momentum,
                              method=method, snapshots=snapshots, step=step)
        got = {"x_syn": hg.grad_x_syn, "lrs": hg.grad_lrs, **({"y_syn": hg.grad_y_syn} if "y_syn" in ref else {}),
               **hg.grad_params}
        assert list(got) == list(ref) and list(hg.grad_params) == names
        assert rel(hg.loss, outer) <= 1e-9, method
        for name, expected in ref.items():
            assert got[name].shape == expected.shape, (method, name)
            assert rel(got[name], expected) <= 1e-9, (method, snapshots, name, rel(got[name], expected))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the caller's module is left alone


def test_the_oracle_is_not_blind():
    """A wrong convention (dampened momentum, or batch k // s instead of k % s) moves the answer far
    beyond 1e-9: the comparison above can fail."""
    model, x_syn, y_syn, lrs, x_real, y_real = problem("conv-bn", 3, "soft")
    hg = md.hypergradient(model, x_syn, y_syn, lrs, x_real, y_real, epochs=3, momentum=0.9)
    _, _, right = unroll(model, x_syn, y_syn, lrs, x_real, y_real, epochs=3, momentum=0.9, loss=cross_entropy)
    _, _, wrong = unroll(model, x_syn, y_syn, lrs, x_real, y_real, epochs=3, momentum=0.8, loss=cross_entropy)
    permuted = x_syn[[1, 2, 0]]
    _, _, shifted = unroll(model, permuted, y_syn[[1, 2, 0]], lrs, x_real, y_real, epochs=3, momentum=0.9,
                           loss=cross_entropy)
    assert rel(hg.grad_x_syn, right["x_syn"]) <= 1e-9
    assert rel(hg.grad_lrs, wrong["lrs"]) > 1e-3
    assert rel(hg.grad_lrs, shifted["lrs"]) > 1e-3


# ---------------------------------------------------------------- gradcheck against finite differences


@pytest.mark.parametrize("method, momentum", [("checkpoint", 0.9), ("reversible", 0.99)])
def test_gradcheck_of_the_unrolled_loss(method, momentum):
    """Finite differences of the forward loss agree with grad_x_syn, grad_y_syn and grad_lrs."""
    model, x_syn, y_syn, lrs, x_real, y_real = problem("conv-bn", 2, "soft", s=2, b=3, epochs=2)

    def loss(x, y, eta):
        return md.unrolled_loss(model, x, y, eta, x_real, y_real, epochs=2, momentum=momentum, method=method,
                                snapshots=2 if method == "checkpoint" else None)

    inputs = tuple(t.clone().requires_grad_() for t in (x_syn, y_syn, lrs))
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


class _ParamsLoss(torch.autograd.Function):
    """L(θ0) through md.hypergradient; backward returns its grad_params."""

    @staticmethod
    def forward(ctx, template, args, kwargs, *params):  # type: ignore[override]
        model = copy.deepcopy(template)
        with torch.no_grad():
            for p, value in zip(model.parameters(), params):
                p.copy_(value)
        hg = md.hypergradient(model, *args, **kwargs)
        ctx.grads = tuple(hg.grad_params.values())
        return hg.loss.clone()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        return (None, None, None, *(grad_out * g for g in ctx.grads))


@pytest.mark.parametrize("arch, method, momentum", [("conv-bn", "checkpoint", 0.9), ("conv", "replay", 0.0)])
def test_gradcheck_of_grad_params(arch, method, momentum):
    model, *args = problem(arch, 3, "soft", s=2, b=3, epochs=2)
    kwargs = dict(epochs=2, momentum=momentum, method=method)
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())
    assert torch.autograd.gradcheck(lambda *ps: _ParamsLoss.apply(model, args, kwargs, *ps), params,
                                    eps=1e-6, atol=1e-6, rtol=1e-4)
