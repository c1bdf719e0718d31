#pragma once
/// \file linear_hooks.hpp
/// LinearHooks: the one place where the model touches a target linear (q, k, v, o, gate, up,
/// down). The fine-tuning method is swapped by passing a different hooks object; model code never
/// changes.
///
/// Contract (required expressions, `h` a LinearHooks&, `id` a LinearId, `W` the (out, in) weight):
///  - `h.forward(id, W, X, Y)`: X (tokens, in) → Y (tokens, out); Y is preallocated and must be
///    overwritten. Plain linear: `Y = X Wᵀ`.
///  - `h.backward(id, W, X, dY, dX)`: X is the same input the forward saw for this id (the model
///    saves it); dY (tokens, out) is ∂loss/∂Y; dX (tokens, in) is preallocated and must be
///    OVERWRITTEN with ∂loss/∂X (plain linear: `dX = dY W`). Anything else (weight or adapter
///    gradients) is the hook's own business: accumulate it (`+=`), because with gradient
///    accumulation backward runs once per micro-batch.
///  - Calls come in layer order in the forward (q, k, v, o, gate, up, down per layer) and in
///    reverse layer order in the backward (down, up, gate, o, v, k, q). A forward without a
///    following backward happens for evaluation and generation.
///
/// Examples of hooks to plug in: HD-PiSSA's MutedLinear (forward = X Wᵀ; backward adds
/// g_A = α (dY B)ᵀ X, g_B = α dYᵀ (X Aᵀ), dX = dY W), LoRA / PiSSA active adapters
/// (Y = X Wᵀ + s (X Aᵀ) Bᵀ, saving X Aᵀ themselves if they want it), full fine-tuning
/// (FullFineTuneHooks below).

#include "llama/common.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama {

/// Base hooks = frozen plain linear: Y = X Wᵀ, dX = dY W, no weight gradient.
class LinearHooks {
 public:
  virtual ~LinearHooks() = default;

  /// Y = X Wᵀ.  // X (tokens, in), W (out, in), Y (tokens, out)
  virtual void forward(LinearId id, const Matrix& W, ConstMatrixRef X, MatrixRef Y) {
    (void)id;
    Y.noalias() = X * W.transpose();
  }

  /// dX = dY W.  // X (tokens, in), dY (tokens, out), dX (tokens, in)
  virtual void backward(LinearId id, const Matrix& W, ConstMatrixRef X, ConstMatrixRef dY, MatrixRef dX) {
    (void)id;
    (void)X;
    dX.noalias() = dY * W;
  }
};

/// Full fine-tuning: the plain linear plus gW += dYᵀ X into `grads` (a ModelWeights-shaped buffer).
class FullFineTuneHooks : public LinearHooks {
 public:
  /// `grads` must outlive the hooks and have the model's shapes (ModelWeights::zeros_like).
  explicit FullFineTuneHooks(ModelWeights& grads) : grads_(&grads) {}

  /// dX = dY W; gW += dYᵀ X.
  void backward(LinearId id, const Matrix& W, ConstMatrixRef X, ConstMatrixRef dY, MatrixRef dX) override {
    dX.noalias() = dY * W;
    grads_->linear(id).noalias() += dY.transpose() * X;  // (out, in)
  }

 private:
  ModelWeights* grads_;
};

}  // namespace hdpissa::llama
