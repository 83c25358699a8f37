"""Training new models on distilled data: the learned schedule and strategies 1–3.

A training run is an inner loop (PAPER.md, Algorithm 2) with a given learning-rate sequence:
step k uses the synthetic batch ``x[k mod s]`` and rate ``η_k``, in the SGD convention of the
distillation (``v ← γ v + g``, ``θ ← θ − η_k v``, ``v_0 = 0``; γ = 0 is plain SGD). The
strategies only differ in the sequence, built by small pure functions:

- ``none``: the n = s·e learned rates once (the distillation setting);
- ``s1`` (:func:`strategy1_lrs`): a standard schedule that ignores the learned rates;
- ``s2`` (:func:`strategy2_lrs`): the learned n rates repeated, the r-th time × 0.98^r;
- ``s3`` (:func:`strategy3_lrs`): the learned n rates once, then the last learned epoch
  repeated, its j-th repetition × 0.98^j.

s1–s3 train for ``total_epochs`` = 50 epochs of s steps (the paper: 10× the 5 learned epochs).

Many fresh models of one architecture train at once (:func:`train_many`, :func:`train_rows`):
their parameters are the rows of θ [B, P] and the engine's Step for the architecture
(:func:`memdistill.engine.hypergradient.make_step`: the fused step for plain ReLU MLPs, the
batched generic step otherwise) gives the B gradients of a step in one computation; the update
is the arithmetic of :func:`run_inner_loop` on the rows (:func:`run_inner_loop_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from memdistill.distill.distilled import DistilledData
from memdistill.engine.hypergradient import make_step
from memdistill.engine.steps.generic import GenericStep, default_loss
from memdistill.models import MLP, Arch, fresh_model

STRATEGIES = ("none", "s1", "s2", "s3")


def strategy1_lrs(
    steps: int,
    *,
    total_epochs: int = 50,
    eta0: float = 0.3,
    warmup: float = 1.1,
    warmup_epochs: int = 10,
    decay: float = 0.95,
) -> torch.Tensor:
    """Strategy 1: a standard per-epoch schedule; the learned rates are ignored.

    Epoch j = 0 … total_epochs−1 runs its s steps at
    ``η_j = eta0 · warmup^min(j, W) · decay^max(0, j − W)``, W = warmup_epochs: epoch 0 runs
    at eta0, each of the next W epochs starts by multiplying the rate by 1.1, each later
    epoch by 0.95.

    Returns:
      float64 tensor [steps · total_epochs].
    """
    rates = [
        eta0 * warmup ** min(j, warmup_epochs) * decay ** max(0, j - warmup_epochs)
        for j in range(total_epochs)
    ]
    return torch.tensor(rates, dtype=torch.float64).repeat_interleave(steps)


def strategy2_lrs(
    lrs: torch.Tensor, steps: int, *, total_epochs: int = 50, decay: float = 0.98
) -> torch.Tensor:
    """Strategy 2: repeat all n learned rates, the r-th repetition (r = 0, 1, …) × decay^r.

    Args:
      lrs: learned rates [n], n = s·e.
      steps: s.
      total_epochs: length of the result in epochs (truncates the last repetition if e does
        not divide it).

    Returns:
      float64 tensor [steps · total_epochs]: ``[lrs, 0.98·lrs, 0.98²·lrs, …]``.
    """
    lrs = lrs.detach().to(torch.float64).cpu()
    repetitions = -(-steps * total_epochs // lrs.numel())
    scales = torch.tensor([decay**r for r in range(repetitions)], dtype=torch.float64)
    return (scales[:, None] * lrs[None, :]).reshape(-1)[: steps * total_epochs]


def strategy3_lrs(
    lrs: torch.Tensor, steps: int, *, total_epochs: int = 50, decay: float = 0.98
) -> torch.Tensor:
    """Strategy 3: the n learned rates once, then the last learned epoch repeated.

    With ``last = lrs[n−s:]``, the result is ``[lrs, decay¹·last, decay²·last, …]`` up to
    ``total_epochs`` epochs (the j-th repetition scaled by decay^j, compounding).

    Returns:
      float64 tensor [steps · total_epochs] (or [n] when total_epochs ≤ n / s).
    """
    lrs = lrs.detach().to(torch.float64).cpu()
    learned_epochs = lrs.numel() // steps
    extra = max(0, total_epochs - learned_epochs)
    scales = torch.tensor([decay**j for j in range(1, extra + 1)], dtype=torch.float64)
    tail = (scales[:, None] * lrs[-steps:][None, :]).reshape(-1)
    return torch.cat([lrs, tail])[: max(lrs.numel(), steps * total_epochs)]


def schedule(
    data: DistilledData,
    strategy: str | None = None,
    *,
    total_epochs: int = 50,
    eta0: float = 0.3,
    warmup: float = 1.1,
    warmup_epochs: int = 10,
    decay1: float = 0.95,
    decay: float = 0.98,
) -> torch.Tensor:
    """The learning-rate sequence [N] that ``strategy`` trains ``data`` with (float64)."""
    strategy = "none" if strategy is None else strategy
    if strategy == "none":
        return data.lrs.detach().to(torch.float64).cpu()
    if strategy == "s1":
        return strategy1_lrs(
            data.steps,
            total_epochs=total_epochs,
            eta0=eta0,
            warmup=warmup,
            warmup_epochs=warmup_epochs,
            decay=decay1,
        )
    if strategy == "s2":
        return strategy2_lrs(data.lrs, data.steps, total_epochs=total_epochs, decay=decay)
    if strategy == "s3":
        return strategy3_lrs(data.lrs, data.steps, total_epochs=total_epochs, decay=decay)
    raise ValueError(f"train_on: unknown strategy {strategy!r}; expected one of [None, 's1', 's2', 's3']")


def run_inner_loop(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, lrs: torch.Tensor, momentum: float = 0.0
) -> nn.Module:
    """Train ``model`` in place: step k uses batch ``x[k % s], y[k % s]`` and rate ``lrs[k]``.

    Update (torch.optim.SGD convention): ``v ← γ v + ∇θ l(x_k, θ)``, ``θ ← θ − η_k v``,
    ``v_0 = 0``; l is :func:`memdistill.engine.steps.generic.default_loss`.

    Args:
      model: the network; its parameters are updated.
      x: [s, b, *in_shape]; y: [s, b] (or [s, b, C] soft labels); lrs: [N] rates.
      momentum: γ in [0, 1).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    velocity = [torch.zeros_like(p) for p in params]
    for k, lr in enumerate(lrs.tolist()):
        batch = k % x.shape[0]
        grads = torch.autograd.grad(default_loss(model(x[batch]), y[batch]), params)
        with torch.no_grad():
            for p, v, g in zip(params, velocity, grads):
                v.mul_(momentum).add_(g)
                p.sub_(lr * v)
    return model


def train_on(
    data: DistilledData,
    arch: Callable[[], nn.Module],
    strategy: str | None = None,
    seed: int = 0,
    *,
    device: str | torch.device | None = None,
    **strategy_constants: float,
) -> nn.Module:
    """Train a fresh model on distilled data with the learned schedule or strategy 1–3.

    Args:
      data: the distilled data.
      arch: zero-argument factory of the network (e.g. ``md.mlp("2-layer")``).
      strategy: None/"none" (the learned rates once), "s1", "s2" or "s3" (see the module doc).
      seed: seed of the initialisation θ0; data distilled with ``theta0="fixed"`` ignores it and
        starts from the fixed θ0 of its first internal model (``config["theta0_seeds"][0]``).
      device: where to train (default: where ``data.x`` is).
      **strategy_constants: overrides of the paper's constants, as in :func:`schedule`
        (``total_epochs=50, eta0=0.3, warmup=1.1, warmup_epochs=10, decay1=0.95, decay=0.98``).

    Returns:
      The trained model (in the dtype of ``data.x``).
    """
    lrs = schedule(data, strategy, **strategy_constants)
    fixed = data.config.get("theta0_seeds")
    device = data.x.device if device is None else torch.device(device)
    model = fresh_model(arch, fixed[0] if fixed else seed, dtype=data.x.dtype).to(device)
    return run_inner_loop(model, data.x.to(device), data.y.to(device), lrs, data.momentum)


def batchable(model: nn.Module) -> bool:
    """True when B copies of ``model`` can train as rows of θ [B, P]: every parameter trainable
    and no buffers (so a row holds the whole state of a model, and training writes nothing else)."""
    return all(p.requires_grad for p in model.parameters()) and not any(True for _ in model.buffers())


def run_inner_loop_rows(
    step: GenericStep,
    theta: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    lrs: torch.Tensor,
    momentum: float = 0.0,
) -> torch.Tensor:
    """:func:`run_inner_loop` for B models at once, the rows of ``theta`` [B, P] (updated in place
    and returned): ``v ← γ v + g``, ``θ ← θ − η_k v`` with g = ``step.grad(θ, x[k % s], y[k % s])``,
    batch k % s shared by the B models (or, for a per-model step, x [s, B, b, …]); lrs [N] shared,
    or [N, B] one sequence per row (η_k of row j multiplies its v as the shared scalar would: same bits)."""
    velocity = torch.zeros_like(theta)
    rates = lrs.tolist() if lrs.dim() == 1 else lrs.to(theta.device, theta.dtype).unsqueeze(-1).unbind(0)
    with step.no_graph():
        for k, lr in enumerate(rates):
            batch = k % x.shape[0]
            grads = step.grad(theta, x[batch], y[batch])
            velocity.mul_(momentum).add_(grads)
            theta.sub_(lr * velocity)
    return theta


def stack_rows(step: GenericStep, models: Sequence[nn.Module]) -> torch.Tensor:
    """θ [B, P]: the trainable parameters of each model as a row (the step's layout)."""
    return torch.cat([step.flatten(model) for model in models])


def plain_mlp(arch: Callable[[], nn.Module]) -> MLP | None:
    """The :class:`~memdistill.models.MLP` that ``arch`` builds (itself, or an
    :class:`~memdistill.models.Arch` resolved to one), or None."""
    build = arch.build if isinstance(arch, Arch) else arch
    return build if isinstance(build, MLP) else None


def mlp_rows(arch: MLP, seeds: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """θ0 [B, P] in the layout of :meth:`GenericStep.flatten` (W_l row-major, then b_l, layer by
    layer): row i has the bits of ``fresh_model(arch, seeds[i], dtype)``'s parameters, drawn
    without building the module. Per layer, ``nn.Linear`` draws its default init (weight
    [out, in], then bias [out]) that Xavier-uniform then overwrites (weight ~ U(−a, a) in
    float32, bias 0), so the same float32 uniforms are drawn and the first two discarded."""
    widths = (arch.in_features, *arch.hidden, arch.out_features)
    layers = list(zip(widths[:-1], widths[1:]))
    rows = torch.zeros(len(seeds), sum(o * i + o for i, o in layers))
    generator = torch.Generator()
    for row, seed in zip(rows, seeds):
        generator.manual_seed(seed)
        start = 0
        for fan_in, fan_out in layers:
            torch.empty(fan_out, fan_in).uniform_(generator=generator)
            torch.empty(fan_out).uniform_(generator=generator)
            bound = math.sqrt(3.0) * math.sqrt(2.0 / float(fan_in + fan_out))
            row[start:start + fan_out * fan_in].uniform_(-bound, bound, generator=generator)
            start += fan_out * fan_in + fan_out
    return rows.to(dtype)


def load_rows(step: GenericStep, theta: torch.Tensor, models: Sequence[nn.Module]) -> list[nn.Module]:
    """Copy row j of ``theta`` into the parameters of ``models[j]``; returns the models."""
    for row, model in zip(theta, models):
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in step.unflatten(row).items():
                params[name].copy_(value)
    return list(models)


def train_rows(
    data: DistilledData,
    arch: Callable[[], nn.Module],
    seeds: Sequence[int],
    strategy: str | None = None,
    *,
    device: str | torch.device | None = None,
    **strategy_constants: float,
) -> tuple[GenericStep, torch.Tensor, list[nn.Module]] | None:
    """Train ``len(seeds)`` fresh models as rows: the batched core of :func:`train_many`.

    Returns (step, θ [B, P] trained, the B fresh models still untrained), or None when the
    architecture cannot be batched (:func:`batchable`): then train each with :func:`train_on`.
    Data distilled with a fixed θ0 (``config["theta0_seeds"]``) trains one row, repeated B times
    (every model starts from the same θ0, as in :func:`train_on`).
    """
    lrs = schedule(data, strategy, **strategy_constants)
    fixed = data.config.get("theta0_seeds")
    device = data.x.device if device is None else torch.device(device)
    starts = [fixed[0]] * len(seeds) if fixed else list(seeds)
    models = [fresh_model(arch, seed, dtype=data.x.dtype).to(device) for seed in starts]
    if not models or not batchable(models[0]):
        return None
    step = make_step(models[0], None)
    theta = stack_rows(step, models[:1] if fixed else models)
    theta = run_inner_loop_rows(step, theta, data.x.to(device), data.y.to(device), lrs, data.momentum)
    return step, theta.expand(len(models), -1) if fixed else theta, models


def _per_row(tensors: Sequence[torch.Tensor], counts: torch.Tensor) -> torch.Tensor:
    """[s, Σ counts, …]: tensor i [s, …] of each set repeated for its counts[i] rows (axis 1)."""
    return torch.stack(list(tensors), 1).repeat_interleave(counts.to(tensors[0].device), dim=1)


def train_sets(
    datas: Sequence[DistilledData],
    arch: Callable[[], nn.Module],
    seeds: Sequence[Sequence[int]],
    strategy: str | None = None,
    *,
    device: str | torch.device | None = None,
    **strategy_constants: float,
) -> tuple[GenericStep, torch.Tensor] | None:
    """:func:`train_rows` for several distilled sets of one shape at once (the restarts of a
    distillation): ``seeds[i]`` start the rows of ``datas[i]`` (or its fixed θ0, repeated), which
    train on its batches with its rates, batch k % s one per row (x [s, B, b, …], lrs [N, B]).

    Returns (step, θ [B, P] trained, the rows of datas[0] first, then datas[1]'s, …), or None when
    the architecture cannot be batched. Every row has the bits of its row in :func:`train_rows`
    of its set alone (a Step's rows do not depend on the rows beside them). The sets must agree
    in s, b, input shape, dtype, label kind, n and momentum (ValueError naming what differs).
    """
    first = datas[0]
    for name, value in (("x", lambda d: (d.x.shape, d.x.dtype)), ("y", lambda d: (d.y.shape, d.y.dtype)),
                        ("lrs", lambda d: d.lrs.shape), ("momentum", lambda d: d.momentum)):
        if any(value(d) != value(first) for d in datas):
            raise ValueError(f"train_sets: the distilled sets differ in {name}; train each with train_rows")
    counts = torch.tensor([len(s) for s in seeds])
    starts = [seed for data, own in zip(datas, seeds)
              for seed in ([data.config["theta0_seeds"][0]] * len(own) if data.config.get("theta0_seeds") else own)]
    device = first.x.device if device is None else torch.device(device)
    models = [fresh_model(arch, seed, dtype=first.x.dtype).to(device) for seed in starts]
    if not models or not batchable(models[0]):
        return None
    x, y = _per_row([d.x.to(device) for d in datas], counts), _per_row([d.y.to(device) for d in datas], counts)
    lrs = _per_row([schedule(d, strategy, **strategy_constants) for d in datas], counts)
    step = make_step(models[0], None, per_model=True)
    return step, run_inner_loop_rows(step, stack_rows(step, models), x, y, lrs, first.momentum)


def train_many(
    data: DistilledData,
    arch: Callable[[], nn.Module],
    seeds: Sequence[int],
    strategy: str | None = None,
    *,
    device: str | torch.device | None = None,
    **strategy_constants: float,
) -> list[nn.Module]:
    """``[train_on(data, arch, strategy, seed, …) for seed in seeds]``, the models trained at once.

    The B models train as the rows of θ [B, P] through the engine's Step for ``arch`` (one
    batched gradient per step, :func:`run_inner_loop_rows`); an architecture with buffers or
    frozen parameters trains one model at a time with :func:`train_on`. The rows follow the
    arithmetic of :func:`run_inner_loop`; the gradients are summed in another order (the fused
    step's analytic backprop, vmap's batched kernels), so the parameters agree to rounding
    (float64: ≤ 1e-12 relative in the tests), not bit for bit.
    """
    trained = train_rows(data, arch, seeds, strategy, device=device, **strategy_constants)
    if trained is None:
        return [train_on(data, arch, strategy, seed, device=device, **strategy_constants) for seed in seeds]
    step, theta, models = trained
    return load_rows(step, theta, models)
