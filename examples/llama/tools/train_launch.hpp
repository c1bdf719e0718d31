#pragma once
// hdpissa-train without MPI (issue 14): the two entry points hdpissa_train.cpp's main calls.
//  - launch_if_requested(): `hdpissa-train --nproc-per-node N …` re-runs this executable N times
//    under a LocalLauncher (the torchrun environment; the flag is removed from the children's
//    arguments) and returns the launcher's exit code.
//  - run_launched(): when the environment describes a job (WORLD_SIZE/RANK from hdpissa-run or
//    torchrun, or an srun step; DistributedEnv), trains with VirtualRanks<SocketCommunicator> as the
//    host communicator and — on --device cuda, built with NCCL (HDPISSA_TRAIN_HAVE_NCCL_SOCKET) —
//    an NcclCommunicator whose ncclUniqueId travels over the same sockets. World size 1 takes this
//    path too (one NCCL rank), so the bootstrap can be checked on one GPU.
// Included only by hdpissa_train.cpp (one translation unit): plain inline functions.

#include <unistd.h>

#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "hdpissa/comm/distributed_env.hpp"
#include "hdpissa/comm/local_launcher.hpp"
#include "hdpissa/comm/socket_communicator.hpp"
#include "hdpissa/comm/virtual_ranks.hpp"
#include "llama/train/trainer.hpp"

#ifdef HDPISSA_TRAIN_HAVE_NCCL_SOCKET
#include "hdpissa/comm/nccl_socket_bootstrap.hpp"
#endif

namespace hdpissa::llama {

/// RANK (or SLURM_PROCID) from the environment, 0 when absent or unreadable: only rank 0 prints
/// argument errors.
inline int launched_rank() {
  for (const char* v : {"RANK", "SLURM_PROCID"})
    if (const char* s = std::getenv(v); s && *s) return std::atoi(s);
  return 0;
}

/// `--nproc-per-node N` (or `=N`) among the arguments: runs N copies of this program without the
/// flag under a LocalLauncher and returns its exit code; nullopt when the flag is absent.
inline std::optional<int> launch_if_requested(int argc, char** argv) {
  std::vector<std::string> rest;
  std::optional<std::string> n;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--nproc-per-node" || a == "--nproc_per_node") {
      n = i + 1 < argc ? std::string(argv[++i]) : std::string();
    } else if (a.rfind("--nproc-per-node=", 0) == 0) {
      n = a.substr(17);
    } else {
      rest.push_back(a);
    }
  }
  if (!n) return std::nullopt;
  try {
    char* end = nullptr;
    const long k = std::strtol(n->c_str(), &end, 10);
    HDPISSA_REQUIRE(!n->empty() && end && *end == '\0' && k >= 1, "--nproc-per-node: expected an integer >= 1, found '",
                    *n, "'");
    HDPISSA_REQUIRE(!DistributedEnv::from_environment().launched(),
                    "--nproc-per-node inside a launched job (WORLD_SIZE/RANK are already set): launch once");
    LaunchOptions o;
    o.name = "hdpissa-train";
    o.nproc_per_node = int(k);
    char self[4096] = {};
    const ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
    o.command.push_back(len > 0 ? std::string(self, std::size_t(len)) : std::string(argv[0]));
    o.command.insert(o.command.end(), rest.begin(), rest.end());
    return LocalLauncher(std::move(o)).run();
  } catch (const std::exception& e) {
    std::cerr << "hdpissa-train: error: " << e.what() << "\n";
    return 2;
  }
}

/// The CUDA engine's device communicator over the processes of `host` (see the file comment).
inline DeviceCommSetup socket_device_comm_setup([[maybe_unused]] SocketCommunicator& host, const DistributedEnv& env) {
  DeviceCommSetup s;
  s.local_rank = env.local_rank;
  s.local_processes = env.local_world_size;
  s.host = socket_detail::host_name();
#ifdef HDPISSA_TRAIN_HAVE_NCCL_SOCKET
  s.make = [comm = &host, local = env.local_rank](int device, void* stream) -> std::unique_ptr<DeviceCollectives> {
    hdpissa::NcclOptions opt;
    opt.device = device;
    opt.compute_stream = static_cast<cudaStream_t>(stream);
    return std::make_unique<DeviceCollectivesOf<hdpissa::NcclCommunicator>>(
        hdpissa::make_nccl_communicator(*comm, local, opt), "NCCL");
  };
#else
  s.unavailable = "this hdpissa-train was built without NCCL (multi-process --device cuda needs CUDA and NCCL "
                  "found at configure time)";
#endif
  return s;
}

/// Trains over the job the environment describes (hdpissa-run, torchrun, srun); nullopt when the
/// environment describes none. Returns the process's exit code: 2 for a bad environment or options,
/// 1 for a failure (printed with this process's rank).
inline std::optional<int> run_launched(const TrainOptions& o) {
  DistributedEnv env;
  try {
    env = DistributedEnv::from_environment();
  } catch (const std::exception& e) {
    std::cerr << "hdpissa-train: error: " << e.what() << "\n";
    return 2;
  }
  if (!env.launched()) return std::nullopt;
  if (o.comm == CommKind::Single && env.world_size == 1) return std::nullopt;  // explicitly one process
  if (o.comm == CommKind::Single) {
    if (env.rank == 0)
      std::cerr << "hdpissa-train: error: --comm single but the environment describes " << env.world_size
                << " processes (" << env.describe() << "); use --comm auto, or launch one process\n";
    return 2;
  }
  try {
    VirtualRanks<SocketCommunicator> comm(SocketCommunicator(env), o.groups_per_process);
    DeviceCommSetup dev;
    if (o.device == Device::Cuda) dev = socket_device_comm_setup(comm.inner(), env);
    Trainer<decltype(comm)> t(o, comm, std::cout, std::move(dev));
    const auto sum = t.run();
    return sum.stop_signal ? 128 + sum.stop_signal : 0;  // every rank stopped after the same step
  } catch (const std::exception& e) {
    std::cerr << cat("hdpissa-train: error on rank ", env.rank, " of ", env.world_size, ": ", e.what(), "\n")
              << std::flush;  // one write: the ranks' messages do not interleave
    return 1;
  }
}

}  // namespace hdpissa::llama
