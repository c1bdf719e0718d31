// Main of the NCCL tests under mpirun: one rank per process (and per GPU), the ncclUniqueId
// bootstrapped through Boost.MPI. Exits 77 on every rank (CTest "skipped") when a rank has no GPU.
// Every rank runs the doctest suite; the exit code is the worst over ranks.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "hdpissa/comm/nccl_mpi_bootstrap.hpp"
#include "nccl_test_env.hpp"

namespace nccl_test {
hdpissa::NcclCommunicator make_comm(hdpissa::NcclOptions options) {
  return hdpissa::make_nccl_communicator(boost::mpi::communicator(), options);
}
const char* launcher() { return "mpi"; }
}  // namespace nccl_test

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  boost::mpi::communicator world;
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  int have = (e == cudaSuccess && count > 0) ? 1 : 0, all = 0;
  MPI_Allreduce(&have, &all, 1, MPI_INT, MPI_MIN, world);
  if (!all) {
    if (world.rank() == 0) std::printf("SKIP: a rank has no CUDA device; NCCL tests not run\n");
    return 77;
  }
  if (world.rank() == 0) {
    int version = 0;
    ncclGetVersion(&version);
    std::printf("NCCL %d tests, %d rank(s) under mpirun, %d GPU(s) on rank 0's host\n", version, world.size(), count);
  }
  doctest::Context ctx(argc, argv);
  if (world.rank() != 0) ctx.setOption("no-intro", true);
  const int rc = ctx.run();
  int worst = 0;
  MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, world);
  return worst;
}
