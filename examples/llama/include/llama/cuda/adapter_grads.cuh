#pragma once
/// \file adapter_grads.cuh
/// Fused adapter gradients of HD-PiSSA's muted linear on bf16 compute (MutedLinear<ExactMute>,
/// adapter rank r = 16 per group):
///   gA (r, in)  += α (dY B)ᵀ X          gB (out, r) += α dYᵀ (X Aᵀ)
/// in two kernels instead of four cuBLAS GEMMs and two bf16 → fp32 accumulation passes per linear
/// (issue 20: the adapters' backward was +8 ms per TinyLlama 8 × 512 micro-batch over the bare
/// model's linears, +17.5 ms at 7B; the thin GEMMs ran on a few dozen blocks each).
///
///  1. proj_kernel: uᵀ = (X Aᵀ)ᵀ and tᵀ = (dY B)ᵀ, (r, tokens) bf16, in one launch. A block takes 16
///     tokens; its 8 warps split the reduction dimension in 32-wide chunks (warp w: chunks w, w + 8,
///     …), each chunk one 16-byte load per row and factor row and four m16n8k16 MMAs (the chunk's
///     8 elements per thread are the MMA's k in a permuted order, the same permutation for both
///     operands, so no shared memory); the warps' fp32 sums are added in warp order, rounded
///     once to bf16 (as the cuBLAS path's bf16 t and u). B is read as Bᵀ (r, out): the method keeps
///     a transposed copy of its constant factors (transpose_into).
///  2. wgrad_kernel: gA += α tᵀ X and gBᵀ += α uᵀ dY, one launch: a block owns 64 columns of X (gA)
///     or of dY (gB) and a slice of the tokens; 64-token tiles stream through shared memory (3
///     cp.async stages, ldmatrix.trans for the MMA's B operand), tᵀ / uᵀ is the A operand (r = 16
///     rows: one m-tile). With S > 1 token slices each block writes its fp32 partial and the last
///     block of a column strip to arrive (a counter per strip) adds the S partials in slice order
///     — deterministic: the same bits on every run — and applies gA / gB += α · sum in fp32.
/// The gradients are accumulated in fp32 directly (the cuBLAS path rounds each micro-batch's
/// gradient to bf16 before adding it): not the cuBLAS path's bits, closer to the exact value (GPU
/// test: both against a float64 reference).
/// Opt-in (HDPISSA_FUSED_ADAPTER_GRADS=1): correct on the GPU (session 18: the tests above and
/// compute-sanitizer's memcheck pass on an H100) and at parity with the cuBLAS path at N 4096, in
/// 2048, out 256, but the trainer measured 3–5 % slower with it on (docs/throughput.md §000000);
/// bench_adapter_grads times both paths at every linear shape of TinyLlama and LLaMA-2-7B.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/backend/cuda/cuda_handles.hpp"
#include "hdpissa/core/view.hpp"
#include "llama/cuda/flash_attn.cuh"

namespace hdpissa::llama::gpu {

namespace adapter_grads_detail {
using bf16 = __nv_bfloat16;
using flash::detail::cp_async16;
using flash::detail::cp_async_commit;
using flash::detail::cp_async_wait;
using flash::detail::ldsm_x4_t;
using flash::detail::mma;
using flash::detail::smem_u32;
using flash::detail::swz;

inline constexpr int kR = 16;       ///< adapter rank the kernels take (one MMA m-tile / two n-tiles)
inline constexpr int kCols = 64;    ///< columns per wgrad block
inline constexpr int kChunk = 64;   ///< tokens per wgrad tile
inline constexpr int kStages = 3;   ///< wgrad cp.async stages
inline constexpr int kThreads = 128;   ///< wgrad block
inline constexpr int kProjWarps = 8;   ///< proj block: warps splitting the reduction dimension
/// Blocks per SM the wgrad launch aims at through its token slices (c23, session 18: at 2 per SM the
/// kernels ran at 14 % achieved occupancy, latency-bound, slower than the cuBLAS path).
inline constexpr int kWgradBlocksPerSm = 8;

__device__ __forceinline__ uint4 ldg16(const bf16* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

struct ProjArgs {
  const bf16* data[2];  // X (N, in), dY (N, out)
  int ld[2];
  int K[2];             // in, out
  const bf16* fac[2];   // A (16, in), Bᵀ (16, out), contiguous
  bf16* outT[2];        // uᵀ, tᵀ (16, ldp)
  int N, ldp;
};

/// blockIdx.y = 0: uᵀ = (X Aᵀ)ᵀ; 1: tᵀ = (dY B)ᵀ. blockIdx.x: 16 tokens. See the file comment.
__global__ inline void __launch_bounds__(kProjWarps * 32) proj_kernel(ProjArgs a) {
  const int which = blockIdx.y;  // selected with ?: (no dynamic indexing of the parameter arrays)
  const bf16* D = which ? a.data[1] : a.data[0];
  const int ld = which ? a.ld[1] : a.ld[0], K = which ? a.K[1] : a.K[0];
  const bf16* F = which ? a.fac[1] : a.fac[0];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int r0 = blockIdx.x * 16, ra = r0 + g, rb = ra + 8;
  const bool va = ra < a.N, vb = rb < a.N;
  const bf16* pa = D + static_cast<std::int64_t>(va ? ra : 0) * ld;
  const bf16* pb = D + static_cast<std::int64_t>(vb ? rb : 0) * ld;
  const bf16* f0 = F + static_cast<std::int64_t>(g) * K;
  const bf16* f1 = F + static_cast<std::int64_t>(g + 8) * K;
  float c[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
  const int nch = (K + 31) / 32;
  const uint4 z = make_uint4(0u, 0u, 0u, 0u);
  for (int ch0 = warp; ch0 < nch; ch0 += 2 * kProjWarps) {  // two chunks per iteration: loads first
    uint4 x0[2], x1[2], w0[2], w1[2];
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      const int k = (ch0 + kProjWarps * u) * 32 + 8 * t;
      const bool kv = ch0 + kProjWarps * u < nch && k < K;  // K % 8 == 0: a thread's 8 elements are all in or out
      x0[u] = kv && va ? ldg16(pa + k) : z;
      x1[u] = kv && vb ? ldg16(pb + k) : z;
      w0[u] = kv ? ldg16(f0 + k) : z;
      w1[u] = kv ? ldg16(f1 + k) : z;
    }
#pragma unroll
    for (int u = 0; u < 2; ++u) {
      // elements 0..3 of the thread's 8 as k = 2t, 2t+1, 2t+8, 2t+9, then elements 4..7
      const std::uint32_t A1[4] = {x0[u].x, x1[u].x, x0[u].y, x1[u].y};
      const std::uint32_t A2[4] = {x0[u].z, x1[u].z, x0[u].w, x1[u].w};
      mma(c[0], A1, w0[u].x, w0[u].y);
      mma(c[1], A1, w1[u].x, w1[u].y);
      mma(c[0], A2, w0[u].z, w0[u].w);
      mma(c[1], A2, w1[u].z, w1[u].w);
    }
  }
  __shared__ float red[kProjWarps][16][kR + 1];
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) red[warp][e < 2 ? g : g + 8][nt * 8 + 2 * t + (e & 1)] = c[nt][e];
  __syncthreads();
  bf16* out = which ? a.outT[1] : a.outT[0];
  for (int i = threadIdx.x; i < 16 * kR; i += kProjWarps * 32) {
    const int n = i >> 4, row = i & 15, tok = r0 + row;  // consecutive threads: consecutive tokens
    if (tok < a.N) {
      float s = red[0][row][n];
#pragma unroll
      for (int w = 1; w < kProjWarps; ++w) s += red[w][row][n];  // warp order
      out[static_cast<std::int64_t>(n) * a.ldp + tok] = __float2bfloat16_rn(s);
    }
  }
}

struct WgradArgs {
  const bf16* data[2];  // X (N, in) for gA, dY (N, out) for gB
  int ld[2];
  int cols[2];          // in, out
  const bf16* P[2];     // tᵀ for gA, uᵀ for gB: (16, ldp)
  float* G[2];          // gA (16, in) contiguous, gB (out, 16) contiguous
  int strips0, strips;  // column strips of gA; of both
  int N, ldp, slice, S;
  float alpha;
  float* part;          // [S][strips][16·64] fp32 partials (S > 1)
  int* cnt;             // [strips] arrival counters, zero between launches
};

/// Tokens k, k + 1 (k even) of a (16, ldp) row: zero past n1.
__device__ __forceinline__ std::uint32_t ld_pair(const bf16* p, int k, int n1) {
  if (k + 1 < n1) return *reinterpret_cast<const std::uint32_t*>(p + k);
  if (k < n1) return static_cast<std::uint32_t>(__bfloat16_as_ushort(p[k]));
  return 0u;
}

/// blockIdx.x: column strip (gA's first, then gB's); blockIdx.y: token slice. See the file comment.
__global__ inline void __launch_bounds__(kThreads) wgrad_kernel(WgradArgs a) {
  __shared__ __align__(128) bf16 tile[kStages][kChunk * kCols];
  __shared__ int last;
  const int strip = blockIdx.x, which = strip < a.strips0 ? 0 : 1;
  const int c0 = (which == 0 ? strip : strip - a.strips0) * kCols;
  const bf16* D = which ? a.data[1] : a.data[0];
  const int ld = which ? a.ld[1] : a.ld[0], cols = which ? a.cols[1] : a.cols[0];
  const bf16* P = which ? a.P[1] : a.P[0];
  const int n0 = blockIdx.y * a.slice, n1 = min(a.N, n0 + a.slice);
  const int nch = n1 > n0 ? (n1 - n0 + kChunk - 1) / kChunk : 0;
  auto load = [&](int stage, int chunk) {
    const int tok0 = n0 + chunk * kChunk;
    for (int i = threadIdx.x; i < kChunk * (kCols / 8); i += kThreads) {
      const int r = i >> 3, ch = i & 7, tok = tok0 + r, col = c0 + ch * 8;
      const bool ok = tok < n1 && col < cols;  // cols % 8 == 0
      cp_async16(smem_u32(&tile[stage][swz<kCols>(r, ch)]),
                 D + static_cast<std::int64_t>(ok ? tok : 0) * ld + (ok ? col : 0), ok);
    }
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nch) load(s, s);
    cp_async_commit();
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3, mi = lane >> 3;
  const bf16* pg = P + static_cast<std::int64_t>(g) * a.ldp;
  const bf16* pg8 = P + static_cast<std::int64_t>(g + 8) * a.ldp;
  float c[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
  for (int ch = 0; ch < nch; ++ch) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // tile ch landed for every thread; the stage refilled below was read at ch − 1
    {
      const int nx = ch + kStages - 1;
      if (nx < nch) load(nx % kStages, nx);
      cp_async_commit();
    }
    const bf16* tl = tile[ch % kStages];
    const int tok0 = n0 + ch * kChunk;
#pragma unroll
    for (int kk = 0; kk < kChunk / 16; ++kk) {
      const int k = tok0 + kk * 16 + 2 * t;
      const std::uint32_t A[4] = {ld_pair(pg, k, n1), ld_pair(pg8, k, n1), ld_pair(pg, k + 8, n1),
                                  ld_pair(pg8, k + 8, n1)};
      std::uint32_t r[4];
      ldsm_x4_t(smem_u32(tl + swz<kCols>(kk * 16 + (lane & 7) + (mi & 1) * 8, warp * 2 + (mi >> 1))), r);
      mma(c[0], A, r[0], r[1]);
      mma(c[1], A, r[2], r[3]);
    }
  }
  float* G = which ? a.G[1] : a.G[0];
  auto apply = [&](int j, int col, float v) {  // j: adapter component, col: within the strip
    const int gc = c0 + col;
    if (gc >= cols) return;
    if (which == 0) G[static_cast<std::int64_t>(j) * cols + gc] += a.alpha * v;
    else G[static_cast<std::int64_t>(gc) * kR + j] += a.alpha * v;
  };
  if (a.S == 1) {
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) apply(e < 2 ? g : g + 8, warp * 16 + nt * 8 + 2 * t + (e & 1), c[nt][e]);
    return;
  }
  float* mine = a.part + (static_cast<std::int64_t>(blockIdx.y) * a.strips + strip) * (kR * kCols);
#pragma unroll
  for (int nt = 0; nt < 2; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e)
      mine[(e < 2 ? g : g + 8) * kCols + warp * 16 + nt * 8 + 2 * t + (e & 1)] = c[nt][e];
  __threadfence();  // this block's partial is visible device-wide before its ticket
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&a.cnt[strip], 1) == a.S - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  // Each thread sums 8 consecutive entries over the S slices, in slice order (the same sum whichever
  // block arrives last), two 16-byte loads per slice and several slices in flight (c24: with one
  // dependent 4-byte load per add, this tail ran serially behind every strip's last block).
  static_assert(kR * kCols == 8 * kThreads, "wgrad_kernel: 8 partial entries per thread");
  float v[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  const float* base = a.part + static_cast<std::int64_t>(strip) * (kR * kCols) + 8 * threadIdx.x;
  const std::int64_t sstride = static_cast<std::int64_t>(a.strips) * (kR * kCols);
#pragma unroll 4
  for (int s = 0; s < a.S; ++s) {
    const float4 x0 = __ldcg(reinterpret_cast<const float4*>(base + s * sstride));
    const float4 x1 = __ldcg(reinterpret_cast<const float4*>(base + s * sstride + 4));
    v[0] += x0.x, v[1] += x0.y, v[2] += x0.z, v[3] += x0.w;
    v[4] += x1.x, v[5] += x1.y, v[6] += x1.z, v[7] += x1.w;
  }
#pragma unroll
  for (int e = 0; e < 8; ++e) {
    const int i = 8 * threadIdx.x + e;
    apply(i / kCols, i % kCols, v[e]);
  }
  if (threadIdx.x == 0) a.cnt[strip] = 0;  // ready for the next launch (stream order)
}

/// dst (cols, rows) = srcᵀ for a (rows, cols) source with leading dimension ld.
__global__ inline void transpose_kernel(const bf16* __restrict__ src, int ld, int rows, int cols, bf16* __restrict__ dst) {
  const std::int64_t n = static_cast<std::int64_t>(rows) * cols;
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n; i += std::int64_t(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(i / rows), r = static_cast<int>(i % rows);
    dst[i] = src[static_cast<std::int64_t>(r) * ld + c];
  }
}

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }
}  // namespace adapter_grads_detail

/// The fused adapter-gradient kernels with their scratch (see the file comment). One object serves
/// every target of a method: the scratch grows to the largest call.
class FusedAdapterGrads {
 public:
  using bf16 = __nv_bfloat16;
  using CV = ConstMatrixView<bf16>;
  using V32 = MatrixView<float>;

  /// On when HDPISSA_FUSED_ADAPTER_GRADS is "1" (opt-in, see the file comment); otherwise the cuBLAS
  /// path (MutedLinear) runs.
  static bool enabled_by_env() {
    const char* e = std::getenv("HDPISSA_FUSED_ADAPTER_GRADS");
    return e && std::strcmp(e, "1") == 0;
  }
  /// Whether the kernels take these operands: rank 16; X (N, in), dY (N, out) with 16-byte aligned
  /// rows (leading dimension and width multiples of 8); A (16, in) and Bᵀ (16, out) contiguous and
  /// aligned; gA (16, in) and gB (out, 16) contiguous. Anything else runs the cuBLAS path.
  static bool usable(CV X, CV dY, CV A, CV Bt, V32 gA, V32 gB) {
    using adapter_grads_detail::aligned16;
    const index_t r = adapter_grads_detail::kR, N = X.rows, in = X.cols, out = dY.cols;
    if (A.rows != r || Bt.rows != r || dY.rows != N || A.cols != in || Bt.cols != out || N < 1) return false;
    if (in % 8 || out % 8 || ld(X) % 8 || ld(dY) % 8 || !aligned16(X.data) || !aligned16(dY.data)) return false;
    if (ld(A) != in || ld(Bt) != out || !aligned16(A.data) || !aligned16(Bt.data)) return false;
    if (gA.rows != r || gA.cols != in || ld32(gA) != in || gB.rows != out || gB.cols != r || ld32(gB) != r) return false;
    return N < (index_t(1) << 30) && in < (index_t(1) << 30) && out < (index_t(1) << 30);
  }

  /// Sizes the scratch for up to `tokens` rows and linears of in + out ≤ `widths`, so that run()
  /// does not allocate (call it under the memory ledger's part for the adapters' scratch). The
  /// counters are zeroed on `s`, the stream run() will use (ordered before its kernels).
  void reserve(index_t tokens, index_t widths, cudaStream_t s) {
    namespace d = adapter_grads_detail;
    proj_.reserve(std::size_t(2) * d::kR * std::size_t(tokens + 1));
    const std::size_t strips = std::size_t(widths / d::kCols + 2);
    part_.reserve((std::size_t(d::kWgradBlocksPerSm) * std::size_t(sms()) + strips) * d::kR * d::kCols);
    if (cnt_.size() < strips) {
      cnt_.reserve(strips);
      HDPISSA_CUDA_CHECK(cudaMemsetAsync(cnt_.get(), 0, sizeof(int) * cnt_.size(), s));
    }
  }

  /// gA += alpha (dY B)ᵀ X, gB += alpha dYᵀ (X Aᵀ) on `s` (Bt = Bᵀ). Requires usable(...).
  void run(cudaStream_t s, CV X, CV dY, CV A, CV Bt, float alpha, V32 gA, V32 gB) {
    namespace d = adapter_grads_detail;
    HDPISSA_REQUIRE(usable(X, dY, A, Bt, gA, gB), "FusedAdapterGrads: operands it does not take (see usable())");
    const int N = int(X.rows), in = int(X.cols), out = int(dY.cols), ldp = N + (N & 1);
    bf16* pt = proj_.reserve(std::size_t(2) * d::kR * std::size_t(ldp));
    d::ProjArgs pa{{X.data, dY.data}, {int(ld(X)), int(ld(dY))}, {in, out}, {A.data, Bt.data},
                   {pt, pt + std::size_t(d::kR) * ldp}, N, ldp};
    d::proj_kernel<<<dim3(unsigned((N + 15) / 16), 2u), d::kProjWarps * 32, 0, s>>>(pa);
    HDPISSA_CUDA_CHECK_LAUNCH("adapter proj_kernel");

    const int s0 = (in + d::kCols - 1) / d::kCols, strips = s0 + (out + d::kCols - 1) / d::kCols;
    // Token slices: about kWgradBlocksPerSm blocks per SM in all; at most one slice per 2 tiles of
    // 64 tokens. (S · strips ≤ kWgradBlocksPerSm · SMs + strips: reserve()'s partials.)
    const int most = std::max(1, (N + 2 * d::kChunk - 1) / (2 * d::kChunk));
    const int want = std::clamp((d::kWgradBlocksPerSm * sms() + strips - 1) / strips, 1, most);
    const int slice = ((N + want - 1) / want + d::kChunk - 1) / d::kChunk * d::kChunk;
    const int S = (N + slice - 1) / slice;
    float* part = nullptr;
    int* cnt = nullptr;
    if (S > 1) {
      part = part_.reserve(std::size_t(S) * strips * d::kR * d::kCols);
      if (cnt_.size() < std::size_t(strips)) {
        cnt_.reserve(std::size_t(strips));
        HDPISSA_CUDA_CHECK(cudaMemsetAsync(cnt_.get(), 0, sizeof(int) * cnt_.size(), s));
      }
      cnt = cnt_.get();
    }
    d::WgradArgs wa{{X.data, dY.data}, {int(ld(X)), int(ld(dY))}, {in, out}, {pa.outT[1], pa.outT[0]},
                    {gA.data, gB.data}, s0, strips, N, ldp, slice, S, alpha, part, cnt};
    d::wgrad_kernel<<<dim3(unsigned(strips), unsigned(S)), d::kThreads, 0, s>>>(wa);
    HDPISSA_CUDA_CHECK_LAUNCH("adapter wgrad_kernel");
  }

  /// dst (cols, rows) = srcᵀ (src: rows × cols, any leading dimension; dst contiguous).
  static void transpose_into(cudaStream_t s, CV src, MatrixView<bf16> dst) {
    HDPISSA_REQUIRE(dst.rows == src.cols && dst.cols == src.rows && ld(CV(dst)) == dst.cols,
                    "FusedAdapterGrads::transpose_into: expected a contiguous (", src.cols, ", ", src.rows,
                    ") destination, found ", shape_str(dst.rows, dst.cols));
    const std::int64_t n = std::int64_t(src.rows) * src.cols;
    if (n == 0) return;
    const int blocks = int(std::min<std::int64_t>((n + 255) / 256, 4096));
    adapter_grads_detail::transpose_kernel<<<blocks, 256, 0, s>>>(src.data, int(ld(src)), int(src.rows), int(src.cols),
                                                                  dst.data);
    HDPISSA_CUDA_CHECK_LAUNCH("adapter transpose_kernel");
  }

 private:
  static index_t ld(CV v) { return v.ld; }
  static index_t ld32(V32 v) { return v.ld; }
  int sms() {
    if (sms_ == 0) {
      int dev = 0;
      HDPISSA_CUDA_CHECK(cudaGetDevice(&dev));
      HDPISSA_CUDA_CHECK(cudaDeviceGetAttribute(&sms_, cudaDevAttrMultiProcessorCount, dev));
    }
    return sms_;
  }
  DeviceBuffer<bf16> proj_;
  DeviceBuffer<float> part_;
  DeviceBuffer<int> cnt_;
  int sms_ = 0;
};

}  // namespace hdpissa::llama::gpu
