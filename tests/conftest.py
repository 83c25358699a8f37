"""Shared problem factory and model table for the engine tests."""
from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from typing import NamedTuple

import pytest
import torch
from torch import Tensor, nn

torch.set_num_threads(1)


class Problem(NamedTuple):
    model: nn.Module
    x_syn: Tensor
    y_syn: Tensor
    lrs: Tensor
    x_real: Tensor
    y_real: Tensor
    epochs: int

    def args(self) -> tuple:
        return self.model, self.x_syn, self.y_syn, self.lrs, self.x_real, self.y_real


class ConvNet(nn.Module):
    """A non-MLP module: Conv1d, Tanh, LayerNorm, a residual connection, GELU."""

    def __init__(self, classes: int):
        super().__init__()
        self.conv = nn.Conv1d(1, 2, 3, padding=1)
        self.norm = nn.LayerNorm(12)
        self.head = nn.Linear(12, classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.conv(x)).flatten(1)
        h = self.norm(h + x.repeat(1, 2, 1).flatten(1))
        return self.head(nn.functional.gelu(h))


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


MODELS = {
    "mlp-binary": (lambda: mlp([2, 6, 5, 1]), (2,), 2),
    "mlp-3class": (lambda: mlp([2, 7, 3]), (2,), 3),
    "conv-3class": (lambda: ConvNet(3), (1, 6), 3),
}


def make_problem(model: str = "mlp-binary", *, s: int = 5, b: int = 4, epochs: int = 3, n_real: int = 16,
                 labels: str = "int", dtype: torch.dtype = torch.float64, seed: int = 0) -> Problem:
    """A random problem; labels "int" (class ids), "soft" (float targets/soft labels)."""
    build, in_shape, classes = MODELS[model]
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = build().to(dtype)
    x_syn = torch.randn(s, b, *in_shape, generator=g, dtype=dtype)
    x_real = torch.randn(n_real, *in_shape, generator=g, dtype=dtype)

    def targets(lead: tuple[int, ...]) -> Tensor:
        if labels == "int":
            return torch.randint(0, classes, lead, generator=g)
        if classes == 2 and model.endswith("binary"):
            return torch.rand(lead, generator=g, dtype=dtype)
        return torch.rand(*lead, classes, generator=g, dtype=dtype).softmax(-1)

    lrs = (0.05 + 0.1 * torch.rand(s * epochs, generator=g, dtype=dtype))
    return Problem(net, x_syn, targets((s, b)), lrs, x_real, targets((n_real,)), epochs)


def rel(a: Tensor, b: Tensor) -> float:
    """‖a − b‖ / ‖b‖ (0 when both vanish)."""
    scale = b.norm().item()
    return (a - b).norm().item() / scale if scale else (a - b).norm().item()


@pytest.fixture
def problem():
    return make_problem


def max_rel_error(hg, ref, floor: float = 1e-5) -> float:
    """The largest relative error between two Hypergradients: :func:`rel` over loss, grad_x_syn,
    grad_lrs and grad_y_syn (when both have it), and for each grad_params entry ‖a − b‖ over
    max(‖b‖, floor · ‖whole reference θ-gradient‖). The floor matters only for a parameter whose
    gradient vanishes identically (a conv bias followed by instance or batch norm, which
    subtracts it again): its reference is pure rounding noise (~1e-16), so its own norm is no
    scale; a genuine gradient below 1e-5 of the whole would be judged against the floor too."""
    assert hg.grad_params.keys() == ref.grad_params.keys()
    assert (hg.grad_y_syn is None) == (ref.grad_y_syn is None)
    pairs = [(hg.loss, ref.loss), (hg.grad_x_syn, ref.grad_x_syn), (hg.grad_lrs, ref.grad_lrs)]
    if ref.grad_y_syn is not None:
        pairs.append((hg.grad_y_syn, ref.grad_y_syn))
    whole = torch.cat([g.reshape(-1) for g in ref.grad_params.values()]).norm().item()
    params = [(hg.grad_params[k] - b).norm().item() / max(b.norm().item(), floor * whole, 1e-300)
              for k, b in ref.grad_params.items()]
    return max([rel(a, b) for a, b in pairs] + params)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=CUDA)])
def device(request) -> str:
    """Every device a test should pass on: the CPU, and CUDA where there is one."""
    return request.param


class DiskFull:
    """A file object that writes half of what it is given, then fails: no space left on the device."""

    def __init__(self, file):
        self.file = file

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def write(self, data):
        self.file.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@contextlib.contextmanager
def interrupted_at_outer_step(k: int) -> Iterator[None]:
    """Inside the block, the k-th outer step of any Distiller raises KeyboardInterrupt (a crash
    after k − 1 finished steps); the block must raise it (pytest.raises)."""
    from memdistill.distill.distiller import Distiller

    calls, original = [0], Distiller._outer_step

    def failing(self, *args):
        calls[0] += 1
        if calls[0] == k:
            raise KeyboardInterrupt
        return original(self, *args)

    Distiller._outer_step = failing
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        Distiller._outer_step = original
