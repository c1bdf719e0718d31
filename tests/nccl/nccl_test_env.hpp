#pragma once
// What the NCCL tests need from their main TU: a way to make a fresh communicator over all ranks
// (main_mpi.cu: bootstrapped through Boost.MPI under mpirun; main_single.cu: one rank, no MPI).
#include "hdpissa/comm/nccl_communicator.hpp"

namespace nccl_test {
/// A new communicator over every rank of the test job (collective).
hdpissa::NcclCommunicator make_comm(hdpissa::NcclOptions options = {});
/// "mpi" or "single".
const char* launcher();
}  // namespace nccl_test
