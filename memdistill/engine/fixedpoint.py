"""Exactly reversible momentum SGD in fixed point (Maclaurin, Duvenaud & Adams 2015,
"Gradient-based hyperparameter optimization through reversible learning", ICML).

θ and v are int64 fixed point with ``frac_bits`` fractional bits; γ is the rational p/q. The
update v ← γ v + g, θ ← θ − η v loses information only in the product γ·v; those remainders
are pushed to a :class:`BitStack`, so the step can be undone bit for bit:

    forward:  v ← (v div q)·p + pop_p + ĝ,     θ ← θ − round(η·v)
    backward: θ ← θ + round(η·v),  ĝ = round(g(θ)·2^F),
              v ← ((v − ĝ) div p)·q + pop_q  (after push_p((v − ĝ) mod p))

where forward first pushes v mod q (radix q). Net growth: log2(q/p) = log2(1/γ) bits per
parameter per step. Values leaving ±2^62 raise OverflowError; nothing wraps.
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import torch
from torch import Tensor

from memdistill.engine.dynamics import Gradient, State

__all__ = ["BitStack", "ExactSGD", "FixedState", "rational_momentum", "stack_bytes", "stack_rows"]

_WORD = 32
_MASK = (1 << _WORD) - 1
_LIMIT = 2 ** 62             # |fixed-point value| must stay below this
_MAX_DENOMINATOR = 1 << 12   # γ = p/q with q ≤ 4096


def _divmod(x: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """(x div d, x mod d) with floor semantics; one integer division (the slow op on CPU)."""
    quotient = torch.div(x, d, rounding_mode="floor")
    return quotient, x - quotient * d


class BitStack:
    """A stack of mixed-radix digits per element, vectorised over elements and exact.

    Each element is a big integer N held as a head x ∈ [L, L·2^32) (int64) over a stack of
    32-bit words (the rANS construction of Duda 2013 with uniform symbols):
    ``push(d, r)``: N ← N·r + d;  ``pop(r)``: d = N mod r, N ← N div r. The words live in a
    [rows, elements] int32 matrix that grows in chunks of ``chunk`` rows, so the stack is
    unbounded; ``capacity`` rows are allocated up front (:func:`stack_rows` bounds what a run
    needs, so it never grows). L is a multiple of every radix used, which makes pop the exact
    inverse of push.
    """

    def __init__(self, numel: int, radices: tuple[int, ...], device: torch.device, chunk: int = 8,
                 capacity: int = 0):
        base = math.lcm(*radices)
        if base > 1 << 24:
            raise ValueError(f"BitStack: radices {radices} are too large (lcm must be <= 2^24)")
        self.low = (1 << 30) // base * base            # L: x stays in [L, L·2^32) ⊂ int64
        self.head = torch.full((numel,), self.low, dtype=torch.int64, device=device)
        self.height = torch.zeros(numel, dtype=torch.int64, device=device)
        self.words = torch.zeros(capacity, numel, dtype=torch.int32, device=device)
        self.chunk = chunk
        self.index = torch.arange(numel, device=device)

    def nbytes(self) -> int:
        return self.head.nbytes + self.height.nbytes + self.words.nbytes

    def push(self, digit: Tensor, radix: int) -> None:
        """N ← N·radix + digit, digit [numel] in [0, radix)."""
        x = self.head
        spill = x >= (self.low // radix) << _WORD
        if bool(spill.any()):
            idx = self.index[spill]
            rows = self.height[idx]
            need = int(rows.max()) + 1
            if need > self.words.shape[0]:
                grow = self.chunk * math.ceil((need - self.words.shape[0]) / self.chunk)
                self.words = torch.cat([self.words, self.words.new_zeros(grow, self.words.shape[1])])
            low = x[idx] & _MASK
            self.words[rows, idx] = torch.where(low >= 1 << 31, low - (1 << _WORD), low).to(torch.int32)
            self.height[idx] = rows + 1
            x = x.clone()
            x[idx] = x[idx] >> _WORD
        self.head = x * radix + digit

    def pop(self, radix: int) -> Tensor:
        """d = N mod radix, N ← N div radix; returns d [numel]."""
        x, digit = _divmod(self.head, radix)
        refill = x < self.low
        if bool(refill.any()):
            idx = self.index[refill]
            rows = self.height[idx] - 1
            if bool((rows < 0).any()):
                raise RuntimeError("BitStack: popped more information than was pushed (corrupt trajectory)")
            word = self.words[rows, idx].to(torch.int64) & _MASK
            self.height[idx] = rows
            x[idx] = (x[idx] << _WORD) | word
        self.head = x
        return digit


def stack_rows(n: int, p: int, q: int) -> int:
    """Rows of 32-bit words an element's stack can reach in n steps at γ = p/q (an upper bound).

    The big integer N starts at L and a forward step makes it ⌊(N·q + d)/p⌋ with d < q, so
    N_k + 1 ≤ (L + 1)(q/p)^k; the largest value, N_{n−1}·q + d < (L + 1)(q/p)^{n−1}·q, is
    reached inside step n − 1 (reverse steps retrace the same values). A head x ≥ L over h
    words holds N ≥ L·2^{32h}, so h ≤ log2(N/L)/32; one row of slack covers rounding.
    """
    bits = (n - 1) * math.log2(q / p) + math.log2(q) + math.log2(1 + 2 ** -29)
    return max(int(bits // _WORD), 0) + 1


def stack_bytes(n: int, numel: int, momentum: float) -> int:
    """Bytes a :class:`BitStack` of ``numel`` elements holds for n steps of :class:`ExactSGD`."""
    p, q = rational_momentum(momentum)
    return numel * (8 + 8 + 4 * stack_rows(n, p, q))   # head, height, words


def rational_momentum(momentum: float) -> tuple[int, int]:
    """γ as p/q with q ≤ 2^12 (0.9 -> 9/10); the reversible trajectory uses exactly p/q."""
    frac = Fraction(momentum).limit_denominator(_MAX_DENOMINATOR)
    if frac.numerator <= 0 or frac >= 1:
        raise ValueError(f"reversible: momentum must be in (0, 1) to run SGD backwards, got {momentum}")
    return frac.numerator, frac.denominator


class FixedState(NamedTuple):
    """θ_k and v_k as int64 fixed point, [B, P] each."""
    theta: Tensor
    v: Tensor


def _checked(t: Tensor, what: str, k: int, frac_bits: int, limit: int = _LIMIT) -> Tensor:
    if bool((t.abs() >= limit).any()):
        raise OverflowError(
            f"reversible: {what} at step {k} left the fixed-point range ±2^{62 - frac_bits} "
            f"(frac_bits={frac_bits}); lower the learning rates or pass a smaller frac_bits")
    return t


class ExactSGD:
    """Momentum SGD on a fixed-point trajectory that can be retreated exactly (bit for bit)."""

    holds = True   # the bit stack grows with every step advanced

    def __init__(self, gradient: Gradient, lrs: Tensor, momentum: float, dtype: torch.dtype,
                 frac_bits: int = 44):
        if not isinstance(frac_bits, int) or not 8 <= frac_bits <= 60:
            raise ValueError(f"reversible: frac_bits must be an integer in [8, 60], got {frac_bits!r}")
        self.p, self.q = rational_momentum(momentum)
        self.momentum = self.p / self.q
        self.gradient, self.dtype, self.frac_bits = gradient, dtype, frac_bits
        self.lrs = lrs.detach().to(torch.float64)
        self.scale = float(2 ** frac_bits)
        self.bits: BitStack | None = None

    def to_fixed(self, t: Tensor, what: str, k: int) -> Tensor:
        if not bool(torch.isfinite(t).all()):
            raise FloatingPointError(f"reversible: {what} at step {k} is not finite")
        scaled = torch.round(t.to(torch.float64) * self.scale)
        return _checked(scaled, what, k, self.frac_bits).to(torch.int64)

    def to_float(self, t: Tensor) -> Tensor:
        return (t.to(torch.float64) / self.scale).to(self.dtype)

    def start(self, theta0: Tensor) -> FixedState:
        self.bits = BitStack(theta0.numel(), (self.p, self.q), theta0.device,
                             capacity=stack_rows(self.lrs.shape[0], self.p, self.q))
        return FixedState(self.to_fixed(theta0, "θ0", 0), torch.zeros(theta0.shape, dtype=torch.int64, device=theta0.device))

    def _step_size(self, v: Tensor, k: int) -> Tensor:
        """round(η_k · v) in fixed point: a deterministic function of v, so it can be undone."""
        step = torch.round(self.lrs[k] * v.to(torch.float64))
        return _checked(step, "the step η·v", k, self.frac_bits).to(torch.int64)

    def _gradient(self, theta: Tensor, k: int) -> Tensor:
        return self.to_fixed(self.gradient(self.to_float(theta), k), "the gradient", k)

    def advance(self, state: FixedState, k: int) -> FixedState:
        g = self._gradient(state.theta, k)
        shape, (v, rest) = state.v.shape, _divmod(state.v.reshape(-1), self.q)
        self.bits.push(rest, self.q)
        v = v * self.p + self.bits.pop(self.p)
        v = _checked(v.view(shape) + g, "the velocity", k, self.frac_bits)
        theta = _checked(state.theta - self._step_size(v, k), "θ", k, self.frac_bits)
        return FixedState(theta, v)

    def retreat(self, state: FixedState, k: int) -> FixedState:
        theta = state.theta + self._step_size(state.v, k)
        shape, (u, rest) = state.v.shape, _divmod((state.v - self._gradient(theta, k)).reshape(-1), self.p)
        self.bits.push(rest, self.p)
        u = _checked(u, "the velocity", k, self.frac_bits, limit=_LIMIT // self.q)
        v = u * self.q + self.bits.pop(self.q)
        return FixedState(theta, v.view(shape))

    def floats(self, state: FixedState) -> State:
        return State(self.to_float(state.theta), self.to_float(state.v))

    def held_bytes(self) -> int:
        return self.bits.nbytes() if self.bits is not None else 0
