// bench_dwu_lowrank — the low-rank Direct Weight Update kernel on CUDA cores (dwu_lowrank.cuh,
// W ⊕= alpha · L · R at inner dimension kd = 2Kr ≤ 64) alone, at the LLaMA shapes, against the
// device-to-device copy of the same bytes measured in the same run.
//
// Why: the trainer's whole optimizer step at one group per GPU (K = 1, r = 16, kd = 32) took 36 ms at
// the 7B shape (session 17), ≈ 4× its bf16 W traffic at the copy rate. This separates the kernel
// from the rest of the step and, with the inner-dimension scan (kd = 0 runs the W read, the rule and
// the W write with no products; 8 … 64 add 8 … 64 fmaf per element), its memory part from its
// arithmetic part. Run it under `ncu --clock-control none -k regex:dwu_lowrank` for the stall
// reasons (scripts/device-calls/c23.sh).
//
// Usage: bench_dwu_lowrank [--reps N] [--shape M,N] [--kd K] [--policy sr|comp|fp32] [--rows-per-thread 8|4]
//                          [--stages 0|1|2|all]
// (rows per thread: the kernel's two thread tilings, same bits; both unless given. stages: the
// tile buffers, 0 = the launcher's choice (default), all = 1 and 2; same bits)
// Every "JSON " line is one machine-readable record.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_bench_util.hpp"
#include "hdpissa/backend/cuda/dwu_lowrank.cuh"

using namespace hdpissa;
using namespace hdpissa::bench;
namespace ck = hdpissa::cuda_kernels;

namespace {

enum class Pol { Sr, Comp, Fp32 };
const char* pol_name(Pol p) { return p == Pol::Sr ? "bf16-sr" : p == Pol::Comp ? "bf16-compensated" : "fp32"; }

struct Result {
  double us;
  double gbps;  // W bytes read + written (and the compensation buffer's) per second
};

Result run_one(cudaStream_t s, int M, int N, int kd, Pol pol, int reps, int rpt, int stages) {
  const std::size_t mn = std::size_t(M) * std::size_t(N);
  DeviceBuffer<float> L(std::size_t(M) * std::size_t(std::max(kd, 1))), R(std::size_t(std::max(kd, 1)) * std::size_t(N));
  GB b(s, {});
  b.fill_normal(MatrixView<float>(L.get(), M, std::max(kd, 1)), 11);
  b.fill_normal(MatrixView<float>(R.get(), std::max(kd, 1), N), 12);
  EventTimer t(s);
  double best = 1e30;
  double bytes = 0;
  auto time = [&](auto&& launch) {
    for (int i = 0; i < reps + 3; ++i) {
      t.start();
      launch(i);
      const double ms = t.stop_ms();
      if (i >= 3) best = std::min(best, ms);
    }
  };
  if (pol == Pol::Fp32) {
    DeviceBuffer<float> W(mn);
    b.fill_normal(MatrixView<float>(W.get(), M, N), 13);
    ck::DwuLowrankFp32W o{W.get(), N};
    time([&](int) { ck::launch_dwu_lowrank(s, o, L.get(), std::max(kd, 1), R.get(), N, M, N, kd, 1e-6f, 0, rpt, stages); });
    bytes = 8.0 * double(mn);
  } else {
    DeviceBuffer<std::uint16_t> W(mn), C(pol == Pol::Comp ? mn : 1);
    HDPISSA_CUDA_CHECK(cudaMemsetAsync(W.get(), 0x3c, mn * 2, s));
    if (pol == Pol::Comp) HDPISSA_CUDA_CHECK(cudaMemsetAsync(C.get(), 0, mn * 2, s));
    Bf16WStorage o;
    o.policy = pol == Pol::Comp ? WPrecision::Bf16Compensated : WPrecision::Bf16StochasticRounding;
    o.w = W.get(), o.ldw = N, o.c = pol == Pol::Comp ? C.get() : nullptr, o.ldc = N, o.cols = N, o.seed = 7;
    time([&](int i) {
      o.step = std::uint64_t(i);
      ck::launch_dwu_lowrank(s, o, L.get(), std::max(kd, 1), R.get(), N, M, N, kd, 1e-3f, 0, rpt, stages);
    });
    bytes = (pol == Pol::Comp ? 8.0 : 4.0) * double(mn);
  }
  return {best * 1e3, bytes / (best * 1e-3) / 1e9};
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 20, only_kd = -1, sm = 0, sn = 0;
  std::vector<int> rpts{8, 4};
  std::vector<int> stage_list{0};
  std::vector<Pol> pols{Pol::Sr, Pol::Fp32};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_dwu_lowrank: %s expects a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--reps") reps = std::atoi(next());
    else if (a == "--kd") only_kd = std::atoi(next());
    else if (a == "--rows-per-thread") {
      const int r = std::atoi(next());
      if (r != 8 && r != 4) {
        std::fprintf(stderr, "bench_dwu_lowrank: --rows-per-thread expects 8 or 4, found %d\n", r);
        return 2;
      }
      rpts = {r};
    }
    else if (a == "--stages") {
      const std::string v = next();
      if (v == "all") stage_list = {1, 2};
      else if (v == "0" || v == "1" || v == "2") stage_list = {std::atoi(v.c_str())};
      else {
        std::fprintf(stderr, "bench_dwu_lowrank: --stages expects 0, 1, 2 or all, found '%s'\n", v.c_str());
        return 2;
      }
    }
    else if (a == "--shape") {
      if (std::sscanf(next(), "%d,%d", &sm, &sn) != 2 || sm < 1 || sn < 1) {
        std::fprintf(stderr, "bench_dwu_lowrank: --shape expects M,N (positive), e.g. 4096,11008\n");
        return 2;
      }
    } else if (a == "--policy") {
      const std::string p = next();
      if (p == "sr") pols = {Pol::Sr};
      else if (p == "comp") pols = {Pol::Comp};
      else if (p == "fp32") pols = {Pol::Fp32};
      else {
        std::fprintf(stderr, "bench_dwu_lowrank: --policy expects sr, comp or fp32, found '%s'\n", p.c_str());
        return 2;
      }
    } else {
      std::fprintf(stderr, "bench_dwu_lowrank: unknown argument '%s' (expected --reps, --shape, --kd, --policy, --rows-per-thread, --stages)\n", a.c_str());
      return 2;
    }
  }
  const char* dev = nullptr;
  if (!have_gpu(&dev)) {
    std::printf("bench_dwu_lowrank: no CUDA device\n");
    return 0;
  }
  CudaStream stream;
  const double copy = measure_copy_gbps();
  std::printf("device %s; D2D copy %.0f GB/s (bytes read + written)\n", dev, copy);
  std::printf("JSON {\"bench\":\"copy\",\"gbps\":%.1f}\n", copy);
  std::vector<std::pair<index_t, index_t>> shapes = llama_shapes();
  if (sm > 0) shapes = {{sm, sn}};
  std::vector<int> kds{0, 8, 16, 32, 64};
  if (only_kd >= 0) kds = {only_kd};
  for (int st : stage_list)
  for (int rpt : rpts)
  for (Pol p : pols)
    for (auto [M, N] : shapes)
      for (int kd : kds) {
        const Result r = run_one(stream.get(), int(M), int(N), kd, p, reps, rpt, st);
        std::printf("%-17s rpt %d st %d %6lld x %-6lld kd %2d: %9.1f us  %7.0f GB/s  (%.2f of copy)\n", pol_name(p), rpt, st,
                    (long long)M, (long long)N, kd, r.us, r.gbps, r.gbps / copy);
        std::printf("JSON {\"bench\":\"dwu_lowrank\",\"policy\":\"%s\",\"rows_per_thread\":%d,\"stages\":%d,\"M\":%lld,\"N\":%lld,\"kd\":%d,\"us\":%.2f,\"gbps\":%.1f}\n",
                    pol_name(p), rpt, st, (long long)M, (long long)N, kd, r.us, r.gbps);
      }
  // The models' updates at kd = 32 (one group per GPU, r = 16), bf16 SR: 7B, 32 layers × (q, k, v, o
  // at 4096², gate and up at 11008 × 4096, down at 4096 × 11008); TinyLlama, 22 layers × (q, o at
  // 2048², k, v at 256 × 2048, gate and up at 5632 × 2048, down at 2048 × 5632).
  if (sm == 0 && (only_kd < 0 || only_kd == 32))
    for (int st : stage_list)
    for (int rpt : rpts) {
      auto us = [&](int M, int N) { return run_one(stream.get(), M, N, 32, Pol::Sr, reps, rpt, st).us; };
      const double q = us(4096, 4096), gu = us(11008, 4096), d = us(4096, 11008);
      const double total_ms = 32 * (4 * q + 2 * gu + d) / 1e3;
      const double floor_ms = 32.0 * (4.0 * 4096 * 4096 + 3.0 * 11008 * 4096) * 4.0 / (copy * 1e9) * 1e3;
      std::printf("7B, 224 updates at kd 32 (bf16 SR, rows per thread %d, stages %d): %.2f ms; the W traffic at the copy rate: %.2f ms\n",
                  rpt, st, total_ms, floor_ms);
      std::printf("JSON {\"bench\":\"dwu_lowrank_7b_total\",\"rows_per_thread\":%d,\"stages\":%d,\"ms\":%.3f,\"copy_floor_ms\":%.3f}\n",
                  rpt, st, total_ms, floor_ms);
      const double tq = us(2048, 2048), tk = us(256, 2048), tg = us(5632, 2048), td = us(2048, 5632);
      const double ttotal = 22 * (2 * tq + 2 * tk + 2 * tg + td) / 1e3;
      const double tfloor = 22.0 * (2.0 * 2048 * 2048 + 2.0 * 256 * 2048 + 3.0 * 5632 * 2048) * 4.0 / (copy * 1e9) * 1e3;
      std::printf("TinyLlama, 154 updates at kd 32 (bf16 SR, rows per thread %d, stages %d): %.2f ms; the W traffic at the copy rate: %.2f ms\n",
                  rpt, st, ttotal, tfloor);
      std::printf("JSON {\"bench\":\"dwu_lowrank_tiny_total\",\"rows_per_thread\":%d,\"stages\":%d,\"ms\":%.3f,\"copy_floor_ms\":%.3f}\n",
                  rpt, st, ttotal, tfloor);
    }
  return 0;
}
