#pragma once
/// \file fp8_quantize.hpp
/// Per-tensor FP8 quantisation on the GPU ("current" scaling: the scale of a tensor comes from its
/// own amax, computed just before the cast), for the FP8 GEMMs of fp8_gemm.hpp:
///  - launch_fp8_amax: amax = max |x| over a bf16 / fp32 matrix (grid reduction, one atomicMax on
///    the float bits per block; |x| ≥ 0, so the unsigned order of the bits is the float order, and
///    a NaN (bits above +inf) wins, which makes every later product NaN: a non-finite tensor is
///    never hidden);
///  - launch_fp8_quantize: q = fp8_satfinite(x · s) with s = fp8_quant_scale(amax) = F_max / amax
///    (1 when amax = 0), read on the device: no host synchronisation anywhere. It also writes the
///    dequantisation scale 1 / s, the value cuBLASLt's A/B_SCALE_POINTER expects (x ≈ q · (1 / s));
///  - launch_fp8_quantize_transpose: the same into q (rows, cols) AND its transpose qᵀ (cols, rows)
///    in one pass (64×64 tiles through shared memory, 16-byte loads and 8-byte stores when every
///    dimension is a multiple of 8; else 32×32 tiles, one element per thread), for a weight that
///    feeds both the forward
///    Y = X Wᵀ and the backward dX = dY W as the K-contiguous ("TN") operand cuBLASLt's FP8 needs.
/// The cast is one fp32 multiply and one round-to-nearest-even conversion with saturation to the
/// largest finite value (__nv_fp8_e4m3 / __nv_fp8_e5m2's constructor), so a host reference using
/// the same conversion (cuda_fp8.h is host-callable) reproduces it bit for bit.
///
/// Every launcher takes an explicit stream and checks the launch; nothing allocates.

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <library_types.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/core/error.hpp"
#include "hdpissa/core/view.hpp"

namespace hdpissa {

/// The two FP8 formats of Hopper's tensor cores.
enum class Fp8Format {
  E4M3,  ///< 4 exponent, 3 mantissa bits, largest finite 448: weights and activations
  E5M2,  ///< 5 exponent, 2 mantissa bits, largest finite 57344: gradients (wider range)
};

/// Traits of an FP8 format (primary template: a missing format fails with a message).
template <Fp8Format F>
struct Fp8Traits {
  static_assert(F == Fp8Format::E4M3 || F == Fp8Format::E5M2, "Fp8Traits: unknown FP8 format");
};
template <>
struct Fp8Traits<Fp8Format::E4M3> {
  using type = __nv_fp8_e4m3;
  static constexpr float max_finite = 448.0f;
  static constexpr cudaDataType_t cuda_type = CUDA_R_8F_E4M3;
  static constexpr const char* name = "E4M3";
};
template <>
struct Fp8Traits<Fp8Format::E5M2> {
  using type = __nv_fp8_e5m2;
  static constexpr float max_finite = 57344.0f;
  static constexpr cudaDataType_t cuda_type = CUDA_R_8F_E5M2;
  static constexpr const char* name = "E5M2";
};
inline const char* fp8_format_name(Fp8Format f) { return f == Fp8Format::E4M3 ? "E4M3" : "E5M2"; }
inline cudaDataType_t fp8_cuda_type(Fp8Format f) { return f == Fp8Format::E4M3 ? CUDA_R_8F_E4M3 : CUDA_R_8F_E5M2; }

/// The quantisation scale of a tensor whose amax is `amax`: F_max / amax, so that the largest
/// element maps to the format's largest finite value; 1 for an all-zero tensor. (A NaN amax gives
/// 1, an infinite one 0: the NaN / Inf elements themselves then make the product non-finite.)
__host__ __device__ inline float fp8_quant_scale(float amax, float max_finite) {
  return amax > 0.0f ? max_finite / amax : 1.0f;
}

namespace cuda_kernels {

template <class T>
__device__ inline float fp8_to_float_in(T v) {
  if constexpr (std::is_same_v<T, float>) return v;
  else return __bfloat162float(v);
}

/// Eight consecutive elements of a flat (contiguous) matrix, as floats: one 16-byte load for bf16.
template <class T>
__device__ inline void fp8_load8(const T* __restrict__ p, float (&v)[8]) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    const uint4 u = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&u);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = __bfloat1622float2(h[k]);
      v[2 * k] = f.x;
      v[2 * k + 1] = f.y;
    }
  } else {
    const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  }
}

/// m ← max(m, |v|), keeping a NaN: the amax rule (also the model's kernels that keep the amax of
/// what they write, examples/llama/include/llama/cuda/kernels_llama.cuh).
__device__ __forceinline__ float fp8_amax_acc(float m, float v) {
  const float a = fabsf(v);
  return (a > m || a != a) ? a : m;
}
/// *amax_bits ← max(*amax_bits, max of `b` over the block): b holds the bits of a value ≥ 0 or of a
/// positive NaN, so the unsigned order is the float order with NaN above +inf. Every thread of the
/// block calls it; `sh` is 32 unsigned of shared memory (a barrier comes first, so it may be
/// reused); one atomicMax per block, none when the block's max is 0.
__device__ __forceinline__ void fp8_block_amax_into(unsigned int b, unsigned int* amax_bits, unsigned int* sh) {
  for (int o = 16; o > 0; o >>= 1) b = max(b, __shfl_xor_sync(0xffffffffu, b, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
  __syncthreads();
  if (lane == 0) sh[warp] = b;
  __syncthreads();
  if (warp == 0) {
    b = lane < nw ? sh[lane] : 0u;
    for (int o = 16; o > 0; o >>= 1) b = max(b, __shfl_xor_sync(0xffffffffu, b, o));
    if (lane == 0 && b != 0u) atomicMax(amax_bits, b);
  }
}

/// amax_bits ← max(amax_bits, bits of max |x|) over the (rows, cols, ld) matrix x. Grid-stride;
/// one atomicMax per block. `vec8`: x is contiguous, rows·cols % 8 == 0 and x 16-byte aligned
/// (eight elements per load).
template <class T>
__global__ void fp8_amax_kernel(const T* __restrict__ x, std::int64_t rows, std::int64_t cols, std::int64_t ld,
                                bool vec8, unsigned int* __restrict__ amax_bits) {
  const std::int64_t n = rows * cols;
  const std::int64_t tid = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x, stride = std::int64_t(gridDim.x) * blockDim.x;
  float m = 0.0f;
  if (vec8) {
    for (std::int64_t i = tid; i < n / 8; i += stride) {
      float v[8];
      fp8_load8(x + 8 * i, v);
#pragma unroll
      for (int k = 0; k < 8; ++k) m = fp8_amax_acc(m, v[k]);
    }
  } else {
    for (std::int64_t i = tid; i < n; i += stride) {
      const std::int64_t r = i / cols, c = i - r * cols;
      m = fp8_amax_acc(m, fp8_to_float_in(x[r * ld + c]));
    }
  }
  __shared__ unsigned int warp_max[32];
  fp8_block_amax_into(__float_as_uint(m), amax_bits, warp_max);
}

/// q (rows, cols, ldq) ← fp8(x · s), s = fp8_quant_scale(*amax); block 0 writes *dequant = 1 / s.
/// `vec8`: x and q contiguous, rows·cols % 8 == 0, x 16-byte and q 8-byte aligned.
template <class T, Fp8Format F>
__global__ void fp8_quantize_kernel(const T* __restrict__ x, std::int64_t rows, std::int64_t cols, std::int64_t ld,
                                    bool vec8, const float* __restrict__ amax,
                                    typename Fp8Traits<F>::type* __restrict__ q, std::int64_t ldq,
                                    float* __restrict__ dequant) {
  using Q = typename Fp8Traits<F>::type;
  const float s = fp8_quant_scale(*amax, Fp8Traits<F>::max_finite);
  if (blockIdx.x == 0 && threadIdx.x == 0) *dequant = 1.0f / s;
  const std::int64_t n = rows * cols;
  const std::int64_t tid = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x, stride = std::int64_t(gridDim.x) * blockDim.x;
  if (vec8) {
    for (std::int64_t i = tid; i < n / 8; i += stride) {
      float v[8];
      fp8_load8(x + 8 * i, v);
      unsigned int w[2] = {0u, 0u};
#pragma unroll
      for (int k = 0; k < 8; ++k) w[k >> 2] |= unsigned(Q(__fmul_rn(v[k], s)).__x) << (8 * (k & 3));
      *reinterpret_cast<uint2*>(q + 8 * i) = make_uint2(w[0], w[1]);
    }
  } else {
    for (std::int64_t i = tid; i < n; i += stride) {
      const std::int64_t r = i / cols, c = i - r * cols;
      q[r * ldq + c] = Q(__fmul_rn(fp8_to_float_in(x[r * ld + c]), s));
    }
  }
}

/// q (rows, cols) and qt (cols, rows), both contiguous, ← fp8(x · s); 32×32 tiles, 32×8 threads.
template <class T, Fp8Format F>
__global__ void fp8_quantize_transpose_kernel(const T* __restrict__ x, std::int64_t rows, std::int64_t cols,
                                              std::int64_t ld, const float* __restrict__ amax,
                                              typename Fp8Traits<F>::type* __restrict__ q,
                                              typename Fp8Traits<F>::type* __restrict__ qt, float* __restrict__ dequant) {
  using Q = typename Fp8Traits<F>::type;
  __shared__ Q tile[32][33];
  const float s = fp8_quant_scale(*amax, Fp8Traits<F>::max_finite);
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0 && threadIdx.y == 0) *dequant = 1.0f / s;
  const std::int64_t r0 = std::int64_t(blockIdx.y) * 32, c0 = std::int64_t(blockIdx.x) * 32;
  for (int dy = threadIdx.y; dy < 32; dy += 8) {
    const std::int64_t r = r0 + dy, c = c0 + threadIdx.x;
    if (r < rows && c < cols) {
      const Q v(__fmul_rn(fp8_to_float_in(x[r * ld + c]), s));
      q[r * cols + c] = v;
      tile[dy][threadIdx.x] = v;
    }
  }
  __syncthreads();
  for (int dx = threadIdx.y; dx < 32; dx += 8) {
    const std::int64_t c = c0 + dx, r = r0 + threadIdx.x;  // qt row c, column r
    if (r < rows && c < cols) qt[c * rows + r] = tile[threadIdx.x][dx];
  }
}


/// The vectorised quantise-transpose (rows, cols and ld multiples of 8, x 16-byte aligned, q and qt
/// 8-byte aligned): 64×64 tiles, 256 threads. Each thread loads eight consecutive elements of a
/// row (one 16-byte load for bf16), writes their eight FP8 bytes to q with one 8-byte store and to
/// a shared tile; then eight consecutive rows of one tile column go to qt with one 8-byte store, so
/// that eight threads write one column's 64 bytes. Same bytes as fp8_quantize_transpose_kernel.
template <class T, Fp8Format F>
__global__ void __launch_bounds__(256)
    fp8_quantize_transpose_vec8_kernel(const T* __restrict__ x, std::int64_t rows, std::int64_t cols, std::int64_t ld,
                                       const float* __restrict__ amax, typename Fp8Traits<F>::type* __restrict__ q,
                                       typename Fp8Traits<F>::type* __restrict__ qt, float* __restrict__ dequant) {
  using Q = typename Fp8Traits<F>::type;
  constexpr int kTile = 64, kStride = kTile + 4;  // 68-byte rows: 4-byte aligned, fewer bank conflicts
  __shared__ unsigned char tile[kTile * kStride];
  const float s = fp8_quant_scale(*amax, Fp8Traits<F>::max_finite);
  if (blockIdx.x == 0 && blockIdx.y == 0 && threadIdx.x == 0) *dequant = 1.0f / s;
  const std::int64_t r0 = std::int64_t(blockIdx.y) * kTile, c0 = std::int64_t(blockIdx.x) * kTile;
  const int t = threadIdx.x;
  {
    const int cs = (t & 7) * 8;  // this thread's eight columns of the tile
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      const int rr = (t >> 3) + 32 * p;
      const std::int64_t r = r0 + rr, c = c0 + cs;
      if (r < rows && c < cols) {
        float v[8];
        fp8_load8(x + r * ld + c, v);
        unsigned int w[2] = {0u, 0u};
#pragma unroll
        for (int k = 0; k < 8; ++k) w[k >> 2] |= unsigned(Q(__fmul_rn(v[k], s)).__x) << (8 * (k & 3));
        *reinterpret_cast<uint2*>(q + r * cols + c) = make_uint2(w[0], w[1]);
        *reinterpret_cast<unsigned int*>(tile + rr * kStride + cs) = w[0];
        *reinterpret_cast<unsigned int*>(tile + rr * kStride + cs + 4) = w[1];
      }
    }
  }
  __syncthreads();
  {
    const int rs = (t & 7) * 8;  // this thread's eight rows of the tile (qt's columns)
#pragma unroll
    for (int p = 0; p < 2; ++p) {
      const int cc = (t >> 3) + 32 * p;
      const std::int64_t c = c0 + cc, r = r0 + rs;  // qt row c, columns r .. r + 7
      if (r < rows && c < cols) {
        unsigned int w[2] = {0u, 0u};
#pragma unroll
        for (int k = 0; k < 8; ++k) w[k >> 2] |= unsigned(tile[(rs + k) * kStride + cc]) << (8 * (k & 3));
        *reinterpret_cast<uint2*>(qt + c * rows + r) = make_uint2(w[0], w[1]);
      }
    }
  }
}

}  // namespace cuda_kernels

namespace fp8_detail {
inline int grid_for(std::int64_t n, int threads) {
  return int(std::max<std::int64_t>(1, std::min<std::int64_t>((n + threads - 1) / threads, 2048)));
}
inline bool aligned(const void* p, std::uintptr_t bytes) { return reinterpret_cast<std::uintptr_t>(p) % bytes == 0; }
}  // namespace fp8_detail

/// *amax ← max(*amax, max |x|) (fp32 bits on the device, as fp8_amax_kernel): no reset, so several
/// calls (or an update that already maxed into it, Bf16WStorage::amax) accumulate.
template <class T>
void launch_fp8_amax_into(cudaStream_t s, ConstMatrixView<T> x, float* amax) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>, "fp8_amax: float or bf16 input");
  HDPISSA_REQUIRE(amax != nullptr, "fp8_amax: null amax");
  const std::int64_t n = std::int64_t(x.rows) * x.cols;
  if (n == 0) return;
  const int threads = 256;
  const bool vec8 = x.ld == x.cols && n % 8 == 0 && fp8_detail::aligned(x.data, 16);
  cuda_kernels::fp8_amax_kernel<T><<<fp8_detail::grid_for(vec8 ? n / 8 : n, threads), threads, 0, s>>>(
      x.data, x.rows, x.cols, x.ld, vec8, reinterpret_cast<unsigned int*>(amax));
  HDPISSA_CUDA_CHECK_LAUNCH("fp8_amax_kernel");
}
/// *amax ← max |x| (fp32, on the device). Resets *amax first (stream-ordered memset).
template <class T>
void launch_fp8_amax(cudaStream_t s, ConstMatrixView<T> x, float* amax) {
  HDPISSA_REQUIRE(amax != nullptr, "fp8_amax: null amax");
  HDPISSA_CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(float), s));
  launch_fp8_amax_into(s, x, amax);
}

/// q (x.rows, x.cols, ldq; FP8 of format F) ← fp8(x · s), s = fp8_quant_scale(*amax);
/// *dequant ← 1 / s. `amax` from launch_fp8_amax on the same stream.
template <Fp8Format F, class T>
void launch_fp8_quantize(cudaStream_t s, ConstMatrixView<T> x, const float* amax, void* q, index_t ldq, float* dequant) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>, "fp8_quantize: float or bf16 input");
  HDPISSA_REQUIRE(ldq >= x.cols, "fp8_quantize: expected ldq >= ", x.cols, ", found ", ldq);
  const std::int64_t n = std::int64_t(x.rows) * x.cols;
  const int threads = 256;
  const bool vec8 = x.ld == x.cols && ldq == x.cols && n % 8 == 0 && fp8_detail::aligned(x.data, 16) &&
                    fp8_detail::aligned(q, 8);
  cuda_kernels::fp8_quantize_kernel<T, F><<<fp8_detail::grid_for(vec8 ? n / 8 : n, threads), threads, 0, s>>>(
      x.data, x.rows, x.cols, x.ld, vec8, amax, static_cast<typename Fp8Traits<F>::type*>(q), ldq, dequant);
  HDPISSA_CUDA_CHECK_LAUNCH("fp8_quantize_kernel");
}

/// q (w.rows, w.cols) and qt (w.cols, w.rows), contiguous FP8 of format F, ← fp8(w · s);
/// *dequant ← 1 / s. `amax` from launch_fp8_amax on the same stream.
template <Fp8Format F, class T>
void launch_fp8_quantize_transpose(cudaStream_t s, ConstMatrixView<T> w, const float* amax, void* q, void* qt,
                                   float* dequant) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>, "fp8_quantize: float or bf16 input");
  using Q = typename Fp8Traits<F>::type;
  if (w.rows % 8 == 0 && w.cols % 8 == 0 && w.ld % 8 == 0 && fp8_detail::aligned(w.data, 16) &&
      fp8_detail::aligned(q, 8) && fp8_detail::aligned(qt, 8)) {  // the vectorised kernel
    const dim3 grid(unsigned(std::max<index_t>(1, (w.cols + 63) / 64)), unsigned(std::max<index_t>(1, (w.rows + 63) / 64)));
    HDPISSA_REQUIRE(grid.y <= 65535u, "fp8_quantize_transpose: ", w.rows, " rows exceed the grid (65535 tiles of 64)");
    cuda_kernels::fp8_quantize_transpose_vec8_kernel<T, F><<<grid, 256, 0, s>>>(
        w.data, w.rows, w.cols, w.ld, amax, static_cast<Q*>(q), static_cast<Q*>(qt), dequant);
    HDPISSA_CUDA_CHECK_LAUNCH("fp8_quantize_transpose_vec8_kernel");
    return;
  }
  const dim3 block(32, 8);
  const dim3 grid(unsigned(std::max<index_t>(1, (w.cols + 31) / 32)), unsigned(std::max<index_t>(1, (w.rows + 31) / 32)));
  HDPISSA_REQUIRE(grid.y <= 65535u, "fp8_quantize_transpose: ", w.rows, " rows exceed the grid (65535 tiles of 32)");
  cuda_kernels::fp8_quantize_transpose_kernel<T, F><<<grid, block, 0, s>>>(
      w.data, w.rows, w.cols, w.ld, amax, static_cast<typename Fp8Traits<F>::type*>(q),
      static_cast<typename Fp8Traits<F>::type*>(qt), dequant);
  HDPISSA_CUDA_CHECK_LAUNCH("fp8_quantize_transpose_kernel");
}

}  // namespace hdpissa
