#pragma once
/// \file linear_hooks.hpp
/// LinearHooks<Backend>: the one place where a model touches a target linear (q, k, v, o, gate, up,
/// down), on any backend. Both models call it: the CPU model (model.hpp) with
/// LinearHooks<EigenBackend<float>>, the GPU model (cuda/model_cuda.cuh) with
/// LinearHooks<CudaBackend<T>>, T = float or bf16. A fine-tuning method (train/methods.hpp, written
/// once for every backend) is a LinearHooks; the models never change.
///
/// All operands are row-major library views (hdpissa::MatrixView) in the backend's memory space.
/// Contract (required expressions, `h` a LinearHooks<B>&, `id` a LinearId, `W` the model's (out, in)
/// weight in the backend's scalar type):
///  - `h.reserve(max_tokens)`: called by a model before every pass with the largest token count it
///    will use; allocate workspaces on the first call or when it grows, else do nothing.
///  - `h.forward(id, W, X, Y)`: X (tokens, in) → Y (tokens, out); Y is preallocated and must be
///    overwritten. Plain linear: `Y = X Wᵀ`.
///  - `h.backward(id, W, X, dY, dX)`: X is the input the forward saw for this id; dY (tokens, out)
///    is ∂loss/∂Y; dX (tokens, in) must be OVERWRITTEN with ∂loss/∂X (plain: `dX = dY W`). Weight or
///    adapter gradients are the hook's own business and are ACCUMULATED (gradient accumulation runs
///    backward once per micro-batch before one optimizer step).
///  - `h.forward_shared(lins, X)`: the forward of linears that read the same X (a layer's q, k, v
///    and gate, up), each `lins[j]` = {id, W, Y} under forward()'s contract; the default calls
///    forward() for each. The GPU model calls it; LoRA / PiSSA on bf16 compute read X once for the
///    group's X·Aᵀ (and keep it for backward_shared).
///  - `h.backward_shared(lins, X)`: the backward of linears that read the same X (a layer's v, k, q
///    and up, gate: kSharedInputAttention, kSharedInputMlp), each `lins[j]` = {id, W, dY, dX} under backward()'s
///    contract, in the order given. The default calls backward() for each; hooks may override it to
///    share work over X (the DWU methods on bf16 compute with the exact mute read X twice for the
///    group instead of twice per linear, when every member is a target). A
///    model may call it or the per-linear backward() (the GPU model calls it; the CPU model, which
///    reuses one dX scratch across the group, calls backward()).
///  - `h.amax_hint(data, rows, cols, ld)` / `h.drop_amax_hints()` (optional; FP8 compute): a model
///    about to write a tensor t that it passes next as a forward's X or a backward's dY may ask for a
///    device fp32 slot (zeroed) into which its kernel maxes max |t|; hooks that quantise t then skip
///    their own amax pass. nullptr (the default): the hooks do not want it. The model calls
///    drop_amax_hints() after the hooks call that follows the producer.
///  - Order: forward in layer order (q, k, v, o, gate, up, down), backward in reverse. A forward
///    without a backward happens for evaluation and generation.
///  - Device backends: every call is enqueued on the backend's stream, which must be the model's;
///    hooks never synchronise and never allocate in forward/backward.

#include <array>
#include <memory>
#include <span>
#include <type_traits>

#include "hdpissa/backend/eigen/eigen_backend.hpp"
#include "hdpissa/core/concepts.hpp"
#include "llama/common.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama {

/// The linears of a LLaMA layer that read the same input, in the order the backward reaches them
/// (reverse layer order): v, k, q read the attention's normalised input; up, gate the MLP's.
inline constexpr std::array<Module, 3> kSharedInputAttention{Module::v, Module::k, Module::q};
inline constexpr std::array<Module, 2> kSharedInputMlp{Module::up, Module::gate};

/// The CPU model's backend.
using CpuBackend = hdpissa::EigenBackend<float>;

/// Base hooks = frozen plain linear through the backend's GEMM: Y = X Wᵀ, dX = dY W.
template <class Backend = CpuBackend>
class LinearHooks {
 public:
  using backend_type = Backend;
  using S = typename Backend::scalar_type;
  using CV = ConstMatrixView<S>;
  using V = MatrixView<S>;

  /// Hooks over `b` (borrowed; device backends must run on the model's stream).
  explicit LinearHooks(Backend& b) : b_(&b) {}
  /// Host backends only: hooks with a backend of their own (plain CPU linears, tests).
  LinearHooks()
    requires std::is_same_v<typename Backend::memory_space, host_memory>
      : own_(std::make_unique<Backend>()), b_(own_.get()) {}
  LinearHooks(const LinearHooks&) = delete;
  LinearHooks& operator=(const LinearHooks&) = delete;
  virtual ~LinearHooks() = default;

  virtual void reserve(index_t max_tokens) { (void)max_tokens; }
  /// Y = X Wᵀ.  // X (tokens, in), W (out, in), Y (tokens, out)
  virtual void forward(LinearId id, CV W, CV X, V Y) {
    (void)id;
    b_->gemm(Op::N, Op::T, 1, X, W, 0, Y);
  }
  /// dX = dY W.  // dY (tokens, out), W (out, in), dX (tokens, in)
  virtual void backward(LinearId id, CV W, CV X, CV dY, V dX) {
    (void)id;
    (void)X;
    b_->gemm(Op::N, Op::N, 1, dY, W, 0, dX);
  }

  /// One linear of forward_shared(): its id, W (out, in) and Y (tokens, out).
  struct SharedForwardLinear {
    LinearId id;
    CV W;
    V Y;
  };
  /// forward() of linears that read the same X, in order (the default: one forward() each).
  virtual void forward_shared(std::span<const SharedForwardLinear> lins, CV X) {
    for (const auto& l : lins) forward(l.id, l.W, X, l.Y);
  }
  /// One linear of backward_shared(): its id, W (out, in), dY (tokens, out) and dX (tokens, in).
  struct SharedLinear {
    LinearId id;
    CV W, dY;
    V dX;
  };
  /// backward() of linears that read the same X, in order (the default: one backward() each).
  virtual void backward_shared(std::span<const SharedLinear> lins, CV X) {
    for (const auto& l : lins) backward(l.id, l.W, X, l.dY, l.dX);
  }

  /// A device fp32 slot, zeroed, for max |t| of t = (data, rows, cols, ld), which the model writes
  /// next and passes to the next call as X or dY (see the file comment); nullptr: not wanted.
  virtual float* amax_hint(const S* data, index_t rows, index_t cols, index_t ld) {
    (void)data, (void)rows, (void)cols, (void)ld;
    return nullptr;
  }
  /// Forgets every amax_hint().
  virtual void drop_amax_hints() {}

  Backend& backend() const { return *b_; }

 private:
  std::unique_ptr<Backend> own_;
  Backend* b_;
};

/// The CPU model's hooks.
using CpuHooks = LinearHooks<CpuBackend>;

/// Library views of the CPU model's Eigen matrices (row-major; ld = outer stride).
inline ConstMatrixView<float> view_of(const Matrix& m) { return {m.data(), m.rows(), m.cols(), m.cols()}; }
inline MatrixView<float> view_of(Matrix& m) { return {m.data(), m.rows(), m.cols(), m.cols()}; }
inline ConstMatrixView<float> view_of(ConstMatrixRef r) { return {r.data(), r.rows(), r.cols(), r.outerStride()}; }
inline MatrixView<float> view_of(MatrixRef r) { return {r.data(), r.rows(), r.cols(), r.outerStride()}; }

/// CPU convenience base for hooks written over Eigen (tests, quick experiments): the view-based
/// calls are forwarded to Eigen-typed virtuals with the same contract.
class EigenHooks : public CpuHooks {
 public:
  void forward(LinearId id, CV W, CV X, V Y) final { forward(id, eigen(W), eigen(X), eigen(Y)); }
  void backward(LinearId id, CV W, CV X, CV dY, V dX) final {
    backward(id, eigen(W), eigen(X), eigen(dY), eigen(dX));
  }
  /// Y = X Wᵀ.
  virtual void forward(LinearId id, ConstMatrixRef W, ConstMatrixRef X, MatrixRef Y) {
    (void)id;
    Y.noalias() = X * W.transpose();
  }
  /// dX = dY W.
  virtual void backward(LinearId id, ConstMatrixRef W, ConstMatrixRef X, ConstMatrixRef dY, MatrixRef dX) {
    (void)id;
    (void)X;
    dX.noalias() = dY * W;
  }

 private:
  using CMap = Eigen::Map<const Matrix, 0, Eigen::OuterStride<>>;
  using MMap = Eigen::Map<Matrix, 0, Eigen::OuterStride<>>;
  static CMap eigen(CV v) { return CMap(v.data, v.rows, v.cols, Eigen::OuterStride<>(v.ld)); }
  static MMap eigen(V v) { return MMap(v.data, v.rows, v.cols, Eigen::OuterStride<>(v.ld)); }
};

/// Full fine-tuning on the CPU without the library's update (reference gradients in tests): the
/// plain linear plus gW += dYᵀ X into `grads` (a ModelWeights-shaped buffer).
class FullFineTuneHooks : public LinearHooks<CpuBackend> {
 public:
  /// `grads` must outlive the hooks and have the model's shapes (ModelWeights::zeros_like).
  explicit FullFineTuneHooks(ModelWeights& grads) : grads_(&grads) {}

  void backward(LinearId id, CV W, CV X, CV dY, V dX) override {
    LinearHooks::backward(id, W, X, dY, dX);
    backend().gemm(Op::T, Op::N, 1, dY, X, 1, view_of(grads_->linear(id)));  // (out, in)
  }

 private:
  ModelWeights* grads_;
};

}  // namespace hdpissa::llama
