// Google Benchmark micro-benchmarks of the CPU backend (EigenBackend<float>): the CPU counterpart of
// bench_cuda_micro.cu, on CPU-sized shapes. Every benchmark reports wall-clock time (UseRealTime:
// Eigen's GEMMs run on several threads when the TU is built with OpenMP, so CPU time would add the
// threads up). Counters: GFLOPs (GFLOP/s) and GBps (GB/s), rates per wall second; `flop` is the
// per-iteration flop count the rate is computed from. Context: the Eigen thread count.
//
// Only float EigenBackend instantiations, and one MutedLinear / DirectWeightUpdate / init type
// each, to keep the TU's compile time modest (BDCSVD, for ExactSvd, is the expensive one).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "hdpissa/adapter/direct_weight_update.hpp"
#include "hdpissa/adapter/muted_linear.hpp"
#include "hdpissa/adapter/orthogonal_adapter_init.hpp"
#include "hdpissa/backend/eigen/eigen_backend.hpp"
#include "hdpissa/comm/single_process.hpp"
#include "hdpissa/comm/virtual_ranks.hpp"
#include "hdpissa/optim/adam.hpp"

using namespace hdpissa;

namespace {

using EB = EigenBackend<float>;
using CVf = ConstMatrixView<float>;
using Mat = EB::Matrix;

void add_rate(benchmark::State& st, double flops, double bytes) {
  st.counters["GFLOPs"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["GBps"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["flop"] = flops;
}

std::string shape_name(index_t m, index_t n) { return std::to_string(m) + "x" + std::to_string(n); }

/// W (m, n) = U diag(σ) Vᵀ with σ_i = 1/i (i = 1..min(m, n)) and orthonormal U, V (Householder QR of
/// counter-Gaussian matrices), as in the CUDA suite. Built once per shape (setup, not timed: the QR of
/// a 2048² Gaussian takes seconds on 2 cores and Google Benchmark calls a benchmark several times).
const Mat& decaying_matrix(index_t m, index_t n) {
  static std::map<std::pair<index_t, index_t>, Mat> cache;
  auto it = cache.find({m, n});
  if (it != cache.end()) return it->second;
  EB b;
  const index_t k = std::min(m, n);
  auto U = b.make_matrix(m, k), V = b.make_matrix(n, k), d = b.make_matrix(1, k);
  fill_gaussian(b, U.view(), 11);
  fill_gaussian(b, V.view(), 12);
  b.orthonormalize(U.view());
  b.orthonormalize(V.view());
  for (index_t i = 0; i < k; ++i) d.view()(0, i) = 1.0f / float(i + 1);
  b.scale_cols(U.view(), CVf(d.view()));
  auto W = b.make_matrix(m, n);
  b.gemm(Op::N, Op::T, 1.f, CVf(U.view()), CVf(V.view()), 0.f, W.view());
  return cache.emplace(std::make_pair(m, n), std::move(W)).first->second;
}

/// Random matrix from the library's counter-based normal stream, times `scale`.
Mat random_matrix(EB& b, index_t r, index_t c, std::uint64_t seed, float scale = 1.f) {
  auto m = b.make_matrix(r, c);
  fill_gaussian(b, m.view(), seed);
  if (scale != 1.f) b.scale(m.view(), scale);
  return m;
}

// ------------------------------------------------------------------ adapter init, K = 8, r = 16
// Args: (out, in). ExactSvd (BDCSVD of the whole W) on the small shapes only; RandomizedSvd with its
// defaults (oversample 16, 4 power iterations) on all three. The init allocates its results (it
// returns an AdapterSet), as it does in use: it is a setup step.
constexpr int kInitK = 8;
constexpr index_t kInitR = 16;

template <class Svd>
void BM_AdapterInit(benchmark::State& st) {
  const index_t m = st.range(0), n = st.range(1);
  EB b;
  const Mat& W = decaying_matrix(m, n);
  Svd svd{};
  OrthogonalAdapterInit<Svd> init(kInitK, kInitR, svd);
  for (auto _ : st) {
    auto set = init(b, W.cview());
    benchmark::DoNotOptimize(set.A.data());
    benchmark::ClobberMemory();
  }
  // Range-finder GEMM flops (randomized: 2q + 2 passes over W with l = K·r + p columns); the small
  // QR / SVD work is not counted. Exact: no flop count (BDCSVD), bytes = one read of W.
  double flops = 0, passes = 1;
  if constexpr (!std::is_same_v<Svd, ExactSvd>) {
    const double l = double(std::min<index_t>(std::min(m, n), kInitK * kInitR + svd.oversample));
    passes = 2.0 * svd.power_iterations + 2.0;
    flops = 2.0 * double(m) * double(n) * l * passes;
  }
  add_rate(st, flops, 4.0 * double(m) * double(n) * passes);
  st.SetLabel(Svd::name() + " " + shape_name(m, n));
}
BENCHMARK(BM_AdapterInit<ExactSvd>)
    ->Args({512, 512})
    ->Args({1408, 512})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AdapterInit<RandomizedSvd>)
    ->Args({512, 512})
    ->Args({1408, 512})
    ->Args({2048, 2048})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);

// ------------------------------------------------------------------ MutedLinear vs plain GEMM
// tokens = 512, r = 16, W (out, in). Mode 0: MutedLinear<EB, ExactMute> forward + backward
// (Y = X Wᵀ; dX = dY W; g_A, g_B: 4 thin GEMMs); mode 1: the plain GEMMs of a frozen linear
// (forward + dX), i.e. what the muted layer costs on top of the frozen model; mode 2: a dense
// trainable linear (forward + dX + dW = dYᵀ X), i.e. full fine-tuning's GEMMs. All buffers and the
// MutedLinear scratch (reserve) are allocated before the timed loop.
void BM_MutedLinear(benchmark::State& st) {
  const index_t out = st.range(0), in = st.range(1);
  const int mode = int(st.range(2));
  const index_t T = 512, r = 16;
  EB b;
  auto W = random_matrix(b, out, in, 1, 0.02f), A = random_matrix(b, r, in, 2), Bf = random_matrix(b, out, r, 3);
  auto X = random_matrix(b, T, in, 4), dY = random_matrix(b, T, out, 5);
  auto Y = b.make_matrix(T, out), dX = b.make_matrix(T, in);
  auto gA = b.make_matrix(r, in), gB = b.make_matrix(out, r);
  Mat dW;
  if (mode == 2) dW = b.make_matrix(out, in);
  MutedLinear<EB> lin(b, 1.0);
  lin.reserve(T, out, in, r);
  for (auto _ : st) {
    if (mode == 0) {
      lin.forward(W.cview(), A.cview(), Bf.cview(), X.cview(), Y.view());
      lin.backward(W.cview(), A.cview(), Bf.cview(), X.cview(), dY.cview(), dX.view(), gA.view(), gB.view());
    } else {
      b.gemm(Op::N, Op::T, 1.f, X.cview(), W.cview(), 0.f, Y.view());
      b.gemm(Op::N, Op::N, 1.f, dY.cview(), W.cview(), 0.f, dX.view());
      if (mode == 2) b.gemm(Op::T, Op::N, 1.f, dY.cview(), X.cview(), 0.f, dW.view());
    }
    benchmark::ClobberMemory();
  }
  const double big = 2.0 * double(T) * double(out) * double(in);
  const double thin = 4.0 * double(T) * double(r) * (double(out) + double(in));  // 4 GEMMs (T, r)
  const double flops = mode == 0 ? 2 * big + thin : mode == 1 ? 2 * big : 3 * big;
  // Bytes: W read twice (forward, dX); mode 2 also writes dW.
  add_rate(st, flops, 4.0 * double(out) * double(in) * (mode == 2 ? 3 : 2));
  st.SetLabel(std::string(mode == 0 ? "muted fwd+bwd" : mode == 1 ? "plain fwd+dX" : "dense fwd+dX+dW") + " " +
              shape_name(out, in) + " T=512");
}
void muted_args(benchmark::internal::Benchmark* bm) {
  const index_t shapes[][2] = {{512, 512}, {2048, 2048}, {5632, 2048}};
  for (const auto& s : shapes)
    for (int mode = 0; mode < 3; ++mode) bm->Args({s[0], s[1], mode});
}
BENCHMARK(BM_MutedLinear)->Apply(muted_args)->UseRealTime()->Unit(benchmark::kMillisecond);

// ------------------------------------------------------------------ DWU step on a 2048 × 2048 layer
// DirectWeightUpdate<EB, Adam, VirtualRanks<SingleProcess>>: K groups on one worker. Per step: K
// Adam steps on (A_g, B_g), the all-gather (a copy), the R / L packing, and one GEMM
// W −= [dB | B] [A − dA; dA] of inner dimension 2Kr. GFLOPs counts that GEMM only; GBps counts one
// read + one write of W (fp32). The gradients are filled once (the step leaves them untouched).
void BM_DwuStep(benchmark::State& st) {
  const int K = int(st.range(0));
  const index_t r = st.range(1), out = 2048, in = 2048;
  EB b;
  auto W = random_matrix(b, out, in, 1, 0.02f);
  VirtualRanks<SingleProcess> comm(SingleProcess{}, K);
  DirectWeightUpdate<EB, Adam, VirtualRanks<SingleProcess>> dwu(b, comm, Adam{});
  {
    auto set = make_adapter_set(b, out, in, K, r);
    fill_gaussian(b, set.A.view(), 2);
    fill_gaussian(b, set.B.view(), 3);
    dwu.add_layer("w", W.view(), set);
  }
  for (int g = 0; g < K; ++g) {
    fill_gaussian(b, dwu.grad_A(0, g), 10 + std::uint64_t(g));
    fill_gaussian(b, dwu.grad_B(0, g), 20 + std::uint64_t(g));
  }
  dwu.step(1e-6);  // first step: finalize() allocates the exchange buffers
  for (auto _ : st) {
    auto rep = dwu.step(1e-6);
    benchmark::DoNotOptimize(rep.skipped);
    benchmark::ClobberMemory();
  }
  add_rate(st, 2.0 * double(out) * double(in) * 2.0 * double(K) * double(r), 8.0 * double(out) * double(in));
  st.counters["Kr"] = double(K) * double(r);
  st.SetLabel("K=" + std::to_string(K) + " r=" + std::to_string(r) + " " + shape_name(out, in));
}
BENCHMARK(BM_DwuStep)->ArgsProduct({{1, 2, 4, 8}, {16, 64}})->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("backend", "EigenBackend<float>");
  benchmark::AddCustomContext("eigen_threads", std::to_string(Eigen::nbThreads()));
  std::printf("EigenBackend<float>, Eigen %d.%d.%d, %d thread(s) for GEMMs\n", EIGEN_WORLD_VERSION,
              EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION, Eigen::nbThreads());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
