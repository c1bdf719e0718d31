#pragma once
/// \file update_args.hpp
/// Arguments of the fused optimizer kernels every tensor backend provides (Adam/AdamW and SGD).
/// The optimizers (optim/) own the policy (state, step counting, bias correction); the backend owns
/// the one fused elementwise pass, so a GPU backend can run it as one kernel.

#include "hdpissa/core/view.hpp"

namespace hdpissa {

/// One Adam/AdamW elementwise pass, PyTorch's formulation:
///   m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²
///   delta = step_size · m / (√v / √bias_correction2 + eps) + lr · weight_decay · param
/// with step_size = lr / bias_correction1. The caller applies param ← param − delta (or, for
/// HD-PiSSA, folds delta into W through the Direct Weight Update).
struct AdamArgs {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double lr = 0;
  double weight_decay = 0;      ///< decoupled (AdamW); 0 = plain Adam
  double bias_correction1 = 1;  ///< 1 − β1^t
  double bias_correction2 = 1;  ///< 1 − β2^t
};

/// One tensor of a multi-tensor Adam pass (a backend's optional make_adam_batch /
/// adam_delta_batch hooks): the operands adam_delta takes, all of the grad's shape.
template <class T>
struct AdamTensor {
  ConstMatrixView<T> param, grad;
  MatrixView<T> m, v, delta;
};

/// One SGD pass: g' = g + weight_decay·param; buf ← momentum·buf + g' (if momentum ≠ 0, else buf
/// unused); delta = lr · (momentum ≠ 0 ? buf : g').
struct SgdArgs {
  double lr = 0;
  double momentum = 0;
  double weight_decay = 0;
};

}  // namespace hdpissa
