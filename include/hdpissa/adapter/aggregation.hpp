#pragma once
/// \file aggregation.hpp
/// How the Direct Weight Update combines the K groups' updates (spec §4), as policy types:
///  - SumAggregation (default): W ← W − Σ_j (dB_j A_j + B_j dA_j − dB_j dA_j), what the authors' code
///    does and what produced the published numbers (their learning rates were tuned for it).
///  - MeanAggregation: the same bracket divided by K, the paper's equation.
/// They differ by exactly the factor K.

namespace hdpissa {

struct SumAggregation {
  static constexpr const char* name() { return "sum"; }
  static constexpr double factor(int /*groups*/) { return 1.0; }
};

struct MeanAggregation {
  static constexpr const char* name() { return "mean"; }
  static constexpr double factor(int groups) { return 1.0 / double(groups); }
};

}  // namespace hdpissa
