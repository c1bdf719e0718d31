// One process of a job started by hdpissa-run (or by hand with the torchrun environment); the
// CTest cases in this folder run it with 1, 2, 3 and 4 processes. No MPI anywhere.
//   launch_worker collectives     SocketCommunicator's collectives on exactly representable data,
//                                 compared exactly; results bit-identical across ranks
//   launch_worker dwu K           HD-PiSSA (OAI + MutedLinear + DirectWeightUpdate, Adam, EigenBackend<float>)
//                                 with VirtualRanks<SocketCommunicator> (K / P groups per process)
//                                 vs VirtualRanks<SingleProcess> K in this process: W bit-identical
//   launch_worker kill R          rank R SIGKILLs itself mid-run; the others must fail naming it
//   launch_worker throw R         rank R throws (exit code 3)
//   launch_worker hang R          rank R stops calling collectives; the others time out naming it
//   launch_worker absent R        rank R exits 0 before the rendezvous (a peer that never comes)
// Prints "launch_worker: rank r: OK ..." on success; "launch_worker: rank r: error: ..." and exits
// 1 on failure (3 for the injected throw).

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "hdpissa/comm/socket_communicator.hpp"
#include "hdpissa/hdpissa.hpp"
#include "../common/hdpissa_problem.hpp"

using namespace hdpissa;

namespace {

int g_rank = -1;  // for messages only (this is a test program, not the library)

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what); }

/// True on every rank iff `ok` is true on every rank.
bool all_ranks(SocketCommunicator& c, bool ok) {
  double bad = ok ? 0.0 : 1.0;
  c.all_reduce_sum(&bad, 1);
  return bad == 0.0;
}

template <class T>
T exact_value(int rank, std::size_t i) {
  return T(rank * 1000) + T(i % 1000) + T(0.5);  // < 2^24: exact in float
}

template <class T>
void check_collectives(SocketCommunicator& c) {
  const int P = c.size(), me = c.rank();
  for (std::size_t n : {std::size_t(0), std::size_t(1), std::size_t(37), std::size_t(100003)}) {
    {  // all_gather
      std::vector<T> send(n), recv(n * std::size_t(P), T(-1));
      for (std::size_t i = 0; i < n; ++i) send[i] = exact_value<T>(me, i);
      c.all_gather(send.data(), recv.data(), n);
      for (int p = 0; p < P; ++p)
        for (std::size_t i = 0; i < n; ++i)
          if (recv[std::size_t(p) * n + i] != exact_value<T>(p, i)) fail(cat("all_gather n=", n, " wrong at p=", p));
    }
    {  // all_gather in place
      std::vector<T> buf(n * std::size_t(P), T(-1));
      for (std::size_t i = 0; i < n; ++i) buf[std::size_t(me) * n + i] = exact_value<T>(me, i);
      c.all_gather(buf.data() + std::size_t(me) * n, buf.data(), n);
      for (int p = 0; p < P; ++p)
        for (std::size_t i = 0; i < n; ++i)
          if (buf[std::size_t(p) * n + i] != exact_value<T>(p, i)) fail(cat("in-place all_gather n=", n));
    }
    {  // all_reduce_sum: exact integers
      std::vector<T> buf(n);
      for (std::size_t i = 0; i < n; ++i) buf[i] = exact_value<T>(me, i);
      c.all_reduce_sum(buf.data(), n);
      for (std::size_t i = 0; i < n; ++i) {
        T ref = T(0);
        for (int p = 0; p < P; ++p) ref += exact_value<T>(p, i);
        if (buf[i] != ref) fail(cat("all_reduce_sum n=", n, " wrong at i=", i));
      }
    }
    for (int root = 0; root < P; ++root) {  // broadcast from every root
      std::vector<T> buf(n);
      for (std::size_t i = 0; i < n; ++i) buf[i] = exact_value<T>(me, i);
      c.broadcast(buf.data(), n, root);
      for (std::size_t i = 0; i < n; ++i)
        if (buf[i] != exact_value<T>(root, i)) fail(cat("broadcast n=", n, " root=", root));
    }
  }
  {  // inexact data: the rank-order sum, bit-identical on every rank and to an independent sum
    const std::size_t n = 1001;
    std::vector<T> buf(n);
    for (std::size_t i = 0; i < n; ++i) buf[i] = T(counter_normal(77 + std::uint64_t(me), i));
    c.all_reduce_sum(buf.data(), n);
    for (std::size_t i = 0; i < n; ++i) {
      T ref = T(0);
      for (int p = 0; p < P; ++p) ref += T(counter_normal(77 + std::uint64_t(p), i));
      if (std::memcmp(&ref, &buf[i], sizeof(T)) != 0) fail(cat("all_reduce_sum not the rank-order sum at ", i));
    }
    std::vector<T> root = buf;
    c.broadcast(root.data(), n, 0);
    if (!all_ranks(c, std::memcmp(root.data(), buf.data(), n * sizeof(T)) == 0))
      fail("all_reduce_sum differs between ranks");
  }
  c.barrier();
}

int run(const std::vector<std::string>& args) {
  const std::string mode = args.empty() ? "collectives" : args[0];
  const int arg = args.size() > 1 ? std::atoi(args[1].c_str()) : 1;
  const DistributedEnv env = DistributedEnv::from_environment();
  g_rank = env.rank;
  if (mode == "absent" && env.rank == arg) return 0;  // never joins
  SocketCommunicator comm(env);

  if (mode == "collectives") {
    check_collectives<float>(comm);
    check_collectives<double>(comm);
    std::cout << "launch_worker: rank " << comm.rank() << ": OK collectives exact on " << comm.size()
              << " processes" << std::endl;
    return 0;
  }
  if (mode == "dwu") {
    const int K = arg;
    if (K % comm.size() != 0) fail(cat("dwu: K = ", K, " is not a multiple of ", comm.size(), " processes"));
    testing::Problem pb;
    VirtualRanks<SocketCommunicator> vr(std::move(comm), K / env.world_size);
    const auto W = testing::train(vr, pb);
    VirtualRanks<SingleProcess> ref_comm(SingleProcess{}, K);
    const auto ref = testing::train(ref_comm, pb);
    if (W != ref) fail(cat("W differs from VirtualRanks<SingleProcess> K = ", K));
    double sum = 0;
    for (auto& w : W)
      for (float x : w) sum += x;
    std::cout << "launch_worker: rank " << vr.rank() << ": OK W bit-identical to VirtualRanks<SingleProcess> K = " << K
              << " (" << vr.size() << " processes x " << vr.groups_per_worker() << " groups, sum " << sum << ")"
              << std::endl;
    return 0;
  }
  if (mode == "kill" || mode == "throw" || mode == "hang") {
    std::vector<float> x(4, float(comm.rank())), all(4 * std::size_t(comm.size()));
    for (int step = 0; step < 1000; ++step) {
      if (step == 3 && comm.rank() == arg) {
        if (mode == "kill") raise(SIGKILL);
        if (mode == "throw") throw std::logic_error(cat("injected failure on rank ", arg));
        std::this_thread::sleep_for(std::chrono::seconds(120));  // hang
      }
      comm.all_gather(x.data(), all.data(), x.size());
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return 0;
  }
  fail(cat("unknown mode '", mode, "'"));
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const std::logic_error& e) {
    std::cerr << cat("launch_worker: rank ", g_rank, ": error: ", e.what(), "\n") << std::flush;  // one write
    return 3;
  } catch (const std::exception& e) {
    std::cerr << cat("launch_worker: rank ", g_rank, ": error: ", e.what(), "\n") << std::flush;
    return 1;
  }
}
