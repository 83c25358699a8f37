// A whole inner step of momentum SGD with the fused MLP step, forward or reversed, in one op:
//
//   memdistill::mlp_sgd_advance(θ_k, v_k?, x, y, η_k, γ, sizes) -> (θ_{k+1}, v_{k+1})
//   memdistill::mlp_sgd_reverse(θ_k, v_k?, x, y, η_k, γ, dθ, dv?, sizes)
//       -> (∂L/∂θ_k, ∂L/∂v_k (undefined without v), ∂L/∂η_k, (∂g/∂x)ᵀw, (∂g/∂y)ᵀw)
//
// The equations of memdistill/engine/dynamics.py (sgd_update, reverse_step), with η_k 0-d or
// [B, 1] (one rate per model), the step's products from mlp_value_and_grad / mlp_reverse:
//
//   v_{k+1} = γ v_k + g_k (g_k without v), θ_{k+1} = θ_k − η_k v_{k+1};
//   w = dv − η_k dθ (−η_k dθ), ∂L/∂η_k = −⟨dθ, v_{k+1}⟩, ∂L/∂θ_k = dθ + H_k w, ∂L/∂v_k = γ w.
//
// Why: at the paper's sizes a step's ten or so small elementwise tensor ops cost as much as its
// kernel (a few µs of dispatch each). On the CPU they are plain loops here; every product and
// sum is rounded on its own (one loop per operation: no fused multiply-add), so θ, v and the
// adjoints are the bits of the per-op composition. ∂L/∂η_k sums in a fixed order per model (in
// double for float32): not the bits of torch's sum, the same for a model alone or in a batch.
// Elsewhere (CUDA) the composition of ATen ops below runs instead.
#include "mlp_step.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <type_traits>

namespace memdistill {
namespace {

using Pair = std::tuple<at::Tensor, at::Tensor>;
using Four = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Five = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using Opt = std::optional<at::Tensor>;

Pair value_and_grad(const at::Tensor& theta, const at::Tensor& x, const at::Tensor& y, c10::IntArrayRef sizes) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("memdistill::mlp_value_and_grad", "")
                       .typed<Pair(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::IntArrayRef)>();
  return op.call(theta, x, y, sizes);
}

Four reverse(const at::Tensor& theta, const at::Tensor& x, const at::Tensor& y, const at::Tensor& w,
             c10::IntArrayRef sizes) {
  static auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("memdistill::mlp_reverse", "")
          .typed<Four(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::IntArrayRef)>();
  return op.call(theta, x, y, w, sizes);
}

bool given(const Opt& t) { return t.has_value() && t->defined(); }

void check(const char* op, const at::Tensor& theta, const Opt& v, const at::Tensor& lr, const at::Tensor* adj,
           const Opt& adj_v) {
  TORCH_CHECK(theta.dim() == 2, op, ": theta must be [B, P], got shape ", theta.sizes());
  const int64_t B = theta.size(0);
  TORCH_CHECK(lr.dim() == 0 || lr.sizes() == c10::IntArrayRef({B, 1}), op, ": lr must be 0-d or [", B,
              ", 1], got shape ", lr.sizes());
  for (const at::Tensor* t : {&lr, given(v) ? &*v : nullptr, adj, given(adj_v) ? &*adj_v : nullptr}) {
    if (!t) continue;
    TORCH_CHECK(t->scalar_type() == theta.scalar_type() && t->device() == theta.device(), op,
                ": v, lr and the adjoints must have theta's dtype and device");
    TORCH_CHECK(t == &lr || t->sizes() == theta.sizes(), op, ": v and the adjoints must have theta's shape ",
                theta.sizes(), ", got ", t->sizes());
  }
  if (adj) TORCH_CHECK(given(v) == given(adj_v), op, ": v and adj_v must be given together");
}

// ---- CPU: one loop per rounded operation over B rows of P entries ----

// out = a · s_j (s_j the row's rate, or the one rate).
template <typename T>
void scale(const T* a, const T* s, bool per_row, int64_t B, int64_t P, T* out) {
  for (int64_t j = 0; j < B; ++j) {
    const T r = s[per_row ? j : 0];
    for (int64_t i = j * P; i < (j + 1) * P; ++i) out[i] = a[i] * r;
  }
}

template <typename T>
void add(const T* a, const T* b, int64_t n, T* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <typename T>
void sub(const T* a, const T* b, int64_t n, T* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] - b[i];
}

template <typename T>
void negate(int64_t n, T* a) {
  for (int64_t i = 0; i < n; ++i) a[i] = -a[i];
}

// v_{k+1} = γ v_k + g (the product rounded first, as at::mul then at::add), written over g.
template <typename T>
void velocity(const T* v, T momentum, int64_t n, T* scratch, T* g) {
  scale(v, &momentum, false, 1, n, scratch);
  add(scratch, g, n, g);
}

Pair mlp_sgd_advance_cpu(const at::Tensor& theta, const Opt& v, const at::Tensor& x, const at::Tensor& y,
                         const at::Tensor& lr, double momentum, c10::IntArrayRef sizes) {
  check("memdistill::mlp_sgd_advance", theta, v, lr, nullptr, Opt());
  const at::Tensor th = theta.contiguous();
  at::Tensor g = mlp_grad_cpu(th, x.contiguous(), y.contiguous(), sizes);  // becomes v_{k+1}
  at::Tensor next = at::empty_like(th);
  AT_DISPATCH_FLOATING_TYPES(th.scalar_type(), "mlp_sgd_advance_cpu", [&] {
    const int64_t B = th.size(0), P = th.size(1), n = B * P;
    scalar_t* vn = g.mutable_data_ptr<scalar_t>();
    scalar_t* out = next.mutable_data_ptr<scalar_t>();
    if (given(v)) velocity(v->contiguous().const_data_ptr<scalar_t>(), static_cast<scalar_t>(momentum), n, out, vn);
    const at::Tensor rate = lr.contiguous();
    scale(vn, rate.const_data_ptr<scalar_t>(), lr.dim() == 2, B, P, out);   // η v_{k+1}
    sub(th.const_data_ptr<scalar_t>(), out, n, out);                        // θ − η v_{k+1}
  });
  return {next, g};
}

Five mlp_sgd_reverse_cpu(const at::Tensor& theta, const Opt& v, const at::Tensor& x, const at::Tensor& y,
                         const at::Tensor& lr, double momentum, const at::Tensor& adj_theta, const Opt& adj_v,
                         c10::IntArrayRef sizes) {
  check("memdistill::mlp_sgd_reverse", theta, v, lr, &adj_theta, adj_v);
  const at::Tensor dth = adj_theta.contiguous(), rate = lr.contiguous();
  at::Tensor w = at::empty_like(dth), grad_lr = at::empty_like(rate);
  const int64_t B = dth.size(0), P = dth.size(1), n = B * P;
  AT_DISPATCH_FLOATING_TYPES(dth.scalar_type(), "mlp_sgd_reverse_cpu_w", [&] {
    scalar_t* out = w.mutable_data_ptr<scalar_t>();
    scale(dth.const_data_ptr<scalar_t>(), rate.const_data_ptr<scalar_t>(), lr.dim() == 2, B, P, out);   // η dθ
    if (given(adj_v)) sub(adj_v->contiguous().const_data_ptr<scalar_t>(), out, n, out);   // dv − η dθ
    else negate(n, out);   // −(η dθ), the bits of (−η) dθ
  });
  auto [g, hw, dx, dy] = reverse(theta.contiguous(), x.contiguous(), y.contiguous(), w, sizes);
  at::Tensor adj_prev = at::empty_like(dth), adj_v_prev;
  AT_DISPATCH_FLOATING_TYPES(dth.scalar_type(), "mlp_sgd_reverse_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, float>, double, scalar_t>;
    scalar_t* vn = g.mutable_data_ptr<scalar_t>();   // becomes v_{k+1}
    const scalar_t* a = dth.const_data_ptr<scalar_t>();
    if (given(v))
      velocity(v->contiguous().const_data_ptr<scalar_t>(), static_cast<scalar_t>(momentum), n,
               adj_prev.mutable_data_ptr<scalar_t>(), vn);
    scalar_t* dl = grad_lr.mutable_data_ptr<scalar_t>();
    acc_t total = 0;
    for (int64_t j = 0; j < B; ++j) {   // −⟨dθ, v_{k+1}⟩ per model, then over models for one rate
      acc_t row = 0;
      for (int64_t i = j * P; i < (j + 1) * P; ++i) row += static_cast<acc_t>(a[i] * vn[i]);
      if (lr.dim() == 2) dl[j] = static_cast<scalar_t>(-row);
      total += row;
    }
    if (lr.dim() == 0) dl[0] = static_cast<scalar_t>(-total);
    add(a, hw.const_data_ptr<scalar_t>(), n, adj_prev.mutable_data_ptr<scalar_t>());   // dθ + H w
    if (given(v)) {   // γ w
      adj_v_prev = at::empty_like(dth);
      const scalar_t gamma = static_cast<scalar_t>(momentum);
      scale(w.const_data_ptr<scalar_t>(), &gamma, false, 1, n, adj_v_prev.mutable_data_ptr<scalar_t>());
    }
  });
  return {adj_prev, adj_v_prev, grad_lr, dx, dy};
}

// ---- elsewhere: the same equations as ATen ops ----

at::Tensor velocity_op(const Opt& v, const at::Tensor& g, double momentum) {
  return given(v) ? at::add(at::mul(*v, momentum), g) : g;
}

Pair mlp_sgd_advance_any(const at::Tensor& theta, const Opt& v, const at::Tensor& x, const at::Tensor& y,
                         const at::Tensor& lr, double momentum, c10::IntArrayRef sizes) {
  check("memdistill::mlp_sgd_advance", theta, v, lr, nullptr, Opt());
  at::Tensor g = std::get<1>(value_and_grad(theta.contiguous(), x.contiguous(), y.contiguous(), sizes));
  at::Tensor v_next = velocity_op(v, g, momentum);
  return {at::sub(theta, at::mul(lr, v_next)), v_next};
}

Five mlp_sgd_reverse_any(const at::Tensor& theta, const Opt& v, const at::Tensor& x, const at::Tensor& y,
                         const at::Tensor& lr, double momentum, const at::Tensor& adj_theta, const Opt& adj_v,
                         c10::IntArrayRef sizes) {
  check("memdistill::mlp_sgd_reverse", theta, v, lr, &adj_theta, adj_v);
  at::Tensor w = given(adj_v) ? at::sub(*adj_v, at::mul(lr, adj_theta)) : at::mul(at::neg(lr), adj_theta);
  auto [g, hw, dx, dy] = reverse(theta.contiguous(), x.contiguous(), y.contiguous(), w.contiguous(), sizes);
  at::Tensor v_next = velocity_op(v, g, momentum);
  at::Tensor grad_lr = at::mul(adj_theta, v_next).sum_to_size(lr.sizes()).neg_();
  return {at::add(adj_theta, hw), given(v) ? at::mul(w, momentum) : at::Tensor(), grad_lr, dx, dy};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(memdistill, m) {
  m.def("mlp_sgd_advance(Tensor theta, Tensor? v, Tensor x, Tensor y, Tensor lr, float momentum, int[] sizes) "
        "-> (Tensor, Tensor)");
  m.def("mlp_sgd_reverse(Tensor theta, Tensor? v, Tensor x, Tensor y, Tensor lr, float momentum, "
        "Tensor adj_theta, Tensor? adj_v, int[] sizes) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

// Forward-only like the step's ops: their outputs are constants for autograd.
TORCH_LIBRARY_IMPL(memdistill, Autograd, m) {
  m.impl("mlp_sgd_advance", torch::CppFunction::makeFallthrough());
  m.impl("mlp_sgd_reverse", torch::CppFunction::makeFallthrough());
}

TORCH_LIBRARY_IMPL(memdistill, CPU, m) {
  m.impl("mlp_sgd_advance", &mlp_sgd_advance_cpu);
  m.impl("mlp_sgd_reverse", &mlp_sgd_reverse_cpu);
}

TORCH_LIBRARY_IMPL(memdistill, CompositeExplicitAutograd, m) {
  m.impl("mlp_sgd_advance", &mlp_sgd_advance_any);
  m.impl("mlp_sgd_reverse", &mlp_sgd_reverse_any);
}

}  // namespace memdistill
