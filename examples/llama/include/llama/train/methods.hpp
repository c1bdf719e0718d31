#pragma once
/// \file methods.hpp
/// The fine-tuning methods of hdpissa-train, each a LinearHooks (the model never changes) wired
/// through the library:
///  - DwuMethod (hdpissa, lora-dwu, pissa-dwu): MutedLinear (ExactMute, or ScaledMute{γ}) +
///    DirectWeightUpdate (Sum or Mean) with per-group Adam. Factors: OrthogonalAdapterInit
///    (hdpissa), LoraInit with distinct seeds per group (lora-dwu), PissaInit top-r identical on
///    every group (pissa-dwu); computed layer l on worker l mod P and broadcast.
///  - AdapterMethod (lora, pissa): AdapterLinear (active adapter, scaling alpha // r) +
///    DataParallelUpdate over (A, B); PiSSA stores W_res = W − s·B A in the model.
///  - FullMethod (full): DenseLinear + DataParallelUpdate over every target W.
/// In every method only the target linears train; embeddings, norms and lm_head stay frozen.
/// Each method lists its state (tensors and step counters, shared or per worker) for
/// checkpointing, and the trainer restores it through the same list.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "hdpissa/hdpissa.hpp"
#include "llama/linear_hooks.hpp"
#include "llama/train/options.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama {

/// The library backend the trainer runs on (fp32, Eigen).
using TrainBackend = hdpissa::EigenBackend<float>;
using CView = hdpissa::ConstMatrixView<float>;
using MView = hdpissa::MatrixView<float>;

/// Library views of the model's Eigen matrices (row-major; ld = outer stride).
inline CView weight_view(const Matrix& m) { return {m.data(), m.rows(), m.cols(), m.cols()}; }
inline MView weight_view(Matrix& m) { return {m.data(), m.rows(), m.cols(), m.cols()}; }
inline CView cref_view(ConstMatrixRef r) { return {r.data(), r.rows(), r.cols(), r.outerStride()}; }
inline MView ref_view(MatrixRef r) { return {r.data(), r.rows(), r.cols(), r.outerStride()}; }

/// One checkpointed tensor: contiguous row-major floats. `local`: owned by this worker (saved in
/// its own file), else identical on every worker (saved once by worker 0).
struct StateTensor {
  std::string name;
  float* data = nullptr;
  std::int64_t rows = 0, cols = 0;
  bool local = false;
};
/// One checkpointed integer (e.g. Adam's step count).
struct StateCounter {
  std::string name;
  long* value = nullptr;
  bool local = false;
};
/// Everything a method must save to resume exactly.
struct StateList {
  std::vector<StateTensor> tensors;
  std::vector<StateCounter> counters;
  void add_adam(const std::string& name, hdpissa::Adam::state<TrainBackend>& st, bool local) {
    tensors.push_back({name + ".m", st.m.data(), st.m.rows(), st.m.cols(), local});
    tensors.push_back({name + ".v", st.v.data(), st.v.rows(), st.v.cols(), local});
    counters.push_back({name + ".step", &st.step, local});
  }
};

/// Reads a shared tensor of a saved state into `data` (shape-checked); empty for a fresh run.
using TensorLoader = std::function<void(const std::string& name, float* data, std::int64_t rows, std::int64_t cols)>;

/// A fine-tuning method: the model's hooks plus the optimizer step.
class TrainMethod : public LinearHooks {
 public:
  /// Selects the local group whose adapter the next forward/backward uses (0 ≤ lg < local groups).
  void set_group(int lg) { group_ = lg; }
  [[nodiscard]] int group() const { return group_; }
  /// Zeroes every local group's gradient.
  virtual void zero_grad() = 0;
  /// One optimizer step (all groups) at learning rate `lr`.
  virtual hdpissa::StepReport step(double lr) = 0;
  /// Folds the adapter into `w` (a copy of the live weights) for export; default: nothing to fold.
  virtual void merge_into(ModelWeights& w) const { (void)w; }
  /// Appends the method's state (not the target weights: the trainer saves those).
  virtual void collect_state(StateList& s) = 0;
  /// Checks that W is identical on every worker (DWU); default: nothing to check.
  virtual void verify_replicas() {}
  /// Trainable numbers summed over all K groups.
  [[nodiscard]] virtual std::int64_t trainable_parameters() const = 0;
  /// One-line description for the config echo.
  [[nodiscard]] virtual std::string describe() const = 0;
  /// The targeted linears, in layer order.
  [[nodiscard]] const std::vector<LinearId>& targets() const { return ids_; }
  /// Position of `id` in targets(), or -1 if it is frozen.
  [[nodiscard]] int slot(LinearId id) const { return slots_[static_cast<std::size_t>(id.index())]; }

 protected:
  void build_slots(const ModelWeights& w, const std::vector<Module>& modules) {
    slots_.assign(static_cast<std::size_t>(w.config.n_layers) * kModulesPerLayer, -1);
    for (int l = 0; l < w.config.n_layers; ++l)
      for (int m = 0; m < kModulesPerLayer; ++m)
        for (Module t : modules)
          if (t == static_cast<Module>(m)) {
            const LinearId id{l, t};
            slots_[static_cast<std::size_t>(id.index())] = static_cast<int>(ids_.size());
            ids_.push_back(id);
          }
  }
  std::vector<LinearId> ids_;
  std::vector<int> slots_;
  int group_ = 0;
};

/// HD-PiSSA and the DWU ablations: muted layers, per-group Adam, Direct Weight Update of W.
template <class Comm, class Mute, class Agg>
class DwuMethod final : public TrainMethod {
  using Update = hdpissa::DirectWeightUpdate<TrainBackend, hdpissa::Adam, Comm, Agg>;

 public:
  DwuMethod(const TrainOptions& o, ModelWeights& w, Comm& comm, Mute mute, const TensorLoader& resume)
      : comm_(&comm),
        method_(o.method),
        upd_(b_, comm, hdpissa::Adam(hdpissa::AdamConfig{0.9, 0.999, 1e-8, o.weight_decay})),
        muted_(b_, hdpissa::reference_scaling(o.effective_alpha(), o.rank), mute),
        svd_(o.svd) {
    build_slots(w, o.target_modules());
    const int K = comm.groups();
    const hdpissa::index_t r = o.rank;
    // Fail before any SVD: hdpissa needs K·r ≤ min(out, in) (orthogonal slices); the ablations
    // give every group its own rank-r adapter, so r ≤ min(out, in) suffices.
    for (const LinearId& id : ids_) {
      const Matrix& W = w.linear(id);
      hdpissa::check_adapter_fits(id.hf_name(), W.rows(), W.cols(), o.method == "hdpissa" ? K : 1, r);
    }
    if (resume) {
      for (const LinearId& id : ids_) {
        const Matrix& W = w.linear(id);
        sets_.push_back(hdpissa::make_adapter_set(b_, W.rows(), W.cols(), K, r));
        resume("adapter." + id.hf_name() + ".A", sets_.back().A.data(), K * r, W.cols());
        resume("adapter." + id.hf_name() + ".B", sets_.back().B.data(), W.rows(), K * r);
      }
    } else {
      std::vector<hdpissa::LayerRef<TrainBackend>> refs;
      for (const LinearId& id : ids_) refs.push_back({id.hf_name(), weight_view(w.linear(id))});
      if (o.method == "lora-dwu") {
        const hdpissa::LoraInit lora{K, r, o.seed, /*same_on_all_groups=*/false};
        auto init = [&](TrainBackend& b, CView W, const std::string& name) { return lora(b, W.rows, W.cols, name); };
        sets_ = hdpissa::init_adapters_distributed(b_, comm, init, refs, K, r);
      } else if (o.method == "pissa-dwu") {
        sets_ = o.svd == "randomized"
                    ? hdpissa::init_adapters_distributed(b_, comm, hdpissa::PissaInit<hdpissa::RandomizedSvd>{K, r, {}},
                                                         refs, K, r)
                    : hdpissa::init_adapters_distributed(b_, comm, hdpissa::PissaInit<hdpissa::ExactSvd>{K, r, {}},
                                                         refs, K, r);
      } else {
        sets_ = o.svd == "randomized"
                    ? hdpissa::init_adapters_distributed(
                          b_, comm, hdpissa::OrthogonalAdapterInit<hdpissa::RandomizedSvd>(K, r), refs, K, r)
                    : hdpissa::init_adapters_distributed(b_, comm, hdpissa::OrthogonalAdapterInit<hdpissa::ExactSvd>(K, r),
                                                         refs, K, r);
      }
    }
    for (std::size_t i = 0; i < ids_.size(); ++i)
      upd_.add_layer(ids_[i].hf_name(), weight_view(w.linear(ids_[i])), sets_[i]);
    upd_.finalize();
  }

  void forward(LinearId id, const Matrix& W, ConstMatrixRef X, MatrixRef Y) override {
    const int s = slot(id);
    if (s < 0) return LinearHooks::forward(id, W, X, Y);
    const int G = comm_->first_group() + group_;
    muted_.forward(weight_view(W), upd_.A(std::size_t(s), G), upd_.Bf(std::size_t(s), G), cref_view(X), ref_view(Y));
  }
  void backward(LinearId id, const Matrix& W, ConstMatrixRef X, ConstMatrixRef dY, MatrixRef dX) override {
    const int s = slot(id);
    if (s < 0) return LinearHooks::backward(id, W, X, dY, dX);
    const int G = comm_->first_group() + group_;
    muted_.backward(weight_view(W), upd_.A(std::size_t(s), G), upd_.Bf(std::size_t(s), G), cref_view(X),
                    cref_view(dY), ref_view(dX), upd_.grad_A(std::size_t(s), group_),
                    upd_.grad_B(std::size_t(s), group_), /*accumulate=*/true);
  }
  void zero_grad() override { upd_.zero_grad(); }
  hdpissa::StepReport step(double lr) override { return upd_.step(lr); }
  void verify_replicas() override { upd_.verify_replicas(); }

  void collect_state(StateList& s) override {
    const int K = comm_->groups();
    const auto r = upd_.rank();
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      const std::string n = ids_[i].hf_name();
      auto& set = sets_[i];
      s.tensors.push_back({"adapter." + n + ".A", set.A.data(), K * r, set.A.cols(), false});
      s.tensors.push_back({"adapter." + n + ".B", set.B.data(), set.B.rows(), K * r, false});
      for (int lg = 0; lg < comm_->local_groups(); ++lg) {
        const std::string g = cat(".g", comm_->first_group() + lg);
        s.add_adam("adam." + n + g + ".A", upd_.state_A(i, lg), true);
        s.add_adam("adam." + n + g + ".B", upd_.state_B(i, lg), true);
      }
    }
  }
  [[nodiscard]] std::int64_t trainable_parameters() const override {
    std::int64_t n = 0;
    for (const auto& set : sets_) n += std::int64_t(set.A.rows()) * set.A.cols() + std::int64_t(set.B.rows()) * set.B.cols();
    return n;
  }
  [[nodiscard]] std::string describe() const override {
    std::string init = method_ == "hdpissa"     ? cat("OrthogonalAdapterInit<", svd_ == "randomized" ? "RandomizedSvd" : "ExactSvd", ">")
                       : method_ == "lora-dwu" ? std::string("LoraInit (distinct seed per group)")
                                               : cat("PissaInit<", svd_ == "randomized" ? "RandomizedSvd" : "ExactSvd", "> (top-r on every group)");
    return cat(init, " + MutedLinear<", Mute::name(), "> (scaling ", muted_.scaling(), ") + DirectWeightUpdate<",
               Agg::name(), "> with per-group Adam; K = ", comm_->groups(), ", r = ", upd_.rank());
  }
  /// The update rule (for tests and diagnostics).
  Update& update() { return upd_; }
  /// The factors of target slot i (K groups stacked).
  const hdpissa::AdapterSet<TrainBackend>& factors(std::size_t i) const { return sets_.at(i); }
  [[nodiscard]] double scaling() const { return muted_.scaling(); }

 private:
  TrainBackend b_;
  Comm* comm_;
  std::string method_;
  Update upd_;
  hdpissa::MutedLinear<TrainBackend, Mute> muted_;
  std::string svd_;
  std::vector<hdpissa::AdapterSet<TrainBackend>> sets_;
};

/// LoRA / PiSSA: an active adapter per target, trained data-parallel (gradients averaged over K).
template <class Comm>
class AdapterMethod final : public TrainMethod {
  using Update = hdpissa::DataParallelUpdate<TrainBackend, hdpissa::Adam, Comm>;

 public:
  AdapterMethod(const TrainOptions& o, ModelWeights& w, Comm& comm, bool resuming)
      : comm_(&comm),
        method_(o.method),
        upd_(b_, comm, hdpissa::Adam(hdpissa::AdamConfig{0.9, 0.999, 1e-8, o.weight_decay})),
        lin_(b_, hdpissa::reference_scaling(o.effective_alpha(), o.rank)) {
    build_slots(w, o.target_modules());
    const hdpissa::index_t r = o.rank;
    for (const LinearId& id : ids_) {
      const Matrix& W = w.linear(id);
      hdpissa::check_adapter_fits(id.hf_name(), W.rows(), W.cols(), 1, r);
    }
    if (resuming) {  // factors, W_res and moments come from the state
      for (const LinearId& id : ids_)
        sets_.push_back(hdpissa::make_adapter_set(b_, w.linear(id).rows(), w.linear(id).cols(), 1, r));
    } else {
      std::vector<hdpissa::LayerRef<TrainBackend>> refs;
      for (const LinearId& id : ids_) refs.push_back({id.hf_name(), weight_view(w.linear(id))});
      if (o.method == "lora") {
        const hdpissa::LoraInit lora{1, r, o.seed, /*same_on_all_groups=*/true};
        auto init = [&](TrainBackend& b, CView W, const std::string& name) { return lora(b, W.rows, W.cols, name); };
        sets_ = hdpissa::init_adapters_distributed(b_, comm, init, refs, 1, r);
      } else {
        sets_ = o.svd == "randomized"
                    ? hdpissa::init_adapters_distributed(b_, comm, hdpissa::PissaInit<hdpissa::RandomizedSvd>{1, r, {}},
                                                         refs, 1, r)
                    : hdpissa::init_adapters_distributed(b_, comm, hdpissa::PissaInit<hdpissa::ExactSvd>{1, r, {}},
                                                         refs, 1, r);
        for (std::size_t i = 0; i < ids_.size(); ++i)  // W_res = W − s·B A
          hdpissa::subtract_adapter(b_, weight_view(w.linear(ids_[i])), sets_[i], 0, lin_.scaling());
      }
    }
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      pA_.push_back(upd_.add_param(ids_[i].hf_name() + ".lora_A", sets_[i].A.view()));
      pB_.push_back(upd_.add_param(ids_[i].hf_name() + ".lora_B", sets_[i].B.view()));
    }
    upd_.finalize();
  }

  void forward(LinearId id, const Matrix& W, ConstMatrixRef X, MatrixRef Y) override {
    const int s = slot(id);
    if (s < 0) return LinearHooks::forward(id, W, X, Y);
    const auto& set = sets_[std::size_t(s)];
    lin_.forward(weight_view(W), set.A.view(), set.B.view(), cref_view(X), ref_view(Y));
  }
  void backward(LinearId id, const Matrix& W, ConstMatrixRef X, ConstMatrixRef dY, MatrixRef dX) override {
    const int s = slot(id);
    if (s < 0) return LinearHooks::backward(id, W, X, dY, dX);
    const auto& set = sets_[std::size_t(s)];
    lin_.backward(weight_view(W), set.A.view(), set.B.view(), cref_view(X), cref_view(dY), ref_view(dX),
                  upd_.grad(pA_[std::size_t(s)], group_), upd_.grad(pB_[std::size_t(s)], group_), /*accumulate=*/true);
  }
  void zero_grad() override { upd_.zero_grad(); }
  hdpissa::StepReport step(double lr) override { return upd_.step(lr); }
  /// W ← W_res + s·B A.
  void merge_into(ModelWeights& w) const override {
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      const auto A = TrainBackend::map(sets_[i].A.view());
      const auto B = TrainBackend::map(sets_[i].B.view());
      w.linear(ids_[i]).noalias() += static_cast<float>(lin_.scaling()) * (B * A);
    }
  }
  void collect_state(StateList& s) override {
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      const std::string n = ids_[i].hf_name();
      auto& set = sets_[i];
      s.tensors.push_back({"adapter." + n + ".A", set.A.data(), set.A.rows(), set.A.cols(), false});
      s.tensors.push_back({"adapter." + n + ".B", set.B.data(), set.B.rows(), set.B.cols(), false});
      s.add_adam("adam." + n + ".A", upd_.state(pA_[i]), false);
      s.add_adam("adam." + n + ".B", upd_.state(pB_[i]), false);
    }
  }
  [[nodiscard]] std::int64_t trainable_parameters() const override {
    std::int64_t n = 0;
    for (const auto& set : sets_) n += std::int64_t(set.A.rows()) * set.A.cols() + std::int64_t(set.B.rows()) * set.B.cols();
    return n;
  }
  [[nodiscard]] std::string describe() const override {
    return cat(method_ == "lora" ? "LoraInit (A Kaiming-uniform, B = 0)" : "PissaInit (top-r, W_res = W - s B A)",
               " + AdapterLinear (scaling ", lin_.scaling(), ") + DataParallelUpdate with Adam; K = ",
               comm_->groups(), " groups share one adapter");
  }
  /// The adapter of target slot i.
  const hdpissa::AdapterSet<TrainBackend>& adapter(std::size_t i) const { return sets_.at(i); }

 private:
  TrainBackend b_;
  Comm* comm_;
  std::string method_;
  Update upd_;
  hdpissa::AdapterLinear<TrainBackend> lin_;
  std::vector<hdpissa::AdapterSet<TrainBackend>> sets_;
  std::vector<std::size_t> pA_, pB_;
};

/// Full fine-tuning of the target linears, data-parallel.
template <class Comm>
class FullMethod final : public TrainMethod {
  using Update = hdpissa::DataParallelUpdate<TrainBackend, hdpissa::Adam, Comm>;

 public:
  FullMethod(const TrainOptions& o, ModelWeights& w, Comm& comm)
      : comm_(&comm), upd_(b_, comm, hdpissa::Adam(hdpissa::AdamConfig{0.9, 0.999, 1e-8, o.weight_decay})), lin_(b_) {
    build_slots(w, o.target_modules());
    for (const LinearId& id : ids_) {
      p_.push_back(upd_.add_param(id.hf_name(), weight_view(w.linear(id))));
      n_ += w.linear(id).size();
    }
    upd_.finalize();
  }
  void forward(LinearId id, const Matrix& W, ConstMatrixRef X, MatrixRef Y) override {
    if (slot(id) < 0) return LinearHooks::forward(id, W, X, Y);
    lin_.forward(weight_view(W), cref_view(X), ref_view(Y));
  }
  void backward(LinearId id, const Matrix& W, ConstMatrixRef X, ConstMatrixRef dY, MatrixRef dX) override {
    const int s = slot(id);
    if (s < 0) return LinearHooks::backward(id, W, X, dY, dX);
    lin_.backward(weight_view(W), cref_view(X), cref_view(dY), ref_view(dX), upd_.grad(p_[std::size_t(s)], group_),
                  /*accumulate=*/true);
  }
  void zero_grad() override { upd_.zero_grad(); }
  hdpissa::StepReport step(double lr) override { return upd_.step(lr); }
  void collect_state(StateList& s) override {
    for (std::size_t i = 0; i < ids_.size(); ++i) s.add_adam("adam." + ids_[i].hf_name(), upd_.state(p_[i]), false);
  }
  [[nodiscard]] std::int64_t trainable_parameters() const override { return n_; }
  [[nodiscard]] std::string describe() const override {
    return cat("DenseLinear + DataParallelUpdate with Adam on every target W; K = ", comm_->groups(),
               " groups (embeddings, norms, lm_head frozen)");
  }

 private:
  TrainBackend b_;
  Comm* comm_;
  Update upd_;
  hdpissa::DenseLinear<TrainBackend> lin_;
  std::vector<std::size_t> p_;
  std::int64_t n_ = 0;
};

/// Builds the method named by `o.method` (policies chosen from the flags).
template <class Comm>
std::unique_ptr<TrainMethod> make_method(const TrainOptions& o, ModelWeights& w, Comm& comm, const TensorLoader& resume) {
  if (o.method == "full") return std::make_unique<FullMethod<Comm>>(o, w, comm);
  if (o.uses_adapter()) return std::make_unique<AdapterMethod<Comm>>(o, w, comm, bool(resume));
  const bool mean = o.aggregation == "mean";
  if (o.mute_gamma > 0) {
    const hdpissa::ScaledMute m{o.mute_gamma};
    if (mean) return std::make_unique<DwuMethod<Comm, hdpissa::ScaledMute, hdpissa::MeanAggregation>>(o, w, comm, m, resume);
    return std::make_unique<DwuMethod<Comm, hdpissa::ScaledMute, hdpissa::SumAggregation>>(o, w, comm, m, resume);
  }
  if (mean) return std::make_unique<DwuMethod<Comm, hdpissa::ExactMute, hdpissa::MeanAggregation>>(o, w, comm, hdpissa::ExactMute{}, resume);
  return std::make_unique<DwuMethod<Comm, hdpissa::ExactMute, hdpissa::SumAggregation>>(o, w, comm, hdpissa::ExactMute{}, resume);
}

}  // namespace hdpissa::llama
