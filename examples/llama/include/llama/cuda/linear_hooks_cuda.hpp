#pragma once
/// \file linear_hooks_cuda.hpp
/// The GPU twin of linear_hooks.hpp: CudaLinearHooks<T> is the one place where the CUDA LLaMA model
/// (model_cuda.cuh, CudaLlama<T>) touches a target linear (q, k, v, o, gate, up, down). The
/// fine-tuning method (methods_cuda.cuh) is a CudaLinearHooks<T>; the model never changes.
///
/// T is the compute type of the model: float (fp32 throughout) or __nv_bfloat16 (bf16 GEMM operands
/// with fp32 accumulation; the model keeps its residual stream, norms, softmax and loss statistics in
/// fp32). All views are row-major hdpissa::MatrixView in DEVICE memory.
///
/// Contract (required expressions, `h` a CudaLinearHooks<T>&, `id` a LinearId, `W` the model's
/// compute copy of the (out, in) weight, CudaLlama<T>::linear(id)):
///  - `h.forward(id, W, X, Y)`: X (tokens, in) → Y (tokens, out); Y is preallocated and must be
///    overwritten. Plain linear: `Y = X Wᵀ`.
///  - `h.backward(id, W, X, dY, dX)`: X is the same input the forward saw for this id (the model keeps
///    it alive until this call); dY (tokens, out) is ∂loss/∂Y; dX (tokens, in) is preallocated and
///    must be OVERWRITTEN with ∂loss/∂X (plain linear: `dX = dY W`). Weight or adapter gradients are
///    the hook's own business and must be ACCUMULATED (gradient accumulation runs backward once per
///    micro-batch before one optimizer step).
///  - Order: forward in layer order (q, k, v, o, gate, up, down per layer), backward in reverse layer
///    order (down, up, gate, o, v, k, q). Forward-only passes happen for evaluation.
///  - Streams: every call is enqueued on the model's stream (CudaLlama<T>::stream()); hooks must enqueue
///    their work on that same stream (construct their CudaBackend / cuBLAS handle on it) and must not
///    synchronise the device in these calls. No allocation in forward/backward: size workspaces up
///    front (the model announces the maximal token count through `reserve(max_tokens)` at the start
///    of every pass; it must be a no-op when nothing grows).

#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/core/view.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama::gpu {

/// cuBLAS data type of a compute type.
template <class T>
constexpr cudaDataType_t cuda_type() {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else return CUDA_R_16BF;
}

/// Base hooks = frozen plain linear on the GPU: Y = X Wᵀ, dX = dY W (cuBLAS, fp32 accumulation,
/// exact fp32 math for T = float unless the handle allows TF32).
template <class T>
class CudaLinearHooks {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>, "compute type: float or bf16");

 public:
  using compute_type = T;
  explicit CudaLinearHooks(cublasHandle_t handle = nullptr) : handle_(handle) {}
  virtual ~CudaLinearHooks() = default;

  /// Called by the model at the start of EVERY pass (before the first forward of that pass) with the
  /// largest token count it will ever use (max_batch·max_seq): allocate on the first call or when it
  /// grows, otherwise do nothing (the same hooks object may serve several passes and models).
  virtual void reserve(index_t max_tokens) { (void)max_tokens; }

  /// Y = X Wᵀ.  // X (tokens, in), W (out, in), Y (tokens, out)
  virtual void forward(LinearId id, ConstMatrixView<T> W, ConstMatrixView<T> X, MatrixView<T> Y) {
    (void)id;
    gemm(CUBLAS_OP_N, CUBLAS_OP_T, 1.0f, X, W, 0.0f, Y);
  }
  /// dX = dY W.  // dY (tokens, out), W (out, in), dX (tokens, in)
  virtual void backward(LinearId id, ConstMatrixView<T> W, ConstMatrixView<T> X, ConstMatrixView<T> dY,
                        MatrixView<T> dX) {
    (void)id;
    (void)X;
    gemm(CUBLAS_OP_N, CUBLAS_OP_N, 1.0f, dY, W, 0.0f, dX);
  }

  void set_handle(cublasHandle_t h) { handle_ = h; }
  cublasHandle_t handle() const { return handle_; }

 protected:
  /// Row-major C = alpha op(A) op(B) + beta C with fp32 accumulation (cublasGemmEx, swapped
  /// operands: row-major C is column-major Cᵀ). Operands and C have type T.
  void gemm(cublasOperation_t ta, cublasOperation_t tb, float alpha, ConstMatrixView<T> A, ConstMatrixView<T> B,
            float beta, MatrixView<T> C) const;

  cublasHandle_t handle_ = nullptr;
};

template <class T>
void CudaLinearHooks<T>::gemm(cublasOperation_t ta, cublasOperation_t tb, float alpha, ConstMatrixView<T> A,
                              ConstMatrixView<T> B, float beta, MatrixView<T> C) const {
  const index_t m = ta == CUBLAS_OP_N ? A.rows : A.cols, k = ta == CUBLAS_OP_N ? A.cols : A.rows;
  const index_t kb = tb == CUBLAS_OP_N ? B.rows : B.cols, n = tb == CUBLAS_OP_N ? B.cols : B.rows;
  HDPISSA_REQUIRE(handle_ != nullptr, "CudaLinearHooks::gemm: expected a cuBLAS handle (construct the hooks with one, "
                  "or let CudaLlama set its own), found none");
  HDPISSA_REQUIRE(k == kb && C.rows == m && C.cols == n, "CudaLinearHooks::gemm: expected op(A) (m, k) x op(B) (k, n) "
                  "-> C (m, n), found op(A) ", shape_str(m, k), ", op(B) ", shape_str(kb, n), ", C ",
                  shape_str(C.rows, C.cols));
  if (m == 0 || n == 0) return;
  // row-major C = op(A) op(B)  <=>  column-major Cᵀ = op(B)ᵀ op(A)ᵀ
  const cudaDataType_t t = cuda_type<T>();
  HDPISSA_CUBLAS_CHECK(cublasGemmEx(handle_, tb, ta, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k),
                                    &alpha, B.data, t, static_cast<int>(B.ld), A.data, t, static_cast<int>(A.ld), &beta,
                                    C.data, t, static_cast<int>(C.ld), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

}  // namespace hdpissa::llama::gpu
