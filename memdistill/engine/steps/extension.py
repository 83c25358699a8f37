"""The fused MLP step as torch custom ops (optional C++/CUDA extension), with a Python fallback.

``memdistill.engine.steps._C`` is built only on request (``MEMDISTILL_BUILD_EXT=1 pip install
--no-build-isolation -e .``). Importing it registers, with CPU kernels (csrc/mlp_step.cpp) and,
in a CUDA build, CUDA kernels (csrc/cuda/mlp_step.cu)::

    memdistill::mlp_value_and_grad(Tensor theta, Tensor x, Tensor y, int[] sizes) -> (Tensor, Tensor)
    memdistill::mlp_reverse(Tensor theta, Tensor x, Tensor y, Tensor w, int[] sizes)
        -> (Tensor, Tensor, Tensor, Tensor)

with sizes = [in, h1, …, out] and the contract of :class:`memdistill.engine.steps.fused.FusedMLPStep`:
θ [B, P], x [b, in] or [B, b, in], y class ids or float targets; value_and_grad returns
(the B losses l_j [B], g [B, P]) and reverse (g, Hw [B, P], dx (shape of x), dy (shape of y, or an
empty [0] tensor for class ids)). Without the extension, the wrappers below compute the same
numbers with the pure-PyTorch FusedMLPStep. Two more ops (csrc/sgd_step.cpp) take a whole step of
momentum SGD, forward or reversed, in one call (:meth:`ExtensionMLPStep.sgd_advance`,
:meth:`ExtensionMLPStep.sgd_reverse`; the engine uses them where ``step.fused_sgd``)::

    memdistill::mlp_sgd_advance(θ, v?, x, y, lr, momentum, sizes) -> (θ_{k+1}, v_{k+1})
    memdistill::mlp_sgd_reverse(θ, v?, x, y, lr, momentum, adj_theta, adj_v?, sizes)
        -> (∂L/∂θ_k, ∂L/∂v_k or None, ∂L/∂η_k, dx, dy)

The ops are forward-only (no autograd formula is registered): they already return the first
and second derivatives the engine needs, so gradcheck does not apply to them.
"""
from __future__ import annotations

import functools
import importlib
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from memdistill.engine.steps.fused import FusedMLPStep

__all__ = ["ExtensionMLPStep", "backend_info", "extension_available", "missing_instruction_sets",
           "mlp_reverse", "mlp_value_and_grad"]

_BUILD_HINT = "build it with MEMDISTILL_BUILD_EXT=1 pip install --no-build-isolation -e ."
# The CPU flags that name instruction sets a compiler may use (-march=native): what a native
# build needs of the CPU it runs on.
_INSTRUCTION_SETS = re.compile(r"(sse|ssse|avx|fma|f16c|bmi|popcnt|movbe|abm|adx|sha|vaes|vpclmul|gfni|amx)")
# The building CPU's flags, written by setup.py beside a native (-march=native) build.
BUILD_FLAGS = Path(__file__).with_name("_C.cpu_flags")


def missing_instruction_sets(built: Path = BUILD_FLAGS, cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """Instruction sets of the CPU the extension was built for (``built``) that this CPU
    (``cpuinfo``'s "flags" line) lacks; [] for a portable build or where either is unknown."""
    try:
        wanted = set(built.read_text().split())
        here = next((line.partition(":")[2].split() for line in cpuinfo.read_text().splitlines()
                     if line.startswith("flags")), None)
    except OSError:
        return []
    if here is None:
        return []
    return sorted(flag for flag in wanted - set(here) if _INSTRUCTION_SETS.match(flag))


def _load() -> tuple[object | None, str]:
    """(the module memdistill.engine.steps._C or None, why), importing it only where this CPU has
    every instruction set it was built for (its kernels would die on an illegal instruction)."""
    missing = missing_instruction_sets()
    if missing:
        return None, (f"memdistill.engine.steps._C not loaded: it was built for a CPU with {', '.join(missing)}, "
                      f"which this one lacks; rebuild it on this machine, or with MEMDISTILL_PORTABLE=1 for any "
                      f"x86-64 ({_BUILD_HINT})")
    try:
        module = importlib.import_module("memdistill.engine.steps._C")  # registers torch.ops.memdistill.*
    except ImportError as error:
        return None, f"memdistill.engine.steps._C not importable ({type(error).__name__}: {error}); {_BUILD_HINT}"
    return module, f"memdistill.engine.steps._C loaded from {module.__file__} (built with MEMDISTILL_BUILD_EXT=1)"


_C, _REASON = _load()


def extension_available() -> bool:
    """True when memdistill.engine.steps._C is loaded and torch.ops.memdistill.* run its kernels."""
    return _C is not None


def backend_info() -> dict:
    """Which implementation of the fused MLP step is active, and why.

    Returns:
      {"backend": "cpp" or "python", "reason": the extension's path or its ImportError,
       "devices": dispatch keys with a kernel, e.g. ["CPU"] or ["CPU", "CUDA"] ([] for "python")}.
    """
    devices = [k for k in ("CPU", "CUDA") if extension_available()
               and torch._C._dispatch_has_kernel_for_dispatch_key("memdistill::mlp_reverse", k)]
    return {"backend": "cpp" if extension_available() else "python", "reason": _REASON, "devices": devices}


if extension_available():
    @torch.library.register_fake("memdistill::mlp_value_and_grad")
    def _(theta: Tensor, x: Tensor, y: Tensor, sizes: list[int]) -> tuple[Tensor, Tensor]:
        return theta.new_empty(theta.shape[:1]), torch.empty_like(theta)

    @torch.library.register_fake("memdistill::mlp_reverse")
    def _(theta: Tensor, x: Tensor, y: Tensor, w: Tensor, sizes: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        dy = torch.empty_like(y) if y.is_floating_point() else theta.new_empty((0,))
        return torch.empty_like(theta), torch.empty_like(theta), torch.empty_like(x), dy

    @torch.library.register_fake("memdistill::mlp_sgd_advance")
    def _(theta: Tensor, v: Tensor | None, x: Tensor, y: Tensor, lr: Tensor, momentum: float,
          sizes: list[int]) -> tuple[Tensor, Tensor]:
        return torch.empty_like(theta), torch.empty_like(theta)

    @torch.library.register_fake("memdistill::mlp_sgd_reverse")
    def _(theta: Tensor, v: Tensor | None, x: Tensor, y: Tensor, lr: Tensor, momentum: float, adj_theta: Tensor,
          adj_v: Tensor | None, sizes: list[int]) -> tuple[Tensor, Tensor | None, Tensor, Tensor, Tensor]:
        dy = torch.empty_like(y) if y.is_floating_point() else theta.new_empty((0,))
        adj_v_prev = None if v is None else torch.empty_like(theta)
        return torch.empty_like(theta), adj_v_prev, torch.empty_like(lr), torch.empty_like(x), dy


@functools.cache
def _python_step(sizes: tuple[int, ...]) -> FusedMLPStep:
    """The pure-PyTorch step for MLP sizes [in, h1, …, out] (a meta-device model: shapes only)."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b, device="meta"), nn.ReLU()]
    return FusedMLPStep(nn.Sequential(*layers[:-1]))


def mlp_value_and_grad(theta: Tensor, x: Tensor, y: Tensor, sizes: list[int]) -> tuple[Tensor, Tensor]:
    """(l(x, θ_j) [B], g = ∇θ l [B, P]) for B ReLU MLPs of `sizes` = [in, h1, …, out]."""
    if extension_available():
        return torch.ops.memdistill.mlp_value_and_grad.default(theta, x, y, sizes)
    return _python_step(tuple(sizes)).value_and_grad(theta, x, y)


def mlp_reverse(theta: Tensor, x: Tensor, y: Tensor, w: Tensor,
                sizes: list[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(g, Hw, (∂g/∂x)ᵀw, (∂g/∂y)ᵀw) for direction w [B, P]; the last is [0] for class ids."""
    if extension_available():
        return torch.ops.memdistill.mlp_reverse.default(theta, x, y, w, sizes)
    g, hw, dx, dy = _python_step(tuple(sizes)).reverse(theta, x, y, w)
    return g, hw, dx, theta.new_empty((0,)) if dy is None else dy


class ExtensionMLPStep(FusedMLPStep):
    """FusedMLPStep whose value_and_grad and reverse run the C++/CUDA ops of memdistill.engine.steps._C."""

    name = "cpp"

    def __init__(self, model: nn.Sequential):
        if not extension_available():
            raise RuntimeError(f"ExtensionMLPStep: {_REASON}")
        super().__init__(model)
        self.widths = [self.layers[0][1], *(out for out, _ in self.layers)]

    def value_and_grad(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ops.memdistill.mlp_value_and_grad.default(theta.contiguous(), x.contiguous(), y.contiguous(),
                                                               self.widths)

    def grad(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return self.value_and_grad(theta, x, y)[1]

    def reverse(self, theta: Tensor, x: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        g, hw, dx, dy = torch.ops.memdistill.mlp_reverse.default(theta.contiguous(), x.contiguous(), y.contiguous(),
                                                                 w.contiguous(), self.widths)
        return g, hw, dx, dy if y.is_floating_point() else None

    fused_sgd = True

    def sgd_advance(self, theta: Tensor, v: Tensor | None, x: Tensor, y: Tensor, lr: Tensor,
                    momentum: float) -> tuple[Tensor, Tensor | None]:
        """(θ_{k+1}, v_{k+1}): :func:`memdistill.engine.dynamics.sgd_update` of this step's gradient,
        in one op (the same bits)."""
        theta, v_next = torch.ops.memdistill.mlp_sgd_advance.default(theta, v, x, y, lr, momentum, self.widths)
        return theta, None if v is None else v_next

    def sgd_reverse(self, theta: Tensor, v: Tensor | None, x: Tensor, y: Tensor, lr: Tensor, momentum: float,
                    adj_theta: Tensor, adj_v: Tensor | None) -> tuple[Tensor, Tensor | None, Tensor, Tensor,
                                                                      Tensor | None]:
        """:func:`memdistill.engine.dynamics.reverse_step` in one op: (∂L/∂θ_k, ∂L/∂v_k, ∂L/∂η_k, dx, dy).
        The adjoints are the same bits; ∂L/∂η_k sums in its own fixed order (in double for float32)."""
        adj_theta, adj_v, grad_lr, dx, dy = torch.ops.memdistill.mlp_sgd_reverse.default(
            theta, v, x, y, lr, momentum, adj_theta, adj_v, self.widths)
        return adj_theta, adj_v, grad_lr, dx, dy if y.is_floating_point() else None
