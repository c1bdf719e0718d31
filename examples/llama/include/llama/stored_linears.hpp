#pragma once
/// \file stored_linears.hpp
/// Stored target linears: the weights of a checkpoint's q/k/v/o/gate/up/down projections left
/// where the checkpoint keeps them (its memory-mapped safetensors, in the stored dtype) instead of
/// converted into host fp32 matrices. The GPU paths load this way (LoadOptions::keep_linears_stored):
/// the model uploads each linear straight from the mapping (a BF16 checkpoint into a bf16 model:
/// the bytes as they are), so a run needs no host copy of the weights at all — at CodeLlama-34B's
/// shape the fp32 copy alone would be 135 GB, more than the host has — and a 7B start-up skips the
/// 27 GB conversion.
///
/// A ModelWeights with `stored_linears` set holds every other parameter (embedding, norms, lm_head,
/// biases) in fp32 as usual; a target linear whose matrix is empty is read from the source.
/// `linear_value` gives any target linear in fp32 (the held matrix, or the stored one converted into
/// a scratch matrix); `stored_linear` gives the stored bytes for an upload without conversion.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "llama/common.hpp"
#include "llama/safetensors.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama {

/// One stored target linear: (out, in) row-major values of `dtype` at `data` (any alignment; valid
/// while its LinearSource lives).
struct StoredLinear {
  DType dtype = DType::F32;
  const char* data = nullptr;
  std::int64_t rows = 0;  ///< out
  std::int64_t cols = 0;  ///< in
  [[nodiscard]] std::int64_t numel() const { return rows * cols; }
};

/// Where the target linears of a ModelWeights live when it does not hold them (weights.hpp).
class LinearSource {
 public:
  virtual ~LinearSource() = default;
  /// Target `id`'s stored values (its shape already checked against the config at load).
  [[nodiscard]] virtual StoredLinear stored(LinearId id) const = 0;
  /// Where the linears are, for messages (e.g. "/ckpt (BF16, 3 files)").
  [[nodiscard]] virtual std::string describe() const = 0;
};

/// The stored view of target `id` when `w` does not hold it; nullopt when it does.
inline std::optional<StoredLinear> stored_linear(const ModelWeights& w, LinearId id) {
  if (!w.is_stored(id)) return std::nullopt;
  return w.stored_linears->stored(id);
}

/// Target `id` of `w` in fp32: the held matrix, or the stored one converted into `scratch` (resized;
/// the returned reference is then `scratch`).
inline const Matrix& linear_value(const ModelWeights& w, LinearId id, Matrix& scratch) {
  const auto s = stored_linear(w, id);
  if (!s) return w.linear(id);
  scratch.resize(s->rows, s->cols);
  convert_to_float(s->dtype, s->data, s->numel(), scratch.data());
  return scratch;
}

/// Whether target `id` is stored as BF16 (its values are then bf16-exact without reading them).
inline bool stored_as_bf16(const ModelWeights& w, LinearId id) {
  const auto s = stored_linear(w, id);
  return s && s->dtype == DType::BF16;
}

/// A copy of `w` holding every target linear in fp32 (converted from the source; `w` itself when it
/// holds them all). For code that needs the whole model on the host (the CPU model, tests).
inline ModelWeights held_copy(const ModelWeights& w) {
  ModelWeights h = w;
  if (!w.stored_linears) return h;
  for (int l = 0; l < static_cast<int>(w.layers.size()); ++l)
    for (int m = 0; m < kModulesPerLayer; ++m) {
      const LinearId id{l, static_cast<Module>(m)};
      if (w.is_stored(id)) {
        Matrix v;
        h.linear(id) = linear_value(w, id, v);
      }
    }
  h.stored_linears.reset();
  return h;
}

}  // namespace hdpissa::llama
