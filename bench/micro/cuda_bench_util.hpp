#pragma once
// Shared pieces of the CUDA benchmarks: event timer, ceilings (a big device-to-device copy, big
// GEMMs) and a decaying-spectrum test matrix W = U diag(σ) Vᵀ, σ_i = 1/i, built on the GPU.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "hdpissa/adapter/direct_weight_update.hpp"
#include "hdpissa/adapter/distributed_init.hpp"
#include "hdpissa/adapter/muted_linear.hpp"
#include "hdpissa/adapter/orthogonal_adapter_init.hpp"
#include "hdpissa/adapter/svd.hpp"
#include "hdpissa/backend/cuda/cuda_backend.hpp"
#include "hdpissa/backend/cuda/cuda_single_process.hpp"
#include "hdpissa/comm/virtual_ranks.hpp"
#include "hdpissa/optim/adam.hpp"

namespace hdpissa::bench {

using GB = CudaBackend<float>;
using CVf = ConstMatrixView<float>;

/// Times work queued on a stream with CUDA events.
class EventTimer {
 public:
  explicit EventTimer(cudaStream_t s) : s_(s) {
    HDPISSA_CUDA_CHECK(cudaEventCreate(&a_));
    HDPISSA_CUDA_CHECK(cudaEventCreate(&b_));
  }
  ~EventTimer() { cudaEventDestroy(a_); cudaEventDestroy(b_); }
  void start() { HDPISSA_CUDA_CHECK(cudaEventRecord(a_, s_)); }
  /// Milliseconds since start() (waits for the stream).
  double stop_ms() {
    HDPISSA_CUDA_CHECK(cudaEventRecord(b_, s_));
    HDPISSA_CUDA_CHECK(cudaEventSynchronize(b_));
    float ms = 0;
    HDPISSA_CUDA_CHECK(cudaEventElapsedTime(&ms, a_, b_));
    return ms;
  }

 private:
  cudaStream_t s_;
  cudaEvent_t a_, b_;
};

inline bool have_gpu(const char** name = nullptr) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) return false;
  static cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  if (name) *name = prop.name;
  return true;
}

/// Device-to-device copy bandwidth in GB/s, counting bytes read + written (best of `reps`).
inline double measure_copy_gbps(std::size_t bytes = std::size_t(2) << 30, int reps = 10) {
  DeviceBuffer<char> a(bytes), b(bytes);
  CudaStream s;
  HDPISSA_CUDA_CHECK(cudaMemsetAsync(a.get(), 1, bytes, s.get()));
  EventTimer t(s.get());
  double best = 1e30;
  for (int i = 0; i < reps + 2; ++i) {
    t.start();
    HDPISSA_CUDA_CHECK(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, s.get()));
    const double ms = t.stop_ms();
    if (i >= 2) best = std::min(best, ms);
  }
  return 2.0 * double(bytes) / (best * 1e-3) / 1e9;
}

enum class GemmKind { Fp32, Tf32, Bf16 };
inline const char* gemm_kind_name(GemmKind k) { return k == GemmKind::Fp32 ? "fp32" : k == GemmKind::Tf32 ? "tf32" : "bf16"; }

/// Dense GEMM rate in TFLOP/s of an (m, n, k) product on random data (best of `reps`).
inline double measure_gemm_tflops(GemmKind kind, index_t m = 8192, index_t n = 8192, index_t k = 8192, int reps = 5) {
  CudaStream s;
  CublasHandle h(s.get());
  const bool bf = kind == GemmKind::Bf16;
  const std::size_t es = bf ? 2 : 4;
  DeviceBuffer<char> A(std::size_t(m * k) * es), B(std::size_t(k * n) * es), C(std::size_t(m * n) * es);
  if (bf) {
    GB tmp(s.get(), {});
    DeviceBuffer<float> f(std::size_t(std::max(m * k, k * n)));
    MatrixView<float> fa(f.get(), m, k), fb(f.get(), k, n);
    tmp.fill_normal(fa, 1);
    cuda_kernels::launch_convert(s.get(), CVf(fa), MatrixView<__nv_bfloat16>(reinterpret_cast<__nv_bfloat16*>(A.get()), m, k));
    tmp.fill_normal(fb, 2);
    cuda_kernels::launch_convert(s.get(), CVf(fb), MatrixView<__nv_bfloat16>(reinterpret_cast<__nv_bfloat16*>(B.get()), k, n));
    tmp.synchronize();
  } else {
    GB tmp(s.get(), {});
    tmp.fill_normal(MatrixView<float>(reinterpret_cast<float*>(A.get()), m, k), 1);
    tmp.fill_normal(MatrixView<float>(reinterpret_cast<float*>(B.get()), k, n), 2);
    tmp.synchronize();
  }
  const float one = 1, zero = 0;
  const auto dt = bf ? CUDA_R_16BF : CUDA_R_32F;
  const auto ct = kind == GemmKind::Tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  EventTimer t(s.get());
  double best = 1e30;
  for (int i = 0; i < reps + 2; ++i) {
    t.start();
    HDPISSA_CUBLAS_CHECK(cublasGemmEx(h.get(), CUBLAS_OP_N, CUBLAS_OP_N, int(n), int(m), int(k), &one, B.get(), dt,
                                      int(n), A.get(), dt, int(k), &zero, C.get(), dt, int(n), ct, CUBLAS_GEMM_DEFAULT));
    const double ms = t.stop_ms();
    if (i >= 2) best = std::min(best, ms);
  }
  return 2.0 * double(m) * double(n) * double(k) / (best * 1e-3) / 1e12;
}

/// W (m, n) = U diag(σ) Vᵀ with σ_i = 1/i (i = 1..min(m, n)) and Haar-like orthonormal U, V
/// (Householder QR of counter-Gaussian matrices). Returns σ on the host.
inline std::vector<double> make_decaying(GB& b, MatrixView<float> W, std::uint64_t seed) {
  const index_t m = W.rows, n = W.cols, k = std::min(m, n);
  auto U = b.make_matrix(m, k), V = b.make_matrix(n, k), S = b.make_matrix(1, k);
  b.fill_normal(U.view(), seed);
  b.fill_normal(V.view(), seed + 1);
  b.orthonormalize(U.view());
  b.orthonormalize(V.view());
  std::vector<double> s(static_cast<std::size_t>(k));
  std::vector<float> sf(s.size());
  for (index_t i = 0; i < k; ++i) sf[std::size_t(i)] = float(s[std::size_t(i)] = 1.0 / double(i + 1));
  b.upload(sf.data(), S.view());
  b.scale_cols(U.view(), CVf(S.view()));
  b.gemm(Op::N, Op::T, 1.f, CVf(U.view()), CVf(V.view()), 0.f, W);
  b.synchronize();
  return s;
}

/// The seven LLaMA target shapes (out, in) of the micro-benchmarks.
inline const std::vector<std::pair<index_t, index_t>>& llama_shapes() {
  static const std::vector<std::pair<index_t, index_t>> s{{4096, 4096}, {11008, 4096}, {4096, 11008}, {1024, 4096},
                                                          {2048, 2048}, {5632, 2048},  {256, 2048}};
  return s;
}

}  // namespace hdpissa::bench
