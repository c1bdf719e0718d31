// Google Benchmark micro-benchmarks of the CUDA backend. Every timing is CUDA-event based
// (UseManualTime). Counters: TFLOPs (TFLOP/s), GBps (GB/s), and pct_* against the ceilings measured
// at start-up on the same GPU: a 2 GiB device-to-device copy and 8192³ GEMMs (fp32, TF32, bf16).
#include <benchmark/benchmark.h>

#include "cuda_bench_util.hpp"

using namespace hdpissa;
using namespace hdpissa::bench;

namespace {

struct Ceilings {
  double copy_gbps = 0, fp32 = 0, tf32 = 0, bf16 = 0;
} g_ceil;  // measured once in main(), read by the counters

void add_rate(benchmark::State& st, double flops, double bytes, double ceiling_tflops) {
  st.counters["TFLOPs"] = benchmark::Counter(flops / 1e12, benchmark::Counter::kIsIterationInvariantRate);
  st.counters["GBps"] = benchmark::Counter(bytes / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  // scripts/gpu-check.sh turns TFLOPs / ceil_TFLOPs and GBps / ceil_GBps into percentages.
  st.counters["ceil_TFLOPs"] = ceiling_tflops;
  st.counters["ceil_GBps"] = g_ceil.copy_gbps;
}

// ------------------------------------------------------------------ ceilings
void BM_Ceiling_D2DCopy(benchmark::State& st) {
  const std::size_t bytes = std::size_t(1) << 30;
  DeviceBuffer<char> a(bytes), b(bytes);
  CudaStream s;
  EventTimer t(s.get());
  for (auto _ : st) {
    t.start();
    HDPISSA_CUDA_CHECK(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice, s.get()));
    st.SetIterationTime(t.stop_ms() * 1e-3);
  }
  add_rate(st, 0, 2.0 * double(bytes), 0);
}
BENCHMARK(BM_Ceiling_D2DCopy)->UseManualTime()->Unit(benchmark::kMillisecond);

void BM_Ceiling_Gemm(benchmark::State& st) {
  const auto kind = GemmKind(st.range(0));
  double tf = 0;
  for (auto _ : st) {
    tf = measure_gemm_tflops(kind, 8192, 8192, 8192, 3);
    st.SetIterationTime(2.0 * 8192.0 * 8192.0 * 8192.0 / (tf * 1e12));
  }
  st.SetLabel(gemm_kind_name(kind));
  st.counters["TFLOPs"] = tf;
}
BENCHMARK(BM_Ceiling_Gemm)->Arg(0)->Arg(1)->Arg(2)->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);

// ------------------------------------------------------------------ adapter init, K = 8, r = 16
template <class Svd>
void BM_AdapterInit(benchmark::State& st) {
  const auto [m, n] = llama_shapes()[std::size_t(st.range(0))];
  const bool tf32 = st.range(1) != 0;
  GB b(CudaBackendOptions{tf32});
  auto W = b.make_matrix(m, n);
  make_decaying(b, W.view(), 11);
  const int K = 8;
  const index_t r = 16;
  Svd svd{};
  OrthogonalAdapterInit<Svd> init(K, r, svd);
  EventTimer t(b.stream());
  for (auto _ : st) {
    t.start();
    auto set = init(b, CVf(W.view()));
    st.SetIterationTime(t.stop_ms() * 1e-3);
    benchmark::DoNotOptimize(set.A.data());
  }
  // Range-finder GEMM flops (randomized) — the SVD/QR work is not counted.
  double flops = 0, passes = 1;  // passes: full reads of W
  if constexpr (!std::is_same_v<Svd, ExactSvd>) {
    const double l = double(std::min<index_t>(std::min(m, n), K * r + svd.oversample));
    passes = 2.0 * svd.power_iterations + 2.0;
    flops = 2.0 * double(m) * double(n) * l * passes;
  }
  add_rate(st, flops, 4.0 * double(m) * double(n) * passes, tf32 ? g_ceil.tf32 : g_ceil.fp32);
  st.SetLabel(Svd::name() + std::string(tf32 ? "/tf32" : "/fp32") + " " + std::to_string(m) + "x" + std::to_string(n));
}
void init_args(benchmark::internal::Benchmark* b) {
  for (int s = 0; s < 7; ++s) b->Args({s, 0});
  for (int s = 0; s < 7; ++s) b->Args({s, 1});
}
BENCHMARK(BM_AdapterInit<ExactSvd>)->ArgsProduct({{0, 1, 2, 3, 4, 5, 6}, {0}})->UseManualTime()->Iterations(1)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AdapterInit<RandomizedSvd>)->Apply(init_args)->UseManualTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AdapterInit<CholeskyRandomizedSvd>)->Apply(init_args)->UseManualTime()->Unit(benchmark::kMillisecond);

// ------------------------------------------------------------------ MutedLinear vs plain GEMM
// tokens = 1024 (the paper's 2 × 512 micro-batch), r = 16. Mode 0: MutedLinear forward + backward
// (y = x Wᵀ; dX = dY W; g_A, g_B); mode 1: the plain GEMMs of a frozen linear (forward + dX);
// mode 2: the forward GEMM alone.
void BM_MutedLinear(benchmark::State& st) {
  const auto [out, in] = llama_shapes()[std::size_t(st.range(0))];
  const int mode = int(st.range(1));
  const index_t T = 1024, r = 16;
  GB b;
  auto W = b.make_matrix(out, in), A = b.make_matrix(r, in), Bf = b.make_matrix(out, r);
  auto X = b.make_matrix(T, in), Y = b.make_matrix(T, out), dY = b.make_matrix(T, out), dX = b.make_matrix(T, in);
  auto gA = b.make_matrix(r, in), gB = b.make_matrix(out, r);
  for (auto* M : {&W, &A, &Bf, &X, &dY}) b.fill_normal(M->view(), 3);
  MutedLinear<GB> lin(b, 1.0);
  lin.reserve(T, out, in, r);
  EventTimer t(b.stream());
  for (auto _ : st) {
    t.start();
    if (mode == 0) {
      lin.forward(CVf(W.view()), CVf(A.view()), CVf(Bf.view()), CVf(X.view()), Y.view());
      lin.backward(CVf(W.view()), CVf(A.view()), CVf(Bf.view()), CVf(X.view()), CVf(dY.view()), dX.view(), gA.view(), gB.view());
    } else {
      b.gemm(Op::N, Op::T, 1.f, CVf(X.view()), CVf(W.view()), 0.f, Y.view());
      if (mode == 1) b.gemm(Op::N, Op::N, 1.f, CVf(dY.view()), CVf(W.view()), 0.f, dX.view());
    }
    st.SetIterationTime(t.stop_ms() * 1e-3);
  }
  const double big = 2.0 * double(T) * double(out) * double(in);
  const double thin = 4.0 * 2.0 * double(T) * double(r) * (double(out) + double(in)) / 2.0;
  const double flops = mode == 0 ? 2 * big + thin : mode == 1 ? 2 * big : big;
  add_rate(st, flops, 4.0 * double(out) * double(in) * (mode == 2 ? 1 : 2), g_ceil.fp32);
  st.SetLabel(std::string(mode == 0 ? "muted fwd+bwd" : mode == 1 ? "plain fwd+dX" : "plain fwd") + " " +
              std::to_string(out) + "x" + std::to_string(in));
}
BENCHMARK(BM_MutedLinear)->ArgsProduct({{0, 1, 2}, {0, 1, 2}})->UseManualTime()->Unit(benchmark::kMillisecond);

// The same MutedLinear forward + backward on bf16 storage (fp32 accumulation): what a bf16 compute
// copy of W buys the training step (mode 0), against the plain bf16 forward + dX GEMMs (mode 1).
void BM_MutedLinearBf16(benchmark::State& st) {
  using bf = __nv_bfloat16;
  using CVb = ConstMatrixView<bf>;
  const auto [out, in] = llama_shapes()[std::size_t(st.range(0))];
  const int mode = int(st.range(1));
  const index_t T = 1024, r = 16;
  CudaBackend<bf> b;
  auto W = b.make_matrix(out, in), A = b.make_matrix(r, in), Bf = b.make_matrix(out, r);
  auto X = b.make_matrix(T, in), Y = b.make_matrix(T, out), dY = b.make_matrix(T, out), dX = b.make_matrix(T, in);
  auto gA = b.make_matrix(r, in), gB = b.make_matrix(out, r);
  for (auto* M : {&W, &A, &Bf, &X, &dY}) b.fill_normal(M->view(), 3);
  MutedLinear<CudaBackend<bf>> lin(b, 1.0);
  lin.reserve(T, out, in, r);
  EventTimer t(b.stream());
  for (auto _ : st) {
    t.start();
    if (mode == 0) {
      lin.forward(CVb(W.view()), CVb(A.view()), CVb(Bf.view()), CVb(X.view()), Y.view());
      lin.backward(CVb(W.view()), CVb(A.view()), CVb(Bf.view()), CVb(X.view()), CVb(dY.view()), dX.view(), gA.view(), gB.view());
    } else {
      b.gemm(Op::N, Op::T, 1.f, CVb(X.view()), CVb(W.view()), 0.f, Y.view());
      b.gemm(Op::N, Op::N, 1.f, CVb(dY.view()), CVb(W.view()), 0.f, dX.view());
    }
    st.SetIterationTime(t.stop_ms() * 1e-3);
  }
  const double big = 2.0 * double(T) * double(out) * double(in);
  const double thin = 4.0 * double(T) * double(r) * (double(out) + double(in));
  add_rate(st, mode == 0 ? 2 * big + thin : 2 * big, 2.0 * 2.0 * double(out) * double(in), g_ceil.bf16);
  st.SetLabel(std::string(mode == 0 ? "bf16 muted fwd+bwd" : "bf16 plain fwd+dX") + " " + std::to_string(out) + "x" +
              std::to_string(in));
}
BENCHMARK(BM_MutedLinearBf16)->ArgsProduct({{0, 1, 2}, {0, 1}})->UseManualTime()->Unit(benchmark::kMillisecond);

// ------------------------------------------------------------------ DWU step on a 4096 × 4096 layer
void BM_DwuStep(benchmark::State& st) {
  const int K = int(st.range(0));
  const index_t r = st.range(1), out = 4096, in = 4096;
  const bool tf32 = st.range(2) != 0;
  GB b(CudaBackendOptions{tf32});
  auto W = b.make_matrix(out, in);
  b.fill_normal(W.view(), 1);
  b.scale(W.view(), 0.02f);
  VirtualRanks<CudaSingleProcess> comm(CudaSingleProcess(b.stream()), K);
  DirectWeightUpdate<GB, Adam, VirtualRanks<CudaSingleProcess>> dwu(b, comm);
  {
    auto set = make_adapter_set(b, out, in, K, r);
    b.fill_normal(set.A.view(), 2);
    b.fill_normal(set.B.view(), 3);
    dwu.add_layer("w", W.view(), set);
  }
  for (int g = 0; g < K; ++g) {
    b.fill_normal(dwu.grad_A(0, g), 10 + g);
    b.fill_normal(dwu.grad_B(0, g), 20 + g);
  }
  dwu.step(1e-6);
  EventTimer t(b.stream());
  for (auto _ : st) {
    t.start();
    dwu.step(1e-6);
    st.SetIterationTime(t.stop_ms() * 1e-3);
  }
  add_rate(st, 2.0 * double(out) * double(in) * 2.0 * double(K * r), 8.0 * double(out) * double(in),
           tf32 ? g_ceil.tf32 : g_ceil.fp32);
  st.SetLabel("K=" + std::to_string(K) + " r=" + std::to_string(r) + (tf32 ? " tf32" : " fp32"));
}
BENCHMARK(BM_DwuStep)->ArgsProduct({{1, 2, 4, 8}, {16, 64, 128}, {0, 1}})->UseManualTime()->Unit(benchmark::kMillisecond);

// ------------------------------------------------------------------ fp32 master → bf16 compute copy
void BM_ConvertToBf16(benchmark::State& st) {
  const index_t out = 11008, in = 4096;
  GB b;
  auto W = b.make_matrix(out, in);
  DeviceBuffer<__nv_bfloat16> w16(std::size_t(out * in));
  EventTimer t(b.stream());
  for (auto _ : st) {
    t.start();
    b.convert(CVf(W.view()), MatrixView<__nv_bfloat16>(w16.get(), out, in));
    st.SetIterationTime(t.stop_ms() * 1e-3);
  }
  add_rate(st, 0, 6.0 * double(out) * double(in), 0);
}
BENCHMARK(BM_ConvertToBf16)->UseManualTime()->Unit(benchmark::kMillisecond);

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  const char* name = nullptr;
  if (!have_gpu(&name)) {
    std::printf("SKIP: no CUDA device; benchmarks not run\n");
    return 0;
  }
  g_ceil.copy_gbps = measure_copy_gbps();
  g_ceil.fp32 = measure_gemm_tflops(GemmKind::Fp32);
  g_ceil.tf32 = measure_gemm_tflops(GemmKind::Tf32);
  g_ceil.bf16 = measure_gemm_tflops(GemmKind::Bf16);
  std::printf("device: %s\nceilings: D2D copy %.0f GB/s (read+write); GEMM 8192^3 fp32 %.1f, tf32 %.1f, bf16 %.1f TFLOP/s\n",
              name, g_ceil.copy_gbps, g_ceil.fp32, g_ceil.tf32, g_ceil.bf16);
  benchmark::AddCustomContext("gpu", name);
  benchmark::AddCustomContext("ceil_copy_GBps", std::to_string(g_ceil.copy_gbps));
  benchmark::AddCustomContext("ceil_fp32_TFLOPs", std::to_string(g_ceil.fp32));
  benchmark::AddCustomContext("ceil_tf32_TFLOPs", std::to_string(g_ceil.tf32));
  benchmark::AddCustomContext("ceil_bf16_TFLOPs", std::to_string(g_ceil.bf16));
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
