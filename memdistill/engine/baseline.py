"""The store-all baseline: autograd through the whole unroll (``create_graph=True``).

What users write themselves, and the reference every other method is tested against. It
keeps every step's autograd graph alive until the backward pass; its stored bytes are the
tensors autograd saved for backward and still holds when the unroll ends, counted once per
storage.

The heap: each step frees P-sized temporaries (gradients, updates) into holes that the step's
long-lived graph nodes then split, so the next step's temporaries take fresh heap and the process
grows far beyond what the graph holds (2-256-256-256-1 MLP, n = 1,024: RSS growth 2.5× the saved
bytes). Where the C library has ``malloc_trim`` (glibc), the unroll hands the free pages back
to the system after the steps of :func:`trim_points` (1.2×, 1.06× the time); it changes no
setting and no number. Copying the saved tensors into one preallocated buffer does not help
(measured): the holes are the temporaries', not the saved tensors'.
"""
from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from memdistill.engine.dynamics import State
from memdistill.engine.loop import Data, Sweep
from memdistill.engine.steps.generic import GenericStep
from memdistill.engine.tape import SavedBytes, recorded_step

__all__ = ["autograd_unroll", "autograd_saved_bytes", "autograd_step_bytes", "trim_points"]


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``: give the free pages of every malloc arena back to the system
    (keeping what is in use); None where the C library has none (musl, macOS, Windows)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return lambda: trim(0)


_TRIM = _malloc_trim()
TRIM_FROM = 64 * 2**20
"""Trim only an unroll whose n states θ_1 … θ_n take at least this many bytes: below, its heap's
holes are a few MiB, and a trim (≈ 1 ms however small the heap) costs more than it gives back
(the paper MLP, n = 200: +10% time for 25 trims)."""


def trim_points(n: int, every: int = 8, growth: int = 32) -> Iterator[int]:
    """The steps k (1-based, ≤ n) after which :func:`autograd_unroll` trims the heap: every
    ``every`` steps, and once the gap k/``growth`` is longer, every k/``growth`` steps. A trim
    walks the heap's holes, O(k) after k steps, so the trims cost O(growth · n) in all (every
    8 steps would cost O(n²/16)); what one gap leaves untrimmed is about 1/growth of the growth so far."""
    k = every
    while k <= n:
        yield k
        k += max(every, k // growth)


def autograd_unroll(step: GenericStep, data: Data, lrs: Tensor, theta0: Tensor, momentum: float,
                    trim: bool = True) -> Sweep:
    """Unroll n = len(lrs) steps of v ← γv + g, θ ← θ − η v with graphs; differentiate L once.

    ``trim``: on a CPU with glibc, for an unroll of at least :data:`TRIM_FROM` bytes of states,
    trim the heap after the steps of :func:`trim_points` (see the module's docstring); False
    leaves the heap to the allocator (the bits are the same).
    """
    n, s = lrs.shape[0], data.x_syn.shape[0]
    saved = SavedBytes()
    large = n * theta0.nbytes >= TRIM_FROM
    trims = trim_points(n) if trim and large and _TRIM is not None and theta0.device.type == "cpu" else iter(())
    next_trim = next(trims, 0)
    with torch.enable_grad():
        leaves = [theta0.detach().requires_grad_(), data.x_syn.detach().requires_grad_(),
                  lrs.detach().requires_grad_()]
        if data.y_syn.is_floating_point():
            leaves.append(data.y_syn.detach().requires_grad_())
        theta, x, lr = leaves[:3]
        y = leaves[3] if len(leaves) == 4 else data.y_syn
        state = State(theta, torch.zeros_like(theta) if momentum else None)
        with saved.hooks():
            for k in range(n):
                state = recorded_step(step, state, x[k % s], y[k % s], lr[k], momentum)
                if k + 1 == next_trim:
                    _TRIM()
                    next_trim = next(trims, 0)
            loss = step.loss(state.theta, data.x_real, data.y_real)
        kept = saved.live_bytes()  # what the graph holds for the backward pass: its peak
        grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for g, t in zip(grads, leaves)]
    return Sweep(loss.detach(), grads[0], grads[2], grads[1], grads[3] if len(grads) == 4 else None,
                 forward_steps=n, peak_stored_bytes=kept)


_STEP_BYTES: dict[tuple, tuple[int, int]] = {}
_STEP_BYTES_KEPT = 256


def autograd_step_bytes(step: GenericStep, data: Data, lrs: Tensor, theta0: Tensor, momentum: float) -> tuple[int, int]:
    """(T(1), G): the bytes :func:`autograd_unroll` saves for one step (the data, one step's graph
    and the outer loss's) and the bytes each further step adds, G = T(2) − T(1) (0 for n = 1),
    measured by unrolling 1 and 2 steps on the real shapes. Remembered per architecture, shapes,
    dtypes and device (``step.key``): every outer step of a distillation plans the same sweep."""
    key = getattr(step, "key", None)
    if key is not None:
        key = (key, *((tuple(t.shape), t.dtype, t.device) for t in (*data, theta0)), lrs.shape[1:],
               min(lrs.shape[0], 2), bool(momentum))
        if key in _STEP_BYTES:
            return _STEP_BYTES[key]
    t1, t2 = (autograd_unroll(step, data, lrs[:k], theta0, momentum).peak_stored_bytes
              for k in (1, min(lrs.shape[0], 2)))
    if key is not None:
        if len(_STEP_BYTES) >= _STEP_BYTES_KEPT:
            _STEP_BYTES.clear()
        _STEP_BYTES[key] = (t1, t2 - t1)
    return t1, t2 - t1


def autograd_saved_bytes(step: GenericStep, data: Data, lrs: Tensor, theta0: Tensor, momentum: float, n: int) -> int:
    """Bytes :func:`autograd_unroll` saves for n steps, T(n) = T(1) + (n − 1)·G
    (:func:`autograd_step_bytes`): the data are saved once, every further step alike."""
    t1, g = autograd_step_bytes(step, data, lrs, theta0, momentum)
    return t1 + (n - 1) * g
