#pragma once
/// Shared by the GPU trainer test suites (test_cuda_train.cpp, test_cuda_train_mp.cpp): where the
/// data is, and how two runs' losses and merged weights are compared. Include after doctest.

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <vector>

#include <Eigen/Core>

#include "llama/weights.hpp"

namespace hdpissa::llama::test {

/// stories260K-hf/ and gsm8k/: $HDPISSA_GPU_TEST_DATA, $HDPISSA_DATA, else the configured folder.
inline std::filesystem::path data_dir() {
  for (const char* v : {"HDPISSA_GPU_TEST_DATA", "HDPISSA_DATA"})
    if (const char* s = std::getenv(v); s && *s) return s;
  return HDPISSA_LLAMA_TEST_DATA;
}

/// max_i |a_i − b_i| / |b_i| (e.g. over per-step losses).
inline double max_rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double w = 0;
  for (std::size_t i = 0; i < a.size(); ++i) w = std::max(w, std::abs(a[i] - b[i]) / std::abs(b[i]));
  return w;
}

/// ‖ΔW_a − ΔW_b‖_F / ‖ΔW_b‖_F over every target linear, ΔW = merged − base (in double).
inline double update_rel_diff(const ModelWeights& a, const ModelWeights& b, const ModelWeights& base) {
  double num = 0, den = 0;
  for (int l = 0; l < base.config.n_layers; ++l)
    for (int m = 0; m < kModulesPerLayer; ++m) {
      const LinearId id{l, static_cast<Module>(m)};
      const Eigen::MatrixXd da = (a.linear(id) - base.linear(id)).cast<double>();
      const Eigen::MatrixXd db = (b.linear(id) - base.linear(id)).cast<double>();
      num += (da - db).squaredNorm();
      den += db.squaredNorm();
    }
  REQUIRE(den > 0);
  return std::sqrt(num / den);
}

}  // namespace hdpissa::llama::test
