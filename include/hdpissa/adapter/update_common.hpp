#pragma once
/// \file update_common.hpp
/// Pieces shared by DirectWeightUpdate and DataParallelUpdate: what to do with non-finite
/// gradients, the step report, and the cross-worker consensus on skipping a step.

#include <string>

#include "hdpissa/core/concepts.hpp"

namespace hdpissa {

/// What a step does when a gradient holds NaN or Inf.
enum class NonFinitePolicy {
  Throw,     ///< default: NumericError naming the tensor and group; nothing is updated
  SkipStep,  ///< every worker skips the step (consensus); optimizer state is left untouched
};

/// Options shared by the update rules.
struct UpdateOptions {
  NonFinitePolicy on_non_finite = NonFinitePolicy::Throw;
  /// DirectWeightUpdate, several workers: the most bytes of all-gathered deltas alive at once. The
  /// layers are exchanged in buckets of consecutive layers (one all_gather each, at least one layer
  /// per bucket), so the receive buffer holds K·(one bucket) instead of K·(every layer): at
  /// LLaMA-2-7B, r = 16, K = 8 that is 256 MiB instead of 1.2 GiB per worker. 0: one bucket (one
  /// collective per step). The values exchanged, and so W, are the same bits for any bucketing. One
  /// worker (size() == 1) exchanges nothing: its send buffer is the received one.
  std::size_t exchange_bucket_bytes = std::size_t(256) << 20;
  /// DirectWeightUpdate with kernels that offer apply streams (CUDA, a bf16 W storage on the
  /// low-rank path): step() returns with the layers' W updates still running on side streams, so
  /// the caller's next work on the backend's stream (the next forward) overlaps them. The caller
  /// then owes the ordering: wait_layer(i) before its stream reads or writes layer i's W, join()
  /// before anything else touches W or the update's state (a checkpoint, evaluation outside the
  /// layer order, another process's view). The next step() joins first. Off (default): step()
  /// returns with every update ordered before the stream's next work.
  bool deferred_apply_join = false;
};

/// What step() did.
struct StepReport {
  bool skipped = false;  ///< true when a non-finite gradient made every worker skip
  long step = 0;         ///< updates applied so far (skipped steps not counted)
  std::string reason;    ///< why it was skipped
};

namespace detail {

/// Agrees across workers whether any of them saw a non-finite gradient. `flag` is a 1×1 matrix in
/// the communicator's memory space; returns the number of workers that reported one.
template <TensorBackend B, Communicator C>
double consensus_count(B& b, C& comm, typename B::matrix_type& flag, bool local_bad) {
  using S = typename B::scalar_type;
  const S v = local_bad ? S(1) : S(0);
  b.upload(&v, flag.view());
  comm.all_reduce_sum(flag.view().data, 1);
  S out{};
  b.download(flag.view(), &out);
  return double(out);
}

}  // namespace detail
}  // namespace hdpissa
