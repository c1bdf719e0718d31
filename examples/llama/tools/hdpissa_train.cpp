// hdpissa-train: fine-tune a LLaMA-family model with HD-PiSSA (or LoRA, PiSSA, full fine-tuning and
// the paper's DWU ablations), on the CPU or, with --device cuda (built with CUDA), on one GPU.
// See docs/trainer.md and `hdpissa-train --help`.
//
// One process: K = --groups-per-process virtual groups (VirtualRanks<SingleProcess>). Under
// mpirun (built with hdpissa::mpi): K = processes × groups per process (VirtualRanks<MpiCommunicator>);
// only rank 0 prints and writes the shared files.

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "llama/train/trainer.hpp"

#ifdef HDPISSA_TRAIN_HAVE_MPI
#include "hdpissa/mpi.hpp"
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
  t.run();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  using hdpissa::llama::LlamaError;
  const bool quiet_rank = launcher_rank() != 0;  // only rank 0 prints errors of the argument parse
  hdpissa::llama::TrainOptions o;
  try {
    bool help = false;
    o = hdpissa::llama::parse_train_args(std::vector<std::string>(argv + 1, argv + argc), &help);
    if (help) {
      if (!quiet_rank) std::cout << hdpissa::llama::train_usage();
      return 0;
    }
  } catch (const std::exception& e) {
    if (!quiet_rank) std::cerr << "hdpissa-train: error: " << e.what() << "\n";
    return 2;
  }
  const int world = launcher_world_size();
  const bool want_mpi = o.comm == "mpi" || (o.comm == "auto" && world > 1);
  if (o.comm == "single" && world > 1) {  // P independent copies would race on the same outputs
    if (!quiet_rank)
      std::cerr << "hdpissa-train: error: --comm single but launched as " << world
                << " processes; use --comm mpi (or auto), or launch one process\n";
    return 2;
  }
  if (want_mpi) {
#ifdef HDPISSA_TRAIN_HAVE_MPI
    boost::mpi::environment env(argc, argv);
    // A failure on any rank ends the whole job (MPI_Abort) instead of leaving peers blocked.
    return hdpissa::run_or_abort([&] {
      hdpissa::VirtualRanks<hdpissa::MpiCommunicator> comm(hdpissa::MpiCommunicator{}, o.groups_per_process);
      hdpissa::llama::Trainer<decltype(comm)> t(o, comm);
      t.run();
      return 0;
    });
#else
    std::cerr << "hdpissa-train: error: " << (o.comm == "mpi" ? "--comm mpi" : "launched under mpirun with several processes")
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
