// hdpissa-train: fine-tune a LLaMA-family model with HD-PiSSA (or LoRA, PiSSA, full fine-tuning and
// the paper's DWU ablations), on the CPU or, with --device cuda (built with CUDA), on one GPU or,
// under mpirun (built with NCCL), one GPU per process.
// See docs/trainer.md and `hdpissa-train --help`.
//
// One process: K = --groups-per-process virtual groups (VirtualRanks<SingleProcess>). Under
// mpirun (built with hdpissa::mpi): K = processes × groups per process (VirtualRanks<MpiCommunicator>);
// only rank 0 prints and writes the shared files. --device cuda under mpirun (built with
// hdpissa::nccl, compile definition HDPISSA_TRAIN_HAVE_NCCL): one process per GPU; the CUDA engine's
// device communicator is an NcclCommunicator made here with make_nccl_communicator (the ncclUniqueId
// travels over MPI) and handed to the engine through DeviceCommSetup (llama/train/device_comm.hpp).
// Without MPI (hdpissa-run, torchrun, srun: WORLD_SIZE/RANK in the environment, or
// `hdpissa-train --nproc-per-node N`): VirtualRanks<SocketCommunicator>, and NCCL bootstrapped over
// the same sockets (train_launch.hpp).

#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "llama/train/trainer.hpp"
#include "train_launch.hpp"

#ifdef HDPISSA_TRAIN_HAVE_MPI
#include <mpi.h>

#include "hdpissa/mpi.hpp"
#endif
#ifdef HDPISSA_TRAIN_HAVE_NCCL
#include "hdpissa/comm/nccl_communicator.hpp"
#include "hdpissa/comm/nccl_mpi_bootstrap.hpp"
#endif

namespace {

/// Number of processes mpirun / a PMI launcher says this job has (1 when not launched by one).
int launcher_world_size() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"})
    if (const char* s = std::getenv(v); s && *s) return std::atoi(s);
  return 1;
}
int launcher_rank() {
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"})
    if (const char* s = std::getenv(v); s && *s) return std::atoi(s);
  return 0;
}

int run_single(const hdpissa::llama::TrainOptions& o) {
  hdpissa::VirtualRanks<hdpissa::SingleProcess> comm(hdpissa::SingleProcess{}, o.groups_per_process);
  hdpissa::llama::Trainer<decltype(comm)> t(o, comm);
  const auto sum = t.run();
  return sum.stop_signal ? 128 + sum.stop_signal : 0;  // stopped by SIGINT / SIGTERM / SIGUSR1 (state saved)
}

#ifdef HDPISSA_TRAIN_HAVE_MPI
/// --device cuda under MPI: this process's place on its host, and (built with NCCL) the factory of
/// the engine's NcclCommunicator over all processes of `world`.
hdpissa::llama::DeviceCommSetup device_comm_setup(const boost::mpi::communicator& world) {
  hdpissa::llama::DeviceCommSetup s;
  MPI_Comm local = MPI_COMM_NULL;  // the processes of this job on this host
  HDPISSA_MPI_CHECK(MPI_Comm_split_type(MPI_Comm(world), MPI_COMM_TYPE_SHARED, world.rank(), MPI_INFO_NULL, &local));
  const int rc1 = MPI_Comm_rank(local, &s.local_rank);
  const int rc2 = MPI_Comm_size(local, &s.local_processes);
  MPI_Comm_free(&local);
  HDPISSA_MPI_CHECK(rc1);
  HDPISSA_MPI_CHECK(rc2);
  char host[MPI_MAX_PROCESSOR_NAME] = {};
  int len = 0;
  if (MPI_Get_processor_name(host, &len) == MPI_SUCCESS) s.host.assign(host, std::size_t(len));
#ifdef HDPISSA_TRAIN_HAVE_NCCL
  s.make = [world](int device, void* stream) -> std::unique_ptr<hdpissa::llama::DeviceCollectives> {
    hdpissa::NcclOptions opt;
    opt.device = device;
    opt.compute_stream = static_cast<cudaStream_t>(stream);
    return std::make_unique<hdpissa::llama::DeviceCollectivesOf<hdpissa::NcclCommunicator>>(
        hdpissa::make_nccl_communicator(world, opt), "NCCL");
  };
#else
  s.unavailable = "this hdpissa-train was built without NCCL (multi-process --device cuda needs NCCL, CUDA and "
                  "Boost.MPI found at configure time: the CMake target hdpissa::nccl)";
#endif
  return s;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  using hdpissa::llama::CommKind;
  using hdpissa::llama::Device;
  using hdpissa::llama::LlamaError;
  if (auto rc = hdpissa::llama::launch_if_requested(argc, argv)) return *rc;  // --nproc-per-node N
  const bool quiet_rank = launcher_rank() != 0 || hdpissa::llama::launched_rank() != 0;  // rank 0 prints parse errors
  hdpissa::llama::TrainOptions o;
  try {
    bool help = false;  // --help / --version: printed by rank 0
    std::ostringstream text;
    o = hdpissa::llama::parse_train_args(std::vector<std::string>(argv + 1, argv + argc), &help, text);
    if (help) {
      if (!quiet_rank) std::cout << text.str();
      return 0;
    }
  } catch (const std::exception& e) {
    if (!quiet_rank) std::cerr << "hdpissa-train: error: " << e.what() << "\n";
    return 2;
  }
  const int world = launcher_world_size();
  const bool want_mpi = o.comm == CommKind::Mpi || (o.comm == CommKind::Auto && world > 1);
  if (o.comm == CommKind::Single && world > 1) {  // P independent copies would race on the same outputs
    if (!quiet_rank)
      std::cerr << "hdpissa-train: error: --comm single but launched as " << world
                << " processes; use --comm mpi (or auto), or launch one process\n";
    return 2;
  }
  if (!want_mpi)  // hdpissa-run, torchrun, srun: WORLD_SIZE/RANK in the environment, no MPI
    if (auto rc = hdpissa::llama::run_launched(o)) return *rc;
  if (want_mpi) {
#ifdef HDPISSA_TRAIN_HAVE_MPI
    boost::mpi::environment env(argc, argv);
    // A failure on any rank ends the whole job (MPI_Abort) instead of leaving peers blocked.
    return hdpissa::run_or_abort([&] {
      hdpissa::VirtualRanks<hdpissa::MpiCommunicator> comm(hdpissa::MpiCommunicator{}, o.groups_per_process);
      hdpissa::llama::DeviceCommSetup dev;
      if (o.device == Device::Cuda) dev = device_comm_setup(boost::mpi::communicator());
      hdpissa::llama::Trainer<decltype(comm)> t(o, comm, std::cout, std::move(dev));
      const auto sum = t.run();
      return sum.stop_signal ? 128 + sum.stop_signal : 0;
    });
#else
    std::cerr << "hdpissa-train: error: " << (o.comm == CommKind::Mpi ? "--comm mpi" : "launched under mpirun with several processes")
              << " but this build has no MPI support (configure with Boost.MPI + Open MPI installed, HDPISSA_MPI=ON)\n";
    return 2;
#endif
  }
  try {
    return run_single(o);
  } catch (const std::exception& e) {
    std::cerr << "hdpissa-train: error: " << e.what() << "\n";
    return 1;
  }
}
