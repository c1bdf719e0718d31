// hdpissa-train's CUDA engine, bf16 instantiation (engine_cuda_impl.cuh); a translation unit of
// its own so that the fp32 and bf16 engines compile in parallel.

#include "engine_cuda_impl.cuh"

namespace hdpissa::llama::engine_detail {

std::unique_ptr<TrainEngine> make_cuda_engine_bf16(const TrainOptions& o, const ModelWeights& host,
                                                   const EngineGroups& g, const TrainState* resume) {
  return std::make_unique<CudaEngine<__nv_bfloat16>>(o, host, g, resume);
}

}  // namespace hdpissa::llama::engine_detail
