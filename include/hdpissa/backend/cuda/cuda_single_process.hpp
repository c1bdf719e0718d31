#pragma once
/// \file cuda_single_process.hpp
/// CudaSingleProcess: the one-worker communicator over device memory, the single-GPU path of every
/// algorithm (wrap it in VirtualRanks for K groups on one GPU). all_gather is one cudaMemcpyAsync
/// on the backend's stream, so it is ordered with the backend's work and never waits.

#include <cuda_runtime.h>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/core/concepts.hpp"

namespace hdpissa {

/// One worker hosting one group; buffers live in device memory. Collectives are identities.
class CudaSingleProcess {
 public:
  using memory_space = device_memory;
  /// `stream`: where the all_gather copy is queued (pass the backend's stream()).
  explicit CudaSingleProcess(cudaStream_t stream = nullptr) : stream_(stream) {}
  int rank() const { return 0; }
  int size() const { return 1; }
  int groups() const { return 1; }
  int local_groups() const { return 1; }
  int first_group() const { return 0; }
  cudaStream_t stream() const { return stream_; }

  template <class T>
  void all_gather(const T* send, T* recv, std::size_t n) {
    if (send != recv && n)
      HDPISSA_CUDA_CHECK(cudaMemcpyAsync(recv, send, n * sizeof(T), cudaMemcpyDeviceToDevice, stream_));
  }
  template <class T>
  void all_reduce_sum(T*, std::size_t) {}
  template <class T>
  void broadcast(T*, std::size_t, int root) {
    HDPISSA_REQUIRE(root == 0, "broadcast: root ", root, " out of range for 1 worker");
  }
  void barrier() {}

 private:
  cudaStream_t stream_ = nullptr;
};

static_assert(Communicator<CudaSingleProcess>);

}  // namespace hdpissa
