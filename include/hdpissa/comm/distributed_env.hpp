#pragma once
/// \file distributed_env.hpp
/// DistributedEnv: where this process sits in a multi-process job, read from the environment that
/// torchrun, hdpissa-run and srun set, and validated (an inconsistent environment is an
/// InvalidArgument naming the variables, never a silent single-process run).
///
/// Read, in this order of precedence:
///   - `WORLD_SIZE`, `RANK` (torchrun, hdpissa-run): both or neither;
///     `LOCAL_RANK`, `LOCAL_WORLD_SIZE` (optional; default RANK and WORLD_SIZE: one host);
///   - otherwise, inside an srun job step (`SLURM_STEP_ID` set): `SLURM_NTASKS`, `SLURM_PROCID`,
///     `SLURM_LOCALID`, and the leading number of `SLURM_STEP_TASKS_PER_NODE` ("4(x2)" → 4);
///   - the rendezvous: `HDPISSA_RENDEZVOUS` (`tcp://host:port` or `file:///shared/dir`), else
///     `tcp://$MASTER_ADDR:$MASTER_PORT`. Needed when the world has more than one process.
///   - `HDPISSA_RENDEZVOUS_TIMEOUT_S`: how long the rendezvous waits for every process (default
///     $HDPISSA_COMM_TIMEOUT_S, else 10 minutes).
/// Under torchrun (`TORCHELASTIC_USE_AGENT_STORE=True`) torchrun's own store already listens on
/// MASTER_PORT, so the tcp rendezvous uses MASTER_PORT + 1 there (docs/distributed.md).

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string>

#include "hdpissa/comm/comm_timeout.hpp"
#include "hdpissa/core/error.hpp"

namespace hdpissa {

/// The rendezvous point of a job: a TCP address where rank 0 listens, or a directory every process
/// can read (rank 0 writes its address into a file there).
struct RendezvousSpec {
  enum class Kind { none, tcp, file };
  Kind kind = Kind::none;
  std::string host;  ///< tcp: MASTER_ADDR
  int port = 0;      ///< tcp: MASTER_PORT (0 only for rank 0 alone: any free port)
  std::string path;  ///< file: the shared directory

  /// "tcp://host:port", "file:///dir" or "none".
  std::string str() const {
    if (kind == Kind::tcp) return cat("tcp://", host, ":", port);
    if (kind == Kind::file) return cat("file://", path);
    return "none";
  }

  /// Parses "tcp://host:port" or "file:///absolute/dir" (`what` names the source in errors).
  static RendezvousSpec parse(const std::string& s, const std::string& what = "rendezvous") {
    RendezvousSpec r;
    if (s.rfind("tcp://", 0) == 0) {
      const std::string hp = s.substr(6);
      const auto colon = hp.rfind(':');
      HDPISSA_REQUIRE(colon != std::string::npos && colon > 0 && colon + 1 < hp.size(), what,
                      ": expected tcp://host:port, found '", s, "'");
      r.kind = Kind::tcp;
      r.host = hp.substr(0, colon);
      r.port = parse_port(hp.substr(colon + 1), what);
    } else if (s.rfind("file://", 0) == 0) {
      r.kind = Kind::file;
      r.path = s.substr(7);
      HDPISSA_REQUIRE(!r.path.empty() && r.path[0] == '/', what, ": expected file:///absolute/directory, found '",
                      s, "'");
    } else {
      throw InvalidArgument(cat(what, ": expected tcp://host:port or file:///shared/directory, found '", s, "'"));
    }
    return r;
  }

  static int parse_port(const std::string& s, const std::string& what) {
    char* end = nullptr;
    const long p = std::strtol(s.c_str(), &end, 10);
    HDPISSA_REQUIRE(!s.empty() && end && *end == '\0' && p >= 0 && p <= 65535, what,
                    ": expected a TCP port 0..65535, found '", s, "'");
    return int(p);
  }
};

/// This process's place in the job and how to find the others.
struct DistributedEnv {
  int rank = 0;              ///< global rank, 0 ≤ rank < world_size
  int world_size = 1;        ///< processes in the job
  int local_rank = 0;        ///< rank among the job's processes on this host (GPU choice)
  int local_world_size = 1;  ///< the job's processes on this host
  RendezvousSpec rendezvous;
  std::chrono::milliseconds timeout = default_comm_timeout();
  /// Which launcher's variables were found: "torchrun" (WORLD_SIZE/RANK), "slurm", or "" (none).
  std::string source;

  /// True when the environment describes a job (WORLD_SIZE or an srun step), even of one process.
  bool launched() const { return !source.empty(); }

  /// Reads the process environment (see the file comment).
  static DistributedEnv from_environment() {
    return from(
        [](const char* name) -> std::optional<std::string> {
          const char* v = std::getenv(name);
          if (!v) return std::nullopt;
          return std::string(v);
        });
  }

  /// Same, from any lookup (tests pass a map).
  static DistributedEnv from(const std::function<std::optional<std::string>(const char*)>& get) {
    DistributedEnv e;
    auto has = [&](const char* n) {
      auto v = get(n);
      return v && !v->empty();
    };
    auto integer = [&](const char* n, int lo) {
      const std::string s = *get(n);
      char* end = nullptr;
      const long v = std::strtol(s.c_str(), &end, 10);
      HDPISSA_REQUIRE(end && *end == '\0' && v >= lo && v <= 1000000, "environment: ", n,
                      ": expected an integer >= ", lo, ", found '", s, "'");
      return int(v);
    };
    if (has("WORLD_SIZE") || has("RANK")) {
      HDPISSA_REQUIRE(has("WORLD_SIZE") && has("RANK"), "environment: found ", has("RANK") ? "RANK" : "WORLD_SIZE",
                      " but not ", has("RANK") ? "WORLD_SIZE" : "RANK",
                      "; a launcher (hdpissa-run, torchrun) sets both");
      e.source = "torchrun";
      e.world_size = integer("WORLD_SIZE", 1);
      e.rank = integer("RANK", 0);
      e.local_rank = has("LOCAL_RANK") ? integer("LOCAL_RANK", 0) : e.rank;
      e.local_world_size = has("LOCAL_WORLD_SIZE") ? integer("LOCAL_WORLD_SIZE", 1) : e.world_size;
    } else if (has("SLURM_STEP_ID") && has("SLURM_PROCID") && has("SLURM_NTASKS")) {
      e.source = "slurm";
      e.world_size = integer("SLURM_NTASKS", 1);
      e.rank = integer("SLURM_PROCID", 0);
      e.local_rank = has("SLURM_LOCALID") ? integer("SLURM_LOCALID", 0) : 0;
      e.local_world_size = 1;
      if (has("SLURM_STEP_TASKS_PER_NODE")) e.local_world_size = std::max(1, std::atoi(get("SLURM_STEP_TASKS_PER_NODE")->c_str()));
      if (e.local_rank >= e.local_world_size) e.local_world_size = e.local_rank + 1;
    } else {
      return e;  // not launched: one process
    }
    const char* ws = e.source == "slurm" ? "SLURM_NTASKS" : "WORLD_SIZE";
    const char* rk = e.source == "slurm" ? "SLURM_PROCID" : "RANK";
    HDPISSA_REQUIRE(e.rank < e.world_size, "environment: ", rk, "=", e.rank, " but ", ws, "=", e.world_size,
                    "; expected 0 <= rank < world size");
    HDPISSA_REQUIRE(e.local_rank < e.local_world_size, "environment: LOCAL_RANK=", e.local_rank,
                    " but LOCAL_WORLD_SIZE=", e.local_world_size, "; expected 0 <= local rank < local world size");
    HDPISSA_REQUIRE(e.local_world_size <= e.world_size, "environment: LOCAL_WORLD_SIZE=", e.local_world_size,
                    " exceeds ", ws, "=", e.world_size);

    if (has("HDPISSA_RENDEZVOUS")) {
      e.rendezvous = RendezvousSpec::parse(*get("HDPISSA_RENDEZVOUS"), "HDPISSA_RENDEZVOUS");
    } else if (has("MASTER_ADDR") || has("MASTER_PORT")) {
      HDPISSA_REQUIRE(has("MASTER_ADDR") && has("MASTER_PORT"), "environment: found ",
                      has("MASTER_ADDR") ? "MASTER_ADDR" : "MASTER_PORT", " but not ",
                      has("MASTER_ADDR") ? "MASTER_PORT" : "MASTER_ADDR", "; set both (rank 0's host and a free port)");
      e.rendezvous.kind = RendezvousSpec::Kind::tcp;
      e.rendezvous.host = *get("MASTER_ADDR");
      e.rendezvous.port = RendezvousSpec::parse_port(*get("MASTER_PORT"), "MASTER_PORT");
      if (auto agent = get("TORCHELASTIC_USE_AGENT_STORE"); agent && (*agent == "True" || *agent == "1"))
        e.rendezvous.port += 1;  // torchrun's own TCPStore holds MASTER_PORT
    }
    HDPISSA_REQUIRE(e.world_size == 1 || e.rendezvous.kind != RendezvousSpec::Kind::none, "environment: ", ws, "=",
                    e.world_size,
                    " but no rendezvous address: set MASTER_ADDR and MASTER_PORT (rank 0's host and a free port; "
                    "hdpissa-run and torchrun set them) or HDPISSA_RENDEZVOUS=file:///shared/directory");
    HDPISSA_REQUIRE(e.rendezvous.kind != RendezvousSpec::Kind::tcp || e.rendezvous.port != 0 || e.world_size == 1,
                    "environment: MASTER_PORT=0 needs a fixed port when ", ws, " > 1, found ", e.world_size);

    auto fallback = default_comm_timeout();
    if (auto t = get("HDPISSA_RENDEZVOUS_TIMEOUT_S"); t && !t->empty()) {
      char* end = nullptr;
      const double s = std::strtod(t->c_str(), &end);
      HDPISSA_REQUIRE(end && *end == '\0', "HDPISSA_RENDEZVOUS_TIMEOUT_S: expected a number of seconds, found '",
                      *t, "'");
      fallback = std::chrono::milliseconds(static_cast<long long>(s * 1000.0));
    }
    e.timeout = fallback;
    return e;
  }

  /// "rank 1 of 4 (local 1 of 2), rendezvous tcp://…" for logs.
  std::string describe() const {
    return cat("rank ", rank, " of ", world_size, " (local ", local_rank, " of ", local_world_size, ", from ",
               source.empty() ? std::string("no launcher") : source, "), rendezvous ", rendezvous.str());
  }
};

}  // namespace hdpissa
