#pragma once
/// \file solver_calls.hpp
/// Type-overloaded thin wrappers over the cuBLAS / cuSOLVER entry points CudaBackend needs for
/// float and double (geam, syrk, trsm, geqrf, orgqr, potrf, gesvdj), so the solver code is written
/// once as a template. All are column-major, as the libraries are.

#include "hdpissa/backend/cuda/cuda_check.hpp"

namespace hdpissa::cuda_detail {

// ---- cuBLAS
inline cublasStatus_t geam(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                           const float* alpha, const float* A, int lda, const float* beta, const float* B,
                           int ldb, float* C, int ldc) {
  return cublasSgeam(h, ta, tb, m, n, alpha, A, lda, beta, B, ldb, C, ldc);
}
inline cublasStatus_t geam(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                           const double* alpha, const double* A, int lda, const double* beta, const double* B,
                           int ldb, double* C, int ldc) {
  return cublasDgeam(h, ta, tb, m, n, alpha, A, lda, beta, B, ldb, C, ldc);
}
inline cublasStatus_t syrk(cublasHandle_t h, cublasFillMode_t uplo, cublasOperation_t t, int n, int k,
                           const float* alpha, const float* A, int lda, const float* beta, float* C, int ldc) {
  return cublasSsyrk(h, uplo, t, n, k, alpha, A, lda, beta, C, ldc);
}
inline cublasStatus_t syrk(cublasHandle_t h, cublasFillMode_t uplo, cublasOperation_t t, int n, int k,
                           const double* alpha, const double* A, int lda, const double* beta, double* C, int ldc) {
  return cublasDsyrk(h, uplo, t, n, k, alpha, A, lda, beta, C, ldc);
}
inline cublasStatus_t trsm(cublasHandle_t h, cublasSideMode_t side, cublasFillMode_t uplo, cublasOperation_t t,
                           cublasDiagType_t diag, int m, int n, const float* alpha, const float* A, int lda,
                           float* B, int ldb) {
  return cublasStrsm(h, side, uplo, t, diag, m, n, alpha, A, lda, B, ldb);
}
inline cublasStatus_t trsm(cublasHandle_t h, cublasSideMode_t side, cublasFillMode_t uplo, cublasOperation_t t,
                           cublasDiagType_t diag, int m, int n, const double* alpha, const double* A, int lda,
                           double* B, int ldb) {
  return cublasDtrsm(h, side, uplo, t, diag, m, n, alpha, A, lda, B, ldb);
}

// ---- cuSOLVER
inline cusolverStatus_t geqrf_buffer(cusolverDnHandle_t h, int m, int n, float* A, int lda, int* lw) {
  return cusolverDnSgeqrf_bufferSize(h, m, n, A, lda, lw);
}
inline cusolverStatus_t geqrf_buffer(cusolverDnHandle_t h, int m, int n, double* A, int lda, int* lw) {
  return cusolverDnDgeqrf_bufferSize(h, m, n, A, lda, lw);
}
inline cusolverStatus_t geqrf(cusolverDnHandle_t h, int m, int n, float* A, int lda, float* tau, float* w, int lw,
                              int* info) {
  return cusolverDnSgeqrf(h, m, n, A, lda, tau, w, lw, info);
}
inline cusolverStatus_t geqrf(cusolverDnHandle_t h, int m, int n, double* A, int lda, double* tau, double* w,
                              int lw, int* info) {
  return cusolverDnDgeqrf(h, m, n, A, lda, tau, w, lw, info);
}
inline cusolverStatus_t orgqr_buffer(cusolverDnHandle_t h, int m, int n, int k, const float* A, int lda,
                                     const float* tau, int* lw) {
  return cusolverDnSorgqr_bufferSize(h, m, n, k, A, lda, tau, lw);
}
inline cusolverStatus_t orgqr_buffer(cusolverDnHandle_t h, int m, int n, int k, const double* A, int lda,
                                     const double* tau, int* lw) {
  return cusolverDnDorgqr_bufferSize(h, m, n, k, A, lda, tau, lw);
}
inline cusolverStatus_t orgqr(cusolverDnHandle_t h, int m, int n, int k, float* A, int lda, const float* tau,
                              float* w, int lw, int* info) {
  return cusolverDnSorgqr(h, m, n, k, A, lda, tau, w, lw, info);
}
inline cusolverStatus_t orgqr(cusolverDnHandle_t h, int m, int n, int k, double* A, int lda, const double* tau,
                              double* w, int lw, int* info) {
  return cusolverDnDorgqr(h, m, n, k, A, lda, tau, w, lw, info);
}
inline cusolverStatus_t potrf_buffer(cusolverDnHandle_t h, cublasFillMode_t u, int n, float* A, int lda, int* lw) {
  return cusolverDnSpotrf_bufferSize(h, u, n, A, lda, lw);
}
inline cusolverStatus_t potrf_buffer(cusolverDnHandle_t h, cublasFillMode_t u, int n, double* A, int lda, int* lw) {
  return cusolverDnDpotrf_bufferSize(h, u, n, A, lda, lw);
}
inline cusolverStatus_t potrf(cusolverDnHandle_t h, cublasFillMode_t u, int n, float* A, int lda, float* w, int lw,
                              int* info) {
  return cusolverDnSpotrf(h, u, n, A, lda, w, lw, info);
}
inline cusolverStatus_t potrf(cusolverDnHandle_t h, cublasFillMode_t u, int n, double* A, int lda, double* w,
                              int lw, int* info) {
  return cusolverDnDpotrf(h, u, n, A, lda, w, lw, info);
}
inline cusolverStatus_t gesvdj_buffer(cusolverDnHandle_t h, int m, int n, const float* A, int lda, const float* S,
                                      const float* U, int ldu, const float* V, int ldv, int* lw, gesvdjInfo_t p) {
  return cusolverDnSgesvdj_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, 1, m, n, A, lda, S, U, ldu, V, ldv, lw, p);
}
inline cusolverStatus_t gesvdj_buffer(cusolverDnHandle_t h, int m, int n, const double* A, int lda, const double* S,
                                      const double* U, int ldu, const double* V, int ldv, int* lw, gesvdjInfo_t p) {
  return cusolverDnDgesvdj_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, 1, m, n, A, lda, S, U, ldu, V, ldv, lw, p);
}
inline cusolverStatus_t gesvdj(cusolverDnHandle_t h, int m, int n, float* A, int lda, float* S, float* U, int ldu,
                               float* V, int ldv, float* w, int lw, int* info, gesvdjInfo_t p) {
  return cusolverDnSgesvdj(h, CUSOLVER_EIG_MODE_VECTOR, 1, m, n, A, lda, S, U, ldu, V, ldv, w, lw, info, p);
}
inline cusolverStatus_t gesvdj(cusolverDnHandle_t h, int m, int n, double* A, int lda, double* S, double* U,
                               int ldu, double* V, int ldv, double* w, int lw, int* info, gesvdjInfo_t p) {
  return cusolverDnDgesvdj(h, CUSOLVER_EIG_MODE_VECTOR, 1, m, n, A, lda, S, U, ldu, V, ldv, w, lw, info, p);
}

inline cusolverStatus_t syevd_buffer(cusolverDnHandle_t h, cublasFillMode_t u, int n, const double* A, int lda,
                                     const double* w, int* lw) {
  return cusolverDnDsyevd_bufferSize(h, CUSOLVER_EIG_MODE_VECTOR, u, n, A, lda, w, lw);
}
inline cusolverStatus_t syevd(cusolverDnHandle_t h, cublasFillMode_t u, int n, double* A, int lda, double* w,
                              double* work, int lw, int* info) {
  return cusolverDnDsyevd(h, CUSOLVER_EIG_MODE_VECTOR, u, n, A, lda, w, work, lw, info);
}

}  // namespace hdpissa::cuda_detail
