#pragma once
/// \file methods_cuda.cuh
/// hdpissa-train's fine-tuning methods on the GPU: each one a CudaLinearHooks<T> for CudaLlama<T>,
/// built from the library's templates UNCHANGED on CudaBackend (the GPU twins of methods.hpp):
///  - CudaDwuMethod (hdpissa, lora-dwu, pissa-dwu): OrthogonalAdapterInit / LoraInit / PissaInit on
///    CudaBackend<float> (SVD policy ExactSvd = cuSOLVER, or CholeskyRandomizedSvd for
///    --svd randomized), MutedLinear<CudaBackend<T>> forward/backward, and
///    DirectWeightUpdate<CudaBackend<float>, Adam, DevComm, Sum|Mean> on the fp32 W (DevComm =
///    VirtualRanks over CudaSingleProcess or, under mpirun, NcclCommunicator).
///  - CudaAdapterMethod (lora, pissa): AdapterLinear<CudaBackend<T>> + DataParallelUpdate on fp32
///    master adapters.
///  - CudaFullMethod (full): DenseLinear<CudaBackend<T>> + DataParallelUpdate on fp32 master W.
///
/// Precision. T = float: exact fp32 everywhere; the updates write the model's own W (no copy).
/// T = __nv_bfloat16: the model holds bf16 compute copies; the method keeps fp32 masters (W, and
/// the adapters of LoRA / PiSSA) that the optimizer updates, and refreshes the bf16 copies after
/// every step (one conversion kernel per tensor). Gradients: each micro-batch's adapter (or W)
/// gradient comes out of the bf16 layer in bf16 (fp32 accumulation inside the GEMM over the
/// micro-batch's tokens, rounded once) and is added into the fp32 gradient buffers of the update
/// (add_bf16_into_f32), so the sum over micro-batches and groups, Adam and W are all fp32.
/// The DWU factors are constant, so their bf16 copies are made once.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "hdpissa/cuda.hpp"
#include "llama/cuda/linear_hooks_cuda.hpp"
#include "llama/cuda/model_cuda.cuh"
#include "llama/train/device_comm.hpp"
#include "llama/train/methods.hpp"
#include "llama/train/options.hpp"

namespace hdpissa::llama::gpu {

using B32 = hdpissa::CudaBackend<float>;
/// The engine's device communicator: K = processes × local groups; DeviceComm is CudaSingleProcess
/// (one process) or NcclCommunicator (mpirun, one process per GPU), type-erased (train/device_comm.hpp).
using DevComm = hdpissa::VirtualRanks<DeviceComm>;
using V32 = hdpissa::MatrixView<float>;
using CV32 = hdpissa::ConstMatrixView<float>;

namespace detail {
__global__ inline void add_bf16_into_f32_kernel(const __nv_bfloat16* __restrict__ src, float* __restrict__ dst,
                                                std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    dst[i] += __bfloat162float(src[i]);
}
}  // namespace detail

/// dst (fp32) += src (bf16), both contiguous and of the same shape (gradient accumulation).
inline void add_bf16_into_f32(hdpissa::ConstMatrixView<__nv_bfloat16> src, V32 dst, cudaStream_t s) {
  HDPISSA_REQUIRE(src.rows == dst.rows && src.cols == dst.cols, "add_bf16_into_f32: source ",
                  hdpissa::shape_str(src.rows, src.cols), " vs destination ", hdpissa::shape_str(dst.rows, dst.cols));
  HDPISSA_REQUIRE(src.contiguous() && dst.contiguous(), "add_bf16_into_f32: expected contiguous views");
  const std::int64_t n = std::int64_t(dst.rows) * dst.cols;
  if (n == 0) return;
  const int threads = 256;
  const int blocks = int(std::min<std::int64_t>((n + threads - 1) / threads, 4096));
  detail::add_bf16_into_f32_kernel<<<blocks, threads, 0, s>>>(src.data, dst.data, n);
  HDPISSA_CUDA_CHECK_LAUNCH("add_bf16_into_f32_kernel");
}

/// One device tensor of a method's state (fp32, contiguous), and the whole list.
struct DeviceStateTensor {
  std::string name;
  V32 view;
  bool local = false;
};
struct DeviceStateList {
  std::vector<DeviceStateTensor> tensors;
  std::vector<StateCounter> counters;
  void add_adam(const std::string& name, hdpissa::Adam::state<B32>& st, bool local) {
    tensors.push_back({name + ".m", st.m.view(), local});
    tensors.push_back({name + ".v", st.v.view(), local});
    counters.push_back({name + ".step", &st.step, local});
  }
};

/// What a GPU method works with (all on one stream; owned by the engine).
template <class T>
struct GpuContext {
  B32& b32;                  ///< fp32 backend: masters, optimizer, init
  hdpissa::CudaBackend<T>& bt;  ///< compute backend (the same object as b32 when T = float)
  DevComm& comm;             ///< K groups: local groups on this GPU × processes
  CudaLlama<T>& model;
};

/// A GPU fine-tuning method: the model's hooks plus the optimizer step and the state.
template <class T>
class CudaTrainMethod : public CudaLinearHooks<T> {
 public:
  static constexpr bool kF32 = std::is_same_v<T, float>;
  using VT = hdpissa::MatrixView<T>;
  using CVT = hdpissa::ConstMatrixView<T>;

  explicit CudaTrainMethod(GpuContext<T> ctx) : CudaLinearHooks<T>(ctx.model.cublas()), ctx_(ctx) {}

  void set_group(int lg) { group_ = lg; }
  virtual void zero_grad() = 0;
  /// One optimizer step, then the bf16 compute copies refreshed (T = bf16).
  virtual hdpissa::StepReport step(double lr) = 0;
  /// Recomputes every compute copy from the masters (after a state was restored).
  virtual void refresh() = 0;
  /// The merged fp32 weight of target i (W, or W_res + s·B A) into `host` (resized).
  virtual void merged_weight(std::size_t i, Matrix& host) = 0;
  /// Every tensor of the state (weights included) and the counters.
  virtual void collect_state(DeviceStateList& s) = 0;
  virtual void verify_replicas() {}
  [[nodiscard]] virtual std::int64_t trainable_parameters() const = 0;
  [[nodiscard]] virtual std::string describe() const = 0;
  [[nodiscard]] const std::vector<LinearId>& targets() const { return ids_; }
  [[nodiscard]] int slot(LinearId id) const { return slots_[static_cast<std::size_t>(id.index())]; }

 protected:
  void build_slots(const ModelConfig& c, const std::vector<Module>& modules) {
    slots_.assign(static_cast<std::size_t>(c.n_layers) * kModulesPerLayer, -1);
    for (int l = 0; l < c.n_layers; ++l)
      for (int m = 0; m < kModulesPerLayer; ++m)
        for (Module t : modules)
          if (t == static_cast<Module>(m)) {
            const LinearId id{l, t};
            slots_[static_cast<std::size_t>(id.index())] = static_cast<int>(ids_.size());
            ids_.push_back(id);
          }
  }
  /// fp32 masters of the targets: the model's own W (T = float) or copies uploaded from `host`.
  void make_masters(const ModelWeights& host) {
    for (const LinearId& id : ids_) {
      if constexpr (kF32) {
        Wm_.push_back(ctx_.model.linear(id));
      } else {
        const Matrix& W = host.linear(id);
        own_.push_back(ctx_.b32.make_matrix(W.rows(), W.cols()));
        ctx_.b32.upload(W.data(), own_.back().view());
        Wm_.push_back(own_.back().view());
      }
    }
  }
  /// The model's compute copy of target i ← its fp32 master (T = bf16; nothing to do for fp32).
  void push_weight(std::size_t i) {
    if constexpr (!kF32) ctx_.b32.convert(CV32(Wm_[i]), ctx_.model.linear(ids_[i]));
  }
  /// dst (fp32 gradient) += a bf16 micro-batch gradient.
  void accumulate(CVT src, V32 dst) {
    if constexpr (!kF32) add_bf16_into_f32(src, dst, ctx_.b32.stream());
    else (void)src, (void)dst;
  }
  std::pair<index_t, index_t> shape(std::size_t i) const { return {Wm_[i].rows, Wm_[i].cols}; }

  GpuContext<T> ctx_;
  std::vector<LinearId> ids_;
  std::vector<int> slots_;
  std::vector<V32> Wm_;                 // fp32 masters, one per target
  std::vector<B32::Matrix> own_;        // their storage when T = bf16
  int group_ = 0;
};

/// HD-PiSSA and the DWU ablations on the GPU.
template <class T, class Mute, class Agg>
class CudaDwuMethod final : public CudaTrainMethod<T> {
  using Base = CudaTrainMethod<T>;
  using Update = hdpissa::DirectWeightUpdate<B32, hdpissa::Adam, DevComm, Agg>;
  using typename Base::CVT;
  using typename Base::VT;
  using Base::ctx_;
  using Base::ids_;
  using Base::Wm_;
  using Base::group_;

 public:
  CudaDwuMethod(const TrainOptions& o, GpuContext<T> ctx, const ModelWeights& host, const TensorLoader& resume, Mute mute)
      : Base(ctx),
        method_(o.method),
        svd_(o.svd),
        upd_(ctx.b32, ctx.comm, hdpissa::Adam(hdpissa::AdamConfig{0.9, 0.999, 1e-8, o.weight_decay})),
        muted_(ctx.bt, hdpissa::reference_scaling(o.effective_alpha(), o.rank), mute) {
    this->build_slots(host.config, o.target_modules());
    const int K = ctx.comm.groups();
    const index_t r = o.rank;
    for (const LinearId& id : ids_) {
      const Matrix& W = host.linear(id);
      hdpissa::check_adapter_fits(id.hf_name(), W.rows(), W.cols(), o.method == "hdpissa" ? K : 1, r);
    }
    this->make_masters(host);
    if (resume) {
      for (std::size_t i = 0; i < ids_.size(); ++i) {
        const auto [out, in] = this->shape(i);
        sets_.push_back(hdpissa::make_adapter_set(ctx.b32, out, in, K, r));
        Matrix a(K * r, in), b(out, K * r);
        resume("adapter." + ids_[i].hf_name() + ".A", a.data(), K * r, in);
        resume("adapter." + ids_[i].hf_name() + ".B", b.data(), out, K * r);
        ctx.b32.upload(a.data(), sets_.back().A.view());
        ctx.b32.upload(b.data(), sets_.back().B.view());
      }
    } else {
      std::vector<hdpissa::LayerRef<B32>> refs;
      for (std::size_t i = 0; i < ids_.size(); ++i) refs.push_back({ids_[i].hf_name(), CV32(Wm_[i])});
      if (o.method == "lora-dwu") {
        const hdpissa::LoraInit lora{K, r, o.seed, /*same_on_all_groups=*/false};
        auto init = [&](B32& b, CV32 W, const std::string& name) { return lora(b, W.rows, W.cols, name); };
        sets_ = hdpissa::init_adapters_distributed(ctx.b32, ctx.comm, init, refs, K, r);
      } else if (o.method == "pissa-dwu") {
        sets_ = o.svd == "randomized"
                    ? hdpissa::init_adapters_distributed(ctx.b32, ctx.comm,
                                                         hdpissa::PissaInit<hdpissa::CholeskyRandomizedSvd>{K, r, {}}, refs, K, r)
                    : hdpissa::init_adapters_distributed(ctx.b32, ctx.comm, hdpissa::PissaInit<hdpissa::ExactSvd>{K, r, {}},
                                                         refs, K, r);
      } else {
        sets_ = o.svd == "randomized"
                    ? hdpissa::init_adapters_distributed(
                          ctx.b32, ctx.comm, hdpissa::OrthogonalAdapterInit<hdpissa::CholeskyRandomizedSvd>(K, r), refs, K, r)
                    : hdpissa::init_adapters_distributed(ctx.b32, ctx.comm, hdpissa::OrthogonalAdapterInit<hdpissa::ExactSvd>(K, r),
                                                         refs, K, r);
      }
    }
    index_t scratch = 0;
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      upd_.add_layer(ids_[i].hf_name(), Wm_[i], sets_[i]);
      const auto [out, in] = this->shape(i);
      scratch = std::max(scratch, r * (out + in));
    }
    upd_.finalize();
    if constexpr (!Base::kF32) {  // constant factors: bf16 copies once; per-micro-batch gradient scratch
      for (auto& s : sets_) {
        A16_.push_back(ctx.bt.make_matrix(s.A.rows(), s.A.cols()));
        B16_.push_back(ctx.bt.make_matrix(s.B.rows(), s.B.cols()));
      }
      g16_ = ctx.bt.make_matrix(1, scratch);
      refresh();
    }
  }

  void reserve(index_t max_tokens) override {  // called at every pass: a no-op unless it grows
    if (max_tokens <= reserved_) return;
    reserved_ = max_tokens;
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      const auto [out, in] = this->shape(i);
      muted_.reserve(max_tokens, out, in, upd_.rank());
    }
  }
  void forward(LinearId id, CVT W, CVT X, VT Y) override {
    const int s = this->slot(id);
    if (s < 0) return CudaLinearHooks<T>::forward(id, W, X, Y);
    muted_.forward(W, A(std::size_t(s)), Bf(std::size_t(s)), X, Y);
  }
  void backward(LinearId id, CVT W, CVT X, CVT dY, VT dX) override {
    const int s = this->slot(id);
    if (s < 0) return CudaLinearHooks<T>::backward(id, W, X, dY, dX);
    const auto i = std::size_t(s);
    if constexpr (Base::kF32) {
      muted_.backward(W, A(i), Bf(i), X, dY, dX, upd_.grad_A(i, group_), upd_.grad_B(i, group_), /*accumulate=*/true);
    } else {
      const auto [out, in] = this->shape(i);
      const index_t r = upd_.rank();
      VT gA{g16_.data(), r, in, in}, gB{g16_.data() + r * in, out, r, r};
      muted_.backward(W, A(i), Bf(i), X, dY, dX, gA, gB, /*accumulate=*/false);
      this->accumulate(CVT(gA), upd_.grad_A(i, group_));
      this->accumulate(CVT(gB), upd_.grad_B(i, group_));
    }
  }
  void zero_grad() override { upd_.zero_grad(); }
  hdpissa::StepReport step(double lr) override {
    const auto rep = upd_.step(lr);
    if (!rep.skipped)
      for (std::size_t i = 0; i < ids_.size(); ++i) this->push_weight(i);
    return rep;
  }
  void refresh() override {
    for (std::size_t i = 0; i < ids_.size(); ++i) this->push_weight(i);
    if constexpr (!Base::kF32)
      for (std::size_t i = 0; i < sets_.size(); ++i) {
        ctx_.b32.convert(CV32(sets_[i].A.view()), A16_[i].view());
        ctx_.b32.convert(CV32(sets_[i].B.view()), B16_[i].view());
      }
  }
  void merged_weight(std::size_t i, Matrix& host) override {
    host.resize(Wm_[i].rows, Wm_[i].cols);
    ctx_.b32.download(CV32(Wm_[i]), host.data());
  }
  void collect_state(DeviceStateList& s) override {
    const int K = ctx_.comm.groups();
    const auto r = upd_.rank();
    for (std::size_t i = 0; i < ids_.size(); ++i) s.tensors.push_back({"weight." + ids_[i].hf_name(), Wm_[i], false});
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      const std::string n = ids_[i].hf_name();
      s.tensors.push_back({"adapter." + n + ".A", sets_[i].A.view(), false});
      s.tensors.push_back({"adapter." + n + ".B", sets_[i].B.view(), false});
      (void)K, (void)r;
      for (int lg = 0; lg < ctx_.comm.local_groups(); ++lg) {
        const std::string g = cat(".g", ctx_.comm.first_group() + lg);
        s.add_adam("adam." + n + g + ".A", upd_.state_A(i, lg), true);
        s.add_adam("adam." + n + g + ".B", upd_.state_B(i, lg), true);
      }
    }
  }
  void verify_replicas() override { upd_.verify_replicas(); }
  [[nodiscard]] std::int64_t trainable_parameters() const override {
    std::int64_t n = 0;
    for (const auto& set : sets_) n += std::int64_t(set.A.rows()) * set.A.cols() + std::int64_t(set.B.rows()) * set.B.cols();
    return n;
  }
  [[nodiscard]] std::string describe() const override {
    const char* svd = svd_ == "randomized" ? "CholeskyRandomizedSvd" : "ExactSvd (cuSOLVER)";
    std::string init = method_ == "hdpissa"    ? cat("OrthogonalAdapterInit<", svd, ">")
                       : method_ == "lora-dwu" ? std::string("LoraInit (distinct seed per group)")
                                               : cat("PissaInit<", svd, "> (top-r on every group)");
    return cat(init, " + MutedLinear<", Mute::name(), "> (scaling ", muted_.scaling(), ") + DirectWeightUpdate<",
               Agg::name(), "> with per-group Adam on CudaBackend<float>; K = ", ctx_.comm.groups(), ", r = ", upd_.rank());
  }
  Update& update() { return upd_; }

 private:
  /// Group (first_group + group_)'s factors in the compute type.
  CVT A(std::size_t i) const {
    const int G = ctx_.comm.first_group() + group_;
    if constexpr (Base::kF32) return upd_.A(i, G);
    else return CVT(const_cast<hdpissa::CudaBackend<T>::Matrix&>(A16_[i]).view().row_block(G * upd_.rank(), upd_.rank()));
  }
  CVT Bf(std::size_t i) const {
    const int G = ctx_.comm.first_group() + group_;
    if constexpr (Base::kF32) return upd_.Bf(i, G);
    else return CVT(const_cast<hdpissa::CudaBackend<T>::Matrix&>(B16_[i]).view().col_block(G * upd_.rank(), upd_.rank()));
  }

  std::string method_, svd_;
  Update upd_;
  hdpissa::MutedLinear<hdpissa::CudaBackend<T>, Mute> muted_;
  std::vector<hdpissa::AdapterSet<B32>> sets_;
  std::vector<typename hdpissa::CudaBackend<T>::Matrix> A16_, B16_;
  typename hdpissa::CudaBackend<T>::Matrix g16_;
  index_t reserved_ = 0;
};

/// LoRA / PiSSA on the GPU: one active adapter per target, data-parallel over the K groups.
template <class T>
class CudaAdapterMethod final : public CudaTrainMethod<T> {
  using Base = CudaTrainMethod<T>;
  using Update = hdpissa::DataParallelUpdate<B32, hdpissa::Adam, DevComm>;
  using typename Base::CVT;
  using typename Base::VT;
  using Base::ctx_;
  using Base::ids_;
  using Base::Wm_;
  using Base::group_;

 public:
  CudaAdapterMethod(const TrainOptions& o, GpuContext<T> ctx, const ModelWeights& host, bool resuming)
      : Base(ctx),
        method_(o.method),
        upd_(ctx.b32, ctx.comm, hdpissa::Adam(hdpissa::AdamConfig{0.9, 0.999, 1e-8, o.weight_decay})),
        lin_(ctx.bt, hdpissa::reference_scaling(o.effective_alpha(), o.rank)),
        scaling_(hdpissa::reference_scaling(o.effective_alpha(), o.rank)) {
    this->build_slots(host.config, o.target_modules());
    const index_t r = o.rank;
    for (const LinearId& id : ids_) {
      const Matrix& W = host.linear(id);
      hdpissa::check_adapter_fits(id.hf_name(), W.rows(), W.cols(), 1, r);
    }
    this->make_masters(host);
    if (resuming) {  // factors, W_res and moments come from the state (restore_state)
      for (std::size_t i = 0; i < ids_.size(); ++i) {
        const auto [out, in] = this->shape(i);
        sets_.push_back(hdpissa::make_adapter_set(ctx.b32, out, in, 1, r));
      }
    } else {
      std::vector<hdpissa::LayerRef<B32>> refs;
      for (std::size_t i = 0; i < ids_.size(); ++i) refs.push_back({ids_[i].hf_name(), CV32(Wm_[i])});
      if (o.method == "lora") {
        const hdpissa::LoraInit lora{1, r, o.seed, /*same_on_all_groups=*/true};
        auto init = [&](B32& b, CV32 W, const std::string& name) { return lora(b, W.rows, W.cols, name); };
        sets_ = hdpissa::init_adapters_distributed(ctx.b32, ctx.comm, init, refs, 1, r);
      } else {
        sets_ = o.svd == "randomized"
                    ? hdpissa::init_adapters_distributed(ctx.b32, ctx.comm,
                                                         hdpissa::PissaInit<hdpissa::CholeskyRandomizedSvd>{1, r, {}}, refs, 1, r)
                    : hdpissa::init_adapters_distributed(ctx.b32, ctx.comm, hdpissa::PissaInit<hdpissa::ExactSvd>{1, r, {}},
                                                         refs, 1, r);
        for (std::size_t i = 0; i < ids_.size(); ++i) {  // W_res = W − s·B A
          hdpissa::subtract_adapter(ctx.b32, Wm_[i], sets_[i], 0, scaling_);
          this->push_weight(i);
        }
      }
    }
    index_t scratch = 0, merge = 0;
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      pA_.push_back(upd_.add_param(ids_[i].hf_name() + ".lora_A", sets_[i].A.view()));
      pB_.push_back(upd_.add_param(ids_[i].hf_name() + ".lora_B", sets_[i].B.view()));
      const auto [out, in] = this->shape(i);
      scratch = std::max(scratch, r * (out + in));
      merge = std::max(merge, out * in);
    }
    upd_.finalize();
    merge_size_ = merge;
    if constexpr (!Base::kF32) {
      for (auto& s : sets_) {
        A16_.push_back(ctx.bt.make_matrix(s.A.rows(), s.A.cols()));
        B16_.push_back(ctx.bt.make_matrix(s.B.rows(), s.B.cols()));
      }
      g16_ = ctx.bt.make_matrix(1, scratch);
      refresh_adapters();
    }
  }

  void forward(LinearId id, CVT W, CVT X, VT Y) override {
    const int s = this->slot(id);
    if (s < 0) return CudaLinearHooks<T>::forward(id, W, X, Y);
    lin_.forward(W, A(std::size_t(s)), Bf(std::size_t(s)), X, Y);
  }
  void backward(LinearId id, CVT W, CVT X, CVT dY, VT dX) override {
    const int s = this->slot(id);
    if (s < 0) return CudaLinearHooks<T>::backward(id, W, X, dY, dX);
    const auto i = std::size_t(s);
    if constexpr (Base::kF32) {
      lin_.backward(W, A(i), Bf(i), X, dY, dX, upd_.grad(pA_[i], group_), upd_.grad(pB_[i], group_), /*accumulate=*/true);
    } else {
      const auto [out, in] = this->shape(i);
      const index_t r = sets_[i].rank;
      VT gA{g16_.data(), r, in, in}, gB{g16_.data() + r * in, out, r, r};
      lin_.backward(W, A(i), Bf(i), X, dY, dX, gA, gB, /*accumulate=*/false);
      this->accumulate(CVT(gA), upd_.grad(pA_[i], group_));
      this->accumulate(CVT(gB), upd_.grad(pB_[i], group_));
    }
  }
  void zero_grad() override { upd_.zero_grad(); }
  hdpissa::StepReport step(double lr) override {
    const auto rep = upd_.step(lr);
    if (!rep.skipped) refresh_adapters();
    return rep;
  }
  void refresh() override {
    for (std::size_t i = 0; i < ids_.size(); ++i) this->push_weight(i);
    refresh_adapters();
  }
  /// W_res + s·B A, computed on the device in fp32 (not a hot path).
  void merged_weight(std::size_t i, Matrix& host) override {
    if (merge_.rows() == 0) merge_ = ctx_.b32.make_matrix(1, merge_size_);
    const auto [out, in] = this->shape(i);
    V32 M{merge_.data(), out, in, in};
    ctx_.b32.copy(CV32(Wm_[i]), M);
    ctx_.b32.gemm(hdpissa::Op::N, hdpissa::Op::N, float(scaling_), CV32(sets_[i].B.view()), CV32(sets_[i].A.view()),
                  1.0f, M);
    host.resize(out, in);
    ctx_.b32.download(CV32(M), host.data());
  }
  void collect_state(DeviceStateList& s) override {
    for (std::size_t i = 0; i < ids_.size(); ++i) s.tensors.push_back({"weight." + ids_[i].hf_name(), Wm_[i], false});
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      const std::string n = ids_[i].hf_name();
      s.tensors.push_back({"adapter." + n + ".A", sets_[i].A.view(), false});
      s.tensors.push_back({"adapter." + n + ".B", sets_[i].B.view(), false});
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
               " + AdapterLinear (scaling ", scaling_, ") + DataParallelUpdate with Adam on CudaBackend<float>; K = ",
               ctx_.comm.groups(), " groups share one adapter");
  }

 private:
  void refresh_adapters() {
    if constexpr (!Base::kF32)
      for (std::size_t i = 0; i < sets_.size(); ++i) {
        ctx_.b32.convert(CV32(sets_[i].A.view()), A16_[i].view());
        ctx_.b32.convert(CV32(sets_[i].B.view()), B16_[i].view());
      }
  }
  CVT A(std::size_t i) const {
    if constexpr (Base::kF32) return sets_[i].A.view();
    else return A16_[i].view();
  }
  CVT Bf(std::size_t i) const {
    if constexpr (Base::kF32) return sets_[i].B.view();
    else return B16_[i].view();
  }

  std::string method_;
  Update upd_;
  hdpissa::AdapterLinear<hdpissa::CudaBackend<T>> lin_;
  double scaling_;
  std::vector<hdpissa::AdapterSet<B32>> sets_;
  std::vector<std::size_t> pA_, pB_;
  std::vector<typename hdpissa::CudaBackend<T>::Matrix> A16_, B16_;
  typename hdpissa::CudaBackend<T>::Matrix g16_;
  B32::Matrix merge_;
  index_t merge_size_ = 0;
};

/// Full fine-tuning of the target linears on the GPU (data-parallel over the K groups).
template <class T>
class CudaFullMethod final : public CudaTrainMethod<T> {
  using Base = CudaTrainMethod<T>;
  using Update = hdpissa::DataParallelUpdate<B32, hdpissa::Adam, DevComm>;
  using typename Base::CVT;
  using typename Base::VT;
  using Base::ctx_;
  using Base::ids_;
  using Base::Wm_;
  using Base::group_;

 public:
  CudaFullMethod(const TrainOptions& o, GpuContext<T> ctx, const ModelWeights& host)
      : Base(ctx), upd_(ctx.b32, ctx.comm, hdpissa::Adam(hdpissa::AdamConfig{0.9, 0.999, 1e-8, o.weight_decay})), lin_(ctx.bt) {
    this->build_slots(host.config, o.target_modules());
    this->make_masters(host);
    index_t scratch = 0;
    for (std::size_t i = 0; i < ids_.size(); ++i) {
      p_.push_back(upd_.add_param(ids_[i].hf_name(), Wm_[i]));
      n_ += std::int64_t(Wm_[i].rows) * Wm_[i].cols;
      scratch = std::max(scratch, Wm_[i].rows * Wm_[i].cols);
    }
    upd_.finalize();
    if constexpr (!Base::kF32) g16_ = ctx.bt.make_matrix(1, scratch);
  }
  void forward(LinearId id, CVT W, CVT X, VT Y) override {
    if (this->slot(id) < 0) return CudaLinearHooks<T>::forward(id, W, X, Y);
    lin_.forward(W, X, Y);
  }
  void backward(LinearId id, CVT W, CVT X, CVT dY, VT dX) override {
    const int s = this->slot(id);
    if (s < 0) return CudaLinearHooks<T>::backward(id, W, X, dY, dX);
    const auto i = std::size_t(s);
    if constexpr (Base::kF32) {
      lin_.backward(W, X, dY, dX, upd_.grad(p_[i], group_), /*accumulate=*/true);
    } else {
      VT gW{g16_.data(), W.rows, W.cols, W.cols};
      lin_.backward(W, X, dY, dX, gW, /*accumulate=*/false);
      this->accumulate(CVT(gW), upd_.grad(p_[i], group_));
    }
  }
  void zero_grad() override { upd_.zero_grad(); }
  hdpissa::StepReport step(double lr) override {
    const auto rep = upd_.step(lr);
    if (!rep.skipped)
      for (std::size_t i = 0; i < ids_.size(); ++i) this->push_weight(i);
    return rep;
  }
  void refresh() override {
    for (std::size_t i = 0; i < ids_.size(); ++i) this->push_weight(i);
  }
  void merged_weight(std::size_t i, Matrix& host) override {
    host.resize(Wm_[i].rows, Wm_[i].cols);
    ctx_.b32.download(CV32(Wm_[i]), host.data());
  }
  void collect_state(DeviceStateList& s) override {
    for (std::size_t i = 0; i < ids_.size(); ++i) s.tensors.push_back({"weight." + ids_[i].hf_name(), Wm_[i], false});
    for (std::size_t i = 0; i < ids_.size(); ++i) s.add_adam("adam." + ids_[i].hf_name(), upd_.state(p_[i]), false);
  }
  [[nodiscard]] std::int64_t trainable_parameters() const override { return n_; }
  [[nodiscard]] std::string describe() const override {
    return cat("DenseLinear + DataParallelUpdate with Adam on every target W (fp32 masters, CudaBackend<float>); K = ",
               ctx_.comm.groups(), " groups (embeddings, norms, lm_head frozen)");
  }

 private:
  Update upd_;
  hdpissa::DenseLinear<hdpissa::CudaBackend<T>> lin_;
  std::vector<std::size_t> p_;
  std::int64_t n_ = 0;
  typename hdpissa::CudaBackend<T>::Matrix g16_;
};

/// Builds the GPU method named by `o.method` (the GPU twin of make_method).
template <class T>
std::unique_ptr<CudaTrainMethod<T>> make_cuda_method(const TrainOptions& o, GpuContext<T> ctx, const ModelWeights& host,
                                                     const TensorLoader& resume) {
  if (o.method == "full") return std::make_unique<CudaFullMethod<T>>(o, ctx, host);
  if (o.uses_adapter()) return std::make_unique<CudaAdapterMethod<T>>(o, ctx, host, bool(resume));
  const bool mean = o.aggregation == "mean";
  if (o.mute_gamma > 0) {
    const hdpissa::ScaledMute m{o.mute_gamma};
    if (mean) return std::make_unique<CudaDwuMethod<T, hdpissa::ScaledMute, hdpissa::MeanAggregation>>(o, ctx, host, resume, m);
    return std::make_unique<CudaDwuMethod<T, hdpissa::ScaledMute, hdpissa::SumAggregation>>(o, ctx, host, resume, m);
  }
  if (mean)
    return std::make_unique<CudaDwuMethod<T, hdpissa::ExactMute, hdpissa::MeanAggregation>>(o, ctx, host, resume, hdpissa::ExactMute{});
  return std::make_unique<CudaDwuMethod<T, hdpissa::ExactMute, hdpissa::SumAggregation>>(o, ctx, host, resume, hdpissa::ExactMute{});
}

}  // namespace hdpissa::llama::gpu
