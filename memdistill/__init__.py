"""memdistill: exact hypergradients through long unrolled training loops with bounded memory.

The public surface lives here; the implementation is in the submodules.
"""
from memdistill import schedules
from memdistill.hypergradient import Hypergradient
from memdistill.hypergradient import hypergradient
from memdistill.hypergradient import unrolled_loss
from memdistill.ops import backend_info
from memdistill.architectures import mlp
from memdistill.data import Dataset
from memdistill.data import load_dataset
from memdistill.distilled import DistilledData
from memdistill.distiller import Distiller
from memdistill.training import train_on

__all__ = [
    "Dataset",
    "DistilledData",
    "Distiller",
    "Hypergradient",
    "backend_info",
    "hypergradient",
    "load_dataset",
    "mlp",
    "schedules",
    "train_on",
    "unrolled_loss",
]
