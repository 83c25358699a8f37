"""Default settings per kind of data: the paper's for tables, Wang et al.'s setting for images.

The Distiller's own defaults are the paper's (two moons, MLPs). Images need other ones, chosen
as Wang et al. (2018) did and tuned on ``digits-images`` with ``lenet``: 10 steps × 1 image per
class × 3 epochs (n = 30), x̃ started from real images, a higher first learning rate (ConvNets
barely move in 30 steps at 0.02), and a run counted in outer steps rather than epochs (1,198
digits and 60,000 MNIST images make very different epochs), and ``method="auto"``: the fastest
method whose stored states fit the memory budget (LeNet's 30 steps fit in a few MiB, so it runs
autograd or replay, 1.25x faster than checkpoint on digits-images and 1.1x on MNIST, with the
same bits; a bigger net or unroll falls back to checkpoint). ``memdistill distill`` starts from
:func:`defaults_for`; every value can be overridden; a batch job on image data takes them for
the keys it leaves out (``memdistill.apps.jobfile.IMAGE_DEFAULTS``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["IMAGE", "TABULAR", "Defaults", "defaults_for"]


@dataclass(frozen=True)
class Defaults:
    """Distillation, evaluation and full-data baseline settings for one kind of data.

    ``outer_steps`` None: the run is ``outer_epochs`` passes over the real data. ``baseline``:
    keyword arguments of :func:`memdistill.distill.evaluation.train_full`.
    """

    arch: str
    models: int
    steps: int
    epochs: int
    per_class: int
    init: str
    init_lr: float
    outer_lr: float
    outer_epochs: int
    batch_size: int
    outer_steps: int | None = None
    method: str = "checkpoint"
    baseline: dict[str, Any] = field(default_factory=dict)

    def distiller(self) -> dict[str, Any]:
        """The :class:`memdistill.Distiller` keyword arguments among these settings."""
        keys = ("steps", "epochs", "per_class", "init", "init_lr", "outer_lr", "method")
        return {k: v for k, v in asdict(self).items() if k in keys}

    def fit(self) -> dict[str, Any]:
        """The :meth:`memdistill.Distiller.fit` keyword arguments among these settings."""
        return {"outer_epochs": self.outer_epochs, "batch_size": self.batch_size, "outer_steps": self.outer_steps}


TABULAR = Defaults(arch="2-layer", models=3, steps=40, epochs=5, per_class=4, init="noise", init_lr=0.02,
                   outer_lr=0.01, outer_epochs=50, batch_size=64, baseline={"epochs": 500, "lr": 0.1})
"""PAPER.md §5.2: s = 40, e = 5, 4 objects per class and step, m = 3, 50 outer epochs of batch 64;
the baseline is 500 full-batch gradient steps at lr 0.1."""

IMAGE = Defaults(arch="lenet", models=1, steps=10, epochs=3, per_class=1, init="real", init_lr=0.1,
                 outer_lr=0.005, outer_epochs=1, batch_size=256, outer_steps=1000, method="auto",
                 baseline={"epochs": 20, "lr": 0.05, "momentum": 0.9, "batch_size": 128, "max_steps": 2000})
"""Wang et al.'s random-init setting (n = 30, one image per class and step, one fresh θ0 per
outer step) with a real batch of 256, Adam at 0.005, 1,000 outer steps and the method that fits
memory best ("auto"); the baseline is 20 epochs of SGD
(momentum 0.9, lr 0.05, batch 128), at most 2,000 steps: 0.98 on digits-images, 0.99 on MNIST
with LeNet."""


def defaults_for(is_image: bool) -> Defaults:
    """:data:`IMAGE` for image data ([N, C, H, W]), else :data:`TABULAR`."""
    return IMAGE if is_image else TABULAR
