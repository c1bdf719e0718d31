#pragma once
/// \file truncated_delta_type.hpp
/// TruncatedDelta, the result of truncate_delta (llama/train/truncated_delta.hpp), on its own so that
/// declarations returning it (llama/train/cuda_entry.hpp) need no library header.

#include <vector>

#include "llama/common.hpp"

namespace hdpissa::llama {

/// A rank-R LoRA of an update ΔW: B A = U_R diag(S_R) V_Rᵀ, the best rank-R approximation.
/// Convention: B = U_R √S_R (out, R), A = √S_R V_Rᵀ (R, in), to be used at scaling 1
/// (lora_alpha = r): the exported adapter's s·B A is exactly the truncated SVD.
struct TruncatedDelta {
  Matrix A;                 // (R, in)
  Matrix B;                 // (out, R)
  int rank = 0;             ///< R
  double delta_sq = 0;      ///< ‖ΔW‖²_F
  double kept_share = 1;    ///< Σ_{i<R} σ_i² / ‖ΔW‖²_F (1 for ΔW = 0)
  std::vector<double> singular_values;  ///< the σ_i computed (all of them, or the top ones of a randomized SVD)
};

}  // namespace hdpissa::llama
