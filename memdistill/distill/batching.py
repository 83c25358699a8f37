"""Many hypergradients at once: M models, each with its own synthetic data, learning rates and
real batch (restarts × internal models of Algorithm 1).

Plain ReLU MLPs of one shape go through one batched engine sweep (the fused or C++ step with
B = their number); any other module runs :func:`memdistill.engine.hypergradient` on its own. Row i of
the result belongs to ``models[i]`` whatever the grouping.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from memdistill.engine.hypergradient import hypergradient, make_step, sweep
from memdistill.engine.loop import Data
from memdistill.engine.steps.fused import is_plain_mlp, mlp_layers

__all__ = ["Rows", "hypergradients", "shape_groups"]


class Rows(NamedTuple):
    loss: Tensor            # [M] outer loss of each model
    grad_x: Tensor          # [M, s, b, *in]
    grad_lrs: Tensor        # [M, n]
    grad_y: Tensor | None   # [M, s, b(, C)] for float labels


def shape_groups(models: list[nn.Module]) -> list[list[int]]:
    """Indices of models that can share one sweep: plain MLPs of equal layer shapes; others alone."""
    groups: dict[object, list[int]] = {}
    for i, model in enumerate(models):
        key = tuple(mlp_layers(model)) if is_plain_mlp(model) else ("alone", i)
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def hypergradients(models: list[nn.Module], x_syn: Tensor, y_syn: Tensor, lrs: Tensor, x_real: Tensor,
                   y_real: Tensor, *, epochs: int, momentum: float = 0.0, method: str = "checkpoint",
                   snapshots: int | None = None) -> Rows:
    """Row i: the hypergradient of ``models[i]`` on x_syn[i], y_syn[i], lrs[i], x_real[i], y_real[i]."""
    loss = x_syn.new_zeros(len(models))
    grad_x, grad_lrs = torch.zeros_like(x_syn), torch.zeros_like(lrs)
    grad_y = torch.zeros_like(y_syn) if y_syn.is_floating_point() else None
    for rows in shape_groups(models):
        idx = torch.tensor(rows, device=x_syn.device)
        if len(rows) == 1 and not is_plain_mlp(models[rows[0]]):
            i = rows[0]
            hg = hypergradient(models[i], x_syn[i], y_syn[i], lrs[i], x_real[i], y_real[i], epochs=epochs,
                               momentum=momentum, method=method, snapshots=snapshots)
            loss[i], grad_x[i], grad_lrs[i] = hg.loss, hg.grad_x_syn, hg.grad_lrs
            if grad_y is not None:
                grad_y[i] = hg.grad_y_syn
            continue
        data = Data(x_syn[idx].movedim(0, 1), y_syn[idx].movedim(0, 1), x_real[idx], y_real[idx])
        step = make_step(models[rows[0]], None)
        theta0 = torch.cat([step.flatten(models[i]) for i in rows])
        _, res = sweep(step, data, lrs[idx].T.unsqueeze(-1).contiguous(), theta0,
                       momentum, method, snapshots)
        loss[idx] = res.loss
        grad_x[idx] = res.grad_x_syn.movedim(1, 0)
        grad_lrs[idx] = res.grad_lrs.squeeze(-1).T
        if grad_y is not None:
            grad_y[idx] = res.grad_y_syn.movedim(1, 0)
    return Rows(loss, grad_x, grad_lrs, grad_y)
