"""The engine: Algorithms 2–3, exact hypergradients of an unrolled SGD loop in bounded memory.

Lives here: :func:`hypergradient` / :func:`unrolled_loss` (the public entry points), the one
engine loop (``loop``), the memory policies (``schedules``: pure action lists, no torch), the
inner dynamics (``dynamics``: float SGD with momentum; ``fixedpoint``: exact reversible SGD),
the math of one inner step (``steps``), the store-all autograd reference (``baseline``), the
argument checks (``validation``), the snapshot pool (``pool``) and the memory planner of
``method="auto"`` (``planner``).

May import: torch and numpy only. Nothing else of memdistill, and never scikit-learn,
matplotlib or tqdm (checked by import-linter in CI).
"""
from memdistill.engine import schedules
from memdistill.engine.hypergradient import Hypergradient, hypergradient, plan, unrolled_loss
from memdistill.engine.planner import Plan, parse_memory
from memdistill.engine.steps import backend_info

__all__ = ["Hypergradient", "Plan", "backend_info", "hypergradient", "parse_memory", "plan", "schedules",
           "unrolled_loss"]
