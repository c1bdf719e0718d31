// make_cuda_generator in a build without CUDA: the tools call the same functions either way (no
// #ifdef in their control flow); here they report that this build cannot decode on a GPU.

#include "llama/eval/cuda_generator.hpp"

namespace hdpissa::llama::eval {

bool cuda_generator_available() { return false; }

std::unique_ptr<CudaGenerator> make_cuda_generator(const ModelWeights&, const CudaGeneratorOptions&) {
  throw LlamaError("--device cuda: this build has no CUDA (configure with the CUDA toolkit found, HDPISSA_CUDA=ON); "
                   "use --device cpu");
}

}  // namespace hdpissa::llama::eval
