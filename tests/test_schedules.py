"""Schedules are pure data: checked on positions only, without torch."""
from __future__ import annotations

import math
import re
from functools import cache

import pytest

from memdistill.engine import schedules
from memdistill.engine.schedules import Action, Op, binomial, binomial_cost, periodic, reversible, simulate, store_all

CODE = {Op.ADVANCE: "A", Op.STORE: "S", Op.RESTORE: "L", Op.FREE: "F", Op.RETREAT: "B", Op.REVERSE: "R"}


def fmt(actions: list[Action]) -> str:
    return " ".join(f"{CODE[a.op]}{a.k}" for a in actions)


@cache
def brute_force(length: int, slots: int) -> float:
    """Fewest forward steps over every split of every segment (the recursion revolve optimises)."""
    if length == 1:
        return 0
    if slots < 1:
        return math.inf
    return min(m + brute_force(length - m, slots - 1) + brute_force(m, slots) for m in range(1, length))


# Golden orders, derived by hand from the definitions in memdistill/schedules.py.
GOLDEN = [
    (store_all(2), "S0 A0 S1 A1 R2 L1 R1 F1 L0 R0 F0"),
    (periodic(3), "S0 A0 A1 S2 A2 R3 L2 R2 F2 L0 A0 S1 L1 R1 F1 L0 R0 F0"),
    # n = 3 with two slots: t(4, 2) = 4 forward steps, the snapshot placed after one step.
    (binomial(3, 2), "S0 A0 S1 A1 A2 R3 L1 A1 R2 L1 R1 F1 L0 R0 F0"),
    (binomial(2, 1), "S0 A0 A1 R2 L0 A0 R1 L0 R0 F0"),
    (reversible(2), "A0 A1 R2 B1 R1 B0 R0"),
]


@pytest.mark.parametrize("actions, expected", GOLDEN)
def test_golden_orders(actions, expected):
    assert fmt(actions) == expected


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 33])
@pytest.mark.parametrize("make", [store_all, periodic, reversible, lambda n: binomial(n, 1), lambda n: binomial(n, 3)])
def test_every_step_reversed_once_in_order(make, n):
    stats = simulate(make(n), n)
    assert stats.reverse_order == tuple(range(n, -1, -1))


def test_binomial_cost_is_the_brute_force_optimum():
    for length in range(1, 50):
        for slots in range(1, 7):
            assert binomial_cost(length, slots) == brute_force(length, slots), (length, slots)


@pytest.mark.parametrize("slots", [1, 2, 3, 4, 6])
def test_binomial_schedule_achieves_the_optimum_within_its_slots(slots):
    for n in range(1, 45):
        stats = simulate(binomial(n, slots), n)
        assert stats.forward_steps == brute_force(n + 1, slots), n
        assert stats.max_stored <= slots


def test_binomial_matches_the_closed_form_for_long_unrolls():
    # Griewank & Walther: t(l, c) = r·l − β(c+1, r−1) = r·l − C(c+r, c+1), where r is the
    # smallest repetition number with β(c, r) = C(c+r, c) >= l.
    n, c = 2000, 5
    r = next(r for r in range(100) if math.comb(c + r, c) >= n + 1)
    expected = r * (n + 1) - math.comb(c + r, c + 1)
    stats = simulate(binomial(n, c), n)
    assert stats.forward_steps == expected and stats.max_stored <= c


def test_enough_slots_is_store_all():
    n = 12
    assert simulate(binomial(n, n), n).forward_steps == n == simulate(store_all(n), n).forward_steps


@pytest.mark.parametrize("n", [15, 100, 255, 1000])
def test_periodic_memory_and_time_bounds(n):
    stats = simulate(periodic(n), n)
    assert stats.max_stored <= 2 * math.isqrt(n + 1) + 2
    assert n <= stats.forward_steps < 2 * n


def test_store_all_and_reversible_counts():
    assert simulate(store_all(9), 9)[:2] == (9, 9)
    assert simulate(reversible(9), 9)[:2] == (18, 0)


@pytest.mark.parametrize("call, message", [
    (lambda: binomial(0, 2), "n (the number of inner steps) must be an integer >= 1, got 0"),
    (lambda: binomial(5, 0), "snapshots must be an integer >= 1, got 0"),
    (lambda: periodic(5, segment=0), "segment must be an integer >= 1"),
    (lambda: store_all(-1), "must be an integer >= 1"),
])
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


@pytest.mark.parametrize("actions, message", [
    ([Action(Op.ADVANCE, 1)], "current state is at 0"),
    ([Action(Op.RESTORE, 0)], "no state is stored there"),
    ([Action(Op.ADVANCE, 0), Action(Op.REVERSE, 0)], "current state is at 1"),
    ([Action(Op.REVERSE, 0)], "expected reverse step 1"),
    ([Action(Op.STORE, 0), Action(Op.ADVANCE, 0), Action(Op.REVERSE, 1), Action(Op.RESTORE, 0),
      Action(Op.REVERSE, 0)], "left|leaves states stored"),
])
def test_simulate_rejects_invalid_schedules(actions, message):
    with pytest.raises(ValueError, match=message):
        simulate(actions, 1)


@pytest.mark.parametrize("n", [1, 2, 7, 30, 101])
def test_lazy_schedules_are_the_lists(n):
    """What the engine runs (generated on each iteration) equals the public list functions."""
    cases = [("store-all", None, schedules.store_all(n)), ("periodic", None, schedules.periodic(n)),
             ("reversible", None, schedules.reversible(n))]
    cases += [("binomial", c, schedules.binomial(n, c)) for c in (1, 2, 5)]
    for name, snapshots, actions in cases:
        lazy = schedules.lazy(name, n, snapshots)
        assert list(lazy) == actions and list(lazy) == actions  # iterable again
        assert list(schedules.lazy(name, n, snapshots, level=1)) == schedules.relevel(actions, 1)
    with pytest.raises(ValueError, match="lazy: unknown schedule 'revolve'"):
        schedules.lazy("revolve", n)



@pytest.mark.parametrize("name, n, snapshots, level", [("periodic", 37, None, 0), ("binomial", 50, 4, 0),
                                                       ("store-all", 9, None, 1), ("reversible", 12, None, 0)])
def test_counts_of_a_lazy_schedule_are_simulated_once_and_equal_its_list(name, n, snapshots, level, monkeypatch):
    listed = schedules.relevel({"periodic": lambda: periodic(n), "binomial": lambda: binomial(n, snapshots),
                                "store-all": lambda: store_all(n), "reversible": lambda: reversible(n)}[name](), level)
    stats = simulate(listed, n)
    simulated = []
    monkeypatch.setattr(schedules, "simulate", lambda actions, n: simulated.append(n) or simulate(actions, n))
    schedules._COUNTS.clear()
    for _ in range(3):   # one sweep per outer step of a distillation: the same schedule each time
        found = schedules.counts(schedules.lazy(name, n, snapshots, level), n)
    assert simulated == [n]
    assert found == schedules.Counts(stats.forward_steps, stats.max_stored, stats.level_max_stored)
    assert schedules.counts(listed, n) == found and simulated == [n, n]   # a list is checked every time
