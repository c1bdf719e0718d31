#pragma once
/// \file nccl_communicator.hpp
/// NcclCommunicator: one process per GPU, one adapter group each (groups() = size()), buffers in
/// device memory. Compose with VirtualRanks<NcclCommunicator> for more groups than GPUs.
///
/// - Bootstrap: construct from an ncclUniqueId + (rank, nranks). make_nccl_communicator() in
///   comm/nccl_mpi_bootstrap.hpp creates the id on rank 0 and broadcasts it with Boost.MPI, so
///   `mpirun -np N` (with a hostfile for several hosts) is the launcher; NcclCommunicator::single()
///   needs no MPI at all (one rank, a locally generated id).
/// - Streams: collectives run on a stream of their own, ordered with events against the caller's
///   compute stream (NcclOptions::compute_stream, e.g. CudaBackend::stream()): the collective
///   waits for everything already queued on the compute stream, and work queued there afterwards
///   waits for the collective. group_start()/group_end() (or NcclGroup) fuse several collectives
///   into one NCCL launch (ncclGroupStart/End) for bucketed exchanges; DirectWeightUpdate already
///   sends every layer's deltas in ONE all_gather per step.
/// - Faults: the communicator is created non-blocking (ncclConfig_t::blocking = 0) so no NCCL call
///   can block the host indefinitely. Completion is awaited by polling the done-event and
///   ncclCommGetAsyncError() against a deadline (NcclOptions::timeout, default
///   $HDPISSA_COMM_TIMEOUT_S or 10 min); on an asynchronous error or a missed deadline the
///   communicator is aborted (ncclCommAbort, which also releases kernels stuck waiting for a dead
///   peer) and CommError / RuntimeCallError is thrown carrying host, rank, device, the collective,
///   file and line. Every surviving rank reaches its own deadline, so every rank exits with an
///   error; with MPI as the launcher, run_or_abort() then ends the job.
/// - all_reduce_sum: ncclAllReduce(ncclSum). NCCL's algorithms (ring: reduce-scatter then
///   all-gather; tree: reduce up then broadcast down; NVLS: reduction in the switch) compute each
///   element once and distribute it, so every rank receives identical bits.

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nccl.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <exception>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/comm/comm_timeout.hpp"
#include "hdpissa/core/concepts.hpp"

namespace hdpissa {

namespace nccl_detail {

/// This process's rank as the launcher sees it (Open MPI, MPICH/PMI, Slurm), for messages raised
/// before a communicator exists; "?" if unknown.
inline std::string launcher_rank() {
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"})
    if (const char* s = std::getenv(v)) return s;
  return "?";
}

inline std::string host_name() {
  char h[256] = {};
  if (gethostname(h, sizeof(h) - 1) != 0) return "?";
  return h;
}

/// Throws RuntimeCallError for a failed NCCL call: call, NCCL's strings, host, rank, device, file, line.
inline void nccl_check(ncclResult_t r, const char* call, const char* file, int line, ncclComm_t comm = nullptr,
                       const std::string& rank = launcher_rank()) {
  if (r == ncclSuccess || r == ncclInProgress) return;
  int dev = -1;
  (void)cudaGetDevice(&dev);
  const char* last = ncclGetLastError(comm);
  throw RuntimeCallError(cat("NCCL call `", call, "` failed: ", ncclGetErrorString(r), " (", int(r), ")",
                             last && *last ? cat(": ", last) : std::string(), " on host ", host_name(), ", rank ",
                             rank, ", device ", dev, " at ", file, ":", line));
}

template <class T>
inline ncclDataType_t nccl_type() {
  if constexpr (std::is_same_v<T, float>) return ncclFloat32;
  else if constexpr (std::is_same_v<T, double>) return ncclFloat64;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return ncclBfloat16;
  else static_assert(dependent_false<T>, "NcclCommunicator: supported element types are float, double, bf16");
}

}  // namespace nccl_detail
}  // namespace hdpissa

/// HDPISSA_NCCL_CHECK(call): throws hdpissa::RuntimeCallError (call, NCCL's error strings, host,
/// launcher rank, device, file, line) unless the call returns ncclSuccess or ncclInProgress.
#define HDPISSA_NCCL_CHECK(call) ::hdpissa::nccl_detail::nccl_check((call), #call, __FILE__, __LINE__)

namespace hdpissa {

/// Options of an NcclCommunicator.
struct NcclOptions {
  /// CUDA device of this rank; −1 keeps the current one (make_nccl_communicator picks local rank mod
  /// device count).
  int device = -1;
  /// The stream the backend computes on (CudaBackend::stream()); nullptr is the legacy default stream.
  cudaStream_t compute_stream = nullptr;
  /// Deadline of one collective (and of initialisation); zero or negative waits forever.
  std::chrono::milliseconds timeout = default_comm_timeout();
  /// true (default): the host waits, with the deadline, for each collective (or group) to finish,
  /// so faults surface at the call that met them. false: collectives are only stream-ordered and
  /// faults surface at the next call or at synchronize().
  bool wait_for_completion = true;
  /// Sleep between polls of the done-event / async error.
  std::chrono::microseconds poll_interval{20};
};

/// One process per GPU over NCCL; one adapter group per process.
class NcclCommunicator {
 public:
  using memory_space = device_memory;

  /// Joins the communicator `id` as `rank` of `nranks` (collective over all of them).
  NcclCommunicator(const ncclUniqueId& id, int rank, int nranks, NcclOptions options = {})
      : options_(options), rank_(rank), size_(nranks) {
    HDPISSA_REQUIRE(nranks >= 1 && rank >= 0 && rank < nranks, "NcclCommunicator: rank ", rank,
                    " out of range for ", nranks, " ranks");
    try {
      if (options_.device >= 0) HDPISSA_CUDA_CHECK(cudaSetDevice(options_.device));
      HDPISSA_CUDA_CHECK(cudaGetDevice(&device_));
      HDPISSA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
      HDPISSA_CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
      HDPISSA_CUDA_CHECK(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
      HDPISSA_CUDA_CHECK(cudaMalloc(&scratch_, sizeof(float)));
      HDPISSA_CUDA_CHECK(cudaMemset(scratch_, 0, sizeof(float)));
      ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
      config.blocking = 0;  // every call returns at once; completion is polled against the deadline
      check(ncclCommInitRankConfig(&comm_, nranks, id, rank, &config), "ncclCommInitRankConfig", __FILE__,
            __LINE__);
      await_comm_ready("ncclCommInitRankConfig");
    } catch (...) {
      release(true);
      throw;
    }
  }

  /// A one-rank communicator with a locally generated id: no MPI needed (single-GPU runs, tests).
  static NcclCommunicator single(NcclOptions options = {}) { return NcclCommunicator(unique_id(), 0, 1, options); }

  /// A fresh ncclUniqueId (call on one rank and send it to the others).
  static ncclUniqueId unique_id() {
    ncclUniqueId id;
    HDPISSA_NCCL_CHECK(ncclGetUniqueId(&id));
    return id;
  }

  NcclCommunicator(NcclCommunicator&& o) noexcept { steal(o); }
  NcclCommunicator& operator=(NcclCommunicator&& o) noexcept {
    if (this != &o) {
      release(false);
      steal(o);
    }
    return *this;
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  ~NcclCommunicator() { release(false); }

  int rank() const { return rank_; }
  int size() const { return size_; }
  int groups() const { return size_; }
  int local_groups() const { return 1; }
  int first_group() const { return rank_; }
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  ncclComm_t native_handle() const { return comm_; }
  const NcclOptions& options() const { return options_; }
  void set_timeout(std::chrono::milliseconds t) { options_.timeout = t; }
  void set_compute_stream(cudaStream_t s) { options_.compute_stream = s; }
  /// Why the communicator is unusable (empty while healthy).
  const std::string& failure() const { return failure_; }

  /// `send` (n device values) from every rank into `recv` (size()·n, rank-major). In place allowed
  /// (send = recv + rank()·n).
  template <class T>
  void all_gather(const T* send, T* recv, std::size_t n) {
    run("ncclAllGather", n * sizeof(T), [&] {
      return ncclAllGather(send, recv, n, nccl_detail::nccl_type<T>(), comm_, stream_);
    });
  }
  /// In-place sum; every rank receives identical bits (see the file comment).
  template <class T>
  void all_reduce_sum(T* buf, std::size_t n) {
    run("ncclAllReduce", n * sizeof(T), [&] {
      return ncclAllReduce(buf, buf, n, nccl_detail::nccl_type<T>(), ncclSum, comm_, stream_);
    });
  }
  template <class T>
  void broadcast(T* buf, std::size_t n, int root) {
    HDPISSA_REQUIRE(root >= 0 && root < size_, "broadcast: root ", root, " out of range for ", size_, " workers");
    run("ncclBroadcast", n * sizeof(T), [&] {
      return ncclBroadcast(buf, buf, n, nccl_detail::nccl_type<T>(), root, comm_, stream_);
    });
  }
  /// NCCL has no barrier: a one-element all-reduce, always awaited on the host.
  void barrier() {
    const bool in_group = group_depth_ > 0;
    HDPISSA_REQUIRE(!in_group, "NcclCommunicator::barrier: not allowed inside group_start()/group_end()");
    run("barrier (ncclAllReduce)", sizeof(float), [&] {
      return ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm_, stream_);
    });
    if (!options_.wait_for_completion) synchronize();
  }

  /// Starts fusing the following collectives into one launch (ncclGroupStart); nests.
  void group_start() {
    check_usable("group_start");
    if (group_depth_ == 0) {
      order_after_compute();
      group_bytes_ = 0;
    }
    check(ncclGroupStart(), "ncclGroupStart", __FILE__, __LINE__);
    ++group_depth_;
  }
  /// Ends the group; at the outermost level launches it and orders/awaits it like one collective.
  void group_end() {
    HDPISSA_REQUIRE(group_depth_ > 0, "NcclCommunicator::group_end without group_start");
    check_usable("group_end");
    --group_depth_;
    check(ncclGroupEnd(), "ncclGroupEnd", __FILE__, __LINE__);
    if (group_depth_ == 0) {
      await_comm_ready("ncclGroupEnd");
      finish("grouped collectives", group_bytes_);
    }
  }

  /// Waits (with the deadline) for every collective queued so far.
  void synchronize() {
    check_usable("synchronize");
    await_event("synchronize", 0);
  }

  /// Aborts the communicator (ncclCommAbort): pending collectives are cancelled, later calls throw.
  /// For top-level handlers that want to end a job cleanly after an error elsewhere.
  void abort(const std::string& reason) noexcept {
    if (failure_.empty()) failure_ = reason.empty() ? std::string("aborted") : reason;
    if (comm_) {
      (void)ncclCommAbort(comm_);
      comm_ = nullptr;
    }
  }

 private:
  template <class Call>
  void run(const char* what, std::size_t bytes, Call&& call) {
    check_usable(what);
    if (group_depth_ > 0) {  // inside a group: only enqueue
      check(call(), what, __FILE__, __LINE__);
      group_bytes_ += bytes;
      return;
    }
    order_after_compute();
    check(call(), what, __FILE__, __LINE__);
    await_comm_ready(what);  // a non-blocking communicator may still be enqueueing
    finish(what, bytes);
  }

  /// The collective stream waits for everything already queued on the compute stream.
  void order_after_compute() {
    HDPISSA_CUDA_CHECK(cudaEventRecord(ready_, options_.compute_stream));
    HDPISSA_CUDA_CHECK(cudaStreamWaitEvent(stream_, ready_, 0));
  }
  /// Work queued on the compute stream from now on waits for the collective; then await it.
  void finish(const char* what, std::size_t bytes) {
    HDPISSA_CUDA_CHECK(cudaEventRecord(done_, stream_));
    HDPISSA_CUDA_CHECK(cudaStreamWaitEvent(options_.compute_stream, done_, 0));
    if (options_.wait_for_completion) await_event(what, bytes);
  }

  std::string where() const {
    return cat("host ", nccl_detail::host_name(), ", rank ", rank_, " of ", size_, ", device ", device_);
  }

  void check(ncclResult_t r, const char* what, const char* file, int line) {
    if (r == ncclSuccess || r == ncclInProgress) return;
    const char* last = comm_ ? ncclGetLastError(comm_) : nullptr;
    const std::string msg = cat("NCCL call `", what, "` failed: ", ncclGetErrorString(r), " (", int(r), ")",
                                last && *last ? cat(": ", last) : std::string(), " on ", where(), " at ", file,
                                ":", line);
    abort(msg);
    throw RuntimeCallError(msg);
  }

  void check_usable(const char* what) const {
    if (!failure_.empty() || !comm_)
      throw CommError(cat("NcclCommunicator::", what, " on ", where(),
                          ": the communicator is unusable after an earlier failure (",
                          failure_.empty() ? std::string("moved from") : failure_, ")"));
  }

  /// Polls ncclCommGetAsyncError until the communicator leaves ncclInProgress (init, group end,
  /// enqueue of a non-blocking communicator).
  void await_comm_ready(const char* what) {
    poll(what, 0, [&] {
      ncclResult_t st = ncclSuccess;
      check(ncclCommGetAsyncError(comm_, &st), "ncclCommGetAsyncError", __FILE__, __LINE__);
      if (st == ncclInProgress) return false;
      check(st, what, __FILE__, __LINE__);
      return true;
    });
  }

  /// Polls the done-event, checking NCCL's asynchronous error each time, until the deadline.
  void await_event(const char* what, std::size_t bytes) {
    poll(what, bytes, [&] {
      const cudaError_t e = cudaEventQuery(done_);
      if (e == cudaSuccess) return true;
      if (e != cudaErrorNotReady) {
        const std::string msg = cat("CUDA error while waiting for ", what, ": ", cudaGetErrorString(e), " on ",
                                    where(), " at ", __FILE__, ":", __LINE__);
        abort(msg);
        throw RuntimeCallError(msg);
      }
      ncclResult_t st = ncclSuccess;
      check(ncclCommGetAsyncError(comm_, &st), "ncclCommGetAsyncError", __FILE__, __LINE__);
      if (st != ncclInProgress) check(st, what, __FILE__, __LINE__);
      return false;
    });
  }

  template <class Done>
  void poll(const char* what, std::size_t bytes, Done&& done) {
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    const bool bounded = options_.timeout.count() > 0;
    for (int polls = 0; !done(); ++polls) {
      if (bounded && clock::now() - start > options_.timeout) {
        const std::string msg = cat("NcclCommunicator: ", what, bytes ? cat(" of ", bytes, " bytes per rank") : "",
                                    " timed out after ", double(options_.timeout.count()) / 1000.0, " s on ",
                                    where(), ": a peer is dead, stuck or not calling the same collective; "
                                    "the communicator was aborted (ncclCommAbort)");
        abort(msg);
        throw CommError(msg);
      }
      if (polls >= 100) std::this_thread::sleep_for(options_.poll_interval);
    }
  }

  void steal(NcclCommunicator& o) noexcept {
    options_ = o.options_;
    rank_ = o.rank_;
    size_ = o.size_;
    device_ = o.device_;
    comm_ = std::exchange(o.comm_, nullptr);
    stream_ = std::exchange(o.stream_, nullptr);
    ready_ = std::exchange(o.ready_, nullptr);
    done_ = std::exchange(o.done_, nullptr);
    scratch_ = std::exchange(o.scratch_, nullptr);
    group_depth_ = std::exchange(o.group_depth_, 0);
    group_bytes_ = o.group_bytes_;
    failure_ = std::move(o.failure_);
  }

  /// Frees everything; never throws. A healthy communicator is finalised with ncclCommDestroy after
  /// its stream drained (awaited collectives already completed); a failed one was already aborted.
  void release(bool failed) noexcept {
    if (comm_) {
      if (failed || !failure_.empty()) (void)ncclCommAbort(comm_);
      else {
        if (stream_) (void)cudaStreamSynchronize(stream_);
        (void)ncclCommDestroy(comm_);
      }
      comm_ = nullptr;
    }
    if (scratch_) (void)cudaFree(scratch_);
    if (done_) (void)cudaEventDestroy(done_);
    if (ready_) (void)cudaEventDestroy(ready_);
    if (stream_) (void)cudaStreamDestroy(stream_);
    scratch_ = nullptr;
    done_ = ready_ = nullptr;
    stream_ = nullptr;
  }

  NcclOptions options_;
  int rank_ = 0, size_ = 1, device_ = -1;
  ncclComm_t comm_ = nullptr;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  float* scratch_ = nullptr;  // barrier's one element
  int group_depth_ = 0;
  std::size_t group_bytes_ = 0;
  std::string failure_;
};

static_assert(Communicator<NcclCommunicator>);

/// RAII for NcclCommunicator::group_start()/group_end(): the collectives issued while it lives go
/// out as one fused NCCL launch (bucketed exchanges). end() ends it early and reports errors; the
/// destructor ends it quietly when an exception is already unwinding.
class NcclGroup {
 public:
  explicit NcclGroup(NcclCommunicator& c) : c_(&c) { c_->group_start(); }
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;
  void end() {
    if (c_) std::exchange(c_, nullptr)->group_end();
  }
  ~NcclGroup() noexcept(false) {
    if (!c_) return;
    if (std::uncaught_exceptions() > 0) {
      try {
        end();
      } catch (...) {
      }
    } else {
      end();
    }
  }

 private:
  NcclCommunicator* c_;
};

}  // namespace hdpissa
