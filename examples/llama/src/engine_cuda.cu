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

std::string cuda_unavailable_reason() {
  return cuda_device_count() == 0 ? "--device cuda: no CUDA device found (cudaGetDeviceCount reports none)" : "";
}

TruncatedDelta cuda_truncated_delta(const Matrix& W, const Matrix& W0, int rank, double energy) {
  if (cuda_device_count() == 0) throw LlamaError("cuda_truncated_delta: no CUDA device found");
  hdpissa::CudaStream stream;
  hdpissa::CudaBackend<float> b32(stream.get(), hdpissa::CudaBackendOptions{});
  hdpissa::CudaBackend<double> b64(stream.get(), hdpissa::CudaBackendOptions{});
  auto Wd = b32.make_matrix(W.rows(), W.cols());
  b32.upload(W.data(), Wd.view());
  return truncated_delta_cuda(b64, ConstMatrixView<float>(Wd.view()), W0, rank, energy);
}

std::unique_ptr<TrainEngine> make_cuda_engine(const TrainOptions& o, const ModelWeights& host, const EngineGroups& g,
                                              const TrainState* resume) {
  if (const std::string why = cuda_unavailable_reason(); !why.empty()) throw LlamaError(why);
  if (o.dtype == ComputeDtype::Bf16) return engine_detail::make_cuda_engine_bf16(o, host, g, resume);
  return std::make_unique<engine_detail::CudaEngine<float>>(o, host, g, resume);
}

}  // namespace hdpissa::llama
