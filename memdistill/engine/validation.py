"""Argument checks for :func:`memdistill.engine.hypergradient`: every error names the argument and
what was expected, before any work starts."""
from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from memdistill.engine.planner import OFFLOADS

METHODS = ("autograd", "replay", "checkpoint", "reversible", "auto")

# Modules whose training-mode forward is random: a recomputed step would differ from the
# original one, so no method could be exact.
_RANDOM_IN_TRAINING = (nn.modules.dropout._DropoutNd, nn.RReLU)

__all__ = ["METHODS", "check_inputs", "check_labels", "check_offload"]


def _fail(message: str, kind: type[Exception] = ValueError) -> Exception:
    return kind(f"hypergradient: {message}")


def _tensor(name: str, t: object) -> Tensor:
    if not isinstance(t, Tensor):
        raise _fail(f"{name} must be a torch.Tensor, got {type(t).__name__}", TypeError)
    return t


def _finite(name: str, t: Tensor) -> None:
    if t.is_floating_point() and not bool(t.isfinite().all()):
        bad = (~t.isfinite()).nonzero()[0].tolist()
        raise _fail(f"{name} must be finite, got {t[tuple(bad)].item()} at index {tuple(bad)}")


def _labels(name: str, y: Tensor, lead: tuple[int, ...], dtype) -> None:
    if y.shape[:len(lead)] != lead or y.dim() not in (len(lead), len(lead) + 1):
        raise _fail(f"{name} must have shape {list(lead)} or {list(lead)} + [classes], got {list(y.shape)}")
    if y.is_floating_point():
        if y.dtype != dtype:
            raise _fail(f"{name} must have the model's dtype {dtype} (or be int64 class ids), got {y.dtype}", TypeError)
    elif y.dtype != torch.int64 or y.dim() != len(lead):
        raise _fail(f"{name} must be int64 class ids of shape {list(lead)} or floating targets, got {y.dtype} {list(y.shape)}", TypeError)
    _finite(name, y)


def check_model(model: object) -> tuple:
    """The trainable parameters' (dtype, device); rejects modules that are random in training."""
    if not isinstance(model, nn.Module):
        hint = (" (a factory of modules: pass a module, e.g. md.mlp('2-layer')() or fresh_model(arch, seed))"
                if callable(model) else "")
        raise _fail(f"model must be a torch.nn.Module, got {type(model).__name__}{hint}", TypeError)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise _fail("model has no trainable parameters (requires_grad=True): there is nothing to unroll")
    for name, m in model.named_modules():
        if m.training and isinstance(m, _RANDOM_IN_TRAINING):
            raise _fail(f"module '{name or type(m).__name__}' ({type(m).__name__}) is random in training mode, "
                        "so recomputed steps would differ and no gradient could be exact; call model.eval() "
                        "or remove it")
    dtypes = {p.dtype for p in params}
    devices = {p.device for p in params}
    if len(dtypes) != 1 or len(devices) != 1 or not params[0].is_floating_point():
        raise _fail(f"model parameters must share one floating dtype and device, got {dtypes} on {devices}", TypeError)
    return params[0].dtype, params[0].device


def check_labels(name: str, y: Tensor, out: Tensor) -> None:
    """Labels against the model's output out [N, C]: ids in [0, C) (or {0, 1} for one output),
    soft labels with C columns."""
    classes = out.shape[-1]
    if y.is_floating_point():
        soft = y.dim() == 2 + (name == "y_syn")
        if soft and (classes == 1 or y.shape[-1] != classes):
            raise _fail(f"{name} has {y.shape[-1]} soft-label columns but the model has {classes} outputs")
        if not soft and classes != 1:
            raise _fail(f"{name} holds float targets without a class axis, which fit a model with one output; "
                        f"this model has {classes}: pass int64 class ids or soft labels [..., {classes}]")
        return
    top = 2 if classes == 1 else classes
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= top):
        raise _fail(f"{name} must hold class ids in [0, {top}) for a model with {classes} output(s), "
                    f"got values in [{int(y.min())}, {int(y.max())}]")


def check_inputs(model, x_syn, y_syn, lrs, x_real, y_real, epochs, momentum, method, snapshots) -> None:
    """Raise ValueError/TypeError for any argument that does not fit the contract."""
    if method not in METHODS:
        raise _fail(f"unknown method {method!r}; it needs to be one of {list(METHODS)}")
    dtype, device = check_model(model)
    for name, t in [("x_syn", x_syn), ("y_syn", y_syn), ("lrs", lrs), ("x_real", x_real), ("y_real", y_real)]:
        if _tensor(name, t).device != device:
            raise _fail(f"{name} is on {t.device} but the model is on {device}")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise _fail(f"epochs must be an integer >= 1, got {epochs!r}")
    if not isinstance(momentum, (int, float)) or not 0.0 <= momentum < 1.0:
        raise _fail(f"momentum must be a number in [0, 1), got {momentum!r}")
    if method == "reversible" and momentum == 0:
        raise _fail("method='reversible' needs momentum > 0: plain SGD (momentum 0) discards "
                    "information and cannot be run backwards; use 'checkpoint' or set momentum, e.g. 0.9")
    if snapshots is not None and (not isinstance(snapshots, int) or isinstance(snapshots, bool) or snapshots < 1):
        raise _fail(f"snapshots must be None or an integer >= 1, got {snapshots!r}")
    if snapshots is not None and method == "auto":
        raise _fail("snapshots goes with method='checkpoint'; method='auto' picks them from memory")
    if x_syn.dim() < 3 or x_syn.shape[0] < 1 or x_syn.shape[1] < 1:
        raise _fail(f"x_syn must have shape [s, b, *in_shape] with s, b >= 1, got {list(x_syn.shape)}")
    for name, x in [("x_syn", x_syn), ("x_real", x_real)]:
        if x.dtype != dtype:
            raise _fail(f"{name} must have the model's dtype {dtype}, got {x.dtype}", TypeError)
        _finite(name, x)
    if x_real.dim() != x_syn.dim() - 1 or x_real.shape[1:] != x_syn.shape[2:] or x_real.shape[0] < 1:
        raise _fail(f"x_real must have shape [N, {', '.join(map(str, x_syn.shape[2:]))}] to match x_syn "
                    f"{list(x_syn.shape)}, got {list(x_real.shape)}")
    _labels("y_syn", y_syn, tuple(x_syn.shape[:2]), dtype)
    _labels("y_real", y_real, tuple(x_real.shape[:1]), dtype)
    n = x_syn.shape[0] * epochs
    if not lrs.is_floating_point() or lrs.dtype != dtype:
        raise _fail(f"lrs must have the model's dtype {dtype}, got {lrs.dtype}", TypeError)
    if lrs.shape != (n,):
        raise _fail(f"lrs must have shape [s * epochs] = [{x_syn.shape[0]} * {epochs}] = [{n}], got {list(lrs.shape)}")
    _finite("lrs", lrs)
    if bool((lrs <= 0).any()):
        k = int(lrs.argmin())
        raise _fail(f"lrs must be positive and finite, got min={lrs[k].item():.6g} at step {k}")


def check_offload(offload: object, offload_dir: object, method: str) -> None:
    """offload in (None, "cpu", "disk") with a method that stores snapshots; offload_dir (disk
    only) an existing directory. Whether it is writable and has the space: when the plan is known."""
    if offload not in OFFLOADS:
        raise _fail(f"offload must be one of {list(OFFLOADS)}, got {offload!r}")
    if offload is not None and method in ("autograd", "reversible"):
        raise _fail(f"offload={offload!r} moves stored snapshots, which method={method!r} has none of; "
                    "use method 'replay', 'checkpoint' or 'auto'")
    if offload_dir is None:
        return
    if offload != "disk":
        raise _fail(f"offload_dir goes with offload='disk', got offload={offload!r}")
    if not isinstance(offload_dir, (str, os.PathLike)):
        raise _fail(f"offload_dir must be a path (str or os.PathLike), got {type(offload_dir).__name__}", TypeError)
    if not os.path.isdir(offload_dir):
        raise _fail(f"offload_dir must be an existing directory, got {os.fspath(offload_dir)!r}")
