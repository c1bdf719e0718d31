#pragma once
/// The Direct Weight Update's GEMM for small inner dimensions (2Kr ≤ 64, e.g. one group per GPU at
/// r = 16) on CUDA cores: W ⊕= alpha · L · R with L (out, 2Kr) and R (2Kr, in), the update written
/// into W in the same pass.
///
/// Why a second kernel next to the sm_90a 3xTF32 one (dwu_gemm_sm90.cuh): at 2Kr = 32 a tile's
/// main loop is one 32-deep step, so the tensor-core kernel is a load → three wgmma passes →
/// epilogue chain with nothing to overlap; the 7B trainer's step measured 37 ms for 224 layers whose
/// W traffic (bf16 read + write) takes ≈ 5.5 ms at the H200's copy rate. Here each thread keeps an
/// 8 × 8 block of W: its bf16 W row segments (16 bytes each, coalesced across the warp) are loaded
/// before the k loop so the DRAM reads overlap the FMAs, and 2Kr = 32 is 32 fp32 FMAs per element —
/// about what the W traffic costs, on any CUDA GPU.
///
/// Arithmetic (the contract the tests check): acc(i, j) = Σ_k L(i, k)·R(k, j) as one fmaf chain in
/// k order from 0 (plain fp32, no TF32: at least as accurate as 3xTF32), Δ = alpha·acc rounded
/// (no contraction with the rule), then the W-precision rule of each element — the same functions
/// as the CPU (core/w_precision.hpp) — or, for fp32 W, w = fmaf(alpha, acc, w) like the sm_90a
/// kernel's epilogue. Deterministic: every worker with the same inputs writes the same bits.

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/core/view.hpp"
#include "hdpissa/core/w_precision.hpp"

namespace hdpissa::cuda_kernels {

/// Tile of dwu_lowrank_kernel: 256 threads as 32 (columns) × 8 (rows), each with 8 × 8 elements,
/// so a block covers 64 rows × 256 columns and walks down its column strip tile by tile (the strip's
/// R block stays in shared memory).
struct DwuLowrank {
  static constexpr int kThreads = 256, kBM = 64, kBN = 256, kPer = 8, kMaxKd = 64;
  /// Dynamic shared memory for inner dimension kd: R block (kd × 256) + L tile (kd × 65, padded)
  /// + the bf16 W tile (64 × 256) in flight during the products.
  static constexpr std::size_t smem_bytes(int kd) {
    return std::size_t(kd) * (kBN + kBM + 1) * sizeof(float) + std::size_t(kBM) * kBN * sizeof(std::uint16_t);
  }
};

/// Where the update goes: a bf16 W storage (rule per element) or an fp32 W (w = fmaf(alpha, acc, w)).
struct DwuLowrankFp32W {
  float* w;
  index_t ldw;
};

/// A 16-byte global → shared copy that does not hold registers (cp.async on sm_80+; a plain copy
/// before), its commit and the wait for every copy this thread issued.
__device__ inline void copy16_async(void* smem_dst, const void* gmem_src) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const auto dst = static_cast<std::uint32_t>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem_src) : "memory");
#else
  *static_cast<uint4*>(smem_dst) = *static_cast<const uint4*>(gmem_src);
#endif
}
__device__ inline void copy16_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
__device__ inline void copy16_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

/// Pol: the bf16 storage's policy (one instantiation each, so the SR path does not carry the
/// compensated one's registers); ignored for fp32 W.
template <class Out, WPrecision Pol = WPrecision::Fp32Master>
__global__ void __launch_bounds__(DwuLowrank::kThreads, 2)
    dwu_lowrank_kernel(Out o, const float* __restrict__ L, index_t ldl, const float* __restrict__ R, index_t ldr,
                       int M, int N, int kd, float alpha) {
  constexpr int BM = DwuLowrank::kBM, BN = DwuLowrank::kBN, P = DwuLowrank::kPer, T = DwuLowrank::kThreads;
  constexpr int LP = BM + 1;  // padded L tile rows: the transposing stores hit distinct banks
  extern __shared__ float smem[];
  float* Rs = smem;            // [kd][BN]
  float* Ls = smem + kd * BN;  // [kd][LP]
  // [BM][BN] bf16 bits: each thread's own 8 rows × 8 columns, copied asynchronously (cp.async) at
  // the start of a tile and read back by the same thread in the epilogue (no registers held).
  std::uint16_t* Ws = reinterpret_cast<std::uint16_t*>(Ls + kd * LP);
  const int tid = int(threadIdx.x), tx = tid & 31, ty = tid >> 5;
  const int n0 = int(blockIdx.x) * BN;
  const int c0 = n0 + tx * P;  // this thread's first column
  for (int i = tid; i < kd * BN; i += T) {
    const int k = i / BN, c = i - k * BN;
    Rs[i] = n0 + c < N ? R[index_t(k) * ldr + n0 + c] : 0.f;
  }
  constexpr bool kBf16 = std::is_same_v<Out, Bf16WStorage>;
  std::uint64_t key = 0;
  bool vec = false;  // 16-byte W rows for this thread (8 columns in range, aligned)
  if constexpr (kBf16) {
    key = sr_step_key(o.seed, o.step);
    vec = c0 + P <= N && o.ldw % 8 == 0 && (reinterpret_cast<std::uintptr_t>(o.w) & 15u) == 0;
  } else {
    vec = c0 + P <= N && o.ldw % 4 == 0 && (reinterpret_cast<std::uintptr_t>(o.w) & 15u) == 0;
  }
  const int tiles = (M + BM - 1) / BM;
  for (int t = int(blockIdx.y); t < tiles; t += int(gridDim.y)) {
    const int m0 = t * BM;
    __syncthreads();  // the previous tile's readers of Ls (and, first time, Rs's writers) are done
    for (int i = tid; i < kd * BM; i += T) {
      const int r = i / kd, k = i - r * kd;
      Ls[k * LP + r] = m0 + r < M ? L[index_t(m0 + r) * ldl + k] : 0.f;
    }
    // This thread's W rows, in flight while the products are summed (bf16 storage).
    if constexpr (kBf16) {
      if (vec) {
#pragma unroll
        for (int i = 0; i < P; ++i) {
          const int row = m0 + ty * P + i;
          if (row < M) copy16_async(Ws + (ty * P + i) * BN + tx * P, o.w + index_t(row) * o.ldw + c0);
        }
        copy16_commit();
      }
    }
    __syncthreads();
    float acc[P][P];
#pragma unroll
    for (int i = 0; i < P; ++i)
#pragma unroll
      for (int j = 0; j < P; ++j) acc[i][j] = 0.f;
#pragma unroll 4
    for (int k = 0; k < kd; ++k) {
      const float4 r0 = *reinterpret_cast<const float4*>(Rs + k * BN + tx * P);
      const float4 r1 = *reinterpret_cast<const float4*>(Rs + k * BN + tx * P + 4);
      const float rv[P] = {r0.x, r0.y, r0.z, r0.w, r1.x, r1.y, r1.z, r1.w};
#pragma unroll
      for (int i = 0; i < P; ++i) {
        const float l = Ls[k * LP + ty * P + i];
#pragma unroll
        for (int j = 0; j < P; ++j) acc[i][j] = fmaf(l, rv[j], acc[i][j]);
      }
    }
    if constexpr (kBf16)
      if (vec) copy16_wait_all();  // this thread's W rows have landed in Ws
#pragma unroll
    for (int i = 0; i < P; ++i) {
      const int row = m0 + ty * P + i;
      if (row >= M) continue;
      if constexpr (kBf16) {
        std::uint16_t wb[P];
        if (vec) {
          const uint4 wv = *reinterpret_cast<const uint4*>(Ws + (ty * P + i) * BN + tx * P);
          const std::uint32_t u[4] = {wv.x, wv.y, wv.z, wv.w};
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            wb[2 * q] = std::uint16_t(u[q] & 0xffffu);
            wb[2 * q + 1] = std::uint16_t(u[q] >> 16);
          }
        } else {
#pragma unroll
          for (int j = 0; j < P; ++j) wb[j] = c0 + j < N ? o.w[index_t(row) * o.ldw + c0 + j] : std::uint16_t(0);
        }
#pragma unroll
        for (int j = 0; j < P; ++j) {
          const int col = c0 + j;
          if (col >= N) continue;
          const float delta = __fmul_rn(alpha, acc[i][j]);  // Δ rounded first, as the other paths
          if constexpr (Pol == WPrecision::Bf16Compensated)
            Bf16Compensated{}(wb[j], o.c[index_t(row) * o.ldc + col], delta);
          else
            Bf16StochasticRounding::apply_keyed(wb[j], delta, key, o.offset + std::uint64_t(index_t(row) * o.cols + col));
        }
        if (vec) {
          uint4 nv;
          nv.x = std::uint32_t(wb[0]) | (std::uint32_t(wb[1]) << 16);
          nv.y = std::uint32_t(wb[2]) | (std::uint32_t(wb[3]) << 16);
          nv.z = std::uint32_t(wb[4]) | (std::uint32_t(wb[5]) << 16);
          nv.w = std::uint32_t(wb[6]) | (std::uint32_t(wb[7]) << 16);
          *reinterpret_cast<uint4*>(o.w + index_t(row) * o.ldw + c0) = nv;
        } else {
#pragma unroll
          for (int j = 0; j < P; ++j)
            if (c0 + j < N) o.w[index_t(row) * o.ldw + c0 + j] = wb[j];
        }
      } else {
        float* w = o.w + index_t(row) * o.ldw + c0;
        if (vec) {
          float4 a = *reinterpret_cast<const float4*>(w), b = *reinterpret_cast<const float4*>(w + 4);
          a.x = fmaf(alpha, acc[i][0], a.x), a.y = fmaf(alpha, acc[i][1], a.y);
          a.z = fmaf(alpha, acc[i][2], a.z), a.w = fmaf(alpha, acc[i][3], a.w);
          b.x = fmaf(alpha, acc[i][4], b.x), b.y = fmaf(alpha, acc[i][5], b.y);
          b.z = fmaf(alpha, acc[i][6], b.z), b.w = fmaf(alpha, acc[i][7], b.w);
          *reinterpret_cast<float4*>(w) = a;
          *reinterpret_cast<float4*>(w + 4) = b;
        } else {
#pragma unroll
          for (int j = 0; j < P; ++j)
            if (c0 + j < N) w[j] = fmaf(alpha, acc[i][j], w[j]);
        }
      }
    }
  }
}

/// W (M, N) ⊕= alpha · L (M, kd) · R (kd, N) on `stream`; `out` is a Bf16WStorage (its rule per
/// element) or DwuLowrankFp32W. Needs 1 ≤ kd ≤ DwuLowrank::kMaxKd (the caller checks; larger inner
/// dimensions are the tensor-core kernel's). Any leading dimensions and alignment: unaligned or
/// ragged column blocks take the scalar path.
template <class Out>
inline void launch_dwu_lowrank(cudaStream_t stream, const Out& out, const float* L, index_t ldl, const float* R,
                               index_t ldr, int M, int N, int kd, float alpha) {
  if (M <= 0 || N <= 0) return;
  const std::size_t smem = DwuLowrank::smem_bytes(kd);
  int dev = 0, sms = 0;
  HDPISSA_CUDA_CHECK(cudaGetDevice(&dev));
  HDPISSA_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  const int strips = (N + DwuLowrank::kBN - 1) / DwuLowrank::kBN, tiles = (M + DwuLowrank::kBM - 1) / DwuLowrank::kBM;
  // About four blocks per SM in all; each walks tiles / rows_per_grid row tiles of its strip.
  const int rows = std::max(1, std::min(tiles, (4 * sms + strips - 1) / strips));
  const dim3 grid{unsigned(strips), unsigned(rows), 1u};
  auto run = [&](auto kernel) {
    if (smem > 48 * 1024)
      HDPISSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    kernel<<<grid, DwuLowrank::kThreads, smem, stream>>>(out, L, ldl, R, ldr, M, N, kd, alpha);
    HDPISSA_CUDA_CHECK_LAUNCH("dwu_lowrank_kernel");
  };
  if constexpr (std::is_same_v<Out, Bf16WStorage>) {
    if (out.policy == WPrecision::Bf16Compensated) run(dwu_lowrank_kernel<Out, WPrecision::Bf16Compensated>);
    else run(dwu_lowrank_kernel<Out, WPrecision::Bf16StochasticRounding>);
  } else {
    run(dwu_lowrank_kernel<Out>);
  }
}

}  // namespace hdpissa::cuda_kernels
