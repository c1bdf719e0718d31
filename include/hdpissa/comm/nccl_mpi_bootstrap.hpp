#pragma once
/// \file nccl_mpi_bootstrap.hpp
/// make_nccl_communicator(): creates an NcclCommunicator over the processes of a Boost.MPI
/// communicator, so mpirun is the launcher (one host, or several with a hostfile). Rank 0 makes the
/// ncclUniqueId and broadcasts it; each process picks its GPU as (rank on its host) mod (GPUs on
/// its host) unless NcclOptions::device says otherwise (or CUDA_VISIBLE_DEVICES narrows the choice).

#include <mpi.h>

#include <boost/mpi/communicator.hpp>

#include "hdpissa/comm/mpi_communicator.hpp"
#include "hdpissa/comm/nccl_communicator.hpp"

namespace hdpissa {

/// This process's rank among the processes of `comm` on the same host (MPI_COMM_TYPE_SHARED).
inline int mpi_local_rank(const boost::mpi::communicator& comm) {
  MPI_Comm local = MPI_COMM_NULL;
  HDPISSA_MPI_CHECK(MPI_Comm_split_type(MPI_Comm(comm), MPI_COMM_TYPE_SHARED, comm.rank(), MPI_INFO_NULL, &local));
  int r = 0;
  const int rc = MPI_Comm_rank(local, &r);
  MPI_Comm_free(&local);
  HDPISSA_MPI_CHECK(rc);
  return r;
}

/// One NCCL rank per process of `comm` (collective over it). The id travels over MPI.
inline NcclCommunicator make_nccl_communicator(const boost::mpi::communicator& comm, NcclOptions options = {}) {
  if (options.device < 0) {
    int count = 0;
    HDPISSA_CUDA_CHECK(cudaGetDeviceCount(&count));
    HDPISSA_REQUIRE(count > 0, "make_nccl_communicator on ", detail::mpi_where(), ": no CUDA device visible");
    options.device = mpi_local_rank(comm) % count;
  }
  ncclUniqueId id{};
  if (comm.rank() == 0) id = NcclCommunicator::unique_id();
  HDPISSA_MPI_CHECK(MPI_Bcast(&id, int(sizeof(id)), MPI_BYTE, 0, MPI_Comm(comm)));
  return NcclCommunicator(id, comm.rank(), comm.size(), options);
}

}  // namespace hdpissa
