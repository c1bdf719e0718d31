#pragma once
/// \file adapter_linear.hpp
/// The baselines' layers, on the same backend primitives as MutedLinear:
///  - AdapterLinear: an active low-rank adapter (LoRA, PiSSA): y = x Wᵀ + s (x Aᵀ) Bᵀ (+ bias);
///    backward dX = dY W + s (dY B) A, g_A = s (dY B)ᵀ X, g_B = s dYᵀ (X Aᵀ).
///  - DenseLinear: full fine-tuning: y = x Wᵀ (+ bias); backward dX = dY W, g_W = dYᵀ X.

#include "hdpissa/adapter/linear_workspace.hpp"
#include "hdpissa/core/concepts.hpp"

namespace hdpissa {

/// Active adapter layer (LoRA / PiSSA): the adapter is part of the forward.
template <TensorBackend B>
class AdapterLinear {
 public:
  using S = typename B::scalar_type;
  using V = MatrixView<S>;
  using CV = ConstMatrixView<S>;

  explicit AdapterLinear(B& b, double scaling = 1.0) : b_(&b), s_(scaling) {}
  double scaling() const { return s_; }

  /// Y = X Wᵀ + s (X Aᵀ) Bᵀ (+ bias). With `keep_xa` (tokens, r) given, X Aᵀ is written there, for
  /// the backward of the same X to reuse (it then reads X once less).
  void forward(CV W, CV A, CV Bf, CV X, V Y, CV bias = {}, V keep_xa = {}) {
    check(W, A, Bf, X);
    require_shape(Y, X.rows, W.rows, "AdapterLinear Y");
    if (keep_xa.data) require_shape(keep_xa, X.rows, A.rows, "AdapterLinear keep_xa");
    auto t = keep_xa.data ? keep_xa : t1_.get(*b_, X.rows, A.rows);  // (tokens, r) = X Aᵀ
    b_->gemm(Op::N, Op::T, S(1), X, A, S(0), t);
    // The thin product first (it only writes Y), then the frozen GEMM adds itself to it (beta 1):
    // Y is read in that GEMM's epilogue instead of read and written again by the thin one.
    b_->gemm(Op::N, Op::T, S(s_), CV(t), Bf, S(0), Y);
    b_->gemm(Op::N, Op::T, S(1), X, W, S(1), Y);
    detail::add_bias(*b_, ones_, bias, Y);
  }

  /// dX = dY W + s (dY B) A (skipped if dX.data is null); gA, gB get the adapter gradients (added
  /// when `accumulate`). `xa`: the forward's X Aᵀ for this X (forward(…, keep_xa)), or empty.
  void backward(CV W, CV A, CV Bf, CV X, CV dY, V dX, V gA, V gB, bool accumulate = true, CV xa = {}) {
    check(W, A, Bf, X);
    require_shape(dY, X.rows, W.rows, "AdapterLinear dY");
    require_shape(gA, A.rows, A.cols, "AdapterLinear gA");
    require_shape(gB, Bf.rows, Bf.cols, "AdapterLinear gB");
    const S beta = accumulate ? S(1) : S(0);
    auto u = t1_.get(*b_, X.rows, A.rows);  // (tokens, r) = dY B
    b_->gemm(Op::N, Op::N, S(1), dY, Bf, S(0), u);
    if (dX.data) {
      require_shape(dX, X.rows, W.cols, "AdapterLinear dX");
      b_->gemm(Op::N, Op::N, S(s_), CV(u), A, S(0), dX);  // as in the forward: thin first
      b_->gemm(Op::N, Op::N, S(1), dY, W, S(1), dX);
    }
    b_->gemm(Op::T, Op::N, S(s_), CV(u), X, beta, gA);
    if (xa.data) {
      require_shape(xa, X.rows, A.rows, "AdapterLinear xa");
      b_->gemm(Op::T, Op::N, S(s_), dY, xa, beta, gB);
    } else {
      auto t = t2_.get(*b_, X.rows, A.rows);  // (tokens, r) = X Aᵀ
      b_->gemm(Op::N, Op::T, S(1), X, A, S(0), t);
      b_->gemm(Op::T, Op::N, S(s_), dY, CV(t), beta, gB);
    }
  }

  /// backward() with fp32 gradients for a lower-precision backend (bf16 storage): the two gradient
  /// GEMMs write fp32 results (fp32 sums over the tokens, never rounded to the storage type), added
  /// to gA, gB when `accumulate`; dX and the thin products as in backward(). Needs gemm_f32.
  template <class G>
    requires(!std::is_same_v<G, S>)
  void backward(CV W, CV A, CV Bf, CV X, CV dY, V dX, MatrixView<G> gA, MatrixView<G> gB, bool accumulate = true,
                CV xa = {}) {
    static_assert(std::is_same_v<G, float>, "AdapterLinear: fp32 gradients only");
    static_assert(requires(B& b, MatrixView<float> c) { b.gemm_f32(Op::T, Op::N, 1.0f, CV{}, CV{}, 1.0f, c); },
                  "AdapterLinear: fp32 gradients need a backend with gemm_f32");
    check(W, A, Bf, X);
    require_shape(dY, X.rows, W.rows, "AdapterLinear dY");
    require_shape(gA, A.rows, A.cols, "AdapterLinear gA");
    require_shape(gB, Bf.rows, Bf.cols, "AdapterLinear gB");
    // the scale as the forward applies it (rounded to the storage type there), so that these are the
    // gradients of the forward that ran
    const float beta = accumulate ? 1.0f : 0.0f, s = float(S(s_));
    auto u = t1_.get(*b_, X.rows, A.rows);  // (tokens, r) = dY B
    b_->gemm(Op::N, Op::N, S(1), dY, Bf, S(0), u);
    if (dX.data) {
      require_shape(dX, X.rows, W.cols, "AdapterLinear dX");
      b_->gemm(Op::N, Op::N, S(s_), CV(u), A, S(0), dX);
      b_->gemm(Op::N, Op::N, S(1), dY, W, S(1), dX);
    }
    b_->gemm_f32(Op::T, Op::N, s, CV(u), X, beta, gA);
    if (xa.data) {
      require_shape(xa, X.rows, A.rows, "AdapterLinear xa");
      b_->gemm_f32(Op::T, Op::N, s, dY, xa, beta, gB);
    } else {
      auto t = t2_.get(*b_, X.rows, A.rows);  // (tokens, r) = X Aᵀ
      b_->gemm(Op::N, Op::T, S(1), X, A, S(0), t);
      b_->gemm_f32(Op::T, Op::N, s, dY, CV(t), beta, gB);
    }
  }

 private:
  void check(CV W, CV A, CV Bf, CV X) const {
    HDPISSA_REQUIRE(X.cols == W.cols && A.cols == W.cols && Bf.rows == W.rows && A.rows == Bf.cols,
                    "AdapterLinear: expected X (tokens, in), W (out, in), A (r, in), B (out, r); found X ",
                    shape_str(X.rows, X.cols), ", W ", shape_str(W.rows, W.cols), ", A ",
                    shape_str(A.rows, A.cols), ", B ", shape_str(Bf.rows, Bf.cols));
  }
  B* b_;
  double s_;
  detail::Scratch<B> t1_, t2_, ones_;
};

/// Full fine-tuning layer: W itself is trainable.
template <TensorBackend B>
class DenseLinear {
 public:
  using S = typename B::scalar_type;
  using V = MatrixView<S>;
  using CV = ConstMatrixView<S>;

  explicit DenseLinear(B& b) : b_(&b) {}

  void forward(CV W, CV X, V Y, CV bias = {}) {
    HDPISSA_REQUIRE(X.cols == W.cols, "DenseLinear: X is ", shape_str(X.rows, X.cols), " but W is ",
                    shape_str(W.rows, W.cols));
    require_shape(Y, X.rows, W.rows, "DenseLinear Y");
    b_->gemm(Op::N, Op::T, S(1), X, W, S(0), Y);
    detail::add_bias(*b_, ones_, bias, Y);
  }
  void backward(CV W, CV X, CV dY, V dX, V gW, bool accumulate = true) {
    require_shape(dY, X.rows, W.rows, "DenseLinear dY");
    require_shape(gW, W.rows, W.cols, "DenseLinear gW");
    if (dX.data) b_->gemm(Op::N, Op::N, S(1), dY, W, S(0), dX);
    b_->gemm(Op::T, Op::N, S(1), dY, X, accumulate ? S(1) : S(0), gW);
  }

 private:
  B* b_;
  detail::Scratch<B> ones_;
};

}  // namespace hdpissa
