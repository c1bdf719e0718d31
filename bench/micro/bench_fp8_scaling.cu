// bench_fp8_scaling — which FP8 scaling modes cuBLASLt offers on this GPU, and what each costs, at
// the GEMMs of a LLaMA layer (issue 20's --compute fp8: today one fp32 scale per tensor, so every
// FP8 input needs its own amax pass and cast pass after the kernel that produced it).
//
// Why: with one scale per token row (CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F) the kernels that
// own whole rows — the RMSNorm forward (the q|k|v and gate|up inputs) and backward (o's and down's
// dY) — could quantise their own output, and the separate cast passes (≈ 5 % of the 7B 8 × 512
// fp8 step by their bytes) would go for those inputs; with DeepSeek-style blocks (1 × 128
// activations, 128 × 128 weights: VEC128_32F / BLK128x128_32F) the same, per block. Whether
// cuBLASLt has algorithms for these modes on sm_90, and how fast they run next to per-tensor
// scaling and to bf16, decides whether that design is worth building. Timing only: every scale is
// 1 and the inputs are small integers (exact in E4M3), so every mode must give the bf16 product bit
// for bit up to the fp32 accumulation order (the max relative difference from bf16 is printed).
//
// Row-major D (M, N) = A (M, K) · B (N, K)ᵀ as in hdpissa::CudaFp8Gemm (A the activations, M tokens;
// B the weight), cuBLASLt's column-major "TN" form: its A = our B (op T), its B = our A.
// Usage: bench_fp8_scaling [--tokens M] [--reps N]   (default M 4096: the 7B 8 × 512 micro-batch)
// Every "JSON " line is one machine-readable record.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_bench_util.hpp"
#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/backend/cuda/cuda_handles.hpp"

using namespace hdpissa;

namespace {

struct Mode {
  const char* name;
  bool fp8;
  int a_mode, b_mode;  // OUR A (activations) and B (weight) scale modes
};

// small integers in [-3, 3]: exact in bf16 and E4M3, so every product below is exact
__global__ void fill_ints(__nv_bfloat16* b, __nv_fp8_e4m3* f, std::size_t n, unsigned seed) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x) {
    unsigned h = unsigned(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    const float v = float(int(h % 7u) - 3);
    b[i] = __float2bfloat16(v);
    f[i] = __nv_fp8_e4m3(v);
  }
}
__global__ void fill_one(float* p, std::size_t n) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x)
    p[i] = 1.0f;
}

// one GEMM in one mode: the heuristic's first algorithm, timed (best of reps), its D copied to host
struct Result {
  cublasStatus_t status = CUBLAS_STATUS_SUCCESS;
  std::string where;  // which call failed
  double ms = 0;
  std::vector<__nv_bfloat16> d;
};

Result run(cublasLtHandle_t lt, cudaStream_t s, const Mode& m, int M, int N, int K, const void* A, const void* B,
           const float* scales, __nv_bfloat16* D, void* ws, std::size_t ws_bytes, int reps) {
  Result r;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  auto fail = [&](cublasStatus_t st, const char* where) {
    r.status = st;
    r.where = where;
  };
  auto ok = [&](cublasStatus_t st, const char* where) {
    if (st != CUBLAS_STATUS_SUCCESS && r.status == CUBLAS_STATUS_SUCCESS) fail(st, where);
    return r.status == CUBLAS_STATUS_SUCCESS;
  };
  const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
  const cudaDataType_t in = m.fp8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
  ok(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), "desc");
  ok(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof(opT)), "transa");
  ok(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof(opN)), "transb");
  if (m.fp8) {
    // cuBLASLt's A is our B (the weight), its B our A (the activations)
    const std::int32_t amode = m.b_mode, bmode = m.a_mode;
    ok(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &amode, sizeof(amode)), "A scale mode");
    ok(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &bmode, sizeof(bmode)), "B scale mode");
    ok(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &scales, sizeof(scales)), "A scale");
    ok(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &scales, sizeof(scales)), "B scale");
  }
  ok(cublasLtMatrixLayoutCreate(&la, in, std::uint64_t(K), std::uint64_t(N), std::int64_t(K)), "layout A");
  ok(cublasLtMatrixLayoutCreate(&lb, in, std::uint64_t(K), std::uint64_t(M), std::int64_t(K)), "layout B");
  ok(cublasLtMatrixLayoutCreate(&ld, CUDA_R_16BF, std::uint64_t(N), std::uint64_t(M), std::int64_t(N)), "layout D");
  ok(cublasLtMatmulPreferenceCreate(&pref), "preference");
  ok(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes)),
     "workspace");
  cublasLtMatmulHeuristicResult_t h{};
  int found = 0;
  if (ok(cublasLtMatmulAlgoGetHeuristic(lt, desc, la, lb, ld, ld, pref, 1, &h, &found), "heuristic") && found == 0)
    fail(CUBLAS_STATUS_NOT_SUPPORTED, "heuristic (no algorithm)");
  if (r.status == CUBLAS_STATUS_SUCCESS) {
    const float alpha = 1.0f, beta = 0.0f;
    bench::EventTimer t(s);
    double best = 1e30;
    for (int i = 0; i < reps + 2 && r.status == CUBLAS_STATUS_SUCCESS; ++i) {
      t.start();
      if (!ok(cublasLtMatmul(lt, desc, &alpha, B, la, A, lb, &beta, D, ld, D, ld, &h.algo, ws, ws_bytes, s), "matmul"))
        break;
      const double ms = t.stop_ms();
      if (i >= 2) best = std::min(best, ms);
    }
    r.ms = best;
    if (r.status == CUBLAS_STATUS_SUCCESS) {
      r.d.resize(std::size_t(M) * N);
      HDPISSA_CUDA_CHECK(cudaMemcpy(r.d.data(), D, r.d.size() * sizeof(__nv_bfloat16), cudaMemcpyDeviceToHost));
    }
  }
  if (pref) cublasLtMatmulPreferenceDestroy(pref);
  if (ld) cublasLtMatrixLayoutDestroy(ld);
  if (lb) cublasLtMatrixLayoutDestroy(lb);
  if (la) cublasLtMatrixLayoutDestroy(la);
  if (desc) cublasLtMatmulDescDestroy(desc);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int M = 4096, reps = 10;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--tokens" && i + 1 < argc) M = std::atoi(argv[++i]);
    else if (a == "--reps" && i + 1 < argc) reps = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "bench_fp8_scaling: unknown argument '%s' (expected --tokens M, --reps N)\n", a.c_str());
      return 2;
    }
  }
  if (M < 128 || M % 128 != 0 || reps < 1) {
    std::fprintf(stderr, "bench_fp8_scaling: expected --tokens a multiple of 128 and --reps >= 1, found %d, %d\n", M, reps);
    return 2;
  }
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    std::printf("bench_fp8_scaling: no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop{};
  HDPISSA_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  int ver = 0;
  cublasLtHandle_t lt = nullptr;
  HDPISSA_CUBLAS_CHECK(cublasLtCreate(&lt));
  ver = int(cublasLtGetVersion());
  std::printf("device %s (sm_%d%d), cuBLASLt %d, tokens M = %d\n", prop.name, prop.major, prop.minor, ver, M);
  // (N, K) of LLaMA-2-7B's layer GEMMs: forward q|k|v, o, gate|up, down; backward dX of the same
  const int shapes[][2] = {{12288, 4096}, {4096, 4096}, {22016, 4096}, {4096, 11008},
                           {4096, 12288}, {4096, 22016}, {11008, 4096}};
  const Mode modes[] = {
      {"bf16", false, 0, 0},
      {"fp8 per-tensor", true, CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F, CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F},
      {"fp8 per-row (outer vectors)", true, CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F, CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F},
      {"fp8 per-row X, per-tensor W", true, CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F, CUBLASLT_MATMUL_MATRIX_SCALE_SCALAR_32F},
      {"fp8 1x128 X, 128x128 W", true, CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F, CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F},
  };
  std::size_t maxmn = 0, maxk = 0;
  for (const auto& s : shapes) maxmn = std::max(maxmn, std::size_t(s[0])), maxk = std::max(maxk, std::size_t(s[1]));
  const std::size_t na = std::size_t(M) * maxk, nb = maxmn * maxk;
  DeviceBuffer<__nv_bfloat16> Ab(na), Bb(nb), D(std::size_t(M) * maxmn);
  DeviceBuffer<__nv_fp8_e4m3> Af(na), Bf(nb);
  const std::size_t nscale = std::max({std::size_t(M) * (maxk / 128 + 1), maxmn * (maxk / 128 + 1), maxmn, std::size_t(M)});
  DeviceBuffer<float> scales(nscale);
  const std::size_t ws_bytes = std::size_t(32) << 20;
  DeviceBuffer<unsigned char> ws(ws_bytes);
  CudaStream stream;
  cudaStream_t s = stream.get();
  fill_ints<<<1024, 256, 0, s>>>(Ab.get(), Af.get(), na, 1u);
  fill_ints<<<1024, 256, 0, s>>>(Bb.get(), Bf.get(), nb, 2u);
  fill_one<<<256, 256, 0, s>>>(scales.get(), nscale);
  HDPISSA_CUDA_CHECK(cudaStreamSynchronize(s));
  for (const auto& sh : shapes) {
    const int N = sh[0], K = sh[1];
    const double tflop = 2.0 * M * double(N) * K * 1e-12;
    std::vector<__nv_bfloat16> ref;
    double ref_ms = 0;
    for (const Mode& m : modes) {
      const Result r = run(lt, s, m, M, N, K, m.fp8 ? static_cast<const void*>(Af.get()) : Ab.get(),
                           m.fp8 ? static_cast<const void*>(Bf.get()) : Bb.get(), scales.get(), D.get(), ws.get(), ws_bytes, reps);
      if (r.status != CUBLAS_STATUS_SUCCESS) {
        std::printf("M %5d N %5d K %5d  %-28s  %s at %s\n", M, N, K, m.name, cublasGetStatusString(r.status), r.where.c_str());
        std::printf("JSON {\"bench\":\"fp8_scaling\",\"M\":%d,\"N\":%d,\"K\":%d,\"mode\":\"%s\",\"status\":\"%s\"}\n", M, N, K,
                    m.name, cublasGetStatusString(r.status));
        continue;
      }
      double maxrel = 0;
      if (ref.empty()) ref = r.d, ref_ms = r.ms;
      else
        for (std::size_t i = 0; i < r.d.size(); ++i) {
          const double a = __bfloat162float(r.d[i]), b = __bfloat162float(ref[i]);
          maxrel = std::max(maxrel, std::fabs(a - b) / std::max(1.0, std::fabs(b)));
        }
      std::printf("M %5d N %5d K %5d  %-28s  %8.3f ms  %7.1f TFLOP/s  %5.2fx bf16  max rel diff from bf16 %.2e\n", M, N,
                  K, m.name, r.ms, tflop / (r.ms * 1e-3), ref_ms / r.ms, maxrel);
      std::printf("JSON {\"bench\":\"fp8_scaling\",\"M\":%d,\"N\":%d,\"K\":%d,\"mode\":\"%s\",\"status\":\"success\","
                  "\"ms\":%.4f,\"tflops\":%.1f,\"max_rel_diff\":%.3e}\n",
                  M, N, K, m.name, r.ms, tflop / (r.ms * 1e-3), maxrel);
    }
  }
  cublasLtDestroy(lt);
  return 0;
}
