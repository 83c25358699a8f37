"""Architecture names: ``resolve_arch(name, in_shape, classes)`` → a zero-argument factory.

Names (``ARCH_NAMES`` lists the built-in ones for help texts):

- ``"N-layer"``, ``"mlp[w1,w2,...]"``: the MLPs of :func:`~memdistill.models.mlp.mlp` with
  ``in_features = prod(in_shape)``; for images (``len(in_shape) > 1``) an ``nn.Flatten()``
  comes first, for 1-D inputs the model stays the plain ``nn.Sequential(Linear, ReLU, …)``
  the fused step recognises.
- ``"lenet"``: :func:`~memdistill.models.convnets.lenet`.
- ``"convnet"``, ``"convnet-D"`` (depth D), ``"convnet[depth=D,width=W,norm=N]"`` (any subset
  of the keys, the rest default): :func:`~memdistill.models.convnets.convnet`.
- an import string ``"package.module:function"``: every build calls
  ``function(in_shape, classes)``, which must return a fresh ``nn.Module`` (initialised from
  the global torch RNG, so that ``fresh_model(arch, seed)`` is reproducible) whose output
  width is 1 for 2 classes, else ``classes``.

The output width convention is the library's: 1 logit (BCE) for 2 classes, else one logit per
class.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from memdistill.models.convnets import CONVNET_DEFAULTS, convnet, lenet, out_width
from memdistill.models.mlp import fresh_model, mlp

__all__ = ["ARCH_NAMES", "Arch", "check_arch", "resolve_arch"]

ARCH_NAMES = ("1-layer", "2-layer", "4-layer", "lenet", "convnet")
_FORMS = ("'N-layer'", "'mlp[w1,w2,...]'", "'lenet'", "'convnet'", "'convnet-D'",
          "'convnet[depth=D,width=W,norm=N]'",
          "or an import string 'package.module:function' (called as function(in_shape, classes))")
_MLP = re.compile(r"[1-9][0-9]*-layer|mlp\[[0-9,]*\]")
_CONVNET = re.compile(r"convnet(?:-([0-9]+))?|convnet\[([^\]]*)\]")
_IMPORT = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


@dataclass(frozen=True)
class Arch:
    """A zero-argument factory resolved from ``name``: each call builds a fresh nn.Module.

    Attributes:
      name: the string it was resolved from (record it in configs; ``resolve_arch(name,
        in_shape, classes)`` rebuilds the same factory).
      in_shape, classes: the input shape and class count it was resolved for.
      build: the underlying factory.
    """

    name: str
    in_shape: tuple[int, ...]
    classes: int
    build: Callable[[], Any]

    def __call__(self) -> nn.Module:
        model = self.build()
        if not isinstance(model, nn.Module):
            raise TypeError(f"arch {self.name!r}: the factory returned {type(model).__name__} for in_shape "
                            f"{list(self.in_shape)} and classes {self.classes}; expected a torch.nn.Module")
        return model


@dataclass(frozen=True)
class Flattened:
    """``nn.Sequential(nn.Flatten(), *factory())``: an MLP factory fed with images."""

    factory: Callable[[], nn.Sequential]

    def __call__(self) -> nn.Sequential:
        return nn.Sequential(nn.Flatten(), *self.factory())


@dataclass(frozen=True)
class Imported:
    """``function(in_shape, classes)`` of an import string, called on every build."""

    function: Callable[..., Any]
    in_shape: tuple[int, ...]
    classes: int

    def __call__(self) -> Any:
        return self.function(self.in_shape, self.classes)


def resolve_arch(name: str, in_shape: tuple[int, ...], classes: int) -> Arch:
    """The zero-argument factory called ``name`` for inputs ``in_shape`` and ``classes`` classes.

    Args:
      name: ``"N-layer"``, ``"mlp[w1,w2,...]"``, ``"lenet"``, ``"convnet"``, ``"convnet-D"``,
        ``"convnet[depth=D,width=W,norm=N]"`` or ``"package.module:function"`` (see the module
        docstring).
      in_shape: the shape of one input, without the batch dimension (e.g. (2,) or (1, 28, 28)).
      classes: number of classes C >= 2; models output 1 logit for C = 2, else C.

    Returns:
      An :class:`Arch` whose ``name`` is ``name``.

    Examples:
      >>> import torch
      >>> arch = resolve_arch("convnet-2", (3, 8, 8), 4)
      >>> arch.name, arch()(torch.zeros(5, 3, 8, 8)).shape
      ('convnet-2', torch.Size([5, 4]))
    """
    if not isinstance(name, str):
        raise TypeError(f"resolve_arch: name must be a string, got {type(name).__name__}")
    shape = _shape(in_shape)
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 2:
        raise ValueError(f"resolve_arch: classes must be an integer >= 2, got {classes!r}")
    return Arch(name, shape, classes, _factory(name, shape, classes))


def _shape(in_shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(in_shape) if isinstance(in_shape, (tuple, list, torch.Size)) else ()
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise ValueError(f"resolve_arch: in_shape must be a non-empty tuple of positive ints, got {in_shape!r}")
    return shape


def _factory(name: str, shape: tuple[int, ...], classes: int) -> Callable[[], Any]:
    if _IMPORT.fullmatch(name):
        return Imported(_import(name), shape, classes)
    try:
        return _builtin(name, shape, classes)
    except ValueError as error:
        if str(error).startswith("resolve_arch:"):
            raise
        raise ValueError(f"resolve_arch: arch {name!r} cannot be built for in_shape {list(shape)} and "
                         f"{classes} classes: {error}") from error


def _builtin(name: str, shape: tuple[int, ...], classes: int) -> Callable[[], Any]:
    if _MLP.fullmatch(name):
        factory = mlp(name, math.prod(shape), out_width(classes))
        return factory if len(shape) == 1 else Flattened(factory)
    if name == "lenet":
        return lenet(shape, classes)
    if _CONVNET.fullmatch(name):
        return convnet(shape, classes, **_convnet_options(name))
    raise ValueError(f"resolve_arch: unknown arch name {name!r}; expected one of {', '.join(_FORMS)}")


def _convnet_options(name: str) -> dict[str, Any]:
    """{"depth": D, ...} of "convnet", "convnet-D" or "convnet[key=value,...]"."""
    match = _CONVNET.fullmatch(name)
    assert match is not None
    if match.group(1):
        return {"depth": int(match.group(1))}
    options: dict[str, Any] = {}
    for item in filter(None, (match.group(2) or "").split(",")):
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if key not in CONVNET_DEFAULTS or not value or key in options:
            raise ValueError(f"resolve_arch: cannot read {item!r} in arch name {name!r}; expected "
                             "'convnet[depth=D,width=W,norm=N]' with each key at most once")
        options[key] = value if key == "norm" else _integer(value, key, name)
    return options


def _integer(value: str, key: str, name: str) -> int:
    if not value.isdigit():
        raise ValueError(f"resolve_arch: {key} must be a positive integer in arch name {name!r}, got {value!r}")
    return int(value)


def _import(name: str) -> Callable[..., Any]:
    """The function of an import string "package.module:function" (dotted attributes allowed)."""
    module_name, _, attribute = name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as error:
        raise ValueError(f"resolve_arch: cannot import module {module_name!r} of arch {name!r} "
                         f"(expected 'package.module:function'): {type(error).__name__}: {error}") from error
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"resolve_arch: module {module_name!r} has no attribute {attribute!r} "
                             f"(arch {name!r}, expected 'package.module:function')")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"resolve_arch: {name!r} is a {type(target).__name__}, not a function "
                         "called as function(in_shape, classes)")
    return target


def check_arch(name: str, in_shape: tuple[int, ...], classes: int) -> Arch:
    """:func:`resolve_arch`, then build one model and run it on zeros [1, *in_shape] (eval mode).

    Returns:
      The resolved :class:`Arch`.

    Raises:
      ValueError: the name does not resolve, the factory returns no nn.Module, the model fails
        on such inputs, or its output is not [1, 1] (2 classes) or [1, classes].
    """
    arch = resolve_arch(name, in_shape, classes)
    try:
        model = fresh_model(arch, 0).eval()
    except TypeError as error:
        raise ValueError(str(error)) from None
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *arch.in_shape))
    except Exception as error:
        raise ValueError(f"arch {name!r} does not take inputs of shape {list(arch.in_shape)}: "
                         f"{type(error).__name__}: {error}") from error
    want = [1, out_width(classes)]
    if not isinstance(out, torch.Tensor) or list(out.shape) != want:
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"arch {name!r} on inputs of shape {list(arch.in_shape)} produced {got}; expected "
                         f"{want} (1 logit for 2 classes, else one per class; {classes} classes)")
    return arch
