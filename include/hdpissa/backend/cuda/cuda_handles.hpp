#pragma once
/// \file cuda_handles.hpp
/// RAII owners for the CUDA component: CudaStream, CudaEvent, CublasHandle, CusolverHandle, DeviceBuffer<T>
/// (cudaMalloc'd, grow-only reuse via reserve()) and PinnedBuffer<T> (cudaMallocHost). All are
/// move-only; destructors never throw (a failed free during unwinding is ignored on purpose).

#include <cstddef>
#include <utility>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/core/memory_ledger.hpp"
#include "hdpissa/core/stream_priority.hpp"

namespace hdpissa {

/// Owns a non-blocking stream, or borrows one (then never destroys it).
class CudaStream {
 public:
  CudaStream() : CudaStream(StreamPriority::Default) {}
  /// A new non-blocking stream at priority `p` (StreamPriority, core/stream_priority.hpp).
  explicit CudaStream(StreamPriority p) {
    if (p == StreamPriority::High) {
      int least = 0, greatest = 0;
      HDPISSA_CUDA_CHECK(cudaDeviceGetStreamPriorityRange(&least, &greatest));
      HDPISSA_CUDA_CHECK(cudaStreamCreateWithPriority(&s_, cudaStreamNonBlocking, greatest));
    } else {
      HDPISSA_CUDA_CHECK(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking));
    }
  }
  /// Borrows `s` (e.g. a framework's stream); the caller keeps ownership.
  static CudaStream borrow(cudaStream_t s) { return CudaStream(s, false); }
  CudaStream(CudaStream&& o) noexcept : s_(std::exchange(o.s_, nullptr)), own_(std::exchange(o.own_, false)) {}
  CudaStream& operator=(CudaStream&& o) noexcept {
    if (this != &o) { reset(); s_ = std::exchange(o.s_, nullptr); own_ = std::exchange(o.own_, false); }
    return *this;
  }
  CudaStream(const CudaStream&) = delete;
  CudaStream& operator=(const CudaStream&) = delete;
  ~CudaStream() { reset(); }
  cudaStream_t get() const { return s_; }

 private:
  CudaStream(cudaStream_t s, bool own) : s_(s), own_(own) {}
  void reset() noexcept {
    if (own_ && s_) (void)cudaStreamDestroy(s_);
    s_ = nullptr;
    own_ = false;
  }
  cudaStream_t s_ = nullptr;
  bool own_ = true;
};

/// Owns an event without timing (cudaEventDisableTiming): stream ordering only.
class CudaEvent {
 public:
  CudaEvent() { HDPISSA_CUDA_CHECK(cudaEventCreateWithFlags(&e_, cudaEventDisableTiming)); }
  CudaEvent(CudaEvent&& o) noexcept : e_(std::exchange(o.e_, nullptr)) {}
  CudaEvent& operator=(CudaEvent&& o) noexcept {
    if (this != &o) { if (e_) (void)cudaEventDestroy(e_); e_ = std::exchange(o.e_, nullptr); }
    return *this;
  }
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  ~CudaEvent() { if (e_) (void)cudaEventDestroy(e_); }
  cudaEvent_t get() const { return e_; }

 private:
  cudaEvent_t e_ = nullptr;
};

/// Owns a cuBLAS handle bound to a stream.
class CublasHandle {
 public:
  explicit CublasHandle(cudaStream_t s) {
    HDPISSA_CUBLAS_CHECK(cublasCreate(&h_));
    HDPISSA_CUBLAS_CHECK(cublasSetStream(h_, s));
  }
  CublasHandle(CublasHandle&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  CublasHandle& operator=(CublasHandle&& o) noexcept {
    if (this != &o) { if (h_) (void)cublasDestroy(h_); h_ = std::exchange(o.h_, nullptr); }
    return *this;
  }
  CublasHandle(const CublasHandle&) = delete;
  CublasHandle& operator=(const CublasHandle&) = delete;
  ~CublasHandle() { if (h_) (void)cublasDestroy(h_); }
  cublasHandle_t get() const { return h_; }

 private:
  cublasHandle_t h_ = nullptr;
};

/// Owns a cuSOLVER dense handle bound to a stream.
class CusolverHandle {
 public:
  explicit CusolverHandle(cudaStream_t s) {
    HDPISSA_CUSOLVER_CHECK(cusolverDnCreate(&h_));
    HDPISSA_CUSOLVER_CHECK(cusolverDnSetStream(h_, s));
  }
  CusolverHandle(CusolverHandle&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  CusolverHandle& operator=(CusolverHandle&& o) noexcept {
    if (this != &o) { if (h_) (void)cusolverDnDestroy(h_); h_ = std::exchange(o.h_, nullptr); }
    return *this;
  }
  CusolverHandle(const CusolverHandle&) = delete;
  CusolverHandle& operator=(const CusolverHandle&) = delete;
  ~CusolverHandle() { if (h_) (void)cusolverDnDestroy(h_); }
  cusolverDnHandle_t get() const { return h_; }

 private:
  cusolverDnHandle_t h_ = nullptr;
};

/// Owns gesvdj parameters (tolerance, sweeps; singular values sorted descending by default).
class GesvdjParams {
 public:
  GesvdjParams() { HDPISSA_CUSOLVER_CHECK(cusolverDnCreateGesvdjInfo(&p_)); }
  GesvdjParams(GesvdjParams&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  GesvdjParams& operator=(GesvdjParams&& o) noexcept {
    if (this != &o) { if (p_) (void)cusolverDnDestroyGesvdjInfo(p_); p_ = std::exchange(o.p_, nullptr); }
    return *this;
  }
  GesvdjParams(const GesvdjParams&) = delete;
  GesvdjParams& operator=(const GesvdjParams&) = delete;
  ~GesvdjParams() { if (p_) (void)cusolverDnDestroyGesvdjInfo(p_); }
  gesvdjInfo_t get() const { return p_; }

 private:
  gesvdjInfo_t p_ = nullptr;
};

/// Device memory of `size()` elements of T (uninitialised). reserve(n) grows it (setup / first use
/// only: contents are discarded), never shrinks. Its bytes are charged to the memory ledger
/// (core/memory_ledger.hpp) under the allocating thread's current part, and given back on free.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n) { reserve(n); }
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : p_(std::exchange(o.p_, nullptr)), n_(std::exchange(o.n_, 0)), part_(std::exchange(o.part_, nullptr)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = std::exchange(o.p_, nullptr);
      n_ = std::exchange(o.n_, 0);
      part_ = std::exchange(o.part_, nullptr);
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { release(); }

  /// Ensures capacity for n elements; returns the pointer.
  T* reserve(std::size_t n) {
    if (n > n_) {
      release();
      void* p = nullptr;
      HDPISSA_CUDA_CHECK(cudaMalloc(&p, n * sizeof(T)));
      p_ = static_cast<T*>(p);
      n_ = n;
      part_ = memory::current_part();
      memory::Ledger::instance().charge(part_, static_cast<std::int64_t>(n * sizeof(T)));
    }
    return p_;
  }
  /// Frees the memory now (size() becomes 0).
  void reset() noexcept { release(); }
  T* get() const { return p_; }
  std::size_t size() const { return n_; }
  /// The ledger part its bytes are charged to (null while empty).
  const char* part() const { return part_; }

 private:
  void release() noexcept {
    if (p_) {
      (void)cudaFree(p_);
      memory::Ledger::instance().charge(part_, -static_cast<std::int64_t>(n_ * sizeof(T)));
    }
    p_ = nullptr;
    n_ = 0;
    part_ = nullptr;
  }
  T* p_ = nullptr;
  std::size_t n_ = 0;
  const char* part_ = nullptr;
};

/// Page-locked host memory of n elements (for the small device → host reads of reductions).
template <class T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(std::size_t n) {
    void* p = nullptr;
    HDPISSA_CUDA_CHECK(cudaMallocHost(&p, n * sizeof(T)));
    p_ = static_cast<T*>(p);
  }
  PinnedBuffer(PinnedBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    if (this != &o) { if (p_) (void)cudaFreeHost(p_); p_ = std::exchange(o.p_, nullptr); }
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() { if (p_) (void)cudaFreeHost(p_); }
  T* get() const { return p_; }

 private:
  T* p_ = nullptr;
};

}  // namespace hdpissa
