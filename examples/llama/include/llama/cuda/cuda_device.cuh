#pragma once
/// \file cuda_device.cuh
/// The GPU device policy of hdpissa-train's methods (train/methods.hpp): gpu::CudaDevice<T>, T the
/// model's compute type (float: exact fp32 throughout, the model's W is the master; __nv_bfloat16:
/// bf16 GEMM operands with fp32 accumulation, fp32 masters / gradient sums / Adam). It names the
/// backends (CudaBackend<T> for the model's GEMMs, CudaBackend<float> for everything the optimizer
/// touches), the randomized SVD (Cholesky-QR2 orthonormalisation: two GEMMs and a small Cholesky
/// instead of a Householder QR) and the two mixed-precision moves:
///  - to_compute: the bf16 compute copy ← an fp32 master (one conversion kernel);
///  - accumulate: an fp32 gradient sum += one micro-batch's bf16 gradient (full fine-tuning's gW:
///    fp32 accumulation inside the GEMM over the micro-batch's tokens, rounded once, then added
///    here), so the sum over micro-batches and groups, Adam and W are all fp32. The adapter methods'
///    gradient GEMMs skip the bf16 round: they write fp32 sums directly (CudaBackend::gemm_f32).
/// With bf16 compute it also names --compute fp8's FP8 linears (fp8_linears.cuh) and HD-PiSSA's fused
/// adapter-gradient kernels (adapter_grads.cuh).

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>
#include <cstdint>
#include <type_traits>

#include "hdpissa/cuda.hpp"
#include "llama/cuda/adapter_grads.cuh"
#include "llama/cuda/fp8_linears.cuh"

namespace hdpissa::llama::gpu {

namespace detail {
__global__ inline void add_bf16_into_f32_kernel(const __nv_bfloat16* __restrict__ src, float* __restrict__ dst,
                                                std::int64_t n) {
  for (std::int64_t i = blockIdx.x * std::int64_t(blockDim.x) + threadIdx.x; i < n;
       i += std::int64_t(gridDim.x) * blockDim.x)
    dst[i] += __bfloat162float(src[i]);
}
}  // namespace detail

/// dst (fp32) += src (bf16), both contiguous and of the same shape (gradient accumulation).
inline void launch_add_bf16_into_f32(cudaStream_t s, ConstMatrixView<__nv_bfloat16> src, MatrixView<float> dst) {
  HDPISSA_REQUIRE(src.rows == dst.rows && src.cols == dst.cols, "add_bf16_into_f32: source ",
                  shape_str(src.rows, src.cols), " vs destination ", shape_str(dst.rows, dst.cols));
  HDPISSA_REQUIRE(src.contiguous() && dst.contiguous(), "add_bf16_into_f32: expected contiguous views");
  const std::int64_t n = std::int64_t(dst.rows) * dst.cols;
  if (n == 0) return;
  const int threads = 256;
  const int blocks = int(std::min<std::int64_t>((n + threads - 1) / threads, 4096));
  detail::add_bf16_into_f32_kernel<<<blocks, threads, 0, s>>>(src.data, dst.data, n);
  HDPISSA_CUDA_CHECK_LAUNCH("add_bf16_into_f32_kernel");
}

/// The GPU device policy (see the file comment).
/// The adapters' second stream (HDPISSA_ADAPTER_STREAM, default on; docs/trainer.md): a bf16
/// compute backend of its own (stream, cuBLAS handle, default options as the model's) on which the
/// DWU methods run their adapter-gradient GEMMs while the model's stream goes on with the backward's
/// dX GEMMs and what follows. fork(main): its next work waits for everything enqueued on `main` so
/// far; join(main): `main`'s next work waits for everything enqueued here so far (a no-op when
/// nothing was forked since the last join); join_lagged(main): `main`'s next work waits for what was
/// enqueued here before the previous join_lagged() (nothing when a join() came in between, or no
/// work before it), and what was enqueued since is marked for the next one — the model's backward
/// calls it at each norm backward when its dY buffers alternate, so a half-layer's adapter gradients
/// run beside the next half-layer's work instead of before it. Events are re-recorded: a wait takes
/// the record current when it is enqueued. Its stream runs at the device's greatest priority
/// (hdpissa::StreamPriority::High: its GEMMs' blocks start as soon as an SM has room, ahead of the
/// model stream's next kernel, so the joins wait less; session 35, c102–c105 on an H100: +3.3–4.3 %
/// at TinyLlama 2 × 512, +1.0 % at 7B 2 × 512, +0.5 % at 7B 8 × 512) unless constructed with
/// another (the trainer passes HDPISSA_ADAPTER_STREAM_PRIORITY, env_adapter_stream_priority()). The
/// same bits at any priority (GPU test).
class AdapterSideStream {
 public:
  explicit AdapterSideStream(hdpissa::StreamPriority priority = hdpissa::StreamPriority::High)
      : priority_(priority), b_(options_for(priority)) {
    HDPISSA_CUDA_CHECK(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming));
    HDPISSA_CUDA_CHECK(cudaEventCreateWithFlags(&join_, cudaEventDisableTiming));
    HDPISSA_CUDA_CHECK(cudaEventCreateWithFlags(&mark_, cudaEventDisableTiming));
  }
  AdapterSideStream(const AdapterSideStream&) = delete;
  AdapterSideStream& operator=(const AdapterSideStream&) = delete;
  ~AdapterSideStream() {
    cudaEventDestroy(fork_);
    cudaEventDestroy(join_);
    cudaEventDestroy(mark_);
  }
  hdpissa::CudaBackend<__nv_bfloat16>& backend() { return b_; }
  hdpissa::StreamPriority priority() const { return priority_; }
  void fork(cudaStream_t main) {
    HDPISSA_CUDA_CHECK(cudaEventRecord(fork_, main));
    HDPISSA_CUDA_CHECK(cudaStreamWaitEvent(b_.stream(), fork_, 0));
    pending_ = since_mark_ = true;
  }
  void join(cudaStream_t main) {
    marked_ = since_mark_ = false;
    if (!pending_) return;
    HDPISSA_CUDA_CHECK(cudaEventRecord(join_, b_.stream()));
    HDPISSA_CUDA_CHECK(cudaStreamWaitEvent(main, join_, 0));
    pending_ = false;
  }
  void join_lagged(cudaStream_t main) {
    if (marked_) HDPISSA_CUDA_CHECK(cudaStreamWaitEvent(main, mark_, 0));  // before mark_ is re-recorded
    marked_ = since_mark_;
    if (since_mark_) HDPISSA_CUDA_CHECK(cudaEventRecord(mark_, b_.stream()));
    since_mark_ = false;
  }

 private:
  static hdpissa::CudaBackendOptions options_for(hdpissa::StreamPriority p) {
    hdpissa::CudaBackendOptions o;
    o.stream_priority = p;
    return o;
  }
  hdpissa::StreamPriority priority_;
  hdpissa::CudaBackend<__nv_bfloat16> b_;
  cudaEvent_t fork_ = nullptr, join_ = nullptr, mark_ = nullptr;
  bool pending_ = false;     // forked since the last join()
  bool since_mark_ = false;  // forked since the last join_lagged() or join()
  bool marked_ = false;      // mark_ holds work main has not waited for
};

template <class T>
struct CudaDevice {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>, "compute type: float or bf16");
  using master_backend = hdpissa::CudaBackend<float>;
  using compute_backend = hdpissa::CudaBackend<T>;
  using randomized_svd = hdpissa::CholeskyRandomizedSvd;
  static constexpr const char* exact_svd_name = "ExactSvd (cuSOLVER)";
  static constexpr const char* randomized_svd_name = "CholeskyRandomizedSvd";
  static constexpr const char* backend_note = " on CudaBackend<float>";
  /// --compute fp8's FP8 copies and GEMMs (fp8_linears.cuh): bf16 compute only (void: none).
  using fp8_linears = std::conditional_t<std::is_same_v<T, __nv_bfloat16>, Fp8Linears, void>;
  /// HD-PiSSA's fused adapter-gradient kernels (adapter_grads.cuh): bf16 compute only (void: none).
  using adapter_grads = std::conditional_t<std::is_same_v<T, __nv_bfloat16>, FusedAdapterGrads, void>;
  /// The adapters' second stream (AdapterSideStream): bf16 compute only (void: none).
  using adapter_side = std::conditional_t<std::is_same_v<T, __nv_bfloat16>, AdapterSideStream, void>;

  static void to_compute(master_backend& b, ConstMatrixView<float> src, MatrixView<T> dst) { b.convert(src, dst); }
  /// Many to_compute conversions in one launch (hdpissa::CudaConvertBatch; the same bits as one
  /// to_compute per pair), on the master backend's stream: built once over fixed buffers, run per step.
  using compute_batch = hdpissa::CudaConvertBatch<float, T>;
  static compute_batch make_compute_batch(master_backend& b, const std::vector<typename compute_batch::Pair>& pairs) {
    return compute_batch(pairs, b.stream());
  }
  static void run_compute_batch(master_backend& b, const compute_batch& c) { c.run(b.stream()); }
  static void accumulate(master_backend& b, ConstMatrixView<T> src, MatrixView<float> dst) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) launch_add_bf16_into_f32(b.stream(), src, dst);
    else b.axpy(1.0f, src, dst);
  }
  /// dst (fp32) ← src (compute dtype), exactly (every bf16 value is an fp32 value).
  static void to_master(master_backend& b, ConstMatrixView<T> src, MatrixView<float> dst) { b.convert(src, dst); }
  /// Host fp32 ← a contiguous compute-dtype device matrix (exact; no device scratch). Waits.
  static void download_compute(master_backend& b, ConstMatrixView<T> src, float* host) {
    HDPISSA_REQUIRE(src.contiguous(), "download_compute: expected a contiguous view");
    std::vector<T> tmp(std::size_t(src.size()));
    HDPISSA_CUDA_CHECK(cudaMemcpyAsync(tmp.data(), src.data, tmp.size() * sizeof(T), cudaMemcpyDeviceToHost, b.stream()));
    b.synchronize();
    for (std::size_t k = 0; k < tmp.size(); ++k) {
      if constexpr (std::is_same_v<T, float>) host[k] = tmp[k];
      else host[k] = __bfloat162float(tmp[k]);
    }
  }
  /// A contiguous compute-dtype device matrix ← host fp32, rounded to nearest even (the same
  /// rounding as to_compute). Waits.
  static void upload_compute(master_backend& b, const float* host, MatrixView<T> dst) {
    HDPISSA_REQUIRE(dst.contiguous(), "upload_compute: expected a contiguous view");
    std::vector<T> tmp(std::size_t(dst.size()));
    for (std::size_t k = 0; k < tmp.size(); ++k) {
      if constexpr (std::is_same_v<T, float>) tmp[k] = host[k];
      else tmp[k] = __float2bfloat16_rn(host[k]);
    }
    HDPISSA_CUDA_CHECK(cudaMemcpyAsync(dst.data, tmp.data(), tmp.size() * sizeof(T), cudaMemcpyHostToDevice, b.stream()));
    b.synchronize();
  }
};

}  // namespace hdpissa::llama::gpu
