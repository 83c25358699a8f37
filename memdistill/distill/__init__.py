"""Distillation: Algorithm 1 built on the engine.

Lives here: the :class:`Distiller` (outer loop, Adam on x̃ and ρ = softplus⁻¹(η̃)), batching of
restarts and internal models into one engine sweep, :class:`DistilledData` (the result, saved
atomically), training new models on distilled data (:func:`train_on`, strategies s1–s3),
evaluation, and checkpoint/resume of the outer loop.

May import: ``memdistill.engine``, ``memdistill.data``, ``memdistill.models``,
``memdistill.atomic``, torch, numpy, tqdm. Never ``memdistill.apps``.
"""
from memdistill.distill.distilled import DistilledData
from memdistill.distill.distiller import Distiller
from memdistill.distill.outer import DivergedError
from memdistill.distill.training import STRATEGIES, train_on

__all__ = ["STRATEGIES", "DistilledData", "Distiller", "DivergedError", "train_on"]
