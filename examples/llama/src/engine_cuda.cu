// hdpissa-train's CUDA engine, fp32 half and entry points (the engine: engine_cuda_impl.cuh; the
// bf16 instantiation is engine_cuda_bf16.cu, compiled in parallel).

#include "engine_cuda_impl.cuh"

namespace hdpissa::llama {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error of a missing driver / device
    return 0;
  }
  return n;
}

std::unique_ptr<TrainEngine> make_cuda_engine(const TrainOptions& o, const ModelWeights& host, const EngineGroups& g,
                                              const TrainState* resume) {
  if (cuda_device_count() == 0)
    throw LlamaError("--device cuda: no CUDA device found (cudaGetDeviceCount reports none)");
  if (o.dtype == ComputeDtype::Bf16) return engine_detail::make_cuda_engine_bf16(o, host, g, resume);
  return std::make_unique<engine_detail::CudaEngine<float>>(o, host, g, resume);
}

}  // namespace hdpissa::llama
