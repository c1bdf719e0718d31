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
#include <cstdio>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/core/random.hpp"
#include "hdpissa/core/element.hpp"
#include "hdpissa/core/view.hpp"

namespace hdpissa {

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

}  // namespace cuda_kernels

/// bf16 storage computes in fp32 (the conversions of cuda_kernels::load / store), for functors
/// written against element_traits (TensorBackend's elementwise map).
template <>
struct element_traits<__nv_bfloat16> {
  using compute_type = float;
  template <class C>
  __host__ __device__ static C load(__nv_bfloat16 v) { return cuda_kernels::load<C>(v); }
  template <class C>
  __host__ __device__ static __nv_bfloat16 store(C v) { return cuda_kernels::store<__nv_bfloat16>(v); }
};

/// Arithmetic type for storage type T: float for __nv_bfloat16, T otherwise.
template <class T>
using cuda_compute_t = element_compute_t<T>;

namespace cuda_kernels {

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

// ---------------------------------------------------------------- elementwise over several matrices

/// One operand of elementwise_kernel: element (i, j) at p[i·ld + j] (T may be const).
template <class T>
struct ElementRef {
  T* p;
  index_t ld;
  __device__ T& operator()(index_t i, index_t j) const { return p[i * ld + j]; }
};
/// f(x0(i, j), x1(i, j), …) for every element of a rows × cols index space.
template <class F, class... Ts>
__global__ void elementwise_kernel(index_t rows, index_t cols, F f, ElementRef<Ts>... xs) {
  const index_t n = rows * cols;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x) {
    const index_t i = idx / cols, j = idx - i * cols;
    f(xs(i, j)...);
  }
}
/// CudaBackend::elementwise's launcher: every view has x0's shape (checked by the caller).
template <class F, class T0, class... Ts>
inline void launch_elementwise(cudaStream_t s, const F& f, MatrixView<T0> x0, MatrixView<Ts>... xs) {
  if (x0.empty()) return;
  elementwise_kernel<F, T0, Ts...><<<grid_for(x0.size()), kThreads, 0, s>>>(
      x0.rows, x0.cols, f, ElementRef<T0>{x0.data, layout_of(x0).ld}, ElementRef<Ts>{xs.data, layout_of(xs).ld}...);
  HDPISSA_CUDA_CHECK_LAUNCH("elementwise_kernel");
}

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

/// Keeps one thread busy for at least `cycles` SM clock cycles (tests: work queued behind it on
/// the same stream waits that long, so a missing cross-stream wait shows as a race).
template <int = 0>
__global__ void spin_cycles_kernel(long long cycles) {
  const long long t0 = clock64();
  long long n = 0;
  while (clock64() - t0 < cycles) ++n;
  if (n == -1) printf("%lld", n);  // keeps the loop
}
inline void launch_spin_cycles(cudaStream_t s, long long cycles) {
  spin_cycles_kernel<<<1, 1, 0, s>>>(cycles);
  HDPISSA_CUDA_CHECK_LAUNCH("spin_cycles_kernel");
}


}  // namespace cuda_kernels
}  // namespace hdpissa
