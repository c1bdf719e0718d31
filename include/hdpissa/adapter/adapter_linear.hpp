#pragma once
/// \file adapter_linear.hpp
/// The baselines' layers, on the same backend primitives as MutedLinear:
///  - AdapterLinear: an active low-rank adapter (LoRA, PiSSA): y = x Wᵀ + s (x Aᵀ) Bᵀ (+ bias);
///    backward dX = dY W + s (dY B) A, g_A = s (dY B)ᵀ X, g_B = s dYᵀ (X Aᵀ).
///  - DenseLinear: full fine-tuning: y = x Wᵀ (+ bias); backward dX = dY W, g_W = dYᵀ X.

#include <optional>
#include <span>

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
  /// G = S, or float on a lower-precision backend (bf16 storage): the two gradient GEMMs then write
  /// fp32 results (fp32 sums over the tokens, never rounded to the storage type; needs gemm_f32).
  /// Every shape is checked before the first GEMM; then backward_u, backward_dx and
  /// backward_gradients run, in that order.
  template <class G>
  void backward(CV W, CV A, CV Bf, CV X, CV dY, V dX, MatrixView<G> gA, MatrixView<G> gB, bool accumulate = true,
                CV xa = {}) {
    check(W, A, Bf, X);
    require_shape(dY, X.rows, W.rows, "AdapterLinear dY");
    require_shape(gA, A.rows, A.cols, "AdapterLinear gA");
    require_shape(gB, Bf.rows, Bf.cols, "AdapterLinear gB");
    if (dX.data) require_shape(dX, X.rows, W.cols, "AdapterLinear dX");
    auto u = t1_.get(*b_, X.rows, A.rows);  // (tokens, r) = dY B
    backward_u(dY, Bf, u);
    backward_dx(W, A, dY, CV(u), dX);
    backward_gradients(X, A, dY, CV(u), gA, gB, accumulate, xa);
  }

  /// backward()'s first part: u = dY B (tokens, r), the thin product both dX and gA read. A caller
  /// that splits the backward over two streams (the LLaMA trainer's LoRA / PiSSA: dX on the model's
  /// stream, the gradients on a second one) keeps u in its own buffer.
  void backward_u(CV dY, CV Bf, V u) {
    HDPISSA_REQUIRE(dY.cols == Bf.rows, "AdapterLinear::backward_u: expected dY (tokens, out), B (out, r); found dY ",
                    shape_str(dY.rows, dY.cols), ", B ", shape_str(Bf.rows, Bf.cols));
    require_shape(u, dY.rows, Bf.cols, "AdapterLinear u");
    b_->gemm(Op::N, Op::N, S(1), dY, Bf, S(0), u);
  }
  /// backward()'s second part: dX = s u A + dY W (the thin product first, as in the forward);
  /// nothing when dX.data is null.
  void backward_dx(CV W, CV A, CV dY, CV u, V dX) {
    if (!dX.data) return;
    HDPISSA_REQUIRE(A.cols == W.cols && dY.cols == W.rows && u.rows == dY.rows && u.cols == A.rows,
                    "AdapterLinear::backward_dx: expected W (out, in), A (r, in), dY (tokens, out), u (tokens, r); "
                    "found W ", shape_str(W.rows, W.cols), ", A ", shape_str(A.rows, A.cols), ", dY ",
                    shape_str(dY.rows, dY.cols), ", u ", shape_str(u.rows, u.cols));
    require_shape(dX, dY.rows, W.cols, "AdapterLinear dX");
    b_->gemm(Op::N, Op::N, S(s_), u, A, S(0), dX);
    b_->gemm(Op::N, Op::N, S(1), dY, W, S(1), dX);
  }
  /// backward()'s third part: gA (+)= s uᵀ X, gB (+)= s dYᵀ (X Aᵀ) with X Aᵀ from `xa` (the
  /// forward's, kept) or recomputed. G = S: the backend's gemm; G = float on a lower-precision backend:
  /// gemm_f32 (fp32 sums), with the scale as the forward applies it (rounded to S), so that these are
  /// the gradients of the forward that ran. Runs on this layer's backend: a second AdapterLinear on
  /// another stream's backend computes them there.
  template <class G>
  void backward_gradients(CV X, CV A, CV dY, CV u, MatrixView<G> gA, MatrixView<G> gB, bool accumulate = true,
                          CV xa = {}) {
    HDPISSA_REQUIRE(X.cols == A.cols && dY.rows == X.rows,
                    "AdapterLinear::backward_gradients: expected X (tokens, in), A (r, in), dY (tokens, out); found X ",
                    shape_str(X.rows, X.cols), ", A ", shape_str(A.rows, A.cols), ", dY ", shape_str(dY.rows, dY.cols));
    require_shape(gA, A.rows, A.cols, "AdapterLinear gA");
    require_shape(gB, dY.cols, A.rows, "AdapterLinear gB");
    require_shape(u, X.rows, A.rows, "AdapterLinear u");
    if (xa.data) require_shape(xa, X.rows, A.rows, "AdapterLinear xa");
    if constexpr (std::is_same_v<G, S>) {
      const S beta = accumulate ? S(1) : S(0);
      b_->gemm(Op::T, Op::N, S(s_), u, X, beta, gA);
      if (xa.data) {
        b_->gemm(Op::T, Op::N, S(s_), dY, xa, beta, gB);
      } else {
        auto t = t2_.get(*b_, X.rows, A.rows);  // (tokens, r) = X Aᵀ
        b_->gemm(Op::N, Op::T, S(1), X, A, S(0), t);
        b_->gemm(Op::T, Op::N, S(s_), dY, CV(t), beta, gB);
      }
    } else {
      static_assert(std::is_same_v<G, float>, "AdapterLinear: fp32 gradients only");
      static_assert(requires(B& b, MatrixView<float> c) { b.gemm_f32(Op::T, Op::N, 1.0f, CV{}, CV{}, 1.0f, c); },
                    "AdapterLinear: fp32 gradients need a backend with gemm_f32");
      const float beta = accumulate ? 1.0f : 0.0f, s = float(S(s_));
      b_->gemm_f32(Op::T, Op::N, s, u, X, beta, gA);
      if (xa.data) {
        b_->gemm_f32(Op::T, Op::N, s, dY, xa, beta, gB);
      } else {
        auto t = t2_.get(*b_, X.rows, A.rows);  // (tokens, r) = X Aᵀ
        b_->gemm(Op::N, Op::T, S(1), X, A, S(0), t);
        b_->gemm_f32(Op::T, Op::N, s, dY, CV(t), beta, gB);
      }
    }
  }

  /// One linear of a group that reads the same input (a LLaMA layer's q, k, v or gate, up), for
  /// forward_shared(): W (out, in), its B factor Bf (out, r) and Y (tokens, out).
  struct SharedForward {
    CV W, Bf;
    V Y;
  };
  /// The same for backward_shared(): W, Bf, dY (tokens, out), dX (tokens, in; null data: skipped)
  /// and gB (out, r) in the gradient type G (S, or float on a backend with gemm_f32).
  template <class G = S>
  struct SharedBackward {
    CV W, Bf, dY;
    V dX;
    MatrixView<G> gB;
  };

  /// Sizes the scratch of forward_shared() / backward_shared() for groups of up to `n` linears of
  /// rank r, so that later calls never allocate.
  void reserve_shared(index_t tokens, index_t n, index_t r) {
    t1_.get(*b_, tokens, n * r);
    t2_.get(*b_, tokens, n * r);
  }

  /// forward() of n linears that read the same X, their A factors stacked in A_stack (n·r, in):
  /// U = X A_stackᵀ (tokens, n·r) in one GEMM (X read once for the group, not once per linear), then
  /// per linear Y_j = s U_j B_jᵀ + X W_jᵀ as forward(). With `keep_u` (tokens, n·r) given, U is
  /// written there for backward_shared() of the same X.
  void forward_shared(CV X, CV A_stack, std::span<const SharedForward> lins, V keep_u = {}) {
    const index_t n = static_cast<index_t>(lins.size());
    const index_t r = stack_rank(A_stack, n);
    for (index_t j = 0; j < n; ++j) {
      const auto& l = lins[std::size_t(j)];
      member(j, n, r, [&] {
        check(l.W, A_stack.row_block(j * r, r), l.Bf, X);
        require_shape(l.Y, X.rows, l.W.rows, "AdapterLinear Y");
      });
    }
    if (keep_u.data) require_shape(keep_u, X.rows, n * r, "AdapterLinear keep_u");
    auto u = keep_u.data ? keep_u : t1_.get(*b_, X.rows, n * r);
    b_->gemm(Op::N, Op::T, S(1), X, A_stack, S(0), u);
    for (index_t j = 0; j < n; ++j) {
      const auto& l = lins[std::size_t(j)];
      b_->gemm(Op::N, Op::T, S(s_), CV(u).col_block(j * r, r), l.Bf, S(0), l.Y);  // thin first, as forward()
      b_->gemm(Op::N, Op::T, S(1), X, l.W, S(1), l.Y);
    }
  }

  /// backward() of n linears that read the same X, their A factors stacked in A_stack (n·r, in):
  /// t = [dY_0 B_0 | … | dY_{n-1} B_{n-1}], gA_stack (n·r, in) = s tᵀ X in one GEMM (X read once for
  /// the group), dX_j = s t_j A_j + dY_j W_j and gB_j = s dY_jᵀ U_j per linear, U = the forward's
  /// X A_stackᵀ (`u`, from forward_shared's keep_u) or recomputed. `accumulate`: the gB_j and
  /// gA_stack are added to, else overwritten; `accumulate_gA`, when given, decides for gA_stack
  /// alone. G = S, or float with a lower-precision S (fp32 gradient GEMMs, the scale as the forward
  /// rounds it, as backward()'s fp32 form). Each result is backward()'s up to the stacked GEMMs'
  /// summation order.
  template <class G>
  void backward_shared(CV X, CV A_stack, std::span<const SharedBackward<G>> lins, MatrixView<G> gA_stack,
                       bool accumulate = true, std::optional<bool> accumulate_gA = std::nullopt, CV u = {}) {
    static_assert(std::is_same_v<G, S> || std::is_same_v<G, float>, "AdapterLinear: gradients in S or fp32");
    if constexpr (!std::is_same_v<G, S>)
      static_assert(requires(B& b, MatrixView<float> c) { b.gemm_f32(Op::T, Op::N, 1.0f, CV{}, CV{}, 1.0f, c); },
                    "AdapterLinear: fp32 gradients need a backend with gemm_f32");
    const index_t n = static_cast<index_t>(lins.size());
    const index_t r = stack_rank(A_stack, n);
    require_shape(gA_stack, A_stack.rows, A_stack.cols, "AdapterLinear gA_stack");
    for (index_t j = 0; j < n; ++j) {
      const auto& l = lins[std::size_t(j)];
      member(j, n, r, [&] {
        check(l.W, A_stack.row_block(j * r, r), l.Bf, X);
        require_shape(l.dY, X.rows, l.W.rows, "AdapterLinear dY");
        require_shape(l.gB, l.Bf.rows, l.Bf.cols, "AdapterLinear gB");
        if (l.dX.data) require_shape(l.dX, X.rows, l.W.cols, "AdapterLinear dX");
      });
    }
    if (u.data) require_shape(u, X.rows, n * r, "AdapterLinear u");
    const G sg = std::is_same_v<G, S> ? G(S(s_)) : G(float(S(s_)));
    auto gemm_g = [&](Op ta, Op tb, CV P, CV Q, bool acc, MatrixView<G> C) {
      const G beta = acc ? G(1) : G(0);
      if constexpr (std::is_same_v<G, S>) b_->gemm(ta, tb, sg, P, Q, beta, C);
      else b_->gemm_f32(ta, tb, float(sg), P, Q, float(beta), C);
    };
    auto t = t1_.get(*b_, X.rows, n * r);  // (tokens, n·r) = [dY_j B_j]
    for (index_t j = 0; j < n; ++j) {
      const auto& l = lins[std::size_t(j)];
      b_->gemm(Op::N, Op::N, S(1), l.dY, l.Bf, S(0), t.col_block(j * r, r));
      if (l.dX.data) {
        b_->gemm(Op::N, Op::N, S(s_), CV(t).col_block(j * r, r), A_stack.row_block(j * r, r), S(0), l.dX);
        b_->gemm(Op::N, Op::N, S(1), l.dY, l.W, S(1), l.dX);
      }
    }
    gemm_g(Op::T, Op::N, CV(t), X, accumulate_gA.value_or(accumulate), gA_stack);
    CV U = u;
    if (!U.data) {
      auto w = t2_.get(*b_, X.rows, n * r);
      b_->gemm(Op::N, Op::T, S(1), X, A_stack, S(0), w);
      U = CV(w);
    }
    for (index_t j = 0; j < n; ++j) {
      const auto& l = lins[std::size_t(j)];
      gemm_g(Op::T, Op::N, l.dY, U.col_block(j * r, r), accumulate, l.gB);
    }
  }

  /// forward_shared() for n linears stored stacked: W_j consecutive row blocks of W_cat (O, in),
  /// O = Σ out_j, and Y_j consecutive column blocks of Y_cat (tokens, O) (a LLaMA layer's
  /// [W_q; W_k; W_v] and [q | k | v]); B_diag (O, n·r) holds B_j in rows [o_j, o_j + out_j) and
  /// columns [j·r, (j+1)·r), zeros elsewhere. Three GEMMs instead of 1 + 2n: U = X A_stackᵀ (into
  /// `keep_u` when given), Y_cat = s U B_diagᵀ, then Y_cat += X W_catᵀ (the thin part first, as
  /// forward()). Each Y_j is forward_shared()'s up to the GEMMs' summation order.
  void forward_stacked(CV X, CV W_cat, CV A_stack, CV B_diag, V Y_cat, V keep_u = {}) {
    check_stacked(W_cat, A_stack, B_diag, X);
    const index_t nr = A_stack.rows;
    require_shape(Y_cat, X.rows, W_cat.rows, "AdapterLinear::forward_stacked Y_cat");
    if (keep_u.data) require_shape(keep_u, X.rows, nr, "AdapterLinear keep_u");
    auto u = keep_u.data ? keep_u : t1_.get(*b_, X.rows, nr);
    b_->gemm(Op::N, Op::T, S(1), X, A_stack, S(0), u);
    b_->gemm(Op::N, Op::T, S(s_), CV(u), B_diag, S(0), Y_cat);
    b_->gemm(Op::N, Op::T, S(1), X, W_cat, S(1), Y_cat);
  }

  /// backward_shared() for n linears stored stacked (forward_stacked's layout; dY_j consecutive
  /// column blocks of dY_cat (tokens, O), `outs` the out_j): stacked_v() (V = dY_cat B_diag),
  /// stacked_dx() (the group's dX summed), then stacked_gradients() with U the forward's X A_stackᵀ
  /// (`u`) or recomputed. `accumulate` / `accumulate_gA` and G as backward_shared(); each result is
  /// backward_shared()'s (dX_sum: the sum of its dX_j) up to the GEMMs' summation order.
  template <class G>
  void backward_stacked(CV X, CV W_cat, CV A_stack, CV B_diag, CV dY_cat, std::span<const index_t> outs, V dX_sum,
                        std::span<const MatrixView<G>> gB, MatrixView<G> gA_stack, bool accumulate = true,
                        std::optional<bool> accumulate_gA = std::nullopt, CV u = {}) {
    check_stacked(W_cat, A_stack, B_diag, X);
    const index_t nr = A_stack.rows;
    auto v = t1_.get(*b_, X.rows, nr);
    stacked_v(B_diag, dY_cat, v);
    stacked_dx(W_cat, A_stack, dY_cat, CV(v), dX_sum);
    CV U = u;
    if (!U.data) {
      auto w = t2_.get(*b_, X.rows, nr);
      b_->gemm(Op::N, Op::T, S(1), X, A_stack, S(0), w);
      U = CV(w);
    }
    stacked_gradients(X, CV(v), U, dY_cat, outs, gB, gA_stack, accumulate, accumulate_gA);
  }

  /// backward_stacked()'s first GEMM: V (tokens, n·r) = dY_cat (tokens, O) · B_diag (O, n·r), the
  /// input of stacked_dx() and stacked_gradients() (which may run on another backend once V is written).
  void stacked_v(CV B_diag, CV dY_cat, V v) {
    require_shape(dY_cat, dY_cat.rows, B_diag.rows, "AdapterLinear::stacked_v dY_cat");
    require_shape(v, dY_cat.rows, B_diag.cols, "AdapterLinear::stacked_v V");
    b_->gemm(Op::N, Op::N, S(1), dY_cat, B_diag, S(0), v);
  }
  /// backward_stacked()'s dX: dX_sum (tokens, in) = s V A_stack + dY_cat W_cat (overwritten; the thin
  /// part first, as forward()).
  void stacked_dx(CV W_cat, CV A_stack, CV dY_cat, CV v, V dX_sum) {
    require_shape(dY_cat, dY_cat.rows, W_cat.rows, "AdapterLinear::stacked_dx dY_cat");
    require_shape(v, dY_cat.rows, A_stack.rows, "AdapterLinear::stacked_dx V");
    require_shape(A_stack, A_stack.rows, W_cat.cols, "AdapterLinear::stacked_dx A_stack");
    require_shape(dX_sum, dY_cat.rows, W_cat.cols, "AdapterLinear::stacked_dx dX_sum");
    b_->gemm(Op::N, Op::N, S(s_), v, A_stack, S(0), dX_sum);
    b_->gemm(Op::N, Op::N, S(1), dY_cat, W_cat, S(1), dX_sum);
  }

  /// The gradient half of backward_stacked(): gA_stack (n·r, in) = s Vᵀ X and gB_j (out_j, r) =
  /// s dY_jᵀ U_j (dY_j = dY_cat's columns [o_j, o_j + out_j), U = X A_stackᵀ (tokens, n·r)), with the
  /// scale as the forward rounds it (backward_shared()'s). `accumulate` / `accumulate_gA` as there.
  template <class G>
  void stacked_gradients(CV X, CV v, CV u, CV dY_cat, std::span<const index_t> outs, std::span<const MatrixView<G>> gB,
                         MatrixView<G> gA_stack, bool accumulate = true,
                         std::optional<bool> accumulate_gA = std::nullopt) {
    static_assert(std::is_same_v<G, S> || std::is_same_v<G, float>, "AdapterLinear: gradients in S or fp32");
    const index_t n = index_t(outs.size());
    HDPISSA_REQUIRE(n >= 1 && gB.size() == outs.size() && v.cols % n == 0,
                    "AdapterLinear::backward_stacked: expected n ≥ 1 widths, as many gB and V (tokens, n·r); found ",
                    n, " widths, ", gB.size(), " gB, V ", shape_str(v.rows, v.cols));
    const index_t r = v.cols / n;
    index_t O = 0;
    for (std::size_t j = 0; j < outs.size(); ++j) {
      require_shape(gB[j], outs[j], r, "AdapterLinear::backward_stacked gB");
      O += outs[j];
    }
    require_shape(dY_cat, X.rows, O, "AdapterLinear::backward_stacked dY_cat");
    require_shape(v, X.rows, n * r, "AdapterLinear::backward_stacked V");
    require_shape(u, X.rows, n * r, "AdapterLinear u");
    require_shape(gA_stack, n * r, X.cols, "AdapterLinear::backward_stacked gA_stack");
    const G sg = std::is_same_v<G, S> ? G(S(s_)) : G(float(S(s_)));
    auto gemm_g = [&](CV P, CV Q, bool acc, MatrixView<G> C) {
      const G beta = acc ? G(1) : G(0);
      if constexpr (std::is_same_v<G, S>) b_->gemm(Op::T, Op::N, sg, P, Q, beta, C);
      else b_->gemm_f32(Op::T, Op::N, float(sg), P, Q, float(beta), C);
    };
    gemm_g(v, X, accumulate_gA.value_or(accumulate), gA_stack);
    index_t o = 0;
    for (std::size_t j = 0; j < outs.size(); ++j) {
      gemm_g(dY_cat.col_block(o, outs[j]), u.col_block(index_t(j) * r, r), accumulate, gB[j]);
      o += outs[j];
    }
  }

 private:
  /// The shapes of a stacked group: X (tokens, in), W_cat (O, in), A_stack (n·r, in), B_diag (O, n·r).
  static void check_stacked(CV W_cat, CV A_stack, CV B_diag, CV X) {
    HDPISSA_REQUIRE(X.cols == W_cat.cols && A_stack.cols == W_cat.cols && B_diag.rows == W_cat.rows &&
                        B_diag.cols == A_stack.rows && A_stack.rows >= 1,
                    "AdapterLinear stacked group: expected X (tokens, in), W_cat (O, in), A_stack (n·r, in), "
                    "B_diag (O, n·r); found X ",
                    shape_str(X.rows, X.cols), ", W_cat ", shape_str(W_cat.rows, W_cat.cols), ", A_stack ",
                    shape_str(A_stack.rows, A_stack.cols), ", B_diag ", shape_str(B_diag.rows, B_diag.cols));
  }
  /// r of an (n·r, in) stack of n A factors (a clear error when it does not split).
  static index_t stack_rank(CV A_stack, index_t n) {
    HDPISSA_REQUIRE(n >= 1 && A_stack.rows % n == 0, "AdapterLinear: expected A_stack (n·r, in) for n = ", n,
                    " linears, found ", shape_str(A_stack.rows, A_stack.cols));
    return A_stack.rows / n;
  }
  /// Runs a member's checks; an error names the member.
  template <class F>
  static void member(index_t j, index_t n, index_t r, F&& checks) {
    try {
      checks();
    } catch (const InvalidArgument& e) {
      throw InvalidArgument(cat("AdapterLinear shared-input group, linear ", j, " of ", n, " (A = rows ", j * r, "..",
                                (j + 1) * r - 1, " of A_stack): ", e.what()));
    }
  }
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
