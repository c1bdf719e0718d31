#pragma once
/// \file adam.hpp
/// Adam / AdamW producing deltas (param_new = param − delta). Bias-corrected, PyTorch's formulation,
/// decoupled weight decay defaulting to 0 (so the default is the reference's plain Adam:
/// β1 = 0.9, β2 = 0.999, ε = 1e-8). The learning rate is passed per step; schedules live in
/// schedule.hpp. The elementwise pass is the backend's fused adam_delta.

#include <cmath>
#include <string>

#include "hdpissa/core/concepts.hpp"

namespace hdpissa {

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
  /// passes to the backend; a multi-tensor pass uses it for many states at the same step).
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
    b.adam_delta(step_args(st, lr), param, grad, st.m.view(), st.v.view(), delta);
  }

 private:
  AdamConfig cfg_{};
};

}  // namespace hdpissa
