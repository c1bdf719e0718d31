// bench_flash_attn: the fused attention kernels of flash_attn.cuh alone (the forward under each
// register target, the dK/dV and dQ kernels, forward() + backward() as the model calls them), at
// the training shapes of issue 20 (LLaMA-2-7B: 32 heads, head dim 128; TinyLlama: 32 query / 4 kv
// heads, head dim 64; T = 512, full lengths). Each forward variant's outputs are compared bit for
// bit with the unconstrained kernel's; a variant that differs is reported, and the exit status is 1.
//
//   bench_flash_attn [--batch 8] [--seq 512] [--reps 30] [--shape 7b|tiny|all]
//
// TFLOP/s count the causal attention's useful products: forward 2 products (S, P·V), backward 5
// (S, dP, dV, dK, dQ, as FlashAttention-2 counts it), each 2·hd·T·(T+1)/2 per (b, h).
// torch's scaled_dot_product_attention at the same shapes: bench/e2e/sdpa_bench.py.
#include <cuda_bf16.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cuda_bench_util.hpp"
#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "llama/cuda/flash_attn.cuh"

namespace F = hdpissa::llama::gpu::flash;
using bf16 = __nv_bfloat16;
using hdpissa::DeviceBuffer;

namespace {

struct Args {
  int batch = 8, seq = 512, reps = 30;
  std::string shape = "all";
};

template <class T>
std::vector<T> down(const DeviceBuffer<T>& d, std::size_t n) {
  std::vector<T> h(n);
  HDPISSA_CUDA_CHECK(cudaMemcpy(h.data(), d.get(), sizeof(T) * n, cudaMemcpyDeviceToHost));
  return h;
}
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), sizeof(T) * a.size()) == 0;
}

template <class Fn>
double time_ms(cudaStream_t s, int reps, Fn&& fn) {
  for (int i = 0; i < 3; ++i) fn();
  hdpissa::bench::EventTimer t(s);
  t.start();
  for (int i = 0; i < reps; ++i) fn();
  return t.stop_ms() / reps;
}

template <int HD>
int run_shape(const char* name, int B, int nh, int nkv, int T, int reps) {
  const std::size_t nq = std::size_t(B) * nh * T * HD, nk = std::size_t(B) * nkv * T * HD, nr = std::size_t(B) * nh * T;
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto up = [&](std::size_t n, float sd) {
    std::vector<bf16> h(n);
    for (auto& x : h) x = __float2bfloat16_rn(sd * nd(rng));
    DeviceBuffer<bf16> d(n);
    HDPISSA_CUDA_CHECK(cudaMemcpy(d.get(), h.data(), sizeof(bf16) * n, cudaMemcpyHostToDevice));
    return d;
  };
  auto Q = up(nq, 1.0f), K = up(nk, 1.0f), V = up(nk, 1.0f), dO = up(nq, 1.0f);
  DeviceBuffer<bf16> O(nq);
  DeviceBuffer<float> lse(nr), D(nr), dq(nq), dk(nq), dv(nq);
  std::vector<float> Dh(nr);
  for (auto& x : Dh) x = 0.1f * nd(rng);
  HDPISSA_CUDA_CHECK(cudaMemcpy(D.get(), Dh.data(), sizeof(float) * nr, cudaMemcpyHostToDevice));
  std::vector<int> len(B, T);
  DeviceBuffer<int> L(B);
  HDPISSA_CUDA_CHECK(cudaMemcpy(L.get(), len.data(), sizeof(int) * B, cudaMemcpyHostToDevice));
  hdpissa::CudaStream stream;
  cudaStream_t s = stream.get();
  const float scale = 1.0f / std::sqrt(float(HD));
  const double prod = 2.0 * HD * T * (T + 1) / 2.0 * B * nh;  // one causal T×T×hd product, all (b, h)
  int bad = 0;

  std::printf("\n%s: B %d, heads %d/%d, hd %d, T %d\n", name, B, nh, nkv, HD, T);
  std::printf("  %-44s %9s %9s  %s\n", "kernel", "ms", "TFLOP/s", "bits vs reference");
  std::vector<bf16> O_ref;
  std::vector<float> lse_ref;
  // The poison is written on the kernels' stream: `s` is non-blocking, so a cudaMemset on the legacy
  // stream would not be ordered before the launch (session 27's c74 saw poison left in dK / dV at
  // 7B B 8 that way: "DIFFERENT" rows that were the bench's, not the kernels').
  auto fwd = [&](const char* what, auto launch) {
    HDPISSA_CUDA_CHECK(cudaMemsetAsync(O.get(), 0xff, sizeof(bf16) * nq, s));
    HDPISSA_CUDA_CHECK(cudaMemsetAsync(lse.get(), 0xff, sizeof(float) * nr, s));
    launch();
    HDPISSA_CUDA_CHECK(cudaStreamSynchronize(s));
    auto o = down(O, nq);
    auto l = down(lse, nr);
    const char* verdict = "reference";
    if (O_ref.empty()) {
      O_ref = o;
      lse_ref = l;
    } else {
      const bool same = same_bits(o, O_ref) && same_bits(l, lse_ref);
      verdict = same ? "identical" : "DIFFERENT";
      bad += !same;
    }
    const double ms = time_ms(s, reps, launch);
    std::printf("  %-44s %9.4f %9.1f  %s\n", what, ms, 2 * prod / ms / 1e9, verdict);
  };
  fwd("fwd, no register target", [&] { F::launch_fwd_kernel<HD, 1>(s, Q.get(), K.get(), V.get(), O.get(), lse.get(), L.get(), B, nh, nkv, T, scale); });
  fwd("fwd, 2 blocks/SM register target", [&] { F::launch_fwd_kernel<HD, 2>(s, Q.get(), K.get(), V.get(), O.get(), lse.get(), L.get(), B, nh, nkv, T, scale); });
  fwd("fwd, 3 blocks/SM register target", [&] { F::launch_fwd_kernel<HD, 3>(s, Q.get(), K.get(), V.get(), O.get(), lse.get(), L.get(), B, nh, nkv, T, scale); });
  if constexpr (HD == 64)
    fwd("fwd, 4 blocks/SM register target", [&] { F::launch_fwd_kernel<HD, 4>(s, Q.get(), K.get(), V.get(), O.get(), lse.get(), L.get(), B, nh, nkv, T, scale); });
  // the block order: bands of (b, h) heads, heavy tiles first in each (1 = the order before session 27)
  const int bands[] = {1, 8, 16, 32, 64, 128, 1 << 30};
  auto band_name = [](int b) { return b == (1 << 30) ? std::string("all") : std::to_string(b); };
  for (int b : bands)
    fwd(("fwd, block order band " + band_name(b)).c_str(), [&] { F::forward(Q.get(), K.get(), V.get(), O.get(), lse.get(), L.get(), B, nh, nkv, T, HD, scale, s, 0, 0, F::TileOrder{b}); });
  // the backward reads the reference forward's lse
  HDPISSA_CUDA_CHECK(cudaMemcpy(lse.get(), lse_ref.data(), sizeof(float) * nr, cudaMemcpyHostToDevice));
  std::vector<float> dk_ref, dv_ref;
  auto bwd = [&](const char* what, auto launch) {
    HDPISSA_CUDA_CHECK(cudaMemsetAsync(dk.get(), 0xff, sizeof(float) * nq, s));
    HDPISSA_CUDA_CHECK(cudaMemsetAsync(dv.get(), 0xff, sizeof(float) * nq, s));
    launch();
    HDPISSA_CUDA_CHECK(cudaStreamSynchronize(s));
    auto a = down(dk, nq), b = down(dv, nq);
    const char* verdict = "reference";
    if (dk_ref.empty()) {
      dk_ref = a;
      dv_ref = b;
    } else {
      const bool same = same_bits(a, dk_ref) && same_bits(b, dv_ref);
      verdict = same ? "identical" : "DIFFERENT";
      bad += !same;
    }
    const double ms = time_ms(s, reps, launch);
    std::printf("  %-44s %9.4f %9.1f  %s\n", what, ms, 4 * prod / ms / 1e9, verdict);
  };
  bwd("bwd dK,dV", [&] { F::launch_bwd_kernel<HD>(s, Q.get(), K.get(), V.get(), dO.get(), lse.get(), D.get(), dk.get(), dv.get(), L.get(), B, nh, nkv, T, scale); });
  for (int b : bands)
    bwd(("bwd dK,dV, block order band " + band_name(b)).c_str(), [&] { F::launch_bwd_kernel<HD>(s, Q.get(), K.get(), V.get(), dO.get(), lse.get(), D.get(), dk.get(), dv.get(), L.get(), B, nh, nkv, T, scale, 0, 0, {}, F::TileOrder{b}); });
  const double ms_dq = time_ms(s, reps, [&] { F::launch_bwd_dq_kernel<HD>(s, Q.get(), K.get(), V.get(), dO.get(), lse.get(), D.get(), dq.get(), L.get(), B, nh, nkv, T, scale); });
  std::printf("  %-44s %9.4f %9.1f\n", "bwd dQ", ms_dq, 3 * prod / ms_dq / 1e9);
  for (int b : bands) {
    const double ms_b = time_ms(s, reps, [&] { F::launch_bwd_dq_kernel<HD>(s, Q.get(), K.get(), V.get(), dO.get(), lse.get(), D.get(), dq.get(), L.get(), B, nh, nkv, T, scale, 0, 0, {}, F::TileOrder{b}); });
    std::printf("  %-44s %9.4f %9.1f\n", ("bwd dQ, block order band " + band_name(b)).c_str(), ms_b, 3 * prod / ms_b / 1e9);
  }
  const double ms_all = time_ms(s, reps, [&] {
    F::forward(Q.get(), K.get(), V.get(), O.get(), lse.get(), L.get(), B, nh, nkv, T, HD, scale, s);
    F::backward(Q.get(), K.get(), V.get(), dO.get(), lse.get(), D.get(), dq.get(), dk.get(), dv.get(), L.get(), B, nh, nkv, T, HD, scale, s);
  });
  std::printf("  %-44s %9.4f %9.1f  (useful: 2 fwd + 5 bwd products)\n", "forward() + backward() (the defaults)", ms_all, 7 * prod / ms_all / 1e9);
  // The backward's two kernels are independent (same inputs, separate outputs): dQ on a second
  // stream, so its blocks can fill the dK/dV kernel's tail (a measurement of that lever only).
  hdpissa::CudaStream stream2;
  cudaEvent_t fork = nullptr, join = nullptr;
  HDPISSA_CUDA_CHECK(cudaEventCreateWithFlags(&fork, cudaEventDisableTiming));
  HDPISSA_CUDA_CHECK(cudaEventCreateWithFlags(&join, cudaEventDisableTiming));
  const double ms_two = time_ms(s, reps, [&] {
    F::forward(Q.get(), K.get(), V.get(), O.get(), lse.get(), L.get(), B, nh, nkv, T, HD, scale, s);
    HDPISSA_CUDA_CHECK(cudaEventRecord(fork, s));
    HDPISSA_CUDA_CHECK(cudaStreamWaitEvent(stream2.get(), fork, 0));
    F::launch_bwd_dq_kernel<HD>(stream2.get(), Q.get(), K.get(), V.get(), dO.get(), lse.get(), D.get(), dq.get(), L.get(), B, nh, nkv, T, scale);
    F::launch_bwd_kernel<HD>(s, Q.get(), K.get(), V.get(), dO.get(), lse.get(), D.get(), dk.get(), dv.get(), L.get(), B, nh, nkv, T, scale);
    HDPISSA_CUDA_CHECK(cudaEventRecord(join, stream2.get()));
    HDPISSA_CUDA_CHECK(cudaStreamWaitEvent(s, join, 0));
  });
  std::printf("  %-44s %9.4f %9.1f  (the defaults: %.3fx)\n", "forward() + backward(), dQ on a 2nd stream", ms_two, 7 * prod / ms_two / 1e9, ms_all / ms_two);
  (void)cudaEventDestroy(fork);
  (void)cudaEventDestroy(join);
  const double ms_alli = time_ms(s, reps, [&] {
    F::forward(Q.get(), K.get(), V.get(), O.get(), lse.get(), L.get(), B, nh, nkv, T, HD, scale, s, 0, 0, F::TileOrder::interleaved());
    F::backward(Q.get(), K.get(), V.get(), dO.get(), lse.get(), D.get(), dq.get(), dk.get(), dv.get(), L.get(), B, nh, nkv, T, HD, scale, s, 0, 0, {}, F::TileOrder::interleaved());
  });
  std::printf("  %-44s %9.4f %9.1f  (the defaults: %.3fx)\n", "forward() + backward(), band 1 (before)", ms_alli, 7 * prod / ms_alli / 1e9, ms_alli / ms_all);
  return bad;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) { std::fprintf(stderr, "%s: expected a value\n", k.c_str()); std::exit(2); }
      return argv[++i];
    };
    if (k == "--batch") a.batch = std::stoi(val());
    else if (k == "--seq") a.seq = std::stoi(val());
    else if (k == "--reps") a.reps = std::stoi(val());
    else if (k == "--shape") a.shape = val();
    else { std::fprintf(stderr, "unknown argument '%s' (expected --batch, --seq, --reps, --shape)\n", k.c_str()); return 2; }
  }
  if (a.shape != "all" && a.shape != "7b" && a.shape != "tiny") {
    std::fprintf(stderr, "--shape: expected 7b, tiny or all, found '%s'\n", a.shape.c_str());
    return 2;
  }
  const char* dev = nullptr;
  if (!hdpissa::bench::have_gpu(&dev)) { std::fprintf(stderr, "no CUDA device\n"); return 1; }
  std::printf("device: %s\n", dev);
  int bad = 0;
  if (a.shape != "tiny") bad += run_shape<128>("LLaMA-2-7B attention", a.batch, 32, 32, a.seq, a.reps);
  if (a.shape != "7b") bad += run_shape<64>("TinyLlama attention", a.batch, 32, 4, a.seq, a.reps);
  if (bad) std::printf("\n%d variant(s) differ from the reference bits\n", bad);
  return bad ? 1 : 0;
}
