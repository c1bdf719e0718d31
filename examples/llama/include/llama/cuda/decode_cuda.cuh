#pragma once
/// \file decode_cuda.cuh
/// CudaGreedyDecoder<T>: batched, KV-cached greedy decoding on the weights of a CudaLlama<T>
/// (model_cuda.cuh), T = float or bf16, with continuous batching.
///
/// KV cache. Fixed blocks: `slots` sequence slots × `max_ctx` positions per layer, K and V in T,
/// laid out (layer, slot, kv_head, pos, head_dim) so that one kv head's keys of one slot are one
/// contiguous (pos, hd) matrix. GQA: query head h reads kv head h / (n_heads / n_kv_heads).
///
/// Rows. One pass of the decoder ("forward_rows") runs n token rows, each with its slot, its
/// position and its token, through every layer: embedding gather → per layer RMSNorm → q, k, v
/// through the hooks (+ the Qwen2 biases) → RoPE at each row's own position, k and v written into
/// the cache at (slot, pos) → attention of each row's query over its slot's cache positions
/// first_visible_key(pos, window) .. pos (sliding window per layer) → o → residual → RMSNorm → gate,
/// up → SwiGLU → down → residual; then the final norm of the selected rows, the classifier and an
/// argmax on the device. Only the argmax ids (one int per selected row) go to the host.
///  - Prefill: the rows are the prompts' tokens packed back to back (no padding), in chunks of at
///    most `prefill_rows` rows; since attention reads the cache, a prompt may span chunks. The
///    selected rows are each prompt's last token.
///  - Decode step: one row per slot (all slots, a fixed shape: inactive slots run at position 0 on
///    token 0 and are ignored), selected rows = all. On a non-default stream the step is captured
///    once per generate() call into a CUDA graph and replayed (falls back to plain launches if the
///    capture fails); the host uploads the (token, position) of every slot before each replay.
///
/// Attention (cache_attention_*): one block per (row, kv head, split of `chunk` keys), all the
/// group's query heads in the block (each key is read once per group); the splits' (max, sum,
/// unnormalised output) are merged by a second kernel (flash-decoding). Long caches thus spread over
/// many blocks; fp32 statistics throughout. Four split kernels (CacheAttentionKernel): the fused one
/// (MHA and groups of 2 off sm_90) streams K and V once with 16-byte loads and an online softmax in
/// registers; the bulk one (sm_90, MHA and fp32 GQA ≤ 4; the same arithmetic and bits) brings K and
/// V into shared memory in tiles by cp.async.bulk, several tiles ahead of the math; the tensor-core
/// one (bf16 GQA, groups 2–8, head_dim 64 / 128, sm_80+) computes a group's scores and P·V as
/// m16n8k16 products over cp.async tiles (P in bf16 as the product's operand); the two-phase one
/// (the rest of GQA) puts the scores in shared memory (key-parallel dot products, 16-byte loads),
/// runs a per-split softmax, then P·V. A decode step's blocks take the rows by descending position (the longest
/// ranges start first, HDPISSA_DECODE_ORDER).
///
/// Sequences: a prompt is assigned to a free slot, prefilled (with the other new prompts), then
/// decoded one token per step. A sequence leaves its slot when it produces a stop token (not
/// returned), reaches its budget (max_new_tokens, capped so that prompt + completion ≤
/// max_position_embeddings) or when the caller's `should_stop` callback says so (stop strings); the
/// freed slot is refilled from the remaining prompts at the next step (continuous batching). The
/// other sequences never wait.
///
/// Linears go through `hooks` (LinearHooks<CudaBackend<T>>): plain hooks decode the model's W (with
/// one GEMM for q|k|v and one for gate|up per layer, whose weights CudaLlama stores back to back); a
/// training method's hooks decode its current view (muted adapters: W itself; LoRA / PiSSA: W plus
/// the adapter's product) without a host copy of anything. Every buffer is allocated in the
/// constructor (hooks.reserve is called once per generate()); nothing is allocated per step.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>
#include <numeric>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <vector>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/backend/cuda/cuda_handles.hpp"
#include "llama/cuda/cublas_gemm.hpp"
#include "llama/cuda/kernels_llama.cuh"
#include "llama/cuda/model_cuda.cuh"
#include "llama/decode_options.hpp"
#include "llama/model.hpp"

namespace hdpissa::llama::gpu {

// ------------------------------------------------------------------------------------------------
// kernels

namespace decode_kern {

using kern::from_f;
using kern::to_f;

/// Per row r (slot = slot[r] or r, position pos[r]): q (+bias) rotated into q_out (n, nh·hd; may
/// be q itself); k (+bias) rotated and v (+bias) copied into the cache at (slot, pos). q, k, v rows
/// are ldq, ldk, ldv elements apart (separate (n, ·) buffers, or the column blocks of one fused
/// (n, qd + 2·kvd) product). One thread per (row, head of the nh + 2·nkv, i < hd/2).
template <class T>
__global__ void qkv_to_cache(const T* q, int ldq, T* q_out, const T* __restrict__ k, int ldk, const T* __restrict__ v,
                             int ldv, const float* __restrict__ bias, const std::int32_t* __restrict__ slot,
                             const std::int32_t* __restrict__ pos, T* __restrict__ kc, T* __restrict__ vc, int n,
                             int nh, int nkv, int hd, int max_ctx, const float* __restrict__ cos_t,
                             const float* __restrict__ sin_t) {
  kern::pdl_wait();  // no-ops unless launched with pdl (HDPISSA_DECODE_PDL)
  kern::pdl_trigger();
  const int half = hd / 2, heads = nh + 2 * nkv, qd = nh * hd, kvd = nkv * hd;
  const std::int64_t total = static_cast<std::int64_t>(n) * heads * half;
  for (std::int64_t idx = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    const std::int64_t rest = idx / half;
    const int hh = static_cast<int>(rest % heads);
    const int r = static_cast<int>(rest / heads);
    const int p = pos[r], s = slot ? slot[r] : r;
    const float c = cos_t[static_cast<std::int64_t>(p) * half + i], sn = sin_t[static_cast<std::int64_t>(p) * half + i];
    if (hh < nh) {
      const T* x = q + static_cast<std::int64_t>(r) * ldq + hh * hd;
      float a = to_f(x[i]), b = to_f(x[i + half]);
      if (bias) a += bias[hh * hd + i], b += bias[hh * hd + i + half];
      T* y = q_out + static_cast<std::int64_t>(r) * qd + hh * hd;
      y[i] = from_f<T>(kern::rope_lo(a, b, c, sn));  // the training model's RoPE, no FMA contraction
      y[i + half] = from_f<T>(kern::rope_hi(a, b, c, sn));
    } else {
      const bool is_k = hh < nh + nkv;
      const int h = is_k ? hh - nh : hh - nh - nkv;
      const T* x = is_k ? k + static_cast<std::int64_t>(r) * ldk + h * hd : v + static_cast<std::int64_t>(r) * ldv + h * hd;
      float a = to_f(x[i]), b = to_f(x[i + half]);
      if (bias) {
        const float* bb = bias + qd + (is_k ? 0 : kvd) + h * hd;
        a += bb[i], b += bb[i + half];
      }
      T* dst = (is_k ? kc : vc) + ((static_cast<std::int64_t>(s) * nkv + h) * max_ctx + p) * hd;
      if (is_k) {
        dst[i] = from_f<T>(kern::rope_lo(a, b, c, sn));
        dst[i + half] = from_f<T>(kern::rope_hi(a, b, c, sn));
      } else {
        dst[i] = from_f<T>(a);
        dst[i + half] = from_f<T>(b);
      }
    }
  }
}

/// qkv_to_cache with row strides (see the kernel); q_out (n, nh·hd) contiguous.
template <class T>
void launch_qkv_to_cache(cudaStream_t st, const T* q, int ldq, T* q_out, const T* k, int ldk, const T* v, int ldv,
                         const float* bias, const std::int32_t* slot, const std::int32_t* pos, T* kc, T* vc, int n,
                         int nh, int nkv, int hd, int max_ctx, const float* cos_t, const float* sin_t,
                         bool pdl = false) {
  const std::int64_t total = static_cast<std::int64_t>(n) * (nh + 2 * nkv) * (hd / 2);
  HDPISSA_CUDA_CHECK(kern::launch_pdl(qkv_to_cache<T>, dim3(kern::grid_for(total)), dim3(256), 0, st, pdl, q, ldq, q_out,
                                      k, ldk, v, ldv, bias, slot, pos, kc, vc, n, nh, nkv, hd, max_ctx, cos_t, sin_t));
}

/// act (n, H) = silu(gate)·up from one fused (n, 2H) product [gate | up] (ld 2H): the same
/// arithmetic as kern::swiglu_fwd, element for element. One thread per element.
template <class T>
__global__ void swiglu_fused_rows(const T* __restrict__ gu, T* __restrict__ act, int H, std::int64_t total) {
  kern::pdl_wait();
  kern::pdl_trigger();
  for (std::int64_t idx = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t r = idx / H, j = idx % H;
    const float g = to_f(gu[r * 2 * H + j]);
    act[idx] = from_f<T>(g * kern::sigmoidf_(g) * to_f(gu[r * 2 * H + H + j]));
  }
}

template <class T>
void launch_swiglu_fused_rows(cudaStream_t st, const T* gu, T* act, int n, int H, bool pdl = false) {
  const std::int64_t total = static_cast<std::int64_t>(n) * H;
  HDPISSA_CUDA_CHECK(
      kern::launch_pdl(swiglu_fused_rows<T>, dim3(kern::grid_for(total)), dim3(256), 0, st, pdl, gu, act, H, total));
}

/// Loads VEC consecutive T as floats (VEC·sizeof(T) = 16 bytes, or VEC = 1).
template <int VEC, class T>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[VEC]) {
  if constexpr (VEC == 1) {
    out[0] = to_f(p[0]);
  } else if constexpr (std::is_same_v<T, float>) {
    static_assert(VEC == 4);
    const float4 u = *reinterpret_cast<const float4*>(p);
    out[0] = u.x, out[1] = u.y, out[2] = u.z, out[3] = u.w;
  } else {
    static_assert(VEC == 8);
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[j]));
      out[2 * j] = f.x, out[2 * j + 1] = f.y;
    }
  }
}

inline constexpr int kAttnThreads = 128;
inline constexpr int kMaxVecPerLane = 4;

/// What block (kv head blockIdx.x, row blockIdx.y — or order[blockIdx.y] — split blockIdx.z) of a
/// cache-attention launch covers: its row r and kv head kvh, cache slot s of the row, keys [k0, k1) of its visible range [max(0, pos − window + 1),
/// pos] (split sp takes chunk keys from the start of the range), and `part`, the index of its first
/// query head's partial result (head g of the group: part + g·splits). An empty split (k0 ≥ k1)
/// has its (m, l) = (−inf, 0) written here for every head of the group, which the combine skips.
struct CacheSplit {
  int r, kvh, s, k0, k1;
  std::int64_t part;
};
__device__ __forceinline__ CacheSplit cache_split(const std::int32_t* __restrict__ pos, const std::int32_t* __restrict__ slot,
                                                  const std::int32_t* __restrict__ order, int nh, int group, int window,
                                                  int chunk, float* __restrict__ part_ml) {
  const int splits = gridDim.z, r = order ? order[blockIdx.y] : static_cast<int>(blockIdx.y), kvh = blockIdx.x,
            sp = blockIdx.z;
  const int p = pos[r];
  const int lo = window > 0 ? max(0, p - window + 1) : 0, hi = p + 1;
  CacheSplit c;
  c.r = r, c.kvh = kvh;
  c.s = slot ? slot[r] : r;
  c.k0 = lo + sp * chunk;
  c.k1 = min(hi, c.k0 + chunk);
  c.part = (static_cast<std::int64_t>(r) * nh + kvh * group) * splits + sp;
  if (c.k0 >= hi) {
    c.k1 = c.k0;
    for (int g = threadIdx.x; g < group; g += blockDim.x) {
      part_ml[2 * (c.part + static_cast<std::int64_t>(g) * splits)] = -INFINITY;
      part_ml[2 * (c.part + static_cast<std::int64_t>(g) * splits) + 1] = 0.0f;
    }
  }
  return c;
}

/// One block per (row, kv head, split): the query heads of kv head `blockIdx.y` of row
/// `blockIdx.x` over the split's keys [k0, k1) of the visible range [lo, pos]. Writes the split's
/// unnormalised output o = Σ exp(s − m)·v (per query head, fp32) and (m, l = Σ exp(s − m)); an
/// empty split writes l = 0. lpk = lanes per key (a power of 2 ≤ 32), hd = lpk·nv·VEC or less.
template <class T, int VEC>
__global__ void __launch_bounds__(kAttnThreads) cache_attention_split(
    const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc, const std::int32_t* __restrict__ slot,
    const std::int32_t* __restrict__ pos, const std::int32_t* __restrict__ order, int nh, int nkv, int hd, int max_ctx,
    int window, float scale, int chunk,
    int lpk, float* __restrict__ part_o, float* __restrict__ part_ml) {
  extern __shared__ float sh[];
  kern::pdl_wait();
  kern::pdl_trigger();
  const int group = nh / nkv, splits = gridDim.z;
  const CacheSplit cs = cache_split(pos, slot, order, nh, group, window, chunk, part_ml);
  const int r = cs.r, kvh = cs.kvh;
  if (cs.k0 >= cs.k1) return;  // empty: (m, l) written
  const int s = cs.s, k0 = cs.k0, k1 = cs.k1;
  const std::int64_t part = cs.part;
  const int cnt = k1 - k0;
  float* q_s = sh;                           // (group, hd)
  float* p_s = sh + group * hd;              // (group, chunk)
  float* ml_s = p_s + group * chunk;         // (group, 2)
  const T* qrow = q + static_cast<std::int64_t>(r) * nh * hd + static_cast<std::int64_t>(kvh) * group * hd;
  for (int i = threadIdx.x; i < group * hd; i += blockDim.x) q_s[i] = to_f(qrow[i]);
  __syncthreads();

  const std::int64_t head_base = (static_cast<std::int64_t>(s) * nkv + kvh) * max_ctx;
  const T* kbase = kc + head_base * hd;
  const T* vbase = vc + head_base * hd;
  // scores: lpk lanes per key, each lane VEC-wide chunks li, li + lpk, ...
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const int kpw = 32 / lpk, sub = lane / lpk, li = lane % lpk, nvec = hd / VEC;
  for (int kb = k0 + warp * kpw; kb < k1; kb += nwarps * kpw) {
    const int key = kb + sub;
    const bool valid = key < k1;
    float kr[kMaxVecPerLane][VEC];
#pragma unroll
    for (int u = 0; u < kMaxVecPerLane; ++u) {
      const int c = li + u * lpk;
      if (valid && c < nvec) {
        load_vec<VEC>(kbase + static_cast<std::int64_t>(key) * hd + c * VEC, kr[u]);
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) kr[u][e] = 0.0f;
      }
    }
    for (int g = 0; g < group; ++g) {
      float acc = 0.0f;
#pragma unroll
      for (int u = 0; u < kMaxVecPerLane; ++u) {
        const int c = li + u * lpk;
        if (c < nvec) {
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc += kr[u][e] * q_s[g * hd + c * VEC + e];
        }
      }
      for (int o = lpk >> 1; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
      if (valid && li == 0) p_s[g * chunk + (key - k0)] = acc * scale;
    }
  }
  __syncthreads();
  // per-split softmax statistics: one warp per query head
  for (int g = warp; g < group; g += nwarps) {
    float m = -INFINITY;
    for (int j = lane; j < cnt; j += 32) m = fmaxf(m, p_s[g * chunk + j]);
    m = kern::warp_max(m);
    float l = 0.0f;
    for (int j = lane; j < cnt; j += 32) {
      const float e = __expf(p_s[g * chunk + j] - m);
      p_s[g * chunk + j] = e;
      l += e;
    }
    l = kern::warp_sum(l);
    if (lane == 0) ml_s[2 * g] = m, ml_s[2 * g + 1] = l;
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < group * hd; idx += blockDim.x) {
    const int g = idx / hd, d = idx % hd;
    const float* pg = p_s + g * chunk;
    const T* vcol = vbase + static_cast<std::int64_t>(k0) * hd + d;
    float acc = 0.0f;
#pragma unroll 8
    for (int j = 0; j < cnt; ++j) acc += pg[j] * to_f(vcol[static_cast<std::int64_t>(j) * hd]);
    part_o[(part + static_cast<std::int64_t>(g) * splits) * hd + d] = acc;
  }
  for (int g = threadIdx.x; g < group; g += blockDim.x) {
    part_ml[2 * (part + static_cast<std::int64_t>(g) * splits)] = ml_s[2 * g];
    part_ml[2 * (part + static_cast<std::int64_t>(g) * splits) + 1] = ml_s[2 * g + 1];
  }
}

/// Merges two online-softmax states (max m in the log2 domain, sum l, unnormalised output o) into
/// the first; an empty state has m = -inf, l = 0, o = 0 (two empty states stay empty).
__device__ __forceinline__ void merge_softmax_state(float& m, float& l, float om, float ol, float& scale_a,
                                                    float& scale_b) {
  const float mn = fmaxf(m, om);
  scale_a = mn == -INFINITY ? 0.0f : exp2f(m - mn);
  scale_b = mn == -INFINITY ? 0.0f : exp2f(om - mn);
  l = l * scale_a + ol * scale_b;
  m = mn;
}

/// The end of a split kernel: merges the per-warp states in shared memory — o_s (nwarps, group, hd)
/// unnormalised outputs, m_s / l_s (nwarps, group) maxima (log2 domain) and sums, an empty warp
/// with m = -inf — and writes the split's result: with `out` (one split) the normalised output,
/// else part_o / part_ml as cache_attention_combine reads them. Call after a barrier.
template <class T>
__device__ __forceinline__ void merge_warps_and_write(const float* o_s, const float* m_s, const float* l_s, int nwarps,
                                                      int r, int kvh, int nh, int group, int hd, std::int64_t part,
                                                      int splits, float* __restrict__ part_o,
                                                      float* __restrict__ part_ml, T* __restrict__ out) {
  constexpr float kLn2 = 0.69314718055994530942f;
  for (int idx = threadIdx.x; idx < group * hd; idx += blockDim.x) {
    const int g = idx / hd, d = idx % hd;
    float M = -INFINITY;
    for (int w = 0; w < nwarps; ++w) M = fmaxf(M, m_s[w * group + g]);
    float acc = 0.0f, L = 0.0f;
    if (M != -INFINITY) {
      for (int w = 0; w < nwarps; ++w) {
        const float f = exp2f(m_s[w * group + g] - M);  // an empty warp: exp2(-inf) = 0
        acc += f * o_s[(w * group + g) * hd + d];
        L += f * l_s[w * group + g];
      }
    }
    if (out != nullptr) {  // one split: the combine's arithmetic (exp(0)·l = l, exp(0)·o = o, o·(1/l))
      const float inv = L > 0.0f ? 1.0f / L : 0.0f;
      out[(static_cast<std::int64_t>(r) * nh + kvh * group + g) * hd + d] = from_f<T>((L > 0.0f ? acc : 0.0f) * inv);
      continue;
    }
    const std::int64_t pi = part + static_cast<std::int64_t>(g) * splits;
    part_o[pi * hd + d] = acc;
    if (d == 0) {  // (m, l) in the natural-log domain, as cache_attention_combine reads them
      part_ml[2 * pi] = M == -INFINITY ? -INFINITY : M * kLn2;
      part_ml[2 * pi + 1] = L;
    }
  }
}

/// The fused kernel's per-lane state: the running (m, l, o) of each query head of the group (m in
/// the log2 domain, o unnormalised) over the keys this lane's subgroup has seen, and the lane's
/// query slices pre-scaled by scale·log2(e). Shared by cache_attention_fused and
/// cache_attention_bulk, whose arithmetic is thereby one.
template <int VEC, int GROUP, int NV>
struct FusedAttnState {
  float qv[GROUP][NV][VEC];
  float m[GROUP], l[GROUP], o[GROUP][NV][VEC];

  /// Loads this lane's query slices (lane li of a subgroup of lpk lanes: vectors li, li + lpk, …)
  /// of the group's heads of row r, kv head kvh, and clears (m, l, o).
  template <class T>
  __device__ __forceinline__ void init(const T* __restrict__ q, int r, int kvh, int nh, int group, int hd, int lpk,
                                       int li, float scale_log2) {
    const int nvec = hd / VEC;
    const T* qrow = q + static_cast<std::int64_t>(r) * nh * hd + static_cast<std::int64_t>(kvh) * group * hd;
#pragma unroll
    for (int g = 0; g < GROUP; ++g)
#pragma unroll
      for (int u = 0; u < NV; ++u) {
        const int c = li + u * lpk;
        if (g < group && c < nvec) {
          load_vec<VEC>(qrow + static_cast<std::int64_t>(g) * hd + c * VEC, qv[g][u]);
#pragma unroll
          for (int e = 0; e < VEC; ++e) qv[g][u][e] *= scale_log2;
        } else {
#pragma unroll
          for (int e = 0; e < VEC; ++e) qv[g][u][e] = 0.0f;
        }
      }
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
      m[g] = -INFINITY, l[g] = 0.0f;
#pragma unroll
      for (int u = 0; u < NV; ++u)
#pragma unroll
        for (int e = 0; e < VEC; ++e) o[g][u][e] = 0.0f;
    }
  }

  /// Takes one key (this lane's K and V slices kr, vr; zeros and valid = false past the split's
  /// end, where the subgroup still joins the shuffles): the score per query head (the lanes'
  /// partial dots summed across the subgroup), then the online-softmax update of (m, l, o).
  __device__ __forceinline__ void take(const float (&kr)[NV][VEC], const float (&vr)[NV][VEC], bool valid, int group,
                                       int lpk) {
#pragma unroll
    for (int g = 0; g < GROUP; ++g) {
      float dot = 0.0f;
#pragma unroll
      for (int u = 0; u < NV; ++u)
#pragma unroll
        for (int e = 0; e < VEC; ++e) dot += kr[u][e] * qv[g][u][e];
      for (int off = lpk >> 1; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
      if (g < group && valid) {  // uniform within the subgroup
        const float mn = fmaxf(m[g], dot);
        const float corr = exp2f(m[g] - mn), pe = exp2f(dot - mn);
        l[g] = l[g] * corr + pe;
#pragma unroll
        for (int u = 0; u < NV; ++u)
#pragma unroll
          for (int e = 0; e < VEC; ++e) o[g][u][e] = o[g][u][e] * corr + pe * vr[u][e];
        m[g] = mn;
      }
    }
  }

  /// Merges the block's states and writes the split's result: first across the warp's subgroups
  /// (lanes li, li + lpk, … hold the same slices of different keys; shuffles), then across the
  /// warps through `sh` (nwarps·group·(hd + 2) floats; every thread must call this, after a barrier
  /// if `sh` aliases memory the block read). With `out` (one split) the normalised output, else
  /// part_o / part_ml as cache_attention_combine reads them.
  template <class T>
  __device__ __forceinline__ void finish(float* sh, int r, int kvh, int nh, int group, int hd, int lpk,
                                         std::int64_t part, int splits, float* __restrict__ part_o,
                                         float* __restrict__ part_ml, T* __restrict__ out) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
    const int sub = lane / lpk, li = lane % lpk, nvec = hd / VEC;
    for (int off = lpk; off < 32; off <<= 1) {
#pragma unroll
      for (int g = 0; g < GROUP; ++g) {
        const float om = __shfl_xor_sync(0xffffffffu, m[g], off), ol = __shfl_xor_sync(0xffffffffu, l[g], off);
        float sa, sb;
        merge_softmax_state(m[g], l[g], om, ol, sa, sb);
#pragma unroll
        for (int u = 0; u < NV; ++u)
#pragma unroll
          for (int e = 0; e < VEC; ++e) {
            const float oo = __shfl_xor_sync(0xffffffffu, o[g][u][e], off);
            o[g][u][e] = o[g][u][e] * sa + oo * sb;
          }
      }
    }
    // merge the warps through shared memory: (nwarps, group, hd) outputs, then (nwarps, group) m, l
    float* o_s = sh;
    float* m_s = sh + static_cast<std::size_t>(nwarps) * group * hd;
    float* l_s = m_s + nwarps * group;
    if (sub == 0) {
#pragma unroll
      for (int g = 0; g < GROUP; ++g) {
        if (g >= group) break;
#pragma unroll
        for (int u = 0; u < NV; ++u) {
          const int c = li + u * lpk;
          if (c < nvec) {
#pragma unroll
            for (int e = 0; e < VEC; ++e) o_s[(warp * group + g) * hd + c * VEC + e] = o[g][u][e];
          }
        }
        if (li == 0) m_s[warp * group + g] = m[g], l_s[warp * group + g] = l[g];
      }
    }
    __syncthreads();
    merge_warps_and_write(o_s, m_s, l_s, nwarps, r, kvh, nh, group, hd, part, splits, part_o, part_ml, out);
  }
};

/// What an empty split of the fused kernels writes besides cache_split's (m, l): with `out` (one
/// split), the combine's output of an empty row, 0.
template <class T>
__device__ __forceinline__ void fused_empty_split(T* __restrict__ out, int r, int kvh, int nh, int group, int hd) {
  if (out != nullptr)
    for (int idx = threadIdx.x; idx < group * hd; idx += blockDim.x)
      out[(static_cast<std::int64_t>(r) * nh + kvh * group) * hd + idx] = from_f<T>(0.0f);
}

/// The fused (single-pass) split kernel of the cache attention, for head dims of at most 2 × 32
/// 16-byte vectors and GQA groups of at most GROUP query heads: one block per (row, kv head, split)
/// like cache_attention_split, with the same outputs (part_o unnormalised, part_ml = (m, l) in the
/// natural-log domain), but every key is read exactly once, K and V with 16-byte loads, and the
/// softmax is online: lane subgroups of lpk lanes each own one key at a time (kpw = 32 / lpk keys
/// per warp and step), keep a running (m, l, o) per query head of the group in registers, and are
/// merged at the end, first across the warp's subgroups (shuffles), then across the warps (shared
/// memory). No score round trip through shared memory, no idle warps during the softmax: the kernel
/// streams the cache at close to the memory bandwidth, which the two-phase kernel did not
/// (2.1 TB/s at LLaMA-2-7B, batch 64, contexts ≈ 300: docs/evaluation.md, "Decode profile").
/// Subgroup sg = warp·kpw + sub takes the split's keys k0 + sg + j·(nwarps·kpw), j = 0, 1, … in
/// that order (cache_attention_bulk keeps this order, hence the same bits).
/// `out` (non-null only with one split): the block writes the normalised attention output (n,
/// nh·hd) itself, exactly what cache_attention_combine would write from its one part (the same
/// float operations), and no combine runs.
template <class T, int VEC, int GROUP, int NV>
__global__ void __launch_bounds__(kAttnThreads) cache_attention_fused(
    const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc, const std::int32_t* __restrict__ slot,
    const std::int32_t* __restrict__ pos, const std::int32_t* __restrict__ order, int nh, int nkv, int hd, int max_ctx,
    int window, float scale_log2,
    int chunk, int lpk, float* __restrict__ part_o, float* __restrict__ part_ml, T* __restrict__ out) {
  extern __shared__ float sh[];
  kern::pdl_wait();
  kern::pdl_trigger();
  const int group = nh / nkv;
  const CacheSplit cs = cache_split(pos, slot, order, nh, group, window, chunk, part_ml);
  const int r = cs.r, kvh = cs.kvh;
  if (cs.k0 >= cs.k1) {  // empty: (m, l) written
    fused_empty_split(out, r, kvh, nh, group, hd);
    return;
  }
  const int s = cs.s, k0 = cs.k0, k1 = cs.k1;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const int kpw = 32 / lpk, sub = lane / lpk, li = lane % lpk, nvec = hd / VEC;
  FusedAttnState<VEC, GROUP, NV> st;
  st.init(q, r, kvh, nh, group, hd, lpk, li, scale_log2);
  const std::int64_t head_base = (static_cast<std::int64_t>(s) * nkv + kvh) * max_ctx;
  const T* kbase = kc + head_base * hd;
  const T* vbase = vc + head_base * hd;
  const int stride = nwarps * kpw;  // keys per block and step
  // Two keys per subgroup and iteration: both keys' K and V loads are issued before the math.
  for (int kb = k0 + warp * kpw; kb < k1; kb += 2 * stride) {
    float kr[2][NV][VEC], vr[2][NV][VEC];
    bool valid[2];
#pragma unroll
    for (int t = 0; t < 2; ++t) {
      const int key = kb + t * stride + sub;
      valid[t] = key < k1;
#pragma unroll
      for (int u = 0; u < NV; ++u) {
        const int c = li + u * lpk;
        if (valid[t] && c < nvec) {
          load_vec<VEC>(kbase + static_cast<std::int64_t>(key) * hd + c * VEC, kr[t][u]);
          load_vec<VEC>(vbase + static_cast<std::int64_t>(key) * hd + c * VEC, vr[t][u]);
        } else {
#pragma unroll
          for (int e = 0; e < VEC; ++e) kr[t][u][e] = 0.0f, vr[t][u][e] = 0.0f;
        }
      }
    }
#pragma unroll
    for (int t = 0; t < 2; ++t) st.take(kr[t], vr[t], valid[t], group, lpk);
  }
  st.finish(sh, r, kvh, nh, group, hd, lpk, cs.part, gridDim.z, part_o, part_ml, out);
}

// --- the bulk-copy kernel (sm_90: cp.async.bulk + mbarrier) -------------------------------------

using flash::detail::smem_u32;  // (the flash kernels' helper, flash_attn.cuh)
__device__ __forceinline__ void mbar_init(std::uint32_t bar, std::uint32_t count) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
#endif
}
__device__ __forceinline__ void mbar_fence_init() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_expect_tx(std::uint32_t bar, std::uint32_t bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
#endif
}
/// `bytes` (a multiple of 16) from global `src` (16-byte aligned) to shared `dst` (16-byte
/// aligned), completing as transactions on the mbarrier `bar`.
__device__ __forceinline__ void bulk_g2s(std::uint32_t dst, const void* src, std::uint32_t bytes, std::uint32_t bar) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
#endif
}
__device__ __forceinline__ void mbar_wait(std::uint32_t bar, std::uint32_t parity) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  std::uint32_t done = 0;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.b32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
#endif
}

/// Tile i of a split (keys i·tile_keys … of its cnt, K and V) into stage i % stages: one bulk copy
/// each, completing on the stage's mbarrier, which expects both copies' bytes (thread 0).
template <class T>
__device__ __forceinline__ void bulk_issue_tile(int i, int stages, int tile_keys, int cnt, int hd, std::uint32_t row_bytes,
                                                std::uint32_t tile_bytes, std::uint32_t bar0, std::uint32_t tiles0,
                                                const T* kbase, const T* vbase) {
  const std::uint32_t stg = static_cast<std::uint32_t>(i % stages);
  const std::uint32_t bytes = static_cast<std::uint32_t>(min(tile_keys, cnt - i * tile_keys)) * row_bytes;
  const std::uint32_t bar = bar0 + 8u * stg, dst = tiles0 + 2u * tile_bytes * stg;
  const std::int64_t off = static_cast<std::int64_t>(i) * tile_keys * hd;
  mbar_expect_tx(bar, 2u * bytes);
  bulk_g2s(dst, kbase + off, bytes, bar);
  bulk_g2s(dst + tile_bytes, vbase + off, bytes, bar);
}

/// Bytes reserved for the bulk kernel's mbarriers at the start of its shared memory (≤ 16 stages).
inline constexpr int kBulkBarrierBytes = 128;
inline constexpr int kBulkMaxStages = 16;

/// cache_attention_fused's arithmetic with the keys brought into shared memory by bulk
/// asynchronous copies (sm_90): the split's K and V rows, contiguous in the cache, go in tiles of
/// `tile_keys` keys through a ring of `stages` shared-memory buffers, each tile one
/// cp.async.bulk per K and V issued by thread 0 and completing on the stage's mbarrier, up to
/// `stages` tiles ahead of the math. The loads thereby no longer wait behind each key's math
/// (the register kernel issues its next key's loads only after this one's shuffles and exps), and
/// the copy engine streams whole 8–16 KiB rows. The subgroups take the tile's keys in
/// cache_attention_fused's order (subgroup sg: keys sg, sg + stride, …; tile_keys a multiple of
/// 2·stride), with the same per-key arithmetic (FusedAttnState) and merge: the same bits.
/// Shared memory: kBulkBarrierBytes + max(stages · 2 · tile_keys · hd · sizeof(T), the merge's).
template <class T, int VEC, int GROUP, int NV, int MINB = 1>
__global__ void __launch_bounds__(kAttnThreads, MINB) cache_attention_bulk(
    const T* __restrict__ q, const T* __restrict__ kc, const T* __restrict__ vc, const std::int32_t* __restrict__ slot,
    const std::int32_t* __restrict__ pos, const std::int32_t* __restrict__ order, int nh, int nkv, int hd, int max_ctx,
    int window, float scale_log2,
    int chunk, int lpk, int tile_keys, int stages, float* __restrict__ part_o, float* __restrict__ part_ml,
    T* __restrict__ out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) unsigned char bulk_sh[];
  kern::pdl_wait();  // (as CUTLASS's sm_90 kernels: the wait before the first bulk copy)
  kern::pdl_trigger();
  const int group = nh / nkv;
  const CacheSplit cs = cache_split(pos, slot, order, nh, group, window, chunk, part_ml);
  const int r = cs.r, kvh = cs.kvh;
  if (cs.k0 >= cs.k1) {
    fused_empty_split(out, r, kvh, nh, group, hd);
    return;
  }
  const int k0 = cs.k0, cnt = cs.k1 - cs.k0;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, nwarps = blockDim.x >> 5;
  const int kpw = 32 / lpk, sub = lane / lpk, li = lane % lpk, nvec = hd / VEC;
  const int stride = nwarps * kpw, sg = warp * kpw + sub;
  const std::int64_t head_base = (static_cast<std::int64_t>(cs.s) * nkv + kvh) * max_ctx;
  const T* kbase = kc + (head_base + k0) * hd;
  const T* vbase = vc + (head_base + k0) * hd;
  const std::uint32_t row_bytes = static_cast<std::uint32_t>(hd * sizeof(T));
  const std::uint32_t tile_bytes = static_cast<std::uint32_t>(tile_keys) * row_bytes;
  unsigned char* tiles = bulk_sh + kBulkBarrierBytes;
  const std::uint32_t bar0 = smem_u32(bulk_sh), tiles0 = smem_u32(tiles);
  const int ntiles = (cnt + tile_keys - 1) / tile_keys;
  if (threadIdx.x == 0) {
    for (int i = 0; i < stages; ++i) mbar_init(bar0 + 8u * static_cast<std::uint32_t>(i), 1);
    mbar_fence_init();
    for (int i = 0; i < min(stages, ntiles); ++i)
      bulk_issue_tile(i, stages, tile_keys, cnt, hd, row_bytes, tile_bytes, bar0, tiles0, kbase, vbase);
  }
  FusedAttnState<VEC, GROUP, NV> st;  // the query's loads overlap the first tiles' copies
  st.init(q, r, kvh, nh, group, hd, lpk, li, scale_log2);
  __syncthreads();
  for (int i = 0; i < ntiles; ++i) {
    const int stg = i % stages;
    mbar_wait(bar0 + 8u * static_cast<std::uint32_t>(stg), static_cast<std::uint32_t>((i / stages) & 1));
    const int nk = min(tile_keys, cnt - i * tile_keys);
    const T* kt = reinterpret_cast<const T*>(tiles + 2u * tile_bytes * static_cast<std::uint32_t>(stg));
    const T* vt = reinterpret_cast<const T*>(tiles + 2u * tile_bytes * static_cast<std::uint32_t>(stg) + tile_bytes);
    for (int j = sg; j < tile_keys; j += 2 * stride) {
      float kr[2][NV][VEC], vr[2][NV][VEC];
      bool valid[2];
#pragma unroll
      for (int t = 0; t < 2; ++t) {
        const int key = j + t * stride;
        valid[t] = key < nk;
#pragma unroll
        for (int u = 0; u < NV; ++u) {
          const int c = li + u * lpk;
          if (valid[t] && c < nvec) {
            load_vec<VEC>(kt + key * hd + c * VEC, kr[t][u]);
            load_vec<VEC>(vt + key * hd + c * VEC, vr[t][u]);
          } else {
#pragma unroll
            for (int e = 0; e < VEC; ++e) kr[t][u][e] = 0.0f, vr[t][u][e] = 0.0f;
          }
        }
      }
#pragma unroll
      for (int t = 0; t < 2; ++t) st.take(kr[t], vr[t], valid[t], group, lpk);
    }
    __syncthreads();  // every thread is done with stage stg: it may be refilled
    if (threadIdx.x == 0 && i + stages < ntiles)
      bulk_issue_tile(i + stages, stages, tile_keys, cnt, hd, row_bytes, tile_bytes, bar0, tiles0, kbase, vbase);
  }
  // every tile consumed and no copy pending: the merge may reuse the tile buffers
  st.finish(reinterpret_cast<float*>(tiles), r, kvh, nh, group, hd, lpk, cs.part, gridDim.z, part_o, part_ml, out);
#else
  __trap();  // launch_cache_attention_bulk refuses devices below sm_90
#endif
}

// --- the tensor-core GQA kernel (bf16, sm_80+: mma.sync m16n8k16) ---------------------------------

/// cache_attention_mma's keys per warp and stage, and its shared-memory row pitch for a head of hd
/// bf16: hd·2 + 16 bytes, so that the 8 rows of every 8 × 8 ldmatrix fall on distinct banks.
inline constexpr int kMmaKeys = 16;
__host__ __device__ constexpr int mma_row_bytes(int hd) { return hd * 2 + 16; }

// cp.async, ldmatrix and bf16 packing: the flash kernels' helpers (flash_attn.cuh)
using flash::detail::cp_async16;
using flash::detail::cp_async_commit;
using flash::detail::cp_async_wait;
using flash::detail::ldsm_x4;
using flash::detail::ldsm_x4_t;
using flash::detail::pack;

/// d(rows g) += A·B for one m16n8k16 bf16 product with fp32 accumulation, where A's rows 8–15 are
/// zero (a1 = a3 = 0: the group's ≤ 8 query heads are rows 0–7): only the accumulators of row
/// g = lane / 4 (d0, d1) are kept; rows g + 8 come out zero and are dropped.
__device__ __forceinline__ void mma_rows8(float& d0, float& d1, std::uint32_t a0, std::uint32_t a2, std::uint32_t b0,
                                          std::uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  [[maybe_unused]] float x2, x3;  // rows g + 8: zero, dropped
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};\n"
      : "=f"(d0), "=f"(d1), "=f"(x2), "=f"(x3)
      : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1), "f"(d0), "f"(d1), "f"(0.0f), "f"(0.0f));
#endif
}

/// Dynamic shared memory of cache_attention_mma<HD, STAGES>: each warp's ring of STAGES K and V
/// tiles of kMmaKeys padded rows, or the merge's (4 warps, group, hd + 2) floats if larger.
inline std::size_t cache_attention_mma_smem(int hd, int group, int stages) {
  const std::size_t tiles = static_cast<std::size_t>(kAttnThreads / 32) * stages * 2 * kMmaKeys * mma_row_bytes(hd);
  const std::size_t merge = sizeof(float) * static_cast<std::size_t>(kAttnThreads / 32) * group * (hd + 2);
  return std::max(tiles, merge);
}

/// The tensor-core split kernel for GQA groups of 2 to 8 in bf16 (the shapes where the register
/// kernels are latency-bound: a chain of shuffle reductions and exponentials per key and head).
/// One block per (row, kv head, split) as the others (cache_split); its 4 warps take the split's
/// keys in runs of kMmaKeys (warp w: runs w, w + 4, …), each through its own ring of STAGES
/// shared-memory tiles filled by cp.async (16 bytes a lane, rows padded to mma_row_bytes; keys past
/// the split zero-filled). Per run: S = Q·Kᵀ as (group ≤ 8 rows of an m16 tile) × 16 keys in
/// HD / 16 m16n8k16 products (Q's fragments in registers, K's by ldmatrix), then per query head an
/// online softmax in fp32 (max over the quad's lanes; P = exp2(S·scale·log2 e − m)), then O += P·V
/// with P rounded to bf16 as the products' A operand (V's fragments by ldmatrix.trans), fp32
/// accumulation. The warps' states merge as the fused kernel's (merge_warps_and_write). Not the
/// fused kernel's bits: the scores' sums run in another order and P·V takes P in bf16 (as
/// FlashAttention's kernels do); tests bound its error against float64.
template <int HD, int STAGES>
__global__ void __launch_bounds__(kAttnThreads) cache_attention_mma(
    const __nv_bfloat16* __restrict__ q, const __nv_bfloat16* __restrict__ kc, const __nv_bfloat16* __restrict__ vc,
    const std::int32_t* __restrict__ slot, const std::int32_t* __restrict__ pos, const std::int32_t* __restrict__ order,
    int nh, int nkv, int max_ctx, int window, float scale_log2, int chunk, float* __restrict__ part_o,
    float* __restrict__ part_ml, __nv_bfloat16* __restrict__ out) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  static_assert(HD % 16 == 0 && STAGES >= 2, "cache_attention_mma: hd a multiple of 16, two stages or more");
  using bf16 = __nv_bfloat16;
  extern __shared__ __align__(128) unsigned char mma_sh[];
  kern::pdl_wait();
  kern::pdl_trigger();
  const int group = nh / nkv;
  const CacheSplit cs = cache_split(pos, slot, order, nh, group, window, chunk, part_ml);
  if (cs.k0 >= cs.k1) {
    fused_empty_split(out, cs.r, cs.kvh, nh, group, HD);
    return;
  }
  constexpr int RB = mma_row_bytes(HD), CH = HD / 8, KT = HD / 16, NT = HD / 8;
  constexpr int kWarps = kAttnThreads / 32, kStageBytes = 2 * kMmaKeys * RB;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
  const int cnt = cs.k1 - cs.k0;
  const std::int64_t head_base = (static_cast<std::int64_t>(cs.s) * nkv + cs.kvh) * max_ctx + cs.k0;
  const bf16* kbase = kc + head_base * HD;
  const bf16* vbase = vc + head_base * HD;
  const std::uint32_t ring = smem_u32(mma_sh) + static_cast<std::uint32_t>(warp * STAGES * kStageBytes);
  const int runs = (cnt + kWarps * kMmaKeys - 1) / (kWarps * kMmaKeys);  // per warp (the last may be empty)
  // run i of this warp: keys (i·4 + warp)·16 … + 16 of the split, K then V into stage i % STAGES
  auto issue = [&](int i) {
    const int key0 = (i * kWarps + warp) * kMmaKeys;
    const std::uint32_t kst = ring + static_cast<std::uint32_t>((i % STAGES) * kStageBytes), vst = kst + kMmaKeys * RB;
#pragma unroll
    for (int t = lane; t < kMmaKeys * CH; t += 32) {
      const int kr = t / CH, ch = t % CH, key = key0 + kr;
      const bool ok = key < cnt;
      const std::int64_t off = static_cast<std::int64_t>(ok ? key : 0) * HD + ch * 8;
      cp_async16(kst + kr * RB + ch * 16, kbase + off, ok);  // past the split: zero-filled
      cp_async16(vst + kr * RB + ch * 16, vbase + off, ok);
    }
  };
#pragma unroll
  for (int i = 0; i < STAGES - 1; ++i) {
    if (i < runs) issue(i);
    cp_async_commit();
  }
  // Q's A fragments: row g (query head g of the group; zero past the group), k = 2c, 2c + 1 (a0)
  // and 2c + 8, 2c + 9 (a2) of each 16-wide k step
  std::uint32_t qa[KT][2];
  {
    const bf16* qrow = q + (static_cast<std::int64_t>(cs.r) * nh + cs.kvh * group + g) * HD;
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
      qa[kk][0] = g < group ? *reinterpret_cast<const std::uint32_t*>(qrow + kk * 16 + 2 * c) : 0u;
      qa[kk][1] = g < group ? *reinterpret_cast<const std::uint32_t*>(qrow + kk * 16 + 8 + 2 * c) : 0u;
    }
  }
  float o[NT][2];
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) o[nt][0] = o[nt][1] = 0.0f;
  float m_run = -INFINITY, l_run = 0.0f;  // row g's running max (log2 domain) and this lane's part of its sum
  // ldmatrix row addresses: lane l gives row l % 8 of matrix l / 8
  const int mj = lane >> 3, mr = lane & 7;
  for (int i = 0; i < runs; ++i) {
    cp_async_wait<STAGES - 2>();
    __syncwarp();  // run i's tiles (every lane's copies) are in; stage (i − 1) % STAGES is free
    if (i + STAGES - 1 < runs) issue(i + STAGES - 1);
    cp_async_commit();
    const int kb = (i * kWarps + warp) * kMmaKeys;
    if (kb >= cnt) continue;  // this warp's last run lies past the split (warp-uniform)
    const std::uint32_t kst = ring + static_cast<std::uint32_t>((i % STAGES) * kStageBytes), vst = kst + kMmaKeys * RB;
    // S (rows g, keys 2c, 2c + 1 in s0; 8 + 2c, 9 + 2c in s1) = Q·Kᵀ; ldmatrix matrices: keys 0–7
    // dims lo / hi, keys 8–15 dims lo / hi
    float s0[2] = {0.0f, 0.0f}, s1[2] = {0.0f, 0.0f};
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
      std::uint32_t b[4];
      ldsm_x4(kst + static_cast<std::uint32_t>(((mj >> 1) * 8 + mr) * RB + (kk * 16 + (mj & 1) * 8) * 2), b);
      mma_rows8(s0[0], s0[1], qa[kk][0], qa[kk][1], b[0], b[1]);
      mma_rows8(s1[0], s1[1], qa[kk][0], qa[kk][1], b[2], b[3]);
    }
    float sv[4] = {s0[0] * scale_log2, s0[1] * scale_log2, s1[0] * scale_log2, s1[1] * scale_log2};
    const int kidx[4] = {kb + 2 * c, kb + 2 * c + 1, kb + 8 + 2 * c, kb + 9 + 2 * c};
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (kidx[j] >= cnt) sv[j] = -INFINITY;
      mx = fmaxf(mx, sv[j]);
    }
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float mn = fmaxf(m_run, mx);  // finite: the run has a valid key (kb < cnt)
    const float corr = exp2f(m_run - mn);
    float p[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) p[j] = exp2f(sv[j] - mn);
    l_run = l_run * corr + (p[0] + p[1] + p[2] + p[3]);
    m_run = mn;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) o[nt][0] *= corr, o[nt][1] *= corr;
    // O += P·V: P's A fragment (row g, keys 2c.. in a0, 8 + 2c.. in a2); V's B fragments by
    // ldmatrix.trans, matrices: keys 0–7 / 8–15 of dims d…d+7, then of d+8…d+15
    const std::uint32_t pa0 = pack(p[0], p[1]), pa2 = pack(p[2], p[3]);
#pragma unroll
    for (int n2 = 0; n2 < NT / 2; ++n2) {
      std::uint32_t b[4];
      ldsm_x4_t(vst + static_cast<std::uint32_t>(((mj & 1) * 8 + mr) * RB + (n2 * 16 + (mj >> 1) * 8) * 2), b);
      mma_rows8(o[2 * n2][0], o[2 * n2][1], pa0, pa2, b[0], b[1]);
      mma_rows8(o[2 * n2 + 1][0], o[2 * n2 + 1][1], pa0, pa2, b[2], b[3]);
    }
  }
  cp_async_wait<0>();
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 1);
  l_run += __shfl_xor_sync(0xffffffffu, l_run, 2);
  __syncthreads();  // every warp is done with its ring: the merge reuses the shared memory
  float* o_s = reinterpret_cast<float*>(mma_sh);
  float* m_s = o_s + static_cast<std::size_t>(kWarps) * group * HD;
  float* l_s = m_s + kWarps * group;
  if (g < group) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      o_s[(warp * group + g) * HD + nt * 8 + 2 * c] = o[nt][0];
      o_s[(warp * group + g) * HD + nt * 8 + 2 * c + 1] = o[nt][1];
    }
    if (c == 0) m_s[warp * group + g] = m_run, l_s[warp * group + g] = l_run;
  }
  __syncthreads();
  merge_warps_and_write(o_s, m_s, l_s, kWarps, cs.r, cs.kvh, nh, group, HD, cs.part, static_cast<int>(gridDim.z),
                        part_o, part_ml, out);
#else
  __trap();  // launch_cache_attention_mma refuses devices below sm_80
#endif
}

/// Merges the splits of every (row, query head) into the attention output (n, nh·hd) in T.
/// grid (n·nh), block 128.
template <class T>
__global__ void cache_attention_combine(const float* __restrict__ part_o, const float* __restrict__ part_ml, int splits,
                                        int hd, T* __restrict__ out) {
  kern::pdl_wait();
  kern::pdl_trigger();
  const std::int64_t rh = blockIdx.x;  // r·nh + h: out row-major (n, nh·hd) is (n·nh, hd)
  const float* ml = part_ml + 2 * rh * splits;
  float M = -INFINITY;
  for (int i = 0; i < splits; ++i)
    if (ml[2 * i + 1] > 0.0f) M = fmaxf(M, ml[2 * i]);
  float L = 0.0f;
  for (int i = 0; i < splits; ++i)
    if (ml[2 * i + 1] > 0.0f) L += __expf(ml[2 * i] - M) * ml[2 * i + 1];
  const float inv = L > 0.0f ? 1.0f / L : 0.0f;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float acc = 0.0f;
    for (int i = 0; i < splits; ++i)
      if (ml[2 * i + 1] > 0.0f) acc += __expf(ml[2 * i] - M) * part_o[(rh * splits + i) * hd + d];
    out[rh * hd + d] = from_f<T>(acc * inv);
  }
}

/// Which split kernel launch_cache_attention runs. Auto: in bf16 for GQA groups of 2 to 8 with
/// head_dim 64 or 128 on sm_80 and later the tensor-core one (cache_attention_mma: session 34, c99,
/// H100: 2.7× the bulk kernel at LLaMA-3-8B's heads, 5.8× the two-phase one at TinyLlama's); else
/// on sm_90 the bulk one for groups of at most 4 (cache_attention_runs_bulk); elsewhere the fused one for MHA and groups of 2 (its
/// registers grow with the group: 72 at group 1, 255 at group 8 with hd 64–128, against the
/// two-phase kernel's 64, which already reads each key once per group); the two-phase one otherwise
/// and wherever the fused one does not take the shape. Fused / TwoPhase: that kernel (Fused falls
/// back to the two-phase one for a shape it does not take); the tests run both. Bulk: the fused
/// kernel's arithmetic with its keys brought in by bulk copies (cache_attention_bulk; sm_90 and the
/// fused kernel's shapes, else as Fused), the same bits as Fused. Mma: the tensor-core kernel
/// (cache_attention_mma) for bf16, GQA groups of 2 to 8, head_dim 64 or 128, sm_80 and later;
/// elsewhere as Auto. Not the other kernels' bits (P·V takes P in bf16).
enum class CacheAttentionKernel { Auto, Fused, TwoPhase, Bulk, Mma };

/// cache_attention_bulk's tiling: keys per tile (rounded up to a multiple of the block's 2·stride
/// keys per step, see launch_cache_attention_bulk) and shared-memory stages (1 … kBulkMaxStages).
/// Default 32 × 2 (session 34, c98, H100, bench_cache_attention: LLaMA-2-7B heads at 512 keys per
/// split 110.6 us against 16 × 2's 119.5, LLaMA-3-8B heads at 256 86.6 against 88.2; the 7B decode
/// step 9.00 against 9.22 ms, the same completions).
struct BulkTiling {
  int tile_keys = 32;
  int stages = 2;
  int min_blocks = 0;  // 8: the MHA kernel compiled for 8 blocks per SM (≤ 64 registers); 0: no bound
  int mma_stages = 2;  // CacheAttentionKernel::Mma: each warp's ring of 16-key tiles (2 to 4; c99: 2 fastest)
};

/// Whether cache_attention_fused takes (hd, group) for T: hd a multiple of the 16-byte vector,
/// at most 2 vectors per lane (hd ≤ 512 bytes), group ≤ 8.
template <class T>
inline bool cache_attention_fused_supported(int hd, int group) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  return hd % kVec == 0 && hd / kVec <= 64 && group >= 1 && group <= 8;
}

/// Whether CacheAttentionKernel::Auto runs the fused kernel for (hd, group): MHA and groups of 2,
/// where the fused kernel takes the shape.
template <class T>
inline bool cache_attention_auto_fused(int hd, int group) {
  return group <= 2 && cache_attention_fused_supported<T>(hd, group);
}

/// Dynamic shared memory of the two-phase kernel (cache_attention_split): a chunk of scores and the
/// query slices per group head, plus (m, l) per head.
inline std::size_t cache_attention_split_smem(int group, int hd, int chunk) {
  return sizeof(float) * (static_cast<std::size_t>(group) * (hd + chunk) + 2 * group);
}

/// The lanes per key of the split kernels for a head of nvec vectors (a power of 2 ≤ 32).
inline int lanes_per_key(int nvec) {
  int lpk = 1;
  while (lpk * 2 <= nvec && lpk * 2 <= 32) lpk *= 2;
  return lpk;
}

/// Calls f(integral_constant<GROUP>, integral_constant<NV>) with the compiled group bound (1, 2, 4
/// or 8) that covers `group` and nv (1 or 2 vectors per lane): the fused and bulk kernels' instances.
template <class F>
void with_fused_instance(int group, int nv, F&& f) {
  auto by_nv = [&](auto g) {
    if (nv == 1)
      f(g, std::integral_constant<int, 1>{});
    else
      f(g, std::integral_constant<int, 2>{});
  };
  if (group == 1)
    by_nv(std::integral_constant<int, 1>{});
  else if (group == 2)
    by_nv(std::integral_constant<int, 2>{});
  else if (group <= 4)
    by_nv(std::integral_constant<int, 4>{});
  else
    by_nv(std::integral_constant<int, 8>{});
}

/// Launches cache_attention_fused (the split part; the caller runs the combine) when it takes the
/// shape; false, launching nothing, when it does not. `out` (only with splits == 1): the kernel
/// writes the final output itself and the caller runs no combine.
/// Launches one of the cache-attention split kernels: `kAttnThreads` threads per block, `smem` bytes
/// of dynamic shared memory (the kernel opted in first past the default 48 KiB), as a programmatic
/// dependent launch when `pdl` (kern::launch_pdl); every launch checked.
template <class... KArgs, class... Args>
void launch_attention_kernel(void (*kernel)(KArgs...), dim3 grid, std::size_t smem, cudaStream_t st, bool pdl,
                             Args&&... args) {
  if (smem > 48 * 1024)
    HDPISSA_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  HDPISSA_CUDA_CHECK(kern::launch_pdl(kernel, grid, dim3(kAttnThreads), smem, st, pdl, std::forward<Args>(args)...));
}

/// The most dynamic shared memory a block may opt in to on the current device.
inline std::size_t device_smem_optin() {
  int dev = 0, optin = 0;
  HDPISSA_CUDA_CHECK(cudaGetDevice(&dev));
  HDPISSA_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return static_cast<std::size_t>(optin);
}

/// Merges the `splits` partial results of n rows × nh heads (part_o, part_ml) into `out`.
template <class T>
void launch_cache_attention_combine(cudaStream_t st, const float* part_o, const float* part_ml, int n, int nh,
                                    int splits, int hd, T* out, bool pdl) {
  HDPISSA_CUDA_CHECK(kern::launch_pdl(cache_attention_combine<T>, dim3(static_cast<unsigned>(n) * nh), dim3(128), 0, st,
                                      pdl, part_o, part_ml, splits, hd, out));
}

template <class T>
bool launch_cache_attention_fused(cudaStream_t st, const T* q, const T* kc, const T* vc, const std::int32_t* slot,
                                  const std::int32_t* pos, int n, int nh, int nkv, int hd, int max_ctx, int window,
                                  float scale, int chunk, int splits, float* part_o, float* part_ml, T* out = nullptr,
                                  const std::int32_t* order = nullptr, bool pdl = false) {
  const int group = nh / nkv;
  if (!cache_attention_fused_supported<T>(hd, group)) return false;
  HDPISSA_REQUIRE(out == nullptr || splits == 1, "launch_cache_attention_fused: a direct output needs one split, found ",
                  splits);
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  const int nvec = hd / kVec, lpk = lanes_per_key(nvec);
  const int nv = (nvec + lpk - 1) / lpk;  // 1 or 2
  const std::size_t smem =
      sizeof(float) * (static_cast<std::size_t>(kAttnThreads / 32) * group * (hd + 2));
  const dim3 grid(static_cast<unsigned>(nkv), static_cast<unsigned>(n), static_cast<unsigned>(splits));
  const float scale_log2 = scale * 1.44269504088896340736f;
  auto go = [&](auto kernel) {
    launch_attention_kernel(kernel, grid, smem, st, pdl, q, kc, vc, slot, pos, order, nh, nkv, hd, max_ctx, window,
                            scale_log2, chunk, lpk, part_o, part_ml, out);
  };
  with_fused_instance(group, nv, [&](auto g, auto v) { go(cache_attention_fused<T, kVec, g(), v()>); });
  return true;
}

/// The most rows one cache-attention launch takes (its grid's y dimension).
inline constexpr int kMaxAttentionRows = 65535;

/// Whether the current device runs cache_attention_bulk (compute capability 9.0 or later).
inline bool device_has_bulk_copy() {
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
    return false;
  return major >= 9;
}

/// The keys per tile cache_attention_bulk runs for `tiling` at (T, hd): tiling.tile_keys rounded up
/// to a multiple of 2·stride, stride = the block's keys per step (4 warps · 32 / lanes per key).
template <class T>
inline int bulk_tile_keys(int hd, const BulkTiling& tiling) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  const int step = 2 * (kAttnThreads / 32) * (32 / lanes_per_key(hd / kVec));
  return (std::max(tiling.tile_keys, 1) + step - 1) / step * step;
}

/// Dynamic shared memory of cache_attention_bulk: the barriers, then the larger of the stages' K
/// and V tiles and the merge's (nwarps, group, hd + 2) floats.
template <class T>
inline std::size_t cache_attention_bulk_smem(int hd, int group, const BulkTiling& tiling) {
  const std::size_t tiles = static_cast<std::size_t>(tiling.stages) * 2 * bulk_tile_keys<T>(hd, tiling) * hd * sizeof(T);
  const std::size_t merge = sizeof(float) * static_cast<std::size_t>(kAttnThreads / 32) * group * (hd + 2);
  return kBulkBarrierBytes + std::max(tiles, merge);
}

/// Whether `kernel` runs cache_attention_bulk for (T, hd, group) on the current device: Bulk, or
/// Auto for groups of at most 4 (c96, H100, LLaMA-3-8B's GQA 4 heads: 87 us against the two-phase
/// kernel's 112 and the fused one's 98; TinyLlama's groups of 8 stay two-phase: 47 against 49 us,
/// no gain for 255 registers), where the device (sm_90) and the fused kernel take the shape.
/// (resolve_cache_attention looks at the tensor-core kernel first: Auto runs it for bf16 GQA.)
template <class T>
inline bool cache_attention_runs_bulk(CacheAttentionKernel kernel, int hd, int group) {
  const bool wanted = kernel == CacheAttentionKernel::Bulk || (kernel == CacheAttentionKernel::Auto && group <= 4);
  return wanted && cache_attention_fused_supported<T>(hd, group) && device_has_bulk_copy();
}

/// Whether cache_attention_mma takes (T, hd, group) on the current device: bf16, hd 64 or 128, a
/// GQA group of 2 to 8, compute capability 8.0 or later.
template <class T>
inline bool cache_attention_mma_supported(int hd, int group) {
  if (!std::is_same_v<T, __nv_bfloat16> || (hd != 64 && hd != 128) || group < 2 || group > 8) return false;
  int dev = 0, major = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess)
    return false;
  return major >= 8;
}

/// The split kernel `kernel` resolves to for (T, hd, group) on the current device: Mma where asked
/// or Auto and cache_attention_mma_supported (bf16 GQA; else as Auto), Bulk where
/// cache_attention_runs_bulk, else
/// Fused where asked (Fused, Bulk, or Auto for MHA and groups of 2) and the fused kernel takes the
/// shape, else TwoPhase. What launch_cache_attention runs.
template <class T>
inline CacheAttentionKernel resolve_cache_attention(CacheAttentionKernel kernel, int hd, int group) {
  using K = CacheAttentionKernel;
  if (kernel == K::Mma || kernel == K::Auto) {
    if (cache_attention_mma_supported<T>(hd, group)) return K::Mma;
    kernel = K::Auto;
  }
  if (cache_attention_runs_bulk<T>(kernel, hd, group)) return K::Bulk;
  const bool fused = kernel == K::Fused || kernel == K::Bulk || (kernel == K::Auto && cache_attention_auto_fused<T>(hd, group));
  return fused && cache_attention_fused_supported<T>(hd, group) ? K::Fused : K::TwoPhase;
}

/// Launches cache_attention_bulk (the split part, as launch_cache_attention_fused) when the device
/// and the shape take it (sm_90, the fused kernel's shapes); false, launching nothing, otherwise.
/// A tiling outside [1, kBulkMaxStages] stages or past the device's shared memory per block is
/// refused (InvalidArgument).
template <class T>
bool launch_cache_attention_bulk(cudaStream_t st, const T* q, const T* kc, const T* vc, const std::int32_t* slot,
                                 const std::int32_t* pos, int n, int nh, int nkv, int hd, int max_ctx, int window,
                                 float scale, int chunk, int splits, float* part_o, float* part_ml, T* out,
                                 const BulkTiling& tiling, const std::int32_t* order = nullptr, bool pdl = false) {
  const int group = nh / nkv;
  HDPISSA_REQUIRE(tiling.stages >= 1 && tiling.stages <= kBulkMaxStages, "cache attention (bulk): expected 1 to ",
                  kBulkMaxStages, " stages, found ", tiling.stages);
  HDPISSA_REQUIRE(tiling.tile_keys >= 1, "cache attention (bulk): expected at least 1 key per tile, found ",
                  tiling.tile_keys);
  if (!cache_attention_fused_supported<T>(hd, group) || !device_has_bulk_copy()) return false;
  HDPISSA_REQUIRE(out == nullptr || splits == 1, "launch_cache_attention_bulk: a direct output needs one split, found ",
                  splits);
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  const int nvec = hd / kVec, lpk = lanes_per_key(nvec), nv = (nvec + lpk - 1) / lpk;
  const int tk = bulk_tile_keys<T>(hd, tiling);
  const std::size_t smem = cache_attention_bulk_smem<T>(hd, group, tiling);
  const std::size_t optin = device_smem_optin();
  HDPISSA_REQUIRE(smem <= optin, "cache attention (bulk): ", tiling.stages, " stages of ", tk, " keys (head_dim ", hd,
                  ") need ", smem, " bytes of shared memory; this device gives a block at most ", optin);
  const dim3 grid(static_cast<unsigned>(nkv), static_cast<unsigned>(n), static_cast<unsigned>(splits));
  const float scale_log2 = scale * 1.44269504088896340736f;
  auto go = [&](auto kernel) {
    launch_attention_kernel(kernel, grid, smem, st, pdl, q, kc, vc, slot, pos, order, nh, nkv, hd, max_ctx, window,
                            scale_log2, chunk, lpk, tk, tiling.stages, part_o, part_ml, out);
  };
  if (group == 1 && nv == 1 && tiling.min_blocks == 8) {
    go(cache_attention_bulk<T, kVec, 1, 1, 8>);
    return true;
  }
  with_fused_instance(group, nv, [&](auto g, auto v) { go(cache_attention_bulk<T, kVec, g(), v()>); });
  return true;
}

/// Launches cache_attention_mma (the split part, as launch_cache_attention_fused; `out` only with one
/// split) with `stages` tiles per warp (2 to 4, refused otherwise, as is a ring larger than the
/// device's shared memory per block: 4 stages at hd 128 need 139 KiB); the caller checked
/// cache_attention_mma_supported.
inline void launch_cache_attention_mma(cudaStream_t st, const __nv_bfloat16* q, const __nv_bfloat16* kc,
                                       const __nv_bfloat16* vc, const std::int32_t* slot, const std::int32_t* pos, int n,
                                       int nh, int nkv, int hd, int max_ctx, int window, float scale, int chunk,
                                       int splits, float* part_o, float* part_ml, __nv_bfloat16* out, int stages,
                                       const std::int32_t* order = nullptr, bool pdl = false) {
  HDPISSA_REQUIRE(stages >= 2 && stages <= 4, "cache attention (mma): expected 2 to 4 stages, found ", stages);
  HDPISSA_REQUIRE(hd == 64 || hd == 128, "cache attention (mma): expected head_dim 64 or 128, found ", hd);
  HDPISSA_REQUIRE(out == nullptr || splits == 1, "launch_cache_attention_mma: a direct output needs one split, found ",
                  splits);
  const int group = nh / nkv;
  const std::size_t smem = cache_attention_mma_smem(hd, group, stages);
  const std::size_t optin = device_smem_optin();
  HDPISSA_REQUIRE(smem <= optin, "cache attention (mma): ", stages, " stages (head_dim ", hd, ") need ", smem,
                  " bytes of shared memory; this device gives a block at most ", optin);
  const dim3 grid(static_cast<unsigned>(nkv), static_cast<unsigned>(n), static_cast<unsigned>(splits));
  const float scale_log2 = scale * 1.44269504088896340736f;
  auto go = [&](auto kernel) {
    launch_attention_kernel(kernel, grid, smem, st, pdl, q, kc, vc, slot, pos, order, nh, nkv, max_ctx, window,
                            scale_log2, chunk, part_o, part_ml, out);
  };
  auto by_stages = [&](auto h) {
    constexpr int H = decltype(h)::value;
    if (stages == 2) go(cache_attention_mma<H, 2>);
    else if (stages == 3) go(cache_attention_mma<H, 3>);
    else go(cache_attention_mma<H, 4>);
  };
  if (hd == 64) by_stages(std::integral_constant<int, 64>{});
  else by_stages(std::integral_constant<int, 128>{});
}

/// The attention of n rows over the cache (see the file comment): splits = ⌈largest visible
/// range / chunk⌉ (or more); part_o holds n·nh·splits·hd floats, part_ml n·nh·splits·2. `tiling`:
/// CacheAttentionKernel::Bulk's. The split kernels' grids run the kv heads fastest, then the rows,
/// then the splits; `order` (optional, a permutation of the n rows): grid row y takes row order[y]
/// — the decoder passes its rows by descending position, so that the longest ranges start first
/// and the last blocks to run are short ones. The results do not depend on it. `pdl`: every kernel
/// as a programmatic dependent launch (kern::launch_pdl).
template <class T>
void launch_cache_attention(cudaStream_t st, const T* q, const T* kc, const T* vc, const std::int32_t* slot,
                            const std::int32_t* pos, int n, int nh, int nkv, int hd, int max_ctx, int window,
                            float scale, int chunk, int splits, float* part_o, float* part_ml, T* out,
                            CacheAttentionKernel kernel = CacheAttentionKernel::Auto, BulkTiling tiling = {},
                            const std::int32_t* order = nullptr, bool pdl = false) {
  const int group = nh / nkv;
  HDPISSA_REQUIRE(n >= 0 && n <= kMaxAttentionRows, "cache attention: expected at most ", kMaxAttentionRows,
                  " rows per launch, found ", n);
  T* const direct = splits == 1 ? out : nullptr;  // one split: the fused kernels write `out` themselves
  const CacheAttentionKernel k = resolve_cache_attention<T>(kernel, hd, group);
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    if (k == CacheAttentionKernel::Mma) {
      launch_cache_attention_mma(st, q, kc, vc, slot, pos, n, nh, nkv, hd, max_ctx, window, scale, chunk, splits, part_o,
                                 part_ml, direct, tiling.mma_stages, order, pdl);
      if (splits > 1)
        launch_cache_attention_combine(st, part_o, part_ml, n, nh, splits, hd, out, pdl);
      return;
    }
  }
  if (k != CacheAttentionKernel::TwoPhase &&
      (k == CacheAttentionKernel::Bulk
           ? launch_cache_attention_bulk<T>(st, q, kc, vc, slot, pos, n, nh, nkv, hd, max_ctx, window, scale, chunk,
                                            splits, part_o, part_ml, direct, tiling, order, pdl)
           : launch_cache_attention_fused<T>(st, q, kc, vc, slot, pos, n, nh, nkv, hd, max_ctx, window, scale, chunk,
                                             splits, part_o, part_ml, direct, order, pdl))) {
    if (splits > 1)  // one split: the kernel wrote `out` itself
      launch_cache_attention_combine(st, part_o, part_ml, n, nh, splits, hd, out, pdl);
    return;
  }
  const std::size_t smem = cache_attention_split_smem(group, hd, chunk);
  constexpr int kVec = 16 / static_cast<int>(sizeof(T));
  const dim3 grid(static_cast<unsigned>(nkv), static_cast<unsigned>(n), static_cast<unsigned>(splits));
  if (hd % kVec == 0) {
    const int nvec = hd / kVec, lpk = lanes_per_key(nvec);
    HDPISSA_REQUIRE((nvec + lpk - 1) / lpk <= kMaxVecPerLane, "cache attention: head_dim ", hd, " too large");
    launch_attention_kernel(cache_attention_split<T, kVec>, grid, smem, st, pdl, q, kc, vc, slot, pos, order, nh, nkv,
                            hd, max_ctx, window, scale, chunk, lpk, part_o, part_ml);
  } else {
    const int lpk = lanes_per_key(hd);
    HDPISSA_REQUIRE((hd + lpk - 1) / lpk <= kMaxVecPerLane, "cache attention: head_dim ", hd, " too large");
    launch_attention_kernel(cache_attention_split<T, 1>, grid, smem, st, pdl, q, kc, vc, slot, pos, order, nh, nkv, hd,
                            max_ctx, window, scale, chunk, lpk, part_o, part_ml);
  }
  launch_cache_attention_combine(st, part_o, part_ml, n, nh, splits, hd, out, pdl);
}

/// next[r] = argmax_j logits[r, j] (fp32, ties to the lowest index, like torch.argmax and Eigen's
/// maxCoeff). grid (n), block 1024.
__global__ inline void argmax_rows(const float* __restrict__ logits, int V, std::int32_t* __restrict__ next) {
  __shared__ float sv[32];
  __shared__ int si[32];
  kern::pdl_wait();
  kern::pdl_trigger();
  const float* row = logits + static_cast<std::int64_t>(blockIdx.x) * V;
  float bv = -INFINITY;
  int bi = V;
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    const float x = row[j];
    if (x > bv || (x == bv && j < bi)) bv = x, bi = j;  // NaN never wins
  }
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
  }
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  if (lane == 0) sv[wid] = bv, si[wid] = bi;
  __syncthreads();
  if (wid == 0) {
    bv = lane < nw ? sv[lane] : -INFINITY;
    bi = lane < nw ? si[lane] : V;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (ov > bv || (ov == bv && oi < bi)) bv = ov, bi = oi;
    }
    if (lane == 0) next[blockIdx.x] = bi < V ? bi : 0;
  }
}

inline void launch_argmax_rows(cudaStream_t st, const float* logits, int n, int V, std::int32_t* next,
                               bool pdl = false) {
  HDPISSA_CUDA_CHECK(kern::launch_pdl(argmax_rows, dim3(static_cast<unsigned>(n)), dim3(1024), 0, st, pdl, logits, V, next));
}

}  // namespace decode_kern

// ------------------------------------------------------------------------------------------------
// the decoder

/// What generate() does with a batch of prompts (see the file comment).
struct GreedyDecodeOptions {
  int max_new_tokens = 256;               ///< per prompt; capped so that prompt + completion fit the context
  std::vector<std::int32_t> stop_tokens;  ///< a sequence ends at the first of these (not returned)
  /// Optional: after each new token, (prompt index, completion so far) → true ends that sequence
  /// (the token is kept). E.g. a stop-string check on the decoded tail.
  std::function<bool(std::size_t, const std::vector<std::int32_t>&)> should_stop;
};

/// Batched greedy decoder over the weights of a CudaLlama<T> (see the file comment). Borrows the
/// model (its weights, stream and cuBLAS handle); not copyable.
template <class T>
class CudaGreedyDecoder {
 public:
  /// `slots` sequences decode at once, each up to `max_ctx` positions (prompt + completion − 1;
  /// ≤ max_position_embeddings); prefill runs at most `prefill_rows` prompt tokens per pass.
  /// `cuda_graphs`: capture the decode step (only on a non-default stream).
  CudaGreedyDecoder(const CudaLlama<T>& model, int slots, int max_ctx, int prefill_rows = 1024, bool cuda_graphs = true);
  CudaGreedyDecoder(const CudaGreedyDecoder&) = delete;
  CudaGreedyDecoder& operator=(const CudaGreedyDecoder&) = delete;
  ~CudaGreedyDecoder() { drop_graph(); }

  int slots() const { return slots_; }
  int max_ctx() const { return max_ctx_; }
  /// Keys per split and splits of a decode step's cache attention (HDPISSA_DECODE_CHUNK, capped at max_ctx).
  int decode_chunk() const { return decode_chunk_; }
  int decode_splits() const { return decode_splits_; }
  /// The cache attention's split kernel every pass runs (HDPISSA_DECODE_ATTENTION: auto, fused, bulk,
  /// two-phase; resolved for this device and model, resolve_cache_attention) and the bulk kernel's
  /// tiling (HDPISSA_DECODE_BULK_TILE=<keys>x<stages>).
  decode_kern::CacheAttentionKernel attention_kernel() const { return attn_kernel_; }
  decode_kern::BulkTiling bulk_tiling() const { return bulk_tiling_; }
  const DecodeStats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

  /// Greedy completions (new tokens only) of every prompt, in order. A prompt that is empty or
  /// leaves no room in the context gets an empty completion. Throws when a prompt + its budget
  /// does not fit max_ctx.
  std::vector<std::vector<std::int32_t>> generate(const std::vector<std::vector<std::int32_t>>& prompts,
                                                  const GreedyDecodeOptions& o, CudaHooks<T>& hooks);

  /// The budget generate() gives a prompt of `prompt_len` tokens (0 = none).
  int budget(int prompt_len, int max_new_tokens) const {
    if (prompt_len < 1) return 0;
    return std::max(0, std::min(max_new_tokens, cfg_.max_seq_len - prompt_len));
  }

 private:
  using Buf = DeviceBuffer<T>;
  using FBuf = DeviceBuffer<float>;
  using IBuf = DeviceBuffer<std::int32_t>;

  /// n rows (tokens tok, slots slot — null: row r is slot r — positions pos) through the model;
  /// argmax of the n_sel rows `sel` (null: all n) into next_. `order` (optional): the rows in the
  /// order the cache attention's blocks take them (launch_cache_attention). Enqueued only.
  void forward_rows(int n, const std::int32_t* tok, const std::int32_t* slot, const std::int32_t* pos,
                    const std::int32_t* order, int chunk, int splits, int n_sel, const std::int32_t* sel,
                    CudaHooks<T>& hooks);
  /// One decode step over every slot (graph replay where possible); waits; tokens in h_next_.
  void decode_step(CudaHooks<T>& hooks);
  void drop_graph() {
    if (exec_) (void)cudaGraphExecDestroy(exec_);
    exec_ = nullptr;
  }

  const CudaLlama<T>* model_;
  ModelConfig cfg_;
  int slots_, max_ctx_, prefill_rows_, rows_max_;
  bool graphs_;
  bool fusable_ = false;  // q|k|v and gate|up lie back to back in the model (one GEMM each with plain hooks)
  cudaStream_t stream_;
  /// Keys per split of a decode step's cache attention by default: 256 where the fused kernel runs
  /// (MHA, groups of 2: at the 7B shape on an H200, 256 gave 1.1 % more decode tokens/s than 128,
  /// one split 0.2 %, 64 −4.2 %; session 15), 128 for the two-phase kernel (GQA > 2, unmeasured
  /// elsewhere), 512 or 256 for the bulk one and 512 for the tensor-core one (the constructor). HDPISSA_DECODE_CHUNK (16…8192) overrides it: the split count trades the per-block
  /// overhead against blocks in flight.
  static constexpr int kDecodeChunkBulkWide = 512, kDecodeChunkFused = 256, kDecodeChunk = 128, kPrefillChunk = 512;
  int decode_chunk_ = kDecodeChunk;
  decode_kern::CacheAttentionKernel attn_kernel_ = decode_kern::CacheAttentionKernel::Auto;
  decode_kern::BulkTiling bulk_tiling_{};
  bool order_rows_ = true;  // HDPISSA_DECODE_ORDER: decode rows by descending position in the attention
  bool pdl_ = false;        // HDPISSA_DECODE_PDL: the passes' own kernels as programmatic dependent launches
  int decode_splits_ = 1;

  Buf kc_, vc_;        // (L, slots, nkv, max_ctx, hd)
  FBuf rope_cos_, rope_sin_;  // (max_ctx, hd/2)
  FBuf res_, rstd_;    // (rows, D), (rows)
  // gate_ holds (rows, 2H): gate | up one after the other (unfused: up at gate_ + rows·H), or the
  // fused [gate | up] product, or, before it, the fused (rows, qd + 2·kvd) q | k | v product.
  Buf xn_, q_, k_, v_, attn_, tmp_, gate_, act_, xsel_;
  FBuf part_o_, part_ml_, logits_;
  IBuf ints_;          // decode: tok (slots) | pos (slots); prefill: tok | slot | pos (prefill_rows) | sel (slots); next (slots)
  PinnedBuffer<std::int32_t> h_ints_;
  std::int32_t *d_tok_, *d_pos_, *d_order_, *p_tok_, *p_slot_, *p_pos_, *p_sel_, *d_next_;
  std::int32_t* h_next_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  bool graph_failed_ = false;
  DecodeStats stats_;
};

template <class T>
CudaGreedyDecoder<T>::CudaGreedyDecoder(const CudaLlama<T>& model, int slots, int max_ctx, int prefill_rows,
                                        bool cuda_graphs)
    : model_(&model), cfg_(model.config()), slots_(slots), max_ctx_(max_ctx), prefill_rows_(prefill_rows),
      graphs_(cuda_graphs && model.stream() != nullptr), stream_(model.stream()) {
  const ModelConfig& c = cfg_;
  if (slots < 1 || max_ctx < 1 || prefill_rows < 1)
    throw LlamaError(cat("CudaGreedyDecoder: expected slots, max_ctx and prefill_rows >= 1, found ", slots, ", ",
                         max_ctx, ", ", prefill_rows));
  if (max_ctx > c.max_seq_len)
    throw LlamaError(cat("CudaGreedyDecoder: max_ctx ", max_ctx, " exceeds max_position_embeddings ", c.max_seq_len));
  if (c.head_dim % 2 != 0) throw LlamaError(cat("CudaGreedyDecoder: expected an even head_dim, found ", c.head_dim));
  if (std::max(slots, prefill_rows) > decode_kern::kMaxAttentionRows)
    throw LlamaError(cat("CudaGreedyDecoder: expected slots and prefill_rows <= ", decode_kern::kMaxAttentionRows,
                         " (rows of one cache-attention launch), found ", slots, ", ", prefill_rows));
  rows_max_ = std::max(slots, prefill_rows);
  const std::int64_t R = rows_max_, D = c.dim, H = c.hidden_dim, qd = c.q_dim(), kvd = c.kv_dim();
  const std::int64_t cache = static_cast<std::int64_t>(c.n_layers) * slots * c.n_kv_heads * max_ctx * c.head_dim;
  kc_.reserve(cache);
  vc_.reserve(cache);
  {
    Matrix ct, st;
    ::hdpissa::llama::detail::rope_tables(c, max_ctx, ct, st);  // the CPU model's tables, bit for bit
    rope_cos_.reserve(ct.size());
    rope_sin_.reserve(st.size());
    HDPISSA_CUDA_CHECK(cudaMemcpy(rope_cos_.get(), ct.data(), ct.size() * sizeof(float), cudaMemcpyHostToDevice));
    HDPISSA_CUDA_CHECK(cudaMemcpy(rope_sin_.get(), st.data(), st.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  res_.reserve(R * D);
  rstd_.reserve(R);
  xn_.reserve(R * D);
  q_.reserve(R * qd);
  k_.reserve(R * kvd);
  v_.reserve(R * kvd);
  attn_.reserve(R * qd);
  tmp_.reserve(R * D);
  gate_.reserve(R * std::max(2 * H, qd + 2 * kvd));
  act_.reserve(R * H);
  {  // the model's linears: q, k, v (and gate, up) back to back in every layer?
    auto& m = const_cast<CudaLlama<T>&>(model);
    fusable_ = true;
    for (int l = 0; l < c.n_layers && fusable_; ++l) {
      const T* pq = m.linear({l, Module::q}).data;
      fusable_ = m.linear({l, Module::k}).data == pq + qd * D && m.linear({l, Module::v}).data == pq + (qd + kvd) * D &&
                 m.linear({l, Module::up}).data == m.linear({l, Module::gate}).data + H * D;
    }
  }
  xsel_.reserve(static_cast<std::int64_t>(slots) * D);
  if (const char* e = std::getenv("HDPISSA_DECODE_ATTENTION"); e && *e) {
    const std::string v(e);
    using K = decode_kern::CacheAttentionKernel;
    if (v == "auto") attn_kernel_ = K::Auto;
    else if (v == "fused") attn_kernel_ = K::Fused;
    else if (v == "bulk") attn_kernel_ = K::Bulk;
    else if (v == "two-phase") attn_kernel_ = K::TwoPhase;
    else if (v == "mma") attn_kernel_ = K::Mma;
    else
      throw LlamaError(cat("HDPISSA_DECODE_ATTENTION: expected auto, fused, bulk, two-phase or mma (the cache "
                           "attention's split kernel), found '", v, "'"));
  }
  // resolved once: the kernel every pass runs (Auto's choice on this device and model)
  attn_kernel_ = decode_kern::resolve_cache_attention<T>(attn_kernel_, c.head_dim, c.n_heads / c.n_kv_heads);
  {  // keys per split: the bulk kernel one split per 512 keys where the step has ≥ 2048 (row, kv head)
     // pairs to spread (c96, H100: LLaMA-2-7B's 64 x 32 heads 116 against 123 us at 256; LLaMA-3-8B's
     // 64 x 8 heads 89 against 87), else 256; the tensor-core kernel 512 (c99, H100: LLaMA-3-8B's
     // heads 32.4 against 37.9 us at 256, TinyLlama's 8.5 against 13.0); the fused kernel 256, the
     // two-phase one 128
    using K = decode_kern::CacheAttentionKernel;
    decode_chunk_ = attn_kernel_ == K::Bulk
                        ? (static_cast<std::int64_t>(slots) * c.n_kv_heads >= 2048 ? kDecodeChunkBulkWide : kDecodeChunkFused)
                    : attn_kernel_ == K::Mma   ? kDecodeChunkBulkWide
                    : attn_kernel_ == K::Fused ? kDecodeChunkFused
                                               : kDecodeChunk;
  }
  if (const char* e = std::getenv("HDPISSA_DECODE_CHUNK"); e && *e) {
    char* end = nullptr;
    const long v = std::strtol(e, &end, 10);
    if (*end != '\0' || v < 16 || v > 8192)
      throw LlamaError(cat("HDPISSA_DECODE_CHUNK: expected an integer in [16, 8192] (keys per split of the decode "
                           "attention), found '", e, "'"));
    decode_chunk_ = static_cast<int>(v);
  }
  decode_chunk_ = std::min(decode_chunk_, max_ctx);  // a larger chunk is one split all the same
  if (const char* e = std::getenv("HDPISSA_DECODE_ORDER"); e && *e) {
    const std::string v(e);
    if (v != "0" && v != "1")
      throw LlamaError(cat("HDPISSA_DECODE_ORDER: expected 1 (the decode step's attention takes the rows by descending "
                           "position, the default) or 0 (in slot order), found '", v, "'"));
    order_rows_ = v == "1";
  }
  if (const char* e = std::getenv("HDPISSA_DECODE_PDL"); e && *e) {
    const std::string v(e);
    if (v != "0" && v != "1")
      throw LlamaError(cat("HDPISSA_DECODE_PDL: expected 1 (the passes' norm, RoPE, attention, SwiGLU and argmax kernels "
                           "as programmatic dependent launches) or 0 (plain launches, the default), found '", v, "'"));
    pdl_ = v == "1";
    if (pdl_ && !decode_kern::device_has_bulk_copy())
      throw LlamaError("HDPISSA_DECODE_PDL=1: programmatic dependent launches need compute capability 9.0 or later; "
                       "this device is older (unset it)");
  }
  if (const char* e = std::getenv("HDPISSA_DECODE_BULK_TILE"); e && *e) {
    int keys = 0, stages = 0;
    char tail = 0;
    if (std::sscanf(e, "%dx%d%c", &keys, &stages, &tail) != 2 || keys < 1 || keys > 4096 || stages < 1 ||
        stages > decode_kern::kBulkMaxStages)
      throw LlamaError(cat("HDPISSA_DECODE_BULK_TILE: expected <keys>x<stages> with keys in [1, 4096] and stages in [1, ",
                           decode_kern::kBulkMaxStages, "] (the bulk cache attention's tiling), found '", e, "'"));
    bulk_tiling_ = {keys, stages};
  }
  {  // the two-phase kernel (GQA groups > 2, or shapes the fused one does not take) keeps a chunk of scores
    const int group = c.n_heads / c.n_kv_heads;
    const std::size_t smem = decode_kern::cache_attention_split_smem(group, c.head_dim, decode_chunk_);
    int dev = 0, optin = 0;
    HDPISSA_CUDA_CHECK(cudaGetDevice(&dev));
    HDPISSA_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    if (attn_kernel_ == decode_kern::CacheAttentionKernel::TwoPhase && smem > static_cast<std::size_t>(optin))
      throw LlamaError(cat("HDPISSA_DECODE_CHUNK: ", decode_chunk_, " keys per split need ", smem,
                           " bytes of shared memory in the two-phase cache attention (group ", group, ", head_dim ",
                           c.head_dim, "); this device gives a block at most ", optin, ": choose a smaller chunk"));
  }
  decode_splits_ = (max_ctx + decode_chunk_ - 1) / decode_chunk_;
  const int prefill_splits = (max_ctx + kPrefillChunk - 1) / kPrefillChunk;
  const std::int64_t parts = std::max<std::int64_t>(static_cast<std::int64_t>(slots) * decode_splits_,
                                                    static_cast<std::int64_t>(prefill_rows) * prefill_splits);
  part_o_.reserve(parts * c.n_heads * c.head_dim);
  part_ml_.reserve(parts * c.n_heads * 2);
  logits_.reserve(static_cast<std::int64_t>(slots) * c.vocab_size);
  const std::int64_t ni = 3 * slots + 3 * static_cast<std::int64_t>(prefill_rows) + 2 * slots;
  ints_.reserve(ni);
  h_ints_ = PinnedBuffer<std::int32_t>(ni);
  d_tok_ = ints_.get();
  d_pos_ = d_tok_ + slots;
  d_order_ = d_pos_ + slots;
  p_tok_ = d_order_ + slots;
  p_slot_ = p_tok_ + prefill_rows;
  p_pos_ = p_slot_ + prefill_rows;
  p_sel_ = p_pos_ + prefill_rows;
  d_next_ = p_sel_ + slots;
  h_next_ = h_ints_.get() + (d_next_ - d_tok_);
  HDPISSA_CUDA_CHECK(cudaMemsetAsync(ints_.get(), 0, ni * sizeof(std::int32_t), stream_));
  HDPISSA_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

template <class T>
void CudaGreedyDecoder<T>::forward_rows(int n, const std::int32_t* tok, const std::int32_t* slot,
                                        const std::int32_t* pos, const std::int32_t* order, int chunk, int splits,
                                        int n_sel, const std::int32_t* sel, CudaHooks<T>& hooks) {
  const ModelConfig& c = cfg_;
  const int D = c.dim, H = c.hidden_dim, qd = c.q_dim(), kvd = c.kv_dim(), L = c.n_layers, V = c.vocab_size;
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const float* norms = model_->norm_weights();
  const float* bias = model_->qkv_biases();
  const std::int64_t layer_cache = static_cast<std::int64_t>(slots_) * c.n_kv_heads * max_ctx_ * c.head_dim;
  cudaStream_t s = stream_;
  using CV = ConstMatrixView<T>;
  using MV = MatrixView<T>;
  auto& m = const_cast<CudaLlama<T>&>(*model_);
  // Plain hooks (exactly CudaHooks<T>: Y = X Wᵀ, nothing else) on a model whose q, k, v and gate, up
  // lie back to back: one GEMM for q|k|v and one for gate|up per layer (fewer, larger weight-bound
  // GEMMs at decode's few rows). A training method's hooks (adapters) see every linear separately.
  const bool fused = fusable_ && typeid(hooks) == typeid(CudaHooks<T>);
  model_->gather_embeddings(s, tok, res_.get(), n);
  for (int l = 0; l < L; ++l) {
    auto W = [&](Module mod) { return CV(m.linear({l, mod})); };
    kern::launch_add_rmsnorm_fwd<T>(s, res_.get(), l == 0 ? nullptr : tmp_.get(), res_.get(), norms + 2 * l * D,
                                    rstd_.get(), xn_.get(), n, D, c.norm_eps, /*wide_rows=*/true, nullptr, pdl_);
    const CV xn(xn_.get(), n, D, D);
    T* kc = kc_.get() + l * layer_cache;
    T* vc = vc_.get() + l * layer_cache;
    const float* lbias = bias ? bias + static_cast<std::int64_t>(l) * (qd + 2 * kvd) : nullptr;
    if (fused) {  // one GEMM over [Wq; Wk; Wv] (qd + 2·kvd, D), back to back in the model
      const int ld = qd + 2 * kvd;
      hooks.forward({l, Module::q}, CV(W(Module::q).data, ld, D, D), xn, MV(gate_.get(), n, ld, ld));
      decode_kern::launch_qkv_to_cache<T>(s, gate_.get(), ld, q_.get(), gate_.get() + qd, ld, gate_.get() + qd + kvd, ld,
                                          lbias, slot, pos, kc, vc, n, c.n_heads, c.n_kv_heads, c.head_dim, max_ctx_,
                                          rope_cos_.get(), rope_sin_.get(), pdl_);
    } else {
      hooks.forward({l, Module::q}, W(Module::q), xn, MV(q_.get(), n, qd, qd));
      hooks.forward({l, Module::k}, W(Module::k), xn, MV(k_.get(), n, kvd, kvd));
      hooks.forward({l, Module::v}, W(Module::v), xn, MV(v_.get(), n, kvd, kvd));
      decode_kern::launch_qkv_to_cache<T>(s, q_.get(), qd, q_.get(), k_.get(), kvd, v_.get(), kvd, lbias, slot, pos, kc,
                                          vc, n, c.n_heads, c.n_kv_heads, c.head_dim, max_ctx_, rope_cos_.get(),
                                          rope_sin_.get(), pdl_);
    }
    decode_kern::launch_cache_attention<T>(s, q_.get(), kc, vc, slot, pos, n, c.n_heads, c.n_kv_heads, c.head_dim,
                                           max_ctx_, c.attention_window(l), scale, chunk, splits, part_o_.get(),
                                           part_ml_.get(), attn_.get(), attn_kernel_, bulk_tiling_, order, pdl_);
    hooks.forward({l, Module::o}, W(Module::o), CV(attn_.get(), n, qd, qd), MV(tmp_.get(), n, D, D));
    kern::launch_add_rmsnorm_fwd<T>(s, res_.get(), tmp_.get(), res_.get(), norms + (2 * l + 1) * D, rstd_.get(),
                                    xn_.get(), n, D, c.norm_eps, /*wide_rows=*/true, nullptr, pdl_);
    if (fused) {  // one GEMM over [Wgate; Wup] (2H, D)
      hooks.forward({l, Module::gate}, CV(W(Module::gate).data, 2 * H, D, D), xn, MV(gate_.get(), n, 2 * H, 2 * H));
      decode_kern::launch_swiglu_fused_rows<T>(s, gate_.get(), act_.get(), n, H, pdl_);
    } else {
      T* up = gate_.get() + static_cast<std::int64_t>(rows_max_) * H;
      hooks.forward({l, Module::gate}, W(Module::gate), xn, MV(gate_.get(), n, H, H));
      hooks.forward({l, Module::up}, W(Module::up), xn, MV(up, n, H, H));
      kern::launch_swiglu_fwd<T>(s, gate_.get(), up, act_.get(), static_cast<std::int64_t>(n) * H);
    }
    hooks.forward({l, Module::down}, W(Module::down), CV(act_.get(), n, H, H), MV(tmp_.get(), n, D, D));
  }
  kern::launch_add_rmsnorm_fwd<T>(s, res_.get(), tmp_.get(), res_.get(), norms + 2 * L * D, rstd_.get(), xn_.get(), n,
                                  D, c.norm_eps, /*wide_rows=*/true, nullptr, pdl_);
  if (n_sel == 0) return;  // a prefill chunk that ends no prompt
  const T* x = xn_.get();
  if (sel) {
    kern::launch_gather_rows<T>(s, xn_.get(), sel, xsel_.get(), n_sel, D);
    x = xsel_.get();
  }
  // logits (n_sel, V) = x (n_sel, D) · clsᵀ
  gemm_rowmajor(model_->cublas(), CUBLAS_OP_N, CUBLAS_OP_T, n_sel, V, D, 1.0f, x, cuda_data_type<T>(), D,
                model_->classifier(), cuda_data_type<T>(), D, 0.0f, logits_.get(), CUDA_R_32F, V);
  decode_kern::launch_argmax_rows(s, logits_.get(), n_sel, V, d_next_, pdl_);
}

template <class T>
void CudaGreedyDecoder<T>::decode_step(CudaHooks<T>& hooks) {
  cudaStream_t s = stream_;
  // the host's (token, position) of every slot and the slots by descending position (the order the
  // cache attention's blocks take them: the longest ranges first): h_ints_ mirrors ints_ (tok | pos
  // | order first)
  std::int32_t* h_pos = h_ints_.get() + slots_;
  std::int32_t* h_order = h_pos + slots_;
  std::iota(h_order, h_order + slots_, 0);
  if (order_rows_)
    std::stable_sort(h_order, h_order + slots_, [&](std::int32_t a, std::int32_t b) { return h_pos[a] > h_pos[b]; });
  HDPISSA_CUDA_CHECK(cudaMemcpyAsync(d_tok_, h_ints_.get(), sizeof(std::int32_t) * 3 * slots_, cudaMemcpyHostToDevice, s));
  auto eager = [&] {
    forward_rows(slots_, d_tok_, nullptr, d_pos_, d_order_, decode_chunk_, decode_splits_, slots_, nullptr, hooks);
  };
  if (graphs_ && !graph_failed_ && stats_.decode_steps > 0 && !exec_) {  // capture after one eager step
    if (!capture_stream_graph(s, exec_, eager)) graph_failed_ = true;
  }
  if (exec_) HDPISSA_CUDA_CHECK(cudaGraphLaunch(exec_, s));
  else eager();
  HDPISSA_CUDA_CHECK(cudaMemcpyAsync(h_next_, d_next_, sizeof(std::int32_t) * slots_, cudaMemcpyDeviceToHost, s));
  HDPISSA_CUDA_CHECK(cudaStreamSynchronize(s));
}

template <class T>
std::vector<std::vector<std::int32_t>> CudaGreedyDecoder<T>::generate(
    const std::vector<std::vector<std::int32_t>>& prompts, const GreedyDecodeOptions& o, CudaHooks<T>& hooks) {
  using clock = std::chrono::steady_clock;
  const std::size_t np = prompts.size();
  std::vector<std::vector<std::int32_t>> out(np);
  std::vector<int> room(np);
  for (std::size_t i = 0; i < np; ++i) {
    const int P = static_cast<int>(prompts[i].size());
    room[i] = budget(P, o.max_new_tokens);
    if (room[i] > 0 && P + room[i] - 1 > max_ctx_)
      throw LlamaError(cat("CudaGreedyDecoder: prompt ", i, " of ", P, " tokens + ", room[i],
                           " new tokens needs ", P + room[i] - 1, " cache positions, the decoder holds ", max_ctx_));
    for (std::int32_t t : prompts[i])
      if (t < 0 || t >= cfg_.vocab_size)
        throw LlamaError(cat("CudaGreedyDecoder: prompt ", i, " holds token id ", t, " outside [0, ", cfg_.vocab_size, ")"));
  }
  hooks.reserve(rows_max_);
  drop_graph();  // hooks (and their workspaces) may differ from the last call
  graph_failed_ = false;
  const std::int64_t steps_before = stats_.decode_steps;
  stats_.decode_steps = 0;  // decode_step captures after its first eager step of this call

  std::int32_t* h_tok = h_ints_.get();
  std::int32_t* h_pos = h_tok + slots_;
  std::vector<long> job(slots_, -1);  // prompt index per slot
  std::size_t next_prompt = 0;
  auto is_stop = [&](std::int32_t t) {
    return std::find(o.stop_tokens.begin(), o.stop_tokens.end(), t) != o.stop_tokens.end();
  };
  // a new token of slot s: returns whether the sequence goes on
  auto accept = [&](int s, std::int32_t t) {
    const long j = job[s];
    bool live = !is_stop(t);
    if (live) {
      out[j].push_back(t);
      live = static_cast<int>(out[j].size()) < room[j] && !(o.should_stop && o.should_stop(j, out[j]));
    }
    if (live) {
      h_tok[s] = t;
      h_pos[s] = static_cast<int>(prompts[j].size() + out[j].size()) - 1;
    } else {
      job[s] = -1;
      h_tok[s] = 0;
      h_pos[s] = 0;
    }
    return live;
  };
  for (int s = 0; s < slots_; ++s) h_tok[s] = 0, h_pos[s] = 0;

  for (;;) {
    // refill: free slots take the next prompts, prefilled in chunks of ≤ prefill_rows_ tokens
    std::vector<int> fresh;  // slots assigned now
    for (int s = 0; s < slots_ && next_prompt < np; ++s) {
      if (job[s] >= 0) continue;
      while (next_prompt < np && room[next_prompt] == 0) ++next_prompt;
      if (next_prompt >= np) break;
      job[s] = static_cast<long>(next_prompt++);
      fresh.push_back(s);
    }
    if (!fresh.empty()) {
      const auto t0 = clock::now();
      std::int32_t* ptok = h_ints_.get() + (p_tok_ - d_tok_);
      std::int32_t* pslot = h_ints_.get() + (p_slot_ - d_tok_);
      std::int32_t* ppos = h_ints_.get() + (p_pos_ - d_tok_);
      std::int32_t* psel = h_ints_.get() + (p_sel_ - d_tok_);
      std::size_t fi = 0;
      int off = 0;  // tokens of fresh[fi] already prefilled
      while (fi < fresh.size()) {
        int n = 0, n_sel = 0, max_pos = 0;
        std::vector<int> done_slots;
        while (fi < fresh.size() && n < prefill_rows_) {
          const int s = fresh[fi];
          const auto& p = prompts[job[s]];
          const int take = std::min<int>(static_cast<int>(p.size()) - off, prefill_rows_ - n);
          for (int i = 0; i < take; ++i) {
            ptok[n + i] = p[off + i];
            pslot[n + i] = s;
            ppos[n + i] = off + i;
          }
          n += take;
          off += take;
          max_pos = std::max(max_pos, off - 1);
          if (off == static_cast<int>(p.size())) {
            psel[n_sel++] = n - 1;
            done_slots.push_back(s);
            ++fi;
            off = 0;
          }
        }
        HDPISSA_CUDA_CHECK(cudaMemcpyAsync(p_tok_, ptok, sizeof(std::int32_t) * (3 * prefill_rows_ + slots_),
                                           cudaMemcpyHostToDevice, stream_));
        const int splits = max_pos / kPrefillChunk + 1;
        forward_rows(n, p_tok_, p_slot_, p_pos_, nullptr, kPrefillChunk, splits, n_sel, p_sel_, hooks);
        if (n_sel > 0)
          HDPISSA_CUDA_CHECK(cudaMemcpyAsync(h_next_, d_next_, sizeof(std::int32_t) * n_sel, cudaMemcpyDeviceToHost,
                                             stream_));
        HDPISSA_CUDA_CHECK(cudaStreamSynchronize(stream_));
        stats_.prefill_tokens += n;
        const std::vector<std::int32_t> first(h_next_, h_next_ + n_sel);
        for (int k = 0; k < n_sel; ++k) accept(done_slots[k], first[k]);
      }
      stats_.prompts += static_cast<std::int64_t>(fresh.size());
      stats_.prefill_seconds += std::chrono::duration<double>(clock::now() - t0).count();
    }
    int live = 0;
    for (int s = 0; s < slots_; ++s) live += job[s] >= 0;
    if (live == 0) {
      if (next_prompt >= np) break;
      continue;  // every new sequence ended at its first token: refill
    }
    const auto t0 = clock::now();
    decode_step(hooks);
    ++stats_.decode_steps;
    stats_.decode_tokens += live;
    const std::vector<std::int32_t> next(h_next_, h_next_ + slots_);
    for (int s = 0; s < slots_; ++s)
      if (job[s] >= 0) accept(s, next[s]);
    stats_.decode_seconds += std::chrono::duration<double>(clock::now() - t0).count();
  }
  stats_.decode_steps += steps_before;
  return out;
}

}  // namespace hdpissa::llama::gpu
