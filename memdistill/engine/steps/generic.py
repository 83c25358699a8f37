"""The math of one inner step: the loss gradient and the products the reverse step needs.

A Step knows nothing about schedules or about the optimiser; it evaluates, for B models whose
flattened parameters are the rows of ``theta`` [B, P] and one batch (x [b, *in], y [b, ...]):

- ``loss(theta, x, y)``            [l(x, θ_j)]_j [B], differentiable in every argument;
- ``value_and_grad(theta, x, y)``  (the B losses [B], g = ∇θ l [B, P]);
- ``reverse(theta, x, y, w)``      (g, Hw, (∂g/∂x)ᵀw, (∂g/∂y)ᵀw) with H = ∂g/∂θ the Hessian:
  one Hessian-vector product and the mixed second derivatives, both VJPs of the gradient.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

LossFn = Callable[[Tensor, Tensor], Tensor]

__all__ = ["GenericStep", "default_loss", "LossFn"]


def default_loss(out: Tensor, y: Tensor) -> Tensor:
    """BCE-with-logits when the model has one output, else cross-entropy.

    out [b, 1] with y [b] (0/1 ids or float targets): BCE on out.squeeze(-1).
    out [b, C] with y [b] int64: cross-entropy; with y [b, C] float: soft-label cross-entropy
    −Σ_c y_c log softmax(out)_c, averaged over the batch.
    """
    if out.shape[-1] == 1:
        return nn.functional.binary_cross_entropy_with_logits(out.squeeze(-1), y.to(out.dtype))
    if y.is_floating_point():
        return -(y * out.log_softmax(-1)).sum(-1).mean()
    return nn.functional.cross_entropy(out, y)


def _zeros_if_none(grads: tuple[Tensor | None, ...], like: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, like))


class GenericStep:
    """Any nn.Module through ``torch.func.functional_call`` and autograd.

    Trainable parameters (``requires_grad``) are the rows of ``theta``; buffers and frozen
    parameters are constants. The B models are evaluated one after another.
    """

    name = "generic"

    def __init__(self, model: nn.Module, loss_fn: LossFn | None = None):
        trainable = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        self.model = model
        self.loss_fn = loss_fn or default_loss
        self.names = [k for k, _ in trainable]
        self.shapes = [p.shape for _, p in trainable]
        self.sizes = [math.prod(s) for s in self.shapes]
        trained = set(self.names)
        # Constants are cloned: a module that writes its buffers (BatchNorm in training mode)
        # must not touch the caller's.
        self.constants = {k: t.detach().clone() for k, t in
                          [*model.named_parameters(), *model.named_buffers()] if k not in trained}

    def flatten(self, model: nn.Module | None = None) -> Tensor:
        """θ0 as one row: [1, P], a copy of the trainable parameters of ``model`` (default: the
        step's own; another model must have the same parameter names and shapes)."""
        params = dict((model or self.model).named_parameters())
        return torch.cat([params[k].detach().reshape(-1) for k in self.names]).unsqueeze(0)

    def unflatten(self, row: Tensor) -> dict[str, Tensor]:
        """[P] -> {name: view of shape}."""
        return {k: t.view(s) for k, t, s in zip(self.names, row.split(self.sizes), self.shapes)}

    def forward(self, row: Tensor, x: Tensor) -> Tensor:
        """model(x) with parameters θ = row [P]."""
        return functional_call(self.model, {**self.constants, **self.unflatten(row)}, (x,))

    def loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """[l(model_θj(x), y)]_j [B] for the B rows of theta [B, P]."""
        return torch.stack([self.loss_fn(self.forward(row, x), y) for row in theta.unbind(0)])

    def value_and_grad(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            t = theta.detach().requires_grad_()
            value = self.loss(t, x, y)
            (g,) = torch.autograd.grad(value.sum(), t)
        return value.detach(), g

    def reverse(self, theta: Tensor, x: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(g, H w, (∂g/∂x)ᵀ w, (∂g/∂y)ᵀ w or None for integer y); w [B, P]."""
        with torch.enable_grad():
            t = theta.detach().requires_grad_()
            xs = x.detach().requires_grad_()
            ys = y.detach().requires_grad_() if y.is_floating_point() else y
            (g,) = torch.autograd.grad(self.loss(t, xs, ys).sum(), t, create_graph=True)
            inputs = (t, xs, ys) if ys.requires_grad else (t, xs)
            if g.requires_grad:
                grads = torch.autograd.grad(g, inputs, grad_outputs=w, allow_unused=True)
            else:  # the loss is linear in every input: all second derivatives vanish
                grads = (None,) * len(inputs)
        hvp, dx, *dy = _zeros_if_none(grads, inputs)
        return g.detach(), hvp, dx, (dy[0] if dy else None)
