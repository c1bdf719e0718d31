#pragma once
/// \file data_parallel_update.hpp
/// DataParallelUpdate<Backend, Optimizer, Comm>: the baselines' update (spec §7) in the same
/// framework as DirectWeightUpdate, so methods compare like for like. Parameters are replicated on
/// every group (LoRA/PiSSA adapters, or W for full fine-tuning); each local group accumulates its own
/// gradient; step() sums the local groups' gradients, all-reduces them over workers (one call for
/// all parameters), divides by K, and applies one optimizer step to the parameters in place.
///
/// W-precision policies (core/w_precision.hpp), as in DirectWeightUpdate: by default a parameter
/// is updated in fp32 in place (p ← p − delta). set_w_storage(i, …) keeps parameter i as bf16 bits
/// (+ a Kahan compensation) instead and folds its fp32 update Δ = −delta into them by the policy's
/// rule (DwuKernels<B>::apply_w_storage: the same elementwise function as the DWU's, a host loop or
/// one CUDA kernel); set_w_apply(fn) hands each parameter's Δ to the caller instead (the CPU
/// trainer's reference path: fp32 tensors holding bf16 values).
///
/// Where the backend's DwuKernels offer an in-place multi-tensor Adam (InPlaceAdamKernels:
/// CudaBackend's with fused_update on) and the optimizer is Adam-family, the step of every fp32
/// parameter runs in one launch instead of an Adam pass and an axpy per parameter, with the same
/// bits (kBatchedAdam; a bf16 storage, an external apply or unequal step counts take the loop).

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "hdpissa/adapter/update_common.hpp"
#include "hdpissa/core/concepts.hpp"
#include "hdpissa/core/dwu_kernels.hpp"
#include "hdpissa/core/memory_ledger.hpp"
#include "hdpissa/core/w_precision.hpp"
#include "hdpissa/optim/adam.hpp"

namespace hdpissa {

/// Data-parallel optimizer step with gradient averaging over all K groups.
template <TensorBackend B, class Opt, Communicator C>
  requires Optimizer<Opt, B>
class DataParallelUpdate {
  static_assert(same_memory_space_v<B, C>,
                "DataParallelUpdate: the backend and the communicator must use the same memory space");

 public:
  using S = typename B::scalar_type;
  using V = MatrixView<S>;
  using CV = ConstMatrixView<S>;
  using opt_state = typename Opt::template state<B>;
  /// One multi-tensor launch applies every parameter's Adam step (see the file comment); each step
  /// can still decline at run time (fused_update off, a bf16 storage, an external apply).
  static constexpr bool kBatchedAdam = InPlaceAdamKernels<DwuKernels<B>, B> && AdamFamily<Opt, B>;

  DataParallelUpdate(B& b, C& comm, Opt opt = {}, UpdateOptions options = {})
      : b_(&b), comm_(&comm), opt_(std::move(opt)), options_(options), flag_(b.make_matrix(1, 1)) {}

  /// Registers a trainable parameter (updated in place; must outlive this object). Returns its index.
  std::size_t add_param(std::string name, V param) {
    HDPISSA_REQUIRE(!finalized_, "DataParallelUpdate::add_param('", name,
                    "'): parameters must be added before the first step or gradient access");
    memory::PartScope part("dp.optimizer");
    params_.push_back(Param{std::move(name), param, total_, opt_.make_state(*b_, param.rows, param.cols)});
    total_ += std::size_t(param.size());
    return params_.size() - 1;
  }
  /// An external update of the parameters (a W-precision policy's CPU reference path): with one set,
  /// step() does not write a parameter itself but hands its update Δ = −delta (the optimizer's
  /// delta negated, exact) to `apply(i, Δ)`, which folds it into the policy's storage. The view given
  /// to add_param must still hold the parameter's current value when the optimizer reads it (weight
  /// decay). Unset (empty): p ← p − delta in place.
  using WApply = std::function<void(std::size_t param, ConstMatrixView<S> delta)>;
  void set_w_apply(WApply apply) { w_apply_ = std::move(apply); }

  /// A bf16 W-precision storage for parameter `i` (Bf16Compensated or Bf16StochasticRounding; raw
  /// bf16 bits in the backend's memory): step() then folds the parameter's update Δ = −delta into it
  /// by the policy's rule (DwuKernels<B>::apply_w_storage, the DWU's unfused apply) instead of
  /// writing the fp32 view given to add_param, which may then be a view with no data (only its shape
  /// is used). When the optimizer reads the parameter (weight decay) the bf16 values are widened
  /// exactly into an fp32 scratch for it. `s.cols` is set here; element (r, c) of the SR stream is
  /// s.offset + r·cols + c, and SR's `s.step` comes from w_step() at each step.
  void set_w_storage(std::size_t i, Bf16WStorage s) {
    static_assert(std::is_same_v<S, float>, "set_w_storage: the update's delta must be fp32 (an fp32 backend)");
    auto& p = params_.at(i);
    p.wst = checked_w_storage(s, p.name, p.value.rows, p.value.cols, "add_param");
    p.bf16_w = true;
    if (!kernels_) kernels_.emplace(*b_);
  }
  /// The step number the stochastic rounding of the next step() uses (its counter-based hash
  /// input); advanced by every applied step. Set it when resuming so the stream continues.
  std::uint64_t w_step() const { return w_step_; }
  void set_w_step(std::uint64_t step) { w_step_ = step; }

  std::size_t num_params() const { return params_.size(); }
  const std::string& name(std::size_t i) const { return params_.at(i).name; }
  long steps() const { return steps_; }
  opt_state& state(std::size_t i) { return params_.at(i).st; }

  void finalize() {
    if (finalized_) return;
    HDPISSA_REQUIRE(!params_.empty(), "DataParallelUpdate: no parameters were added");
    {
      memory::PartScope part("dp.gradients");
      for (int g = 0; g < comm_->local_groups(); ++g) grads_.push_back(b_->make_matrix(1, index_t(total_)));
    }
    memory::PartScope part("dp.scratch");
    delta_ = b_->make_matrix(1, index_t(max_size()));
    if constexpr (kBatchedAdam)
      if (!kernels_) kernels_.emplace(*b_);
    finalized_ = true;
  }
  /// Gradient of parameter i for local group lg, shaped like the parameter.
  V grad(std::size_t i, int lg) {
    finalize();
    const Param& p = params_.at(i);
    return {grads_.at(lg).view().data + p.offset, p.value.rows, p.value.cols, p.value.cols};
  }
  void zero_grad() {
    finalize();
    for (auto& g : grads_) b_->fill(g.view(), S(0));
  }

  StepReport step(double lr) {
    finalize();
    // Sum local groups into buffer 0, all-reduce over workers, divide by K: the mean gradient.
    V all = grads_[0].view();
    for (std::size_t g = 1; g < grads_.size(); ++g) b_->axpy(S(1), CV(grads_[g].view()), all);
    comm_->all_reduce_sum(all.data, total_);
    b_->scale(all, S(1.0 / double(comm_->groups())));
    // After the all-reduce every worker holds the same gradient, so the finiteness decision agrees.
    // One check over the whole flat buffer (the parameters' gradients lie back to back with no gaps:
    // one reduction and one read-back per step, not one per parameter); only a failing step looks
    // for the first parameter to name.
    std::string bad;
    if (!b_->all_finite(CV(all))) {
      bad = "(the flat gradient buffer)";  // replaced below: the buffer has no gaps
      for (std::size_t i = 0; i < params_.size(); ++i)
        if (!b_->all_finite(CV(grad(i, 0)))) {
          bad = params_[i].name;
          break;
        }
    }
    if (!bad.empty()) {
      const std::string why = cat("non-finite gradient in '", bad, "'");
      if (options_.on_non_finite == NonFinitePolicy::Throw)
        throw NumericError(cat("DataParallelUpdate step ", steps_ + 1, ": ", why,
                               " (set NonFinitePolicy::SkipStep to skip such steps)"));
      return StepReport{true, steps_, why};
    }
    if constexpr (kBatchedAdam) {
      if (batched_adam_step(lr)) {
        ++steps_;
        ++w_step_;
        return StepReport{false, steps_, {}};
      }
    }
    for (std::size_t i = 0; i < params_.size(); ++i) {
      Param& p = params_[i];
      V d{delta_.view().data, p.value.rows, p.value.cols, p.value.cols};
      if (!p.bf16_w) {
        opt_.compute_delta(*b_, p.st, CV(p.value), CV(grad(i, 0)), d, lr);
        if (!w_apply_) {
          b_->axpy(S(-1), CV(d), p.value);
          continue;
        }
        b_->scale(d, S(-1));  // Δ = −delta (exact)
        w_apply_(i, CV(d));
        continue;
      }
      // A bf16 storage: the optimizer reads the exact fp32 widening of the bf16 W (weight decay)
      // or, when it does not read the parameter, the gradient in its place (never read).
      CV param = CV(grad(i, 0));
      if (optimizer_reads_param()) {
        if (param_.rows() == 0) {
          memory::PartScope part("dp.scratch");
          param_ = b_->make_matrix(1, index_t(max_size()));
        }
        const V wide{param_.view().data, p.value.rows, p.value.cols, p.value.cols};
        kernels_->widen_w_storage(p.wst, wide);
        param = CV(wide);
      }
      opt_.compute_delta(*b_, p.st, param, CV(grad(i, 0)), d, lr);
      Bf16WStorage st = p.wst;
      st.step = w_step_;
      kernels_->apply_w_storage(CV(d), st, -1.0f);  // Δ = −delta (exact) in the apply: the rule computes w + Δ
    }
    ++steps_;
    ++w_step_;
    return StepReport{false, steps_, {}};
  }

 private:
  struct Param {
    std::string name;
    V value;
    std::size_t offset;
    opt_state st;
    bool bf16_w = false;  // the parameter lives in `wst` (set_w_storage), not in `value`
    Bf16WStorage wst{};
  };
  /// Whether the optimizer's delta depends on the parameter's value (decoupled weight decay); an
  /// optimizer without a `config().weight_decay` is assumed to read it.
  bool optimizer_reads_param() const {
    if constexpr (requires { opt_.config().weight_decay; }) return opt_.config().weight_decay != 0;
    else return true;
  }
  /// The whole step in one multi-tensor launch: p ← p − delta for every parameter (kBatchedAdam),
  /// when the fused kernels are on, every parameter is an fp32 one updated in place and every state
  /// is at the same step (one AdamArgs). False, with nothing touched, otherwise.
  bool batched_adam_step(double lr) {
    if (w_apply_ || !kernels_ || !kernels_->enabled()) return false;
    const long s0 = params_.front().st.step;
    bool same_moments = batch_moments_.size() == 2 * params_.size();
    for (std::size_t i = 0; i < params_.size(); ++i) {
      const Param& p = params_[i];
      if (p.bf16_w || p.st.step != s0) return false;
      same_moments = same_moments && batch_moments_[2 * i] == p.st.m.view().data &&
                     batch_moments_[2 * i + 1] == p.st.v.view().data;
    }
    if (!same_moments) {  // first step, or a state's moments were replaced (restore)
      std::vector<AdamTensor<S>> ts;
      batch_moments_.clear();
      for (std::size_t i = 0; i < params_.size(); ++i) {
        Param& p = params_[i];
        ts.push_back({CV(p.value), CV(grad(i, 0)), p.st.m.view(), p.st.v.view(), p.value});
        batch_moments_.push_back(p.st.m.view().data);
        batch_moments_.push_back(p.st.v.view().data);
      }
      adam_batch_ = kernels_->make_adam_batch(ts, /*apply_in_place=*/true);
    }
    AdamArgs a;
    for (auto& p : params_) a = opt_.step_args(p.st, lr);
    return kernels_->adam_step(a, adam_batch_);
  }
  std::size_t max_size() const {
    std::size_t m = 0;
    for (auto& p : params_) m = std::max(m, std::size_t(p.value.size()));
    return m;
  }
  B* b_;
  C* comm_;
  Opt opt_;
  UpdateOptions options_;
  typename B::matrix_type flag_;
  std::vector<Param> params_;
  std::vector<typename B::matrix_type> grads_;
  typename B::matrix_type delta_;
  typename B::matrix_type param_;                // fp32 widening of a bf16 storage (weight decay; first use)
  std::optional<DwuKernels<B>> kernels_;         // the policy's apply (first set_w_storage), the batched Adam
  typename detail::adam_batch_of<DwuKernels<B>, B>::type adam_batch_{};  // kBatchedAdam's table
  std::vector<const S*> batch_moments_;          // the moments it was built for (m, v per parameter)
  WApply w_apply_;
  std::size_t total_ = 0;
  bool finalized_ = false;
  long steps_ = 0;
  std::uint64_t w_step_ = 0;  // the stochastic rounding's step (applied steps; set_w_step on resume)
};

}  // namespace hdpissa
