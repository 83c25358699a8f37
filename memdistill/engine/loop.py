"""One engine loop for every memory method: it executes a schedule's actions with a dynamics
(float SGD or exact fixed-point SGD) and a Step, accumulating the hypergradients.

The schedule decides what is kept (pure data, :mod:`memdistill.engine.schedules`), the dynamics how a
state moves (:mod:`memdistill.engine.dynamics`, :mod:`memdistill.engine.fixedpoint`), the Step the math of
one inner step (:mod:`memdistill.engine.steps.generic`); none of them knows the others.
"""
from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from memdistill.engine.dynamics import Adjoint, State, reverse_step
from memdistill.engine.pool import Pool
from memdistill.engine.schedules import Action, Op, max_stored
from memdistill.engine.steps.generic import GenericStep

__all__ = ["Data", "Dynamics", "Sweep", "run"]


class Data(NamedTuple):
    x_syn: Tensor   # [s, b, *in]
    y_syn: Tensor   # [s, b] or [s, b, C]
    x_real: Tensor  # [N, *in]
    y_real: Tensor  # [N] or [N, C]


class Dynamics(Protocol):
    momentum: float
    def start(self, theta0: Tensor) -> NamedTuple: ...
    def advance(self, state: NamedTuple, k: int) -> NamedTuple: ...
    def retreat(self, state: NamedTuple, k: int) -> NamedTuple: ...
    def floats(self, state: NamedTuple) -> State: ...
    def held_bytes(self) -> int: ...


class Sweep(NamedTuple):
    """What one forward + reverse sweep produces."""
    loss: Tensor             # [B]: l(x_real, θ_n^(j)) of each model j
    grad_theta0: Tensor      # [B, P]
    grad_lrs: Tensor         # [n]
    grad_x_syn: Tensor       # [s, b, *in]
    grad_y_syn: Tensor | None
    forward_steps: int
    peak_stored_bytes: int


def run(actions: list[Action], dynamics: Dynamics, step: GenericStep, data: Data,
        lrs: Tensor, theta0: Tensor) -> Sweep:
    """Execute ``actions`` for n = len(lrs) inner steps from θ0 [B, P].

    Stored states live in a :class:`~memdistill.engine.pool.Pool` of as many slots as the
    schedule ever holds, allocated here once. The one long function of the package; each
    action is a few lines.
    """
    n, s = lrs.shape[0], data.x_syn.shape[0]
    state = dynamics.start(theta0)
    stored = Pool(state, max_stored(actions))
    peak = forward = 0
    adj: Adjoint | None = None
    loss: Tensor | None = None
    grad_lrs = torch.zeros_like(lrs)
    grad_x = torch.zeros_like(data.x_syn)
    grad_y = torch.zeros_like(data.y_syn) if data.y_syn.is_floating_point() else None
    for op, k in actions:
        if op is Op.ADVANCE:
            state = dynamics.advance(state, k)
            forward += 1
        elif op is Op.RETREAT:
            state = dynamics.retreat(state, k)
            forward += 1
        elif op is Op.STORE:
            stored.store(k, state)
        elif op is Op.RESTORE:
            state = stored.restore(k)
        elif op is Op.FREE:
            stored.free(k)
        elif k == n:  # REVERSE of the outer loss: seed the adjoint with ∂L/∂θ_n
            floats = dynamics.floats(state)
            loss, dtheta = step.value_and_grad(floats.theta, data.x_real, data.y_real)
            adj = Adjoint(dtheta, None if floats.v is None else torch.zeros_like(dtheta))
        else:  # REVERSE of inner step k (Algorithm 3, with momentum)
            i = k % s
            adj, grads = reverse_step(step, dynamics.floats(state), data.x_syn[i], data.y_syn[i],
                                      lrs[k], dynamics.momentum, adj)
            grad_lrs[k] = grads.lr
            grad_x[i] += grads.x
            if grad_y is not None:
                grad_y[i] += grads.y
        peak = max(peak, stored.nbytes() + dynamics.held_bytes())
    return Sweep(loss, adj.theta, grad_lrs, grad_x, grad_y, forward, peak)
