"""``hypergradient``: the public entry point of the engine (Algorithms 2 and 3 of PAPER.md)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from memdistill.engine.baseline import autograd_saved_bytes, autograd_step_bytes, autograd_unroll
from memdistill.engine.dynamics import SGD, State
from memdistill.engine.fixedpoint import ExactSGD
from memdistill.engine.loop import Data, Sweep, run
from memdistill.engine.planner import (
    Plan,
    Sizes,
    choose,
    default_budget,
    format_bytes,
    parse_memory,
    predict,
    schedule_of,
)
from memdistill.engine.pool import storage_levels
from memdistill.engine.steps.extension import ExtensionMLPStep, backend_info
from memdistill.engine.steps.fused import FusedMLPStep, is_plain_mlp, mlp_layers
from memdistill.engine.steps.generic import GenericStep, LossFn
from memdistill.engine.validation import check_inputs, check_labels, check_offload

__all__ = ["Hypergradient", "hypergradient", "make_step", "plan", "plan_sweep", "sweep", "unrolled_loss"]


@dataclass(frozen=True)
class Hypergradient:
    """The outer loss after n inner steps and its gradients (see :func:`hypergradient`)."""
    loss: Tensor
    grad_x_syn: Tensor
    grad_lrs: Tensor
    grad_y_syn: Tensor | None
    grad_params: dict[str, Tensor]
    stats: dict[str, Any] = field(default_factory=dict)


STEPS = ("auto", "generic", "fused", "cpp")
# The C++ kernels are hand loops for tiny MLPs: 5x faster than the fused step at width 32, but
# slower from width 64 on (measured: 62 vs 43 ms at 64, 1.1 s vs 80 ms at 256), so "auto"
# takes them only up to this width.
CPP_MAX_WIDTH = 32


def make_step(model: nn.Module, loss_fn: LossFn | None, step: str = "auto", *,
              per_model: bool = False, compile: bool = False) -> GenericStep:
    """The Step for ``model``; ``per_model``: the data carry one batch per model (a leading B axis
    after the step axis, the layout of :func:`sweep` for many models), which the generic step
    must be told (the fused steps read it from the shapes).

    "auto": for a plain ReLU MLP with the default loss the C++ op ("cpp") when memdistill.engine.steps._C
    has a kernel for the model's device and no layer is wider than CPP_MAX_WIDTH, else the
    pure-PyTorch fused step ("fused"); for any other module "generic". "generic", "fused" and "cpp" force one (an error if it cannot run).
    ``compile``: the generic step's products through ``torch.compile`` (the fused steps ignore it).
    """
    if step not in STEPS:
        raise ValueError(f"hypergradient: unknown step {step!r}; it needs to be one of {list(STEPS)}")
    fusable = is_plain_mlp(model) and loss_fn is None
    if step in ("fused", "cpp") and not fusable:
        raise ValueError(f"hypergradient: step={step!r} needs an nn.Sequential(Linear, ReLU, ..., Linear) "
                         "with biases and the default loss_fn; use step='auto' or 'generic'")
    if step == "generic" or not fusable:
        return GenericStep(model, loss_fn, per_model=per_model, compile=compile)
    device = next(model.parameters()).device.type.upper()
    if step == "cpp" and device not in backend_info()["devices"]:
        raise ValueError(f"hypergradient: step='cpp' has no {device} kernel: {backend_info()['reason']}")
    widest = max(max(layer) for layer in mlp_layers(model))
    if step == "fused" or device not in backend_info()["devices"] or (step == "auto" and widest > CPP_MAX_WIDTH):
        return FusedMLPStep(model)
    return ExtensionMLPStep(model)


def plan_sweep(step: GenericStep, data: Data, lrs: Tensor, theta0: Tensor, momentum: float = 0.0,
               method: str = "checkpoint", snapshots: int | None = None, memory: int | None = None,
               offload: str | None = None) -> Plan:
    """The :class:`~memdistill.engine.planner.Plan` of :func:`sweep` (same arguments; ``memory`` in bytes).

    "auto" chooses (:func:`~memdistill.engine.planner.choose`; memory None: half the available
    memory, of the host with offload="cpu"); another method is predicted and, with ``memory``,
    checked against it (ValueError). With ``offload`` the budget bounds the memory level.
    """
    sizes = Sizes(lrs.shape[0], theta0.shape[0], theta0.shape[1], theta0.element_size(), momentum)

    def autograd_bytes(n: int) -> int:
        return autograd_saved_bytes(step, data, lrs, theta0, momentum, n)

    def graph_bytes() -> int:
        return autograd_step_bytes(step, data, lrs, theta0, momentum)[1]

    # The tape records in grad mode, which compiled products leave to eager code: compiled steps
    # keep the plain schedule, whose every product is compiled.
    records = step.name == "generic" and not step.compile
    if method == "auto":
        budget = memory if memory is not None else default_budget(
            torch.device("cpu") if offload == "cpu" else theta0.device)
        return choose(sizes, budget, autograd_bytes if step.name == "generic" else None, offload,
                      graph_bytes if records else None)
    plan = predict(method, sizes, snapshots, autograd_bytes, memory, f"method={method!r} was asked for", offload,
                   graph_bytes if records else None)
    if memory is not None and plan.predicted_peak_bytes > memory:
        raise ValueError(f"hypergradient: method={method!r} stores {format_bytes(plan.predicted_peak_bytes)} "
                         f"for n={sizes.n}, over memory={format_bytes(memory)}; raise memory or pass method='auto'")
    return plan


def sweep(step: GenericStep, data: Data, lrs: Tensor, theta0: Tensor, momentum: float = 0.0,
          method: str = "checkpoint", snapshots: int | None = None, frac_bits: int = 44,
          memory: int | None = None, offload: str | None = None,
          offload_dir: str | None = None) -> tuple[Plan, Sweep]:
    """One forward and reverse sweep for B models at once, without argument checks.

    θ0 [B, P]. The data are shared by the B models (the layout of :func:`hypergradient`) or one
    batch per model (the generic step built with ``per_model=True``; the fused step sees it from
    the shapes): x_syn [s, B, b, *in], y_syn [s, B, b(, C)], x_real [B, N, *in], y_real
    [B, N(, C)]; lrs [n] shared or [n, B, 1] one rate per model. ``method`` may be "auto" and
    ``memory`` a budget in bytes (:func:`plan_sweep`); ``offload`` None, "cpu" or "disk" (files
    in a fresh directory under ``offload_dir``, removed at the end: :func:`~memdistill.engine.pool.storage_levels`). Returns (the :class:`~memdistill.engine.planner.Plan`
    it ran, :class:`~memdistill.engine.loop.Sweep`) whose gradients have the shapes of the
    inputs (of the summed losses) and whose loss holds the B models' outer losses [B].
    """
    n, s = lrs.shape[0], data.x_syn.shape[0]
    chosen = plan_sweep(step, data, lrs, theta0, momentum, method, snapshots, memory, offload)
    if chosen.method == "autograd":
        return chosen, autograd_unroll(step, data, lrs, theta0, momentum)

    xs, ys = data.x_syn.unbind(0), data.y_syn.unbind(0)   # views made once, not per step

    def gradient(theta: Tensor, k: int) -> Tensor:
        return step.grad(theta, xs[k % s], ys[k % s])

    def update(state: State, k: int) -> State:   # a fused step: the whole SGD step in one call
        return State(*step.sgd_advance(state.theta, state.v, xs[k % s], ys[k % s], lrs[k], momentum))

    dynamics = (ExactSGD(gradient, lrs, momentum, theta0.dtype, frac_bits) if chosen.method == "reversible"
                else SGD(gradient, lrs, momentum, update if step.fused_sgd else None))
    _, actions = schedule_of(chosen.method, n, chosen.snapshots, chosen.offload, chosen.segment)
    with storage_levels(chosen, offload_dir) as levels, step.no_graph():
        result = run(actions, dynamics, step, data, lrs, theta0, levels)
    return chosen, _outside(result)


def _outside(result: Sweep) -> Sweep:
    """``result`` with tensors usable anywhere: the inference tensors of a sweep run in inference
    mode (:meth:`GenericStep.no_graph`) cloned to normal ones (autograd and in-place ops refuse them)."""
    return result._replace(**{name: t.clone() for name, t in result._asdict().items()
                              if isinstance(t, Tensor) and t.is_inference()})


def _prepare(model: nn.Module, x_syn: Tensor, y_syn: Tensor, lrs: Tensor, x_real: Tensor, y_real: Tensor,
             epochs: int, momentum: float, method: str, snapshots: int | None, memory: int | str | None,
             loss_fn: LossFn | None, step: str, compile: bool = False, offload: str | None = None,
             offload_dir: object = None) -> tuple[GenericStep, Data, Tensor, int | None]:
    """Checked arguments as (step, data, θ0 [1, P], memory in bytes), before any work."""
    check_inputs(model, x_syn, y_syn, lrs, x_real, y_real, epochs, momentum, method, snapshots)
    check_offload(offload, offload_dir, method)
    budget = parse_memory(memory)
    the_step = make_step(model, loss_fn, "generic" if method == "autograd" else step, compile=compile)
    theta0 = the_step.flatten()
    with torch.no_grad():
        out = the_step.forward(theta0[0], x_real)
    check_labels("y_syn", y_syn, out)
    check_labels("y_real", y_real, out)
    return the_step, Data(x_syn.detach(), y_syn.detach(), x_real.detach(), y_real.detach()), theta0, budget


def plan(model: nn.Module, x_syn: Tensor, y_syn: Tensor, lrs: Tensor, x_real: Tensor, y_real: Tensor, *,
         epochs: int = 1, momentum: float = 0.0, method: str = "auto", snapshots: int | None = None,
         memory: int | str | None = None, loss_fn: LossFn | None = None, step: str = "auto",
         offload: str | None = None, offload_dir: str | None = None) -> Plan:
    """What :func:`hypergradient` with these arguments would do, without running the unroll.

    Takes the arguments of :func:`hypergradient` (``method`` defaults to "auto" here) and returns
    its :class:`~memdistill.engine.planner.Plan`: method, snapshots, schedule, predicted peak
    stored bytes, forward steps, why, and with ``offload`` the storage levels and their bytes.
    Only the predictions that need a step's graph (autograd, auto and checkpoint on the generic
    step) compute anything: one and two unrolled steps with graphs, on the real shapes, once per
    architecture and shapes (see :mod:`memdistill.engine.planner`).

    Examples:
      >>> import torch, memdistill as md
      >>> model = torch.nn.Sequential(torch.nn.Linear(2, 1)).double()
      >>> x_syn, y_syn = torch.randn(4, 8, 2, dtype=torch.float64), torch.randint(0, 2, (4, 8))
      >>> lrs = torch.full((400,), 0.1, dtype=torch.float64)
      >>> x, y = torch.randn(64, 2, dtype=torch.float64), torch.randint(0, 2, (64,))
      >>> p = md.plan(model, x_syn, y_syn, lrs, x, y, epochs=100, momentum=0.9, memory="1KiB")
      >>> p.method, p.snapshots, p.predicted_peak_bytes
      ('checkpoint', 21, 1008)
    """
    the_step, data, theta0, budget = _prepare(model, x_syn, y_syn, lrs, x_real, y_real, epochs, momentum, method,
                                              snapshots, memory, loss_fn, step, False, offload, offload_dir)
    return plan_sweep(the_step, data, lrs.detach(), theta0, float(momentum), method, snapshots, budget, offload)


def hypergradient(model: nn.Module, x_syn: Tensor, y_syn: Tensor, lrs: Tensor, x_real: Tensor,
                  y_real: Tensor, *, epochs: int = 1, momentum: float = 0.0, method: str = "checkpoint",
                  snapshots: int | None = None, loss_fn: LossFn | None = None,
                  frac_bits: int = 44, step: str = "auto", memory: int | str | None = None,
                  compile: bool = False, offload: str | None = None,
                  offload_dir: str | None = None) -> Hypergradient:
    r"""Outer loss after n = s·epochs inner SGD steps on synthetic data, and its exact gradients.

    Inner loop from θ_0 = the model's parameters (left unchanged), step k on batch i = k mod s:

    .. math::
        v_{k+1} = γ v_k + ∇_θ l(x̃_i, ỹ_i; θ_k), \quad θ_{k+1} = θ_k − η̃_k v_{k+1}, \quad
        L = l(x, y; θ_n).

    Args:
      model: any nn.Module; its trainable parameters are θ0, buffers and frozen ones constants.
      x_syn: [s, b, *in_shape] synthetic inputs of each internal step.
      y_syn: [s, b] int64 class ids or float targets, or [s, b, C] float soft labels.
      lrs: [s * epochs] positive learning rate of each inner step.
      x_real, y_real: the real batch of the outer loss, [N, *in_shape] and [N] (or [N, C]).
      epochs: internal epochs; step k uses x_syn[k % s].
      momentum: γ in [0, 1), torch.optim.SGD convention (v0 = 0, no dampening).
      method: "autograd" (graphs through the whole unroll: the baseline), "replay" (store every
        θ_k, rebuild one step's graph at a time), "checkpoint" (√n segments when ``snapshots``
        is None, else binomial/revolve with that many stored states), "reversible" (exact
        fixed-point momentum SGD run backwards; needs momentum > 0) or "auto" (the fastest
        whose predicted storage fits ``memory``: :mod:`memdistill.engine.planner`, :func:`plan`).
      snapshots: stored states for "checkpoint"; None picks √n segments.
      loss_fn: ``loss_fn(model(x), y) -> 0-d``; default BCE-with-logits for one output, else
        cross-entropy (soft-label cross-entropy for float [.., C] targets).
      frac_bits: fractional bits of the fixed-point trajectory ("reversible" only).
      step: "auto" (for a plain ReLU MLP with the default loss the analytic fused step, as the
        C++ op "cpp" when memdistill.engine.steps._C is built, else "fused" in PyTorch; for any other model
        "generic", autograd), or one of "generic", "fused", "cpp". method="autograd" always
        runs generic.
      memory: a budget for what is stored for the reverse pass: bytes, or a string such as
        "512MiB", "2GiB", "64MB" (binary KiB/MiB/GiB, decimal KB/MB/GB). With "auto" it picks
        the method (None: half the available memory); with another method a prediction over
        it is a ValueError before any work.
      compile: run the generic step's products through ``torch.compile`` (compiled once per
        architecture, shape and dtype, and reused by later calls; tens of seconds per product on
        a CPU, so it pays for long runs only). Not for method="autograd"; the fused steps ignore it.
      offload: where snapshots live beyond memory (replay, checkpoint and auto): None; "cpu"
        host memory (pinned, copied on a side stream while the forward sweep goes on, for a
        model on a GPU); "disk" a two-level schedule, c snapshots in memory and the segment
        starts in a memory-mapped file (:mod:`memdistill.engine.planner`). Same bits as without.
      offload_dir: the directory of offload="disk"'s files (None: the temporary directory); a
        fresh subdirectory, removed at the end, failure included. Too little free space for
        the planned bytes, or an unwritable directory, is an OSError before any work.

    Returns:
      :class:`Hypergradient` with ``loss``, ``grad_x_syn``, ``grad_lrs``, ``grad_y_syn`` (None
      for integer labels), ``grad_params`` (∂L/∂θ0 by parameter name) and ``stats`` ("method"
      (the one that ran), "snapshots", "schedule", "step", "steps", "forward_steps",
      "peak_stored_bytes" (measured: what the snapshot pool and bit stack held at most),
      "predicted_peak_bytes", "memory" (the budget in bytes, or None), "plan" (the
      :class:`~memdistill.engine.planner.Plan`), "compile_seconds" (spent in calls that compiled),
      "offload", "levels" ({level: measured peak bytes}: with offload="disk" peak_stored_bytes is
      the memory level's), "seconds").

    Examples:
      >>> import torch, memdistill as md
      >>> model = torch.nn.Linear(2, 1).double()
      >>> x_syn, y_syn = torch.randn(4, 8, 2, dtype=torch.float64), torch.randint(0, 2, (4, 8))
      >>> lrs = torch.full((8,), 0.1, dtype=torch.float64)
      >>> x, y = torch.randn(64, 2, dtype=torch.float64), torch.randint(0, 2, (64,))
      >>> hg = md.hypergradient(model, x_syn, y_syn, lrs, x, y, epochs=2)
      >>> hg.grad_x_syn.shape, hg.stats["steps"]
      (torch.Size([4, 8, 2]), 8)

    References:
      Wang et al. (2018), Dataset Distillation; Maclaurin, Duvenaud & Adams (2015), Gradient-based
      hyperparameter optimization through reversible learning; Griewank & Walther (2000), revolve.
    """
    step, data, theta0, budget = _prepare(model, x_syn, y_syn, lrs, x_real, y_real, epochs, momentum, method,
                                          snapshots, memory, loss_fn, step, compile, offload, offload_dir)
    start = time.perf_counter()
    chosen, result = sweep(step, data, lrs.detach(), theta0, float(momentum), method, snapshots, frac_bits, budget,
                           offload, offload_dir)
    seconds = time.perf_counter() - start
    loss = result.loss.sum()
    if not bool(torch.isfinite(loss)):
        raise FloatingPointError(
            f"hypergradient: the outer loss is {loss.item()} after {lrs.shape[0]} inner steps: the inner "
            "loop diverged; lower lrs (or the scale of x_syn)")
    stats = {"method": chosen.method, "snapshots": chosen.snapshots, "schedule": chosen.schedule,
             "step": step.name, "step_batched": step.batched, "step_path": step.why, "steps": lrs.shape[0],
             "forward_steps": result.forward_steps,
             "peak_stored_bytes": result.level_peak_bytes[0] if chosen.offload == "disk" else result.peak_stored_bytes,
             "offload": chosen.offload,
             "levels": dict(zip([name for name, _ in chosen.levels], result.level_peak_bytes)),
             "predicted_peak_bytes": chosen.predicted_peak_bytes, "memory": budget, "plan": chosen,
             "compile_seconds": getattr(step, "compile_seconds", 0.0), "seconds": seconds}
    return Hypergradient(loss, result.grad_x_syn, result.grad_lrs, result.grad_y_syn,
                         step.unflatten(result.grad_theta0[0]), stats)


class _UnrolledLoss(torch.autograd.Function):
    """L(x̃, ỹ, η̃) whose backward returns the hypergradient computed in the forward pass."""

    @staticmethod
    def forward(ctx, x_syn, y_syn, lrs, model, x_real, y_real, options):  # type: ignore[override]
        hg = hypergradient(model, x_syn, y_syn, lrs, x_real, y_real, **options)
        ctx.grads = (hg.grad_x_syn, hg.grad_y_syn, hg.grad_lrs)
        return hg.loss.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        gx, gy, glr = (None if g is None else grad_out * g for g in ctx.grads)
        return gx, gy, glr, None, None, None, None


def unrolled_loss(model: nn.Module, x_syn: Tensor, y_syn: Tensor, lrs: Tensor, x_real: Tensor,
                  y_real: Tensor, **options: Any) -> Tensor:
    """The outer loss as a differentiable 0-d tensor: ``.backward()`` fills x_syn.grad, lrs.grad
    (and y_syn.grad for float labels) with the exact hypergradient, computed with bounded
    memory by ``options["method"]``. Takes the keyword arguments of :func:`hypergradient`.
    Not twice differentiable.
    """
    return _UnrolledLoss.apply(x_syn, y_syn, lrs, model, x_real, y_real, options)
