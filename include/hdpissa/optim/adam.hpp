#pragma once
/// \file adam.hpp
/// Adam / AdamW producing deltas (param_new = param − delta). Bias-corrected, PyTorch's formulation,
/// decoupled weight decay defaulting to 0 (so the default is the reference's plain Adam:
/// β1 = 0.9, β2 = 0.999, ε = 1e-8). The learning rate is passed per step; schedules live in
/// schedule.hpp. The elementwise pass is the AdamElement functor (core/update_args.hpp) run by the
/// backend's generic elementwise map: one pass over the tensor, the same arithmetic on every backend.

#include <cmath>
#include <string>

#include "hdpissa/core/concepts.hpp"
#include "hdpissa/core/update_args.hpp"

namespace hdpissa {

/// One Adam/AdamW elementwise pass on backend b: m, v and delta (and param when weight decay is
/// on) have the grad's shape. The AdamElement functor over `b.elementwise`.
template <TensorBackend B>
void adam_delta(B& b, const AdamArgs& a, ConstMatrixView<typename B::scalar_type> param,
                ConstMatrixView<typename B::scalar_type> grad, MatrixView<typename B::scalar_type> m,
                MatrixView<typename B::scalar_type> v, MatrixView<typename B::scalar_type> delta) {
  require_shape(m, grad.rows, grad.cols, "adam first moment");
  require_shape(v, grad.rows, grad.cols, "adam second moment");
  require_shape(delta, grad.rows, grad.cols, "adam delta");
  if (a.weight_decay != 0) require_shape(param, grad.rows, grad.cols, "adam param");
  else param = grad;  // not read (lr·weight_decay = 0)
  b.elementwise(AdamElement<typename B::compute_type>::make(a), delta, m, v, grad, param);
}

/// Adam/AdamW hyper-parameters.
struct AdamConfig {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0;  ///< decoupled (AdamW); 0 = Adam
};

/// Adam/AdamW. Each tensor has its own state (two moments and a step count).
class Adam {
 public:
  /// Per-tensor state on backend B.
  template <TensorBackend B>
  struct state {
    typename B::matrix_type m;  // first moment, shape of the parameter
    typename B::matrix_type v;  // second moment
    long step = 0;              // completed steps (for bias correction)
  };

  Adam() = default;
  explicit Adam(AdamConfig cfg) : cfg_(cfg) {
    HDPISSA_REQUIRE(cfg.beta1 >= 0 && cfg.beta1 < 1 && cfg.beta2 >= 0 && cfg.beta2 < 1,
                    "Adam: expected betas in [0, 1), found (", cfg.beta1, ", ", cfg.beta2, ")");
    HDPISSA_REQUIRE(cfg.eps > 0, "Adam: expected eps > 0, found ", cfg.eps);
    HDPISSA_REQUIRE(cfg.weight_decay >= 0, "Adam: expected weight_decay >= 0, found ", cfg.weight_decay);
  }
  const AdamConfig& config() const { return cfg_; }
  std::string name() const { return cfg_.weight_decay == 0 ? "adam" : "adamw"; }

  template <TensorBackend B>
  state<B> make_state(B& b, index_t rows, index_t cols) const {
    return state<B>{b.make_matrix(rows, cols), b.make_matrix(rows, cols), 0};
  }

  /// Advances `st` by one step and returns that step's elementwise arguments (what compute_delta
  /// runs; a multi-tensor pass, e.g. FusedDwuKernels::adam_step, uses it for many states at the
  /// same step).
  template <TensorBackend B>
  AdamArgs step_args(state<B>& st, double lr) const {
    st.step += 1;
    AdamArgs a;
    a.beta1 = cfg_.beta1;
    a.beta2 = cfg_.beta2;
    a.eps = cfg_.eps;
    a.lr = lr;
    a.weight_decay = cfg_.weight_decay;
    a.bias_correction1 = 1.0 - std::pow(cfg_.beta1, double(st.step));
    a.bias_correction2 = 1.0 - std::pow(cfg_.beta2, double(st.step));
    return a;
  }

  /// Advances `st` by one step with gradient g and writes the step's delta into d.
  template <TensorBackend B>
  void compute_delta(B& b, state<B>& st, ConstMatrixView<typename B::scalar_type> param,
                     ConstMatrixView<typename B::scalar_type> grad,
                     MatrixView<typename B::scalar_type> delta, double lr) const {
    adam_delta(b, step_args(st, lr), param, grad, st.m.view(), st.v.view(), delta);
  }

 private:
  AdamConfig cfg_{};
};

/// \concept AdamFamily
/// An optimizer whose step is one AdamArgs over per-tensor moments, so a multi-tensor Adam kernel
/// (FusedDwuKernels::adam_step) can run many of its tensors at once. With `o` an O, `st` an
/// `O::template state<B>`:
///   - `o.step_args(st, lr)` → AdamArgs: advances st one step and returns the step's arguments
///   - `st.m.view()`, `st.v.view()` → MatrixView<B::scalar_type>: the first and second moments
///   - `st.step`: the completed steps (tensors at equal steps share one AdamArgs)
template <class O, class B>
concept AdamFamily = Optimizer<O, B> && requires(const O& o, typename O::template state<B>& st, double lr) {
  { o.step_args(st, lr) } -> std::same_as<AdamArgs>;
  { st.m.view() } -> std::same_as<MatrixView<typename B::scalar_type>>;
  { st.v.view() } -> std::same_as<MatrixView<typename B::scalar_type>>;
  { st.step } -> std::convertible_to<long>;
};

}  // namespace hdpissa
