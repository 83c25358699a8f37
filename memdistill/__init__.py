"""memdistill: exact hypergradients through long unrolled training loops with bounded memory.

The public surface lives here; the implementation is in the subpackages, one layer each:
``apps`` (CLI, batch jobs, reproduction, profile) → ``distill`` (Algorithm 1) → ``engine``
(Algorithms 2–3), with ``data`` and ``models`` beside ``distill``. Nothing imports upward.
"""
from memdistill.data import Dataset, load_dataset
from memdistill.distill import DistilledData, Distiller, train_on
from memdistill.engine import Hypergradient, backend_info, hypergradient, schedules, unrolled_loss
from memdistill.models import convnet, lenet, mlp

__all__ = [
    "Dataset",
    "DistilledData",
    "Distiller",
    "Hypergradient",
    "backend_info",
    "convnet",
    "hypergradient",
    "lenet",
    "load_dataset",
    "mlp",
    "schedules",
    "train_on",
    "unrolled_loss",
]
