#pragma once
/// \file dwu_kernels.hpp
/// DwuKernels<CudaBackend<S>>: the Direct Weight Update's fused CUDA kernels, as a specialisation
/// of the DwuKernels trait (core/dwu_kernels.hpp) that satisfies FusedDwuKernels:
///  - one multi-tensor Adam launch per step over a descriptor table uploaded once (make_adam_batch,
///    adam_step), element math = AdamElement, so the bits equal the per-tensor adam_delta's;
///  - one packing kernel per layer for R = [A − dA; dA] and L's dB half (unpack_fused), bit for
///    bit the generic copy + K·(axpy + 2 copies);
///  - the whole per-layer update on the sm_90a 3xTF32 kernel (apply_fused, dwu_gemm_sm90.cuh);
///  - one batched non-finite check over every gradient (all_finite_batch).
/// The packed delta layout these kernels read is DwuPackedDeltas'. Run-time switches live on the
/// backend: CudaBackend::fused_update() (all fused paths) and dwu_gemm() / tf32() (apply_fused).
/// cuda_backend.hpp includes this file, so the specialisation is visible wherever CudaBackend is.

#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "hdpissa/backend/cuda/cuda_backend.hpp"
#include "hdpissa/backend/cuda/cuda_handles.hpp"
#include "hdpissa/backend/cuda/dwu_gemm_sm90.cuh"
#include "hdpissa/backend/cuda/dwu_lowrank.cuh"
#include "hdpissa/backend/cuda/fp8_quantize.hpp"
#include "hdpissa/backend/cuda/kernels.cuh"
#include "hdpissa/core/dwu_kernels.hpp"
#include "hdpissa/core/update_args.hpp"

namespace hdpissa {
namespace cuda_kernels {

// ---------------------------------------------------------------- multi-tensor Adam

/// One tensor of a multi-tensor Adam pass: every operand (rows, cols) with its own leading dimension.
struct AdamTensorDesc {
  const void* p;
  const void* g;
  void* m;
  void* v;
  void* d;
  index_t rows, cols, ldp, ldg, ldm, ldv, ldd;
  int flat = 0;   ///< g, m, v, d dense (ld = cols or one row): element idx is at offset idx
  int apply = 0;  ///< d ← p − delta (d may be p itself: the step applied in place), not d ← delta
};
/// One element of a multi-tensor Adam pass: d ← delta, or (apply) d ← p + (−1)·delta, the
/// backend's axpy(−1, delta, p) formula on the delta rounded to T, so the bits equal adam_delta
/// followed by that axpy. p is read before d is written (d may alias p).
template <class T>
__device__ __forceinline__ void adam_multi_element(const AdamElement<cuda_compute_t<T>>& f, bool apply, T& d, T& m,
                                                   T& v, const T& g, const T& p) {
  using C = cuda_compute_t<T>;
  if (!apply) return f(d, m, v, g, p);
  const T pv = p;
  T delta;
  f(delta, m, v, g, pv);
  d = store<T>(load<C>(pv) + C(-1) * load<C>(delta));
}
/// Multi-tensor Adam: blockIdx.y picks the tensor, blockIdx.x strides over its elements; the
/// element math is the AdamElement functor, so every tensor gets the bits adam_delta gives.
template <class T>
__global__ void adam_multi_kernel(AdamElement<cuda_compute_t<T>> f, const AdamTensorDesc* tensors) {
  const AdamTensorDesc t = tensors[blockIdx.y];
  const T* p = static_cast<const T*>(t.p);
  const T* g = static_cast<const T*>(t.g);
  T* m = static_cast<T*>(t.m);
  T* v = static_cast<T*>(t.v);
  T* d = static_cast<T*>(t.d);
  const bool apply = t.apply != 0;
  const index_t n = t.rows * t.cols;
  // p is read at the flat offset when it is dense too, or when it is never read (no weight decay
  // and not applied)
  const bool p_flat = t.rows == 1 || t.ldp == t.cols || (!apply && f.lr_wd == cuda_compute_t<T>(0));
  if (t.flat && p_flat) {  // no index division
    for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x)
      adam_multi_element<T>(f, apply, d[idx], m[idx], v[idx], g[idx], p[idx]);
    return;
  }
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x) {
    const index_t i = idx / t.cols, j = idx - i * t.cols;
    adam_multi_element<T>(f, apply, d[i * t.ldd + j], m[i * t.ldm + j], v[i * t.ldv + j], g[i * t.ldg + j],
                          p[i * t.ldp + j]);
  }
}
/// `tensors` is a device array of `count` descriptors; max_elems sizes the x-grid.
template <class T>
inline void launch_adam_multi(cudaStream_t s, const AdamArgs& a, const AdamTensorDesc* tensors, int count,
                              index_t max_elems) {
  if (count == 0 || max_elems == 0) return;
  constexpr int kMaxY = 65535;
  const auto f = AdamElement<cuda_compute_t<T>>::make(a);
  // ~8 elements per thread on the largest tensor: enough blocks to fill the GPU, few idle ones.
  const unsigned bx = std::max(1u, std::min(grid_for(max_elems), grid_for((max_elems + 7) / 8)));
  for (int first = 0; first < count; first += kMaxY) {
    const unsigned by = unsigned(std::min(kMaxY, count - first));
    adam_multi_kernel<T><<<dim3(bx, by), kThreads, 0, s>>>(f, tensors + first);
    HDPISSA_CUDA_CHECK_LAUNCH("adam_multi_kernel");
  }
}


// ---------------------------------------------------------------- Direct Weight Update packing

/// Builds one layer's GEMM operands of the Direct Weight Update from the all-gathered deltas in one
/// pass (what 1 copy + K axpy + 2K copies do in the generic step):
///   R (2Kr, in):  rows [j·r, (j+1)·r) = A_j − dA_j,  rows [(K+j)·r, …) = dA_j
///   Ldb (out, Kr): columns [j·r, (j+1)·r) = dB_j
/// where group j's deltas start at recv + j·chunk (DwuPackedDeltas: dA_j (r, in), then dB_j (out, r)).
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


// ---------------------------------------------------------------- batched non-finite check

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

// ---------------------------------------------------------------- bf16 W storage (W-precision policies)

/// The unfused policy apply: every element of the dense update Δ = sign · D (rows, cols; sign ±1)
/// folded into the bf16 storage by its rule (the same function as the CPU loop and the fused epilogue).
template <int = 0>
__global__ void apply_w_storage_kernel(const float* __restrict__ D, index_t ldd, index_t rows, index_t cols,
                                       Bf16WStorage w, float sign) {
  const index_t n = rows * cols;
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x) {
    const index_t i = idx / cols, j = idx - i * cols;
    w.apply(i, j, sign * D[i * ldd + j]);
  }
}
inline void launch_apply_w_storage(cudaStream_t s, const float* D, index_t ldd, index_t rows, index_t cols,
                                   const Bf16WStorage& w, float sign = 1.0f) {
  if (rows * cols == 0) return;
  apply_w_storage_kernel<><<<grid_for(rows * cols), kThreads, 0, s>>>(D, ldd, rows, cols, w, sign);
  HDPISSA_CUDA_CHECK_LAUNCH("apply_w_storage_kernel");
}
/// *w.amax ← max(*w.amax, max |w|) over the storage's (rows, cols) W (Bf16WStorage::amax): the pass
/// for the apply paths whose kernels do not keep the maximum — fp8_amax_kernel over the raw bf16 W
/// (vector loads, one atomicMax per block), what the FP8 refresh's own amax pass would run.
inline void launch_w_storage_amax(cudaStream_t s, const Bf16WStorage& w, index_t rows, index_t cols) {
  if (!w.amax || rows * cols == 0) return;
  launch_fp8_amax_into(s, ConstMatrixView<__nv_bfloat16>{reinterpret_cast<const __nv_bfloat16*>(w.w), rows, cols,
                                                         index_t(w.ldw)},
                       w.amax);
}

}  // namespace cuda_kernels

/// The fused Direct Weight Update kernels of CudaBackend<S> (see the file comment). Scratch
/// (descriptor tables, the packed Rt of apply_fused) grows on first use and is reused.
template <class S>
class DwuKernels<CudaBackend<S>> : public DwuGenericKernels<CudaBackend<S>> {
  using Base = DwuGenericKernels<CudaBackend<S>>;

 public:
  using V = MatrixView<S>;
  using CV = ConstMatrixView<S>;

  /// A multi-tensor Adam table: descriptors of every tensor, uploaded once (setup only).
  class AdamBatch {
   public:
    AdamBatch() = default;
    int size() const { return count_; }

   private:
    friend class DwuKernels;
    DeviceBuffer<cuda_kernels::AdamTensorDesc> desc_;
    int count_ = 0;
    index_t max_elems_ = 0;
  };
  using adam_batch_type = AdamBatch;

  explicit DwuKernels(CudaBackend<S>& b) : Base(b), flag_(1), host_flag_(1) {}

  /// The fused paths run (CudaBackendOptions::fused_update).
  bool enabled() const { return this->backend().fused_update(); }

  /// One batched non-finite check over many views (one kernel, one wait): true when every
  /// element of every view is finite. The descriptor array grows on first use only.
  bool all_finite_batch(const std::vector<CV>& views) {
    auto& b = this->backend();
    if (views.empty()) return true;
    const std::size_t n = views.size();
    if (n > desc_capacity_) {
      host_desc_ = PinnedBuffer<cuda_kernels::ViewDesc>(n);
      desc_.reserve(n);
      desc_capacity_ = n;
    }
    index_t max_elems = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const auto& v = views[i];
      host_desc_.get()[i] = {v.data, v.rows, v.cols, index_t(cuda_detail::ld_of(v))};
      max_elems = std::max(max_elems, v.size());
    }
    HDPISSA_CUDA_CHECK(cudaMemsetAsync(flag_.get(), 0, sizeof(int), b.stream()));
    HDPISSA_CUDA_CHECK(cudaMemcpyAsync(desc_.get(), host_desc_.get(), n * sizeof(cuda_kernels::ViewDesc),
                                       cudaMemcpyHostToDevice, b.stream()));
    cuda_kernels::launch_non_finite_batch<S>(b.stream(), desc_.get(), int(n), max_elems, flag_.get());
    HDPISSA_CUDA_CHECK(cudaMemcpyAsync(host_flag_.get(), flag_.get(), sizeof(int), cudaMemcpyDeviceToHost, b.stream()));
    b.synchronize();  // also keeps host_desc_ alive until the copy has read it
    return *host_flag_.get() == 0;
  }

  /// Uploads the descriptor table of a multi-tensor Adam pass (setup: allocates and waits). Every
  /// tensor's param, m, v, delta have the grad's shape. `apply_in_place`: each tensor's `delta` view
  /// receives param − delta instead of delta (it may be the param itself: the step applied in place,
  /// DataParallelUpdate's p ← p − delta, bit for bit adam_delta then axpy(−1)).
  AdamBatch make_adam_batch(const std::vector<AdamTensor<S>>& ts, bool apply_in_place = false) {
    auto& b = this->backend();
    std::vector<cuda_kernels::AdamTensorDesc> h;
    h.reserve(ts.size());
    AdamBatch out;
    for (const auto& t : ts) {
      require_shape(t.m, t.grad.rows, t.grad.cols, "adam batch first moment");
      require_shape(t.v, t.grad.rows, t.grad.cols, "adam batch second moment");
      require_shape(t.delta, t.grad.rows, t.grad.cols, "adam batch delta");
      require_shape(t.param, t.grad.rows, t.grad.cols, "adam batch param");
      if (t.grad.empty()) continue;
      h.push_back({t.param.data, t.grad.data, t.m.data, t.v.data, t.delta.data, t.grad.rows, t.grad.cols,
                   index_t(cuda_detail::ld_of(t.param)), index_t(cuda_detail::ld_of(t.grad)),
                   index_t(cuda_detail::ld_of(t.m)), index_t(cuda_detail::ld_of(t.v)),
                   index_t(cuda_detail::ld_of(t.delta))});
      const auto dense = [](const auto& v) { return v.rows <= 1 || v.ld == v.cols; };
      h.back().flat = dense(t.grad) && dense(t.m) && dense(t.v) && dense(t.delta) ? 1 : 0;
      h.back().apply = apply_in_place ? 1 : 0;
      out.max_elems_ = std::max(out.max_elems_, t.grad.size());
    }
    out.count_ = int(h.size());
    if (!h.empty()) {
      out.desc_.reserve(h.size());
      HDPISSA_CUDA_CHECK(cudaMemcpyAsync(out.desc_.get(), h.data(), h.size() * sizeof(h[0]), cudaMemcpyHostToDevice,
                                         b.stream()));
      b.synchronize();  // h is pageable and local
    }
    return out;
  }
  /// One Adam pass (the same args for every tensor) over a whole table in one launch; the bits
  /// equal adam_delta's on each tensor. Returns false (nothing done) when fused_update() is off.
  bool adam_step(const AdamArgs& a, const AdamBatch& batch) {
    if (!enabled()) return false;
    cuda_kernels::launch_adam_multi<S>(this->backend().stream(), a, batch.desc_.get(), batch.count_, batch.max_elems_);
    return true;
  }

  /// The per-layer packing in one launch: R (2K·r, in) = [A − dA stack; dA stack] and
  /// Ldb (out, K·r) = [dB_0 … dB_{K−1}] from the all-gathered deltas d, A (K·r, in). Bit for bit
  /// what unpack (copy + K·(axpy + 2 copies)) gives. Returns false when fused_update() is off.
  bool unpack_fused(CV A, DwuPackedDeltas<const S> d, V R, V Ldb) {
    return unpack_fused(A, d, R, Ldb, this->backend().stream());
  }
  /// The same on `stream`.
  bool unpack_fused(CV A, DwuPackedDeltas<const S> d, V R, V Ldb, cudaStream_t stream) {
    if (!enabled()) return false;
    const index_t K = d.groups, r = d.rank;
    require_shape(A, K * r, A.cols, "dwu unpack A");
    require_shape(R, 2 * K * r, A.cols, "dwu unpack R");
    require_shape(Ldb, Ldb.rows, K * r, "dwu unpack Ldb");
    cuda_kernels::launch_dwu_unpack(stream, A, d.data, index_t(d.chunk), K, r, R, Ldb);
    return true;
  }

  /// Whether the update of a layer with inner dimension kd = 2Kr runs the CUDA-core low-rank kernel
  /// (dwu_lowrank.cuh): DwuGemm::Simt asks for it, Auto takes it for a bf16 W storage (`bf16_w`) at
  /// kd ≤ 64 where the kernel's shared memory fits the device (e.g. kd ≤ 25 on 64 KiB GPUs); never
  /// with the fused update off or TF32 on (TF32 keeps cuBLAS). Simt with a kd it cannot take is
  /// check_layer's InvalidArgument. Shapes as fused_kernel_usable.
  bool lowrank_usable(CV A, const DwuPackedDeltas<const S>& d, V L, index_t out, bool bf16_w) {
    auto& b = this->backend();
    if (!b.fused_update() || b.tf32()) return false;
    check_layer(d.groups, d.rank, bf16_w);
    const index_t kr = d.groups * d.rank, kd = 2 * kr, in = A.cols;
    if (b.dwu_gemm() != DwuGemm::Simt &&
        !(b.dwu_gemm() == DwuGemm::Auto && bf16_w && cuda_kernels::DwuLowrank::fits(kd, bf16_w, b.device())))
      return false;
    require_shape(A, kr, in, "dwu apply A");
    require_shape(L, out, kd, "dwu apply L");
    return out > 0 && in > 0 && kr > 0 && out < (index_t(1) << 30) && in < (index_t(1) << 30);
  }
  /// W ⊕= alpha · L · R by the low-rank CUDA-core kernel on `stream` (after lowrank_usable).
  template <class Out>
  void launch_lowrank(const Out& out, const float* L, index_t ldl, const float* R, index_t ldr, int M, int N, int kd,
                      float alpha, cudaStream_t stream) {
    cuda_kernels::launch_dwu_lowrank(stream, out, L, ldl, R, ldr, M, N, kd, alpha, 0, this->backend().dwu_lowrank_rows());
  }
  /// DwuGemm::Simt with a rank the CUDA-core kernel cannot take is an InvalidArgument. Also called
  /// per layer before the first step (DirectWeightUpdate::finalize), so it is refused there, not in
  /// the middle of a step.
  void check_layer(index_t groups, index_t rank, bool bf16_w) {
    auto& b = this->backend();
    if (b.dwu_gemm() != DwuGemm::Simt || !b.fused_update() || b.tf32()) return;
    const index_t kd = 2 * groups * rank;
    if (!cuda_kernels::DwuLowrank::fits(kd, bf16_w, b.device()))
      throw InvalidArgument(cat("DwuGemm::Simt: the CUDA-core DWU kernel takes 2Kr ≤ ", cuda_kernels::DwuLowrank::kMaxKd,
                                " within the device's shared memory per block (",
                                cuda_kernels::DwuLowrank::smem_bytes(kd, bf16_w), " bytes needed), found 2Kr = ", kd,
                                " (K = ", groups, ", r = ", rank, "); use auto or 3xtf32 for this rank"));
  }
  /// The low-rank path's packing on `stream` into `scratch` (rt_, or an apply stream's own):
  /// unpack_fused's R (2Kr, in) = [A − dA; dA] and L's dB columns (the generic path's bits).
  float* lowrank_pack(CV A, const DwuPackedDeltas<const S>& d, V L, cudaStream_t stream, DeviceBuffer<float>& scratch) {
    const index_t kr = d.groups * d.rank, in = A.cols;
    float* rbuf = scratch.reserve(std::size_t(in * 2 * kr));
    unpack_fused(A, d, V{rbuf, 2 * kr, in, in}, L.col_block(0, kr), stream);  // fused_update is on (lowrank_usable)
    return rbuf;
  }

  // ---------------------------------------------------------------- the apply streams
  /// DirectWeightUpdate::step brackets its per-layer applies with apply_begin() / apply_end() (and
  /// joins before each exchange, whose receive buffer the packing reads). Between them, with
  /// CudaBackendOptions::dwu_apply_streams = n > 1, each layer's low-rank update (its packing and
  /// kernel) goes to side stream (layer count mod n), after the backend's stream's work at
  /// apply_begin(); apply_end() makes the backend's stream wait for every side stream used. Layers
  /// are independent (each writes its own W, its L's dB columns and its stream's scratch), so the
  /// bits are those of one stream; only the kernels' overlap changes (small layers' grids and each
  /// kernel's tail leave SMs idle on one stream). n = 1: nothing changes.
  ///
  /// `deferred` (UpdateOptions::deferred_apply_join): the side streams are used even at n = 1, and
  /// apply_end(true) leaves them running: the backend's stream goes on to the caller's next work
  /// (the next forward) while the layers' W updates finish beside it. apply_mark(i) after layer i's
  /// apply records where it ran; wait_layer(i) makes the backend's stream wait for that layer only,
  /// apply_join() for all of it (the next apply_begin() does that first).
  void apply_begin(bool deferred = false) {
    auto& b = this->backend();
    const int n = std::max(b.dwu_apply_streams(), deferred ? 1 : 0);
    apply_end();  // a step that threw after its apply_begin: its side work is joined first
    apply_join();  // the previous step's deferred side work
    if (n <= 1 && !deferred) return;
    if (side_.size() != std::size_t(n) || side_priority_ != b.dwu_apply_priority()) {
      side_.clear();
      side_rt_.clear();
      side_priority_ = b.dwu_apply_priority();
      for (int i = 0; i < n; ++i) side_.emplace_back(side_priority_);
      side_rt_.resize(std::size_t(n));
      side_waited_.assign(std::size_t(n), false);
      side_used_.assign(std::size_t(n), false);
    }
    HDPISSA_CUDA_CHECK(cudaEventRecord(fork_.get(), b.stream()));
    std::fill(side_waited_.begin(), side_waited_.end(), false);
    std::fill(side_used_.begin(), side_used_.end(), false);
    std::fill(layer_side_.begin(), layer_side_.end(), -1);
    apply_active_ = true;
    next_side_ = 0;
    last_side_ = -1;
  }
  /// See apply_begin(): the backend's stream waits for every side stream used since, or, with
  /// `defer`, not yet (wait_layer / apply_join).
  void apply_end(bool defer = false) {
    if (!apply_active_) return;
    apply_active_ = false;
    pending_ = true;
    if (!defer) apply_join();
  }
  /// After layer i's apply (DirectWeightUpdate::step): the layer ran on the side stream of the last
  /// low-rank launch since the previous mark, or on the backend's stream (nothing to wait for).
  void apply_mark(std::size_t i) {
    if (!apply_active_) return;
    if (layer_side_.size() <= i) {
      layer_side_.resize(i + 1, -1);
      layer_waited_.resize(i + 1, false);
      while (layer_done_.size() <= i) layer_done_.emplace_back();
    }
    layer_side_[i] = last_side_;
    layer_waited_[i] = false;
    if (last_side_ >= 0)
      HDPISSA_CUDA_CHECK(cudaEventRecord(layer_done_[i].get(), side_[std::size_t(last_side_)].stream.get()));
    last_side_ = -1;
  }
  /// The backend's stream waits for layer i's deferred update (apply_mark); nothing when none is
  /// pending, it ran on the backend's stream, or it was waited for already. While the stream is
  /// being captured into a CUDA graph the wait is captured unconditionally, as an external event
  /// wait node on layer i's event (cudaEventWaitExternal): every replay then waits for the record
  /// that event holds when the replay runs — the last step's update of layer i, or nothing if the
  /// layer never ran on a side stream (an event never recorded is complete).
  void wait_layer(std::size_t i) {
    cudaStream_t s = this->backend().stream();
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    HDPISSA_CUDA_CHECK(cudaStreamIsCapturing(s, &capturing));
    if (capturing == cudaStreamCaptureStatusActive) {
      while (layer_done_.size() <= i) layer_done_.emplace_back();
      HDPISSA_CUDA_CHECK(cudaStreamWaitEvent(s, layer_done_[i].get(), cudaEventWaitExternal));
      return;
    }
    if (!pending_ || i >= layer_side_.size() || layer_side_[i] < 0 || layer_waited_[i]) return;
    HDPISSA_CUDA_CHECK(cudaStreamWaitEvent(s, layer_done_[i].get(), 0));
    layer_waited_[i] = true;
  }
  /// The backend's stream waits for every side stream used by the last apply_begin … apply_end.
  void apply_join() {
    if (!pending_) return;
    auto& b = this->backend();
    pending_ = false;
    for (std::size_t i = 0; i < side_.size(); ++i) {
      if (!side_used_[i]) continue;
      side_used_[i] = false;
      HDPISSA_CUDA_CHECK(cudaEventRecord(side_[i].done.get(), side_[i].stream.get()));
      HDPISSA_CUDA_CHECK(cudaStreamWaitEvent(b.stream(), side_[i].done.get(), 0));
    }
  }
  /// Blocks the host until every side stream is idle (DirectWeightUpdate's destructor: nothing
  /// deferred may outlive the buffers it reads). Never throws.
  void apply_drain() noexcept {
    for (auto& s : side_) (void)cudaStreamSynchronize(s.stream.get());
  }
  /// Whether side work of the last step may still be running (deferred, not yet joined).
  bool apply_pending() const { return pending_; }
  /// Tests: each side launch first spins `cycles` SM cycles on its stream, so a reader of W that
  /// skipped wait_layer / apply_join would see the old W. 0 (default): no spin.
  void set_apply_side_spin_for_tests(long long cycles) { side_spin_ = cycles; }
  /// Low-rank updates launched on a side stream so far (tests: the streams were used).
  std::int64_t apply_side_launches() const { return side_launches_; }

  /// The guard apply_fused and apply_fused_w share: whether the sm_90a kernel may run (the fused
  /// update on, the kernel chosen, no TF32, a device and binary that have it — DwuGemm::Tf32x3 on one
  /// that does not throws), the shapes (A (K·r, in), L (out, 2K·r), W (out, in) when given) and the
  /// sizes (non-empty, every extent under 2^30). The callers check their pointers' layout.
  bool fused_kernel_usable(CV A, const DwuPackedDeltas<const S>& d, V L, index_t out, const V* W) {
    auto& b = this->backend();
    if (!b.fused_update() || b.dwu_gemm() == DwuGemm::Cublas || b.dwu_gemm() == DwuGemm::Simt || b.tf32())
      return false;
    if (!cuda_kernels::sm90::dwu_gemm_sm90_supported(b.device())) {
      if (b.dwu_gemm() == DwuGemm::Tf32x3)
        throw InvalidArgument(cat("DwuGemm::Tf32x3: device ", b.device(), " cannot run the sm_90a kernel (expected a ",
                                  "compute capability 9.0 GPU and a binary built for 90a, e.g. CMAKE_CUDA_ARCHITECTURES=90a)"));
      return false;
    }
    const index_t kr = d.groups * d.rank, kd = 2 * kr, in = A.cols;
    require_shape(A, kr, in, "dwu apply A");
    require_shape(L, out, kd, "dwu apply L");
    if (W) require_shape(*W, out, in, "dwu apply W");
    constexpr index_t kMax = index_t(1) << 30;
    if (out == 0 || in == 0 || kr == 0) return false;
    return out < kMax && in < kMax && kd < kMax;
  }

  /// The whole per-layer Direct Weight Update on the sm_90a 3xTF32 kernel: Ldb = L's first K·r
  /// columns get the dB_j (as unpack), Rt (in, 2Kr) = [A − dA; dA]ᵀ is packed into scratch
  /// (grown on first use), then W += alpha · L · Rtᵀ in one kernel. Returns false (nothing done)
  /// when CudaBackend::dwu_gemm_kernel_active() is off or the layout does not fit (2Kr or a
  /// leading dimension not a multiple of 4, a base pointer not 16-byte aligned); the update then
  /// packs and calls gemm. With DwuGemm::Tf32x3 on a GPU/binary without the kernel it throws.
  bool apply_fused(CV A, DwuPackedDeltas<const S> d, S alpha, V L, V W) {
    if constexpr (!std::is_same_v<S, float>) {
      return false;
    } else {
      auto& b = this->backend();
      if (lowrank_usable(A, d, L, W.rows, false)) {
        require_shape(W, W.rows, A.cols, "dwu apply W");
        const float* R = lowrank_pack(A, d, L, b.stream(), rt_);
        launch_lowrank(cuda_kernels::DwuLowrankFp32W{W.data, index_t(cuda_detail::ld_of(W))}, L.data,
                       index_t(cuda_detail::ld_of(L)), R, A.cols, int(W.rows), int(W.cols), int(2 * d.groups * d.rank),
                       alpha, b.stream());
        return true;
      }
      if (!fused_kernel_usable(A, d, L, W.rows, &W)) return false;
      const index_t r = d.rank, kr = d.groups * r, kd = 2 * kr, in = A.cols, out = W.rows;
      const int ldl = cuda_detail::ld_of(L), ldw = cuda_detail::ld_of(W);
      // Rt comes from cudaMalloc (aligned, ld = 2Kr): W stands in for its pointer check.
      if (!cuda_kernels::sm90::dwu_gemm_sm90_layout_ok(W.data, ldw, L.data, ldl, W.data, int(kd), int(kd))) return false;
      float* rt = rt_.reserve(std::size_t(in * kd));
      const index_t chunk = index_t(d.chunk);
      cuda_kernels::launch_dwu_copy_db(b.stream(), d.data, chunk, int(kr), int(r), int(in), int(out), L.data, ldl);
      cuda_kernels::launch_dwu_pack_rt(b.stream(), A.data, cuda_detail::ld_of(A), d.data, chunk, int(kr), int(r),
                                       int(in), rt);
      cuda_kernels::sm90::launch_dwu_gemm_tf32<cuda_kernels::DwuGemm3xTf32Config>(
          b.stream(), W.data, ldw, L.data, ldl, rt, int(kd), int(out), int(in), int(kd), alpha, false);
      return true;
    }
  }

  /// apply_fused into a bf16 W storage (a W-precision policy, core/w_precision.hpp): the same
  /// packing and sm_90a 3xTF32 GEMM, whose epilogue folds each Δ = alpha · (L R)_ij into the bf16 W
  /// (and its compensation) by the policy's rule: one pass over W, no dense Δ, no fp32 W. With
  /// w.amax set, the low-rank kernel keeps max |w| in its epilogue; after the 3xTF32 one a pass over
  /// W does (apply_w_storage too). Returns
  /// false (nothing done) where apply_fused would; the update then runs the generic GEMM into a Δ
  /// scratch and apply_w_storage.
  bool apply_fused_w(CV A, DwuPackedDeltas<const S> d, S alpha, V L, const Bf16WStorage& w) {
    if constexpr (!std::is_same_v<S, float>) {
      return false;
    } else {
      auto& b = this->backend();
      if (lowrank_usable(A, d, L, L.rows, true)) {
        cudaStream_t st = b.stream();  // the backend's stream and Rt scratch, or the next apply stream's (apply_begin)
        DeviceBuffer<float>* rt = &rt_;
        if (apply_active_) {
          const std::size_t i = next_side_++ % side_.size();
          st = side_[i].stream.get();
          rt = &side_rt_[i];
          if (!side_waited_[i]) HDPISSA_CUDA_CHECK(cudaStreamWaitEvent(st, fork_.get(), 0));
          side_waited_[i] = side_used_[i] = true;
          last_side_ = int(i);
          ++side_launches_;
          if (side_spin_ > 0) cuda_kernels::launch_spin_cycles(st, side_spin_);
        }
        const float* R = lowrank_pack(A, d, L, st, *rt);
        launch_lowrank(w, L.data, index_t(cuda_detail::ld_of(L)), R, A.cols, int(L.rows), int(A.cols),
                       int(2 * d.groups * d.rank), alpha, st);
        return true;
      }
      if (!fused_kernel_usable(A, d, L, L.rows, nullptr)) return false;
      const index_t r = d.rank, kr = d.groups * r, kd = 2 * kr, in = A.cols, out = L.rows;
      const int ldl = cuda_detail::ld_of(L);
      if (!cuda_kernels::sm90::dwu_gemm_sm90_layout_ok(L.data, ldl, L.data, ldl, L.data, int(kd), int(kd))) return false;
      float* rt = rt_.reserve(std::size_t(in * kd));
      const index_t chunk = index_t(d.chunk);
      cuda_kernels::launch_dwu_copy_db(b.stream(), d.data, chunk, int(kr), int(r), int(in), int(out), L.data, ldl);
      cuda_kernels::launch_dwu_pack_rt(b.stream(), A.data, cuda_detail::ld_of(A), d.data, chunk, int(kr), int(r),
                                       int(in), rt);
      cuda_kernels::sm90::launch_dwu_gemm_tf32_bf16w<cuda_kernels::DwuGemm3xTf32Config>(
          b.stream(), w, L.data, ldl, rt, int(kd), int(out), int(in), int(kd), alpha);
      cuda_kernels::launch_w_storage_amax(b.stream(), w, out, in);  // its epilogue keeps no maximum
      return true;
    }
  }
  /// The unfused policy apply: the dense update Δ = sign · D (out, in; fp32, sign ±1) folded into
  /// the bf16 storage.
  void apply_w_storage(CV D, const Bf16WStorage& w, float sign = 1.0f) {
    if constexpr (!std::is_same_v<S, float>) {
      (void)D, (void)w, (void)sign;
      throw InvalidArgument("DwuKernels<CudaBackend>: a bf16 W storage needs the fp32 master backend");
    } else {
      cuda_kernels::launch_apply_w_storage(this->backend().stream(), D.data, index_t(cuda_detail::ld_of(D)), D.rows,
                                           D.cols, w, sign);
      cuda_kernels::launch_w_storage_amax(this->backend().stream(), w, D.rows, D.cols);
    }
  }
  /// The exact fp32 values of the storage's W into `dst` (its shape): the backend's bf16 → fp32
  /// conversion kernel over the raw bits (DataParallelUpdate, an optimizer with weight decay).
  void widen_w_storage(const Bf16WStorage& w, V dst) {
    if constexpr (!std::is_same_v<S, float>) {
      (void)w, (void)dst;
      throw InvalidArgument("DwuKernels<CudaBackend>: a bf16 W storage needs the fp32 master backend");
    } else {
      const ConstMatrixView<__nv_bfloat16> x{reinterpret_cast<const __nv_bfloat16*>(w.w), dst.rows, dst.cols,
                                             index_t(w.ldw)};
      this->backend().convert(x, dst);
    }
  }
  /// The order-sensitive checksum of the storage's W (rows, cols) (CudaBackend::checksum's formula
  /// over the bf16 values; verify_replicas). Waits.
  double checksum_w_storage(const Bf16WStorage& w, index_t rows, index_t cols) {
    auto& b = this->backend();
    if (!sum_.get()) sum_.reserve(cuda_kernels::kReduceBlocks + 1), host_sum_ = PinnedBuffer<double>(1);
    const ConstMatrixView<__nv_bfloat16> x{reinterpret_cast<const __nv_bfloat16*>(w.w), rows, cols, index_t(w.ldw)};
    cuda_kernels::launch_reduce<cuda_kernels::ReduceKind::Checksum>(b.stream(), x, sum_.get(),
                                                                     sum_.get() + cuda_kernels::kReduceBlocks);
    HDPISSA_CUDA_CHECK(cudaMemcpyAsync(host_sum_.get(), sum_.get() + cuda_kernels::kReduceBlocks, sizeof(double),
                                       cudaMemcpyDeviceToHost, b.stream()));
    b.synchronize();
    return *host_sum_.get();
  }

 private:
  DeviceBuffer<double> sum_;   // checksum_w_storage's partial sums (first use)
  PinnedBuffer<double> host_sum_;
  DeviceBuffer<int> flag_;
  PinnedBuffer<int> host_flag_;
  DeviceBuffer<cuda_kernels::ViewDesc> desc_;
  PinnedBuffer<cuda_kernels::ViewDesc> host_desc_;
  std::size_t desc_capacity_ = 0;
  DeviceBuffer<float> rt_;  // apply_fused's packed Rt (in, 2Kr), grown on first use
  // the apply streams (apply_begin): a non-blocking stream and an event each, their scratch, the
  // fork event on the backend's stream
  struct SideStream {
    CudaStream stream;  // non-blocking
    CudaEvent done;
    explicit SideStream(StreamPriority p) : stream(p) {}
    SideStream(SideStream&&) noexcept = default;
    SideStream& operator=(SideStream&&) noexcept = default;
    // side work still in flight (a deferred step never joined) finishes before its scratch goes
    ~SideStream() {
      if (stream.get()) (void)cudaStreamSynchronize(stream.get());
    }
  };
  std::vector<DeviceBuffer<float>> side_rt_;
  std::vector<SideStream> side_;  // after side_rt_: destroyed (synchronised) before it
  StreamPriority side_priority_ = StreamPriority::Default;  // side_'s streams
  std::vector<bool> side_waited_, side_used_;
  CudaEvent fork_;
  bool apply_active_ = false;
  bool pending_ = false;  // side work since the last apply_begin not yet joined (apply_join)
  std::size_t next_side_ = 0;
  int last_side_ = -1;  // the side stream of the last low-rank launch since apply_mark, or -1
  std::int64_t side_launches_ = 0;
  long long side_spin_ = 0;  // set_apply_side_spin_for_tests
  // per layer (apply_mark): its side stream (-1: the backend's), its event there, waited yet
  std::vector<int> layer_side_;
  std::vector<CudaEvent> layer_done_;
  std::vector<bool> layer_waited_;
};

static_assert(FusedDwuKernels<DwuKernels<CudaBackend<float>>, CudaBackend<float>>);
static_assert(FusedDwuKernels<DwuKernels<CudaBackend<double>>, CudaBackend<double>>);
static_assert(FusedDwuKernels<DwuKernels<CudaBackend<__nv_bfloat16>>, CudaBackend<__nv_bfloat16>>);

}  // namespace hdpissa
