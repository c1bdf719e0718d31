#pragma once
/// \file model_cuda.cuh
/// CudaLlama<T>: the LLaMA decoder of model.hpp on one GPU — forward with the chunked cross-entropy
/// and backward down to every target linear's input, with every target linear going through
/// CudaLinearHooks<T> (linear_hooks_cuda.hpp). Only target linears train: the model computes no
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
/// (no atomics, deterministic). Scores live in one layer-sized fp32 workspace (B·n_heads·T·T); the
/// forward saves only the row log-sum-exp, the backward recomputes P (flash-attention style).
/// The loss runs over target rows only, in chunks of `loss_chunk_rows` rows of full-vocabulary
/// logits (one fused kernel: loss and d(logits) in place, then the dX GEMM of the chunk).
///
/// Every buffer is allocated in the constructor for max_batch × max_seq tokens: a step allocates
/// nothing and synchronises once (reading back the per-row losses).

#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/backend/cuda/cuda_handles.hpp"
#include "hdpissa/core/view.hpp"
#include "llama/batch.hpp"
#include "llama/config.hpp"
#include "llama/cuda/kernels_llama.cuh"
#include "llama/cuda/linear_hooks_cuda.hpp"
#include "llama/model.hpp"  // LossResult
#include "llama/weights.hpp"

namespace hdpissa::llama::gpu {

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
  CudaLlama(const ModelWeights& host, int max_batch, int max_seq, cudaStream_t stream, int loss_chunk_rows = 1024);
  CudaLlama(const CudaLlama&) = delete;
  CudaLlama& operator=(const CudaLlama&) = delete;

  /// Hyper-parameters.
  const ModelConfig& config() const { return cfg_; }
  /// The stream every kernel and GEMM of the model is enqueued on.
  cudaStream_t stream() const { return stream_; }
  /// The model's cuBLAS handle (bound to stream(), default math: no TF32). Hooks constructed without
  /// a handle get this one at their first pass.
  cublasHandle_t cublas() const { return cublas_.get(); }
  /// Largest batch / sequence the buffers hold.
  int max_batch() const { return max_batch_; }
  int max_seq() const { return max_seq_; }

  /// Device compute copy of a target linear, (out, in) row-major, contiguous. Writing through it
  /// (e.g. a DWU step in T) changes the model.
  MatrixView<T> linear(LinearId id);
  /// Replaces a target linear with `host_fp32` (out, in) (converted to T on the device).
  void upload_linear(LinearId id, const Matrix& host_fp32);
  /// Copies a target linear to the host as fp32 (resizes `host_fp32`).
  void download_linear(LinearId id, Matrix& host_fp32) const;

  /// One micro-batch: forward, then backward through `hooks`. The gradient fed back is that of
  /// loss_scale · (mean cross-entropy over the batch's target tokens), exactly like the CPU
  /// backward(..., grad_scale). Returns the loss (sum and count, like the CPU forward).
  LossResult forward_backward(const Batch& b, CudaLinearHooks<T>& hooks, float loss_scale = 1.0f);
  /// Evaluation: forward and loss only (hooks.forward is called, hooks.backward is not).
  LossResult forward_loss(const Batch& b, CudaLinearHooks<T>& hooks);
  /// For tests: forward, then the full logits of every row (B·T, vocab) to the host in fp32
  /// (allocates a temporary; not a hot path). Padded rows hold the logits of their (unattended) state.
  void forward_logits(const Batch& b, CudaLinearHooks<T>& hooks, std::vector<float>& logits);

 private:
  struct Layer;  // device weights and saved activations of one decoder layer
  ModelConfig cfg_;
  int max_batch_ = 0, max_seq_ = 0;
  cudaStream_t stream_ = nullptr;
  CublasHandle cublas_;
};

}  // namespace hdpissa::llama::gpu
