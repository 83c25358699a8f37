"""Steps: the math of one inner SGD step and its reverse products, batched over B models.

Every step takes parameter rows θ [B, P] and returns the B losses, the gradients g [B, P] and,
in reverse, the Hessian-vector product, the mixed derivative w.r.t. x̃ (and ỹ for soft labels):
``generic`` (any nn.Module, through torch.func), ``fused`` (plain ReLU MLPs, analytic, pure
PyTorch) and ``extension`` (the same contract through the optional C++/CUDA ops).
A new step goes here; the schedules never see it.
"""
from memdistill.engine.steps.extension import ExtensionMLPStep, backend_info
from memdistill.engine.steps.fused import FusedMLPStep
from memdistill.engine.steps.generic import GenericStep, default_loss

__all__ = ["ExtensionMLPStep", "FusedMLPStep", "GenericStep", "backend_info", "default_loss"]
