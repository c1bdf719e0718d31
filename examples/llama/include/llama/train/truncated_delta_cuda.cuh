#pragma once
/// \file truncated_delta_cuda.cuh
/// truncated_delta_cuda(): the GPU path of hdpissa-train's truncated LoRA export
/// (llama/train/truncated_delta.hpp). ΔW = W − W_init is formed in double on the device (the live
/// fp32 W widened exactly, minus W_init uploaded from the host base checkpoint and widened exactly:
/// the exact difference, as the host path forms it), then truncate_delta runs on CudaBackend<double>
/// (ExactSvd: cuSOLVER gesvdj in double, QR-preconditioned for tall matrices; RandomizedSvd:
/// cuBLAS DGEMM + geqrf/orgqr + gesvdj, the same counter-based sketch as the host). Only the
/// min(out, in) singular values and the R kept singular vectors are downloaded.
///
/// Precision: double throughout (CudaBackend<double>), so no fp32 error bound is involved; the
/// results equal the host's EigenBackend<double> to double rounding amplified by 1/gap of the kept
/// subspace, far below the fp32 rounding of the exported factors (tests/llama/cuda_train/
/// test_cuda_lora_export.cpp). Device memory while it runs: 16 bytes per element of the layer for
/// ΔW and W_init in double, plus the SVD's scratch (gesvdj: ~3 double copies of the layer for the
/// exact SVD; (out + in)·(R + 16) doubles for the randomized one), released when it returns.

#include <vector>

#include "hdpissa/cuda.hpp"
#include "llama/train/truncated_delta.hpp"

namespace hdpissa::llama {

/// ΔW = W − W0 of one target as a truncated LoRA (truncate_delta), on the GPU of `b`'s stream:
/// W (out, in) fp32 on the device, W0 (out, in) on the host. Waits for the stream.
inline TruncatedDelta truncated_delta_cuda(hdpissa::CudaBackend<double>& b, ConstMatrixView<float> W, const Matrix& W0,
                                           int rank, double energy) {
  const index_t m = W.rows, n = W.cols;
  if (W0.rows() != m || W0.cols() != n)
    throw LlamaError(cat("truncated_delta (GPU): W is ", shape_str(m, n), " but W_init is ",
                         shape_str(W0.rows(), W0.cols())));
  auto D = b.make_matrix(m, n);  // (out, in) ΔW
  {
    std::vector<double> w0(W0.data(), W0.data() + W0.size());  // exact widening on the host
    auto D0 = b.make_matrix(m, n);
    b.upload(w0.data(), D0.view());
    b.convert(W, D.view());  // fp32 → double, exact
    b.axpy(-1.0, ConstMatrixView<double>(D0.view()), D.view());
  }
  return truncate_delta(b, ConstMatrixView<double>(D.view()), rank, energy);
}

}  // namespace hdpissa::llama
