"""Memory policies for the reverse sweep: which inner states to keep, which to recompute.

A schedule is pure data: a list of :class:`Action` that the engine executes in order. It
knows nothing about tensors or about the math of a step (this module imports no torch).

The model of computation. There are ``n`` inner steps and one extra pseudo-step ``n``, the
outer loss, whose reversal seeds the adjoint. The engine holds one *current* state at
position ``p`` and a set of *stored* states keyed by position.

- ``ADVANCE k``: current is at ``k``; run inner step ``k`` (costs one forward step), now at ``k + 1``.
- ``STORE k``:   keep the current state (at ``k``) as a snapshot.
- ``RESTORE k``: make the snapshot at ``k`` the current state.
- ``FREE k``:    drop the snapshot at ``k``.
- ``RETREAT k``: current is at ``k + 1``; run step ``k`` backwards (reversible dynamics only).
- ``REVERSE k``: current is at ``k``; run the reverse step ``k`` (``k == n``: the outer loss).
  Reverse steps come in the order ``n, n - 1, ..., 0``, each exactly once.

Every schedule here begins with the current state at position 0 (θ0, which must be stored
explicitly if it is needed again) and the counts it achieves are checked by :func:`simulate`.
"""
from __future__ import annotations

import enum
import math
from typing import NamedTuple

__all__ = [
    "Op", "Action", "ScheduleStats", "store_all", "periodic", "binomial", "reversible",
    "simulate", "binomial_cost", "max_stored",
]


class Op(enum.Enum):
    ADVANCE = "advance"
    STORE = "store"
    RESTORE = "restore"
    FREE = "free"
    RETREAT = "retreat"
    REVERSE = "reverse"


class Action(NamedTuple):
    op: Op
    k: int


class ScheduleStats(NamedTuple):
    forward_steps: int   # ADVANCE + RETREAT actions: inner steps computed outside reverse steps
    max_stored: int      # most snapshots held at one time
    reverse_order: tuple[int, ...]


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"schedule: n (the number of inner steps) must be an integer >= 1, got {n!r}")


def _check_snapshots(snapshots: int) -> None:
    if not isinstance(snapshots, int) or snapshots < 1:
        raise ValueError(f"schedule: snapshots must be an integer >= 1, got {snapshots!r}")


def store_all(n: int) -> list[Action]:
    """Store every state θ_0 … θ_{n-1} in one forward sweep, then reverse (Algorithm 3 as written).

    Memory: n snapshots. Time: n forward steps (no recomputation).
    """
    _check_n(n)
    acts: list[Action] = []
    for k in range(n):
        acts += [Action(Op.STORE, k), Action(Op.ADVANCE, k)]
    acts.append(Action(Op.REVERSE, n))
    for k in reversed(range(n)):
        acts += [Action(Op.RESTORE, k), Action(Op.REVERSE, k), Action(Op.FREE, k)]
    return acts


def periodic(n: int, segment: int | None = None) -> list[Action]:
    """√n checkpointing (Chen et al. 2016, "Training deep nets with sublinear memory cost").

    The n + 1 positions are cut into segments of ``segment`` (default ⌈√(n+1)⌉) steps. The
    forward sweep stores each segment's first state, and every state of the last segment.
    The reverse sweep then, segment by segment from the last, restores the segment's first
    state, recomputes and stores the states inside it, and reverses them.

    Memory: ⌈(n+1)/segment⌉ + segment − 1 snapshots, O(√n). Time: fewer than 2n forward steps.
    """
    _check_n(n)
    length = n + 1
    seg = segment if segment is not None else math.isqrt(length - 1) + 1
    if not isinstance(seg, int) or seg < 1:
        raise ValueError(f"periodic: segment must be an integer >= 1, got {segment!r}")
    last = (n // seg) * seg  # start of the segment that holds the outer loss (position n)
    acts: list[Action] = []
    for k in range(n):
        if k % seg == 0 or k >= last:
            acts.append(Action(Op.STORE, k))
        acts.append(Action(Op.ADVANCE, k))
    acts.append(Action(Op.REVERSE, n))
    for start in range(last, -1, -seg):
        end = min(start + seg, n)  # steps start .. end-1 are reversed in this segment
        if start != last:
            acts.append(Action(Op.RESTORE, start))
            for k in range(start, end - 1):
                acts += [Action(Op.ADVANCE, k), Action(Op.STORE, k + 1)]
        for k in reversed(range(start, end)):
            acts += [Action(Op.RESTORE, k), Action(Op.REVERSE, k), Action(Op.FREE, k)]
    return acts


def _beta(c: int, r: int) -> int:
    """β(c, r) = C(c + r, c): the most steps c snapshots reverse when no step runs more than r times."""
    return math.comb(c + r, c) if r >= 0 else 0


def binomial_cost(length: int, snapshots: int) -> int:
    """Fewest forward steps that reverse ``length`` steps from a stored start with ``snapshots`` slots.

    Griewank (1992), Griewank & Walther (2000, ACM TOMS 26, "Algorithm 799: revolve"): with
    r the repetition number, β(c, r−1) < l ≤ β(c, r), the optimum is t(l, c) = r·l − β(c+1, r−1).
    ``snapshots`` counts the start's own slot; a start that is never needed again (l = 1)
    takes none.
    """
    if length <= 1:
        return 0
    if snapshots < 1:
        return math.inf  # type: ignore[return-value]
    r = 0
    while _beta(snapshots, r) < length:
        r += 1
    return r * length - _beta(snapshots + 1, r - 1)


def _split(length: int, snapshots: int) -> int:
    """Where to place the next snapshot: argmin_m m + t(l − m, c − 1) + t(m, c).

    The cost is a sum of convex functions of m (t is convex in l), so the first m whose
    forward difference is ≥ 0 is a minimiser; found by bisection.
    """
    def cost(m: int) -> int:
        return m + binomial_cost(length - m, snapshots - 1) + binomial_cost(m, snapshots)

    lo, hi = 1, length - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(mid + 1) - cost(mid) >= 0:
            hi = mid
        else:
            lo = mid + 1
    return lo


def binomial(n: int, snapshots: int) -> list[Action]:
    """Binomial checkpointing, "revolve" (Griewank & Walther 2000, ACM TOMS 26: Algorithm 799).

    With c = ``snapshots`` slots it reverses the n steps (plus the outer loss) with the fewest
    forward steps possible, t(n+1, c) = r·(n+1) − β(c+1, r−1) (see :func:`binomial_cost`):
    O(log n) memory for O(n log n) time. ``snapshots >= n`` is store-all.
    """
    _check_n(n)
    _check_snapshots(snapshots)
    acts: list[Action] = [Action(Op.STORE, 0)]
    # Work stack of pending tasks, executed last-in first-out. A segment task
    # (start, length, slots) means: current is at `start`, which is stored if length >= 2;
    # reverse steps start+length-1 ... start with `slots` snapshots (start's included).
    todo: list[tuple[int, int, int] | Action] = [Action(Op.FREE, 0), (0, n + 1, snapshots)]
    while todo:
        task = todo.pop()
        if isinstance(task, Action):
            acts.append(task)
            continue
        start, length, slots = task
        if length == 1:
            acts.append(Action(Op.REVERSE, start))
        elif slots == 1:  # no spare slot: recompute from start before each reverse step
            for j in reversed(range(length)):
                if j != length - 1:
                    acts.append(Action(Op.RESTORE, start))
                acts += [Action(Op.ADVANCE, k) for k in range(start, start + j)]
                acts.append(Action(Op.REVERSE, start + j))
        else:
            m = _split(length, slots)
            acts += [Action(Op.ADVANCE, k) for k in range(start, start + m)]
            later: list[tuple[int, int, int] | Action] = []
            if length - m >= 2:
                acts.append(Action(Op.STORE, start + m))
                later.append(Action(Op.FREE, start + m))
            later += [Action(Op.RESTORE, start), (start, m, slots)]
            todo += reversed(later)
            todo.append((start + m, length - m, slots - 1))
    return acts


def reversible(n: int) -> list[Action]:
    """Run forward without storing anything, then step backwards exactly (Maclaurin et al. 2015).

    Memory: no snapshots (the dynamics keeps the bits it cannot recompute). Time: 2n steps.
    """
    _check_n(n)
    acts = [Action(Op.ADVANCE, k) for k in range(n)]
    acts.append(Action(Op.REVERSE, n))
    for k in reversed(range(n)):
        acts += [Action(Op.RETREAT, k), Action(Op.REVERSE, k)]
    return acts


def max_stored(actions: list[Action]) -> int:
    """The most snapshots held at one time (the slots a pool needs); no validity checks (see :func:`simulate`)."""
    held = peak = 0
    for op, _ in actions:
        if op is Op.STORE:
            held += 1
            peak = max(peak, held)
        elif op is Op.FREE:
            held -= 1
    return peak


def simulate(actions: list[Action], n: int) -> ScheduleStats:
    """Execute a schedule on positions only; raise ValueError at the first invalid action.

    Checks: ADVANCE/RETREAT/REVERSE find the current state where they need it, RESTORE/FREE
    name a stored state, reverse steps run n, n−1, …, 0 exactly once, nothing is left stored.
    """
    current: int | None = 0
    stored: set[int] = set()
    forward = peak = 0
    order: list[int] = []
    for i, (op, k) in enumerate(actions):
        where = f"schedule action {i} ({op.value} {k})"
        if op in (Op.ADVANCE, Op.STORE, Op.REVERSE) and current != k:
            raise ValueError(f"{where}: current state is at {current}")
        if op is Op.ADVANCE:
            current, forward = k + 1, forward + 1
        elif op is Op.RETREAT:
            if current != k + 1:
                raise ValueError(f"{where}: current state is at {current}")
            current, forward = k, forward + 1
        elif op is Op.STORE:
            stored.add(k)
            peak = max(peak, len(stored))
        elif op is Op.RESTORE:
            if k not in stored:
                raise ValueError(f"{where}: no state is stored there")
            current = k
        elif op is Op.FREE:
            if k not in stored:
                raise ValueError(f"{where}: no state is stored there")
            stored.remove(k)
        elif op is Op.REVERSE:
            expected = n - len(order)
            if k != expected:
                raise ValueError(f"{where}: expected reverse step {expected}")
            order.append(k)
    if len(order) != n + 1:
        raise ValueError(f"schedule reverses {len(order)} steps, expected {n + 1}")
    if stored:
        raise ValueError(f"schedule leaves states stored at the end: {sorted(stored)}")
    return ScheduleStats(forward, peak, tuple(order))
