#pragma once
/// \file svd.hpp
/// Top-k SVD policies for the adapter initialisers, written once over any TensorBackend:
///  - ExactSvd: the backend's full thin SVD (Eigen BDCSVD / cuSOLVER), truncated to k. The reference.
///  - RandomizedSvdT<Orthonormalizer>: Halko–Martinsson–Tropp range finder with oversampling and
///    power iterations, re-orthonormalised after every multiplication (policy HouseholderQr, the
///    default = RandomizedSvd, or CholeskyQr2 = CholeskyRandomizedSvd), seeded by a counter-based
///    Gaussian so the result is reproducible. Matches ExactSvd on the top components when the
///    spectrum decays (as trained weights do); on a flat spectrum it needs more power iterations.
/// An SVD policy P provides `P::name()` and `p.top_k(b, W, k)` → SvdResult<B>.

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <string>
#include <vector>

#include "hdpissa/core/concepts.hpp"
#include "hdpissa/core/random.hpp"

namespace hdpissa {

/// Top-k singular triplets: W ≈ U diag(S) Vt, S descending.
template <TensorBackend B>
struct SvdResult {
  typename B::matrix_type U;   // (m, k)
  typename B::matrix_type S;   // (1, k)
  typename B::matrix_type Vt;  // (k, n)
};

/// Fills X with counter-based standard normals of stream `seed` (row-major element order), via a
/// host buffer: deterministic and identical on every backend.
/// A backend may provide `b.fill_normal(X, seed)` computing the same counter_normal stream on the
/// device (no host round trip); it is used when present.
template <TensorBackend B>
void fill_gaussian(B& b, MatrixView<typename B::scalar_type> X, std::uint64_t seed) {
  using S = typename B::scalar_type;
  if constexpr (requires { b.fill_normal(X, seed); }) {
    b.fill_normal(X, seed);
    return;
  }
  HDPISSA_REQUIRE(X.contiguous(), "fill_gaussian: expected a contiguous view");
  std::vector<S> host(static_cast<std::size_t>(X.size()));
  for (std::size_t i = 0; i < host.size(); ++i) host[i] = S(counter_normal(seed, i));
  b.upload(host.data(), X);
}

/// Exact top-k SVD through the backend's full thin SVD.
struct ExactSvd {
  static std::string name() { return "exact"; }
  template <TensorBackend B>
  SvdResult<B> top_k(B& b, ConstMatrixView<typename B::scalar_type> W, index_t k) const {
    const index_t m = W.rows, n = W.cols, kk = std::min(m, n);
    HDPISSA_REQUIRE(k >= 1 && k <= kk, "ExactSvd: expected 1 <= k <= min", shape_str(m, n), " = ", kk,
                    ", found k = ", k);
    auto U = b.make_matrix(m, kk), S = b.make_matrix(1, kk), Vt = b.make_matrix(kk, n);
    b.thin_svd(W, U.view(), S.view(), Vt.view());
    if (k == kk) return {std::move(U), std::move(S), std::move(Vt)};
    SvdResult<B> r{b.make_matrix(m, k), b.make_matrix(1, k), b.make_matrix(k, n)};
    b.copy(ConstMatrixView<typename B::scalar_type>(U.view().col_block(0, k)), r.U.view());
    b.copy(ConstMatrixView<typename B::scalar_type>(S.view().col_block(0, k)), r.S.view());
    b.copy(ConstMatrixView<typename B::scalar_type>(Vt.view().row_block(0, k)), r.Vt.view());
    return r;
  }
};

/// \concept CholeskyOrthonormalizable
/// A backend with a Cholesky QR round, as CholeskyQr2 needs. With `b` a B and `Y` a
/// MatrixView<B::scalar_type> (m, n ≤ m):
///   - `b.orthonormalize_cholesky(Y)` → bool: G = YᵀY = RᵀR, Y ← Y R⁻¹; false (Y unchanged) when G
///     is not numerically positive definite
template <class B>
concept CholeskyOrthonormalizable = TensorBackend<B> && requires(B& b, MatrixView<typename B::scalar_type> Y) {
  { b.orthonormalize_cholesky(Y) } -> std::convertible_to<bool>;
};

/// Orthonormaliser policy of RandomizedSvdT: the backend's Householder QR (`b.orthonormalize`),
/// on every backend. The small SVD of the projection is the backend's thin_svd.
struct HouseholderQr {
  static constexpr const char* svd_name = "RandomizedSvd";
  static constexpr const char* suffix = "";

  /// Y (m, n ≤ m) ← an orthonormal basis of its span. `final_basis`: Y is the basis the
  /// projection uses (Householder QR is always accurate, so it does not matter here).
  template <TensorBackend B>
  void orthonormalize(B& b, MatrixView<typename B::scalar_type> Y, bool /*final_basis*/) const {
    b.orthonormalize(Y);
  }
  /// C (l, n), l ≤ n = U diag(S) Vt.
  template <TensorBackend B>
  void wide_svd(B& b, ConstMatrixView<typename B::scalar_type> C, MatrixView<typename B::scalar_type> U,
                MatrixView<typename B::scalar_type> S, MatrixView<typename B::scalar_type> Vt) const {
    b.thin_svd(C, U, S, Vt);
  }
};

/// Orthonormaliser policy of RandomizedSvdT: CholQR2 — rounds of G = YᵀY, G = RᵀR, Y ← Y R⁻¹
/// (syrk + potrf + trsm on a GPU: level-3 calls near GEMM speed, where a tall-skinny Householder QR
/// is latency-bound). A round whose Gram matrix is not positive definite falls back to the
/// backend's Householder orthonormalize, so rank-deficient inputs stay correct. The backend must
/// be CholeskyOrthonormalizable (CudaBackend<float | double>, EigenBackend): using this policy
/// with another backend is a compile error. The small SVD of the (l, n) projection uses the
/// backend's `wide_svd_gram(C, U, S, Vt)` (double Gram matrix + symmetric eigensolver:
/// CudaBackend<float>) when it has one, else its thin_svd.
struct CholeskyQr2 {
  static constexpr const char* svd_name = "CholeskyRandomizedSvd";
  static constexpr const char* suffix = "-cholqr";
  /// CholQR rounds for the bases inside the power iterations (2 = CholQR2; 1 trades orthogonality
  /// of the intermediate bases, cond²·eps, for speed — only their span matters). The final basis
  /// always gets two rounds.
  int intermediate_rounds = 2;

  template <CholeskyOrthonormalizable B>
  void orthonormalize(B& b, MatrixView<typename B::scalar_type> Y, bool final_basis) const {
    const int rounds = final_basis ? 2 : std::clamp(intermediate_rounds, 1, 2);
    for (int round = 0; round < rounds; ++round)
      if (!b.orthonormalize_cholesky(Y)) {
        b.orthonormalize(Y);
        return;
      }
  }
  template <CholeskyOrthonormalizable B>
  void wide_svd(B& b, ConstMatrixView<typename B::scalar_type> C, MatrixView<typename B::scalar_type> U,
                MatrixView<typename B::scalar_type> S, MatrixView<typename B::scalar_type> Vt) const {
    if constexpr (requires { b.wide_svd_gram(C, U, S, Vt); })
      b.wide_svd_gram(C, U, S, Vt);
    else
      b.thin_svd(C, U, S, Vt);
  }
};

/// Randomized top-k SVD (Halko, Martinsson & Tropp 2011, Alg. 4.4 + 5.1) with the
/// orthonormaliser as a policy (Eigen's JacobiSVD<M, QRPreconditioner> idiom):
///  - HouseholderQr (default, `RandomizedSvd`): the backend's Householder QR, any backend;
///  - CholeskyQr2 (`CholeskyRandomizedSvd`): CholQR2, for backends with orthonormalize_cholesky.
/// Every basis is re-orthonormalised after every multiplication with W. An aggregate:
/// `RandomizedSvd{oversample, power_iterations, seed}`,
/// `CholeskyRandomizedSvd{.oversample = 128, .power_iterations = 2, .orthonormalizer = {.intermediate_rounds = 1}}`.
template <class Orthonormalizer = HouseholderQr>
struct RandomizedSvdT {
  index_t oversample = 16;   ///< extra columns in the sketch (l = k + oversample, capped at min(m, n))
  int power_iterations = 4;  ///< subspace iterations; each costs two GEMMs with W and two orthonormalisations
  std::uint64_t seed = 0x5eedULL;
  Orthonormalizer orthonormalizer{};

  static std::string name() { return std::string("randomized") + Orthonormalizer::suffix; }

  /// Requires the policy to accept B (CholeskyQr2: a CholeskyOrthonormalizable backend).
  template <TensorBackend B>
    requires requires(const Orthonormalizer& o, B& b, MatrixView<typename B::scalar_type> Y) {
      o.orthonormalize(b, Y, true);
    }
  SvdResult<B> top_k(B& b, ConstMatrixView<typename B::scalar_type> W, index_t k) const {
    using S = typename B::scalar_type;
    using CV = ConstMatrixView<S>;
    const char* who = Orthonormalizer::svd_name;
    const index_t m = W.rows, n = W.cols, kk = std::min(m, n);
    HDPISSA_REQUIRE(k >= 1 && k <= kk, who, ": expected 1 <= k <= min", shape_str(m, n), " = ", kk, ", found k = ", k);
    HDPISSA_REQUIRE(oversample >= 0 && power_iterations >= 0, who,
                    ": expected oversample >= 0 and power_iterations >= 0, found ", oversample, " and ",
                    power_iterations);
    const index_t l = std::min(kk, k + oversample);
    if (l == kk) return ExactSvd{}.top_k(b, W, k);  // the sketch would be the whole matrix
    const Orthonormalizer& orth = orthonormalizer;
    auto Omega = b.make_matrix(n, l);  // (n, l)
    fill_gaussian(b, Omega.view(), seed);
    auto Y = b.make_matrix(m, l);  // (m, l): basis of range(W)
    auto Z = b.make_matrix(n, l);  // (n, l): basis of range(Wᵀ)
    b.gemm(Op::N, Op::N, S(1), W, CV(Omega.view()), S(0), Y.view());
    orth.orthonormalize(b, Y.view(), power_iterations == 0);
    for (int it = 0; it < power_iterations; ++it) {
      b.gemm(Op::T, Op::N, S(1), W, CV(Y.view()), S(0), Z.view());
      orth.orthonormalize(b, Z.view(), false);
      b.gemm(Op::N, Op::N, S(1), W, CV(Z.view()), S(0), Y.view());
      orth.orthonormalize(b, Y.view(), it + 1 == power_iterations);
    }
    // Project: C = Yᵀ W (l, n) = Uc diag(s) Vt; U = Y Uc.
    auto C = b.make_matrix(l, n);
    b.gemm(Op::T, Op::N, S(1), CV(Y.view()), W, S(0), C.view());
    auto Uc = b.make_matrix(l, l), Sc = b.make_matrix(1, l), Vtc = b.make_matrix(l, n);
    orth.wide_svd(b, CV(C.view()), Uc.view(), Sc.view(), Vtc.view());
    SvdResult<B> r{b.make_matrix(m, k), b.make_matrix(1, k), b.make_matrix(k, n)};
    b.gemm(Op::N, Op::N, S(1), CV(Y.view()), CV(Uc.view().col_block(0, k)), S(0), r.U.view());
    b.copy(CV(Sc.view().col_block(0, k)), r.S.view());
    b.copy(CV(Vtc.view().row_block(0, k)), r.Vt.view());
    return r;
  }
};

/// The common spellings: Householder QR (any backend) and CholQR2.
using RandomizedSvd = RandomizedSvdT<HouseholderQr>;
using CholeskyRandomizedSvd = RandomizedSvdT<CholeskyQr2>;

}  // namespace hdpissa
