#pragma once
/// \file nccl.hpp
/// Opt-in umbrella of the NCCL component (CMake target hdpissa::nccl = cuda + mpi + NCCL; compile
/// with nvcc): the CUDA and MPI components plus NcclCommunicator, NcclGroup, HDPISSA_NCCL_CHECK and
/// make_nccl_communicator() (ncclUniqueId bootstrapped through Boost.MPI).

#include "hdpissa/cuda.hpp"
#include "hdpissa/mpi.hpp"

#include "hdpissa/comm/nccl_communicator.hpp"
#include "hdpissa/comm/nccl_mpi_bootstrap.hpp"
