#pragma once
/// \file cublas_gemm.hpp
/// The one row-major cuBLAS GEMM of the CUDA LLaMA model and its hooks: C = alpha·op(A)·op(B) +
/// beta·C on row-major operands, through cublasGemmEx / cublasGemmStridedBatchedEx with fp32
/// accumulation (CUBLAS_COMPUTE_32F — exact fp32 for fp32 operands unless the handle's math mode
/// allows TF32) and CUBLAS_GEMM_DEFAULT. Row-major C (m, n) is column-major Cᵀ (n, m), so every
/// call passes the operands swapped: Cᵀ = op(B)ᵀ·op(A)ᵀ.
///
///  - cuda_data_type<T>(): the cuBLAS data type of float / __nv_bfloat16.
///  - gemm_rowmajor(handle, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc): raw
///    pointers with their own data types (e.g. bf16 operands into an fp32 C); no checks.
///  - gemm_rowmajor_strided_batched(..., sa, ..., sb, ..., sc, batch): `batch` products at element
///    strides sa, sb, sc; batch == 1 is the plain GemmEx (strides unused).
///  - gemm_rowmajor(handle, ta, tb, alpha, A, B, beta, C) on views: shapes taken from the views and
///    checked (op(A) (m, k) × op(B) (k, n) → C (m, n)), a null handle refused, empty C a no-op.
/// All work is enqueued on the handle's stream; nothing allocates beyond the handle's workspace.

#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/core/view.hpp"

namespace hdpissa::llama::gpu {

/// cuBLAS data type of a storage type: float → CUDA_R_32F, __nv_bfloat16 → CUDA_R_16BF.
template <class T>
constexpr cudaDataType_t cuda_data_type() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>, "cuda_data_type: float or bf16");
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else return CUDA_R_16BF;
}

/// Row-major C (m, n) = alpha·op(A)·op(B) + beta·C, fp32 accumulation. lda / ldb / ldc are the
/// row-major leading dimensions (elements between rows) of A, B, C as stored.
inline void gemm_rowmajor(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, std::int64_t m,
                          std::int64_t n, std::int64_t k, float alpha, const void* A, cudaDataType_t at,
                          std::int64_t lda, const void* B, cudaDataType_t bt, std::int64_t ldb, float beta, void* C,
                          cudaDataType_t ct, std::int64_t ldc) {
  // row-major C = op(A) op(B)  ⇔  column-major Cᵀ (n, m) = op(B)ᵀ op(A)ᵀ
  HDPISSA_CUBLAS_CHECK(cublasGemmEx(handle, tb, ta, static_cast<int>(n), static_cast<int>(m), static_cast<int>(k),
                                    &alpha, B, bt, static_cast<int>(ldb), A, at, static_cast<int>(lda), &beta, C, ct,
                                    static_cast<int>(ldc), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/// `batch` row-major products C_i = alpha·op(A_i)·op(B_i) + beta·C_i, X_i = X + i·sx (element
/// strides). batch == 1 runs gemm_rowmajor (the strides are then unused).
inline void gemm_rowmajor_strided_batched(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb,
                                          std::int64_t m, std::int64_t n, std::int64_t k, float alpha, const void* A,
                                          cudaDataType_t at, std::int64_t lda, std::int64_t sa, const void* B,
                                          cudaDataType_t bt, std::int64_t ldb, std::int64_t sb, float beta, void* C,
                                          cudaDataType_t ct, std::int64_t ldc, std::int64_t sc, int batch) {
  if (batch == 1) {
    gemm_rowmajor(handle, ta, tb, m, n, k, alpha, A, at, lda, B, bt, ldb, beta, C, ct, ldc);
    return;
  }
  HDPISSA_CUBLAS_CHECK(cublasGemmStridedBatchedEx(handle, tb, ta, static_cast<int>(n), static_cast<int>(m),
                                                  static_cast<int>(k), &alpha, B, bt, static_cast<int>(ldb), sb, A, at,
                                                  static_cast<int>(lda), sa, &beta, C, ct, static_cast<int>(ldc), sc,
                                                  batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

/// Row-major C = alpha·op(A)·op(B) + beta·C on device views (each operand with its own type, e.g.
/// bf16 A, B into fp32 C). Throws when the handle is null or the shapes disagree; no-op when C is
/// empty.
template <class TA, class TB, class TC>
void gemm_rowmajor(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, float alpha,
                   ConstMatrixView<TA> A, ConstMatrixView<TB> B, float beta, MatrixView<TC> C) {
  const index_t m = ta == CUBLAS_OP_N ? A.rows : A.cols, k = ta == CUBLAS_OP_N ? A.cols : A.rows;
  const index_t kb = tb == CUBLAS_OP_N ? B.rows : B.cols, n = tb == CUBLAS_OP_N ? B.cols : B.rows;
  HDPISSA_REQUIRE(handle != nullptr, "gemm_rowmajor: expected a cuBLAS handle, found none");
  HDPISSA_REQUIRE(k == kb && C.rows == m && C.cols == n, "gemm_rowmajor: expected op(A) (m, k) x op(B) (k, n) "
                  "-> C (m, n), found op(A) ", shape_str(m, k), ", op(B) ", shape_str(kb, n), ", C ",
                  shape_str(C.rows, C.cols));
  if (m == 0 || n == 0) return;
  gemm_rowmajor(handle, ta, tb, m, n, k, alpha, A.data, cuda_data_type<TA>(), A.ld, B.data, cuda_data_type<TB>(),
                B.ld, beta, C.data, cuda_data_type<TC>(), C.ld);
}

}  // namespace hdpissa::llama::gpu
