"""Property-based tests (hypothesis) of the engine's pure parts: schedules, the fixed-point
reversal and the input checks. The default run keeps each property to a few dozen examples;
``-m slow`` runs the same properties on many more."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from memdistill.engine import schedules
from memdistill.engine.fixedpoint import ExactSGD
from memdistill.engine.schedules import Op
from memdistill.engine.validation import check_inputs, check_labels

# The default run is derandomised (the same examples every run: CI cannot turn red by chance);
# the slow run (-m slow) draws fresh examples each time.
FAST = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=1000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- schedules


def execute(actions: list[schedules.Action], n: int) -> tuple[int, int, list[int]]:
    """Run a schedule on positions, independently of schedules.simulate; returns (forward steps,
    most states stored at once, reverse order). Asserts every action finds what it needs."""
    current, stored, forward, peak, order = 0, set(), 0, 0, []
    for i, action in enumerate(actions):
        op, k = action.op, action.k
        assert 0 <= k <= n, (i, op, k)
        if op is Op.ADVANCE:
            assert current == k < n, (i, op, k, current)
            current, forward = k + 1, forward + 1
        elif op is Op.RETREAT:
            assert current == k + 1, (i, op, k, current)
            current, forward = k, forward + 1
        elif op is Op.STORE:
            assert current == k and k not in stored, (i, op, k, current)  # only the state at k, once
            stored.add(k)
            peak = max(peak, len(stored))
        elif op is Op.RESTORE:
            assert k in stored, (i, op, k)  # never restores a state it has not stored
            current = k
        elif op is Op.FREE:
            assert k in stored, (i, op, k)
            stored.remove(k)
        else:
            assert op is Op.REVERSE and current == k, (i, op, k, current)
            order.append(k)
    assert not stored, sorted(stored)
    return forward, peak, order


def revolve_steps(length: int, c: int) -> int:
    """Griewank & Walther's t(l, c) = r·l − C(c + r, c + 1), r the least with C(c + r, c) >= l."""
    if length == 1:
        return 0
    r = next(r for r in range(length + 1) if math.comb(c + r, c) >= length)
    return r * length - math.comb(c + r, c + 1)


steps_of_a_run = st.tuples(st.integers(1, 40), st.integers(1, 8)).map(lambda se: se[0] * se[1])  # n = s · epochs


def check_schedule(kind: str, n: int, extra: int) -> None:
    if kind == "store_all":
        actions, stored, forward = schedules.store_all(n), n, n
    elif kind == "reversible":
        actions, stored, forward = schedules.reversible(n), 0, 2 * n
    elif kind == "binomial":
        c = extra
        actions, stored, forward = schedules.binomial(n, c), min(c, n), revolve_steps(n + 1, c)
    else:
        seg = extra if extra <= n + 1 else math.isqrt(n) + 1   # a given segment, or the √n default
        actions = schedules.periodic(n, seg if extra <= n + 1 else None)
        stored, forward = math.ceil((n + 1) / seg) + seg - 1, None
    done, peak, order = execute(actions, n)
    assert order == list(range(n, -1, -1))                   # each reverse once, in decreasing order
    assert peak <= stored, (kind, n, extra, peak, stored)     # within its stated memory
    if forward is None:
        assert n <= done < 2 * n or (n == 1 and done == 1), (kind, n, extra, done)
    else:
        assert done == forward, (kind, n, extra, done, forward)
    assert schedules.simulate(actions, n)[:2] == (done, peak)


schedule_cases = st.tuples(st.sampled_from(["store_all", "periodic", "binomial", "reversible"]), steps_of_a_run,
                           st.integers(1, 400))


@FAST
@given(schedule_cases)
def test_every_schedule_reverses_each_step_once_within_its_bounds(case):
    check_schedule(*case)


@pytest.mark.slow
@MANY
@given(schedule_cases)
def test_every_schedule_reverses_each_step_once_within_its_bounds_many(case):
    check_schedule(*case)


# ---------------------------------------------------------------- fixed-point reversal


@st.composite
def reversal_cases(draw):
    return dict(
        shape=draw(st.tuples(st.integers(1, 3), st.integers(1, 33))),
        momentum=draw(st.one_of(st.floats(0.02, 0.999), st.sampled_from([0.5, 0.9, 0.99, 1 / 3]))),
        lr=draw(st.floats(1e-4, 3.0)),
        scale=draw(st.floats(1e-3, 1e3)),
        n=draw(st.integers(1, 25)),
        frac_bits=draw(st.integers(8, 60)),
        dtype=draw(st.sampled_from([torch.float64, torch.float32])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def check_reversal(case) -> str:
    """Advance n steps, retreat them all: every (θ_k, v_k) comes back bit for bit, or OverflowError."""
    g = torch.Generator().manual_seed(case["seed"])
    n, shape, dtype = case["n"], case["shape"], case["dtype"]
    theta0 = (torch.randn(shape, generator=g, dtype=torch.float64) * case["scale"]).to(dtype)
    lrs = case["lr"] * (0.5 + torch.rand(n, generator=g, dtype=torch.float64))
    a, b = torch.randn(n, *shape, generator=g, dtype=dtype), torch.randn(n, *shape, generator=g, dtype=dtype)

    def gradient(theta, k):  # a nonlinear, step-dependent gradient
        return torch.sin(a[k] * theta) + b[k] * theta

    dynamics = ExactSGD(gradient, lrs, case["momentum"], dtype, case["frac_bits"])
    try:
        states = [dynamics.start(theta0)]
        for k in range(n):
            states.append(dynamics.advance(states[-1], k))
        state = states[-1]
        for k in reversed(range(n)):
            state = dynamics.retreat(state, k)
            assert torch.equal(state.theta, states[k].theta) and torch.equal(state.v, states[k].v), k
    except OverflowError as error:
        assert "left the fixed-point range" in str(error)
        return "overflow"
    assert bool((dynamics.bits.height == 0).all()) and bool((dynamics.bits.head == dynamics.bits.low).all())
    return "exact"


@FAST
@given(reversal_cases())
def test_fixed_point_reversal_is_bit_exact_or_overflows(case):
    check_reversal(case)


@pytest.mark.slow
@MANY
@given(reversal_cases())
def test_fixed_point_reversal_is_bit_exact_or_overflows_many(case):
    check_reversal(case)


def test_fixed_point_properties_reach_both_outcomes():
    """The property above is not vacuous: moderate cases reverse exactly, huge ones overflow."""
    base = dict(shape=(2, 5), momentum=0.9, lr=0.1, scale=1.0, n=10, frac_bits=44, dtype=torch.float64, seed=1)
    assert check_reversal(base) == "exact"
    assert check_reversal({**base, "scale": 1e6}) == "overflow"


# ---------------------------------------------------------------- input checks


CLASSES, FEATURES = 3, (2,)


def valid_inputs(s: int, b: int, n_real: int, epochs: int, soft: bool, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    d = torch.float64
    model = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, CLASSES)).to(d)

    def labels(*lead):
        if soft:
            return torch.rand(*lead, CLASSES, generator=g, dtype=d).softmax(-1)
        return torch.randint(0, CLASSES, lead, generator=g)

    return dict(model=model, x_syn=torch.randn(s, b, *FEATURES, generator=g, dtype=d), y_syn=labels(s, b),
                lrs=0.01 + torch.rand(s * epochs, generator=g, dtype=d), x_real=torch.randn(n_real, *FEATURES,
                generator=g, dtype=d), y_real=labels(n_real), epochs=epochs)


def validate(args: dict) -> None:
    """What hypergradient checks before any work: check_inputs, then the labels against the output."""
    check_inputs(args["model"], args["x_syn"], args["y_syn"], args["lrs"], args["x_real"], args["y_real"],
                 args["epochs"], 0.0, "checkpoint", None)
    with torch.no_grad():
        out = args["model"](args["x_real"])
    check_labels("y_syn", args["y_syn"], out)
    check_labels("y_real", args["y_real"], out)


problems = st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 9), st.integers(1, 4), st.booleans(),
                     st.integers(0, 1000))


def reshape(t: torch.Tensor, how: str, dim: int, delta: int) -> torch.Tensor:
    """t with one dimension grown/shrunk by delta, a size-1 dimension added, or one removed."""
    dim %= t.ndim
    if how == "add":
        return t.unsqueeze(dim)
    if how == "remove":
        return t.select(dim, 0)
    size = max(t.shape[dim] + delta, 0)
    if size == t.shape[dim]:
        size += 1
    index = torch.arange(size) % max(t.shape[dim], 1)
    return t.index_select(dim, index)


@FAST
@given(problems, st.sampled_from(["x_syn", "y_syn", "lrs", "x_real", "y_real"]),
       st.sampled_from(["resize", "add", "remove"]), st.integers(0, 3), st.integers(-3, 3))
def test_a_wrong_shape_never_gets_through(problem, name, how, dim, delta):
    args = valid_inputs(*problem)
    validate(args)  # the unperturbed inputs pass
    wrong = reshape(args[name], how, dim, delta)
    if not wrong.is_floating_point() and how == "add" and wrong.ndim == args[name].ndim + 1:
        # int class ids with a trailing size-1 axis: the wrong dtype for soft labels (TypeError)
        with pytest.raises((ValueError, TypeError), match=f"^hypergradient: {name}"):
            validate({**args, name: wrong})
        return
    # a mismatch between two arguments may be reported under either name (x_syn's s against y_syn's)
    with pytest.raises(ValueError, match=r"^hypergradient: (x_syn|y_syn|lrs|x_real|y_real) "):
        validate({**args, name: wrong})


@FAST
@given(problems, st.sampled_from(["x_syn", "lrs", "x_real", "y_syn", "y_real"]), st.integers(0, 10**6),
       st.sampled_from([float("nan"), float("inf"), -float("inf")]))
def test_a_non_finite_value_never_gets_through(problem, name, where, value):
    args = valid_inputs(*problem)
    t = args[name]
    if not t.is_floating_point():
        t = torch.rand(*t.shape, CLASSES, dtype=torch.float64).softmax(-1)   # soft labels instead
        args = {**args, name: t}
        other = "y_real" if name == "y_syn" else "y_syn"
        args[other] = torch.rand(*args[other].shape[: 1 if other == "y_real" else 2], CLASSES,
                                 dtype=torch.float64).softmax(-1)
        validate(args)
    bad = t.clone()
    bad.view(-1)[where % bad.numel()] = value
    with pytest.raises(ValueError, match=f"^hypergradient: {name} must be (positive and )?finite"):
        validate({**args, name: bad})


@FAST
@given(problems, st.integers(0, 10**6), st.sampled_from([0.0, -1e-12, -1.0]))
def test_a_non_positive_rate_never_gets_through(problem, where, value):
    args = valid_inputs(*problem)
    lrs = args["lrs"].clone()
    lrs[where % lrs.numel()] = value
    with pytest.raises(ValueError, match="^hypergradient: lrs must be positive and finite"):
        validate({**args, "lrs": lrs})


@FAST
@given(problems, st.integers(0, 10**6), st.sampled_from([-1, CLASSES, CLASSES + 7]))
def test_an_out_of_range_class_id_never_gets_through(problem, where, value):
    args = valid_inputs(*problem[:4], False, problem[5])
    for name in ("y_syn", "y_real"):
        y = args[name].clone()
        y.view(-1)[where % y.numel()] = value
        with pytest.raises(ValueError, match=f"^hypergradient: {name} must hold class ids in \\[0, 3\\)"):
            validate({**args, name: y})
