"""The outer loop's state on disk: written atomically, checked before it is trusted.

A state file holds tensors, the Adam state, the random generators' states, the position in
the outer loop and the loss history, plus a *fingerprint* of the run (its configuration and a
hash of the real data). Loading refuses a file that is unreadable or whose fingerprint differs,
so a resumed run can never silently become a different run or restart from zero.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from memdistill.atomic import write_bytes_atomic

__all__ = ["data_hash", "save_state", "load_state"]

VERSION = 1


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
    """The state saved at ``path``; ValueError if it is corrupt or belongs to another run."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        version, theirs, state = saved["version"], saved["fingerprint"], saved["state"]
    except Exception as error:  # any unreadable file: pickle, zip or key errors alike
        raise ValueError(f"resume: checkpoint {path} is corrupt or not a memdistill state "
                         f"({type(error).__name__}: {error}); delete it to start over") from None
    if version != VERSION:
        raise ValueError(f"resume: checkpoint {path} has version {version}, expected {VERSION}")
    differ = sorted(k for k in {*theirs, *fingerprint} if theirs.get(k) != fingerprint.get(k))
    if differ:
        details = ", ".join(f"{k}: saved {theirs.get(k)!r} vs now {fingerprint.get(k)!r}" for k in differ)
        raise ValueError(f"resume: checkpoint {path} belongs to a different run ({details}); "
                         "use the same settings and data, or delete it to start over")
    return state
