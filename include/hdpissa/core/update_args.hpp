#pragma once
/// \file update_args.hpp
/// The optimizers' elementwise math, written once for every backend: the per-step arguments
/// (AdamArgs, SgdArgs) and the per-element functors (AdamElement, SgdElement) that a backend's
/// generic elementwise map (`b.elementwise`, see TensorBackend) runs on the host or, under nvcc, in a
/// device kernel. The optimizers (optim/) own the policy (state, step counting, bias correction);
/// the functors own the arithmetic, so every backend and every kernel (per-tensor or multi-tensor)
/// gives the same operation order and the same bits.

#include "hdpissa/core/element.hpp"
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

/// One Adam/AdamW element in arithmetic type C (AdamArgs' formula). The step's scalars are
/// rounded to C once on the host (make); operator() is `f(delta, m, v, grad, param)` on storage
/// elements of any type T with element_compute_t<T> = C. `param` is read only when lr·weight_decay
/// ≠ 0 (a caller without weight decay may pass grad in its place). The moments are re-read as
/// stored, so bf16 storage gives what the next step will read.
template <class C>
struct AdamElement {
  C b1, b2, eps, step_size, inv_sqrt_bc2, lr_wd;

  static AdamElement make(const AdamArgs& a) {
    return {C(a.beta1), C(a.beta2), C(a.eps), C(a.lr / a.bias_correction1),
            C(1.0 / std::sqrt(a.bias_correction2)), C(a.lr * a.weight_decay)};
  }
  template <class T>
  HDPISSA_HOST_DEVICE void operator()(T& delta, T& m, T& v, const T& grad, const T& param) const {
    const C gi = load_as<C>(grad);
    const C mi = b1 * load_as<C>(m) + (C(1) - b1) * gi;
    const C vi = b2 * load_as<C>(v) + (C(1) - b2) * gi * gi;
    m = store_as<T>(mi);
    v = store_as<T>(vi);
    const C ms = load_as<C>(store_as<T>(mi)), vs = load_as<C>(store_as<T>(vi));
    C dl = step_size * ms / (element_sqrt(vs) * inv_sqrt_bc2 + eps);
    if (lr_wd != C(0)) dl += lr_wd * load_as<C>(param);
    delta = store_as<T>(dl);
  }
};

/// One SGD pass: g' = g + weight_decay·param; buf ← momentum·buf + g' (if momentum ≠ 0, else buf
/// unused); delta = lr · (momentum ≠ 0 ? buf : g').
struct SgdArgs {
  double lr = 0;
  double momentum = 0;
  double weight_decay = 0;
};

/// One SGD element in arithmetic type C (SgdArgs' formula): `f(delta, buf, grad, param)`.
/// `buf` is touched only when momentum ≠ 0 and `param` read only when weight_decay ≠ 0 (a caller
/// may pass delta / grad in their place).
template <class C>
struct SgdElement {
  C lr, mu, wd;

  static SgdElement make(const SgdArgs& a) { return {C(a.lr), C(a.momentum), C(a.weight_decay)}; }
  template <class T>
  HDPISSA_HOST_DEVICE void operator()(T& delta, T& buf, const T& grad, const T& param) const {
    C gi = load_as<C>(grad);
    if (wd != C(0)) gi += wd * load_as<C>(param);
    if (mu != C(0)) {
      const C bi = mu * load_as<C>(buf) + gi;
      buf = store_as<T>(bi);
      gi = load_as<C>(store_as<T>(bi));
    }
    delta = store_as<T>(lr * gi);
  }
};

}  // namespace hdpissa
