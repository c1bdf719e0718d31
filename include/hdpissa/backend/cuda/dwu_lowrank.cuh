#pragma once
/// The Direct Weight Update's GEMM for small inner dimensions (2Kr ≤ 64, e.g. one group per GPU at
/// r = 16) on CUDA cores: W ⊕= alpha · L · R with L (out, 2Kr) and R (2Kr, in), the update written
/// into W in the same pass.
///
/// Why a second kernel next to the sm_90a 3xTF32 one (dwu_gemm_sm90.cuh): at 2Kr = 32 a tile's
/// main loop is one 32-deep step, so the tensor-core kernel is a load → three wgmma passes →
/// epilogue chain with nothing to overlap; the 7B trainer's step measured 37 ms for 224 layers whose
/// W traffic (bf16 read + write) takes ≈ 5.5 ms at the H200's copy rate. Here each thread keeps an
/// 8 × 8 block of W: its bf16 W row segments (8 bytes each, 256 contiguous bytes per warp) are
/// copied to shared memory with cp.async in their own group (one stage: issued after the tile's L,
/// waited for only before the epilogue, so these reads overlap the k loop's FMAs), and 2Kr = 32
/// is 32 fp32 FMAs per element — about what the W traffic costs, on any CUDA GPU.
///
/// Arithmetic (the contract the tests check): acc(i, j) = Σ_k L(i, k)·R(k, j) as one fmaf chain in
/// k order from 0 (plain fp32, no TF32: at least as accurate as 3xTF32), Δ = alpha·acc rounded
/// (no contraction with the rule), then the W-precision rule of each element — the same functions
/// as the CPU (core/w_precision.hpp) — or, for fp32 W, w = fmaf(alpha, acc, w) like the sm_90a
/// kernel's epilogue. Deterministic: every worker with the same inputs writes the same bits.
/// With a bf16 storage whose `amax` is set, the epilogue also keeps max |w| over the elements it
/// writes and maxes it into *amax (one atomicMax per warp; max is exact in any order), so an FP8
/// copy of W needs no amax pass of its own.

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <type_traits>
#include <vector>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/core/view.hpp"
#include "hdpissa/core/w_precision.hpp"

namespace hdpissa::cuda_kernels {

/// Tile of dwu_lowrank_kernel: 256 threads as 32 (columns) × 8 (rows), each with 8 rows × 8
/// columns — columns 4·tx…4·tx+3 and 128+4·tx…128+4·tx+3 of the block, so that every shared-memory
/// vector load of a warp is 512 contiguous bytes (no bank conflicts) and every global access of a
/// warp 256 contiguous bytes per half. A block covers 64 rows × 256 columns and walks down its
/// column strip tile by tile (the strip's R block stays in shared memory).
struct DwuLowrank {
  static constexpr int kThreads = 256, kBM = 64, kBN = 256, kPer = 8, kMaxKd = 64;
  /// Threads of a block whose threads keep `rows` rows × 8 columns each (8: the default, 256
  /// threads; 4: 512 threads at half the registers, so twice the warps per SM). Every element's
  /// fmaf chain is the same either way: the bits do not depend on it.
  static constexpr int threads(int rows) { return 32 * kBM / rows; }
  /// Dynamic shared memory for inner dimension kd and `stages` tile buffers: the R block (kd × 256)
  /// once, and per stage the L tile (kd × 64) plus, for a bf16 W storage, the W tile (64 × 256 bf16)
  /// in flight during the products. One stage: 72 KiB at kd = 32 and 112 KiB at kd = 64 (bf16 W);
  /// two stages (the next tile's L and W copied while this one is computed): 112 KiB at kd = 32.
  /// Callers check the one-stage size against the device's per-block opt-in limit (fits).
  static constexpr std::size_t smem_bytes(index_t kd, bool bf16_w, int stages = 1) {
    return std::size_t(kd) * kBN * sizeof(float) +
           std::size_t(stages) * (std::size_t(kd) * kBM * sizeof(float) +
                                  (bf16_w ? std::size_t(kBM) * kBN * sizeof(std::uint16_t) : std::size_t(0)));
  }
  /// Whether the kernel fits inner dimension kd on `device` (the shared-memory opt-in limit; cached
  /// per device).
  static bool fits(index_t kd, bool bf16_w, int device) {
    static std::mutex mu;
    static std::vector<int> optin;  // -1: not asked yet
    std::lock_guard<std::mutex> lock(mu);
    if (device < 0) return false;
    if (optin.size() <= std::size_t(device)) optin.resize(std::size_t(device) + 1, -1);
    int& o = optin[std::size_t(device)];
    if (o < 0 && cudaDeviceGetAttribute(&o, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) != cudaSuccess) o = 0;
    return kd >= 1 && kd <= kMaxKd && smem_bytes(kd, bf16_w) <= std::size_t(o);
  }
};

/// Where the update goes: a bf16 W storage (rule per element) or an fp32 W (w = fmaf(alpha, acc, w)).
struct DwuLowrankFp32W {
  float* w;
  index_t ldw;
};

/// An 8-byte global → shared copy that holds no registers (cp.async on sm_80+; a plain copy
/// before), its commit and the wait for every copy this thread issued.
__device__ inline void copy8_async(void* smem_dst, const void* gmem_src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const auto dst = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(dst), "l"(gmem_src) : "memory");
#else
  *static_cast<uint2*>(smem_dst) = *static_cast<const uint2*>(gmem_src);
#endif
}
/// The same for 4 bytes (the R block and the transposed L tile: one float each).
__device__ inline void copy4_async(void* smem_dst, const void* gmem_src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const auto dst = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(gmem_src) : "memory");
#else
  *static_cast<float*>(smem_dst) = *static_cast<const float*>(gmem_src);
#endif
}
__device__ inline void copy_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
__device__ inline void copy_async_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}
/// Wait until at most one committed group of this thread's copies is still in flight.
__device__ inline void copy_async_wait_prior() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group 1;\n" ::: "memory");
#endif
}

/// Pol: the bf16 storage's policy (one instantiation each, so the SR path does not carry the
/// compensated one's registers); ignored for fp32 W. S: tile buffers (1, or 2: the next row tile's
/// L and W are copied with cp.async while this one's products and epilogue run). The R block and
/// the L tiles are cp.async copies too (no load → store chains: the per-block start was ≈ kd
/// dependent L2 round trips). Neither PR nor S changes any element's arithmetic: the same bits.
template <class Out, WPrecision Pol = WPrecision::Fp32Master, int PR = DwuLowrank::kPer, int S = 1>
__global__ void __launch_bounds__(DwuLowrank::threads(PR), 2)
    dwu_lowrank_kernel(Out o, const float* __restrict__ L, index_t ldl, const float* __restrict__ R, index_t ldr,
                       int M, int N, int kd, float alpha) {
  static_assert(PR == 8 || PR == 4, "dwu_lowrank_kernel: 8 or 4 rows per thread");
  static_assert(S == 1 || S == 2, "dwu_lowrank_kernel: 1 or 2 stages");
  constexpr int BM = DwuLowrank::kBM, BN = DwuLowrank::kBN, P = DwuLowrank::kPer, T = DwuLowrank::threads(PR);
  constexpr int H = P / 2, HALF = BN / 2;  // a thread's two column groups of 4, 128 columns apart
  constexpr bool kBf16 = std::is_same_v<Out, Bf16WStorage>;
  extern __shared__ float smem[];
  float* Rs = smem;  // [kd][BN]
  // stage s: Ls_s [kd][BM], then (bf16 storage) Ws_s [BM][BN] bf16 bits: each thread's own 8 rows
  // × 8 columns, copied asynchronously and read back by the same thread in the epilogue.
  const int stage_floats = kd * BM + (kBf16 ? BM * BN / 2 : 0);
  auto Ls_of = [&](int st) { return smem + kd * BN + st * stage_floats; };
  auto Ws_of = [&](int st) { return reinterpret_cast<std::uint16_t*>(Ls_of(st) + kd * BM); };
  const int tid = int(threadIdx.x), tx = tid & 31, ty = tid >> 5;
  const int n0 = int(blockIdx.x) * BN;
  const int cb[2] = {tx * H, HALF + tx * H};  // the two groups' first column within the block
  for (int i = tid; i < kd * BN; i += T) {
    const int k = i / BN, c = i - k * BN;
    if (n0 + c < N) copy4_async(Rs + i, R + index_t(k) * ldr + n0 + c);
    else Rs[i] = 0.f;
  }
  std::uint64_t key = 0;
  bool vec[2];  // a group's 4 columns in range and its W address aligned for one vector access
  {
    const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(o.w);
    const bool al = kBf16 ? o.ldw % 4 == 0 && (base & 7u) == 0 : o.ldw % 4 == 0 && (base & 15u) == 0;
    for (int h = 0; h < 2; ++h) vec[h] = al && n0 + cb[h] + H <= N;
  }
  if constexpr (kBf16) key = sr_step_key(o.seed, o.step);
  // Copies of row tile t into stage st: the L tile transposed (consecutive threads take consecutive
  // rows: conflict-free; the tile is 64 × kd floats of an L2-resident L) and this thread's W rows.
  auto issue_l = [&](int t, int st) {
    const int m0 = t * BM;
    float* Ls = Ls_of(st);
    for (int i = tid; i < kd * BM; i += T) {
      const int k = i / BM, r = i - k * BM;
      if (m0 + r < M) copy4_async(Ls + i, L + index_t(m0 + r) * ldl + k);
      else Ls[i] = 0.f;
    }
  };
  auto issue_w = [&](int t, int st) {
    const int m0 = t * BM;
    if constexpr (kBf16) {
      std::uint16_t* Ws = Ws_of(st);
#pragma unroll
      for (int i = 0; i < PR; ++i) {
        const int row = m0 + ty * PR + i;
        if (row >= M) break;
#pragma unroll
        for (int h = 0; h < 2; ++h)
          if (vec[h]) copy8_async(Ws + (ty * PR + i) * BN + cb[h], o.w + index_t(row) * o.ldw + n0 + cb[h]);
      }
    } else {
      (void)t, (void)st, (void)m0;
    }
  };
  auto issue = [&](int t, int st) {
    issue_l(t, st);
    issue_w(t, st);
  };
  // max |w| over this thread's updated elements, by the bits (Bf16WStorage::amax; bf16 storage only)
  std::uint32_t amax = 0;
  const int tiles = (M + BM - 1) / BM, ystride = int(gridDim.y);
  if constexpr (S == 2) {
    if (int(blockIdx.y) < tiles) issue(int(blockIdx.y), 0);
    copy_async_commit();  // group: R and the first tile
  }
  int it = 0;
  for (int t = int(blockIdx.y); t < tiles; t += ystride, ++it) {
    const int m0 = t * BM;
    const int st = S == 2 ? (it & 1) : 0;
    // Every thread is done with the stage about to be refilled (the previous tile's products read
    // all of its L tile).
    if (it > 0) __syncthreads();
    if constexpr (S == 2) {
      if (t + ystride < tiles) issue(t + ystride, st ^ 1);
      copy_async_commit();     // (an empty group on the last tile keeps the count)
      copy_async_wait_prior(); // this tile's group (and R) have landed
    } else {
      // Two groups: R (first tile) and the L tile, then this thread's W rows, which only this
      // thread reads (in the epilogue): the products start once L has landed, the W reads overlap
      // them.
      issue_l(t, 0);
      copy_async_commit();
      issue_w(t, 0);
      copy_async_commit();
      copy_async_wait_prior();
    }
    __syncthreads();  // every thread's L (and R) copies visible
    const float* Ls = Ls_of(st);
    const std::uint16_t* Ws = kBf16 ? Ws_of(st) : nullptr;
    float acc[PR][P];
#pragma unroll
    for (int i = 0; i < PR; ++i)
#pragma unroll
      for (int j = 0; j < P; ++j) acc[i][j] = 0.f;
#pragma unroll 4
    for (int k = 0; k < kd; ++k) {
      const float4 r0 = *reinterpret_cast<const float4*>(Rs + k * BN + cb[0]);
      const float4 r1 = *reinterpret_cast<const float4*>(Rs + k * BN + cb[1]);
      const float rv[P] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
      float lv[PR];
#pragma unroll
      for (int q = 0; q < PR / 4; ++q) {
        const float4 l = *reinterpret_cast<const float4*>(Ls + k * BM + ty * PR + 4 * q);
        lv[4 * q] = l.x, lv[4 * q + 1] = l.y, lv[4 * q + 2] = l.z, lv[4 * q + 3] = l.w;
      }
#pragma unroll
      for (int i = 0; i < PR; ++i)
#pragma unroll
        for (int j = 0; j < P; ++j) acc[i][j] = fmaf(lv[i], rv[j], acc[i][j]);
    }
    if constexpr (S == 1) copy_async_wait_all();  // this thread's W rows (S = 2: landed with the tile's group)
#pragma unroll
    for (int i = 0; i < PR; ++i) {
      const int row = m0 + ty * PR + i;
      if (row >= M) break;
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int c0 = n0 + cb[h];  // first global column of this group
        if constexpr (kBf16 && Pol == WPrecision::Bf16StochasticRounding) {
          if (vec[h]) {
            // The SR rule on 32-bit words (both bf16 of a word in place: the old values are
            // `w << 16` and `w & 0xffff0000`, the results `(u + r) >> 16` and `(u + r) & 0xffff0000`;
            // a NaN sum gives the canonical 0x7fc0 as bf16_bits_sr does, ±inf round the same either
            // way): the same bits as Bf16StochasticRounding::apply_keyed, ≈ 20 fewer instructions.
            const uint2 wv = *reinterpret_cast<const uint2*>(Ws + (ty * PR + i) * BN + cb[h]);
            const std::uint64_t ib = o.offset + std::uint64_t(index_t(row) * o.cols + c0);
            std::uint32_t nw[2];
            // The group's 4 random fields (sr_bits_keyed): one hash when its first index is a multiple
            // of 4 (always, for a layer whose offset and columns are).
            std::uint32_t rb[4];
            if ((ib & 3u) == 0) {
              const std::uint64_t hh = splitmix64(key ^ (ib >> 2));
              rb[0] = std::uint32_t(hh) & 0xffffu, rb[1] = std::uint32_t(hh) >> 16;
              rb[2] = std::uint32_t(hh >> 32) & 0xffffu, rb[3] = std::uint32_t(hh >> 48);
            } else {
#pragma unroll
              for (int j = 0; j < 4; ++j) rb[j] = sr_bits_keyed(key, ib + j);
            }
#pragma unroll
            for (int q = 0; q < 2; ++q) {
              const std::uint32_t w = q ? wv.y : wv.x;
              const float s_lo = __uint_as_float(w << 16) + __fmul_rn(alpha, acc[i][h * H + 2 * q]);
              const float s_hi = __uint_as_float(w & 0xffff0000u) + __fmul_rn(alpha, acc[i][h * H + 2 * q + 1]);
              const std::uint32_t u_lo = __float_as_uint(s_lo), u_hi = __float_as_uint(s_hi);
              std::uint32_t b_lo = (u_lo + rb[2 * q]) >> 16;
              std::uint32_t b_hi = (u_hi + rb[2 * q + 1]) & 0xffff0000u;
              if ((u_lo & 0x7fffffffu) > 0x7f800000u) b_lo = 0x7fc0u;
              if ((u_hi & 0x7fffffffu) > 0x7f800000u) b_hi = 0x7fc00000u;
              nw[q] = b_hi | b_lo;
              amax = max(amax, max(nw[q] & 0x7fff0000u, (nw[q] << 16) & 0x7fff0000u));
            }
            *reinterpret_cast<uint2*>(o.w + index_t(row) * o.ldw + c0) = uint2{nw[0], nw[1]};
          } else {
#pragma unroll
            for (int j = 0; j < H; ++j) {
              const int col = c0 + j;
              if (col >= N) continue;
              std::uint16_t& e = o.w[index_t(row) * o.ldw + col];
              Bf16StochasticRounding::apply_keyed(e, __fmul_rn(alpha, acc[i][h * H + j]), key,
                                                  o.offset + std::uint64_t(index_t(row) * o.cols + col));
              amax = max(amax, bf16_abs_bits_f32(e));
            }
          }
        } else if constexpr (kBf16) {
          std::uint16_t wb[H];
          if (vec[h]) {
            const uint2 wv = *reinterpret_cast<const uint2*>(Ws + (ty * PR + i) * BN + cb[h]);
            wb[0] = std::uint16_t(wv.x & 0xffffu), wb[1] = std::uint16_t(wv.x >> 16);
            wb[2] = std::uint16_t(wv.y & 0xffffu), wb[3] = std::uint16_t(wv.y >> 16);
          } else {
#pragma unroll
            for (int j = 0; j < H; ++j) wb[j] = c0 + j < N ? o.w[index_t(row) * o.ldw + c0 + j] : std::uint16_t(0);
          }
#pragma unroll
          for (int j = 0; j < H; ++j) {
            const int col = c0 + j;
            if (col >= N) continue;
            const float delta = __fmul_rn(alpha, acc[i][h * H + j]);  // Δ rounded first, as the other paths
            if constexpr (Pol == WPrecision::Bf16Compensated)
              Bf16Compensated{}(wb[j], o.c[index_t(row) * o.ldc + col], delta);
            else
              Bf16StochasticRounding::apply_keyed(wb[j], delta, key, o.offset + std::uint64_t(index_t(row) * o.cols + col));
            amax = max(amax, bf16_abs_bits_f32(wb[j]));
          }
          if (vec[h]) {
            const uint2 nv{std::uint32_t(wb[0]) | (std::uint32_t(wb[1]) << 16),
                           std::uint32_t(wb[2]) | (std::uint32_t(wb[3]) << 16)};
            *reinterpret_cast<uint2*>(o.w + index_t(row) * o.ldw + c0) = nv;
          } else {
#pragma unroll
            for (int j = 0; j < H; ++j)
              if (c0 + j < N) o.w[index_t(row) * o.ldw + c0 + j] = wb[j];
          }
        } else {
          float* w = o.w + index_t(row) * o.ldw + c0;
          if (vec[h]) {
            float4 a = *reinterpret_cast<const float4*>(w);
            a.x = fmaf(alpha, acc[i][h * H + 0], a.x), a.y = fmaf(alpha, acc[i][h * H + 1], a.y);
            a.z = fmaf(alpha, acc[i][h * H + 2], a.z), a.w = fmaf(alpha, acc[i][h * H + 3], a.w);
            *reinterpret_cast<float4*>(w) = a;
          } else {
#pragma unroll
            for (int j = 0; j < H; ++j)
              if (c0 + j < N) w[j] = fmaf(alpha, acc[i][h * H + j], w[j]);
          }
        }
      }
    }
  }
  if constexpr (kBf16) {
    if (o.amax) {  // one atomicMax per warp (the order of the maxima does not matter: max is exact)
      for (int off = 16; off > 0; off >>= 1) amax = max(amax, __shfl_xor_sync(0xffffffffu, amax, off));
      if ((tid & 31) == 0 && amax != 0u) atomicMax(reinterpret_cast<unsigned int*>(o.amax), amax);
    }
  } else {
    (void)amax;
  }
}

/// The device facts the launcher needs, read once per device: SM count, shared memory per SM and
/// the per-block reservation.
struct DwuLowrankDevice {
  int sms = 0, smem_per_sm = 0, reserved = 0;
  static DwuLowrankDevice of(int device) {  // by value: the cache may grow under another thread
    static std::mutex mu;
    static std::vector<DwuLowrankDevice> cache;
    std::lock_guard<std::mutex> lock(mu);
    if (cache.size() <= std::size_t(device)) cache.resize(std::size_t(device) + 1);
    DwuLowrankDevice& d = cache[std::size_t(device)];
    if (d.sms == 0) {
      HDPISSA_CUDA_CHECK(cudaDeviceGetAttribute(&d.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device));
      HDPISSA_CUDA_CHECK(cudaDeviceGetAttribute(&d.reserved, cudaDevAttrReservedSharedMemoryPerBlock, device));
      HDPISSA_CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, device));
    }
    return d;
  }
  /// Blocks of `smem` dynamic bytes that fit one SM's shared memory (the kernel's launch bounds
  /// allow two).
  int blocks_per_sm(std::size_t smem) const {
    return std::max(1, std::min(2, int(std::size_t(smem_per_sm) / (smem + std::size_t(reserved)))));
  }
};

/// W (M, N) ⊕= alpha · L (M, kd) · R (kd, N) on `stream`; `out` is a Bf16WStorage (its rule per
/// element) or DwuLowrankFp32W. Needs DwuLowrank::fits(kd, …) (the caller checks; larger inner
/// dimensions are the tensor-core kernel's). Any leading dimensions and alignment: unaligned or
/// ragged column blocks take the scalar path. `rows_per_thread`: 8 (256 threads a block) or 4 (512
/// threads, half the registers each). `stages`: 1, 2 (the next row tile copied during this one), or
/// 0 = the default, 1. The grid is one wave (the blocks an SM
/// holds × SMs), each block walking its column strip's row tiles. The same bits for every choice
/// (bench_dwu_lowrank times them).
template <class Out>
inline void launch_dwu_lowrank(cudaStream_t stream, const Out& out, const float* L, index_t ldl, const float* R,
                               index_t ldr, int M, int N, int kd, float alpha, int max_row_blocks = 0,
                               int rows_per_thread = DwuLowrank::kPer, int stages = 0) {
  HDPISSA_REQUIRE(rows_per_thread == 8 || rows_per_thread == 4,
                  "launch_dwu_lowrank: rows_per_thread must be 8 or 4, found ", rows_per_thread);
  HDPISSA_REQUIRE(stages >= 0 && stages <= 2, "launch_dwu_lowrank: stages must be 0 (auto), 1 or 2, found ", stages);
  if (M <= 0 || N <= 0) return;
  constexpr bool kBf16 = std::is_same_v<Out, Bf16WStorage>;
  int dev = 0;
  HDPISSA_CUDA_CHECK(cudaGetDevice(&dev));
  const DwuLowrankDevice d = DwuLowrankDevice::of(dev);
  // Two stages measured slower than one on an H100 (c50: 7B's 224 updates 27.1 against 26.1 ms;
  // the kernel is issue-bound and the second buffer costs spills): one unless asked.
  if (stages == 0) stages = 1;
  const std::size_t smem = DwuLowrank::smem_bytes(kd, kBf16, stages);
  HDPISSA_REQUIRE(stages == 1 || smem + std::size_t(d.reserved) <= std::size_t(d.smem_per_sm),
                  "launch_dwu_lowrank: two stages need ", smem, " bytes of shared memory per block at kd = ", kd,
                  ", more than this device's SM holds (", d.smem_per_sm, "); use stages 1 (the default)");
  const int strips = (N + DwuLowrank::kBN - 1) / DwuLowrank::kBN, tiles = (M + DwuLowrank::kBM - 1) / DwuLowrank::kBM;
  // One wave: the blocks every SM holds at once; each walks tiles / rows of its strip.
  // max_row_blocks > 0 caps it (tests: every block then walks several tiles, as at the 7B shapes).
  int rows = std::max(1, std::min(tiles, d.blocks_per_sm(smem) * d.sms / strips));
  if (max_row_blocks > 0) rows = std::min(rows, max_row_blocks);
  const dim3 grid{unsigned(strips), unsigned(rows), 1u};
  const int threads = DwuLowrank::threads(rows_per_thread);
  auto run = [&](auto kernel) {
    if (smem > 48 * 1024)
      HDPISSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kernel<<<grid, threads, smem, stream>>>(out, L, ldl, R, ldr, M, N, kd, alpha);
    HDPISSA_CUDA_CHECK_LAUNCH("dwu_lowrank_kernel");
  };
  auto pick = [&](auto rule) {
    constexpr WPrecision P = decltype(rule)::value;
    if (rows_per_thread == 4) {
      if (stages == 2) run(dwu_lowrank_kernel<Out, P, 4, 2>);
      else run(dwu_lowrank_kernel<Out, P, 4, 1>);
    } else {
      if (stages == 2) run(dwu_lowrank_kernel<Out, P, 8, 2>);
      else run(dwu_lowrank_kernel<Out, P, 8, 1>);
    }
  };
  if constexpr (kBf16) {
    if (out.policy == WPrecision::Bf16Compensated)
      pick(std::integral_constant<WPrecision, WPrecision::Bf16Compensated>{});
    else
      pick(std::integral_constant<WPrecision, WPrecision::Bf16StochasticRounding>{});
  } else {
    pick(std::integral_constant<WPrecision, WPrecision::Fp32Master>{});
  }
}

}  // namespace hdpissa::cuda_kernels
