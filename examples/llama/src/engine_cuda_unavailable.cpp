// hdpissa-train's CUDA entry points in a build without CUDA: the trainer calls the same functions
// either way (no #ifdef in its control flow); here they report that this build cannot run on a GPU.

#include "llama/train/cuda_entry.hpp"

namespace hdpissa::llama {

int cuda_device_count() { return 0; }

std::string cuda_unavailable_reason() {
  return "--device cuda: this hdpissa-train was built without CUDA (configure with the CUDA toolkit found, "
         "HDPISSA_CUDA=ON), use --device cpu";
}

std::unique_ptr<TrainEngine> make_cuda_engine(const TrainOptions&, const ModelWeights&, const EngineGroups&,
                                              const TrainState*) {
  throw LlamaError(cuda_unavailable_reason());
}

TruncatedDelta cuda_truncated_delta(const Matrix&, const Matrix&, int, double) {
  throw LlamaError("cuda_truncated_delta: this build has no CUDA (configure with the CUDA toolkit found, HDPISSA_CUDA=ON)");
}

}  // namespace hdpissa::llama
