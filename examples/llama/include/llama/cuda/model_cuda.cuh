#pragma once
/// \file model_cuda.cuh
/// CudaLlama<T>: the LLaMA decoder of model.hpp on one GPU — forward with the chunked cross-entropy
/// and backward down to every target linear's input, with every target linear going through
/// LinearHooks<CudaBackend<T>> (linear_hooks.hpp). Only target linears train: the model computes no
/// gradient for the embedding, the norms or the classifier (they are frozen in every method).
///
/// T = float: fp32 throughout, exact fp32 GEMMs (no TF32) — matches the CPU model to ~1e-5.
/// T = __nv_bfloat16: target linears, the classifier copy and every GEMM operand in bf16 with fp32
/// accumulation; the residual stream, RMSNorm statistics, attention scores / softmax statistics and
/// the cross-entropy in fp32.
///
/// Layout. N = B·T token rows (b·T + t), right-padded exactly like the CPU model: padded rows run
/// through the linears but are never attended to (attention output 0) and carry no gradient.
/// Attention keeps q, k, v head-major, (B, heads, T, hd), so that the query heads of one KV group are
/// one contiguous (group·T, hd) matrix: every attention product is ONE strided-batched GEMM over the
/// B·n_kv groups, and GQA's reduction over a group's query heads (dK, dV) happens inside the GEMM
/// (no atomics, deterministic). Two attention implementations, chosen at construction (Attention):
///  - Flash (the default for bf16 with head_dim 64 or 128): fused tensor-core kernels
///    (flash_attn.cuh) that never materialise the scores; forward saves the row log-sum-exp, the
///    backward recomputes P tile by tile; deterministic.
///  - Gemm (fp32, other head dims, or Attention::Gemm): the scores live in one
///    layer-sized fp32 workspace (B·n_heads·T·T) and every product is one strided-batched cuBLAS
///    GEMM; the forward saves only the row log-sum-exp, the backward recomputes P.
/// The loss runs over target rows only, in chunks of `loss_chunk_rows` rows of full-vocabulary
/// logits (one fused kernel: loss and d(logits) in place, then the dX GEMM of the chunk).
///
/// Every buffer is allocated in the constructor for max_batch × max_seq tokens: a step allocates
/// nothing and synchronises once (reading back the per-row losses). The Gemm attention workspace
/// takes max_batch·n_heads·max_seq²·(8 + 2·sizeof(T)) bytes (S and dP in fp32, P and dS in T):
/// 160 MiB at TinyLlama's 32 heads, 2 × 512 in bf16, growing with the square of max_seq; Flash
/// needs 3·max_batch·max_seq·q_dim fp32 (the per-head dQ, dK, dV) instead.

#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/backend/cuda/cuda_handles.hpp"
#include "hdpissa/core/view.hpp"
#include "llama/batch.hpp"
#include "llama/config.hpp"
#include "llama/cuda/cublas_gemm.hpp"
#include "llama/cuda/flash_attn.cuh"
#include "llama/cuda/kernels_llama.cuh"
#include "hdpissa/backend/cuda/cuda_backend.hpp"
#include "llama/linear_hooks.hpp"
#include "llama/model.hpp"  // LossResult
#include "llama/stored_linears.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama::gpu {

/// Attention implementation of CudaLlama (see the file comment). Auto = Flash where supported
/// (bf16, head_dim 64 or 128), Gemm elsewhere. The model reads no environment: a program that
/// lets the environment choose maps it to this value itself.
enum class Attention { Auto, Flash, Gemm };

/// The hooks of the GPU model: the target linears on CudaBackend<T>, on the model's stream.
template <class T>
using CudaHooks = LinearHooks<hdpissa::CudaBackend<T>>;

/// The LLaMA decoder on one GPU (see the file comment). Not copyable; one stream, one cuBLAS handle.

template <class T>
class CudaLlama {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>, "compute type: float or bf16");

 public:
  using compute_type = T;

  /// Uploads `host` (fp32): the embedding (fp32, for the gather), the classifier (T copy; the
  /// embedding when tied), the norms (fp32) and the 7·n_layers target linears (T). Preallocates every
  /// activation and workspace buffer for `max_batch` × `max_seq` tokens. `stream` is borrowed (may be
  /// 0 = the legacy default stream); the model creates its own cuBLAS handle bound to it.
  /// `loss_chunk_rows`: rows of full-vocabulary fp32 logits alive at once.
  /// `attention`: Flash throws (naming what it needs) where unsupported; Auto falls back to Gemm.
  /// `activation_checkpointing`: keep only each decoder layer's residual-stream input and mid-layer
  /// residual (fp32) and ONE layer's saved activations; backward recomputes layer l's forward (its
  /// norms, q/k/v/o/gate/up through the hooks, attention, SwiGLU) just before its backward. The
  /// recompute runs the same kernels on the same inputs, so the gradients are bit-identical to the
  /// stored-activation path; it costs one more forward of every layer but the last.
  /// `keep_swiglu`: keep every layer's silu(gate)·up (the X of down) from the forward for the
  /// backward, instead of one shared buffer that the backward refills from gate and up with the same
  /// kernel: + (n_layers − 1)·N·H·sizeof(T) (2.6 GiB at LLaMA-2-7B, 8 × 512, bf16), one elementwise
  /// pass over gate and up less per layer and micro-batch; the same bits either way. Not with
  /// activation checkpointing (which recomputes the layer anyway): throws naming both.
  CudaLlama(const ModelWeights& host, int max_batch, int max_seq, cudaStream_t stream, int loss_chunk_rows = 1024,
            Attention attention = Attention::Auto, bool activation_checkpointing = false, bool keep_swiglu = false);
  CudaLlama(const CudaLlama&) = delete;
  CudaLlama& operator=(const CudaLlama&) = delete;
  ~CudaLlama();

  /// The loss chunk a trainer should pass for a vocabulary of `vocab` entries: as many rows as keep
  /// the chunk's full-vocabulary logits (fp32) and, for bf16, their gradient (T) within 192 MiB, a
  /// multiple of 64 in [64, 1024] (bf16: LLaMA-2's 32,000 → 1024 rows; LLaMA-3's 128,256 → 256).
  /// (Session 13 had 96 MiB, 512 rows at 32k; session 18 measured 1024 rows 1.5 % faster at
  /// TinyLlama 8 × 512 for +96 MiB, docs/throughput.md.)
  static int default_loss_chunk_rows(int vocab) {
    // fp32 logits (4 bytes) and, for bf16, their gradient in T (fp32 writes it in place).
    constexpr std::int64_t grad = std::is_same_v<T, float> ? 0 : std::int64_t(sizeof(T));
    const std::int64_t per_row = static_cast<std::int64_t>(std::max(vocab, 1)) * (4 + grad);
    const std::int64_t rows = (std::int64_t(192) << 20) / per_row / 64 * 64;
    return static_cast<int>(std::clamp<std::int64_t>(rows, 64, 1024));
  }

  /// Hyper-parameters.
  const ModelConfig& config() const { return cfg_; }
  /// True when the fused flash kernels run the attention, false for the materialised (Gemm) path.
  bool flash_attention() const { return flash_; }
  /// Whether backward recomputes each layer's activations (the constructor's argument).
  bool activation_checkpointing() const { return ckpt_; }
  /// Whether every layer keeps its SwiGLU output for the backward (the constructor's `keep_swiglu`).
  bool keep_swiglu() const { return keep_swiglu_; }
  /// CUDA graphs for training (--cuda-graphs; off by default): forward_backward() captures the
  /// layers' forward (embedding → final norm) and backward (final norm → layer 0) as two graphs per
  /// (hooks object, batch, sequence length) after one eager micro-batch with that key, and replays
  /// them; the batch staging, the loss chunks (their count follows the batch's targets) and the
  /// read-back stay eager. Everything the layers use is allocated by then (hooks.reserve at the
  /// first pass with the model's fixed token count; weights, factors, FP8 copies updated in place),
  /// so a replay computes what an eager pass would, bit for bit. The hooks' host code runs at the
  /// capture only: their diagnostics count captured calls once. A capture that fails (an operation
  /// a graph cannot hold) leaves that key eager for good. Not with profiling (its events are
  /// host-timed).
  void set_cuda_graphs(bool on) { graphs_on_ = on; }
  bool cuda_graphs() const { return graphs_on_; }
  /// Diagnostic: micro-batches run from captured graphs, and keys whose capture failed.
  std::int64_t graph_replays() const { return graph_replays_; }
  std::int64_t graph_failures() const { return graph_failures_; }
  /// Whether Attention::Flash can run this configuration (bf16 and head_dim 64 or 128).
  static bool flash_supported(const ModelConfig& c) {
    return std::is_same_v<T, __nv_bfloat16> && flash::supported_head_dim(c.head_dim);
  }
  /// The stream every kernel and GEMM of the model is enqueued on.
  cudaStream_t stream() const { return stream_; }
  /// The model's cuBLAS handle (bound to stream(), default math: no TF32). Hooks constructed without
  /// a handle get this one at their first pass. Every pass calls hooks.reserve(max_batch·max_seq)
  /// first (so workspaces can be sized before any forward; it must be cheap when nothing grows).
  cublasHandle_t cublas() const { return cublas_.get(); }
  /// The model's cuBLAS workspace (32 MiB; its GEMMs run on stream()): a backend on the same stream
  /// may share it (CudaBackend::share_workspace) instead of allocating its own.
  void* cublas_workspace() const { return cublas_ws_.get(); }
  std::size_t cublas_workspace_bytes() const { return cublas_ws_.size() * sizeof(float); }
  /// Largest batch / sequence the buffers hold.
  int max_batch() const { return max_batch_; }
  int max_seq() const { return max_seq_; }

  /// Frozen device tensors, read by the KV-cached decoder (decode_cuda.cuh): the classifier in T
  /// (V, D; the embedding when tied and the embedding is stored in T), the fp32 norms (2L + 1, D:
  /// attn_norm l, ffn_norm l, final) and the fp32 q/k/v biases (per layer bq | bk | bv; null
  /// without qkv_bias). The embedding is read through gather_embeddings().
  const T* classifier() const { return cls_; }
  /// x[i, :] = fp32(embedding[tok[i], :]) for i < n_rows, on `s` (x: (n_rows, dim) fp32). Exact:
  /// the embedding is stored in T only when every value is a T value.
  void gather_embeddings(cudaStream_t s, const std::int32_t* tok, float* x, std::int64_t n_rows) const {
    if (embed_in_t_) kern::launch_embed_gather(s, tok, embed_t_.get(), x, n_rows, cfg_.dim);
    else kern::launch_embed_gather(s, tok, embed_.get(), x, n_rows, cfg_.dim);
  }
  /// Whether the embedding is stored in T (every value of the checkpoint's embedding is a T value)
  /// rather than fp32.
  bool embedding_in_compute_type() const { return embed_in_t_; }
  const float* norm_weights() const { return norms_.get(); }
  const float* qkv_biases() const { return cfg_.qkv_bias ? bias_.get() : nullptr; }

  /// Device compute copy of a target linear, (out, in) row-major, contiguous. Writing through it
  /// (e.g. a DWU step in T) changes the model.
  MatrixView<T> linear(LinearId id);
  /// Replaces a target linear with `host_fp32` (out, in) (converted to T on the device).
  void upload_linear(LinearId id, const Matrix& host_fp32);
  /// Copies a target linear to the host as fp32 (resizes `host_fp32`).
  void download_linear(LinearId id, Matrix& host_fp32) const;
  /// bf16: upload_linear / download_linear convert through an fp32 device stage of at most `n`
  /// floats (default 4 Mi = 16 MiB), allocated on first use, a linear going through it in chunks.
  /// (Tests set a small one to exercise the chunking.)
  void set_staging_elements(std::int64_t n) {
    if (n < 1) throw LlamaError(cat("CudaLlama::set_staging_elements: expected ≥ 1, found ", n));
    stage_cap_ = n;
    stage_f32_.reset();
  }

  /// One micro-batch: forward, then backward through `hooks`. The gradient fed back is that of
  /// loss_scale · (mean cross-entropy over the batch's target tokens), exactly like the CPU
  /// backward(..., grad_scale). Returns the loss (sum and count, like the CPU forward).
  LossResult forward_backward(const Batch& b, CudaHooks<T>& hooks, float loss_scale = 1.0f);
  /// Evaluation: forward and loss only (hooks.forward is called, hooks.backward is not).
  LossResult forward_loss(const Batch& b, CudaHooks<T>& hooks);
  /// For tests: forward, then the full logits of every row (B·T, vocab) to the host in fp32
  /// (allocates a temporary; not a hot path). Padded rows hold the logits of their (unattended) state.
  void forward_logits(const Batch& b, CudaHooks<T>& hooks, std::vector<float>& logits);

  /// Benchmark aid: with profiling on, every pass records CUDA events at section boundaries and
  /// profile() returns the accumulated GPU time per section (ms): target linears (the hooks) forward
  /// / backward, attention forward / backward (permutes, RoPE, score GEMMs, softmax), norms and
  /// elementwise forward / backward, loss (classifier GEMMs + cross-entropy). Off by default.
  void enable_profiling(bool on);
  std::vector<std::pair<std::string, double>> profile() const;
  /// With profiling on: the loss row of profile() in its parts (ms, accumulated like profile()):
  /// the logits GEMMs, the gathers and cross-entropies, the dX GEMMs and scatters. They sum to it.
  std::vector<std::pair<std::string, double>> loss_parts() const;
  /// With profiling on: the host's time (ms, accumulated) between the same marks, per section and
  /// loss part in the order of profile() then loss_parts(): where it exceeds the GPU time of a
  /// section, the GPU waited for the host there.
  std::vector<std::pair<std::string, double>> host_profile() const;
  /// The flash kernels' block order (flash::TileOrder: bands of heads, heavy tiles first; 0 = the
  /// default band, 1 = the order before session 27). Any order gives the same bits; the trainer
  /// sets it from HDPISSA_FLASH_BAND (measurements).
  void set_flash_tile_order(flash::TileOrder order) {
    if (order.band < 0)
      throw LlamaError(cat("CudaLlama::set_flash_tile_order: expected a band >= 0 (0: the default), found ", order.band));
    flash_order_ = order;
  }
  /// The loss GEMMs' row count is a chunk's target count rounded up to a multiple of `rows` (in
  /// [1, 1024]; default 128): a bounded set of GEMM shapes (docs/throughput.md §000000000). 1: the
  /// exact count (a new shape for almost every batch).
  void set_loss_row_align(int rows) {
    if (rows < 1 || rows > 1024)
      throw LlamaError(cat("CudaLlama::set_loss_row_align: expected rows in [1, 1024], found ", rows));
    loss_row_align_ = rows;
  }
  [[nodiscard]] int loss_row_align() const { return loss_row_align_; }

 private:
  using Buf = DeviceBuffer<T>;
  using FBuf = DeviceBuffer<float>;
  using IBuf = DeviceBuffer<std::int32_t>;

  /// Saved activations of one layer (pointers into the arenas). N = max tokens.
  struct LayerActs {
    T* xn1;   // (N, D)  attention-norm output = X of q, k, v
    T* qh;    // (B, nh, T, hd) after RoPE
    T* kh;    // (B, nkv, T, hd) after RoPE
    T* vh;    // (B, nkv, T, hd)
    T* attn;  // (N, q_dim) attention output = X of o
    T* xn2;   // (N, D)  ffn-norm output = X of gate, up
    T* gate;  // (N, H), ld 2H: columns [0, H) of one (N, 2H) buffer [gate | up], the output of the
    T* up;    // (N, H), ld 2H   layer's stacked [W_gate; W_up] (one GEMM when the hooks stack them)
    // silu(gate)·up, the X of down: with keep_swiglu, saved here; otherwise (act == nullptr) the
    // forward writes it to act_ (one (N, H) buffer for every layer) and the backward recomputes it
    // there from gate and up with the same kernel (bit-identical), saving (n_layers − 1)·N·H·sizeof(T)
    // (2.6 GiB at LLaMA-2-7B, 8 × 512, bf16) for one more elementwise pass per layer.
    T* act;   // (N, H) or nullptr
    float* lse;    // (B·nh·T)
    float* rstd1;  // (N)
    float* rstd2;  // (N)
  };

  /// Checks the batch (Batch::check), builds the target list, uploads tokens / lengths / targets.
  /// Returns the number of target rows.
  std::int64_t stage_batch(const Batch& b);
  void prepare_hooks(CudaHooks<T>& hooks);
  /// Embedding → final norm (xnf_), saving every layer's activations (with checkpointing: the
  /// residuals of every layer, the activations of the last one).
  void forward_layers(CudaHooks<T>& hooks);
  /// Layer l from its residual input res(2l) (in place when `add` is null: res(2l) + add otherwise)
  /// to its activations in layers_[l] and res(2l + 1); with `down`, also the down projection into
  /// tmp_ (the next layer's residual add). The forward pass and the checkpointing recompute share it.
  void layer_forward(CudaHooks<T>& hooks, int l, const float* prev, const T* add, bool down);
  /// Loss over the staged targets; with `backward`, d xn_final (dxnf_) for loss_scale·mean.
  void loss_chunks(std::int64_t n_targets, bool backward, float loss_scale);
  int loss_row_align_ = 128;  // set_loss_row_align
  flash::TileOrder flash_order_{};  // set_flash_tile_order
  /// Final norm → layer 0 through hooks.backward.
  void backward_layers(CudaHooks<T>& hooks);
  /// Copies the per-row losses back (the one sync) and sums them in double.
  LossResult read_loss(std::int64_t n_targets);

  float* res(int i) const { return res_.get() + static_cast<std::size_t>(i) * ntok_max_ * cfg_.dim; }
  /// The q, k, v column blocks of qkv_rows_ (row stride q_dim + 2·kv_dim) and d_gate, d_up of d_gu_ (2H).
  T* q_rows() const { return qkv_rows_.get(); }
  T* k_rows() const { return qkv_rows_.get() + cfg_.q_dim(); }
  T* v_rows() const { return qkv_rows_.get() + cfg_.q_dim() + cfg_.kv_dim(); }
  T* d_gate() const { return d_gu_.get(); }
  T* d_up() const { return d_gu_.get() + cfg_.hidden_dim; }
  T* lin_ptr(LinearId id) const { return lin_.get() + lin_off_[id.index()]; }
  std::pair<index_t, index_t> lin_shape(Module m) const;

  ModelConfig cfg_;
  int max_batch_ = 0, max_seq_ = 0;
  std::int64_t ntok_max_ = 0;
  int chunk_ = 1024;
  cudaStream_t stream_ = nullptr;
  CublasHandle cublas_;
  FBuf cublas_ws_;

  // weights
  FBuf embed_;        // (V, D) fp32, for the gather (when !embed_in_t_)
  Buf embed_t_;       // (V, D) in T (when embed_in_t_: every value a T value)
  bool embed_in_t_ = false;
  Buf cls_own_;       // (V, D) T copy of the classifier (unused when tied and embed_in_t_)
  const T* cls_ = nullptr;
  FBuf norms_;        // (2L + 1, D): attn_norm l, ffn_norm l, final
  FBuf bias_;         // Qwen2 only: per layer bq (qd), bk (kvd), bv (kvd), fp32; empty otherwise
  Buf lin_;           // every target linear, contiguous (out, in) each
  std::vector<std::size_t> lin_off_;
  FBuf rope_cos_, rope_sin_;  // (max_seq, hd/2)
  FBuf stage_f32_;            // upload/download staging, T = bf16 only: stage_elems(), allocated on first use
  std::int64_t max_lin_ = 0;  // elements of the largest target linear
  std::int64_t stage_cap_ = std::int64_t(1) << 22;  // 16 MiB of fp32
  std::int64_t stage_elems() const { return std::max<std::int64_t>(1, std::min(stage_cap_, max_lin_)); }
  float* stage() {
    ::hdpissa::memory::PartScope part("model.staging");
    return stage_f32_.reserve(static_cast<std::size_t>(stage_elems()));
  }

  // activations
  FBuf res_;                  // (2L + 1) residual buffers (N, D): x_l, h_l, ..., x_final
  Buf act_t_;                 // arena of every saved T activation
  FBuf act_f_;                // arena of saved fp32 statistics
  std::vector<LayerActs> layers_;
  FBuf rstd_f_;               // (N)
  Buf xnf_;                   // (N, D) final-norm output

  // scratch
  // qkv_rows_: (N, qd + 2·kvd) = [q | k | v] rows, the output of the stacked [W_q; W_k; W_v] (and
  // in the backward their dY, the same columns); d_gu_: (N, 2H) = [d_gate | d_up] likewise
  Buf qkv_rows_, oh_, tmp_, dx_t_, dxa_, dxb_, dxc_, d_act_, d_gu_, d_attn_, doh_;
  Buf act_;  // (N, H) silu(gate)·up of the layer at hand (forward, and recomputed in backward)
  Buf dqh_, dkh_, dvh_, p_, ds_;          // Gemm attention (with oh_, doh_: head-major O, dO)
  FBuf fdk_, fdv_;                         // Flash attention, GQA: per-query-head dK, dV (fp32)
  bool flash_ = false;
  bool ckpt_ = false;                      // activation checkpointing: one LayerActs arena for every layer
  bool keep_swiglu_ = false;               // LayerActs::act per layer (no act_)
  FBuf dx_, dr_, s_, dp_, dxnf_;
  Buf xc_, dlogits_;
  FBuf logits_, dxchunk_, row_loss_;
  IBuf ints_;                           // tokens (N) | lengths (B) | target rows (N) | target ids (N)
  PinnedBuffer<std::int32_t> h_ints_;   // host staging of ints_
  std::int32_t* tokens() const { return ints_.get(); }
  std::int32_t* lengths() const { return ints_.get() + ntok_max_; }
  std::int32_t* target_rows() const { return ints_.get() + ntok_max_ + max_batch_; }
  std::int32_t* target_ids() const { return ints_.get() + 2 * ntok_max_ + max_batch_; }
  PinnedBuffer<float> h_loss_;

  // current batch
  int B_ = 0, T_ = 0;

  // profiling (benchmarks only)
  // kLoss is recorded as its three parts (kLossCE: gathers and cross-entropies; kLossLogits: the
  // logits GEMMs; kLossDx: the dX GEMMs and scatters); profile() sums them into the loss row.
  enum Section {
    kLinFwd = 0, kAttnFwd, kNormFwd, kLoss, kLinBwd, kAttnBwd, kNormBwd, kNumSections,
    kLossLogits = kNumSections, kLossCE, kLossDx, kNumMarks, kEnd = -1
  };
  void mark(int section);
  void flush_profile();
  bool prof_on_ = false;
  // --cuda-graphs: per key (hooks, B, T) the two graphs, the eager passes seen, a failed capture
  struct TrainGraphs {
    const void* hooks = nullptr;
    int batch = 0, seq = 0;
    int eager = 0;
    bool failed = false;
    cudaGraphExec_t fwd = nullptr, bwd = nullptr;
  };
  std::vector<TrainGraphs> graphs_;
  bool graphs_on_ = false;
  std::int64_t graph_replays_ = 0, graph_failures_ = 0;
  void destroy_graphs();
  std::vector<cudaEvent_t> prof_ev_;
  std::vector<int> prof_sec_;
  std::vector<double> prof_ms_ = std::vector<double>(kNumMarks, 0.0);
  std::vector<std::chrono::steady_clock::time_point> prof_host_t_;  // host time of each mark
  std::vector<double> prof_host_ms_ = std::vector<double>(kNumMarks, 0.0);
};


// ------------------------------------------------------------------------------------------------
// implementation

/// Captures body() on `stream` into `exec` (thread-local capture mode): true with `exec`
/// instantiated, or false with nothing left captured and `exec` null, whatever failed (the capture
/// not starting, body() throwing or issuing an operation capture forbids, instantiation); the CUDA
/// error such a failure leaves is cleared. The training model's --cuda-graphs and the greedy
/// decoder's decode step share it; both fall back to running body() eagerly on false. Instantiated
/// with cudaGraphInstantiateFlagUseNodePriority: each kernel node keeps the priority of the stream
/// it was captured from (the adapters' high-priority second stream, hdpissa::StreamPriority), as
/// the eager run schedules it; without the flag a replay runs every node at the launch stream's
/// priority. Priorities never change an order the graph's edges impose: the same bits.
template <class F>
bool capture_stream_graph(cudaStream_t stream, cudaGraphExec_t& exec, F&& body) {
  cudaGraph_t g = nullptr;
  bool ok = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
  if (ok) {
    try {
      body();
    } catch (const std::exception&) {
      ok = false;
    }
    const cudaError_t e = cudaStreamEndCapture(stream, &g);
    ok = ok && e == cudaSuccess && g != nullptr;
    if (ok) ok = cudaGraphInstantiate(&exec, g, cudaGraphInstantiateFlagUseNodePriority) == cudaSuccess;
    if (g) (void)cudaGraphDestroy(g);
  }
  if (!ok) {
    (void)cudaGetLastError();
    exec = nullptr;
  }
  return ok;
}

namespace detail_cuda {

/// Host fp32 → device T (synchronous; setup / upload path only). `stage` is an fp32 device
/// scratch of `stage_n` ≥ 1 floats (used only when T ≠ float): the values go through it in chunks.
template <class T>
void upload_as(const float* host, T* dst, std::int64_t n, float* stage, std::int64_t stage_n, cudaStream_t s) {
  if constexpr (std::is_same_v<T, float>) {
    (void)stage, (void)stage_n;
    HDPISSA_CUDA_CHECK(cudaMemcpyAsync(dst, host, n * sizeof(float), cudaMemcpyHostToDevice, s));
  } else {
    for (std::int64_t off = 0; off < n; off += stage_n) {
      const std::int64_t m = std::min(stage_n, n - off);
      HDPISSA_CUDA_CHECK(cudaMemcpyAsync(stage, host + off, m * sizeof(float), cudaMemcpyHostToDevice, s));
      kern::launch_convert<float, T>(s, stage, dst + off, m);
    }
  }
  HDPISSA_CUDA_CHECK(cudaStreamSynchronize(s));
}

/// Whether every value is a bf16 value (its low 16 bits are zero): then bf16 storage is exact.
inline bool all_bf16_exact(const float* p, std::int64_t n) {
  std::uint32_t any = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    std::uint32_t u;
    std::memcpy(&u, p + i, 4);
    any |= u & 0xFFFFu;
  }
  return any == 0;
}

/// Host fp32 (or stored F32 / BF16 / F16) → device T for many arrays at start-up, through two
/// pinned staging chunks: host threads fill one chunk (converting to T with round-to-nearest-even,
/// the rule of the device's converter, so the bits equal upload_as's) while the stream copies the
/// other. Moves sizeof(T) bytes per value over the bus from pinned memory, instead of 4 from
/// pageable memory (LLaMA-2-7B: 13.5 GB instead of 27 GB). A stored BF16 array into a bf16 model
/// is copied as it is (upload_stored: the mapped checkpoint straight into the staging chunk).
/// finish() (or the destructor) waits for the last copy.
template <class T>
class PinnedUploader {
 public:
  explicit PinnedUploader(cudaStream_t s, std::int64_t chunk_elems = std::int64_t(1) << 25)
      : s_(s), chunk_(chunk_elems), buf_{PinnedBuffer<T>(std::size_t(chunk_elems)), PinnedBuffer<T>(std::size_t(chunk_elems))} {
    for (auto& e : ev_) HDPISSA_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  }
  PinnedUploader(const PinnedUploader&) = delete;
  PinnedUploader& operator=(const PinnedUploader&) = delete;
  ~PinnedUploader() {
    (void)cudaStreamSynchronize(s_);
    for (auto e : ev_)
      if (e) (void)cudaEventDestroy(e);
  }
  /// Enqueues dst[0, n) ← T(host[0, n)); host must stay valid until finish().
  void upload(const float* host, T* dst, std::int64_t n) {
    upload_stored(DType::F32, reinterpret_cast<const char*>(host), dst, n);
  }
  /// Enqueues dst[0, n) ← T(the n values of `dtype` (F32, BF16 or F16) at `src`, any alignment):
  /// the same bits as converting them to fp32 first (exact) and uploading that, NaN payloads aside
  /// (BF16 into bf16 is a copy, which keeps them). `src` is read before this returns.
  void upload_stored(DType dtype, const char* src, T* dst, std::int64_t n) {
    if (dtype != DType::F32 && dtype != DType::BF16 && dtype != DType::F16)
      throw LlamaError(cat("PinnedUploader: expected F32, BF16 or F16 values, found ", dtype_name(dtype)));
    const std::size_t es = dtype_size(dtype);
    for (std::int64_t off = 0; off < n; off += chunk_) {
      const std::int64_t m = std::min(chunk_, n - off);
      if (used_[b_]) HDPISSA_CUDA_CHECK(cudaEventSynchronize(ev_[b_]));  // its previous copy is done
      T* st = buf_[b_].get();
      fill(dtype, src + std::size_t(off) * es, st, m);
      HDPISSA_CUDA_CHECK(cudaMemcpyAsync(dst + off, st, std::size_t(m) * sizeof(T), cudaMemcpyHostToDevice, s_));
      HDPISSA_CUDA_CHECK(cudaEventRecord(ev_[b_], s_));
      used_[b_] = true;
      b_ ^= 1;
    }
  }
  void finish() { HDPISSA_CUDA_CHECK(cudaStreamSynchronize(s_)); }

 private:
  static void fill(DType dtype, const char* src, T* dst, std::int64_t n) {
    auto part = [dtype, src, dst](std::int64_t a, std::int64_t b) {
      constexpr bool kF32 = std::is_same_v<T, float>;
      if ((kF32 && dtype == DType::F32) || (!kF32 && dtype == DType::BF16)) {  // the same bits
        std::memcpy(dst + a, src + std::size_t(a) * sizeof(T), std::size_t(b - a) * sizeof(T));
        return;
      }
      auto convert = [&](auto load) {  // one loop per source dtype (no branch inside)
        for (std::int64_t i = a; i < b; ++i) {
          const float f = load(std::size_t(i));
          if constexpr (kF32) dst[i] = f;
          else dst[i] = __float2bfloat16_rn(f);
        }
      };
      auto half = [src](std::size_t i) {
        std::uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        return h;
      };
      if (dtype == DType::F32)
        convert([src](std::size_t i) {
          float f;
          std::memcpy(&f, src + 4 * i, 4);
          return f;
        });
      else if (dtype == DType::BF16) convert([&half](std::size_t i) { return bf16_to_float(half(i)); });
      else convert([&half](std::size_t i) { return f16_to_float(half(i)); });
    };
    const int parts = n < (std::int64_t(1) << 20) ? 1 : int(std::clamp<unsigned>(std::thread::hardware_concurrency(), 1u, 16u));
    std::vector<std::future<void>> fut;
    for (int t = 1; t < parts; ++t) fut.push_back(std::async(std::launch::async, part, n * t / parts, n * (t + 1) / parts));
    part(0, n / parts);
    for (auto& f : fut) f.get();
  }
  cudaStream_t s_;
  std::int64_t chunk_;
  PinnedBuffer<T> buf_[2];
  cudaEvent_t ev_[2] = {nullptr, nullptr};
  bool used_[2] = {false, false};
  int b_ = 0;
};

}  // namespace detail_cuda

template <class T>
std::pair<index_t, index_t> CudaLlama<T>::lin_shape(Module m) const {
  const auto [out, in] = linear_shape(cfg_, m);
  return {index_t(out), index_t(in)};
}

template <class T>
CudaLlama<T>::CudaLlama(const ModelWeights& host, int max_batch, int max_seq, cudaStream_t stream, int loss_chunk_rows,
                        Attention attention, bool activation_checkpointing, bool keep_swiglu)
    : cfg_(host.config), max_batch_(max_batch), max_seq_(max_seq), chunk_(loss_chunk_rows), stream_(stream),
      cublas_(stream), ckpt_(activation_checkpointing), keep_swiglu_(keep_swiglu) {
  const ModelConfig& c = cfg_;
  c.validate();
  if (ckpt_ && keep_swiglu_)
    throw LlamaError("CudaLlama: keep_swiglu keeps every layer's SwiGLU output for the backward, activation "
                     "checkpointing recomputes each layer in its backward; expected at most one of them, found both");
  if (max_batch < 1 || max_seq < 1 || loss_chunk_rows < 1)
    throw LlamaError(cat("CudaLlama: expected max_batch, max_seq and loss_chunk_rows ≥ 1, found ", max_batch, ", ",
                         max_seq, ", ", loss_chunk_rows));
  if (max_seq > c.max_seq_len)
    throw LlamaError(cat("CudaLlama: max_seq ", max_seq, " exceeds max_position_embeddings ", c.max_seq_len));
  if (c.qkv_bias)  // Qwen2: frozen q/k/v biases, fp32 on the device, added after the hooks' X·Wᵀ
    for (int l = 0; l < c.n_layers; ++l)
      for (Module m : {Module::q, Module::k, Module::v}) {
        const Vector* b = host.layers[l].bias(m);
        const index_t want = m == Module::q ? c.q_dim() : c.kv_dim();
        if (!b || b->size() != want)
          throw LlamaError(cat("CudaLlama: config says q/k/v biases (model_type ", c.model_type, "), expected ",
                               LinearId{l, m}.hf_bias_name(), " of ", want, " entries, found ", b ? b->size() : 0));
      }
  const int L = c.n_layers, D = c.dim, V = c.vocab_size, H = c.hidden_dim, qd = c.q_dim(), kvd = c.kv_dim();
  auto need = [](const char* what, const Matrix& m, index_t r, index_t cc) {
    if (m.rows() != r || m.cols() != cc)
      throw LlamaError(cat("CudaLlama: expected ", what, " of shape [", r, ", ", cc, "], found [", m.rows(), ", ",
                           m.cols(), "]"));
  };
  need("embed_tokens", host.embed, V, D);
  if (!c.tie_embeddings) need("lm_head", host.lm_head, V, D);
  if (static_cast<int>(host.layers.size()) != L)
    throw LlamaError(cat("CudaLlama: expected ", L, " layers, found ", host.layers.size()));
  if (host.final_norm.size() != D) throw LlamaError(cat("CudaLlama: expected final norm of ", D, ", found ", host.final_norm.size()));
  for (int l = 0; l < L; ++l) {
    if (host.layers[l].attn_norm.size() != D || host.layers[l].ffn_norm.size() != D)
      throw LlamaError(cat("CudaLlama: expected layer ", l, " norms of ", D, " entries, found ",
                           host.layers[l].attn_norm.size(), " and ", host.layers[l].ffn_norm.size()));
    for (int m = 0; m < kModulesPerLayer; ++m) {
      const LinearId id{l, static_cast<Module>(m)};
      const auto [r, cc] = lin_shape(id.module);
      if (const auto st = stored_linear(host, id)) {  // stored: read from the mapped checkpoint below
        if (st->rows != r || st->cols != cc)
          throw LlamaError(cat("CudaLlama: expected stored ", id.hf_name(), " of shape [", r, ", ", cc, "], found [",
                               st->rows, ", ", st->cols, "]"));
        continue;
      }
      need(id.hf_name().c_str(), host.linear(id), r, cc);
    }
  }
  ntok_max_ = static_cast<std::int64_t>(max_batch) * max_seq;
  const std::int64_t N = ntok_max_;

  // cuBLAS: own workspace (no allocation inside a step), default math (no TF32)
  constexpr std::size_t kWs = 32u << 20;
  {
    ::hdpissa::memory::PartScope part("model.cublas-workspace");
    cublas_ws_.reserve(kWs / sizeof(float));
  }
  HDPISSA_CUBLAS_CHECK(cublasSetWorkspace(cublas_.get(), cublas_ws_.get(), kWs));

  // weights
  std::size_t max_lin = 0, total_lin = 0;
  lin_off_.resize(static_cast<std::size_t>(L) * kModulesPerLayer);
  for (int l = 0; l < L; ++l)
    for (int m = 0; m < kModulesPerLayer; ++m) {
      const LinearId id{l, static_cast<Module>(m)};
      const auto [r, cc] = lin_shape(id.module);
      lin_off_[id.index()] = total_lin;
      total_lin += static_cast<std::size_t>(r * cc);
      max_lin = std::max(max_lin, static_cast<std::size_t>(r * cc));
    }
  {
    ::hdpissa::memory::PartScope part("model.linears");
    lin_.reserve(total_lin);
  }
  max_lin_ = static_cast<std::int64_t>(max_lin);
  // The embedding (for the gather into the fp32 residual stream): in T when every value is a T
  // value (a bf16 checkpoint into a bf16 model: exact, half the bytes), fp32 otherwise. The
  // classifier in T: the T embedding itself when tied, else its own copy (host-converted, no fp32
  // device staging).
  {
    ::hdpissa::memory::PartScope part("model.embedding+classifier");
    const std::int64_t VD = static_cast<std::int64_t>(V) * D;
    detail_cuda::PinnedUploader<T> up(stream_, std::min<std::int64_t>(std::int64_t(1) << 24, VD));
    embed_in_t_ = std::is_same_v<T, float> || detail_cuda::all_bf16_exact(host.embed.data(), VD);
    if (embed_in_t_) {
      embed_t_.reserve(static_cast<std::size_t>(VD));
      up.upload(host.embed.data(), embed_t_.get(), VD);
    } else {
      embed_.reserve(static_cast<std::size_t>(VD));
      HDPISSA_CUDA_CHECK(cudaMemcpyAsync(embed_.get(), host.embed.data(), sizeof(float) * VD, cudaMemcpyHostToDevice, stream_));
    }
    if (c.tie_embeddings && embed_in_t_) {
      cls_ = embed_t_.get();
    } else {
      cls_own_.reserve(static_cast<std::size_t>(VD));
      up.upload(host.classifier().data(), cls_own_.get(), VD);
      cls_ = cls_own_.get();
    }
    up.finish();
  }
  ::hdpissa::memory::PartScope frozen_part("model.norms+rope+biases");
  {
    std::vector<float> nh_host(static_cast<std::size_t>(2 * L + 1) * D);
    for (int l = 0; l < L; ++l) {
      std::copy(host.layers[l].attn_norm.data(), host.layers[l].attn_norm.data() + D, nh_host.data() + (2 * l) * D);
      std::copy(host.layers[l].ffn_norm.data(), host.layers[l].ffn_norm.data() + D, nh_host.data() + (2 * l + 1) * D);
    }
    std::copy(host.final_norm.data(), host.final_norm.data() + D, nh_host.data() + 2 * L * D);
    norms_.reserve(nh_host.size());
    HDPISSA_CUDA_CHECK(cudaMemcpy(norms_.get(), nh_host.data(), nh_host.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  {  // every target linear, through pinned staging (shapes checked as upload_linear does)
    detail_cuda::PinnedUploader<T> up(stream_, std::min<std::int64_t>(std::int64_t(1) << 25, std::int64_t(max_lin)));
    for (int l = 0; l < L; ++l)
      for (int m = 0; m < kModulesPerLayer; ++m) {
        const LinearId id{l, static_cast<Module>(m)};
        const auto [r, cc] = lin_shape(id.module);
        if (const auto st = stored_linear(host, id)) {  // from the mapping, in its stored dtype
          up.upload_stored(st->dtype, st->data, lin_ptr(id), static_cast<std::int64_t>(r) * cc);
          continue;
        }
        const Matrix& w = host.layers[l].linear(id.module);
        if (w.rows() != r || w.cols() != cc)
          throw LlamaError(cat("CudaLlama: ", id.hf_name(), ": expected shape [", r, ", ", cc, "], found [", w.rows(),
                               ", ", w.cols(), "]"));
        up.upload(w.data(), lin_ptr(id), static_cast<std::int64_t>(r) * cc);
      }
    up.finish();
  }
  if (c.qkv_bias) {
    std::vector<float> bh;
    for (int l = 0; l < L; ++l)
      for (Module m : {Module::q, Module::k, Module::v}) {
        const Vector& b = *host.layers[l].bias(m);
        bh.insert(bh.end(), b.data(), b.data() + b.size());
      }
    bias_.reserve(bh.size());
    HDPISSA_CUDA_CHECK(cudaMemcpy(bias_.get(), bh.data(), bh.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  {
    Matrix ct, st;
    ::hdpissa::llama::detail::rope_tables(c, max_seq, ct, st);  // the CPU model's tables, bit for bit
    rope_cos_.reserve(ct.size());
    rope_sin_.reserve(st.size());
    HDPISSA_CUDA_CHECK(cudaMemcpy(rope_cos_.get(), ct.data(), ct.size() * sizeof(float), cudaMemcpyHostToDevice));
    HDPISSA_CUDA_CHECK(cudaMemcpy(rope_sin_.get(), st.data(), st.size() * sizeof(float), cudaMemcpyHostToDevice));
  }

  // activations
  ::hdpissa::memory::PartScope act_part("model.activations");
  res_.reserve(static_cast<std::size_t>(2 * L + 1) * N * D);
  // Every saved activation starts on a 128-byte boundary (its element count rounded up): cuBLAS
  // chooses algorithms partly by pointer alignment, so layer l's buffers must not drift with N·H
  // (odd N and H % 8 != 0) — the same alignment in every layer, with or without checkpointing (one
  // arena) and --keep-swiglu (one more buffer per layer), hence the same bits.
  constexpr std::int64_t kAlignT = 128 / static_cast<std::int64_t>(sizeof(T));
  auto rounded = [](std::int64_t n) { return (n + kAlignT - 1) / kAlignT * kAlignT; };
  const std::size_t per_layer_t = static_cast<std::size_t>(
      2 * rounded(N * D) + 2 * rounded(N * qd) + 2 * rounded(N * kvd) + (keep_swiglu_ ? 3 : 2) * rounded(N * H));
  const std::size_t per_layer_f = static_cast<std::size_t>(N) * (c.n_heads + 2);
  const int arenas = ckpt_ ? 1 : L;  // checkpointing: every layer's activations share one arena
  act_t_.reserve(per_layer_t * arenas);
  act_f_.reserve(per_layer_f * arenas);
  layers_.resize(L);
  for (int l = 0; l < L; ++l) {
    const int slot = ckpt_ ? 0 : l;
    T* p = act_t_.get() + per_layer_t * slot;
    auto take = [&p, &rounded](std::int64_t n) { T* r = p; p += rounded(n); return r; };
    LayerActs& a = layers_[l];
    a.xn1 = take(N * D);
    a.qh = take(N * qd);
    a.kh = take(N * kvd);
    a.vh = take(N * kvd);
    a.attn = take(N * qd);
    a.xn2 = take(N * D);
    a.gate = take(2 * rounded(N * H));  // [gate | up], as much as two rounded (N, H) buffers
    a.up = a.gate + H;
    a.act = keep_swiglu_ ? take(N * H) : nullptr;
    float* f = act_f_.get() + per_layer_f * slot;
    a.lse = f;
    a.rstd1 = f + N * c.n_heads;
    a.rstd2 = a.rstd1 + N;
  }
  rstd_f_.reserve(N);
  xnf_.reserve(N * D);

  // scratch
  ::hdpissa::memory::PartScope scratch_part("model.scratch");
  qkv_rows_.reserve(N * (qd + 2 * kvd));
  tmp_.reserve(N * D);
  dx_t_.reserve(N * D);
  dxa_.reserve(N * D);
  dxb_.reserve(N * D);
  dxc_.reserve(N * D);
  d_act_.reserve(N * H);
  if (!keep_swiglu_) act_.reserve(N * H);
  d_gu_.reserve(2 * N * H);
  d_attn_.reserve(N * qd);
  {
    // Flash needs bf16, head_dim 64 / 128 and 16-byte aligned head-major buffers (the arena
    // offsets are multiples of 8 elements when dim and hidden_dim are).
    const bool aligned = (static_cast<std::int64_t>(D) % 8 == 0) && (static_cast<std::int64_t>(H) % 8 == 0);
    const bool ok = flash_supported(c) && aligned;
    if (attention == Attention::Flash && !ok)
      throw LlamaError(cat("CudaLlama: Attention::Flash needs bf16 storage, head_dim 64 or 128 and dim, hidden_dim "
                           "multiples of 8; found ",
                           std::is_same_v<T, float> ? "fp32" : "bf16", ", head_dim ", c.head_dim, ", dim ", D,
                           ", hidden_dim ", H));
    flash_ = attention == Attention::Flash || (attention == Attention::Auto && ok);
  }
  if (flash_) {
    // O and dO stay in the row layout, dQ (and MHA's dK, dV) leave the kernels as bf16 rows:
    // only GQA needs the fp32 per-query-head dK / dV partials
    if (kvd != qd) {
      fdk_.reserve(N * qd);
      fdv_.reserve(N * qd);
    }
  } else {
    oh_.reserve(N * qd);
    doh_.reserve(N * qd);
    dqh_.reserve(N * qd);
    dkh_.reserve(N * kvd);
    dvh_.reserve(N * kvd);
    const std::size_t scores =
        static_cast<std::size_t>(max_batch) * c.n_heads * max_seq * static_cast<std::size_t>(max_seq);
    p_.reserve(scores);
    ds_.reserve(scores);
    s_.reserve(scores);
    dp_.reserve(scores);
  }
  dx_.reserve(N * D);
  dr_.reserve(N * c.n_heads);
  dxnf_.reserve(N * D);
  const std::int64_t C = std::min<std::int64_t>(chunk_, N);
  ::hdpissa::memory::PartScope loss_part("model.loss");
  xc_.reserve(C * D);
  logits_.reserve(C * V);
  if constexpr (!std::is_same_v<T, float>) dlogits_.reserve(C * V);
  dxchunk_.reserve(C * D);
  // the loss GEMMs read up to loss_row_align_ - 1 rows past a chunk's targets: zeros until written
  HDPISSA_CUDA_CHECK(cudaMemsetAsync(xc_.get(), 0, sizeof(T) * C * D, stream_));
  HDPISSA_CUDA_CHECK(cudaMemsetAsync(logits_.get(), 0, sizeof(float) * C * V, stream_));
  if constexpr (!std::is_same_v<T, float>)
    HDPISSA_CUDA_CHECK(cudaMemsetAsync(dlogits_.get(), 0, sizeof(T) * C * V, stream_));
  row_loss_.reserve(N);
  ::hdpissa::memory::PartScope ints_part("model.scratch");
  ints_.reserve(3 * N + max_batch);
  h_ints_ = PinnedBuffer<std::int32_t>(3 * N + max_batch);
  h_loss_ = PinnedBuffer<float>(N);
  HDPISSA_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

template <class T>
MatrixView<T> CudaLlama<T>::linear(LinearId id) {
  if (id.layer < 0 || id.layer >= cfg_.n_layers)
    throw LlamaError(cat("CudaLlama::linear: expected a layer in [0, ", cfg_.n_layers, "), found ", id.layer));
  const auto [r, c] = lin_shape(id.module);
  return {lin_ptr(id), r, c, c};
}

template <class T>
void CudaLlama<T>::upload_linear(LinearId id, const Matrix& host_fp32) {
  const MatrixView<T> v = linear(id);
  if (host_fp32.rows() != v.rows || host_fp32.cols() != v.cols)
    throw LlamaError(cat("CudaLlama::upload_linear(", id.hf_name(), "): expected shape [", v.rows, ", ", v.cols,
                         "], found [", host_fp32.rows(), ", ", host_fp32.cols(), "]"));
  float* st = std::is_same_v<T, float> ? nullptr : stage();  // fp32: a direct copy, no stage
  detail_cuda::upload_as<T>(host_fp32.data(), v.data, v.rows * v.cols, st, stage_elems(), stream_);
}

template <class T>
void CudaLlama<T>::download_linear(LinearId id, Matrix& host_fp32) const {
  const MatrixView<T> v = const_cast<CudaLlama*>(this)->linear(id);
  host_fp32.resize(v.rows, v.cols);
  const std::int64_t n = v.rows * v.cols;
  if constexpr (std::is_same_v<T, float>) {
    HDPISSA_CUDA_CHECK(cudaMemcpyAsync(host_fp32.data(), v.data, n * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  } else {
    float* st = const_cast<CudaLlama*>(this)->stage();
    const std::int64_t sn = stage_elems();
    for (std::int64_t off = 0; off < n; off += sn) {
      const std::int64_t m = std::min(sn, n - off);
      kern::launch_convert<T, float>(stream_, v.data + off, st, m);  // after the previous chunk's copy (stream order)
      HDPISSA_CUDA_CHECK(cudaMemcpyAsync(host_fp32.data() + off, st, m * sizeof(float), cudaMemcpyDeviceToHost, stream_));
    }
  }
  HDPISSA_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

template <class T>
std::int64_t CudaLlama<T>::stage_batch(const Batch& b) {
  b.check(cfg_.vocab_size, "CudaLlama");
  if (b.batch_size > max_batch_ || b.seq_len > max_seq_)
    throw LlamaError(cat("CudaLlama: expected a batch of at most ", max_batch_, " x ", max_seq_,
                         " tokens (the constructor's max_batch x max_seq), found ", b.batch_size, " x ", b.seq_len));
  B_ = b.batch_size;
  T_ = b.seq_len;
  const std::int64_t N = static_cast<std::int64_t>(B_) * T_;
  std::int32_t* h = h_ints_.get();
  std::copy(b.input_ids.begin(), b.input_ids.begin() + N, h);
  for (int i = 0; i < B_; ++i) h[ntok_max_ + i] = b.lengths[i];
  std::int32_t* rows = h + ntok_max_ + max_batch_;
  std::int32_t* ids = h + 2 * ntok_max_ + max_batch_;
  std::int64_t n = 0;
  b.for_each_target([&](std::int64_t row, std::int32_t lab) {
    rows[n] = static_cast<std::int32_t>(row);
    ids[n] = lab;
    ++n;
  });
  HDPISSA_CUDA_CHECK(cudaMemcpyAsync(ints_.get(), h, sizeof(std::int32_t) * (3 * ntok_max_ + max_batch_),
                                     cudaMemcpyHostToDevice, stream_));
  return n;
}

template <class T>
void CudaLlama<T>::prepare_hooks(CudaHooks<T>& hooks) {
  hooks.reserve(ntok_max_);  // every pass: hooks grow their workspaces once, then it is a no-op
}

template <class T>
void CudaLlama<T>::forward_layers(CudaHooks<T>& hooks) {
  const ModelConfig& c = cfg_;
  const int D = c.dim, L = c.n_layers;
  const std::int64_t N = static_cast<std::int64_t>(B_) * T_;
  mark(kNormFwd);
  hooks.drop_amax_hints();  // none may survive an earlier pass that stopped on an error
  gather_embeddings(stream_, tokens(), res(0), N);
  for (int l = 0; l < L; ++l)
    layer_forward(hooks, l, l == 0 ? res(0) : res(2 * l - 1), l == 0 ? nullptr : tmp_.get(), /*down=*/true);
  mark(kNormFwd);
  kern::launch_add_rmsnorm_fwd<T>(stream_, res(2 * L - 1), tmp_.get(), res(2 * L), norms_.get() + 2 * L * D,
                                  rstd_f_.get(), xnf_.get(), N, D, c.norm_eps);
}

template <class T>
void CudaLlama<T>::layer_forward(CudaHooks<T>& hooks, int l, const float* prev, const T* add, bool down) {
  const ModelConfig& c = cfg_;
  const int B = B_, Tn = T_, D = c.dim, H = c.hidden_dim, qd = c.q_dim(), kvd = c.kv_dim(), QKV = qd + 2 * kvd;
  const int nh = c.n_heads, nkv = c.n_kv_heads, hd = c.head_dim, group = nh / nkv;
  const std::int64_t N = static_cast<std::int64_t>(B) * Tn, gT = static_cast<std::int64_t>(group) * Tn;
  const std::int64_t Thd = static_cast<std::int64_t>(Tn) * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const cudaDataType_t dt = cuda_data_type<T>();
  const float* norms = norms_.get();
  cudaStream_t s = stream_;
  cublasHandle_t cb = cublas_.get();
  using CV = ConstMatrixView<T>;
  using MV = MatrixView<T>;
  {
    LayerActs& a = layers_[l];
    auto W = [&](Module m) { return CV(linear({l, m})); };
    mark(kNormFwd);
    // Each tensor the next hooks call quantises (FP8 compute) gets its amax from the kernel that
    // writes it (hooks.amax_hint; null unless the hooks want it); dropped after that call.
    kern::launch_add_rmsnorm_fwd<T>(s, prev, add, res(2 * l), norms + 2 * l * D, a.rstd1, a.xn1, N, D, c.norm_eps,
                                    false, hooks.amax_hint(a.xn1, N, D, D));
    const CV xn1(a.xn1, N, D, D);
    mark(kLinFwd);
    {
      using SF = typename CudaHooks<T>::SharedForwardLinear;
      const SF qkv[3] = {{{l, Module::q}, W(Module::q), MV(q_rows(), N, qd, QKV)},
                         {{l, Module::k}, W(Module::k), MV(k_rows(), N, kvd, QKV)},
                         {{l, Module::v}, W(Module::v), MV(v_rows(), N, kvd, QKV)}};
      hooks.forward_shared(qkv, xn1);
      hooks.drop_amax_hints();
    }
    if (c.qkv_bias) {  // frozen biases after X·Wᵀ (the hooks never see them), before RoPE
      const float* bl = bias_.get() + static_cast<std::int64_t>(l) * (qd + 2 * kvd);
      kern::launch_add_bias_rows<T>(s, q_rows(), bl, N, QKV);  // [q | k | v] biases, one row each
    }
    mark(kAttnFwd);
    kern::launch_rows_to_heads<T>(s, q_rows(), QKV, a.qh, B, Tn, nh, hd, rope_cos_.get(), rope_sin_.get(), true);
    kern::launch_rows_to_heads<T>(s, k_rows(), QKV, a.kh, B, Tn, nkv, hd, rope_cos_.get(), rope_sin_.get(), true);
    kern::launch_rows_to_heads<T>(s, v_rows(), QKV, a.vh, B, Tn, nkv, hd, rope_cos_.get(), rope_sin_.get(), false);
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      if (flash_)  // O straight into the o projection's row layout
        flash::forward(a.qh, a.kh, a.vh, a.attn, a.lse, lengths(), B, nh, nkv, Tn, hd, scale, s,
                       c.attention_window(l), qd, flash_order_);
    }
    if (!flash_) {
      // S = scale·Q Kᵀ per (b, kv group): (group·T, hd) × (T, hd)ᵀ
      gemm_rowmajor_strided_batched(cb, CUBLAS_OP_N, CUBLAS_OP_T, gT, Tn, hd, scale, a.qh, dt, hd, gT * hd, a.kh, dt,
                                    hd, Thd, 0.0f, s_.get(), CUDA_R_32F, Tn, gT * Tn, B * nkv);
      kern::launch_causal_softmax_fwd<T>(s, s_.get(), p_.get(), a.lse, lengths(), nh, Tn, N * nh,
                                         c.attention_window(l));
      // O = P V: (group·T, T) × (T, hd)
      gemm_rowmajor_strided_batched(cb, CUBLAS_OP_N, CUBLAS_OP_N, gT, hd, Tn, 1.0f, p_.get(), dt, Tn, gT * Tn, a.vh, dt,
                                    hd, Thd, 0.0f, oh_.get(), dt, hd, gT * hd, B * nkv);
    }
    if (!flash_)
      kern::launch_heads_to_rows<T>(s, oh_.get(), a.attn, qd, B, Tn, nh, hd, rope_cos_.get(), rope_sin_.get(), false);
    mark(kLinFwd);
    hooks.forward({l, Module::o}, W(Module::o), CV(a.attn, N, qd, qd), MV(tmp_.get(), N, D, D));
    mark(kNormFwd);
    kern::launch_add_rmsnorm_fwd<T>(s, res(2 * l), tmp_.get(), res(2 * l + 1), norms + (2 * l + 1) * D, a.rstd2, a.xn2,
                                    N, D, c.norm_eps, false, hooks.amax_hint(a.xn2, N, D, D));
    const CV xn2(a.xn2, N, D, D);
    mark(kLinFwd);
    {
      using SF = typename CudaHooks<T>::SharedForwardLinear;
      const SF mlp[2] = {{{l, Module::gate}, W(Module::gate), MV(a.gate, N, H, 2 * H)},
                         {{l, Module::up}, W(Module::up), MV(a.up, N, H, 2 * H)}};
      hooks.forward_shared(mlp, xn2);
      hooks.drop_amax_hints();
    }
    if (down) {  // (a checkpointing recompute stops here: the backward recomputes SwiGLU itself)
      mark(kNormFwd);
      T* act = a.act ? a.act : act_.get();
      kern::launch_swiglu_fwd<T>(s, a.gate, a.up, 2 * H, act, N, H, hooks.amax_hint(act, N, H, H));
      mark(kLinFwd);
      hooks.forward({l, Module::down}, W(Module::down), CV(act, N, H, H), MV(tmp_.get(), N, D, D));
      hooks.drop_amax_hints();
    }
  }
}

template <class T>
void CudaLlama<T>::loss_chunks(std::int64_t n_targets, bool backward, float loss_scale) {
  const int D = cfg_.dim, V = cfg_.vocab_size;
  const cudaDataType_t dt = cuda_data_type<T>();
  const float coef = loss_scale / static_cast<float>(n_targets);
  const std::int64_t chunk = std::min<std::int64_t>(chunk_, ntok_max_);
  for (std::int64_t s0 = 0; s0 < n_targets; s0 += chunk) {
    const std::int64_t n = std::min(chunk, n_targets - s0);
    // The two GEMMs run over m ≥ n rows: n rounded up to a multiple of loss_row_align_, capped at the
    // chunk. The last chunk's target count changes with every batch, and each new GEMM shape costs
    // the host a cuBLAS heuristics query (and a kernel's first use a module load, which waits for
    // the GPU) in the middle of the step — 1-4 ms per TinyLlama micro-batch in the trainer, with the
    // GPU idle behind it (docs/throughput.md §000000000). Rows n..m of xc_ / dlogits_ hold zeros or an
    // earlier chunk's rows; a GEMM's output row depends on its input row only, and the cross-entropy
    // and the scatter read rows 0..n only, so whatever those rows hold never reaches a result.
    const std::int64_t m = std::min(chunk, (n + loss_row_align_ - 1) / loss_row_align_ * loss_row_align_);
    mark(kLossCE);
    kern::launch_gather_rows<T>(stream_, xnf_.get(), target_rows() + s0, xc_.get(), n, D);
    // logits (m, V) = xc (m, D) · clsᵀ
    mark(kLossLogits);
    gemm_rowmajor(cublas_.get(), CUBLAS_OP_N, CUBLAS_OP_T, m, V, D, 1.0f, xc_.get(), dt, D, cls_, dt, D, 0.0f,
                  logits_.get(), CUDA_R_32F, V);
    T* dl = nullptr;
    if (backward) {
      if constexpr (std::is_same_v<T, float>) dl = logits_.get();  // in place
      else dl = dlogits_.get();
    }
    mark(kLossCE);
    kern::launch_cross_entropy<T>(stream_, logits_.get(), target_ids() + s0, row_loss_.get() + s0, dl, coef, n, V);
    if (backward) {
      mark(kLossDx);
      // dxc (m, D) = dlogits (m, V) · cls (rows n..m unused)
      gemm_rowmajor(cublas_.get(), CUBLAS_OP_N, CUBLAS_OP_N, m, D, V, 1.0f, dl, dt, V, cls_, dt, D, 0.0f,
                    dxchunk_.get(), CUDA_R_32F, D);
      kern::launch_scatter_rows(stream_, dxchunk_.get(), target_rows() + s0, dxnf_.get(), n, D);
    }
  }
}

template <class T>
void CudaLlama<T>::backward_layers(CudaHooks<T>& hooks) {
  const ModelConfig& c = cfg_;
  const int B = B_, Tn = T_, D = c.dim, H = c.hidden_dim, qd = c.q_dim(), kvd = c.kv_dim(), QKV = qd + 2 * kvd;
  const int nh = c.n_heads, nkv = c.n_kv_heads, hd = c.head_dim, group = nh / nkv, L = c.n_layers;
  const std::int64_t N = static_cast<std::int64_t>(B) * Tn, gT = static_cast<std::int64_t>(group) * Tn;
  const std::int64_t Thd = static_cast<std::int64_t>(Tn) * hd;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  const cudaDataType_t dt = cuda_data_type<T>();
  const float* norms = norms_.get();
  cudaStream_t s = stream_;
  cublasHandle_t cb = cublas_.get();
  using CV = ConstMatrixView<T>;
  using MV = MatrixView<T>;

  mark(kNormBwd);
  hooks.drop_amax_hints();  // none may survive an earlier pass that stopped on an error
  // nor a lagged-join mark: a pass that stopped on an error (e.g. a failed graph capture, rerun
  // eagerly) may have left one recorded in its aborted capture; a no-op otherwise
  hooks.join_backward();
  HDPISSA_CUDA_CHECK(cudaMemsetAsync(dx_.get(), 0, sizeof(float) * N * D, s));
  // The norm backwards' bf16 output, the next linear's dY (o's, then the layer below's down's):
  // without checkpointing it alternates between dx_t_ and tmp_ (the forward's residual scratch,
  // unused here), so that a buffer is rewritten only two norm backwards after the calls that read
  // it, and the hooks' join before each norm backward is lagged (join_backward_lagged(): what the
  // previous half-layer's calls read may still be being read elsewhere, e.g. by the adapters'
  // second stream). With checkpointing the recompute rewrites tmp_ and the layer's activations:
  // one buffer, and a full join before each norm backward.
  const bool lag = !ckpt_;
  T* dyt = dx_t_.get();
  auto next_dy = [&] {  // after the hooks' join: the buffer the next norm backward writes
    if (lag) {
      hooks.join_backward_lagged();
      dyt = dyt == dx_t_.get() ? tmp_.get() : dx_t_.get();
    } else {
      hooks.join_backward();
    }
    return dyt;
  };
  // dyt: the last layer's down's dY (its amax kept for FP8 compute; a checkpointing recompute in
  // between drops the hint, and the hooks then run their own amax pass)
  kern::launch_rmsnorm_bwd<T>(s, res(2 * L), rstd_f_.get(), norms + 2 * L * D, dxnf_.get(), nullptr, nullptr, nullptr,
                              dx_.get(), dyt, N, D, hooks.amax_hint(dyt, N, D, D));
  for (int l = L - 1; l >= 0; --l) {
    // Checkpointing: the shared arena holds the last layer's activations from the forward; every
    // other layer is recomputed from its residual input res(2l) (normalised in place, as layer 0).
    if (ckpt_ && l < L - 1) layer_forward(hooks, l, res(2 * l), nullptr, /*down=*/false);
    const LayerActs& a = layers_[l];
    auto W = [&](Module m) { return CV(linear({l, m})); };
    bool summed = false;   // the hooks summed a group's dX into dxa_ (backward_shared_summed)
    const T* act = a.act;  // X of down: kept by the forward, or recomputed (the same kernel and bits)
    if (!act) {
      mark(kNormBwd);
      kern::launch_swiglu_fwd<T>(s, a.gate, a.up, 2 * H, act_.get(), N, H);
      act = act_.get();
    }
    mark(kLinBwd);
    hooks.backward({l, Module::down}, W(Module::down), CV(act, N, H, H), CV(dyt, N, D, D), MV(d_act_.get(), N, H, H));
    hooks.drop_amax_hints();
    mark(kNormBwd);
    {
      float* amax_gate = hooks.amax_hint(d_gate(), N, H, 2 * H);
      float* amax_up = hooks.amax_hint(d_up(), N, H, 2 * H);
      kern::launch_swiglu_bwd<T>(s, d_act_.get(), a.gate, a.up, 2 * H, d_gate(), d_up(), 2 * H, N, H, amax_gate,
                                 amax_up);
    }
    const CV xn2(a.xn2, N, D, D);
    mark(kLinBwd);
    {
      using SL = typename CudaHooks<T>::SharedLinear;  // kSharedInputMlp's order
      const SL mlp[2] = {{{l, Module::up}, W(Module::up), CV(d_up(), N, H, 2 * H), MV(dxa_.get(), N, D, D)},
                         {{l, Module::gate}, W(Module::gate), CV(d_gate(), N, H, 2 * H), MV(dxb_.get(), N, D, D)}};
      // the hooks may sum the group's dX in their GEMM (into dxa_), else one dX per member
      summed = hooks.backward_shared_summed(mlp, xn2, MV(dxa_.get(), N, D, D));
      if (!summed) hooks.backward_shared(mlp, xn2);
      hooks.drop_amax_hints();
    }
    mark(kNormBwd);
    next_dy();  // o's dY
    kern::launch_rmsnorm_bwd<T>(s, res(2 * l + 1), a.rstd2, norms + (2 * l + 1) * D, nullptr, dxa_.get(),
                                summed ? nullptr : dxb_.get(), nullptr, dx_.get(), dyt, N, D,
                                hooks.amax_hint(dyt, N, D, D));
    mark(kLinBwd);
    hooks.backward({l, Module::o}, W(Module::o), CV(a.attn, N, qd, qd), CV(dyt, N, D, D),
                   MV(d_attn_.get(), N, qd, qd));
    hooks.drop_amax_hints();

    // attention backward (flash-style recompute of P from Q, K and lse)
    mark(kAttnBwd);
    if (!flash_)  // the flash kernels read dO in the row layout
      kern::launch_rows_to_heads<T>(s, d_attn_.get(), qd, doh_.get(), B, Tn, nh, hd, rope_cos_.get(), rope_sin_.get(),
                                    false);
    kern::launch_attn_rowdot<T>(s, d_attn_.get(), a.attn, dr_.get(), B, Tn, nh, hd);
    bool flash_done = false;
    if constexpr (std::is_same_v<T, __nv_bfloat16>) {
      if (flash_) {
        // dQ straight to bf16 rows (un-RoPE'd); dK, dV too for MHA (group 1), else fp32 per query
        // head, summed over each kv head's group below (flash::RowGrads: the same bits either way)
        flash::RowGrads rg{q_rows(), QKV, nullptr, nullptr, QKV, rope_cos_.get(), rope_sin_.get()};
        if (group == 1) {
          rg.k = k_rows();
          rg.v = v_rows();
        }
        flash::backward(a.qh, a.kh, a.vh, d_attn_.get(), a.lse, dr_.get(), nullptr, fdk_.get(), fdv_.get(),
                        lengths(), B, nh, nkv, Tn, hd, scale, s, c.attention_window(l), qd, rg, flash_order_);
        if (group != 1) {
          kern::launch_group_sum_heads_to_rows<T>(s, fdk_.get(), group, k_rows(), QKV, B, Tn, nkv, hd,
                                                  rope_cos_.get(), rope_sin_.get(), true);
          kern::launch_group_sum_heads_to_rows<T>(s, fdv_.get(), group, v_rows(), QKV, B, Tn, nkv, hd,
                                                  rope_cos_.get(), rope_sin_.get(), false);
        }
        flash_done = true;
      }
    }
    if (!flash_done) {
      // S = scale·Q Kᵀ and dP = dO Vᵀ per (b, kv group): (group·T, hd) × (T, hd)ᵀ
      gemm_rowmajor_strided_batched(cb, CUBLAS_OP_N, CUBLAS_OP_T, gT, Tn, hd, scale, a.qh, dt, hd, gT * hd, a.kh, dt,
                                    hd, Thd, 0.0f, s_.get(), CUDA_R_32F, Tn, gT * Tn, B * nkv);
      gemm_rowmajor_strided_batched(cb, CUBLAS_OP_N, CUBLAS_OP_T, gT, Tn, hd, 1.0f, doh_.get(), dt, hd, gT * hd, a.vh,
                                    dt, hd, Thd, 0.0f, dp_.get(), CUDA_R_32F, Tn, gT * Tn, B * nkv);
      kern::launch_attn_bwd_ds<T>(s, s_.get(), dp_.get(), a.lse, dr_.get(), p_.get(), ds_.get(), lengths(), nh, Tn,
                                  N * nh, c.attention_window(l));
      // dV = Pᵀ dO (sums the group's query heads), dQ = scale·dS K, dK = scale·dSᵀ Q
      gemm_rowmajor_strided_batched(cb, CUBLAS_OP_T, CUBLAS_OP_N, Tn, hd, gT, 1.0f, p_.get(), dt, Tn, gT * Tn,
                                    doh_.get(), dt, hd, gT * hd, 0.0f, dvh_.get(), dt, hd, Thd, B * nkv);
      gemm_rowmajor_strided_batched(cb, CUBLAS_OP_N, CUBLAS_OP_N, gT, hd, Tn, scale, ds_.get(), dt, Tn, gT * Tn, a.kh,
                                    dt, hd, Thd, 0.0f, dqh_.get(), dt, hd, gT * hd, B * nkv);
      gemm_rowmajor_strided_batched(cb, CUBLAS_OP_T, CUBLAS_OP_N, Tn, hd, gT, scale, ds_.get(), dt, Tn, gT * Tn, a.qh,
                                    dt, hd, gT * hd, 0.0f, dkh_.get(), dt, hd, Thd, B * nkv);
      kern::launch_heads_to_rows<T>(s, dqh_.get(), q_rows(), QKV, B, Tn, nh, hd, rope_cos_.get(), rope_sin_.get(), true);
      kern::launch_heads_to_rows<T>(s, dkh_.get(), k_rows(), QKV, B, Tn, nkv, hd, rope_cos_.get(), rope_sin_.get(), true);
      kern::launch_heads_to_rows<T>(s, dvh_.get(), v_rows(), QKV, B, Tn, nkv, hd, rope_cos_.get(), rope_sin_.get(),
                                    false);
    }
    const CV xn1(a.xn1, N, D, D);
    mark(kLinBwd);
    {
      using SL = typename CudaHooks<T>::SharedLinear;  // kSharedInputAttention's order
      const SL attn[3] = {{{l, Module::v}, W(Module::v), CV(v_rows(), N, kvd, QKV), MV(dxa_.get(), N, D, D)},
                          {{l, Module::k}, W(Module::k), CV(k_rows(), N, kvd, QKV), MV(dxb_.get(), N, D, D)},
                          {{l, Module::q}, W(Module::q), CV(q_rows(), N, qd, QKV), MV(dxc_.get(), N, D, D)}};
      summed = hooks.backward_shared_summed(attn, xn1, MV(dxa_.get(), N, D, D));
      if (!summed) hooks.backward_shared(attn, xn1);
    }
    mark(kNormBwd);
    next_dy();  // layer l − 1's down's dY (none after layer 0)
    kern::launch_rmsnorm_bwd<T>(s, res(2 * l), a.rstd1, norms + 2 * l * D, nullptr, dxa_.get(),
                                summed ? nullptr : dxb_.get(), summed ? nullptr : dxc_.get(), dx_.get(), dyt, N, D,
                                l > 0 ? hooks.amax_hint(dyt, N, D, D) : nullptr);
  }
  hooks.join_backward();  // every read of this pass, before the next pass rewrites its buffers
  hooks.drop_amax_hints();
}

template <class T>
LossResult CudaLlama<T>::read_loss(std::int64_t n_targets) {
  mark(kEnd);
  if (n_targets > 0)
    HDPISSA_CUDA_CHECK(cudaMemcpyAsync(h_loss_.get(), row_loss_.get(), sizeof(float) * n_targets,
                                       cudaMemcpyDeviceToHost, stream_));
  HDPISSA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  flush_profile();
  LossResult r;
  r.n_tokens = n_targets;
  for (std::int64_t i = 0; i < n_targets; ++i) r.loss_sum += static_cast<double>(h_loss_.get()[i]);
  return r;
}

template <class T>
void CudaLlama<T>::destroy_graphs() {
  for (auto& g : graphs_) {
    if (g.fwd) (void)cudaGraphExecDestroy(g.fwd);
    if (g.bwd) (void)cudaGraphExecDestroy(g.bwd);
  }
  graphs_.clear();
}

template <class T>
CudaLlama<T>::~CudaLlama() {
  destroy_graphs();
}

template <class T>
LossResult CudaLlama<T>::forward_backward(const Batch& b, CudaHooks<T>& hooks, float loss_scale) {
  const std::int64_t n = stage_batch(b);
  prepare_hooks(hooks);
  TrainGraphs* g = nullptr;
  if (graphs_on_ && !prof_on_) {
    for (auto& x : graphs_)
      if (x.hooks == &hooks && x.batch == B_ && x.seq == T_) g = &x;
    if (!g) {
      graphs_.push_back({&hooks, B_, T_});
      g = &graphs_.back();
    }
    if (g->failed) g = nullptr;
  }
  auto loss = [&] {
    HDPISSA_CUDA_CHECK(cudaMemsetAsync(dxnf_.get(), 0, sizeof(float) * B_ * T_ * cfg_.dim, stream_));
    if (n > 0) loss_chunks(n, true, loss_scale);
  };
  if (!g || (!g->fwd && g->eager == 0)) {  // eager (the first pass of a key allocates and settles)
    forward_layers(hooks);
    loss();
    backward_layers(hooks);
    if (g) ++g->eager;
    return read_loss(n);
  }
  const bool replay = g->fwd && g->bwd;
  if (!replay) {  // capture this pass: the forward, the eager loss, the backward
    if (!capture_stream_graph(stream_, g->fwd, [&] { forward_layers(hooks); })) {
      g->failed = true;
      ++graph_failures_;
      forward_layers(hooks);
      loss();
      backward_layers(hooks);
      return read_loss(n);
    }
  }
  HDPISSA_CUDA_CHECK(cudaGraphLaunch(g->fwd, stream_));
  loss();
  if (!replay && !capture_stream_graph(stream_, g->bwd, [&] { backward_layers(hooks); })) {
    g->failed = true;
    ++graph_failures_;
    (void)cudaGraphExecDestroy(g->fwd);
    g->fwd = nullptr;
    backward_layers(hooks);
    return read_loss(n);
  }
  HDPISSA_CUDA_CHECK(cudaGraphLaunch(g->bwd, stream_));
  if (replay) ++graph_replays_;
  return read_loss(n);
}

template <class T>
LossResult CudaLlama<T>::forward_loss(const Batch& b, CudaHooks<T>& hooks) {
  const std::int64_t n = stage_batch(b);
  prepare_hooks(hooks);
  forward_layers(hooks);
  if (n > 0) loss_chunks(n, false, 0.0f);
  return read_loss(n);
}

template <class T>
void CudaLlama<T>::forward_logits(const Batch& b, CudaHooks<T>& hooks, std::vector<float>& logits) {
  stage_batch(b);
  prepare_hooks(hooks);
  forward_layers(hooks);
  const std::int64_t N = static_cast<std::int64_t>(B_) * T_;
  const int V = cfg_.vocab_size, D = cfg_.dim;
  FBuf out(static_cast<std::size_t>(N) * V);
  gemm_rowmajor(cublas_.get(), CUBLAS_OP_N, CUBLAS_OP_T, N, V, D, 1.0f, xnf_.get(), cuda_data_type<T>(), D, cls_,
                cuda_data_type<T>(), D, 0.0f, out.get(), CUDA_R_32F, V);
  logits.resize(static_cast<std::size_t>(N) * V);
  HDPISSA_CUDA_CHECK(cudaMemcpyAsync(logits.data(), out.get(), sizeof(float) * N * V, cudaMemcpyDeviceToHost, stream_));
  HDPISSA_CUDA_CHECK(cudaStreamSynchronize(stream_));
  prof_sec_.clear();  // a logits pass is not profiled
  prof_host_t_.clear();
}

template <class T>
void CudaLlama<T>::enable_profiling(bool on) {
  prof_on_ = on;
  if (on && prof_ev_.empty()) {
    prof_ev_.resize(64 + 40 * static_cast<std::size_t>(cfg_.n_layers));
    for (auto& e : prof_ev_) HDPISSA_CUDA_CHECK(cudaEventCreate(&e));
    prof_sec_.reserve(prof_ev_.size());
  }
  std::fill(prof_ms_.begin(), prof_ms_.end(), 0.0);
  std::fill(prof_host_ms_.begin(), prof_host_ms_.end(), 0.0);
  prof_sec_.clear();
  prof_host_t_.clear();
}

template <class T>
void CudaLlama<T>::mark(int section) {
  if (!prof_on_) return;
  if (prof_sec_.size() >= prof_ev_.size()) {  // many loss chunks: the pool grows (host-side, not captured)
    const std::size_t more = prof_ev_.size();
    prof_ev_.resize(2 * more);
    for (std::size_t i = more; i < prof_ev_.size(); ++i) HDPISSA_CUDA_CHECK(cudaEventCreate(&prof_ev_[i]));
  }
  HDPISSA_CUDA_CHECK(cudaEventRecord(prof_ev_[prof_sec_.size()], stream_));
  prof_sec_.push_back(section);
  prof_host_t_.push_back(std::chrono::steady_clock::now());
}

template <class T>
void CudaLlama<T>::flush_profile() {
  if (!prof_on_) return;
  for (std::size_t i = 0; i + 1 < prof_sec_.size(); ++i) {
    if (prof_sec_[i] < 0) continue;
    float ms = 0;
    HDPISSA_CUDA_CHECK(cudaEventElapsedTime(&ms, prof_ev_[i], prof_ev_[i + 1]));
    prof_ms_[prof_sec_[i]] += ms;
    if (i + 1 < prof_host_t_.size())
      prof_host_ms_[prof_sec_[i]] +=
          std::chrono::duration<double, std::milli>(prof_host_t_[i + 1] - prof_host_t_[i]).count();
  }
  prof_sec_.clear();
  prof_host_t_.clear();
}

template <class T>
std::vector<std::pair<std::string, double>> CudaLlama<T>::profile() const {
  static const char* names[] = {"linears fwd", "attention fwd", "norms+elementwise fwd", "loss (lm_head + CE)",
                                "linears bwd", "attention bwd", "norms+elementwise bwd"};
  std::vector<std::pair<std::string, double>> out;
  for (int i = 0; i < kNumSections; ++i)
    out.emplace_back(names[i], i == kLoss ? prof_ms_[kLoss] + prof_ms_[kLossLogits] + prof_ms_[kLossCE] + prof_ms_[kLossDx]
                                          : prof_ms_[i]);
  return out;
}

template <class T>
std::vector<std::pair<std::string, double>> CudaLlama<T>::loss_parts() const {
  return {{"loss: logits GEMMs", prof_ms_[kLossLogits]},
          {"loss: gathers + cross-entropy", prof_ms_[kLoss] + prof_ms_[kLossCE]},
          {"loss: dX GEMMs + scatters", prof_ms_[kLossDx]}};
}

template <class T>
std::vector<std::pair<std::string, double>> CudaLlama<T>::host_profile() const {
  static const char* names[] = {"linears fwd", "attention fwd", "norms+elementwise fwd", "loss (lm_head + CE)",
                                "linears bwd", "attention bwd", "norms+elementwise bwd"};
  std::vector<std::pair<std::string, double>> out;
  for (int i = 0; i < kNumSections; ++i)
    out.emplace_back(names[i], i == kLoss ? prof_host_ms_[kLoss] + prof_host_ms_[kLossLogits] + prof_host_ms_[kLossCE] +
                                                prof_host_ms_[kLossDx]
                                          : prof_host_ms_[i]);
  out.emplace_back("loss: logits GEMMs", prof_host_ms_[kLossLogits]);
  out.emplace_back("loss: gathers + cross-entropy", prof_host_ms_[kLoss] + prof_host_ms_[kLossCE]);
  out.emplace_back("loss: dX GEMMs + scatters", prof_host_ms_[kLossDx]);
  return out;
}

}  // namespace hdpissa::llama::gpu
