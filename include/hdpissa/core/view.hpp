#pragma once
/// \file view.hpp
/// MatrixView: a non-owning row-major matrix (pointer, rows, cols, leading dimension) in whichever
/// memory space the backend owns. Row-major matches PyTorch / Hugging Face: a weight is (out, in) and
/// y = x Wᵀ. A view never allocates; sub-blocks are views with the parent's leading dimension.

#include <type_traits>

#include "hdpissa/core/config.hpp"
#include "hdpissa/core/error.hpp"

namespace hdpissa {

/// Transposition flag for GEMM operands.
enum class Op { N, T };

/// Non-owning row-major matrix view. Element (i, j) is data[i * ld + j]; ld >= cols.
template <class T>
struct MatrixView {
  T* data = nullptr;
  index_t rows = 0;
  index_t cols = 0;
  index_t ld = 0;  ///< distance in elements between the starts of consecutive rows

  constexpr MatrixView() = default;
  constexpr MatrixView(T* d, index_t r, index_t c, index_t l) : data(d), rows(r), cols(c), ld(l) {}
  constexpr MatrixView(T* d, index_t r, index_t c) : data(d), rows(r), cols(c), ld(c) {}
  /// A view of mutable data converts to a view of const data.
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  constexpr MatrixView(const MatrixView<U>& o) : data(o.data), rows(o.rows), cols(o.cols), ld(o.ld) {}

  constexpr index_t size() const { return rows * cols; }
  constexpr bool contiguous() const { return ld == cols || rows <= 1; }
  constexpr bool empty() const { return rows == 0 || cols == 0; }
  /// Host-side element access (only meaningful for host memory).
  constexpr T& operator()(index_t i, index_t j) const { return data[i * ld + j]; }

  /// Rows [r0, r0 + n).
  constexpr MatrixView row_block(index_t r0, index_t n) const {
    HDPISSA_ASSERT(r0 >= 0 && n >= 0 && r0 + n <= rows, "row_block out of range");
    return {data + r0 * ld, n, cols, ld};
  }
  /// Columns [c0, c0 + n).
  constexpr MatrixView col_block(index_t c0, index_t n) const {
    HDPISSA_ASSERT(c0 >= 0 && n >= 0 && c0 + n <= cols, "col_block out of range");
    return {data + c0, rows, n, ld};
  }
  /// Rows [r0, r0 + nr) × columns [c0, c0 + nc).
  constexpr MatrixView block(index_t r0, index_t c0, index_t nr, index_t nc) const {
    return row_block(r0, nr).col_block(c0, nc);
  }
};

template <class T>
using ConstMatrixView = MatrixView<const T>;

/// Throws InvalidArgument unless `v` is (rows, cols); `what` names the operand in the message.
template <class T>
void require_shape(const MatrixView<T>& v, index_t rows, index_t cols, const char* what) {
  HDPISSA_REQUIRE(v.rows == rows && v.cols == cols, what, ": expected shape ", shape_str(rows, cols),
                  ", found ", shape_str(v.rows, v.cols));
}

/// Rows/cols of op(X).
template <class T>
constexpr index_t op_rows(Op op, const MatrixView<T>& v) { return op == Op::N ? v.rows : v.cols; }
template <class T>
constexpr index_t op_cols(Op op, const MatrixView<T>& v) { return op == Op::N ? v.cols : v.rows; }

/// Memory-space tags: a communicator and a backend must agree on where buffers live.
struct host_memory {};
struct device_memory {};

}  // namespace hdpissa
