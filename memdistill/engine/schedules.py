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
- ``RECORD k``:  current is at ``k``; run inner step ``k`` keeping its autograd graph on the
  *tape* (costs one forward step and one step's graph), now at ``k + 1``. The tape holds a run of
  consecutive recorded steps; the first RECORD of an empty tape starts it at ``k``.
- ``UNWIND k``:  current is at the tape's end; reverse every recorded step, from the last down
  to ``k`` (the tape's start), in one backward pass through the tape, which is then empty;
  current is at ``k``. Counts as the reverse steps ``end − 1, …, k``.

Every schedule here begins with the current state at position 0 (θ0, which must be stored
explicitly if it is needed again) and the counts it achieves are checked by :func:`simulate`.

Storage levels (multistage checkpointing, Stumm & Walther 2009; firedrake's checkpoint_schedules).
STORE, RESTORE and FREE name the ``level`` a snapshot lives on: 0 the memory of the model's
device, 1 a second level (pinned host memory or a memory-mapped file, chosen by the caller). A
schedule says where each snapshot lives, never how a level stores it. :func:`relevel` moves a
whole schedule to one level; :func:`two_level` keeps segment starts on level 1 and the states
inside a segment on level 0.
"""
from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Iterator
from typing import NamedTuple

__all__ = [
    "Op", "Action", "ScheduleStats", "store_all", "periodic", "taped", "binomial", "reversible",
    "simulate", "binomial_cost", "max_stored", "relevel", "two_level", "two_level_cost", "two_level_slots",
    "Lazy", "lazy", "Counts", "counts",
]


class Op(enum.Enum):
    ADVANCE = "advance"
    STORE = "store"
    RESTORE = "restore"
    FREE = "free"
    RETREAT = "retreat"
    REVERSE = "reverse"
    RECORD = "record"
    UNWIND = "unwind"


class Action(NamedTuple):
    op: Op
    k: int
    level: int = 0   # storage level of a STORE / RESTORE / FREE (0: memory); ignored by the others


class ScheduleStats(NamedTuple):
    forward_steps: int   # ADVANCE + RETREAT + RECORD actions: inner steps computed outside reverse steps
    max_stored: int      # most snapshots held at one time
    reverse_order: tuple[int, ...]
    level_max_stored: tuple[int, ...] = ()   # most snapshots held at one time on each level 0, 1, ...
    max_taped: int = 0   # most steps on the tape at one time


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
    return list(_store_all(n))


def _store_all(n: int) -> Iterator[Action]:
    for k in range(n):
        yield from (Action(Op.STORE, k), Action(Op.ADVANCE, k))
    yield Action(Op.REVERSE, n)
    for k in reversed(range(n)):
        yield from (Action(Op.RESTORE, k), Action(Op.REVERSE, k), Action(Op.FREE, k))


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
    return list(_periodic(n, seg))


def _periodic(n: int, seg: int) -> Iterator[Action]:
    last = (n // seg) * seg  # start of the segment that holds the outer loss (position n)
    for k in range(n):
        if k % seg == 0 or k >= last:
            yield Action(Op.STORE, k)
        yield Action(Op.ADVANCE, k)
    yield Action(Op.REVERSE, n)
    for start in range(last, -1, -seg):
        end = min(start + seg, n)  # steps start .. end-1 are reversed in this segment
        if start != last:
            yield Action(Op.RESTORE, start)
            for k in range(start, end - 1):
                yield from (Action(Op.ADVANCE, k), Action(Op.STORE, k + 1))
        for k in reversed(range(start, end)):
            yield from (Action(Op.RESTORE, k), Action(Op.REVERSE, k), Action(Op.FREE, k))


def taped(n: int, segment: int) -> list[Action]:
    """√n checkpointing with recorded segments (Chen et al. 2016's own form of it): the forward
    sweep stores each segment's first state and records the last segment; the reverse sweep,
    segment by segment from the last, restores the segment's start, records its steps with their
    graphs and unwinds them in one backward pass (then frees the start).

    Memory: ⌈n/segment⌉ snapshots and ``segment`` steps' graphs. With a step's graph G times a
    state S, ``segment`` ≈ √(n·S/G) minimises the sum. Time: fewer than 2n forward steps, and no
    reverse step recomputes a gradient (each recorded step's graph is its reverse step's).
    """
    _check_n(n)
    if not isinstance(segment, int) or segment < 1:
        raise ValueError(f"taped: segment must be an integer >= 1, got {segment!r}")
    return list(_taped(n, segment))


def _taped(n: int, seg: int) -> Iterator[Action]:
    last = (n - 1) // seg * seg   # start of the last segment, which holds step n − 1
    for k in range(last):
        if k % seg == 0:
            yield Action(Op.STORE, k)
        yield Action(Op.ADVANCE, k)
    yield from (Action(Op.RECORD, k) for k in range(last, n))
    yield from (Action(Op.REVERSE, n), Action(Op.UNWIND, last))
    for start in range(last - seg, -1, -seg):
        yield Action(Op.RESTORE, start)
        yield from (Action(Op.RECORD, k) for k in range(start, start + seg))
        yield from (Action(Op.UNWIND, start), Action(Op.FREE, start))


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
    return list(_binomial(n, snapshots))


def _binomial(n: int, snapshots: int) -> Iterator[Action]:
    yield Action(Op.STORE, 0)
    # Work stack of pending tasks, executed last-in first-out. A segment task
    # (start, length, slots) means: current is at `start`, which is stored if length >= 2;
    # reverse steps start+length-1 ... start with `slots` snapshots (start's included).
    todo: list[tuple[int, int, int] | Action] = [Action(Op.FREE, 0), (0, n + 1, snapshots)]
    while todo:
        task = todo.pop()
        if isinstance(task, Action):
            yield task
            continue
        start, length, slots = task
        if length == 1:
            yield Action(Op.REVERSE, start)
        elif slots == 1:  # no spare slot: recompute from start before each reverse step
            for j in reversed(range(length)):
                if j != length - 1:
                    yield Action(Op.RESTORE, start)
                yield from (Action(Op.ADVANCE, k) for k in range(start, start + j))
                yield Action(Op.REVERSE, start + j)
        else:
            m = _split(length, slots)
            yield from (Action(Op.ADVANCE, k) for k in range(start, start + m))
            later: list[tuple[int, int, int] | Action] = []
            if length - m >= 2:
                yield Action(Op.STORE, start + m)
                later.append(Action(Op.FREE, start + m))
            later += [Action(Op.RESTORE, start), (start, m, slots)]
            todo += reversed(later)
            todo.append((start + m, length - m, slots - 1))


def reversible(n: int) -> list[Action]:
    """Run forward without storing anything, then step backwards exactly (Maclaurin et al. 2015).

    Memory: no snapshots (the dynamics keeps the bits it cannot recompute). Time: 2n steps.
    """
    _check_n(n)
    return list(_reversible(n))


def _reversible(n: int) -> Iterator[Action]:
    yield from (Action(Op.ADVANCE, k) for k in range(n))
    yield Action(Op.REVERSE, n)
    for k in reversed(range(n)):
        yield from (Action(Op.RETREAT, k), Action(Op.REVERSE, k))


def relevel(actions: list[Action], level: int) -> list[Action]:
    """``actions`` with every STORE / RESTORE / FREE moved to storage ``level`` (same positions, same counts)."""
    return [Action(op, k, level if op in _STORAGE else 0) for op, k, _ in actions]


_STORAGE = (Op.STORE, Op.RESTORE, Op.FREE)


class Lazy:
    """A schedule generated on each iteration (``fn(*args)``), never held whole: a schedule of 10⁶
    steps is millions of actions, which as a list would take more memory than the snapshots.
    ``key``: hashable, equal for equal schedules (:func:`counts` remembers their counts)."""

    def __init__(self, fn, *args, key: tuple | None = None):
        self.fn, self.args, self.key = fn, args, key

    def __iter__(self):
        return iter(self.fn(*self.args))


class Counts(NamedTuple):
    """What a sweep needs to know of a schedule before running it (see :func:`counts`)."""
    forward_steps: int          # ADVANCE + RETREAT + RECORD actions
    max_stored: int             # most snapshots held at one time, all levels
    levels: tuple[int, ...]     # most snapshots held at one time on each level 0, 1, … (the pools' slots)
    max_taped: int = 0          # most steps on the tape at one time


_COUNTS: dict[tuple, Counts] = {}
_COUNTS_KEPT = 256


def counts(actions: Iterable[Action], n: int) -> Counts:
    """:func:`simulate`'s counts of a schedule for n steps (which checks it); those of a keyed
    :class:`Lazy` (this module's generators) are remembered, so that a sweep repeated with the same
    schedule — every outer step of a distillation — generates its actions once, not three times."""
    key = getattr(actions, "key", None)
    if key is not None and (key, n) in _COUNTS:
        return _COUNTS[key, n]
    stats = simulate(actions, n)
    found = Counts(stats.forward_steps, stats.max_stored, stats.level_max_stored, stats.max_taped)
    if key is not None:
        if len(_COUNTS) >= _COUNTS_KEPT:
            _COUNTS.clear()
        _COUNTS[key, n] = found
    return found


_GENERATORS = {"store-all": _store_all, "periodic": _periodic, "taped": _taped, "binomial": _binomial,
               "reversible": _reversible}


def lazy(name: str, n: int, snapshots: int | None = None, level: int = 0) -> Lazy:
    """The schedule ``name`` ("store-all", "periodic", "taped", "binomial", "reversible") for n
    steps as a :class:`Lazy`: the actions of :func:`store_all`, :func:`periodic` (``snapshots``
    unused), :func:`taped` (``snapshots``: its segment), :func:`binomial` (with ``snapshots``) or
    :func:`reversible`, made anew on each iteration, its storage actions on ``level``
    (:func:`relevel`). What the engine runs: a list of a long schedule's actions would take more
    memory than its snapshots."""
    _check_n(n)
    if name not in _GENERATORS:
        raise ValueError(f"lazy: unknown schedule {name!r}; it needs to be one of {list(_GENERATORS)}")
    if name in ("binomial", "taped"):
        _check_snapshots(snapshots)
    args = {"periodic": (n, math.isqrt(n) + 1), "binomial": (n, snapshots), "taped": (n, snapshots)}.get(name, (n,))
    key = (name, *args, level)
    if level == 0:
        return Lazy(_GENERATORS[name], *args, key=key)
    return Lazy(lambda: (Action(op, k, level if op in _STORAGE else 0) for op, k, _ in _GENERATORS[name](*args)),
                key=key)


def _two_level_segment(start: int, length: int, snapshots: int, first: bool, inner: list[Action] | None):
    """Reverse positions start+length−1 … start, the start on level 1, ``snapshots`` level-0 slots."""
    if length == 1:
        if not first:  # the start was stored on level 1 by the forward sweep
            yield Action(Op.RESTORE, start, 1)
        yield Action(Op.REVERSE, start)
        if not first:
            yield Action(Op.FREE, start, 1)
        return
    inner = inner if inner is not None else binomial(length - 1, snapshots + 1)
    for i, (op, k, _) in enumerate(inner):
        if i == 0 and not first:  # binomial's STORE of its start: already on level 1
            yield Action(Op.RESTORE, start, 1)
        else:
            yield Action(op, start + k, 1 if k == 0 and op in _STORAGE else 0)


def _two_level(n: int, snapshots: int):
    seg = snapshots + 1
    last = (n // seg) * seg   # start of the segment that holds the outer loss (position n)
    for k in range(last):
        if k % seg == 0:
            yield Action(Op.STORE, k, 1)
        yield Action(Op.ADVANCE, k)
    full = binomial(seg - 1, snapshots + 1) if seg > 1 else None
    for start in range(last, -1, -seg):
        length = min(seg, n + 1 - start)
        yield from _two_level_segment(start, length, snapshots, start == last, full if length == seg else None)


def two_level(n: int, snapshots: int) -> Lazy:
    """Two-level checkpointing: segment starts on level 1 (disk), the states inside on level 0.

    The n + 1 positions are cut into segments of ``snapshots + 1``. The forward sweep stores
    every segment's first state on level 1. The reverse sweep, segment by segment from the last,
    restores the start from level 1 and reverses the segment by binomial checkpointing
    (:func:`binomial`) with its start on level 1 and ``snapshots`` level-0 slots. A segment of
    c + 1 positions needs each step once more (repetition number 1), so the forward steps are
    (see :func:`two_level_cost`) about 2n: n in the forward sweep, n inside the segments.
    Level 1 holds ⌈(n+1)/(c+1)⌉ states, level 0 at most c. ``snapshots=0``: every state on
    level 1 (store-all). Generated lazily (:class:`Lazy`).
    """
    _check_n(n)
    if not isinstance(snapshots, int) or snapshots < 0:
        raise ValueError(f"two_level: snapshots must be an integer >= 0, got {snapshots!r}")
    return Lazy(_two_level, n, snapshots, key=("two-level", n, snapshots))


def two_level_cost(n: int, snapshots: int) -> int:
    """Forward steps of :func:`two_level`: the forward sweep to the last segment start, ``last``
    = ⌊n/(c+1)⌋(c+1), plus t(l_j, c+1) for each segment of l_j positions (:func:`binomial_cost`:
    its start's slot is on level 1, the other c on level 0)."""
    seg = snapshots + 1
    last = (n // seg) * seg
    full = (last // seg) * binomial_cost(seg, snapshots + 1)
    return last + full + binomial_cost(n + 1 - last, snapshots + 1)


def two_level_slots(n: int, snapshots: int) -> tuple[int, int]:
    """Most snapshots :func:`two_level` holds at one time on (level 0, level 1), without running it:
    binomial's within a segment less its start's slot, and every segment start (the last one's
    only when it is stored, i.e. the last segment has two positions or more)."""
    seg = snapshots + 1
    last = (n // seg) * seg
    lengths = {n + 1 - last} | ({seg} if last else set())
    inner = [max_stored(binomial(length - 1, seg)) - 1 for length in lengths if length >= 2]
    return max(inner, default=0), last // seg + (n + 1 - last >= 2)


def max_stored(actions: list[Action], level: int | None = None) -> int:
    """The most snapshots held at one time (on ``level``, None: all levels together): the slots a
    pool needs; no validity checks (see :func:`simulate`)."""
    held = peak = 0
    for op, _, where in actions:
        if level is not None and where != level:
            continue
        if op is Op.STORE:
            held += 1
            peak = max(peak, held)
        elif op is Op.FREE:
            held -= 1
    return peak


def _where(i: int, op: Op, k: int, level: int) -> str:
    """Action i of a schedule, for an error message (built only on error: it costs more than the check)."""
    return f"schedule action {i} ({op.value} {k}{f' level {level}' if level else ''})"


def simulate(actions: list[Action], n: int) -> ScheduleStats:
    """Execute a schedule on positions only; raise ValueError at the first invalid action.

    Checks: ADVANCE/RETREAT/REVERSE/RECORD find the current state where they need it, RESTORE/FREE
    name a state stored on their level, UNWIND the start of a tape that ends at the current
    state, reverse steps run n, n−1, …, 0 exactly once, nothing is left stored or taped, and
    no state moves but by RECORD while the tape holds steps.
    """
    current: int | None = 0
    stored: dict[int, int] = {}   # position -> level
    held: dict[int, int] = {}     # level -> snapshots held now
    level_peak: dict[int, int] = {}
    forward = peak = taped = max_taped = 0
    order: list[int] = []
    for i, (op, k, level) in enumerate(actions):
        if op in (Op.ADVANCE, Op.STORE, Op.REVERSE, Op.RECORD) and current != k:
            raise ValueError(f"{_where(i, op, k, level)}: current state is at {current}")
        if taped and op in (Op.ADVANCE, Op.RETREAT, Op.RESTORE):
            raise ValueError(f"{_where(i, op, k, level)}: the tape holds {taped} steps (unwind it first)")
        if op is Op.RECORD:
            current, forward, taped = k + 1, forward + 1, taped + 1
            max_taped = max(max_taped, taped)
        elif op is Op.UNWIND:
            if not taped or current - taped != k:
                raise ValueError(f"{_where(i, op, k, level)}: the tape starts at "
                                 f"{current - taped if taped else 'nothing (it is empty)'}")
            for j in reversed(range(k, current)):
                if j != n - len(order):
                    raise ValueError(f"{_where(i, op, k, level)}: expected reverse step {n - len(order)}")
                order.append(j)
            current, taped = k, 0
        elif op is Op.ADVANCE:
            current, forward = k + 1, forward + 1
        elif op is Op.RETREAT:
            if current != k + 1:
                raise ValueError(f"{_where(i, op, k, level)}: current state is at {current}")
            current, forward = k, forward + 1
        elif op is Op.STORE:
            if k in stored:
                held[stored[k]] -= 1
            stored[k] = level
            held[level] = held.get(level, 0) + 1
            level_peak[level] = max(level_peak.get(level, 0), held[level])
            peak = max(peak, len(stored))
        elif op in (Op.RESTORE, Op.FREE):
            if stored.get(k) != level:
                raise ValueError(f"{_where(i, op, k, level)}: no state is stored there"
                                 f"{f' (it is on level {stored[k]})' if k in stored else ''}")
            if op is Op.RESTORE:
                current = k
            else:
                del stored[k]
                held[level] -= 1
        elif op is Op.REVERSE:
            expected = n - len(order)
            if k != expected:
                raise ValueError(f"{_where(i, op, k, level)}: expected reverse step {expected}")
            order.append(k)
    if taped:
        raise ValueError(f"schedule leaves {taped} steps on the tape at the end")
    if len(order) != n + 1:
        raise ValueError(f"schedule reverses {len(order)} steps, expected {n + 1}")
    if stored:
        raise ValueError(f"schedule leaves states stored at the end: {sorted(stored)}")
    levels = tuple(level_peak.get(level, 0) for level in range(max(level_peak, default=-1) + 1))
    return ScheduleStats(forward, peak, tuple(order), levels, max_taped)
