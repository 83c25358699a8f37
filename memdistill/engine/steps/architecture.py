"""``architecture(model)``: a hashable key equal for modules that compute the same function of
(θ, x) with θ laid out alike. Models with one key share a batched sweep
(:mod:`memdistill.distill.batching`) and the compiled products of the generic step
(:class:`memdistill.engine.steps.generic.GenericStep` with ``compile=True``).
"""
from __future__ import annotations

from torch import nn

__all__ = ["architecture"]

_SETTING = (bool, int, float, str, type(None))


def _settings(module: nn.Module) -> tuple:
    """The module's public plain attributes (training, stride, padding, eps, num_groups, …)."""
    def plain(v: object) -> bool:
        return isinstance(v, _SETTING) or (isinstance(v, tuple) and all(isinstance(e, _SETTING) for e in v))
    return tuple(sorted((k, v) for k, v in vars(module).items() if not k.startswith("_") and plain(v)))


def architecture(model: nn.Module) -> tuple:
    """The class and settings of every submodule, the name, shape, dtype and trainability of every
    parameter, the name, shape and dtype of every buffer."""
    modules = tuple((name, type(m), _settings(m)) for name, m in model.named_modules())
    params = tuple((k, tuple(p.shape), p.dtype, p.requires_grad) for k, p in model.named_parameters())
    buffers = tuple((k, tuple(b.shape), b.dtype) for k, b in model.named_buffers())
    return modules, params, buffers
