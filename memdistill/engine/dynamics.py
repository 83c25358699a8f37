"""The inner optimiser, SGD with momentum (torch.optim.SGD convention), and its adjoint.

Forward (step k, gradient g_k = ∇θ l(x̃_{k mod s}, θ_k), v_0 = 0):

    v_{k+1} = γ v_k + g_k,        θ_{k+1} = θ_k − η_k v_{k+1}.

Reverse: given the adjoints dθ = ∂L/∂θ_{k+1} and dv = ∂L/∂v_{k+1} (from the later steps),
with w = dv − η_k dθ the total adjoint of v_{k+1} (:func:`reverse_step`):

    ∂L/∂η_k = −⟨dθ, v_{k+1}⟩,   ∂L/∂θ_k = dθ + H_k w,   ∂L/∂v_k = γ w,
    ∂L/∂x̃_{k mod s} += (∂g_k/∂x̃)ᵀ w.

With γ = 0 the velocity is the gradient and dv stays 0: w = −η_k dθ, the plain Algorithm 3.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from memdistill.engine.steps.generic import GenericStep

Gradient = Callable[[Tensor, int], Tensor]  # (θ_k [B, P], k) -> g_k [B, P]

__all__ = ["State", "SGD", "Adjoint", "reverse_step", "sgd_update", "state_bytes"]


class State(NamedTuple):
    """θ_k [B, P] and v_k [B, P] (None for plain SGD)."""
    theta: Tensor
    v: Tensor | None


def state_bytes(state: NamedTuple) -> int:
    return sum(t.nbytes for t in state if isinstance(t, Tensor))


def sgd_update(state: State, g: Tensor, lr: Tensor, momentum: float) -> State:
    """(θ_k, v_k), g_k -> (θ_{k+1}, v_{k+1}): v_{k+1} = γ v_k + g_k, θ_{k+1} = θ_k − η_k v_{k+1}."""
    v = g if state.v is None else momentum * state.v + g
    return State(state.theta - lr * v, None if state.v is None else v)


class SGD:
    """Momentum SGD in floating point: can be advanced, not retreated."""

    holds = False   # nothing held beside the stored states

    def __init__(self, gradient: Gradient, lrs: Tensor, momentum: float,
                 update: Callable[[State, int], State] | None = None):
        """``update``: (state k, k) -> state k + 1 in one call (a fused step's ``sgd_advance``),
        the same bits as :meth:`advance` composes from ``gradient`` and :func:`sgd_update`."""
        self.gradient, self.lrs, self.momentum, self.update = gradient, lrs, momentum, update

    def start(self, theta0: Tensor) -> State:
        return State(theta0, torch.zeros_like(theta0) if self.momentum else None)

    def advance(self, state: State, k: int) -> State:
        if self.update is not None:
            return self.update(state, k)
        return sgd_update(state, self.gradient(state.theta, k), self.lrs[k], self.momentum)

    def retreat(self, state: State, k: int) -> State:
        raise ValueError("floating-point SGD cannot be run backwards; use method='reversible' (momentum > 0)")

    def floats(self, state: State) -> State:
        return state

    def held_bytes(self) -> int:
        return 0


class Adjoint(NamedTuple):
    """∂L/∂θ_k and ∂L/∂v_k (None for plain SGD)."""
    theta: Tensor
    v: Tensor | None


class StepGrads(NamedTuple):
    lr: Tensor                # ∂L/∂η_k, the shape of η_k (0-d, or [B, 1] for one rate per model)
    x: Tensor                 # contribution to ∂L/∂x̃_{k mod s}
    y: Tensor | None          # contribution to ∂L/∂ỹ_{k mod s} (float labels only)


def reverse_step(step: GenericStep, state: State, x: Tensor, y: Tensor, lr: Tensor,
                 momentum: float, adj: Adjoint) -> tuple[Adjoint, StepGrads]:
    """Adjoint of inner step k at state (θ_k, v_k): (∂L/∂θ_{k+1}, ∂L/∂v_{k+1}) -> (∂L/∂θ_k, ∂L/∂v_k)."""
    if step.fused_sgd:   # the same equations in one call (the C++ step)
        theta, v, grad_lr, dx, dy = step.sgd_reverse(state.theta, state.v, x, y, lr, momentum, adj.theta, adj.v)
        return Adjoint(theta, v), StepGrads(grad_lr, dx, dy)
    w = -lr * adj.theta if adj.v is None else adj.v - lr * adj.theta
    g, hvp, dx, dy = step.reverse(state.theta, x, y, w)
    v_next = g if state.v is None else momentum * state.v + g
    grads = StepGrads((adj.theta * v_next).sum_to_size(lr.shape).neg_(), dx, dy)   # −⟨dθ, v_{k+1}⟩
    return Adjoint(adj.theta + hvp, None if state.v is None else momentum * w), grads
