// make_cuda_generator (llama/eval/cuda_generator.hpp): a CudaLlama<T> on GPU 0, plain hooks (the
// checkpoint's weights) and a GreedyGenerator<T> (llama/cuda/greedy_generator.cuh).

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <vector>

#include <cstdlib>

#include "hdpissa/backend/cuda/cuda_backend.hpp"
#include "llama/cuda/greedy_generator.cuh"
#include "llama/eval/cuda_generator.hpp"

namespace hdpissa::llama::eval {
namespace {

/// The decoder's backend options: bf16 GEMM tuning BitExact unless HDPISSA_CUDA_GEMM_TUNING_BF16
/// says otherwise. Bit-exact tuning only takes cuBLASLt algorithms whose results equal
/// cublasGemmEx's bit for bit, so the tokens cannot change; a decode step at the 7B shape gained
/// 1–2 % with it (H200, session 15, docs/evaluation.md) for ≈ 0.3 s of timing at the first calls.
inline hdpissa::CudaBackendOptions decoder_backend_options() {
  hdpissa::CudaBackendOptions o;
  const char* e = std::getenv("HDPISSA_CUDA_GEMM_TUNING_BF16");
  if (e == nullptr || *e == '\0') o.gemm_tuning_bf16 = hdpissa::GemmTuning::BitExact;
  return o;
}

template <class T>
class CudaGeneratorImpl final : public CudaGenerator {
 public:
  CudaGeneratorImpl(const ModelWeights& w, const CudaGeneratorOptions& o)
      : model_(w, /*max_batch=*/1, /*max_seq=*/1, stream_.get()),  // the training buffers stay minimal
        backend_(stream_.get(), decoder_backend_options()),
        hooks_(backend_),
        gen_(model_, hooks_, o.decode),
        slots_(o.decode.slots) {
    cudaDeviceProp p{};
    int dev = 0;
    HDPISSA_CUDA_CHECK(cudaGetDevice(&dev));
    HDPISSA_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
    name_ = cat("cuda:", dev, " (", p.name, ")");
  }
  std::vector<std::vector<std::int32_t>> generate(const GenerationRequest& req) override { return gen_(req); }
  DecodeStats stats() const override { return gen_.stats(); }
  std::string describe() const override {
    return cat(name_, ", ", std::is_same_v<T, float> ? "fp32" : "bf16", ", ", slots_, " slots");
  }
  std::vector<std::string> gemm_tuning_report() const override {
    std::vector<std::string> out;
    for (const auto& r : backend_.gemm_tuning_report()) out.push_back(r.str());
    return out;
  }

 private:
  hdpissa::CudaStream stream_;
  gpu::CudaLlama<T> model_;
  hdpissa::CudaBackend<T> backend_;
  gpu::CudaHooks<T> hooks_;
  gpu::GreedyGenerator<T> gen_;
  int slots_;
  std::string name_;
};

}  // namespace

bool cuda_generator_available() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return n > 0;
}

std::unique_ptr<CudaGenerator> make_cuda_generator(const ModelWeights& w, const CudaGeneratorOptions& o) {
  if (!cuda_generator_available()) throw LlamaError("--device cuda: no CUDA device found (cudaGetDeviceCount reports none)");
  if (o.bf16) return std::make_unique<CudaGeneratorImpl<__nv_bfloat16>>(w, o);
  return std::make_unique<CudaGeneratorImpl<float>>(w, o);
}

}  // namespace hdpissa::llama::eval
