#pragma once
/// \file decode_options.hpp
/// Host-side types of the GPU batched greedy decoder (cuda/decode_cuda.cuh), usable from code
/// compiled without CUDA (the tools, the trainer): its speed counters and the options of the
/// generator that wraps it (cuda/greedy_generator.cuh, eval/cuda_generator.hpp).

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace hdpissa::llama {

/// Accumulated counters of a GPU decoder (host wall clock around the device work, which the host
/// waits for once per prefill chunk and once per decode step).
struct DecodeStats {
  std::int64_t prompts = 0;
  std::int64_t prefill_tokens = 0;  ///< prompt tokens run through the model
  std::int64_t decode_tokens = 0;   ///< tokens produced by decode steps for live sequences
  std::int64_t decode_steps = 0;
  double prefill_seconds = 0, decode_seconds = 0;
  [[nodiscard]] double prefill_tok_s() const { return prefill_seconds > 0 ? double(prefill_tokens) / prefill_seconds : 0.0; }
  [[nodiscard]] double decode_tok_s() const { return decode_seconds > 0 ? double(decode_tokens) / decode_seconds : 0.0; }
  DecodeStats& operator+=(const DecodeStats& o) {
    prompts += o.prompts, prefill_tokens += o.prefill_tokens, decode_tokens += o.decode_tokens;
    decode_steps += o.decode_steps, prefill_seconds += o.prefill_seconds, decode_seconds += o.decode_seconds;
    return *this;
  }
};

/// Options of the GPU greedy generator (cuda/greedy_generator.cuh).
struct GreedyGeneratorOptions {
  int slots = 64;            ///< sequences decoded at once (the decode batch)
  int prefill_rows = 2048;   ///< prompt tokens per prefill pass
  bool cuda_graphs = true;   ///< replay the decode step as a CUDA graph (non-default streams)
  /// Token ids → text, for early stops at the request's stop strings (checked on the decoded last
  /// 16 tokens after every new token); empty: stop strings are left to the caller.
  std::function<std::string(const std::vector<std::int32_t>&)> detokenize;
};

}  // namespace hdpissa::llama
