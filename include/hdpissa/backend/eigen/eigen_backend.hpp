#pragma once
/// \file eigen_backend.hpp
/// EigenBackend<Scalar>: the CPU tensor backend (float or double), on Eigen maps over row-major
/// views. Satisfies hdpissa::TensorBackend. GEMMs go through Eigen's blocked products (threaded with
/// OpenMP when the consumer compiles with -fopenmp); SVD is BDCSVD; QR is Householder.

#include <Eigen/Dense>
#include <Eigen/SVD>
#include <cmath>
#include <cstring>
#include <vector>

#include "hdpissa/core/concepts.hpp"
#include "hdpissa/core/error.hpp"
#include "hdpissa/core/view.hpp"

// Compile time. Eigen's BDCSVD (thin_svd below) is by far the costliest template in the library:
// about 40 s per scalar type in every translation unit that instantiates it (g++ 12, -O3). A program
// with many translation units can compile it once: define HDPISSA_EIGEN_SVD_EXTERN in every
// translation unit and include "hdpissa/backend/eigen/eigen_svd_instantiation.hpp" in exactly one.
// This repository's own tests, examples and benchmarks do (CMake option HDPISSA_SHARED_EIGEN_SVD).
#ifdef HDPISSA_EIGEN_SVD_EXTERN
extern template class Eigen::BDCSVD<Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic>>;
extern template class Eigen::BDCSVD<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic>>;
#endif

namespace hdpissa {

/// CPU backend over Eigen. `Scalar` is float or double; compute_type equals Scalar.
template <class Scalar>
class EigenBackend {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "EigenBackend supports float and double");

 public:
  using scalar_type = Scalar;
  using compute_type = Scalar;
  using memory_space = host_memory;
  using RowMat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using ColMat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
  using Map = Eigen::Map<RowMat, Eigen::Unaligned, Eigen::OuterStride<>>;
  using ConstMap = Eigen::Map<const RowMat, Eigen::Unaligned, Eigen::OuterStride<>>;

  /// Owning, zero-initialised, contiguous row-major matrix.
  class Matrix {
   public:
    Matrix() = default;
    Matrix(index_t rows, index_t cols)
        : data_(static_cast<std::size_t>(rows * cols), Scalar(0)), rows_(rows), cols_(cols) {}
    MatrixView<Scalar> view() { return {data_.data(), rows_, cols_, cols_}; }
    ConstMatrixView<Scalar> view() const { return {data_.data(), rows_, cols_, cols_}; }
    ConstMatrixView<Scalar> cview() const { return view(); }
    /// An owning matrix passes wherever a view of const data is expected: f(W), not f(W.view()).
    operator ConstMatrixView<Scalar>() const { return view(); }
    index_t rows() const { return rows_; }
    index_t cols() const { return cols_; }
    Scalar* data() { return data_.data(); }
    const Scalar* data() const { return data_.data(); }

   private:
    std::vector<Scalar> data_;
    index_t rows_ = 0;
    index_t cols_ = 0;
  };
  using matrix_type = Matrix;

  /// Eigen maps over views (public: the examples use them for model code).
  static Map map(MatrixView<Scalar> v) { return Map(v.data, v.rows, v.cols, Eigen::OuterStride<>(v.ld)); }
  static ConstMap map(ConstMatrixView<Scalar> v) {
    return ConstMap(v.data, v.rows, v.cols, Eigen::OuterStride<>(v.ld));
  }

  Matrix make_matrix(index_t rows, index_t cols) {
    HDPISSA_REQUIRE(rows >= 0 && cols >= 0, "make_matrix: negative extent ", shape_str(rows, cols));
    return Matrix(rows, cols);
  }

  void gemm(Op ta, Op tb, Scalar alpha, ConstMatrixView<Scalar> A, ConstMatrixView<Scalar> B,
            Scalar beta, MatrixView<Scalar> C) {
    const index_t m = op_rows(ta, A), k = op_cols(ta, A), kb = op_rows(tb, B), n = op_cols(tb, B);
    HDPISSA_REQUIRE(k == kb && C.rows == m && C.cols == n, "gemm: op(A) is ", shape_str(m, k),
                    ", op(B) is ", shape_str(kb, n), ", C is ", shape_str(C.rows, C.cols),
                    "; expected C ", shape_str(m, n), " and matching inner dimensions");
    auto c = map(C);
    if (beta == Scalar(0))
      c.setZero();
    else if (beta != Scalar(1))
      c *= beta;
    if (k == 0 || alpha == Scalar(0)) return;
    auto a = map(A);
    auto b = map(B);
    if (ta == Op::N && tb == Op::N)
      c.noalias() += alpha * a * b;
    else if (ta == Op::T && tb == Op::N)
      c.noalias() += alpha * a.transpose() * b;
    else if (ta == Op::N && tb == Op::T)
      c.noalias() += alpha * a * b.transpose();
    else
      c.noalias() += alpha * a.transpose() * b.transpose();
  }

  void copy(ConstMatrixView<Scalar> src, MatrixView<Scalar> dst) {
    require_shape(dst, src.rows, src.cols, "copy destination");
    map(dst) = map(src);
  }
  void fill(MatrixView<Scalar> x, Scalar value) { map(x).setConstant(value); }
  void scale(MatrixView<Scalar> x, Scalar alpha) { map(x) *= alpha; }
  void axpy(Scalar alpha, ConstMatrixView<Scalar> x, MatrixView<Scalar> y) {
    require_shape(y, x.rows, x.cols, "axpy y");
    map(y) += alpha * map(x);
  }
  void scale_rows(MatrixView<Scalar> x, ConstMatrixView<Scalar> d) {
    HDPISSA_REQUIRE(d.size() == x.rows, "scale_rows: expected ", x.rows, " factors, found ", d.size());
    for (index_t i = 0; i < x.rows; ++i) map(x).row(i) *= d.data[i * (d.rows == 1 ? 1 : d.ld)];
  }
  void scale_cols(MatrixView<Scalar> x, ConstMatrixView<Scalar> d) {
    HDPISSA_REQUIRE(d.size() == x.cols, "scale_cols: expected ", x.cols, " factors, found ", d.size());
    for (index_t i = 0; i < x.rows; ++i)
      for (index_t j = 0; j < x.cols; ++j) x(i, j) *= d.data[j * (d.rows == 1 ? 1 : d.ld)];
  }
  void sqrt(MatrixView<Scalar> x) { map(x) = map(x).cwiseSqrt(); }
  // Row by row with memcpy: exact, and free of GCC 12's -Warray-bounds false positives that
  // vectorised Eigen maps over 1-element host buffers trigger.
  void upload(const Scalar* host, MatrixView<Scalar> dst) {
    for (index_t i = 0; i < dst.rows; ++i)
      std::memcpy(dst.data + i * dst.ld, host + i * dst.cols, std::size_t(dst.cols) * sizeof(Scalar));
  }
  void download(ConstMatrixView<Scalar> src, Scalar* host) {
    for (index_t i = 0; i < src.rows; ++i)
      std::memcpy(host + i * src.cols, src.data + i * src.ld, std::size_t(src.cols) * sizeof(Scalar));
  }

  bool all_finite(ConstMatrixView<Scalar> x) { return map(x).allFinite(); }
  double sum_squares(ConstMatrixView<Scalar> x) {
    double s = 0;
    for (index_t i = 0; i < x.rows; ++i)
      for (index_t j = 0; j < x.cols; ++j) s += double(x(i, j)) * double(x(i, j));
    return s;
  }
  /// Order-sensitive checksum: Σ x_ij · (1 + (i·cols + j) mod 1021 / 1021). Equal on two replicas
  /// iff (almost surely) the replicas are bit-identical; used to catch divergence across ranks.
  double checksum(ConstMatrixView<Scalar> x) {
    double s = 0;
    for (index_t i = 0; i < x.rows; ++i)
      for (index_t j = 0; j < x.cols; ++j)
        s += double(x(i, j)) * (1.0 + double((i * x.cols + j) % 1021) / 1021.0);
    return s;
  }

  /// The generic elementwise map (TensorBackend): f(x0(i,j), x1(i,j), …) for every element, row by row (views of
  /// mutable data pass `Scalar&`, views of const data `const Scalar&`); every view has x0's shape.
  template <class F, class T0, class... Ts>
  void elementwise(const F& f, MatrixView<T0> x0, MatrixView<Ts>... xs) {
    static_assert(std::is_same_v<std::remove_const_t<T0>, Scalar> &&
                      (std::is_same_v<std::remove_const_t<Ts>, Scalar> && ...),
                  "EigenBackend::elementwise: every view must hold the backend's scalar type");
    (require_shape(xs, x0.rows, x0.cols, "elementwise operand"), ...);
    for (index_t i = 0; i < x0.rows; ++i)
      for (index_t j = 0; j < x0.cols; ++j) f(x0(i, j), xs(i, j)...);
  }

  void thin_svd(ConstMatrixView<Scalar> A, MatrixView<Scalar> U, MatrixView<Scalar> S,
                MatrixView<Scalar> Vt) {
    const index_t k = std::min(A.rows, A.cols);
    require_shape(U, A.rows, k, "thin_svd U");
    require_shape(S, 1, k, "thin_svd S");
    require_shape(Vt, k, A.cols, "thin_svd Vt");
    ColMat a = map(A);
    Eigen::BDCSVD<ColMat> svd(a, Eigen::ComputeThinU | Eigen::ComputeThinV);
    if (svd.info() != Eigen::Success)
      throw NumericError(cat("thin_svd: BDCSVD failed on a ", shape_str(A.rows, A.cols),
                             " matrix (Eigen info ", int(svd.info()), ")"));
    map(U) = svd.matrixU();
    map(S) = svd.singularValues().transpose();
    map(Vt) = svd.matrixV().transpose();
  }

  void orthonormalize(MatrixView<Scalar> Y) {
    HDPISSA_REQUIRE(Y.cols <= Y.rows, "orthonormalize: expected a tall matrix, found ",
                    shape_str(Y.rows, Y.cols));
    ColMat y = map(Y);
    Eigen::HouseholderQR<ColMat> qr(y);
    ColMat q = qr.householderQ() * ColMat::Identity(Y.rows, Y.cols);
    map(Y) = q;
  }

  /// Cholesky QR (G = YᵀY = RᵀR by Eigen's LLT, Y ← Y R⁻¹ by a triangular solve): one round of
  /// CholeskyQr2 (adapter/svd.hpp). Returns false, leaving Y unchanged, when G is not numerically
  /// positive definite. Loses orthogonality as cond(Y)²·eps: call it twice.
  bool orthonormalize_cholesky(MatrixView<Scalar> Y) {
    HDPISSA_REQUIRE(Y.cols <= Y.rows, "orthonormalize_cholesky: expected a tall matrix, found ",
                    shape_str(Y.rows, Y.cols));
    if (Y.empty()) return true;
    ColMat y = map(Y);
    ColMat g = y.transpose() * y;
    Eigen::LLT<ColMat> llt(g);
    if (llt.info() != Eigen::Success) return false;
    llt.matrixU().template solveInPlace<Eigen::OnTheRight>(y);
    if (!y.allFinite()) return false;
    map(Y) = y;
    return true;
  }

  void synchronize() {}
};

static_assert(TensorBackend<EigenBackend<float>>);
static_assert(TensorBackend<EigenBackend<double>>);

}  // namespace hdpissa
