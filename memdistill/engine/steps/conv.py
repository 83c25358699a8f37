"""A 2-D convolution whose ``torch.func.vmap`` over B models runs fast on a CPU.

vmap's own rule for ``conv2d`` with a batched input x [B, N, C, H, W] and batched weights
w [B, O, C/g, kh, kw] runs one grouped convolution (groups B·g) in NCHW, which mkldnn computes
2–5x slower than B separate convolutions. Here the convolution and its two derivatives are three
``torch.autograd.Function`` classes, each with a ``vmap`` rule, and each differentiable through the
others, so torch.func's ``vjp`` of ``grad`` (double backward, the reverse-over-reverse products
of :class:`~memdistill.engine.steps.generic.GenericStep`) stays on them:

- ``_Conv(x, w, b)``        y = x ⋆ w + b                                  [N, O, Ho, Wo]
- ``_ConvInput(gy, w)``     gx = ∂⟨gy, x ⋆ w⟩/∂x (the transposed conv)      [N, C, H, W]
- ``_ConvWeight(x, gy)``    gw = ∂⟨gy, x ⋆ w⟩/∂w                            [O, C/g, kh, kw]

All three are bilinear, and ⟨gy, x ⋆ w⟩ = ⟨conv_input(gy, w), x⟩ = ⟨conv_weight(x, gy), w⟩
gives every derivative of one in terms of the others. A vmap rule with shared weights folds
the B batches into one of B·N images; otherwise it runs the B models as one grouped conv on
[N, B·C, H, W] in ``torch.channels_last`` memory (fast, but two layout copies), or for large
inputs as a loop of B plain convs (see ``GROUPED_MAX_PIXELS``). Outputs come back as
[B, N, O, H, W] contiguous, the layout the ops around a conv expect.

Not covered: forward mode (no ``jvp``: forward-over-reverse keeps ``nn.Conv2d``) and
``torch.compile`` (dynamo cannot trace vmap over a custom Function: compiled steps keep
``nn.Conv2d``).
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BatchedConv2d", "Geometry", "batched_conv2d", "swap_convs"]


@dataclass(frozen=True)
class Geometry:
    """A conv's stride, padding, dilation (pairs) and groups, and the spatial size (H, W) of x or
    the shape of w that a derivative rebuilds: the non-tensor arguments of the Functions as one
    pytree leaf (torch.func flattens every tuple argument on every call)."""
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    shape: tuple[int, ...] = ()

    def args(self) -> tuple:
        return self.stride, self.padding, self.dilation

    def grouped(self, size: int, shape: tuple[int, ...] = ()) -> Geometry:
        """The geometry of B = ``size`` models as one grouped conv."""
        return replace(self, groups=self.groups * size, shape=shape or self.shape)


# How the B models of a vmap run, measured on a CPU, one thread, LeNet: a conv of at most
# SMALL_MACS multiply-adds per model keeps vmap's own rule (torch.func's custom Functions cost
# about 1 ms of Python a call, more than they save on 8x8 images); above, by the input pixels
# per model (N·H·W of x): up to GROUPED_MAX_PIXELS one grouped conv in channels-last memory
# (28x28, N = 10 images), above a loop of B plain convs, where the two layout copies of a
# grouped conv cost more than it saves (28x28, N = 256).
SMALL_MACS = 1 << 20
GROUPED_MAX_PIXELS = 1 << 15


# ---------------------------------------------------------------- one model (plain aten ops)

def _conv(x: Tensor, w: Tensor, b: Tensor | None, geo: Geometry) -> Tensor:
    return F.conv2d(x, w, b, *geo.args(), geo.groups)


def _conv_input(gy: Tensor, w: Tensor, geo: Geometry) -> Tensor:
    """The transposed conv of gy [N, O, Ho, Wo] back to x [N, C, H, W], (H, W) = ``geo.shape``."""
    layout = torch.channels_last if _is_channels_last(gy) else torch.contiguous_format
    x = torch.empty(gy.shape[0], w.shape[1] * geo.groups, *geo.shape, dtype=gy.dtype, device=gy.device,
                    memory_format=layout)  # only its shape and layout are read
    return torch.ops.aten.convolution_backward(gy, x, w, None, *geo.args(), False, [0, 0], geo.groups,
                                               [True, False, False])[0]


def _conv_weight(x: Tensor, gy: Tensor, geo: Geometry) -> Tensor:
    """The weight gradient, of shape ``geo.shape``."""
    w = x.new_empty(1).expand(geo.shape)  # only its shape is read
    return torch.ops.aten.convolution_backward(gy, x, w, None, *geo.args(), False, [0, 0], geo.groups,
                                               [False, True, False])[1]


# ---------------------------------------------------------------- B models: grouped or looped

def _front(t: Tensor | None, dim: int | None, size: int) -> Tensor | None:
    """t with its batch dimension first: [B, ...] (an unbatched t is expanded, None stays)."""
    if t is None:
        return None
    return t.unsqueeze(0).expand(size, *t.shape) if dim is None else t.movedim(dim, 0)


def _macs(x: Tensor, w: Tensor) -> int:
    """Multiply-adds of one model's conv, as if stride 1: N·H·W · O·C/g·kh·kw (x [N, C, H, W])."""
    return x.shape[0] * x.shape[-2] * x.shape[-1] * w.numel()


def _grouped_pays(x: Tensor) -> bool:
    """Whether B models of inputs x [B, N, C, H, W] run faster as one grouped conv."""
    return x.shape[1] * x.shape[-2] * x.shape[-1] <= GROUPED_MAX_PIXELS


def _as_channels(t: Tensor) -> Tensor:
    """[B, N, C, H, W] -> [N, B·C, H, W] in channels-last memory (one copy)."""
    B, N, C, H, W = t.shape
    return t.permute(1, 3, 4, 0, 2).contiguous().view(N, H, W, B * C).permute(0, 3, 1, 2)


def _is_channels_last(t: Tensor) -> bool:
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _split(t: Tensor, size: int) -> tuple[Tensor, int]:
    """[N, B·O, H, W] -> ([B, N, O, H, W] contiguous, batch dim 0): each model's output in the
    layout of its own convolution, in which the ops around a conv (ReLU, pooling, norms and their
    derivatives) fold B into N without a copy."""
    return t.unflatten(1, (size, -1)).transpose(0, 1).contiguous(), 0


def _looped(fn: Callable[..., Tensor], *tensors: Tensor | None) -> tuple[Tensor, int]:
    """(stack_j fn(t_j for t in tensors), batch dim 0) over the leading B axis of every tensor."""
    size = next(t.shape[0] for t in tensors if t is not None)
    return torch.stack([fn(*(None if t is None else t[j] for t in tensors)) for j in range(size)]), 0


class _Conv(torch.autograd.Function):
    """y = x ⋆ w + b; x [N, C, H, W], w [O, C/g, kh, kw], b [O] or None."""

    @staticmethod
    def forward(x: Tensor, w: Tensor, b: Tensor | None, geo: Geometry) -> Tensor:
        return _conv(x, w, b, geo)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, w, _, ctx.geo = inputs
        ctx.save_for_backward(x, w)

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple:
        x, w = ctx.saved_tensors
        need_x, need_w, need_b, _ = ctx.needs_input_grad
        gx = _ConvInput.apply(gy, w, replace(ctx.geo, shape=tuple(x.shape[-2:]))) if need_x else None
        gw = _ConvWeight.apply(x, gy, replace(ctx.geo, shape=tuple(w.shape))) if need_w else None
        return gx, gw, gy.sum((0, 2, 3)) if need_b else None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple, x: Tensor, w: Tensor, b: Tensor | None, geo: Geometry) -> tuple[Tensor, int]:
        dx, dw, db, _ = in_dims
        B = info.batch_size
        if dw is None and db is None:  # one model: the B inputs are one batch of B·N images
            return _conv(x.movedim(dx, 0).flatten(0, 1), w, b, geo).unflatten(0, (B, -1)), 0
        x, w, b = _front(x, dx, B), _front(w, dw, B), _front(b, db, B)
        if not _grouped_pays(x):
            return _looped(lambda *args: _conv(*args, geo), x, w, b)
        b = None if b is None else b.flatten()
        return _split(_conv(_as_channels(x), w.flatten(0, 1), b, geo.grouped(B)), B)


class _ConvInput(torch.autograd.Function):
    """gx = ∂⟨gy, x ⋆ w⟩/∂x; gy [N, O, Ho, Wo], w [O, C/g, kh, kw] -> [N, C, H, W], (H, W) = geo.shape."""

    @staticmethod
    def forward(gy: Tensor, w: Tensor, geo: Geometry) -> Tensor:
        return _conv_input(gy, w, geo)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        gy, w, ctx.geo = inputs
        ctx.save_for_backward(gy, w)

    @staticmethod
    def backward(ctx: Any, gx: Tensor) -> tuple:
        gy, w = ctx.saved_tensors
        ggy = _Conv.apply(gx, w, None, ctx.geo) if ctx.needs_input_grad[0] else None
        gw = _ConvWeight.apply(gx, gy, replace(ctx.geo, shape=tuple(w.shape))) if ctx.needs_input_grad[1] else None
        return ggy, gw, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple, gy: Tensor, w: Tensor, geo: Geometry) -> tuple[Tensor, int]:
        dgy, dw, _ = in_dims
        B = info.batch_size
        if dw is None:
            return _conv_input(gy.movedim(dgy, 0).flatten(0, 1), w, geo).unflatten(0, (B, -1)), 0
        gy, w = _front(gy, dgy, B), _front(w, dw, B)
        if not _grouped_pays(gy):
            return _looped(lambda *args: _conv_input(*args, geo), gy, w)
        return _split(_conv_input(_as_channels(gy), w.flatten(0, 1), geo.grouped(B)), B)


class _ConvWeight(torch.autograd.Function):
    """gw = ∂⟨gy, x ⋆ w⟩/∂w; x [N, C, H, W], gy [N, O, Ho, Wo] -> [O, C/g, kh, kw] = geo.shape."""

    @staticmethod
    def forward(x: Tensor, gy: Tensor, geo: Geometry) -> Tensor:
        return _conv_weight(x, gy, geo)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        x, gy, ctx.geo = inputs
        ctx.save_for_backward(x, gy)

    @staticmethod
    def backward(ctx: Any, gw: Tensor) -> tuple:
        x, gy = ctx.saved_tensors
        gx = _ConvInput.apply(gy, gw, replace(ctx.geo, shape=tuple(x.shape[-2:]))) if ctx.needs_input_grad[0] else None
        ggy = _Conv.apply(x, gw, None, ctx.geo) if ctx.needs_input_grad[1] else None
        return gx, ggy, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple, x: Tensor, gy: Tensor, geo: Geometry) -> tuple[Tensor, int]:
        dx, dgy, _ = in_dims
        B = info.batch_size
        x, gy = _front(x, dx, B), _front(gy, dgy, B)
        if not _grouped_pays(x):
            return _looped(lambda *args: _conv_weight(*args, geo), x, gy)
        gw = _conv_weight(_as_channels(x), _as_channels(gy), geo.grouped(B, (B * geo.shape[0], *geo.shape[1:])))
        return gw.unflatten(0, (B, -1)), 0


def batched_conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride: tuple[int, int] = (1, 1),
                   padding: tuple[int, int] = (0, 0), dilation: tuple[int, int] = (1, 1), groups: int = 1) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation, groups)`` (numeric padding only) with
    the fast vmap rule, differentiable to any order in reverse mode.

    x [N, C, H, W], weight [O, C/groups, kh, kw], bias [O] or None -> [N, O, Ho, Wo].
    """
    if x.dim() != 4:
        raise ValueError(f"batched_conv2d: x must be [N, C, H, W] (4-d), got shape {list(x.shape)}")
    if isinstance(padding, str):
        raise ValueError(f"batched_conv2d: padding must be a pair of ints, got {padding!r}")
    pair = nn.modules.utils._pair
    return _Conv.apply(x, weight, bias, Geometry(pair(stride), pair(padding), pair(dilation), int(groups)))


class BatchedConv2d(nn.Module):
    """An ``nn.Conv2d`` (zero padding) computed by :func:`batched_conv2d`: the same parameter
    names (``weight``, ``bias``), shapes and values, so ``functional_call`` takes the same dict."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight, self.bias = conv.weight, conv.bias
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups

    def forward(self, x: Tensor) -> Tensor:
        """batched_conv2d for CPU convs above SMALL_MACS; F.conv2d (vmap's own rule) otherwise:
        small convs, and other devices, where the rules here are not measured."""
        fast = x.device.type == "cpu" and _macs(x, self.weight) > SMALL_MACS
        conv = batched_conv2d if fast else F.conv2d
        return conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


def swap_convs(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``nn.Conv2d`` (zero numeric padding) are :class:`BatchedConv2d`
    with the same parameter names; ``model`` itself if it has none."""
    def swappable(m: nn.Module) -> bool:
        return type(m) is nn.Conv2d and m.padding_mode == "zeros" and not isinstance(m.padding, str)
    if not any(swappable(m) for m in model.modules()):
        return model
    twin = copy.deepcopy(model)
    for parent in twin.modules():
        for name, child in list(parent.named_children()):
            if swappable(child):
                setattr(parent, name, BatchedConv2d(child))
    return twin
