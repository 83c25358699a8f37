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
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from memdistill.distill.distilled import DistilledData
from memdistill.engine.steps.generic import default_loss
from memdistill.models import fresh_model

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
