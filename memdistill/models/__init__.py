"""Models: architecture factories (zero-argument callables returning a fresh ``nn.Module``).

Lives here: the paper's MLP presets (``mlp``) and :func:`fresh_model` (a seeded, freshly
initialised instance). A new architecture goes here.

May import: ``memdistill.atomic``, torch. Nothing above it (distill, apps) and not the engine.
"""
from memdistill.models.mlp import MLP, fresh_model, mlp

__all__ = ["MLP", "fresh_model", "mlp"]
