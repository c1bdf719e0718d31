#pragma once
/// \file folded_linears.hpp
/// The folded storage of n muted linears that read one input (a LLaMA layer's q|k|v or gate|up, or
/// one linear, n = 1), and MutedLinear's forward / backward over it in two wide GEMMs instead of
/// 2n + 2 narrow ones (issue 20: at 1024 tokens each adapter GEMM is a 11–35 µs launch-bound call;
/// bench/micro/bench_fused_linears.cu measured 3.2 ms of a TinyLlama 2 × 512 micro-batch and 5.4 ms
/// of a LLaMA-2-7B one, session 24).
///
/// Layout (one row-major matrix, ld ≥ cols(); O = Σ out_j, o_j = Σ_{i<j} out_i):
///
///     columns:          [0, in)        [in + j·r, in + (j+1)·r)
///     rows [o_j, +out_j)  W_j (out_j, in)   B_j (out_j, r) in block j, zeros in the other blocks
///     rows [O + j·r, +r)  A_j (r, in)       (unused)
///
/// so that, with X (tokens, in) and dY = [dY_0 … dY_{n-1}] (tokens, O):
///   X · [W; A]ᵀ            = [Y_0 … Y_{n-1} | U]      U = X A_stackᵀ (tokens, n·r)
///   dY · [W | blockdiag(B)] = [Σ_j dY_j W_j | V]        V = [dY_0 B_0 … dY_{n-1} B_{n-1}]
/// The exact mute's backward needs exactly U and V (g_A = α Vᵀ X, g_B_j = α dY_jᵀ U_j), and a layer's
/// dX is the sum over the linears that read its input. The off-diagonal B blocks must stay zero
/// (FoldedLayout::zero_adapter_columns once, then set B_j only through B(j)).

#include <numeric>
#include <span>
#include <vector>

#include "hdpissa/adapter/muted_linear.hpp"
#include "hdpissa/core/view.hpp"

namespace hdpissa {

/// Shapes and views of a folded storage (see the file comment).
class FoldedLayout {
 public:
  /// n = outs.size() ≥ 1 linears of widths outs, input width `in`, adapter rank r ≥ 1 each.
  FoldedLayout(std::vector<index_t> outs, index_t in, index_t r) : outs_(std::move(outs)), in_(in), r_(r) {
    HDPISSA_REQUIRE(!outs_.empty(), "FoldedLayout: expected at least one linear, found none");
    HDPISSA_REQUIRE(in >= 1 && r >= 1, "FoldedLayout: expected in ≥ 1 and r ≥ 1, found in ", in, ", r ", r);
    for (std::size_t j = 0; j < outs_.size(); ++j) {
      HDPISSA_REQUIRE(outs_[j] >= 1, "FoldedLayout: linear ", j, " has ", outs_[j], " outputs; expected ≥ 1");
      row_.push_back(O_);
      O_ += outs_[j];
    }
  }
  [[nodiscard]] int n() const { return static_cast<int>(outs_.size()); }
  [[nodiscard]] index_t in() const { return in_; }
  [[nodiscard]] index_t rank() const { return r_; }
  [[nodiscard]] index_t out(int j) const { return outs_.at(std::size_t(j)); }
  /// O = Σ out_j: the W rows (and dY's columns).
  [[nodiscard]] index_t out_total() const { return O_; }
  /// First row of W_j (and first column of Y_j in the forward's output, of dY_j in the backward's input).
  [[nodiscard]] index_t row_of(int j) const { return row_.at(std::size_t(j)); }
  /// The storage's shape: (O + n·r, in + n·r).
  [[nodiscard]] index_t rows() const { return O_ + index_t(n()) * r_; }
  [[nodiscard]] index_t cols() const { return in_ + index_t(n()) * r_; }

  /// Throws unless `s` is a storage of this layout (shape, ld ≥ cols()).
  template <class T>
  void check(MatrixView<T> s, const char* what = "FoldedLayout storage") const {
    HDPISSA_REQUIRE(s.rows == rows() && s.cols == cols() && s.ld >= s.cols, what, ": expected ",
                    shape_str(rows(), cols()), " with ld ≥ ", cols(), " for ", n(), " linears of ", O_,
                    " outputs, in ", in_, ", r ", r_, "; found ", shape_str(s.rows, s.cols), " ld ", s.ld);
  }
  template <class T>
  MatrixView<T> W(MatrixView<T> s, int j) const { return s.block(row_of(j), 0, out(j), in_); }
  template <class T>
  MatrixView<T> A(MatrixView<T> s, int j) const { return s.block(O_ + index_t(j) * r_, 0, r_, in_); }
  /// [A_0; …; A_{n-1}] (n·r, in): MutedLinear::backward_shared's A_stack.
  template <class T>
  MatrixView<T> A_stack(MatrixView<T> s) const { return s.block(O_, 0, index_t(n()) * r_, in_); }
  template <class T>
  MatrixView<T> B(MatrixView<T> s, int j) const { return s.block(row_of(j), in_ + index_t(j) * r_, out(j), r_); }
  /// [W; A] (O + n·r, in): the forward's operand.
  template <class T>
  MatrixView<T> forward_operand(MatrixView<T> s) const { return s.block(0, 0, rows(), in_); }
  /// [W | blockdiag(B)] (O, in + n·r): the backward's operand.
  template <class T>
  MatrixView<T> backward_operand(MatrixView<T> s) const { return s.block(0, 0, O_, cols()); }

  /// Zeroes every B block and the unused corner (columns [in, in + n·r) of every row), so that only
  /// the B_j set afterwards are non-zero: call once after allocating.
  template <class Bk>
  void zero_adapter_columns(Bk& b, MatrixView<typename Bk::scalar_type> s) const {
    check(s);
    b.fill(s.block(0, in_, rows(), index_t(n()) * r_), typename Bk::scalar_type(0));
  }

 private:
  std::vector<index_t> outs_, row_;
  index_t in_, r_, O_ = 0;
};

/// MutedLinear (ExactMute) over a FoldedLayout storage: the forward of its n linears in one GEMM,
/// the backward's dX and the adapters' V in one more; the two gradient GEMMs as backward_shared.
template <TensorBackend B>
class FoldedMutedLinears {
 public:
  using S = typename B::scalar_type;
  using V = MatrixView<S>;
  using CV = ConstMatrixView<S>;

  FoldedMutedLinears(B& b, double scaling) : b_(&b), alpha_(scaling) {}
  [[nodiscard]] double scaling() const { return alpha_; }

  /// YU (tokens, O + n·r) ← X (tokens, in) · [W; A]ᵀ: columns [row_of(j), + out(j)) are
  /// Y_j = X W_jᵀ (the muted forward), the last n·r are U = X A_stackᵀ, which backward() needs.
  void forward(const FoldedLayout& L, CV store, CV X, V YU) {
    L.check(store);
    HDPISSA_REQUIRE(X.cols == L.in(), "FoldedMutedLinears::forward: X is ", shape_str(X.rows, X.cols),
                    "; expected (tokens, ", L.in(), ")");
    require_shape(YU, X.rows, L.rows(), "FoldedMutedLinears YU");
    b_->gemm(Op::N, Op::T, S(1), X, L.forward_operand(store), S(0), YU);
  }

  /// The backward of the n linears, with U from forward() (tokens, n·r) and dY = [dY_0 … dY_{n-1}]
  /// (tokens, O):
  ///   dXV (tokens, in + n·r) ← dY · [W | blockdiag(B)]: columns [0, in) = dX = Σ_j dY_j W_j
  ///   (overwritten), the last n·r = V = [dY_j B_j];
  ///   gA_stack (n·r, in) = α Vᵀ X and each gB[j] (out_j, r) = α dY_jᵀ U_j, added to their contents
  ///   when `accumulate`, else overwritten. G = S, or float with a backend that has gemm_f32.
  /// Each result equals MutedLinear::backward_shared's (and the sum of its dX_j) up to the order of
  /// the sums inside the GEMMs.
  template <class G>
  void backward(const FoldedLayout& L, CV store, CV X, CV dY, CV U, V dXV, MatrixView<G> gA_stack,
                std::span<const MatrixView<G>> gB, bool accumulate = true) {
    static_assert(std::is_same_v<G, S> || std::is_same_v<G, float>, "FoldedMutedLinears: gradients in S or fp32");
    L.check(store);
    const index_t nr = index_t(L.n()) * L.rank();
    HDPISSA_REQUIRE(X.cols == L.in(), "FoldedMutedLinears::backward: X is ", shape_str(X.rows, X.cols),
                    "; expected (tokens, ", L.in(), ")");
    require_shape(dY, X.rows, L.out_total(), "FoldedMutedLinears dY");
    require_shape(U, X.rows, nr, "FoldedMutedLinears U");
    require_shape(dXV, X.rows, L.cols(), "FoldedMutedLinears dXV");
    require_shape(gA_stack, nr, L.in(), "FoldedMutedLinears gA_stack");
    HDPISSA_REQUIRE(gB.size() == std::size_t(L.n()), "FoldedMutedLinears::backward: expected ", L.n(),
                    " gB views, found ", gB.size());
    for (int j = 0; j < L.n(); ++j) require_shape(gB[std::size_t(j)], L.out(j), L.rank(), "FoldedMutedLinears gB");
    b_->gemm(Op::N, Op::N, S(1), dY, L.backward_operand(store), S(0), dXV);
    const CV Vt = CV(dXV).col_block(L.in(), nr);
    const G a = G(alpha_), beta = accumulate ? G(1) : G(0);
    auto gemm_g = [&](CV P, CV Q, MatrixView<G> C) {
      if constexpr (std::is_same_v<G, S>) b_->gemm(Op::T, Op::N, a, P, Q, beta, C);
      else b_->gemm_f32(Op::T, Op::N, float(a), P, Q, float(beta), C);
    };
    gemm_g(Vt, X, gA_stack);
    for (int j = 0; j < L.n(); ++j)
      gemm_g(dY.col_block(L.row_of(j), L.out(j)), U.col_block(index_t(j) * L.rank(), L.rank()), gB[std::size_t(j)]);
  }

 private:
  B* b_;
  double alpha_;
};

}  // namespace hdpissa
