#pragma once
/// \file engine.hpp
/// TrainEngine: where hdpissa-train's model and method live (host or GPU), behind one small
/// interface, so that trainer.hpp stays pure C++ (no CUDA include, no #ifdef) and the loop — data,
/// schedule, progress, metrics, eval, checkpoints, resume — is written once.
///
///  - MethodEngine<Dev>: what every engine shares — the method (methods.hpp, one implementation per
///    method for every device), its state as a value (state() / load_state()), replicas, merging.
///  - CpuEngine<Comm>: the CPU model (model.hpp) + the methods on CpuDevice.
///  - the CUDA engine (src/engine_cuda_impl.cuh): CudaLlama<T> + the methods on
///    gpu::CudaDevice<T>, reached through make_cuda_engine(), which a build without CUDA links from
///    src/engine_cuda_unavailable.cpp (a clear error) instead.
///
/// Groups: forward_backward(lg, …) runs local group lg's hooks (methods.hpp: hooks(lg)).
/// State: state() returns the run's whole trainable state as a TrainState value; load_state()
/// takes one back (names and shapes checked) and refreshes the compute copies.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "llama/batch.hpp"
#include "llama/model.hpp"
#include "llama/stored_linears.hpp"
#include "llama/train/cuda_entry.hpp"
#include "llama/train/device_comm.hpp"
#include "llama/train/methods.hpp"
#include "llama/train/options.hpp"
#include "llama/train/state.hpp"
#include "llama/train/truncated_delta.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama {

/// What an engine runs, for the config echo.
struct EngineInfo {
  std::string device;       ///< "cpu", or the GPU's name
  std::string description;  ///< the method and the numerics
  std::int64_t trainable_parameters = 0;
  std::vector<LinearId> targets;
  int w_bytes_per_param = 4;  ///< device bytes per target-weight parameter held for W (TrainMethod; + 2 for --compute fp8's copies)
};

/// The compute side of a training run (model + method), on one device.
class TrainEngine {
 public:
  virtual ~TrainEngine() = default;
  [[nodiscard]] virtual EngineInfo info() const = 0;
  /// Zeroes every local group's gradient.
  virtual void zero_grad() = 0;
  /// One micro-batch of local group `lg`: forward + backward (loss scaled by `scale`), gradients
  /// accumulated. Returns the micro-batch's loss.
  virtual LossResult forward_backward(int lg, const Batch& b, float scale) = 0;
  /// One optimizer step of every group at learning rate `lr` (the device is idle when it returns).
  virtual hdpissa::StepReport step(double lr) = 0;
  /// Summed loss of `batches` with local group 0's view of the model (forward only).
  virtual LossResult eval_loss(const std::vector<Batch>& batches) = 0;
  /// Greedy continuation of `prompt` with group 0's view.
  virtual std::vector<std::int32_t> generate(const std::vector<std::int32_t>& prompt, const GenerateOptions& g) = 0;
  /// Greedy completions of a batch with group 0's view (the eval::Generator contract: per prompt
  /// at most min(max_new_tokens, max_seq_len − prompt) new tokens, ending before the first stop
  /// token; a prompt without room gets none). Default: generate() one prompt at a time; the CUDA
  /// engine decodes the batch on the GPU (llama/cuda/decode_cuda.cuh).
  virtual std::vector<std::vector<std::int32_t>> generate_batch(const std::vector<std::vector<std::int32_t>>& prompts,
                                                                int max_new_tokens,
                                                                const std::vector<std::int32_t>& stop_tokens,
                                                                int max_seq_len) {
    std::vector<std::vector<std::int32_t>> out;
    for (const auto& prompt : prompts) {
      const int room = max_seq_len - static_cast<int>(prompt.size());
      if (room < 1 || prompt.empty()) {
        out.emplace_back();
        continue;
      }
      GenerateOptions g;
      g.max_new_tokens = std::min(max_new_tokens, room);
      if (!stop_tokens.empty()) g.stop_token = stop_tokens.front();
      auto ids = generate(prompt, g);
      for (std::size_t i = 0; i < ids.size(); ++i)
        if (std::find(stop_tokens.begin(), stop_tokens.end(), ids[i]) != stop_tokens.end()) {
          ids.resize(i);
          break;
        }
      out.push_back(std::move(ids));
    }
    return out;
  }
  /// Sets every target linear of `w` (a copy of the host weights) to the live merged weight
  /// (W for DWU / full; W_res + s·B A for LoRA / PiSSA); a `w` with stored linears comes back
  /// holding every linear (held_copy: the whole model in host fp32; tests, small models).
  virtual void merge_into(ModelWeights& w) = 0;
  /// The live merged weight of target i (position in info().targets) into `out` (resized), fp32.
  virtual void merged_weight(std::size_t i, Matrix& out) = 0;
  /// The run's whole state as a value.
  virtual TrainState state() = 0;
  /// Makes `s` live (every tensor and counter the method lists must be in it, with its shape).
  virtual void load_state(const TrainState& s, const std::string& origin) = 0;
  /// Checks that W is identical on every worker (DWU methods, several workers).
  virtual void verify_replicas() = 0;
  /// Whether truncated_delta_where_w_lives() is available (the GPU engine); otherwise the
  /// truncated LoRA export runs on the host over state() (truncated_delta.hpp).
  [[nodiscard]] virtual bool truncates_delta_where_w_lives() const { return false; }
  /// ΔW = W_live − `initial` (W_init, (out, in) on the host) of target i (position in
  /// info().targets) as a truncated LoRA (truncate_delta), computed where W lives: only the R
  /// factors and the singular values come back. DWU methods and full only (W is what trains).
  virtual TruncatedDelta truncated_delta_where_w_lives(std::size_t i, const Matrix& initial, int rank, double energy) {
    (void)i, (void)initial, (void)rank, (void)energy;
    throw LlamaError("truncated_delta_where_w_lives: this engine truncates on the host (use state())");
  }
  /// Peak device memory in use since the engine was built (GPU only).
  [[nodiscard]] virtual std::optional<std::int64_t> peak_device_bytes() { return std::nullopt; }
  /// Where the bytes of that peak go (GPU only): the memory ledger's parts (hdpissa/core/
  /// memory_ledger.hpp) as they stood at the sampled peak, non-empty parts only, then
  /// "untracked" = the peak − their sum (the CUDA context and loaded modules, the library handles'
  /// own workspaces, raw cudaMalloc). Bytes per part name, in charge order.
  [[nodiscard]] virtual std::vector<std::pair<std::string, std::int64_t>> peak_memory_parts() { return {}; }
  /// The most bytes the ledger's parts held at once (GPU only; between samples too, e.g. the
  /// initialisation's transient scratch), and the parts at that moment.
  [[nodiscard]] virtual std::vector<std::pair<std::string, std::int64_t>> tracked_peak_parts() { return {}; }
  /// Allocations charged to each part so far (GPU only): many small ones hint at the allocator's
  /// rounding in "untracked" (cudaMalloc maps whole pages).
  [[nodiscard]] virtual std::vector<std::pair<std::string, std::int64_t>> memory_allocations() { return {}; }
  /// --profile (GPU): GPU milliseconds per section accumulated over the training passes
  /// (forward_backward) and optimizer steps since the last reset_profile() (evaluation passes
  /// excluded); empty when the engine does not profile.
  [[nodiscard]] virtual std::vector<std::pair<std::string, double>> profile() { return {}; }
  /// --profile (GPU): the loss section of profile() in its parts (they sum to its loss row), the
  /// same accumulation and exclusions; empty when the engine does not profile.
  [[nodiscard]] virtual std::vector<std::pair<std::string, double>> profile_loss_parts() { return {}; }
  /// --profile (GPU): the host's milliseconds between the same section marks (profile()'s sections,
  /// then the loss parts), the same accumulation and exclusions: a section whose host time exceeds
  /// its GPU time kept the GPU waiting. Empty when the engine does not profile.
  [[nodiscard]] virtual std::vector<std::pair<std::string, double>> profile_host() { return {}; }
  /// Zeroes the profile (the trainer drops the first step: cuBLAS heuristics, first allocations).
  virtual void reset_profile() {}
  /// --compute fp8 diagnostic (tests; waits): the number of targets whose FP8 copy differs from a
  /// fresh quantisation of the live W (0: every copy current); nullopt without --compute fp8.
  [[nodiscard]] virtual std::optional<std::int64_t> fp8_stale_targets() { return std::nullopt; }
  /// Diagnostic (tests): shared-input backward calls (q|k|v, gate|up) whose stacked gA GEMM added
  /// straight into the adjacent gradient sums, and those that went through a scratch.
  [[nodiscard]] virtual std::pair<std::int64_t, std::int64_t> stacked_ga_calls() const { return {0, 0}; }
  /// Diagnostic (tests): shared-input groups (q|k|v, gate|up) run as stacked GEMMs
  /// (HDPISSA_STACKED_LINEARS): forwards, and backwards with the group's dX summed in one GEMM.
  [[nodiscard]] virtual std::pair<std::int64_t, std::int64_t> stacked_linear_calls() const { return {0, 0}; }
  /// Diagnostic (tests): --cuda-graphs micro-batches replayed from graphs, and captures that failed.
  [[nodiscard]] virtual std::pair<std::int64_t, std::int64_t> cuda_graph_stats() const { return {0, 0}; }
  /// --compute fp8 diagnostic (tests): FP8 quantisations of X / dY that took their amax from the
  /// model's producing kernel (Fp8Linears::amax_hint); nullopt without --compute fp8.
  [[nodiscard]] virtual std::optional<std::int64_t> fp8_amax_hints_used() const { return std::nullopt; }
};

/// What every engine does the same way, over the method of device policy `Dev`.
template <class Dev>
class MethodEngine : public TrainEngine {
 public:
  void zero_grad() override { method_->zero_grad(); }
  TrainState state() override {
    method_->settle();  // updates still beside the stream (HDPISSA_DWU_OVERLAP) land first
    StateRefs refs;
    method_->state(refs);
    return snapshot(*bm_, refs);
  }
  void load_state(const TrainState& s, const std::string& origin) override {
    method_->settle();
    StateRefs refs;
    method_->state(refs);
    restore(*bm_, refs, s, origin);
    method_->refresh();
    bm_->synchronize();
    state_changed();
  }
  void verify_replicas() override { method_->verify_replicas(); }
  [[nodiscard]] std::optional<std::int64_t> fp8_stale_targets() override {
    method_->settle();  // copies due after an overlapped step are brought up to date first
    const std::int64_t n = method_->fp8_stale_targets();
    return n < 0 ? std::nullopt : std::optional<std::int64_t>(n);
  }
  [[nodiscard]] std::pair<std::int64_t, std::int64_t> stacked_ga_calls() const override {
    return method_->stacked_ga_calls();
  }
  [[nodiscard]] std::pair<std::int64_t, std::int64_t> stacked_linear_calls() const override {
    return method_->stacked_linear_calls();
  }
  [[nodiscard]] std::optional<std::int64_t> fp8_amax_hints_used() const override {
    const std::int64_t n = method_->fp8_amax_hints_used();
    return n < 0 ? std::nullopt : std::optional<std::int64_t>(n);
  }
  void merge_into(ModelWeights& w) override {
    method_->settle();
    const auto& ids = method_->targets();
    for (std::size_t i = 0; i < ids.size(); ++i) method_->merged_weight(i, w.linear(ids[i]));
    if (w.stored_linears) w = held_copy(w);
  }
  void merged_weight(std::size_t i, Matrix& out) override {
    HDPISSA_REQUIRE(i < method_->targets().size(), "merged_weight: target ", i, " of ", method_->targets().size());
    method_->settle();
    method_->merged_weight(i, out);
  }
  /// The method (tests and diagnostics).
  TrainMethod<Dev>& method() { return *method_; }

 protected:
  explicit MethodEngine(typename Dev::master_backend& bm) : bm_(&bm) {}
  EngineInfo method_info(std::string device, std::string notes) const {
    return {std::move(device), method_->describe() + notes, method_->trainable_parameters(), method_->targets(),
            method_->w_bytes_per_param() + method_->fp8_bytes_per_param()};
  }
  /// Called after the live weights changed other than through step() (caches drop).
  virtual void state_changed() {}

  typename Dev::master_backend* bm_;
  std::unique_ptr<TrainMethod<Dev>> method_;
};

/// The CPU path: the host model (trained in place) + the method on CpuDevice.
template <class Comm>
class CpuEngine final : public MethodEngine<CpuDevice> {
 public:
  /// `w` is the trainer's host model (trained in place); `resume` supplies saved factors or is null.
  /// `progress`: adapter initialisation progress (MethodContext::progress), optional.
  CpuEngine(const TrainOptions& o, ModelWeights& w, Comm& comm, const TrainState* resume,
            std::function<void(std::size_t, std::size_t)> progress = {})
      : MethodEngine<CpuDevice>(b_), w_(&w) {
    if (!w.holds_linears())
      throw LlamaError(cat("CPU engine: expected a model holding every target linear in fp32, found linears stored in ",
                           w.stored_linears->describe(), " (load without LoadOptions::keep_linears_stored)"));
    const MethodContext<CpuDevice, Comm> ctx{b_, b_, comm, w, [&w](LinearId id) { return view_of(w.linear(id)); },
                                             std::move(progress)};
    method_ = make_method(o, ctx, resume);
  }

  [[nodiscard]] EngineInfo info() const override { return method_info("cpu", ""); }
  LossResult forward_backward(int lg, const Batch& b, float scale) override {
    auto& hooks = method_->hooks(lg);
    const LossResult r = forward(*w_, b, hooks, acts_);
    backward(*w_, acts_, hooks, nullptr, scale);
    return r;
  }
  hdpissa::StepReport step(double lr) override { return method_->step(lr); }
  LossResult eval_loss(const std::vector<Batch>& batches) override {
    return evaluate_loss(*w_, batches, method_->hooks(0));
  }
  std::vector<std::int32_t> generate(const std::vector<std::int32_t>& prompt, const GenerateOptions& g) override {
    return generate_greedy(*w_, prompt, g, method_->hooks(0));
  }

 private:
  TrainBackend b_;
  ModelWeights* w_;
  Activations acts_;
};

}  // namespace hdpissa::llama
