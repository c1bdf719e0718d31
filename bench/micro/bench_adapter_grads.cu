// bench_adapter_grads — the DWU methods' adapter gradients of one muted linear, per linear shape of
// TinyLlama and LLaMA-2-7B at N tokens (a micro-batch of 8 × 512 by default):
//   gA (r, in) += α (dY B)ᵀ X,  gB (out, r) += α dYᵀ (X Aᵀ),  r = 16,
// on the paths the trainer has had: MutedLinear's four cuBLAS GEMMs into bf16 scratch plus the two
// bf16 → fp32 accumulation passes (the default until session 18), MutedLinear's fp32-gradient
// backward (the two gradient GEMMs write the fp32 sums, CudaBackend::gemm_f32: the default since
// session 19), and the fused kernels of adapter_grads.cuh (HDPISSA_FUSED_ADAPTER_GRADS=1). Both in one process, best of --reps, with the bytes each must
// read at least (X and dY twice: once for t / u, once for the weight gradients) over the copy rate.
//
// Why: session 18 measured the fused kernels at parity with the cuBLAS path at one shape (N 4096,
// in 2048, out 256) but the trainer 3–5 % slower with them on (docs/trainer.md): this times them at
// every shape the trainer runs. The largest relative difference of the two paths' gradients is
// printed as a sanity check (they round differently: the GPU test bounds both against float64).
//
// Usage: bench_adapter_grads [--reps N] [--tokens N]. Every "JSON " line is one record.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "cuda_bench_util.hpp"
#include "llama/cuda/adapter_grads.cuh"
#include "llama/cuda/cuda_device.cuh"

using namespace hdpissa;
using namespace hdpissa::bench;
using bf16 = __nv_bfloat16;
using CVb = ConstMatrixView<bf16>;
using MVb = MatrixView<bf16>;
using MVf = MatrixView<float>;
using hdpissa::llama::gpu::FusedAdapterGrads;

namespace {

struct Linear {
  const char* model;
  const char* name;
  int in, out;
};

DeviceBuffer<bf16> random_bf16(std::size_t n, float sd, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, sd);
  std::vector<bf16> h(n);
  for (auto& x : h) x = bf16(nd(rng));
  DeviceBuffer<bf16> d(n);
  HDPISSA_CUDA_CHECK(cudaMemcpy(d.get(), h.data(), n * sizeof(bf16), cudaMemcpyHostToDevice));
  return d;
}

std::vector<float> download(const DeviceBuffer<float>& d, std::size_t n) {
  std::vector<float> h(n);
  HDPISSA_CUDA_CHECK(cudaDeviceSynchronize());
  HDPISSA_CUDA_CHECK(cudaMemcpy(h.data(), d.get(), n * sizeof(float), cudaMemcpyDeviceToHost));
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 20, N = 4096;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "--reps" || a == "--tokens") && i + 1 < argc) {
      const int v = std::atoi(argv[++i]);
      if (v < 1) {
        std::fprintf(stderr, "bench_adapter_grads: %s expects a positive integer, found '%s'\n", a.c_str(), argv[i]);
        return 2;
      }
      (a == "--reps" ? reps : N) = v;
    } else {
      std::fprintf(stderr, "bench_adapter_grads: unknown or incomplete argument '%s' (expected --reps N, --tokens N)\n",
                   a.c_str());
      return 2;
    }
  }
  const char* dev = nullptr;
  if (!have_gpu(&dev)) {
    std::printf("bench_adapter_grads: no CUDA device\n");
    return 0;
  }
  const double copy = measure_copy_gbps();
  std::printf("device %s; D2D copy %.0f GB/s; N = %d tokens, r = 16\n", dev, copy, N);
  std::printf("JSON {\"bench\":\"copy\",\"gbps\":%.1f}\n", copy);
  const std::vector<Linear> linears{
      {"tinyllama", "q/o", 2048, 2048},   {"tinyllama", "k/v", 2048, 256},   {"tinyllama", "gate/up", 2048, 5632},
      {"tinyllama", "down", 5632, 2048},  {"llama2-7b", "q/k/v/o", 4096, 4096}, {"llama2-7b", "gate/up", 4096, 11008},
      {"llama2-7b", "down", 11008, 4096}};
  const int r = 16;
  const float alpha = 1.0f;
  CudaStream stream;
  const cudaStream_t s = stream.get();
  CudaBackend<bf16> be(s, {});
  MutedLinear<CudaBackend<bf16>> ml(be, alpha);
  FusedAdapterGrads ag;
  EventTimer timer(s);
  constexpr int kPaths = 3;  // cuBLAS into bf16 + accumulation (before session 19), cuBLAS fp32 sums, fused
  double total[2][kPaths] = {};  // [model][path]: per micro-batch, all layers
  for (const Linear& L : linears) {
    const int in = L.in, out = L.out;
    auto X = random_bf16(std::size_t(N) * in, 1.0f, 1u), dY = random_bf16(std::size_t(N) * out, 1.0f, 2u);
    auto A = random_bf16(std::size_t(r) * in, 0.1f, 3u), B = random_bf16(std::size_t(out) * r, 0.1f, 4u);
    DeviceBuffer<bf16> Bt(std::size_t(r) * out), ga16(std::size_t(r) * in), gb16(std::size_t(out) * r);
    DeviceBuffer<float> gA[kPaths], gB[kPaths];
    for (int p = 0; p < kPaths; ++p) {
      gA[p].reserve(std::size_t(r) * in);
      gB[p].reserve(std::size_t(out) * r);
      HDPISSA_CUDA_CHECK(cudaMemsetAsync(gA[p].get(), 0, sizeof(float) * r * in, s));
      HDPISSA_CUDA_CHECK(cudaMemsetAsync(gB[p].get(), 0, sizeof(float) * out * r, s));
    }
    FusedAdapterGrads::transpose_into(s, CVb(B.get(), out, r, r), MVb(Bt.get(), r, out, out));
    const CVb Xv(X.get(), N, in, in), dYv(dY.get(), N, out, out), Av(A.get(), r, in, in), Bv(B.get(), out, r, r),
        Btv(Bt.get(), r, out, out);
    ag.reserve(N, in + out, s);
    auto cublas_path = [&] {
      ml.backward(CVb(nullptr, out, in, in), Av, Bv, Xv, dYv, MVb{}, MVb(ga16.get(), r, in, in), MVb(gb16.get(), out, r, r),
                  false);
      llama::gpu::launch_add_bf16_into_f32(s, CVb(ga16.get(), r, in, in), MVf(gA[0].get(), r, in, in));
      llama::gpu::launch_add_bf16_into_f32(s, CVb(gb16.get(), out, r, r), MVf(gB[0].get(), out, r, r));
    };
    auto f32_path = [&] {  // the trainer's default since session 19: the gradient GEMMs write fp32 sums
      ml.backward(CVb(nullptr, out, in, in), Av, Bv, Xv, dYv, MVb{}, MVf(gA[1].get(), r, in, in),
                  MVf(gB[1].get(), out, r, r), true);
    };
    auto fused_path = [&] {
      ag.run(s, Xv, dYv, Av, Btv, alpha, MVf(gA[2].get(), r, in, in), MVf(gB[2].get(), out, r, r));
    };
    auto run_path = [&](int p) { p == 0 ? cublas_path() : p == 1 ? f32_path() : fused_path(); };
    // one call of each from zero: the sanity comparison (fp32 sums and fused against the bf16 path)
    for (int p = 0; p < kPaths; ++p) run_path(p);
    const auto a0 = download(gA[0], std::size_t(r) * in), a1 = download(gA[2], std::size_t(r) * in);
    const auto b0 = download(gB[0], std::size_t(out) * r), b1 = download(gB[2], std::size_t(out) * r);
    const auto a2 = download(gA[1], std::size_t(r) * in), b2 = download(gB[1], std::size_t(out) * r);
    auto rel = [](const std::vector<float>& x, const std::vector<float>& y) {
      double d = 0, m = 0;
      for (std::size_t k = 0; k < x.size(); ++k) d = std::max(d, double(std::abs(x[k] - y[k]))), m = std::max(m, double(std::abs(y[k])));
      return d / (m + 1e-30);
    };
    const double da = rel(a1, a0), db = rel(b1, b0), fa = rel(a2, a0), fb = rel(b2, b0);
    double us[kPaths];
    for (int p = 0; p < kPaths; ++p) {
      double best = 1e30;
      for (int i = 0; i < reps + 3; ++i) {
        timer.start();
        run_path(p);
        const double ms = timer.stop_ms();
        if (i >= 3) best = std::min(best, ms);
      }
      us[p] = best * 1e3;
    }
    const double bytes = 2.0 * 2.0 * double(N) * double(in + out);  // X and dY, each read twice (bf16)
    const double floor_us = bytes / (copy * 1e9) * 1e6;
    std::printf("%-9s %-8s in %5d out %5d: cuBLAS bf16 + add %7.1f us, cuBLAS fp32 sums %7.1f us, fused %7.1f us; "
                "floor %5.1f us; max rel diff to bf16 + add: fp32 sums gA %.1e gB %.1e, fused gA %.1e gB %.1e\n",
                L.model, L.name, in, out, us[0], us[1], us[2], floor_us, fa, fb, da, db);
    std::printf("JSON {\"bench\":\"adapter_grads\",\"model\":\"%s\",\"linear\":\"%s\",\"in\":%d,\"out\":%d,\"tokens\":%d,"
                "\"cublas_us\":%.2f,\"cublas_f32_us\":%.2f,\"fused_us\":%.2f,\"floor_us\":%.2f,\"rel_diff_gA\":%.3e,"
                "\"rel_diff_gB\":%.3e}\n",
                L.model, L.name, in, out, N, us[0], us[1], us[2], floor_us, da, db);
    // per micro-batch: TinyLlama 22 layers (q, o, k, v, gate, up, down), 7B 32 layers (4 + 2 + 1)
    const std::string nm = L.name;
    const int m = std::string(L.model) == "tinyllama" ? 0 : 1, layers = m == 0 ? 22 : 32;
    const int per_layer = nm == "q/k/v/o" ? 4 : nm == "down" ? 1 : 2;
    for (int p = 0; p < kPaths; ++p) total[m][p] += us[p] * per_layer * layers / 1e3;
  }
  for (int m = 0; m < 2; ++m) {
    std::printf("%s, one micro-batch of %d tokens, every layer: cuBLAS bf16 + add %.2f ms, cuBLAS fp32 sums %.2f ms, "
                "fused %.2f ms\n",
                m == 0 ? "tinyllama" : "llama2-7b", N, total[m][0], total[m][1], total[m][2]);
    std::printf("JSON {\"bench\":\"adapter_grads_total\",\"model\":\"%s\",\"tokens\":%d,\"cublas_ms\":%.3f,"
                "\"cublas_f32_ms\":%.3f,\"fused_ms\":%.3f}\n",
                m == 0 ? "tinyllama" : "llama2-7b", N, total[m][0], total[m][1], total[m][2]);
  }
  return 0;
}
