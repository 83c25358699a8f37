"""The state of Algorithm 1's outer loop, for R restarts at once.

:class:`OuterState` is everything one outer step hands to the next: the learned tensors
(x̃, ρ with η̃ = softplus(ρ), the soft-label logits), Adam, one random generator per restart,
the position in the real data and the loss history. It is made, advanced, saved, restored and
turned into :class:`DistilledData` here, each in one place, so that :meth:`Distiller.fit` reads
as the loop of Algorithm 1 and new kinds of initialisation or recovery land in this type.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from memdistill.distill.distilled import DistilledData
from memdistill.distill.resume import load_state, save_state

__all__ = ["INITS", "LABEL_INIT", "THETA0", "OuterState", "balanced_labels", "inverse_softplus",
           "real_init", "soft_label_logits", "soft_labels_from_logits"]

LABEL_INIT = 0.9
INITS = ("noise", "real")
THETA0 = ("random", "fixed")


def balanced_labels(steps: int, per_class: int, classes: int) -> Tensor:
    """int64 [steps, per_class · classes]: each row is ``[0]*per_class + [1]*per_class + …``."""
    return torch.arange(classes).repeat_interleave(per_class).repeat(steps, 1)


def inverse_softplus(value: float) -> float:
    """ρ with softplus(ρ) = log(1 + e^ρ) = value (> 0)."""
    return value + math.log(-math.expm1(-value))


def real_init(labels: Tensor, X: Tensor, y: Tensor, generator: torch.Generator) -> Tensor:
    """x̃ [s, b, *in_shape] with object (i, j) a random real object of class ``labels[i, j]``.

    The draw is uniform over the real objects of each class, without replacement while a
    class has enough objects (with replacement beyond), from ``generator`` (on the CPU).
    """
    x = X.new_empty((*labels.shape, *X.shape[1:]))
    flat_labels, flat_x = labels.reshape(-1).cpu(), x.view(-1, *X.shape[1:])
    y = y.cpu()
    for c in flat_labels.unique().tolist():
        slots = (flat_labels == c).nonzero().squeeze(1)
        pool = (y == c).nonzero().squeeze(1)
        if len(pool) == 0:
            raise ValueError(f"Distiller: init='real' needs real objects of every class, class {c} has none")
        order = torch.randperm(len(pool), generator=generator)
        picks = order.repeat(-(-len(slots) // len(pool)))[: len(slots)]
        flat_x[slots.to(X.device)] = X[pool[picks].to(X.device)]
    return x


def soft_label_logits(labels: Tensor, outputs: int, dtype: torch.dtype) -> Tensor:
    """Free logits u of soft labels giving probability 0.9 to each object's class.

    One output: u [s, b] with sigmoid(u) = 0.9 for class 1 and 0.1 for class 0.
    C outputs: u [s, b, C] = log p with p = 0.9 at the class, 0.1/(C−1) elsewhere.
    """
    if outputs == 1:
        logit = math.log(LABEL_INIT / (1 - LABEL_INIT))
        return (2 * labels.to(dtype) - 1) * logit
    other = (1 - LABEL_INIT) / (outputs - 1)
    onehot = nn.functional.one_hot(labels, outputs).to(dtype)
    return torch.log(onehot * LABEL_INIT + (1 - onehot) * other)


def soft_labels_from_logits(logits: Tensor, outputs: int) -> Tensor:
    """sigmoid(u) for one output, softmax(u) over the last axis for C outputs."""
    return torch.sigmoid(logits) if outputs == 1 else torch.softmax(logits, dim=-1)


@dataclass
class OuterState:
    """The outer loop's state for R restarts (every tensor leads with R).

    Attributes:
      x_syn: learned synthetic objects [R, s, b, *in_shape] (a leaf that requires grad).
      rho: learned ρ [R, n]; the inner learning rates are η̃ = softplus(ρ).
      logits: learned soft-label logits [R, s, b] (one output) or [R, s, b, C], or None.
      labels: the balanced class ids [s, b] (int64) every restart starts from.
      outputs: the models' output width (1 logit, or C).
      optimiser: Adam over the learned tensors.
      generators: restart r's generator makes every random draw of restart r.
      theta0_seeds: [R][m] the seeds of the fixed θ0 of each internal model (``theta0="fixed"``),
        or None: a fresh θ0 every outer step (``theta0="random"``).
      orders: [R, N] this outer epoch's permutation of the real data, per restart.
      done: outer steps taken.
      history: [R][done] the outer loss of every step, per restart.
    """

    x_syn: Tensor
    rho: Tensor
    logits: Tensor | None
    labels: Tensor
    outputs: int
    optimiser: torch.optim.Optimizer
    generators: list[torch.Generator]
    theta0_seeds: list[list[int]] | None
    orders: Tensor
    done: int
    history: list[list[float]]

    @classmethod
    def create(cls, *, restarts: int, seed: int, labels: Tensor, X: Tensor, y: Tensor, lrs: int,
               init: str, theta0: str, models: int, init_lr: float, outer_lr: float, outputs: int,
               soft_labels: bool) -> OuterState:
        """A fresh state for real data X [N, *in_shape], y [N] (on the device, in the dtype).

        Restart r's generator (seeded ``seed + r``) draws, in this order: x̃ (``init="noise"``:
        N(0, 1), the scale of standardised data; ``"real"``: random real objects of each
        object's class), then for ``theta0="fixed"`` the m seeds of the fixed θ0's. Every
        η̃_k = init_lr; soft labels start at probability 0.9 of the object's class.
        """
        generators = [torch.Generator().manual_seed(seed + r) for r in range(restarts)]
        shape = (*labels.shape, *X.shape[1:])
        if init == "real":
            x_syn = torch.stack([real_init(labels, X, y, g) for g in generators])
        else:
            x_syn = torch.stack([torch.randn(shape, generator=g, dtype=X.dtype) for g in generators])
        x_syn = x_syn.to(X.device).requires_grad_()
        theta0_seeds = None
        if theta0 == "fixed":
            theta0_seeds = [[int(torch.randint(2**62, (1,), generator=g)) for _ in range(models)]
                            for g in generators]
        rho = torch.full((restarts, lrs), inverse_softplus(init_lr), dtype=X.dtype, device=X.device,
                         requires_grad=True)
        logits = None
        if soft_labels:
            logits = soft_label_logits(labels, outputs, X.dtype)
            logits = logits.expand(restarts, *logits.shape).clone().requires_grad_()
        learned = [t for t in (x_syn, rho, logits) if t is not None]
        return cls(x_syn=x_syn, rho=rho, logits=logits, labels=labels, outputs=outputs,
                   optimiser=torch.optim.Adam(learned, lr=outer_lr), generators=generators,
                   theta0_seeds=theta0_seeds, orders=torch.zeros(restarts, len(X), dtype=torch.int64),
                   done=0, history=[[] for _ in range(restarts)])

    @property
    def restarts(self) -> int:
        """R."""
        return len(self.generators)

    def lrs(self) -> Tensor:
        """η̃ = softplus(ρ) [R, n] (differentiable in ρ)."""
        return nn.functional.softplus(self.rho)

    def y_syn(self) -> Tensor:
        """The synthetic labels [R, s, b(, C)]: the class ids, or the soft labels of the logits."""
        if self.logits is None:
            return self.labels.expand(self.restarts, *self.labels.shape)
        return soft_labels_from_logits(self.logits, self.outputs)

    def model_seeds(self, models: int) -> list[list[int]]:
        """[R][m] the seeds of this outer step's θ0's: the fixed ones, or m fresh draws per restart."""
        if self.theta0_seeds is not None:
            return self.theta0_seeds
        return [[int(torch.randint(2**62, (1,), generator=g)) for _ in range(models)] for g in self.generators]

    def next_batch(self, batch_size: int) -> Tensor:
        """Indices [R, ≤ batch_size] of the next real minibatch of each restart; a new outer
        epoch draws a fresh permutation of the N real objects from each restart's generator."""
        samples = self.orders.shape[1]
        at = self.done % math.ceil(samples / batch_size) * batch_size
        if at == 0:
            self.orders = torch.stack([torch.randperm(samples, generator=g) for g in self.generators])
        return self.orders[:, at:at + batch_size]

    def advance(self, losses: list[float]) -> None:
        """One Adam step along the gradients left in .grad, then record the R outer losses."""
        self.optimiser.step()
        self.optimiser.zero_grad()
        for h, loss in zip(self.history, losses):
            h.append(loss)
        self.done += 1

    def save(self, path: str | Path, fingerprint: dict[str, Any]) -> Path:
        """Write the whole state to ``path`` atomically (see :mod:`memdistill.distill.resume`)."""
        return save_state(path, fingerprint, {
            "x_syn": self.x_syn.detach().cpu(), "rho": self.rho.detach().cpu(),
            "logits": None if self.logits is None else self.logits.detach().cpu(),
            "adam": self.optimiser.state_dict(), "generators": [g.get_state() for g in self.generators],
            "done": self.done, "orders": self.orders, "history": self.history})

    def restore(self, path: str | Path, fingerprint: dict[str, Any]) -> None:
        """Continue from the state saved at ``path`` (ValueError if it belongs to another run)."""
        saved = load_state(path, fingerprint)
        with torch.no_grad():
            for tensor, name in ((self.x_syn, "x_syn"), (self.rho, "rho"), (self.logits, "logits")):
                if tensor is not None:
                    tensor.copy_(saved[name])
        self.optimiser.load_state_dict(saved["adam"])
        for g, state in zip(self.generators, saved["generators"]):
            g.set_state(state)
        self.done, self.orders, self.history = saved["done"], saved["orders"], saved["history"]

    def results(self, config: dict[str, Any], seed: int) -> list[DistilledData]:
        """One :class:`DistilledData` per restart (on the CPU); restart r has seed ``seed + r``
        and, with fixed θ0's, ``config["theta0_seeds"]`` its m seeds."""
        y, lrs = self.y_syn(), self.lrs()
        return [
            DistilledData(x=self.x_syn[r].detach().cpu().clone(), y=y[r].detach().cpu().clone(),
                          lrs=lrs[r].detach().cpu().clone(), config=self._config(config, r), seed=seed + r,
                          history=self.history[r])
            for r in range(self.restarts)
        ]

    def _config(self, config: dict[str, Any], r: int) -> dict[str, Any]:
        if self.theta0_seeds is None:
            return dict(config)
        return {**config, "theta0_seeds": list(self.theta0_seeds[r])}
