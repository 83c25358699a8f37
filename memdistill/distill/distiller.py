"""Distiller: dataset distillation by hypergradient descent (PAPER.md, Algorithm 1).

Learned: synthetic objects x̃ [s, b, *in_shape], learning rates η̃ = softplus(ρ) [s·e] and,
optionally, soft labels ỹ. Every outer step t:

1. takes the next real minibatch (x, y) (a fresh permutation of the data every outer epoch);
2. draws a fresh Xavier θ0^(j) for each of the m internal models ``archs[j]``;
3. computes L_j and its exact hypergradient with :func:`memdistill.engine.hypergradient` (n = s·e
   inner SGD steps, step k on x̃[k mod s]);
4. takes one Adam step on (x̃, ρ[, ỹ's logits]) along ∇ of L = (1/m) Σ_j L_j.

Labels are balanced: every synthetic batch holds ``per_class`` objects of each class, so
b = per_class · C. x̃ starts as standard normal noise (the data are standardised, so this is
the scale of the real points). Soft labels, when learned, are the sigmoid (one logit) or
softmax (C outputs) of free logits, starting at probability 0.9 for the batch's class.
All randomness comes from one ``torch.Generator`` seeded with ``seed``: same seed, same bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from memdistill.distill.batching import Rows, hypergradients, row_hypergradients
from memdistill.distill.distilled import DistilledData
from memdistill.distill.outer import (
    INITS,
    OUTER_LR_SCHEDULES,
    THETA0,
    DivergedError,
    OuterState,
    balanced_labels,
    outer_lr_at,
)
from memdistill.distill.resume import Interrupted, data_hash, deferred_signals
from memdistill.distill.training import mlp_rows, plain_mlp
from memdistill.engine.hypergradient import make_step
from memdistill.engine.planner import Plan, parse_memory
from memdistill.engine.steps.fused import SERIAL_WORK
from memdistill.engine.steps.generic import compile_seconds
from memdistill.engine.threads import intra_op_threads
from memdistill.engine.validation import METHODS, check_offload
from memdistill.models import MLP, fresh_model


class Distiller:
    """Learns a small synthetic training set (Algorithm 1 of PAPER.md; see the module doc).

    Args:
      archs: m zero-argument factories of nn.Modules (``md.mlp(...)``); mixed allowed.
      steps: s, synthetic batches (inner steps) per internal epoch.
      epochs: e, internal epochs; the inner loop runs n = s·e SGD steps.
      per_class: synthetic objects of each class per step (b = per_class · C).
      method: the engine's method: "autograd" | "replay" | "checkpoint" | "reversible" | "auto"
        (the fastest whose stored states fit ``memory``; :func:`memdistill.plan`).
      momentum: γ of the inner SGD (torch.optim.SGD convention); "reversible" needs γ > 0.
      init_lr: initial value of every learned learning rate η̃_k.
      outer_lr: Adam's learning rate on x̃, ρ (and the soft-label logits).
      outer_lr_schedule: "constant" (``outer_lr`` throughout) or "cosine" (from ``outer_lr`` at
        the first outer step of a fit towards 0 at its last; :func:`memdistill.distill.outer.outer_lr_at`).
      seed: seed of every random draw (x̃ init, θ0's, real minibatches).
      soft_labels: also learn soft labels ỹ.
      snapshots: the engine's stored states for "checkpoint" (None: √n segments).
      memory: the engine's budget for stored states of one sweep (all the models of one
        architecture): bytes or a string such as "512MiB", "2GiB" (see :func:`memdistill.hypergradient`).
      offload: where the engine's snapshots live beyond memory: None, "cpu" (host memory) or
        "disk" (a two-level schedule with a memory-mapped file); same results (see
        :func:`memdistill.hypergradient`). offload_dir: the directory of "disk"'s files (None: temp).
      compile: the generic step's products through ``torch.compile`` (ConvNets and other non-MLP
        models; compiled in the first outer step, then reused): pays for long runs only.
      dtype: floating dtype of x̃, η̃ and the models (float32, or float64 for exactness).
      device: where to compute.
      progress: show a tqdm bar with the outer loss.
      init: how x̃ starts: "noise" (N(0, 1), the scale of standardised data) or "real" (random
        real objects of each object's class).
      theta0: "random": a fresh θ0 for every internal model at every outer step (Wang et al.'s
        random-init setting); "fixed": one θ0 per internal model for the whole run (their
        fixed-init setting; :func:`memdistill.train_on` then starts from it).
      restarts: R independent distillations in one batched computation (restart r uses seed
        ``seed + r`` and equals a separate run with that seed); ``fit`` then returns R results.
      data_parallel: under an initialised torch.distributed process group, split the R·m
        internal models of every outer step across the ranks and gather their hypergradients
        (every rank ends with the single-process result).

    Attributes:
      plans: the engine's :class:`~memdistill.engine.planner.Plan` of each sweep of the last
        outer step (one per architecture; with ``method="auto"``, the method it chose and why).

    Examples:
      >>> import memdistill as md
      >>> data = md.load_dataset("moons")
      >>> distiller = md.Distiller([md.mlp("2-layer")], steps=4, epochs=1, progress=False)
      >>> distilled = distiller.fit(data.x_train, data.y_train, outer_epochs=1, batch_size=256)
      >>> distilled.x.shape, distilled.lrs.shape
      (torch.Size([4, 8, 2]), torch.Size([4]))
    """

    def __init__(
        self,
        archs: Sequence[Callable[[], nn.Module]],
        steps: int = 40,
        epochs: int = 5,
        per_class: int = 4,
        method: str = "checkpoint",
        momentum: float = 0.0,
        init_lr: float = 0.02,
        outer_lr: float = 0.01,
        seed: int = 0,
        *,
        soft_labels: bool = False,
        snapshots: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        progress: bool = True,
        restarts: int | None = None,
        data_parallel: bool = False,
        init: str = "noise",
        theta0: str = "random",
        memory: int | str | None = None,
        compile: bool = False,
        offload: str | None = None,
        offload_dir: str | None = None,
        outer_lr_schedule: str = "constant",
    ):
        if isinstance(archs, (str, bytes)) or not isinstance(archs, Sequence) or len(archs) == 0:
            raise ValueError(f"Distiller: archs must be a non-empty list of model factories, got {archs!r}")
        if not all(callable(arch) for arch in archs):
            raise TypeError(
                "Distiller: every entry of archs must be a zero-argument callable returning an nn.Module"
            )
        for name, value in (("steps", steps), ("epochs", epochs), ("per_class", per_class)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Distiller: {name} must be an int >= 1, got {value!r}")
        if method not in METHODS:
            raise ValueError(f"Distiller: unknown method {method!r}; it needs to be one of {list(METHODS)}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"Distiller: momentum must be in [0, 1), got {momentum}")
        for name, value in (("init_lr", init_lr), ("outer_lr", outer_lr)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"Distiller: {name} must be positive and finite, got {value}")
        for name, value, allowed in (("init", init, INITS), ("theta0", theta0, THETA0),
                                     ("outer_lr_schedule", outer_lr_schedule, OUTER_LR_SCHEDULES)):
            if value not in allowed:
                raise ValueError(f"Distiller: unknown {name} {value!r}; it needs to be one of {list(allowed)}")
        if not dtype.is_floating_point:
            raise ValueError(f"Distiller: dtype must be a floating dtype, got {dtype}")
        self.archs = list(archs)
        self.steps, self.epochs, self.per_class = steps, epochs, per_class
        self.method, self.momentum, self.snapshots = method, float(momentum), snapshots
        self.memory = parse_memory(memory, "Distiller")
        try:
            check_offload(offload, offload_dir, method)
        except (ValueError, TypeError) as error:
            raise type(error)(str(error).replace("hypergradient:", "Distiller:", 1)) from None
        self.offload, self.offload_dir = offload, offload_dir
        self.compile = bool(compile)
        self.plans: list[Plan] = []
        self.init_lr, self.outer_lr, self.seed = float(init_lr), float(outer_lr), int(seed)
        self.outer_lr_schedule = outer_lr_schedule
        self.soft_labels, self.dtype, self.device = soft_labels, dtype, torch.device(device)
        self.progress, self.init, self.theta0 = progress, init, theta0
        if restarts is not None and (not isinstance(restarts, int) or restarts < 1):
            raise ValueError(f"Distiller: restarts must be None or an int >= 1, got {restarts!r}")
        self.restarts, self.data_parallel = restarts, bool(data_parallel)
        self._cached: tuple | None = None  # _layout's answer, reused by every outer step

    def config(self, classes: int, in_shape: Sequence[int], outer_epochs: int, batch_size: int,
               outer_steps: int | None = None) -> dict:
        """The JSON-serialisable settings recorded in the DistilledData."""
        return {
            "archs": [
                getattr(arch, "name", getattr(arch, "__qualname__", type(arch).__name__))
                for arch in self.archs
            ],
            "steps": self.steps,
            "epochs": self.epochs,
            "per_class": self.per_class,
            "method": self.method,
            "momentum": self.momentum,
            "snapshots": self.snapshots,
            **({} if self.memory is None else {"memory": self.memory}),
            **({"compile": True} if self.compile else {}),
            "init_lr": self.init_lr,
            "outer_lr": self.outer_lr,
            **({} if self.outer_lr_schedule == "constant" else {"outer_lr_schedule": self.outer_lr_schedule}),
            "soft_labels": self.soft_labels,
            "init": self.init,
            "theta0": self.theta0,
            "dtype": str(self.dtype).removeprefix("torch."),
            "classes": classes,
            "in_shape": list(in_shape),
            "outer_epochs": outer_epochs,
            **({} if outer_steps is None else {"outer_steps": outer_steps}),
            "batch_size": batch_size,
        }

    def fit(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        outer_epochs: int = 50,
        batch_size: int = 64,
        *,
        checkpoint: str | Path | None = None,
        save_every: int = 50,
        resume: bool = False,
        outer_steps: int | None = None,
        on_step: Callable[[int], None] | None = None,
    ) -> DistilledData | list[DistilledData]:
        """Distil (X, y) into s·b synthetic objects and s·e learning rates.

        Args:
          X: real inputs [N, *in_shape] (standardised features: see :mod:`memdistill.data.tabular`).
          y: int class ids [N] in 0 … C−1, C ≥ 2.
          outer_epochs: passes over the real data; the outer loop runs
            outer_epochs · ⌈N / batch_size⌉ steps (the last batch of an epoch may be smaller).
          outer_steps: run exactly this many outer steps instead, whatever N (the image
            defaults count in steps: 1,198 digits and 60,000 MNIST images make very different epochs).
          batch_size: real objects per outer step.
          checkpoint: file for the outer loop's full state (x̃, ρ, labels, Adam, generators,
            position, history), written atomically every ``save_every`` outer steps, at the end,
            on SIGINT/SIGTERM (at the next safe point, between two outer steps) and on divergence.
          save_every: outer steps between two checkpoints.
          resume: continue from ``checkpoint`` if it exists (bit-identical to an uninterrupted
            run; a state saved on divergence may be continued with a lower ``outer_lr``); without
            it an existing checkpoint is an error, never silently overwritten.
          on_step: called after every outer step with the number of outer steps taken (a
            resumed run counts from where it was), e.g. to drive a progress bar of its own.

        Returns:
          :class:`memdistill.DistilledData` with x [s, b, *in_shape], y [s, b] (int64, or the
          learned soft labels), lrs [s·e], the config, the seed and the outer-loss history; a
          list of R of them, restart r with seed ``seed + r``, when ``restarts`` was given.

        Raises:
          DivergedError: (a FloatingPointError) the outer loss or a hypergradient became NaN/inf,
            or a reversible trajectory left its fixed-point range; it carries the last finite and
            the best state of every restart (``error.last``, ``error.best``), the last finite one
            also saved in ``checkpoint``; the message says what to lower.
          Interrupted: (a KeyboardInterrupt) SIGINT or SIGTERM arrived while a ``checkpoint`` was
            kept; the state after the current outer step was saved in it first.
          ValueError: the checkpoint is corrupt or belongs to another run.
        """
        X, y = self._check_real(X, y, outer_epochs, batch_size)
        for name, value in (("save_every", save_every), ("outer_steps", outer_steps or 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Distiller.fit: {name} must be an int >= 1, got {value!r}")
        classes = int(y.max()) + 1
        config = self.config(classes, list(X.shape[1:]), outer_epochs, batch_size, outer_steps)
        state = self._initial_state(X, y, classes)
        self._cached = None
        fingerprint = None if checkpoint is None else self._fingerprint(config, X, y)
        if checkpoint is not None and Path(checkpoint).exists():
            if not resume:
                raise FileExistsError(f"Distiller.fit: checkpoint {checkpoint} exists; pass resume=True to "
                                      "continue it, or delete it to start over")
            state.restore(checkpoint, fingerprint)
        total = outer_steps or outer_epochs * math.ceil(len(X) / batch_size)
        with deferred_signals(checkpoint is not None) as received, tqdm(
                total=total, initial=state.done, desc="distill", unit="step", leave=False,
                disable=not self.progress) as bar:
            previous = None  # the snapshot before the last finite step (its Adam step led here)
            compiled_before = compile_seconds()   # --compile: the bar shows the seconds spent compiling
            threads = 1 if self._tiny(state.restarts, state.labels.shape[1]) else torch.get_num_threads()
            while state.done < total:
                with intra_op_threads(threads):
                    before = state.snapshot()
                    index = state.next_batch(batch_size).to(self.device)
                    try:
                        losses = self._outer_step(state, X[index], y[index])
                    except DivergedError as error:
                        last = before if previous is None else previous
                        raise self._nothing_lost(error, state, last, config, checkpoint, fingerprint) from None
                    state.advance(losses, outer_lr_at(self.outer_lr, self.outer_lr_schedule, state.done, total))
                previous = before
                saved = checkpoint is not None and (state.done % save_every == 0 or state.done == total)
                if saved:
                    state.save(checkpoint, fingerprint)
                compiling = {"compiled": f"{compile_seconds() - compiled_before:.0f}s"} if self.compile else {}
                bar.set_postfix(loss=f"{sum(losses) / state.restarts:.4f}", **compiling, refresh=False)
                bar.update()
                if on_step is not None:
                    on_step(state.done)
                if (signum := self._any_rank(received())) is not None:
                    if not saved:
                        state.save(checkpoint, fingerprint)
                    raise Interrupted(signum, state.done, checkpoint)
        results = state.results(config, self.seed)
        return results if self.restarts is not None else results[0]

    def _initial_state(self, X: torch.Tensor, y: torch.Tensor, classes: int) -> OuterState:
        """Step 0 of the outer loop for the R restarts (x̃ from init, η̃ = init_lr, labels balanced)."""
        labels = balanced_labels(self.steps, self.per_class, classes).to(self.device)
        return OuterState.create(
            restarts=self.restarts or 1, seed=self.seed, labels=labels, X=X, y=y, lrs=self.steps * self.epochs,
            init=self.init, theta0=self.theta0, models=len(self.archs), init_lr=self.init_lr,
            outer_lr=self.outer_lr, outputs=self._outputs(X, classes), soft_labels=self.soft_labels)

    def _fingerprint(self, config: dict, X: torch.Tensor, y: torch.Tensor) -> dict:
        """What a checkpoint must match to be resumed: the config, seed, restarts and data."""
        return {**config, "seed": self.seed, "restarts": self.restarts or 1, "data": data_hash(X, y)}

    def _outer_step(self, state: OuterState, x_real: torch.Tensor, y_real: torch.Tensor) -> list[float]:
        """Per restart r, L_r = (1/m) Σ_j L_rj over fresh θ0's; leaves ∇L_r in the .grad of the
        state's learned tensors and returns [L_r]. x_real, y_real lead with R."""
        x_syn, y_syn, lrs, step, R = state.x_syn, state.y_syn(), state.lrs(), state.done, state.restarts
        m = len(self.archs)
        seeds = state.model_seeds(m)
        pairs = [(r, j) for r in range(R) for j in range(m)]
        mine, rows, sweeps = self._layout(R)
        inputs = (x_syn.detach()[rows], y_syn.detach()[rows], lrs.detach()[rows], x_real[rows], y_real[rows])
        plans: list[Plan] = []
        options = dict(momentum=self.momentum, method=self.method, snapshots=self.snapshots, memory=self.memory,
                       offload=self.offload, offload_dir=self.offload_dir, plans=plans)
        try:
            if sweeps is None:
                models = [fresh_model(self.archs[j], seeds[r][j], self.dtype).to(self.device) for r, j in mine]
                result = hypergradients(models, *inputs, epochs=self.epochs, compile=self.compile, **options)
            else:
                batches = [(step, idx, mlp_rows(arch, [seeds[r][j] for r, j in group], self.dtype).to(self.device))
                           for arch, group, step, idx in sweeps]
                result = row_hypergradients(batches, *inputs, **options)
        except (FloatingPointError, OverflowError) as error:
            raise DivergedError(step=step, reason=f"the inner loop diverged ({error})") from None
        self.plans = plans
        if len(mine) != len(pairs):
            result = self._gather(result, len(pairs))
        # Mean over the m models of each restart, one restart at a time (the same reduction for any R).
        def per_restart(t: torch.Tensor) -> torch.Tensor:
            return torch.stack([t[r * m:(r + 1) * m].mean(0) for r in range(R)])

        values = result.loss.tolist()
        losses = [sum(values[r * m:(r + 1) * m]) / m for r in range(R)]
        grad_x, grad_lrs = per_restart(result.grad_x), per_restart(result.grad_lrs)
        grad_y = per_restart(result.grad_y) if y_syn.requires_grad else None
        grads = [g for g in (grad_x, grad_lrs, grad_y) if g is not None]
        if not (all(map(math.isfinite, losses)) and all(bool(torch.isfinite(g).all()) for g in grads)):
            raise DivergedError(step=step, reason=f"the outer loss or its hypergradient is not finite (losses {losses})")
        x_syn.grad = grad_x
        # chain rule through η̃ = softplus(ρ) and ỹ = sigmoid/softmax(logits) into ρ.grad, logits.grad
        torch.autograd.backward([lrs, y_syn][: len(grads) - 1], grads[1:])
        return losses

    def _layout(self, R: int) -> tuple[list[tuple[int, int]], Tensor, list | None]:
        """What every outer step of R restarts computes, found at the first step of a fit: this process's
        (restart, model) pairs, their restarts as an index, and, when every arch is an MLP
        (:func:`plain_mlp`), its sweeps: (MLP, its pairs, the Step, their rows [k]), one per
        distinct MLP, whose θ0's :func:`mlp_rows` draws without building modules (None: build
        the models, :func:`hypergradients` groups them)."""
        if self._cached is not None:
            return self._cached
        mine = self._my_pairs([(r, j) for r in range(R) for j in range(len(self.archs))])
        rows = torch.tensor([r for r, _ in mine], device=self.device)
        mlps = [plain_mlp(arch) for arch in self.archs]
        sweeps = None
        if all(mlps):
            groups: dict[MLP, list[int]] = {}
            for i, (_, j) in enumerate(mine):
                groups.setdefault(mlps[j], []).append(i)
            sweeps = [(arch, [mine[i] for i in index],
                       make_step(fresh_model(arch, 0, self.dtype).to(self.device), None, per_model=True,
                                 compile=self.compile),
                       torch.tensor(index, device=self.device)) for arch, index in groups.items()]
        self._cached = (mine, rows, sweeps)
        return self._cached

    def _tiny(self, R: int, b: int) -> bool:
        """Whether an outer step runs on one thread: on a CPU, every sweep the fused MLP step's (pure
        PyTorch or the C++ op), each small enough (B · b · widest layer < SERIAL_WORK) for one
        thread; then the real batch's products and the small ops around the engine (indexing,
        Adam) are as tiny, and waking a second thread costs more than they do on a loaded CPU."""
        sweeps = self._layout(R)[2]
        return (self.device.type == "cpu" and sweeps is not None
                and all(step.name in ("fused", "cpp") and len(idx) * b * step.widest < SERIAL_WORK
                        for _, _, step, idx in sweeps))

    def _my_pairs(self, pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The (restart, model) pairs this process computes: all, or its share under data_parallel."""
        if not (self.data_parallel and dist.is_available() and dist.is_initialized()):
            return pairs
        return pairs[dist.get_rank()::dist.get_world_size()]

    def _gather(self, mine: Rows, count: int) -> Rows:
        """Every rank's rows, in the order of the full pair list (rank k holds pairs k, k+W, …)."""
        world = dist.get_world_size()
        parts: list[Rows | None] = [None] * world
        dist.all_gather_object(parts, Rows(*(None if t is None else t.cpu() for t in mine)))
        def merge(field: int) -> torch.Tensor | None:
            if parts[0][field] is None:
                return None
            out = parts[0][field].new_empty((count, *parts[0][field].shape[1:]))
            for k, part in enumerate(parts):
                out[k::world] = part[field]
            return out.to(self.device)
        return Rows(*(merge(f) for f in range(len(Rows._fields))))

    def _any_rank(self, signum: int | None) -> int | None:
        """The signal this process (or, under data_parallel, any rank) received: all ranks stop together."""
        if not (self.data_parallel and dist.is_available() and dist.is_initialized()):
            return signum
        received: list[int | None] = [None] * dist.get_world_size()
        dist.all_gather_object(received, signum)
        return next((s for s in received if s is not None), None)

    def _nothing_lost(self, error: DivergedError, state: OuterState, last: dict, config: dict,
                      checkpoint: str | Path | None, fingerprint: dict | None) -> DivergedError:
        """``error`` with the last finite state (the snapshot ``last``: the state before the Adam
        step that led to the divergence, so that a lower outer_lr can take that step again) and
        the best one, the last also saved in ``checkpoint``."""
        last, best = state.diverged(config, self.seed, last)
        if checkpoint is not None:
            state.save(checkpoint, fingerprint, diverged=True)
        saved = (f", saved in {checkpoint} (fit again with resume=True and a lower outer_lr to continue it)"
                 if checkpoint is not None else "")
        steps = ", ".join(str(data.config["outer_step"]) for data in best)
        return DivergedError(
            f"Distiller: at outer step {error.step} {error.reason}. Kept: the last finite state in "
            f"error.last{saved} and the best by outer loss in error.best (outer step {steps}). Lower init_lr "
            f"(now {self.init_lr}) or outer_lr (now {self.outer_lr}), use fewer steps/epochs "
            f"(now {self.steps}×{self.epochs}), or use dtype=torch.float64",
            step=error.step, reason=error.reason, last=last, best=best, checkpoint=checkpoint)

    def _check_real(
        self, X: torch.Tensor, y: torch.Tensor, outer_epochs: int, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """X as a finite [N, *in_shape] tensor of self.dtype, y as int64 [N] ids with ≥ 2 classes."""
        X, y = torch.as_tensor(X), torch.as_tensor(y)
        if X.ndim < 2 or len(X) < 1 or not X.is_floating_point():
            raise ValueError(
                f"Distiller.fit: X must be a float tensor [N, *in_shape], got {X.dtype} {list(X.shape)}"
            )
        if not bool(torch.isfinite(X).all()):
            raise ValueError("Distiller.fit: X must be finite, got NaN or inf values")
        if y.shape != (len(X),) or y.is_floating_point() or y.is_complex():
            raise ValueError(
                f"Distiller.fit: y must be integer class ids of shape [{len(X)}], got {y.dtype} {list(y.shape)}"
            )
        if len(y.unique()) < 2 or int(y.min()) < 0:
            raise ValueError(
                f"Distiller.fit: y must hold class ids 0 … C−1 of at least 2 classes, got {y.unique().tolist()}"
            )
        for name, value in (("outer_epochs", outer_epochs), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"Distiller.fit: {name} must be an int >= 1, got {value!r}")
        return X.to(self.device, self.dtype), y.to(self.device, torch.int64)

    def _outputs(self, X: torch.Tensor, classes: int) -> int:
        """The common output width of the archs on X: 1 (a logit, C = 2 only) or C."""
        widths = []
        for arch in self.archs:
            with torch.no_grad():
                widths.append(int(fresh_model(arch, 0, self.dtype).to(self.device)(X[:1]).shape[-1]))
        if len(set(widths)) != 1:
            raise ValueError(f"Distiller: all archs must have the same number of outputs, got {widths}")
        if widths[0] not in ((1, 2) if classes == 2 else (classes,)):
            expected = "1 (a logit) or 2" if classes == 2 else str(classes)
            raise ValueError(
                f"Distiller: archs have {widths[0]} outputs but y has {classes} classes; expected {expected}"
            )
        return widths[0]
