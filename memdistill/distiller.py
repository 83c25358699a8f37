"""Distiller: dataset distillation by hypergradient descent (PAPER.md, Algorithm 1).

Learned: synthetic objects x̃ [s, b, *in_shape], learning rates η̃ = softplus(ρ) [s·e] and,
optionally, soft labels ỹ. Every outer step t:

1. takes the next real minibatch (x, y) (a fresh permutation of the data every outer epoch);
2. draws a fresh Xavier θ0^(j) for each of the m internal models ``archs[j]``;
3. computes L_j and its exact hypergradient with :func:`memdistill.hypergradient` (n = s·e
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

import torch
from torch import nn
from tqdm.auto import tqdm

from memdistill.architectures import fresh_model
from memdistill.distilled import DistilledData
from memdistill.hypergradient import hypergradient
from memdistill.validation import METHODS

LABEL_INIT = 0.9


def balanced_labels(steps: int, per_class: int, classes: int) -> torch.Tensor:
    """int64 [steps, per_class · classes]: each row is ``[0]*per_class + [1]*per_class + …``."""
    return torch.arange(classes).repeat_interleave(per_class).repeat(steps, 1)


def inverse_softplus(value: float) -> float:
    """ρ with softplus(ρ) = log(1 + e^ρ) = value (> 0)."""
    return value + math.log(-math.expm1(-value))


def soft_label_logits(labels: torch.Tensor, outputs: int, dtype: torch.dtype) -> torch.Tensor:
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


def soft_labels_from_logits(logits: torch.Tensor, outputs: int) -> torch.Tensor:
    """sigmoid(u) for one output, softmax(u) over the last axis for C outputs."""
    return torch.sigmoid(logits) if outputs == 1 else torch.softmax(logits, dim=-1)


class Distiller:
    """Learns a small synthetic training set (Algorithm 1 of PAPER.md; see the module doc).

    Args:
      archs: m zero-argument factories of nn.Modules (``md.mlp(...)``); mixed allowed.
      steps: s, synthetic batches (inner steps) per internal epoch.
      epochs: e, internal epochs; the inner loop runs n = s·e SGD steps.
      per_class: synthetic objects of each class per step (b = per_class · C).
      method: the engine's method: "autograd" | "replay" | "checkpoint" | "reversible".
      momentum: γ of the inner SGD (torch.optim.SGD convention); "reversible" needs γ > 0.
      init_lr: initial value of every learned learning rate η̃_k.
      outer_lr: Adam's learning rate on x̃, ρ (and the soft-label logits).
      seed: seed of every random draw (x̃ init, θ0's, real minibatches).
      soft_labels: also learn soft labels ỹ.
      snapshots: the engine's stored states for "checkpoint" (None: √n segments).
      dtype: floating dtype of x̃, η̃ and the models (float32, or float64 for exactness).
      device: where to compute.
      progress: show a tqdm bar with the outer loss.

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
        if not dtype.is_floating_point:
            raise ValueError(f"Distiller: dtype must be a floating dtype, got {dtype}")
        self.archs = list(archs)
        self.steps, self.epochs, self.per_class = steps, epochs, per_class
        self.method, self.momentum, self.snapshots = method, float(momentum), snapshots
        self.init_lr, self.outer_lr, self.seed = float(init_lr), float(outer_lr), int(seed)
        self.soft_labels, self.dtype, self.device = soft_labels, dtype, torch.device(device)
        self.progress = progress

    def config(self, classes: int, in_shape: Sequence[int], outer_epochs: int, batch_size: int) -> dict:
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
            "init_lr": self.init_lr,
            "outer_lr": self.outer_lr,
            "soft_labels": self.soft_labels,
            "dtype": str(self.dtype).removeprefix("torch."),
            "classes": classes,
            "in_shape": list(in_shape),
            "outer_epochs": outer_epochs,
            "batch_size": batch_size,
        }

    def fit(
        self, X: torch.Tensor, y: torch.Tensor, outer_epochs: int = 50, batch_size: int = 64
    ) -> DistilledData:
        """Distil (X, y) into s·b synthetic objects and s·e learning rates.

        Args:
          X: real inputs [N, *in_shape] (standardised features: see :mod:`memdistill.data`).
          y: int class ids [N] in 0 … C−1, C ≥ 2.
          outer_epochs: passes over the real data; the outer loop runs
            outer_epochs · ⌈N / batch_size⌉ steps (the last batch of an epoch may be smaller).
          batch_size: real objects per outer step.

        Returns:
          :class:`memdistill.DistilledData` with x [s, b, *in_shape], y [s, b] (int64, or the
          learned soft labels), lrs [s·e], the config, the seed and the outer-loss history.

        Raises:
          FloatingPointError: the outer loss or a hypergradient became NaN/inf (the message
            says what to lower); no data is returned then.
        """
        X, y = self._check_real(X, y, outer_epochs, batch_size)
        classes = int(y.max()) + 1
        outputs = self._outputs(X, classes)
        generator = torch.Generator().manual_seed(self.seed)
        labels = balanced_labels(self.steps, self.per_class, classes).to(self.device)
        x_syn = torch.randn(
            (self.steps, labels.shape[1], *X.shape[1:]), generator=generator, dtype=self.dtype
        )
        x_syn = x_syn.to(self.device).requires_grad_()
        rho = torch.full(
            (self.steps * self.epochs,),
            inverse_softplus(self.init_lr),
            dtype=self.dtype,
            device=self.device,
            requires_grad=True,
        )
        logits = soft_label_logits(labels, outputs, self.dtype).requires_grad_() if self.soft_labels else None
        optimiser = torch.optim.Adam([t for t in (x_syn, rho, logits) if t is not None], lr=self.outer_lr)
        history: list[float] = []
        batches = math.ceil(len(X) / batch_size)
        with tqdm(
            total=outer_epochs * batches, desc="distill", unit="step", leave=False, disable=not self.progress
        ) as bar:
            for _ in range(outer_epochs):
                order = torch.randperm(len(X), generator=generator).to(self.device)
                for index in order.split(batch_size):
                    y_syn = labels if logits is None else soft_labels_from_logits(logits, outputs)
                    lrs = nn.functional.softplus(rho)
                    loss = self._outer_step(x_syn, y_syn, lrs, X[index], y[index], generator, len(history))
                    optimiser.step()
                    optimiser.zero_grad()
                    history.append(loss)
                    bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                    bar.update()
        y_final = labels if logits is None else soft_labels_from_logits(logits, outputs)
        return DistilledData(
            x=x_syn.detach().cpu().clone(),
            y=y_final.detach().cpu().clone(),
            lrs=nn.functional.softplus(rho).detach().cpu().clone(),
            config=self.config(classes, list(X.shape[1:]), outer_epochs, batch_size),
            seed=self.seed,
            history=history,
        )

    def _outer_step(
        self,
        x_syn: torch.Tensor,
        y_syn: torch.Tensor,
        lrs: torch.Tensor,
        x_real: torch.Tensor,
        y_real: torch.Tensor,
        generator: torch.Generator,
        step: int,
    ) -> float:
        """L = (1/m) Σ_j L_j over fresh θ0's; leaves ∇L in x_syn.grad, ρ.grad (, logits.grad)."""
        hgs = []
        for arch in self.archs:
            model = fresh_model(arch, int(torch.randint(2**62, (1,), generator=generator)), self.dtype)
            try:
                hgs.append(
                    hypergradient(
                        model.to(self.device),
                        x_syn.detach(),
                        y_syn.detach(),
                        lrs.detach(),
                        x_real,
                        y_real,
                        epochs=self.epochs,
                        momentum=self.momentum,
                        method=self.method,
                        snapshots=self.snapshots,
                    )
                )
            except FloatingPointError as error:
                raise self._diverged(step, f"the inner loop diverged ({error})") from None
        loss = sum(float(hg.loss) for hg in hgs) / len(hgs)
        grad_x = torch.stack([hg.grad_x_syn for hg in hgs]).mean(0)
        grad_lrs = torch.stack([hg.grad_lrs for hg in hgs]).mean(0)
        grad_y = torch.stack([hg.grad_y_syn for hg in hgs]).mean(0) if y_syn.requires_grad else None
        grads = [g for g in (grad_x, grad_lrs, grad_y) if g is not None]
        if not (math.isfinite(loss) and all(bool(torch.isfinite(g).all()) for g in grads)):
            raise self._diverged(step, f"the outer loss or its hypergradient is not finite (loss {loss})")
        x_syn.grad = grad_x
        # chain rule through η̃ = softplus(ρ) and ỹ = sigmoid/softmax(logits) into ρ.grad, logits.grad
        torch.autograd.backward([lrs, y_syn][: len(grads) - 1], grads[1:])
        return loss

    def _diverged(self, step: int, what: str) -> FloatingPointError:
        return FloatingPointError(
            f"Distiller: at outer step {step} {what}; nothing was returned. Lower init_lr "
            f"(now {self.init_lr}) or outer_lr (now {self.outer_lr}), use fewer steps/epochs "
            f"(now {self.steps}×{self.epochs}), or use dtype=torch.float64"
        )

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
