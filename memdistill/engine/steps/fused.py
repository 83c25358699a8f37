"""The fused MLP step: B ReLU MLPs of one shape, analytic gradients in batched matmuls.

For a plain ``nn.Sequential(Linear, ReLU, …, Linear)`` and the default loss, one inner step's
gradient and its reverse-step products need no autograd graph. Layer l of model j:
z_l = h_{l−1} W_lᵀ + b_l, h_l = relu(z_l), h_0 = x, logits z_L; δ_l = ∂l/∂z_l by backprop.

The reverse step needs, for a direction w = (Ẇ_l, ḃ_l) in parameter space, the gradient of
φ = ⟨∇θ l, w⟩ with respect to θ (the Hessian-vector product Hw), x and y. φ is the
directional derivative of l along w (Pearlmutter 1994), so one forward pass carries the
tangents ż_l = ḣ_{l−1} W_lᵀ + h_{l−1} Ẇ_lᵀ + ḃ_l, ḣ_l = m_l ⊙ ż_l (m_l = [z_l > 0]), and one
backward pass carries a_l = ∂φ/∂z_l next to δ_l = ∂φ/∂ż_l:

    a_L = (∂²l/∂z_L²) ż_L,   a_{l−1} = m ⊙ (a_l W_l + δ_l Ẇ_l),
    (Hw)_{W_l} = a_lᵀ h_{l−1} + δ_lᵀ ḣ_{l−1},   (Hw)_{b_l} = Σ_batch a_l,
    ∂φ/∂x = a_1 W_1 + δ_1 Ẇ_1,   ∂φ/∂y = (∂δ_L/∂y)ᵀ ż_L.

Shapes: θ [B, P] (the layout of ``nn.Module.named_parameters``), x [b, in] shared by the B
models or [B, b, in] one batch per model, logits [B, b, C].
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from memdistill.engine.steps.generic import GenericStep

__all__ = ["FusedMLPStep", "is_plain_mlp", "mlp_layers"]


def is_plain_mlp(model: nn.Module) -> bool:
    """True for nn.Sequential(Linear, ReLU, Linear, …, Linear) with biases, all trainable, no buffers."""
    if type(model) is not nn.Sequential or len(model) % 2 == 0 or any(True for _ in model.buffers()):
        return False
    for i, layer in enumerate(model):
        want = nn.Linear if i % 2 == 0 else nn.ReLU
        if type(layer) is not want:
            return False
        if want is nn.Linear and (layer.bias is None or not all(p.requires_grad for p in layer.parameters())):
            return False
    return all(not r.inplace for r in model[1::2])


def mlp_layers(model: nn.Sequential) -> list[tuple[int, int]]:
    """[(out, in)] of each Linear layer."""
    return [(layer.out_features, layer.in_features) for layer in model[0::2]]


class _Forward(NamedTuple):
    h: list[Tensor]       # h_0 … h_{L−1}: inputs of each layer, [B, b, in_l]
    masks: list[Tensor]   # m_1 … m_{L−1}: [z_l > 0]
    logits: Tensor        # [B, b, C]


def _bmm_t(a: Tensor, b: Tensor) -> Tensor:
    """a [B, r, k] · b [B, c, k]ᵀ -> [B, r, c]."""
    return torch.bmm(a, b.transpose(1, 2))


class FusedMLPStep(GenericStep):
    """Analytic step for B plain ReLU MLPs with the default loss (BCE or cross-entropy)."""

    name = "fused"

    def __init__(self, model: nn.Sequential):
        if not is_plain_mlp(model):
            raise ValueError("FusedMLPStep: model must be nn.Sequential(Linear, ReLU, ..., Linear) with biases")
        super().__init__(model, None)
        self.layers = mlp_layers(model)
        self.why = f"{self.name}: analytic, the B models in batched matmuls"

    def params(self, theta: Tensor) -> list[tuple[Tensor, Tensor]]:
        """[(W_l [B, out, in], b_l [B, out])] as views of θ [B, P]."""
        B, out = theta.shape[0], []
        chunks = theta.split([n for o, i in self.layers for n in (o * i, o)], dim=1)
        for (o, i), W, b in zip(self.layers, chunks[0::2], chunks[1::2]):
            out.append((W.reshape(B, o, i), b))
        return out

    def _forward(self, params: list[tuple[Tensor, Tensor]], x: Tensor) -> _Forward:
        h = x.expand(params[0][0].shape[0], *x.shape) if x.dim() == 2 else x
        hs, masks = [h], []
        for l, (W, b) in enumerate(params):
            z = torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2))
            if l == len(params) - 1:
                return _Forward(hs, masks, z)
            masks.append(z > 0)
            h = z.clamp_min(0)
            hs.append(h)
        raise AssertionError("unreachable: an MLP has at least one layer")

    @staticmethod
    def _loss_and_delta(z: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(l_j [B], δ_L = ∂l/∂z [B, b, C], p) for mean-over-batch BCE / cross-entropy.

        BCE (C = 1): p = σ(z), δ = (p − y)/b. Cross-entropy: p = softmax(z), δ = (p·Σ_c y_c − y)/b
        with y one-hot for class ids.
        """
        b = z.shape[1]
        if z.shape[-1] == 1:
            t = y.to(z.dtype).expand(z.shape[:2]).unsqueeze(-1)
            loss = nn.functional.binary_cross_entropy_with_logits(z, t, reduction="none").sum((1, 2)) / b
            p = torch.sigmoid(z)
            return loss, (p - t) / b, p
        t = y if y.is_floating_point() else nn.functional.one_hot(y, z.shape[-1]).to(z.dtype)
        t = t.expand(*z.shape) if t.dim() == 2 else t
        logp = z.log_softmax(-1)
        p = logp.exp()
        return -(t * logp).sum((1, 2)) / b, (p * t.sum(-1, keepdim=True) - t) / b, p

    def _backward(self, params, fwd: _Forward, delta: Tensor) -> list[Tensor]:
        """Backprop of δ_L: per layer [δ_lᵀ h_{l−1}, Σ δ_l] as flat [B, ·] pieces, and the δ_l."""
        grads, deltas = [], []
        for l in reversed(range(len(params))):
            deltas.append(delta)
            grads += [torch.bmm(delta.transpose(1, 2), fwd.h[l]).flatten(1), delta.sum(1)][::-1]
            if l:
                delta = torch.bmm(delta, params[l][0]) * fwd.masks[l - 1]
        return grads[::-1], deltas[::-1]

    def loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """[l(x, θ_j)]_j [B] computed with the batched forward (differentiable)."""
        fwd = self._forward(self.params(theta), x)
        return self._loss_and_delta(fwd.logits, y)[0]

    def value_and_grad(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        params = self.params(theta)
        fwd = self._forward(params, x)
        loss, delta, _ = self._loss_and_delta(fwd.logits, y)
        grads, _ = self._backward(params, fwd, delta)
        return loss, torch.cat(grads, dim=1)

    def reverse(self, theta: Tensor, x: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(g, Hw, (∂g/∂x)ᵀw, (∂g/∂y)ᵀw); see the module docstring for the equations."""
        params, dirs = self.params(theta), self.params(w)
        fwd = self._forward(params, x)
        # Tangents ż_l along w (ḣ_0 = 0 since x does not move).
        hdots, zdot = [None], None
        for l, ((W, _), (Wd, bd)) in enumerate(zip(params, dirs)):
            zdot = torch.baddbmm(bd.unsqueeze(1), fwd.h[l], Wd.transpose(1, 2))
            if hdots[l] is not None:
                zdot = zdot + _bmm_t(hdots[l], W)
            if l < len(params) - 1:
                hdots.append(zdot * fwd.masks[l])
        _, delta, p = self._loss_and_delta(fwd.logits, y)
        grads, deltas = self._backward(params, fwd, delta)
        b = fwd.logits.shape[1]
        if fwd.logits.shape[-1] == 1:      # ∂²l/∂z² = σ(1 − σ)/b
            a = p * (1 - p) * zdot / b
            dy = -zdot.squeeze(-1) / b
        else:                               # (Σ_c y_c)(diag p − p pᵀ) ż / b
            t_sum = y.sum(-1, keepdim=True) if y.is_floating_point() else 1.0
            pz = (p * zdot).sum(-1, keepdim=True)
            a = t_sum * p * (zdot - pz) / b
            dy = (pz - zdot) / b
        hvp = []
        for l in reversed(range(len(params))):
            W, Wd = params[l][0], dirs[l][0]
            hW = torch.bmm(a.transpose(1, 2), fwd.h[l])
            if hdots[l] is not None:
                hW = hW + torch.bmm(deltas[l].transpose(1, 2), hdots[l])
            hvp += [a.sum(1), hW.flatten(1)]
            a = torch.bmm(a, W) + torch.bmm(deltas[l], Wd)
            if l:
                a = a * fwd.masks[l - 1]
        dx = a.sum(0) if x.dim() == 2 else a      # a shared batch collects every model's term
        if not y.is_floating_point():
            dy = None
        elif dy.dim() > y.dim():
            dy = dy.sum(0)
        return torch.cat(grads, dim=1), torch.cat(hvp[::-1], dim=1), dx, dy
