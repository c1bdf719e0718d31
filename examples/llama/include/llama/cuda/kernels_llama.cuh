#pragma once
/// \file kernels_llama.cuh
/// CUDA kernels of CudaLlama<T> (model_cuda.cuh): embedding gather, fused residual-add + RMSNorm
/// forward / backward, RoPE + head-major permutes, causal softmax with row log-sum-exp, the
/// attention-backward elementwise step, SwiGLU forward / backward, cross-entropy with d(logits),
/// row gather / scatter and dtype conversion. T is float or __nv_bfloat16; every statistic (norm,
/// softmax, loss) is computed in fp32.
///
/// Attention layout (see model_cuda.cuh): head-major (B, heads, T, hd); score rows are indexed
/// r = (b·n_heads + h)·T + t and have T columns (key positions).
///
/// Every kernel has a host launcher, launch_<kernel>(stream, args...), that computes its grid,
/// enqueues it on the stream and checks the launch; the model calls only the launchers.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <type_traits>
#include <utility>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/backend/cuda/fp8_quantize.hpp"

namespace hdpissa::llama::gpu::kern {

/// Grid size for a grid-stride loop of n items with 256-thread blocks.
inline unsigned grid_for(std::int64_t n, int threads = 256) {
  const std::int64_t g = (n + threads - 1) / threads;
  return static_cast<unsigned>(g < 1 ? 1 : (g > 65535 * 16 ? 65535 * 16 : g));
}

/// Programmatic dependent launch (sm_90; the decoder's steps, `HDPISSA_DECODE_PDL`). A kernel launched
/// with `launch_pdl(…, pdl = true)` may be scheduled while the kernel before it on the stream is still
/// finishing; `pdl_wait()` (griddepcontrol.wait) then holds every thread until that kernel has
/// completed and its memory is visible, so it must come before the first read of anything the
/// previous kernels wrote (and before any write). `pdl_trigger()` (griddepcontrol.launch_dependents)
/// lets the next kernel, if launched with pdl, be scheduled once every block of this one has called
/// it (it still waits for this one's completion in its own pdl_wait). Both are no-ops for a kernel
/// launched without the attribute and on devices below sm_90: no result changes, only when a block
/// may start.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
/// Enqueues kernel<<<grid, block, smem, s>>>(args...), with the programmatic-stream-serialization
/// attribute when `pdl` (the kernel must call pdl_wait() first; see above). Returns the launch's error.
template <class... KArgs, class... Args>
cudaError_t launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, std::size_t smem, cudaStream_t s, bool pdl,
                       Args&&... args) {
  if (!pdl) {
    kernel<<<grid, block, smem, s>>>(std::forward<Args>(args)...);
    return cudaGetLastError();
  }
  cudaLaunchAttribute at[1];
  at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  at[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cfg.attrs = at;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...);
}

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T>
__device__ __forceinline__ T from_f(float x) {
  if constexpr (std::is_same_v<T, float>) return x;
  else return __float2bfloat16_rn(x);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
/// Sum over the block (blockDim.x a multiple of 32, ≤ 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v, float* sh /*32 floats*/) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // sh may still be read by a previous call
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  float r = lane < nw ? sh[lane] : 0.0f;
  return warp_sum(r);
}
__device__ __forceinline__ float block_max(float v, float* sh) {
  const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[wid] = v;
  __syncthreads();
  float r = lane < nw ? sh[lane] : -INFINITY;
  return warp_max(r);
}

/// Producer-kept amax (FP8 compute, issue 20): m ← max(m, |v|) keeping a NaN, fp8_amax_kernel's
/// rule (include/hdpissa/backend/cuda/fp8_quantize.hpp).
__device__ __forceinline__ float amax_acc(float m, float v) { return ::hdpissa::cuda_kernels::fp8_amax_acc(m, v); }
/// *amax_bits ← max(*amax_bits, bits of T(m)) over the block: every thread of the block calls it
/// with its own m (max |v| over the unrounded values it stored as T). Rounding to T is monotone and
/// symmetric, so T(max |v|) is max |T(v)|: exactly what fp8_amax_kernel reads back from the stored
/// tensor, with its block reduction (fp8_block_amax_into). A no-op for a null amax_bits.
template <class T>
__device__ __forceinline__ void block_amax_into(float m, unsigned int* amax_bits, unsigned int* sh /*32*/) {
  if (!amax_bits) return;
  ::hdpissa::cuda_kernels::fp8_block_amax_into(__float_as_uint(to_f(from_f<T>(m))), amax_bits, sh);
}

/// Stores 4 consecutive values as T (8-byte bf16x4 or 16-byte float4 store; p 4-aligned).
template <class T>
__device__ __forceinline__ void store4(T* p, float a, float b, float c, float d) {
  if constexpr (std::is_same_v<T, float>) {
    *reinterpret_cast<float4*>(p) = make_float4(a, b, c, d);
  } else {
    __nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
    uint2 u;
    u.x = *reinterpret_cast<unsigned*>(&lo);
    u.y = *reinterpret_cast<unsigned*>(&hi);
    *reinterpret_cast<uint2*>(p) = u;
  }
}

/// Loads 4 consecutive values as float (16-byte float4 or 8-byte bf16x4 load; p 4-element aligned).
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 load4(const __nv_bfloat16* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(a.x, a.y, b.x, b.y);
}
/// Copies 4 consecutive elements bit for bit (8-byte bf16x4 or 16-byte float4; both 4-element aligned).
template <class T>
__device__ __forceinline__ void copy4(T* dst, const T* src) {
  if constexpr (std::is_same_v<T, float>) *reinterpret_cast<float4*>(dst) = *reinterpret_cast<const float4*>(src);
  else *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(src);
}
/// Whether p may be accessed 4 elements at a time (null counts as aligned).
template <class T>
__host__ __device__ __forceinline__ bool al4(const T* p) {
  return (reinterpret_cast<std::uintptr_t>(p) % (4 * sizeof(T))) == 0;
}

/// x[n, :] = fp32(emb[tok[n], :]) (emb in fp32 or bf16: exact).  grid (N), block 256.
template <class E>
__global__ void embed_gather(const std::int32_t* __restrict__ tok, const E* __restrict__ emb, float* __restrict__ x,
                             int D) {
  const std::int64_t n = blockIdx.x;
  const E* src = emb + static_cast<std::int64_t>(tok[n]) * D;
  float* dst = x + n * D;
  for (int j = threadIdx.x; j < D; j += blockDim.x) dst[j] = to_f(src[j]);
}
/// embed_gather over n_rows token rows.
template <class E>
inline void launch_embed_gather(cudaStream_t s, const std::int32_t* tok, const E* emb, float* x,
                                std::int64_t n_rows, int D) {
  embed_gather<E><<<static_cast<unsigned>(n_rows), 256, 0, s>>>(tok, emb, x, D);
  HDPISSA_CUDA_CHECK_LAUNCH("embed_gather");
}

/// out = prev (+ y); rstd = 1/sqrt(mean(out²) + eps); xn = out·rstd·w (as T). With y == nullptr,
/// out may alias prev. 4-wide accesses when D % 4 == 0 and the rows are aligned. grid (N), block 256.
/// kCache > 0 (launcher only: 256-thread rows, D ≤ 4·256·kCache and the 4-wide path's alignment, which
/// the kernel does not check): the second pass
/// takes each thread's ≤ kCache float4 of `out` from registers instead of re-reading them; the same
/// values in the same order, so the same bits as kCache = 0.
/// `amax_bits` (may be null): maxed with the bits of max |xn| over the rows (block_amax_into).
template <class T, int kCache = 0>
__global__ void add_rmsnorm_fwd(const float* prev, const T* __restrict__ y, float* out, const float* __restrict__ w,
                                float* __restrict__ rstd, T* __restrict__ xn, int D, float eps,
                                unsigned int* __restrict__ amax_bits = nullptr) {
  __shared__ float sh[32];
  pdl_wait();  // no-ops unless launched with pdl (the decoder's steps)
  pdl_trigger();
  const std::int64_t base = static_cast<std::int64_t>(blockIdx.x) * D;
  const bool vec = (D & 3) == 0 && al4(prev) && al4(y) && al4(out) && al4(w) && al4(xn);
  float ss = 0.0f;
  if constexpr (kCache > 0) {
    float4 vc[kCache];
#pragma unroll
    for (int k = 0; k < kCache; ++k) {
      const int j = 4 * threadIdx.x + k * 4 * blockDim.x;
      if (j < D) {
        float4 v = load4(prev + base + j);
        if (y) {
          const float4 u = load4(y + base + j);
          v.x += u.x; v.y += u.y; v.z += u.z; v.w += u.w;
        }
        store4(out + base + j, v.x, v.y, v.z, v.w);
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        vc[k] = v;
      }
    }
    ss = block_sum(ss, sh);
    const float r = 1.0f / sqrtf(ss / static_cast<float>(D) + eps);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    float m = 0.0f;
#pragma unroll
    for (int k = 0; k < kCache; ++k) {
      const int j = 4 * threadIdx.x + k * 4 * blockDim.x;
      if (j < D) {
        const float4 v = vc[k], g = load4(w + j);
        const float o0 = v.x * r * g.x, o1 = v.y * r * g.y, o2 = v.z * r * g.z, o3 = v.w * r * g.w;
        store4(xn + base + j, o0, o1, o2, o3);
        if (amax_bits) m = amax_acc(amax_acc(amax_acc(amax_acc(m, o0), o1), o2), o3);
      }
    }
    block_amax_into<T>(m, amax_bits, reinterpret_cast<unsigned int*>(sh));
    return;
  }
  if (vec) {
    for (int j = 4 * threadIdx.x; j < D; j += 4 * blockDim.x) {
      float4 v = load4(prev + base + j);
      if (y) {
        const float4 u = load4(y + base + j);
        v.x += u.x; v.y += u.y; v.z += u.z; v.w += u.w;
      }
      store4(out + base + j, v.x, v.y, v.z, v.w);
      ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
  } else {
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
      float v = prev[base + j];
      if (y) v += to_f(y[base + j]);
      out[base + j] = v;
      ss += v * v;
    }
  }
  ss = block_sum(ss, sh);
  const float r = 1.0f / sqrtf(ss / static_cast<float>(D) + eps);
  if (threadIdx.x == 0) rstd[blockIdx.x] = r;
  float m = 0.0f;
  if (vec) {
    for (int j = 4 * threadIdx.x; j < D; j += 4 * blockDim.x) {
      const float4 v = load4(out + base + j), g = load4(w + j);
      const float o0 = v.x * r * g.x, o1 = v.y * r * g.y, o2 = v.z * r * g.z, o3 = v.w * r * g.w;
      store4(xn + base + j, o0, o1, o2, o3);
      if (amax_bits) m = amax_acc(amax_acc(amax_acc(amax_acc(m, o0), o1), o2), o3);
    }
  } else {
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
      const float o = out[base + j] * r * w[j];
      xn[base + j] = from_f<T>(o);
      if (amax_bits) m = amax_acc(m, o);
    }
  }
  block_amax_into<T>(m, amax_bits, reinterpret_cast<unsigned int*>(sh));
}
/// add_rmsnorm_fwd over n_rows rows of D, 256 threads a row. `wide_rows` (the decoder's steps: one
/// row per sequence, fewer blocks than two per SM) gives rows of up to 256 rows up to 1024 threads,
/// one float4 each, so that the step's latency-bound norms spread over more of the GPU; the
/// training model never sets it, so its reductions keep their order (and its results their bits).
/// `amax` (may be null; fp32 on the device, not reset here): *amax ← max(*amax, max |xn|), the value
/// launch_fp8_amax would read from xn, for the FP8 quantisation of xn (issue 20, FP8 compute).
/// `pdl`: a programmatic dependent launch (launch_pdl; the decoder's steps under HDPISSA_DECODE_PDL).
template <class T>
void launch_add_rmsnorm_fwd(cudaStream_t s, const float* prev, const T* y, float* out, const float* w, float* rstd,
                            T* xn, std::int64_t n_rows, int D, float eps, bool wide_rows = false,
                            float* amax = nullptr, bool pdl = false) {
  int threads = 256;
  if (wide_rows && n_rows <= 256) threads = std::min(1024, std::max(256, (D / 4 + 31) / 32 * 32));
  const bool vec = D % 4 == 0 && al4(prev) && al4(y) && al4(out) && al4(w) && al4(xn);  // the kernel's 4-wide test
  if (n_rows == 0) return;
  auto* k = add_rmsnorm_fwd<T, 0>;
  if (threads == 256 && vec) {  // the register-cached form (same bits)
    if (D <= 4 * 256 * 2) k = add_rmsnorm_fwd<T, 2>;
    else if (D <= 4 * 256 * 4) k = add_rmsnorm_fwd<T, 4>;
    else if (D <= 4 * 256 * 8) k = add_rmsnorm_fwd<T, 8>;
  }
  HDPISSA_CUDA_CHECK(launch_pdl(k, dim3(static_cast<unsigned>(n_rows)), dim3(threads), 0, s, pdl, prev, y, out, w, rstd,
                                xn, D, eps, reinterpret_cast<unsigned int*>(amax)));
}

/// RMSNorm backward into the residual gradient: with dy = dyf + dy0 + dy1 + dy2 (null terms
/// skipped), g = dy∘w, dx += r·g − r³·(g·x)/D · x; dx_t = T(dx). 4-wide when D % 4 == 0 and the rows
/// are aligned. grid (N), block 256.
/// kCache > 0 (launcher only: needs the 4-wide path's alignment and D ≤ 4·blockDim·kCache, which the
/// kernel does not check; picked when D ≤ 4·256·kCache and the 4-wide path applies): each thread keeps its
/// ≤ kCache float4 of dy and x from the first pass in registers for the second, which then reads
/// only dx from memory. The same values in the same order: the same bits as kCache = 0.
/// `amax_bits` (may be null): maxed with the bits of max |dx_t| over the rows (block_amax_into).
template <class T, int kCache = 0>
__global__ void rmsnorm_bwd(const float* __restrict__ x, const float* __restrict__ rstd, const float* __restrict__ w,
                            const float* __restrict__ dyf, const T* __restrict__ dy0, const T* __restrict__ dy1,
                            const T* __restrict__ dy2, float* __restrict__ dx, T* __restrict__ dx_t, int D,
                            unsigned int* __restrict__ amax_bits = nullptr) {
  __shared__ float sh[32];
  const std::int64_t base = static_cast<std::int64_t>(blockIdx.x) * D;
  const bool vec = (D & 3) == 0 && al4(x) && al4(w) && al4(dyf) && al4(dy0) && al4(dy1) && al4(dy2) && al4(dx) &&
                   al4(dx_t);
  auto dy_at = [&](std::int64_t i) {
    float g = 0.0f;
    if (dyf) g += dyf[i];
    if (dy0) g += to_f(dy0[i]);
    if (dy1) g += to_f(dy1[i]);
    if (dy2) g += to_f(dy2[i]);
    return g;
  };
  auto dy4 = [&](std::int64_t i) {
    float4 g = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    auto add = [&g](float4 u) { g.x += u.x; g.y += u.y; g.z += u.z; g.w += u.w; };
    if (dyf) add(load4(dyf + i));
    if (dy0) add(load4(dy0 + i));
    if (dy1) add(load4(dy1 + i));
    if (dy2) add(load4(dy2 + i));
    return g;
  };
  float dot = 0.0f;
  if constexpr (kCache > 0) {
    float4 gc[kCache], xc[kCache];
#pragma unroll
    for (int k = 0; k < kCache; ++k) {
      const int j = 4 * threadIdx.x + k * 4 * blockDim.x;
      if (j < D) {
        gc[k] = dy4(base + j);
        xc[k] = load4(x + base + j);
        const float4 wv = load4(w + j), g = gc[k], xv = xc[k];
        dot += g.x * wv.x * xv.x + g.y * wv.y * xv.y + g.z * wv.z * xv.z + g.w * wv.w * xv.w;
      }
    }
    dot = block_sum(dot, sh);
    const float r = rstd[blockIdx.x];
    const float c = r * r * r * dot / static_cast<float>(D);
    float m = 0.0f;
#pragma unroll
    for (int k = 0; k < kCache; ++k) {
      const int j = 4 * threadIdx.x + k * 4 * blockDim.x;
      if (j < D) {
        const float4 g = gc[k], wv = load4(w + j), xv = xc[k], d = load4(dx + base + j);
        const float v0 = d.x + r * g.x * wv.x - c * xv.x, v1 = d.y + r * g.y * wv.y - c * xv.y;
        const float v2 = d.z + r * g.z * wv.z - c * xv.z, v3 = d.w + r * g.w * wv.w - c * xv.w;
        store4(dx + base + j, v0, v1, v2, v3);
        store4(dx_t + base + j, v0, v1, v2, v3);
        if (amax_bits) m = amax_acc(amax_acc(amax_acc(amax_acc(m, v0), v1), v2), v3);
      }
    }
    block_amax_into<T>(m, amax_bits, reinterpret_cast<unsigned int*>(sh));
    return;
  }
  if (vec) {
    for (int j = 4 * threadIdx.x; j < D; j += 4 * blockDim.x) {
      const float4 g = dy4(base + j), wv = load4(w + j), xv = load4(x + base + j);
      dot += g.x * wv.x * xv.x + g.y * wv.y * xv.y + g.z * wv.z * xv.z + g.w * wv.w * xv.w;
    }
  } else {
    for (int j = threadIdx.x; j < D; j += blockDim.x) dot += dy_at(base + j) * w[j] * x[base + j];
  }
  dot = block_sum(dot, sh);
  const float r = rstd[blockIdx.x];
  const float c = r * r * r * dot / static_cast<float>(D);
  float m = 0.0f;
  if (vec) {
    for (int j = 4 * threadIdx.x; j < D; j += 4 * blockDim.x) {
      const float4 g = dy4(base + j), wv = load4(w + j), xv = load4(x + base + j), d = load4(dx + base + j);
      const float v0 = d.x + r * g.x * wv.x - c * xv.x, v1 = d.y + r * g.y * wv.y - c * xv.y;
      const float v2 = d.z + r * g.z * wv.z - c * xv.z, v3 = d.w + r * g.w * wv.w - c * xv.w;
      store4(dx + base + j, v0, v1, v2, v3);
      store4(dx_t + base + j, v0, v1, v2, v3);
      if (amax_bits) m = amax_acc(amax_acc(amax_acc(amax_acc(m, v0), v1), v2), v3);
    }
  } else {
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
      const float v = dx[base + j] + r * dy_at(base + j) * w[j] - c * x[base + j];
      dx[base + j] = v;
      dx_t[base + j] = from_f<T>(v);
      if (amax_bits) m = amax_acc(m, v);
    }
  }
  block_amax_into<T>(m, amax_bits, reinterpret_cast<unsigned int*>(sh));
}
/// rmsnorm_bwd over n_rows rows of D: the register-cached form (kCache 2, 4 or 8) where the 4-wide
/// path applies and D ≤ 8192, else the two-pass form. `amax` (may be null; not reset here):
/// *amax ← max(*amax, max |dx_t|), as launch_add_rmsnorm_fwd's.
template <class T>
void launch_rmsnorm_bwd(cudaStream_t s, const float* x, const float* rstd, const float* w, const float* dyf,
                        const T* dy0, const T* dy1, const T* dy2, float* dx, T* dx_t, std::int64_t n_rows, int D,
                        float* amax = nullptr) {
  const bool vec = D % 4 == 0 && al4(x) && al4(w) && al4(dyf) && al4(dy0) && al4(dy1) && al4(dy2) && al4(dx) &&
                   al4(dx_t);  // the kernel's 4-wide test
  if (n_rows == 0) return;
  auto* k = rmsnorm_bwd<T, 0>;
  if (vec && D <= 4 * 256 * 2) k = rmsnorm_bwd<T, 2>;
  else if (vec && D <= 4 * 256 * 4) k = rmsnorm_bwd<T, 4>;
  else if (vec && D <= 4 * 256 * 8) k = rmsnorm_bwd<T, 8>;
  k<<<static_cast<unsigned>(n_rows), 256, 0, s>>>(x, rstd, w, dyf, dy0, dy1, dy2, dx, dx_t, D,
                                                  reinterpret_cast<unsigned int*>(amax));
  HDPISSA_CUDA_CHECK_LAUNCH("rmsnorm_bwd");
}

/// Rotate-half RoPE of the pair (a = x[i], b = x[i + hd/2]) by (c, s) = (cos, sin)(t·θ_i), and its
/// inverse (the RoPE backward). Every product and sum rounded on its own (no FMA contraction), so
/// the scalar and the vectorised layout kernels below give the same bits (GPU test).
__device__ __forceinline__ float rope_lo(float a, float b, float c, float s) { return __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s)); }
__device__ __forceinline__ float rope_hi(float a, float b, float c, float s) { return __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s)); }
__device__ __forceinline__ float unrope_lo(float a, float b, float c, float s) { return __fadd_rn(__fmul_rn(a, c), __fmul_rn(b, s)); }
__device__ __forceinline__ float unrope_hi(float a, float b, float c, float s) { return __fsub_rn(__fmul_rn(b, c), __fmul_rn(a, s)); }

/// The layout kernels' 4-wide forms (issue 20: the scalar ones ran at about a quarter of the copy
/// bandwidth, on 64-bit index arithmetic and 2-byte accesses). Item idx of a flattened
/// (token row n, head h, 4-chunk ci) space moves x[i..i+3] and its rotate-half partners
/// x[i+hd/2..+3], i = 4·ci; 32-bit index arithmetic. Same arithmetic per element as the scalar
/// kernels (the same bits; GPU test). Usable when vec4_layout_ok().
inline bool vec4_layout_ok(int hd, std::int64_t total, std::initializer_list<const void*> ptrs, std::initializer_list<int> lds,
                           int elem_bytes) {
  if (hd % 8 != 0 || total >= (std::int64_t(1) << 30)) return false;
  for (const void* p : ptrs)
    if (reinterpret_cast<std::uintptr_t>(p) % (4 * static_cast<std::uintptr_t>(elem_bytes)) != 0) return false;
  for (int ld : lds)
    if (ld % 4 != 0) return false;
  return true;
}

/// Item idx of the 4-wide layout kernels: token row n = b·Tn + t, head h, first-half column i.
struct Vec4Item {
  int n, b, t, h, i;
};
__device__ __forceinline__ Vec4Item vec4_item(int idx, int nheads, int hd, int Tn) {
  const int cpr = hd >> 3, items = nheads * cpr;  // 4-chunks per half row
  Vec4Item it;
  it.n = idx / items;
  const int w = idx - it.n * items;
  it.h = w / cpr;
  it.i = (w - it.h * cpr) * 4;
  it.b = it.n / Tn;
  it.t = it.n - it.b * Tn;
  return it;
}
/// Stores a 4-chunk pair (x at lo, its rotate-half partners y at hi) rotated at the position whose
/// table rows are cs, sn (the RoPE forward, or its inverse when kInverse).
template <bool kInverse, class T>
__device__ __forceinline__ void store_rotated4(T* lo, T* hi, float4 x, float4 y, const float* cs, const float* sn) {
  const float4 c = load4(cs), s = load4(sn);
  auto L = [](float a, float b, float c, float s) { return kInverse ? unrope_lo(a, b, c, s) : rope_lo(a, b, c, s); };
  auto H = [](float a, float b, float c, float s) { return kInverse ? unrope_hi(a, b, c, s) : rope_hi(a, b, c, s); };
  store4(lo, L(x.x, y.x, c.x, s.x), L(x.y, y.y, c.y, s.y), L(x.z, y.z, c.z, s.z), L(x.w, y.w, c.w, s.w));
  store4(hi, H(x.x, y.x, c.x, s.x), H(x.y, y.y, c.y, s.y), H(x.z, y.z, c.z, s.z), H(x.w, y.w, c.w, s.w));
}

/// rows_to_heads (kToHeads) or heads_to_rows, 4-wide: `ld` is the row layout's stride; the RoPE
/// forward into heads, its inverse out of them.
template <class T, bool kToHeads, bool kRope>
__global__ void permute_heads_vec(const T* __restrict__ in, T* __restrict__ out, int ld, int Tn, int nheads, int hd,
                                  const float* __restrict__ cos_t, const float* __restrict__ sin_t, int total) {
  const int half = hd >> 1;
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
    const Vec4Item it = vec4_item(idx, nheads, hd, Tn);
    const std::int64_t rows = static_cast<std::int64_t>(it.n) * ld + it.h * hd;
    const std::int64_t heads = ((static_cast<std::int64_t>(it.b) * nheads + it.h) * Tn + it.t) * hd;
    const T* src = in + (kToHeads ? rows : heads) + it.i;
    T* dst = out + (kToHeads ? heads : rows) + it.i;
    if constexpr (!kRope) {  // a permutation: the bits as they are
      copy4(dst, src);
      copy4(dst + half, src + half);
    } else {
      store_rotated4<!kToHeads>(dst, dst + half, load4(src), load4(src + half), cos_t + it.t * half + it.i,
                                sin_t + it.t * half + it.i);
    }
  }
}

template <class T, bool kRope>
__global__ void group_sum_heads_to_rows_vec(const float* __restrict__ in, int group, T* __restrict__ out, int ld_out,
                                            int Tn, int nkv, int hd, const float* __restrict__ cos_t,
                                            const float* __restrict__ sin_t, int total) {
  const int half = hd >> 1;
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
    const Vec4Item it = vec4_item(idx, nkv, hd, Tn);  // it.h: the kv head
    float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f), y = x;
    for (int j = 0; j < group; ++j) {  // the scalar kernel's order: 0 + head 0 + head 1 + …
      const float* src = in + ((static_cast<std::int64_t>(it.b) * nkv * group + it.h * group + j) * Tn + it.t) * hd + it.i;
      const float4 u = load4(src), v = load4(src + half);
      x.x += u.x; x.y += u.y; x.z += u.z; x.w += u.w;
      y.x += v.x; y.y += v.y; y.z += v.z; y.w += v.w;
    }
    T* dst = out + static_cast<std::int64_t>(it.n) * ld_out + it.h * hd + it.i;
    if constexpr (kRope) {
      store_rotated4<true>(dst, dst + half, x, y, cos_t + it.t * half + it.i, sin_t + it.t * half + it.i);
    } else {
      store4(dst, x.x, x.y, x.z, x.w);
      store4(dst + half, y.x, y.y, y.z, y.w);
    }
  }
}

/// Row layout (N = B·Tn rows, ld_in ≥ nheads·hd) → head-major (B, nheads, Tn, hd), applying
/// rotate-half RoPE at position t when `rope`. One thread per (row, head, i < hd/2).
template <class T>
__global__ void rows_to_heads(const T* __restrict__ in, int ld_in, T* __restrict__ out, int B, int Tn, int nheads,
                              int hd, const float* __restrict__ cos_t, const float* __restrict__ sin_t, bool rope) {
  const int half = hd / 2;
  const std::int64_t total = static_cast<std::int64_t>(B) * Tn * nheads * half;
  for (std::int64_t idx = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    std::int64_t rest = idx / half;
    const int h = static_cast<int>(rest % nheads);
    const std::int64_t n = rest / nheads;  // token row b·Tn + t
    const int t = static_cast<int>(n % Tn), b = static_cast<int>(n / Tn);
    const T* src = in + n * ld_in + h * hd;
    T* dst = out + ((static_cast<std::int64_t>(b) * nheads + h) * Tn + t) * hd;
    const float a = to_f(src[i]), bb = to_f(src[i + half]);
    if (rope) {
      const float c = cos_t[static_cast<std::int64_t>(t) * half + i], s = sin_t[static_cast<std::int64_t>(t) * half + i];
      dst[i] = from_f<T>(rope_lo(a, bb, c, s));
      dst[i + half] = from_f<T>(rope_hi(a, bb, c, s));
    } else {
      dst[i] = src[i];
      dst[i + half] = src[i + half];
    }
  }
}

/// rows_to_heads, one thread per (token row, head, i < hd/2).
template <class T>
void launch_rows_to_heads(cudaStream_t s, const T* in, int ld_in, T* out, int B, int Tn, int nheads, int hd,
                          const float* cos_t, const float* sin_t, bool rope) {
  const std::int64_t total4 = static_cast<std::int64_t>(B) * Tn * nheads * (hd / 8);
  if (vec4_layout_ok(hd, total4, {in, out}, {ld_in}, sizeof(T)) &&
      (!rope || vec4_layout_ok(hd, total4, {cos_t, sin_t}, {}, sizeof(float)))) {
    auto* k = rope ? permute_heads_vec<T, true, true> : permute_heads_vec<T, true, false>;
    k<<<grid_for(total4), 256, 0, s>>>(in, out, ld_in, Tn, nheads, hd, cos_t, sin_t, static_cast<int>(total4));
    HDPISSA_CUDA_CHECK_LAUNCH("permute_heads_vec (rows to heads)");
    return;
  }
  const std::int64_t n = static_cast<std::int64_t>(B) * Tn * nheads * (hd / 2);
  rows_to_heads<T><<<grid_for(n), 256, 0, s>>>(in, ld_in, out, B, Tn, nheads, hd, cos_t, sin_t, rope);
  HDPISSA_CUDA_CHECK_LAUNCH("rows_to_heads");
}

/// Head-major (B, nheads, Tn, hd) → row layout (ld_out), applying the INVERSE rotation (the RoPE
/// backward) when `rope`.
template <class T>
__global__ void heads_to_rows(const T* __restrict__ in, T* __restrict__ out, int ld_out, int B, int Tn, int nheads,
                              int hd, const float* __restrict__ cos_t, const float* __restrict__ sin_t, bool rope) {
  const int half = hd / 2;
  const std::int64_t total = static_cast<std::int64_t>(B) * Tn * nheads * half;
  for (std::int64_t idx = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    std::int64_t rest = idx / half;
    const int h = static_cast<int>(rest % nheads);
    const std::int64_t n = rest / nheads;
    const int t = static_cast<int>(n % Tn), b = static_cast<int>(n / Tn);
    const T* src = in + ((static_cast<std::int64_t>(b) * nheads + h) * Tn + t) * hd;
    T* dst = out + n * ld_out + h * hd;
    if (rope) {
      const float a = to_f(src[i]), bb = to_f(src[i + half]);
      const float c = cos_t[static_cast<std::int64_t>(t) * half + i], s = sin_t[static_cast<std::int64_t>(t) * half + i];
      dst[i] = from_f<T>(unrope_lo(a, bb, c, s));
      dst[i + half] = from_f<T>(unrope_hi(a, bb, c, s));
    } else {
      dst[i] = src[i];
      dst[i + half] = src[i + half];
    }
  }
}

/// heads_to_rows, one thread per (token row, head, i < hd/2).
template <class T>
void launch_heads_to_rows(cudaStream_t s, const T* in, T* out, int ld_out, int B, int Tn, int nheads, int hd,
                          const float* cos_t, const float* sin_t, bool rope) {
  const std::int64_t total4 = static_cast<std::int64_t>(B) * Tn * nheads * (hd / 8);
  if (vec4_layout_ok(hd, total4, {in, out}, {ld_out}, sizeof(T)) &&
      (!rope || vec4_layout_ok(hd, total4, {cos_t, sin_t}, {}, sizeof(float)))) {
    auto* k = rope ? permute_heads_vec<T, false, true> : permute_heads_vec<T, false, false>;
    k<<<grid_for(total4), 256, 0, s>>>(in, out, ld_out, Tn, nheads, hd, cos_t, sin_t, static_cast<int>(total4));
    HDPISSA_CUDA_CHECK_LAUNCH("permute_heads_vec (heads to rows)");
    return;
  }
  const std::int64_t n = static_cast<std::int64_t>(B) * Tn * nheads * (hd / 2);
  heads_to_rows<T><<<grid_for(n), 256, 0, s>>>(in, out, ld_out, B, Tn, nheads, hd, cos_t, sin_t, rope);
  HDPISSA_CUDA_CHECK_LAUNCH("heads_to_rows");
}

/// Sums each kv head's group of fp32 per-query-head partials (B, nkv·group, Tn, hd) — query head
/// h belongs to kv head h / group — into row layout (ld_out, nkv heads) as T, applying the INVERSE
/// rotation when `rope` (like heads_to_rows). group = 1 is a plain fp32 → T heads_to_rows.
template <class T>
__global__ void group_sum_heads_to_rows(const float* __restrict__ in, int group, T* __restrict__ out, int ld_out,
                                        int B, int Tn, int nkv, int hd, const float* __restrict__ cos_t,
                                        const float* __restrict__ sin_t, bool rope) {
  const int half = hd / 2;
  const std::int64_t total = static_cast<std::int64_t>(B) * Tn * nkv * half;
  for (std::int64_t idx = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    std::int64_t rest = idx / half;
    const int kvh = static_cast<int>(rest % nkv);
    const std::int64_t n = rest / nkv;
    const int t = static_cast<int>(n % Tn), b = static_cast<int>(n / Tn);
    float a = 0.0f, bb = 0.0f;
    for (int j = 0; j < group; ++j) {
      const float* src = in + ((static_cast<std::int64_t>(b) * nkv * group + kvh * group + j) * Tn + t) * hd;
      a += src[i];
      bb += src[i + half];
    }
    T* dst = out + n * ld_out + kvh * hd;
    if (rope) {
      const float c = cos_t[static_cast<std::int64_t>(t) * half + i], s = sin_t[static_cast<std::int64_t>(t) * half + i];
      dst[i] = from_f<T>(unrope_lo(a, bb, c, s));
      dst[i + half] = from_f<T>(unrope_hi(a, bb, c, s));
    } else {
      dst[i] = from_f<T>(a);
      dst[i + half] = from_f<T>(bb);
    }
  }
}

/// group_sum_heads_to_rows, one thread per (token row, kv head, i < hd/2).
template <class T>
void launch_group_sum_heads_to_rows(cudaStream_t s, const float* in, int group, T* out, int ld_out, int B, int Tn,
                                    int nkv, int hd, const float* cos_t, const float* sin_t, bool rope) {
  const std::int64_t total4 = static_cast<std::int64_t>(B) * Tn * nkv * (hd / 8);
  if (vec4_layout_ok(hd, total4, {out}, {ld_out}, sizeof(T)) && vec4_layout_ok(hd, total4, {in}, {}, sizeof(float)) &&
      (!rope || vec4_layout_ok(hd, total4, {cos_t, sin_t}, {}, sizeof(float)))) {
    auto* k = rope ? group_sum_heads_to_rows_vec<T, true> : group_sum_heads_to_rows_vec<T, false>;
    k<<<grid_for(total4), 256, 0, s>>>(in, group, out, ld_out, Tn, nkv, hd, cos_t, sin_t, static_cast<int>(total4));
    HDPISSA_CUDA_CHECK_LAUNCH("group_sum_heads_to_rows_vec");
    return;
  }
  const std::int64_t n = static_cast<std::int64_t>(B) * Tn * nkv * (hd / 2);
  group_sum_heads_to_rows<T><<<grid_for(n), 256, 0, s>>>(in, group, out, ld_out, B, Tn, nkv, hd, cos_t, sin_t, rope);
  HDPISSA_CUDA_CHECK_LAUNCH("group_sum_heads_to_rows");
}

/// Causal softmax of scaled scores S (rows r = (b·nh + h)·Tn + t, Tn columns) with padding: row
/// t < L_b attends to keys first..t, first = max(0, t − window + 1) for a sliding window (window > 0;
/// transformers' sliding_window_overlay: kv > q − W), else 0; rows t ≥ L_b get P = 0, lse = 0 (like
/// the CPU model).
/// P = exp(S − lse) as T, lse saved. One warp per row (online max / sum: S is read twice, only
/// its causal part); 4-wide loads and stores when Tn % 4 == 0. Block 256 (8 rows).
template <class T>
__global__ void causal_softmax_fwd(const float* __restrict__ S, T* __restrict__ P, float* __restrict__ lse,
                                   const int* __restrict__ lengths, int nh, int Tn, std::int64_t rows, int window) {
  const std::int64_t r = blockIdx.x * static_cast<std::int64_t>(blockDim.x / 32) + (threadIdx.x >> 5);
  if (r >= rows) return;
  const int lane = threadIdx.x & 31;
  const int t = static_cast<int>(r % Tn);
  const int b = static_cast<int>(r / Tn / nh);
  const int first = window > 0 && t - window + 1 > 0 ? t - window + 1 : 0;  // keys first..t are live
  const float* s = S + r * Tn;
  T* p = P + r * Tn;
  const bool vec = (Tn & 3) == 0;
  if (t >= lengths[b]) {
    for (int j = lane; j < Tn; j += 32) p[j] = from_f<T>(0.0f);
    if (lane == 0) lse[r] = 0.0f;
    return;
  }
  float m = -INFINITY, sum = 0.0f;
  auto acc = [&](float x) {
    if (x > m) { sum = sum * expf(m - x) + 1.0f; m = x; }
    else sum += expf(x - m);
  };
  if (vec) {
    for (int j = 4 * (first / 4) + 4 * lane; j <= t; j += 128) {
      const float4 v = *reinterpret_cast<const float4*>(s + j);
      if (j >= first) acc(v.x);
      if (j + 1 >= first && j + 1 <= t) acc(v.y);
      if (j + 2 >= first && j + 2 <= t) acc(v.z);
      if (j + 3 >= first && j + 3 <= t) acc(v.w);
    }
  } else {
    for (int j = first + lane; j <= t; j += 32) acc(s[j]);
  }
  const float mx = warp_max(m);
  sum = warp_sum(m == -INFINITY ? 0.0f : sum * expf(m - mx));
  const float l = mx + logf(sum);
  if (vec) {
    for (int j = 4 * lane; j < Tn; j += 128) {
      if (j > t || j + 3 < first) { store4(p + j, 0.0f, 0.0f, 0.0f, 0.0f); continue; }
      const float4 v = *reinterpret_cast<const float4*>(s + j);
      auto live = [&](int jj) { return jj >= first && jj <= t; };
      store4(p + j, live(j) ? expf(v.x - l) : 0.0f, live(j + 1) ? expf(v.y - l) : 0.0f,
             live(j + 2) ? expf(v.z - l) : 0.0f, live(j + 3) ? expf(v.w - l) : 0.0f);
    }
  } else {
    for (int j = lane; j < Tn; j += 32) p[j] = from_f<T>(j >= first && j <= t ? expf(s[j] - l) : 0.0f);
  }
  if (lane == 0) lse[r] = l;
}

/// causal_softmax_fwd over `rows` score rows, 8 rows (warps) per 256-thread block.
template <class T>
void launch_causal_softmax_fwd(cudaStream_t s, const float* S, T* P, float* lse, const int* lengths, int nh, int Tn,
                               std::int64_t rows, int window = 0) {
  causal_softmax_fwd<T><<<static_cast<unsigned>((rows + 7) / 8), 256, 0, s>>>(S, P, lse, lengths, nh, Tn, rows, window);
  HDPISSA_CUDA_CHECK_LAUNCH("causal_softmax_fwd");
}

/// Attention backward elementwise step, from the recomputed scaled scores S, dP = dO Vᵀ, lse and
/// Dr = rowsum(dO∘O): P = exp(S − lse) (causal within the window, padding masked), dS = P∘(dP − Dr). Writes P and dS
/// as T. One warp per row; 4-wide when Tn % 4 == 0; the masked part is written without reading.
template <class T>
__global__ void attn_bwd_ds(const float* __restrict__ S, const float* __restrict__ dP, const float* __restrict__ lse,
                            const float* __restrict__ Dr, T* __restrict__ P, T* __restrict__ dS,
                            const int* __restrict__ lengths, int nh, int Tn, std::int64_t rows, int window) {
  const std::int64_t r = blockIdx.x * static_cast<std::int64_t>(blockDim.x / 32) + (threadIdx.x >> 5);
  if (r >= rows) return;
  const int lane = threadIdx.x & 31;
  const int t = static_cast<int>(r % Tn);
  const int b = static_cast<int>(r / Tn / nh);
  const int last = t < lengths[b] ? t : -1;  // keys first..last are live
  const int first = window > 0 && t - window + 1 > 0 ? t - window + 1 : 0;
  const float l = lse[r], d = Dr[r];
  const std::int64_t o = r * Tn;
  if ((Tn & 3) == 0) {
    for (int j = 4 * lane; j < Tn; j += 128) {
      if (j > last || j + 3 < first) {
        store4(P + o + j, 0.0f, 0.0f, 0.0f, 0.0f);
        store4(dS + o + j, 0.0f, 0.0f, 0.0f, 0.0f);
        continue;
      }
      const float4 sv = *reinterpret_cast<const float4*>(S + o + j);
      const float4 gv = *reinterpret_cast<const float4*>(dP + o + j);
      auto live = [&](int jj) { return jj >= first && jj <= last; };
      const float p0 = live(j) ? expf(sv.x - l) : 0.0f;
      const float p1 = live(j + 1) ? expf(sv.y - l) : 0.0f;
      const float p2 = live(j + 2) ? expf(sv.z - l) : 0.0f;
      const float p3 = live(j + 3) ? expf(sv.w - l) : 0.0f;
      store4(P + o + j, p0, p1, p2, p3);
      store4(dS + o + j, p0 * (gv.x - d), p1 * (gv.y - d), p2 * (gv.z - d), p3 * (gv.w - d));
    }
  } else {
    for (int j = lane; j < Tn; j += 32) {
      float p = 0.0f, ds = 0.0f;
      if (j >= first && j <= last) {
        p = expf(S[o + j] - l);
        ds = p * (dP[o + j] - d);
      }
      P[o + j] = from_f<T>(p);
      dS[o + j] = from_f<T>(ds);
    }
  }
}

/// attn_bwd_ds over `rows` score rows, 8 rows (warps) per 256-thread block.
template <class T>
void launch_attn_bwd_ds(cudaStream_t s, const float* S, const float* dP, const float* lse, const float* Dr, T* P, T* dS,
                        const int* lengths, int nh, int Tn, std::int64_t rows, int window = 0) {
  attn_bwd_ds<T><<<static_cast<unsigned>((rows + 7) / 8), 256, 0, s>>>(S, dP, lse, Dr, P, dS, lengths, nh, Tn, rows,
                                                                         window);
  HDPISSA_CUDA_CHECK_LAUNCH("attn_bwd_ds");
}

/// Dr[(b·nh + h)·Tn + t] = Σ_d dO[n, h·hd + d]·O[n, h·hd + d] (row layout, ld = nh·hd), n = b·Tn + t.
template <class T>
__global__ void attn_rowdot(const T* __restrict__ dO, const T* __restrict__ O, float* __restrict__ Dr, int B, int Tn,
                            int nh, int hd) {
  const std::int64_t total = static_cast<std::int64_t>(B) * Tn * nh;
  const std::int64_t idx = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= total) return;
  const int h = static_cast<int>(idx % nh);
  const std::int64_t n = idx / nh;
  const int t = static_cast<int>(n % Tn), b = static_cast<int>(n / Tn);
  const std::int64_t off = n * static_cast<std::int64_t>(nh) * hd + static_cast<std::int64_t>(h) * hd;
  float acc = 0.0f;
  for (int d = 0; d < hd; ++d) acc += to_f(dO[off + d]) * to_f(O[off + d]);
  Dr[(static_cast<std::int64_t>(b) * nh + h) * Tn + t] = acc;
}

/// attn_rowdot's 4-wide form: hd/4 lanes per (token row, head) (hd/4 a power of two ≤ 32), each a
/// 4-element partial dot product, summed by an xor butterfly. Not attn_rowdot's summation order
/// (GPU test: both against a double-precision sum).
template <class T>
__global__ void attn_rowdot_vec(const T* __restrict__ dO, const T* __restrict__ O, float* __restrict__ Dr, int Tn, int nh,
                                int hd, int total) {
  const int tph = hd >> 2;
  const int total_r = (total + 31) & ~31;  // whole warps iterate together (the shuffles)
  for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total_r; idx += gridDim.x * blockDim.x) {
    const bool ok = idx < total;
    const int q = idx / tph, c = idx - q * tph;  // q = n·nh + h
    float acc = 0.0f;
    if (ok) {
      const std::int64_t off = static_cast<std::int64_t>(q) * hd + c * 4;
      const float4 a = load4(dO + off), b = load4(O + off);
      acc = a.x * b.x + a.y * b.y + a.z * b.z + a.w * b.w;
    }
    for (int o = tph >> 1; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (ok && c == 0) {
      const int n = q / nh, h = q - n * nh, b = n / Tn, t = n - b * Tn;
      Dr[(static_cast<std::int64_t>(b) * nh + h) * Tn + t] = acc;
    }
  }
}

/// attn_rowdot: the 4-wide form where it applies (hd ∈ {8, 16, 32, 64, 128}, aligned), else one
/// thread per (token row, head).
template <class T>
void launch_attn_rowdot(cudaStream_t s, const T* dO, const T* O, float* Dr, int B, int Tn, int nh, int hd) {
  const std::int64_t total4 = static_cast<std::int64_t>(B) * Tn * nh * (hd / 4);
  const int tph = hd / 4;
  if (vec4_layout_ok(hd, total4, {dO, O}, {}, sizeof(T)) && tph <= 32 && (tph & (tph - 1)) == 0) {
    attn_rowdot_vec<T><<<grid_for(total4), 256, 0, s>>>(dO, O, Dr, Tn, nh, hd, static_cast<int>(total4));
    HDPISSA_CUDA_CHECK_LAUNCH("attn_rowdot_vec");
    return;
  }
  attn_rowdot<T><<<grid_for(static_cast<std::int64_t>(B) * Tn * nh), 256, 0, s>>>(dO, O, Dr, B, Tn, nh, hd);
  HDPISSA_CUDA_CHECK_LAUNCH("attn_rowdot");
}

/// Y[r, j] += bias[j] (a frozen linear bias, Qwen2's q/k/v), Y (rows, cols) contiguous, bias fp32.
template <class T>
__global__ void add_bias_rows(T* __restrict__ Y, const float* __restrict__ bias, std::int64_t rows, int cols) {
  const std::int64_t n = rows * cols;
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    Y[i] = from_f<T>(to_f(Y[i]) + bias[i % cols]);
}
template <class T>
void launch_add_bias_rows(cudaStream_t s, T* Y, const float* bias, std::int64_t rows, int cols) {
  add_bias_rows<T><<<grid_for(rows * cols), 256, 0, s>>>(Y, bias, rows, cols);
  HDPISSA_CUDA_CHECK_LAUNCH("add_bias_rows");
}

__device__ __forceinline__ float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

/// act (rows, cols; contiguous) = silu(gate)·up, gate and up (rows, cols) with row stride ld_gu (a
/// layer's [gate | up] in one (rows, 2·cols) buffer: ld_gu = 2·cols). 4-wide when cols, ld_gu are
/// multiples of 4 and the pointers aligned. `amax_bits` (may be null): maxed with the bits of max
/// |act| (block_amax_into).
template <class T>
__global__ void swiglu_fwd(const T* __restrict__ gate, const T* __restrict__ up, std::int64_t ld_gu,
                           T* __restrict__ act, std::int64_t rows, std::int64_t cols,
                           unsigned int* __restrict__ amax_bits = nullptr) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t first = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  const std::int64_t n = rows * cols;
  float m = 0.0f;
  if ((cols & 3) == 0 && (ld_gu & 3) == 0 && al4(gate) && al4(up) && al4(act)) {
    for (std::int64_t q = first; 4 * q < n; q += stride) {
      const std::int64_t e = 4 * q, r = e / cols, at = r * ld_gu + (e - r * cols);
      const float4 g = load4(gate + at), u = load4(up + at);
      const float a0 = g.x * sigmoidf_(g.x) * u.x, a1 = g.y * sigmoidf_(g.y) * u.y, a2 = g.z * sigmoidf_(g.z) * u.z,
                  a3 = g.w * sigmoidf_(g.w) * u.w;
      store4(act + e, a0, a1, a2, a3);
      if (amax_bits) m = amax_acc(amax_acc(amax_acc(amax_acc(m, a0), a1), a2), a3);
    }
  } else {
    for (std::int64_t i = first; i < n; i += stride) {
      const std::int64_t r = i / cols, at = r * ld_gu + (i - r * cols);
      const float g = to_f(gate[at]);
      const float a = g * sigmoidf_(g) * to_f(up[at]);
      act[i] = from_f<T>(a);
      if (amax_bits) m = amax_acc(m, a);
    }
  }
  __shared__ unsigned int sh[32];
  block_amax_into<T>(m, amax_bits, sh);
}

/// The grid of the elementwise SwiGLU kernels: one thread per 4 elements, or, with an amax to keep,
/// at most 2048 blocks (grid-stride loops) so that the per-block atomics stay few.
inline unsigned swiglu_grid(std::int64_t n, bool amax) {
  const unsigned g = grid_for((n + 3) / 4);
  return amax ? std::min(g, 2048u) : g;
}

/// swiglu_fwd over n elements, one thread per 4. `amax` (may be null; not reset here):
/// *amax ← max(*amax, max |act|), as launch_add_rmsnorm_fwd's.
template <class T>
void launch_swiglu_fwd(cudaStream_t s, const T* gate, const T* up, T* act, std::int64_t n, float* amax = nullptr) {
  swiglu_fwd<T><<<swiglu_grid(n, amax != nullptr), 256, 0, s>>>(gate, up, n, act, std::int64_t(n > 0), n,
                                                                reinterpret_cast<unsigned int*>(amax));
  HDPISSA_CUDA_CHECK_LAUNCH("swiglu_fwd");
}
/// The strided form: gate, up (rows, cols) with row stride ld_gu; act (rows, cols) contiguous.
template <class T>
void launch_swiglu_fwd(cudaStream_t s, const T* gate, const T* up, std::int64_t ld_gu, T* act, std::int64_t rows,
                       std::int64_t cols, float* amax = nullptr) {
  HDPISSA_REQUIRE(ld_gu >= cols, "swiglu_fwd: expected ld_gu >= cols = ", cols, ", found ", ld_gu);
  swiglu_fwd<T><<<swiglu_grid(rows * cols, amax != nullptr), 256, 0, s>>>(gate, up, ld_gu, act, rows, cols,
                                                                          reinterpret_cast<unsigned int*>(amax));
  HDPISSA_CUDA_CHECK_LAUNCH("swiglu_fwd");
}

/// d_up = d_act·silu(gate); d_gate = d_act·up·σ(g)(1 + g(1 − σ(g))), over (rows, cols): d_act
/// contiguous, gate and up with row stride ld_gu, d_gate and d_up with ld_dgu. 4-wide when possible.
/// `amax_gate_bits`, `amax_up_bits` (each may be null): maxed with the bits of max |d_gate|, max |d_up|.
template <class T>
__global__ void swiglu_bwd(const T* __restrict__ d_act, const T* __restrict__ gate, const T* __restrict__ up,
                           std::int64_t ld_gu, T* __restrict__ d_gate, T* __restrict__ d_up, std::int64_t ld_dgu,
                           std::int64_t rows, std::int64_t cols, unsigned int* __restrict__ amax_gate_bits = nullptr,
                           unsigned int* __restrict__ amax_up_bits = nullptr) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t first = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x;
  const std::int64_t n = rows * cols;
  auto one = [](float da, float g, float u, float& dg, float& du) {
    const float sg = sigmoidf_(g);
    du = da * g * sg;
    dg = da * u * sg * (1.0f + g * (1.0f - sg));
  };
  float mg = 0.0f, mu = 0.0f;
  if ((cols & 3) == 0 && (ld_gu & 3) == 0 && (ld_dgu & 3) == 0 && al4(d_act) && al4(gate) && al4(up) &&
      al4(d_gate) && al4(d_up)) {
    for (std::int64_t q = first; 4 * q < n; q += stride) {
      const std::int64_t e = 4 * q, r = e / cols, c = e - r * cols, at = r * ld_gu + c, to = r * ld_dgu + c;
      const float4 da = load4(d_act + e), g = load4(gate + at), u = load4(up + at);
      float dg0, dg1, dg2, dg3, du0, du1, du2, du3;
      one(da.x, g.x, u.x, dg0, du0);
      one(da.y, g.y, u.y, dg1, du1);
      one(da.z, g.z, u.z, dg2, du2);
      one(da.w, g.w, u.w, dg3, du3);
      store4(d_gate + to, dg0, dg1, dg2, dg3);
      store4(d_up + to, du0, du1, du2, du3);
      if (amax_gate_bits) mg = amax_acc(amax_acc(amax_acc(amax_acc(mg, dg0), dg1), dg2), dg3);
      if (amax_up_bits) mu = amax_acc(amax_acc(amax_acc(amax_acc(mu, du0), du1), du2), du3);
    }
  } else {
    for (std::int64_t i = first; i < n; i += stride) {
      const std::int64_t r = i / cols, c = i - r * cols, at = r * ld_gu + c, to = r * ld_dgu + c;
      float dg, du;
      one(to_f(d_act[i]), to_f(gate[at]), to_f(up[at]), dg, du);
      d_gate[to] = from_f<T>(dg);
      d_up[to] = from_f<T>(du);
      if (amax_gate_bits) mg = amax_acc(mg, dg);
      if (amax_up_bits) mu = amax_acc(mu, du);
    }
  }
  __shared__ unsigned int sh[32];
  block_amax_into<T>(mg, amax_gate_bits, sh);
  block_amax_into<T>(mu, amax_up_bits, sh);
}

/// swiglu_bwd over n elements, one thread per 4. `amax_gate`, `amax_up` (each may be null; not
/// reset here): *amax ← max(*amax, max |d_gate|), max |d_up|, as launch_add_rmsnorm_fwd's.
template <class T>
void launch_swiglu_bwd(cudaStream_t s, const T* d_act, const T* gate, const T* up, T* d_gate, T* d_up,
                       std::int64_t n, float* amax_gate = nullptr, float* amax_up = nullptr) {
  swiglu_bwd<T><<<swiglu_grid(n, amax_gate || amax_up), 256, 0, s>>>(
      d_act, gate, up, n, d_gate, d_up, n, std::int64_t(n > 0), n, reinterpret_cast<unsigned int*>(amax_gate),
      reinterpret_cast<unsigned int*>(amax_up));
  HDPISSA_CUDA_CHECK_LAUNCH("swiglu_bwd");
}
/// The strided form: d_act (rows, cols) contiguous; gate, up with row stride ld_gu; d_gate, d_up
/// with ld_dgu.
template <class T>
void launch_swiglu_bwd(cudaStream_t s, const T* d_act, const T* gate, const T* up, std::int64_t ld_gu, T* d_gate,
                       T* d_up, std::int64_t ld_dgu, std::int64_t rows, std::int64_t cols, float* amax_gate = nullptr,
                       float* amax_up = nullptr) {
  HDPISSA_REQUIRE(ld_gu >= cols && ld_dgu >= cols, "swiglu_bwd: expected ld_gu, ld_dgu >= cols = ", cols,
                  ", found ", ld_gu, ", ", ld_dgu);
  swiglu_bwd<T><<<swiglu_grid(rows * cols, amax_gate || amax_up), 256, 0, s>>>(
      d_act, gate, up, ld_gu, d_gate, d_up, ld_dgu, rows, cols, reinterpret_cast<unsigned int*>(amax_gate),
      reinterpret_cast<unsigned int*>(amax_up));
  HDPISSA_CUDA_CHECK_LAUNCH("swiglu_bwd");
}

/// dst[i, :] = src[rows[i], :] (ld D).  grid (n), block 256.
template <class T>
__global__ void gather_rows(const T* __restrict__ src, const std::int32_t* __restrict__ rows, T* __restrict__ dst, int D) {
  const T* s = src + static_cast<std::int64_t>(rows[blockIdx.x]) * D;
  T* d = dst + static_cast<std::int64_t>(blockIdx.x) * D;
  for (int j = threadIdx.x; j < D; j += blockDim.x) d[j] = s[j];
}
/// gather_rows of n rows.
template <class T>
void launch_gather_rows(cudaStream_t s, const T* src, const std::int32_t* rows, T* dst, std::int64_t n, int D) {
  gather_rows<T><<<static_cast<unsigned>(n), 256, 0, s>>>(src, rows, dst, D);
  HDPISSA_CUDA_CHECK_LAUNCH("gather_rows");
}
/// dst[rows[i], :] = src[i, :] (rows distinct).  grid (n), block 256.
__global__ inline void scatter_rows(const float* __restrict__ src, const std::int32_t* __restrict__ rows, float* __restrict__ dst,
                             int D) {
  const float* s = src + static_cast<std::int64_t>(blockIdx.x) * D;
  float* d = dst + static_cast<std::int64_t>(rows[blockIdx.x]) * D;
  for (int j = threadIdx.x; j < D; j += blockDim.x) d[j] = s[j];
}

/// scatter_rows of n rows.
inline void launch_scatter_rows(cudaStream_t s, const float* src, const std::int32_t* rows, float* dst, std::int64_t n,
                                int D) {
  scatter_rows<<<static_cast<unsigned>(n), 256, 0, s>>>(src, rows, dst, D);
  HDPISSA_CUDA_CHECK_LAUNCH("scatter_rows");
}

/// Cross-entropy of one logits row (fp32, V entries) against target[i]: row_loss[i] = lse − z_target.
/// With `dlogits`: dlogits = coef·(softmax − onehot) as T (may alias `logits` when T = float).
/// grid (rows), block 512.
template <class T>
__global__ void cross_entropy(float* logits, const std::int32_t* __restrict__ target, float* __restrict__ row_loss,
                              T* dlogits, float coef, int V) {
  __shared__ float sh[32];
  float* z = logits + static_cast<std::int64_t>(blockIdx.x) * V;
  float mx = -INFINITY;
  for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, z[j]);
  mx = block_max(mx, sh);
  float sum = 0.0f;
  for (int j = threadIdx.x; j < V; j += blockDim.x) sum += expf(z[j] - mx);
  sum = block_sum(sum, sh);
  const int tgt = target[blockIdx.x];
  if (threadIdx.x == 0) row_loss[blockIdx.x] = mx + logf(sum) - z[tgt];
  if (dlogits == nullptr) return;
  __syncthreads();  // z[tgt] read before it is overwritten (aliasing case)
  T* dz = dlogits + static_cast<std::int64_t>(blockIdx.x) * V;
  const float c = coef / sum;
  for (int j = threadIdx.x; j < V; j += blockDim.x) {
    const float g = c * expf(z[j] - mx) - (j == tgt ? coef : 0.0f);
    dz[j] = from_f<T>(g);
  }
}

/// cross_entropy of n logits rows, one 512-thread block per row.
template <class T>
void launch_cross_entropy(cudaStream_t s, float* logits, const std::int32_t* target, float* row_loss, T* dlogits,
                          float coef, std::int64_t n, int V) {
  cross_entropy<T><<<static_cast<unsigned>(n), 512, 0, s>>>(logits, target, row_loss, dlogits, coef, V);
  HDPISSA_CUDA_CHECK_LAUNCH("cross_entropy");
}

/// dst = T(src) / dst = float(src).
template <class A, class B>
__global__ void convert(const A* __restrict__ src, B* __restrict__ dst, std::int64_t n) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x)
    dst[i] = from_f<B>(to_f(src[i]));
}
/// convert of n contiguous elements.
template <class A, class B>
void launch_convert(cudaStream_t s, const A* src, B* dst, std::int64_t n) {
  convert<A, B><<<grid_for(n), 256, 0, s>>>(src, dst, n);
  HDPISSA_CUDA_CHECK_LAUNCH("convert");
}

}  // namespace hdpissa::llama::gpu::kern
