// CUDA kernels of memdistill::mlp_value_and_grad and memdistill::mlp_reverse (schemas and input
// checks in ../mlp_step.cpp). The layers are batched ATen matmuls over the B models, as in
// memdistill/fused.py; the loss head and its reverse products run in one __global__ kernel,
// a thread per (model, sample) row, sharing head_forward / head_reverse with the CPU kernels.
#include "../mlp_step.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

namespace memdistill {
namespace {

constexpr int kThreads = 128;

// Row r = j b + s of the [B, b, C] logits: loss_rows[r] = l / b, p, δ and, when zdot is not null,
// a = (∂²l/∂z²) ż and (for float targets) dy. Targets of row r: y row s when y is shared, else r.
template <typename T>
__global__ void head_kernel(const T* z, const T* zdot, const int64_t* label, const T* t, int64_t rows,
                            int64_t b, int64_t C, bool y_shared, T inv_b, T* loss_rows, T* p, T* delta, T* a,
                            T* dy) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows) return;
  const int64_t yr = y_shared ? r % b : r;
  const int64_t k = label ? label[yr] : 0;
  CUDA_KERNEL_ASSERT(C == 1 || (k >= 0 && k < C));  // class id in [0, C)
  const T* tr = t ? t + yr * C : nullptr;
  loss_rows[r] = head_forward(z + r * C, C, k, tr, inv_b, p + r * C, delta + r * C);
  if (zdot) head_reverse(p + r * C, zdot + r * C, C, tr, inv_b, a + r * C, dy ? dy + r * C : nullptr);
}

struct Head {
  at::Tensor loss, p, delta, a, dy;  // loss [B]; p, δ, a, dy [B, b, C] (a, dy only reversing)
};

// Launches head_kernel on logits z [B, b, C] (and tangents zdot for the reverse products).
Head run_head(const MlpProblem& pr, const at::Tensor& z, const at::Tensor& zdot, const at::Tensor& y) {
  const int64_t rows = pr.B * pr.b;
  at::Tensor loss_rows = at::empty({pr.B, pr.b}, z.options());
  Head out{at::Tensor(), at::empty_like(z), at::empty_like(z), at::Tensor(), at::Tensor()};
  const bool reverse = zdot.defined();
  if (reverse) {
    out.a = at::empty_like(z);
    if (!pr.y_int) out.dy = at::empty_like(z);
  }
  const int blocks = static_cast<int>((rows + kThreads - 1) / kThreads);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "mlp_head_cuda", [&] {
    if (rows > 0)
      head_kernel<scalar_t><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          z.const_data_ptr<scalar_t>(), reverse ? zdot.const_data_ptr<scalar_t>() : nullptr,
          pr.y_int ? y.const_data_ptr<int64_t>() : nullptr, pr.y_int ? nullptr : y.const_data_ptr<scalar_t>(),
          rows, pr.b, pr.C, pr.y_shared, scalar_t(1) / static_cast<scalar_t>(pr.b),
          loss_rows.mutable_data_ptr<scalar_t>(), out.p.mutable_data_ptr<scalar_t>(),
          out.delta.mutable_data_ptr<scalar_t>(), reverse ? out.a.mutable_data_ptr<scalar_t>() : nullptr,
          out.dy.defined() ? out.dy.mutable_data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  out.loss = loss_rows.sum(1);
  return out;
}

// Views of θ [B, P] (or of a direction w): W_l [B, n_l, n_{l−1}] and b_l [B, n_l], l = 1..L.
std::vector<std::pair<at::Tensor, at::Tensor>> layers(const at::Tensor& theta, const MlpProblem& pr) {
  std::vector<std::pair<at::Tensor, at::Tensor>> out;
  for (int64_t l = 1; l <= pr.L; ++l)
    out.emplace_back(theta.narrow(1, pr.w_off[l - 1], pr.n[l] * pr.n[l - 1]).view({pr.B, pr.n[l], pr.n[l - 1]}),
                     theta.narrow(1, pr.b_off[l - 1], pr.n[l]));
  return out;
}

// h_0 = x (expanded to [B, b, in]), h_l = relu(h_{l−1} W_lᵀ + b_l); returns h_0 .. h_{L−1} and z_L.
std::pair<std::vector<at::Tensor>, at::Tensor> forward(const std::vector<std::pair<at::Tensor, at::Tensor>>& params,
                                                       const at::Tensor& x, const MlpProblem& pr) {
  std::vector<at::Tensor> h{pr.x_shared ? x.expand({pr.B, pr.b, pr.n[0]}) : x};
  for (int64_t l = 0; l + 1 < pr.L; ++l)
    h.push_back(at::baddbmm(params[l].second.unsqueeze(1), h[l], params[l].first.transpose(1, 2)).clamp_min(0));
  at::Tensor z = at::baddbmm(params[pr.L - 1].second.unsqueeze(1), h[pr.L - 1], params[pr.L - 1].first.transpose(1, 2));
  return {h, z};
}

// v ⊙ [h > 0] (h = relu(z), so h > 0 ⇔ z > 0).
at::Tensor masked(const at::Tensor& v, const at::Tensor& h) { return v.masked_fill(h.le(0), 0); }

// [W_1, b_1, ..., W_L, b_L] flattened per model into [B, P].
at::Tensor flat(const std::vector<at::Tensor>& last_first) {
  std::vector<at::Tensor> pieces;
  for (auto it = last_first.rbegin(); it != last_first.rend(); ++it) pieces.push_back(it->flatten(1));
  return at::cat(pieces, 1);
}

std::tuple<at::Tensor, at::Tensor> mlp_value_and_grad_cuda(const at::Tensor& theta, const at::Tensor& x,
                                                           const at::Tensor& y, c10::IntArrayRef sizes) {
  const MlpProblem pr = check_mlp_inputs("memdistill::mlp_value_and_grad", theta, x, y, nullptr, sizes);
  const c10::cuda::CUDAGuard guard(theta.device());
  const auto params = layers(theta, pr);
  const auto [h, z] = forward(params, x, pr);
  const Head head = run_head(pr, z, at::Tensor(), y);
  // g_{W_l} = δ_lᵀ h_{l−1}, g_{b_l} = Σ δ_l, δ_{l−1} = [h_{l−1} > 0] ⊙ δ_l W_l.
  std::vector<at::Tensor> grads;  // b_L, W_L, ..., b_1, W_1
  at::Tensor delta = head.delta;
  for (int64_t l = pr.L; l >= 1; --l) {
    grads.push_back(delta.sum(1));
    grads.push_back(at::bmm(delta.transpose(1, 2), h[l - 1]));
    if (l > 1) delta = masked(at::bmm(delta, params[l - 1].first), h[l - 1]);
  }
  return {head.loss, flat(grads)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlp_reverse_cuda(const at::Tensor& theta,
                                                                            const at::Tensor& x,
                                                                            const at::Tensor& y,
                                                                            const at::Tensor& w,
                                                                            c10::IntArrayRef sizes) {
  const MlpProblem pr = check_mlp_inputs("memdistill::mlp_reverse", theta, x, y, &w, sizes);
  const c10::cuda::CUDAGuard guard(theta.device());
  const auto params = layers(theta, pr), dirs = layers(w, pr);
  const auto [h, z] = forward(params, x, pr);
  // Tangents ż_l = ḃ_l + h_{l−1} Ẇ_lᵀ + ḣ_{l−1} W_lᵀ, ḣ_l = [z_l > 0] ⊙ ż_l (ḣ_0 = 0).
  std::vector<at::Tensor> hdot{at::Tensor()};
  at::Tensor zdot;
  for (int64_t l = 1; l <= pr.L; ++l) {
    zdot = at::baddbmm(dirs[l - 1].second.unsqueeze(1), h[l - 1], dirs[l - 1].first.transpose(1, 2));
    if (l > 1) zdot = at::baddbmm(zdot, hdot[l - 1], params[l - 1].first.transpose(1, 2));
    if (l < pr.L) hdot.push_back(masked(zdot, h[l]));
  }
  const Head head = run_head(pr, z, zdot, y);
  // δ_{l−1} = m ⊙ δ_l W_l, a_{l−1} = m ⊙ (a_l W_l + δ_l Ẇ_l), Hw_{W_l} = a_lᵀ h_{l−1} + δ_lᵀ ḣ_{l−1},
  // Hw_{b_l} = Σ a_l, dx = a_1 W_1 + δ_1 Ẇ_1 (summed over models when x is shared).
  std::vector<at::Tensor> grads, hvp;
  at::Tensor delta = head.delta, a = head.a;
  for (int64_t l = pr.L; l >= 1; --l) {
    const at::Tensor& W = params[l - 1].first;
    const at::Tensor& Wd = dirs[l - 1].first;
    grads.push_back(delta.sum(1));
    grads.push_back(at::bmm(delta.transpose(1, 2), h[l - 1]));
    at::Tensor hW = at::bmm(a.transpose(1, 2), h[l - 1]);
    if (l > 1) hW = at::baddbmm(hW, delta.transpose(1, 2), hdot[l - 1]);
    hvp.push_back(a.sum(1));
    hvp.push_back(hW);
    at::Tensor a_next = at::baddbmm(at::bmm(a, W), delta, Wd);
    if (l > 1) {
      a = masked(a_next, h[l - 1]);
      delta = masked(at::bmm(delta, W), h[l - 1]);
    } else {
      a = a_next;
    }
  }
  at::Tensor dx = pr.x_shared ? a.sum(0) : a;
  at::Tensor dy = at::empty({0}, theta.options());
  if (!pr.y_int) dy = (pr.y_shared ? head.dy.sum(0) : head.dy).view(y.sizes());
  return {flat(grads), flat(hvp), dx, dy};
}

}  // namespace

TORCH_LIBRARY_IMPL(memdistill, CUDA, m) {
  m.impl("mlp_value_and_grad", &mlp_value_and_grad_cuda);
  m.impl("mlp_reverse", &mlp_reverse_cuda);
}

}  // namespace memdistill
