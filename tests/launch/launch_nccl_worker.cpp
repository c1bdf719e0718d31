// One GPU process of a job started by hdpissa-run: NcclCommunicator bootstrapped over the socket
// rendezvous (nccl_socket_bootstrap.hpp), no MPI. Host compiler only (CUDA runtime + NCCL).
//   launch_nccl_worker ok            200 all_gathers of 2^20 floats, exact data, checked
//   launch_nccl_worker abort R       as ok, but rank R leaves mid-run at iteration 50: with
//                                    several ranks it SIGKILLs itself (the others' NCCL must fail
//                                    or time out, abort, and exit non-zero); alone, it calls
//                                    ncclCommAbort (NcclCommunicator::abort) and the next
//                                    all_gather must throw.
// Exit 77 without a GPU (CTest "skipped"). scripts/gpu-launch-check.sh runs it.
#include <cuda_runtime.h>
#include <signal.h>

#include <iostream>
#include <string>
#include <vector>

#include "hdpissa/comm/nccl_socket_bootstrap.hpp"

int main(int argc, char** argv) {
  using namespace hdpissa;
  const std::string mode = argc > 1 ? argv[1] : "ok";
  const int victim = argc > 2 ? std::atoi(argv[2]) : -1;
  int rank = -1;
  try {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
      std::cout << "launch_nccl_worker: no GPU, skipped\n";
      return 77;
    }
    const DistributedEnv env = DistributedEnv::from_environment();
    rank = env.rank;
    SocketCommunicator host(env);
    NcclCommunicator nccl = make_nccl_communicator(host, env.local_rank);
    const std::size_t n = std::size_t(1) << 20;
    const int P = nccl.size();
    std::vector<float> h(n), all(n * std::size_t(P));
    for (std::size_t i = 0; i < n; ++i) h[i] = float(rank * 1000 + int(i % 1000));
    float *d_send = nullptr, *d_recv = nullptr;
    HDPISSA_CUDA_CHECK(cudaMalloc(&d_send, n * sizeof(float)));
    HDPISSA_CUDA_CHECK(cudaMalloc(&d_recv, n * std::size_t(P) * sizeof(float)));
    HDPISSA_CUDA_CHECK(cudaMemcpy(d_send, h.data(), n * sizeof(float), cudaMemcpyHostToDevice));
    for (int it = 0; it < 200; ++it) {
      if (mode == "abort" && it == 50 && rank == victim) {
        if (P > 1) raise(SIGKILL);
        nccl.abort("injected abort on rank " + std::to_string(rank) + " at all_gather 50");
      }
      nccl.all_gather(d_send, d_recv, n);
    }
    HDPISSA_CUDA_CHECK(cudaMemcpy(all.data(), d_recv, all.size() * sizeof(float), cudaMemcpyDeviceToHost));
    for (int p = 0; p < P; ++p)
      for (std::size_t i = 0; i < n; ++i)
        if (all[std::size_t(p) * n + i] != float(p * 1000 + int(i % 1000))) throw CommError("all_gather: wrong data");
    host.barrier();
    std::cout << "launch_nccl_worker: rank " << rank << ": OK 200 all_gathers over NCCL (" << P
              << " ranks, id over sockets)" << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << cat("launch_nccl_worker: rank ", rank, ": error: ", e.what(), "\n") << std::flush;
    return 1;
  }
}
