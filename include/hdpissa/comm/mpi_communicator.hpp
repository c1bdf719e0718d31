#pragma once
/// \file mpi_communicator.hpp
/// MpiCommunicator: P CPU processes, one adapter group each (groups() = size()), over Boost.MPI.
/// Host buffers (memory_space = host_memory). Compose with VirtualRanks<MpiCommunicator> for more
/// groups than processes.
///
/// - Isolation: the constructor duplicates the given communicator, so library traffic never matches
///   the application's messages, and sets MPI_ERRORS_RETURN on the duplicate: a failed call becomes
///   a hdpissa::RuntimeCallError carrying the call, host, rank, file and line (HDPISSA_MPI_CHECK)
///   instead of Open MPI's default abort.
/// - Timeouts: every collective is the non-blocking MPI-3 form (MPI_Iallgather, MPI_Ibcast, …)
///   completed by an MPI_Test loop with a deadline (MpiOptions::timeout). A collective that misses
///   its deadline throws CommError naming host, rank, the collective and the timeout; the
///   communicator is then unusable (every later call throws) because the abandoned request may still
///   write into the caller's buffers. The intended reaction is to end the job: run_or_abort() (a
///   top-level handler) prints the error and calls MPI_Abort, which makes mpirun kill every rank.
///   A peer that crashes (signal, exit without MPI_Finalize) is detected by mpirun itself, which
///   kills the survivors and prints which rank died (Open MPI 4.1 has no in-process recovery
///   without ULFM). docs/distributed.md describes both.
/// - all_reduce_sum: the reduction policy is a template parameter (see OrderedSum, NativeAllReduce).

#include <mpi.h>

#include <boost/mpi/communicator.hpp>
#include <boost/mpi/environment.hpp>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <iostream>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "hdpissa/comm/comm_timeout.hpp"
#include "hdpissa/core/concepts.hpp"

namespace hdpissa {

namespace detail {

/// "host H, rank R" of this process in MPI_COMM_WORLD (usable before and after any failure).
inline std::string mpi_where() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return "host ?, rank ? (MPI not running)";
  int rank = -1, size = 0, len = 0;
  char host[MPI_MAX_PROCESSOR_NAME] = {};
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Get_processor_name(host, &len);
  return cat("host ", std::string(host, std::size_t(len)), ", rank ", rank, " of ", size);
}

/// Throws RuntimeCallError for a failed MPI call: the call, MPI's error string, host, rank, file, line.
inline void mpi_check(int code, const char* call, const char* file, int line) {
  if (code == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING] = {};
  int len = 0;
  if (MPI_Error_string(code, msg, &len) != MPI_SUCCESS) len = 0;
  throw RuntimeCallError(cat(call, " failed: ", std::string(msg, std::size_t(len)), " (MPI error ", code,
                             ") on ", mpi_where(), " at ", file, ":", line));
}

template <class T>
inline MPI_Datatype mpi_datatype() {
  if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
  else if constexpr (std::is_same_v<T, double>) return MPI_DOUBLE;
  else static_assert(dependent_false<T>, "MpiCommunicator: supported element types are float and double");
}

}  // namespace detail
}  // namespace hdpissa

/// HDPISSA_MPI_CHECK(call): runs an MPI call and throws hdpissa::RuntimeCallError (call, error
/// string, host, rank, file, line) unless it returns MPI_SUCCESS. Needs MPI_ERRORS_RETURN on the
/// communicator involved (MpiCommunicator sets it on its own).
#define HDPISSA_MPI_CHECK(call) ::hdpissa::detail::mpi_check((call), #call, __FILE__, __LINE__)

namespace hdpissa {

/// Reduction policy (default): all_reduce_sum all-gathers every rank's buffer and sums it locally
/// in rank order 0..P−1. Bit-identical on every rank by construction — and bit-identical to
/// ThreadGroup's all_reduce_sum on the same inputs — for any MPI implementation and topology. Costs
/// P× the buffer in traffic and scratch (processed in chunks of `chunk_elements`), which is
/// irrelevant for HD-PiSSA: its only all-reduces are one-element consensus flags.
struct OrderedSum {
  static constexpr const char* name() { return "ordered"; }
  static constexpr std::size_t chunk_elements = std::size_t(1) << 20;
};

/// Reduction policy: MPI_Iallreduce with MPI_SUM. Bandwidth-optimal for large buffers (data-parallel
/// baselines). MPI only *advises* that every rank get the same result; Open MPI 4.1's algorithms
/// for commutative ops (recursive doubling, where each pair adds the same two operands; ring and
/// Rabenseifner, where each block is reduced once and then all-gathered) do give bit-identical
/// results on every rank, and the choice is a function of (message size, communicator size), so it
/// is fixed for a fixed topology. tests/mpi checks the property; prefer OrderedSum when in doubt.
struct NativeAllReduce {
  static constexpr const char* name() { return "native"; }
};

/// Options of an MpiCommunicator.
struct MpiOptions {
  /// Deadline of one collective; zero or negative waits forever. Default: $HDPISSA_COMM_TIMEOUT_S
  /// seconds if set, else 10 minutes (torch.distributed's default).
  std::chrono::milliseconds timeout = default_comm_timeout();
  /// Sleep between MPI_Test polls once the first `spin_polls` polls found the collective unfinished
  /// (keeps oversubscribed ranks from starving each other; MPI_Test drives the progress).
  std::chrono::microseconds poll_interval{20};
  int spin_polls = 200;
};

/// P processes, one adapter group each, over a (duplicated) Boost.MPI communicator.
/// `Reduce` is the all_reduce_sum policy: OrderedSum (default) or NativeAllReduce.
template <class Reduce = OrderedSum>
class BasicMpiCommunicator {
  static_assert(std::is_same_v<Reduce, OrderedSum> || std::is_same_v<Reduce, NativeAllReduce>,
                "BasicMpiCommunicator: Reduce must be OrderedSum or NativeAllReduce");

 public:
  using memory_space = host_memory;
  using reduce_policy = Reduce;

  /// Duplicates `comm` (collective over it) and sets MPI_ERRORS_RETURN on the duplicate.
  explicit BasicMpiCommunicator(const boost::mpi::communicator& comm = boost::mpi::communicator(),
                                MpiOptions options = {})
      : comm_(comm, boost::mpi::comm_duplicate), options_(options) {
    HDPISSA_MPI_CHECK(MPI_Comm_set_errhandler(raw(), MPI_ERRORS_RETURN));
    rank_ = comm_.rank();
    size_ = comm_.size();
  }

  int rank() const { return rank_; }
  int size() const { return size_; }
  int groups() const { return size_; }
  int local_groups() const { return 1; }
  int first_group() const { return rank_; }
  const MpiOptions& options() const { return options_; }
  void set_timeout(std::chrono::milliseconds t) { options_.timeout = t; }
  /// The duplicated communicator (for the application's own calls; do not change its error handler).
  const boost::mpi::communicator& communicator() const { return comm_; }
  /// Why the communicator is unusable (empty while healthy).
  const std::string& failure() const { return failure_; }

  /// `send` holds n values; `recv` receives size()·n, rank-major. send may alias recv + rank()·n.
  template <class T>
  void all_gather(const T* send, T* recv, std::size_t n) {
    check_usable("all_gather");
    const int cnt = count(n, "all_gather");
    const T* s = send == recv + std::size_t(rank_) * n ? nullptr : send;
    MPI_Request req = MPI_REQUEST_NULL;
    HDPISSA_MPI_CHECK(MPI_Iallgather(s ? static_cast<const void*>(s) : MPI_IN_PLACE, cnt,
                                     detail::mpi_datatype<T>(), recv, cnt, detail::mpi_datatype<T>(), raw(),
                                     &req));
    wait(req, "all_gather", n * sizeof(T));
  }

  /// In-place sum over processes; bit-identical on every process (see the policy).
  template <class T>
  void all_reduce_sum(T* buf, std::size_t n) {
    check_usable("all_reduce_sum");
    if constexpr (std::is_same_v<Reduce, NativeAllReduce>) {
      for (std::size_t off = 0; off < n; off += std::size_t(INT_MAX)) {
        const int cnt = int(std::min<std::size_t>(n - off, std::size_t(INT_MAX)));
        MPI_Request req = MPI_REQUEST_NULL;
        HDPISSA_MPI_CHECK(
            MPI_Iallreduce(MPI_IN_PLACE, buf + off, cnt, detail::mpi_datatype<T>(), MPI_SUM, raw(), &req));
        wait(req, "all_reduce_sum", std::size_t(cnt) * sizeof(T));
      }
    } else {
      const std::size_t chunk = OrderedSum::chunk_elements;
      const std::size_t cap = std::min(n, chunk) * std::size_t(size_) * sizeof(T);
      if (scratch_.size() < cap) scratch_.resize(cap);  // grows once to its high-water mark
      T* all = reinterpret_cast<T*>(scratch_.data());
      for (std::size_t off = 0; off < n; off += chunk) {
        const std::size_t m = std::min(chunk, n - off);
        MPI_Request req = MPI_REQUEST_NULL;
        HDPISSA_MPI_CHECK(MPI_Iallgather(buf + off, int(m), detail::mpi_datatype<T>(), all, int(m),
                                         detail::mpi_datatype<T>(), raw(), &req));
        wait(req, "all_reduce_sum", m * sizeof(T));
        // Same order and same zero start as ThreadGroup: 0 + x_0 + x_1 + … + x_{P−1}.
        for (std::size_t i = 0; i < m; ++i) {
          T acc = T(0);
          for (int p = 0; p < size_; ++p) acc += all[std::size_t(p) * m + i];
          buf[off + i] = acc;
        }
      }
    }
  }

  /// `buf` (n values) on `root` is copied to every process.
  template <class T>
  void broadcast(T* buf, std::size_t n, int root) {
    HDPISSA_REQUIRE(root >= 0 && root < size_, "broadcast: root ", root, " out of range for ", size_,
                    " workers");
    check_usable("broadcast");
    for (std::size_t off = 0; off < n; off += std::size_t(INT_MAX)) {  // n is the same on every rank
      const int cnt = int(std::min<std::size_t>(n - off, std::size_t(INT_MAX)));
      MPI_Request req = MPI_REQUEST_NULL;
      HDPISSA_MPI_CHECK(MPI_Ibcast(buf + off, cnt, detail::mpi_datatype<T>(), root, raw(), &req));
      wait(req, "broadcast", std::size_t(cnt) * sizeof(T));
    }
  }

  void barrier() {
    check_usable("barrier");
    MPI_Request req = MPI_REQUEST_NULL;
    HDPISSA_MPI_CHECK(MPI_Ibarrier(raw(), &req));
    wait(req, "barrier", 0);
  }

  /// After a timeout: waits without deadline for the abandoned collective to complete (the peer
  /// was slow, not dead) and makes the communicator usable again. Returns false if none was pending.
  bool drain() {
    if (pending_ == MPI_REQUEST_NULL) return false;
    HDPISSA_MPI_CHECK(MPI_Wait(&pending_, MPI_STATUS_IGNORE));
    pending_ = MPI_REQUEST_NULL;
    failure_.clear();
    return true;
  }

 private:
  MPI_Comm raw() const { return MPI_Comm(comm_); }

  int count(std::size_t n, const char* what) const {
    HDPISSA_REQUIRE(n <= std::size_t(INT_MAX), "MpiCommunicator::", what, ": expected at most ", INT_MAX,
                    " elements per process (MPI's int counts), found ", n, "; split the exchange");
    return int(n);
  }

  void check_usable(const char* what) const {
    if (!failure_.empty())
      throw CommError(cat("MpiCommunicator::", what, " on ", detail::mpi_where(),
                          ": the communicator is unusable after an earlier failure (", failure_,
                          "); end the job (run_or_abort) or drain() if the peer was only slow"));
  }

  void wait(MPI_Request& req, const char* what, std::size_t bytes) {
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    const bool bounded = options_.timeout.count() > 0;
    int done = 0;
    for (int polls = 0;; ++polls) {
      HDPISSA_MPI_CHECK(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
      if (done) return;
      if (bounded && clock::now() - start > options_.timeout) {
        pending_ = req;  // may still write into the caller's buffers: keep it, refuse further calls
        failure_ = cat(what, " of ", bytes, " bytes per process timed out after ",
                       double(options_.timeout.count()) / 1000.0, " s");
        throw CommError(cat("MpiCommunicator: ", failure_, " on ", detail::mpi_where(), " (communicator of ",
                            size_, " processes): a peer is dead, stuck or not calling the same collective"));
      }
      if (polls >= options_.spin_polls) std::this_thread::sleep_for(options_.poll_interval);
    }
  }

  boost::mpi::communicator comm_;
  MpiOptions options_;
  int rank_ = 0, size_ = 1;
  std::vector<unsigned char> scratch_;  // OrderedSum's gather buffer
  MPI_Request pending_ = MPI_REQUEST_NULL;
  std::string failure_;
};

/// The common case: MPI processes with the ordered (implementation-independent) reduction.
using MpiCommunicator = BasicMpiCommunicator<OrderedSum>;

static_assert(Communicator<MpiCommunicator>);
static_assert(Communicator<BasicMpiCommunicator<NativeAllReduce>>);

/// Top-level handler for MPI programs: returns fn()'s result (0 if it returns void); if fn throws,
/// prints "hdpissa: fatal error on host H, rank R of P: <what>; aborting the job" to stderr and
/// calls MPI_Abort(MPI_COMM_WORLD, 1), so mpirun ends every other rank — including ranks blocked in
/// a collective waiting for this one — instead of leaving them to hang or time out. The library
/// never calls this itself; a main() opts in:
///   int main(int argc, char** argv) { boost::mpi::environment env(argc, argv);
///                                     return hdpissa::run_or_abort([&] { ...; return 0; }); }
template <class Fn>
int run_or_abort(Fn&& fn) {
  std::string what;
  try {
    if constexpr (std::is_void_v<std::invoke_result_t<Fn&>>) {
      fn();
      return 0;
    } else {
      return int(fn());
    }
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
    what = "unknown exception";
  }
  std::cerr << "hdpissa: fatal error on " << detail::mpi_where() << ": " << what
            << "; aborting the job (MPI_Abort)" << std::endl;
  MPI_Abort(MPI_COMM_WORLD, 1);
  return 1;  // not reached with a conforming MPI
}

}  // namespace hdpissa
