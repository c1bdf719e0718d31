#pragma once
/// \file dwu_gemm_sm90.cuh
/// The Direct Weight Update's GEMM as one Hopper (sm_90a) kernel on TF32 tensor cores:
///
///     C (M×N, row-major, ldc) += alpha · P (M×Kd, row-major) · Qᵀ      (Q: N×Kd, row-major)
///
/// i.e. W += −f · [dB | B] · [A − dA; dA] with Q = the packed right operand stored transposed
/// (both operands K-major, as TF32 wgmma requires). Kd = 2Kr is small (256 at K = 8, r = 16), so
/// the GEMM is a stream over C with a short main loop; the kernel keeps each CTA's operand panels
/// in a cp.async pipeline (128-byte-swizzled shared tiles read by wgmma.mma_async) and updates C in
/// its epilogue (optionally after prefetching the C tile into L2 at the start with
/// cp.async.bulk.prefetch.L2: measured neutral on an H200, off in CudaBackend).
///
/// Two precisions, both explicit:
///   - Passes = 3 ("3xTF32", fp32-accurate): each operand x is split in shared memory into
///     hi = rna_tf32(x) and lo = rna_tf32(x − hi); acc += lo_P·hi_Q + hi_P·lo_Q + hi_P·hi_Q with fp32
///     accumulation. Only the lo·lo term (≤ 2⁻²² relative per product) is dropped, so the update is
///     fp32-accurate (tested against an fp64 reference next to cuBLAS SGEMM's own error), at 3× the
///     tensor-core FLOPs instead of CUDA-core SGEMM.
///   - Passes = 1 (plain TF32): operands as stored (the tensor cores read the top 19 bits).
///
/// The kernel body exists only when compiled for sm_90a (CMAKE_CUDA_ARCHITECTURES=90a, the
/// project's default); dwu_gemm_sm90_supported() checks, once per device, that the loaded binary
/// has it and the GPU is compute capability 9.0, so callers fall back to cuBLAS elsewhere.

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <type_traits>
#include <vector>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/core/view.hpp"
#include "hdpissa/core/w_precision.hpp"

namespace hdpissa::cuda_kernels::sm90 {

template <int N>
struct Wgmma;
template <>
struct Wgmma<64> {
  static constexpr int kRegs = 32;
  __device__ static void mma(float* d, std::uint64_t a, std::uint64_t b) {
    asm volatile(
        "{\n"
        "wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}"
        ", %32, %33, 1, 1, 1;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(a), "l"(b));
  }
};
template <>
struct Wgmma<128> {
  static constexpr int kRegs = 64;
  __device__ static void mma(float* d, std::uint64_t a, std::uint64_t b) {
    asm volatile(
        "{\n"
        "wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}"
        ", %64, %65, 1, 1, 1;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
        : "l"(a), "l"(b));
  }
};
template <>
struct Wgmma<256> {
  static constexpr int kRegs = 128;
  __device__ static void mma(float* d, std::uint64_t a, std::uint64_t b) {
    asm volatile(
        "{\n"
        "wgmma.mma_async.sync.aligned.m64n256k8.f32.tf32.tf32 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
        "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
        "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
        "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
        "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
        "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
        "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127}"
        ", %128, %129, 1, 1, 1;\n"
        "}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]),
          "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]),
          "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]),
          "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
          "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]),
          "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]),
          "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]),
          "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]),
          "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]),
          "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]),
          "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]),
          "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]),
          "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
        : "l"(a), "l"(b));
  }
};

__device__ inline std::uint32_t smem_u32(const void* p) { return std::uint32_t(__cvta_generic_to_shared(p)); }

/// wgmma shared-memory matrix descriptor: K-major tile, rows of 128 bytes (32 fp32), 128-byte
/// swizzle, 8-row groups 1024 bytes apart (the tile base must be 1024-byte aligned).
__device__ inline std::uint64_t smem_desc(std::uint32_t addr) {
  return std::uint64_t((addr & 0x3FFFF) >> 4) | (std::uint64_t(1) << 16) | (std::uint64_t(1024 >> 4) << 32) |
         (std::uint64_t(1) << 62);
}

__device__ inline void cp_async16(std::uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes) : "memory");
}
__device__ inline void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ inline void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }
__device__ inline void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ inline void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ inline void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
__device__ inline void wgmma_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory"); }
__device__ inline float tf32_rna(float x) {
  std::uint32_t u;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(u) : "f"(x));
  return __uint_as_float(u);
}

/// Compile-time tile configuration: WGM warpgroups stacked along M (BM = 64·WGM rows), BN columns
/// per wgmma (64, 128 or 256), Stages cp.async stages of BK = 32, Passes 1 (TF32) or 3 (3xTF32).
template <int WGM, int BN, int Stages, int Passes>
struct DwuGemmConfig {
  static constexpr int kBM = 64 * WGM, kBN = BN, kBK = 32, kStages = Stages, kPasses = Passes;
  static constexpr int kThreads = 128 * WGM;
  static constexpr int kABytes = kBM * 128, kBBytes = BN * 128, kStageBytes = kABytes + kBBytes;
  /// Dynamic shared memory: the stages, one lo-tile buffer for 3xTF32, 1 KB for alignment.
  static constexpr int kSmemBytes = Stages * kStageBytes + (Passes == 3 ? kStageBytes : 0) + 1024;
  static_assert(Passes == 1 || Passes == 3, "Passes: 1 (TF32) or 3 (3xTF32)");
  static_assert(Stages >= 2, "at least two cp.async stages");
};

/// The kernel's default epilogue: C += alpha · acc (one fmaf per element, C read and written as fp32).
struct AddToC {};
/// The W-precision epilogue: W (bf16 bits) folds Δ = alpha · acc of each element by the storage's
/// policy rule (core/w_precision.hpp), in the same pass: no dense Δ, no fp32 W (C is unused).
struct Bf16WEpilogue {
  Bf16WStorage w;
};

template <class Cfg, class Epi = AddToC>
__global__ void __launch_bounds__(Cfg::kThreads)
    dwu_gemm_tf32_kernel(float* __restrict__ C, int ldc, const float* __restrict__ P, int ldp,
                         const float* __restrict__ Q, int ldq, int M, int N, int Kd, float alpha, int prefetch_c,
                         Epi epi = {}) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  constexpr int BM = Cfg::kBM, BN = Cfg::kBN, BK = Cfg::kBK, S = Cfg::kStages, T = Cfg::kThreads;
  constexpr int kRegs = Wgmma<BN>::kRegs;
  extern __shared__ unsigned char smem_raw[];
  const std::uint32_t raw = smem_u32(smem_raw);
  const std::uint32_t base = (raw + 1023u) & ~1023u;  // 1024-aligned for the 128-byte swizzle
  unsigned char* const smem = smem_raw + (base - raw);
  const int m0 = int(blockIdx.y) * BM, n0 = int(blockIdx.x) * BN;
  const int tid = int(threadIdx.x);

  // Warm L2 with this CTA's C tile so the epilogue's reads do not wait on DRAM.
  if (prefetch_c && tid < BM && m0 + tid < M) {
    const int cols = min(BN, N - n0);
    const unsigned bytes = unsigned(cols * 4) & ~15u;
    if (bytes > 0)
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(C + std::size_t(m0 + tid) * ldc + n0),
                   "r"(bytes)
                   : "memory");
  }

  auto load_stage = [&](int stage, int kt) {
    const std::uint32_t sa = base + std::uint32_t(stage * Cfg::kStageBytes), sb = sa + Cfg::kABytes;
    const int k0 = kt * BK;
#pragma unroll
    for (int i = tid; i < BM * 8; i += T) {
      const int row = i >> 3, c = i & 7, gm = m0 + row, gk = k0 + 4 * c;
      const bool ok = gm < M && gk < Kd;
      cp_async16(sa + std::uint32_t(row * 128 + ((c ^ (row & 7)) << 4)), ok ? P + std::size_t(gm) * ldp + gk : P,
                 ok ? 16 : 0);
    }
#pragma unroll
    for (int i = tid; i < BN * 8; i += T) {
      const int row = i >> 3, c = i & 7, gn = n0 + row, gk = k0 + 4 * c;
      const bool ok = gn < N && gk < Kd;
      cp_async16(sb + std::uint32_t(row * 128 + ((c ^ (row & 7)) << 4)), ok ? Q + std::size_t(gn) * ldq + gk : Q,
                 ok ? 16 : 0);
    }
  };

  const int KT = (Kd + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < S - 1; ++s) {
    if (s < KT) load_stage(s, s);
    cp_async_commit();
  }

  float acc[kRegs];
#pragma unroll
  for (int i = 0; i < kRegs; ++i) acc[i] = 0.f;

  const int wg = tid / 128;
  const std::uint32_t lo_base = base + std::uint32_t(S * Cfg::kStageBytes);
  for (int kt = 0; kt < KT; ++kt) {
    const int stage = kt % S;
    cp_async_wait<S - 2>();
    const std::uint32_t sa = base + std::uint32_t(stage * Cfg::kStageBytes);
    if constexpr (Cfg::kPasses == 3) {
      __syncthreads();  // every thread's copies of this stage have landed
      float4* hi = reinterpret_cast<float4*>(smem + stage * Cfg::kStageBytes);
      float4* lo = reinterpret_cast<float4*>(smem + S * Cfg::kStageBytes);
#pragma unroll 4
      for (int i = tid; i < Cfg::kStageBytes / 16; i += T) {
        const float4 x = hi[i];
        float4 h, l;
        h.x = tf32_rna(x.x); h.y = tf32_rna(x.y); h.z = tf32_rna(x.z); h.w = tf32_rna(x.w);
        l.x = tf32_rna(x.x - h.x); l.y = tf32_rna(x.y - h.y); l.z = tf32_rna(x.z - h.z); l.w = tf32_rna(x.w - h.w);
        hi[i] = h;
        lo[i] = l;
      }
    }
    fence_proxy_async();  // generic-proxy writes (cp.async, split) before the async proxy's reads
    __syncthreads();
    {
      const int nk = kt + S - 1;  // refill the stage consumed in the previous iteration
      if (nk < KT) load_stage(nk % S, nk);
      cp_async_commit();
    }
    const std::uint32_t a_hi = sa + std::uint32_t(wg * 64 * 128), b_hi = sa + Cfg::kABytes;
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < BK / 8; ++k) {
      const std::uint32_t off = std::uint32_t(k * 32);
      if constexpr (Cfg::kPasses == 3) {
        const std::uint32_t a_lo = lo_base + std::uint32_t(wg * 64 * 128), b_lo = lo_base + Cfg::kABytes;
        Wgmma<BN>::mma(acc, smem_desc(a_lo + off), smem_desc(b_hi + off));
        Wgmma<BN>::mma(acc, smem_desc(a_hi + off), smem_desc(b_lo + off));
      }
      Wgmma<BN>::mma(acc, smem_desc(a_hi + off), smem_desc(b_hi + off));
    }
    wgmma_commit();
    wgmma_wait0();
#pragma unroll
    for (int i = 0; i < kRegs; ++i) asm volatile("" : "+f"(acc[i])::"memory");
  }
  cp_async_wait<0>();

  // Epilogue: C += alpha · acc. Accumulator layout (wgmma m64nN, fp32): warp w of the warpgroup holds
  // rows 16w + lane/4 (+8); register 4j + {0,1} are columns 8j + 2·(lane%4) + {0,1} of the upper row,
  // 4j + {2,3} the same columns of the lower row.
  const int t = tid % 128, warp = t / 32, lane = t % 32;
  const int row0 = m0 + wg * 64 + warp * 16 + lane / 4;
  if constexpr (std::is_same_v<Epi, Bf16WEpilogue>) {
    // Each element once: Δ = alpha · acc (the generic path's GEMM with β = 0 gives the same product),
    // then the policy's rule on the bf16 W element (and its compensation).
#pragma unroll
    for (int j = 0; j < BN / 8; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int row = row0 + 8 * h, col = n0 + 8 * j + 2 * (lane % 4) + e;
          if (row < M && col < N) epi.w.apply(row, col, __fmul_rn(alpha, acc[4 * j + 2 * h + e]));  // no FMA contraction: Δ is rounded first
        }
    (void)C; (void)ldc;
    return;
  } else {
  (void)epi;
  constexpr int kGroup = 8;  // column blocks per batch of loads (16 float2 loads in flight)
#pragma unroll
  for (int jb = 0; jb < BN / 8; jb += kGroup) {
    float2 cv[kGroup][2];
#pragma unroll
    for (int j = 0; j < kGroup; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = row0 + 8 * h, col = n0 + 8 * (jb + j) + 2 * (lane % 4);
        cv[j][h] = make_float2(0.f, 0.f);
        if (row < M) {
          const float* c = C + std::size_t(row) * ldc + col;
          if (col + 1 < N) cv[j][h] = *reinterpret_cast<const float2*>(c);
          else if (col < N) cv[j][h].x = c[0];
        }
      }
#pragma unroll
    for (int j = 0; j < kGroup; ++j)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int row = row0 + 8 * h, col = n0 + 8 * (jb + j) + 2 * (lane % 4);
        const float v0 = fmaf(alpha, acc[4 * (jb + j) + 2 * h], cv[j][h].x);
        const float v1 = fmaf(alpha, acc[4 * (jb + j) + 2 * h + 1], cv[j][h].y);
        if (row < M) {
          float* c = C + std::size_t(row) * ldc + col;
          if (col + 1 < N) *reinterpret_cast<float2*>(c) = make_float2(v0, v1);
          else if (col < N) c[0] = v0;
        }
      }
  }
  }
#else
  (void)C; (void)ldc; (void)P; (void)ldp; (void)Q; (void)ldq; (void)M; (void)N; (void)Kd; (void)alpha; (void)prefetch_c; (void)epi;
#endif
}

/// Writes 1 when this translation unit's device code was compiled with the sm_90a features.
template <int = 0>
__global__ void dwu_gemm_sm90_probe_kernel(int* out) {
#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
}

/// Whether the sm_90a kernel can run on `device`: compute capability 9.0 and a binary that carries
/// the kernel's sm_90a body (checked once per device by running the probe).
inline bool dwu_gemm_sm90_supported(int device) {
  static std::mutex mu;
  static std::vector<int> known;  // -1 unknown, 0 no, 1 yes
  std::lock_guard<std::mutex> lock(mu);
  if (device < 0) return false;
  if (known.size() <= std::size_t(device)) known.resize(std::size_t(device) + 1, -1);
  int& k = known[std::size_t(device)];
  if (k >= 0) return k == 1;
  k = 0;
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess || prop.major != 9 || prop.minor != 0) return false;
  int* d = nullptr;
  int h = 0;
  if (cudaMalloc(&d, sizeof(int)) != cudaSuccess) return false;
  dwu_gemm_sm90_probe_kernel<><<<1, 1>>>(d);
  const bool ok = cudaGetLastError() == cudaSuccess && cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost) == cudaSuccess;
  cudaFree(d);
  k = ok && h == 1 ? 1 : 0;
  return k == 1;
}

/// Whether the problem meets the kernel's layout requirements: Kd a multiple of 4, every leading
/// dimension a multiple of 4 and every base pointer 16-byte aligned (cp.async / float2 / bulk prefetch).
inline bool dwu_gemm_sm90_layout_ok(const float* C, int ldc, const float* P, int ldp, const float* Q, int ldq, int Kd) {
  auto al = [](const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; };
  return Kd > 0 && Kd % 4 == 0 && ldc % 4 == 0 && ldp % 4 == 0 && ldq % 4 == 0 && al(C) && al(P) && al(Q);
}

/// Launches C += alpha · P · Qᵀ with configuration Cfg on `stream`. The caller checked
/// dwu_gemm_sm90_supported() and dwu_gemm_sm90_layout_ok().
template <class Cfg>
inline void launch_dwu_gemm_tf32(cudaStream_t stream, float* C, int ldc, const float* P, int ldp, const float* Q, int ldq,
                                 int M, int N, int Kd, float alpha, bool prefetch_c = true) {
  if (M <= 0 || N <= 0) return;
  // More than 48 KB of dynamic shared memory (a per-device attribute; a host-side call of ~1 µs).
  HDPISSA_CUDA_CHECK(cudaFuncSetAttribute(dwu_gemm_tf32_kernel<Cfg>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          Cfg::kSmemBytes));
  const dim3 grid(unsigned((N + Cfg::kBN - 1) / Cfg::kBN), unsigned((M + Cfg::kBM - 1) / Cfg::kBM));
  dwu_gemm_tf32_kernel<Cfg><<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(C, ldc, P, ldp, Q, ldq, M, N, Kd, alpha,
                                                                              prefetch_c ? 1 : 0);
  HDPISSA_CUDA_CHECK_LAUNCH("dwu_gemm_tf32_kernel");
}

/// Launches W ⊕= alpha · P · Qᵀ into a bf16 W storage (Bf16WEpilogue) with configuration Cfg on
/// `stream`: M = W's rows, N = its columns. The caller checked dwu_gemm_sm90_supported() and the
/// operands' layout (dwu_gemm_sm90_layout_ok with P and Q).
template <class Cfg>
inline void launch_dwu_gemm_tf32_bf16w(cudaStream_t stream, const Bf16WStorage& w, const float* P, int ldp, const float* Q,
                                       int ldq, int M, int N, int Kd, float alpha) {
  if (M <= 0 || N <= 0) return;
  HDPISSA_CUDA_CHECK(cudaFuncSetAttribute(dwu_gemm_tf32_kernel<Cfg, Bf16WEpilogue>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::kSmemBytes));
  const dim3 grid(unsigned((N + Cfg::kBN - 1) / Cfg::kBN), unsigned((M + Cfg::kBM - 1) / Cfg::kBM));
  dwu_gemm_tf32_kernel<Cfg, Bf16WEpilogue><<<grid, Cfg::kThreads, Cfg::kSmemBytes, stream>>>(
      nullptr, 0, P, ldp, Q, ldq, M, N, Kd, alpha, 0, Bf16WEpilogue{w});
  HDPISSA_CUDA_CHECK_LAUNCH("dwu_gemm_tf32_kernel<Bf16WEpilogue>");
}

}  // namespace hdpissa::cuda_kernels::sm90

namespace hdpissa::cuda_kernels {

/// The right operand of the Direct Weight Update, packed transposed for dwu_gemm_tf32_kernel:
/// Rt (in, 2Kr) with Rt[n][k] = R[k][n], R = [A − dA stack; dA stack] (dwu_unpack's R, the same
/// element formula A + (−1)·dA, so the same bits). 32×32 tiles through shared memory so both the
/// row reads and the transposed writes are coalesced. Group j's dA_j (r, in) is at recv + j·chunk.
template <int = 0>
__global__ void dwu_pack_rt_kernel(const float* __restrict__ A, index_t lda, const float* __restrict__ recv, index_t chunk,
                                   int kr, int r, int in, float* __restrict__ Rt) {
  __shared__ float tile[32][33];
  const int k0 = int(blockIdx.y) * 32, n0 = int(blockIdx.x) * 32, tx = int(threadIdx.x);
  for (int dy = int(threadIdx.y); dy < 32; dy += int(blockDim.y)) {
    const int k = k0 + dy, n = n0 + tx;
    float v = 0.f;
    if (k < 2 * kr && n < in) {
      const int kk = k < kr ? k : k - kr, j = kk / r, i = kk - j * r;
      const float x = recv[index_t(j) * chunk + index_t(i) * in + n];
      v = k < kr ? A[index_t(k) * lda + n] + (-1.f) * x : x;
    }
    tile[dy][tx] = v;
  }
  __syncthreads();
  for (int dy = int(threadIdx.y); dy < 32; dy += int(blockDim.y)) {
    const int n = n0 + dy, k = k0 + tx;
    if (n < in && k < 2 * kr) Rt[index_t(n) * (2 * kr) + k] = tile[tx][dy];
  }
}
/// L's dB half: L[o][j·r + c] = dB_j[o][c], dB_j (out, r) at recv + j·chunk + r·in (as dwu_unpack).
template <int = 0>
__global__ void dwu_copy_db_kernel(const float* __restrict__ recv, index_t chunk, int kr, int r, int in, int out,
                                   float* __restrict__ L, index_t ldl) {
  const index_t total = index_t(out) * kr;
  for (index_t e = index_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += index_t(gridDim.x) * blockDim.x) {
    const int o = int(e / kr), col = int(e - index_t(o) * kr), j = col / r, c = col - j * r;
    L[index_t(o) * ldl + col] = recv[index_t(j) * chunk + index_t(r) * in + index_t(o) * r + c];
  }
}
inline void launch_dwu_pack_rt(cudaStream_t s, const float* A, index_t lda, const float* recv, index_t chunk, int kr, int r,
                               int in, float* Rt) {
  const dim3 grid(unsigned((in + 31) / 32), unsigned((2 * kr + 31) / 32)), block(32, 8);
  dwu_pack_rt_kernel<><<<grid, block, 0, s>>>(A, lda, recv, chunk, kr, r, in, Rt);
  HDPISSA_CUDA_CHECK_LAUNCH("dwu_pack_rt_kernel");
}
inline void launch_dwu_copy_db(cudaStream_t s, const float* recv, index_t chunk, int kr, int r, int in, int out, float* L,
                               index_t ldl) {
  const index_t total = index_t(out) * kr;
  if (total == 0) return;
  const unsigned blocks = unsigned(std::min<index_t>((total + 255) / 256, 65535));
  dwu_copy_db_kernel<><<<blocks, 256, 0, s>>>(recv, chunk, kr, r, in, out, L, ldl);
  HDPISSA_CUDA_CHECK_LAUNCH("dwu_copy_db_kernel");
}

/// The configuration CudaBackend runs for its fp32-accurate DWU GEMM: 128×128 tiles (two
/// warpgroups), two cp.async stages, 3xTF32 (bench_dwu_gemm run 11: the fastest 3xTF32 variant).
using DwuGemm3xTf32Config = sm90::DwuGemmConfig<2, 128, 2, 3>;

}  // namespace hdpissa::cuda_kernels
