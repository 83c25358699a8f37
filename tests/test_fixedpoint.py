"""The reversible method: exact bit store, bit-for-bit reversal, overflow, memory per step."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import make_problem

import memdistill as md
from memdistill.engine.fixedpoint import BitStack, ExactSGD, rational_momentum
from memdistill.engine.steps.generic import GenericStep


def test_bitstack_pops_exactly_what_was_pushed():
    g = torch.Generator().manual_seed(0)
    stack = BitStack(1000, (9, 10, 7), torch.device("cpu"), chunk=4)
    pushed = []
    for _ in range(300):  # net growth: the stack spills into many chunks
        radix = [9, 10, 7][int(torch.randint(0, 3, (), generator=g))]
        digit = torch.randint(0, radix, (1000,), generator=g)
        stack.push(digit, radix)
        pushed.append((digit, radix))
    assert stack.words.shape[0] > 4  # it grew past one chunk
    for digit, radix in reversed(pushed):
        assert torch.equal(stack.pop(radix), digit)
    assert torch.equal(stack.height, torch.zeros_like(stack.height))
    assert bool((stack.head == stack.low).all())


def test_bitstack_refuses_to_pop_what_was_never_pushed():
    stack = BitStack(3, (10,), torch.device("cpu"))
    with pytest.raises(RuntimeError, match="popped more information than was pushed"):
        for _ in range(40):
            stack.pop(10)


@pytest.mark.parametrize("momentum, pq", [(0.9, (9, 10)), (0.5, (1, 2)), (0.99, (99, 100)), (0.95, (19, 20))])
def test_rational_momentum(momentum, pq):
    assert rational_momentum(momentum) == pq


def exact_sgd(problem, momentum=0.9, frac_bits=44):
    step = GenericStep(problem.model)
    s = problem.x_syn.shape[0]

    def gradient(theta, k):
        return step.value_and_grad(theta, problem.x_syn[k % s], problem.y_syn[k % s])[1]
    return step, ExactSGD(gradient, problem.lrs, momentum, problem.x_syn.dtype, frac_bits)


@pytest.mark.parametrize("model, momentum", [("mlp-binary", 0.9), ("conv-3class", 0.5), ("mlp-3class", 0.99)])
def test_reversal_gives_back_every_state_bit_for_bit(model, momentum):
    p = make_problem(model, s=7, epochs=5)   # n = 35
    step, dyn = exact_sgd(p, momentum)
    state = dyn.start(step.flatten())
    states = [state]
    for k in range(35):
        state = dyn.advance(state, k)
        states.append(state)
    assert not torch.equal(states[0].theta, states[-1].theta)
    for k in reversed(range(35)):
        state = dyn.retreat(state, k)
        assert torch.equal(state.theta, states[k].theta) and torch.equal(state.v, states[k].v), k
    assert bool((dyn.bits.height == 0).all()) and bool((dyn.bits.head == dyn.bits.low).all())


@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_information_kept_is_log2_one_over_gamma_bits_per_parameter_per_step(momentum):
    p = make_problem("mlp-binary", s=4, epochs=100)   # n = 400
    step, dyn = exact_sgd(p, momentum)
    state = dyn.start(step.flatten())
    for k in range(400):
        state = dyn.advance(state, k)
    bits = dyn.bits
    # information in the stack = 32·height + log2(head / L), per element
    info = 32 * bits.height.double() + torch.log2(bits.head.double() / bits.low)
    expected = 400 * math.log2(1 / momentum)
    assert abs(info.mean().item() - expected) < 0.01 * expected


def test_overflow_raises_instead_of_wrapping():
    p = make_problem("mlp-binary", s=3, epochs=2)
    with torch.no_grad():
        p.model[0].weight[0, 0] = 20.0   # beyond ±2^(62-58) = ±16
    with pytest.raises(OverflowError, match=r"θ0 at step 0 left the fixed-point range ±2\^4"):
        md.hypergradient(*p.args(), epochs=2, momentum=0.9, method="reversible", frac_bits=58)


def test_diverging_reversible_trajectory_raises():
    p = make_problem("mlp-binary", s=3, epochs=20)
    lrs = torch.full_like(p.lrs, 1e5)
    with pytest.raises((OverflowError, FloatingPointError)):
        md.hypergradient(p.model, p.x_syn, p.y_syn, lrs, p.x_real, p.y_real, epochs=20, momentum=0.9,
                         method="reversible")


@pytest.mark.parametrize("frac_bits", [4, 61, 2.5])
def test_frac_bits_range(frac_bits):
    p = make_problem("mlp-binary", s=2, epochs=1)
    with pytest.raises(ValueError, match="frac_bits must be an integer in"):
        md.hypergradient(*p.args(), momentum=0.9, method="reversible", frac_bits=frac_bits)
