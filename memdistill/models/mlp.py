"""Architectures: fully connected ReLU networks with Xavier initialisation (the paper's p(θ0)).

``mlp(...)`` returns a zero-argument factory; every call builds a fresh ``nn.Sequential`` of
``nn.Linear`` and ``nn.ReLU`` only (a later fast path recognises exactly that form), with
weights ~ Xavier-uniform, ``U(−a, a)``, ``a = sqrt(6 / (fan_in + fan_out))``, and zero biases.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

PAPER_WIDTH = 10
_LAYERS = re.compile(r"([1-9][0-9]*)-layer")
_WIDTHS = re.compile(r"mlp\[([1-9][0-9]*(?:,[1-9][0-9]*)*)?\]")


@dataclass(frozen=True)
class MLP:
    """Factory of freshly initialised MLPs ``in_features → hidden… → out_features``.

    Attributes:
      hidden: widths of the hidden layers (empty: a linear model).
      in_features, out_features: widths of the input and the output.
    """

    hidden: tuple[int, ...]
    in_features: int
    out_features: int

    @property
    def name(self) -> str:
        """``"N-layer"`` for the paper's width-10 networks, else ``"mlp[w1,w2,…]"``."""
        if all(width == PAPER_WIDTH for width in self.hidden):
            return f"{len(self.hidden) + 1}-layer"
        return "mlp[" + ",".join(str(width) for width in self.hidden) + "]"

    def __call__(self) -> nn.Sequential:
        """A new nn.Sequential(Linear, ReLU, …, Linear), Xavier-uniform weights, zero biases."""
        widths = (self.in_features, *self.hidden, self.out_features)
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            linear = nn.Linear(fan_in, fan_out)
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.ReLU()]
        return nn.Sequential(*layers[:-1])


def mlp(arch: str | Sequence[int] = "2-layer", in_features: int = 2, out_features: int = 1) -> MLP:
    """A factory of the paper's networks, or of an MLP with custom hidden widths.

    Args:
      arch: ``"N-layer"``: N linear layers, the N−1 hidden ones 10 wide (the paper's
        ``"1-layer"`` = Linear(2, 1), ``"2-layer"`` = 2-10-1, ``"4-layer"`` = 2-10-10-10-1);
        or hidden widths: a sequence such as ``[32, 32]`` (``[]``: linear) or the same as a
        name, ``"mlp[32,32]"`` (the form of :attr:`MLP.name`, so ``mlp(f.name, …)`` rebuilds f).
      in_features: input width.
      out_features: output width (1 logit for binary tasks, C for C classes).

    Returns:
      An :class:`MLP` factory; ``mlp("2-layer")()`` is a fresh ``nn.Sequential``.

    Examples:
      >>> mlp("2-layer")()
      Sequential(
        (0): Linear(in_features=2, out_features=10, bias=True)
        (1): ReLU()
        (2): Linear(in_features=10, out_features=1, bias=True)
      )
    """
    if in_features < 1 or out_features < 1:
        raise ValueError(
            f"mlp: in_features and out_features must be >= 1, got {in_features} and {out_features}"
        )
    return MLP(_hidden_widths(arch), in_features, out_features)


def _hidden_widths(arch: str | Sequence[int]) -> tuple[int, ...]:
    """Hidden widths of a name (``"N-layer"``, ``"mlp[w1,w2]"``) or a sequence of positive ints."""
    if isinstance(arch, str):
        layers, widths = _LAYERS.fullmatch(arch), _WIDTHS.fullmatch(arch)
        if layers:
            return (PAPER_WIDTH,) * (int(layers.group(1)) - 1)
        if widths:
            return tuple(int(w) for w in (widths.group(1) or "").split(",") if w)
        raise ValueError(
            f"mlp: unknown architecture {arch!r}; expected 'N-layer' (e.g. '1-layer', "
            "'2-layer', '4-layer'), 'mlp[w1,w2,...]' or a list of hidden widths such as [32, 32]"
        )
    widths = tuple(arch)
    if not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
        raise ValueError(f"mlp: hidden widths must be positive ints, got {list(widths)}")
    return widths


def fresh_model(arch: Callable[[], nn.Module], seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    """``arch()`` initialised from ``seed`` without touching the global RNG state.

    Any zero-argument factory works: the call runs under ``torch.random.fork_rng`` seeded
    with ``seed``, so the same seed gives the same parameters bit for bit.
    """
    with torch.random.fork_rng(devices=[]):
        # the CPU generator only: torch.manual_seed would also queue seeds for every
        # accelerator backend, which costs more than building a small model
        torch.random.default_generator.manual_seed(seed)
        return arch().to(dtype)
