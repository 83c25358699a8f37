"""memdistill: exact hypergradients through long unrolled training loops with bounded memory.

The public surface lives here; the implementation is in the submodules.
"""
from memdistill import schedules
from memdistill.hypergradient import Hypergradient
from memdistill.hypergradient import hypergradient
from memdistill.hypergradient import unrolled_loss

__all__ = [
    "Hypergradient",
    "hypergradient",
    "schedules",
    "unrolled_loss",
]
