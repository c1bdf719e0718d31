#pragma once
/// \file cuda_check.hpp
/// The checking macros of the CUDA component: HDPISSA_CUDA_CHECK, HDPISSA_CUBLAS_CHECK,
/// HDPISSA_CUSOLVER_CHECK and HDPISSA_CUDA_CHECK_LAUNCH(). A failed call throws
/// hdpissa::RuntimeCallError naming the call as written, the library's status string and code, the
/// file and line, and the current device. The library never calls exit().

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include "hdpissa/core/error.hpp"

namespace hdpissa::cuda_detail {

inline const char* cusolver_status_string(cusolverStatus_t s) {
  switch (s) {
    case CUSOLVER_STATUS_SUCCESS: return "CUSOLVER_STATUS_SUCCESS";
    case CUSOLVER_STATUS_NOT_INITIALIZED: return "CUSOLVER_STATUS_NOT_INITIALIZED";
    case CUSOLVER_STATUS_ALLOC_FAILED: return "CUSOLVER_STATUS_ALLOC_FAILED";
    case CUSOLVER_STATUS_INVALID_VALUE: return "CUSOLVER_STATUS_INVALID_VALUE";
    case CUSOLVER_STATUS_ARCH_MISMATCH: return "CUSOLVER_STATUS_ARCH_MISMATCH";
    case CUSOLVER_STATUS_EXECUTION_FAILED: return "CUSOLVER_STATUS_EXECUTION_FAILED";
    case CUSOLVER_STATUS_INTERNAL_ERROR: return "CUSOLVER_STATUS_INTERNAL_ERROR";
    case CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED: return "CUSOLVER_STATUS_MATRIX_TYPE_NOT_SUPPORTED";
    case CUSOLVER_STATUS_NOT_SUPPORTED: return "CUSOLVER_STATUS_NOT_SUPPORTED";
    default: return "CUSOLVER_STATUS_<unknown>";
  }
}

/// Throws RuntimeCallError("<lib> call `<call>` failed: <what> (code) at file:line [device d]").
[[noreturn]] inline void throw_call_error(const char* lib, const char* call, const char* what, int code,
                                          const char* file, int line) {
  int dev = -1;
  (void)cudaGetDevice(&dev);
  throw RuntimeCallError(cat(lib, " call `", call, "` failed: ", what, " (", code, ") at ", file, ":", line,
                             " [device ", dev, "]"));
}

}  // namespace hdpissa::cuda_detail

/// Checks a cudaError_t-returning call.
#define HDPISSA_CUDA_CHECK(call)                                                                      \
  do {                                                                                                \
    const cudaError_t hdp_e_ = (call);                                                                \
    if (hdp_e_ != cudaSuccess)                                                                        \
      ::hdpissa::cuda_detail::throw_call_error("CUDA", #call, cudaGetErrorString(hdp_e_), int(hdp_e_), \
                                               __FILE__, __LINE__);                                   \
  } while (0)

/// Checks a cublasStatus_t-returning call.
#define HDPISSA_CUBLAS_CHECK(call)                                                                      \
  do {                                                                                                  \
    const cublasStatus_t hdp_s_ = (call);                                                               \
    if (hdp_s_ != CUBLAS_STATUS_SUCCESS)                                                                \
      ::hdpissa::cuda_detail::throw_call_error("cuBLAS", #call, cublasGetStatusString(hdp_s_), int(hdp_s_), \
                                               __FILE__, __LINE__);                                     \
  } while (0)

/// Checks a cusolverStatus_t-returning call.
#define HDPISSA_CUSOLVER_CHECK(call)                                                                   \
  do {                                                                                                 \
    const cusolverStatus_t hdp_s_ = (call);                                                            \
    if (hdp_s_ != CUSOLVER_STATUS_SUCCESS)                                                             \
      ::hdpissa::cuda_detail::throw_call_error("cuSOLVER", #call,                                      \
                                               ::hdpissa::cuda_detail::cusolver_status_string(hdp_s_), \
                                               int(hdp_s_), __FILE__, __LINE__);                       \
  } while (0)

/// After a kernel launch: checks the launch itself (bad configuration, missing image).
#define HDPISSA_CUDA_CHECK_LAUNCH(kernel_name)                                                             \
  do {                                                                                                     \
    const cudaError_t hdp_e_ = cudaGetLastError();                                                         \
    if (hdp_e_ != cudaSuccess)                                                                             \
      ::hdpissa::cuda_detail::throw_call_error("CUDA", "launch of " kernel_name, cudaGetErrorString(hdp_e_), \
                                               int(hdp_e_), __FILE__, __LINE__);                           \
  } while (0)
