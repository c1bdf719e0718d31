#pragma once
/// \file cholesky_randomized_svd.hpp
/// CholeskyRandomizedSvd: the randomized range finder of RandomizedSvd (same sketch, same counter
/// Gaussian, same power iterations) with every Householder QR replaced by CholQR2 — two rounds of
/// G = YᵀY, G = RᵀR, Y ← Y R⁻¹ (syrk + potrf + trsm: level-3 calls that run near GEMM speed on a GPU,
/// where a tall-skinny Householder QR is latency-bound). A round whose Gram matrix is not positive
/// definite falls back to the backend's Householder orthonormalize, so rank-deficient inputs stay
/// correct. The final small SVD of the (l, n) projection uses the backend's `wide_svd_gram` (double
/// Gram matrix + symmetric eigensolver) when it has one, else its thin_svd.
///
/// Works on any backend that provides `b.orthonormalize_cholesky(Y) → bool` (CudaBackend<float> and
/// <double>). An SVD policy: `name()` and `top_k(b, W, k)` → SvdResult<B>.

#include <algorithm>
#include <cstdint>
#include <string>

#include "hdpissa/adapter/svd.hpp"

namespace hdpissa {

/// Randomized top-k SVD with Cholesky-QR re-orthonormalisation (see file comment).
struct CholeskyRandomizedSvd {
  index_t oversample = 16;   ///< extra sketch columns (l = k + oversample, capped at min(m, n))
  int power_iterations = 4;  ///< subspace iterations, each two GEMMs with W and two CholQR2
  std::uint64_t seed = 0x5eedULL;
  /// CholQR rounds for the bases inside the power iterations (2 = CholQR2; 1 trades orthogonality
  /// of the intermediate bases, cond²·eps, for speed — only their span matters). The final basis
  /// always gets two rounds.
  int intermediate_rounds = 2;

  static std::string name() { return "randomized-cholqr"; }

  template <TensorBackend B>
    requires requires(B& b, MatrixView<typename B::scalar_type> Y) {
      { b.orthonormalize_cholesky(Y) } -> std::convertible_to<bool>;
    }
  SvdResult<B> top_k(B& b, ConstMatrixView<typename B::scalar_type> W, index_t k) const {
    using S = typename B::scalar_type;
    using CV = ConstMatrixView<S>;
    const index_t m = W.rows, n = W.cols, kk = std::min(m, n);
    HDPISSA_REQUIRE(k >= 1 && k <= kk, "CholeskyRandomizedSvd: expected 1 <= k <= min", shape_str(m, n), " = ", kk,
                    ", found k = ", k);
    HDPISSA_REQUIRE(oversample >= 0 && power_iterations >= 0,
                    "CholeskyRandomizedSvd: expected oversample >= 0 and power_iterations >= 0, found ",
                    oversample, " and ", power_iterations);
    const index_t l = std::min(kk, k + oversample);
    if (l == kk) return ExactSvd{}.top_k(b, W, k);
    auto orth = [&b](MatrixView<S> Y, int rounds) {
      for (int round = 0; round < rounds; ++round)
        if (!b.orthonormalize_cholesky(Y)) {
          b.orthonormalize(Y);
          return;
        }
    };
    auto Omega = b.make_matrix(n, l);  // (n, l)
    fill_gaussian(b, Omega.view(), seed);
    auto Y = b.make_matrix(m, l);  // (m, l)
    auto Z = b.make_matrix(n, l);  // (n, l)
    const int mid = std::clamp(intermediate_rounds, 1, 2);
    b.gemm(Op::N, Op::N, S(1), W, CV(Omega.view()), S(0), Y.view());
    orth(Y.view(), power_iterations > 0 ? mid : 2);
    for (int it = 0; it < power_iterations; ++it) {
      b.gemm(Op::T, Op::N, S(1), W, CV(Y.view()), S(0), Z.view());
      orth(Z.view(), mid);
      b.gemm(Op::N, Op::N, S(1), W, CV(Z.view()), S(0), Y.view());
      orth(Y.view(), it + 1 == power_iterations ? 2 : mid);
    }
    auto C = b.make_matrix(l, n);  // (l, n) = Yᵀ W
    b.gemm(Op::T, Op::N, S(1), CV(Y.view()), W, S(0), C.view());
    auto Uc = b.make_matrix(l, l), Sc = b.make_matrix(1, l), Vtc = b.make_matrix(l, n);
    if constexpr (requires { b.wide_svd_gram(CV(C.view()), Uc.view(), Sc.view(), Vtc.view()); })
      b.wide_svd_gram(CV(C.view()), Uc.view(), Sc.view(), Vtc.view());  // double Gram + syevd
    else
      b.thin_svd(CV(C.view()), Uc.view(), Sc.view(), Vtc.view());
    SvdResult<B> r{b.make_matrix(m, k), b.make_matrix(1, k), b.make_matrix(k, n)};
    b.gemm(Op::N, Op::N, S(1), CV(Y.view()), CV(Uc.view().col_block(0, k)), S(0), r.U.view());
    b.copy(CV(Sc.view().col_block(0, k)), r.S.view());
    b.copy(CV(Vtc.view().row_block(0, k)), r.Vt.view());
    return r;
  }
};

}  // namespace hdpissa
