// The fused MLP step as torch custom ops (schemas, input checks, CPU kernels).
//
//   memdistill::mlp_value_and_grad(θ, x, y, sizes) -> (l_j [B], g = ∇θ l [B, P])
//   memdistill::mlp_reverse(θ, x, y, w, sizes)     -> (g, Hw [B, P], dx (shape of x),
//                                                      dy (shape of y; [0] for class ids))
//
// Same contract and equations as memdistill/fused.py (FusedMLPStep). The CPU kernels remove
// the per-op dispatch overhead that dominates for tiny MLPs: hand loops run SIMD lanes of
// models through the whole step, and at::parallel_for spreads the groups of lanes.
#include "mlp_step.h"

#include <ATen/Dispatch.h>
#include <ATen/Functions.h>
#include <ATen/Parallel.h>
#include <Python.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

namespace memdistill {

MlpProblem check_mlp_inputs(const char* op, const at::Tensor& theta, const at::Tensor& x,
                            const at::Tensor& y, const at::Tensor* w, c10::IntArrayRef sizes) {
  TORCH_CHECK(sizes.size() >= 2, op, ": sizes must be [in, h1, ..., out] with at least two entries, got ",
              sizes);
  for (int64_t v : sizes) TORCH_CHECK(v >= 1, op, ": sizes must be positive, got ", sizes);
  MlpProblem pr;
  pr.n = sizes.vec();
  pr.L = static_cast<int64_t>(sizes.size()) - 1;
  pr.P = 0;
  for (int64_t l = 1; l <= pr.L; ++l) {
    pr.w_off.push_back(pr.P);
    pr.b_off.push_back(pr.P + pr.n[l] * pr.n[l - 1]);
    pr.P += (pr.n[l - 1] + 1) * pr.n[l];
  }
  pr.C = pr.n[pr.L];
  const int64_t in = pr.n[0];

  TORCH_CHECK(theta.scalar_type() == at::kFloat || theta.scalar_type() == at::kDouble, op,
              ": theta must be float32 or float64, got ", theta.scalar_type());
  TORCH_CHECK(theta.dim() == 2 && theta.size(1) == pr.P, op, ": theta must be [B, P] with P = ", pr.P,
              " for sizes ", sizes, ", got shape ", theta.sizes());
  pr.B = theta.size(0);
  auto common = [&](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device() == theta.device(), op, ": ", name, " must be on theta's device ", theta.device(),
                ", got ", t.device());
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous (call .contiguous())");
  };
  common(theta, "theta");
  common(x, "x");
  common(y, "y");
  TORCH_CHECK(x.scalar_type() == theta.scalar_type(), op, ": x must have theta's dtype ", theta.scalar_type(),
              ", got ", x.scalar_type());
  pr.x_shared = x.dim() == 2;
  TORCH_CHECK((pr.x_shared && x.size(1) == in) || (x.dim() == 3 && x.size(0) == pr.B && x.size(2) == in), op,
              ": x must be [b, ", in, "] (shared) or [", pr.B, ", b, ", in, "] (one batch per model), got shape ",
              x.sizes());
  pr.b = x.size(-2);
  TORCH_CHECK(pr.b >= 1, op, ": x must hold at least one sample, got shape ", x.sizes());

  pr.y_int = y.scalar_type() == at::kLong;
  TORCH_CHECK(pr.y_int || y.scalar_type() == theta.scalar_type(), op,
              ": y must be int64 class ids or float targets of theta's dtype ", theta.scalar_type(), ", got ",
              y.scalar_type());
  // Sample shape: [b] for ids and single-output targets, [b, C] for soft labels.
  std::vector<int64_t> row{pr.b};
  if (!pr.y_int && pr.C > 1) row.push_back(pr.C);
  std::vector<int64_t> per_model{pr.B};
  per_model.insert(per_model.end(), row.begin(), row.end());
  pr.y_shared = y.sizes() == c10::IntArrayRef(row);
  TORCH_CHECK(pr.y_shared || y.sizes() == c10::IntArrayRef(per_model), op, ": y must be ", c10::IntArrayRef(row),
              " (shared) or ", c10::IntArrayRef(per_model), " (one batch per model) for ",
              pr.y_int ? "class ids" : "float targets", " with ", pr.C, " output(s), got shape ", y.sizes());

  if (w) {
    common(*w, "w");
    TORCH_CHECK(w->scalar_type() == theta.scalar_type() && w->sizes() == theta.sizes(), op,
                ": w must have theta's shape ", theta.sizes(), " and dtype ", theta.scalar_type(), ", got ",
                w->sizes(), " ", w->scalar_type());
  }
  return pr;
}

namespace {

// The CPU kernels run M models at once, one per SIMD lane: a group's buffers are lane-major
// (entry k of lane m at [k * M + m]), so every loop below ends in M independent multiply-adds
// that the compiler vectorises. A group past the last model repeats it and drops the copies.
template <typename T>
constexpr int kLanes = 32 / sizeof(T);  // 8 floats, 4 doubles

// out[s, o] = bias[o] + Σ_i in[s, i] W[o, i]; without bias, out += in Wᵀ.
template <typename T, int M>
void affine(const T* __restrict in, const T* __restrict W, const T* __restrict bias, int64_t b, int64_t ni,
            int64_t no, T* __restrict out) {
  for (int64_t s = 0; s < b; ++s) {
    const T* x = in + s * ni * M;
    for (int64_t o = 0; o < no; ++o) {
      T* y = out + (s * no + o) * M;
      const T* w = W + o * ni * M;
      T acc[M];
      for (int m = 0; m < M; ++m) acc[m] = bias ? bias[o * M + m] : y[m];
      for (int64_t i = 0; i < ni; ++i)
        for (int m = 0; m < M; ++m) acc[m] += w[i * M + m] * x[i * M + m];
      for (int m = 0; m < M; ++m) y[m] = acc[m];
    }
  }
}

// out[s, i] (+)= Σ_o d[s, o] W[o, i]: the backward of `affine` with respect to its input.
template <typename T, int M>
void matmul(const T* __restrict d, const T* __restrict W, int64_t b, int64_t no, int64_t ni, bool accumulate,
            T* __restrict out) {
  for (int64_t s = 0; s < b; ++s) {
    for (int64_t i = 0; i < ni; ++i) {
      T* y = out + (s * ni + i) * M;
      T acc[M];
      for (int m = 0; m < M; ++m) acc[m] = accumulate ? y[m] : T(0);
      for (int64_t o = 0; o < no; ++o)
        for (int m = 0; m < M; ++m) acc[m] += d[(s * no + o) * M + m] * W[(o * ni + i) * M + m];
      for (int m = 0; m < M; ++m) y[m] = acc[m];
    }
  }
}

// gW (+)= dᵀ h [no, ni] and, when gb is not null, gb = Σ_s d[s, ·] [no].
template <typename T, int M>
void outer(const T* __restrict d, const T* __restrict h, int64_t b, int64_t no, int64_t ni, bool accumulate,
           T* __restrict gW, T* __restrict gb) {
  for (int64_t o = 0; o < no; ++o) {
    for (int64_t i = 0; i < ni; ++i) {
      T* y = gW + (o * ni + i) * M;
      T acc[M];
      for (int m = 0; m < M; ++m) acc[m] = accumulate ? y[m] : T(0);
      for (int64_t s = 0; s < b; ++s)
        for (int m = 0; m < M; ++m) acc[m] += d[(s * no + o) * M + m] * h[(s * ni + i) * M + m];
      for (int m = 0; m < M; ++m) y[m] = acc[m];
    }
    if (!gb) continue;
    T acc[M] = {};
    for (int64_t s = 0; s < b; ++s)
      for (int m = 0; m < M; ++m) acc[m] += d[(s * no + o) * M + m];
    for (int m = 0; m < M; ++m) gb[o * M + m] = acc[m];
  }
}

// v ⊙= [h > 0] over n entries (h = relu(z), so h > 0 ⇔ z > 0).
template <typename T>
void mask(const T* __restrict h, int64_t n, T* __restrict v) {
  for (int64_t k = 0; k < n; ++k) v[k] = h[k] > 0 ? v[k] : T(0);
}

// One call's inputs and outputs, laid out as in the schema. dx is [B, b, in] per model (summed
// afterwards when x is shared), dy [B, b(, C)] per model or null for class ids.
template <typename T>
struct Io {
  const T *theta, *w, *x, *t;
  const int64_t* label;
  T *loss, *g, *hw, *dx, *dy;
};

// Workspace and loops of one thread: forward pass, gradient and reverse products of M models
// at a time, equations as in memdistill/fused.py.
template <typename T, int M>
class GroupStep {
 public:
  GroupStep(const MlpProblem& pr, const Io<T>& io, bool reverse)
      : pr_(pr), io_(io), reverse_(reverse), h_(pr.L), hd_(pr.L), head_(5 * pr.C) {
    const int64_t b = pr.b, wmax = *std::max_element(pr.n.begin(), pr.n.end());
    int64_t hidden = 0;
    for (int64_t l = 0; l < pr.L; ++l) hidden += b * pr.n[l];
    T* q = workspace(M * (4 * pr.P + 2 * hidden + 3 * b * pr.C + 4 * b * wmax));
    auto take = [&q](int64_t k) { T* r = q; q += k * M; return r; };
    th_ = take(pr.P), w_ = take(pr.P), g_ = take(pr.P), hw_ = take(pr.P);
    for (int64_t l = 0; l < pr.L; ++l) h_[l] = take(b * pr.n[l]), hd_[l] = take(b * pr.n[l]);
    z_ = take(b * pr.C), zd_ = take(b * pr.C), p_ = take(b * pr.C);
    d_[0] = take(b * wmax), d_[1] = take(b * wmax), a_[0] = take(b * wmax), a_[1] = take(b * wmax);
  }

  // Models j0 .. j0 + M − 1 (clipped to B): value_and_grad, or reverse when constructed so.
  void run(int64_t j0) {
    int64_t j[M];
    for (int m = 0; m < M; ++m) j[m] = std::min(j0 + m, pr_.B - 1);
    const int real = static_cast<int>(std::min<int64_t>(M, pr_.B - j0));
    load(j);
    forward(j, real);
    if (reverse_) {
      tangents();
      head_reverse_lanes(j, real);
    }
    backward();
    for (int m = 0; m < real; ++m) {
      store(g_, pr_.P, io_.g + j[m] * pr_.P, m);
      if (reverse_) {
        store(hw_, pr_.P, io_.hw + j[m] * pr_.P, m);
        store(h_[0], pr_.b * pr_.n[0], io_.dx + j[m] * pr_.b * pr_.n[0], m);  // h_[0] holds dx now
      }
    }
  }

 private:
  int64_t W(int64_t l) const { return pr_.w_off[l - 1] * M; }
  int64_t bias(int64_t l) const { return pr_.b_off[l - 1] * M; }
  int64_t x_row(int64_t j) const { return (pr_.x_shared ? 0 : j) * pr_.b * pr_.n[0]; }
  int64_t y_row(int64_t j) const { return (pr_.y_shared ? 0 : j) * pr_.b * (pr_.y_int ? 1 : pr_.C); }

  static void gather(const T* src, int64_t n, T* dst, int m) {
    for (int64_t k = 0; k < n; ++k) dst[k * M + m] = src[k];
  }
  static void store(const T* src, int64_t n, T* dst, int m) {
    for (int64_t k = 0; k < n; ++k) dst[k] = src[k * M + m];
  }

  // θ, w and x of models j[0..M) into lanes.
  void load(const int64_t* j) {
    for (int m = 0; m < M; ++m) {
      gather(io_.theta + j[m] * pr_.P, pr_.P, th_, m);
      if (reverse_) gather(io_.w + j[m] * pr_.P, pr_.P, w_, m);
      gather(io_.x + x_row(j[m]), pr_.b * pr_.n[0], h_[0], m);
    }
  }

  // h_l = relu(h_{l−1} W_lᵀ + b_l), logits z, then per row the head's loss, p and δ_L.
  void forward(const int64_t* j, int real) {
    for (int64_t l = 1; l <= pr_.L; ++l) {
      const int64_t no = pr_.n[l];
      T* out = l < pr_.L ? h_[l] : z_;
      affine<T, M>(h_[l - 1], th_ + W(l), th_ + bias(l), pr_.b, pr_.n[l - 1], no, out);
      if (l < pr_.L)
        for (int64_t k = 0; k < pr_.b * no * M; ++k) out[k] = out[k] > 0 ? out[k] : T(0);
    }
    const int64_t C = pr_.C;
    const T inv_b = T(1) / static_cast<T>(pr_.b);
    T *zc = head_.data(), *pc = zc + C, *dc = pc + C;
    for (int m = 0; m < M; ++m) {
      T loss = 0;
      for (int64_t s = 0; s < pr_.b; ++s) {
        store(z_ + s * C * M, C, zc, m);
        loss += head_forward(zc, C, io_.label ? io_.label[y_row(j[m]) + s] : 0, target(j[m], s), inv_b, pc, dc,
                             io_.loss != nullptr);
        gather(pc, C, p_ + s * C * M, m);
        gather(dc, C, d_[0] + s * C * M, m);
      }
      if (m < real && io_.loss) io_.loss[j[m]] = loss;
    }
  }

  const T* target(int64_t j, int64_t s) const { return io_.t ? io_.t + y_row(j) + s * pr_.C : nullptr; }

  // ż_l = ḃ_l + h_{l−1} Ẇ_lᵀ + ḣ_{l−1} W_lᵀ, ḣ_l = [z_l > 0] ⊙ ż_l (ḣ_0 = 0).
  void tangents() {
    for (int64_t l = 1; l <= pr_.L; ++l) {
      const int64_t no = pr_.n[l], ni = pr_.n[l - 1];
      T* out = l < pr_.L ? hd_[l] : zd_;
      affine<T, M>(h_[l - 1], w_ + W(l), w_ + bias(l), pr_.b, ni, no, out);
      if (l > 1) affine<T, M>(hd_[l - 1], th_ + W(l), static_cast<const T*>(nullptr), pr_.b, ni, no, out);
      if (l < pr_.L) mask(h_[l], pr_.b * no * M, out);
    }
  }

  // a_L = (∂²l/∂z²) ż_L into a_[0], and dy of the real lanes for float targets.
  void head_reverse_lanes(const int64_t* j, int real) {
    const int64_t C = pr_.C;
    const T inv_b = T(1) / static_cast<T>(pr_.b);
    T *pc = head_.data(), *zdc = pc + C, *ac = zdc + C;
    for (int m = 0; m < M; ++m) {
      for (int64_t s = 0; s < pr_.b; ++s) {
        store(p_ + s * C * M, C, pc, m);
        store(zd_ + s * C * M, C, zdc, m);
        T* dy = io_.dy && m < real ? io_.dy + (j[m] * pr_.b + s) * C : nullptr;
        head_reverse(pc, zdc, C, target(j[m], s), inv_b, ac, dy);
        gather(ac, C, a_[0] + s * C * M, m);
      }
    }
  }

  // g_{W_l} = δ_lᵀ h_{l−1}, g_{b_l} = Σ δ_l, δ_{l−1} = m ⊙ δ_l W_l and, reversing,
  // Hw_{W_l} = a_lᵀ h_{l−1} + δ_lᵀ ḣ_{l−1}, Hw_{b_l} = Σ a_l, a_{l−1} = m ⊙ (a_l W_l + δ_l Ẇ_l),
  // dx = a_1 W_1 + δ_1 Ẇ_1 (written over h_0, which is no longer needed).
  void backward() {
    T *d = d_[0], *dn = d_[1], *a = a_[0], *an = a_[1];
    const int64_t b = pr_.b;
    for (int64_t l = pr_.L; l >= 1; --l) {
      const int64_t no = pr_.n[l], ni = pr_.n[l - 1];
      outer<T, M>(d, h_[l - 1], b, no, ni, false, g_ + W(l), g_ + bias(l));
      if (reverse_) {
        outer<T, M>(a, h_[l - 1], b, no, ni, false, hw_ + W(l), hw_ + bias(l));
        if (l > 1) outer<T, M>(d, hd_[l - 1], b, no, ni, true, hw_ + W(l), static_cast<T*>(nullptr));
      }
      if (l > 1) {
        matmul<T, M>(d, th_ + W(l), b, no, ni, false, dn);
        mask(h_[l - 1], b * ni * M, dn);
        if (reverse_) {
          matmul<T, M>(a, th_ + W(l), b, no, ni, false, an);
          matmul<T, M>(d, w_ + W(l), b, no, ni, true, an);
          mask(h_[l - 1], b * ni * M, an);
        }
      } else if (reverse_) {
        matmul<T, M>(a, th_ + W(l), b, no, ni, false, h_[0]);
        matmul<T, M>(d, w_ + W(l), b, no, ni, true, h_[0]);
      }
      std::swap(d, dn);
      std::swap(a, an);
    }
  }

  // This thread's scratch of at least `size` entries, kept between calls (every entry is
  // written before it is read, so it is neither cleared nor freed: no allocation per call).
  static T* workspace(int64_t size) {
    static thread_local std::vector<T> buffer;
    if (static_cast<int64_t>(buffer.size()) < size) buffer.resize(size);
    return buffer.data();
  }

  const MlpProblem& pr_;
  const Io<T>& io_;
  const bool reverse_;
  std::vector<T*> h_, hd_;  // h_l, ḣ_l [b, n_l] per lane for l < L
  std::vector<T> head_;     // one row's C-vectors for the head
  T *th_, *w_, *g_, *hw_, *z_, *zd_, *p_;
  T *d_[2], *a_[2];         // ping-pong δ_l, a_l
};

// Runs GroupStep over the B models in groups of kLanes<T>, groups spread by at::parallel_for.
template <typename T>
void run_groups(const MlpProblem& pr, const Io<T>& io, bool reverse) {
  constexpr int M = kLanes<T>;
  int64_t macs = 0;
  for (int64_t l = 1; l <= pr.L; ++l) macs += pr.n[l] * pr.n[l - 1];
  // About 32768 multiply-adds per chunk (ATen's grain size for elementwise ops).
  const int64_t grain = std::max<int64_t>(1, 32768 / (M * pr.b * macs));
  at::parallel_for(0, (pr.B + M - 1) / M, grain, [&](int64_t begin, int64_t end) {
    GroupStep<T, M> step(pr, io, reverse);
    for (int64_t k = begin; k < end; ++k) step.run(k * M);
  });
}

void check_class_ids(const char* op, const MlpProblem& pr, const at::Tensor& y) {
  if (!pr.y_int || pr.C == 1) return;  // single output: ids are BCE targets, used as numbers
  const int64_t* ids = y.const_data_ptr<int64_t>();
  for (int64_t k = 0; k < y.numel(); ++k)
    TORCH_CHECK(ids[k] >= 0 && ids[k] < pr.C, op, ": y holds class id ", ids[k], ", outside [0, ", pr.C, ")");
}

template <typename T>
Io<T> make_io(const MlpProblem& pr, const at::Tensor& theta, const at::Tensor& x, const at::Tensor& y) {
  Io<T> io{theta.const_data_ptr<T>(), nullptr, x.const_data_ptr<T>(), nullptr, nullptr,
           nullptr, nullptr, nullptr, nullptr, nullptr};
  if (pr.y_int) io.label = y.const_data_ptr<int64_t>();
  else io.t = y.const_data_ptr<T>();
  return io;
}

// Σ_j part[j] over the leading dimension in a fixed order: [B, ·] -> out [·].
template <typename T>
void sum_models(const at::Tensor& part, at::Tensor& out) {
  const T* src = part.const_data_ptr<T>();
  T* dst = out.mutable_data_ptr<T>();
  const int64_t B = part.size(0), n = out.numel();
  std::fill(dst, dst + n, T(0));
  for (int64_t j = 0; j < B; ++j)
    for (int64_t k = 0; k < n; ++k) dst[k] += src[j * n + k];
}

// (the losses [B] or, without `with_loss`, an undefined tensor; g [B, P]).
std::tuple<at::Tensor, at::Tensor> gradient_cpu(const char* op, const at::Tensor& theta, const at::Tensor& x,
                                                const at::Tensor& y, c10::IntArrayRef sizes, bool with_loss) {
  const MlpProblem pr = check_mlp_inputs(op, theta, x, y, nullptr, sizes);
  check_class_ids(op, pr, y);
  at::Tensor loss = with_loss ? at::empty({pr.B}, theta.options()) : at::Tensor(), g = at::empty_like(theta);
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "mlp_value_and_grad_cpu", [&] {
    Io<scalar_t> io = make_io<scalar_t>(pr, theta, x, y);
    if (with_loss) io.loss = loss.mutable_data_ptr<scalar_t>();
    io.g = g.mutable_data_ptr<scalar_t>();
    run_groups(pr, io, false);
  });
  return {loss, g};
}

std::tuple<at::Tensor, at::Tensor> mlp_value_and_grad_cpu(const at::Tensor& theta, const at::Tensor& x,
                                                          const at::Tensor& y, c10::IntArrayRef sizes) {
  return gradient_cpu("memdistill::mlp_value_and_grad", theta, x, y, sizes, true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> mlp_reverse_cpu(const at::Tensor& theta,
                                                                           const at::Tensor& x,
                                                                           const at::Tensor& y,
                                                                           const at::Tensor& w,
                                                                           c10::IntArrayRef sizes) {
  const char* op = "memdistill::mlp_reverse";
  const MlpProblem pr = check_mlp_inputs(op, theta, x, y, &w, sizes);
  check_class_ids(op, pr, y);
  at::Tensor g = at::empty_like(theta), hw = at::empty_like(theta), dx = at::empty_like(x);
  at::Tensor dy = pr.y_int ? at::empty({0}, theta.options()) : at::empty_like(y);
  // Shared x or y: every model writes its own slot, summed afterwards.
  at::Tensor dx_models = pr.x_shared ? at::empty({pr.B, pr.b, pr.n[0]}, theta.options()) : dx;
  at::Tensor dy_models = !pr.y_int && pr.y_shared ? at::empty({pr.B, pr.b * pr.C}, theta.options()) : dy;
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "mlp_reverse_cpu", [&] {
    Io<scalar_t> io = make_io<scalar_t>(pr, theta, x, y);
    io.w = w.const_data_ptr<scalar_t>();
    io.g = g.mutable_data_ptr<scalar_t>();
    io.hw = hw.mutable_data_ptr<scalar_t>();
    io.dx = dx_models.mutable_data_ptr<scalar_t>();
    io.dy = pr.y_int ? nullptr : dy_models.mutable_data_ptr<scalar_t>();
    run_groups(pr, io, true);
    if (pr.x_shared) sum_models<scalar_t>(dx_models, dx);
    if (!pr.y_int && pr.y_shared) sum_models<scalar_t>(dy_models, dy);
  });
  return {g, hw, dx, dy};
}

}  // namespace

at::Tensor mlp_grad_cpu(const at::Tensor& theta, const at::Tensor& x, const at::Tensor& y, c10::IntArrayRef sizes) {
  return std::get<1>(gradient_cpu("memdistill::mlp_sgd_advance", theta, x, y, sizes, false));
}

TORCH_LIBRARY(memdistill, m) {
  m.set_python_module("memdistill.engine.steps.extension");  // where the fake (meta) kernels live
  m.def("mlp_value_and_grad(Tensor theta, Tensor x, Tensor y, int[] sizes) -> (Tensor, Tensor)");
  m.def("mlp_reverse(Tensor theta, Tensor x, Tensor y, Tensor w, int[] sizes) -> (Tensor, Tensor, Tensor, Tensor)");
}

// Forward-only: the ops return derivatives themselves and have no autograd formula, so their
// outputs are constants for autograd (backward through them fails instead of returning zeros).
TORCH_LIBRARY_IMPL(memdistill, Autograd, m) {
  m.impl("mlp_value_and_grad", torch::CppFunction::makeFallthrough());
  m.impl("mlp_reverse", torch::CppFunction::makeFallthrough());
}

TORCH_LIBRARY_IMPL(memdistill, CPU, m) {
  m.impl("mlp_value_and_grad", &mlp_value_and_grad_cpu);
  m.impl("mlp_reverse", &mlp_reverse_cpu);
}

}  // namespace memdistill

// `import memdistill.engine.steps._C` loads this library, whose static initialisers register the ops above.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "memdistill custom ops (torch.ops.memdistill)", -1,
                               nullptr};
  return PyModule_Create(&module);
}
