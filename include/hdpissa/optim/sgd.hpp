#pragma once
/// \file sgd.hpp
/// SGD with optional momentum and (coupled, PyTorch-style) weight decay, producing deltas.

#include <string>

#include "hdpissa/core/concepts.hpp"
#include "hdpissa/core/update_args.hpp"

namespace hdpissa {

/// One SGD elementwise pass on backend b: delta (and buf with momentum, param with weight decay)
/// have the grad's shape. The SgdElement functor over `b.elementwise`.
template <TensorBackend B>
void sgd_delta(B& b, const SgdArgs& a, ConstMatrixView<typename B::scalar_type> param,
               ConstMatrixView<typename B::scalar_type> grad, MatrixView<typename B::scalar_type> buf,
               MatrixView<typename B::scalar_type> delta) {
  require_shape(delta, grad.rows, grad.cols, "sgd delta");
  if (a.momentum != 0) require_shape(buf, grad.rows, grad.cols, "sgd momentum buffer");
  else buf = delta;  // not touched
  if (a.weight_decay == 0) param = grad;  // not read
  b.elementwise(SgdElement<typename B::compute_type>::make(a), delta, buf, grad, param);
}

/// SGD hyper-parameters.
struct SgdConfig {
  double momentum = 0;
  double weight_decay = 0;
};

/// SGD: delta = lr · (momentum buffer or gradient).
class Sgd {
 public:
  template <TensorBackend B>
  struct state {
    typename B::matrix_type buf;  // momentum buffer (1×1 placeholder when momentum = 0)
    long step = 0;
  };

  Sgd() = default;
  explicit Sgd(SgdConfig cfg) : cfg_(cfg) {
    HDPISSA_REQUIRE(cfg.momentum >= 0 && cfg.momentum < 1, "Sgd: expected momentum in [0, 1), found ",
                    cfg.momentum);
  }
  const SgdConfig& config() const { return cfg_; }
  std::string name() const { return "sgd"; }

  template <TensorBackend B>
  state<B> make_state(B& b, index_t rows, index_t cols) const {
    return state<B>{cfg_.momentum != 0 ? b.make_matrix(rows, cols) : b.make_matrix(1, 1), 0};
  }
  template <TensorBackend B>
  void compute_delta(B& b, state<B>& st, ConstMatrixView<typename B::scalar_type> param,
                     ConstMatrixView<typename B::scalar_type> grad,
                     MatrixView<typename B::scalar_type> delta, double lr) const {
    st.step += 1;
    SgdArgs a;
    a.lr = lr;
    a.momentum = cfg_.momentum;
    a.weight_decay = cfg_.weight_decay;
    sgd_delta(b, a, param, grad, st.buf.view(), delta);
  }

 private:
  SgdConfig cfg_{};
};

}  // namespace hdpissa
