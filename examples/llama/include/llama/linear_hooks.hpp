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
///  - `h.backward_shared_summed(lins, X, dX_sum)` (optional; the GPU model asks first): backward_shared()
///    with the group's input gradient summed, dX_sum (tokens, in) OVERWRITTEN with Σ_j dY_j-path
///    ∂loss/∂X (each lins[j].dX unused). Returns false, having done nothing, when the hooks do not
///    offer it (the default); the model then calls backward_shared(). The GPU model passes the
///    members' dY as consecutive column blocks of one buffer, so hooks can read them as one
///    (tokens, Σ out) matrix against the model's consecutive W rows (stack_linears()).
///  - `h.join_backward()` (optional): the model is about to overwrite tensors it passed as X or dY
///    to earlier backward calls (a layer's norm backward rewrites the dY of o and down; the
///    buffers of the layer before follow): hooks that read them elsewhere (device hooks: on another
///    stream) make the model's stream wait for those reads here. The GPU model calls it at the end
///    of its backward, and before each of a layer's two RMSNorm backwards when it recomputes
///    activations (checkpointing).
///  - `h.join_backward_lagged()` (optional; default join_backward()): the model is about to overwrite
///    tensors it passed as X or dY to the backward calls made before its previous
///    join_backward_lagged() (or join_backward()), not those since: hooks that read on another stream
///    wait for the earlier calls' reads only. The GPU model without checkpointing calls it before
///    each RMSNorm backward: the norm backwards' outputs (the dY of o and down) alternate between two
///    buffers, and what a half-layer's calls read is rewritten two norm backwards later at the
///    earliest; so the adapter gradients of one half-layer may run beside the next half-layer.
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
#include <optional>
#include <span>
#include <type_traits>
#include <utility>

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

  /// backward_shared() with the members' dX summed into dX_sum (see the file comment); false: not
  /// offered (the default), nothing done.
  virtual bool backward_shared_summed(std::span<const SharedLinear> lins, CV X, V dX_sum) {
    (void)lins, (void)X, (void)dX_sum;
    return false;
  }

  /// See the file comment: finish reading earlier backward calls' X and dY (default: nothing to do).
  virtual void join_backward() {}
  /// See the file comment: finish reading the X and dY of the backward calls made before the
  /// previous join_backward_lagged() (default: join_backward(), which finishes them all).
  virtual void join_backward_lagged() { join_backward(); }

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

/// n ≤ 3 linears that read one X, seen as one: their W_j consecutive row blocks of W (Σ out, in) and
/// their outputs Z_j (Y in a forward, dY in a backward) consecutive column blocks of Z (tokens, Σ out),
/// in the same order. `order[p]` is the member (index into the caller's list) at position p.
template <class S>
struct StackedLinears {
  ConstMatrixView<S> W;
  ConstMatrixView<S> Z;
  std::array<std::size_t, 3> order{};
  std::size_t n = 0;
};

/// The members (W_j, Z_j) as one stacked linear, or nothing when their storage is not laid out so (W
/// rows not consecutive in one matrix of one ld, Z blocks not consecutive columns of one matrix of
/// one ld, widths differing between W_j and Z_j): the GPU model's [W_q; W_k; W_v] rows and
/// [q | k | v] output columns, in any order given.
template <class S>
std::optional<StackedLinears<S>> stack_linears(std::span<const ConstMatrixView<S>> W,
                                               std::span<const ConstMatrixView<S>> Z) {
  StackedLinears<S> st;
  st.n = W.size();
  if (st.n < 2 || st.n > 3 || Z.size() != st.n) return std::nullopt;
  for (std::size_t j = 0; j < st.n; ++j) st.order[j] = j;
  for (std::size_t p = 1; p < st.n; ++p)  // by W's address (insertion sort of ≤ 3)
    for (std::size_t q = p; q > 0 && W[st.order[q]].data < W[st.order[q - 1]].data; --q)
      std::swap(st.order[q], st.order[q - 1]);
  const ConstMatrixView<S>& w0 = W[st.order[0]];
  const ConstMatrixView<S>& z0 = Z[st.order[0]];
  index_t out = 0;
  for (std::size_t p = 0; p < st.n; ++p) {
    const ConstMatrixView<S>& w = W[st.order[p]];
    const ConstMatrixView<S>& z = Z[st.order[p]];
    if (!w.data || !z.data || w.cols != w0.cols || w.ld != w0.ld || z.rows != z0.rows || z.ld != z0.ld ||
        z.cols != w.rows || w.data != w0.data + out * w0.ld || z.data != z0.data + out)
      return std::nullopt;
    out += w.rows;
  }
  if (out > z0.ld) return std::nullopt;
  st.W = ConstMatrixView<S>(w0.data, out, w0.cols, w0.ld);
  st.Z = ConstMatrixView<S>(z0.data, z0.rows, out, z0.ld);
  return st;
}

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
