"""The outer loop's state on disk: written atomically, checked before it is trusted.

A state file holds tensors, the Adam state, the random generators' states, the position in
the outer loop and the loss history, plus a *fingerprint* of the run (its configuration and a
hash of the real data). Loading refuses a file that is unreadable or whose fingerprint differs,
so a resumed run can never silently become a different run or restart from zero. One change
is allowed: a state saved when the run diverged (``diverged`` in the state) resumes with another
``outer_lr`` (:data:`RETUNABLE`), the way out of a divergence.

SIGINT and SIGTERM during the outer loop are deferred to the next safe point (between two
outer steps) by :func:`deferred_signals`; the loop then saves its state and raises
:class:`Interrupted`.
"""
from __future__ import annotations

import hashlib
import io
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from memdistill.atomic import write_bytes_atomic

__all__ = ["RETUNABLE", "Interrupted", "data_hash", "deferred_signals", "load_state", "save_state"]

VERSION = 1
RETUNABLE = ("outer_lr",)
"""Fingerprint keys a diverged run's state may be resumed with at another value."""
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the outer loop at a safe point after ``step`` outer steps;
    their state is in ``checkpoint`` (resume it to continue bit for bit)."""

    def __init__(self, signum: int = signal.SIGINT, step: int = 0, checkpoint: str | Path | None = None):
        name = signal.Signals(signum).name
        super().__init__(f"{name} after outer step {step}; the state is saved in {checkpoint}")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint

    def __reduce__(self) -> tuple:
        return type(self), (self.signum, self.step, self.checkpoint)


@contextmanager
def deferred_signals(enabled: bool = True) -> Iterator[Callable[[], int | None]]:
    """Within: the first SIGINT/SIGTERM is recorded, not raised (a second one raises
    KeyboardInterrupt at once). Yields a function returning the recorded signal or None.

    Does nothing when not ``enabled`` or outside the main thread (where Python delivers signals).
    """
    received: list[int] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield lambda: None
        return

    def record(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)
        print(f"\nmemdistill: {signal.Signals(signum).name}: saving the state after this outer step "
              "(send it again to stop without saving)", file=sys.stderr, flush=True)

    previous = {s: signal.signal(s, record) for s in SIGNALS}
    try:
        yield lambda: received[0] if received else None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def data_hash(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{list(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_state(path: str | Path, fingerprint: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write {version, fingerprint, state} with torch.save, atomically."""
    buffer = io.BytesIO()
    torch.save({"version": VERSION, "fingerprint": fingerprint, "state": state}, buffer)
    return write_bytes_atomic(path, buffer.getvalue())


def load_state(path: str | Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """The state saved at ``path``; ValueError if it is corrupt or belongs to another run (a
    diverged run's state may differ in the :data:`RETUNABLE` keys)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        version, theirs, state = saved["version"], saved["fingerprint"], saved["state"]
        if not (isinstance(theirs, dict) and isinstance(state, dict)):
            raise TypeError("its fingerprint and state are not dictionaries")
    except Exception as error:  # any unreadable file: pickle, zip or key errors alike
        raise ValueError(f"resume: checkpoint {path} is corrupt or not a memdistill state "
                         f"({type(error).__name__}: {error}); delete it to start over") from None
    if version != VERSION:
        raise ValueError(f"resume: checkpoint {path} has version {version}, expected {VERSION}")
    differ = sorted(k for k in {*theirs, *fingerprint} if theirs.get(k) != fingerprint.get(k))
    if state.get("diverged") is not None:
        differ = [k for k in differ if k not in RETUNABLE]
    if differ:
        details = ", ".join(f"{k}: saved {theirs.get(k)!r} vs now {fingerprint.get(k)!r}" for k in differ)
        raise ValueError(f"resume: checkpoint {path} belongs to a different run ({details}); "
                         "use the same settings and data, or delete it to start over")
    return state
