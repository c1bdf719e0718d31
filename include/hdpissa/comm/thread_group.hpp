#pragma once
/// \file thread_group.hpp
/// ThreadGroup: K workers as threads of one process, with real collectives over shared memory.
/// Every collective is: publish a pointer, meet at a barrier, read peers' buffers, meet again. The
/// barrier is abortable: when one worker throws, ThreadGroup::run aborts it and every peer blocked in
/// a collective gets a CommError instead of hanging.

#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "hdpissa/core/concepts.hpp"

namespace hdpissa {

namespace detail {

/// A reusable barrier that can be aborted (std::barrier cannot).
class AbortableBarrier {
 public:
  explicit AbortableBarrier(int n) : n_(n) {}
  void arrive_and_wait() {
    std::unique_lock lock(mu_);
    if (aborted_) throw CommError(cat("ThreadGroup: collective aborted: ", reason_));
    const std::size_t gen = generation_;
    if (++count_ == n_) {
      count_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    cv_.wait(lock, [&] { return generation_ != gen || aborted_; });
    if (generation_ == gen && aborted_) throw CommError(cat("ThreadGroup: collective aborted: ", reason_));
  }
  void abort(const std::string& reason) {
    std::lock_guard lock(mu_);
    if (!aborted_) reason_ = reason;
    aborted_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int n_;
  int count_ = 0;
  std::size_t generation_ = 0;
  bool aborted_ = false;
  std::string reason_;
};

}  // namespace detail

/// Shared state of one group of threads; create one, then one ThreadGroup per thread.
class ThreadGroupContext {
 public:
  explicit ThreadGroupContext(int workers) : n_(workers), barrier_(workers), slots_(workers, nullptr) {
    HDPISSA_REQUIRE(workers >= 1, "ThreadGroupContext: expected at least 1 worker, found ", workers);
  }
  int size() const { return n_; }
  void abort(const std::string& reason) { barrier_.abort(reason); }

 private:
  friend class ThreadGroup;
  int n_;
  detail::AbortableBarrier barrier_;
  std::vector<const void*> slots_;
};

/// One worker's handle on a ThreadGroupContext. Each worker hosts one group.
class ThreadGroup {
 public:
  using memory_space = host_memory;
  ThreadGroup(ThreadGroupContext& ctx, int rank) : ctx_(&ctx), rank_(rank) {
    HDPISSA_REQUIRE(rank >= 0 && rank < ctx.size(), "ThreadGroup: rank ", rank,
                    " out of range for ", ctx.size(), " workers");
  }
  int rank() const { return rank_; }
  int size() const { return ctx_->n_; }
  int groups() const { return ctx_->n_; }
  int local_groups() const { return 1; }
  int first_group() const { return rank_; }

  template <class T>
  void all_gather(const T* send, T* recv, std::size_t n) {
    publish(send);
    for (int p = 0; p < size(); ++p) {
      const T* src = static_cast<const T*>(ctx_->slots_[p]);
      if (src != recv + p * n && n) std::memcpy(recv + p * n, src, n * sizeof(T));
    }
    sync();
  }
  /// Sums in rank order 0..P−1 on every worker, so all results are bit-identical.
  template <class T>
  void all_reduce_sum(T* buf, std::size_t n) {
    publish(buf);
    std::vector<T> acc(n, T(0));
    for (int p = 0; p < size(); ++p) {
      const T* src = static_cast<const T*>(ctx_->slots_[p]);
      for (std::size_t i = 0; i < n; ++i) acc[i] += src[i];
    }
    sync();  // everyone has read every buffer before anyone overwrites its own
    std::memcpy(buf, acc.data(), n * sizeof(T));
  }
  template <class T>
  void broadcast(T* buf, std::size_t n, int root) {
    HDPISSA_REQUIRE(root >= 0 && root < size(), "broadcast: root ", root, " out of range for ",
                    size(), " workers");
    publish(buf);
    if (rank_ != root && n) std::memcpy(buf, static_cast<const T*>(ctx_->slots_[root]), n * sizeof(T));
    sync();
  }
  void barrier() { sync(); }

  /// Runs fn(ThreadGroup&) on `workers` threads and joins them. If any worker throws, the group is
  /// aborted (peers blocked in collectives throw CommError) and the first exception is rethrown.
  template <class Fn>
  static void run(int workers, Fn&& fn) {
    ThreadGroupContext ctx(workers);
    std::vector<std::exception_ptr> errors(workers);
    std::vector<std::thread> threads;
    threads.reserve(workers);
    for (int r = 0; r < workers; ++r)
      threads.emplace_back([&, r] {
        try {
          ThreadGroup comm(ctx, r);
          fn(comm);
        } catch (const std::exception& e) {
          errors[r] = std::current_exception();
          ctx.abort(cat("worker ", r, " failed: ", e.what()));
        } catch (...) {
          errors[r] = std::current_exception();
          ctx.abort(cat("worker ", r, " failed"));
        }
      });
    for (auto& t : threads) t.join();
    // Prefer the root cause over the CommErrors it provoked in peers.
    std::exception_ptr first_comm;
    for (auto& e : errors) {
      if (!e) continue;
      try {
        std::rethrow_exception(e);
      } catch (const CommError&) {
        if (!first_comm) first_comm = e;
      } catch (...) {
        std::rethrow_exception(e);
      }
    }
    if (first_comm) std::rethrow_exception(first_comm);
  }

 private:
  void publish(const void* p) {
    ctx_->slots_[rank_] = p;
    sync();
  }
  void sync() { ctx_->barrier_.arrive_and_wait(); }

  ThreadGroupContext* ctx_;
  int rank_;
};

static_assert(Communicator<ThreadGroup>);

}  // namespace hdpissa
