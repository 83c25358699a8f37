"""One engine loop for every memory method: it executes a schedule's actions with a dynamics
(float SGD or exact fixed-point SGD) and a Step, accumulating the hypergradients.

The schedule decides what is kept (pure data, :mod:`memdistill.engine.schedules`), the dynamics how a
state moves (:mod:`memdistill.engine.dynamics`, :mod:`memdistill.engine.fixedpoint`), the Step the math of
one inner step (:mod:`memdistill.engine.steps.generic`); none of them knows the others.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from memdistill.engine.dynamics import Adjoint, State, reverse_step
from memdistill.engine.pool import Pool
from memdistill.engine.schedules import Action, Op, counts
from memdistill.engine.steps.generic import GenericStep
from memdistill.engine.tape import Tape

__all__ = ["Data", "Dynamics", "Sweep", "run"]

PoolFactory = Callable[[NamedTuple, int], Pool]   # (template state, slots) -> a pool


class Data(NamedTuple):
    x_syn: Tensor   # [s, b, *in]
    y_syn: Tensor   # [s, b] or [s, b, C]
    x_real: Tensor  # [N, *in]
    y_real: Tensor  # [N] or [N, C]


class Dynamics(Protocol):
    momentum: float
    holds: bool   # whether advancing or retreating changes held_bytes() (reversible's bit stack)
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
    peak_stored_bytes: int   # most bytes held at one time, all levels together
    level_peak_bytes: tuple[int, ...] = ()   # most bytes held on each storage level (level 0 with the dynamics')


def run(actions: Iterable[Action], dynamics: Dynamics, step: GenericStep, data: Data,
        lrs: Tensor, theta0: Tensor, levels: Sequence[PoolFactory] = ()) -> Sweep:
    """Execute ``actions`` for n = len(lrs) inner steps from θ0 [B, P].

    Stored states live in pools, one per storage level, of as many slots as the schedule ever
    holds there, allocated here once: level 0 a :class:`~memdistill.engine.pool.Pool`, level
    i ≥ 1 ``levels[i - 1](state, slots)``. The pools are closed on the way out, failure
    included. The one long function of the package; each action is a few lines.
    """
    n, s = lrs.shape[0], data.x_syn.shape[0]
    state = dynamics.start(theta0)
    stored: list[Pool] = []
    found = counts(actions, n)   # checks the schedule first (remembered for the generators' own)
    slots = found.levels
    if len(slots) > 1 + len(levels):
        raise ValueError(f"run: the schedule stores on level {len(slots) - 1} but only levels 0..{len(levels)} have pools")
    try:
        for level, make in enumerate([Pool, *levels]):
            stored.append(make(state, slots[level] if level < len(slots) else 0))
        tape = Tape(step, data.x_syn, data.y_syn, lrs, dynamics.momentum) if found.max_taped else None
        return _execute(actions, dynamics, step, data, lrs, state, stored, n, s, tape)
    finally:
        for pool in stored:
            pool.close()


_MOVES = (Op.ADVANCE, Op.RETREAT)   # after which dynamics that hold bytes (Dynamics.holds) may hold more


def _execute(actions: Iterable[Action], dynamics: Dynamics, step: GenericStep, data: Data, lrs: Tensor,
             state: NamedTuple, stored: list[Pool], n: int, s: int, tape: Tape | None) -> Sweep:
    peak = forward = 0
    peaks = [0] * len(stored)
    adj: Adjoint | None = None
    loss: Tensor | None = None
    grad_lrs = torch.zeros_like(lrs)
    grad_x = torch.zeros_like(data.x_syn)
    grad_y = torch.zeros_like(data.y_syn) if data.y_syn.is_floating_point() else None
    # The s batches and their gradient rows as views made once (indexing a tensor per step costs
    # more than the C++ step's products at the paper's sizes).
    xs, ys, dxs = data.x_syn.unbind(0), data.y_syn.unbind(0), grad_x.unbind(0)
    dys = None if grad_y is None else grad_y.unbind(0)
    for op, k, level in actions:
        if op is Op.ADVANCE:
            state = dynamics.advance(state, k)
            forward += 1
        elif op is Op.RETREAT:
            state = dynamics.retreat(state, k)
            forward += 1
        elif op is Op.STORE:
            stored[level].store(k, state)
        elif op is Op.RESTORE:
            state = stored[level].restore(k)
        elif op is Op.FREE:
            stored[level].free(k)
        elif op is Op.RECORD:
            state = tape.record(state, k)
            forward += 1
        elif op is Op.UNWIND:   # the tape's steps, end − 1 … k, reversed in one backward pass
            state, adj, grads, taped = tape.unwind(state, adj)   # taped: what its graphs held
            grad_lrs.add_(grads.lrs)
            grad_x.add_(grads.x)
            if grad_y is not None:
                grad_y.add_(grads.y)
        elif k == n:  # REVERSE of the outer loss: seed the adjoint with ∂L/∂θ_n
            floats = dynamics.floats(state)
            loss, dtheta = step.value_and_grad(floats.theta, data.x_real, data.y_real)
            adj = Adjoint(dtheta, None if floats.v is None else torch.zeros_like(dtheta))
        else:  # REVERSE of inner step k (Algorithm 3, with momentum)
            i = k % s
            adj, grads = reverse_step(step, dynamics.floats(state), xs[i], ys[i], lrs[k], dynamics.momentum, adj)
            grad_lrs[k] = grads.lr
            dxs[i].add_(grads.x)
            if dys is not None:
                dys[i].add_(grads.y)
        if op is Op.STORE or op is Op.UNWIND or (dynamics.holds and op in _MOVES):
            held = [pool.nbytes() for pool in stored]
            held[0] += dynamics.held_bytes() + (taped if op is Op.UNWIND else 0)
            peaks = [max(a, b) for a, b in zip(peaks, held)]
            peak = max(peak, sum(held))
    return Sweep(loss, adj.theta, grad_lrs, grad_x, grad_y, forward, peak, tuple(peaks))
