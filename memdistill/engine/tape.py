"""The tape: consecutive inner steps recorded with their autograd graphs and reversed together.

A recorded step is the forward step of :mod:`memdistill.engine.dynamics` with the gradient's graph
kept (``create_graph=True``), as autograd through the unroll makes it; unwinding the tape is one
backward pass from (∂L/∂θ_end, ∂L/∂v_end) to the tape's start, which also leaves ∂L/∂x̃, ∂L/∂ỹ
and ∂L/∂η̃ of its steps. It is Algorithm 3 over a segment, with each step's gradient computed once
(the reverse step of a replayed step would compute it again) and one autograd call per segment
instead of two per step: for small models, where autograd's per-call overhead dominates, the
cost of checkpointing falls from ≈ 1.8× to ≈ 1.3× autograd's (paper MLP on the generic step).

Used by the ``taped`` schedule's RECORD / UNWIND actions (:mod:`memdistill.engine.schedules`);
what it holds is counted by :class:`SavedBytes`, the bytes autograd saves for backward.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import NamedTuple

import torch
from torch import Tensor

from memdistill.engine.dynamics import Adjoint, State, sgd_update
from memdistill.engine.steps.generic import GenericStep

__all__ = ["SavedBytes", "Tape", "recorded_step"]


class SavedBytes:
    """saved_tensors_hooks that keep a weak reference to every tensor autograd saves;
    :meth:`live_bytes` adds up the distinct storages still kept. A node freed during the unroll
    (the first-order graph of a step's loss, once its gradient is taken) frees what it saved, and
    the allocator may hand the address to a later tensor: counting storages as they are saved
    would then depend on the allocator's history."""

    def __init__(self, exclude: tuple[Tensor, ...] = ()) -> None:
        self.saved: list[weakref.ref] = []
        self.exclude = {t.untyped_storage().data_ptr() for t in exclude}

    def pack(self, t: Tensor) -> Tensor:
        self.saved.append(weakref.ref(t))
        return t

    @staticmethod
    def unpack(t: Tensor) -> Tensor:
        return t

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack)

    def live_bytes(self) -> int:
        """Bytes of the distinct storages saved and still alive, less those of ``exclude``."""
        storages = {}
        for ref in self.saved:
            if (t := ref()) is not None:
                storage = t.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        return sum(b for ptr, b in storages.items() if ptr not in self.exclude)


def recorded_step(step: GenericStep, state: State, x: Tensor, y: Tensor, lr: Tensor, momentum: float) -> State:
    """Inner step (θ_k, v_k) -> (θ_{k+1}, v_{k+1}) with its graph: g_k = ∇θ l(x, y; θ_k) with
    ``create_graph=True``, then :func:`~memdistill.engine.dynamics.sgd_update`. Call under grad mode."""
    (g,) = torch.autograd.grad(step.loss(state.theta, x, y).sum(), state.theta, create_graph=True)
    return sgd_update(state, g, lr, momentum)


class TapeGrads(NamedTuple):
    x: Tensor            # ∂L/∂x̃ [s, b, *in] from the unwound steps
    y: Tensor | None     # ∂L/∂ỹ (float labels only)
    lrs: Tensor          # ∂L/∂η̃, the shape of the lrs (zero outside the unwound steps)


class Tape:
    """The recorded steps of one run of RECORD actions, for B models of one sweep.

    The synthetic data and the learning rates become leaves once per sweep (the graphs reach
    them); a tape starts from a copy of its first state as leaves (a stored snapshot's slot is
    not held by the graph), and :meth:`unwind` empties it.

    What the graphs hold is measured (:class:`SavedBytes`) on the first ``MEASURED`` tapes of a
    sweep — the taped schedule's last segment and its first full one, recorded while every
    segment start is held: the sweep's peak — and counted as their bytes per step after: every
    step's graph is alike (the planner's L·G equals the measure; tests/test_taped.py). The
    hooks cost a Python call per saved tensor, ≈ 15 % of a small model's recorded step.
    """

    MEASURED = 2

    def __init__(self, step: GenericStep, x_syn: Tensor, y_syn: Tensor, lrs: Tensor, momentum: float):
        self.step, self.momentum = step, momentum
        self.x = x_syn.detach().requires_grad_()
        self.y = y_syn.detach().requires_grad_() if y_syn.is_floating_point() else y_syn
        self.lrs = lrs.detach().requires_grad_()
        with torch.enable_grad():   # views that pass gradients on to the leaves
            self.xs, self.ys = self.x.unbind(0), self.y.unbind(0)
        self.start: State | None = None
        self.saved = SavedBytes((x_syn, y_syn, lrs))
        self.length = self.measured = self.step_bytes = 0

    def record(self, state: State, k: int) -> State:
        """Run inner step k (batch k mod s) from ``state`` with its graph on the tape."""
        if self.start is None:
            self.start = state = State(*(None if t is None else t.detach().clone().requires_grad_() for t in state))
        self.length += 1
        i = k % len(self.xs)
        hooks = self.saved.hooks() if self.measured < self.MEASURED else contextlib.nullcontext()
        with torch.enable_grad(), hooks:
            return recorded_step(self.step, state, self.xs[i], self.ys[i], self.lrs[k], self.momentum)

    def _held_bytes(self) -> int:
        """Bytes the tape's graphs hold now (the data and learning rates excluded: held anyway):
        measured on the first MEASURED tapes, which set the bytes per step of the later ones."""
        if self.measured >= self.MEASURED:
            return self.length * self.step_bytes
        held = self.saved.live_bytes()
        self.step_bytes, self.measured = held // self.length, self.measured + 1
        self.saved.saved.clear()
        return held

    def unwind(self, state: State, adj: Adjoint) -> tuple[State, Adjoint, TapeGrads, int]:
        """One backward pass from ``adj`` at the tape's end ``state`` to its start: (the start state,
        the adjoint there, the data's and learning rates' gradients, the bytes the tape held at its
        longest, just before); the tape is then empty."""
        held = self._held_bytes()
        start, self.start, self.length = self.start, None, 0
        leaves = {"theta": start.theta, "v": start.v, "x": self.x, "lrs": self.lrs, "y": self.y}
        leaves = {name: t for name, t in leaves.items() if t is not None and t.requires_grad}
        with torch.enable_grad():
            found = torch.autograd.grad([t for t in state if t is not None], list(leaves.values()),
                                        [t for t in adj if t is not None], allow_unused=True)
        grads = {name: torch.zeros_like(t) if g is None else g for (name, t), g in zip(leaves.items(), found)}
        back = State(start.theta.detach(), None if start.v is None else start.v.detach())
        return back, Adjoint(grads["theta"], grads.get("v")), TapeGrads(grads["x"], grads.get("y"), grads["lrs"]), held
