"""The math of one inner step: the loss gradient and the products the reverse step needs.

A Step knows nothing about schedules or about the optimiser; it evaluates, for B models whose
flattened parameters are the rows of ``theta`` [B, P] and one batch — x [b, *in], y [b, ...]
shared by the B models, or (``per_model=True``) x [B, b, *in], y [B, b, ...] one per model:

- ``loss(theta, x, y)``            [l(x, θ_j)]_j [B], differentiable in every argument;
- ``value_and_grad(theta, x, y)``  (the B losses [B], g = ∇θ l [B, P]);
- ``reverse(theta, x, y, w)``      (g, Hw, (∂g/∂x)ᵀw, (∂g/∂y)ᵀw) with H = ∂g/∂θ the Hessian:
  one Hessian-vector product and the mixed second derivatives, both VJPs of the gradient.

The generic step runs any nn.Module. With B > 1 rows it evaluates them in one computation,
``torch.func.vmap`` over the rows of ``functional_call``; a module vmap cannot transform
(data-dependent control flow, random ops, …) falls back to a Python loop over the rows, decided
by a probe on the first batched call of each product (see :class:`GenericStep`).

Second-order products, per row, for a direction w in parameter space:

- ``"reverse"`` (reverse-over-reverse): the VJP of g(θ, x, y) = ∇θ l with cotangent w gives
  (Hw, (∂g/∂x)ᵀw, (∂g/∂y)ᵀw) in one backward pass through the gradient's graph.
- ``"forward"`` (forward-over-reverse): the JVP of ∇_{(θ, x, y)} l along (w, 0, 0) gives
  ∂/∂ε ∇_{(θ, x, y)} l(θ + εw) = (Hw, (∂g/∂x)ᵀw, (∂g/∂y)ᵀw) by the symmetry of second
  derivatives: one forward-mode pass over one gradient, no separate pass for the mixed terms.

Both are exact; "reverse" is the default (measured faster on CPU for LeNet, instance-norm
ConvNets, LayerNorm/GELU modules and MLPs: 1.1–1.6x; see bench/test_bench_generic.py).
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from functools import partial

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, jvp, vjp, vmap

from memdistill.engine.steps.architecture import architecture
from memdistill.engine.steps.conv import swap_convs

LossFn = Callable[[Tensor, Tensor], Tensor]

__all__ = ["GenericStep", "default_loss", "LossFn", "SECOND_ORDER", "compile_seconds"]

SECOND_ORDER = ("reverse", "forward")
# Errors with which torch.func refuses a module (vmap or grad transform); anything else propagates.
_TRANSFORM_ERRORS = (RuntimeError, NotImplementedError, ValueError, TypeError)
# torch.compile'd batched products, shared by the steps of one architecture (its constants are
# arguments, so a fresh model of the same architecture reuses the compiled code); the shapes
# each has been compiled for; and the keys whose compilation failed, with the reason.
_COMPILED: dict[tuple, Callable] = {}
_COMPILED_SHAPES: set[tuple] = set()
_COMPILE_FAILED: dict[tuple, str] = {}
_COMPILE_SECONDS = [0.0]   # seconds spent in calls that compiled, by every step of this process


def compile_seconds() -> float:
    """Seconds this process has spent compiling generic steps' products (``compile=True``)."""
    return _COMPILE_SECONDS[0]
# How the products are compiled: one graph per shape and dtype (the shapes of a run are few).
COMPILE_OPTIONS: dict = {"dynamic": False}


def default_loss(out: Tensor, y: Tensor) -> Tensor:
    """BCE-with-logits when the model has one output, else cross-entropy.

    out [b, 1] with y [b] (0/1 ids or float targets): BCE on out.squeeze(-1).
    out [b, C] with y [b] int64: cross-entropy; with y [b, C] float: soft-label cross-entropy
    −Σ_c y_c log softmax(out)_c, averaged over the batch.
    """
    if out.shape[-1] == 1:
        return nn.functional.binary_cross_entropy_with_logits(out.squeeze(-1), y.to(out.dtype))
    if y.is_floating_point():
        return -(y * out.log_softmax(-1)).sum(-1).mean()
    return nn.functional.cross_entropy(out, y)


def _first_line(error: BaseException) -> str:
    """``Type: first line of the message`` (at most 200 characters of it)."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message[:200]}"


def _zeros_if_none(grads: tuple[Tensor | None, ...], like: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return tuple(torch.zeros_like(t) if g is None else g for g, t in zip(grads, like))


def _untracked(model: nn.Module) -> nn.Module:
    """``model``, or a copy of it whose training-mode batch norms track no running statistics."""
    def tracking(m: nn.Module) -> bool:
        return isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats
    if not any(tracking(m) for m in model.modules()):
        return model
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if tracking(m):
            m.track_running_stats = False
    return twin


Slot = tuple[dict, str, str]   # (a module's _parameters or _buffers, its key there, the tensor's name)


def _slots(model: nn.Module) -> list[Slot]:
    """Every slot of ``model`` that holds a parameter or buffer, with the name of the tensor in
    it (``named_parameters`` / ``named_buffers`` without removing duplicates: a tied or reused
    tensor has a slot under each of its names; a slot seen twice is listed once)."""
    slots: dict[tuple[int, str], Slot] = {}
    for table, named in (("_parameters", model.named_parameters), ("_buffers", model.named_buffers)):
        canonical = {id(t): k for k, t in named()}
        for name, t in named(remove_duplicate=False):
            owner, _, attr = name.rpartition(".")
            held = getattr(model.get_submodule(owner), table)
            slots.setdefault((id(held), attr), (held, attr, canonical[id(t)]))
    return list(slots.values())


@contextlib.contextmanager
def _bound(slots: list[Slot], values: dict[str, Tensor]) -> Iterator[None]:
    """Each slot holds ``values[its tensor's name]`` inside the block, its own tensor again after
    it (failure included): the swap functional_call makes, without its per-call checks."""
    before = [held[key] for held, key, _ in slots]
    try:
        for held, key, name in slots:
            held[key] = values[name]
        yield
    finally:
        for (held, key, _), t in zip(slots, before):
            held[key] = t


class GenericStep:
    """Any nn.Module: through ``torch.func.functional_call`` under vmap, with the row's values bound
    into the module's own slots (:func:`_bound`) in the loop.

    Trainable parameters (``requires_grad``) are the rows of ``theta``; frozen parameters and
    buffers are constants, copied once, so a module that writes its buffers (BatchNorm in
    training mode) never touches the caller's. The torch.func paths run a private copy of the
    module in which training-mode batch norms keep no running statistics (they normalise with
    the batch statistics either way, and never read the running ones): the same function,
    without the buffer writes a transform refuses. With ``second_order="reverse"`` and without
    compile, its ``nn.Conv2d`` are :class:`~memdistill.engine.steps.conv.BatchedConv2d` (same
    parameters, a faster vmap rule on a CPU).

    Args:
      model: the module; its trainable parameters define the layout of a row.
      loss_fn: ``loss_fn(model(x), y) -> 0-d``; default :func:`default_loss`.
      batched: True: B > 1 rows in one ``vmap``-ed computation when the module allows it;
        False: a Python loop over the rows with plain autograd (the reference).
      second_order: "reverse" or "forward", how ``reverse`` forms Hw and the mixed terms
        (module docstring). The loop's "reverse" is plain double-backward autograd.
      per_model: x and y carry one batch per model (a leading B axis) instead of one shared batch.
      compile: run the vmap-ed products (every B, B = 1 too) through ``torch.compile`` where
        grad mode is off (the engine's sweeps; autograd through the unroll, which needs double
        backward, keeps the eager path)
        (``dynamic=False``: compiled once per shape and dtype, and shared by every step of the
        same :func:`~memdistill.engine.steps.architecture.architecture`, loss and options). Pays
        off for long runs only: compiling takes tens of seconds per product and shape on a CPU.
        A compilation that fails falls back to the eager path, saying why in ``why``.

    Attributes:
      batched: whether B > 1 rows go through vmap; set to False by a failed probe.
      why: a sentence saying which path the step takes and why.
      compile_seconds: the seconds this step spent in calls that compiled (first call of a shape).

    The probe: the first call with B > 1 of each product (loss, value_and_grad, reverse) tries
    the vmap path; a torch.func error (RuntimeError, NotImplementedError, ValueError,
    TypeError) switches the step to the loop for good, recording the error in ``why``, and the
    call is answered by the loop. Later calls of a product that passed are not guarded. One
    row (B = 1) always takes the loop's plain autograd: a transform costs more than it saves.
    """

    name = "generic"
    fused_sgd = False
    """Whether the step has ``sgd_advance`` and ``sgd_reverse``: a whole step of momentum SGD,
    forward or reversed, in one call (the C++ step). Without them the engine composes
    :meth:`grad` and :meth:`reverse` with :mod:`memdistill.engine.dynamics`' equations."""

    def __init__(self, model: nn.Module, loss_fn: LossFn | None = None, *, batched: bool = True,
                 second_order: str = "reverse", per_model: bool = False, compile: bool = False):
        if second_order not in SECOND_ORDER:
            raise ValueError(f"GenericStep: unknown second_order {second_order!r}; it needs to be one of "
                             f"{list(SECOND_ORDER)}")
        trainable = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        self.model = model
        self.loss_fn = loss_fn or default_loss
        self.names = [k for k, _ in trainable]
        self.shapes = [p.shape for _, p in trainable]
        self.sizes = [math.prod(s) for s in self.shapes]
        trained = set(self.names)
        # Constants are cloned: a module that writes its buffers (BatchNorm in training mode)
        # must not touch the caller's.
        self.constants = {k: t.detach().clone() for k, t in
                          [*model.named_parameters(), *model.named_buffers()] if k not in trained}
        self.slots = _slots(model)
        # Weight tying (b.weight = a.weight: one tensor in two slots) needs functional_call's
        # tie_weights=True, which costs more than a small model's forward; a module used twice
        # (Sequential(f, g, f)) has one slot under two names and needs nothing (tie_weights=True
        # would leave it swapped).
        self.tied = len({name for *_, name in self.slots}) < len(self.slots)
        # The torch.func copy runs its nn.Conv2d as conv.BatchedConv2d, whose vmap rule beats
        # vmap's own NCHW grouped conv on a CPU (ten LeNets on 28x28, 10 images each: reverse
        # 1.7x, value_and_grad 1.8x faster); reverse mode only (it has no jvp), and not under
        # torch.compile (dynamo cannot trace it). The loop (self.model) keeps nn.Conv2d.
        fast_convs = second_order == "reverse" and not compile
        self.functional_model = swap_convs(_untracked(model)) if fast_convs else _untracked(model)
        self.second_order, self.per_model = second_order, bool(per_model)
        self.batched = bool(batched)
        self.why = ("vmap over the B rows (torch.func); probed on the first call with B > 1" if self.batched
                    else "loop over the B rows: batched=False (the reference)")
        self._passed: set[str] = set()
        self.compile, self.compile_seconds, self.compile_failure = bool(compile), 0.0, ""
        self.key = (architecture(model), self.loss_fn, second_order, self.per_model)
        if self.compile and self.batched:
            self.why = "torch.compile of the vmap-ed products (compiled on the first call of each shape)"

    # ------------------------------------------------------------------ layout

    def flatten(self, model: nn.Module | None = None) -> Tensor:
        """θ0 as one row: [1, P], a copy of the trainable parameters of ``model`` (default: the
        step's own; another model must have the same parameter names and shapes)."""
        params = dict((model or self.model).named_parameters())
        return torch.cat([params[k].detach().reshape(-1) for k in self.names]).unsqueeze(0)

    def unflatten(self, row: Tensor) -> dict[str, Tensor]:
        """[P] -> {name: view of shape}."""
        return {k: t.view(s) for k, t, s in zip(self.names, row.split(self.sizes), self.shapes)}

    def forward(self, row: Tensor, x: Tensor) -> Tensor:
        """model(x) with parameters θ = row [P] (every slot of a tied or reused tensor holds the
        row's value): the module's own slots swapped for the call, which costs 31 µs where
        functional_call's checks cost 72 µs on the paper MLP's forward (measured on this CPU)."""
        with _bound(self.slots, {**self.constants, **self.unflatten(row)}):
            return self.model(x)

    def _rows(self, theta: Tensor, x: Tensor, y: Tensor) -> list[tuple[Tensor, Tensor, Tensor]]:
        """(θ_j [P], x_j, y_j) for each row j: the shared batch, or row j of per-model batches."""
        if self.per_model:
            return list(zip(theta.unbind(0), x.unbind(0), y.unbind(0)))
        return [(row, x, y) for row in theta.unbind(0)]

    # ------------------------------------------------------------------ public products

    def loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """[l(model_θj(x), y)]_j [B] for the B rows of theta [B, P] (differentiable)."""
        return self._dispatch("loss", theta, x, y)

    def value_and_grad(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """(losses [B], g [B, P])."""
        return self._dispatch("value_and_grad", theta, x, y)

    def grad(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """g [B, P], the gradient of :meth:`value_and_grad` (a step may skip the losses)."""
        return self.value_and_grad(theta, x, y)[1]

    def no_graph(self) -> contextlib.AbstractContextManager:
        """The context in which the engine and the trainers call the products, recording no graph:
        ``torch.no_grad()`` here (the products differentiate inside, under enable_grad); a step
        that builds no graph itself may take ``torch.inference_mode()`` (see FusedMLPStep)."""
        return torch.no_grad()

    def reverse(self, theta: Tensor, x: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(g, H w, (∂g/∂x)ᵀ w, (∂g/∂y)ᵀ w or None for integer y); w [B, P]."""
        return self._dispatch("reverse", theta, x, y, w)

    # ------------------------------------------------------------------ dispatch and probe

    def _dispatch(self, product: str, theta: Tensor, *data: Tensor):
        """``product`` of theta and data (x, y[, w]) by the compiled, vmap-ed or looped path."""
        if self.compile and self.batched and not torch.is_grad_enabled():
            return self._compiled(product, theta, *data)
        loop = getattr(self, f"_loop_{product}")
        if theta.shape[0] == 1 or not self.batched:
            return loop(theta, *data)
        batched = getattr(self, f"_batched_{product}")
        if product in self._passed:
            return batched(self.constants, theta, *data)
        try:
            out = batched(self.constants, theta, *data)
        except _TRANSFORM_ERRORS as error:
            self.batched = False
            self.why = f"loop over the B rows: vmap failed on {product} ({_first_line(error)}){self.compile_failure}"
            return loop(theta, *data)
        self._passed.add(product)
        self.why = f"vmap over the B rows (torch.func){self.compile_failure}"
        return out

    def _compiled(self, product: str, theta: Tensor, *data: Tensor):
        """The torch.compile'd batched product, compiled on the first call of each shape (that
        call's seconds go to ``compile_seconds``); any failure to compile turns compile off."""
        key = (self.key, product)
        if key in _COMPILE_FAILED:
            return self._without_compile(product, _COMPILE_FAILED[key], theta, *data)
        if key not in _COMPILED:
            _COMPILED[key] = torch.compile(getattr(self, f"_batched_{product}"), **COMPILE_OPTIONS)
        shapes = (key, *((t.shape, t.dtype, t.device) for t in (theta, *data)))
        if shapes in _COMPILED_SHAPES:
            return _COMPILED[key](self.constants, theta, *data)
        start = time.perf_counter()
        try:
            out = _COMPILED[key](self.constants, theta, *data)
        except Exception as error:  # compiling is optional: any failure falls back to eager
            _COMPILE_FAILED[key] = _first_line(error)
            return self._without_compile(product, _COMPILE_FAILED[key], theta, *data)
        seconds = time.perf_counter() - start
        self.compile_seconds += seconds
        _COMPILE_SECONDS[0] += seconds
        _COMPILED_SHAPES.add(shapes)
        return out

    def _without_compile(self, product: str, reason: str, theta: Tensor, *data: Tensor):
        self.compile, self.compile_failure = False, f"; torch.compile failed on {product} ({reason})"
        self.why = f"{self.why}{self.compile_failure}"
        return self._dispatch(product, theta, *data)

    # ------------------------------------------------------------------ one row, torch.func

    def _row_loss(self, row: Tensor, x: Tensor, y: Tensor, constants: dict[str, Tensor]) -> Tensor:
        """l(model_θ(x), y) for one row θ [P], frozen parameters and buffers ``constants``."""
        params = {**constants, **self.unflatten(row)}
        return self.loss_fn(functional_call(self.functional_model, params, (x,), tie_weights=self.tied), y)

    def _row_reverse(self, row: Tensor, x: Tensor, y: Tensor, w: Tensor, constants: dict[str, Tensor]) -> tuple:
        """(g, Hw, (∂g/∂x)ᵀw[, (∂g/∂y)ᵀw]) for one row; the last only for float y."""
        soft = y.is_floating_point()
        loss = partial(self._row_loss, constants=constants)
        if self.second_order == "forward":
            def gradients(r: Tensor) -> tuple:
                return grad(loss, argnums=(0, 1, 2) if soft else (0, 1))(r, x, y)
            primal, tangent = jvp(gradients, (row,), (w,))
            return (primal[0], *tangent)
        if soft:
            g, pullback = vjp(grad(loss), row, x, y)
        else:
            g, pullback = vjp(lambda r, a: grad(loss)(r, a, y), row, x)
        return (g, *pullback(w))

    # ------------------------------------------------------------------ B rows in one vmap

    def _vmap(self, fn: Callable, constants: dict[str, Tensor], theta: Tensor, x: Tensor, y: Tensor, *rest: Tensor):
        data = 0 if self.per_model else None
        return vmap(partial(fn, constants=constants), in_dims=(0, data, data, *(0 for _ in rest)))(theta, x, y, *rest)

    def _batched_loss(self, constants: dict[str, Tensor], theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return self._vmap(self._row_loss, constants, theta, x, y)

    def _batched_value_and_grad(self, constants: dict[str, Tensor], theta: Tensor, x: Tensor,
                                y: Tensor) -> tuple[Tensor, Tensor]:
        g, value = self._vmap(grad_and_value(self._row_loss), constants, theta, x, y)
        return value, g

    def _batched_reverse(self, constants: dict[str, Tensor], theta: Tensor, x: Tensor, y: Tensor,
                         w: Tensor) -> tuple:
        return self._collect(*self._vmap(self._row_reverse, constants, theta, x, y, w))

    def _collect(self, g: Tensor, hvp: Tensor, dx: Tensor, *dy: Tensor) -> tuple:
        """(g, Hw, (∂g/∂x)ᵀw, (∂g/∂y)ᵀw or None) from per-row terms; a shared batch sums every
        model's data terms."""
        if not self.per_model:
            dx, dy = dx.sum(0), [t.sum(0) for t in dy]
        return g, hvp, dx, (dy[0] if dy else None)

    # ------------------------------------------------------------------ the loop (reference)

    def _loop_loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        losses = [self.loss_fn(self.forward(row, a), b) for row, a, b in self._rows(theta, x, y)]
        return losses[0].unsqueeze(0) if len(losses) == 1 else torch.stack(losses)

    def _loop_value_and_grad(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            t = theta.detach().requires_grad_()
            value = self._loop_loss(t, x, y)
            (g,) = torch.autograd.grad(value.sum(), t)
        return value.detach(), g

    def _loop_reverse(self, theta: Tensor, x: Tensor, y: Tensor, w: Tensor) -> tuple:
        if self.second_order == "forward":
            return self._loop_reverse_forward(theta, x, y, w)
        with torch.enable_grad():
            t = theta.detach().requires_grad_()
            xs = x.detach().requires_grad_()
            ys = y.detach().requires_grad_() if y.is_floating_point() else y
            (g,) = torch.autograd.grad(self._loop_loss(t, xs, ys).sum(), t, create_graph=True)
            inputs = (t, xs, ys) if ys.requires_grad else (t, xs)
            if g.requires_grad:
                grads = torch.autograd.grad(g, inputs, grad_outputs=w, allow_unused=True)
            else:  # the loss is linear in every input: all second derivatives vanish
                grads = (None,) * len(inputs)
        hvp, dx, *dy = _zeros_if_none(grads, inputs)
        return g.detach(), hvp, dx, (dy[0] if dy else None)

    def _loop_reverse_forward(self, theta: Tensor, x: Tensor, y: Tensor, w: Tensor) -> tuple:
        """Forward-over-reverse one row at a time (torch.func without vmap)."""
        rows = [self._row_reverse(row, a, b, v, self.constants)
                for (row, a, b), v in zip(self._rows(theta, x, y), w.unbind(0))]
        return self._collect(*(torch.stack(parts) for parts in zip(*rows)))
