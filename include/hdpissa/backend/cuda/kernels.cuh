#pragma once
/// \file kernels.cuh
/// The CUDA kernels of CudaBackend and their host launchers. Every __global__ kernel is a template
/// (so it is safe in a header included by several translation units) and is paired with an inline
/// host launcher that takes an explicit stream, computes the grid and checks the launch.
///
/// Elements are addressed through a row-major (rows, cols, ld) layout; arithmetic runs in
/// cuda_compute_t<T> (float for bf16 storage, else T), reductions in double.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/core/random.hpp"
#include "hdpissa/core/update_args.hpp"
#include "hdpissa/core/view.hpp"

namespace hdpissa {

/// Arithmetic type for storage type T: float for __nv_bfloat16, T otherwise.
template <class T>
struct cuda_compute { using type = T; };
template <>
struct cuda_compute<__nv_bfloat16> { using type = float; };
template <class T>
using cuda_compute_t = typename cuda_compute<T>::type;

namespace cuda_kernels {

constexpr int kThreads = 256;
constexpr int kReduceBlocks = 1024;  ///< fixed partial count: reductions are deterministic

template <class C, class T>
__host__ __device__ inline C load(T v) { return C(v); }
template <>
__host__ __device__ inline float load<float, __nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <>
__host__ __device__ inline double load<double, __nv_bfloat16>(__nv_bfloat16 v) { return double(__bfloat162float(v)); }
template <class T, class C>
__host__ __device__ inline T store(C v) { return T(v); }
template <>
__host__ __device__ inline __nv_bfloat16 store<__nv_bfloat16, float>(float v) { return __float2bfloat16(v); }
template <>
__host__ __device__ inline __nv_bfloat16 store<__nv_bfloat16, double>(double v) { return __float2bfloat16(float(v)); }

/// Row-major layout of a (rows, cols) view with leading dimension ld.
struct Layout {
  index_t rows, cols, ld;
  __host__ __device__ index_t offset(index_t i, index_t j) const { return i * ld + j; }
};
template <class T>
inline Layout layout_of(const MatrixView<T>& v) { return {v.rows, v.cols, v.rows <= 1 ? v.cols : v.ld}; }

/// Grid for n elements with grid-stride loops (capped: the loops cover the rest).
inline unsigned grid_for(index_t n, int threads = kThreads) {
  const index_t b = (n + threads - 1) / threads;
  return unsigned(std::max<index_t>(1, std::min<index_t>(b, index_t(1) << 16)));
}

// ---------------------------------------------------------------- elementwise on one matrix

/// x(i, j) = f(x(i, j), i, j) for every element.
template <class T, class F>
__global__ void map_kernel(T* x, Layout L, F f) {
  const index_t n = L.rows * L.cols;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x) {
    const index_t i = idx / L.cols, j = idx - i * L.cols;
    T& e = x[L.offset(i, j)];
    e = f(e, i, j);
  }
}

template <class T, class F>
inline void launch_map(cudaStream_t s, MatrixView<T> x, F f) {
  if (x.empty()) return;
  map_kernel<<<grid_for(x.size()), kThreads, 0, s>>>(x.data, layout_of(x), f);
  HDPISSA_CUDA_CHECK_LAUNCH("map_kernel");
}

template <class T>
struct FillOp {
  T v;
  __device__ T operator()(T, index_t, index_t) const { return v; }
};
template <class T>
struct ScaleOp {
  cuda_compute_t<T> a;
  __device__ T operator()(T x, index_t, index_t) const {
    return store<T>(a * load<cuda_compute_t<T>>(x));
  }
};
template <class T>
struct SqrtOp {
  __device__ T operator()(T x, index_t, index_t) const {
    using C = cuda_compute_t<T>;
    return store<T>(C(::sqrt(load<C>(x))));
  }
};
/// Y[i,:] *= d[i] (by_row) or Y[:,j] *= d[j]; d has element stride `stride`.
template <class T>
struct ScaleByVectorOp {
  const T* d;
  index_t stride;
  bool by_row;
  __device__ T operator()(T x, index_t i, index_t j) const {
    using C = cuda_compute_t<T>;
    return store<T>(load<C>(x) * load<C>(d[(by_row ? i : j) * stride]));
  }
};
/// x = counter_normal(seed, i·cols + j): the stream fill_gaussian uses on the host.
template <class T>
struct NormalOp {
  std::uint64_t seed;
  index_t cols;
  __device__ T operator()(T, index_t i, index_t j) const {
    return store<T>(counter_normal(seed, std::uint64_t(i * cols + j)));
  }
};

// ---------------------------------------------------------------- two operands

/// y = y + a·x (same shape, each with its own leading dimension).
template <class T>
__global__ void axpy_kernel(cuda_compute_t<T> a, const T* x, Layout Lx, T* y, Layout Ly) {
  using C = cuda_compute_t<T>;
  const index_t n = Ly.rows * Ly.cols;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x) {
    const index_t i = idx / Ly.cols, j = idx - i * Ly.cols;
    T& e = y[Ly.offset(i, j)];
    e = store<T>(load<C>(e) + a * load<C>(x[Lx.offset(i, j)]));
  }
}
template <class T>
inline void launch_axpy(cudaStream_t s, cuda_compute_t<T> a, ConstMatrixView<T> x, MatrixView<T> y) {
  if (y.empty()) return;
  axpy_kernel<T><<<grid_for(y.size()), kThreads, 0, s>>>(a, x.data, layout_of(x), y.data, layout_of(y));
  HDPISSA_CUDA_CHECK_LAUNCH("axpy_kernel");
}

/// dst = convert(src): storage conversion (e.g. fp32 master W → bf16 compute copy).
template <class Src, class Dst>
__global__ void convert_kernel(const Src* x, Layout Lx, Dst* y, Layout Ly) {
  const index_t n = Ly.rows * Ly.cols;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x) {
    const index_t i = idx / Ly.cols, j = idx - i * Ly.cols;
    y[Ly.offset(i, j)] = store<Dst>(load<float>(x[Lx.offset(i, j)]));
  }
}
/// Contiguous fast path: 4 elements per thread iteration where aligned.
template <class Src, class Dst>
__global__ void convert_contiguous_kernel(const Src* x, Dst* y, index_t n) {
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x)
    y[idx] = store<Dst>(load<float>(x[idx]));
}
template <class Src, class Dst>
inline void launch_convert(cudaStream_t s, ConstMatrixView<Src> x, MatrixView<Dst> y) {
  if (y.empty()) return;
  if (x.contiguous() && y.contiguous()) {
    convert_contiguous_kernel<Src, Dst><<<grid_for(y.size()), kThreads, 0, s>>>(x.data, y.data, y.size());
    HDPISSA_CUDA_CHECK_LAUNCH("convert_contiguous_kernel");
    return;
  }
  convert_kernel<Src, Dst><<<grid_for(y.size()), kThreads, 0, s>>>(x.data, layout_of(x), y.data, layout_of(y));
  HDPISSA_CUDA_CHECK_LAUNCH("convert_kernel");
}

// ---------------------------------------------------------------- fused optimizer passes

/// One Adam/AdamW element, exactly as EigenBackend::adam_delta (PyTorch's formula), in compute
/// precision. Shared by the per-tensor and the multi-tensor kernel, so both give the same bits.
/// `p` is read only when lr_wd ≠ 0.
template <class T>
__device__ __forceinline__ void adam_element(cuda_compute_t<T> b1, cuda_compute_t<T> b2, cuda_compute_t<T> eps,
                                             cuda_compute_t<T> step_size, cuda_compute_t<T> inv_sqrt_bc2,
                                             cuda_compute_t<T> lr_wd, const T* p, const T& g, T& m, T& v, T& d) {
  using C = cuda_compute_t<T>;
  const C gi = load<C>(g);
  const C mi = b1 * load<C>(m) + (C(1) - b1) * gi;
  const C vi = b2 * load<C>(v) + (C(1) - b2) * gi * gi;
  m = store<T>(mi);
  v = store<T>(vi);
  // Same operation order as the CPU reference; stored moments are what the next step reads.
  const C ms = load<C>(store<T>(mi)), vs = load<C>(store<T>(vi));
  C dl = step_size * ms / (C(::sqrt(vs)) * inv_sqrt_bc2 + eps);
  if (lr_wd != C(0)) dl += lr_wd * load<C>(*p);
  d = store<T>(dl);
}

/// Adam/AdamW exactly as EigenBackend::adam_delta (PyTorch's formula), in compute precision.
template <class T>
__global__ void adam_kernel(cuda_compute_t<T> b1, cuda_compute_t<T> b2, cuda_compute_t<T> eps,
                            cuda_compute_t<T> step_size, cuda_compute_t<T> inv_sqrt_bc2, cuda_compute_t<T> lr_wd,
                            const T* p, Layout Lp, const T* g, Layout Lg, T* m, Layout Lm, T* v, Layout Lv,
                            T* d, Layout Ld) {
  const index_t n = Lg.rows * Lg.cols;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x) {
    const index_t i = idx / Lg.cols, j = idx - i * Lg.cols;
    adam_element<T>(b1, b2, eps, step_size, inv_sqrt_bc2, lr_wd, p + Lp.offset(i, j), g[Lg.offset(i, j)],
                    m[Lm.offset(i, j)], v[Lv.offset(i, j)], d[Ld.offset(i, j)]);
  }
}
/// The per-step scalars of an Adam pass, computed once on the host (the same way for both kernels).
template <class T>
struct AdamScalars {
  cuda_compute_t<T> b1, b2, eps, step_size, inv_sqrt_bc2, lr_wd;
  explicit AdamScalars(const AdamArgs& a)
      : b1(cuda_compute_t<T>(a.beta1)),
        b2(cuda_compute_t<T>(a.beta2)),
        eps(cuda_compute_t<T>(a.eps)),
        step_size(cuda_compute_t<T>(a.lr / a.bias_correction1)),
        inv_sqrt_bc2(cuda_compute_t<T>(1.0 / std::sqrt(a.bias_correction2))),
        lr_wd(cuda_compute_t<T>(a.lr * a.weight_decay)) {}
};
template <class T>
inline void launch_adam(cudaStream_t s, const AdamArgs& a, ConstMatrixView<T> p, ConstMatrixView<T> g,
                        MatrixView<T> m, MatrixView<T> v, MatrixView<T> d) {
  if (g.empty()) return;
  const AdamScalars<T> c(a);
  adam_kernel<T><<<grid_for(g.size()), kThreads, 0, s>>>(c.b1, c.b2, c.eps, c.step_size, c.inv_sqrt_bc2, c.lr_wd,
                                                          p.data, layout_of(p), g.data, layout_of(g), m.data,
                                                          layout_of(m), v.data, layout_of(v), d.data, layout_of(d));
  HDPISSA_CUDA_CHECK_LAUNCH("adam_kernel");
}

/// One tensor of a multi-tensor Adam pass: every operand (rows, cols) with its own leading dimension
/// (param may be null when there is no weight decay).
struct AdamTensorDesc {
  const void* p;
  const void* g;
  void* m;
  void* v;
  void* d;
  index_t rows, cols, ldp, ldg, ldm, ldv, ldd;
  int flat = 0;  ///< g, m, v, d dense (ld = cols or one row): element idx is at offset idx
};
/// Multi-tensor Adam: blockIdx.y picks the tensor, blockIdx.x strides over its elements; the
/// element math is adam_element, so every tensor gets the bits the per-tensor kernel gives.
template <class T>
__global__ void adam_multi_kernel(cuda_compute_t<T> b1, cuda_compute_t<T> b2, cuda_compute_t<T> eps,
                                  cuda_compute_t<T> step_size, cuda_compute_t<T> inv_sqrt_bc2,
                                  cuda_compute_t<T> lr_wd, const AdamTensorDesc* tensors) {
  const AdamTensorDesc t = tensors[blockIdx.y];
  const T* p = static_cast<const T*>(t.p);
  const T* g = static_cast<const T*>(t.g);
  T* m = static_cast<T*>(t.m);
  T* v = static_cast<T*>(t.v);
  T* d = static_cast<T*>(t.d);
  const index_t n = t.rows * t.cols;
  if (t.flat && (lr_wd == cuda_compute_t<T>(0) || t.rows == 1 || t.ldp == t.cols)) {  // no index division
    for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x)
      adam_element<T>(b1, b2, eps, step_size, inv_sqrt_bc2, lr_wd, p + idx, g[idx], m[idx], v[idx], d[idx]);
    return;
  }
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x) {
    const index_t i = idx / t.cols, j = idx - i * t.cols;
    adam_element<T>(b1, b2, eps, step_size, inv_sqrt_bc2, lr_wd, p + (i * t.ldp + j), g[i * t.ldg + j],
                    m[i * t.ldm + j], v[i * t.ldv + j], d[i * t.ldd + j]);
  }
}
/// `tensors` is a device array of `count` descriptors; max_elems sizes the x-grid.
template <class T>
inline void launch_adam_multi(cudaStream_t s, const AdamArgs& a, const AdamTensorDesc* tensors, int count,
                              index_t max_elems) {
  if (count == 0 || max_elems == 0) return;
  constexpr int kMaxY = 65535;
  const AdamScalars<T> c(a);
  // ~8 elements per thread on the largest tensor: enough blocks to fill the GPU, few idle ones.
  const unsigned bx = std::max(1u, std::min(grid_for(max_elems), grid_for((max_elems + 7) / 8)));
  for (int first = 0; first < count; first += kMaxY) {
    const unsigned by = unsigned(std::min(kMaxY, count - first));
    adam_multi_kernel<T><<<dim3(bx, by), kThreads, 0, s>>>(c.b1, c.b2, c.eps, c.step_size, c.inv_sqrt_bc2, c.lr_wd,
                                                            tensors + first);
    HDPISSA_CUDA_CHECK_LAUNCH("adam_multi_kernel");
  }
}

// ---------------------------------------------------------------- Direct Weight Update packing

/// Builds one layer's GEMM operands of the Direct Weight Update from the all-gathered deltas in one
/// pass (what 1 copy + K axpy + 2K copies do in the generic step):
///   R (2Kr, in):  rows [j·r, (j+1)·r) = A_j − dA_j,  rows [(K+j)·r, …) = dA_j
///   Ldb (out, Kr): columns [j·r, (j+1)·r) = dB_j
/// where group j's deltas start at recv + j·chunk: dA_j (r, in) contiguous, then dB_j (out, r).
/// A_j − dA_j is computed as A + (−1)·dA, bit for bit what the generic axpy gives.
template <class T>
__global__ void dwu_unpack_kernel(const T* A, index_t lda, const T* recv, index_t chunk, index_t K, index_t r,
                                  index_t in, index_t out, T* R, index_t ldr, T* Ldb, index_t ldl) {
  using C = cuda_compute_t<T>;
  const index_t kr = K * r, na = kr * in, total = na + out * kr;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += index_t(gridDim.x) * blockDim.x) {
    if (idx < na) {
      const index_t row = idx / in, c = idx - row * in;  // row of the A stack: group j = row / r
      const index_t j = row / r, i = row - j * r;
      const T x = recv[j * chunk + i * in + c];
      R[row * ldr + c] = store<T>(load<C>(A[row * lda + c]) + C(-1) * load<C>(x));
      R[(kr + row) * ldr + c] = x;
    } else {
      const index_t e = idx - na, o = e / kr, col = e - o * kr;
      const index_t j = col / r, c = col - j * r;
      Ldb[o * ldl + col] = recv[j * chunk + r * in + o * r + c];
    }
  }
}
/// The same packing without 64-bit divisions per element: blockIdx.y < K·r is a row of the A stack
/// (x strides over its columns), the remaining y-blocks cover Ldb with 32-bit index arithmetic.
/// Same element formulas, so the same bits as dwu_unpack_kernel.
template <class T>
__global__ void dwu_unpack_rows_kernel(const T* A, index_t lda, const T* recv, index_t chunk, unsigned kr, unsigned r,
                                       unsigned in, unsigned out, T* R, index_t ldr, T* Ldb, index_t ldl) {
  using C = cuda_compute_t<T>;
  if (blockIdx.y < kr) {
    const unsigned row = blockIdx.y, j = row / r, i = row - j * r;
    const T* a = A + index_t(row) * lda;
    const T* x = recv + index_t(j) * chunk + index_t(i) * in;
    T* top = R + index_t(row) * ldr;
    T* bot = R + index_t(kr + row) * ldr;
    for (unsigned c = blockIdx.x * blockDim.x + threadIdx.x; c < in; c += gridDim.x * blockDim.x) {
      const T xv = x[c];
      top[c] = store<T>(load<C>(a[c]) + C(-1) * load<C>(xv));
      bot[c] = xv;
    }
  } else {
    const unsigned total = out * kr;
    for (unsigned e = ((blockIdx.y - kr) * gridDim.x + blockIdx.x) * blockDim.x + threadIdx.x; e < total;
         e += (gridDim.y - kr) * gridDim.x * blockDim.x) {
      const unsigned o = e / kr, col = e - o * kr, j = col / r, c = col - j * r;
      Ldb[index_t(o) * ldl + col] = recv[index_t(j) * chunk + index_t(r) * in + index_t(o) * r + c];
    }
  }
}
template <class T>
inline void launch_dwu_unpack(cudaStream_t s, ConstMatrixView<T> A, const T* recv, index_t chunk, index_t K,
                              index_t r, MatrixView<T> R, MatrixView<T> Ldb) {
  const index_t in = A.cols, out = Ldb.rows, total = K * r * (in + out);
  if (total == 0) return;
  const index_t kr = K * r;
  const index_t gx = std::max<index_t>(1, (in + kThreads - 1) / kThreads);
  const index_t ldb_blocks = (out * kr + kThreads - 1) / kThreads, gy_ldb = (ldb_blocks + gx - 1) / gx;
  if (kr + gy_ldb <= 65535 && out * kr < (index_t(1) << 31) && in < (index_t(1) << 31) && gx <= 65535) {
    dwu_unpack_rows_kernel<T><<<dim3(unsigned(gx), unsigned(kr + gy_ldb)), kThreads, 0, s>>>(
        A.data, layout_of(A).ld, recv, chunk, unsigned(kr), unsigned(r), unsigned(in), unsigned(out), R.data,
        layout_of(R).ld, Ldb.data, layout_of(Ldb).ld);
    HDPISSA_CUDA_CHECK_LAUNCH("dwu_unpack_rows_kernel");
    return;
  }
  dwu_unpack_kernel<T><<<grid_for(total), kThreads, 0, s>>>(A.data, layout_of(A).ld, recv, chunk, K, r, in, out,
                                                             R.data, layout_of(R).ld, Ldb.data, layout_of(Ldb).ld);
  HDPISSA_CUDA_CHECK_LAUNCH("dwu_unpack_kernel");
}

/// SGD exactly as EigenBackend::sgd_delta.
template <class T>
__global__ void sgd_kernel(cuda_compute_t<T> lr, cuda_compute_t<T> mu, cuda_compute_t<T> wd, const T* p, Layout Lp,
                           const T* g, Layout Lg, T* buf, Layout Lb, T* d, Layout Ld) {
  using C = cuda_compute_t<T>;
  const index_t n = Lg.rows * Lg.cols;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x) {
    const index_t i = idx / Lg.cols, j = idx - i * Lg.cols;
    C gi = load<C>(g[Lg.offset(i, j)]);
    if (wd != C(0)) gi += wd * load<C>(p[Lp.offset(i, j)]);
    if (mu != C(0)) {
      const C bi = mu * load<C>(buf[Lb.offset(i, j)]) + gi;
      buf[Lb.offset(i, j)] = store<T>(bi);
      gi = load<C>(store<T>(bi));
    }
    d[Ld.offset(i, j)] = store<T>(lr * gi);
  }
}
template <class T>
inline void launch_sgd(cudaStream_t s, const SgdArgs& a, ConstMatrixView<T> p, ConstMatrixView<T> g,
                       MatrixView<T> buf, MatrixView<T> d) {
  using C = cuda_compute_t<T>;
  if (g.empty()) return;
  const Layout Lb = buf.data ? layout_of(buf) : layout_of(g);
  sgd_kernel<T><<<grid_for(g.size()), kThreads, 0, s>>>(C(a.lr), C(a.momentum), C(a.weight_decay), p.data,
                                                         layout_of(p), g.data, layout_of(g), buf.data, Lb, d.data,
                                                         layout_of(d));
  HDPISSA_CUDA_CHECK_LAUNCH("sgd_kernel");
}

// ---------------------------------------------------------------- reductions (deterministic)

enum class ReduceKind { SumSquares, Checksum };

/// Block-level partial sums in double over a fixed grid of kReduceBlocks blocks.
template <class T, ReduceKind K>
__global__ void reduce_partial_kernel(const T* x, Layout L, double* partial) {
  __shared__ double sh[kThreads];
  const index_t n = L.rows * L.cols;
  double s = 0;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x) {
    const index_t i = idx / L.cols, j = idx - i * L.cols;
    const double v = load<double>(x[L.offset(i, j)]);
    if constexpr (K == ReduceKind::SumSquares)
      s += v * v;
    else
      s += v * (1.0 + double(idx % 1021) / 1021.0);
  }
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = sh[0];
}
/// One block sums the partials in a fixed order into out[0].
__global__ inline void reduce_final_kernel(const double* partial, int n, double* out) {
  __shared__ double sh[kThreads];
  double s = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += partial[i];
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (int(threadIdx.x) < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = sh[0];
}
/// Writes the reduction of x into out[0]; `partial` holds kReduceBlocks doubles.
template <ReduceKind K, class T>
inline void launch_reduce(cudaStream_t s, ConstMatrixView<T> x, double* partial, double* out) {
  if (x.empty()) {
    HDPISSA_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(double), s));
    return;
  }
  reduce_partial_kernel<T, K><<<kReduceBlocks, kThreads, 0, s>>>(x.data, layout_of(x), partial);
  HDPISSA_CUDA_CHECK_LAUNCH("reduce_partial_kernel");
  reduce_final_kernel<<<1, kThreads, 0, s>>>(partial, kReduceBlocks, out);
  HDPISSA_CUDA_CHECK_LAUNCH("reduce_final_kernel");
}

/// flag[0] = 1 if any element is NaN or ±Inf (flag must be zeroed first).
template <class T>
__global__ void non_finite_kernel(const T* x, Layout L, int* flag) {
  const index_t n = L.rows * L.cols;
  bool bad = false;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x) {
    const index_t i = idx / L.cols, j = idx - i * L.cols;
    bad |= !::isfinite(load<double>(x[L.offset(i, j)]));
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1;
}
template <class T>
inline void launch_non_finite(cudaStream_t s, ConstMatrixView<T> x, int* flag) {
  HDPISSA_CUDA_CHECK(cudaMemsetAsync(flag, 0, sizeof(int), s));
  if (x.empty()) return;
  non_finite_kernel<T><<<std::min(grid_for(x.size()), 2048u), kThreads, 0, s>>>(x.data, layout_of(x), flag);
  HDPISSA_CUDA_CHECK_LAUNCH("non_finite_kernel");
}

/// One matrix of a batched check: pointer, rows, cols, leading dimension.
struct ViewDesc {
  const void* data;
  index_t rows, cols, ld;
};
/// flag[0] = 1 if any element of any of the described matrices is non-finite; blockIdx.y picks
/// the matrix, blockIdx.x strides over its elements.
template <class T>
__global__ void non_finite_batch_kernel(const ViewDesc* views, int* flag) {
  const ViewDesc v = views[blockIdx.y];
  const T* x = static_cast<const T*>(v.data);
  const index_t n = v.rows * v.cols;
  bool bad = false;
  if (v.ld == v.cols || v.rows == 1) {  // dense: no index division
    for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x)
      bad |= !::isfinite(load<double>(x[idx]));
    if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1;
    return;
  }
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x) {
    const index_t i = idx / v.cols, j = idx - i * v.cols;
    bad |= !::isfinite(load<double>(x[i * v.ld + j]));
  }
  if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1;
}
/// `views` is a device array of `count` descriptors; the flag must be zeroed first.
template <class T>
inline void launch_non_finite_batch(cudaStream_t s, const ViewDesc* views, int count, index_t max_elems, int* flag) {
  constexpr int kMaxY = 65535;
  const unsigned bx = std::min(grid_for(max_elems), 16u);
  for (int first = 0; first < count; first += kMaxY) {
    const unsigned by = unsigned(std::min(kMaxY, count - first));
    non_finite_batch_kernel<T><<<dim3(bx, by), kThreads, 0, s>>>(views + first, flag);
    HDPISSA_CUDA_CHECK_LAUNCH("non_finite_batch_kernel");
  }
}

// ---------------------------------------------------------------- Gram-matrix SVD helpers

/// From syevd's ascending eigenpairs (Q col-major l×l, lambda) to descending singular triplets:
/// ud (col-major l×l, double) = Q with columns reversed; s[j] = √max(λ, 0); U row-major (ldu) in T.
template <class T>
__global__ void gram_sort_kernel(const double* q, const double* lambda, index_t l, double* ud, T* u, index_t ldu,
                                 T* s) {
  const index_t total = l * l;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += index_t(gridDim.x) * blockDim.x) {
    const index_t j = idx / l, i = idx - j * l;  // column j (descending), row i
    const double v = q[i + (l - 1 - j) * l];
    ud[i + j * l] = v;
    u[i * ldu + j] = store<T>(v);
    if (i == 0) s[j] = store<T>(::sqrt(::fmax(lambda[l - 1 - j], 0.0)));
  }
}
/// Vt (row-major l×n, ldv) = diag(1/σ) · vtd (row-major l×n, double); rows with σ ≤ tiny are zeroed.
template <class T>
__global__ void gram_vt_kernel(const double* vtd, const double* lambda, index_t l, index_t n, T* vt, index_t ldv) {
  const index_t total = l * n;
  const double top = ::sqrt(::fmax(lambda[l - 1], 0.0));
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += index_t(gridDim.x) * blockDim.x) {
    const index_t j = idx / n, c = idx - j * n;
    const double sj = ::sqrt(::fmax(lambda[l - 1 - j], 0.0));
    vt[j * ldv + c] = store<T>(sj > 1e-12 * top ? vtd[idx] / sj : 0.0);
  }
}

// ---------------------------------------------------------------- solver helpers (column-major)

/// R (n×n, ldr) = upper triangle of the column-major X (ldx), zeros below the diagonal.
template <class T>
__global__ void extract_upper_kernel(const T* x, index_t ldx, T* r, index_t ldr, index_t n) {
  const index_t total = n * n;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += index_t(gridDim.x) * blockDim.x) {
    const index_t col = idx / n, row = idx - col * n;
    r[row + col * ldr] = row <= col ? x[row + col * ldx] : T(0);
  }
}
template <class T>
inline void launch_extract_upper(cudaStream_t s, const T* x, index_t ldx, T* r, index_t ldr, index_t n) {
  if (n == 0) return;
  extract_upper_kernel<T><<<grid_for(n * n), kThreads, 0, s>>>(x, ldx, r, ldr, n);
  HDPISSA_CUDA_CHECK_LAUNCH("extract_upper_kernel");
}

}  // namespace cuda_kernels
}  // namespace hdpissa
