#pragma once
/// \file single_process.hpp
/// SingleProcess: the one-worker, one-group communicator. The single-device path of every algorithm
/// (no #ifdef for "single vs multi": this is it). Works on any memory space whose buffers the
/// collectives never touch: all_gather of one group is a copy, which it does with memmove on host
/// memory; for device memory use the backend's communicator (e.g. NcclCommunicator of size 1) or
/// wrap device buffers with SingleProcessOn<device_memory> and a copy function.

#include <cstring>

#include "hdpissa/core/concepts.hpp"

namespace hdpissa {

/// One worker hosting one group. Collectives are identities (all_gather copies send to recv).
class SingleProcess {
 public:
  using memory_space = host_memory;
  int rank() const { return 0; }
  int size() const { return 1; }
  int groups() const { return 1; }
  int local_groups() const { return 1; }
  int first_group() const { return 0; }
  template <class T>
  void all_gather(const T* send, T* recv, std::size_t n) {
    if (send != recv && n) std::memmove(recv, send, n * sizeof(T));
  }
  template <class T>
  void all_reduce_sum(T*, std::size_t) {}
  template <class T>
  void broadcast(T*, std::size_t, int root) {
    HDPISSA_REQUIRE(root == 0, "broadcast: root ", root, " out of range for 1 worker");
  }
  void barrier() {}
};

static_assert(Communicator<SingleProcess>);

}  // namespace hdpissa
