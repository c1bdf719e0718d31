#pragma once
/// \file flash_attn.cuh
/// Fused (flash-style) causal grouped-query attention for CudaLlama<bf16>: forward and backward
/// on bf16 tensor cores (mma.sync m16n8k16, fp32 accumulation, sm_80+), head dim 64 or 128.
///
/// Layout and semantics are those of the materialised path in model_cuda.cuh, so the two are
/// interchangeable:
///  - Q (B, nh, T, hd), K and V (B, nkv, T, hd) bf16, head-major, after RoPE; query head h reads
///    kv head h / (nh / nkv).
///  - Row t of batch b (t < L_b = lengths[b]) attends to keys 0..t with softmax(scale·q·kᵀ); rows
///    t ≥ L_b (padding) get O = 0 and lse = 0 and carry no gradient.
///  - lse[(b·nh + h)·T + t] = natural log-sum-exp of the row's scaled scores (fp32).
///
/// Forward: one block per (64-query tile, b, h), 4 warps × 16 query rows, K/V tiles of 64 keys
/// double-buffered through cp.async, online softmax in registers (exp2 domain), P reused from the
/// score accumulators as the A operand of P·V. Only causal tiles (≤ the diagonal, < L_b) are read.
///
/// Backward, two kernels, both deterministic (no atomics):
///  - dK, dV: one block per (64-key tile, b, query head h), 4 warps × 16 keys; for each query tile
///    at or after the key tile it recomputes Sᵀ = K·Qᵀ and P from lse, dPᵀ = V·dOᵀ,
///    dSᵀ = Pᵀ ∘ (dPᵀ − D) with D = rowsum(dO ∘ O) (given), and accumulates dV += Pᵀ·dO and
///    dK += dSᵀ·Q in registers. Written per query head in fp32 (B, nh, T, hd), the caller summing
///    each kv head's group (group_sum_heads_to_rows in kernels_llama.cuh) — a block per query head
///    keeps GQA models with few kv heads (TinyLlama: 4) from running on a few dozen blocks — or,
///    for MHA, straight to bf16 rows with the inverse RoPE (RowGrads).
///  - dQ: one block per (64-query tile, b, h), the forward's loop order; recomputes S, P, dP over
///    the causal key tiles and accumulates dQ = scale·dS·K in registers. This costs two more tile
///    products than FlashAttention-2's atomic dQ, and buys bit-reproducible gradients (bitwise
///    resume holds in bf16 too). Written as fp32 (B, nh, T, hd) or as bf16 rows (RowGrads).
/// O (forward) and dO (backward) are head-major or in the o projection's row layout (ld_o, ld_do).
/// Each kernel has a launcher (launch_fwd_kernel<HD>, launch_bwd_kernel<HD>, launch_bwd_dq_kernel<HD>:
/// stream first, grid computed, launch checked); forward() / backward() pick HD at run time.
/// Nothing here allocates: the caller owns every buffer.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "llama/cuda/kernels_llama.cuh"

namespace hdpissa::llama::gpu::flash {

using bf16 = __nv_bfloat16;

inline constexpr int kTile = 64;     ///< query rows and keys per tile
inline constexpr int kThreads = 128; ///< 4 warps × 16 rows

/// Head dims with a compiled kernel.
inline bool supported_head_dim(int hd) { return hd == 64 || hd == 128; }

/// The order in which a kernel's blocks are handed to the SMs (the block scheduler dispatches them
/// in linear block order). Causal work per tile grows with the query tile (forward, dQ) or shrinks
/// with the key tile (dK / dV), from 1 to T / 64 tile products. The (b, h) heads are cut into bands
/// of `band` heads; band after band, every head's heaviest tile is dispatched before any head's
/// next one (longest-processing-time-first inside a band, so a band's last wave holds its light
/// tiles and the next band's heavy ones fill in beside them).
///  - band = 1: each head's tiles in a row, heavy and light mixed in every wave (the order before
///    session 27: `TileOrder::interleaved()`);
///  - band ≥ b·h: one band, every heavy tile first (`TileOrder::heavy_first()`);
///  - between: fewer heads' K / V in flight at once than one band (L2), the tail still short.
/// Measured (bench_flash_attn, H100, session 27; docs/trainer.md "Block order"): band 32 against
/// band 1, forward + dK/dV + dQ, 1.29× (7B heads, B 2 × 512), 1.06× (B 8), 1.25× / 1.05× (TinyLlama
/// heads); one band over every head lost at 7B B 8 (256 MHA heads' K / V in flight: more than L2).
/// 32 is the best of the sweep at both 7B batches; TinyLlama (GQA 8: a band's K / V is 8× smaller)
/// was fastest with one band. Hence the default: the query heads of 32 K / V heads. Every block
/// computes the same values in any order: the order changes no bit (GPU test).
struct TileOrder {
  /// (b, h) query heads per band, ≥ 1; 0 (the default): the query heads of 32 K / V heads
  /// (32 · nh / nkv): 32 for MHA, the measured best at 7B; one band at TinyLlama's GQA 8 and
  /// micro-batch ≤ 8, which measured faster there (c74: 0.0774 against 0.0800 ms per layer at B 2).
  int band = 0;
  static constexpr TileOrder interleaved() { return TileOrder{1}; }
  static constexpr TileOrder heavy_first() { return TileOrder{1 << 30}; }
};

namespace detail {

/// A block's tile and (b, h) head: `tile` is the rank among the head's tiles, 0 the heaviest (the
/// kernel maps it: the last query tile, or key tile 0).
struct BlockTile {
  int tile, bh, tiles;
};
/// This block's BlockTile under TileOrder{band} on the 1-D grid of b·h × tiles blocks (tile_grid).
__device__ __forceinline__ BlockTile block_tile(int band, int Tn) {
  const int tiles = (Tn + kTile - 1) / kTile, heads = int(gridDim.x) / tiles, i = int(blockIdx.x);
  const int per_band = band * tiles;  // band ≤ heads (the launcher clamps it)
  const int first = i / per_band * band, r = i - first * tiles;
  const int hb = min(band, heads - first);  // heads in this band (the last may hold fewer)
  const int rank = r / hb;
  return BlockTile{rank, first + (r - rank * hb), tiles};
}

__device__ __forceinline__ std::uint32_t smem_u32(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void cp_async16(std::uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;  // 0 → zero-fill the 16 bytes
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
__device__ __forceinline__ void ldsm_x4(std::uint32_t addr, std::uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(std::uint32_t addr, std::uint32_t (&r)[4]) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
/// d += a·b, m16n8k16, bf16 inputs, fp32 accumulators.
__device__ __forceinline__ void mma(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0, std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ std::uint32_t pack(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low 16 bits) = lo
  return *reinterpret_cast<std::uint32_t*>(&v);
}
/// Element offset of (row, 16-byte chunk) in a tile of rows of W bf16 (W/8 chunks), chunks XOR-
/// swizzled by row so that ldmatrix over 8 rows of one chunk column hits 8 different banks.
template <int W>
__device__ __forceinline__ int swz(int row, int chunk) {
  return row * W + ((chunk ^ (row & 7)) << 3);
}
/// 64 rows × HD of a (rows, HD) head block with row stride ld (HD: head-major, contiguous) into a
/// swizzled tile; rows ≥ n_rows zero.
template <int HD>
__device__ __forceinline__ void load_tile(bf16* tile, const bf16* g, int row0, int n_rows, int ld = HD) {
  constexpr int CH = HD / 8;
  for (int c = threadIdx.x; c < kTile * CH; c += kThreads) {
    const int r = c / CH, ch = c % CH, gr = row0 + r;
    const bool ok = gr < n_rows;
    cp_async16(smem_u32(tile + swz<HD>(r, ch)), g + static_cast<std::int64_t>(ok ? gr : 0) * ld + ch * 8, ok);
  }
}
/// Element offset of head h of batch b (nheads heads, Tn rows) and its row stride: head-major
/// (B, nheads, Tn, HD) when ld == 0, else the row layout (B·Tn rows of stride ld, head h at h·HD).
template <int HD>
__device__ __forceinline__ std::int64_t head_offset(int b, int h, int nheads, int Tn, int ld) {
  return ld == 0 ? (static_cast<std::int64_t>(b) * nheads + h) * Tn * HD
                 : static_cast<std::int64_t>(b) * Tn * ld + static_cast<std::int64_t>(h) * HD;
}

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

}  // namespace detail

/// Where the backward kernels can write their gradients directly (dQ always; dK, dV for MHA, nh == nkv): bf16 rows
/// (B·Tn rows of stride ld, head h at h·HD), dQ and dK with the inverse rotate-half RoPE (cos_t,
/// sin_t: (Tn, HD/2) fp32), dV as is — the same elementwise arithmetic as the fp32 partials taken
/// through group_sum_heads_to_rows (0 + x, then kern::unrope_lo / unrope_hi, rounded once to
/// bf16), so the same bits (GPU test), without the fp32 round trip.
struct RowGrads {
  bf16* q = nullptr;
  int ld_q = 0;
  bf16* k = nullptr;
  bf16* v = nullptr;
  int ld_kv = 0;
  const float* cos_t = nullptr;
  const float* sin_t = nullptr;
};

namespace detail {
/// Writes one accumulator row's HD values (`acc`, the mma layout: thread holds columns
/// n·8 + 2tq + {0, 1}; `hi` picks elements 2, 3) times `mul` to bf16 row `row` of `dst`, with the
/// inverse RoPE at position `row` when `rope`.
template <int HD>
__device__ __forceinline__ void store_row_grad(bf16* dst, int row, const float (&acc)[HD / 8][4], bool hi, float mul,
                                               bool rope, const float* cos_t, const float* sin_t, int tq) {
  constexpr int H2 = HD / 16, half = HD / 2;
  const int e0 = hi ? 2 : 0;
#pragma unroll
  for (int n = 0; n < H2; ++n) {
    const int c = n * 8 + 2 * tq;  // columns c, c + 1 and their partners c + half, c + 1 + half
    float lo[2], up[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float a = __fadd_rn(0.0f, __fmul_rn(acc[n][e0 + e], mul));
      const float bb = __fadd_rn(0.0f, __fmul_rn(acc[n + H2][e0 + e], mul));
      if (rope) {
        const float cs = cos_t[static_cast<std::int64_t>(row) * half + c + e];
        const float sn = sin_t[static_cast<std::int64_t>(row) * half + c + e];
        lo[e] = kern::unrope_lo(a, bb, cs, sn);
        up[e] = kern::unrope_hi(a, bb, cs, sn);
      } else {
        lo[e] = a;
        up[e] = bb;
      }
    }
    *reinterpret_cast<std::uint32_t*>(dst + c) = pack(lo[0], lo[1]);
    *reinterpret_cast<std::uint32_t*>(dst + c + half) = pack(up[0], up[1]);
  }
}
}  // namespace detail

template <int HD>
constexpr int fwd_smem_bytes() {
  return (1 + 4) * kTile * HD * 2;  // Q + double-buffered K, V
}
template <int HD>
constexpr int bwd_smem_bytes() {
  return 4 * kTile * HD * 2 + 2 * kTile * 4;  // K, V, Q, dO, lse, D
}
template <int HD>
constexpr int dq_smem_bytes() {
  return (2 + 4) * kTile * HD * 2;  // Q, dO + double-buffered K, V
}

/// Sliding window (window > 0): key visible from query row iff key > row − window (transformers'
/// masking_utils.sliding_window_overlay; the causal part key ≤ row is tested separately).
__device__ __forceinline__ bool in_window(int key, int row, int window) { return window <= 0 || key > row - window; }
/// First key tile any row of the query tile starting at q0 can see: the one holding q0 − W + 1.
__device__ __forceinline__ int first_key_tile(int q0, int window) {
  return window > 0 && q0 - window + 1 > 0 ? (q0 - window + 1) / kTile : 0;
}

/// kMinBlocks: the register budget's target of resident 128-thread blocks per SM (__launch_bounds__);
/// it changes register allocation only, never the arithmetic (GPU test: the same bits).
template <int HD, int kMinBlocks = 1>
__global__ void __launch_bounds__(kThreads, kMinBlocks) fwd_kernel(const bf16* __restrict__ Q, const bf16* __restrict__ K,
                                                       const bf16* __restrict__ V, bf16* __restrict__ O,
                                                       float* __restrict__ lse, const int* __restrict__ lengths, int nh,
                                                       int nkv, int Tn, float scale, int window, int ld_o,
                                                       int band) {
  using namespace detail;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* sK = sQ + kTile * HD;      // 2 stages
  bf16* sV = sK + 2 * kTile * HD;  // 2 stages
  const BlockTile bt = block_tile(band, Tn);
  const int qt = bt.tiles - 1 - bt.tile;  // the longest rows first
  const int bh = bt.bh, b = bh / nh, h = bh % nh, kvh = h / (nh / nkv);
  const int q0 = qt * kTile;
  const int Lb = min(lengths[b], Tn);
  const bf16* Qb = Q + static_cast<std::int64_t>(bh) * Tn * HD;
  const bf16* Kb = K + (static_cast<std::int64_t>(b) * nkv + kvh) * Tn * HD;
  const bf16* Vb = V + (static_cast<std::int64_t>(b) * nkv + kvh) * Tn * HD;
  bf16* Ob = O + head_offset<HD>(b, h, nh, Tn, ld_o);
  const int ro = ld_o == 0 ? HD : ld_o;  // O's row stride
  float* lb = lse + static_cast<std::int64_t>(bh) * Tn;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;

  if (q0 >= Lb) {  // padding rows only
    const int rows = min(kTile, Tn - q0);
    for (int i = threadIdx.x; i < rows * HD / 2; i += kThreads)
      reinterpret_cast<std::uint32_t*>(Ob + static_cast<std::int64_t>(q0 + i / (HD / 2)) * ro)[i % (HD / 2)] = 0u;
    for (int i = threadIdx.x; i < rows; i += kThreads) lb[q0 + i] = 0.0f;
    return;
  }
  const int n_kt = min(qt + 1, (Lb + kTile - 1) / kTile);
  const int j0 = first_key_tile(q0, window);  // key tiles before it are outside every row's window
  load_tile<HD>(sQ, Qb, q0, Tn);
  load_tile<HD>(sK + (j0 & 1) * kTile * HD, Kb, j0 * kTile, Tn);
  load_tile<HD>(sV + (j0 & 1) * kTile * HD, Vb, j0 * kTile, Tn);
  cp_async_commit();

  const float c = scale * kLog2e;
  const int row_a = q0 + warp * 16 + g, row_b = row_a + 8;
  float o[HD / 8][4];
#pragma unroll
  for (int n = 0; n < HD / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
  float m_a = -INFINITY, m_b = -INFINITY, l_a = 0.0f, l_b = 0.0f;
  std::uint32_t qf[HD / 16][4];

  for (int j = j0; j < n_kt; ++j) {
    if (j + 1 < n_kt) {
      load_tile<HD>(sK + ((j + 1) & 1) * kTile * HD, Kb, (j + 1) * kTile, Tn);
      load_tile<HD>(sV + ((j + 1) & 1) * kTile * HD, Vb, (j + 1) * kTile, Tn);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    if (j == j0) {
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk)
        ldsm_x4(smem_u32(sQ + swz<HD>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4))), qf[kk]);
    }
    const bf16* k = sK + (j & 1) * kTile * HD;
    const bf16* v = sV + (j & 1) * kTile * HD;

    float s[8][4];
#pragma unroll
    for (int n = 0; n < 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
    const int mi = lane >> 3;
#pragma unroll
    for (int kk = 0; kk < HD / 16; ++kk) {
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        std::uint32_t r[4];
        ldsm_x4(smem_u32(k + swz<HD>(np * 16 + (lane & 7) + (mi >> 1) * 8, kk * 2 + (mi & 1))), r);
        mma(s[2 * np], qf[kk], r[0], r[1]);
        mma(s[2 * np + 1], qf[kk], r[2], r[3]);
      }
    }
    // causal mask (only the diagonal tile has masked keys for the live rows) and online softmax
    const int k0 = j * kTile;
    const bool diag = k0 + kTile > q0;
    float mx_a = -INFINITY, mx_b = -INFINITY;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = k0 + n * 8 + 2 * tq + (e & 1);
        const int row = e < 2 ? row_a : row_b;
        const float x = (!diag || key <= row) && in_window(key, row, window) ? s[n][e] * c : -INFINITY;
        s[n][e] = x;
        if (e < 2) mx_a = fmaxf(mx_a, x);
        else mx_b = fmaxf(mx_b, x);
      }
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
      mx_a = fmaxf(mx_a, __shfl_xor_sync(0xffffffffu, mx_a, off));
      mx_b = fmaxf(mx_b, __shfl_xor_sync(0xffffffffu, mx_b, off));
    }
    const float mn_a = fmaxf(m_a, mx_a), mn_b = fmaxf(m_b, mx_b);
    const float base_a = mn_a == -INFINITY ? 0.0f : mn_a, base_b = mn_b == -INFINITY ? 0.0f : mn_b;
    const float al_a = exp2f(m_a - base_a), al_b = exp2f(m_b - base_b);
    m_a = mn_a;
    m_b = mn_b;
    float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
    for (int n = 0; n < 8; ++n) {
      s[n][0] = exp2f(s[n][0] - base_a);
      s[n][1] = exp2f(s[n][1] - base_a);
      s[n][2] = exp2f(s[n][2] - base_b);
      s[n][3] = exp2f(s[n][3] - base_b);
      sum_a += s[n][0] + s[n][1];
      sum_b += s[n][2] + s[n][3];
    }
    l_a = l_a * al_a + sum_a;
    l_b = l_b * al_b + sum_b;
#pragma unroll
    for (int n = 0; n < HD / 8; ++n) {
      o[n][0] *= al_a;
      o[n][1] *= al_a;
      o[n][2] *= al_b;
      o[n][3] *= al_b;
    }
    // O += P·V
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      const std::uint32_t a[4] = {pack(s[2 * kk][0], s[2 * kk][1]), pack(s[2 * kk][2], s[2 * kk][3]),
                                  pack(s[2 * kk + 1][0], s[2 * kk + 1][1]), pack(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < HD / 16; ++dp) {
        std::uint32_t r[4];
        ldsm_x4_t(smem_u32(v + swz<HD>(kk * 16 + (lane & 7) + (mi & 1) * 8, dp * 2 + (mi >> 1))), r);
        mma(o[2 * dp], a, r[0], r[1]);
        mma(o[2 * dp + 1], a, r[2], r[3]);
      }
    }
    __syncthreads();  // this stage is refilled by the iteration after next's prefetch
  }
#pragma unroll
  for (int off = 1; off <= 2; off <<= 1) {
    l_a += __shfl_xor_sync(0xffffffffu, l_a, off);
    l_b += __shfl_xor_sync(0xffffffffu, l_b, off);
  }
  const bool live_a = row_a < Lb, live_b = row_b < Lb;
  // Padding rows of a live tile are written as +0 by selection, not as o·0: their o is finite but
  // signed (−0 after the product), or NaN where a sliding window leaves them no key.
  const float inv_a = live_a ? 1.0f / l_a : 0.0f, inv_b = live_b ? 1.0f / l_b : 0.0f;
#pragma unroll
  for (int n = 0; n < HD / 8; ++n) {
    const int col = n * 8 + 2 * tq;
    if (row_a < Tn)
      *reinterpret_cast<std::uint32_t*>(Ob + static_cast<std::int64_t>(row_a) * ro + col) =
          live_a ? pack(o[n][0] * inv_a, o[n][1] * inv_a) : 0u;
    if (row_b < Tn)
      *reinterpret_cast<std::uint32_t*>(Ob + static_cast<std::int64_t>(row_b) * ro + col) =
          live_b ? pack(o[n][2] * inv_b, o[n][3] * inv_b) : 0u;
  }
  if (tq == 0) {
    if (row_a < Tn) lb[row_a] = live_a ? (m_a + log2f(l_a)) * kLn2 : 0.0f;
    if (row_b < Tn) lb[row_b] = live_b ? (m_b + log2f(l_b)) * kLn2 : 0.0f;
  }
}

template <int HD>
__global__ void __launch_bounds__(kThreads) bwd_kernel(const bf16* __restrict__ Q, const bf16* __restrict__ K,
                                                       const bf16* __restrict__ V, const bf16* __restrict__ dO,
                                                       const float* __restrict__ lse, const float* __restrict__ Dr,
                                                       float* __restrict__ dk_part, float* __restrict__ dv_part,
                                                       const int* __restrict__ lengths,
                                                       int nh, int nkv, int Tn, float scale, int window, int ld_do,
                                                       RowGrads rg, int band) {
  using namespace detail;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sK = reinterpret_cast<bf16*>(smem_raw);
  bf16* sV = sK + kTile * HD;
  bf16* sQ = sV + kTile * HD;
  bf16* sdO = sQ + kTile * HD;
  float* s_lse = reinterpret_cast<float*>(sdO + kTile * HD);
  float* s_dr = s_lse + kTile;
  const BlockTile bt = block_tile(band, Tn);
  const int kt = bt.tile;  // key tile 0 (every query tile's keys) first
  const int bh = bt.bh, b = bh / nh, h = bh % nh, kvh = h / (nh / nkv);
  const int k0 = kt * kTile;
  const int Lb = min(lengths[b], Tn);
  const std::int64_t head = static_cast<std::int64_t>(bh) * Tn * HD;
  float* dKb = dk_part + head;
  float* dVb = dv_part + head;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3, mi = lane >> 3;
  const int key_a = k0 + warp * 16 + g, key_b = key_a + 8;

  float dk[HD / 8][4], dv[HD / 8][4];
#pragma unroll
  for (int n = 0; n < HD / 8; ++n)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.0f;

  if (k0 < Lb) {
    const bf16* Kb = K + (static_cast<std::int64_t>(b) * nkv + kvh) * Tn * HD;
    const bf16* Vb = V + (static_cast<std::int64_t>(b) * nkv + kvh) * Tn * HD;
    const bf16* Qb = Q + head;
    const bf16* dOb = dO + head_offset<HD>(b, h, nh, Tn, ld_do);
    const int rdo = ld_do == 0 ? HD : ld_do;
    const float* lb = lse + static_cast<std::int64_t>(bh) * Tn;
    const float* db = Dr + static_cast<std::int64_t>(bh) * Tn;
    load_tile<HD>(sK, Kb, k0, Tn);
    load_tile<HD>(sV, Vb, k0, Tn);
    cp_async_commit();
    const float c = scale * kLog2e;
    // query tiles after the last one whose rows can see this block's keys (key + W − 1) are skipped
    const int n_qt = window > 0 ? min((Lb + kTile - 1) / kTile, (k0 + kTile - 1 + window - 1) / kTile + 1)
                                : (Lb + kTile - 1) / kTile;
    for (int qt = kt; qt < n_qt; ++qt) {
      const int q0 = qt * kTile;
      __syncthreads();  // the previous tile's sQ / sdO / sdS reads are done
      load_tile<HD>(sQ, Qb, q0, Tn);
      load_tile<HD>(sdO, dOb, q0, Tn, rdo);
      cp_async_commit();
      if (threadIdx.x < kTile) {
        const int q = q0 + threadIdx.x;
        s_lse[threadIdx.x] = q < Lb ? lb[q] * kLog2e : 0.0f;
        s_dr[threadIdx.x] = q < Lb ? db[q] : 0.0f;
      }
      cp_async_wait<0>();
      __syncthreads();

      // Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ for this warp's 16 keys × 64 queries
      float st[8][4], dpt[8][4];
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[n][e] = dpt[n][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) {
        std::uint32_t ak[4], av[4];
        ldsm_x4(smem_u32(sK + swz<HD>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4))), ak);
        ldsm_x4(smem_u32(sV + swz<HD>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4))), av);
#pragma unroll
        for (int np = 0; np < 4; ++np) {
          std::uint32_t r[4];
          ldsm_x4(smem_u32(sQ + swz<HD>(np * 16 + (lane & 7) + (mi >> 1) * 8, kk * 2 + (mi & 1))), r);
          mma(st[2 * np], ak, r[0], r[1]);
          mma(st[2 * np + 1], ak, r[2], r[3]);
          ldsm_x4(smem_u32(sdO + swz<HD>(np * 16 + (lane & 7) + (mi >> 1) * 8, kk * 2 + (mi & 1))), r);
          mma(dpt[2 * np], av, r[0], r[1]);
          mma(dpt[2 * np + 1], av, r[2], r[3]);
        }
      }
      // Pᵀ and dSᵀ (in place: st ← P, dpt ← dS)
#pragma unroll
      for (int n = 0; n < 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int ql = n * 8 + 2 * tq + (e & 1), q = q0 + ql;
          const int key = e < 2 ? key_a : key_b;
          const bool ok = key <= q && q < Lb && in_window(key, q, window);
          const float p = ok ? exp2f(st[n][e] * c - s_lse[ql]) : 0.0f;
          st[n][e] = p;
          dpt[n][e] = p * (dpt[n][e] - s_dr[ql]);
        }
      }
      // dV += Pᵀ·dO, dK += dSᵀ·Q (B operands: dO and Q rows, transposed loads)
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        const std::uint32_t ap[4] = {pack(st[2 * kk][0], st[2 * kk][1]), pack(st[2 * kk][2], st[2 * kk][3]),
                                     pack(st[2 * kk + 1][0], st[2 * kk + 1][1]),
                                     pack(st[2 * kk + 1][2], st[2 * kk + 1][3])};
        const std::uint32_t as[4] = {pack(dpt[2 * kk][0], dpt[2 * kk][1]), pack(dpt[2 * kk][2], dpt[2 * kk][3]),
                                     pack(dpt[2 * kk + 1][0], dpt[2 * kk + 1][1]),
                                     pack(dpt[2 * kk + 1][2], dpt[2 * kk + 1][3])};
#pragma unroll
        for (int dp = 0; dp < HD / 16; ++dp) {
          std::uint32_t r[4];
          ldsm_x4_t(smem_u32(sdO + swz<HD>(kk * 16 + (lane & 7) + (mi & 1) * 8, dp * 2 + (mi >> 1))), r);
          mma(dv[2 * dp], ap, r[0], r[1]);
          mma(dv[2 * dp + 1], ap, r[2], r[3]);
          ldsm_x4_t(smem_u32(sQ + swz<HD>(kk * 16 + (lane & 7) + (mi & 1) * 8, dp * 2 + (mi >> 1))), r);
          mma(dk[2 * dp], as, r[0], r[1]);
          mma(dk[2 * dp + 1], as, r[2], r[3]);
        }
      }
    }
  }
  if (rg.k) {  // MHA: dK, dV straight to bf16 rows (RowGrads)
    bf16* kr = rg.k + head_offset<HD>(b, h, nh, Tn, rg.ld_kv);
    bf16* vr = rg.v + head_offset<HD>(b, h, nh, Tn, rg.ld_kv);
    if (key_a < Tn) {
      store_row_grad<HD>(kr + static_cast<std::int64_t>(key_a) * rg.ld_kv, key_a, dk, false, scale, true, rg.cos_t, rg.sin_t, tq);
      store_row_grad<HD>(vr + static_cast<std::int64_t>(key_a) * rg.ld_kv, key_a, dv, false, 1.0f, false, nullptr, nullptr, tq);
    }
    if (key_b < Tn) {
      store_row_grad<HD>(kr + static_cast<std::int64_t>(key_b) * rg.ld_kv, key_b, dk, true, scale, true, rg.cos_t, rg.sin_t, tq);
      store_row_grad<HD>(vr + static_cast<std::int64_t>(key_b) * rg.ld_kv, key_b, dv, true, 1.0f, false, nullptr, nullptr, tq);
    }
    return;
  }
  // this query head's share of dK (scaled) and dV for the block's keys (zero past L_b)
#pragma unroll
  for (int n = 0; n < HD / 8; ++n) {
    const int col = n * 8 + 2 * tq;
    if (key_a < Tn) {
      *reinterpret_cast<float2*>(dKb + static_cast<std::int64_t>(key_a) * HD + col) =
          make_float2(dk[n][0] * scale, dk[n][1] * scale);
      *reinterpret_cast<float2*>(dVb + static_cast<std::int64_t>(key_a) * HD + col) = make_float2(dv[n][0], dv[n][1]);
    }
    if (key_b < Tn) {
      *reinterpret_cast<float2*>(dKb + static_cast<std::int64_t>(key_b) * HD + col) =
          make_float2(dk[n][2] * scale, dk[n][3] * scale);
      *reinterpret_cast<float2*>(dVb + static_cast<std::int64_t>(key_b) * HD + col) = make_float2(dv[n][2], dv[n][3]);
    }
  }
}

/// dQ of one (64-query tile, b, h): recomputes S = Q·Kᵀ, P and dP = dO·Vᵀ over the causal key
/// tiles and accumulates dQ = scale·dS·K in registers (deterministic: no atomics). Writes fp32
/// (B, nh, T, hd), or bf16 rows with the inverse RoPE (rg.q); zero on padding rows.
template <int HD>
__global__ void __launch_bounds__(kThreads) bwd_dq_kernel(const bf16* __restrict__ Q, const bf16* __restrict__ K,
                                                          const bf16* __restrict__ V, const bf16* __restrict__ dO,
                                                          const float* __restrict__ lse, const float* __restrict__ Dr,
                                                          float* __restrict__ dq, const int* __restrict__ lengths,
                                                          int nh, int nkv, int Tn, float scale, int window, int ld_do,
                                                          RowGrads rg, int band) {
  using namespace detail;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  bf16* sQ = reinterpret_cast<bf16*>(smem_raw);
  bf16* sdO = sQ + kTile * HD;
  bf16* sK = sdO + kTile * HD;     // 2 stages
  bf16* sV = sK + 2 * kTile * HD;  // 2 stages
  const BlockTile bt = block_tile(band, Tn);
  const int qt = bt.tiles - 1 - bt.tile;  // the longest rows first
  const int bh = bt.bh, b = bh / nh, h = bh % nh, kvh = h / (nh / nkv);
  const int q0 = qt * kTile;
  const int Lb = min(lengths[b], Tn);
  const std::int64_t head = static_cast<std::int64_t>(bh) * Tn * HD;
  float* dQb = dq + head;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3, mi = lane >> 3;
  const int row_a = q0 + warp * 16 + g, row_b = row_a + 8;

  float acc[HD / 8][4];
#pragma unroll
  for (int n = 0; n < HD / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
  if (q0 < Lb) {
    const bf16* Kb = K + (static_cast<std::int64_t>(b) * nkv + kvh) * Tn * HD;
    const bf16* Vb = V + (static_cast<std::int64_t>(b) * nkv + kvh) * Tn * HD;
    load_tile<HD>(sQ, Q + head, q0, Tn);
    load_tile<HD>(sdO, dO + head_offset<HD>(b, h, nh, Tn, ld_do), q0, Tn, ld_do == 0 ? HD : ld_do);
    const int j0 = first_key_tile(q0, window);
    load_tile<HD>(sK + (j0 & 1) * kTile * HD, Kb, j0 * kTile, Tn);
    load_tile<HD>(sV + (j0 & 1) * kTile * HD, Vb, j0 * kTile, Tn);
    cp_async_commit();
    const float c = scale * kLog2e;
    const float* lb = lse + static_cast<std::int64_t>(bh) * Tn;
    const float* db = Dr + static_cast<std::int64_t>(bh) * Tn;
    const bool live_a = row_a < Lb, live_b = row_b < Lb;
    const float lse_a = live_a ? lb[row_a] * kLog2e : 0.0f, lse_b = live_b ? lb[row_b] * kLog2e : 0.0f;
    const float d_a = live_a ? db[row_a] : 0.0f, d_b = live_b ? db[row_b] : 0.0f;
    const int n_kt = min(qt + 1, (Lb + kTile - 1) / kTile);
    for (int j = j0; j < n_kt; ++j) {
      if (j + 1 < n_kt) {
        load_tile<HD>(sK + ((j + 1) & 1) * kTile * HD, Kb, (j + 1) * kTile, Tn);
        load_tile<HD>(sV + ((j + 1) & 1) * kTile * HD, Vb, (j + 1) * kTile, Tn);
        cp_async_commit();
        cp_async_wait<1>();
      } else {
        cp_async_wait<0>();
      }
      __syncthreads();
      const bf16* k = sK + (j & 1) * kTile * HD;
      const bf16* v = sV + (j & 1) * kTile * HD;
      float s[8][4], dp[8][4];
#pragma unroll
      for (int n = 0; n < 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < HD / 16; ++kk) {
        std::uint32_t aq[4], ad[4];
        ldsm_x4(smem_u32(sQ + swz<HD>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4))), aq);
        ldsm_x4(smem_u32(sdO + swz<HD>(warp * 16 + (lane & 15), kk * 2 + (lane >> 4))), ad);
#pragma unroll
        for (int np = 0; np < 4; ++np) {
          std::uint32_t r[4];
          ldsm_x4(smem_u32(k + swz<HD>(np * 16 + (lane & 7) + (mi >> 1) * 8, kk * 2 + (mi & 1))), r);
          mma(s[2 * np], aq, r[0], r[1]);
          mma(s[2 * np + 1], aq, r[2], r[3]);
          ldsm_x4(smem_u32(v + swz<HD>(np * 16 + (lane & 7) + (mi >> 1) * 8, kk * 2 + (mi & 1))), r);
          mma(dp[2 * np], ad, r[0], r[1]);
          mma(dp[2 * np + 1], ad, r[2], r[3]);
        }
      }
      const int k0 = j * kTile;
#pragma unroll
      for (int n = 0; n < 8; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = k0 + n * 8 + 2 * tq + (e & 1);
          const bool hi = e >= 2;
          const int row = hi ? row_b : row_a;
          const bool ok = key <= row && (hi ? live_b : live_a) && in_window(key, row, window);
          const float p = ok ? exp2f(s[n][e] * c - (hi ? lse_b : lse_a)) : 0.0f;
          dp[n][e] = p * (dp[n][e] - (hi ? d_b : d_a));
        }
      }
      // dQ += dS·K (B operand: K rows, transposed loads)
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        const std::uint32_t a[4] = {pack(dp[2 * kk][0], dp[2 * kk][1]), pack(dp[2 * kk][2], dp[2 * kk][3]),
                                    pack(dp[2 * kk + 1][0], dp[2 * kk + 1][1]),
                                    pack(dp[2 * kk + 1][2], dp[2 * kk + 1][3])};
#pragma unroll
        for (int dd = 0; dd < HD / 16; ++dd) {
          std::uint32_t r[4];
          ldsm_x4_t(smem_u32(k + swz<HD>(kk * 16 + (lane & 7) + (mi & 1) * 8, dd * 2 + (mi >> 1))), r);
          mma(acc[2 * dd], a, r[0], r[1]);
          mma(acc[2 * dd + 1], a, r[2], r[3]);
        }
      }
      __syncthreads();  // this stage is refilled by the iteration after next's prefetch
    }
  }
  if (rg.q) {  // dQ straight to bf16 rows (RowGrads)
    bf16* qr = rg.q + head_offset<HD>(b, h, nh, Tn, rg.ld_q);
    if (row_a < Tn)
      store_row_grad<HD>(qr + static_cast<std::int64_t>(row_a) * rg.ld_q, row_a, acc, false, scale, true, rg.cos_t, rg.sin_t, tq);
    if (row_b < Tn)
      store_row_grad<HD>(qr + static_cast<std::int64_t>(row_b) * rg.ld_q, row_b, acc, true, scale, true, rg.cos_t, rg.sin_t, tq);
    return;
  }
#pragma unroll
  for (int n = 0; n < HD / 8; ++n) {
    const int col = n * 8 + 2 * tq;
    if (row_a < Tn)
      *reinterpret_cast<float2*>(dQb + static_cast<std::int64_t>(row_a) * HD + col) =
          make_float2(acc[n][0] * scale, acc[n][1] * scale);
    if (row_b < Tn)
      *reinterpret_cast<float2*>(dQb + static_cast<std::int64_t>(row_b) * HD + col) =
          make_float2(acc[n][2] * scale, acc[n][3] * scale);
  }
}

namespace detail {
/// A row-layout operand's stride: 0 (head-major; allowed unless `required`), else at least the
/// heads' width, a multiple of 8 elements, the base 16-byte aligned (cp.async reads 16 bytes, the
/// epilogues store bf16 pairs).
inline void check_row_stride(const char* what, int ld, int width, const void* base, bool required = false) {
  if (ld == 0 && !required) return;
  if (ld < width || ld % 8 != 0 || reinterpret_cast<std::uintptr_t>(base) % 16 != 0)
    throw std::invalid_argument(std::string("flash::") + what + ": expected a row stride >= " + std::to_string(width) +
                                ", a multiple of 8, on a 16-byte aligned base; found " + std::to_string(ld) +
                                (reinterpret_cast<std::uintptr_t>(base) % 16 != 0 ? " (base not aligned)" : ""));
}
/// Above 48 KiB of dynamic shared memory needs the opt-in; a host-side attribute of the current
/// device's function, cheap enough to set at every launch (no static state across devices).
template <class Kernel>
inline void set_smem(Kernel k, int bytes) {
  HDPISSA_CUDA_CHECK(cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}
/// One block per (64-row tile, b, query head), a 1-D grid (block_tile maps it back).
inline dim3 tile_grid(int B, int nh, int Tn) {
  const long long n = static_cast<long long>((Tn + kTile - 1) / kTile) * B * nh;
  if (n > 0x7fffffffLL) throw std::invalid_argument("flash: " + std::to_string(n) + " blocks, more than a grid holds");
  return dim3(static_cast<unsigned>(n));
}
/// The band block_tile reads: order.band (0: 32 K / V heads' query heads) clamped to [1, b·h].
inline int band_of(TileOrder order, int B, int nh, int nkv) {
  if (order.band < 0)
    throw std::invalid_argument("flash: TileOrder band must be >= 0 (0: the default), found " + std::to_string(order.band));
  const long long band = order.band > 0 ? order.band : 32LL * (nh / nkv);
  return band < static_cast<long long>(B) * nh ? static_cast<int>(band) : B * nh;
}
}  // namespace detail

/// Resident forward blocks per SM that forward() asks the register allocator for: 3 at head dim 64,
/// 1 (no constraint) at 128, where fewer registers were slower. Before session 27's block order
/// 4 at head dim 64 measured 1.05–1.14× the unconstrained kernel (H100, B 2 and 8 × 512, TinyLlama's
/// heads); with band 32 it is the slowest (c74, bench_flash_attn: 0.0224 ms at B 2 against 0.0196
/// with 3, 0.0198 unconstrained; 0.0666 at B 8 against 0.0651 / 0.0650).
template <int HD>
inline constexpr int kFwdMinBlocks = HD == 64 ? 3 : 1;

/// fwd_kernel<HD, kMinBlocks> on stream s (see forward()).
template <int HD, int kMinBlocks = kFwdMinBlocks<HD>>
void launch_fwd_kernel(cudaStream_t s, const bf16* Q, const bf16* K, const bf16* V, bf16* O, float* lse,
                       const int* lengths, int B, int nh, int nkv, int Tn, float scale, int window = 0, int ld_o = 0,
                       TileOrder order = {}) {
  auto* kernel = fwd_kernel<HD, kMinBlocks>;
  detail::set_smem(kernel, fwd_smem_bytes<HD>());
  kernel<<<detail::tile_grid(B, nh, Tn), kThreads, fwd_smem_bytes<HD>(), s>>>(Q, K, V, O, lse, lengths, nh, nkv,
                                                                                     Tn, scale, window, ld_o, detail::band_of(order, B, nh, nkv));
  HDPISSA_CUDA_CHECK_LAUNCH("flash::fwd_kernel");
}

/// bwd_kernel<HD> (per-query-head dK, dV, or MHA's bf16 rows through rg.k / rg.v) on stream s (see backward()).
template <int HD>
void launch_bwd_kernel(cudaStream_t s, const bf16* Q, const bf16* K, const bf16* V, const bf16* dO, const float* lse,
                       const float* Dr, float* dk_part, float* dv_part, const int* lengths, int B, int nh, int nkv,
                       int Tn, float scale, int window = 0, int ld_do = 0, RowGrads rg = {},
                       TileOrder order = {}) {
  detail::set_smem(bwd_kernel<HD>, bwd_smem_bytes<HD>());
  bwd_kernel<HD><<<detail::tile_grid(B, nh, Tn), kThreads, bwd_smem_bytes<HD>(), s>>>(
      Q, K, V, dO, lse, Dr, dk_part, dv_part, lengths, nh, nkv, Tn, scale, window, ld_do, rg, detail::band_of(order, B, nh, nkv));
  HDPISSA_CUDA_CHECK_LAUNCH("flash::bwd_kernel");
}

/// bwd_dq_kernel<HD> (dQ, or its bf16 rows through rg.q) on stream s (see backward()).
template <int HD>
void launch_bwd_dq_kernel(cudaStream_t s, const bf16* Q, const bf16* K, const bf16* V, const bf16* dO,
                          const float* lse, const float* Dr, float* dq, const int* lengths, int B, int nh, int nkv,
                          int Tn, float scale, int window = 0, int ld_do = 0, RowGrads rg = {},
                          TileOrder order = {}) {
  detail::set_smem(bwd_dq_kernel<HD>, dq_smem_bytes<HD>());
  bwd_dq_kernel<HD><<<detail::tile_grid(B, nh, Tn), kThreads, dq_smem_bytes<HD>(), s>>>(
      Q, K, V, dO, lse, Dr, dq, lengths, nh, nkv, Tn, scale, window, ld_do, rg, detail::band_of(order, B, nh, nkv));
  HDPISSA_CUDA_CHECK_LAUNCH("flash::bwd_dq_kernel");
}

/// O, lse ← attention(Q, K, V). Q, K, V, O 16-byte aligned; hd ∈ {64, 128}. `window` > 0: sliding
/// window (row t sees keys max(0, t − window + 1)..t; key tiles wholly before the window are skipped,
/// partial ones masked). Q, K, V head-major; O head-major (B, nh, T, hd) when ld_o == 0, else the
/// row layout (B·T rows of stride ld_o ≥ nh·hd, a multiple of 8; head h at column h·hd), which is
/// what the model's o projection reads.
inline void forward(const bf16* Q, const bf16* K, const bf16* V, bf16* O, float* lse, const int* lengths, int B,
                    int nh, int nkv, int Tn, int hd, float scale, cudaStream_t s, int window = 0, int ld_o = 0,
                    TileOrder order = {}) {
  detail::check_row_stride("forward: ld_o", ld_o, nh * hd, O);
  if (hd == 64) launch_fwd_kernel<64>(s, Q, K, V, O, lse, lengths, B, nh, nkv, Tn, scale, window, ld_o, order);
  else launch_fwd_kernel<128>(s, Q, K, V, O, lse, lengths, B, nh, nkv, Tn, scale, window, ld_o, order);
}

/// Gradients of forward(): dq ← scale·dS·K; dk_part, dv_part ← each query head's dK, dV (all
/// fp32, (B, nh, T, hd), fully written: zero on padding rows; dk_part / dv_part still to be summed
/// over each kv head's group). Dr = rowsum(dO ∘ O) per row, lse from forward. Deterministic.
/// dO head-major when ld_do == 0, else rows of stride ld_do (as forward's ld_o). With rg.q, dQ goes
/// to bf16 rows instead (RowGrads), with rg.k and rg.v (MHA only, nh == nkv) dK and dV; the matching
/// fp32 outputs are then not written (may be null).
inline void backward(const bf16* Q, const bf16* K, const bf16* V, const bf16* dO, const float* lse, const float* Dr,
                     float* dq, float* dk_part, float* dv_part, const int* lengths, int B, int nh, int nkv, int Tn,
                     int hd, float scale, cudaStream_t s, int window = 0, int ld_do = 0, RowGrads rg = {},
                     TileOrder order = {}) {
  detail::check_row_stride("backward: ld_do", ld_do, nh * hd, dO);
  if (rg.q) detail::check_row_stride("backward: RowGrads ld_q", rg.ld_q, nh * hd, rg.q, true);
  if (rg.k) detail::check_row_stride("backward: RowGrads ld_kv", rg.ld_kv, nkv * hd, rg.k, true);
  if (rg.v) detail::check_row_stride("backward: RowGrads ld_kv", rg.ld_kv, nkv * hd, rg.v, true);
  if ((rg.k || rg.v) && (nh != nkv || !rg.k || !rg.v))
    throw std::invalid_argument("flash::backward: bf16 row gradients of K and V need MHA (nh == nkv) and both rows; found nh " +
                                std::to_string(nh) + ", nkv " + std::to_string(nkv));
  if ((rg.q || rg.k) && (!rg.cos_t || !rg.sin_t))
    throw std::invalid_argument("flash::backward: bf16 row gradients of Q and K need the RoPE tables (cos_t, sin_t)");
  if (hd == 64) {
    launch_bwd_kernel<64>(s, Q, K, V, dO, lse, Dr, dk_part, dv_part, lengths, B, nh, nkv, Tn, scale, window, ld_do, rg,
                          order);
    launch_bwd_dq_kernel<64>(s, Q, K, V, dO, lse, Dr, dq, lengths, B, nh, nkv, Tn, scale, window, ld_do, rg, order);
  } else {
    launch_bwd_kernel<128>(s, Q, K, V, dO, lse, Dr, dk_part, dv_part, lengths, B, nh, nkv, Tn, scale, window, ld_do,
                           rg, order);
    launch_bwd_dq_kernel<128>(s, Q, K, V, dO, lse, Dr, dq, lengths, B, nh, nkv, Tn, scale, window, ld_do, rg, order);
  }
}

}  // namespace hdpissa::llama::gpu::flash
