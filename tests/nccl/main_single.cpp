// Main of the NCCL tests without MPI: one rank, a locally generated ncclUniqueId. Exits 77 (CTest
// "skipped") without a GPU.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "nccl_test_env.hpp"

namespace nccl_test {
hdpissa::NcclCommunicator make_comm(hdpissa::NcclOptions options) {
  if (options.device < 0) options.device = 0;
  return hdpissa::NcclCommunicator::single(options);
}
const char* launcher() { return "single"; }
}  // namespace nccl_test

int main(int argc, char** argv) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("SKIP: no CUDA device (%s); NCCL tests not run\n",
                e != cudaSuccess ? cudaGetErrorString(e) : "device count is 0");
    return 77;
  }
  int version = 0;
  ncclGetVersion(&version);
  cudaDeviceProp prop{};
  (void)cudaGetDeviceProperties(&prop, 0);
  std::printf("NCCL %d tests, 1 rank (no MPI), on %s\n", version, prop.name);
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
