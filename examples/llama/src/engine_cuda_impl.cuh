#pragma once
// The CUDA engine of hdpissa-train (llama/train/engine.hpp): CudaLlama<T> + the methods of
// train/methods.hpp on gpu::CudaDevice<T>, behind the TrainEngine interface. Built into
// hdpissa-train (and its GPU tests) only when CUDA is available; trainer.hpp reaches it through
// make_cuda_engine() (without CUDA, src/engine_cuda_unavailable.cpp defines it).
//
// One stream carries everything (model, method, optimizer, the virtual groups' all-gather), so no
// event or extra synchronisation is needed between them (under several processes NCCL's collectives
// run on the communicator's own stream, ordered against this one with events by NcclCommunicator).
//
// Processes. Alone: device 0 (of the visible ones), DevComm = VirtualRanks<DeviceComm> over
// CudaSingleProcess. Several (hdpissa_train.cpp fills EngineGroups::device_comm): one process per
// GPU, GPU = local rank mod visible GPUs, DeviceComm over the NcclCommunicator that device_comm.make
// bootstraps; more processes on a host than GPUs is an error (NCCL rejects two ranks on one device).
// Per optimizer step the host waits for the device: once per micro-batch (the model reads its loss
// back), inside the update (the batched non-finite check) and once at the end of step() (so the
// trainer's step time is the device's). Nothing is allocated per step. Generation (samples, the
// --eval-* tasks) runs on the GPU: the batched KV-cached greedy decoder (llama/cuda/decode_cuda.cuh)
// over the model's compute weights through group 0's hooks — muted adapters decode W itself, LoRA /
// PiSSA add their adapter product — with no host copy of the model. Its KV cache is allocated at
// the first generation and kept (rebuilt only for a longer context).
//
// Two translation units instantiate it in parallel (a shorter build): engine_cuda.cu (fp32,
// make_cuda_engine, cuda_device_count) and engine_cuda_bf16.cu (bf16).

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "llama/cuda/cuda_device.cuh"
#include "llama/cuda/greedy_generator.cuh"
#include "llama/cuda/model_cuda.cuh"
#include "llama/train/truncated_delta_cuda.cuh"
#include "llama/train/engine.hpp"

namespace hdpissa::llama {
namespace engine_detail {

using B32 = hdpissa::CudaBackend<float>;
/// The engine's device communicator: K = processes × local groups (train/device_comm.hpp).
using DevComm = hdpissa::VirtualRanks<DeviceComm>;

inline gpu::Attention attention_of(AttentionKind a) {
  switch (a) {
    case AttentionKind::Flash: return gpu::Attention::Flash;
    case AttentionKind::Gemm: return gpu::Attention::Gemm;
    case AttentionKind::Auto: break;
  }
  return gpu::Attention::Auto;
}

template <class T>
class CudaEngine final : public MethodEngine<gpu::CudaDevice<T>> {
  using Dev = gpu::CudaDevice<T>;
  using Base = MethodEngine<Dev>;
  using Base::method_;

 public:
  CudaEngine(const TrainOptions& o, const ModelWeights& host, const EngineGroups& g, const TrainState* resume)
      : Base(b32_),
        alloc0_(start_ledger()),
        host_(&host),
        device_(select_device(g)),
        b32_(stream_.get(), hdpissa::CudaBackendOptions{}),
        bt_(make_bt()),
        comm_(make_collectives(g, device_, stream_.get()), g.local_groups),
        model_(host, o.micro_batch, o.max_len, stream_.get(), loss_chunk_rows(host.config.vocab_size), attention_of(o.attention),
               o.activation_checkpointing, o.keep_swiglu) {
    if (comm_.groups() != g.groups || comm_.first_group() != g.first_group || comm_.size() != g.processes)
      throw LlamaError(cat("CUDA engine: expected K = ", g.groups, " groups over ", g.processes,
                           " process(es) (first group ", g.first_group, "), the device communicator has ",
                           comm_.groups(), " over ", comm_.size(), " (first group ", comm_.first_group(), ")"));
    // HDPISSA_LOSS_ROW_ALIGN: the loss GEMMs' row multiple (A/B of the padded loss shapes; 1: exact)
    if (const auto a = env_loss_row_align()) model_.set_loss_row_align(*a);
    // HDPISSA_FLASH_BAND: the flash kernels' block order (A/B of the heavy-first bands; 1: before)
    if (const auto b = env_flash_band()) model_.set_flash_tile_order(gpu::flash::TileOrder{*b});
    model_.set_cuda_graphs(o.cuda_graphs);
    // One stream carries every GEMM: the backends share the model's cuBLAS workspace.
    b32_.share_workspace(model_.cublas_workspace(), model_.cublas_workspace_bytes());
    if (bt_) bt_->share_workspace(model_.cublas_workspace(), model_.cublas_workspace_bytes());
    const MethodContext<Dev, DevComm> ctx{b32_, bt(), comm_, host, [this](LinearId id) { return model_.linear(id); },
                                          g.init_progress};
    {
      hdpissa::memory::PartScope part("method");  // what the method's own parts do not name
      method_ = make_method(o, ctx, resume);
    }
    // The initialisation's SVD / QR scratch is not needed for training: give it back.
    b32_.release_solver_scratch();
    if (bt_) bt_->release_solver_scratch();
    sample_memory();
    if (o.profile) {
      model_.enable_profiling(true);
      for (auto& e : step_ev_) HDPISSA_CUDA_CHECK(cudaEventCreate(&e));
    }
    cudaDeviceProp p{};
    HDPISSA_CUDA_CHECK(cudaGetDeviceProperties(&p, device_));
    name_ = cat("cuda:", device_, " (", p.name, ")");
    const bool frozen_w = o.method == Method::Lora || o.method == Method::Pissa;
    notes_ = cat(std::is_same_v<T, float> ? "; fp32 compute (exact, no TF32)"
                 : frozen_w ? "; frozen W in bf16 only (no fp32 copy), fp32 adapters / gradients / Adam"
                 : o.w_precision == hdpissa::WPrecision::Fp32Master
                     ? "; bf16 compute copies, fp32 masters / gradients / Adam"
                     : cat("; bf16 W (", hdpissa::w_precision_name(o.w_precision), ", no fp32 W), fp32 gradients / Adam"),
                 model_.flash_attention() ? "; flash attention" : "; attention through cuBLAS (scores materialised)",
                 model_.activation_checkpointing() ? "; activation checkpointing (per decoder layer)" : "",
                 model_.keep_swiglu() ? "; SwiGLU outputs kept for the backward" : "",
                 model_.cuda_graphs() ? "; layers replayed from CUDA graphs" : "",
                 method_->fp8_note(), "; device collectives: ", comm_.inner().describe());
  }

  [[nodiscard]] EngineInfo info() const override { return this->method_info(name_, notes_); }
  [[nodiscard]] std::pair<std::int64_t, std::int64_t> cuda_graph_stats() const override {
    return {model_.graph_replays(), model_.graph_failures()};
  }
  LossResult forward_backward(int lg, const Batch& b, float scale) override {
    return model_.forward_backward(b, method_->hooks(lg), scale);
  }
  hdpissa::StepReport step(double lr) override {
    if (step_ev_[0]) HDPISSA_CUDA_CHECK(cudaEventRecord(step_ev_[0], stream_.get()));
    const auto rep = method_->step(lr);
    if (step_ev_[0]) HDPISSA_CUDA_CHECK(cudaEventRecord(step_ev_[1], stream_.get()));
    b32_.synchronize();
    if (step_ev_[0]) {
      float ms = 0;
      HDPISSA_CUDA_CHECK(cudaEventElapsedTime(&ms, step_ev_[0], step_ev_[1]));
      step_ms_ += ms;
    }
    sample_memory();
    return rep;
  }
  LossResult eval_loss(const std::vector<Batch>& batches) override {
    const auto before = model_.profile();  // evaluation passes are not part of --profile
    const auto before_parts = model_.loss_parts();
    const auto before_host = model_.host_profile();
    LossResult total;
    for (const Batch& b : batches) {
      const LossResult r = model_.forward_loss(b, method_->hooks(0));
      total.loss_sum += r.loss_sum;
      total.n_tokens += r.n_tokens;
    }
    if (step_ev_[0]) {
      const auto after = model_.profile();
      excluded_.resize(after.size(), 0.0);
      for (std::size_t i = 0; i < after.size(); ++i) excluded_[i] += after[i].second - before[i].second;
      const auto after_parts = model_.loss_parts();
      excluded_parts_.resize(after_parts.size(), 0.0);
      for (std::size_t i = 0; i < after_parts.size(); ++i)
        excluded_parts_[i] += after_parts[i].second - before_parts[i].second;
      const auto after_host = model_.host_profile();
      excluded_host_.resize(after_host.size(), 0.0);
      for (std::size_t i = 0; i < after_host.size(); ++i) excluded_host_[i] += after_host[i].second - before_host[i].second;
    }
    return total;
  }
  std::vector<std::pair<std::string, double>> profile_loss_parts() override {
    if (!step_ev_[0]) return {};
    auto p = model_.loss_parts();
    for (std::size_t i = 0; i < p.size() && i < excluded_parts_.size(); ++i) p[i].second -= excluded_parts_[i];
    return p;
  }
  std::vector<std::pair<std::string, double>> profile_host() override {
    if (!step_ev_[0]) return {};
    auto p = model_.host_profile();
    for (std::size_t i = 0; i < p.size() && i < excluded_host_.size(); ++i) p[i].second -= excluded_host_[i];
    return p;
  }
  std::vector<std::pair<std::string, double>> profile() override {
    if (!step_ev_[0]) return {};
    auto p = model_.profile();
    for (std::size_t i = 0; i < p.size() && i < excluded_.size(); ++i) p[i].second -= excluded_[i];
    p.emplace_back("optimizer step (update, collectives)", step_ms_);
    return p;
  }
  void reset_profile() override {
    if (!step_ev_[0]) return;
    model_.enable_profiling(true);  // zeroes its sections
    step_ms_ = 0;
    excluded_.clear();
    excluded_parts_.clear();
    excluded_host_.clear();
  }
  ~CudaEngine() override {
    try {  // no W update may still run when the model's buffers (destroyed before the method) go
      method_->settle();
      b32_.synchronize();
    } catch (...) {
    }
    for (auto e : step_ev_)
      if (e) (void)cudaEventDestroy(e);
  }
  std::vector<std::int32_t> generate(const std::vector<std::int32_t>& prompt, const GenerateOptions& g) override {
    std::vector<std::int32_t> stops;
    if (g.stop_token) stops.push_back(*g.stop_token);
    return generate_batch({prompt}, g.max_new_tokens, stops, host_->config.max_seq_len).front();
  }
  std::vector<std::vector<std::int32_t>> generate_batch(const std::vector<std::vector<std::int32_t>>& prompts,
                                                        int max_new_tokens, const std::vector<std::int32_t>& stop_tokens,
                                                        int max_seq_len) override {
    hdpissa::memory::PartScope part("decoder");  // the generator, and its KV cache (grown with the context)
    method_->settle();  // the decoder reads W directly (HDPISSA_DWU_OVERLAP: the last step's updates first)
    if (!gen_) gen_ = std::make_unique<gpu::GreedyGenerator<T>>(model_, method_->hooks(0), GreedyGeneratorOptions{});
    eval::GenerationRequest req;
    req.prompts = prompts;
    req.max_new_tokens = max_new_tokens;
    req.stop_tokens = stop_tokens;
    (void)max_seq_len;  // the decoder caps by the model's max_position_embeddings, the same value
    auto out = (*gen_)(req);
    b32_.synchronize();
    sample_memory();
    return out;
  }
  std::optional<std::int64_t> peak_device_bytes() override { return peak_; }
  std::vector<std::pair<std::string, std::int64_t>> peak_memory_parts() override {
    std::vector<std::pair<std::string, std::int64_t>> out;
    std::int64_t tracked = 0;
    for (const auto& p : peak_parts_)
      if (p.bytes > 0) out.emplace_back(p.name, p.bytes), tracked += p.bytes;
    out.emplace_back("untracked", peak_ - tracked);
    return out;
  }
  std::vector<std::pair<std::string, std::int64_t>> memory_allocations() override {
    std::vector<std::pair<std::string, std::int64_t>> out;
    for (const auto& p : hdpissa::memory::Ledger::instance().parts()) {
      std::int64_t before = 0;
      for (const auto& q : alloc0_)
        if (q.name == p.name) before = q.allocations;
      if (p.allocations > before) out.emplace_back(p.name, p.allocations - before);
    }
    return out;
  }
  std::vector<std::pair<std::string, std::int64_t>> tracked_peak_parts() override {
    std::vector<std::pair<std::string, std::int64_t>> out;
    for (const auto& p : hdpissa::memory::Ledger::instance().at_peak())
      if (p.bytes > 0) out.emplace_back(p.name, p.bytes);
    return out;
  }
  /// The truncated LoRA export on the GPU (truncated_delta_cuda.cuh): ΔW from the fp32 master W
  /// (DWU, full) and the host W_init, in double. A CudaBackend<double> per call on the engine's
  /// stream, so its SVD scratch is released with it (the export runs once, after training).
  [[nodiscard]] bool truncates_delta_where_w_lives() const override { return true; }
  TruncatedDelta truncated_delta_where_w_lives(std::size_t i, const Matrix& initial, int rank, double energy) override {
    method_->settle();
    hdpissa::CudaBackend<double> b64(stream_.get(), hdpissa::CudaBackendOptions{});
    TruncatedDelta t = truncated_delta_cuda(b64, method_->master_weight(i), initial, rank, energy);
    sample_memory();
    return t;
  }

 private:
  void state_changed() override { gen_.reset(); }  // the hooks may have been rebuilt
  /// The ledger's peak restarts with this engine (a process may build several); the allocation
  /// counts so far are kept to report this engine's own.
  static std::vector<hdpissa::memory::Part> start_ledger() {
    hdpissa::memory::Ledger::instance().reset_peak();
    return hdpissa::memory::Ledger::instance().parts();
  }
  /// Device memory in use now (cudaMemGetInfo: total − free, the CUDA context included).
  void sample_memory() {
    std::size_t free = 0, total = 0;
    HDPISSA_CUDA_CHECK(cudaMemGetInfo(&free, &total));
    if (std::int64_t(total - free) > peak_) {
      peak_ = std::int64_t(total - free);
      peak_parts_ = hdpissa::memory::Ledger::instance().parts();  // the ledger at the same moment
    }
  }
  /// The loss chunk: CudaLlama's default for the vocabulary, or HDPISSA_LOSS_CHUNK_ROWS (a row count
  /// in [1, 65536]; for measuring the chunk's speed against its memory, scripts/throughput.sh
  /// `+chunk<rows>`).
  static int loss_chunk_rows(int vocab) {
    if (const auto rows = env_loss_chunk_rows()) return *rows;
    return gpu::CudaLlama<T>::default_loss_chunk_rows(vocab);
  }
  /// The GPU of this process: local rank mod visible GPUs (made current before anything is
  /// allocated). Refuses more processes on this host than GPUs.
  static int select_device(const EngineGroups& g) {
    const int count = cuda_device_count();
    if (count == 0) throw LlamaError("--device cuda: no CUDA device found (cudaGetDeviceCount reports none)");
    const auto& d = g.device_comm;
    if (g.processes > 1 && d.local_processes > count)
      throw LlamaError(cat("--device cuda: expected at most one process per GPU, found ", d.local_processes,
                           " processes on host ", d.host.empty() ? std::string("?") : d.host, " but ", count,
                           " GPU(s) visible (NCCL rejects two ranks on one device); launch at most ", count,
                           " process(es) per host and raise --groups-per-process for more groups"));
    const int dev = g.processes > 1 || d.make ? d.local_rank % count : 0;
    HDPISSA_CUDA_CHECK(cudaSetDevice(dev));
    return dev;
  }
  /// NCCL from the setup's factory when it has one, else CudaSingleProcess (one process).
  static DeviceComm make_collectives(const EngineGroups& g, int device, cudaStream_t stream) {
    if (g.device_comm.make) {
      auto c = g.device_comm.make(device, static_cast<void*>(stream));
      HDPISSA_REQUIRE(c != nullptr, "CUDA engine: the device communicator factory returned nothing");
      return DeviceComm(std::move(c));
    }
    if (g.processes > 1)
      throw LlamaError(cat("--device cuda: found ", g.processes, " processes but no device communicator (NCCL)",
                           g.device_comm.unavailable.empty() ? std::string() : cat(": ", g.device_comm.unavailable)));
    return DeviceComm(std::make_unique<DeviceCollectivesOf<hdpissa::CudaSingleProcess>>(
        hdpissa::CudaSingleProcess(stream), "CUDA copy"));
  }
  std::unique_ptr<hdpissa::CudaBackend<__nv_bfloat16>> make_bt() {
    if constexpr (std::is_same_v<T, float>) return nullptr;
    else return std::make_unique<hdpissa::CudaBackend<__nv_bfloat16>>(stream_.get(), hdpissa::CudaBackendOptions{});
  }
  hdpissa::CudaBackend<T>& bt() {
    if constexpr (std::is_same_v<T, float>) return b32_;
    else return *bt_;
  }

  std::vector<hdpissa::memory::Part> alloc0_;  // first: the ledger's state when this engine began
  const ModelWeights* host_;
  int device_ = 0;  // before stream_: the device is made current before anything is created on it
  hdpissa::CudaStream stream_;
  B32 b32_;
  std::unique_ptr<hdpissa::CudaBackend<__nv_bfloat16>> bt_;
  DevComm comm_;
  gpu::CudaLlama<T> model_;
  std::unique_ptr<gpu::GreedyGenerator<T>> gen_;  // after model_: destroyed first
  std::int64_t peak_ = 0;
  std::vector<hdpissa::memory::Part> peak_parts_;  // the ledger when peak_ was sampled
  std::string name_, notes_;
  cudaEvent_t step_ev_[2] = {nullptr, nullptr};  // --profile: around the optimizer step
  double step_ms_ = 0;
  std::vector<double> excluded_;  // --profile: evaluation passes' section times, subtracted
  std::vector<double> excluded_parts_;  // the same for the loss section's parts
  std::vector<double> excluded_host_;   // the same for the host times between the marks
};

/// The bf16 engine (engine_cuda_bf16.cu).
std::unique_ptr<TrainEngine> make_cuda_engine_bf16(const TrainOptions& o, const ModelWeights& host,
                                                   const EngineGroups& g, const TrainState* resume);

}  // namespace engine_detail
}  // namespace hdpissa::llama
