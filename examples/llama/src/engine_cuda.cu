// The CUDA engine of hdpissa-train (llama/train/engine.hpp): CudaLlama<T> + the GPU methods of
// methods_cuda.cuh, behind the TrainEngine interface. Built into hdpissa-train (and its GPU tests)
// only when CUDA is available; trainer.hpp reaches it through make_cuda_engine().
//
// One stream carries everything (model, methods, optimizer, the virtual groups' all-gather), so no
// event or extra synchronisation is needed between them. Per optimizer step the host waits for the
// device: once per micro-batch (the model reads its loss back), inside the update (the batched
// non-finite check) and once at the end of step() (so the trainer's step time is the device's).
// Nothing is allocated per step. Generation (samples, GSM8K) runs on the host on the downloaded
// merged weights, cached until the next step.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "llama/cuda/methods_cuda.cuh"
#include "llama/cuda/model_cuda.cuh"
#include "llama/train/engine.hpp"

namespace hdpissa::llama {
namespace {

using gpu::B32;
using gpu::DevComm;

template <class T>
class CudaEngine final : public TrainEngine {
 public:
  CudaEngine(const TrainOptions& o, const ModelWeights& host, const EngineGroups& g, const TensorLoader& resume)
      : host_(&host),
        b32_(stream_.get(), hdpissa::CudaBackendOptions{}),
        bt_(make_bt()),
        comm_(hdpissa::CudaSingleProcess(stream_.get()), g.local_groups),
        model_(host, o.micro_batch, o.max_len, stream_.get()) {
    if (comm_.groups() != g.groups)
      throw LlamaError(cat("CUDA engine: expected K = ", g.groups, " groups in one process, found ", comm_.groups()));
    method_ = gpu::make_cuda_method<T>(o, gpu::GpuContext<T>{b32_, bt(), comm_, model_}, host, resume);
    b32_.synchronize();
    sample_memory();
    int dev = 0;
    HDPISSA_CUDA_CHECK(cudaGetDevice(&dev));
    cudaDeviceProp p{};
    HDPISSA_CUDA_CHECK(cudaGetDeviceProperties(&p, dev));
    name_ = cat("cuda:", dev, " (", p.name, ")");
  }

  [[nodiscard]] std::string device() const override { return name_; }
  void zero_grad() override { method_->zero_grad(); }
  LossResult forward_backward(int lg, const Batch& b, float scale) override {
    method_->set_group(lg);
    const LossResult r = model_.forward_backward(b, *method_, scale);
    method_->set_group(0);
    return r;
  }
  hdpissa::StepReport step(double lr) override {
    const auto rep = method_->step(lr);
    b32_.synchronize();
    sample_memory();
    merged_valid_ = false;
    return rep;
  }
  LossResult eval_loss(const std::vector<Batch>& batches) override {
    method_->set_group(0);
    LossResult total;
    for (const Batch& b : batches) {
      const LossResult r = model_.forward_loss(b, *method_);
      total.loss_sum += r.loss_sum;
      total.n_tokens += r.n_tokens;
    }
    return total;
  }
  std::vector<std::int32_t> generate(const std::vector<std::int32_t>& prompt, const GenerateOptions& g) override {
    if (!merged_valid_) {
      merged_ = *host_;
      merge_into(merged_);
      merged_valid_ = true;
    }
    return generate_greedy(merged_, prompt, g);
  }
  void merge_into(ModelWeights& w) override {
    const auto& ids = method_->targets();
    for (std::size_t i = 0; i < ids.size(); ++i) method_->merged_weight(i, w.linear(ids[i]));
  }
  void collect_state(StateList& s) override {
    dev_.tensors.clear();  // (not `dev_ = {}`: nvcc 13.0 crashes on it)
    dev_.counters.clear();
    method_->collect_state(dev_);
    staging_.resize(dev_.tensors.size());
    for (std::size_t k = 0; k < dev_.tensors.size(); ++k) {
      const auto& t = dev_.tensors[k];
      HDPISSA_REQUIRE(t.view.contiguous(), "state tensor '", t.name, "' is not contiguous");
      staging_[k].resize(std::size_t(t.view.rows) * std::size_t(t.view.cols));
      b32_.download(gpu::CV32(t.view), staging_[k].data());
      s.tensors.push_back({t.name, staging_[k].data(), t.view.rows, t.view.cols, t.local});
    }
    for (const auto& c : dev_.counters) s.counters.push_back(c);
  }
  void restore_state() override {
    HDPISSA_REQUIRE(staging_.size() == dev_.tensors.size(), "restore_state: collect_state was not called first");
    for (std::size_t k = 0; k < dev_.tensors.size(); ++k) b32_.upload(staging_[k].data(), dev_.tensors[k].view);
    method_->refresh();
    b32_.synchronize();
    merged_valid_ = false;
  }
  void verify_replicas() override { method_->verify_replicas(); }
  [[nodiscard]] std::int64_t trainable_parameters() const override { return method_->trainable_parameters(); }
  [[nodiscard]] std::string describe() const override {
    return cat(method_->describe(), std::is_same_v<T, float> ? "; fp32 compute (exact, no TF32)"
                                                             : "; bf16 compute copies, fp32 masters / gradients / Adam");
  }
  [[nodiscard]] std::size_t num_targets() const override { return method_->targets().size(); }
  std::optional<std::int64_t> peak_device_bytes() override { return peak_; }

 private:
  /// Device memory in use now (cudaMemGetInfo: total − free, the CUDA context included).
  void sample_memory() {
    std::size_t free = 0, total = 0;
    HDPISSA_CUDA_CHECK(cudaMemGetInfo(&free, &total));
    peak_ = std::max<std::int64_t>(peak_, std::int64_t(total - free));
  }
  std::unique_ptr<hdpissa::CudaBackend<__nv_bfloat16>> make_bt() {
    if constexpr (std::is_same_v<T, float>) return nullptr;
    else return std::make_unique<hdpissa::CudaBackend<__nv_bfloat16>>(stream_.get(), hdpissa::CudaBackendOptions{});
  }
  hdpissa::CudaBackend<T>& bt() {
    if constexpr (std::is_same_v<T, float>) return b32_;
    else return *bt_;
  }

  const ModelWeights* host_;
  hdpissa::CudaStream stream_;
  B32 b32_;
  std::unique_ptr<hdpissa::CudaBackend<__nv_bfloat16>> bt_;
  DevComm comm_;
  gpu::CudaLlama<T> model_;
  std::unique_ptr<gpu::CudaTrainMethod<T>> method_;
  gpu::DeviceStateList dev_;
  std::vector<std::vector<float>> staging_;
  ModelWeights merged_;
  bool merged_valid_ = false;
  std::int64_t peak_ = 0;
  std::string name_;
};

}  // namespace

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error of a missing driver / device
    return 0;
  }
  return n;
}

std::unique_ptr<TrainEngine> make_cuda_engine(const TrainOptions& o, const ModelWeights& host, const EngineGroups& g,
                                              const TensorLoader& resume) {
  if (cuda_device_count() == 0)
    throw LlamaError("--device cuda: no CUDA device found (cudaGetDeviceCount reports none)");
  if (o.dtype == "bf16") return std::make_unique<CudaEngine<__nv_bfloat16>>(o, host, g, resume);
  return std::make_unique<CudaEngine<float>>(o, host, g, resume);
}

}  // namespace hdpissa::llama
