#pragma once
/// \file cuda.hpp
/// Opt-in umbrella of the CUDA component (link hdpissa::cuda; compile with nvcc):
/// CudaBackend<float | double | __nv_bfloat16>, CudaSingleProcess, CholeskyRandomizedSvd, the RAII
/// handles and the checking macros (HDPISSA_CUDA_CHECK, HDPISSA_CUBLAS_CHECK, HDPISSA_CUSOLVER_CHECK).

#include "hdpissa/hdpissa.hpp"
#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/backend/cuda/cuda_handles.hpp"
#include "hdpissa/backend/cuda/kernels.cuh"
#include "hdpissa/backend/cuda/cuda_backend.hpp"
#include "hdpissa/backend/cuda/cuda_single_process.hpp"
#include "hdpissa/backend/cuda/cholesky_randomized_svd.hpp"
