"""The batched convolution (memdistill/engine/steps/conv.py) against F.conv2d: values, first and
second derivatives, vmap over B models (grouped and looped rules, per-model and shared inputs),
gradcheck / gradgradcheck, and the generic step that uses it against its loop (float64)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import rel
from torch import nn
from torch.func import grad, vjp, vmap

from memdistill.engine.steps import conv
from memdistill.engine.steps.conv import BatchedConv2d, batched_conv2d, swap_convs
from memdistill.engine.steps.generic import GenericStep
from memdistill.models import convnet, fresh_model, lenet

DT = torch.float64

# name: (C, O, kernel, stride, padding, dilation, groups, bias)
GEOMETRIES = {
    "plain": (2, 3, 3, 1, 0, 1, 1, True),
    "stride-padding": (2, 3, 3, (2, 1), (1, 2), 1, 1, True),
    "dilation-no-bias": (2, 4, (3, 2), 1, 2, (2, 1), 1, False),
    "groups": (4, 6, 3, 2, 1, 1, 2, True),
}


@pytest.fixture(params=["grouped", "looped"])
def rule(request, monkeypatch):
    """The vmap rule: one grouped channels-last conv, or a loop of B convs (every size)."""
    monkeypatch.setattr(conv, "GROUPED_MAX_PIXELS", 1 << 30 if request.param == "grouped" else 0)
    monkeypatch.setattr(conv, "SMALL_MACS", 0)
    return request.param


def tensors(name: str, B: int | None = None, N: int = 3, H: int = 7, W: int = 6, seed: int = 0):
    """x [(B,) N, C, H, W], w [(B,) O, C/g, kh, kw], b [(B,) O] or None and the geometry kwargs."""
    C, O, k, stride, padding, dilation, groups, bias = GEOMETRIES[name]
    kh, kw = nn.modules.utils._pair(k)
    g = torch.Generator().manual_seed(seed)
    lead = () if B is None else (B,)
    x = torch.randn(*lead, N, C, H, W, generator=g, dtype=DT)
    w = torch.randn(*lead, O, C // groups, kh, kw, generator=g, dtype=DT)
    b = torch.randn(*lead, O, generator=g, dtype=DT) if bias else None
    return x, w, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups)


def loss_of(conv2d):
    """A non-quadratic loss of conv2d's output, so every second derivative is non-trivial."""
    def loss(x, w, b, geo):
        return (conv2d(x, w, b, **geo).tanh() ** 2).sum()
    return loss


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_values_first_and_second_derivatives_equal_conv2d(name):
    x, w, b, geo = tensors(name)
    inputs = [t.requires_grad_() for t in (x, w, b) if t is not None]
    v = [torch.randn_like(t) for t in inputs]
    results = []
    for conv2d in (batched_conv2d, F.conv2d):
        y = conv2d(x, w, b, **geo)
        g = torch.autograd.grad(loss_of(conv2d)(x, w, b, geo), inputs, create_graph=True)
        hv = torch.autograd.grad(g, inputs, grad_outputs=v)
        results.append((y, *g, *hv))
    for a, c in zip(*results):
        assert a.shape == c.shape and rel(a, c) <= 1e-13


@pytest.mark.parametrize("name", ["stride-padding", "dilation-no-bias", "groups"])
def test_gradcheck_and_gradgradcheck(name):
    x, w, b, geo = tensors(name, N=2, H=5, W=5)
    args = tuple(t.requires_grad_() for t in (x, w, b) if t is not None)
    fn = (lambda x, w, b: batched_conv2d(x, w, b, **geo)) if b is not None else \
        (lambda x, w: batched_conv2d(x, w, None, **geo))
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def reverse_over_reverse(conv2d, geo):
    """(∇ loss, vjp of ∇ loss along v) w.r.t. (x, w[, b]): the double backward of GenericStep.reverse."""
    def products(v, x, w, b=None):
        params = (x, w) if b is None else (x, w, b)
        loss = lambda *p: loss_of(conv2d)(*p[:2], p[2] if len(p) == 3 else None, geo)  # noqa: E731
        gradient, pullback = vjp(grad(loss, argnums=tuple(range(len(params)))), *params)
        return gradient, pullback(v)
    return products


@pytest.mark.parametrize("batched", ["x and w", "w only (shared x)", "x only (shared w)"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_vmap_over_models_equals_vmap_of_conv2d(name, batched, rule):
    B = 3
    xb, wb, bb, geo = tensors(name, B=B)
    x0, w0, b0, _ = tensors(name, seed=1)
    x = x0 if batched == "w only (shared x)" else xb
    w, b = (w0, b0) if batched == "x only (shared w)" else (wb, bb)
    params = (x, w) if b is None else (x, w, b)
    dims = tuple(0 if t.dim() in (5, 2) else None for t in params)  # x and w are 5-d, b is 2-d when batched
    g = torch.Generator().manual_seed(2)
    v = tuple(torch.randn(B, *(t[0] if d == 0 else t).shape, generator=g, dtype=DT) for t, d in zip(params, dims))
    got = vmap(reverse_over_reverse(batched_conv2d, geo), in_dims=(0, *dims))(v, *params)
    want = vmap(reverse_over_reverse(F.conv2d, geo), in_dims=(0, *dims))(v, *params)
    flat_got, flat_want = torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)
    assert len(flat_got) == len(flat_want) == 2 * len(params)
    for a, c in zip(flat_got, flat_want):
        assert a.shape == c.shape and rel(a, c) <= 1e-13


def test_swap_keeps_parameter_names_and_skips_what_it_cannot_run():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding="same"),
                          nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    twin = swap_convs(model)
    assert [type(m) for m in twin] == [BatchedConv2d, nn.Conv2d, nn.Conv2d]
    assert [k for k, _ in twin.named_parameters()] == [k for k, _ in model.named_parameters()]
    assert type(model[0]) is nn.Conv2d  # the caller's module is untouched
    x = torch.randn(2, 1, 5, 5)
    torch.testing.assert_close(twin(x), model(x), rtol=1e-6, atol=1e-6)
    plain = nn.Sequential(nn.Conv1d(2, 2, 1), nn.Linear(2, 2))
    assert swap_convs(plain) is plain
    with pytest.raises(ValueError, match=r"batched_conv2d: x must be \[N, C, H, W\].*\[1, 5, 5\]"):
        batched_conv2d(torch.randn(1, 5, 5), torch.randn(2, 1, 3, 3))


CONV_MODELS = {
    "lenet": (lambda seed: fresh_model(lenet((1, 8, 8), 3), seed, DT), (1, 8, 8), 3),
    "convnet-instance-depth2": (lambda seed: fresh_model(convnet((2, 8, 8), 3, depth=2, width=8, norm="instance"),
                                                         seed, DT), (2, 8, 8), 3),
}


@pytest.mark.parametrize("per_model", [True, False])
@pytest.mark.parametrize("labels", ["int", "soft"])
@pytest.mark.parametrize("model", list(CONV_MODELS))
def test_generic_step_with_batched_convs_equals_the_loop(model, labels, per_model, rule):
    build, in_shape, classes = CONV_MODELS[model]
    net = build(0)
    B, b = 3, 4
    g = torch.Generator().manual_seed(1)
    fast = GenericStep(net, per_model=per_model)
    loop = GenericStep(net, batched=False, per_model=per_model)
    assert any(isinstance(m, BatchedConv2d) for m in fast.functional_model.modules())
    assert not any(isinstance(m, BatchedConv2d) for m in GenericStep(net, second_order="forward")
                   .functional_model.modules())
    theta = torch.cat([fast.flatten(build(seed)) for seed in range(B)])
    w = torch.randn(theta.shape, generator=g, dtype=DT)
    lead = (B, b) if per_model else (b,)
    x = torch.randn(*lead, *in_shape, generator=g, dtype=DT)
    y = (torch.randint(0, classes, lead, generator=g) if labels == "int"
         else torch.rand(*lead, classes, generator=g, dtype=DT).softmax(-1))
    assert rel(fast.loss(theta, x, y), loop.loss(theta, x, y)) <= 1e-12
    for a, c in zip(fast.value_and_grad(theta, x, y), loop.value_and_grad(theta, x, y)):
        assert a.shape == c.shape and rel(a, c) <= 1e-12
    got, want = fast.reverse(theta, x, y, w), loop.reverse(theta, x, y, w)
    assert (got[3] is None) == (want[3] is None) == (labels == "int")
    for a, c in zip(got, want):
        if c is not None:
            assert a.shape == c.shape and rel(a, c) <= 1e-12
    assert fast.batched and fast.why.startswith("vmap"), fast.why


def test_small_convs_keep_vmaps_own_rule(monkeypatch):
    calls = []
    apply = conv._Conv.apply
    monkeypatch.setattr(conv._Conv, "apply", lambda *args: calls.append(1) or apply(*args))
    layer = BatchedConv2d(nn.Conv2d(1, 2, 3, padding=1).double())
    x = torch.randn(2, 1, 4, 4, dtype=DT)                  # 2·4·4 pixels · 18 weights: far below SMALL_MACS
    layer(x)
    assert calls == []
    monkeypatch.setattr(conv, "SMALL_MACS", 2 * 4 * 4 * 18 - 1)
    layer(x)
    assert calls == [1]
