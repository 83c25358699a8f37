"""The store-all baseline: autograd through the whole unroll (``create_graph=True``).

What users write themselves, and the reference every other method is tested against. It
keeps every step's autograd graph alive until the backward pass; its stored bytes are the
tensors autograd saved for backward and still holds when the unroll ends, counted once per
storage.
"""
from __future__ import annotations

import weakref

import torch
from torch import Tensor

from memdistill.engine.loop import Data, Sweep
from memdistill.engine.steps.generic import GenericStep

__all__ = ["autograd_unroll", "autograd_saved_bytes"]


class _SavedBytes:
    """saved_tensors_hooks that keep a weak reference to every tensor autograd saves;
    :meth:`live_bytes` adds up the distinct storages still kept. A node freed during the unroll
    (the first-order graph of a step's loss, once its gradient is taken) frees what it saved, and
    the allocator may hand the address to a later tensor: counting storages as they are saved
    would then depend on the allocator's history."""

    def __init__(self) -> None:
        self.saved: list[weakref.ref] = []

    def pack(self, t: Tensor) -> Tensor:
        self.saved.append(weakref.ref(t))
        return t

    @staticmethod
    def unpack(t: Tensor) -> Tensor:
        return t

    def live_bytes(self) -> int:
        storages = {}
        for ref in self.saved:
            if (t := ref()) is not None:
                storage = t.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())


def autograd_unroll(step: GenericStep, data: Data, lrs: Tensor, theta0: Tensor, momentum: float) -> Sweep:
    """Unroll n = len(lrs) steps of v ← γv + g, θ ← θ − η v with graphs; differentiate L once."""
    n, s = lrs.shape[0], data.x_syn.shape[0]
    saved = _SavedBytes()
    with torch.enable_grad():
        leaves = [theta0.detach().requires_grad_(), data.x_syn.detach().requires_grad_(),
                  lrs.detach().requires_grad_()]
        if data.y_syn.is_floating_point():
            leaves.append(data.y_syn.detach().requires_grad_())
        theta, x, lr = leaves[:3]
        y = leaves[3] if len(leaves) == 4 else data.y_syn
        v = torch.zeros_like(theta)
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
            for k in range(n):
                (g,) = torch.autograd.grad(step.loss(theta, x[k % s], y[k % s]).sum(), theta, create_graph=True)
                v = momentum * v + g if momentum else g
                theta = theta - lr[k] * v
            loss = step.loss(theta, data.x_real, data.y_real)
        kept = saved.live_bytes()  # what the graph holds for the backward pass: its peak
        grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]
    return Sweep(loss.detach(), grads[0], grads[2], grads[1], grads[3] if len(grads) == 4 else None,
                 forward_steps=n, peak_stored_bytes=kept)


def autograd_saved_bytes(step: GenericStep, data: Data, lrs: Tensor, theta0: Tensor, momentum: float, n: int) -> int:
    """Bytes :func:`autograd_unroll` saves for n steps, T(n) = T(1) + (n − 1)·(T(2) − T(1)), from
    unrolls of 1 and 2 steps on the real shapes: the data are saved once, every further step alike."""
    t1, t2 = (autograd_unroll(step, data, lrs[:k], theta0, momentum).peak_stored_bytes for k in (1, min(n, 2)))
    return t1 + (n - 1) * (t2 - t1)
