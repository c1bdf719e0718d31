// bench_dwu_gemm — the Direct Weight Update's GEMM, C (M×N) += alpha · P (M×Kd) · Qᵀ (Q: N×Kd), on
// the sm_90a TF32 tensor-core kernel (dwu_gemm_sm90.cuh) against cuBLAS, in one process:
//
//   1. accuracy: every kernel configuration on odd shapes (edge tiles, a K tail) against an fp64
//      host reference, next to cuBLAS SGEMM (exact fp32) and cuBLAS TF32 on the same data;
//   2. speed: LLaMA-2-7B's three DWU shapes at Kd = 2Kr = 256 (K = 8, r = 16), every configuration,
//      with and without the L2 prefetch of C, against cublasGemmEx fp32 / TF32 in the layout the
//      generic update uses (R = 2Kr × in, row-major); plus the 224-GEMM total of a 7B-shaped model
//      and the ceilings (D2D copy, 8192³ GEMMs) measured in the same run.
//
// Usage: bench_dwu_gemm [--reps N]. Every "JSON " line is one machine-readable record.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda_bench_util.hpp"
#include "hdpissa/backend/cuda/dwu_gemm_sm90.cuh"

using namespace hdpissa;
using namespace hdpissa::bench;
namespace k90 = hdpissa::cuda_kernels::sm90;

namespace {

struct Problem {
  int M, N, Kd;
};

using LaunchFn = void (*)(cudaStream_t, float*, int, const float*, int, const float*, int, int, int, int, float, bool);
struct Variant {
  const char* name;
  int passes;
  LaunchFn fn;
  int smem;
  int threads;
};
template <class Cfg>
Variant variant(const char* name) {
  return {name, Cfg::kPasses, &k90::launch_dwu_gemm_tf32<Cfg>, Cfg::kSmemBytes, Cfg::kThreads};
}

std::vector<Variant> variants() {
  using namespace k90;
  return {
      variant<DwuGemmConfig<2, 128, 3, 1>>("tf32 wg2 n128 s3"),
      variant<DwuGemmConfig<2, 128, 2, 1>>("tf32 wg2 n128 s2"),
      variant<DwuGemmConfig<2, 128, 4, 1>>("tf32 wg2 n128 s4"),
      variant<DwuGemmConfig<1, 256, 3, 1>>("tf32 wg1 n256 s3"),
      variant<DwuGemmConfig<2, 256, 2, 1>>("tf32 wg2 n256 s2"),
      variant<DwuGemmConfig<4, 128, 2, 1>>("tf32 wg4 n128 s2"),
      variant<DwuGemmConfig<1, 128, 4, 1>>("tf32 wg1 n128 s4"),
      variant<DwuGemmConfig<2, 128, 2, 3>>("3xtf32 wg2 n128 s2"),
      variant<DwuGemmConfig<2, 128, 3, 3>>("3xtf32 wg2 n128 s3"),
      variant<DwuGemmConfig<1, 128, 3, 3>>("3xtf32 wg1 n128 s3"),
      variant<DwuGemmConfig<4, 128, 2, 3>>("3xtf32 wg4 n128 s2"),
      variant<DwuGemmConfig<2, 256, 2, 3>>("3xtf32 wg2 n256 s2"),
  };
}

std::vector<float> rnd(std::size_t n, unsigned seed, float scale = 1.f) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::vector<float> v(n);
  for (auto& x : v) x = scale * u(g);
  return v;
}

/// cuBLAS in the kernel's layout: row-major C (M×N) += alpha · P (M×Kd) · Q (N×Kd)ᵀ.
void cublas_pqt(cublasHandle_t h, bool tf32, float* C, int ldc, const float* P, const float* Q, const Problem& p, float alpha) {
  const float one = 1.f;
  HDPISSA_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, p.N, p.M, p.Kd, &alpha, Q, CUDA_R_32F, p.Kd, P,
                                    CUDA_R_32F, p.Kd, &one, C, CUDA_R_32F, ldc,
                                    tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}
/// cuBLAS in the generic update's layout: C (M×N) += alpha · P (M×Kd) · R (Kd×N), all row-major.
void cublas_pr(cublasHandle_t h, bool tf32, float* C, const float* P, const float* R, const Problem& p, float alpha) {
  const float one = 1.f;
  HDPISSA_CUBLAS_CHECK(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, p.N, p.M, p.Kd, &alpha, R, CUDA_R_32F, p.N, P,
                                    CUDA_R_32F, p.Kd, &one, C, CUDA_R_32F, p.N,
                                    tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

bool g_prefetch_acc = true;
int g_only_variant = -1;

int accuracy(cudaStream_t s, cublasHandle_t h) {
  int failures = 0;
  for (const Problem p : {Problem{300, 264, 256}, Problem{130, 70, 100}, Problem{64, 128, 32}, Problem{517, 389, 96},
                          Problem{512, 384, 96}, Problem{517, 384, 256}, Problem{512, 389, 256}, Problem{256, 256, 64}}) {
    const int ldc = (p.N + 3) / 4 * 4;  // the kernel needs ld % 4 == 0 (odd N: padded rows, untouched pad)
    const auto hC = rnd(std::size_t(p.M) * ldc, 1), hP = rnd(std::size_t(p.M) * p.Kd, 2), hQ = rnd(std::size_t(p.N) * p.Kd, 3);
    const float alpha = -0.375f;
    std::vector<double> ref(hC.begin(), hC.end()), mag(hC.size(), 1.0);  // the pad must stay as it was
    for (int i = 0; i < p.M; ++i)
      for (int j = 0; j < p.N; ++j) {
        double acc = 0, m = 0;
        for (int k = 0; k < p.Kd; ++k) {
          const double t = double(hP[std::size_t(i) * p.Kd + k]) * double(hQ[std::size_t(j) * p.Kd + k]);
          acc += t;
          m += std::fabs(t);
        }
        ref[std::size_t(i) * ldc + j] = double(hC[std::size_t(i) * ldc + j]) + double(alpha) * acc;
        mag[std::size_t(i) * ldc + j] = std::fabs(double(hC[std::size_t(i) * ldc + j])) + std::fabs(double(alpha)) * m;
      }
    DeviceBuffer<float> C(hC.size()), P(hP.size()), Q(hQ.size());
    HDPISSA_CUDA_CHECK(cudaMemcpy(P.get(), hP.data(), hP.size() * 4, cudaMemcpyHostToDevice));
    HDPISSA_CUDA_CHECK(cudaMemcpy(Q.get(), hQ.data(), hQ.size() * 4, cudaMemcpyHostToDevice));
    auto err = [&](const char* what, auto&& run) {
      HDPISSA_CUDA_CHECK(cudaMemcpy(C.get(), hC.data(), hC.size() * 4, cudaMemcpyHostToDevice));
      // A pageable cudaMemcpy may return before its DMA lands, and `s` does not wait for the legacy
      // stream (non-blocking): wait for the device before the kernel reads C.
      HDPISSA_CUDA_CHECK(cudaDeviceSynchronize());
      run();
      HDPISSA_CUDA_CHECK(cudaStreamSynchronize(s));
      std::vector<float> out(hC.size());
      HDPISSA_CUDA_CHECK(cudaMemcpy(out.data(), C.get(), out.size() * 4, cudaMemcpyDeviceToHost));
      double worst = 0;  // max |err| / (|c| + |alpha| Σ|p q|): ~2⁻²⁴·√Kd for fp32, ~2⁻¹¹ for TF32
      std::size_t at = 0, bad = 0;
      for (std::size_t i = 0; i < out.size(); ++i) {
        const double e = std::fabs(double(out[i]) - ref[i]) / mag[i];
        if (e > 1e-2) ++bad;
        if (e > worst) worst = e, at = i;
      }
      std::printf("accuracy M=%d N=%d Kd=%d %-22s: max rel err %.3e at (%zu, %zu); %zu entries > 1e-2\n", p.M, p.N, p.Kd, what,
                  worst, at / std::size_t(ldc), at % std::size_t(ldc), bad);
      std::printf("JSON {\"bench\":\"dwu_gemm_accuracy\",\"M\":%d,\"N\":%d,\"Kd\":%d,\"variant\":\"%s\",\"max_rel_err\":%.4e}\n",
                  p.M, p.N, p.Kd, what, worst);
      return worst;
    };
    const double e32 = err("cublas fp32", [&] { cublas_pqt(h, false, C.get(), ldc, P.get(), Q.get(), p, alpha); });
    const double etf = err("cublas tf32", [&] { cublas_pqt(h, true, C.get(), ldc, P.get(), Q.get(), p, alpha); });
    const auto vs = variants();
    for (int vi = 0; vi < int(vs.size()); ++vi) {
      if (g_only_variant >= 0 && vi != g_only_variant) continue;
      const auto& v = vs[std::size_t(vi)];
      const double e = err(v.name, [&] { v.fn(s, C.get(), ldc, P.get(), p.Kd, Q.get(), p.Kd, p.M, p.N, p.Kd, alpha, g_prefetch_acc); });
      const double bound = v.passes == 3 ? std::max(8 * e32, 1e-6) : std::max(4 * etf, 2e-3);
      if (!(e <= bound)) {
        std::printf("FAIL %s: %.3e > bound %.3e\n", v.name, e, bound);
        ++failures;
      }
    }
  }
  return failures;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void speed(cudaStream_t s, cublasHandle_t h, int reps) {
  const double copy = measure_copy_gbps();
  const double f32 = measure_gemm_tflops(GemmKind::Fp32), t32 = measure_gemm_tflops(GemmKind::Tf32);
  std::printf("ceilings (same run): D2D copy %.0f GB/s, GEMM 8192^3 fp32 %.1f / tf32 %.1f TFLOP/s\n", copy, f32, t32);
  std::printf("JSON {\"bench\":\"dwu_gemm_ceilings\",\"copy_gbps\":%.1f,\"fp32_tflops\":%.2f,\"tf32_tflops\":%.2f}\n", copy, f32, t32);
  // LLaMA-2-7B: per layer q, k, v, o (4096×4096), gate, up (11008×4096), down (4096×11008); 32 layers.
  struct Shape {
    Problem p;
    int count;
  };
  const std::vector<Shape> shapes{{{4096, 4096, 256}, 4 * 32}, {{11008, 4096, 256}, 2 * 32}, {{4096, 11008, 256}, 32}};
  const auto vs = variants();
  std::vector<double> total(vs.size() * 2, 0.0);
  double total32 = 0, totaltf = 0, bytes = 0, flops = 0;
  EventTimer t(s);
  for (const auto& sh : shapes) {
    const Problem& p = sh.p;
    const std::size_t nc = std::size_t(p.M) * p.N;
    DeviceBuffer<float> C(nc), P(std::size_t(p.M) * p.Kd), Q(std::size_t(p.N) * p.Kd);
    {
      const auto hp = rnd(std::size_t(p.M) * p.Kd, 5, 1e-2f), hq = rnd(std::size_t(p.N) * p.Kd, 6, 1e-2f);
      HDPISSA_CUDA_CHECK(cudaMemcpy(P.get(), hp.data(), hp.size() * 4, cudaMemcpyHostToDevice));
      HDPISSA_CUDA_CHECK(cudaMemcpy(Q.get(), hq.data(), hq.size() * 4, cudaMemcpyHostToDevice));
      HDPISSA_CUDA_CHECK(cudaMemset(C.get(), 0, nc * 4));
      HDPISSA_CUDA_CHECK(cudaDeviceSynchronize());
    }
    auto timeit = [&](auto&& run) {
      std::vector<double> ms;
      for (int i = 0; i < reps + 2; ++i) {
        t.start();
        run();
        const double x = t.stop_ms();
        if (i >= 2) ms.push_back(x);
      }
      return median(ms);
    };
    const double flop = 2.0 * double(p.M) * p.N * p.Kd, byt = 8.0 * double(nc);
    const double c32 = timeit([&] { cublas_pr(h, false, C.get(), P.get(), Q.get(), p, -1.f); });
    const double ctf = timeit([&] { cublas_pr(h, true, C.get(), P.get(), Q.get(), p, -1.f); });
    std::printf("shape %5dx%-5d Kd=%d x%-3d | cublas fp32 %.4f ms (%.1f TFLOP/s) | cublas tf32 %.4f ms (%.0f GB/s of C)\n", p.M,
                p.N, p.Kd, sh.count, c32, flop / c32 * 1e-9, ctf, byt / ctf * 1e-6);
    std::printf("JSON {\"bench\":\"dwu_gemm\",\"M\":%d,\"N\":%d,\"Kd\":%d,\"variant\":\"cublas fp32\",\"ms\":%.5f}\n", p.M, p.N, p.Kd, c32);
    std::printf("JSON {\"bench\":\"dwu_gemm\",\"M\":%d,\"N\":%d,\"Kd\":%d,\"variant\":\"cublas tf32\",\"ms\":%.5f}\n", p.M, p.N, p.Kd, ctf);
    total32 += sh.count * c32;
    totaltf += sh.count * ctf;
    bytes += sh.count * byt;
    flops += sh.count * flop;
    for (std::size_t i = 0; i < vs.size(); ++i)
      for (int pf = 0; pf < 2; ++pf) {
        const double ms = timeit([&] {
          vs[i].fn(s, C.get(), p.N, P.get(), p.Kd, Q.get(), p.Kd, p.M, p.N, p.Kd, -1.f, pf == 1);
        });
        total[2 * i + pf] += sh.count * ms;
        std::printf("  %-22s prefetch %d: %.4f ms  %6.1f TFLOP/s (x%d)  %5.0f GB/s of C  (%.2fx cublas fp32, %.2fx cublas tf32)\n",
                    vs[i].name, pf, ms, flop * vs[i].passes / ms * 1e-9, vs[i].passes, byt / ms * 1e-6, c32 / ms, ctf / ms);
        std::printf("JSON {\"bench\":\"dwu_gemm\",\"M\":%d,\"N\":%d,\"Kd\":%d,\"variant\":\"%s\",\"prefetch\":%d,\"ms\":%.5f}\n", p.M,
                    p.N, p.Kd, vs[i].name, pf, ms);
      }
  }
  const double mem_ms = bytes / (copy * 1e9) * 1e3, f32_ms = flops / (f32 * 1e12) * 1e3, tf_ms = flops / (t32 * 1e12) * 1e3;
  std::printf("7B total (224 GEMMs): C traffic %.1f GB -> memory floor %.2f ms; compute floor fp32 %.2f / tf32 %.2f ms\n",
              bytes * 1e-9, mem_ms, f32_ms, tf_ms);
  std::printf("  cublas fp32 %.2f ms, cublas tf32 %.2f ms\n", total32, totaltf);
  for (std::size_t i = 0; i < vs.size(); ++i)
    for (int pf = 0; pf < 2; ++pf)
      std::printf("  %-22s prefetch %d: %.2f ms (%.2fx cublas fp32, %.2fx cublas tf32; %.2fx memory floor)\n", vs[i].name, pf,
                  total[2 * i + pf], total32 / total[2 * i + pf], totaltf / total[2 * i + pf], total[2 * i + pf] / mem_ms);
  std::printf("JSON {\"bench\":\"dwu_gemm_7b\",\"cublas_fp32_ms\":%.3f,\"cublas_tf32_ms\":%.3f,\"mem_floor_ms\":%.3f,\"fp32_floor_ms\":%.3f,\"tf32_floor_ms\":%.3f}\n",
              total32, totaltf, mem_ms, f32_ms, tf_ms);
  for (std::size_t i = 0; i < vs.size(); ++i)
    for (int pf = 0; pf < 2; ++pf)
      std::printf("JSON {\"bench\":\"dwu_gemm_7b\",\"variant\":\"%s\",\"prefetch\":%d,\"ms\":%.3f}\n", vs[i].name, pf, total[2 * i + pf]);
}

}  // namespace

int main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  int reps = 10;
  bool acc_only = false;
  for (int i = 1; i < argc; ++i)
    if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else if (std::strcmp(argv[i], "--accuracy-only") == 0) acc_only = true;
    else if (std::strcmp(argv[i], "--no-prefetch") == 0) g_prefetch_acc = false;
    else if (std::strcmp(argv[i], "--variant") == 0 && i + 1 < argc) g_only_variant = std::atoi(argv[++i]);
  const char* name = nullptr;
  if (!have_gpu(&name)) {
    std::printf("bench_dwu_gemm: no CUDA device\n");
    return 77;
  }
  int dev = 0;
  cudaGetDevice(&dev);
  std::printf("device: %s; sm_90a DWU kernel supported: %s\n", name, k90::dwu_gemm_sm90_supported(dev) ? "yes" : "no");
  if (!k90::dwu_gemm_sm90_supported(dev)) return 1;
  CudaStream s;
  CublasHandle h(s.get());
  const int fails = accuracy(s.get(), h.get());
  std::printf("accuracy: %d failure(s)\n", fails);
  if (acc_only) return fails == 0 ? 0 : 1;
  speed(s.get(), h.get(), reps);
  return fails == 0 ? 0 : 1;
}
