"""Atomic file writes: write a temporary file in the target's folder, then ``os.replace``.

A reader never sees a half-written file, and a crash leaves the old file (or none) in place. A
write that fails (disk full, read-only folder) raises an OSError of the same kind whose message
names the file and says that the previous one is unchanged (or that none was written).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created); return the path."""
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as error:
        raise _not_written(path, error, existed) from error
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _not_written(path, error, existed) from error
        raise
    return path


def _not_written(path: Path, error: OSError, existed: bool) -> OSError:
    """``error`` (same class and errno) with a message naming ``path`` and what is left of it."""
    left = f"the previous {path.name} is unchanged" if existed else "no file was written"
    kind = type(error) if type(error).__module__ == "builtins" else OSError  # PermissionError, …: one message
    new = kind(f"could not write {path} ({error.strerror or error}); {left}")
    new.errno = error.errno
    return new


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, value: Any) -> Path:
    """Write ``value`` as indented JSON to ``path`` atomically (NaN is refused)."""
    return write_text_atomic(path, json.dumps(value, indent=2, allow_nan=False) + "\n")
