#pragma once
/// \file mpi.hpp
/// Opt-in umbrella of the MPI component (CMake target hdpissa::mpi): the CPU core plus
/// MpiCommunicator (Boost.MPI, host buffers), its HDPISSA_MPI_CHECK macro and run_or_abort().

#include "hdpissa/hdpissa.hpp"

#include "hdpissa/comm/mpi_communicator.hpp"
