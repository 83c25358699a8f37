// Shared by the CPU (mlp_step.cpp) and CUDA (cuda/mlp_step.cu) kernels of the fused MLP step:
// the problem description that input validation produces, and the loss head (BCE / soft
// cross-entropy) of one (model, sample) row, callable from host and device code.
//
// Notation (memdistill/fused.py): B models of sizes n_0 = in, n_1, ..., n_L = C; θ [B, P] holds
// per layer l = 1..L the row-major W_l [n_l, n_{l-1}] then b_l [n_l]; batch size b.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

#include <cmath>
#include <cstdint>
#include <vector>

#ifdef __CUDACC__
#define MD_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define MD_HOST_DEVICE inline
#endif

namespace memdistill {

// Shapes and layout of one validated call.
struct MlpProblem {
  std::vector<int64_t> n;      // n_0 ... n_L
  std::vector<int64_t> w_off;  // offset of W_l in a row of θ, l = 1..L stored at [l - 1]
  std::vector<int64_t> b_off;  // offset of b_l
  int64_t L, P, B, b, C;
  bool x_shared;               // x [b, in] (all models) rather than [B, b, in]
  bool y_shared;               // y [b] / [b, C] rather than [B, b] / [B, b, C]
  bool y_int;                  // int64 class ids rather than float targets
};

// TORCH_CHECKs every argument of `op` (w is null for mlp_value_and_grad) and returns the problem.
MlpProblem check_mlp_inputs(const char* op, const at::Tensor& theta, const at::Tensor& x,
                            const at::Tensor& y, const at::Tensor* w, c10::IntArrayRef sizes);

// The CPU kernel's gradient alone, g = ∇θ l [B, P] (no loss: for mlp_sgd_advance, csrc/sgd_step.cpp).
at::Tensor mlp_grad_cpu(const at::Tensor& theta, const at::Tensor& x, const at::Tensor& y, c10::IntArrayRef sizes);

MD_HOST_DEVICE float md_exp(float v) { return expf(v); }
MD_HOST_DEVICE double md_exp(double v) { return exp(v); }
MD_HOST_DEVICE float md_log(float v) { return logf(v); }
MD_HOST_DEVICE double md_log(double v) { return log(v); }
MD_HOST_DEVICE float md_log1p(float v) { return log1pf(v); }
MD_HOST_DEVICE double md_log1p(double v) { return log1p(v); }

// Loss head of one row with logits z[C] and target class id `label` (t == nullptr) or float
// targets t[C]; inv_b = 1/b. Writes p[C] and δ[C] = ∂l/∂z, returns the row's loss / b (0 when
// not `with_loss`: a gradient or reverse product alone skips the BCE's log).
//   C = 1 (BCE, target τ = t[0] or label): l = max(z,0) − zτ + log(1 + e^{−|z|}), p = σ(z),
//          δ = (p − τ)/b.
//   C > 1 (cross-entropy): p = softmax(z), l = −Σ_c t_c log p_c, δ = (p Σ_c t_c − t)/b
//          (t one-hot for class ids).
template <typename T>
MD_HOST_DEVICE T head_forward(const T* z, int64_t C, int64_t label, const T* t, T inv_b, T* p,
                              T* delta, bool with_loss = true) {
  if (C == 1) {
    const T v = z[0], tau = t ? t[0] : static_cast<T>(label);
    const T e = md_exp(v >= 0 ? -v : v);  // e^{−|z|}
    p[0] = v >= 0 ? 1 / (1 + e) : e / (1 + e);
    delta[0] = (p[0] - tau) * inv_b;
    return with_loss ? ((v > 0 ? v : 0) - v * tau + md_log1p(e)) * inv_b : T(0);
  }
  T m = z[0];
  for (int64_t c = 1; c < C; ++c) m = z[c] > m ? z[c] : m;
  T s = 0;
  for (int64_t c = 0; c < C; ++c) s += md_exp(z[c] - m);
  const T lse = m + md_log(s);
  T loss = 0, t_sum = 1;
  if (t) {
    t_sum = 0;
    for (int64_t c = 0; c < C; ++c) {
      t_sum += t[c];
      loss -= t[c] * (z[c] - lse);
    }
  } else {
    loss = lse - z[label];
  }
  for (int64_t c = 0; c < C; ++c) {
    p[c] = md_exp(z[c] - lse);
    delta[c] = (p[c] * t_sum - (t ? t[c] : static_cast<T>(c == label))) * inv_b;
  }
  return loss * inv_b;
}

// Reverse products of the head along the logit tangent ż[C] (p from head_forward):
// a = (∂²l/∂z²) ż and, when dy is not null, dy = (∂δ/∂t)ᵀ ż.
//   C = 1: a = p(1 − p) ż / b, dy = −ż / b.
//   C > 1: a = (Σ_c t_c) p ⊙ (ż − ⟨p, ż⟩) / b, dy = (⟨p, ż⟩ − ż) / b.
template <typename T>
MD_HOST_DEVICE void head_reverse(const T* p, const T* zdot, int64_t C, const T* t, T inv_b, T* a,
                                 T* dy) {
  if (C == 1) {
    a[0] = p[0] * (1 - p[0]) * zdot[0] * inv_b;
    if (dy) dy[0] = -zdot[0] * inv_b;
    return;
  }
  T pz = 0, t_sum = 1;
  for (int64_t c = 0; c < C; ++c) pz += p[c] * zdot[c];
  if (t) {
    t_sum = 0;
    for (int64_t c = 0; c < C; ++c) t_sum += t[c];
  }
  for (int64_t c = 0; c < C; ++c) {
    a[c] = t_sum * p[c] * (zdot[c] - pz) * inv_b;
    if (dy) dy[c] = (pz - zdot[c]) * inv_b;
  }
}

}  // namespace memdistill
