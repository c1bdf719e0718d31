#pragma once
/// \file data_parallel_update.hpp
/// DataParallelUpdate<Backend, Optimizer, Comm>: the baselines' update (spec §7) in the same
/// framework as DirectWeightUpdate, so methods compare like for like. Parameters are replicated on
/// every group (LoRA/PiSSA adapters, or W for full fine-tuning); each local group accumulates its own
/// gradient; step() sums the local groups' gradients, all-reduces them over workers (one call for
/// all parameters), divides by K, and applies one optimizer step to the parameters in place.

#include <string>
#include <vector>

#include "hdpissa/adapter/update_common.hpp"
#include "hdpissa/core/concepts.hpp"

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

  DataParallelUpdate(B& b, C& comm, Opt opt = {}, UpdateOptions options = {})
      : b_(&b), comm_(&comm), opt_(std::move(opt)), options_(options), flag_(b.make_matrix(1, 1)) {}

  /// Registers a trainable parameter (updated in place; must outlive this object). Returns its index.
  std::size_t add_param(std::string name, V param) {
    HDPISSA_REQUIRE(!finalized_, "DataParallelUpdate::add_param('", name,
                    "'): parameters must be added before the first step or gradient access");
    params_.push_back(Param{std::move(name), param, total_, opt_.make_state(*b_, param.rows, param.cols)});
    total_ += std::size_t(param.size());
    return params_.size() - 1;
  }
  std::size_t num_params() const { return params_.size(); }
  const std::string& name(std::size_t i) const { return params_.at(i).name; }
  long steps() const { return steps_; }
  opt_state& state(std::size_t i) { return params_.at(i).st; }

  void finalize() {
    if (finalized_) return;
    HDPISSA_REQUIRE(!params_.empty(), "DataParallelUpdate: no parameters were added");
    for (int g = 0; g < comm_->local_groups(); ++g) grads_.push_back(b_->make_matrix(1, index_t(total_)));
    delta_ = b_->make_matrix(1, index_t(max_size()));
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
    std::string bad;
    for (std::size_t i = 0; i < params_.size() && bad.empty(); ++i)
      if (!b_->all_finite(CV(grad(i, 0)))) bad = params_[i].name;
    if (!bad.empty()) {
      const std::string why = cat("non-finite gradient in '", bad, "'");
      if (options_.on_non_finite == NonFinitePolicy::Throw)
        throw NumericError(cat("DataParallelUpdate step ", steps_ + 1, ": ", why,
                               " (set NonFinitePolicy::SkipStep to skip such steps)"));
      return StepReport{true, steps_, why};
    }
    for (std::size_t i = 0; i < params_.size(); ++i) {
      Param& p = params_[i];
      V d{delta_.view().data, p.value.rows, p.value.cols, p.value.cols};
      opt_.compute_delta(*b_, p.st, CV(p.value), CV(grad(i, 0)), d, lr);
      b_->axpy(S(-1), CV(d), p.value);
    }
    ++steps_;
    return StepReport{false, steps_, {}};
  }

 private:
  struct Param {
    std::string name;
    V value;
    std::size_t offset;
    opt_state st;
  };
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
  std::size_t total_ = 0;
  bool finalized_ = false;
  long steps_ = 0;
};

}  // namespace hdpissa
