"""The state of Algorithm 1's outer loop, for R restarts at once.

:class:`OuterState` is everything one outer step hands to the next: the learned tensors
(x̃, ρ with η̃ = softplus(ρ), the soft-label logits), Adam, one random generator per restart,
the position in the real data and the loss history. It is made, advanced, saved, restored and
turned into :class:`DistilledData` here, each in one place, so that :meth:`Distiller.fit` reads
as the loop of Algorithm 1 and new kinds of initialisation or recovery land in this type.

A diverging run loses nothing: the state keeps, per restart, the learned tensors of the step with
the lowest outer loss (:class:`Best`) and takes in-memory snapshots of itself;
:meth:`OuterState.diverged` goes back to the last finite state and turns it and the best one
into the results that :class:`DivergedError` carries.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from memdistill.distill.distilled import DistilledData
from memdistill.distill.resume import load_state, save_state

__all__ = ["INITS", "LABEL_INIT", "OUTER_LR_SCHEDULES", "THETA0", "Best", "DivergedError", "OuterState",
           "balanced_labels", "inverse_softplus", "outer_lr_at", "real_init", "soft_label_logits",
           "soft_labels_from_logits"]

LABEL_INIT = 0.9
INITS = ("noise", "real")
THETA0 = ("random", "fixed")
OUTER_LR_SCHEDULES = ("constant", "cosine")


def outer_lr_at(outer_lr: float, schedule: str, step: int, total: int) -> float:
    """Adam's learning rate for outer step ``step`` (0-based) of ``total``: ``outer_lr``
    ("constant"), or outer_lr · (1 + cos(π · step / total)) / 2 ("cosine": outer_lr at step 0,
    falling towards 0 at the last step). A pure function of the step: a resumed run takes the
    same rates as an uninterrupted one."""
    if schedule == "constant":
        return outer_lr
    if schedule == "cosine":
        return outer_lr * (1 + math.cos(math.pi * step / total)) / 2
    raise ValueError(f"outer_lr_at: unknown schedule {schedule!r}; it needs to be one of {list(OUTER_LR_SCHEDULES)}")


class DivergedError(FloatingPointError):
    """The outer loop diverged at outer step ``step``; nothing is lost.

    Attributes:
      step: the outer step whose loss or hypergradient was not finite (``step`` steps were taken).
      reason: what was not finite.
      last: per restart, the :class:`DistilledData` of the last finite state (after ``step``
        outer steps), ``config["diverged"]`` True and ``config["kept"] == "last-finite"``.
      best: per restart, the state with the lowest outer loss seen (``config["kept"] == "best"``,
        ``config["outer_step"]`` and ``config["outer_loss"]`` say which).
      checkpoint: where the last finite state was saved (None: no checkpoint); resuming it with a
        lower ``outer_lr`` continues the run.
    """

    def __init__(self, message: str = "", *, step: int = 0, reason: str = "", last: Sequence[DistilledData] = (),
                 best: Sequence[DistilledData] = (), checkpoint: str | Path | None = None):
        super().__init__(message)
        self.step, self.reason, self.checkpoint = step, reason, checkpoint
        self.last, self.best = list(last), list(best)


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


def per_restart(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """``fn`` applied to each restart's row ``t[r]`` on its own. Elementwise exp-like functions
    (softplus, sigmoid) round by an element's position in torch's vector loops, so applying
    them to the R rows at once would make restart r's bits depend on R."""
    return torch.stack([fn(row) for row in t.unbind(0)])


def soft_labels_from_logits(logits: Tensor, outputs: int) -> Tensor:
    """logits [R, s, b(, C)]: sigmoid(u) for one output, softmax(u) over the last axis for C outputs."""
    return per_restart(torch.sigmoid, logits) if outputs == 1 else torch.softmax(logits, dim=-1)


def _copy(value: Any) -> Any:
    """A tensor's copy on the CPU (detached); anything else as it is."""
    return value.detach().to("cpu", copy=True) if isinstance(value, Tensor) else value


@dataclass
class Best:
    """Per restart r, the learned tensors (rows r of x̃ [R, …], ρ [R, n], logits) at outer step
    ``step[r]``, the lowest outer loss ``loss[r]`` seen so far (inf and step 0: none yet)."""

    x_syn: Tensor
    rho: Tensor
    logits: Tensor | None
    loss: list[float]
    step: list[int]

    @classmethod
    def start(cls, x_syn: Tensor, rho: Tensor, logits: Tensor | None) -> Best:
        """The initial state of every restart, with no loss yet."""
        copy = [None if t is None else t.detach().clone() for t in (x_syn, rho, logits)]
        return cls(*copy, loss=[math.inf] * len(x_syn), step=[0] * len(x_syn))

    def keep(self, losses: Sequence[float], step: int, x_syn: Tensor, rho: Tensor, logits: Tensor | None) -> None:
        """Take the rows of the restarts whose loss at ``step`` (of these tensors) is a new minimum."""
        for r, loss in enumerate(losses):
            if loss < self.loss[r]:
                self.loss[r], self.step[r] = loss, step
                for mine, now in ((self.x_syn, x_syn), (self.rho, rho), (self.logits, logits)):
                    if mine is not None:
                        mine[r] = now[r].detach()

    def state_dict(self) -> dict[str, Any]:
        """Its tensors (on the CPU) and lists, for a checkpoint."""
        return {"x_syn": self.x_syn.cpu(), "rho": self.rho.cpu(),
                "logits": None if self.logits is None else self.logits.cpu(), "loss": self.loss, "step": self.step}

    def load(self, saved: dict[str, Any]) -> None:
        """Take the values of :meth:`state_dict` (onto this one's device)."""
        for mine, name in ((self.x_syn, "x_syn"), (self.rho, "rho"), (self.logits, "logits")):
            if mine is not None:
                mine.copy_(saved[name])
        self.loss, self.step = list(saved["loss"]), list(saved["step"])


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
      best: per restart, the learned tensors with the lowest outer loss so far.
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
    best: Best

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
                   done=0, history=[[] for _ in range(restarts)], best=Best.start(x_syn, rho, logits))

    @property
    def restarts(self) -> int:
        """R."""
        return len(self.generators)

    def lrs(self) -> Tensor:
        """η̃ = softplus(ρ) [R, n] (differentiable in ρ)."""
        return per_restart(nn.functional.softplus, self.rho)

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

    def snapshot(self) -> dict[str, Any]:
        """A copy (on the CPU) of everything an outer step changes but the history, which only
        grows (``done`` says how much of it is this state's), and the best state, which only
        improves: what :meth:`load` goes back to. (``orders`` is replaced, never changed in place.)"""
        adam = self.optimiser.state_dict()
        return {"x_syn": _copy(self.x_syn), "rho": _copy(self.rho), "logits": _copy(self.logits),
                "adam": {"state": {k: {n: _copy(v) for n, v in s.items()} for k, s in adam["state"].items()},
                         "param_groups": [dict(g, params=list(g["params"])) for g in adam["param_groups"]]},
                "generators": [g.get_state() for g in self.generators], "done": self.done, "orders": self.orders}

    def load(self, saved: dict[str, Any]) -> None:
        """Go back to a :meth:`snapshot` (or take a saved state, with its history). Adam keeps
        this state's learning rate (a diverged run's state may be resumed with a lower one)."""
        with torch.no_grad():
            for tensor, name in ((self.x_syn, "x_syn"), (self.rho, "rho"), (self.logits, "logits")):
                if tensor is not None:
                    tensor.copy_(saved[name])
            if "best" in saved:
                self.best.load(saved["best"])
        rates = [group["lr"] for group in self.optimiser.param_groups]
        self.optimiser.load_state_dict(saved["adam"])
        for group, rate in zip(self.optimiser.param_groups, rates):
            group["lr"] = rate
        for g, state in zip(self.generators, saved["generators"]):
            g.set_state(state)
        self.done, self.orders = saved["done"], saved["orders"]
        self.history = [list(h[:self.done]) for h in saved.get("history", self.history)]

    def advance(self, losses: list[float], rate: float) -> None:
        """Keep the state if its R outer losses are the best yet, take one Adam step at learning
        rate ``rate`` (:func:`outer_lr_at`) along the gradients left in .grad, then record the losses."""
        self.best.keep(losses, self.done, self.x_syn, self.rho, self.logits)
        for group in self.optimiser.param_groups:
            group["lr"] = rate
        self.optimiser.step()
        self.optimiser.zero_grad()
        for h, loss in zip(self.history, losses):
            h.append(loss)
        self.done += 1

    def save(self, path: str | Path, fingerprint: dict[str, Any], diverged: bool = False) -> Path:
        """Write the whole state to ``path`` atomically (see :mod:`memdistill.distill.resume`);
        ``diverged``: the run diverged after this state (resuming may then change ``outer_lr``)."""
        return save_state(path, fingerprint, {**self.snapshot(), "history": self.history,
                                              "best": self.best.state_dict(),
                                              "diverged": self.done if diverged else None})

    def restore(self, path: str | Path, fingerprint: dict[str, Any]) -> None:
        """Continue from the state saved at ``path`` (ValueError if it belongs to another run)."""
        self.load(load_state(path, fingerprint))

    def results(self, config: dict[str, Any], seed: int) -> list[DistilledData]:
        """One :class:`DistilledData` per restart (on the CPU); restart r has seed ``seed + r``
        and, with fixed θ0's, ``config["theta0_seeds"]`` its m seeds."""
        y, lrs = self.y_syn(), self.lrs()
        return [self._data(r, self.x_syn, y, lrs, self._config(config, r), seed, self.history[r])
                for r in range(self.restarts)]

    def diverged(self, config: dict[str, Any], seed: int,
                 last: dict[str, Any]) -> tuple[list[DistilledData], list[DistilledData]]:
        """After a divergence, go back to ``last`` (the :meth:`snapshot` of the last state whose
        outer step was finite) and return, per restart, that state and the best one seen (lowest
        outer loss), marked ``config["diverged"]``, ``config["kept"]`` and ``config["outer_step"]``."""
        marked, b = {**config, "diverged": True}, self.best
        y = self.labels.expand(self.restarts, *self.labels.shape) if b.logits is None else \
            soft_labels_from_logits(b.logits, self.outputs)
        lrs = per_restart(nn.functional.softplus, b.rho)
        best = [self._data(r, b.x_syn, y, lrs, {**self._config(marked, r), "kept": "best", "outer_step": b.step[r],
                                                "outer_loss": None if math.isinf(b.loss[r]) else b.loss[r]},
                           seed, self.history[r][:b.step[r] + 1])
                for r in range(self.restarts)]
        self.load(last)
        return self.results({**marked, "kept": "last-finite", "outer_step": self.done}, seed), best

    @staticmethod
    def _data(r: int, x_syn: Tensor, y: Tensor, lrs: Tensor, config: dict[str, Any], seed: int,
              history: list[float]) -> DistilledData:
        """Restart r's rows as a DistilledData on the CPU, seed ``seed + r``."""
        return DistilledData(x=x_syn[r].detach().cpu().clone(), y=y[r].detach().cpu().clone(),
                             lrs=lrs[r].detach().cpu().clone(), config=config, seed=seed + r, history=list(history))

    def _config(self, config: dict[str, Any], r: int) -> dict[str, Any]:
        if self.theta0_seeds is None:
            return dict(config)
        return {**config, "theta0_seeds": list(self.theta0_seeds[r])}
