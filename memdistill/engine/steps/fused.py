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

Rows: row j of every product has the same bits whatever B and whichever rows share the call
(batched restarts equal separate runs; tests/test_fused.py), so no op may round an element
by its place in the batch or by B. Hence σ(z) = 1/(1 + exp(−z)), not torch.sigmoid, whose
vectorised loop computes its tail with another formula than its body (≈1 ulp apart); a
shared x is expanded to one batch per row for bmm, not stacked into one [B·r, k] GEMM; a
contraction of length one is a broadcast product (torch.addcmul rounds c + a·b once however
it loops); and a lone row (B = 1) with a width, input or batch of 1 in a product that BLAS
does (``BMM_LOOP_BELOW``) is computed as two equal rows (``_lone``): bmm hands B = 1 to gemm,
which takes a matrix-vector path for a single row or column, and B > 1 to gemm_batch.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from memdistill.engine.steps.generic import GenericStep
from memdistill.engine.threads import intra_op_threads

__all__ = ["FusedMLPStep", "SERIAL_WORK", "is_plain_mlp", "mlp_layers"]

# Multiply-adds (B · b · out · in) of the widest layer below which the step runs on one thread.
SERIAL_WORK = 1 << 16
# r·k·n below which torch's CPU bmm multiplies each [r, k]·[k, n] in its own loop, the same for
# every B (aten's bmm_out_or_baddbmm_); from it on, BLAS (see "Rows" above).
BMM_LOOP_BELOW = 400


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
    rows: list[Tensor]    # the same as [B, b, in_l] (x itself for l = 0, a shared [b, in] expanded)
    masks: list[Tensor]   # m_1 … m_{L−1}: [z_l > 0] as 0/1 floats, [B, out_l, b]
    logits: Tensor        # z_L [B, C, b]


def _mm(a: Tensor, b: Tensor, c: Tensor | None = None) -> Tensor:
    """a · b (+ c) for a [B, r, k], b [B, k, n], c broadcasting to [B, r, n]; k = 1 a broadcast product."""
    if a.shape[-1] == 1:
        return a * b if c is None else torch.addcmul(c, a, b)
    return torch.bmm(a, b) if c is None else torch.baddbmm(c, a, b)


def _two(theta: Tensor, x: Tensor, y: Tensor, *w: Tensor) -> tuple[Tensor, ...]:
    """The one row of θ [1, P] (and w) twice, with its batch, shared or its own, as one per row."""
    item = slice(0 if x.dim() == 2 else 1, None)      # the batch's shape without a row axis
    return theta.expand(2, -1), x.expand(2, *x.shape[item]), y.expand(2, *y.shape[item]), *(t.expand(2, -1) for t in w)


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
        self.thin = max([o * i for o, i in self.layers if 1 in (o, i)], default=0)   # widest of width or input 1
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

    def _lone(self, theta: Tensor, x: Tensor) -> bool:
        """Whether this call is one row with a [1, k]·[k, n] or [r, k]·[k, 1] product done by BLAS (see "Rows")."""
        b = x.shape[-2]
        return theta.shape[0] == 1 and (self.widest if b == 1 else self.thin) * b >= BMM_LOOP_BELOW

    def _forward(self, params: list[tuple[Tensor, Tensor]], x: Tensor) -> _Forward:
        B = params[0][0].shape[0]
        rows = [x if x.dim() == 3 else x.expand(B, *x.shape)]
        h = rows[0].mT
        hs, masks = [h], []
        for W, b in params[:-1]:
            h = _mm(W, h, b).relu_()
            hs.append(h)
            rows.append(h.mT)
            masks.append(h.sign())
        W, b = params[-1]
        return _Forward(hs, rows, masks, _mm(W, h, b))

    @staticmethod
    def _targets(z: Tensor, y: Tensor) -> Tensor:
        """y as feature-major targets broadcasting with z [B, C, b]: [(B,) C, b]; class ids stay
        integers (0/1 or one-hot), which the float arithmetic they meet promotes exactly."""
        if z.shape[1] == 1:
            return y.unsqueeze(-2)
        t = y if y.is_floating_point() else nn.functional.one_hot(y, z.shape[1])
        return t.mT

    @staticmethod
    def _delta(z: Tensor, t: Tensor, soft: bool) -> tuple[Tensor, Tensor]:
        """(δ_L = ∂l/∂z [B, C, b], p) for mean-over-batch BCE / cross-entropy.

        BCE (C = 1): p = σ(z), δ = (p − t)/b. Cross-entropy: p = softmax(z), δ = (p·Σ_c t_c − t)/b
        (Σ_c t_c = 1 for one-hot class ids: not ``soft``).
        """
        b = z.shape[-1]
        if z.shape[1] == 1:
            p = torch.exp(-z).add_(1).reciprocal_()    # not torch.sigmoid: see "Rows"
            return (p - t).div_(b), p
        p = z.softmax(1)
        return ((p * t.sum(-2, keepdim=True) if soft else p) - t).div_(b), p

    @staticmethod
    def _loss(z: Tensor, t: Tensor) -> Tensor:
        """[l_j]_j [B]: mean-over-batch BCE-with-logits (C = 1) or (soft-label) cross-entropy."""
        if z.shape[1] == 1:
            elementwise = nn.functional.binary_cross_entropy_with_logits(z, t.expand_as(z).to(z.dtype), reduction="none")
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
        if self._lone(theta, x):
            return self.loss(*_two(theta, x, y))[:1]
        z = self._forward(self.params(theta), x).logits
        return self._loss(z, self._targets(z, y))

    def value_and_grad(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self._lone(theta, x):
            loss, grad = self.value_and_grad(*_two(theta, x, y))
            return loss[:1], grad[:1]
        return self._threads(self._value_and_grad, theta, x, y)

    def no_graph(self) -> contextlib.AbstractContextManager:
        """``torch.inference_mode()``: the analytic products need no autograd, and inference mode
        skips its bookkeeping on each of their many small ops (measured: a 1-layer / 4-layer MLP
        sweep step 0.81 / 0.91 the time under no_grad). Tensors made inside are inference tensors:
        callers hand out clones (:func:`memdistill.engine.hypergradient.sweep`)."""
        return torch.inference_mode()

    def grad(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """g [B, P] as :meth:`value_and_grad` computes it (same bits), without the losses."""
        if self._lone(theta, x):
            return self.grad(*_two(theta, x, y))[:1]
        return self._threads(self._grad, theta, x, y)

    def _threads(self, product: Callable[..., Any], theta: Tensor, x: Tensor, *rest: Tensor) -> Any:
        """``product(theta, x, *rest)``, on one thread for a small step (see SERIAL_WORK)."""
        if self._serial(theta, x):
            with intra_op_threads(1):
                return product(theta, x, *rest)
        return product(theta, x, *rest)

    def reverse(self, theta: Tensor, x: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """(g, Hw, (∂g/∂x)ᵀw, (∂g/∂y)ᵀw); see the module docstring for the equations."""
        if self._lone(theta, x):
            g, hw, dx, dy = self.reverse(*_two(theta, x, y, w))
            first = slice(0, 1) if x.dim() == 3 else 0      # a shared batch's terms: row 0's alone
            return g[:1], hw[:1], dx[first], None if dy is None else dy[first]
        return self._threads(self._reverse, theta, x, y, w)

    def _value_and_grad(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        fwd, t, g = self._forward_grad(theta, x, y)
        return self._loss(fwd.logits, t), g

    def _grad(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return self._forward_grad(theta, x, y)[2]

    def _forward_grad(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[_Forward, Tensor, Tensor]:
        """(the forward pass, the targets, g [B, P])."""
        params = self.params(theta)
        fwd = self._forward(params, x)
        t = self._targets(fwd.logits, y)
        delta, _ = self._delta(fwd.logits, t, y.is_floating_point())
        return fwd, t, torch.cat(self._backward(params, fwd, delta), dim=1)

    def _reverse(self, theta: Tensor, x: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        params, dirs = self.params(theta), self.params(w)
        fwd = self._forward(params, x)
        # Tangents ż_l along w (ḣ_0 = 0 since x does not move).
        hdots, zdot = [None], None
        for l, ((W, _), (Wd, bd)) in enumerate(zip(params, dirs)):
            zdot = _mm(Wd, fwd.h[l], bd)
            if l:
                zdot = _mm(W, hdots[l], zdot)
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
            hW = _mm(a, fwd.rows[l]) if hdots[l] is None else _mm(delta, hdots[l].mT, _mm(a, fwd.rows[l]))
            grads += [delta.sum(2), _mm(delta, fwd.rows[l]).flatten(1)]
            hvp += [a.sum(2), hW.flatten(1)]
            a = _mm(Wd, delta, _mm(W, a))
            if l:
                a = a.mul_(fwd.masks[l - 1])
                delta = _mm(W, delta).mul_(fwd.masks[l - 1])
        dx = a.sum(0).t() if x.dim() == 2 else a.mT      # a shared batch collects every model's term
        if dy is not None and dy.dim() > y.dim():
            dy = dy.sum(0)
        return torch.cat(grads[::-1], dim=1), torch.cat(hvp[::-1], dim=1), dx, dy
