#pragma once
/// \file virtual_ranks.hpp
/// VirtualRanks<Inner>: K = P × V logical adapter groups time-multiplexed on P workers of an inner
/// communicator. Worker p hosts groups [p·V, (p+1)·V). The paper lists "needs K devices" as a
/// limitation; with this adaptor one GPU (or one CPU process) runs HD-PiSSA with any K, and — because
/// the all-gathered buffer is laid out exactly as K real workers would produce it — the resulting W
/// is bit-identical to K real workers (tests/unit/test_direct_weight_update.cpp checks this).

#include "hdpissa/core/concepts.hpp"

namespace hdpissa {

/// Wraps a communicator so each of its workers hosts `groups_per_worker` logical groups.
template <Communicator Inner>
class VirtualRanks {
 public:
  using memory_space = typename Inner::memory_space;
  VirtualRanks(Inner inner, int groups_per_worker) : inner_(std::move(inner)), v_(groups_per_worker) {
    HDPISSA_REQUIRE(groups_per_worker >= 1, "VirtualRanks: expected at least 1 group per worker, found ",
                    groups_per_worker);
  }
  int rank() const { return inner_.rank(); }
  int size() const { return inner_.size(); }
  int groups() const { return inner_.groups() * v_; }
  int local_groups() const { return inner_.local_groups() * v_; }
  int first_group() const { return inner_.first_group() * v_; }
  int groups_per_worker() const { return v_; }
  Inner& inner() { return inner_; }

  template <class T>
  void all_gather(const T* send, T* recv, std::size_t n) {
    inner_.all_gather(send, recv, n * static_cast<std::size_t>(v_));
  }
  template <class T>
  void all_reduce_sum(T* buf, std::size_t n) { inner_.all_reduce_sum(buf, n); }
  template <class T>
  void broadcast(T* buf, std::size_t n, int root) { inner_.broadcast(buf, n, root); }
  void barrier() { inner_.barrier(); }

 private:
  Inner inner_;
  int v_;
};

}  // namespace hdpissa
