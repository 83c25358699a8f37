"""memdistill: exact hypergradients through long unrolled training loops with bounded memory.

The public surface lives here; the implementation is in the subpackages, one layer each:
``apps`` (CLI, batch jobs, reproduction, profile) → ``distill`` (Algorithm 1) → ``engine``
(Algorithms 2–3), with ``data`` and ``models`` beside ``distill``. Nothing imports upward.
"""
from importlib.metadata import PackageNotFoundError, version

from memdistill.data import Dataset, load_dataset
from memdistill.distill import DistilledData, Distiller, DivergedError, train_on
from memdistill.engine import Hypergradient, Plan, backend_info, hypergradient, plan, schedules, unrolled_loss
from memdistill.models import convnet, lenet, mlp

try:
    __version__ = version("memdistill")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "unknown"

__all__ = [
    "Dataset",
    "DistilledData",
    "DivergedError",
    "Distiller",
    "Hypergradient",
    "Plan",
    "backend_info",
    "convnet",
    "hypergradient",
    "lenet",
    "load_dataset",
    "mlp",
    "plan",
    "schedules",
    "train_on",
    "unrolled_loss",
]
