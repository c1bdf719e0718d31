#pragma once
/// \file truncated_delta.hpp
/// TruncatedDelta: the learned update ΔW = W_final − W_init of one target linear as a rank-R LoRA
/// (its truncated SVD, the best rank-R approximation), computed by truncate_delta() written ONCE
/// over any double-precision TensorBackend, so that the host and the GPU take the same decisions:
///  - host (the CPU engine): truncated_delta(W, W0, rank, energy) on EigenBackend<double>
///    (Eigen BDCSVD, or RandomizedSvd);
///  - GPU (the CUDA engine, llama/train/truncated_delta_cuda.cuh): ΔW formed in double on the device
///    from the live fp32 W and the uploaded W_init, then truncate_delta on CudaBackend<double>
///    (cuSOLVER gesvdj in double through ExactSvd, or RandomizedSvd over cuBLAS / cuSOLVER in
///    double). Only S (min(out, in) values) and the R kept columns of U / rows of Vᵀ come back.
/// Both compute in double end to end (ΔW is the exact difference of two fp32 matrices), so they
/// agree to double rounding amplified by the conditioning of the kept subspace (the gap
/// σ_R − σ_{R+1}), far below the fp32 rounding of the exported factors.

#include <algorithm>
#include <cmath>
#include <concepts>
#include <vector>

#include "hdpissa/hdpissa.hpp"
#include "llama/common.hpp"
#include "llama/train/truncated_delta_type.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama {


/// Whether truncate_delta uses RandomizedSvd (else ExactSvd): a fixed rank below min(out, in)/2 of
/// a layer with min(out, in) > 1024. An energy share needs every σ_i, so it is always exact.
inline bool truncation_uses_randomized_svd(index_t rows, index_t cols, int rank, double energy) {
  const index_t k = std::min(rows, cols);
  return energy == 0 && k > 1024 && index_t(rank) < k / 2;
}

/// Truncates ΔW (out, in), held by the double backend `b`, to rank `rank`, or (energy > 0) to the
/// smallest rank whose σ_i² keep a share `energy` of ‖ΔW‖²_F. SVD policy:
/// truncation_uses_randomized_svd (RandomizedSvd with its default oversampling, power iterations
/// and seed: the same Gaussian sketch on every backend), else ExactSvd. Downloads only the
/// singular values and the R kept singular vectors; the factors are rounded once to fp32.
template <hdpissa::TensorBackend Backend>
  requires std::same_as<typename Backend::scalar_type, double>
TruncatedDelta truncate_delta(Backend& b, ConstMatrixView<double> dW, int rank, double energy) {
  using CV = ConstMatrixView<double>;
  const index_t m = dW.rows, n = dW.cols, k = std::min(m, n);
  HDPISSA_REQUIRE(rank > 0 || energy > 0, "truncated_delta: expected a rank > 0 or an energy share in (0, 1]");
  HDPISSA_REQUIRE(k > 0, "truncated_delta: expected a non-empty ΔW, found ", shape_str(m, n));
  TruncatedDelta t;
  t.delta_sq = b.sum_squares(dW);
  const index_t want = energy > 0 ? k : std::min<index_t>(rank, k);
  auto svd = truncation_uses_randomized_svd(m, n, rank, energy) ? hdpissa::RandomizedSvd{}.top_k(b, dW, want)
                                                                 : hdpissa::ExactSvd{}.top_k(b, dW, k);
  const index_t got = svd.S.cols();
  t.singular_values.resize(std::size_t(got));
  b.download(CV(svd.S.view()), t.singular_values.data());
  index_t R = want;
  if (energy > 0) {  // the smallest R with Σ_{i<R} σ_i² ≥ energy·‖ΔW‖²
    double acc = 0;
    R = 1;
    for (index_t i = 0; i < got; ++i) {
      acc += t.singular_values[i] * t.singular_values[i];
      R = i + 1;
      if (acc >= energy * t.delta_sq) break;
    }
  }
  double kept = 0;
  for (index_t i = 0; i < R; ++i) kept += t.singular_values[i] * t.singular_values[i];
  t.kept_share = t.delta_sq > 0 ? std::min(1.0, kept / t.delta_sq) : 1.0;
  t.rank = int(R);
  std::vector<double> U(std::size_t(m * R)), Vt(std::size_t(R * n));  // (m, R), (R, n)
  b.download(CV(svd.U.view().col_block(0, R)), U.data());
  b.download(CV(svd.Vt.view().row_block(0, R)), Vt.data());
  t.A.resize(R, n);
  t.B.resize(m, R);
  for (index_t i = 0; i < R; ++i) {
    const double root = std::sqrt(t.singular_values[i]);
    for (index_t j = 0; j < n; ++j) t.A(i, j) = float(root * Vt[std::size_t(i * n + j)]);
    for (index_t j = 0; j < m; ++j) t.B(j, i) = float(U[std::size_t(j * R + i)] * root);
  }
  return t;
}

/// Host: truncates ΔW = W − W0 (each (out, in), fp32), formed exactly in double, on
/// EigenBackend<double> (see truncate_delta).
inline TruncatedDelta truncated_delta(const Matrix& W, const Matrix& W0, int rank, double energy) {
  if (W.rows() != W0.rows() || W.cols() != W0.cols())
    throw LlamaError(cat("truncated_delta: W is ", shape_str(W.rows(), W.cols()), " but W_init is ",
                         shape_str(W0.rows(), W0.cols())));
  hdpissa::EigenBackend<double> b;
  auto D = b.make_matrix(W.rows(), W.cols());
  for (index_t i = 0; i < W.size(); ++i) D.data()[i] = double(W.data()[i]) - double(W0.data()[i]);
  return truncate_delta(b, ConstMatrixView<double>(D.view()), rank, energy);
}

/// Host: truncates a given ΔW (out, in) (see truncate_delta).
inline TruncatedDelta truncated_delta(const Matrix& dW, int rank, double energy) {
  hdpissa::EigenBackend<double> b;
  auto D = b.make_matrix(dW.rows(), dW.cols());
  for (index_t i = 0; i < dW.size(); ++i) D.data()[i] = double(dW.data()[i]);
  return truncate_delta(b, ConstMatrixView<double>(D.view()), rank, energy);
}

}  // namespace hdpissa::llama
