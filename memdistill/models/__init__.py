"""Models: architecture factories (zero-argument callables returning a fresh ``nn.Module``).

Lives here: the paper's MLP presets (``mlp``), the image architectures (``lenet``,
``convnet``), architecture names and import strings (``resolve_arch``, ``check_arch``,
``ARCH_NAMES``) and :func:`fresh_model` (a seeded, freshly initialised instance). A new
architecture goes here, with its name in ``registry``.

May import: ``memdistill.atomic``, torch. Nothing above it (distill, apps) and not the engine.
"""
from memdistill.models.convnets import ConvNet, LeNet, convnet, lenet
from memdistill.models.mlp import MLP, fresh_model, mlp
from memdistill.models.registry import ARCH_NAMES, Arch, check_arch, resolve_arch

__all__ = [
    "ARCH_NAMES",
    "MLP",
    "Arch",
    "ConvNet",
    "LeNet",
    "check_arch",
    "convnet",
    "fresh_model",
    "lenet",
    "mlp",
    "resolve_arch",
]
