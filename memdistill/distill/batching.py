"""Many hypergradients at once: M models, each with its own synthetic data, learning rates and
real batch (restarts × internal models of Algorithm 1).

Models of one architecture (:func:`~memdistill.engine.steps.architecture.architecture`: same module classes and settings, same
parameter and buffer names, shapes and dtypes, equal constants) go through one batched engine
sweep with B = their number: the fused or C++ step for plain ReLU MLPs, the generic step
(vmap over the rows, or its loop when the module refuses vmap) for any other module. A model
with no partner runs :func:`memdistill.engine.hypergradient` on its own (a lone plain MLP
still takes the fused step's sweep). Row i of the result belongs to ``models[i]`` whatever the grouping.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from memdistill.distill.training import stack_rows
from memdistill.engine.hypergradient import hypergradient, make_step, sweep
from memdistill.engine.loop import Data
from memdistill.engine.planner import Plan
from memdistill.engine.steps.architecture import architecture
from memdistill.engine.steps.fused import is_plain_mlp
from memdistill.engine.steps.generic import GenericStep

__all__ = ["Rows", "architecture", "hypergradients", "row_hypergradients", "shape_groups"]


class Rows(NamedTuple):
    loss: Tensor            # [M] outer loss of each model
    grad_x: Tensor          # [M, s, b, *in]
    grad_lrs: Tensor        # [M, n]
    grad_y: Tensor | None   # [M, s, b(, C)] for float labels


def _constants(model: nn.Module) -> list[Tensor]:
    """The tensors a step takes as constants: frozen parameters and buffers."""
    return [p for p in model.parameters() if not p.requires_grad] + list(model.buffers())


def shape_groups(models: list[nn.Module]) -> list[list[int]]:
    """Indices of models that can share one sweep: one architecture (:func:`architecture`) and
    equal constants (the step takes the first model's), in order of first appearance."""
    groups: dict[object, list[list[int]]] = {}
    for i, model in enumerate(models):
        alike = groups.setdefault(architecture(model), [])
        mine = _constants(model)
        for group in alike:
            if all(torch.equal(a, b) for a, b in zip(_constants(models[group[0]]), mine)):
                group.append(i)
                break
        else:
            alike.append([i])
    return sorted((g for gs in groups.values() for g in gs), key=lambda g: g[0])


def _zero_rows(x_syn: Tensor, y_syn: Tensor, lrs: Tensor) -> Rows:
    """Rows of zeros for M = len(x_syn) models (grad_y only for float labels)."""
    grad_y = torch.zeros_like(y_syn) if y_syn.is_floating_point() else None
    return Rows(x_syn.new_zeros(len(x_syn)), torch.zeros_like(x_syn), torch.zeros_like(lrs), grad_y)


def _sweep_into(out: Rows, step: GenericStep, idx: Tensor, theta0: Tensor, x_syn: Tensor, y_syn: Tensor,
                lrs: Tensor, x_real: Tensor, y_real: Tensor, momentum: float, method: str,
                snapshots: int | None, memory: int | None, offload: str | None = None,
                offload_dir: str | None = None) -> Plan:
    """One batched sweep of the models ``idx`` [k] from θ0 [k, P], written into their rows of ``out``;
    returns its plan."""
    data = Data(x_syn[idx].movedim(0, 1), y_syn[idx].movedim(0, 1), x_real[idx], y_real[idx])
    chosen, res = sweep(step, data, lrs[idx].T.unsqueeze(-1).contiguous(), theta0,
                        momentum, method, snapshots, memory=memory, offload=offload, offload_dir=offload_dir)
    out.loss[idx] = res.loss
    out.grad_x[idx] = res.grad_x_syn.movedim(1, 0)
    out.grad_lrs[idx] = res.grad_lrs.squeeze(-1).T
    if out.grad_y is not None:
        out.grad_y[idx] = res.grad_y_syn.movedim(1, 0)
    return chosen


def row_hypergradients(sweeps: Sequence[tuple[GenericStep, Tensor, Tensor]], x_syn: Tensor, y_syn: Tensor,
                       lrs: Tensor, x_real: Tensor, y_real: Tensor, *, momentum: float = 0.0,
                       method: str = "checkpoint", snapshots: int | None = None,
                       memory: int | None = None, offload: str | None = None,
                       offload_dir: str | None = None, plans: list[Plan] | None = None) -> Rows:
    """:func:`hypergradients` for models given as θ0 rows, grouped by the caller: each
    (step, idx [k], θ0 [k, P]) is one batched sweep of the models ``idx`` (the sweeps partition
    0 … M−1; the Distiller keeps its steps and groups for the whole run). ``plans``, if given,
    receives each sweep's plan (with method "auto": the method it chose)."""
    out = _zero_rows(x_syn, y_syn, lrs)
    for step, idx, theta0 in sweeps:
        plan = _sweep_into(out, step, idx, theta0, x_syn, y_syn, lrs, x_real, y_real, momentum, method, snapshots,
                           memory, offload, offload_dir)
        if plans is not None:
            plans.append(plan)
    return out


def hypergradients(models: list[nn.Module], x_syn: Tensor, y_syn: Tensor, lrs: Tensor, x_real: Tensor,
                   y_real: Tensor, *, epochs: int, momentum: float = 0.0, method: str = "checkpoint",
                   snapshots: int | None = None, memory: int | None = None, compile: bool = False,
                   offload: str | None = None, offload_dir: str | None = None,
                   plans: list[Plan] | None = None) -> Rows:
    """Row i: the hypergradient of ``models[i]`` on x_syn[i], y_syn[i], lrs[i], x_real[i], y_real[i].

    ``memory`` (bytes) budgets each sweep, i.e. the models of one architecture together;
    ``compile``: the generic step's products through torch.compile; ``offload``, ``offload_dir``:
    where snapshots live beyond memory (:func:`memdistill.hypergradient`); ``plans``, if given,
    receives each sweep's plan, in the order of :func:`shape_groups`."""
    out = _zero_rows(x_syn, y_syn, lrs)
    loss, grad_x, grad_lrs, grad_y = out
    for rows in shape_groups(models):
        idx = torch.tensor(rows, device=x_syn.device)
        if len(rows) == 1 and not is_plain_mlp(models[rows[0]]):
            i = rows[0]
            hg = hypergradient(models[i], x_syn[i], y_syn[i], lrs[i], x_real[i], y_real[i], epochs=epochs,
                               momentum=momentum, method=method, snapshots=snapshots, memory=memory,
                               compile=compile, offload=offload, offload_dir=offload_dir)
            loss[i], grad_x[i], grad_lrs[i] = hg.loss, hg.grad_x_syn, hg.grad_lrs
            if grad_y is not None:
                grad_y[i] = hg.grad_y_syn
            plan = hg.stats["plan"]
        else:
            step = make_step(models[rows[0]], None, per_model=True, compile=compile)
            theta0 = stack_rows(step, [models[i] for i in rows])
            plan = _sweep_into(out, step, idx, theta0, x_syn, y_syn, lrs, x_real, y_real, momentum, method,
                               snapshots, memory, offload, offload_dir)
        if plans is not None:
            plans.append(plan)
    return out
