#pragma once
/// \file hdpissa.hpp
/// Umbrella header of the CPU core: concepts, EigenBackend, the host communicators, optimizers and
/// schedules, adapter initialisers, layers and updates, effective-rank analysis.
/// Opt-in umbrellas for the other components: hdpissa/cuda.hpp, hdpissa/mpi.hpp, hdpissa/nccl.hpp.

#include "hdpissa/core/concepts.hpp"
#include "hdpissa/core/config.hpp"
#include "hdpissa/core/error.hpp"
#include "hdpissa/core/memory_ledger.hpp"
#include "hdpissa/core/random.hpp"
#include "hdpissa/core/view.hpp"
#include "hdpissa/core/w_precision.hpp"

#include "hdpissa/backend/eigen/eigen_backend.hpp"

#include "hdpissa/comm/single_process.hpp"
#include "hdpissa/comm/thread_group.hpp"
#include "hdpissa/comm/virtual_ranks.hpp"

#include "hdpissa/optim/adam.hpp"
#include "hdpissa/optim/schedule.hpp"
#include "hdpissa/optim/sgd.hpp"

#include "hdpissa/adapter/adapter_linear.hpp"
#include "hdpissa/adapter/adapter_set.hpp"
#include "hdpissa/adapter/aggregation.hpp"
#include "hdpissa/adapter/baseline_init.hpp"
#include "hdpissa/adapter/data_parallel_update.hpp"
#include "hdpissa/adapter/direct_weight_update.hpp"
#include "hdpissa/adapter/distributed_init.hpp"
#include "hdpissa/adapter/folded_linears.hpp"
#include "hdpissa/adapter/muted_linear.hpp"
#include "hdpissa/adapter/orthogonal_adapter_init.hpp"
#include "hdpissa/adapter/svd.hpp"

#include "hdpissa/analysis/effective_rank.hpp"

namespace hdpissa {

/// The common case in one alias: HD-PiSSA with Adam on the CPU in float.
template <Communicator C = SingleProcess>
using CpuDirectWeightUpdate = DirectWeightUpdate<EigenBackend<float>, Adam, C>;

}  // namespace hdpissa
