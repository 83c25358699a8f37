"""The fused MLP step: B ReLU MLPs of one shape, analytic gradients in batched matmuls.

For a plain ``nn.Sequential(Linear, ReLU, …, Linear)`` and the default loss, one inner step's
gradient and its reverse-step products need no autograd graph. Layer l of model j, written
feature-major (a layer's activations are [width, b], the b examples as columns):
z_l = W_l h_{l−1} + b_l, h_l = relu(z_l), h_0 = xᵀ, logits z_L; δ_l = ∂l/∂z_l by backprop.

The reverse step needs, for a direction w = (Ẇ_l, ḃ_l) in parameter space, the gradient of
φ = ⟨∇θ l, w⟩ with respect to θ (the Hessian-vector product Hw), x and y. φ is the
directional derivative of l along w (Pearlmutter 1994), so one forward pass carries the
tangents ż_l = W_l ḣ_{l−1} + Ẇ_l h_{l−1} + ḃ_l, ḣ_l = m_l ⊙ ż_l (m_l = [z_l > 0]), and one
backward pass carries a_l = ∂φ/∂z_l next to δ_l = ∂φ/∂ż_l:

    a_L = (∂²l/∂z_L²) ż_L,   a_{l−1} = m ⊙ (W_lᵀ a_l + Ẇ_lᵀ δ_l),
    (Hw)_{W_l} = a_l h_{l−1}ᵀ + δ_l ḣ_{l−1}ᵀ,   (Hw)_{b_l} = Σ_batch a_l,
    ∂φ/∂x = (W_1ᵀ a_1 + Ẇ_1ᵀ δ_1)ᵀ,   ∂φ/∂y = (∂δ_L/∂y)ᵀ ż_L.

Shapes: θ [B, P] (the layout of ``nn.Module.named_parameters``), x [b, in] shared by the B
models or [B, b, in] one batch per model; inside, activations are [B, width, b].

Speed: the models are tiny, so a step is a few dozen kernel launches of microseconds each.
The feature-major layout keeps the weight operand of every batched matmul on torch's fast
path (W h with W a view of θ: 3 µs for 30 paper-MLP layers at b = 8, where the example-major
h Wᵀ takes 22 µs), a contraction of length one is a broadcast product, masks are 0/1 floats
(a bool mask is converted at every product), the reverse step computes no loss, and a step
whose widest matmul is smaller than ``SERIAL_WORK`` runs on one thread: some of torch's CPU
kernels (small batched matmuls, log-sigmoid) open a parallel region whatever the size, and
waking a second thread costs more than the kernel (on a loaded 2-core machine, milliseconds).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from memdistill.engine.steps.generic import GenericStep

__all__ = ["FusedMLPStep", "SERIAL_WORK", "is_plain_mlp", "mlp_layers"]

# Multiply-adds (B · b · out · in) of the widest layer below which the step runs on one thread.
SERIAL_WORK = 1 << 16

T = TypeVar("T")


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
    h: list[Tensor]       # h_0 … h_{L−1}: inputs of each layer, [B, in_l, b] (h_0 = xᵀ, maybe a view)
    rows: list[Tensor]    # the same as [B, b, in_l] (x itself for l = 0, shared [b, in] or [B, b, in])
    masks: list[Tensor]   # m_1 … m_{L−1}: [z_l > 0] as 0/1 floats, [B, out_l, b]
    logits: Tensor        # z_L [B, C, b]


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """a [B, r, k] · b [B, k, c] or [k, c]; with k = 1 a broadcast product (the same bits, one
    cheap kernel), with a shared b one matmul over the stacked rows of a."""
    if a.shape[-1] == 1:
        return a * b
    return torch.bmm(a, b) if b.dim() == 3 else torch.matmul(a, b)


def _mm_add(c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """c + a · b for a [B, r, k], b [B, k, c] (k = 1: a broadcast product)."""
    return torch.addcmul(c, a, b) if a.shape[-1] == 1 else torch.baddbmm(c, a, b)


def _one_thread(fn: Callable[..., T], *args) -> T:
    """fn(*args) with torch's intra-op threads set to 1, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(threads)


class FusedMLPStep(GenericStep):
    """Analytic step for B plain ReLU MLPs with the default loss (BCE or cross-entropy)."""

    name = "fused"

    def __init__(self, model: nn.Sequential):
        if not is_plain_mlp(model):
            raise ValueError("FusedMLPStep: model must be nn.Sequential(Linear, ReLU, ..., Linear) with biases")
        super().__init__(model, None)
        self.layers = mlp_layers(model)
        offsets, start = [], 0
        for o, i in self.layers:
            offsets.append((o, i, start, start + o * i))
            start += o * i + o
        self.offsets = offsets
        self.widest = max(o * i for o, i in self.layers)
        self.why = f"{self.name}: analytic, the B models in batched matmuls"

    def params(self, theta: Tensor) -> list[tuple[Tensor, Tensor]]:
        """[(W_l [B, out, in], b_l [B, out, 1])] as views of θ [B, P]."""
        theta = theta if theta.stride(-1) == 1 else theta.contiguous()
        B, row, base = theta.shape[0], theta.stride(0), theta.storage_offset()
        return [(theta.as_strided((B, o, i), (row, i, 1), base + w), theta.as_strided((B, o, 1), (row, 1, 1), base + b))
                for o, i, w, b in self.offsets]

    def _serial(self, theta: Tensor, x: Tensor) -> bool:
        """Whether this call runs on one thread (see SERIAL_WORK)."""
        return (theta.device.type == "cpu" and torch.get_num_threads() > 1
                and theta.shape[0] * x.shape[-2] * self.widest < SERIAL_WORK)

    def _forward(self, params: list[tuple[Tensor, Tensor]], x: Tensor) -> _Forward:
        B = params[0][0].shape[0]
        h = x.mT if x.dim() == 3 else x.t().expand(B, *x.shape[::-1])
        hs, rows, masks = [h], [x], []
        for W, b in params[:-1]:
            h = torch.baddbmm(b, W, h).relu_()
            hs.append(h)
            rows.append(h.mT)
            masks.append(h.sign())
        W, b = params[-1]
        return _Forward(hs, rows, masks, torch.baddbmm(b, W, h))

    @staticmethod
    def _targets(z: Tensor, y: Tensor) -> Tensor:
        """y as feature-major targets broadcasting with z [B, C, b]: [(B,) C, b]."""
        if z.shape[1] == 1:
            return y.to(z.dtype).unsqueeze(-2)
        t = y if y.is_floating_point() else nn.functional.one_hot(y, z.shape[1]).to(z.dtype)
        return t.mT

    @staticmethod
    def _delta(z: Tensor, t: Tensor, soft: bool) -> tuple[Tensor, Tensor]:
        """(δ_L = ∂l/∂z [B, C, b], p) for mean-over-batch BCE / cross-entropy.

        BCE (C = 1): p = σ(z), δ = (p − t)/b. Cross-entropy: p = softmax(z), δ = (p·Σ_c t_c − t)/b
        (Σ_c t_c = 1 for one-hot class ids: not ``soft``).
        """
        b = z.shape[-1]
        if z.shape[1] == 1:
            p = torch.sigmoid(z)
            return (p - t).div_(b), p
        p = z.softmax(1)
        return ((p * t.sum(-2, keepdim=True) if soft else p) - t).div_(b), p

    @staticmethod
    def _loss(z: Tensor, t: Tensor) -> Tensor:
        """[l_j]_j [B]: mean-over-batch BCE-with-logits (C = 1) or (soft-label) cross-entropy."""
        if z.shape[1] == 1:
            elementwise = nn.functional.binary_cross_entropy_with_logits(z, t.expand_as(z), reduction="none")
            return elementwise.sum((1, 2)) / z.shape[-1]
        return -(t * z.log_softmax(1)).sum((1, 2)) / z.shape[-1]

    def _backward(self, params, fwd: _Forward, delta: Tensor) -> list[Tensor]:
        """Backprop of δ_L: per layer [δ_l h_{l−1}ᵀ, Σ δ_l] as flat [B, ·] pieces."""
        grads = []
        for l in reversed(range(len(params))):
            grads += [delta.sum(2), _mm(delta, fwd.rows[l]).flatten(1)]
            if l:
                delta = _mm(params[l][0].mT, delta).mul_(fwd.masks[l - 1])
        return grads[::-1]

    def loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """[l(x, θ_j)]_j [B] computed with the batched forward (differentiable)."""
        z = self._forward(self.params(theta), x).logits
        return self._loss(z, self._targets(z, y))

    def value_and_grad(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self._serial(theta, x):
            return _one_thread(self._value_and_grad, theta, x, y)
        return self._value_and_grad(theta, x, y)

    def reverse(self, theta: Tensor, x: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(g, Hw, (∂g/∂x)ᵀw, (∂g/∂y)ᵀw); see the module docstring for the equations."""
        if self._serial(theta, x):
            return _one_thread(self._reverse, theta, x, y, w)
        return self._reverse(theta, x, y, w)

    def _value_and_grad(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        params = self.params(theta)
        fwd = self._forward(params, x)
        t = self._targets(fwd.logits, y)
        delta, _ = self._delta(fwd.logits, t, y.is_floating_point())
        return self._loss(fwd.logits, t), torch.cat(self._backward(params, fwd, delta), dim=1)

    def _reverse(self, theta: Tensor, x: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        params, dirs = self.params(theta), self.params(w)
        fwd = self._forward(params, x)
        # Tangents ż_l along w (ḣ_0 = 0 since x does not move).
        hdots, zdot = [None], None
        for l, ((W, _), (Wd, bd)) in enumerate(zip(params, dirs)):
            zdot = torch.baddbmm(bd, Wd, fwd.h[l])
            if l:
                zdot = zdot.baddbmm_(W, hdots[l])
            if l < len(params) - 1:
                hdots.append(zdot * fwd.masks[l])
        t = self._targets(fwd.logits, y)
        soft = y.is_floating_point()
        delta, p = self._delta(fwd.logits, t, soft)
        b = fwd.logits.shape[-1]
        dy = None
        if fwd.logits.shape[1] == 1:        # ∂²l/∂z² = σ(1 − σ)/b
            a = (p * (1 - p)).mul_(zdot).div_(b)
            if soft:
                dy = -zdot.squeeze(1) / b
        else:                               # (Σ_c t_c)(diag p − p pᵀ) ż / b
            pz = (p * zdot).sum(1, keepdim=True)
            a = p * (zdot - pz) / b
            if soft:
                a = a * t.sum(-2, keepdim=True)
                dy = ((pz - zdot) / b).mT
        grads, hvp = [], []
        for l in reversed(range(len(params))):
            W, Wd = params[l][0].mT, dirs[l][0].mT
            hW = _mm(a, fwd.rows[l]) if hdots[l] is None else _mm_add(_mm(a, fwd.rows[l]), delta, hdots[l].mT)
            grads += [delta.sum(2), _mm(delta, fwd.rows[l]).flatten(1)]
            hvp += [a.sum(2), hW.flatten(1)]
            a = _mm_add(_mm(W, a), Wd, delta)
            if l:
                a = a.mul_(fwd.masks[l - 1])
                delta = _mm(W, delta).mul_(fwd.masks[l - 1])
        dx = a.sum(0).t() if x.dim() == 2 else a.mT      # a shared batch collects every model's term
        if dy is not None and dy.dim() > y.dim():
            dy = dy.sum(0)
        return torch.cat(grads[::-1], dim=1), torch.cat(hvp[::-1], dim=1), dx, dy
