#pragma once
/// \file engine.hpp
/// TrainEngine: where hdpissa-train's model and method live (host or GPU), behind one small
/// type-erased interface, so that trainer.hpp stays pure C++ (no CUDA include) and the loop —
/// data, schedule, progress, metrics, eval, checkpoints, resume — is written once.
///
///  - CpuEngine<Comm>: the CPU model (model.hpp) + a TrainMethod (methods.hpp), exactly the calls the
///    trainer made before the interface existed (bit-identical CPU behaviour).
///  - the CUDA engine (llama/cuda/engine_cuda.cu, built into hdpissa-train only when CUDA is found,
///    compile definition HDPISSA_TRAIN_HAVE_CUDA): CudaLlama<T> + the GPU methods of
///    methods_cuda.cuh, created through make_cuda_engine().
///
/// State. collect_state() lists every tensor of the run (the target weights `weight.<name>` and the
/// method's factors / adapters / Adam moments) as contiguous HOST float arrays: the CPU engine
/// points at its live matrices; the CUDA engine downloads into host staging buffers it owns. After
/// writing into those arrays (resume), restore_state() pushes them back (a no-op on the CPU).

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "llama/batch.hpp"
#include "llama/model.hpp"
#include "llama/train/device_comm.hpp"
#include "llama/train/methods.hpp"
#include "llama/train/options.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama {

/// The compute side of a training run (model + method), on one device.
class TrainEngine {
 public:
  virtual ~TrainEngine() = default;
  /// "cpu", or the GPU's name.
  [[nodiscard]] virtual std::string device() const = 0;
  /// Zeroes every local group's gradient.
  virtual void zero_grad() = 0;
  /// One micro-batch of local group `lg`: forward + backward (loss scaled by `scale`), gradients
  /// accumulated. Returns the micro-batch's loss.
  virtual LossResult forward_backward(int lg, const Batch& b, float scale) = 0;
  /// One optimizer step of every group at learning rate `lr`.
  virtual hdpissa::StepReport step(double lr) = 0;
  /// Summed loss of `batches` with group 0's view of the model (forward only).
  virtual LossResult eval_loss(const std::vector<Batch>& batches) = 0;
  /// Greedy continuation of `prompt` with group 0's view (the GPU engine runs it on the host, on
  /// the downloaded merged weights).
  virtual std::vector<std::int32_t> generate(const std::vector<std::int32_t>& prompt, const GenerateOptions& g) = 0;
  /// Sets every target linear of `w` (a copy of the host weights) to the live merged weight
  /// (W for DWU / full; W_res + s·B A for LoRA / PiSSA).
  virtual void merge_into(ModelWeights& w) = 0;
  /// Every tensor and counter of the run's state, as host arrays (see the file comment).
  virtual void collect_state(StateList& s) = 0;
  /// Makes the values written into collect_state()'s arrays live.
  virtual void restore_state() = 0;
  /// Checks that W is identical on every worker (DWU methods, several workers).
  virtual void verify_replicas() = 0;
  [[nodiscard]] virtual std::int64_t trainable_parameters() const = 0;
  [[nodiscard]] virtual std::string describe() const = 0;
  [[nodiscard]] virtual std::size_t num_targets() const = 0;
  /// Peak device memory in use since the engine was built (GPU only).
  [[nodiscard]] virtual std::optional<std::int64_t> peak_device_bytes() { return std::nullopt; }
};

/// The CPU path: ModelWeights + TrainMethod (LinearHooks) + the CPU forward/backward.
class CpuEngine final : public TrainEngine {
 public:
  /// `w` is the trainer's host model (trained in place); `method` was built on it.
  CpuEngine(ModelWeights& w, std::unique_ptr<TrainMethod> method) : w_(&w), method_(std::move(method)) {}

  TrainMethod& method() { return *method_; }

  [[nodiscard]] std::string device() const override { return "cpu"; }
  void zero_grad() override { method_->zero_grad(); }
  LossResult forward_backward(int lg, const Batch& b, float scale) override {
    method_->set_group(lg);
    const LossResult r = forward(*w_, b, *method_, acts_);
    backward(*w_, acts_, *method_, nullptr, scale);
    method_->set_group(0);
    return r;
  }
  hdpissa::StepReport step(double lr) override { return method_->step(lr); }
  LossResult eval_loss(const std::vector<Batch>& batches) override {
    method_->set_group(0);
    return evaluate_loss(*w_, batches, *method_);
  }
  std::vector<std::int32_t> generate(const std::vector<std::int32_t>& prompt, const GenerateOptions& g) override {
    method_->set_group(0);
    return generate_greedy(*w_, prompt, g, *method_);
  }
  void merge_into(ModelWeights& w) override { method_->merge_into(w); }
  void collect_state(StateList& s) override {
    for (const LinearId& id : method_->targets()) {
      Matrix& W = w_->linear(id);
      s.tensors.push_back({"weight." + id.hf_name(), W.data(), W.rows(), W.cols(), false});
    }
    method_->collect_state(s);
  }
  void restore_state() override {}
  void verify_replicas() override { method_->verify_replicas(); }
  [[nodiscard]] std::int64_t trainable_parameters() const override { return method_->trainable_parameters(); }
  [[nodiscard]] std::string describe() const override { return method_->describe(); }
  [[nodiscard]] std::size_t num_targets() const override { return method_->targets().size(); }

 private:
  ModelWeights* w_;
  std::unique_ptr<TrainMethod> method_;
  Activations acts_;
};

/// Where the GPU engine's groups sit among all K (mirrors the trainer's host communicator).
struct EngineGroups {
  int groups = 1;        ///< K
  int local_groups = 1;  ///< groups hosted by this process
  int first_group = 0;   ///< global index of local group 0
  int processes = 1;
  int rank = 0;
  /// Peers of a multi-process job (local rank, processes on this host, the NCCL factory).
  DeviceCommSetup device_comm;
};

#ifdef HDPISSA_TRAIN_HAVE_CUDA
/// Builds the CUDA engine (engine_cuda.cu) on GPU (local rank mod visible GPUs): uploads `host`
/// (fp32), builds the method of `o.method` in `o.dtype` (fp32: exact fp32 throughout; bf16: bf16 compute copies of W and the factors,
/// fp32 masters, fp32 gradient accumulation). `resume` (non-empty when resuming) supplies the saved
/// factors so that no SVD runs. Device collectives: `g.device_comm.make` (NCCL) when set, else
/// CudaSingleProcess (one process only). Throws LlamaError when no CUDA device is usable, when
/// the host runs more processes than it has GPUs, or when several processes lack a factory.
std::unique_ptr<TrainEngine> make_cuda_engine(const TrainOptions& o, const ModelWeights& host, const EngineGroups& g,
                                              const TensorLoader& resume);
/// Number of usable CUDA devices (0 when none, or when the driver reports an error).
int cuda_device_count();
#endif

}  // namespace hdpissa::llama
