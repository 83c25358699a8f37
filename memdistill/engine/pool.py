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

A later storage level (pinned host memory, a memory-mapped file) is another object with the same
``store`` / ``restore`` / ``free`` and ``nbytes``; the engine would pick it by the level an
action names, not by anything it knows about memory.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from memdistill.engine.dynamics import state_bytes

__all__ = ["Pool"]


class Pool:
    """``slots`` stored states shaped like ``template``, in buffers allocated here, once."""

    def __init__(self, template: NamedTuple, slots: int):
        self.kind = type(template)
        self.buffers = [None if t is None else torch.empty((slots, *t.shape), dtype=t.dtype, device=t.device)
                        for t in template]
        self.free_slots = list(reversed(range(slots)))   # pop() hands out slot 0 first
        self.where: dict[int, int] = {}                  # position k -> slot
        self.slot_bytes = state_bytes(template)

    @property
    def slots(self) -> int:
        return len(self.free_slots) + len(self.where)

    def nbytes(self) -> int:
        """Bytes of the states held now (slots in use × bytes of one state)."""
        return len(self.where) * self.slot_bytes

    def store(self, k: int, state: NamedTuple) -> None:
        """Copy ``state`` (the one at position k) into a free slot."""
        if not self.free_slots:
            raise RuntimeError(f"Pool: no free slot to store position {k} (all {self.slots} in use)")
        slot = self.free_slots.pop()
        for buffer, t in zip(self.buffers, state):
            if buffer is not None:
                buffer[slot].copy_(t)
        self.where[k] = slot

    def restore(self, k: int) -> NamedTuple:
        """The state stored at position k, as views of its slot (never written while in use)."""
        slot = self.where[k]
        return self.kind._make(None if b is None else b[slot] for b in self.buffers)

    def free(self, k: int) -> None:
        self.free_slots.append(self.where.pop(k))
