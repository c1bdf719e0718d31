#pragma once
/// \file methods.hpp
/// hdpissa-train's fine-tuning methods, each written ONCE over a device policy `Dev` and used by
/// both models (the CPU model with CpuDevice, the GPU model with gpu::CudaDevice<float | bf16>):
///  - DwuMethod (hdpissa, lora-dwu, pissa-dwu): MutedLinear (ExactMute, or ScaledMute{γ}) +
///    DirectWeightUpdate (Sum or Mean) with per-group Adam. Factors: OrthogonalAdapterInit
///    (hdpissa), LoraInit with distinct seeds per group (lora-dwu), PissaInit top-r identical on
///    every group (pissa-dwu); computed layer l on worker l mod P and broadcast.
///  - AdapterMethod (lora, pissa): AdapterLinear (active adapter, scaling s = alpha / r, or
///    alpha // r with --scaling reference) + DataParallelUpdate over (A, B); PiSSA's factors are
///    PEFT's (s·B A = the top-r part) and it stores W_res = W − s·B A.
///  - FullMethod (full): DenseLinear + DataParallelUpdate over every target W.
/// In every method only the target linears train; embeddings, norms and lm_head stay frozen.
///
/// A device policy names two backends: `master_backend` (fp32: the weights the optimizer updates,
/// the factors, Adam, gradient sums; EigenBackend<float> or CudaBackend<float>) and
/// `compute_backend` (what the model's GEMMs run in: the same type, or CudaBackend<bf16>). When the
/// two scalar types differ (bf16 compute) the methods that update W (DWU, full) keep fp32 masters
/// and bf16 compute copies, refreshed after every step (6 bytes per target parameter); the methods
/// whose W is frozen (lora, pissa) keep W ONLY in the compute dtype (2 bytes per parameter: PiSSA's
/// W_res is formed in fp32 a few layers at a time, then rounded once to bf16, the same bits the
/// fp32-master path produced). The adapter methods' gradient GEMMs (bf16 operands) write their fp32
/// results straight into the fp32 gradient sums (MutedLinear / AdapterLinear's fp32-gradient
/// backward, CudaBackend::gemm_f32); full fine-tuning's bf16 gW (and ScaledMute's gradients) are
/// added into the fp32 sums (Dev::accumulate). Without bf16 compute the model's own W is the master
/// and gradients accumulate in place. The policy also names the randomized SVD (Dev::randomized_svd).
///
/// The model reaches a method through hooks(lg): the LinearHooks of local group lg (the group is an
/// argument, never state set around calls). A method lists its live state (StateRefs, state.hpp):
/// the target weights `weight.<name>`, the factors / adapters, the Adam moments and step counts.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "hdpissa/hdpissa.hpp"
#include "llama/linear_hooks.hpp"
#include "llama/train/options.hpp"
#include "llama/stored_linears.hpp"
#include "llama/train/state.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama {

/// The CPU device policy: everything in fp32 on EigenBackend<float>; the model's W is the master.
struct CpuDevice {
  using master_backend = hdpissa::EigenBackend<float>;
  using compute_backend = hdpissa::EigenBackend<float>;
  using randomized_svd = hdpissa::RandomizedSvd;
  static constexpr const char* exact_svd_name = "ExactSvd";
  static constexpr const char* randomized_svd_name = "RandomizedSvd";
  static constexpr const char* backend_note = "";
};

/// The library backend of the CPU trainer (tests use it to look at factors).
using TrainBackend = CpuDevice::master_backend;

/// What a method is built from (all borrowed; owned by the engine).
template <class Dev, class Comm>
struct MethodContext {
  using Sc = typename Dev::compute_backend::scalar_type;
  typename Dev::master_backend& bm;   ///< fp32: masters, optimizer, init
  typename Dev::compute_backend& bc;  ///< the model's GEMMs (the same object as bm when fp32)
  Comm& comm;                         ///< K groups: local groups here × processes
  /// The base model (config; fp32 values of bf16 masters and SVD inputs). Its target linears may be
  /// stored (llama/stored_linears.hpp): read them with linear_value / base_w_fp32, never linear().
  const ModelWeights& host;
  std::function<MatrixView<Sc>(LinearId)> weight;  ///< the model's compute copy of a target
  /// Adapter initialisation progress (target layers done, total), called after each batch of layers
  /// (optional; the trainer prints it: the SVDs of a 7B model take a while).
  std::function<void(std::size_t, std::size_t)> progress = {};
};

namespace detail {
/// Layers per init_adapters_distributed call: a multiple of the worker count P (so that layer l
/// keeps the owner l mod P of one call) giving ~16 progress reports; P when an fp32 scratch per
/// layer must stay small.
inline std::size_t init_chunk(std::size_t n, std::size_t P, bool small) {
  if (small) return P;
  return P * std::max<std::size_t>(1, n / (P * 16));
}
/// Whether every value of `m` is a bf16 value (the low 16 bits of each float are zero), e.g. a
/// matrix read from a BF16 checkpoint. Up to 16 threads (a 4096 × 11008 matrix is 180 MB).
inline bool bf16_exact(const Matrix& m) {
  const float* p = m.data();
  const std::int64_t n = m.size();
  auto part = [p](std::int64_t a, std::int64_t b) {
    for (std::int64_t i = a; i < b; ++i) {
      std::uint32_t u;
      std::memcpy(&u, p + i, 4);
      if (u & 0xFFFFu) return false;
    }
    return true;
  };
  const std::int64_t parts = n < (std::int64_t(1) << 20) ? 1 : 16;
  std::vector<std::future<bool>> fut;
  for (std::int64_t t = 1; t < parts; ++t)
    fut.push_back(std::async(std::launch::async, part, n * t / parts, n * (t + 1) / parts));
  bool ok = part(0, n / parts);
  for (auto& f : fut) ok = f.get() && ok;
  return ok;
}
}  // namespace detail

namespace detail {
/// Member type Get<Dev> of a device policy, or void when the policy has none.
template <template <class> class Get, class Dev>
struct PolicyTypeOr {
  using type = void;
};
template <template <class> class Get, class Dev>
  requires requires { typename Get<Dev>; }
struct PolicyTypeOr<Get, Dev> {
  using type = Get<Dev>;
};
template <class Dev>
using fp8_linears_t = typename Dev::fp8_linears;  ///< --compute fp8's FP8 linears
template <class Dev>
using adapter_grads_t = typename Dev::adapter_grads;  ///< the fused adapter-gradient kernels
/// The device policy's FP8 linears, or void when it has none.
template <class Dev>
using Fp8LinearsOf = PolicyTypeOr<fp8_linears_t, Dev>;
/// The device policy's fused adapter-gradient kernels, or void.
template <class Dev>
using AdapterGradsOf = PolicyTypeOr<adapter_grads_t, Dev>;
template <class Dev>
using adapter_side_t = typename Dev::adapter_side;  ///< the adapters' second stream
/// The device policy's second stream for adapter work, or void.
template <class Dev>
using AdapterSideOf = PolicyTypeOr<adapter_side_t, Dev>;
}  // namespace detail

/// A fine-tuning method: per-group hooks for the model, the optimizer step and the state.
template <class Dev>
class TrainMethod {
 public:
  using Bm = typename Dev::master_backend;
  using Bc = typename Dev::compute_backend;
  using Sc = typename Bc::scalar_type;
  using CVc = ConstMatrixView<Sc>;
  using Vc = MatrixView<Sc>;
  using V32 = MatrixView<float>;
  using CV32 = ConstMatrixView<float>;
  /// bf16 compute with fp32 masters (else the model's W is the master).
  static constexpr bool kMixed = !std::is_same_v<Sc, float>;
  static_assert(std::is_same_v<typename Bm::scalar_type, float>, "the master backend must be fp32");

  TrainMethod(const TrainMethod&) = delete;
  TrainMethod& operator=(const TrainMethod&) = delete;
  virtual ~TrainMethod() = default;

  /// The hooks through which the model runs local group `lg` (0 ≤ lg < local groups).
  LinearHooks<Bc>& hooks(int lg) { return *hooks_.at(std::size_t(lg)); }
  /// Zeroes every local group's gradient.
  virtual void zero_grad() = 0;
  /// One optimizer step (all groups) at learning rate `lr`; the compute copies follow.
  virtual hdpissa::StepReport step(double lr) = 0;
  /// Recomputes every compute copy from the masters (after restore()).
  virtual void refresh() = 0;
  /// The merged fp32 weight of target i (W, or W_res + s·B A) into `host` (resized).
  virtual void merged_weight(std::size_t i, Matrix& host) = 0;
  /// Views of the whole live state (target weights first).
  virtual void state(StateRefs& s) = 0;
  /// Checks that W is identical on every worker (DWU); default: nothing to check.
  virtual void verify_replicas() {}
  /// The model's stream waits for target slot s's W update of the last step (a DWU method whose
  /// updates overlap the next forward, HDPISSA_DWU_OVERLAP); the hooks call it before each target's
  /// forward. Default: nothing in flight.
  virtual void await_w(std::size_t s) { (void)s; }
  /// The model's stream waits for every update still in flight (see await_w): the engine calls it
  /// before anything but the training and evaluation passes reads or writes the weights or state.
  virtual void settle() {}
  /// Device bytes per target-weight parameter that W occupies: 4 (fp32 W), 6 (fp32 master + bf16
  /// compute copy), 2 (frozen W kept only in bf16); under a bf16 W-precision policy (DWU, full) the
  /// policy's: 4 (bf16 W + bf16 compensation), 2 (bf16 W, stochastic rounding).
  [[nodiscard]] int w_bytes_per_param() const {
    switch (wprec_) {
      case hdpissa::WPrecision::Fp32Master: break;
      case hdpissa::WPrecision::Bf16Compensated: return hdpissa::Bf16Compensated::w_bytes_per_param(kMixed);
      case hdpissa::WPrecision::Bf16StochasticRounding: return hdpissa::Bf16StochasticRounding::w_bytes_per_param(kMixed);
    }
    return !kMixed ? 4 : frozen_compute_ ? 2 : 6;
  }
  /// Trainable numbers summed over all K groups.
  [[nodiscard]] virtual std::int64_t trainable_parameters() const = 0;

  /// --compute fp8 (the device policy's Dev::fp8_linears; void: the device has none).
  using Fp8 = typename detail::Fp8LinearsOf<Dev>::type;
  static constexpr bool kFp8Capable = !std::is_void_v<Fp8>;
  /// Turns --compute fp8 on: FP8 copies of every target that can take them, quantised now from the
  /// model's compute W (after the method's initialisation, e.g. PiSSA's W_res). Called once, by
  /// make_method. Throws where the device has no FP8 path.
  void enable_fp8() {
    if constexpr (kFp8Capable) {
      std::vector<std::pair<index_t, index_t>> shapes;
      std::vector<std::string> names;
      for (std::size_t i = 0; i < ids_.size(); ++i) {
        shapes.push_back(shape(i));
        names.push_back(ids_[i].hf_name());
      }
      hdpissa::memory::PartScope part("fp8.copies");
      fp8_ = std::make_unique<Fp8>(*bc_, shapes, names);
      fp8_->set_input_ids(ids_);  // q|k|v and gate|up quantise their shared input once
      for (std::size_t i = 0; i < ids_.size(); ++i) fp8_->set_bf16_weight(i, CVc(Wc_[i]));
      refresh_fp8();
      fp8_enabled();
    } else {
      throw LlamaError("--compute fp8: expected a bf16 GPU device (--device cuda --dtype bf16); this engine has no FP8 path");
    }
  }
  /// The FP8 part of the engine's notes ("" when off).
  [[nodiscard]] std::string fp8_note() const {
    if constexpr (kFp8Capable) {
      if (fp8_) return "; " + fp8_->describe() + (amax_in_update_ ? "; W amax kept by the update's kernels" : "");
    }
    return {};
  }
  /// Extra device bytes per target parameter of the FP8 copies (2 when every target has them).
  [[nodiscard]] int fp8_bytes_per_param() const {
    if constexpr (kFp8Capable) {
      if (fp8_) return fp8_->bytes_per_param();
    }
    return 0;
  }
  /// Diagnostic (tests; waits): FP8 targets whose copy differs from a fresh quantisation of the live
  /// compute W (0: every copy current), or -1 when --compute fp8 is off.
  [[nodiscard]] std::int64_t fp8_stale_targets() {
    if constexpr (kFp8Capable) {
      if (fp8_) return fp8_->stale_targets([this](std::size_t i) { return CVc(Wc_[i]); });
    }
    return -1;
  }
  /// Diagnostic: FP8 quantisations that took their amax from the model's producing kernel, or -1
  /// when --compute fp8 is off.
  [[nodiscard]] std::int64_t fp8_amax_hints_used() const {
    if constexpr (kFp8Capable) {
      if (fp8_) return fp8_->amax_hints_used();
    }
    return -1;
  }
  /// Diagnostic: shared-input backward calls whose stacked gA GEMM added straight into the adjacent
  /// sums (first) or went through the scratch (second).
  [[nodiscard]] std::pair<std::int64_t, std::int64_t> stacked_ga_calls() const { return stacked_ga_; }
  /// Diagnostic: shared-input groups run stacked (HDPISSA_STACKED_LINEARS): forwards, summed backwards.
  [[nodiscard]] std::pair<std::int64_t, std::int64_t> stacked_linear_calls() const { return stacked_calls_; }
  /// One-line description for the config echo.
  [[nodiscard]] virtual std::string describe() const = 0;
  /// The targeted linears, in layer order.
  [[nodiscard]] const std::vector<LinearId>& targets() const { return ids_; }
  /// The fp32 weight the method keeps for target i, where it lives (host or device): W for DWU and
  /// full (what the optimizer updates), the frozen W (lora) or W_res (pissa) otherwise; none for a
  /// bf16-only frozen W (then an error).
  [[nodiscard]] CV32 master_weight(std::size_t i) const {
    HDPISSA_REQUIRE(i < Wm_.size(), "master_weight: target ", i, " has no fp32 weight (", Wm_.size(),
                    " held; a bf16-only frozen W has none)");
    return CV32(Wm_[i]);
  }
  /// Position of `id` in targets(), or -1 if it is frozen.
  [[nodiscard]] int slot(LinearId id) const { return slots_[static_cast<std::size_t>(id.index())]; }

 protected:
  /// `updates_w`: the optimizer changes W (false: W is frozen; with bf16 compute it is then kept only
  /// as the model's bf16 copy, and Wm_ stays empty).
  /// `bf16_w`: W changes but a bf16 W-precision policy keeps it only as the model's bf16 copy (the
  /// update writes that copy in place; bf16 compute only, as for a frozen W).
  template <class Comm>
  TrainMethod(const MethodContext<Dev, Comm>& ctx, const std::vector<Module>& modules, bool updates_w = true,
              bool bf16_w = false)
      : bm_(&ctx.bm), bc_(&ctx.bc), weight_(ctx.weight), frozen_compute_(kMixed && (!updates_w || bf16_w)) {
    const ModelConfig& c = ctx.host.config;
    slots_.assign(static_cast<std::size_t>(c.n_layers) * kModulesPerLayer, -1);
    for (int l = 0; l < c.n_layers; ++l)
      for (int m = 0; m < kModulesPerLayer; ++m)
        for (Module t : modules)
          if (t == static_cast<Module>(m)) {
            const LinearId id{l, t};
            slots_[static_cast<std::size_t>(id.index())] = static_cast<int>(ids_.size());
            ids_.push_back(id);
          }
    for (int lg = 0; lg < ctx.comm.local_groups(); ++lg) hooks_.push_back(std::make_unique<GroupHooks>(*this, lg));
    for (const LinearId& id : ids_) {  // the fp32 masters: the model's own W, or copies of the base
      Wc_.push_back(weight_(id));
      if (frozen_compute_) continue;
      if constexpr (kMixed) {
        const auto [out, in] = linear_shape(c, id.module);
        hdpissa::memory::PartScope part("w.fp32-master");
        own_.push_back(bm_->make_matrix(out, in));
        base_w_fp32(ctx.host, Wc_.size() - 1, own_.back().view(), /*scan_held=*/false);
        Wm_.push_back(own_.back().view());
      } else {
        Wm_.push_back(weight_(id));
      }
    }
  }

  /// Target slot `s` of local group `lg`: Y = the method's linear of X.
  virtual void forward(int lg, std::size_t s, CVc W, CVc X, Vc Y) = 0;
  /// Its backward: dX overwritten, the method's gradients accumulated.
  virtual void backward(int lg, std::size_t s, CVc W, CVc X, CVc dY, Vc dX) = 0;
  /// One target of a shared-input forward (LinearHooks::forward_shared): its slot and forward()'s operands.
  struct SharedForwardCall {
    std::size_t slot;
    CVc W;
    Vc Y;
  };
  /// The forward of targets that read the same X, in the order given (default: forward() each).
  virtual void forward_shared(int lg, std::span<const SharedForwardCall> calls, CVc X) {
    for (const auto& c : calls) forward(lg, c.slot, c.W, X, c.Y);
  }
  /// One target of a shared-input group (LinearHooks::backward_shared): its slot and backward()'s operands.
  struct SharedCall {
    std::size_t slot;
    CVc W, dY;
    Vc dX;
  };
  /// The backward of targets that read the same X, in the order given (default: backward() each).
  virtual void backward_shared(int lg, std::span<const SharedCall> calls, CVc X) {
    for (const auto& c : calls) backward(lg, c.slot, c.W, X, c.dY, c.dX);
  }
  /// backward_shared() with the members' dX summed into dX_sum (LinearHooks::backward_shared_summed);
  /// false (the default): not offered here, nothing done.
  virtual bool backward_shared_summed(int lg, std::span<const SharedCall> calls, CVc X, Vc dX_sum) {
    (void)lg, (void)calls, (void)X, (void)dX_sum;
    return false;
  }
  /// The members of a shared-input call as one stacked linear (stack_linears over their W and Y /
  /// dY), when HDPISSA_STACKED_LINEARS is on and the model lays them out so; else nothing.
  template <class Calls>
  std::optional<StackedLinears<typename Bc::scalar_type>> stack_of(const Calls& calls) const {
    if (!stacked_on_ || calls.size() > 3) return std::nullopt;
    std::array<CVc, 3> W{}, Z{};
    for (std::size_t j = 0; j < calls.size(); ++j) {
      W[j] = calls[j].W;
      if constexpr (requires(const typename Calls::value_type& c) { c.dY; }) Z[j] = calls[j].dY;
      else Z[j] = CVc(calls[j].Y);
    }
    return stack_linears<typename Bc::scalar_type>(std::span<const CVc>(W.data(), calls.size()),
                                                   std::span<const CVc>(Z.data(), calls.size()));
  }
  bool stacked_on_ = env_stacked_linears();  // HDPISSA_STACKED_LINEARS
  /// The adapters' second stream (the device's AdapterSideStream; void: none), made by a method that
  /// uses it (HDPISSA_ADAPTER_STREAM): fork before work enqueued there, join_side() before anything
  /// on the model's stream reads what it wrote or rewrites what it reads.
  using Side = typename detail::AdapterSideOf<Dev>::type;
  static constexpr bool kHasSide = !std::is_void_v<Side>;
  struct NoSide {};
  std::unique_ptr<std::conditional_t<kHasSide, Side, NoSide>> side_;
  void side_fork() {
    if constexpr (kHasSide) side_->fork(bc_->stream());
  }
  void join_side() {
    if constexpr (kHasSide)
      if (side_) side_->join(bc_->stream());
  }
  /// AdapterSideStream::join_lagged (the model's join_backward_lagged()).
  void join_side_lagged() {
    if constexpr (kHasSide)
      if (side_) side_->join_lagged(bc_->stream());
  }
  /// The stacked gA of n members of rank r and input width `in` (grad_a(p): member p's fp32 gA sum):
  /// the sums themselves as one (n·r, in) view when they are adjacent rows of the update's flat
  /// gradients (the updates lay a layer's gA out back to back), else `scratch` (overwritten, then
  /// added to each sum by add_stacked_ga). Second: adjacent.
  template <class GradA>
  static std::pair<V32, bool> stacked_ga(GradA&& grad_a, index_t n, index_t r, index_t in, float* scratch) {
    const V32 g0 = grad_a(0);
    bool adjacent = g0.ld == in;
    for (index_t p = 1; p < n && adjacent; ++p) {
      const V32 gp = grad_a(p);
      adjacent = gp.ld == in && gp.data == g0.data + p * r * in;
    }
    return {adjacent ? V32{g0.data, n * r, in, in} : V32{scratch, n * r, in, in}, adjacent};
  }
  /// After a stacked gA GEMM into stacked_ga()'s scratch: each member's rows added to its sum.
  template <class GradA>
  void add_stacked_ga(V32 gA, index_t n, index_t r, GradA&& grad_a) {
    for (index_t p = 0; p < n; ++p) bm_->axpy(1.0f, CV32(gA.row_block(p * r, r)), grad_a(p));
  }
  /// The calls as one stacked linear (stack_of) whose W order is `slots` (a stack's module order).
  template <class Calls>
  std::optional<StackedLinears<typename Bc::scalar_type>> stack_in_order(const Calls& calls,
                                                                         const std::array<std::size_t, 3>& slots) const {
    auto sl = stack_of(calls);
    if (!sl || sl->n != calls.size()) return std::nullopt;
    for (std::size_t p = 0; p < sl->n; ++p)
      if (calls[sl->order[p]].slot != slots[p]) return std::nullopt;
    return sl;
  }
  /// The model's largest token count (workspaces; a no-op unless it grows).
  virtual void reserve(index_t max_tokens) { (void)max_tokens; }

  /// The model's compute copy of target i ← its fp32 master (bf16 compute only).
  void push_weight(std::size_t i) {
    if constexpr (kMixed)
      if (!frozen_compute_) Dev::to_compute(*bm_, CV32(Wm_[i]), weight_(ids_[i]));
  }
  /// A compute-dtype copy of an fp32 matrix (bf16 compute only): allocated by `make`, filled here.
  void to_compute(CV32 src, Vc dst) {
    if constexpr (kMixed) Dev::to_compute(*bm_, src, dst);
    else (void)src, (void)dst;
  }
  /// dst (fp32 gradient sum) += src (one micro-batch's gradient in the compute dtype).
  void accumulate(CVc src, V32 dst) {
    if constexpr (kMixed) Dev::accumulate(*bm_, src, dst);
    else (void)src, (void)dst;
  }
  /// Compute-dtype copies of a method's factors / adapters, and one micro-batch's factor-gradient
  /// scratch (kMixed only; empty otherwise).
  struct ComputeCopies {
    std::vector<typename Bc::matrix_type> A, B;
    typename Bc::matrix_type g;
  };
  /// A factor as a view: an owning matrix, or already a view (e.g. into a DirectWeightUpdate).
  static CV32 factor_view(const typename Bm::matrix_type& m) { return CV32(m.view()); }
  static CV32 factor_view(V32 v) { return CV32(v); }
  /// Allocates `c` for `sets` (kMixed) with `scratch` elements of gradient scratch, and fills it.
  /// Each element of `sets` has factors A and B (owning matrices or views).
  template <class Sets>
  void make_copies(ComputeCopies& c, const Sets& sets, index_t scratch) {
    if constexpr (kMixed) {
      for (const auto& s : sets) {
        const CV32 A = factor_view(s.A), B = factor_view(s.B);
        c.A.push_back(bc_->make_matrix(A.rows, A.cols));
        c.B.push_back(bc_->make_matrix(B.rows, B.cols));
      }
      c.g = bc_->make_matrix(1, scratch);
      refresh_copies(c, sets);
    }
  }
  /// The compute copies ← the fp32 factors.
  template <class Sets>
  void refresh_copies(ComputeCopies& c, const Sets& sets) {
    for (std::size_t i = 0; i < c.A.size(); ++i) {
      to_compute(factor_view(sets[i].A), c.A[i].view());
      to_compute(factor_view(sets[i].B), c.B[i].view());
    }
  }

  /// Out and in of target i.
  [[nodiscard]] std::pair<index_t, index_t> shape(std::size_t i) const { return {Wc_[i].rows, Wc_[i].cols}; }
  /// Target i's base W in fp32 into `dst` (at initialisation, before the method changes the model's
  /// copy: fp32 masters, and the SVD inputs of bf16 compute without them). When the values are
  /// bf16-exact — stored as BF16 (a stored linear, llama/stored_linears.hpp), or, with `scan_held`,
  /// a held matrix whose every value is a bf16 value — the model's bf16 copy holds exactly them:
  /// widen it on the device (the same bits, no host transfer: at 7B the pageable host copies
  /// dominated the SVD initialisation). Otherwise upload the fp32 values (a stored linear converted
  /// first, one matrix at a time).
  void base_w_fp32(const ModelWeights& host, std::size_t i, V32 dst, bool scan_held = true) {
    const LinearId id = ids_[i];
    if constexpr (kMixed) {
      const bool exact = host.is_stored(id) ? stored_as_bf16(host, id)
                                            : scan_held && detail::bf16_exact(host.linear(id));
      if (exact) {
        Dev::to_master(*bm_, CVc(Wc_[i]), dst);
        return;
      }
    }
    Matrix scratch;
    const Matrix& v = linear_value(host, id, scratch);
    HDPISSA_REQUIRE(v.rows() == dst.rows && v.cols() == dst.cols, "base W of ", id.hf_name(), ": [", v.rows(), ", ",
                    v.cols(), "] into [", dst.rows, ", ", dst.cols, "]");
    bm_->upload(v.data(), dst);  // waits (both backends), so the scratch may go
  }
  /// Whether target i's base GEMMs run in FP8 (--compute fp8 and a shape the FP8 GEMM takes).
  [[nodiscard]] bool fp8_on(std::size_t i) const {
    if constexpr (kFp8Capable) return fp8_ && fp8_->enabled(i);
    else return (void)i, false;
  }
  /// Rebuilds every FP8 copy from the compute W: after any change of W (an optimizer step of a
  /// method that updates W, a restore). Stream-ordered after the update; no synchronisation.
  /// `amax_current`: the update left each FP8 target's max |W| in its amax slot (w_storage_amax()).
  void refresh_fp8(bool amax_current = false) {
    if constexpr (kFp8Capable) {
      if (fp8_)
        for (std::size_t i = 0; i < ids_.size(); ++i) fp8_->quantize_weight(i, CVc(Wc_[i]), amax_current);
    } else {
      (void)amax_current;
    }
  }
  /// Called at the end of enable_fp8() (the FP8 copies exist): a method that updates W under a bf16
  /// policy points its storages' amax at the copies' slots here.
  virtual void fp8_enabled() {}
  /// Points every FP8 target's bf16 W storage at its copy's amax slot (Bf16WStorage::amax) in `upd`
  /// (DirectWeightUpdate / DataParallelUpdate::set_w_storage), so the update's kernels keep max |W|
  /// and refresh_fp8(true) skips the amax passes. False (nothing changed) without FP8 targets or
  /// without bf16 storages (setup_w_precision on the GPU with a bf16 policy).
  template <class Upd>
  bool w_storage_amax(Upd& upd) {
    if constexpr (kFp8Capable) {
      if (!fp8_ || w_storage_.size() != ids_.size()) return false;
      bool any = false;
      for (std::size_t i = 0; i < ids_.size(); ++i) {
        if (!fp8_on(i)) continue;
        hdpissa::Bf16WStorage st = w_storage_[i];
        st.amax = fp8_->weight_amax(i);
        upd.set_w_storage(i, st);
        any = true;
      }
      return any;
    } else {
      (void)upd;
      return false;
    }
  }
  /// fp8_deferred_: target i's FP8 copy, if the last step left it due, quantised now (on the model's
  /// stream, after the caller made it wait for i's W update).
  void refresh_fp8_due(std::size_t i) {
    if constexpr (kFp8Capable) {
      if (i < fp8_due_.size() && fp8_due_[i]) {
        fp8_due_[i] = 0;
        fp8_->quantize_weight(i, CVc(Wc_[i]), fp8_due_amax_);
      }
    } else {
      (void)i;
    }
  }
  /// Before an update that maxes into the FP8 amax slots (w_storage_amax): every slot ← 0.
  void zero_fp8_amax() {
    if constexpr (kFp8Capable) {
      if (fp8_) fp8_->zero_weight_amax();
    }
  }
  /// The step of a method that updates W (step_w), then W's compute copies and FP8 copies follow,
  /// once per optimizer step. With amax_in_update_ the update's kernels leave max |W| in the FP8
  /// amax slots (reset first), so the refresh skips its amax passes; a skipped step (nothing
  /// written after the reset) runs them.
  /// With fp8_deferred_ (a DWU method whose W updates overlap the next forward) the FP8 copies are
  /// not refreshed here: each follows at its target's first await_w after the step (refresh_fp8_due).
  template <class Upd>
  hdpissa::StepReport step_updating_w(Upd& upd, double lr) {
    if (amax_in_update_) zero_fp8_amax();
    const auto rep = step_w(upd, lr);
    if (!rep.skipped) {
      for (std::size_t i = 0; i < ids_.size(); ++i) push_weight(i);
      if (fp8_deferred_) {
        fp8_due_.assign(ids_.size(), 1);
        fp8_due_amax_ = amax_in_update_;
      } else {
        refresh_fp8(amax_in_update_);
      }
    } else if (amax_in_update_) {
      refresh_fp8();
    }
    return rep;
  }
  /// The FP8 activation buffers follow the model's largest token count.
  void reserve_fp8(index_t max_tokens) {
    if constexpr (kFp8Capable) {
      if (fp8_) fp8_->reserve(max_tokens);
    } else {
      (void)max_tokens;
    }
  }
  /// Every target weight under `weight.<name>` (shared). A bf16-only frozen W is saved as its exact
  /// fp32 values and restored by rounding to nearest (bit-identical for its own saves; an fp32
  /// master saved by an older run rounds exactly as that run's compute copy did).
  void add_weights(StateRefs& s) {
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      if constexpr (kMixed) {
        if (frozen_compute_) {
          const Vc W = Wc_[i];
          Bm* b = bm_;
          s.add_converted(
              "weight." + ids_[i].hf_name(), W.rows, W.cols, false,
              [b, W](float* host) { Dev::download_compute(*b, CVc(W), host); },
              [b, W](const float* host) { Dev::upload_compute(*b, host, W); });
          continue;
        }
      }
      s.add("weight." + ids_[i].hf_name(), Wm_[i], false);
    }
  }
  /// Target i's W in fp32 into `host` (resized): the fp32 master, or — W kept only as the model's
  /// bf16 copy (a bf16 W-precision policy) — that copy widened exactly.
  void download(std::size_t i, Matrix& host) {
    if constexpr (kMixed) {
      if (frozen_compute_) {
        const auto [out, in] = shape(i);
        host.resize(out, in);
        Dev::download_compute(*bm_, CVc(Wc_[i]), host.data());
        return;
      }
    }
    host.resize(Wm_[i].rows, Wm_[i].cols);
    bm_->download(CV32(Wm_[i]), host.data());
    bm_->synchronize();
  }

  // ---------------------------------------------------------------- --w-precision (DWU, full)
  /// Sets up --w-precision for a method whose update `upd` changes W (DirectWeightUpdate or
  /// DataParallelUpdate: both take set_w_storage(target, Bf16WStorage) and set_w_apply(fn(target,
  /// Δ))); call it after the targets were registered with `upd` (target i = upd's layer / param i).
  /// fp32-master leaves the update as it is (W += Δ in fp32). The bf16 policies:
  ///  - GPU, bf16 compute: W is the model's bf16 copy (bf16_rn of the fp32 W: the CPU path's
  ///    rounding), registered with the update as a Bf16WStorage and updated in place by the policy's
  ///    rule (the library's kernels: fused into the DWU GEMM on sm_90a, else one elementwise pass
  ///    over a dense Δ); Bf16Compensated adds a zeroed bf16 compensation. No fp32 W exists.
  ///  - CPU (the reference path: the fp32 tensors hold bf16 values, bit-exact with the rule on bf16
  ///    storage): W is rounded to the nearest bf16 once — for DWU after the factors were computed
  ///    from the fp32 W — and the update hands each target's Δ to apply_w().
  /// SR's random bits: hash(--seed, applied-step count w_step_, element index), the index running
  /// over the targets in order, row-major — the same on every worker and after a resume.
  template <class Upd>
  void setup_w_precision(const TrainOptions& o, Upd& upd) {
    wprec_ = o.w_precision;
    sr_seed_ = std::uint64_t(o.seed);
    if (wprec_ == hdpissa::WPrecision::Fp32Master) return;
    if constexpr (kMixed) {
      std::uint64_t offset = 0;
      for (std::size_t i = 0; i < ids_.size(); ++i) {
        const Vc W = Wc_[i];
        hdpissa::Bf16WStorage st;
        st.policy = wprec_;
        st.w = reinterpret_cast<std::uint16_t*>(W.data);
        st.ldw = W.ld;
        st.seed = sr_seed_;
        st.offset = offset;
        if (wprec_ == hdpissa::WPrecision::Bf16Compensated) {
          compc_.push_back(bc_->make_matrix(W.rows, W.cols));
          bc_->fill(compc_.back().view(), Sc(0.0f));
          st.c = reinterpret_cast<std::uint16_t*>(compc_.back().view().data);
          st.ldc = compc_.back().view().ld;
        }
        w_offsets_.push_back(offset);
        offset += std::uint64_t(W.rows) * std::uint64_t(W.cols);
        upd.set_w_storage(i, st);
        w_storage_.push_back(st);
      }
    } else if constexpr (!std::is_same_v<typename Bm::memory_space, hdpissa::host_memory>) {
      (void)upd;
      throw LlamaError(cat("--w-precision ", hdpissa::w_precision_name(wprec_),
                           ": on the GPU the bf16 W policies need --dtype bf16 (W is the bf16 compute copy)"));
    } else {
      std::uint64_t offset = 0;
      for (std::size_t i = 0; i < ids_.size(); ++i) {
        const V32 W = Wm_[i];
        for (index_t r = 0; r < W.rows; ++r)
          for (index_t c = 0; c < W.cols; ++c) W.data[r * W.ld + c] = hdpissa::round_bf16(W.data[r * W.ld + c]);
        w_offsets_.push_back(offset);  // element indices of the SR stream: targets in order, row-major
        offset += std::uint64_t(W.rows) * std::uint64_t(W.cols);
        if (wprec_ == hdpissa::WPrecision::Bf16Compensated) {
          comp_.push_back(bm_->make_matrix(W.rows, W.cols));
          bm_->fill(comp_.back().view(), 0.0f);
        }
      }
      upd.set_w_apply([this](std::size_t i, CV32 delta) { apply_w(i, delta); });
    }
  }
  /// Folds the update Δ of target `i` into W by the policy's elementwise rule (host loop; CPU).
  void apply_w(std::size_t i, CV32 D) {
    const V32 W = Wm_[i];
    if (wprec_ == hdpissa::WPrecision::Bf16Compensated) {
      const V32 C = comp_[i].view();
      const hdpissa::Bf16Compensated rule{};
      for (index_t r = 0; r < W.rows; ++r)
        for (index_t c = 0; c < W.cols; ++c) rule(W.data[r * W.ld + c], C.data[r * C.ld + c], D.data[r * D.ld + c]);
    } else {
      const hdpissa::Bf16StochasticRounding rule{sr_seed_, std::uint64_t(w_step_)};
      for (index_t r = 0; r < W.rows; ++r)
        for (index_t c = 0; c < W.cols; ++c)
          rule(W.data[r * W.ld + c], D.data[r * D.ld + c], w_offsets_[i] + std::uint64_t(r * W.cols + c));
    }
  }
  /// One optimizer step of `upd` under the policy: SR's step number goes in (the GPU storage's
  /// stream; restored on resume), and counts applied steps only.
  template <class Upd>
  hdpissa::StepReport step_w(Upd& upd, double lr) {
    upd.set_w_step(std::uint64_t(w_step_));
    const auto rep = upd.step(lr);
    if (!rep.skipped) ++w_step_;
    return rep;
  }
  /// The policy's state: the Kahan compensation of every target (`wprec.<target>.compensation`; the
  /// GPU's bf16 buffer saved as its exact fp32 values, the CPU's format, restored exactly) and SR's
  /// step counter (`wprec.sr_step`).
  void add_w_precision_state(StateRefs& s) {
    for (std::size_t i = 0; i < comp_.size(); ++i)
      s.add("wprec." + ids_[i].hf_name() + ".compensation", comp_[i].view(), false);
    for (std::size_t i = 0; i < compc_.size(); ++i) {
      if constexpr (kMixed) {
        const Vc C = compc_[i].view();
        Bm* b = bm_;
        s.add_converted(
            "wprec." + ids_[i].hf_name() + ".compensation", C.rows, C.cols, false,
            [b, C](float* host) { Dev::download_compute(*b, CVc(C), host); },
            [b, C](const float* host) { Dev::upload_compute(*b, host, C); });
      }
    }
    if (wprec_ == hdpissa::WPrecision::Bf16StochasticRounding) s.counters.push_back({"wprec.sr_step", &w_step_, false});
  }

  Bm* bm_;
  Bc* bc_;
  std::function<Vc(LinearId)> weight_;
  std::vector<LinearId> ids_;
  std::vector<int> slots_;
  std::vector<V32> Wm_;                          // fp32 masters, one per target (empty if frozen_compute_)
  std::vector<typename Bm::matrix_type> own_;    // their storage when kMixed
  std::vector<Vc> Wc_;                           // the model's compute copies, one per target
  bool frozen_compute_ = false;                  // W kept only in the compute dtype (frozen, or a bf16 W policy)
  std::unique_ptr<std::conditional_t<kFp8Capable, Fp8, char>> fp8_;  // --compute fp8 (null: off)
  // --w-precision (setup_w_precision; fp32-master unless a method that updates W sets it up)
  hdpissa::WPrecision wprec_ = hdpissa::WPrecision::Fp32Master;
  std::uint64_t sr_seed_ = 0;
  long w_step_ = 0;                               // applied optimizer steps (the SR stream's step)
  std::vector<std::uint64_t> w_offsets_;          // first SR element index of each target
  std::vector<hdpissa::Bf16WStorage> w_storage_;   // per target: its bf16 W storage (GPU bf16 policies)
  std::pair<std::int64_t, std::int64_t> stacked_ga_{0, 0};  // stacked_ga_calls(): direct, through the scratch
  std::pair<std::int64_t, std::int64_t> stacked_calls_{0, 0};  // stacked_linear_calls()
  bool amax_in_update_ = false;                    // the FP8 amax slots come from the update (fp8_enabled)
  bool fp8_deferred_ = false;                      // FP8 copies follow per target after the step (refresh_fp8_due)
  std::vector<char> fp8_due_;                      // per target: its FP8 copy awaits the last step's W
  bool fp8_due_amax_ = false;                      // ... with the amax the update kept (step_updating_w)
  std::vector<typename Bm::matrix_type> comp_;    // Kahan compensation per target (bf16 values; CPU)
  std::vector<typename Bc::matrix_type> compc_;   // the same in bf16 storage (GPU, bf16 compute)

 private:
  /// Local group lg's view of the method: frozen linears pass through, targets go to the method.
  class GroupHooks final : public LinearHooks<Bc> {
   public:
    GroupHooks(TrainMethod& m, int lg) : LinearHooks<Bc>(*m.bc_), m_(&m), lg_(lg) {}
    void reserve(index_t max_tokens) override {
      m_->reserve_fp8(max_tokens);
      m_->reserve(max_tokens);
    }
    void forward(LinearId id, CVc W, CVc X, Vc Y) override {
      const int s = m_->slot(id);
      if (s < 0) return LinearHooks<Bc>::forward(id, W, X, Y);
      m_->await_w(std::size_t(s));
      m_->forward(lg_, std::size_t(s), W, X, Y);
    }
    void backward(LinearId id, CVc W, CVc X, CVc dY, Vc dX) override {
      const int s = m_->slot(id);
      if (s < 0) return LinearHooks<Bc>::backward(id, W, X, dY, dX);
      m_->backward(lg_, std::size_t(s), W, X, dY, dX);
    }
    /// Every linear a target (and at most 3): the method's shared-input forward; else one by one.
    void forward_shared(std::span<const typename LinearHooks<Bc>::SharedForwardLinear> lins, CVc X) override {
      std::array<SharedForwardCall, 3> calls{};
      bool all = !lins.empty() && lins.size() <= calls.size();
      for (std::size_t j = 0; j < lins.size(); ++j)  // every target member's W update in (await_w)
        if (const int s = m_->slot(lins[j].id); s >= 0) m_->await_w(std::size_t(s));
      for (std::size_t j = 0; all && j < lins.size(); ++j) {
        const int s = m_->slot(lins[j].id);
        all = s >= 0;
        calls[j] = {std::size_t(std::max(s, 0)), lins[j].W, lins[j].Y};
      }
      if (!all) {
        if (none_targets(lins))  // frozen members: the plain product, one GEMM when stacked
          if (const auto st = m_->stack_of(lins)) {
            using S = typename Bc::scalar_type;
            this->backend().gemm(hdpissa::Op::N, hdpissa::Op::T, S(1), X, st->W, S(0), mutable_view(st->Z));
            ++m_->stacked_calls_.first;
            return;
          }
        return LinearHooks<Bc>::forward_shared(lins, X);
      }
      m_->forward_shared(lg_, std::span<const SharedForwardCall>(calls.data(), lins.size()), X);
    }
    /// Every linear a target: the method's summed backward, if it offers one; frozen members: the
    /// plain dX = Σ dY_j W_j in one GEMM when stacked; else false.
    bool backward_shared_summed(std::span<const typename LinearHooks<Bc>::SharedLinear> lins, CVc X,
                                Vc dX_sum) override {
      std::array<SharedCall, 3> calls{};
      bool all = !lins.empty() && lins.size() <= calls.size();
      for (std::size_t j = 0; all && j < lins.size(); ++j) {
        const int s = m_->slot(lins[j].id);
        all = s >= 0;
        calls[j] = {std::size_t(std::max(s, 0)), lins[j].W, lins[j].dY, lins[j].dX};
      }
      if (all) return m_->backward_shared_summed(lg_, std::span<const SharedCall>(calls.data(), lins.size()), X, dX_sum);
      if (!none_targets(lins)) return false;
      const auto st = m_->stack_of(lins);
      if (!st) return false;
      using S = typename Bc::scalar_type;
      this->backend().gemm(hdpissa::Op::N, hdpissa::Op::N, S(1), st->Z, st->W, S(0), dX_sum);
      ++m_->stacked_calls_.second;
      return true;
    }
    /// Every linear a target (and at most 3): the method's shared-input backward; else one by one.
    void backward_shared(std::span<const typename LinearHooks<Bc>::SharedLinear> lins, CVc X) override {
      std::array<SharedCall, 3> calls{};
      bool all = !lins.empty() && lins.size() <= calls.size();
      for (std::size_t j = 0; all && j < lins.size(); ++j) {
        const int s = m_->slot(lins[j].id);
        all = s >= 0;
        calls[j] = {std::size_t(std::max(s, 0)), lins[j].W, lins[j].dY, lins[j].dX};
      }
      if (!all) return LinearHooks<Bc>::backward_shared(lins, X);
      m_->backward_shared(lg_, std::span<const SharedCall>(calls.data(), lins.size()), X);
    }
    /// --compute fp8: the FP8 copies' producer-kept amax (Fp8Linears::amax_hint); else none.
    float* amax_hint(const typename LinearHooks<Bc>::S* data, index_t rows, index_t cols, index_t ld) override {
      if constexpr (kFp8Capable) {
        if (m_->fp8_) return m_->fp8_->amax_hint(data, rows, cols, ld);
      }
      return nullptr;
    }
    void join_backward() override { m_->join_side(); }
    void join_backward_lagged() override { m_->join_side_lagged(); }
    void drop_amax_hints() override {
      if constexpr (kFp8Capable) {
        if (m_->fp8_) m_->fp8_->drop_amax_hints();
      }
    }

   private:
    template <class Lins>
    bool none_targets(const Lins& lins) const {
      for (const auto& l : lins)
        if (m_->slot(l.id) >= 0) return false;
      return !lins.empty();
    }
    static Vc mutable_view(CVc v) { return Vc{const_cast<typename Bc::scalar_type*>(v.data), v.rows, v.cols, v.ld}; }
    TrainMethod* m_;
    int lg_;
  };
  std::vector<std::unique_ptr<GroupHooks>> hooks_;
};

namespace detail {
/// A device policy's batch of compute-copy conversions (CudaDevice::compute_batch), or an empty
/// placeholder where the policy has none (fp32 compute: no compute copies).
struct NoComputeBatch {};
template <class Dev>
struct compute_batch_of {
  using type = NoComputeBatch;
};
template <class Dev>
  requires requires { typename Dev::compute_batch; }
struct compute_batch_of<Dev> {
  using type = typename Dev::compute_batch;
};
inline hdpissa::Adam make_adam(const TrainOptions& o) {
  return hdpissa::Adam(hdpissa::AdamConfig{0.9, 0.999, 1e-8, o.weight_decay});
}
/// --on-nonfinite as the update rules' options.
inline hdpissa::UpdateOptions update_options(const TrainOptions& o) {
  hdpissa::UpdateOptions u;
  u.on_non_finite = o.on_nonfinite == OnNonFinite::Skip ? hdpissa::NonFinitePolicy::SkipStep : hdpissa::NonFinitePolicy::Throw;
  u.exchange_bucket_bytes = std::size_t(o.exchange_bucket_mb * double(1 << 20));
  return u;
}
/// The factors of every target, computed layer l on worker l mod P and broadcast, with `Init`
/// templated on the SVD policy the options and the device choose.
template <class Dev, class Comm, template <class> class Init, class... Args>
auto init_with_svd(const TrainOptions& o, typename Dev::master_backend& b, Comm& comm,
                   const std::vector<hdpissa::LayerRef<typename Dev::master_backend>>& refs, int K, index_t r,
                   Args&&... args) {
  if (o.svd == SvdKind::Randomized)
    return hdpissa::init_adapters_distributed(b, comm, Init<typename Dev::randomized_svd>(args...), refs, K, r);
  return hdpissa::init_adapters_distributed(b, comm, Init<hdpissa::ExactSvd>(args...), refs, K, r);
}
template <class Svd>
struct OrthogonalInitOf : hdpissa::OrthogonalAdapterInit<Svd> {
  OrthogonalInitOf(int K, index_t r) : hdpissa::OrthogonalAdapterInit<Svd>(K, r) {}
};
template <class Svd>
struct PissaInitOf : hdpissa::PissaInit<Svd> {
  PissaInitOf(int K, index_t r) : hdpissa::PissaInit<Svd>{K, r, {}} {}
};
template <class Dev>
std::string svd_name(const TrainOptions& o) {
  return o.svd == SvdKind::Randomized ? Dev::randomized_svd_name : Dev::exact_svd_name;
}
template <class Set>
std::int64_t factor_count(const std::vector<Set>& sets) {
  std::int64_t n = 0;
  for (const auto& s : sets) n += std::int64_t(s.A.rows()) * s.A.cols() + std::int64_t(s.B.rows()) * s.B.cols();
  return n;
}
}  // namespace detail

/// HD-PiSSA and the DWU ablations: muted layers, per-group Adam, Direct Weight Update of W.
template <class Dev, class Comm, class Mute, class Agg>
class DwuMethod final : public TrainMethod<Dev> {
  using Base = TrainMethod<Dev>;
  using typename Base::Bm;
  using typename Base::Bc;
  using typename Base::CVc;
  using typename Base::Vc;
  using typename Base::CV32;
  using Base::kMixed;
  using Base::ids_;
  using Base::Wm_;
  using typename Base::V32;
  using typename Base::Sc;
  using Update = hdpissa::DirectWeightUpdate<Bm, hdpissa::Adam, Comm, Agg>;
  using AG = typename detail::AdapterGradsOf<Dev>::type;
  static constexpr bool kFusedGrads = !std::is_void_v<AG>;

 public:
  /// `resume`: a saved state to take the factors from (no SVD runs), or null for a fresh run.
  DwuMethod(const TrainOptions& o, const MethodContext<Dev, Comm>& ctx, Mute mute, const TrainState* resume)
      : Base(ctx, o.target_modules(), true, o.w_precision != hdpissa::WPrecision::Fp32Master),
        comm_(&ctx.comm),
        method_(o.method),
        svd_(detail::svd_name<Dev>(o)),
        upd_(ctx.bm, ctx.comm, detail::make_adam(o), detail::update_options(o)),
        muted_(ctx.bc, o.adapter_scaling(), mute) {
    const int K = ctx.comm.groups();
    const index_t r = o.rank;
    // Fail before any SVD: hdpissa needs K·r ≤ min(out, in) (orthogonal slices); the ablations
    // give every group its own rank-r adapter, so r ≤ min(out, in) suffices.
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      const auto [out, in] = this->shape(i);
      hdpissa::check_adapter_fits(ids_[i].hf_name(), out, in, o.method == Method::Hdpissa ? K : 1, r);
    }
    std::vector<hdpissa::AdapterSet<Bm>> sets;  // handed to the update (which keeps the only copy)
    hdpissa::memory::PartScope scope("dwu.factors");  // A is moved into the update: charged as its factors
    if (resume) {
      for (std::size_t i = 0; i < ids_.size(); ++i) {
        const auto [out, in] = this->shape(i);
        sets.push_back(hdpissa::make_adapter_set(ctx.bm, out, in, K, r));
        const std::string n = "adapter." + ids_[i].hf_name();
        ctx.bm.upload(resume->at(n + ".A", K * r, in, "resume").data.data(), sets.back().A.view());
        ctx.bm.upload(resume->at(n + ".B", out, K * r, "resume").data.data(), sets.back().B.view());
      }
    } else {
      // Without fp32 masters (a bf16 W policy on the GPU) the SVDs read the fp32 base W, uploaded P
      // layers at a time (P = workers: one init_adapters_distributed round, so every layer keeps
      // the owner one call would give it) and freed after; LoRA's init needs only the shapes.
      const std::size_t n = ids_.size();
      const bool fp32_scratch = this->frozen_compute_ && o.method != Method::LoraDwu;
      const std::size_t chunk = detail::init_chunk(n, std::size_t(ctx.comm.size()), fp32_scratch);
      for (std::size_t c0 = 0; c0 < n; c0 += chunk) {
        const std::size_t c1 = std::min(n, c0 + chunk);
        std::vector<typename Bm::matrix_type> tmp;
        std::vector<hdpissa::LayerRef<Bm>> refs;
        for (std::size_t i = c0; i < c1; ++i) {
          CV32 W;
          if (fp32_scratch) {
            const auto [out, in] = this->shape(i);
            hdpissa::memory::PartScope scratch_part("init.fp32-w-scratch");
            tmp.push_back(ctx.bm.make_matrix(out, in));
            this->base_w_fp32(ctx.host, i, tmp.back().view());
            W = CV32(tmp.back().view());
          } else if (this->frozen_compute_) {
            const auto [out, in] = this->shape(i);
            W = CV32{nullptr, out, in, in};
          } else {
            W = CV32(Wm_[i]);
          }
          refs.push_back({ids_[i].hf_name(), W});
        }
        std::vector<hdpissa::AdapterSet<Bm>> part;
        if (o.method == Method::LoraDwu) {
          const hdpissa::LoraInit lora{K, r, o.seed, /*same_on_all_groups=*/false};
          auto init = [&](Bm& b, CV32 W, const std::string& name) { return lora(b, W.rows, W.cols, name); };
          part = hdpissa::init_adapters_distributed(ctx.bm, ctx.comm, init, refs, K, r);
        } else if (o.method == Method::PissaDwu) {
          part = detail::init_with_svd<Dev, Comm, detail::PissaInitOf>(o, ctx.bm, ctx.comm, refs, K, r, K, r);
        } else {
          part = detail::init_with_svd<Dev, Comm, detail::OrthogonalInitOf>(o, ctx.bm, ctx.comm, refs, K, r, K, r);
        }
        for (auto& p : part) sets.push_back(std::move(p));
        ctx.bm.synchronize();  // the fp32 scratch is released only after its last use
        if (ctx.progress) ctx.progress(c1, n);
      }
    }
    index_t scratch = 0;
    trainable_ = detail::factor_count(sets);
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      const auto [out, in] = this->shape(i);
      upd_.add_layer(ids_[i].hf_name(), this->frozen_compute_ ? V32{nullptr, out, in, in} : Wm_[i], std::move(sets[i]));
      scratch = std::max(scratch, r * (out + in));
    }
    {
      hdpissa::memory::PartScope ex("dwu.exchange");
      upd_.finalize();
    }
    {
      hdpissa::memory::PartScope cp("adapter.compute-copies");
      // constant factors: compute copies made once; the gradient scratch only for ScaledMute (ExactMute's
      // gradient GEMMs write the fp32 sums directly)
      this->make_copies(cc_, stacked(), std::is_same_v<Mute, hdpissa::ExactMute> ? index_t(0) : scratch);
      if constexpr (kFusedGrads) {
        // HD-PiSSA's fused adapter gradients (bf16, exact mute, r = 16): Bᵀ copies of the factors.
        ag_on_ = kMixed && std::is_same_v<Mute, hdpissa::ExactMute> && r == 16 && AG::enabled_by_env();
        if (ag_on_) {
          for (std::size_t i = 0; i < ids_.size(); ++i) {
            const auto [out, in] = this->shape(i);
            (void)in;
            bt_.push_back(this->bc_->make_matrix(K * r, out));
          }
          fill_bt();
        }
      }
      make_stacks();
      if constexpr (Base::kHasSide && kMixed && std::is_same_v<Mute, hdpissa::ExactMute>) {
        if (!ag_on_ && env_adapter_stream()) {  // the adapter-gradient GEMMs on a second stream
          hdpissa::memory::PartScope sp("adapter.side-stream");
          this->side_ = std::make_unique<typename Base::Side>(env_adapter_stream_priority());
          muted_side_ = std::make_unique<hdpissa::MutedLinear<Bc, Mute>>(this->side_->backend(), muted_.scaling(),
                                                                         Mute{});
        }
      }
    }
    hdpissa::memory::PartScope wp("w-precision.state");
    this->setup_w_precision(o, upd_);
    // HDPISSA_DWU_OVERLAP: the step's W updates run beside the next forward (a bf16 W storage on
    // the GPU, whose low-rank updates take the apply streams; the forward hooks wait per target)
    graphs_ = o.cuda_graphs;
    if constexpr (kMixed)
      if (this->frozen_compute_ && env_dwu_overlap()) {
        upd_.set_deferred_apply_join(true);
        // tests (HDPISSA_TEST_DWU_SIDE_SPIN = SM cycles): each side update first spins, so a forward
        // that skipped its wait would read the old W
        if constexpr (requires { upd_.kernels().set_apply_side_spin_for_tests(1LL); })
          if (const auto c = env_row_count("HDPISSA_TEST_DWU_SIDE_SPIN", 0, 1L << 30, "a cycle count"))
            upd_.kernels().set_apply_side_spin_for_tests(*c);
      }
  }

  void zero_grad() override {
    this->join_side();
    upd_.zero_grad();
  }
  hdpissa::StepReport step(double lr) override {
    this->join_side();  // the adapter gradients' last GEMMs (the model's backward ends with a full join too)
    settle();  // nothing of the last step left in flight or due (its FP8 amax slots are reset next)
    return this->step_updating_w(upd_, lr);
  }
  void fp8_enabled() override {
    this->amax_in_update_ = this->w_storage_amax(upd_);
    // with the overlap the FP8 copies follow W per target at its first forward after the step —
    // a host decision, which a replayed graph would not repeat: with --cuda-graphs the step joins
    if (graphs_) upd_.set_deferred_apply_join(false);
    this->fp8_deferred_ = upd_.deferred_apply_join();
  }
  void await_w(std::size_t s) override {
    upd_.wait_layer(s);  // layers added in target order
    this->refresh_fp8_due(s);
  }
  void settle() override {
    upd_.join();
    for (std::size_t i = 0; i < ids_.size(); ++i) this->refresh_fp8_due(i);
  }
  void refresh() override {
    settle();
    for (std::size_t i = 0; i < ids_.size(); ++i) this->push_weight(i);
    this->refresh_copies(cc_, stacked());
    if constexpr (kFusedGrads) fill_bt();
    fill_stacks();
    this->refresh_fp8();
  }
  /// W (a bf16 W policy: the model's bf16 W, widened exactly).
  void merged_weight(std::size_t i, Matrix& host) override { this->download(i, host); }
  void state(StateRefs& s) override {
    this->add_weights(s);
    this->add_w_precision_state(s);  // the Kahan compensation of every target, the SR step counter
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      const std::string n = ids_[i].hf_name();
      s.add("adapter." + n + ".A", upd_.stacked_A(i), false);
      const V32 B = upd_.stacked_B(i);  // strided (inside the update's [dB | B]): through get / set
      Bm* bm = this->bm_;
      s.add_converted("adapter." + n + ".B", B.rows, B.cols, false, [bm, B](float* h) { bm->download(CV32(B), h); },
                      [bm, B](const float* h) { bm->upload(h, B); });
      for (int lg = 0; lg < comm_->local_groups(); ++lg) {
        const std::string g = cat(".g", comm_->first_group() + lg);
        s.add_adam("adam." + n + g + ".A", upd_.state_A(i, lg), true);
        s.add_adam("adam." + n + g + ".B", upd_.state_B(i, lg), true);
      }
    }
  }
  void verify_replicas() override { upd_.verify_replicas(); }
  [[nodiscard]] std::int64_t trainable_parameters() const override { return trainable_; }
  [[nodiscard]] std::string describe() const override {
    std::string init = method_ == Method::Hdpissa   ? cat("OrthogonalAdapterInit<", svd_, ">")
                       : method_ == Method::LoraDwu ? std::string("LoraInit (distinct seed per group)")
                                                    : cat("PissaInit<", svd_, "> (top-r on every group)");
    return cat(init, " + MutedLinear<", Mute::name(), "> (scaling ", muted_.scaling(), ") + DirectWeightUpdate<",
               Agg::name(), "> with per-group Adam", Dev::backend_note, "; K = ", comm_->groups(), ", r = ", upd_.rank(),
               "; W ", hdpissa::w_precision_name(this->wprec_),
               comm_->size() > 1 ? cat("; deltas all-gathered in ", upd_.collectives_per_step(), " bucket(s) per step")
                                 : std::string());
  }
  /// The update rule (for tests and diagnostics).
  Update& update() { return upd_; }
  /// The factors of target slot i (K groups stacked; views into the update, which keeps them).
  struct Factors {
    CV32 A, B;  // (K·r, in), (out, K·r)
    index_t rank = 0;
    CV32 A_of(int g) const { return A.row_block(g * rank, rank); }
    CV32 B_of(int g) const { return B.col_block(g * rank, rank); }
  };
  Factors factors(std::size_t i) {
    return {CV32(upd_.stacked_A(i)), CV32(upd_.stacked_B(i)), upd_.rank()};
  }
  [[nodiscard]] double scaling() const { return muted_.scaling(); }

 protected:
  void reserve(index_t max_tokens) override {
    if (max_tokens <= reserved_) return;
    reserved_ = max_tokens;
    hdpissa::memory::PartScope part("adapter.scratch");
    index_t widths = 0;
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      const auto [out, in] = this->shape(i);
      muted_.reserve(max_tokens, out, in, upd_.rank());
      widths = std::max(widths, out + in);
    }
    if (!stacks_.empty()) muted_.reserve_shared(max_tokens, 3, upd_.rank());
    if (muted_side_) {
      for (std::size_t i = 0; i < ids_.size(); ++i) {
        const auto [out, in] = this->shape(i);
        muted_side_->reserve(max_tokens, out, in, upd_.rank());
      }
      if (!stacks_.empty()) muted_side_->reserve_shared(max_tokens, 3, upd_.rank());
    }
    if constexpr (kFusedGrads)
      if (ag_on_) ag_.reserve(max_tokens, widths, this->bc_->stream());
  }
  /// q|k|v and gate|up (exact mute, no FP8 copy, stored stacked by the model): the muted forward
  /// Y_j = X W_jᵀ of the group in one GEMM. Else one forward() each.
  void forward_shared(int lg, std::span<const typename Base::SharedForwardCall> calls, CVc X) override {
    if constexpr (std::is_same_v<Mute, hdpissa::ExactMute>) {
      if (!any_fp8(calls))
        if (const auto st = this->stack_of(calls)) {
          const Vc Y{const_cast<Sc*>(st->Z.data), st->Z.rows, st->Z.cols, st->Z.ld};
          this->bc_->gemm(hdpissa::Op::N, hdpissa::Op::T, Sc(1), X, st->W, Sc(0), Y);
          ++this->stacked_calls_.first;
          return;
        }
    }
    Base::forward_shared(lg, calls, X);
  }
  /// q|k|v and gate|up (bf16 compute, exact mute, all targets, stored stacked):
  /// MutedLinear::backward_stacked — the group's dX summed in one GEMM over [W_q; W_k; W_v], the
  /// adapters' dY B_j in one over the block-diagonal B copy, then the stacked gA and the gB_j as
  /// backward_shared. With --compute fp8 on every member, the dX_j from the FP8 copies, summed by
  /// the FP8 GEMMs' β into dX_sum (one buffer for the RMSNorm backward instead of n), the adapter
  /// gradients as without FP8 (on the second stream when it is on). False (nothing done)
  /// otherwise: the model then calls backward_shared().
  bool backward_shared_summed(int lg, std::span<const typename Base::SharedCall> calls, CVc X, Vc dX_sum) override {
    if constexpr (kMixed && std::is_same_v<Mute, hdpissa::ExactMute>) {
      if (ag_on_) return false;
      // --compute fp8: every member's dX from its FP8 copy, added into dX_sum by the FP8 GEMMs'
      // β (one buffer for the RMSNorm backward to read); a group with some members in bf16 and some
      // in FP8 keeps the per-member path
      const bool fp8 = any_fp8(calls);
      if (fp8 && !all_fp8(calls)) return false;
      const Stack* st = find_stack(calls);
      if (!st || !st->Bd.view().data) return false;
      const auto sl = this->stack_in_order(calls, st->slots);  // W order = the stack's (module) order
      if (!sl) return false;
      const index_t r = upd_.rank(), n = index_t(st->n);
      const int G = comm_->first_group() + lg;
      std::array<V32, 3> gB{};
      for (std::size_t p = 0; p < st->n; ++p) gB[p] = upd_.grad_B(st->slots[p], lg);
      const auto [gA, adjacent] = stacked_ga(*st, lg);
      // with the second stream (and the sums adjacent): the adapter gradients there, dX_sum here
      const bool side = muted_side_ && adjacent;
      if (side) this->side_fork();
      (side ? *muted_side_ : muted_)
          .backward_stacked(X, sl->W, CVc(st->A.view()).row_block(G * n * r, n * r),
                            CVc(st->Bd.view()).col_block(index_t(lg) * n * r, n * r), sl->Z,
                            std::span<const index_t>(st->outs.data(), st->n), (side || fp8) ? Vc{} : dX_sum,
                            std::span<const V32>(gB.data(), st->n), gA, /*accumulate=*/true,
                            /*accumulate_gA=*/adjacent);
      if (fp8) {
        hdpissa::require_shape(dX_sum, X.rows, X.cols, "backward_shared_summed dX_sum");
        if constexpr (Base::kFp8Capable) {
          for (std::size_t p = 0; p < st->n; ++p) {  // in the stack's (module) order
            const auto& c = calls[sl->order[p]];
            this->fp8_->backward_dx(c.slot, c.dY, dX_sum, p == 0 ? 0.0f : 1.0f);
          }
        }
      } else if (side) {
        hdpissa::require_shape(dX_sum, X.rows, X.cols, "backward_shared_summed dX_sum");
        this->bc_->gemm(hdpissa::Op::N, hdpissa::Op::N, Sc(1), sl->Z, sl->W, Sc(0), dX_sum);
      }
      ++(adjacent ? this->stacked_ga_.first : this->stacked_ga_.second);
      ++this->stacked_calls_.second;
      if (!adjacent) this->add_stacked_ga(gA, n, r, grad_a_of(*st, lg));
      return true;
    } else {
      (void)lg, (void)calls, (void)X, (void)dX_sum;
      return false;
    }
  }
  void forward(int lg, std::size_t i, CVc W, CVc X, Vc Y) override {
    if constexpr (Base::kFp8Capable && std::is_same_v<Mute, hdpissa::ExactMute>) {
      // --compute fp8 (ExactMute only; validated): the muted forward is the base product alone.
      if (this->fp8_on(i)) return this->fp8_->forward(i, X, Y, 0.0f);
    }
    muted_.forward(W, A(i, lg), Bf(i, lg), X, Y);
  }
  /// q|k|v and gate|up (bf16 compute, exact mute, all targets): X is read twice for the group
  /// (MutedLinear::backward_shared over the stacked A copies) instead of twice per linear; the
  /// stacked gA GEMM adds straight into the members' adjacent fp32 sums (else into a scratch, then
  /// one add per member). Else (or with the
  /// fused kernels, which go linear by linear) one backward() each.
  void backward_shared(int lg, std::span<const typename Base::SharedCall> calls, CVc X) override {
    if constexpr (kMixed && std::is_same_v<Mute, hdpissa::ExactMute>) {
      if (!ag_on_)
        if (const Stack* st = find_stack(calls)) return shared_backward(lg, *st, calls, X);
    }
    Base::backward_shared(lg, calls, X);
  }
  void backward(int lg, std::size_t i, CVc W, CVc X, CVc dY, Vc dX) override {
    if constexpr (kFusedGrads)
      if (ag_on_ && fused_backward(lg, i, W, X, dY, dX)) return;
    if constexpr (!kMixed) {
      muted_.backward(W, A(i, lg), Bf(i, lg), X, dY, dX, upd_.grad_A(i, lg), upd_.grad_B(i, lg), /*accumulate=*/true);
    } else {
      // --compute fp8: dX = dY W from the FP8 copy; the adapter gradients stay bf16 (no dX there).
      const bool fp8 = std::is_same_v<Mute, hdpissa::ExactMute> && this->fp8_on(i);
      if constexpr (std::is_same_v<Mute, hdpissa::ExactMute>) {
        if (muted_side_) {
          // the adapter gradients on the second stream (after this stream's producers of X and dY),
          // dX here: the two run side by side (the model joins before it rewrites X or dY)
          this->side_fork();
          muted_side_->backward(W, A(i, lg), Bf(i, lg), X, dY, Vc{}, upd_.grad_A(i, lg), upd_.grad_B(i, lg),
                                /*accumulate=*/true);
          if constexpr (Base::kFp8Capable) {
            if (fp8 && dX.data) return this->fp8_->backward_dx(i, dY, dX, 0.0f);
          }
          if (dX.data) {
            hdpissa::require_shape(dX, X.rows, W.cols, "MutedLinear dX");
            this->bc_->gemm(hdpissa::Op::N, hdpissa::Op::N, Sc(1), dY, W, Sc(0), dX);  // MutedLinear's dX GEMM
          }
          return;
        }
      }
      if constexpr (Base::kFp8Capable) {
        if (fp8 && dX.data) this->fp8_->backward_dx(i, dY, dX, 0.0f);
      }
      if constexpr (std::is_same_v<Mute, hdpissa::ExactMute>) {
        // the two gradient GEMMs add their fp32 results straight into the fp32 sums
        muted_.backward(W, A(i, lg), Bf(i, lg), X, dY, fp8 ? Vc{} : dX, upd_.grad_A(i, lg), upd_.grad_B(i, lg),
                        /*accumulate=*/true);
      } else {
        const auto [out, in] = this->shape(i);
        const index_t r = upd_.rank();
        Vc gA{cc_.g.data(), r, in, in}, gB{cc_.g.data() + r * in, out, r, r};
        muted_.backward(W, A(i, lg), Bf(i, lg), X, dY, fp8 ? Vc{} : dX, gA, gB, /*accumulate=*/false);
        this->accumulate(CVc(gA), upd_.grad_A(i, lg));
        this->accumulate(CVc(gB), upd_.grad_B(i, lg));
      }
    }
  }

 private:
  /// Every target's stacked factors (views into the update), as make_copies / refresh_copies read them.
  struct Stacked {
    V32 A, B;
  };
  std::vector<Stacked> stacked() {
    std::vector<Stacked> out;
    for (std::size_t i = 0; i < ids_.size(); ++i) out.push_back({upd_.stacked_A(i), upd_.stacked_B(i)});
    return out;
  }
  /// The fused adapter-gradient path (adapter_grads.cuh): dX as MutedLinear computes it (the same
  /// GEMM, or the FP8 one), then gA, gB accumulated in fp32 by two kernels. False (nothing done)
  /// when the kernels do not take the operands: the caller runs MutedLinear.
  bool fused_backward(int lg, std::size_t i, CVc W, CVc X, CVc dY, Vc dX) {
    if constexpr (kFusedGrads) {
      const index_t r = upd_.rank();
      const int G = comm_->first_group() + lg;
      const CVc Bt = CVc(bt_[i].view()).row_block(G * r, r);
      const V32 gA = upd_.grad_A(i, lg), gB = upd_.grad_B(i, lg);
      if (!AG::usable(X, dY, A(i, lg), Bt, gA, gB) || W.cols != X.cols || W.rows != dY.cols) return false;
      bool fp8 = false;
      if constexpr (Base::kFp8Capable) fp8 = this->fp8_on(i);
      if (dX.data) {
        if constexpr (Base::kFp8Capable)
          if (fp8) this->fp8_->backward_dx(i, dY, dX, 0.0f);
        if (!fp8) {
          hdpissa::require_shape(dX, X.rows, W.cols, "MutedLinear dX");
          this->bc_->gemm(hdpissa::Op::N, hdpissa::Op::N, Sc(1), dY, W, Sc(0), dX);  // MutedLinear's dX GEMM
        }
      }
      ag_.run(this->bc_->stream(), X, dY, A(i, lg), Bt, float(muted_.scaling()), gA, gB);
      return true;
    } else {
      (void)lg, (void)i, (void)W, (void)X, (void)dY, (void)dX;
      return false;
    }
  }
  /// A shared-input group of targets (kSharedInputAttention or kSharedInputMlp of one layer, every
  /// member a target, bf16 compute, exact mute): their slots in module order (q, k, v; gate, up: the
  /// order of their gA in the update's gradients) and the stacked compute copies of their A, per
  /// group g rows [g·n·r, (g+1)·n·r) = [A_0(g); …; A_{n-1}(g)].
  struct Stack {
    std::array<std::size_t, 3> slots{};
    std::size_t n = 0;
    typename Bc::matrix_type A;  // (K·n·r, in)
    // backward_stacked's B_diag per local group lg: columns [lg·n·r, (lg+1)·n·r) of (O, local·n·r)
    // hold blockdiag(B_0(G), …, B_{n-1}(G)), G = first_group + lg (zeros off the blocks); O = Σ outs
    typename Bc::matrix_type Bd;
    std::array<index_t, 3> outs{};
  };
  /// Any member with an FP8 copy (--compute fp8): those keep the per-member path.
  template <class Calls>
  bool any_fp8(const Calls& calls) const {
    if constexpr (Base::kFp8Capable) {
      for (const auto& c : calls)
        if (this->fp8_on(c.slot)) return true;
    }
    (void)calls;
    return false;
  }
  /// Every member with an FP8 copy (--compute fp8 covering the whole group).
  template <class Calls>
  bool all_fp8(const Calls& calls) const {
    if constexpr (Base::kFp8Capable) {
      for (const auto& c : calls)
        if (!this->fp8_on(c.slot)) return false;
      return !calls.empty();
    }
    (void)calls;
    return false;
  }
  /// The members' fp32 gA sums, if they are adjacent rows of the update's flat gradients (the DWU
  /// lays a layer's gA out back to back): one (n·r, in) view the stacked GEMM adds into; else the
  /// scratch (overwritten, then added to each sum). Second: adjacent.
  std::pair<V32, bool> stacked_ga(const Stack& st, int lg) {
    return Base::stacked_ga(grad_a_of(st, lg), index_t(st.n), upd_.rank(), st.A.view().cols, ga_stack_.view().data);
  }
  /// Member p's fp32 gA sum of local group lg.
  auto grad_a_of(const Stack& st, int lg) {
    return [this, &st, lg](index_t p) { return upd_.grad_A(st.slots[std::size_t(p)], lg); };
  }
  void make_stacks() {
    if constexpr (kMixed && std::is_same_v<Mute, hdpissa::ExactMute>) {
      if (ids_.empty()) return;
      const index_t r = upd_.rank(), K = comm_->groups();
      auto add = [&](int l, std::span<const Module> mods) {
        Stack st;
        for (Module m : mods) {
          const int s = this->slot(LinearId{l, m});
          if (s < 0) return;
          st.slots[st.n++] = std::size_t(s);
        }
        const auto [out, in] = this->shape(st.slots[0]);
        (void)out;
        st.A = this->bc_->make_matrix(K * index_t(st.n) * r, in);
        index_t O = 0;
        for (std::size_t j = 0; j < st.n; ++j) O += (st.outs[j] = this->shape(st.slots[j]).first);
        if (this->stacked_on_ && !ag_on_) {  // zeros off the diagonal blocks, set once (fill_stacks writes the blocks)
          st.Bd = this->bc_->make_matrix(O, index_t(comm_->local_groups()) * index_t(st.n) * r);
          this->bc_->fill(st.Bd.view(), typename Bc::compute_type(0));
        }
        stacks_.push_back(std::move(st));
      };
      // Members in module (forward) order, the order of their gA in the update's flat gradients, so
      // the stacked gA GEMM can add straight into them (shared_backward); the model's backward calls
      // them in kSharedInputAttention / kSharedInputMlp order (v, k, q; up, gate): matched by slot.
      static constexpr std::array<Module, 3> kAttn{Module::q, Module::k, Module::v};
      static constexpr std::array<Module, 2> kMlp{Module::gate, Module::up};
      for (int l = 0; l <= ids_.back().layer; ++l) {
        add(l, kAttn);
        add(l, kMlp);
      }
      index_t widest = 0;
      for (const auto& st : stacks_) widest = std::max(widest, index_t(st.n) * r * st.A.view().cols);
      if (widest > 0) ga_stack_ = this->bm_->make_matrix(1, widest);
      fill_stacks();
    }
  }
  /// The stacked A copies ← the compute copies of A (setup and refresh()).
  void fill_stacks() {
    const index_t r = upd_.rank();
    for (auto& st : stacks_) {
      const index_t n = index_t(st.n);
      for (int g = 0; g < comm_->groups(); ++g)
        for (index_t j = 0; j < n; ++j)
          this->bc_->copy(CVc(cc_.A[st.slots[std::size_t(j)]].view()).row_block(g * r, r),
                          st.A.view().row_block((g * n + j) * r, r));
      if (!st.Bd.view().data) continue;
      for (int lg = 0; lg < comm_->local_groups(); ++lg) {
        const int G = comm_->first_group() + lg;
        index_t o = 0;
        for (index_t j = 0; j < n; ++j) {
          const index_t w = st.outs[std::size_t(j)];
          this->bc_->copy(CVc(cc_.B[st.slots[std::size_t(j)]].view()).col_block(G * r, r),
                          st.Bd.view().block(o, (index_t(lg) * n + j) * r, w, r));
          o += w;
        }
      }
    }
  }
  /// The stack whose members are exactly these calls' targets, each once, in any order.
  const Stack* find_stack(std::span<const typename Base::SharedCall> calls) const {
    for (const auto& st : stacks_) {
      if (st.n != calls.size()) continue;
      bool all = true;
      for (std::size_t p = 0; p < st.n && all; ++p) {
        int hits = 0;
        for (const auto& c : calls) hits += c.slot == st.slots[p];
        all = hits == 1;
      }
      if (all) return &st;
    }
    return nullptr;
  }
  void shared_backward(int lg, const Stack& st, std::span<const typename Base::SharedCall> calls, CVc X) {
    if constexpr (kMixed && std::is_same_v<Mute, hdpissa::ExactMute>) {
      const index_t r = upd_.rank(), n = index_t(st.n);
      const int G = comm_->first_group() + lg;
      using SI = typename hdpissa::MutedLinear<Bc, Mute>::template SharedInput<float>;
      std::array<SI, 3> lin{};
      for (std::size_t j = 0; j < st.n; ++j) {  // in the stack's order (find_stack matched the set)
        std::size_t at = 0;
        while (calls[at].slot != st.slots[j]) ++at;
        const auto& c = calls[at];
        bool fp8 = false;
        if constexpr (Base::kFp8Capable) {
          fp8 = this->fp8_on(c.slot);
          if (fp8 && c.dX.data) this->fp8_->backward_dx(c.slot, c.dY, c.dX, 0.0f);  // dX from the FP8 copy
        }
        lin[j] = SI{c.W, Bf(c.slot, lg), c.dY, fp8 ? Vc{} : c.dX, upd_.grad_B(c.slot, lg)};
      }
      // the stacked GEMM adds into the members' adjacent fp32 gA sums, else into a scratch
      const auto [gA, adjacent] = stacked_ga(st, lg);
      // the gB_j are the fp32 sums (added to)
      muted_.backward_shared(X, CVc(st.A.view()).row_block(G * n * r, n * r), std::span<const SI>(lin.data(), st.n), gA,
                             /*accumulate=*/true, /*accumulate_gA=*/adjacent);
      ++(adjacent ? this->stacked_ga_.first : this->stacked_ga_.second);
      if (!adjacent) this->add_stacked_ga(gA, n, r, grad_a_of(st, lg));
    } else {
      (void)lg, (void)st, (void)calls, (void)X;
    }
  }
  /// The Bᵀ copies ← the compute copies of B (setup and refresh()).
  void fill_bt() {
    if constexpr (kFusedGrads)
      for (std::size_t i = 0; i < bt_.size(); ++i)
        AG::transpose_into(this->bc_->stream(), CVc(cc_.B[i].view()), bt_[i].view());
  }
  /// Group (first_group + lg)'s factors in the compute dtype.
  CVc A(std::size_t i, int lg) const {
    const int G = comm_->first_group() + lg;
    if constexpr (!kMixed) return upd_.A(i, G);
    else return CVc(cc_.A[i].view()).row_block(G * upd_.rank(), upd_.rank());
  }
  CVc Bf(std::size_t i, int lg) const {
    const int G = comm_->first_group() + lg;
    if constexpr (!kMixed) return upd_.Bf(i, G);
    else return CVc(cc_.B[i].view()).col_block(G * upd_.rank(), upd_.rank());
  }

  Comm* comm_;
  Method method_;
  std::string svd_;
  Update upd_;
  hdpissa::MutedLinear<Bc, Mute> muted_;
  std::unique_ptr<hdpissa::MutedLinear<Bc, Mute>> muted_side_;  // on side_'s backend (HDPISSA_ADAPTER_STREAM)
  std::int64_t trainable_ = 0;
  typename Base::ComputeCopies cc_;  // compute copies of the factors, gradient scratch (kMixed)
  index_t reserved_ = 0;
  // the fused adapter gradients (Dev::adapter_grads; an empty stand-in where the device has none)
  struct NoAdapterGrads {};
  std::conditional_t<kFusedGrads, AG, NoAdapterGrads> ag_;
  bool ag_on_ = false;
  bool graphs_ = false;  // --cuda-graphs: the forward's waits are captured (DwuKernels::wait_layer)
  std::vector<typename Bc::matrix_type> bt_;  // per target: Bᵀ (K·r, out) of the compute copy
  std::vector<Stack> stacks_;                 // shared-input groups (backward_shared)
  typename Bm::matrix_type ga_stack_{};       // their stacked fp32 gA (one micro-batch's)
};

/// LoRA / PiSSA: an active adapter per target, trained data-parallel (gradients averaged over K).
template <class Dev, class Comm>
class AdapterMethod final : public TrainMethod<Dev> {
  using Base = TrainMethod<Dev>;
  using typename Base::Bm;
  using typename Base::Bc;
  using typename Base::CVc;
  using typename Base::Vc;
  using typename Base::V32;
  using typename Base::CV32;
  using Base::kMixed;
  using Base::ids_;
  using Base::Wm_;
  using Update = hdpissa::DataParallelUpdate<Bm, hdpissa::Adam, Comm>;

 public:
  /// `resuming`: the factors, W_res and moments come from restore() (no initialisation runs).
  AdapterMethod(const TrainOptions& o, const MethodContext<Dev, Comm>& ctx, bool resuming)
      : Base(ctx, o.target_modules(), /*updates_w=*/false),
        comm_(&ctx.comm),
        method_(o.method),
        upd_(ctx.bm, ctx.comm, detail::make_adam(o), detail::update_options(o)),
        lin_(ctx.bc, o.adapter_scaling()) {
    hdpissa::memory::PartScope scope("adapter.factors");
    const index_t r = o.rank;
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      const auto [out, in] = this->shape(i);
      hdpissa::check_adapter_fits(ids_[i].hf_name(), out, in, 1, r);
    }
    if (resuming) {
      for (std::size_t i = 0; i < ids_.size(); ++i) {
        const auto [out, in] = this->shape(i);
        sets_.push_back(hdpissa::make_adapter_set(ctx.bm, out, in, 1, r));
      }
    } else if (o.method == Method::Lora) {  // LoRA's init needs only the shapes
      std::vector<hdpissa::LayerRef<Bm>> refs;
      for (std::size_t i = 0; i < ids_.size(); ++i) {
        const auto [out, in] = this->shape(i);
        refs.push_back({ids_[i].hf_name(), CV32{nullptr, out, in, in}});
      }
      const hdpissa::LoraInit lora{1, r, o.seed, /*same_on_all_groups=*/true};
      auto init = [&](Bm& b, CV32 W, const std::string& name) { return lora(b, W.rows, W.cols, name); };
      sets_ = hdpissa::init_adapters_distributed(ctx.bm, ctx.comm, init, refs, 1, r);
    } else {
      // PiSSA. Without fp32 masters (bf16 compute) W is formed in fp32 only for P layers at a time
      // (P = workers: the layers one init_adapters_distributed round spreads, so every layer has the
      // owner it would have in one call), W_res computed in fp32 and rounded once into the model's
      // bf16 copy; the fp32 scratch is freed before the next P layers.
      const std::size_t n = ids_.size();
      const std::size_t chunk = detail::init_chunk(n, std::size_t(ctx.comm.size()), this->frozen_compute_);
      for (std::size_t c0 = 0; c0 < n; c0 += chunk) {
        const std::size_t c1 = std::min(n, c0 + chunk);
        std::vector<typename Bm::matrix_type> tmp;
        std::vector<V32> W;
        std::vector<hdpissa::LayerRef<Bm>> refs;
        for (std::size_t i = c0; i < c1; ++i) {
          if (this->frozen_compute_) {
            const auto [out, in] = this->shape(i);
            hdpissa::memory::PartScope scratch_part("init.fp32-w-scratch");
            tmp.push_back(ctx.bm.make_matrix(out, in));
            this->base_w_fp32(ctx.host, i, tmp.back().view());
            W.push_back(tmp.back().view());
          } else {
            W.push_back(Wm_[i]);
          }
          refs.push_back({ids_[i].hf_name(), CV32(W.back())});
        }
        auto part = detail::init_with_svd<Dev, Comm, detail::PissaInitOf>(o, ctx.bm, ctx.comm, refs, 1, r, 1, r);
        // PEFT's PiSSA: A = √(S/s) Vᵀ, B = U √(S/s), so that s·B A is the principal part U S Vᵀ
        // whatever the scaling s (no-op, bit for bit, at s = 1).
        const double s = lin_.scaling();
        for (std::size_t j = 0; j < part.size() && s != 1.0; ++j) {
          ctx.bm.scale(part[j].A.view(), float(1.0 / std::sqrt(s)));
          ctx.bm.scale(part[j].B.view(), float(1.0 / std::sqrt(s)));
        }
        for (std::size_t j = 0; j < part.size(); ++j) {  // W_res = W − s·B A (fp32), then the compute copy
          hdpissa::subtract_adapter(ctx.bm, W[j], part[j], 0, s);
          if constexpr (kMixed) Dev::to_compute(ctx.bm, CV32(W[j]), this->weight_(ids_[c0 + j]));
          sets_.push_back(std::move(part[j]));
        }
        ctx.bm.synchronize();  // the fp32 scratch is released only after its last use
        if (ctx.progress) ctx.progress(c1, n);
      }
    }
    // Every A first, then every B: the update's flat gradient buffer then holds consecutive
    // targets' gA as adjacent rows, so a shared-input group (q, k, v; gate, up) adds its stacked gA
    // GEMM into them directly (backward_shared).
    for (std::size_t i = 0; i < ids_.size(); ++i) pA_.push_back(upd_.add_param(ids_[i].hf_name() + ".lora_A", sets_[i].A.view()));
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      pB_.push_back(upd_.add_param(ids_[i].hf_name() + ".lora_B", sets_[i].B.view()));
      const auto [out, in] = this->shape(i);
      merge_size_ = std::max(merge_size_, out * in);
    }
    upd_.finalize();
    hdpissa::memory::PartScope cp("adapter.compute-copies");
    this->make_copies(cc_, sets_, 0);  // no gradient scratch: the gradient GEMMs write the fp32 sums
    make_stacks();
    make_copy_batch();
    if constexpr (Base::kHasSide && kMixed) {
      if (!ids_.empty() && env_adapter_stream()) {  // the gA, gB GEMMs on a second stream
        hdpissa::memory::PartScope sp("adapter.side-stream");
        this->side_ = std::make_unique<typename Base::Side>(env_adapter_stream_priority());
        lin_side_ = std::make_unique<hdpissa::AdapterLinear<Bc>>(this->side_->backend(), lin_.scaling());
      }
    }
  }

  void zero_grad() override {
    this->join_side();
    upd_.zero_grad();
  }
  hdpissa::StepReport step(double lr) override {
    this->join_side();  // the gradient GEMMs of the last stacked groups
    const auto rep = upd_.step(lr);
    if (!rep.skipped) {
      // A and B train: their compute copies and the stacked A copies follow every step
      if constexpr (kMixed) Dev::run_compute_batch(*this->bm_, copy_batch_);
    }
    return rep;
  }
  void refresh() override {
    for (std::size_t i = 0; i < ids_.size(); ++i) this->push_weight(i);
    if constexpr (kMixed) Dev::run_compute_batch(*this->bm_, copy_batch_);  // restored A, B: their copies
    this->refresh_fp8();  // a restored W_res
  }
  /// W_res + s·B A, computed by the master backend in fp32 (not a hot path). With bf16 compute the
  /// W_res term is the bf16 W the model trained with, widened exactly to fp32: the merge differs
  /// from an fp32-master merge only by W_res's one bf16 rounding (|Δ| ≤ 2⁻⁹·|W_res| per element).
  void merged_weight(std::size_t i, Matrix& host) override {
    if (merge_.rows() == 0) {
      hdpissa::memory::PartScope part("export.merge-scratch");
      merge_ = this->bm_->make_matrix(1, merge_size_);
    }
    const auto [out, in] = this->shape(i);
    V32 M{merge_.data(), out, in, in};
    if constexpr (kMixed) Dev::to_master(*this->bm_, CVc(this->Wc_[i]), M);
    else this->bm_->copy(CV32(Wm_[i]), M);
    this->bm_->gemm(hdpissa::Op::N, hdpissa::Op::N, float(lin_.scaling()), CV32(sets_[i].B.view()),
                    CV32(sets_[i].A.view()), 1.0f, M);
    host.resize(out, in);
    this->bm_->download(CV32(M), host.data());
    this->bm_->synchronize();
  }
  void state(StateRefs& s) override {
    this->add_weights(s);
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      const std::string n = ids_[i].hf_name();
      s.add("adapter." + n + ".A", sets_[i].A.view(), false);
      s.add("adapter." + n + ".B", sets_[i].B.view(), false);
      s.add_adam("adam." + n + ".A", upd_.state(pA_[i]), false);
      s.add_adam("adam." + n + ".B", upd_.state(pB_[i]), false);
    }
  }
  [[nodiscard]] std::int64_t trainable_parameters() const override { return detail::factor_count(sets_); }
  [[nodiscard]] std::string describe() const override {
    return cat(method_ == Method::Lora ? "LoraInit (A Kaiming-uniform, B = 0)" : "PissaInit (top-r, W_res = W - s B A)",
               " + AdapterLinear (scaling ", lin_.scaling(), ") + DataParallelUpdate with Adam", Dev::backend_note,
               "; K = ", comm_->groups(), " groups share one adapter");
  }
  /// The adapter of target slot i.
  const hdpissa::AdapterSet<Bm>& adapter(std::size_t i) const { return sets_.at(i); }

 protected:
  /// Per target, room for the forward's X Aᵀ (max_tokens, r): the backward of the same micro-batch
  /// reuses it instead of reading X again (AdapterLinear keep_xa / xa).
  void reserve(index_t max_tokens) override {
    if (max_tokens <= reserved_) return;
    reserved_ = max_tokens;
    hdpissa::memory::PartScope part("adapter.activations");
    xa_.clear();
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      // a stacked target without FP8 keeps its X Aᵀ in the stack's U (forward_shared) instead
      const bool in_u = i < stack_of_.size() && stack_of_[i] >= 0 && shared_ok(stacks_[std::size_t(stack_of_[i])]);
      xa_.push_back(in_u ? typename Bc::matrix_type{} : this->bc_->make_matrix(max_tokens, sets_[i].rank));
    }
    xa_rows_.assign(ids_.size(), -1);
    if (this->fp8_ && !sets_.empty()) u_ = this->bc_->make_matrix(max_tokens, sets_.front().rank);
    for (auto& st : stacks_) {
      st.U = this->bc_->make_matrix(max_tokens, index_t(st.n) * st.r);
      st.u_rows = -1;
    }
    if (!stacks_.empty()) lin_.reserve_shared(max_tokens, 3, stacks_.front().r);
    if (this->side_ && !stacks_.empty())
      for (auto& t : t_side_) t = this->bc_->make_matrix(max_tokens, 3 * stacks_.front().r);
    if (this->side_) {  // per target (kept X Aᵀ, no FP8 copy): its dY·B for the second stream
      tl_.clear();
      for (std::size_t i = 0; i < ids_.size(); ++i)
        tl_.push_back(i < xa_.size() && xa_[i].data() && !this->fp8_on(i)
                          ? this->bc_->make_matrix(max_tokens, sets_[i].rank)
                          : typename Bc::matrix_type{});
    }
  }
  /// q|k|v and gate|up (bf16 compute, every member a target, no FP8 copy): U = X·A_stackᵀ in one GEMM
  /// (AdapterLinear::forward_shared over stacked compute copies of A, refreshed every step), kept for
  /// backward_shared. Else one forward() each.
  void forward_shared(int lg, std::span<const typename Base::SharedForwardCall> calls, CVc X) override {
    if constexpr (kMixed) {
      Stack* st = shared_ok(calls) && X.rows <= reserved_ ? find_stack(calls, /*any_order=*/false) : nullptr;
      if (st) {
        const index_t r = st->r;
        if (const auto sl = stacked_in_order(*st, calls)) {  // three GEMMs for the group
          for (std::size_t j = 0; j < st->n; ++j) xa_rows_[calls[j].slot] = -1;
          const Vc Y{const_cast<typename Bc::scalar_type*>(sl->Z.data), sl->Z.rows, sl->Z.cols, sl->Z.ld};
          const Vc keep_s{st->U.data(), X.rows, index_t(st->n) * r, index_t(st->n) * r};
          lin_.forward_stacked(X, sl->W, CVc(st->A.view()), CVc(st->Bd.view()), Y, keep_s);
          st->u_rows = X.rows;
          ++this->stacked_calls_.first;
          return;
        }
        std::array<typename hdpissa::AdapterLinear<Bc>::SharedForward, 3> fw{};
        for (std::size_t j = 0; j < st->n; ++j) {
          fw[j] = {calls[j].W, Bf(calls[j].slot), calls[j].Y};
          xa_rows_[calls[j].slot] = -1;  // the per-target X Aᵀ is not written on this path
        }
        const Vc keep{st->U.data(), X.rows, index_t(st->n) * r, index_t(st->n) * r};
        lin_.forward_shared(X, CVc(st->A.view()),
                            std::span<const typename hdpissa::AdapterLinear<Bc>::SharedForward>(fw.data(), st->n), keep);
        st->u_rows = X.rows;
        return;
      }
    }
    Base::forward_shared(lg, calls, X);
  }
  /// The backward of a group whose forward ran forward_shared (its calls in any order: the model
  /// runs the backward in reverse): the stacked gA GEMM adds straight into the members' adjacent
  /// fp32 sums (else into a scratch, then one add per member), the gB GEMMs add into theirs, U comes
  /// from the forward. Else one backward() each.
  void backward_shared(int lg, std::span<const typename Base::SharedCall> calls, CVc X) override {
    if constexpr (kMixed) {
      Stack* st = shared_ok(calls) ? find_stack(calls, /*any_order=*/true) : nullptr;
      if (st) {
        const index_t r = st->r, n = index_t(st->n), in = st->A.view().cols;
        using SB = typename hdpissa::AdapterLinear<Bc>::template SharedBackward<float>;
        std::array<SB, 3> bw{};
        for (std::size_t p = 0; p < st->n; ++p)  // in the stack's order
          for (const auto& c : calls)
            if (c.slot == st->slots[p]) bw[p] = SB{c.W, Bf(c.slot), c.dY, c.dX, upd_.grad(pB_[c.slot], lg)};
        // the members' fp32 gA sums, adjacent rows of the update's flat gradients (A registered first):
        // the stacked GEMM adds into them; else a scratch and one add per member
        const auto [gA, adjacent] = Base::stacked_ga(grad_a_of(*st, lg), n, r, in, ga_stack_.data());
        const CVc u = st->u_rows == X.rows ? CVc{st->U.data(), X.rows, n * r, n * r} : CVc{};
        lin_.backward_shared(X, CVc(st->A.view()), std::span<const SB>(bw.data(), st->n), gA, /*accumulate=*/true,
                             /*accumulate_gA=*/adjacent, u);
        ++(adjacent ? this->stacked_ga_.first : this->stacked_ga_.second);
        if (!adjacent) this->add_stacked_ga(gA, n, r, grad_a_of(*st, lg));
        return;
      }
    }
    Base::backward_shared(lg, calls, X);
  }
  /// backward_shared() of a stack stored stacked by the model (no FP8 copy): AdapterLinear::
  /// backward_stacked — dY B_j in one GEMM over the block-diagonal B copy, the group's dX summed in
  /// two, U from the forward. False (nothing done) otherwise: the model then calls backward_shared().
  bool backward_shared_summed(int lg, std::span<const typename Base::SharedCall> calls, CVc X, Vc dX_sum) override {
    if constexpr (kMixed) {
      Stack* st = shared_ok(calls) ? find_stack(calls, /*any_order=*/true) : nullptr;
      const auto sl = st ? stacked_in_order(*st, calls) : std::nullopt;
      if (!sl) return false;
      const index_t r = st->r, n = index_t(st->n), in = st->A.view().cols;
      std::array<V32, 3> gB{};
      for (std::size_t p = 0; p < st->n; ++p) gB[p] = upd_.grad(pB_[st->slots[p]], lg);
      const auto [gA, adjacent] = Base::stacked_ga(grad_a_of(*st, lg), n, r, in, ga_stack_.data());
      const CVc u = st->u_rows == X.rows ? CVc{st->U.data(), X.rows, n * r, n * r} : CVc{};
      auto& ts = t_side_[t_side_next_];
      if (lin_side_ && adjacent && u.data && ts.data() && X.rows <= ts.view().rows) {
        // backward_stacked's parts: V = dY·B_diag here, then the gradient GEMMs on the second stream
        // beside dX_sum here. The stacked groups' V alternate between two buffers: the model's
        // lagged join (join_backward_lagged) waits for a half-layer's reads one half-layer later,
        // and each half-layer holds one stacked group (q|k|v or gate|up)
        t_side_next_ ^= 1;
        const Vc v{ts.data(), X.rows, n * r, n * r};
        lin_.stacked_v(CVc(st->Bd.view()), sl->Z, v);
        this->side_fork();
        lin_side_->stacked_gradients(X, CVc(v), u, sl->Z, std::span<const index_t>(st->outs.data(), st->n),
                                     std::span<const V32>(gB.data(), st->n), gA, /*accumulate=*/true);
        lin_.stacked_dx(sl->W, CVc(st->A.view()), sl->Z, CVc(v), dX_sum);
        ++this->stacked_ga_.first;
        ++this->stacked_calls_.second;
        return true;
      }
      lin_.backward_stacked(X, sl->W, CVc(st->A.view()), CVc(st->Bd.view()), sl->Z,
                            std::span<const index_t>(st->outs.data(), st->n), dX_sum,
                            std::span<const V32>(gB.data(), st->n), gA, /*accumulate=*/true, /*accumulate_gA=*/adjacent,
                            u);
      ++(adjacent ? this->stacked_ga_.first : this->stacked_ga_.second);
      ++this->stacked_calls_.second;
      if (!adjacent) this->add_stacked_ga(gA, n, r, grad_a_of(*st, lg));
      return true;
    } else {
      (void)lg, (void)calls, (void)X, (void)dX_sum;
      return false;
    }
  }
  void forward(int lg, std::size_t i, CVc W, CVc X, Vc Y) override {
    (void)lg;
    if (i < stack_of_.size() && stack_of_[i] >= 0) stacks_[std::size_t(stack_of_[i])].u_rows = -1;  // U not current
    Vc keep{};
    if (i < xa_.size() && X.rows <= reserved_ && xa_[i].data()) {
      keep = Vc{xa_[i].data(), X.rows, sets_[i].rank, sets_[i].rank};
      xa_rows_[i] = X.rows;
    }
    if constexpr (Base::kFp8Capable) {
      if (this->fp8_on(i) && keep.data) {  // keep exists: the model reserves before every pass
        // AdapterLinear's forward with the frozen product in FP8: the thin s (X Aᵀ) Bᵀ first, then
        // the FP8 GEMM adds X Wᵀ to it (β = 1, in its epilogue).
        using S = typename Bc::scalar_type;
        this->bc_->gemm(hdpissa::Op::N, hdpissa::Op::T, S(1), X, A(i), S(0), keep);
        this->bc_->gemm(hdpissa::Op::N, hdpissa::Op::T, S(lin_.scaling()), CVc(keep), Bf(i), S(0), Y);
        return this->fp8_->forward(i, X, Y, 1.0f);
      }
    }
    lin_.forward(W, A(i), Bf(i), X, Y, {}, keep);
  }
  void backward(int lg, std::size_t i, CVc W, CVc X, CVc dY, Vc dX) override {
    // the X Aᵀ of this micro-batch's forward (the model runs a layer's backward after its forward
    // of the same X; with activation checkpointing, after its recomputed forward)
    CVc xa{};
    if (i < xa_.size() && xa_rows_[i] == X.rows) xa = CVc{xa_[i].data(), X.rows, sets_[i].rank, sets_[i].rank};
    if constexpr (!kMixed) {
      lin_.backward(W, A(i), Bf(i), X, dY, dX, upd_.grad(pA_[i], lg), upd_.grad(pB_[i], lg), /*accumulate=*/true, xa);
    } else {
      const index_t r = sets_[i].rank;
      const bool fp8 = this->fp8_on(i) && dX.data && dY.rows <= u_.rows();
      if constexpr (Base::kHasSide) {
        if (this->side_ && !this->fp8_on(i) && xa.data && i < tl_.size() && tl_[i].data()) {
          // AdapterLinear::backward's parts: u = dY·B and dX on the model's stream, gA and gB on the
          // second (lin_side_, the second stream's backend); u in this target's own buffer: the next
          // write is the next micro-batch's, after the model's joins
          const Vc t{tl_[i].data(), X.rows, r, r};
          lin_.backward_u(dY, Bf(i), t);
          this->side_fork();
          lin_side_->backward_gradients(X, A(i), dY, CVc(t), upd_.grad(pA_[i], lg), upd_.grad(pB_[i], lg),
                                        /*accumulate=*/true, xa);
          lin_.backward_dx(W, A(i), dY, CVc(t), dX);
          return;
        }
      }
      // the two gradient GEMMs add their fp32 results straight into the fp32 sums
      lin_.backward(W, A(i), Bf(i), X, dY, fp8 ? Vc{} : dX, upd_.grad(pA_[i], lg), upd_.grad(pB_[i], lg),
                    /*accumulate=*/true, xa);
      if constexpr (Base::kFp8Capable) {
        if (fp8) {
          // dX = s (dY B) A + dY W: the thin part first (bf16, as AdapterLinear), then the FP8 GEMM
          // adds dY W (β = 1). dY B is recomputed (tokens × out × r: ~r / in of the FP8 GEMM).
          using S = typename Bc::scalar_type;
          const Vc u{u_.data(), dY.rows, r, r};
          this->bc_->gemm(hdpissa::Op::N, hdpissa::Op::N, S(1), dY, Bf(i), S(0), u);
          this->bc_->gemm(hdpissa::Op::N, hdpissa::Op::N, S(lin_.scaling()), CVc(u), A(i), S(0), dX);
          this->fp8_->backward_dx(i, dY, dX, 1.0f);
        }
      }
    }
  }

 private:
  CVc A(std::size_t i) const {
    if constexpr (!kMixed) return sets_[i].A.view();
    else return cc_.A[i].view();
  }
  CVc Bf(std::size_t i) const {
    if constexpr (!kMixed) return sets_[i].B.view();
    else return cc_.B[i].view();
  }

  /// A shared-input group of targets (q, k, v or gate, up of one layer, every member a target, bf16
  /// compute): their slots in forward order, the stacked compute copy of their A (n·r, in) and the
  /// forward's U = X·A_stackᵀ (max tokens, n·r) with its row count (-1: not current).
  struct Stack {
    std::array<std::size_t, 3> slots{};
    std::size_t n = 0;
    index_t r = 0;
    typename Bc::matrix_type A, U;
    index_t u_rows = -1;
    // the stacked GEMMs' B_diag (O, n·r): B_j's compute copy in rows [o_j, o_j + out_j), columns
    // [j·r, (j+1)·r), zeros elsewhere (HDPISSA_STACKED_LINEARS; empty when off); O = Σ outs
    typename Bc::matrix_type Bd;
    std::array<index_t, 3> outs{};
  };
  /// The calls as one stacked linear in the stack's (module) order, when st has a B_diag and the
  /// model lays the members out so (stack_of); else nothing.
  template <class Calls>
  std::optional<StackedLinears<typename Bc::scalar_type>> stacked_in_order(const Stack& st, const Calls& calls) const {
    if (!st.Bd.data()) return std::nullopt;
    return this->stack_in_order(calls, st.slots);
  }
  /// Member p's fp32 gA sum of local group lg.
  auto grad_a_of(const Stack& st, int lg) {
    return [this, &st, lg](index_t p) { return upd_.grad(pA_[st.slots[std::size_t(p)]], lg); };
  }
  void make_stacks() {
    if constexpr (kMixed) {
      stack_of_.assign(ids_.size(), -1);
      if (ids_.empty()) return;
      static constexpr std::array<Module, 3> kAttn{Module::q, Module::k, Module::v};
      static constexpr std::array<Module, 2> kMlp{Module::gate, Module::up};
      auto add = [&](int l, std::span<const Module> mods) {
        Stack st;
        for (Module m : mods) {
          const int s = this->slot(LinearId{l, m});
          if (s < 0) return;
          st.slots[st.n++] = std::size_t(s);
        }
        st.r = sets_[st.slots[0]].rank;
        for (std::size_t j = 1; j < st.n; ++j)
          if (sets_[st.slots[j]].rank != st.r) return;
        const auto [out, in] = this->shape(st.slots[0]);
        (void)out;
        st.A = this->bc_->make_matrix(index_t(st.n) * st.r, in);
        index_t O = 0;
        for (std::size_t j = 0; j < st.n; ++j) O += (st.outs[j] = this->shape(st.slots[j]).first);
        if (this->stacked_on_) {  // zeros off the diagonal blocks, set once (the copy batch writes the blocks)
          st.Bd = this->bc_->make_matrix(O, index_t(st.n) * st.r);
          this->bc_->fill(st.Bd.view(), typename Bc::compute_type(0));
        }
        for (std::size_t j = 0; j < st.n; ++j) stack_of_[st.slots[j]] = int(stacks_.size());
        stacks_.push_back(std::move(st));
      };
      for (int l = 0; l <= ids_.back().layer; ++l) {
        add(l, kAttn);
        add(l, kMlp);
      }
      index_t widest = 0;
      for (const auto& st : stacks_) widest = std::max(widest, index_t(st.n) * st.r * st.A.view().cols);
      if (widest > 0) ga_stack_ = this->bm_->make_matrix(1, widest);
    }
  }
  /// The conversions of every step and of refresh() in one table (bf16 compute): A_i, B_i → their
  /// compute copies and each stacked member's A → its rows of the stack, straight from the fp32
  /// factor (a stacked row is the member's compute copy, bit for bit). Built once (the buffers are
  /// fixed from here on) and run now, which fills the stacks.
  void make_copy_batch() {
    if constexpr (kMixed) {
      std::vector<typename Dev::compute_batch::Pair> pairs;
      for (std::size_t i = 0; i < sets_.size(); ++i) {
        pairs.emplace_back(Base::factor_view(sets_[i].A), cc_.A[i].view());
        pairs.emplace_back(Base::factor_view(sets_[i].B), cc_.B[i].view());
      }
      for (auto& st : stacks_) {
        index_t o = 0;
        for (std::size_t j = 0; j < st.n; ++j) {
          pairs.emplace_back(Base::factor_view(sets_[st.slots[j]].A), st.A.view().row_block(index_t(j) * st.r, st.r));
          if (st.Bd.data())
            pairs.emplace_back(Base::factor_view(sets_[st.slots[j]].B),
                               st.Bd.view().block(o, index_t(j) * st.r, st.outs[j], st.r));
          o += st.outs[j];
        }
      }
      copy_batch_ = Dev::make_compute_batch(*this->bm_, pairs);
      Dev::run_compute_batch(*this->bm_, copy_batch_);
    }
  }
  /// No member has an FP8 copy (those take forward()'s FP8 path).
  template <class Calls>
  bool shared_ok(const Calls& calls) const {
    for (const auto& c : calls)
      if (this->fp8_on(c.slot)) return false;
    return true;
  }
  bool shared_ok(const Stack& st) const {
    for (std::size_t j = 0; j < st.n; ++j)
      if (this->fp8_on(st.slots[j])) return false;
    return true;
  }
  /// The stack of exactly these slots: in its order, or (any_order) as a set.
  template <class Calls>
  Stack* find_stack(const Calls& calls, bool any_order) {
    if (calls.empty() || calls[0].slot >= stack_of_.size() || stack_of_[calls[0].slot] < 0) return nullptr;
    Stack& st = stacks_[std::size_t(stack_of_[calls[0].slot])];
    if (st.n != calls.size()) return nullptr;
    for (std::size_t j = 0; j < st.n; ++j) {
      if (!any_order) {
        if (st.slots[j] != calls[j].slot) return nullptr;
      } else if (stack_of_[calls[j].slot] != stack_of_[calls[0].slot]) {
        return nullptr;
      }
    }
    if (any_order)  // every member once
      for (std::size_t p = 0; p < st.n; ++p) {
        int hits = 0;
        for (const auto& c : calls) hits += c.slot == st.slots[p];
        if (hits != 1) return nullptr;
      }
    return &st;
  }

  Comm* comm_;
  Method method_;
  Update upd_;
  hdpissa::AdapterLinear<Bc> lin_;
  std::unique_ptr<hdpissa::AdapterLinear<Bc>> lin_side_;  // on side_'s backend: the stacked groups' gA, gB
  std::vector<typename Bc::matrix_type> xa_;     // per target: the forward's X Aᵀ (reserve())
  typename Bc::matrix_type u_;                   // --compute fp8: dY B (max_tokens, r) for dX's thin part
  std::vector<index_t> xa_rows_;                 // its rows (-1: none)
  index_t reserved_ = 0;
  std::vector<hdpissa::AdapterSet<Bm>> sets_;
  std::vector<std::size_t> pA_, pB_;
  typename Base::ComputeCopies cc_;
  typename Bm::matrix_type merge_;
  index_t merge_size_ = 0;
  std::vector<Stack> stacks_;       // shared-input groups (forward_shared / backward_shared)
  std::vector<int> stack_of_;       // per target: its stack, or -1
  typename Bm::matrix_type ga_stack_{};  // their stacked fp32 gA (one micro-batch's)
  std::array<typename Bc::matrix_type, 2> t_side_{};  // dY·B_diag of a stacked group read by the second stream
                                                      // (max tokens, 3r), alternately
  int t_side_next_ = 0;
  std::vector<typename Bc::matrix_type> tl_;  // per target: its dY·B read by the second stream (max tokens, r)
  typename detail::compute_batch_of<Dev>::type copy_batch_{};  // step()'s conversions (make_copy_batch)
};

/// Full fine-tuning of the target linears, data-parallel. Under a bf16 W-precision policy
/// (--w-precision bf16-compensated | bf16-sr) Adam's fp32 update Δ of each W is folded into the bf16
/// W by the policy's rule (TrainMethod::setup_w_precision; DataParallelUpdate::set_w_storage on the
/// GPU, set_w_apply on the CPU): no fp32 W is kept.
template <class Dev, class Comm>
class FullMethod final : public TrainMethod<Dev> {
  using Base = TrainMethod<Dev>;
  using typename Base::Bm;
  using typename Base::Bc;
  using typename Base::CVc;
  using typename Base::Vc;
  using typename Base::V32;
  using Base::kMixed;
  using Base::ids_;
  using Base::Wm_;
  using Update = hdpissa::DataParallelUpdate<Bm, hdpissa::Adam, Comm>;

 public:
  FullMethod(const TrainOptions& o, const MethodContext<Dev, Comm>& ctx)
      : Base(ctx, o.target_modules(), true, o.w_precision != hdpissa::WPrecision::Fp32Master),
        comm_(&ctx.comm),
        upd_(ctx.bm, ctx.comm, detail::make_adam(o), detail::update_options(o)),
        lin_(ctx.bc) {
    index_t scratch = 0;
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      const auto [out, in] = this->shape(i);
      // a bf16-only W (GPU, bf16 policy): the update sees its shape; the storage comes below
      p_.push_back(upd_.add_param(ids_[i].hf_name(), this->frozen_compute_ ? V32{nullptr, out, in, in} : Wm_[i]));
      n_ += std::int64_t(out) * in;
      scratch = std::max(scratch, out * in);
    }
    upd_.finalize();
    if constexpr (kMixed) g_ = ctx.bc.make_matrix(1, scratch);
    this->setup_w_precision(o, upd_);
  }
  void zero_grad() override { upd_.zero_grad(); }
  hdpissa::StepReport step(double lr) override { return this->step_updating_w(upd_, lr); }
  void fp8_enabled() override { this->amax_in_update_ = this->w_storage_amax(upd_); }
  void refresh() override {
    for (std::size_t i = 0; i < ids_.size(); ++i) this->push_weight(i);
    this->refresh_fp8();
  }
  void merged_weight(std::size_t i, Matrix& host) override { this->download(i, host); }
  void state(StateRefs& s) override {
    this->add_weights(s);
    this->add_w_precision_state(s);
    for (std::size_t i = 0; i < ids_.size(); ++i) s.add_adam("adam." + ids_[i].hf_name(), upd_.state(p_[i]), false);
  }
  [[nodiscard]] std::int64_t trainable_parameters() const override { return n_; }
  [[nodiscard]] std::string describe() const override {
    return cat("DenseLinear + DataParallelUpdate with Adam on every target W", Dev::backend_note, "; K = ",
               comm_->groups(), " groups (embeddings, norms, lm_head frozen); W ",
               hdpissa::w_precision_name(this->wprec_));
  }
  /// The update rule (for tests and diagnostics).
  Update& update() { return upd_; }

 protected:
  void forward(int lg, std::size_t i, CVc W, CVc X, Vc Y) override {
    (void)lg;
    if constexpr (Base::kFp8Capable) {
      if (this->fp8_on(i)) return this->fp8_->forward(i, X, Y, 0.0f);
    }
    lin_.forward(W, X, Y);
  }
  void backward(int lg, std::size_t i, CVc W, CVc X, CVc dY, Vc dX) override {
    if constexpr (!kMixed) {
      lin_.backward(W, X, dY, dX, upd_.grad(p_[i], lg), /*accumulate=*/true);
    } else {
      Vc gW{g_.data(), W.rows, W.cols, W.cols};
      // --compute fp8: dX from the FP8 copy; the weight gradient dYᵀ X stays bf16.
      const bool fp8 = this->fp8_on(i);
      if constexpr (Base::kFp8Capable) {
        if (fp8 && dX.data) this->fp8_->backward_dx(i, dY, dX, 0.0f);
      }
      lin_.backward(W, X, dY, fp8 ? Vc{} : dX, gW, /*accumulate=*/false);
      this->accumulate(CVc(gW), upd_.grad(p_[i], lg));
    }
  }

 private:
  Comm* comm_;
  Update upd_;
  hdpissa::DenseLinear<Bc> lin_;
  std::vector<std::size_t> p_;
  std::int64_t n_ = 0;
  typename Bc::matrix_type g_;
};

/// The method of `o.method` (policies chosen from the parsed options) on device `Dev`, before
/// --compute (make_method below adds it).
template <class Dev, class Comm>
std::unique_ptr<TrainMethod<Dev>> make_method_of(const TrainOptions& o, const MethodContext<Dev, Comm>& ctx,
                                                 const TrainState* resume) {
  switch (o.method) {
    case Method::Full: return std::make_unique<FullMethod<Dev, Comm>>(o, ctx);
    case Method::Lora:
    case Method::Pissa: return std::make_unique<AdapterMethod<Dev, Comm>>(o, ctx, resume != nullptr);
    case Method::Hdpissa:
    case Method::LoraDwu:
    case Method::PissaDwu: break;
  }
  const bool mean = o.aggregation == Aggregation::Mean;
  if (o.mute_gamma > 0) {
    const hdpissa::ScaledMute m{o.mute_gamma};
    if (mean) return std::make_unique<DwuMethod<Dev, Comm, hdpissa::ScaledMute, hdpissa::MeanAggregation>>(o, ctx, m, resume);
    return std::make_unique<DwuMethod<Dev, Comm, hdpissa::ScaledMute, hdpissa::SumAggregation>>(o, ctx, m, resume);
  }
  const hdpissa::ExactMute m{};
  if (mean) return std::make_unique<DwuMethod<Dev, Comm, hdpissa::ExactMute, hdpissa::MeanAggregation>>(o, ctx, m, resume);
  return std::make_unique<DwuMethod<Dev, Comm, hdpissa::ExactMute, hdpissa::SumAggregation>>(o, ctx, m, resume);
}

/// Builds the method of `o.method` (policies chosen from the parsed options) on device `Dev`, with
/// --compute fp8's FP8 copies when asked for. `resume`: the saved state (factors are taken from it,
/// no initialisation runs), or null.
template <class Dev, class Comm>
std::unique_ptr<TrainMethod<Dev>> make_method(const TrainOptions& o, const MethodContext<Dev, Comm>& ctx,
                                              const TrainState* resume) {
  auto m = make_method_of(o, ctx, resume);
  if (o.compute == ComputeKind::Fp8) m->enable_fp8();
  return m;
}

}  // namespace hdpissa::llama
