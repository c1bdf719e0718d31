#pragma once
/// \file greedy_generator.cuh
/// GreedyGenerator<T>: the GPU batched greedy decoder (decode_cuda.cuh) behind the evaluators'
/// Generator interface (eval/evaluators.hpp), over a CudaLlama<T> and the hooks of a method (or
/// plain hooks). It keeps one CudaGreedyDecoder and rebuilds it only when a request needs a longer
/// context than the current one holds (contexts are rounded up to 256 positions), so the KV cache
/// is allocated once per run in practice. `cuda_greedy_generator(g)` is the eval::Generator.
///
/// Per request: every prompt gets min(max_new_tokens, max_position_embeddings − prompt) new tokens
/// at most, stops at the first stop token (not returned) and, when options.detokenize is set, at
/// the first stop string found in the decoded last 16 tokens (the evaluator truncates the text at
/// the first stop string itself, so this only saves time).

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "llama/cuda/decode_cuda.cuh"
#include "llama/decode_options.hpp"
#include "llama/eval/evaluators.hpp"

namespace hdpissa::llama::gpu {

/// A reusable GPU greedy generator (see the file comment). Borrows the model and the hooks.
template <class T>
class GreedyGenerator {
 public:
  GreedyGenerator(const CudaLlama<T>& model, CudaHooks<T>& hooks, GreedyGeneratorOptions o = {})
      : model_(&model), hooks_(&hooks), o_(std::move(o)) {}

  /// Completions of req.prompts, in order (the Generator contract).
  std::vector<std::vector<std::int32_t>> operator()(const eval::GenerationRequest& req) {
    int need = 1;
    for (const auto& p : req.prompts) {
      const int P = static_cast<int>(p.size());
      const int room = P < 1 ? 0 : std::max(0, std::min(req.max_new_tokens, model_->config().max_seq_len - P));
      if (room > 0) need = std::max(need, P + room - 1);
    }
    ensure(need);
    GreedyDecodeOptions d;
    d.max_new_tokens = req.max_new_tokens;
    d.stop_tokens = req.stop_tokens;
    if (o_.detokenize && !req.stop_strings.empty())
      d.should_stop = [this, &req](std::size_t, const std::vector<std::int32_t>& ids) {
        const std::size_t k = std::min<std::size_t>(ids.size(), 16);
        const std::string tail = o_.detokenize(std::vector<std::int32_t>(ids.end() - static_cast<std::ptrdiff_t>(k), ids.end()));
        for (const auto& s : req.stop_strings)
          if (!s.empty() && tail.find(s) != std::string::npos) return true;
        return false;
      };
    return dec_->generate(req.prompts, d, *hooks_);
  }

  /// Counters over every request so far.
  [[nodiscard]] DecodeStats stats() const {
    DecodeStats s = past_;
    if (dec_) s += dec_->stats();
    return s;
  }
  /// The decoder's KV cache length (0 before the first request).
  [[nodiscard]] int context() const { return dec_ ? dec_->max_ctx() : 0; }

 private:
  void ensure(int need) {
    if (dec_ && dec_->max_ctx() >= need) return;
    const int ctx = std::min(model_->config().max_seq_len, (need + 255) / 256 * 256);
    if (dec_) past_ += dec_->stats();
    dec_.reset();  // free the old cache first
    dec_ = std::make_unique<CudaGreedyDecoder<T>>(*model_, o_.slots, ctx, o_.prefill_rows, o_.cuda_graphs);
  }

  const CudaLlama<T>* model_;
  CudaHooks<T>* hooks_;
  GreedyGeneratorOptions o_;
  std::unique_ptr<CudaGreedyDecoder<T>> dec_;
  DecodeStats past_;
};

/// `g` as an eval::Generator (g must outlive it).
template <class T>
eval::Generator cuda_greedy_generator(GreedyGenerator<T>& g) {
  return [&g](const eval::GenerationRequest& req) { return g(req); };
}

}  // namespace hdpissa::llama::gpu
