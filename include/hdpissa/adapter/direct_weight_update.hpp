#pragma once
/// \file direct_weight_update.hpp
/// DirectWeightUpdate<Backend, Optimizer, Comm, Aggregation> (spec §3–4): every group steps its own
/// optimizer on its own adapter, and the K steps become one shared update of the full weight:
///   W ← W − f · Σ_j [ dB_j (A_j − dA_j) + B_j dA_j ]          (f = 1 for Sum, 1/K for Mean)
///     = W − f · L R,  L = [dB_0 … dB_{K−1} | B_0 … B_{K−1}]  (out, 2Kr),
///                     R = [A_0 − dA_0; …; A_{K−1} − dA_{K−1}; dA_0; …; dA_{K−1}]  (2Kr, in)
/// one GEMM of inner dimension 2Kr per layer, which also avoids forming (B−dB)(A−dA) − BA.
///
/// Per step only the factor deltas travel: each worker packs its local groups' (dA, dB) for every
/// layer into one buffer, and all_gathers exchange them (r·(in+out) numbers per layer per group):
/// one per bucket of consecutive layers (UpdateOptions::exchange_bucket_bytes bounds the receive
/// buffer), none with one worker (its send buffer is the received one). The factors A_j, B_j are constant after initialisation (as in the reference) and are
/// known to every worker. Gradients are never averaged across groups. Every worker then applies the
/// identical GEMMs to identical inputs, so W stays bit-identical across workers; verify_replicas()
/// checks that cheaply.
///
/// The kernels come from the DwuKernels<B> trait (core/dwu_kernels.hpp). For a backend whose
/// DwuKernels specialisation satisfies FusedDwuKernels (CudaBackend's, backend/cuda/dwu_kernels.hpp)
/// the fused path is compiled in: a multi-tensor optimizer pass over a table prepared in finalize()
/// (for AdamFamily optimizers), one packing kernel per layer for R and L (both give the generic
/// loops' bits), the whole per-layer update (packing + the backend's own GEMM; same math, the
/// GEMM's own rounding) and one batched non-finite check. Each fused call may decline at run time
/// (switched off, or a layout it does not take) and the generic path then runs. Other backends
/// (EigenBackend) get the primary template: the generic loops only.
///
/// Usage: add_layer() for every target layer, then per optimizer step: write gradients into
/// grad_A/grad_B (e.g. with MutedLinear::backward(W, dwu.adapter(layer, lg), …)), call step(lr),
/// then zero_grad().

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <functional>
#include <utility>
#include <string>
#include <type_traits>
#include <vector>

#include "hdpissa/adapter/adapter_set.hpp"
#include "hdpissa/adapter/aggregation.hpp"
#include "hdpissa/adapter/update_common.hpp"
#include "hdpissa/core/concepts.hpp"
#include "hdpissa/core/dwu_kernels.hpp"
#include "hdpissa/core/memory_ledger.hpp"
#include "hdpissa/core/w_precision.hpp"
#include "hdpissa/optim/adam.hpp"

namespace hdpissa {

/// HD-PiSSA's Direct Weight Update over backend B, optimizer Opt and communicator C.
template <TensorBackend B, class Opt, Communicator C, class Aggregation = SumAggregation>
  requires Optimizer<Opt, B>
class DirectWeightUpdate {
  static_assert(same_memory_space_v<B, C>,
                "DirectWeightUpdate: the backend and the communicator must use the same memory space");

 public:
  using S = typename B::scalar_type;
  using V = MatrixView<S>;
  using CV = ConstMatrixView<S>;
  using opt_state = typename Opt::template state<B>;
  /// The kernels this update runs (DwuKernels<B>: generic, or the backend's fused specialisation).
  using kernels_type = DwuKernels<B>;
  static_assert(DwuKernelSet<kernels_type, B>, "DwuKernels<B> must provide the generic kernels (DwuKernelSet)");
  using adam_batch_type = typename detail::adam_batch_of<kernels_type, B>::type;

  /// The fused path, chosen at compile time through the trait (each call can still decline at run
  /// time). kBatchedAdam also needs an AdamFamily optimizer (one AdamArgs over moments m, v).
  static constexpr bool kFusedKernels = FusedDwuKernels<kernels_type, B>;
  static constexpr bool kBatchedAdam = kFusedKernels && AdamFamily<Opt, B>;
  static constexpr bool kFusedUnpack = kFusedKernels;
  static constexpr bool kFusedApply = kFusedKernels;

  /// One registered layer. `L` holds [dB stack | B stack]; its right half is the constant B_j.
  struct Layer {
    std::string name;
    V W;                             // (out, in), updated in place
    index_t out = 0, in = 0;
    typename B::matrix_type A;       // (K·r, in), constant
    typename B::matrix_type L;       // (out, 2K·r)
    std::vector<V> gA, gB;           // per local group: (r, in), (out, r), views into the flat gradients (finalize())
    std::vector<opt_state> stA, stB;               // per local group
    std::size_t offset = 0;          // of this layer's (dA, dB) inside one group's packed chunk
    std::size_t bucket = 0;          // its exchange bucket (finalize())
    bool bf16_w = false;             // W lives in `wst` (set_w_storage), not in the view W
    Bf16WStorage wst{};
  };

  DirectWeightUpdate(B& b, C& comm, Opt opt = {}, UpdateOptions options = {})
      : b_(&b),
        comm_(&comm),
        opt_(std::move(opt)),
        options_(options),
        kernels_(b),
        flag_(b.make_matrix(1, 1)) {}
  // The layers' gradient views point into this object's flat buffer: a copy would share it.
  DirectWeightUpdate(const DirectWeightUpdate&) = delete;
  DirectWeightUpdate& operator=(const DirectWeightUpdate&) = delete;
  DirectWeightUpdate(DirectWeightUpdate&&) = default;
  DirectWeightUpdate& operator=(DirectWeightUpdate&&) = default;
  /// Side work a deferred step left running (UpdateOptions::deferred_apply_join) finishes before the
  /// factors, packed deltas and scratch it reads are freed.
  ~DirectWeightUpdate() {
    if constexpr (requires { kernels_.apply_drain(); }) kernels_.apply_drain();
  }

  int groups() const { return comm_->groups(); }
  int local_groups() const { return comm_->local_groups(); }
  index_t rank() const { return rank_; }
  std::size_t num_layers() const { return layers_.size(); }
  /// Layer i (its gA / gB views are empty until finalize(); grad_A / grad_B finalize first).
  const Layer& layer(std::size_t i) const { return layers_.at(i); }
  long steps() const { return steps_; }

  /// An external W update (a W-precision policy, core/w_precision.hpp): with one set, step() does
  /// not write W itself but computes each layer's update Δ = −f · L R into a dense (out, in) scratch
  /// (the same GEMM, β = 0) and calls `apply(layer, Δ)`, which folds Δ into the policy's storage of
  /// W (e.g. bf16 W + Kahan compensation, or stochastic rounding). The W registered by add_layer
  /// must still be that storage's value (verify_replicas() checksums it). Unset (empty): W += Δ in
  /// place (fused where the backend offers it), as before.
  using WApply = std::function<void(std::size_t layer, ConstMatrixView<S> delta)>;
  void set_w_apply(WApply apply) { w_apply_ = std::move(apply); }

  /// A bf16 W-precision storage for `layer` (Bf16Compensated or Bf16StochasticRounding; raw bf16
  /// bits in the backend's memory, core/w_precision.hpp): step() then folds the layer's update into
  /// it by the policy's rule instead of writing the fp32 view given to add_layer (which may then be
  /// a view with no data: only its shape is used). With the fused kernels (CudaBackend<float>,
  /// sm_90a) the rule runs in the update GEMM's epilogue, one pass over W; otherwise the GEMM writes
  /// a dense Δ scratch and one elementwise pass applies the rule. verify_replicas() checksums the
  /// storage. `s.cols` is set here; SR's `s.step` comes from w_step() at each step.
  void set_w_storage(std::size_t layer, Bf16WStorage s) {
    static_assert(std::is_same_v<S, float>, "set_w_storage: the update's Δ must be fp32 (an fp32 master backend)");
    auto& l = layers_.at(layer);
    l.wst = checked_w_storage(s, l.name, l.out, l.in, "add_layer");
    l.bf16_w = true;
  }
  /// The step number the stochastic rounding of the next step() uses (its counter-based hash
  /// input); advanced by every applied step. Set it when resuming so the stream continues.
  std::uint64_t w_step() const { return w_step_; }
  void set_w_step(std::uint64_t step) { w_step_ = step; }
  const Opt& optimizer() const { return opt_; }
  static constexpr const char* aggregation() { return Aggregation::name(); }

  /// Registers W (out, in) with the factors of all K groups (e.g. from OrthogonalAdapterInit, or
  /// broadcast by init_adapters_distributed). Returns the layer's index. W must outlive this object.
  std::size_t add_layer(std::string name, V W, const AdapterSet<B>& factors) {
    return add_layer_impl(std::move(name), W, factors, /*copy_A=*/true);
  }

  /// add_layer taking the factors over: A is moved in (not copied), B is copied into L and freed
  /// with `factors`, so the caller need not keep a second copy of the constant factors.
  std::size_t add_layer(std::string name, V W, AdapterSet<B>&& factors) {
    const std::size_t i = add_layer_impl(std::move(name), W, std::as_const(factors), /*copy_A=*/false);
    layers_[i].A = std::move(factors.A);
    factors = AdapterSet<B>{};
    return i;
  }

 private:
  std::size_t add_layer_impl(std::string name, V W, const AdapterSet<B>& factors, bool copy_A) {
    HDPISSA_REQUIRE(!finalized_, "DirectWeightUpdate::add_layer('", name,
                    "'): layers must be added before the first step or gradient access");
    HDPISSA_REQUIRE(factors.groups == groups(), "layer '", name, "': expected factors for K = ", groups(),
                    " groups (the communicator's), found ", factors.groups);
    HDPISSA_REQUIRE(factors.out() == W.rows && factors.in() == W.cols, "layer '", name, "': W is ",
                    shape_str(W.rows, W.cols), " but the factors are for ",
                    shape_str(factors.out(), factors.in()));
    HDPISSA_REQUIRE(rank_ == 0 || factors.rank == rank_, "layer '", name, "': expected rank r = ", rank_,
                    " like the other layers, found ", factors.rank);
    HDPISSA_REQUIRE(factors.A.rows() == index_t(factors.groups) * factors.rank &&
                        factors.B.cols() == index_t(factors.groups) * factors.rank,
                    "layer '", name, "': expected A (K·r, in) and B (out, K·r) with K·r = ",
                    index_t(factors.groups) * factors.rank, ", found A with ", factors.A.rows(), " rows and B with ",
                    factors.B.cols(), " columns");
    rank_ = factors.rank;
    const index_t K = groups(), r = rank_;
    Layer l;
    l.name = std::move(name);
    l.W = W;
    l.out = W.rows;
    l.in = W.cols;
    {
      memory::PartScope part("dwu.factors");
      if (copy_A) {
        l.A = b_->make_matrix(K * r, W.cols);
        b_->copy(CV(factors.A.view()), l.A.view());
      }
      l.L = b_->make_matrix(W.rows, 2 * K * r);
      b_->copy(CV(factors.B.view()), l.L.view().col_block(K * r, K * r));
    }
    for (int g = 0; g < local_groups(); ++g) {
      memory::PartScope part("dwu.optimizer");
      l.stA.push_back(opt_.make_state(*b_, r, W.cols));
      l.stB.push_back(opt_.make_state(*b_, W.rows, r));
    }
    l.offset = chunk_;
    chunk_ += DwuPackedDeltas<S>::layer_elements(r, W.cols, W.rows);
    max_in_ = std::max(max_in_, W.cols);
    layers_.push_back(std::move(l));
    return layers_.size() - 1;
  }


 public:
  /// Every group's constant factors of `layer`, stacked as in AdapterSet: A (K·r, in) and B
  /// (out, K·r; strided, ld = 2K·r). Writing them (restoring a saved state) changes the update.
  V stacked_A(std::size_t layer) { return layers_.at(layer).A.view(); }
  V stacked_B(std::size_t layer) { return layers_.at(layer).L.view().col_block(groups() * rank_, groups() * rank_); }
  /// Group g's dB (out, r) as the last step applied it (L's left half, written by that step).
  CV last_dB(std::size_t layer, int g) const {
    return CV(const_cast<Layer&>(layers_.at(layer)).L.view().col_block(g * rank_, rank_));
  }
  /// Group `g`'s constant factors (any group, local or not): A_g (r, in), B_g (out, r).
  CV A(std::size_t layer, int g) const { return CV(layers_.at(layer).A.view().row_block(g * rank_, rank_)); }
  CV Bf(std::size_t layer, int g) const {
    return CV(const_cast<Layer&>(layers_.at(layer)).L.view().col_block((groups() + g) * rank_, rank_));
  }
  /// Gradient buffers of local group `lg` (0 ≤ lg < local_groups(); global group first_group()+lg).
  V grad_A(std::size_t layer, int lg) { finalize(); return layers_.at(layer).gA.at(lg); }
  V grad_B(std::size_t layer, int lg) { finalize(); return layers_.at(layer).gB.at(lg); }
  /// Local group `lg`'s adapter of `layer` in one handle (its factors A, B and gradient buffers), for
  /// MutedLinear::forward(W, handle, X, Y) / backward(W, handle, X, dY, dX).
  AdapterHandle<S> adapter(std::size_t layer, int lg) {
    const int G = comm_->first_group() + lg;
    return {A(layer, G), Bf(layer, G), grad_A(layer, lg), grad_B(layer, lg)};
  }
  /// Optimizer state of local group `lg` (for checkpointing / resuming).
  opt_state& state_A(std::size_t layer, int lg) { return layers_.at(layer).stA.at(lg); }
  opt_state& state_B(std::size_t layer, int lg) { return layers_.at(layer).stB.at(lg); }

  /// Every local gradient ← 0: one fill of the flat gradient buffer. Like the gradient accessors it
  /// finalizes the update (no add_layer after it).
  void zero_grad() {
    finalize();
    b_->fill(grads_.view(), S(0));
  }

  /// Allocates the packed exchange buffers (done by the first step or gradient access).
  void finalize() {
    if (finalized_) return;
    HDPISSA_REQUIRE(!layers_.empty(), "DirectWeightUpdate: no layers were added");
    HDPISSA_REQUIRE(comm_->size() > 1 || local_groups() == groups(), "DirectWeightUpdate: one worker must host all ",
                    groups(), " groups, found ", local_groups());
    // Exchange buckets: consecutive layers while K·(bucket elements) fits exchange_bucket_bytes.
    bucket_start_.clear();
    bucket_len_.clear();
    const std::size_t cap = options_.exchange_bucket_bytes / (sizeof(S) * std::size_t(groups()));
    for (auto& l : layers_) {
      const std::size_t n = DwuPackedDeltas<S>::layer_elements(rank_, l.in, l.out);
      if (bucket_len_.empty() || (options_.exchange_bucket_bytes != 0 && bucket_len_.back() + n > cap)) {
        bucket_start_.push_back(l.offset);
        bucket_len_.push_back(0);
      }
      l.bucket = bucket_len_.size() - 1;
      bucket_len_.back() += n;
    }
    // A kernel policy that refuses some layers (e.g. a forced kernel that cannot take this rank)
    // says so now, before any state moves.
    if constexpr (requires(kernels_type& k) { k.check_layer(index_t(1), index_t(1), true); })
      for (const auto& l : layers_) kernels_.check_layer(groups(), rank_, l.bf16_w);
    allocate_gradients();
    memory::PartScope part("dwu.exchange");
    send_ = b_->make_matrix(local_groups(), index_t(chunk_));
    if (comm_->size() > 1)
      recv_ = b_->make_matrix(groups(), index_t(*std::max_element(bucket_len_.begin(), bucket_len_.end())));
    R_ = b_->make_matrix(2 * groups() * rank_, max_in_);
    if constexpr (kBatchedAdam) build_adam_batch();
    if constexpr (kFusedKernels)
      for (auto& l : layers_)
        for (int g = 0; g < local_groups(); ++g) {
          finite_views_.push_back(CV(l.gA[g]));
          finite_views_.push_back(CV(l.gB[g]));
        }
    finalized_ = true;
  }

  /// Bytes each worker contributes to the per-step all-gather (one worker's packed deltas).
  std::size_t bytes_sent_per_step() const { return chunk_ * sizeof(S) * std::size_t(local_groups()); }
  /// All-gathers per step (the exchange buckets; 0 with one worker). Known after finalize().
  std::size_t collectives_per_step() const { return comm_->size() > 1 ? bucket_len_.size() : 0; }
  /// Bytes of the receive buffer (K × the largest bucket; 0 with one worker). After finalize().
  std::size_t receive_buffer_bytes() const {
    return std::size_t(recv_.rows()) * std::size_t(recv_.cols()) * sizeof(S);
  }

  /// UpdateOptions::deferred_apply_join: the backend's stream waits for layer i's W update of the
  /// last step (i in add_layer order); nothing to wait for otherwise.
  void wait_layer(std::size_t i) {
    if constexpr (requires { kernels_.wait_layer(i); }) {
      if (options_.deferred_apply_join) kernels_.wait_layer(i);  // else every step ends joined
    } else {
      (void)i;
    }
  }
  /// UpdateOptions::deferred_apply_join: the backend's stream waits for every W update of the last
  /// step; nothing to wait for otherwise.
  void join() {
    if constexpr (requires { kernels_.apply_join(); }) kernels_.apply_join();
  }
  /// Whether the last step's W updates may still be running beside the backend's stream.
  bool apply_pending() const {
    if constexpr (requires { kernels_.apply_pending(); }) return kernels_.apply_pending();
    else return false;
  }
  /// UpdateOptions::deferred_apply_join.
  bool deferred_apply_join() const { return options_.deferred_apply_join; }
  /// Turns UpdateOptions::deferred_apply_join on or off (the current step's side work is joined).
  void set_deferred_apply_join(bool on) {
    join();
    options_.deferred_apply_join = on;
  }

  /// One optimizer step at learning rate `lr` for every local group, then the shared W update.
  StepReport step(double lr) {
    finalize();
    join();  // a deferred previous step (UpdateOptions::deferred_apply_join): its packing read send_
    // 1. Non-finite gradients: consensus across workers, so all of them skip or none does.
    std::string bad;
    bool check_each = true;
    // Fused kernels check every gradient in one batched pass (one wait for the device, not 2·K·layers);
    // the per-tensor loop then runs only to name a culprit.
    if constexpr (kFusedKernels) check_each = !kernels_.all_finite_batch(finite_views_);
    for (auto& l : layers_)
      for (int g = 0; g < local_groups() && bad.empty() && check_each; ++g)
        if (!b_->all_finite(CV(l.gA[g])) || !b_->all_finite(CV(l.gB[g])))
          bad = cat("layer '", l.name, "', group ", comm_->first_group() + g);
    const double bad_workers = detail::consensus_count(*b_, *comm_, flag_, !bad.empty());
    if (bad_workers > 0) {
      const std::string why = bad.empty() ? cat(bad_workers, " worker(s) saw a non-finite gradient")
                                          : cat("non-finite gradient in ", bad);
      if (options_.on_non_finite == NonFinitePolicy::Throw)
        throw NumericError(cat("DirectWeightUpdate step ", steps_ + 1, ": ", why,
                               " (set NonFinitePolicy::SkipStep to skip such steps)"));
      return StepReport{true, steps_, why};
    }
    // 2. Each local group's optimizer step, writing deltas straight into the packed send buffer
    //    (one multi-tensor launch where the backend offers it, else one pass per tensor).
    const index_t r = rank_;
    bool batched = false;
    if constexpr (kBatchedAdam) batched = batched_adam_step(lr);
    if (!batched)
      for (auto& l : layers_) {
        const DwuPackedDeltas<S> send = sent(l);
        for (int g = 0; g < local_groups(); ++g) {
          const int G = comm_->first_group() + g;
          opt_.compute_delta(*b_, l.stA[g], CV(l.A.view().row_block(G * r, r)), CV(l.gA[g]), send.dA(g), lr);
          opt_.compute_delta(*b_, l.stB[g], CV(l.L.view().col_block((groups() + G) * r, r)), CV(l.gB[g]),
                             send.dB(g), lr);
        }
      }
    // 3.–4. Per exchange bucket, one collective (every group's deltas for its layers; none with
    //       one worker), then one GEMM per layer: W ← W − f · [dB | B] [A − dA; dA].
    const S f = S(Aggregation::factor(groups()));
    const index_t K = groups();
    auto need_delta = [&] {
      if (delta_.rows() != 0) return;
      index_t most = 0;
      for (const auto& l : layers_) most = std::max(most, l.out * l.in);
      memory::PartScope part("dwu.delta-scratch");
      delta_ = b_->make_matrix(1, most);
    };
    if (w_apply_) need_delta();
    // Kernels that spread the layers' applies over streams (DwuKernels<CudaBackend>::apply_begin)
    // fork here and join before each exchange (its receive buffer is what the applies read) and at
    // the end; the others have no such calls.
    constexpr bool kApplyStreams = requires { kernels_.apply_begin(); kernels_.apply_end(); };
    struct ApplyJoin {  // joins the side work if the loop throws (the next apply_begin would too)
      kernels_type* k;
      ~ApplyJoin() {
        if constexpr (kApplyStreams) {
          try {
            k->apply_end();
          } catch (...) {
          }
        }
      }
    } join{&kernels_};
    const bool defer = options_.deferred_apply_join;
    if constexpr (kApplyStreams) kernels_.apply_begin(defer);
    for (std::size_t li = 0; li < layers_.size(); ++li) {
      auto& l = layers_[li];
      if ((li == 0 || layers_[li - 1].bucket != l.bucket) && comm_->size() > 1) {
        if constexpr (kApplyStreams) kernels_.apply_end();
        comm_->all_gather(send_.view().data + bucket_start_[l.bucket] * std::size_t(local_groups()),
                          recv_.view().data, bucket_len_[l.bucket]);
        if constexpr (kApplyStreams) kernels_.apply_begin(defer);
      }
      const DwuPackedDeltas<const S> recv = received(l);
      if (l.bf16_w) {  // a bf16 W-precision storage: the rule folds Δ in (fused where offered)
        Bf16WStorage st = l.wst;
        st.step = w_step_;
        if constexpr (requires { kernels_.apply_fused_w(CV(l.A.view()), recv, -f, l.L.view(), st); })
          if (kernels_.apply_fused_w(CV(l.A.view()), recv, -f, l.L.view(), st)) {
            if constexpr (kApplyStreams) kernels_.apply_mark(li);
            continue;
          }
        need_delta();
        V R{R_.view().data, 2 * K * r, l.in, l.in};
        const V Ldb = l.L.view().col_block(0, K * r);
        bool packed = false;
        if constexpr (kFusedUnpack) packed = kernels_.unpack_fused(CV(l.A.view()), recv, R, Ldb);
        if (!packed) kernels_.unpack(CV(l.A.view()), recv, R, Ldb);
        const V D{delta_.view().data, l.out, l.in, l.in};
        b_->gemm(Op::N, Op::N, -f, CV(l.L.view()), CV(R), S(0), D);
        kernels_.apply_w_storage(CV(D), st);
        continue;
      }
      if constexpr (kFusedApply)
        if (!w_apply_ && kernels_.apply_fused(CV(l.A.view()), recv, -f, l.L.view(), l.W)) continue;
      V R{R_.view().data, 2 * K * r, l.in, l.in};
      const V Ldb = l.L.view().col_block(0, K * r);
      bool packed = false;
      if constexpr (kFusedUnpack) packed = kernels_.unpack_fused(CV(l.A.view()), recv, R, Ldb);
      if (!packed) kernels_.unpack(CV(l.A.view()), recv, R, Ldb);
      if (w_apply_) {
        const V D{delta_.view().data, l.out, l.in, l.in};
        b_->gemm(Op::N, Op::N, -f, CV(l.L.view()), CV(R), S(0), D);
        w_apply_(li, CV(D));
        continue;
      }
      b_->gemm(Op::N, Op::N, -f, CV(l.L.view()), CV(R), S(1), l.W);
    }
    if constexpr (kApplyStreams) kernels_.apply_end(defer);
    ++steps_;
    ++w_step_;
    return StepReport{false, steps_, {}};
  }

  /// Fails loudly (CommError on every worker) if W differs across workers: worker 0's
  /// order-sensitive checksum is broadcast and compared bit for bit.
  void verify_replicas() {
    join();
    // Each double checksum travels as two scalars (hi, lo = c − hi) so float storage keeps ~48 bits.
    const std::size_t n = layers_.size();
    auto buf = b_->make_matrix(1, index_t(2 * n));
    std::vector<S> mine(2 * n);
    for (std::size_t i = 0; i < n; ++i) {
      const auto& l = layers_[i];
      const double c = l.bf16_w ? kernels_.checksum_w_storage(l.wst, l.out, l.in) : b_->checksum(CV(l.W));
      mine[2 * i] = S(c);
      mine[2 * i + 1] = S(c - double(S(c)));
    }
    b_->upload(mine.data(), buf.view());
    comm_->broadcast(buf.view().data, 2 * n, 0);
    std::vector<S> root(2 * n);
    b_->download(CV(buf.view()), root.data());
    std::string first;
    for (std::size_t i = 0; i < n && first.empty(); ++i)
      if (root[2 * i] != mine[2 * i] || root[2 * i + 1] != mine[2 * i + 1])
        first = cat("layer '", layers_[i].name, "' on worker ", comm_->rank(), " (checksum ",
                    double(mine[2 * i]) + double(mine[2 * i + 1]), ", worker 0 has ",
                    double(root[2 * i]) + double(root[2 * i + 1]), ")");
    const double diverged = detail::consensus_count(*b_, *comm_, flag_, !first.empty());
    if (diverged > 0)
      throw CommError(cat("W diverged across workers after step ", steps_, ": ",
                          first.empty() ? cat(diverged, " worker(s) differ from worker 0") : first));
  }

 private:
  /// The local gradients in one flat buffer (zero_grad is one fill), per local group every layer's
  /// gA (r, in) in layer order, then every layer's gB (out, r): the gA of consecutive layers are
  /// consecutive rows, so a caller may write the gradients of layers that share an input (a
  /// LLaMA layer's q, k, v) with one stacked GEMM when grad_A's pointers say they are adjacent.
  /// Each block starts on a 64-byte boundary (padding only where r·in or out·r is not a multiple).
  void allocate_gradients() {
    const index_t r = rank_;
    constexpr index_t kAlign = index_t(64 / sizeof(S)) > 0 ? index_t(64 / sizeof(S)) : 1;
    auto up = [&](index_t n) { return (n + kAlign - 1) / kAlign * kAlign; };
    index_t total = 0;
    for (const auto& l : layers_) total += up(r * l.in) + up(l.out * r);
    total *= index_t(local_groups());
    {
      memory::PartScope part("dwu.gradients");
      grads_ = b_->make_matrix(1, std::max<index_t>(total, 1));
    }
    b_->fill(grads_.view(), S(0));
    S* p = grads_.view().data;
    for (auto& l : layers_) {
      l.gA.assign(std::size_t(local_groups()), V{});
      l.gB.assign(std::size_t(local_groups()), V{});
    }
    for (int g = 0; g < local_groups(); ++g) {
      for (auto& l : layers_) {
        l.gA[std::size_t(g)] = V{p, r, l.in, l.in};
        p += up(r * l.in);
      }
      for (auto& l : layers_) {
        l.gB[std::size_t(g)] = V{p, l.out, r, r};
        p += up(l.out * r);
      }
    }
  }
  /// Calls f(layer, local group, state, param, grad, delta) for every optimizer tensor, in the
  /// generic loop's order (A then B per layer and group).
  template <class F>
  void for_each_tensor(F&& f) {
    const index_t r = rank_;
    for (auto& l : layers_) {
      const DwuPackedDeltas<S> send = sent(l);
      for (int g = 0; g < local_groups(); ++g) {
        const int G = comm_->first_group() + g;
        f(l.stA[g], CV(l.A.view().row_block(G * r, r)), CV(l.gA[g]), send.dA(g));
        f(l.stB[g], CV(l.L.view().col_block((groups() + G) * r, r)), CV(l.gB[g]), send.dB(g));
      }
    }
  }
  /// Layer l's slice of the send buffer (local groups) and of the all-gathered buffer (all K). The
  /// send buffer is bucket-major: bucket b holds [local group][its layers' deltas] (one bucket: the
  /// plain [group][every layer] layout); the receive buffer holds one bucket, [group][its layers].
  /// With one worker the send buffer is the received one.
  DwuPackedDeltas<S> sent(Layer& l) {
    const std::size_t b0 = bucket_start_[l.bucket], n = bucket_len_[l.bucket];
    return {send_.view().data + b0 * std::size_t(local_groups()) + (l.offset - b0), n, index_t(local_groups()), rank_,
            l.in, l.out};
  }
  DwuPackedDeltas<const S> received(Layer& l) {
    if (comm_->size() == 1) {
      const DwuPackedDeltas<S> d = sent(l);
      return {d.data, d.chunk, index_t(groups()), rank_, l.in, l.out};
    }
    const std::size_t b0 = bucket_start_[l.bucket], n = bucket_len_[l.bucket];
    return {recv_.view().data + (l.offset - b0), n, index_t(groups()), rank_, l.in, l.out};
  }
  /// The multi-tensor Adam table (setup; again only if a state's moments were replaced).
  void build_adam_batch() {
    std::vector<AdamTensor<S>> ts;
    batch_moments_.clear();
    for_each_tensor([&](opt_state& st, CV p, CV g, V d) {
      ts.push_back({p, g, st.m.view(), st.v.view(), d});
      batch_moments_.push_back(st.m.view().data);
      batch_moments_.push_back(st.v.view().data);
    });
    adam_batch_ = kernels_.make_adam_batch(ts);
  }
  /// One launch for every local optimizer step when the fused kernels are on and every state is at
  /// the same step (so one AdamArgs fits all); false (nothing touched) otherwise.
  bool batched_adam_step(double lr) {
    if (!kernels_.enabled()) return false;
    bool same_step = true, same_moments = true;
    std::size_t i = 0;
    const long s0 = layers_.front().stA.front().step;
    for_each_tensor([&](opt_state& st, CV, CV, V) {
      same_step = same_step && st.step == s0;
      same_moments = same_moments && i + 1 < batch_moments_.size() && batch_moments_[i] == st.m.view().data &&
                     batch_moments_[i + 1] == st.v.view().data;
      i += 2;
    });
    if (!same_step) return false;
    if (!same_moments) build_adam_batch();
    AdamArgs a;
    for_each_tensor([&](opt_state& st, CV, CV, V) { a = opt_.step_args(st, lr); });
    return kernels_.adam_step(a, adam_batch_);
  }

  B* b_;
  C* comm_;
  Opt opt_;
  UpdateOptions options_;
  kernels_type kernels_;

 public:
  /// The backend's DWU kernels (tests, diagnostics).
  kernels_type& kernels() { return kernels_; }

 private:
  typename B::matrix_type flag_;
  std::vector<Layer> layers_;
  index_t rank_ = 0;
  std::size_t chunk_ = 0;  // elements of one group's packed deltas
  std::vector<std::size_t> bucket_start_, bucket_len_;  // exchange buckets: first offset, elements (finalize())
  index_t max_in_ = 0;
  bool finalized_ = false;
  typename B::matrix_type send_, recv_, R_;
  typename B::matrix_type delta_;  // Δ scratch of the external W update (allocated on first use)
  WApply w_apply_;
  adam_batch_type adam_batch_{};
  std::vector<CV> finite_views_;  // every local gradient, for the batched non-finite check
  typename B::matrix_type grads_;  // every local gradient, flat (allocate_gradients)
  std::vector<const S*> batch_moments_;  // m, v of every tensor in the table (to notice replaced states)
  long steps_ = 0;
  std::uint64_t w_step_ = 0;  // the stochastic rounding's step (applied steps; set_w_step on resume)
};

}  // namespace hdpissa
