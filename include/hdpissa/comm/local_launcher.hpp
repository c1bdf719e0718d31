#pragma once
/// \file local_launcher.hpp
/// LocalLauncher: starts the processes of one host of a job — what `hdpissa-run` and
/// `hdpissa-train --nproc-per-node N` do — with the environment torchrun would set (RANK,
/// WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT, and
/// HDPISSA_RENDEZVOUS / HDPISSA_COMM_TIMEOUT_S when given), then supervises them:
///  - the first process that fails (non-zero exit, or killed by a signal) is reported with its rank
///    and pid; the others get `grace` to notice on their own (their SocketCommunicator /
///    NcclCommunicator names the failed rank) and are then sent SIGTERM, and SIGKILL after another
///    `grace`: no job outlives a failed rank by more than 2·grace;
///  - SIGINT, SIGTERM and SIGHUP sent to the launcher are forwarded to every process;
///  - on Linux every process gets PR_SET_PDEATHSIG, so killing the launcher ends them too;
///  - run() returns the first failure's exit code (128 + signal for a killed process), else 0. The
///    first failure is decided after a 200 ms settling window: a crashed process's sockets close
///    before it can be reaped, so its peers may be reaped first; a process killed by a signal
///    therefore ranks before the exits of the same window, which otherwise keep their reaping order.
/// POSIX (fork/exec); the library proper never calls it.

#include <fcntl.h>
#include <poll.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "hdpissa/comm/distributed_env.hpp"
#include "hdpissa/core/error.hpp"

namespace hdpissa {

/// What to launch on this host.
struct LaunchOptions {
  int nproc_per_node = 1;             ///< processes on this host
  int nnodes = 1;                     ///< hosts in the job
  int node_rank = 0;                  ///< this host's index (ranks node_rank·nproc_per_node + local)
  std::string master_addr = "127.0.0.1";
  int master_port = 0;                ///< 0: a free port (one host only)
  std::string rendezvous;             ///< "" (tcp via MASTER_ADDR:MASTER_PORT) or file:///dir / tcp://h:p
  double timeout_s = -1;              ///< ≥ 0: exported as HDPISSA_COMM_TIMEOUT_S (0 = none)
  std::chrono::milliseconds grace{3000};  ///< after a failure: wait, SIGTERM, wait, SIGKILL
  std::vector<std::string> command;   ///< program and its arguments (PATH is searched)
  std::string name = "hdpissa-run";   ///< prefix of the launcher's messages
};

namespace launch_detail {

/// The last signal the launcher received (0 = none). A function-local static because a signal
/// handler can reach nothing else.
inline std::atomic<int>& received_signal() {
  static std::atomic<int> s{0};
  return s;
}
inline void on_signal(int sig) { received_signal().store(sig); }
/// Write end of the self-pipe SIGCHLD writes to, so the launcher wakes the moment a process ends
/// (and sees the first failure before the failures it causes).
inline std::atomic<int>& child_pipe() {
  static std::atomic<int> fd{-1};
  return fd;
}
inline void on_child(int) {
  const int fd = child_pipe().load();
  if (fd >= 0) {
    const char c = 0;
    (void)!::write(fd, &c, 1);
  }
}

inline std::string describe_status(int status) {
  if (WIFEXITED(status)) return cat("exited with code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    const char* d = strsignal(WTERMSIG(status));
    return cat("was killed by signal ", WTERMSIG(status), d ? cat(" (", d, ")") : std::string());
  }
  return cat("ended with status ", status);
}
inline int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

/// A TCP port that is free right now (bind to 0, read it back, close).
inline int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  HDPISSA_REQUIRE(fd >= 0, "free_port: socket(): ", std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(fd);
  if (!ok) throw RuntimeCallError(cat("free_port: cannot bind a TCP socket: ", std::strerror(errno)));
  return ntohs(a.sin_port);
}

}  // namespace launch_detail

/// Launches and supervises this host's processes of a job (see the file comment).
class LocalLauncher {
 public:
  explicit LocalLauncher(LaunchOptions o) : o_(std::move(o)) {
    HDPISSA_REQUIRE(o_.nproc_per_node >= 1, o_.name, ": --nproc-per-node: expected >= 1, found ", o_.nproc_per_node);
    HDPISSA_REQUIRE(o_.nnodes >= 1, o_.name, ": --nnodes: expected >= 1, found ", o_.nnodes);
    HDPISSA_REQUIRE(o_.node_rank >= 0 && o_.node_rank < o_.nnodes, o_.name, ": --node-rank: expected 0..",
                    o_.nnodes - 1, ", found ", o_.node_rank);
    HDPISSA_REQUIRE(!o_.command.empty(), o_.name, ": expected a program to launch, found none");
    if (!o_.rendezvous.empty()) (void)RendezvousSpec::parse(o_.rendezvous, cat(o_.name, ": --rendezvous"));
    HDPISSA_REQUIRE(o_.nnodes == 1 || o_.master_port > 0 || !o_.rendezvous.empty(), o_.name,
                    ": several hosts (--nnodes ", o_.nnodes,
                    ") need --master-port (the same on every host) or --rendezvous file:///shared/dir");
  }

  /// Starts the processes, waits for them all, returns the first failure's exit code (else 0).
  int run() {
    if (o_.master_port == 0) o_.master_port = launch_detail::free_port();
    const int world = o_.nnodes * o_.nproc_per_node;
    struct sigaction sa {}, old_int{}, old_term{}, old_hup{};
    sa.sa_handler = &launch_detail::on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGHUP, &sa, &old_hup);
    launch_detail::received_signal().store(0);
    int wake[2] = {-1, -1};
    if (pipe(wake) != 0) throw RuntimeCallError(cat(o_.name, ": pipe(): ", std::strerror(errno)));
    for (int fd : wake) {
      (void)fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
      (void)fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    launch_detail::child_pipe().store(wake[1]);
    struct sigaction sc {}, old_chld{};
    sc.sa_handler = &launch_detail::on_child;
    sigemptyset(&sc.sa_mask);
    sc.sa_flags = SA_NOCLDSTOP | SA_RESTART;
    sigaction(SIGCHLD, &sc, &old_chld);
    struct Cleanup {  // restores SIGCHLD and closes the pipe however run() ends
      int* w;
      struct sigaction* old;
      ~Cleanup() {
        sigaction(SIGCHLD, old, nullptr);
        launch_detail::child_pipe().store(-1);
        ::close(w[0]);
        ::close(w[1]);
      }
    } cleanup{wake, &old_chld};
    std::cout.flush();
    std::cerr.flush();

    std::vector<pid_t> pids(std::size_t(o_.nproc_per_node), -1);
    std::vector<bool> alive(pids.size(), false);
    const pid_t parent = getpid();
    for (int l = 0; l < o_.nproc_per_node; ++l) {
      const int rank = o_.node_rank * o_.nproc_per_node + l;
      const pid_t pid = fork();
      if (pid < 0) {
        std::cerr << o_.name << ": fork failed: " << std::strerror(errno) << "\n";
        terminate_all(pids, alive, SIGKILL);
        reap_all(pids, alive);
        restore(old_int, old_term, old_hup);
        return 1;
      }
      if (pid == 0) exec_child(rank, l, world, parent);  // never returns
      pids[std::size_t(l)] = pid;
      alive[std::size_t(l)] = true;
    }

    int first_code = 0;
    int live = o_.nproc_per_node;
    using clock = std::chrono::steady_clock;
    clock::time_point term_at{}, kill_at{};
    bool failing = false, termed = false, killed = false, decided = false;
    clock::time_point settle_until{};
    int forwarded = 0;
    struct Ended {
      int local, status;
      pid_t pid;
    };
    std::vector<Ended> pending;  // failures of the settling window
    while (live > 0) {
      // Reap everything that ended since the last sweep.
      std::vector<Ended> ended;
      for (;;) {
        int status = 0;
        const pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid <= 0) break;
        int l = 0;
        while (l < o_.nproc_per_node && pids[std::size_t(l)] != pid) ++l;
        if (l == o_.nproc_per_node) continue;  // not ours
        alive[std::size_t(l)] = false;
        --live;
        ended.push_back({l, status, pid});
      }
      // Decide the first failure after a short settling window: a crashed process can become
      // reapable only after the peers it took down (its sockets close before it is a zombie), so
      // among the failures of the window one killed by a signal comes first, else the first reaped.
      for (const Ended& e : ended) {
        if (launch_detail::exit_code(e.status) == 0) continue;
        if (decided) {
          if (!termed)
            std::cerr << o_.name << ": rank " << o_.node_rank * o_.nproc_per_node + e.local << " (pid " << e.pid
                      << ") " << launch_detail::describe_status(e.status) << std::endl;
          continue;
        }
        if (pending.empty()) {
          settle_until = clock::now() + std::min(o_.grace, std::chrono::milliseconds(200));
          term_at = clock::now() + o_.grace;
          failing = true;
        }
        pending.push_back(e);
      }
      if (!decided && !pending.empty() && (live == 0 || clock::now() >= settle_until)) {
        decided = true;
        std::stable_partition(pending.begin(), pending.end(), [](const Ended& e) { return WIFSIGNALED(e.status); });
        for (std::size_t i = 0; i < pending.size(); ++i) {
          const Ended& e = pending[i];
          const int rank = o_.node_rank * o_.nproc_per_node + e.local;
          std::cerr << o_.name << ": rank " << rank;
          if (i == 0) {
            first_code = launch_detail::exit_code(e.status);
            std::cerr << " (local rank " << e.local << ", pid " << e.pid << ") " << launch_detail::describe_status(e.status);
            if (live > 0)
              std::cerr << "; stopping the other processes (SIGTERM after " << double(o_.grace.count()) / 1000.0
                        << " s unless they exit first)";
          } else {
            std::cerr << " (pid " << e.pid << ") " << launch_detail::describe_status(e.status);
          }
          std::cerr << std::endl;
        }
      }
      if (live == 0) break;
      const int sig = launch_detail::received_signal().exchange(0);
      if (sig != 0) {
        ++forwarded;
        std::cerr << o_.name << ": received signal " << sig << ", forwarding it to " << live << " process"
                  << (live > 1 ? "es" : "") << std::endl;
        terminate_all(pids, alive, sig);
        if (!failing) {
          failing = decided = true;
          first_code = 128 + sig;
          term_at = clock::now() + o_.grace;
        }
        if (forwarded >= 2) terminate_all(pids, alive, SIGKILL);  // a second Ctrl-C means now
      }
      const auto now = clock::now();
      if (failing && !termed && now >= term_at) {
        termed = true;
        terminate_all(pids, alive, SIGTERM);
        kill_at = now + o_.grace;
      } else if (termed && !killed && now >= kill_at) {
        killed = true;
        std::cerr << o_.name << ": " << live << " process(es) ignored SIGTERM; sending SIGKILL" << std::endl;
        terminate_all(pids, alive, SIGKILL);
      }
      pollfd pf{wake[0], POLLIN, 0};
      (void)::poll(&pf, 1, 50);  // a child's end (or a signal) wakes this at once
      char buf[64];
      while (::read(wake[0], buf, sizeof(buf)) > 0) {
      }
    }
    restore(old_int, old_term, old_hup);
    return first_code;
  }

  const LaunchOptions& options() const { return o_; }

 private:
  [[noreturn]] void exec_child(int rank, int local, int world, pid_t parent) {
#ifdef __linux__
    (void)prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);  // the launcher died before prctl took effect
#else
    (void)parent;
#endif
    struct sigaction dfl {};
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(SIGINT, &dfl, nullptr);
    sigaction(SIGTERM, &dfl, nullptr);
    sigaction(SIGHUP, &dfl, nullptr);
    auto set = [](const char* k, const std::string& v) { setenv(k, v.c_str(), 1); };
    set("RANK", std::to_string(rank));
    set("WORLD_SIZE", std::to_string(world));
    set("LOCAL_RANK", std::to_string(local));
    set("LOCAL_WORLD_SIZE", std::to_string(o_.nproc_per_node));
    set("GROUP_RANK", std::to_string(o_.node_rank));
    set("MASTER_ADDR", o_.master_addr);
    set("MASTER_PORT", std::to_string(o_.master_port));
    unsetenv("TORCHELASTIC_USE_AGENT_STORE");  // our rank 0 owns MASTER_PORT
    if (!o_.rendezvous.empty()) set("HDPISSA_RENDEZVOUS", o_.rendezvous);
    else unsetenv("HDPISSA_RENDEZVOUS");
    if (o_.timeout_s >= 0) set("HDPISSA_COMM_TIMEOUT_S", cat(o_.timeout_s));
    std::vector<char*> argv;
    for (auto& a : o_.command) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execvp(argv[0], argv.data());
    const std::string msg = cat(o_.name, ": cannot execute '", o_.command[0], "' (rank ", rank, "): ",
                                std::strerror(errno), "\n");
    (void)!write(2, msg.data(), msg.size());
    _exit(127);
  }

  static void terminate_all(const std::vector<pid_t>& pids, const std::vector<bool>& alive, int sig) {
    for (std::size_t i = 0; i < pids.size(); ++i)
      if (alive[i] && pids[i] > 0) ::kill(pids[i], sig);
  }
  static void reap_all(const std::vector<pid_t>& pids, std::vector<bool>& alive) {
    for (std::size_t i = 0; i < pids.size(); ++i)
      if (alive[i] && pids[i] > 0) {
        int st = 0;
        (void)waitpid(pids[i], &st, 0);
        alive[i] = false;
      }
  }
  static void restore(const struct sigaction& i, const struct sigaction& t, const struct sigaction& h) {
    sigaction(SIGINT, &i, nullptr);
    sigaction(SIGTERM, &t, nullptr);
    sigaction(SIGHUP, &h, nullptr);
  }

  LaunchOptions o_;
};

/// Parses the launcher's own flags from the front of `args` (hdpissa-run's command line): stops at
/// "--" or at the first argument that is not a launcher flag, which starts the command. `help` is
/// set by -h/--help.
inline LaunchOptions parse_launch_args(const std::vector<std::string>& args, bool* help = nullptr) {
  LaunchOptions o;
  std::size_t i = 0;
  std::optional<std::string> inline_value;
  auto value = [&](const std::string& f) -> std::string {
    if (inline_value) return *inline_value;
    HDPISSA_REQUIRE(i + 1 < args.size(), o.name, ": ", f, " expects a value");
    return args[++i];
  };
  auto integer = [&](const std::string& f) {
    const std::string v = value(f);
    char* end = nullptr;
    const long x = std::strtol(v.c_str(), &end, 10);
    HDPISSA_REQUIRE(!v.empty() && end && *end == '\0', o.name, ": ", f, ": expected an integer, found '", v, "'");
    return int(x);
  };
  auto number = [&](const std::string& f) {
    const std::string v = value(f);
    char* end = nullptr;
    const double x = std::strtod(v.c_str(), &end);
    HDPISSA_REQUIRE(!v.empty() && end && *end == '\0', o.name, ": ", f, ": expected a number, found '", v, "'");
    return x;
  };
  for (; i < args.size(); ++i) {
    std::string f = args[i];
    if (f == "--") {
      ++i;
      break;
    }
    if (f == "-h" || f == "--help") {
      if (help) *help = true;
      return o;
    }
    inline_value.reset();
    if (const auto eq = f.find('='); f.rfind("--", 0) == 0 && eq != std::string::npos) {  // --flag=value
      inline_value = f.substr(eq + 1);
      f = f.substr(0, eq);
    }
    if (f == "--nproc-per-node" || f == "--nproc_per_node" || f == "-n") o.nproc_per_node = integer(f);
    else if (f == "--nnodes") o.nnodes = integer(f);
    else if (f == "--node-rank" || f == "--node_rank") o.node_rank = integer(f);
    else if (f == "--master-addr" || f == "--master_addr") o.master_addr = value(f);
    else if (f == "--master-port" || f == "--master_port") o.master_port = integer(f);
    else if (f == "--rendezvous") o.rendezvous = value(f);
    else if (f == "--timeout") o.timeout_s = number(f);
    else if (f == "--grace") o.grace = std::chrono::milliseconds(static_cast<long long>(number(f) * 1000.0));
    else if (f.rfind("-", 0) == 0) {
      // Did you mean: the known option within edit distance max(2, |f| / 3), if any.
      const char* known[] = {"--nproc-per-node", "--nnodes", "--node-rank", "--master-addr", "--master-port",
                             "--rendezvous", "--timeout", "--grace", "--help", "--version"};
      auto distance = [](const std::string& a, const std::string& b) {
        std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
        for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
        for (std::size_t r = 1; r <= a.size(); ++r) {
          cur[0] = r;
          for (std::size_t j = 1; j <= b.size(); ++j)
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[r - 1] == b[j - 1] ? 0u : 1u)});
          std::swap(prev, cur);
        }
        return prev[b.size()];
      };
      std::string best;
      std::size_t best_d = f.size();
      for (const char* k : known)
        if (const std::size_t d = distance(f, k); d < best_d) best_d = d, best = k;
      const std::string hint = best_d <= std::max<std::size_t>(2, f.size() / 3) ? cat("; did you mean '", best, "'?") : "";
      throw InvalidArgument(cat(o.name, ": unknown option '", f, "'", hint, " (see --help)"));
    }
    else break;
  }
  o.command.assign(args.begin() + std::ptrdiff_t(std::min(i, args.size())), args.end());
  return o;
}

/// hdpissa-run's usage text.
inline std::string launch_usage() {
  return "usage: hdpissa-run [options] [--] PROGRAM [ARGS...]\n"
         "Starts PROGRAM once per process of this host with the torchrun environment (RANK, WORLD_SIZE,\n"
         "LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT) and supervises them: if one\n"
         "fails, the others are stopped and the first failure's exit code is returned.\n"
         "  -n, --nproc-per-node N   processes on this host, e.g. one per GPU (default 1)\n"
         "  --nnodes M               hosts in the job (default 1); run hdpissa-run on each\n"
         "  --node-rank I            this host's index 0..M-1 (default 0)\n"
         "  --master-addr A          host of rank 0 (default 127.0.0.1)\n"
         "  --master-port P          rank 0's rendezvous port (default: a free port; required with --nnodes > 1)\n"
         "  --rendezvous URL         file:///shared/dir (rank 0 writes its address there) or tcp://host:port\n"
         "  --timeout S              HDPISSA_COMM_TIMEOUT_S for the processes: deadline of a collective\n"
         "  --grace S                after a failure, seconds before SIGTERM, then before SIGKILL (default 3)\n";
}

}  // namespace hdpissa
