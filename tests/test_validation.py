"""Bad input gets a clear error naming the argument and what was expected."""
from __future__ import annotations

import pytest
import torch
from conftest import make_problem

import memdistill as md


def call(**changes):
    p = make_problem("mlp-binary", s=3, epochs=2)
    args = dict(model=p.model, x_syn=p.x_syn, y_syn=p.y_syn, lrs=p.lrs, x_real=p.x_real, y_real=p.y_real)
    kwargs = dict(epochs=2)
    for k, v in changes.items():
        (args if k in args else kwargs)[k] = v(args[k]) if callable(v) and k in args and k != "model" else v
    return md.hypergradient(*args.values(), **kwargs)


def nan_at(t, index=(1, 2, 0)):
    t = t.clone()
    t[index] = float("nan")
    return t


CASES = [
    (dict(method="adjoint"), ValueError, "unknown method 'adjoint'; it needs to be one of"),
    (dict(epochs=0), ValueError, "epochs must be an integer >= 1, got 0"),
    (dict(momentum=1.0), ValueError, r"momentum must be a number in \[0, 1\), got 1.0"),
    (dict(momentum=-0.1), ValueError, "momentum must be a number in"),
    (dict(snapshots=0), ValueError, "snapshots must be None or an integer >= 1, got 0"),
    (dict(method="reversible"), ValueError, "method='reversible' needs momentum > 0"),
    (dict(lrs=lambda t: t[:-1]), ValueError, r"lrs must have shape \[s \* epochs\] = \[3 \* 2\] = \[6\], got \[5\]"),
    (dict(lrs=lambda t: torch.cat([t[:3], -t[3:4], t[4:]])), ValueError, "lrs must be positive and finite, got min=.* at step 3"),
    (dict(lrs=lambda t: torch.cat([t[:2], t[2:3] * float("inf"), t[3:]])), ValueError, "lrs must be finite, got inf"),
    (dict(lrs=lambda t: t.float()), TypeError, "lrs must have the model's dtype torch.float64"),
    (dict(x_syn=lambda t: t[0]), ValueError, r"x_syn must have shape \[s, b, \*in_shape\]"),
    (dict(x_syn=nan_at), ValueError, r"x_syn must be finite, got nan at index \(1, 2, 0\)"),
    (dict(x_real=lambda t: t[:, :1]), ValueError, r"x_real must have shape \[N, 2\] to match x_syn"),
    (dict(x_real=lambda t: t.float()), TypeError, "x_real must have the model's dtype"),
    (dict(y_syn=lambda t: t[:, :2]), ValueError, r"y_syn must have shape \[3, 4\]"),
    (dict(y_syn=lambda t: t + 2), ValueError, r"y_syn must hold class ids in \[0, 2\)"),
    (dict(y_syn=lambda t: t.int()), TypeError, "y_syn must be int64 class ids"),
    (dict(y_real=lambda t: t[:-1]), ValueError, r"y_real must have shape \[16\]"),
    (dict(y_syn=lambda t: t.double().unsqueeze(-1).expand(-1, -1, 3)), ValueError, "y_syn has 3 soft-label columns but the model has 1 outputs"),
    (dict(x_syn="not a tensor"), TypeError, "x_syn must be a torch.Tensor, got str"),
    (dict(model=torch.nn.ReLU()), ValueError, "model has no trainable parameters"),
    (dict(model="mlp"), TypeError, "model must be a torch.nn.Module, got str$"),
    (dict(model=md.mlp("2-layer")), TypeError, r"model must be a torch.nn.Module, got MLP \(a factory of modules"),
    (dict(model=torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Dropout(0.5)).double()), ValueError,
     r"module '1' \(Dropout\) is random in training mode"),
]


@pytest.mark.parametrize("changes, kind, message", CASES)
def test_bad_input(changes, kind, message):
    with pytest.raises(kind, match="^hypergradient: " + message):
        call(**changes)


def test_dropout_in_eval_mode_is_fine():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Dropout(0.5)).double().eval()
    assert call(model=model).loss.isfinite()


def test_divergence_is_an_error_not_a_nan():
    with pytest.raises(FloatingPointError, match="the inner loop diverged; lower lrs"):
        call(lrs=lambda t: t * 1e300, x_syn=lambda t: t * 1e3)


@pytest.mark.parametrize("name", ["y_syn", "y_real"])
def test_float_targets_without_a_class_axis_need_one_output(name):
    """Float [N] targets against C = 3 outputs would broadcast into the soft-label loss (N = 1 or
    N = C silently): they are refused."""
    p = make_problem("mlp-3class", s=3, epochs=1)
    args = dict(x_syn=p.x_syn, y_syn=p.y_syn, lrs=p.lrs, x_real=p.x_real, y_real=p.y_real)
    args[name] = args[name][..., 0] if args[name].is_floating_point() else args[name].to(p.x_syn.dtype)
    with pytest.raises(ValueError, match=f"hypergradient: {name} holds float targets without a class axis"):
        md.hypergradient(p.model, *args.values(), epochs=1)
