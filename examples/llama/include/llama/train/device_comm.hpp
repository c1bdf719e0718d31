#pragma once
/// \file device_comm.hpp
/// The CUDA engine's device communicator, type-erased so that the methods on the GPU (train/methods.hpp)
/// have ONE communicator type, gpu::DevComm = VirtualRanks<DeviceComm>, whichever way the processes
/// talk (pure C++: no CUDA include, so trainer.hpp and hdpissa_train.cpp can use it):
///  - one process (no mpirun): DeviceCollectivesOf<CudaSingleProcess>, built inside the engine;
///  - under mpirun: DeviceCollectivesOf<NcclCommunicator>, one process per GPU, bootstrapped with
///    make_nccl_communicator() by hdpissa-train's main (the only place that has MPI) and handed to
///    the engine through DeviceCommSetup::make.
/// VirtualRanks on top hosts --groups-per-process groups per process (K = processes × V); the
/// library's templates see an ordinary Communicator and are used unchanged.

#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "hdpissa/core/concepts.hpp"
#include "hdpissa/core/error.hpp"
#include "hdpissa/core/view.hpp"

namespace hdpissa::llama {

/// Collectives among processes over device buffers, one group per process (the Communicator
/// concept's operations for float and double, as virtual functions).
class DeviceCollectives {
 public:
  virtual ~DeviceCollectives() = default;
  [[nodiscard]] virtual int rank() const = 0;
  [[nodiscard]] virtual int size() const = 0;
  virtual void all_gather(const float* send, float* recv, std::size_t n) = 0;
  virtual void all_gather(const double* send, double* recv, std::size_t n) = 0;
  virtual void all_reduce_sum(float* buf, std::size_t n) = 0;
  virtual void all_reduce_sum(double* buf, std::size_t n) = 0;
  virtual void broadcast(float* buf, std::size_t n, int root) = 0;
  virtual void broadcast(double* buf, std::size_t n, int root) = 0;
  virtual void barrier() = 0;
  /// "CUDA copy (1 process)", "NCCL (2 processes)", …
  [[nodiscard]] virtual std::string describe() const = 0;
};

/// DeviceCollectives over a concrete device-memory communicator `C` with one group per worker
/// (CudaSingleProcess, NcclCommunicator).
template <class C>
class DeviceCollectivesOf final : public DeviceCollectives {
 public:
  static_assert(std::is_same_v<typename C::memory_space, hdpissa::device_memory>,
                "DeviceCollectivesOf: expected a device-memory communicator");
  DeviceCollectivesOf(C c, std::string name) : c_(std::move(c)), name_(std::move(name)) {
    HDPISSA_REQUIRE(c_.local_groups() == 1 && c_.groups() == c_.size(),
                    "DeviceCollectivesOf: expected one group per worker, found ", c_.local_groups(), " local of ",
                    c_.groups());
  }
  [[nodiscard]] int rank() const override { return c_.rank(); }
  [[nodiscard]] int size() const override { return c_.size(); }
  void all_gather(const float* s, float* r, std::size_t n) override { c_.all_gather(s, r, n); }
  void all_gather(const double* s, double* r, std::size_t n) override { c_.all_gather(s, r, n); }
  void all_reduce_sum(float* b, std::size_t n) override { c_.all_reduce_sum(b, n); }
  void all_reduce_sum(double* b, std::size_t n) override { c_.all_reduce_sum(b, n); }
  void broadcast(float* b, std::size_t n, int root) override { c_.broadcast(b, n, root); }
  void broadcast(double* b, std::size_t n, int root) override { c_.broadcast(b, n, root); }
  void barrier() override { c_.barrier(); }
  [[nodiscard]] std::string describe() const override {
    return cat(name_, " (", c_.size(), c_.size() == 1 ? " process)" : " processes)");
  }
  C& get() { return c_; }

 private:
  C c_;
  std::string name_;
};

/// A Communicator (device memory, one group per worker) over any DeviceCollectives.
class DeviceComm {
 public:
  using memory_space = hdpissa::device_memory;
  explicit DeviceComm(std::unique_ptr<DeviceCollectives> c) : c_(std::move(c)) {
    HDPISSA_REQUIRE(c_ != nullptr, "DeviceComm: expected collectives, found none");
  }
  [[nodiscard]] int rank() const { return c_->rank(); }
  [[nodiscard]] int size() const { return c_->size(); }
  [[nodiscard]] int groups() const { return c_->size(); }
  [[nodiscard]] int local_groups() const { return 1; }
  [[nodiscard]] int first_group() const { return c_->rank(); }
  [[nodiscard]] std::string describe() const { return c_->describe(); }

  template <class T>
  void all_gather(const T* send, T* recv, std::size_t n) { c_->all_gather(send, recv, n); }
  template <class T>
  void all_reduce_sum(T* buf, std::size_t n) { c_->all_reduce_sum(buf, n); }
  template <class T>
  void broadcast(T* buf, std::size_t n, int root) { c_->broadcast(buf, n, root); }
  void barrier() { c_->barrier(); }

 private:
  std::unique_ptr<DeviceCollectives> c_;
};

static_assert(hdpissa::Communicator<DeviceComm>);

/// How the CUDA engine reaches the other processes of the job (filled by hdpissa-train's main
/// under MPI; default: one process, no peers).
struct DeviceCommSetup {
  int local_rank = 0;       ///< this process's rank among the job's processes on its host
  int local_processes = 1;  ///< the job's processes on this host
  std::string host;         ///< this host's name (error messages)
  /// Creates the collectives over all processes of the job (collective: every process calls it)
  /// on CUDA device `device`, ordered against `stream` (a cudaStream_t). Empty when this build
  /// cannot (no NCCL); `unavailable` then says why.
  std::function<std::unique_ptr<DeviceCollectives>(int device, void* stream)> make;
  std::string unavailable;
};

}  // namespace hdpissa::llama
