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
// (rows per thread: the kernel's two thread tilings, same bits; both unless given)
// Every "JSON " line is one machine-readable record.
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_bench_util.hpp"
#include "hdpissa/backend/cuda/dwu_lowrank.cuh"

using namespace hdpissa;
using namespace hdpissa::bench;
namespace ck = hdpissa::cuda_kernels;

namespace {

// ---- experiment (session 18; run in session 19: bits equal, 1.19–1.34× faster, now the library
// kernel's SR vector path, so "library" and "words" below time the same code): the SR epilogue on
// 32-bit words -------------------------------------------------------------------------------------
// The library kernel's epilogue costs ≈ 51 instructions per element (c23: Nsight Compute, PTX), ≈ 20
// of them unpacking and repacking 16-bit values. This copy of the kernel (bf16 SR, 8 rows per
// thread, full aligned tiles only) keeps both bf16 of a 32-bit word in place: the old values are
// `w << 16` and `w & 0xffff0000`, the rounded results `(u + r) >> 16` and `(u + r) & 0xffff0000`
// OR-ed back, NaN (the rule's round-to-nearest branch: canonical 0x7fc0; ±inf round the same either
// way) by a select, the element index from a per-row base. The same rule and stream: the bench
// checks its W bits against the library kernel's before it times it.
// The SR stream's 16 random bits of an element: the library's (splitmix64 of key ^ index, ≈ 25
// instructions per element) and, for the second experiment (session 19, not yet run), a cheaper
// candidate: the 64-bit key ^ index folded to 32 bits by one multiply-add, then murmur3's fmix32
// (≈ 10 instructions). A different stream (the bits differ by design): timed only, to measure what
// the hash costs in the kernel before the SR stream's definition is changed (CPU and GPU share
// sr_bits_keyed, so a change there keeps them equal).
struct SplitmixBits {
  __device__ static std::uint32_t bits(std::uint64_t key, std::uint64_t index) { return sr_bits_keyed(key, index); }
};
struct Fmix32Bits {
  __device__ static std::uint32_t bits(std::uint64_t key, std::uint64_t index) {
    const std::uint64_t x = key ^ index;
    std::uint32_t h = std::uint32_t(x) * 0x9E3779B1u + std::uint32_t(x >> 32);
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h >> 16;
  }
};

template <class Hash>
__global__ void __launch_bounds__(ck::DwuLowrank::kThreads, 2)
    dwu_lowrank_sr_words(Bf16WStorage o, const float* __restrict__ L, index_t ldl, const float* __restrict__ R,
                         index_t ldr, int M, int N, int kd, float alpha) {
  constexpr int BM = ck::DwuLowrank::kBM, BN = ck::DwuLowrank::kBN, P = ck::DwuLowrank::kPer;
  constexpr int T = ck::DwuLowrank::kThreads, H = P / 2, HALF = BN / 2;
  extern __shared__ float smem[];
  float* Rs = smem;
  float* Ls = smem + kd * BN;
  std::uint16_t* Ws = reinterpret_cast<std::uint16_t*>(Ls + kd * BM);
  const int tid = int(threadIdx.x), tx = tid & 31, ty = tid >> 5;
  const int n0 = int(blockIdx.x) * BN;
  const int cb[2] = {tx * H, HALF + tx * H};
  for (int i = tid; i < kd * BN; i += T) {
    const int k = i / BN, c = i - k * BN;
    Rs[i] = R[index_t(k) * ldr + n0 + c];
  }
  const std::uint64_t key = sr_step_key(o.seed, o.step);
  const int tiles = M / BM;
  for (int t = int(blockIdx.y); t < tiles; t += int(gridDim.y)) {
    const int m0 = t * BM;
    __syncthreads();
    for (int i = tid; i < kd * BM; i += T) {
      const int k = i / BM, r = i - k * BM;
      Ls[i] = L[index_t(m0 + r) * ldl + k];
    }
#pragma unroll
    for (int i = 0; i < P; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        ck::copy8_async(Ws + (ty * P + i) * BN + cb[h], o.w + index_t(m0 + ty * P + i) * o.ldw + n0 + cb[h]);
    ck::copy_async_commit();
    __syncthreads();
    float acc[P][P];
#pragma unroll
    for (int i = 0; i < P; ++i)
#pragma unroll
      for (int j = 0; j < P; ++j) acc[i][j] = 0.f;
#pragma unroll 4
    for (int k = 0; k < kd; ++k) {
      const float4 r0 = *reinterpret_cast<const float4*>(Rs + k * BN + cb[0]);
      const float4 r1 = *reinterpret_cast<const float4*>(Rs + k * BN + cb[1]);
      const float4 l0 = *reinterpret_cast<const float4*>(Ls + k * BM + ty * P);
      const float4 l1 = *reinterpret_cast<const float4*>(Ls + k * BM + ty * P + 4);
      const float rv[P] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
      const float lv[P] = {l0.x, l0.y, l0.z, l0.w, l1.x, l1.y, l1.z, l1.w};
#pragma unroll
      for (int i = 0; i < P; ++i)
#pragma unroll
        for (int j = 0; j < P; ++j) acc[i][j] = fmaf(lv[i], rv[j], acc[i][j]);
    }
    ck::copy_async_wait_all();
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int row = m0 + ty * P + i;
      const std::uint64_t rbase = o.offset + std::uint64_t(index_t(row) * o.cols);
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int c0 = n0 + cb[h];
        const uint2 wv = *reinterpret_cast<const uint2*>(Ws + (ty * P + i) * BN + cb[h]);
        const std::uint64_t ib = rbase + std::uint64_t(c0);
        std::uint32_t outw[2];
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const std::uint32_t w = q ? wv.y : wv.x;
          const float s_lo = __uint_as_float(w << 16) + __fmul_rn(alpha, acc[i][h * H + 2 * q]);
          const float s_hi = __uint_as_float(w & 0xffff0000u) + __fmul_rn(alpha, acc[i][h * H + 2 * q + 1]);
          const std::uint32_t u_lo = __float_as_uint(s_lo), u_hi = __float_as_uint(s_hi);
          std::uint32_t b_lo = (u_lo + Hash::bits(key, ib + 2 * q)) >> 16;
          std::uint32_t b_hi = (u_hi + Hash::bits(key, ib + 2 * q + 1)) & 0xffff0000u;
          if ((u_lo & 0x7fffffffu) > 0x7f800000u) b_lo = 0x7fc0u;
          if ((u_hi & 0x7fffffffu) > 0x7f800000u) b_hi = 0x7fc00000u;
          outw[q] = b_hi | b_lo;
        }
        *reinterpret_cast<uint2*>(o.w + index_t(row) * o.ldw + c0) = uint2{outw[0], outw[1]};
      }
    }
  }
}

/// The words kernel's launch: the library launcher's grid; full aligned tiles only.
template <class Hash = SplitmixBits>
void launch_sr_words(cudaStream_t s, const Bf16WStorage& o, const float* L, index_t ldl, const float* R, index_t ldr,
                     int M, int N, int kd, float alpha) {
  HDPISSA_REQUIRE(M % ck::DwuLowrank::kBM == 0 && N % ck::DwuLowrank::kBN == 0 && o.ldw % 4 == 0 &&
                      reinterpret_cast<std::uintptr_t>(o.w) % 8 == 0 && o.policy == WPrecision::Bf16StochasticRounding,
                  "bench_dwu_lowrank: the words kernel takes full aligned tiles of a bf16-SR W only, found ", M, " x ", N);
  int dev = 0, sms = 0;
  HDPISSA_CUDA_CHECK(cudaGetDevice(&dev));
  HDPISSA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const int strips = N / ck::DwuLowrank::kBN, tiles = M / ck::DwuLowrank::kBM;
  const int rows = std::max(1, std::min(tiles, (4 * sms + strips - 1) / strips));
  const std::size_t smem = ck::DwuLowrank::smem_bytes(kd, true);
  if (smem > 48 * 1024)
    HDPISSA_CUDA_CHECK(
        cudaFuncSetAttribute(dwu_lowrank_sr_words<Hash>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  dwu_lowrank_sr_words<Hash><<<dim3(unsigned(strips), unsigned(rows)), ck::DwuLowrank::kThreads, smem, s>>>(o, L, ldl, R, ldr, M,
                                                                                                      N, kd, alpha);
  HDPISSA_CUDA_CHECK_LAUNCH("dwu_lowrank_sr_words");
}

/// The words kernel against the library's (8 rows per thread) from the same W: bits equal, and the
/// best time of each. W holds varied values plus ±inf and NaNs.
struct WordsResult {
  bool equal;
  double lib_us, words_us, fmix_us;  // fmix_us: the words kernel with the cheaper hash (other bits)
};
WordsResult run_words(cudaStream_t s, int M, int N, int kd, int reps) {
  const std::size_t mn = std::size_t(M) * std::size_t(N);
  const int kk = std::max(kd, 1);
  DeviceBuffer<float> L(std::size_t(M) * kk), R(std::size_t(kk) * N), Wf(mn);
  GB b(s, {});
  b.fill_normal(MatrixView<float>(L.get(), M, kk), 21);
  b.fill_normal(MatrixView<float>(R.get(), kk, N), 22);
  b.fill_normal(MatrixView<float>(Wf.get(), M, N), 23);
  DeviceBuffer<std::uint16_t> W0(mn), W1(mn), W2(mn);
  cuda_kernels::launch_convert(s, ConstMatrixView<float>(Wf.get(), M, N),
                               MatrixView<__nv_bfloat16>(reinterpret_cast<__nv_bfloat16*>(W0.get()), M, N));
  const std::uint16_t special[4] = {0x7f80u, 0xff80u, 0x7fc1u, 0xffffu};  // +inf, -inf, NaN, NaN
  HDPISSA_CUDA_CHECK(cudaMemcpyAsync(W0.get() + 5, special, sizeof special, cudaMemcpyHostToDevice, s));
  HDPISSA_CUDA_CHECK(cudaMemcpyAsync(W1.get(), W0.get(), mn * 2, cudaMemcpyDeviceToDevice, s));
  HDPISSA_CUDA_CHECK(cudaMemcpyAsync(W2.get(), W0.get(), mn * 2, cudaMemcpyDeviceToDevice, s));
  auto storage = [&](std::uint16_t* w, std::uint64_t step) {
    Bf16WStorage o;
    o.policy = WPrecision::Bf16StochasticRounding;
    o.w = w, o.ldw = N, o.cols = N, o.seed = 7, o.step = step, o.offset = 12345;
    return o;
  };
  // a large alpha so that the rule moves many elements (and one product overflows to inf nowhere:
  // the values stay within bf16's range)
  const float alpha = 0.05f;
  ck::launch_dwu_lowrank(s, storage(W1.get(), 3), L.get(), kk, R.get(), N, M, N, kd, alpha);
  launch_sr_words(s, storage(W2.get(), 3), L.get(), kk, R.get(), N, M, N, kd, alpha);
  std::vector<std::uint16_t> h1(mn), h2(mn);
  HDPISSA_CUDA_CHECK(cudaStreamSynchronize(s));
  HDPISSA_CUDA_CHECK(cudaMemcpy(h1.data(), W1.get(), mn * 2, cudaMemcpyDeviceToHost));
  HDPISSA_CUDA_CHECK(cudaMemcpy(h2.data(), W2.get(), mn * 2, cudaMemcpyDeviceToHost));
  const bool equal = std::memcmp(h1.data(), h2.data(), mn * 2) == 0;
  EventTimer t(s);
  double best[3] = {1e30, 1e30, 1e30};
  for (int v = 0; v < 3; ++v)
    for (int i = 0; i < reps + 3; ++i) {
      t.start();
      if (v == 0) ck::launch_dwu_lowrank(s, storage(W1.get(), std::uint64_t(i)), L.get(), kk, R.get(), N, M, N, kd, 1e-3f);
      else if (v == 1) launch_sr_words(s, storage(W2.get(), std::uint64_t(i)), L.get(), kk, R.get(), N, M, N, kd, 1e-3f);
      else launch_sr_words<Fmix32Bits>(s, storage(W2.get(), std::uint64_t(i)), L.get(), kk, R.get(), N, M, N, kd, 1e-3f);
      const double ms = t.stop_ms();
      if (i >= 3) best[v] = std::min(best[v], ms);
    }
  return {equal, best[0] * 1e3, best[1] * 1e3, best[2] * 1e3};
}

enum class Pol { Sr, Comp, Fp32 };
const char* pol_name(Pol p) { return p == Pol::Sr ? "bf16-sr" : p == Pol::Comp ? "bf16-compensated" : "fp32"; }

struct Result {
  double us;
  double gbps;  // W bytes read + written (and the compensation buffer's) per second
};

Result run_one(cudaStream_t s, int M, int N, int kd, Pol pol, int reps, int rpt) {
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
    time([&](int) { ck::launch_dwu_lowrank(s, o, L.get(), std::max(kd, 1), R.get(), N, M, N, kd, 1e-6f, 0, rpt); });
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
      ck::launch_dwu_lowrank(s, o, L.get(), std::max(kd, 1), R.get(), N, M, N, kd, 1e-3f, 0, rpt);
    });
    bytes = (pol == Pol::Comp ? 8.0 : 4.0) * double(mn);
  }
  return {best * 1e3, bytes / (best * 1e-3) / 1e9};
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 20, only_kd = -1, sm = 0, sn = 0;
  std::vector<int> rpts{8, 4};
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
      std::fprintf(stderr, "bench_dwu_lowrank: unknown argument '%s' (expected --reps, --shape, --kd, --policy, --rows-per-thread)\n", a.c_str());
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
  for (int rpt : rpts)
  for (Pol p : pols)
    for (auto [M, N] : shapes)
      for (int kd : kds) {
        const Result r = run_one(stream.get(), int(M), int(N), kd, p, reps, rpt);
        std::printf("%-17s rpt %d %6lld x %-6lld kd %2d: %9.1f us  %7.0f GB/s  (%.2f of copy)\n", pol_name(p), rpt,
                    (long long)M, (long long)N, kd, r.us, r.gbps, r.gbps / copy);
        std::printf("JSON {\"bench\":\"dwu_lowrank\",\"policy\":\"%s\",\"rows_per_thread\":%d,\"M\":%lld,\"N\":%lld,\"kd\":%d,\"us\":%.2f,\"gbps\":%.1f}\n",
                    pol_name(p), rpt, (long long)M, (long long)N, kd, r.us, r.gbps);
      }
  // The experiment: the SR epilogue on 32-bit words (above), bits against the library kernel, then
  // the time of each, at the shapes whose tiles are full (all of llama_shapes()).
  if (only_kd < 0 || only_kd == 0 || only_kd == 32)
    for (int kd : {0, 32}) {
      if (only_kd >= 0 && kd != only_kd) continue;
      for (auto [M, N] : shapes) {
        if (M % ck::DwuLowrank::kBM != 0 || N % ck::DwuLowrank::kBN != 0) continue;
        const WordsResult w = run_words(stream.get(), int(M), int(N), kd, reps);
        std::printf("bf16-sr words      %6lld x %-6lld kd %2d: library %8.1f us, words %8.1f us (%.2fx); bits %s; "
                    "words + fmix32 hash %8.1f us (%.2fx of words)\n",
                    (long long)M, (long long)N, kd, w.lib_us, w.words_us, w.lib_us / w.words_us,
                    w.equal ? "equal" : "DIFFER", w.fmix_us, w.words_us / w.fmix_us);
        std::printf("JSON {\"bench\":\"dwu_lowrank_words\",\"M\":%lld,\"N\":%lld,\"kd\":%d,\"library_us\":%.2f,"
                    "\"words_us\":%.2f,\"bits_equal\":%s,\"fmix32_us\":%.2f}\n",
                    (long long)M, (long long)N, kd, w.lib_us, w.words_us, w.equal ? "true" : "false", w.fmix_us);
      }
    }
  // The 7B model's 224 updates at kd = 32 (one group per GPU, r = 16): 32 layers × (q, k, v, o at
  // 4096², gate and up at 11008 × 4096, down at 4096 × 11008), bf16 SR, summed from the rows above.
  if (sm == 0 && (only_kd < 0 || only_kd == 32))
    for (int rpt : rpts) {
      const double q = run_one(stream.get(), 4096, 4096, 32, Pol::Sr, reps, rpt).us;
      const double gu = run_one(stream.get(), 11008, 4096, 32, Pol::Sr, reps, rpt).us;
      const double d = run_one(stream.get(), 4096, 11008, 32, Pol::Sr, reps, rpt).us;
      const double total_ms = 32 * (4 * q + 2 * gu + d) / 1e3;
      const double floor_ms = 32.0 * (4.0 * 4096 * 4096 + 3.0 * 11008 * 4096) * 4.0 / (copy * 1e9) * 1e3;
      std::printf("7B, 224 updates at kd 32 (bf16 SR, rows per thread %d): %.2f ms; the W traffic at the copy rate: %.2f ms\n",
                  rpt, total_ms, floor_ms);
      std::printf("JSON {\"bench\":\"dwu_lowrank_7b_total\",\"rows_per_thread\":%d,\"ms\":%.3f,\"copy_floor_ms\":%.3f}\n",
                  rpt, total_ms, floor_ms);
    }
  return 0;
}
