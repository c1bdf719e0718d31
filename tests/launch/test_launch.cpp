// In-process tests of the MPI-free launch path: DistributedEnv's parsing and its errors,
// hdpissa-run's argument parser, and SocketCommunicator / rendezvous with P threads of this
// process standing in for P processes (tcp and file rendezvous, exact collectives, a peer that
// never comes, a wrong port, a peer that leaves mid-run, mismatched collectives).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "hdpissa/comm/local_launcher.hpp"
#include "hdpissa/comm/socket_communicator.hpp"
#include "hdpissa/comm/virtual_ranks.hpp"

using namespace hdpissa;
using namespace std::chrono_literals;

namespace {

DistributedEnv env_of(const std::map<std::string, std::string>& m) {
  return DistributedEnv::from([&](const char* k) -> std::optional<std::string> {
    auto it = m.find(k);
    if (it == m.end()) return std::nullopt;
    return it->second;
  });
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

/// Runs fn(rank) on P threads; returns each thread's exception text ("" = none).
std::vector<std::string> on_threads(int P, const std::function<void(int)>& fn) {
  std::vector<std::string> err(static_cast<std::size_t>(P));
  std::vector<std::thread> t;
  for (int r = 0; r < P; ++r)
    t.emplace_back([&, r] { err[std::size_t(r)] = error_of([&] { fn(r); }); });
  for (auto& x : t) x.join();
  return err;
}

RendezvousSpec tcp_here() {
  RendezvousSpec s;
  s.kind = RendezvousSpec::Kind::tcp;
  s.host = "127.0.0.1";
  s.port = launch_detail::free_port();
  return s;
}

}  // namespace

TEST_CASE("DistributedEnv: torchrun, SLURM and no launcher") {
  SUBCASE("no launcher: one process") {
    auto e = env_of({});
    CHECK_FALSE(e.launched());
    CHECK(e.world_size == 1);
    CHECK(e.rank == 0);
  }
  SUBCASE("torchrun variables") {
    auto e = env_of({{"WORLD_SIZE", "4"}, {"RANK", "3"}, {"LOCAL_RANK", "1"}, {"LOCAL_WORLD_SIZE", "2"},
                     {"MASTER_ADDR", "node1"}, {"MASTER_PORT", "29500"}});
    CHECK(e.launched());
    CHECK(e.source == "torchrun");
    CHECK(e.world_size == 4);
    CHECK(e.rank == 3);
    CHECK(e.local_rank == 1);
    CHECK(e.local_world_size == 2);
    CHECK(e.rendezvous.str() == "tcp://node1:29500");
  }
  SUBCASE("under torchrun's agent store the rendezvous moves to MASTER_PORT + 1") {
    auto e = env_of({{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "29500"},
                     {"TORCHELASTIC_USE_AGENT_STORE", "True"}});
    CHECK(e.rendezvous.port == 29501);
  }
  SUBCASE("world size 1 needs no address") {
    auto e = env_of({{"WORLD_SIZE", "1"}, {"RANK", "0"}});
    CHECK(e.launched());
    CHECK(e.world_size == 1);
  }
  SUBCASE("HDPISSA_RENDEZVOUS wins over MASTER_*") {
    auto e = env_of({{"WORLD_SIZE", "2"}, {"RANK", "1"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"},
                     {"HDPISSA_RENDEZVOUS", "file:///shared/job7"}, {"HDPISSA_RENDEZVOUS_TIMEOUT_S", "2.5"}});
    CHECK(e.rendezvous.kind == RendezvousSpec::Kind::file);
    CHECK(e.rendezvous.path == "/shared/job7");
    CHECK(e.timeout == 2500ms);
  }
  SUBCASE("srun step") {
    auto e = env_of({{"SLURM_STEP_ID", "0"}, {"SLURM_PROCID", "5"}, {"SLURM_NTASKS", "8"}, {"SLURM_LOCALID", "1"},
                     {"SLURM_STEP_TASKS_PER_NODE", "4(x2)"}, {"MASTER_ADDR", "n1"}, {"MASTER_PORT", "29400"}});
    CHECK(e.source == "slurm");
    CHECK(e.rank == 5);
    CHECK(e.world_size == 8);
    CHECK(e.local_rank == 1);
    CHECK(e.local_world_size == 4);
  }
  SUBCASE("an sbatch script outside srun is not a job step") {
    CHECK_FALSE(env_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "8"}}).launched());
  }
}

TEST_CASE("DistributedEnv: inconsistent environments are clear errors") {
  auto err = [](const std::map<std::string, std::string>& m) { return error_of([&] { (void)env_of(m); }); };
  CHECK(err({{"WORLD_SIZE", "2"}, {"RANK", "1"}}).find("no rendezvous address: set MASTER_ADDR and MASTER_PORT") !=
        std::string::npos);
  CHECK(err({{"WORLD_SIZE", "2"}, {"RANK", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}})
            .find("RANK=2 but WORLD_SIZE=2") != std::string::npos);
  CHECK(err({{"RANK", "0"}}).find("found RANK but not WORLD_SIZE") != std::string::npos);
  CHECK(err({{"WORLD_SIZE", "two"}, {"RANK", "0"}}).find("WORLD_SIZE: expected an integer") != std::string::npos);
  CHECK(err({{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "h"}}).find("found MASTER_ADDR but not MASTER_PORT") !=
        std::string::npos);
  CHECK(err({{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}})
            .find("MASTER_PORT: expected a TCP port") != std::string::npos);
  CHECK(err({{"WORLD_SIZE", "2"}, {"RANK", "0"}, {"HDPISSA_RENDEZVOUS", "nfs:/x"}})
            .find("expected tcp://host:port or file:///shared/directory") != std::string::npos);
  CHECK(err({{"WORLD_SIZE", "4"}, {"RANK", "0"}, {"LOCAL_RANK", "2"}, {"LOCAL_WORLD_SIZE", "2"},
             {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}})
            .find("LOCAL_RANK=2 but LOCAL_WORLD_SIZE=2") != std::string::npos);
}

TEST_CASE("hdpissa-run's arguments") {
  auto o = parse_launch_args({"--nproc-per-node", "4", "--master-port=1234", "--grace", "0.5", "--", "prog", "-x", "--y"});
  CHECK(o.nproc_per_node == 4);
  CHECK(o.master_port == 1234);
  CHECK(o.grace == 500ms);
  CHECK(o.command == std::vector<std::string>{"prog", "-x", "--y"});
  auto p = parse_launch_args({"-n", "2", "--rendezvous", "file:///tmp/x", "prog", "--nproc-per-node", "9"});
  CHECK(p.nproc_per_node == 2);
  CHECK(p.rendezvous == "file:///tmp/x");
  CHECK(p.command == std::vector<std::string>{"prog", "--nproc-per-node", "9"});  // the program's own flags
  CHECK(error_of([] { (void)parse_launch_args({"--bogus", "prog"}); }).find("unknown option '--bogus'") !=
        std::string::npos);
  CHECK(error_of([] { (void)parse_launch_args({"--nproc-per-nod", "2", "prog"}); }).find("did you mean '--nproc-per-node'?") !=
        std::string::npos);
  CHECK(error_of([] { LaunchOptions l; l.command = {"x"}; l.nnodes = 2; LocalLauncher{l}; })
            .find("need --master-port") != std::string::npos);
}

TEST_CASE("LocalLauncher: environment, exit codes, first failure") {
  LaunchOptions o;
  o.nproc_per_node = 3;
  o.grace = 200ms;
  o.command = {"sh", "-c", "test \"$WORLD_SIZE:$LOCAL_WORLD_SIZE\" = 3:3 && test \"$RANK\" = \"$LOCAL_RANK\" && "
                           "test -n \"$MASTER_PORT\" && test \"$MASTER_ADDR\" = 127.0.0.1"};
  CHECK(LocalLauncher(o).run() == 0);
  o.command = {"sh", "-c", "if [ \"$RANK\" = 1 ]; then exit 7; fi; exec sleep 30"};
  const auto t0 = std::chrono::steady_clock::now();
  CHECK(LocalLauncher(o).run() == 7);  // the survivors' SIGTERM exits do not override it
  CHECK(std::chrono::steady_clock::now() - t0 < 10s);
  o.command = {"sh", "-c", "if [ \"$RANK\" = 2 ]; then kill -9 $$; fi; exec sleep 30"};
  CHECK(LocalLauncher(o).run() == 128 + 9);
  o.command = {"/nonexistent/program"};
  CHECK(LocalLauncher(o).run() == 127);
}

TEST_CASE_TEMPLATE("SocketCommunicator over threads: exact collectives (tcp and file rendezvous)", T, float, double) {
  for (const char* kind : {"tcp", "file"}) {
    CAPTURE(kind);
    const int P = 3;
    RendezvousSpec spec = tcp_here();
    std::filesystem::path dir;
    if (std::string(kind) == "file") {
      dir = std::filesystem::temp_directory_path() / ("hdpissa-rdv-" + std::to_string(getpid()));
      std::filesystem::create_directories(dir);
      spec = RendezvousSpec::parse("file://" + dir.string());
    }
    std::vector<std::vector<T>> gathered(P), reduced(P);
    auto err = on_threads(P, [&](int r) {
      SocketCommunicator c(SocketStar(rendezvous(r, P, spec, 20s)), SocketOptions{20s});
      REQUIRE(c.rank() == r);
      REQUIRE(c.size() == P);
      std::vector<T> send(5), all(5 * P);
      for (int i = 0; i < 5; ++i) send[std::size_t(i)] = T(r * 10 + i) + T(0.25);
      c.all_gather(send.data(), all.data(), 5);
      gathered[std::size_t(r)] = all;
      std::vector<T> x{T(r + 1), T(0.5) * T(r), T(1e7) + T(r)};
      c.all_reduce_sum(x.data(), x.size());
      reduced[std::size_t(r)] = x;
      for (int root = 0; root < P; ++root) {
        T v = T(r);
        c.broadcast(&v, 1, root);
        if (v != T(root)) throw CommError("broadcast wrong");
      }
      c.barrier();
      VirtualRanks<SocketCommunicator> vr(std::move(c), 2);
      if (vr.groups() != 2 * P || vr.first_group() != 2 * r) throw CommError("VirtualRanks layout");
      vr.barrier();
    });
    for (int r = 0; r < P; ++r) CHECK(err[std::size_t(r)] == "");
    for (int r = 0; r < P; ++r) {
      for (int p = 0; p < P; ++p)
        for (int i = 0; i < 5; ++i) CHECK(gathered[std::size_t(r)][std::size_t(p * 5 + i)] == T(p * 10 + i) + T(0.25));
      CHECK(reduced[std::size_t(r)] == std::vector<T>{T(6), T(1.5), ((T(0) + T(1e7)) + T(1e7 + 1)) + T(1e7 + 2)});
    }
    if (!dir.empty()) {
      CHECK_FALSE(std::filesystem::exists(dir / "hdpissa-rendezvous"));  // removed once everyone joined
      std::filesystem::remove_all(dir);
    }
  }
}

TEST_CASE("rendezvous: a peer that never comes, a wrong port") {
  SUBCASE("rank 0 alone names the missing ranks") {
    const auto spec = tcp_here();
    const auto t0 = std::chrono::steady_clock::now();
    const std::string e = error_of([&] { (void)rendezvous(0, 3, spec, 500ms); });
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);
    CHECK(e.find("timed out after 0.5 s: ranks 1, 2 of 3 never connected") != std::string::npos);
  }
  SUBCASE("rank 2 of 3 joined, rank 1 did not: rank 2 hears it from rank 0") {
    const auto spec = tcp_here();
    auto err = on_threads(3, [&](int r) {
      if (r == 1) return;
      (void)rendezvous(r, 3, spec, 700ms);
    });
    CHECK(err[0].find("rank 1 of 3 never connected") != std::string::npos);
    CHECK(err[2].find("rank 1 of 3 never connected") != std::string::npos);
  }
  SUBCASE("nothing listens at MASTER_PORT") {
    const auto spec = tcp_here();  // free, and nobody binds it
    const std::string e = error_of([&] { (void)rendezvous(1, 2, spec, 400ms); });
    CHECK(e.find("could not reach rank 0 at tcp://127.0.0.1:") != std::string::npos);
    CHECK(e.find("MASTER_ADDR and MASTER_PORT") != std::string::npos);
  }
  SUBCASE("WORLD_SIZE differs between processes") {
    const auto spec = tcp_here();
    auto err = on_threads(2, [&](int r) { (void)rendezvous(r, r == 0 ? 2 : 3, spec, 3s); });
    CHECK(err[0].find("joined with world size 3 but rank 0 has 2") != std::string::npos);
    CHECK(err[1].find("joined with world size 3 but rank 0 has 2") != std::string::npos);
  }
}

TEST_CASE("SocketCommunicator: a peer that leaves, a late peer, mismatched collectives") {
  SUBCASE("rank 1 leaves: ranks 0 and 2 name it") {
    const auto spec = tcp_here();
    auto err = on_threads(3, [&](int r) {
      SocketCommunicator c(rendezvous(r, 3, spec, 10s), SocketOptions{10s});
      float x = 1;
      c.all_reduce_sum(&x, 1);
      if (r == 1) return;  // its sockets close: as if the process died
      c.all_reduce_sum(&x, 1);
    });
    CHECK(err[0].find("rank 1 closed its connection during all_reduce_sum #2") != std::string::npos);
    CHECK(err[2].find("rank 1 closed its connection during all_reduce_sum #2") != std::string::npos);
    CHECK(err[2].find("reported by rank 0") != std::string::npos);
  }
  SUBCASE("rank 0 leaves: the others name it") {
    const auto spec = tcp_here();
    auto err = on_threads(3, [&](int r) {
      SocketCommunicator c(rendezvous(r, 3, spec, 10s), SocketOptions{10s});
      c.barrier();
      if (r == 0) return;
      c.barrier();
    });
    CHECK(err[1].find("rank 0 closed its connection during barrier #2") != std::string::npos);
  }
  SUBCASE("rank 2 is late: a timeout naming it, then the communicator refuses further calls") {
    const auto spec = tcp_here();
    std::atomic<bool> release{false};
    auto err = on_threads(3, [&](int r) {
      SocketCommunicator c(rendezvous(r, 3, spec, 10s), SocketOptions{300ms});
      double x = 1;
      if (r == 2) {
        while (!release) std::this_thread::sleep_for(10ms);
        return;
      }
      const std::string e = error_of([&] { c.all_reduce_sum(&x, 1); });
      const std::string again = error_of([&] { c.barrier(); });
      if (r == 0) release = true;
      throw CommError(e + " | " + again);
    });
    CHECK(err[0].find("rank 2 did not arrive at all_reduce_sum #1 within 0.3 s") != std::string::npos);
    CHECK(err[1].find("rank 2 did not arrive at all_reduce_sum #1 within 0.3 s") != std::string::npos);
    CHECK(err[1].find("unusable after an earlier failure") != std::string::npos);
  }
  SUBCASE("different collectives") {
    const auto spec = tcp_here();
    auto err = on_threads(2, [&](int r) {
      SocketCommunicator c(rendezvous(r, 2, spec, 10s), SocketOptions{5s});
      float x[2] = {1, 2};
      if (r == 0) c.all_reduce_sum(x, 2);
      else c.broadcast(x, 1, 0);
    });
    CHECK(err[0].find("rank 1 called broadcast #1 (0 bytes) while rank 0 called all_reduce_sum #1 (8 bytes)") !=
          std::string::npos);
    CHECK(err[1].find("rank 1 called broadcast #1") != std::string::npos);
  }
}
