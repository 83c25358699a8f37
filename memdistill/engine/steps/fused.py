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

Layout: a small step (a hidden layer, out·in ≤ ``BLOCKS_WIDEST`` in every layer, at most
``BLOCKS_BATCH`` examples per model) gathers θ (and w) once into the block matrices it
multiplies, so that a bias is a column against a row of ones and a layer's products are one
bmm each ("·" is a row any finite values may fill: the last row [0, …, 0, 1] of G_l and F_l
sends it nowhere else):

    gradient: [z_l; 1] = G_l [h_{l−1}; 1],   G_l = [W_l, b_l; 0, 1]   (G_L without [0, 1]),
              Q_l = [δ_l; ·] [h_{l−1}; 1]ᵀ = [δ_l h_{l−1}ᵀ, Σ_batch δ_l; ·, ·],
              [δ_{l−1}; ·] = [m_{l−1}; 1] ⊙ G_lᵀ [δ_l; ·];
    reverse:  [z; ż; 1]_l = F_l [h; ḣ; 1]_{l−1},   F_l = [W_l, 0, b_l; Ẇ_l, W_l, ḃ_l; 0, 0, 1],
              [a; δ; ·]_{l−1} = [m; m; ·] ⊙ F_lᵀ [a; δ; ·]_l,
              Q_l = [a; δ; ·]_l [h; ḣ; 1]_{l−1}ᵀ = [a hᵀ, a ḣᵀ, Σ a; δ hᵀ, δ ḣᵀ, Σ δ; ·],

so (Hw)_{W_l} = a hᵀ + δ ḣᵀ, (Hw)_{b_l} = Σ a, g = (δ hᵀ, Σ δ) and ∂φ/∂x = the first rows of
F_1ᵀ [a; δ; ·]_1. The first layer's input is [h_0; 0; 1] (in zero rows: ḣ_0 = 0, and G_1 =
[W_1, 0, b_1; 0, 0, 1]). One index_select builds the G_l (F_l) from [θ | (w |) 0 | 1], and one
more takes g (and Hw's two terms) out of the Q_l in θ's layout (``_layouts``). Larger steps
multiply views of θ, a product per term (W_l h + b_l by baddbmm, Σ_batch by sum; feature-major,
which keeps the weight operand on torch's fast path: W h 3 µs for 30 paper-MLP layers at b =
8, the example-major h Wᵀ 22 µs): there the gather (≈ 1 ns an element) and the blocks' zeros
cost more than the launches they save (width 32, B = 30: 1.25× the gradient's time with the
blocks, 1.4× the reverse step's).

Speed: the models are tiny, so a step is a few dozen kernel launches of microseconds each;
what counts is how many there are and which path each bmm takes. torch multiplies a product
[r, k]·[k, n] with r·k·n < ``BMM_LOOP_BELOW`` in its own scalar loop, ≈ 1 ns a multiply-add
(10 µs for the 30 first layers 10×2 of the §5.2 job at b = 8), larger ones in BLAS (3 µs for
30 layers 10×10): the gathered blocks put every product of that job but the one-logit last
layer's in BLAS, fold the bias adds (3 µs each, a broadcast is slow) and the batch sums into
the products, and let the reverse step's pairs share one product where they took two to
six. Q_l is computed transposed (Q_lᵀ = [h; 1] [δ; ·]ᵀ) when it is wider than tall: MKL's
batched kernels took 12 µs for [10, 8]·[8, 11] and 5 µs for its transpose. Measured against the views
(medians of paired rounds on a loaded 2-core machine): per call at B = 30, b = 8, one thread,
the gradient 0.84–0.85× (≈ 100 against 120 µs), the reverse step 0.73–0.74× (≈ 210 against
295 µs); the §5.2 job (bench/test_bench_distill.py) projected 0.82–0.84× with
method="checkpoint", 0.80–0.84× with "replay".
Masks are 0/1 floats (a bool mask is converted at every product), the reverse step computes
no loss, and a step whose widest matmul is smaller than ``SERIAL_WORK`` runs on one thread:
some of torch's CPU kernels (small batched matmuls, log-sigmoid) open a parallel region
whatever the size, and waking a second thread costs more than the kernel (on a loaded 2-core
machine, milliseconds).

Rows: row j of every product has the same bits whatever B and whichever rows share the call
(batched restarts equal separate runs; tests/test_fused.py), so no op may round an element
by its place in the batch or by B. Hence σ(z) = 1/(1 + exp(−z)), not torch.sigmoid, whose
vectorised loop computes its tail with another formula than its body (≈1 ulp apart); a
shared x is expanded to one batch per row for bmm, not stacked into one [B·r, k] GEMM; a
contraction of length one is a broadcast product (torch.addcmul rounds c + a·b once however
it loops); and a lone row (B = 1) with a width, input or batch of 1 in a product that BLAS
does (``BMM_LOOP_BELOW``; the gathered blocks' sizes bound it) is computed as two equal rows
(``_lone``): bmm hands B = 1 to gemm, which takes a matrix-vector path for a single row or
column, and B > 1 to gemm_batch. Whether a call takes the blocks, the blocks, and whether Q_l
or Q_lᵀ is computed depend on the layer sizes and b alone, never on B.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from memdistill.engine.steps.generic import GenericStep
from memdistill.engine.threads import intra_op_threads

__all__ = ["BLOCKS_BATCH", "BLOCKS_WIDEST", "FusedMLPStep", "SERIAL_WORK", "is_plain_mlp", "mlp_layers"]

# Multiply-adds (B · b · out · in) of the widest layer below which the step runs on one thread.
SERIAL_WORK = 1 << 16
# r·k·n below which torch's CPU bmm multiplies each [r, k]·[k, n] in its own loop, the same for
# every B (aten's bmm_out_or_baddbmm_); from it on, BLAS (see "Rows" above).
BMM_LOOP_BELOW = 400
# The gathered blocks (see "Layout") for MLPs with a hidden layer, out·in ≤ BLOCKS_WIDEST in every
# layer and at most BLOCKS_BATCH examples per model; views of θ and a product per term otherwise.
BLOCKS_WIDEST = 256
BLOCKS_BATCH = 16


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


def _index(pattern: list[list[Tensor | int]]) -> Tensor:
    """A matrix of indices from rows of blocks: index matrices, or an int (one column of it)."""
    rows = []
    for row in pattern:
        height = next(t.shape[0] for t in row if isinstance(t, Tensor))
        rows.append(torch.cat([t if isinstance(t, Tensor) else torch.full((height, 1), t) for t in row], 1))
    return torch.cat(rows)


def _layouts(layers: list[tuple[int, int]], P: int) -> tuple[list[tuple[int, int, int, int, int, bool]], Tensor, Tensor,
                                                             list[tuple[int, int, int, bool]], Tensor, Tensor]:
    """The gathered matrices of the gradient and of the reverse step (see "Layout" above).

    Returns, for the gradient: per layer (o, i, rows R and columns K of G_l, its offset in the
    gathered row, whether Q_l is computed as Q_lᵀ), the index that gathers the G_l out of a row
    of [θ | 0 | 1] [P + 2], and the index that takes g in θ's layout out of a row of
    [Q_1 | … | Q_L]; for the reverse step the same with (o, i, offset of F_l, Q_lᵀ), [θ | w | 0 | 1]
    [2P + 2], and the index that takes g, (Hw)′ and (Hw)″ (Hw = (Hw)′ + (Hw)″), where Q_1's
    block a ḣ_0ᵀ, which is 0, stands for the second term of each (Hw)_b.
    """
    def place(q: int, rows: int, cols: int, r: Tensor, c: Tensor | int, t: bool) -> Tensor:
        """Where element (r, c) of Q [rows, cols] lies, Q stored from q on (as Qᵀ if t)."""
        return (q + c * rows + r if t else q + r * cols + c).flatten()

    grad, G, put, pair, F, out = [], [], [], [], [], []
    start, at, pat, q, pq, zero = 0, 0, 0, 0, 0, 0
    for l, (o, i) in enumerate(layers):
        W, b = torch.arange(start, start + o * i).view(o, i), torch.arange(start + o * i, start + o * i + o)[:, None]
        r, c = torch.arange(o)[:, None], torch.arange(i)
        # The gradient: G_l = [W_l, (0,) b_l; 0, 1], the first with zero columns, the last without [0, 1].
        Gl = _index([[W] + [torch.full((o, i), P)] * (l == 0) + [b]])
        K = Gl.shape[1]
        Gl = Gl if l == len(layers) - 1 else torch.cat([Gl, _index([[torch.full((1, K - 1), P), P + 1]])])
        R, t = Gl.shape[0], K > Gl.shape[0]
        grad.append((o, i, R, K, at, t))
        G.append(Gl.flatten())
        put.append(torch.cat([place(q, R, K, r, c, t), place(q, R, K, r, K - 1, t)]))
        # The reverse step: F_l = [W_l, 0, b_l; Ẇ_l, W_l, ḃ_l; 0, 0, 1] over [θ | w | 0 | 1].
        Fl = _index([[W, torch.full((o, i), 2 * P), b], [W + P, W, b + P], [torch.full((1, 2 * i), 2 * P), 2 * P + 1]])
        (R2, K2), t2 = Fl.shape, Fl.shape[1] > Fl.shape[0]
        pair.append((o, i, pat, t2))
        F.append(Fl.flatten())
        zero = place(pq, R2, K2, torch.tensor(0), i, t2) if l == 0 else zero
        out.append(torch.stack([torch.cat([place(pq, R2, K2, o + r, c, t2), place(pq, R2, K2, o + r, 2 * i, t2)]),
                                torch.cat([place(pq, R2, K2, r, c, t2), place(pq, R2, K2, r, 2 * i, t2)]),
                                torch.cat([place(pq, R2, K2, o + r, i + c, t2), zero.expand(o)])]))
        start, at, pat, q, pq = start + o * i + o, at + Gl.numel(), pat + Fl.numel(), q + R * K, pq + R2 * K2
    return grad, torch.cat(G), torch.cat(put), pair, torch.cat(F), torch.cat(out, 1).flatten()


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
        self.widest_pair = max((2 * o + 1) * (2 * i + 1) for o, i in self.layers)     # the largest F_l
        # widest of width or input 1, a G_l's row or a Wᵀ: o·(2i + 1) bounds them
        self.thin = max([o * (2 * i + 1) for o, i in self.layers if 1 in (o, i)], default=0)
        self.grad_layout, *grad_index, self.pair_layout, pair_fetch, pair_put = _layouts(self.layers, start)
        self.indices: dict[torch.device, list[Tensor]] = {torch.device("cpu"): [*grad_index, pair_fetch, pair_put]}
        self._constants: tuple[Any, ...] = (None,)
        self.why = f"{self.name}: analytic, the B models in batched matmuls"

    def params(self, theta: Tensor) -> list[tuple[Tensor, Tensor]]:
        """[(W_l [B, out, in], b_l [B, out, 1])] as views of θ [B, P]."""
        theta = theta if theta.stride(-1) == 1 else theta.contiguous()
        B, row, base = theta.shape[0], theta.stride(0), theta.storage_offset()
        return [(theta.as_strided((B, o, i), (row, i, 1), base + w), theta.as_strided((B, o, 1), (row, 1, 1), base + b))
                for o, i, w, b in self.offsets]

    def _on(self, device: torch.device) -> list[Tensor]:
        """The layouts' indices on ``device`` (moved there once)."""
        indices = self.indices.get(device)
        if indices is None:
            indices = self.indices[device] = [t.to(device) for t in self.indices[torch.device("cpu")]]
        return indices

    def _constant_parts(self, B: int, b: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """The columns [0, 1] [B, 2] that end the gathered rows, and the rows [0; 1] [B, in + 1, b]
        under h_0 in [h_0; 0; 1]; kept for the last (B, b, dtype, device), never written."""
        key = (B, b, like.dtype, like.device)
        held = self._constants
        if held[0] != key:
            with torch.inference_mode(False):
                ends = torch.tensor([0.0, 1.0], dtype=like.dtype, device=like.device).repeat(B, 1)
                rows = torch.zeros(B, self.layers[0][1] + 1, b, dtype=like.dtype, device=like.device)
                rows[:, -1] = 1
            held = self._constants = (key, ends, rows)
        return held[1], held[2]

    def _serial(self, theta: Tensor, x: Tensor) -> bool:
        """Whether this call runs on one thread (see SERIAL_WORK)."""
        return (theta.device.type == "cpu" and torch.get_num_threads() > 1
                and theta.shape[0] * x.shape[-2] * self.widest < SERIAL_WORK)

    def _lone(self, theta: Tensor, x: Tensor) -> bool:
        """Whether this call is one row with a [1, k]·[k, n] or [r, k]·[k, 1] product done by BLAS (see "Rows")."""
        b = x.shape[-2]
        return theta.shape[0] == 1 and (self.widest_pair if b == 1 else self.thin) * b >= BMM_LOOP_BELOW

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
        z, t, g = self._forward_grad(theta, x, y)
        return self._loss(z, t), g

    def _grad(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        return self._forward_grad(theta, x, y)[2]

    def _blocks(self, x: Tensor) -> bool:
        """Whether this call takes the gathered blocks (see "Layout"; the sizes of a row decide, not B)."""
        return len(self.layers) > 1 and self.widest <= BLOCKS_WIDEST and x.shape[-2] <= BLOCKS_BATCH

    def _forward_grad(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(the logits z_L [B, C, b], the targets, g [B, P])."""
        if self._blocks(x):
            return self._block_grad(theta, x, y)
        params = self.params(theta)
        fwd = self._forward(params, x)
        t = self._targets(fwd.logits, y)
        delta, _ = self._delta(fwd.logits, t, y.is_floating_point())
        return fwd.logits, t, torch.cat(self._backward(params, fwd, delta), dim=1)

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

    def _backward(self, params, fwd: _Forward, delta: Tensor) -> list[Tensor]:
        """Backprop of δ_L: per layer [δ_l h_{l−1}ᵀ, Σ δ_l] as flat [B, ·] pieces."""
        grads = []
        for l in reversed(range(len(params))):
            grads += [delta.sum(2), _mm(delta, fwd.rows[l]).flatten(1)]
            if l:
                delta = _mm(params[l][0].mT, delta).mul_(fwd.masks[l - 1])
        return grads[::-1]

    def _first(self, x: Tensor, B: int, rows: Tensor) -> Tensor:
        """[h_0; 0; 1] [B, 2i + 1, b] (h_0 = xᵀ)."""
        return torch.cat([(x if x.dim() == 3 else x.expand(B, *x.shape)).mT, rows], 1)

    def _block_grad(self, theta: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`_forward_grad` in the gathered blocks."""
        B, b = theta.shape[0], x.shape[-2]
        fetch, put = self._on(theta.device)[:2]
        ends, rows = self._constant_parts(B, b, theta)
        gathered = torch.cat([theta, ends], 1).index_select(1, fetch)
        N = gathered.shape[1]
        G = [gathered.as_strided((B, R, K), (N, K, 1), at) for _, _, R, K, at, _ in self.grad_layout]
        # Forward: [h_l; 1] = relu(G_l [h_{l−1}; 1]) (relu(1) = 1), [h_0; 0; 1] first; masks [m_l; 1].
        stacks = [self._first(x, B, rows)]
        for Gl in G[:-1]:
            stacks.append(torch.bmm(Gl, stacks[-1]).relu_())
        masks = [h.sign() for h in stacks[1:]]
        z = torch.bmm(G[-1], stacks[-1])
        t = self._targets(z, y)
        delta, _ = self._delta(z, t, y.is_floating_point())
        # Backward: Q_l = [δ_l; ·] [h_{l−1}; 1]ᵀ holds [δ_l h_{l−1}ᵀ, Σ δ_l]; [δ_{l−1}; ·] = [m; 1] ⊙ G_lᵀ [δ_l; ·]
        # (the last row any finite: G_l's is [0, 1]).
        Q = []
        for l in reversed(range(len(G))):
            Q.append((_mm(stacks[l], delta.mT) if self.grad_layout[l][5] else _mm(delta, stacks[l].mT)).flatten(1))
            if l:
                delta = _mm(G[l].mT, delta).mul_(masks[l - 1])
        return z, t, torch.cat(Q[::-1], 1).index_select(1, put)

    def _reverse(self, theta: Tensor, x: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        if self._blocks(x):
            return self._block_reverse(theta, x, y, w)
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
        a, dy = self._curvature(fwd.logits, zdot, t, p, soft)
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
        return torch.cat(grads[::-1], dim=1), torch.cat(hvp[::-1], dim=1), *self._terms(a, x, y, dy)

    @staticmethod
    def _curvature(z: Tensor, zdot: Tensor, t: Tensor, p: Tensor, soft: bool) -> tuple[Tensor, Tensor | None]:
        """(a_L = (∂²l/∂z²) ż [B, C, b], (∂δ_L/∂y)ᵀ ż for soft labels, else None)."""
        b = z.shape[-1]
        if z.shape[1] == 1:                 # ∂²l/∂z² = σ(1 − σ)/b
            return (p * (1 - p)).mul_(zdot).div_(b), -zdot.squeeze(1) / b if soft else None
        pz = (p * zdot).sum(1, keepdim=True)    # (Σ_c t_c)(diag p − p pᵀ) ż / b
        a = p * (zdot - pz) / b
        return (a * t.sum(-2, keepdim=True), ((pz - zdot) / b).mT) if soft else (a, None)

    @staticmethod
    def _terms(a0: Tensor, x: Tensor, y: Tensor, dy: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """((∂g/∂x)ᵀw from a_0 = W_1ᵀ a_1 + Ẇ_1ᵀ δ_1 [B, in, b], (∂g/∂y)ᵀw): a shared batch collects every model's term."""
        dx = a0.sum(0).t() if x.dim() == 2 else a0.mT
        return dx, dy.sum(0) if dy is not None and dy.dim() > y.dim() else dy

    def _block_reverse(self, theta: Tensor, x: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """:meth:`_reverse` in the gathered blocks."""
        (B, P), b = theta.shape, x.shape[-2]
        fetch, put = self._on(theta.device)[2:]
        ends, rows = self._constant_parts(B, b, theta)
        pairs = torch.cat([theta, w, ends], 1).index_select(1, fetch)
        F = [pairs.as_strided((B, 2 * o + 1, 2 * i + 1), (pairs.shape[1], 2 * i + 1, 1), at) for o, i, at, _ in self.pair_layout]
        # Forward: [z; ż; 1]_l = F_l [h; ḣ; 1]_{l−1}, [h_0; 0; 1] first.
        stacks, masks = [self._first(x, B, rows)], []
        for (o, *_), Fl in zip(self.pair_layout[:-1], F):
            H = torch.bmm(Fl, stacks[-1])
            masks.append(H.narrow(1, 0, o).relu_().sign())
            H.narrow(1, o, o).mul_(masks[-1])
            stacks.append(H)
        C = self.pair_layout[-1][0]
        Y = torch.bmm(F[-1], stacks[-1])
        z, zdot = Y.narrow(1, 0, C), Y.narrow(1, C, C)
        t = self._targets(z, y)
        soft = y.is_floating_point()
        delta, p = self._delta(z, t, soft)
        a, dy = self._curvature(z, zdot, t, p, soft)
        # Backward: [a; δ; ·]_{l−1} = m ⊙ F_lᵀ [a; δ; ·]_l (the last row any finite: F_l's is [0, 0, 1]),
        # Q_l = [a; δ; ·]_l [h; ḣ; 1]_{l−1}ᵀ.
        S, Q = torch.cat([a, delta, delta if C == 1 else delta.narrow(1, 0, 1)], 1), []
        for l in reversed(range(len(F))):
            Q.append((_mm(stacks[l], S.mT) if self.pair_layout[l][3] else _mm(S, stacks[l].mT)).flatten(1))
            S = torch.bmm(F[l].mT, S)
            if l:
                i = self.pair_layout[l][1]
                S.narrow(1, 0, 2 * i).view(B, 2, i, b).mul_(masks[l - 1].unsqueeze(1))
        g, hw, hw2 = torch.cat(Q[::-1], 1).index_select(1, put).view(B, 3, P).unbind(1)
        return g.contiguous(), hw + hw2, *self._terms(S.narrow(1, 0, self.layers[0][1]), x, y, dy)
