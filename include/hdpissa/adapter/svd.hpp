#pragma once
/// \file svd.hpp
/// Top-k SVD policies for the adapter initialisers, written once over any TensorBackend:
///  - ExactSvd: the backend's full thin SVD (Eigen BDCSVD / cuSOLVER), truncated to k. The reference.
///  - RandomizedSvd: Halko–Martinsson–Tropp range finder with oversampling and power iterations,
///    re-orthonormalised (QR) after every multiplication, seeded by a counter-based Gaussian so the
///    result is reproducible. Matches ExactSvd on the top components when the spectrum decays
///    (as trained weights do); on a flat spectrum it needs more power iterations.
/// An SVD policy P provides `P::name()` and `p.top_k(b, W, k)` → SvdResult<B>.

#include <algorithm>
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

/// Randomized top-k SVD (Halko, Martinsson & Tropp 2011, Alg. 4.4 + 5.1).
struct RandomizedSvd {
  index_t oversample = 16;   ///< extra columns in the sketch (l = k + oversample, capped at min(m, n))
  int power_iterations = 4;  ///< subspace iterations; each costs two GEMMs with W and two QRs
  std::uint64_t seed = 0x5eedULL;

  static std::string name() { return "randomized"; }

  template <TensorBackend B>
  SvdResult<B> top_k(B& b, ConstMatrixView<typename B::scalar_type> W, index_t k) const {
    using S = typename B::scalar_type;
    using CV = ConstMatrixView<S>;
    const index_t m = W.rows, n = W.cols, kk = std::min(m, n);
    HDPISSA_REQUIRE(k >= 1 && k <= kk, "RandomizedSvd: expected 1 <= k <= min", shape_str(m, n), " = ",
                    kk, ", found k = ", k);
    HDPISSA_REQUIRE(oversample >= 0 && power_iterations >= 0,
                    "RandomizedSvd: expected oversample >= 0 and power_iterations >= 0, found ",
                    oversample, " and ", power_iterations);
    const index_t l = std::min(kk, k + oversample);
    if (l == kk) return ExactSvd{}.top_k(b, W, k);  // the sketch would be the whole matrix
    // Range finder on whichever side is taller keeps every QR tall-skinny.
    auto Omega = b.make_matrix(n, l);  // (n, l)
    fill_gaussian(b, Omega.view(), seed);
    auto Y = b.make_matrix(m, l);  // (m, l): basis of range(W)
    auto Z = b.make_matrix(n, l);  // (n, l): basis of range(Wᵀ)
    b.gemm(Op::N, Op::N, S(1), W, CV(Omega.view()), S(0), Y.view());
    b.orthonormalize(Y.view());
    for (int it = 0; it < power_iterations; ++it) {
      b.gemm(Op::T, Op::N, S(1), W, CV(Y.view()), S(0), Z.view());
      b.orthonormalize(Z.view());
      b.gemm(Op::N, Op::N, S(1), W, CV(Z.view()), S(0), Y.view());
      b.orthonormalize(Y.view());
    }
    // Project: C = Yᵀ W (l, n) = Uc diag(s) Vt; U = Y Uc.
    auto C = b.make_matrix(l, n);
    b.gemm(Op::T, Op::N, S(1), CV(Y.view()), W, S(0), C.view());
    auto Uc = b.make_matrix(l, l), Sc = b.make_matrix(1, l), Vtc = b.make_matrix(l, n);
    b.thin_svd(CV(C.view()), Uc.view(), Sc.view(), Vtc.view());
    SvdResult<B> r{b.make_matrix(m, k), b.make_matrix(1, k), b.make_matrix(k, n)};
    b.gemm(Op::N, Op::N, S(1), CV(Y.view()), CV(Uc.view().col_block(0, k)), S(0), r.U.view());
    b.copy(CV(Sc.view().col_block(0, k)), r.S.view());
    b.copy(CV(Vtc.view().row_block(0, k)), r.Vt.view());
    return r;
  }
};

}  // namespace hdpissa
