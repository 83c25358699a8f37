"""The snapshot pool: where a schedule's stored states live during one sweep.

A state is a NamedTuple of tensors (θ_k [B, P] and v_k [B, P] or None; int64 for the fixed-point
dynamics). The pool allocates, once per sweep, one buffer [slots, *shape] per tensor of the
state, with ``slots`` the most states the schedule ever holds at one time
(:func:`memdistill.engine.schedules.max_stored`). STORE copies the current state into a free
slot, RESTORE hands back views of its slot, FREE returns the slot. Nothing is allocated after
the start, so the memory a sweep takes is the memory it planned, and freed snapshots leave no
holes in the heap.

Views are safe because the engine never writes a state in place (every step makes new tensors)
and a slot is only written by STORE of the *current* state: a restored view that is still
current when its slot is freed and reused can only be copied onto itself.

The second storage level of ``offload`` (:func:`memdistill.engine.schedules.relevel`,
:func:`~memdistill.engine.schedules.two_level`) is another pool with the same ``store`` /
``restore`` / ``free`` / ``nbytes`` / ``close``: :class:`HostPool` (pinned host memory, copies on
a side CUDA stream) and :class:`FilePool` (a memory-mapped file). The engine picks a pool by the
level an action names and knows nothing of streams or files; :func:`storage_levels` makes the
levels a :class:`~memdistill.engine.planner.Plan` needs (and the offload directory).
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from memdistill.engine.dynamics import state_bytes
from memdistill.engine.planner import Plan, format_bytes

__all__ = ["Pool", "HostPool", "FilePool", "storage_levels"]


class Pool:
    """``slots`` stored states shaped like ``template``, in buffers allocated here, once."""

    def __init__(self, template: NamedTuple, slots: int):
        self.kind = type(template)
        self.buffers = [None if t is None else self._allocate(i, t, slots) for i, t in enumerate(template)]
        self.free_slots = list(reversed(range(slots)))   # pop() hands out slot 0 first
        self.where: dict[int, int] = {}                  # position k -> slot
        self.slot_bytes = state_bytes(template)

    @property
    def slots(self) -> int:
        return len(self.free_slots) + len(self.where)

    def nbytes(self) -> int:
        """Bytes of the states held now (slots in use × bytes of one state)."""
        return len(self.where) * self.slot_bytes

    def _allocate(self, i: int, t: Tensor, slots: int) -> Tensor:
        """The buffer [slots, *t.shape] of the state's i-th tensor t."""
        return torch.empty((slots, *t.shape), dtype=t.dtype, device=t.device)

    def _take(self, k: int) -> int:
        if not self.free_slots:
            raise RuntimeError(f"Pool: no free slot to store position {k} (all {self.slots} in use)")
        slot = self.where[k] = self.free_slots.pop()
        return slot

    def store(self, k: int, state: NamedTuple) -> None:
        """Copy ``state`` (the one at position k) into a free slot."""
        slot = self._take(k)
        for buffer, t in zip(self.buffers, state):
            if buffer is not None:
                buffer[slot].copy_(t)

    def restore(self, k: int) -> NamedTuple:
        """The state stored at position k, as views of its slot (never written while in use)."""
        slot = self.where[k]
        return self.kind._make(None if b is None else b[slot] for b in self.buffers)

    def free(self, k: int) -> None:
        self.free_slots.append(self.where.pop(k))

    def close(self) -> None:
        """Release what outlives the sweep (nothing here: the buffers go with the pool)."""


class HostPool(Pool):
    """``offload="cpu"``: the slots in host memory, pinned where CUDA is available.

    With the state on a CUDA device, STORE queues the device→host copy on a side stream (after
    the work that made the state) and returns at once, so the copy overlaps the next forward
    steps; RESTORE queues the host→device copy on the same stream (after the slot's store) and
    makes the current stream wait on its event. With the state on the CPU it is a second
    :class:`Pool` in host memory.
    """

    def __init__(self, template: NamedTuple, slots: int):
        self.device = next(t for t in template if t is not None).device
        super().__init__(template, slots)
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None

    def _allocate(self, i: int, t: Tensor, slots: int) -> Tensor:
        return torch.empty((slots, *t.shape), dtype=t.dtype, pin_memory=torch.cuda.is_available())

    def store(self, k: int, state: NamedTuple) -> None:
        if self.stream is None:
            return super().store(k, state)
        slot = self._take(k)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))  # the state is computed
        with torch.cuda.stream(self.stream):
            for buffer, t in zip(self.buffers, state):
                if buffer is not None:
                    buffer[slot].copy_(t, non_blocking=True)
                    t.record_stream(self.stream)  # not reused by the allocator before the copy ends
        return None

    def restore(self, k: int) -> NamedTuple:
        if self.stream is None:
            return super().restore(k)
        slot, current = self.where[k], torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.stream):  # after this slot's store: same stream, in order
            out = [None if b is None else b[slot].to(self.device, non_blocking=True) for b in self.buffers]
            copied = torch.cuda.Event()
            copied.record(self.stream)
        current.wait_event(copied)
        for t in out:
            if t is not None:
                t.record_stream(current)
        return self.kind._make(out)

    def close(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()


class FilePool(Pool):
    """``offload="disk"``: the slots in memory-mapped files in ``directory``, one per tensor of the
    state, reserved in full on creation (``posix_fallocate``), so a full disk is an OSError here,
    before the sweep, and never a fault in the middle of it. :meth:`close` removes the files."""

    def __init__(self, template: NamedTuple, slots: int, directory: str):
        self.directory, self.paths = directory, []
        self.device = next(t for t in template if t is not None).device
        try:
            super().__init__(template, slots)
        except BaseException:
            self.close()
            raise

    def _allocate(self, i: int, t: Tensor, slots: int) -> Tensor:
        path = os.path.join(self.directory, f"snapshots-{i}.bin")
        self.paths.append(path)
        size = max(1, slots * t.numel())
        nbytes = size * t.element_size()
        try:
            with open(path, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, nbytes)
        except OSError as e:
            reason = "the disk is full" if e.errno == errno.ENOSPC else e.strerror
            raise OSError(e.errno, f"offload='disk': cannot reserve {nbytes:,} bytes for {slots} snapshots "
                          f"in {self.directory}: {reason}") from e
        return torch.from_file(path, shared=True, size=size, dtype=t.dtype)[:slots * t.numel()].view(slots, *t.shape)

    def restore(self, k: int) -> NamedTuple:
        state = super().restore(k)
        return state if self.device.type == "cpu" else self.kind._make(
            None if t is None else t.to(self.device) for t in state)

    def close(self) -> None:
        """Remove the files (the mappings stay valid until their tensors go)."""
        for path in self.paths:
            if os.path.exists(path):
                os.remove(path)
        self.paths = []


@contextlib.contextmanager
def storage_levels(plan: Plan, offload_dir: str | None = None) -> Iterator[tuple]:
    """The pool factories of the levels above memory that ``plan`` stores on (for
    :func:`~memdistill.engine.loop.run`). "disk": checks the free space of ``offload_dir``
    (None: the temporary directory) against ``plan.levels`` before any work (OSError), makes a
    fresh directory in it for the files and removes it on the way out, failure included."""
    if plan.offload == "cpu":
        yield (HostPool,)
        return
    if plan.offload != "disk":
        yield ()
        return
    where = str(offload_dir) if offload_dir is not None else tempfile.gettempdir()
    try:
        directory = tempfile.TemporaryDirectory(prefix="memdistill-offload-", dir=where)
    except OSError as e:
        raise type(e)(e.errno, f"hypergradient: offload_dir={where!r} is not writable: {e.strerror}") from e
    with directory as path:
        need, free = dict(plan.levels)["disk"], shutil.disk_usage(path).free
        if need > free:
            raise OSError(errno.ENOSPC, f"hypergradient: offload='disk' needs {format_bytes(need)} for "
                          f"{plan.steps} steps in offload_dir={where!r}, but only {format_bytes(free)} is free; "
                          "pass another offload_dir or more memory (fewer snapshots go to disk)")
        yield (functools.partial(FilePool, directory=path),)
