#pragma once
/// \file effective_rank.hpp
/// Effective-rank metrics of an update ΔW (spec §8), from its singular values σ (any order; sorted
/// descending internally):
///  - numerical rank at τ: #{σ_i > τ σ_1}
///  - 90%-energy rank: smallest k with Σ_{i≤k} σ_i² ≥ 0.9 Σ σ_i²
///  - stable rank: ‖ΔW‖_F² / ‖ΔW‖_2² = Σσ² / σ_1²
///  - entropy effective rank (Roy & Vetterli 2007): exp(−Σ p_i ln p_i), p_i = σ_i / Σσ

#include <algorithm>
#include <cmath>
#include <functional>
#include <vector>

#include "hdpissa/core/concepts.hpp"

namespace hdpissa {

/// The four metrics for one spectrum.
struct RankMetrics {
  double sigma_max = 0;
  long numerical_rank = 0;
  long energy90_rank = 0;
  double stable_rank = 0;
  double entropy_rank = 0;
};

/// Metrics of a spectrum; `tau` is the relative threshold of the numerical rank.
inline RankMetrics rank_metrics(std::vector<double> sigma, double tau = 1e-3, double energy = 0.9) {
  HDPISSA_REQUIRE(tau > 0 && energy > 0 && energy <= 1,
                  "rank_metrics: expected tau > 0 and energy in (0, 1], found ", tau, ", ", energy);
  std::sort(sigma.begin(), sigma.end(), std::greater<>());
  RankMetrics m;
  if (sigma.empty() || !(sigma[0] > 0)) return m;
  m.sigma_max = sigma[0];
  double sum = 0, sum_sq = 0;
  for (double s : sigma) {
    HDPISSA_REQUIRE(s >= 0 && std::isfinite(s), "rank_metrics: singular values must be finite and >= 0, found ", s);
    sum += s;
    sum_sq += s * s;
    if (s > tau * sigma[0]) ++m.numerical_rank;
  }
  double acc = 0;
  for (std::size_t i = 0; i < sigma.size(); ++i) {
    acc += sigma[i] * sigma[i];
    if (acc >= energy * sum_sq * (1 - 1e-12)) {
      m.energy90_rank = long(i + 1);
      break;
    }
  }
  m.stable_rank = sum_sq / (sigma[0] * sigma[0]);
  double h = 0;
  for (double s : sigma)
    if (s > 0) {
      const double p = s / sum;
      h -= p * std::log(p);
    }
  m.entropy_rank = std::exp(h);
  return m;
}

/// Singular values of X (any backend), descending, on the host in double.
template <TensorBackend B>
std::vector<double> singular_values(B& b, ConstMatrixView<typename B::scalar_type> X) {
  using S = typename B::scalar_type;
  const index_t k = std::min(X.rows, X.cols);
  auto U = b.make_matrix(X.rows, k), Sv = b.make_matrix(1, k), Vt = b.make_matrix(k, X.cols);
  b.thin_svd(X, U.view(), Sv.view(), Vt.view());
  std::vector<S> host(static_cast<std::size_t>(k));
  b.download(ConstMatrixView<S>(Sv.view()), host.data());
  return std::vector<double>(host.begin(), host.end());
}

}  // namespace hdpissa
