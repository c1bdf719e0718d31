#pragma once
/// \file cuda_generator.hpp
/// The GPU batched greedy decoder for tools compiled without CUDA (hdpissa-eval, hdpissa-generate):
/// make_cuda_generator uploads a model to GPU 0 (fp32 or bf16 compute) and returns a CudaGenerator,
/// whose generate() is an eval::Generator (cuda/greedy_generator.cuh over cuda/decode_cuda.cuh).
/// Defined in src/cuda_generator.cu where CUDA is available; elsewhere (src/cuda_generator_unavailable.cpp)
/// make_cuda_generator throws and cuda_generator_available() is false.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "llama/decode_options.hpp"
#include "llama/eval/evaluators.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama::eval {

/// Options of make_cuda_generator.
struct CudaGeneratorOptions {
  bool bf16 = true;  ///< bf16 compute copies (fp32 statistics); false: fp32 throughout
  GreedyGeneratorOptions decode;
};

/// A model on the GPU with its batched greedy decoder.
class CudaGenerator {
 public:
  virtual ~CudaGenerator() = default;
  /// The Generator contract (evaluators.hpp): one completion per prompt, in order.
  virtual std::vector<std::vector<std::int32_t>> generate(const GenerationRequest& req) = 0;
  /// Counters over every request so far.
  [[nodiscard]] virtual DecodeStats stats() const = 0;
  /// "cuda:0 (NVIDIA H200), bf16, 64 slots".
  [[nodiscard]] virtual std::string describe() const = 0;
  /// The GEMM tuner's decisions so far (GemmTuningRecord::str(), one per tuned problem; empty when
  /// tuning is off: HDPISSA_CUDA_GEMM_TUNING_BF16 for bf16, HDPISSA_CUDA_GEMM_TUNING for fp32).
  [[nodiscard]] virtual std::vector<std::string> gemm_tuning_report() const { return {}; }
};

/// Whether this build has the GPU decoder and a CUDA device is visible.
bool cuda_generator_available();
/// Uploads `w` (fp32 host weights; not kept) and returns its decoder. Throws without CUDA.
std::unique_ptr<CudaGenerator> make_cuda_generator(const ModelWeights& w, const CudaGeneratorOptions& o);

/// `g` as a Generator (g must outlive it).
inline Generator as_generator(CudaGenerator& g) {
  return [&g](const GenerationRequest& r) { return g.generate(r); };
}

/// A progress printer like stderr_progress, plus the decoder's prefill / decode tokens/s.
inline std::function<void(long, long, long, double)> stderr_progress_with(std::string tag, Task task,
                                                                         const CudaGenerator* g) {
  return [tag, task, g](long done, long total, long toks, double secs) {
    std::string extra;
    if (g) {
      const DecodeStats s = g->stats();
      extra = cat(", prefill ", static_cast<long>(s.prefill_tok_s()), " tok/s, decode ", static_cast<long>(s.decode_tok_s()),
                  " tok/s");
    }
    std::fprintf(stderr, "[%s] %s\n", tag.c_str(), progress_line(task, done, total, toks, secs, extra).c_str());
  };
}

}  // namespace hdpissa::llama::eval
