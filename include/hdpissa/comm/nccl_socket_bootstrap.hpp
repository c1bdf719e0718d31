#pragma once
/// \file nccl_socket_bootstrap.hpp
/// make_nccl_communicator(SocketCommunicator&, local_rank): creates an NcclCommunicator over the
/// processes of a SocketCommunicator — NCCL without MPI, so hdpissa-run, torchrun or srun is the
/// launcher. Rank 0 makes the ncclUniqueId and broadcasts its bytes over the sockets; each process
/// picks its GPU as local_rank mod (visible GPUs) unless NcclOptions::device says otherwise.
/// Needs CUDA and NCCL only (CMake: hdpissa::cuda + NCCL::NCCL), not Boost.MPI.
///
/// Faults: NcclCommunicator is non-blocking and polls ncclCommGetAsyncError against its deadline,
/// calling ncclCommAbort on an error or timeout (nccl_communicator.hpp). A process that dies during
/// initialisation makes the others' ncclCommInitRankConfig time out; one that dies mid-collective
/// makes theirs fail or time out; in both cases every survivor throws and exits, and hdpissa-run
/// returns the first failing exit code.

#include "hdpissa/comm/nccl_communicator.hpp"
#include "hdpissa/comm/socket_communicator.hpp"

namespace hdpissa {

/// One NCCL rank per process of `comm` (collective over it). `local_rank`: this process's rank on
/// its host (DistributedEnv::local_rank), used for the GPU choice when options.device < 0.
inline NcclCommunicator make_nccl_communicator(SocketCommunicator& comm, int local_rank, NcclOptions options = {}) {
  if (options.device < 0) {
    int count = 0;
    HDPISSA_CUDA_CHECK(cudaGetDeviceCount(&count));
    HDPISSA_REQUIRE(count > 0, "make_nccl_communicator on ", comm.where(), ": no CUDA device visible");
    options.device = local_rank % count;
  }
  ncclUniqueId id{};
  if (comm.rank() == 0) id = NcclCommunicator::unique_id();
  comm.broadcast_bytes(&id, sizeof(id), 0);
  return NcclCommunicator(id, comm.rank(), comm.size(), options);
}

}  // namespace hdpissa
