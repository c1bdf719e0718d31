#pragma once
/// \file linear_workspace.hpp
/// Grow-only scratch matrices for the linear layers: sized on first use (or up front with
/// reserve()), then reused, so a training step allocates nothing after the first one.

#include "hdpissa/core/concepts.hpp"

namespace hdpissa::detail {

template <TensorBackend B>
class Scratch {
 public:
  /// A (rows, cols) view into a buffer of at least rows·cols elements, grown if needed.
  MatrixView<typename B::scalar_type> get(B& b, index_t rows, index_t cols) {
    if (rows * cols > capacity_) {
      buf_ = b.make_matrix(1, rows * cols);
      capacity_ = rows * cols;
    }
    return {buf_.view().data, rows, cols, cols};
  }

 private:
  typename B::matrix_type buf_{};
  index_t capacity_ = 0;
};

/// Y (tokens, out) += 1 · bias (1, out) for every row, through a GEMM with a ones column.
template <TensorBackend B>
void add_bias(B& b, Scratch<B>& ones_scratch, ConstMatrixView<typename B::scalar_type> bias,
              MatrixView<typename B::scalar_type> Y) {
  using S = typename B::scalar_type;
  if (bias.data == nullptr) return;
  HDPISSA_REQUIRE(bias.size() == Y.cols, "bias: expected ", Y.cols, " values, found ", bias.size());
  auto ones = ones_scratch.get(b, Y.rows, 1);
  b.fill(ones, S(1));
  b.gemm(Op::N, Op::N, S(1), ConstMatrixView<S>(ones), ConstMatrixView<S>(bias.data, 1, Y.cols, Y.cols), S(1), Y);
}

}  // namespace hdpissa::detail
