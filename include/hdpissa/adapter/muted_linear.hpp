#pragma once
/// \file muted_linear.hpp
/// MutedLinear (spec §2): the HD-PiSSA layer. The forward is y = x Wᵀ (+ bias); the backward gives
/// dX = dY W and the adapter gradients PiSSA would have at W_res + B A = W:
///   g_A = α (dY B)ᵀ X   (r, in)      g_B = α dYᵀ (X Aᵀ)   (out, r)
/// Mute policies (a template parameter):
///  - ExactMute (default): the adapter never runs in the forward; four thin GEMMs in the backward.
///    Exact, and immune to the γ precision hazards the paper reports.
///  - ScaledMute{γ}: the paper's literal form y = x (W + γ α B A)ᵀ with gradients rescaled by 1/γ,
///    materialising the (out, in) product as the reference does. For fidelity experiments only.
/// Valid only with adapter dropout 0 (as in every published run).

#include <optional>
#include <span>

#include "hdpissa/adapter/adapter_set.hpp"
#include "hdpissa/adapter/linear_workspace.hpp"
#include "hdpissa/core/concepts.hpp"

namespace hdpissa {

/// Mute policy: no adapter term in the forward; analytic gradients in the backward.
struct ExactMute {
  static constexpr const char* name() { return "exact"; }
};

/// Mute policy: the paper's y = x (W + γ α B A)ᵀ, adapter gradients multiplied by 1/γ.
struct ScaledMute {
  double gamma = 1e-16;
  static constexpr const char* name() { return "scaled"; }
};

/// The muted HD-PiSSA linear layer over backend B. α is the adapter scaling (alpha / r; see
/// peft_scaling(), reference_scaling()). One instance can serve every layer: its scratch grows to the largest.
template <TensorBackend B, class Mute = ExactMute>
class MutedLinear {
 public:
  using S = typename B::scalar_type;
  using V = MatrixView<S>;
  using CV = ConstMatrixView<S>;

  explicit MutedLinear(B& b, double scaling = 1.0, Mute mute = {}) : b_(&b), alpha_(scaling), mute_(mute) {
    if constexpr (std::is_same_v<Mute, ScaledMute>)
      HDPISSA_REQUIRE(mute.gamma > 0, "ScaledMute: expected gamma > 0, found ", mute.gamma);
  }
  double scaling() const { return alpha_; }
  const Mute& mute() const { return mute_; }

  /// Sizes the scratch for up to `tokens` rows so later calls never allocate.
  void reserve(index_t tokens, index_t out, index_t in, index_t r) {
    t1_.get(*b_, tokens, r);
    t2_.get(*b_, tokens, r);
    ones_.get(*b_, tokens, 1);
    if constexpr (std::is_same_v<Mute, ScaledMute>) {
      weff_.get(*b_, out, in);
      g_.get(*b_, out, in);
    }
  }

  /// Y (tokens, out) = X (tokens, in) Wᵀ (+ bias (1, out)). A (r, in) and Bf (out, r) are read
  /// only by ScaledMute.
  void forward(CV W, CV A, CV Bf, CV X, V Y, CV bias = {}) {
    check(W, A, Bf, X);
    require_shape(Y, X.rows, W.rows, "MutedLinear Y");
    if constexpr (std::is_same_v<Mute, ScaledMute>) {
      auto weff = effective_weight(W, A, Bf);
      b_->gemm(Op::N, Op::T, S(1), X, CV(weff), S(0), Y);
    } else {
      b_->gemm(Op::N, Op::T, S(1), X, W, S(0), Y);
    }
    detail::add_bias(*b_, ones_, bias, Y);
  }

  /// forward() with the factors of an AdapterHandle (e.g. DirectWeightUpdate::adapter(layer, lg)).
  void forward(CV W, const AdapterHandle<S>& h, CV X, V Y, CV bias = {}) { forward(W, h.A, h.B, X, Y, bias); }
  /// backward() into the handle's gradient buffers (added to them when `accumulate`).
  void backward(CV W, const AdapterHandle<S>& h, CV X, CV dY, V dX, bool accumulate = true) {
    backward(W, h.A, h.B, X, dY, dX, h.grad_A, h.grad_B, accumulate);
  }

  /// dX (tokens, in) = dY W (skipped if dX.data is null); gA (r, in), gB (out, r) get the adapter
  /// gradients, added to their contents when `accumulate` (gradient accumulation), else overwritten.
  void backward(CV W, CV A, CV Bf, CV X, CV dY, V dX, V gA, V gB, bool accumulate = true) {
    check(W, A, Bf, X);
    require_shape(dY, X.rows, W.rows, "MutedLinear dY");
    require_shape(gA, A.rows, A.cols, "MutedLinear gA");
    require_shape(gB, Bf.rows, Bf.cols, "MutedLinear gB");
    const S beta = accumulate ? S(1) : S(0);
    if constexpr (std::is_same_v<Mute, ScaledMute>) {
      auto weff = effective_weight(W, A, Bf);
      if (dX.data) {
        require_shape(dX, X.rows, W.cols, "MutedLinear dX");
        b_->gemm(Op::N, Op::N, S(1), dY, CV(weff), S(0), dX);
      }
      // Autograd of P = c·(B A), c = γα: dP = c·G with G = dYᵀ X; then the 1/γ rescale.
      const double c = mute_.gamma * alpha_;
      auto G = g_.get(*b_, W.rows, W.cols);
      b_->gemm(Op::T, Op::N, S(1), dY, X, S(0), G);
      b_->scale(G, S(c));
      b_->gemm(Op::T, Op::N, S(1.0 / mute_.gamma), Bf, CV(G), beta, gA);
      b_->gemm(Op::N, Op::T, S(1.0 / mute_.gamma), CV(G), A, beta, gB);
    } else {
      if (dX.data) {
        require_shape(dX, X.rows, W.cols, "MutedLinear dX");
        b_->gemm(Op::N, Op::N, S(1), dY, W, S(0), dX);
      }
      auto t = t1_.get(*b_, X.rows, A.rows);  // (tokens, r) = dY B
      b_->gemm(Op::N, Op::N, S(1), dY, Bf, S(0), t);
      b_->gemm(Op::T, Op::N, S(alpha_), CV(t), X, beta, gA);
      auto u = t2_.get(*b_, X.rows, A.rows);  // (tokens, r) = X Aᵀ
      b_->gemm(Op::N, Op::T, S(1), X, A, S(0), u);
      b_->gemm(Op::T, Op::N, S(alpha_), dY, CV(u), beta, gB);
    }
  }

  /// backward() with fp32 gradients for a lower-precision backend (bf16 storage): gA, gB get the
  /// fp32 results of the two gradient GEMMs (fp32 sums over the tokens, never rounded to the
  /// storage type), added to their contents when `accumulate`. The thin products dY B and X Aᵀ stay
  /// in the storage type, as in backward(). Needs a backend with gemm_f32 (CudaBackend) and ExactMute.
  template <class G>
    requires(!std::is_same_v<G, S>)
  void backward(CV W, CV A, CV Bf, CV X, CV dY, V dX, MatrixView<G> gA, MatrixView<G> gB, bool accumulate = true) {
    static_assert(std::is_same_v<G, float>, "MutedLinear: fp32 gradients only");
    static_assert(std::is_same_v<Mute, ExactMute>, "MutedLinear: fp32 gradients need ExactMute");
    static_assert(requires(B& b, MatrixView<float> c) { b.gemm_f32(Op::T, Op::N, 1.0f, CV{}, CV{}, 1.0f, c); },
                  "MutedLinear: fp32 gradients need a backend with gemm_f32");
    check(W, A, Bf, X);
    require_shape(dY, X.rows, W.rows, "MutedLinear dY");
    require_shape(gA, A.rows, A.cols, "MutedLinear gA");
    require_shape(gB, Bf.rows, Bf.cols, "MutedLinear gB");
    const float beta = accumulate ? 1.0f : 0.0f, a = float(alpha_);
    if (dX.data) {
      require_shape(dX, X.rows, W.cols, "MutedLinear dX");
      b_->gemm(Op::N, Op::N, S(1), dY, W, S(0), dX);
    }
    auto t = t1_.get(*b_, X.rows, A.rows);  // (tokens, r) = dY B
    b_->gemm(Op::N, Op::N, S(1), dY, Bf, S(0), t);
    b_->gemm_f32(Op::T, Op::N, a, CV(t), X, beta, gA);
    auto u = t2_.get(*b_, X.rows, A.rows);  // (tokens, r) = X Aᵀ
    b_->gemm(Op::N, Op::T, S(1), X, A, S(0), u);
    b_->gemm_f32(Op::T, Op::N, a, dY, CV(u), beta, gB);
  }

  /// One linear of a group that reads the same input, for backward_shared(): W (out, in), its B
  /// factor Bf (out, r), dY (tokens, out), dX (tokens, in; a null data pointer skips it) and gB
  /// (out, r), in the gradient type G (S, or float on a backend with gemm_f32).
  template <class G = S>
  struct SharedInput {
    CV W, Bf, dY;
    V dX;
    MatrixView<G> gB;
  };

  /// Sizes the scratch of backward_shared() for groups of up to `n` linears of rank r.
  void reserve_shared(index_t tokens, index_t n, index_t r) {
    t1_.get(*b_, tokens, n * r);
    t2_.get(*b_, tokens, n * r);
  }

  /// backward() of n linears y_j = X W_jᵀ that read the same X (a LLaMA layer's q, k, v or gate,
  /// up), ExactMute: their A factors stacked in A_stack (n·r, in) = [A_0; …; A_{n-1}], and
  /// gA_stack (n·r, in) receiving [gA_0; …; gA_{n-1}] (added to when `accumulate`). X is read by two
  /// GEMMs for the whole group, U = X A_stackᵀ and gA_stack = α [dY_0 B_0 | … | dY_{n-1} B_{n-1}]ᵀ X,
  /// instead of by two per linear; dX_j, dY_j B_j and gB_j = α dY_jᵀ U_j are per linear as in
  /// backward(). Each result is backward()'s up to the summation order of the stacked GEMMs.
  /// G = S, or float with a lower-precision S (the fp32-gradient form of backward()).
  /// `accumulate`: every gB_j and gA_stack are added to (gradient accumulation), else overwritten;
  /// `accumulate_gA`, when given, decides for gA_stack alone (e.g. a scratch the caller then adds
  /// into per-linear sums, while the gB_j are the sums themselves).
  template <class G>
  void backward_shared(CV X, CV A_stack, std::span<const SharedInput<G>> lins, MatrixView<G> gA_stack,
                       bool accumulate = true, std::optional<bool> accumulate_gA = std::nullopt) {
    static_assert(std::is_same_v<Mute, ExactMute>, "MutedLinear::backward_shared: ExactMute only");
    static_assert(std::is_same_v<G, S> || std::is_same_v<G, float>, "MutedLinear: gradients in S or fp32");
    if constexpr (!std::is_same_v<G, S>)
      static_assert(requires(B& b, MatrixView<float> c) { b.gemm_f32(Op::T, Op::N, 1.0f, CV{}, CV{}, 1.0f, c); },
                    "MutedLinear: fp32 gradients need a backend with gemm_f32");
    const index_t n = static_cast<index_t>(lins.size());
    HDPISSA_REQUIRE(n >= 1 && A_stack.rows % n == 0, "MutedLinear::backward_shared: expected A_stack (n·r, in) for n = ",
                    n, " linears, found ", shape_str(A_stack.rows, A_stack.cols));
    const index_t r = A_stack.rows / n;
    require_shape(gA_stack, A_stack.rows, A_stack.cols, "MutedLinear gA_stack");
    for (index_t j = 0; j < n; ++j) {
      const auto& l = lins[std::size_t(j)];
      try {  // the message names the member (its A is rows [j·r, (j+1)·r) of A_stack)
        check(l.W, A_stack.row_block(j * r, r), l.Bf, X);
        require_shape(l.dY, X.rows, l.W.rows, "MutedLinear dY");
        require_shape(l.gB, l.Bf.rows, l.Bf.cols, "MutedLinear gB");
        if (l.dX.data) require_shape(l.dX, X.rows, l.W.cols, "MutedLinear dX");
      } catch (const InvalidArgument& e) {
        throw InvalidArgument(cat("MutedLinear::backward_shared, linear ", j, " of ", n, " (A = rows ", j * r, "..",
                                  (j + 1) * r - 1, " of A_stack): ", e.what()));
      }
    }
    const G a = G(alpha_);
    auto gemm_g = [&](Op ta, Op tb, CV P, CV Q, bool acc, MatrixView<G> C) {
      const G beta = acc ? G(1) : G(0);
      if constexpr (std::is_same_v<G, S>) b_->gemm(ta, tb, a, P, Q, beta, C);
      else b_->gemm_f32(ta, tb, float(a), P, Q, float(beta), C);
    };
    for (const auto& l : lins)
      if (l.dX.data) b_->gemm(Op::N, Op::N, S(1), l.dY, l.W, S(0), l.dX);
    auto t = t1_.get(*b_, X.rows, n * r);  // (tokens, n·r) = [dY_j B_j]
    for (index_t j = 0; j < n; ++j) {
      const auto& l = lins[std::size_t(j)];
      b_->gemm(Op::N, Op::N, S(1), l.dY, l.Bf, S(0), t.col_block(j * r, r));
    }
    gemm_g(Op::T, Op::N, CV(t), X, accumulate_gA.value_or(accumulate), gA_stack);
    auto u = t2_.get(*b_, X.rows, n * r);  // (tokens, n·r) = X A_stackᵀ
    b_->gemm(Op::N, Op::T, S(1), X, A_stack, S(0), u);
    for (index_t j = 0; j < n; ++j) {
      const auto& l = lins[std::size_t(j)];
      gemm_g(Op::T, Op::N, l.dY, CV(u).col_block(j * r, r), accumulate, l.gB);
    }
  }

  /// backward_shared() for n linears stored stacked: their W_j consecutive row blocks of W_cat
  /// (O, in), O = Σ out_j, and their dY_j consecutive column blocks of dY_cat (tokens, O) (a LLaMA
  /// layer's [W_q; W_k; W_v] and [dY_q | dY_k | dY_v]). Four GEMMs over the group instead of
  /// 2 + 3n:
  ///   dX_sum (tokens, in) = dY_cat W_cat = Σ_j dY_j W_j (overwritten; the group's dX, summed; a
  ///   null data pointer skips it);
  ///   V (tokens, n·r) = dY_cat B_diag, B_diag (O, n·r) holding B_j in rows [o_j, o_j + out_j) and
  ///   columns [j·r, (j+1)·r), zeros elsewhere (so V = [dY_0 B_0 | … | dY_{n-1} B_{n-1}]);
  ///   gA_stack (n·r, in) = α Vᵀ X; U = X A_stackᵀ; gB_j = α dY_jᵀ U_j (`outs` = the out_j).
  /// Each result is backward_shared()'s (dX_sum: the sum of its dX_j) up to the order of the sums
  /// inside the GEMMs. `accumulate` / `accumulate_gA` as backward_shared(); G = S or float.
  template <class G>
  void backward_stacked(CV X, CV W_cat, CV A_stack, CV B_diag, CV dY_cat, std::span<const index_t> outs, V dX_sum,
                        std::span<const MatrixView<G>> gB, MatrixView<G> gA_stack, bool accumulate = true,
                        std::optional<bool> accumulate_gA = std::nullopt) {
    static_assert(std::is_same_v<Mute, ExactMute>, "MutedLinear::backward_stacked: ExactMute only");
    static_assert(std::is_same_v<G, S> || std::is_same_v<G, float>, "MutedLinear: gradients in S or fp32");
    const index_t n = static_cast<index_t>(outs.size());
    HDPISSA_REQUIRE(n >= 1 && gB.size() == outs.size() && A_stack.rows % n == 0,
                    "MutedLinear::backward_stacked: expected n ≥ 1 widths, as many gB and A_stack (n·r, in); found ",
                    n, " widths, ", gB.size(), " gB, A_stack ", shape_str(A_stack.rows, A_stack.cols));
    const index_t r = A_stack.rows / n;
    index_t O = 0;
    for (index_t j = 0; j < n; ++j) {
      HDPISSA_REQUIRE(outs[std::size_t(j)] >= 1, "MutedLinear::backward_stacked: linear ", j, " has width ",
                      outs[std::size_t(j)]);
      require_shape(gB[std::size_t(j)], outs[std::size_t(j)], r, "MutedLinear::backward_stacked gB");
      O += outs[std::size_t(j)];
    }
    HDPISSA_REQUIRE(X.cols == W_cat.cols && A_stack.cols == W_cat.cols,
                    "MutedLinear::backward_stacked: X ", shape_str(X.rows, X.cols), ", W_cat ",
                    shape_str(W_cat.rows, W_cat.cols), ", A_stack ", shape_str(A_stack.rows, A_stack.cols),
                    "; expected the same input width");
    require_shape(W_cat, O, W_cat.cols, "MutedLinear::backward_stacked W_cat");
    require_shape(B_diag, O, n * r, "MutedLinear::backward_stacked B_diag");
    require_shape(dY_cat, X.rows, O, "MutedLinear::backward_stacked dY_cat");
    if (dX_sum.data) require_shape(dX_sum, X.rows, X.cols, "MutedLinear::backward_stacked dX_sum");
    require_shape(gA_stack, n * r, X.cols, "MutedLinear::backward_stacked gA_stack");
    const G a = G(alpha_);
    auto gemm_g = [&](Op ta, Op tb, CV P, CV Q, bool acc, MatrixView<G> C) {
      const G beta = acc ? G(1) : G(0);
      if constexpr (std::is_same_v<G, S>) b_->gemm(ta, tb, a, P, Q, beta, C);
      else b_->gemm_f32(ta, tb, float(a), P, Q, float(beta), C);
    };
    if (dX_sum.data) b_->gemm(Op::N, Op::N, S(1), dY_cat, W_cat, S(0), dX_sum);
    auto t = t1_.get(*b_, X.rows, n * r);  // V = dY_cat B_diag
    b_->gemm(Op::N, Op::N, S(1), dY_cat, B_diag, S(0), t);
    gemm_g(Op::T, Op::N, CV(t), X, accumulate_gA.value_or(accumulate), gA_stack);
    auto u = t2_.get(*b_, X.rows, n * r);  // U = X A_stackᵀ
    b_->gemm(Op::N, Op::T, S(1), X, A_stack, S(0), u);
    index_t o = 0;
    for (index_t j = 0; j < n; ++j) {
      const index_t w = outs[std::size_t(j)];
      gemm_g(Op::T, Op::N, dY_cat.col_block(o, w), CV(u).col_block(j * r, r), accumulate, gB[std::size_t(j)]);
      o += w;
    }
  }

 private:
  void check(CV W, CV A, CV Bf, CV X) const {
    HDPISSA_REQUIRE(X.cols == W.cols, "MutedLinear: X is ", shape_str(X.rows, X.cols), " but W is ",
                    shape_str(W.rows, W.cols), "; expected X (tokens, ", W.cols, ")");
    HDPISSA_REQUIRE(A.cols == W.cols && Bf.rows == W.rows && A.rows == Bf.cols,
                    "MutedLinear: for W ", shape_str(W.rows, W.cols), " expected A (r, ", W.cols,
                    ") and B (", W.rows, ", r), found A ", shape_str(A.rows, A.cols), " and B ",
                    shape_str(Bf.rows, Bf.cols));
  }
  V effective_weight(CV W, CV A, CV Bf) {
    auto weff = weff_.get(*b_, W.rows, W.cols);
    b_->copy(W, weff);
    b_->gemm(Op::N, Op::N, S(mute_.gamma * alpha_), Bf, A, S(1), weff);
    return weff;
  }

  B* b_;
  double alpha_;
  Mute mute_;
  detail::Scratch<B> t1_, t2_, ones_, weff_, g_;
};

/// The reference's adapter scaling alpha // r (integer division, as in the authors' code): for
/// fidelity runs only (r = 8, alpha = 12 gives 1, not 1.5; alpha < r gives 0).
inline double reference_scaling(long alpha, long rank) {
  HDPISSA_REQUIRE(rank > 0, "adapter rank must be positive, found ", rank);
  return double(alpha / rank);
}

/// PEFT's adapter scaling alpha / r in floating point (LoraConfig without rslora): the default.
inline double peft_scaling(double alpha, long rank) {
  HDPISSA_REQUIRE(rank > 0, "adapter rank must be positive, found ", rank);
  HDPISSA_REQUIRE(alpha > 0, "adapter alpha must be positive, found ", alpha);
  return alpha / double(rank);
}

}  // namespace hdpissa
