#pragma once
/// \file cuda.hpp
/// Opt-in umbrella of the CUDA component (link hdpissa::cuda; compile with nvcc):
/// CudaBackend<float | double | __nv_bfloat16>, CudaSingleProcess, the fused DWU kernels (DwuKernels<CudaBackend>), the RAII
/// handles and the checking macros (HDPISSA_CUDA_CHECK, HDPISSA_CUBLAS_CHECK, HDPISSA_CUSOLVER_CHECK).

#include "hdpissa/hdpissa.hpp"
#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/backend/cuda/cuda_handles.hpp"
#include "hdpissa/backend/cuda/kernels.cuh"
#include "hdpissa/backend/cuda/cuda_backend.hpp"
#include "hdpissa/backend/cuda/dwu_kernels.hpp"
#include "hdpissa/backend/cuda/convert_batch.hpp"
#include "hdpissa/backend/cuda/cuda_single_process.hpp"
