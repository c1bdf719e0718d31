#pragma once
/// \file cuda_backend.hpp
/// CudaBackend<Scalar>: the GPU tensor backend. Satisfies hdpissa::TensorBackend with
/// memory_space = device_memory, so OrthogonalAdapterInit, MutedLinear, DirectWeightUpdate and the
/// SVD policies run on it unchanged.
///
///  - Storage: float (fp32), double, or __nv_bfloat16 (bf16 storage, fp32 compute_type/accumulation).
///  - Work is queued on one explicit stream (owned, or borrowed from the caller); cuBLAS and
///    cuSOLVER handles are bound to it. Only upload/download, the scalar-returning reductions
///    (all_finite, sum_squares, checksum) and synchronize() wait for the stream.
///  - GEMMs: one cublasGemmEx per call on row-major views (C = op(A) op(B) row-major is
///    Cᵀ = op(B)ᵀ op(A)ᵀ column-major, so operands swap and leading dimensions pass through:
///    strided column blocks need no copy). TF32 tensor cores only when CudaBackendOptions::allow_tf32
///    is set (compute type CUBLAS_COMPUTE_32F_FAST_TF32); default is exact fp32 (CUBLAS_COMPUTE_32F).
///    fp32-storage GEMMs of ≥ 1 GFLOP run a cuBLASLt algorithm tuned once per problem and verified
///    bit-identical to cublasGemmEx (CudaBackendOptions::gemm_tuning, gemm_tuner.hpp); bf16-storage
///    ones too when CudaBackendOptions::gemm_tuning_bf16 asks for it (off by default).
///  - thin_svd: cuSOLVER gesvdj (Jacobi, sorted) on the taller orientation, QR-preconditioned
///    (geqrf/orgqr, then gesvdj of the small R) when the matrix is at least twice as tall as wide.
///    orthonormalize: geqrf + orgqr. Solvers always run in exact fp32 (bf16 storage goes through
///    fp32 scratch).
///  - Hot paths never allocate: scratch for reductions is sized at construction; solver workspaces
///    and scratch matrices grow on first use and are reused (make_matrix is for setup).

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#include "hdpissa/backend/cuda/cuda_handles.hpp"
#include "hdpissa/backend/cuda/dwu_gemm_sm90.cuh"
#include "hdpissa/backend/cuda/gemm_tuner.hpp"
#include "hdpissa/backend/cuda/kernels.cuh"
#include "hdpissa/backend/cuda/solver_calls.hpp"
#include "hdpissa/core/concepts.hpp"

namespace hdpissa {

/// Which GEMM applies the Direct Weight Update W += −f · L · R (fp32 storage).
///  - Auto (default): for a bf16 W storage at 2Kr ≤ 64 the CUDA-core low-rank kernel
///    (dwu_lowrank.cuh) where its shared memory fits the device; otherwise the sm_90a 3xTF32 kernel
///    (dwu_gemm_sm90.cuh) when this binary carries it, the GPU is compute capability 9.0, TF32 is off
///    and the layer's layout fits; otherwise cuBLAS.
///  - Tf32x3: the sm_90a kernel, required: a GPU or binary without it is an error (layouts the kernel
///    cannot take still go to cuBLAS).
///  - Simt: the CUDA-core kernel for every layer (fp32 W too); a rank it cannot take is an error.
///  - Cublas: always the backend's gemm (cublasGemmEx / the tuned cuBLASLt algorithm).
/// 3xTF32 splits every operand into two TF32 terms and keeps three of the four products, so the
/// update is fp32-accurate (max error vs fp64 a few fp32 ulps of the update's magnitude, next to
/// SGEMM's 1–3: docs/cuda.md) but not bit-identical to cuBLAS SGEMM; the CUDA-core kernel sums in
/// plain fp32.
enum class DwuGemm { Auto, Tf32x3, Cublas, Simt };
inline const char* dwu_gemm_name(DwuGemm g) {
  return g == DwuGemm::Auto ? "auto" : g == DwuGemm::Tf32x3 ? "3xtf32" : g == DwuGemm::Simt ? "simt" : "cublas";
}

/// Construction options of CudaBackend. The four std::optional fields may also come from an
/// environment variable, which is read only when the caller leaves the field empty (an explicit
/// value always wins; the setters after construction too):
///  - fused_update ← HDPISSA_CUDA_FUSED_DWU (0 = off, anything else = on); default on
///  - gemm_tuning  ← HDPISSA_CUDA_GEMM_TUNING = off | exact | fastest; default exact (BitExact)
///  - gemm_tuning_bf16 ← HDPISSA_CUDA_GEMM_TUNING_BF16 = off | exact | fastest; default off
///  - dwu_gemm     ← HDPISSA_CUDA_DWU_GEMM = auto | 3xtf32 | simt | cublas; default auto
///  - dwu_lowrank_rows ← HDPISSA_CUDA_DWU_ROWS = 8 | 4; default 8
///  - dwu_apply_streams ← HDPISSA_CUDA_DWU_STREAMS = 1 … 8; default 1
///  - dwu_apply_priority ← HDPISSA_CUDA_DWU_PRIORITY = default | high; default default
/// An unrecognised value is an InvalidArgument at construction. CudaBackend::options() reports
/// the resolved values (every optional engaged).
struct CudaBackendOptions {
  /// Let fp32 GEMMs use TF32 tensor cores (10-bit mantissa inputs, fp32 accumulation). Off by
  /// default: results then match the CPU backend to fp32 rounding.
  bool allow_tf32 = false;
  /// Let DirectWeightUpdate use this backend's fused kernels (DwuKernels<CudaBackend>: one
  /// multi-tensor Adam launch per step, one packing kernel per layer) instead of its generic
  /// per-tensor loops. Same results bit for bit; off only to measure the difference.
  std::optional<bool> fused_update = std::nullopt;
  /// fp32-storage GEMMs of at least gemm_tuning_min_flop (2·m·n·k) run with a cuBLASLt algorithm
  /// chosen once per distinct problem (gemm_tuner.hpp). BitExact (default) only accepts algorithms
  /// whose results equal cublasGemmEx's bit for bit, so results never change; Off always runs
  /// cublasGemmEx; Fastest accepts any algorithm (rounding differs; the timed choice may differ per
  /// process).
  std::optional<GemmTuning> gemm_tuning = std::nullopt;
  /// The same for bf16-storage GEMMs (CudaBackend<__nv_bfloat16>: a bf16 model's linears and their
  /// adapters), same threshold. Off by default until measured (docs/evaluation.md, docs/throughput.md);
  /// BitExact keeps every result, so greedy tokens and trained weights do not change.
  std::optional<GemmTuning> gemm_tuning_bf16 = std::nullopt;
  double gemm_tuning_min_flop = 1e9;
  /// The Direct Weight Update's GEMM (DwuGemm; used through the fused kernels, so only with
  /// fused_update).
  std::optional<DwuGemm> dwu_gemm = std::nullopt;
  /// Rows of W per thread of the low-rank CUDA-core DWU kernel (dwu_lowrank.cuh, 2Kr ≤ 64): 8 (256
  /// threads a block, 128 registers) or 4 (512 threads, 64 registers: twice the warps per SM). The
  /// same bits either way; only the speed differs (bench_dwu_lowrank, docs/cuda.md).
  std::optional<int> dwu_lowrank_rows = std::nullopt;
  /// Streams the Direct Weight Update's per-layer low-rank updates run on (DwuKernels::apply_begin):
  /// 1 (default) = the backend's stream; n > 1: n side streams taking the layers in turn (their
  /// kernels overlap: small layers' grids and each kernel's tail leave SMs idle on one stream). The
  /// same bits for every n (each layer writes only its own W).
  std::optional<int> dwu_apply_streams = std::nullopt;
  /// Priority (StreamPriority) of the DWU apply side streams above (and of the one a deferred step
  /// uses at n = 1). The same bits either way.
  std::optional<StreamPriority> dwu_apply_priority = std::nullopt;
  /// Priority of the stream a backend creates for itself (not read from the environment; a
  /// borrowed stream keeps its own): e.g. High for a backend whose work another stream waits for.
  StreamPriority stream_priority = StreamPriority::Default;

  /// Fills every empty optional field from its environment variable, then from the default.
  /// CudaBackend's constructors call it; an explicit value is kept as given.
  CudaBackendOptions resolved() const {
    CudaBackendOptions o = *this;
    if (!o.fused_update) {
      const char* e = std::getenv("HDPISSA_CUDA_FUSED_DWU");
      o.fused_update = !(e && std::strcmp(e, "0") == 0);
    }
    auto tuning_from_env = [](const char* var, GemmTuning dflt) {
      GemmTuning t = dflt;
      if (const char* e = std::getenv(var)) {
        if (std::strcmp(e, "off") == 0 || std::strcmp(e, "0") == 0) t = GemmTuning::Off;
        else if (std::strcmp(e, "exact") == 0) t = GemmTuning::BitExact;
        else if (std::strcmp(e, "fastest") == 0) t = GemmTuning::Fastest;
        else throw InvalidArgument(cat(var, ": expected off, exact or fastest, found '", e, "'"));
      }
      return t;
    };
    if (!o.gemm_tuning) o.gemm_tuning = tuning_from_env("HDPISSA_CUDA_GEMM_TUNING", GemmTuning::BitExact);
    if (!o.gemm_tuning_bf16) o.gemm_tuning_bf16 = tuning_from_env("HDPISSA_CUDA_GEMM_TUNING_BF16", GemmTuning::Off);
    if (!o.dwu_gemm) {
      o.dwu_gemm = DwuGemm::Auto;
      if (const char* e = std::getenv("HDPISSA_CUDA_DWU_GEMM")) {
        if (std::strcmp(e, "auto") == 0) o.dwu_gemm = DwuGemm::Auto;
        else if (std::strcmp(e, "3xtf32") == 0) o.dwu_gemm = DwuGemm::Tf32x3;
        else if (std::strcmp(e, "cublas") == 0) o.dwu_gemm = DwuGemm::Cublas;
        else if (std::strcmp(e, "simt") == 0) o.dwu_gemm = DwuGemm::Simt;
        else throw InvalidArgument(cat("HDPISSA_CUDA_DWU_GEMM: expected auto, 3xtf32, simt or cublas, found '", e, "'"));
      }
    }
    if (!o.dwu_lowrank_rows) {
      o.dwu_lowrank_rows = 8;
      if (const char* e = std::getenv("HDPISSA_CUDA_DWU_ROWS")) {
        if (std::strcmp(e, "8") == 0) o.dwu_lowrank_rows = 8;
        else if (std::strcmp(e, "4") == 0) o.dwu_lowrank_rows = 4;
        else throw InvalidArgument(cat("HDPISSA_CUDA_DWU_ROWS: expected 8 or 4, found '", e, "'"));
      }
    }
    if (!o.dwu_apply_streams) {
      o.dwu_apply_streams = 1;
      if (const char* e = std::getenv("HDPISSA_CUDA_DWU_STREAMS")) {
        if (e[0] >= '1' && e[0] <= '8' && e[1] == '\0') o.dwu_apply_streams = e[0] - '0';
        else throw InvalidArgument(cat("HDPISSA_CUDA_DWU_STREAMS: expected 1 … 8, found '", e, "'"));
      }
    }
    if (!o.dwu_apply_priority) o.dwu_apply_priority = stream_priority_from_env("HDPISSA_CUDA_DWU_PRIORITY");
    HDPISSA_REQUIRE(*o.dwu_apply_streams >= 1 && *o.dwu_apply_streams <= 8,
                    "CudaBackendOptions::dwu_apply_streams: expected 1 … 8, found ", *o.dwu_apply_streams);
    HDPISSA_REQUIRE(*o.dwu_lowrank_rows == 8 || *o.dwu_lowrank_rows == 4,
                    "CudaBackendOptions::dwu_lowrank_rows: expected 8 or 4, found ", *o.dwu_lowrank_rows);
    return o;
  }
};

namespace cuda_detail {
template <class T>
inline cudaDataType_t data_type() {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, double>) return CUDA_R_64F;
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return CUDA_R_16BF;
  else static_assert(dependent_false<T>, "CudaBackend: unsupported scalar type");
}
inline cublasOperation_t cublas_op(Op o) { return o == Op::N ? CUBLAS_OP_N : CUBLAS_OP_T; }
/// Leading dimension as cuBLAS wants it (a single row may carry any ld).
template <class T>
inline int ld_of(const MatrixView<T>& v) { return int(std::max<index_t>({v.rows <= 1 ? v.cols : v.ld, v.cols, 1})); }
}  // namespace cuda_detail

/// GPU backend over CUDA, cuBLAS and cuSOLVER. Not copyable or movable (algorithms keep a pointer).
template <class Scalar>
class CudaBackend {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double> ||
                    std::is_same_v<Scalar, __nv_bfloat16>,
                "CudaBackend supports float, double and __nv_bfloat16 storage");

 public:
  using scalar_type = Scalar;
  using compute_type = cuda_compute_t<Scalar>;
  using memory_space = device_memory;
  /// Precision of the dense solvers (SVD, QR, Cholesky): double for double, else float.
  using solver_type = std::conditional_t<std::is_same_v<Scalar, double>, double, float>;

  /// Owning, zero-initialised, contiguous row-major device matrix.
  class Matrix {
   public:
    Matrix() = default;
    MatrixView<Scalar> view() { return {buf_.get(), rows_, cols_, cols_}; }
    ConstMatrixView<Scalar> view() const { return {buf_.get(), rows_, cols_, cols_}; }
    ConstMatrixView<Scalar> cview() const { return view(); }
    /// An owning matrix passes wherever a view of const data is expected: f(W), not f(W.view()).
    operator ConstMatrixView<Scalar>() const { return view(); }
    index_t rows() const { return rows_; }
    index_t cols() const { return cols_; }
    Scalar* data() { return buf_.get(); }
    const Scalar* data() const { return buf_.get(); }

   private:
    friend class CudaBackend;
    Matrix(index_t rows, index_t cols) : buf_(std::size_t(rows * cols)), rows_(rows), cols_(cols) {}
    DeviceBuffer<Scalar> buf_;
    index_t rows_ = 0;
    index_t cols_ = 0;
  };
  using matrix_type = Matrix;

  /// A backend on a stream of its own.
  explicit CudaBackend(CudaBackendOptions options = {}) : CudaBackend(CudaStream{options.stream_priority}, options) {}
  /// A backend that queues its work on `stream` (borrowed: the caller keeps it alive).
  CudaBackend(cudaStream_t stream, CudaBackendOptions options) : CudaBackend(CudaStream::borrow(stream), options) {}
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  cudaStream_t stream() const { return stream_.get(); }
  cublasHandle_t cublas() const { return cublas_.get(); }
  cusolverDnHandle_t cusolver() const { return cusolver_.get(); }
  const CudaBackendOptions& options() const { return options_; }
  bool tf32() const { return options_.allow_tf32; }
  /// Turns TF32 GEMMs on or off explicitly (fp32 storage only).
  void set_tf32(bool on) { options_.allow_tf32 = on; }
  /// Whether DirectWeightUpdate's fused kernels (DwuKernels<CudaBackend>, dwu_kernels.hpp) run;
  /// when off they decline and the update runs its generic loops.
  bool fused_update() const { return *options_.fused_update; }
  void set_fused_update(bool on) { options_.fused_update = on; }
  /// The GEMM algorithm policy (CudaBackendOptions::gemm_tuning) and its size threshold.
  GemmTuning gemm_tuning() const { return *options_.gemm_tuning; }
  void set_gemm_tuning(GemmTuning t) { options_.gemm_tuning = t; }
  GemmTuning gemm_tuning_bf16() const { return *options_.gemm_tuning_bf16; }
  void set_gemm_tuning_bf16(GemmTuning t) { options_.gemm_tuning_bf16 = t; }
  void set_gemm_tuning_min_flop(double flop) { options_.gemm_tuning_min_flop = flop; }
  DwuGemm dwu_gemm() const { return *options_.dwu_gemm; }
  /// CudaBackendOptions::dwu_lowrank_rows (resolved).
  int dwu_lowrank_rows() const { return *options_.dwu_lowrank_rows; }
  /// CudaBackendOptions::dwu_apply_streams (resolved).
  int dwu_apply_streams() const { return *options_.dwu_apply_streams; }
  void set_dwu_apply_streams(int n) {
    HDPISSA_REQUIRE(n >= 1 && n <= 8, "CudaBackend::set_dwu_apply_streams: expected 1 … 8, found ", n);
    options_.dwu_apply_streams = n;
  }
  /// CudaBackendOptions::dwu_apply_priority (resolved); a change takes effect when the apply
  /// streams are next created (DwuKernels::apply_begin with another stream count, or a new object).
  StreamPriority dwu_apply_priority() const { return *options_.dwu_apply_priority; }
  /// The CUDA device this backend was created on.
  int device() const { return device_; }
  void set_dwu_gemm(DwuGemm g) { options_.dwu_gemm = g; }
  /// Whether DwuKernels::apply_fused would run the sm_90a 3xTF32 kernel for an fp32-W layer whose layout fits
  /// (fp32 storage, fused_update on, TF32 off, the kernel available here and not switched off or replaced by
  /// Simt). A bf16 W storage at 2Kr ≤ 64 runs the CUDA-core kernel under Auto whatever this says
  /// (DwuKernels::lowrank_usable).
  bool dwu_gemm_kernel_active() const {
    if constexpr (!std::is_same_v<Scalar, float>) return false;
    else
      return fused_update() && dwu_gemm() != DwuGemm::Cublas && dwu_gemm() != DwuGemm::Simt && !options_.allow_tf32 &&
             cuda_kernels::sm90::dwu_gemm_sm90_supported(device_);
  }
  /// Shares a caller-owned device workspace of `bytes` ≥ 32 MiB with this backend's cuBLAS handle
  /// (cublasSetWorkspace) and its GEMM tuner's cuBLASLt calls, instead of each keeping its own: for
  /// backends and models whose GEMMs run on one stream (they never overlap), e.g. a trainer's
  /// engine. The caller keeps `p` alive while the backend runs GEMMs.
  void share_workspace(void* p, std::size_t bytes) {
    HDPISSA_CUBLAS_CHECK(cublasSetWorkspace(cublas_.get(), p, bytes));
    tuner_.set_workspace(p, bytes);
  }
  /// Every tuning decision made so far (one record per distinct problem and policy).
  const std::vector<GemmTuningRecord>& gemm_tuning_report() const { return tuner_.report(); }

  Matrix make_matrix(index_t rows, index_t cols) {
    HDPISSA_REQUIRE(rows >= 0 && cols >= 0, "make_matrix: negative extent ", shape_str(rows, cols));
    Matrix m(rows, cols);
    if (rows * cols > 0)
      HDPISSA_CUDA_CHECK(cudaMemsetAsync(m.data(), 0, std::size_t(rows * cols) * sizeof(Scalar), stream()));
    return m;
  }

  /// C ← α op(A) op(B) + β C, one cuBLAS call (β = 0 ignores C's contents).
  void gemm(Op ta, Op tb, compute_type alpha, ConstMatrixView<Scalar> A, ConstMatrixView<Scalar> B,
            compute_type beta, MatrixView<Scalar> C) {
    const index_t m = op_rows(ta, A), k = op_cols(ta, A), kb = op_rows(tb, B), n = op_cols(tb, B);
    HDPISSA_REQUIRE(k == kb && C.rows == m && C.cols == n, "gemm: op(A) is ", shape_str(m, k), ", op(B) is ",
                    shape_str(kb, n), ", C is ", shape_str(C.rows, C.cols), "; expected C ", shape_str(m, n),
                    " and matching inner dimensions");
    if (m == 0 || n == 0) return;
    if (k == 0) {
      if (beta == compute_type(0)) fill(C, compute_type(0));
      else scale(C, beta);
      return;
    }
    const auto dt = cuda_detail::data_type<Scalar>();
    // Row-major C (m, n) is column-major Cᵀ (n, m) = op(B)ᵀ op(A)ᵀ: swap the operands.
    if constexpr (std::is_same_v<Scalar, float> || std::is_same_v<Scalar, __nv_bfloat16>) {
      const GemmTuning mode = std::is_same_v<Scalar, float> ? gemm_tuning() : gemm_tuning_bf16();
      if (mode != GemmTuning::Off && 2.0 * double(m) * double(n) * double(k) >= options_.gemm_tuning_min_flop &&
          tuner_.run(stream(), cublas(), mode, compute_kind(), cuda_detail::cublas_op(tb), cuda_detail::cublas_op(ta),
                     int(n), int(m), int(k), &alpha, B.data, cuda_detail::ld_of(B), A.data, cuda_detail::ld_of(A), &beta,
                     C.data, cuda_detail::ld_of(C)))
        return;
    }
    HDPISSA_CUBLAS_CHECK(cublasGemmEx(cublas(), cuda_detail::cublas_op(tb), cuda_detail::cublas_op(ta), int(n),
                                      int(m), int(k), &alpha, B.data, dt, cuda_detail::ld_of(B), A.data, dt,
                                      cuda_detail::ld_of(A), &beta, C.data, dt, cuda_detail::ld_of(C),
                                      compute_kind(), CUBLAS_GEMM_DEFAULT));
  }

  /// C (fp32) ← α op(A) op(B) + β C with A, B in the storage type: the products summed in fp32 and
  /// the result kept in fp32, never rounded to the storage type. For mixed-precision gradient sums
  /// (a bf16 model's micro-batch adapter gradients added straight into their fp32 sums, β = 1: no
  /// bf16 scratch, no separate accumulation pass). One cublasGemmEx call (bf16 A, B; fp32 C;
  /// CUBLAS_COMPUTE_32F). For float storage it is gemm() (TF32 included when allowed).
  void gemm_f32(Op ta, Op tb, float alpha, ConstMatrixView<Scalar> A, ConstMatrixView<Scalar> B, float beta,
                MatrixView<float> C)
    requires(!std::is_same_v<Scalar, double>)
  {
    if constexpr (std::is_same_v<Scalar, float>) {
      gemm(ta, tb, alpha, A, B, beta, C);
    } else {
      const index_t m = op_rows(ta, A), k = op_cols(ta, A), kb = op_rows(tb, B), n = op_cols(tb, B);
      HDPISSA_REQUIRE(k == kb && C.rows == m && C.cols == n, "gemm_f32: op(A) is ", shape_str(m, k), ", op(B) is ",
                      shape_str(kb, n), ", C is ", shape_str(C.rows, C.cols), "; expected C ", shape_str(m, n),
                      " and matching inner dimensions");
      if (m == 0 || n == 0) return;
      if (k == 0) {
        if (beta == 0.0f) cuda_kernels::launch_map(stream(), C, cuda_kernels::FillOp<float>{0.0f});
        else cuda_kernels::launch_map(stream(), C, cuda_kernels::ScaleOp<float>{beta});
        return;
      }
      const auto dt = cuda_detail::data_type<Scalar>();
      HDPISSA_CUBLAS_CHECK(cublasGemmEx(cublas(), cuda_detail::cublas_op(tb), cuda_detail::cublas_op(ta), int(n),
                                        int(m), int(k), &alpha, B.data, dt, cuda_detail::ld_of(B), A.data, dt,
                                        cuda_detail::ld_of(A), &beta, C.data, CUDA_R_32F, cuda_detail::ld_of(C),
                                        CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
  }

  /// dst ← src, one cudaMemcpy2DAsync (both may be strided).
  void copy(ConstMatrixView<Scalar> src, MatrixView<Scalar> dst) {
    require_shape(dst, src.rows, src.cols, "copy destination");
    if (src.empty() || src.data == dst.data) return;
    const std::size_t w = std::size_t(src.cols) * sizeof(Scalar);
    HDPISSA_CUDA_CHECK(cudaMemcpy2DAsync(dst.data, std::size_t(cuda_detail::ld_of(dst)) * sizeof(Scalar), src.data,
                                         std::size_t(cuda_detail::ld_of(src)) * sizeof(Scalar), w,
                                         std::size_t(src.rows), cudaMemcpyDeviceToDevice, stream()));
  }
  void fill(MatrixView<Scalar> x, compute_type value) {
    if (x.empty()) return;
    if (value == compute_type(0)) {  // all-zero bytes are +0 in every supported type
      HDPISSA_CUDA_CHECK(cudaMemset2DAsync(x.data, std::size_t(cuda_detail::ld_of(x)) * sizeof(Scalar), 0,
                                           std::size_t(x.cols) * sizeof(Scalar), std::size_t(x.rows), stream()));
      return;
    }
    cuda_kernels::launch_map(stream(), x, cuda_kernels::FillOp<Scalar>{cuda_kernels::store<Scalar>(value)});
  }
  void scale(MatrixView<Scalar> x, compute_type alpha) {
    cuda_kernels::launch_map(stream(), x, cuda_kernels::ScaleOp<Scalar>{alpha});
  }
  void axpy(compute_type alpha, ConstMatrixView<Scalar> x, MatrixView<Scalar> y) {
    require_shape(y, x.rows, x.cols, "axpy y");
    cuda_kernels::launch_axpy(stream(), alpha, x, y);
  }
  void scale_rows(MatrixView<Scalar> x, ConstMatrixView<Scalar> d) {
    HDPISSA_REQUIRE(d.size() == x.rows, "scale_rows: expected ", x.rows, " factors, found ", d.size());
    cuda_kernels::launch_map(stream(), x, cuda_kernels::ScaleByVectorOp<Scalar>{d.data, d.rows == 1 ? 1 : d.ld, true});
  }
  void scale_cols(MatrixView<Scalar> x, ConstMatrixView<Scalar> d) {
    HDPISSA_REQUIRE(d.size() == x.cols, "scale_cols: expected ", x.cols, " factors, found ", d.size());
    cuda_kernels::launch_map(stream(), x, cuda_kernels::ScaleByVectorOp<Scalar>{d.data, d.rows == 1 ? 1 : d.ld, false});
  }
  void sqrt(MatrixView<Scalar> x) { cuda_kernels::launch_map(stream(), x, cuda_kernels::SqrtOp<Scalar>{}); }

  /// Fills X with counter_normal(seed, i·cols + j) computed on the device (fill_gaussian's hook).
  void fill_normal(MatrixView<Scalar> x, std::uint64_t seed) {
    cuda_kernels::launch_map(stream(), x, cuda_kernels::NormalOp<Scalar>{seed, x.cols});
  }

  /// Dense host (rows×cols, row-major) → view; waits for the copy.
  void upload(const Scalar* host, MatrixView<Scalar> dst) {
    if (dst.empty()) return;
    const std::size_t w = std::size_t(dst.cols) * sizeof(Scalar);
    HDPISSA_CUDA_CHECK(cudaMemcpy2DAsync(dst.data, std::size_t(cuda_detail::ld_of(dst)) * sizeof(Scalar), host, w,
                                         w, std::size_t(dst.rows), cudaMemcpyHostToDevice, stream()));
    synchronize();
  }
  /// View → dense host (rows×cols, row-major); waits for the copy.
  void download(ConstMatrixView<Scalar> src, Scalar* host) {
    if (src.empty()) return;
    const std::size_t w = std::size_t(src.cols) * sizeof(Scalar);
    HDPISSA_CUDA_CHECK(cudaMemcpy2DAsync(host, w, src.data, std::size_t(cuda_detail::ld_of(src)) * sizeof(Scalar),
                                         w, std::size_t(src.rows), cudaMemcpyDeviceToHost, stream()));
    synchronize();
  }

  bool all_finite(ConstMatrixView<Scalar> x) {
    cuda_kernels::launch_non_finite(stream(), x, flag_.get());
    HDPISSA_CUDA_CHECK(cudaMemcpyAsync(host_flag_.get(), flag_.get(), sizeof(int), cudaMemcpyDeviceToHost, stream()));
    synchronize();
    return *host_flag_.get() == 0;
  }
  /// Σ x², accumulated in double (deterministic: fixed reduction tree).
  double sum_squares(ConstMatrixView<Scalar> x) { return reduce<cuda_kernels::ReduceKind::SumSquares>(x); }
  /// EigenBackend's order-sensitive checksum Σ x_ij·(1 + ((i·cols + j) mod 1021)/1021), in double,
  /// deterministic (bit-identical inputs give bit-identical results on any run of the same build).
  double checksum(ConstMatrixView<Scalar> x) { return reduce<cuda_kernels::ReduceKind::Checksum>(x); }

  /// The generic elementwise map (TensorBackend): one kernel calling f(x0(i,j), x1(i,j), …) for
  /// every element; f's operator() must be HDPISSA_HOST_DEVICE. Every view has x0's shape.
  template <class F, class T0, class... Ts>
  void elementwise(const F& f, MatrixView<T0> x0, MatrixView<Ts>... xs) {
    static_assert(std::is_same_v<std::remove_const_t<T0>, Scalar> &&
                      (std::is_same_v<std::remove_const_t<Ts>, Scalar> && ...),
                  "CudaBackend::elementwise: every view must hold the backend's scalar type");
    (require_shape(xs, x0.rows, x0.cols, "elementwise operand"), ...);
    cuda_kernels::launch_elementwise(stream(), f, x0, xs...);
  }

  /// Frees the solvers' grow-only scratch (SVD, QR, Cholesky, Gram eigensolver; ledger part
  /// "backend.solver-scratch") after waiting for the stream: call it after a set-up phase (e.g. the
  /// adapters' SVD initialisation) so training does not keep the largest SVD's buffers. A later
  /// solver call allocates again.
  void release_solver_scratch() {
    synchronize();
    for (auto* b : {&ws_, &tau_, &qr_x_, &chol_g_, &svd_x_, &svd_u_, &svd_v_, &svd_r_, &svd_ur_}) b->reset();
    for (auto* b : {&bf_a_, &bf_u_, &bf_s_, &bf_v_}) b->reset();
    for (auto* b : {&g_c_, &g_g_, &g_w_, &g_u_, &g_v_, &g_ws_}) b->reset();
  }

  /// A (m, n) = U (m, k) diag(S (1, k)) Vt (k, n), k = min(m, n), S descending.
  void thin_svd(ConstMatrixView<Scalar> A, MatrixView<Scalar> U, MatrixView<Scalar> S, MatrixView<Scalar> Vt) {
    const index_t m = A.rows, n = A.cols, k = std::min(m, n);
    require_shape(U, m, k, "thin_svd U");
    require_shape(S, 1, k, "thin_svd S");
    require_shape(Vt, k, n, "thin_svd Vt");
    if (k == 0) return;
    if constexpr (std::is_same_v<Scalar, solver_type>) {
      svd_impl(A.data, m, n, cuda_detail::ld_of(A), U.data, cuda_detail::ld_of(U), S.data, Vt.data,
               cuda_detail::ld_of(Vt));
    } else {  // bf16 storage: solve in fp32 scratch
      float* a = solver_scratch(bf_a_, std::size_t(m * n));
      float* u = solver_scratch(bf_u_, std::size_t(m * k));
      float* s = solver_scratch(bf_s_, std::size_t(k));
      float* vt = solver_scratch(bf_v_, std::size_t(k * n));
      cuda_kernels::launch_convert(stream(), A, MatrixView<float>(a, m, n));
      svd_impl(a, m, n, int(n), u, int(k), s, vt, int(n));
      cuda_kernels::launch_convert(stream(), ConstMatrixView<float>(u, m, k), U);
      cuda_kernels::launch_convert(stream(), ConstMatrixView<float>(s, 1, k), S);
      cuda_kernels::launch_convert(stream(), ConstMatrixView<float>(vt, k, n), Vt);
    }
  }

  /// Replaces the (m, n ≤ m) matrix by the Q of its thin Householder QR (geqrf + orgqr).
  void orthonormalize(MatrixView<Scalar> Y) {
    HDPISSA_REQUIRE(Y.cols <= Y.rows, "orthonormalize: expected a tall matrix, found ", shape_str(Y.rows, Y.cols));
    if (Y.empty()) return;
    const int m = int(Y.rows), n = int(Y.cols);
    solver_type* x = solver_scratch(qr_x_, std::size_t(m) * n);
    if constexpr (std::is_same_v<Scalar, solver_type>) {
      to_colmajor(Y, x);
      householder_q(x, m, n);
      from_colmajor(x, Y);
    } else {  // bf16 storage: solve in fp32 scratch
      MatrixView<float> y32(solver_scratch(bf_a_, std::size_t(m) * n), m, n);
      cuda_kernels::launch_convert(stream(), ConstMatrixView<Scalar>(Y), y32);
      to_colmajor(y32, x);
      householder_q(x, m, n);
      from_colmajor(x, y32);
      cuda_kernels::launch_convert(stream(), ConstMatrixView<float>(y32), Y);
    }
  }

  /// Cholesky QR (G = YᵀY = RᵀR, Y ← Y R⁻¹): three level-3 calls instead of a Householder panel
  /// factorisation. Returns false, leaving Y unchanged, when G is not numerically positive definite
  /// (then use orthonormalize). Loses orthogonality as cond(Y)²·eps: call it twice (CholQR2).
  /// Waits for the stream (it reads potrf's info).
  bool orthonormalize_cholesky(MatrixView<Scalar> Y)
    requires std::is_same_v<Scalar, solver_type>
  {
    HDPISSA_REQUIRE(Y.cols <= Y.rows, "orthonormalize_cholesky: expected a tall matrix, found ",
                    shape_str(Y.rows, Y.cols));
    if (Y.empty()) return true;
    const int m = int(Y.rows), n = int(Y.cols), ldy = cuda_detail::ld_of(Y);
    solver_type* g = solver_scratch(chol_g_, std::size_t(n) * n);
    const solver_type one = 1, zero = 0;
    set_exact_math();
    // Row-major Y is column-major Yc = Yᵀ (n × m): G = Yc Ycᵀ.
    HDPISSA_CUBLAS_CHECK(cuda_detail::syrk(cublas(), CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_N, n, m, &one, Y.data, ldy,
                                           &zero, g, n));
    int lw = 0;
    HDPISSA_CUSOLVER_CHECK(cuda_detail::potrf_buffer(cusolver(), CUBLAS_FILL_MODE_UPPER, n, g, n, &lw));
    solver_type* w = workspace(lw);
    HDPISSA_CUSOLVER_CHECK(cuda_detail::potrf(cusolver(), CUBLAS_FILL_MODE_UPPER, n, g, n, w, lw, dev_info_.get()));
    if (read_info() != 0) return false;
    // Qc = Qᵀ = R⁻ᵀ Yc.
    HDPISSA_CUBLAS_CHECK(cuda_detail::trsm(cublas(), CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_UPPER, CUBLAS_OP_T,
                                           CUBLAS_DIAG_NON_UNIT, n, m, &one, g, n, Y.data, ldy));
    return true;
  }

  /// SVD of a wide C (l, n), l ≤ n, through its Gram matrix in double: G = C Cᵀ (DGEMM-class syrk
  /// on a double copy), G = Q Λ Qᵀ (cuSOLVER syevd), σ = √λ descending, U = Q (l, l),
  /// Vt = diag(1/σ) Uᵀ C (l, n). Squaring the condition number costs nothing in double for an fp32
  /// C (σ_i accurate to ~eps_fp32·σ_1); rows of Vt lose ~eps_fp32·σ_1/σ_i, and rows with
  /// σ_i ≤ 1e-12·σ_1 are zeroed. Far faster than a Jacobi SVD for the small projected matrix of
  /// a randomized SVD. fp32 storage only.
  void wide_svd_gram(ConstMatrixView<Scalar> C, MatrixView<Scalar> U, MatrixView<Scalar> S, MatrixView<Scalar> Vt)
    requires std::is_same_v<Scalar, float>
  {
    const index_t l = C.rows, n = C.cols;
    HDPISSA_REQUIRE(l <= n, "wide_svd_gram: expected a wide matrix, found ", shape_str(l, n));
    require_shape(U, l, l, "wide_svd_gram U");
    require_shape(S, 1, l, "wide_svd_gram S");
    require_shape(Vt, l, n, "wide_svd_gram Vt");
    if (l == 0) return;
    double* cd = solver_scratch(g_c_, std::size_t(l * n));
    double* g = solver_scratch(g_g_, std::size_t(l * l));
    double* lam = solver_scratch(g_w_, std::size_t(l));
    double* ud = solver_scratch(g_u_, std::size_t(l * l));
    double* vtd = solver_scratch(g_v_, std::size_t(l * n));
    cuda_kernels::launch_convert(stream(), C, MatrixView<double>(cd, l, n));
    const double one = 1, zero = 0;
    set_exact_math();
    // Row-major Cd (l, n) is column-major X = Cdᵀ (n × l): G = Xᵀ X.
    HDPISSA_CUBLAS_CHECK(cublasDsyrk(cublas(), CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_T, int(l), int(n), &one, cd, int(n),
                                     &zero, g, int(l)));
    int lw = 0;
    HDPISSA_CUSOLVER_CHECK(cuda_detail::syevd_buffer(cusolver(), CUBLAS_FILL_MODE_LOWER, int(l), g, int(l), lam, &lw));
    double* w = solver_scratch(g_ws_, std::size_t(std::max(lw, 1)));
    HDPISSA_CUSOLVER_CHECK(cuda_detail::syevd(cusolver(), CUBLAS_FILL_MODE_LOWER, int(l), g, int(l), lam, w, lw,
                                              dev_info_.get()));
    cuda_kernels::gram_sort_kernel<Scalar><<<cuda_kernels::grid_for(l * l), cuda_kernels::kThreads, 0, stream()>>>(
        g, lam, l, ud, U.data, cuda_detail::ld_of(U), S.data);
    HDPISSA_CUDA_CHECK_LAUNCH("gram_sort_kernel");
    // Column-major (n × l) X · Ud is row-major (l, n) Udᵀ Cd.
    HDPISSA_CUBLAS_CHECK(cublasDgemm(cublas(), CUBLAS_OP_N, CUBLAS_OP_N, int(n), int(l), int(l), &one, cd, int(n), ud,
                                     int(l), &zero, vtd, int(n)));
    cuda_kernels::gram_vt_kernel<Scalar><<<cuda_kernels::grid_for(l * n), cuda_kernels::kThreads, 0, stream()>>>(
        vtd, lam, l, n, Vt.data, cuda_detail::ld_of(Vt));
    HDPISSA_CUDA_CHECK_LAUNCH("gram_vt_kernel");
    const int info = read_info();
    if (info != 0)
      throw NumericError(cat("wide_svd_gram: cuSOLVER syevd failed on the ", l, "×", l, " Gram matrix (info ", info, ")"));
  }

  /// dst ← src with a storage conversion (e.g. the bf16 compute copy of an fp32 master W).
  template <class Src, class Dst>
  void convert(ConstMatrixView<Src> src, MatrixView<Dst> dst) {
    require_shape(dst, src.rows, src.cols, "convert destination");
    cuda_kernels::launch_convert(stream(), src, dst);
  }

  void synchronize() { HDPISSA_CUDA_CHECK(cudaStreamSynchronize(stream())); }

 private:
  using T = solver_type;

  CudaBackend(CudaStream s, CudaBackendOptions options)
      : options_(options.resolved()),
        stream_(std::move(s)),
        cublas_(stream_.get()),
        cusolver_(stream_.get()),
        partial_(cuda_kernels::kReduceBlocks + 1),
        flag_(1),
        dev_info_(1),
        host_flag_(1),
        host_sum_(1),
        host_info_(1) {
    HDPISSA_CUDA_CHECK(cudaGetDevice(&device_));
  }

  cublasComputeType_t compute_kind() const {
    if constexpr (std::is_same_v<Scalar, double>) return CUBLAS_COMPUTE_64F;
    else if constexpr (std::is_same_v<Scalar, float>)
      return options_.allow_tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    else return CUBLAS_COMPUTE_32F;
  }
  /// The solver-side level-3 calls (syrk, trsm, geam) never use reduced precision.
  void set_exact_math() { HDPISSA_CUBLAS_CHECK(cublasSetMathMode(cublas(), CUBLAS_DEFAULT_MATH)); }

  template <cuda_kernels::ReduceKind K>
  double reduce(ConstMatrixView<Scalar> x) {
    cuda_kernels::launch_reduce<K>(stream(), x, partial_.get(), partial_.get() + cuda_kernels::kReduceBlocks);
    HDPISSA_CUDA_CHECK(cudaMemcpyAsync(host_sum_.get(), partial_.get() + cuda_kernels::kReduceBlocks, sizeof(double),
                                       cudaMemcpyDeviceToHost, stream()));
    synchronize();
    return *host_sum_.get();
  }

  int read_info() {
    HDPISSA_CUDA_CHECK(cudaMemcpyAsync(host_info_.get(), dev_info_.get(), sizeof(int), cudaMemcpyDeviceToHost, stream()));
    synchronize();
    return *host_info_.get();
  }
  T* workspace(int lwork) { return solver_scratch(ws_, std::size_t(std::max(lwork, 1))); }

  /// Column-major copy (rows×cols, ld rows) of a row-major view (a transpose through geam).
  void to_colmajor(MatrixView<T> Y, T* x) {
    const T one = 1, zero = 0;
    set_exact_math();
    HDPISSA_CUBLAS_CHECK(cuda_detail::geam(cublas(), CUBLAS_OP_T, CUBLAS_OP_N, int(Y.rows), int(Y.cols), &one,
                                           Y.data, cuda_detail::ld_of(Y), &zero, x, int(Y.rows), x, int(Y.rows)));
  }
  void from_colmajor(const T* x, MatrixView<T> Y) {
    const T one = 1, zero = 0;
    HDPISSA_CUBLAS_CHECK(cuda_detail::geam(cublas(), CUBLAS_OP_T, CUBLAS_OP_N, int(Y.cols), int(Y.rows), &one, x,
                                           int(Y.rows), &zero, Y.data, cuda_detail::ld_of(Y), Y.data,
                                           cuda_detail::ld_of(Y)));
  }
  /// In place: column-major X (m × n, ld m) ← Q of its QR.
  void householder_q(T* x, int m, int n) {
    T* tau = solver_scratch(tau_, std::size_t(n));
    int lw1 = 0, lw2 = 0;
    HDPISSA_CUSOLVER_CHECK(cuda_detail::geqrf_buffer(cusolver(), m, n, x, m, &lw1));
    HDPISSA_CUSOLVER_CHECK(cuda_detail::orgqr_buffer(cusolver(), m, n, n, x, m, tau, &lw2));
    T* w = workspace(std::max(lw1, lw2));
    HDPISSA_CUSOLVER_CHECK(cuda_detail::geqrf(cusolver(), m, n, x, m, tau, w, lw1, dev_info_.get()));
    HDPISSA_CUSOLVER_CHECK(cuda_detail::orgqr(cusolver(), m, n, n, x, m, tau, w, lw2, dev_info_.get()));
  }

  /// SVD of the column-major tall X (p × q, ld p, p ≥ q), destroyed: Ux (p×q, ld p), s (q),
  /// Vx (q×q, ld q). QR-preconditioned when p ≥ 2q (gesvdj then works on the small R).
  void tall_svd(T* x, int p, int q, T* ux, T* s, T* vx) {
    gesvdjInfo_t prm = gesvdj_.get();
    if (p >= 2 * q) {
      T* r = solver_scratch(svd_r_, std::size_t(q) * q);
      T* ur = solver_scratch(svd_ur_, std::size_t(q) * q);
      T* tau = solver_scratch(tau_, std::size_t(q));
      int lw1 = 0, lw2 = 0, lw3 = 0;
      HDPISSA_CUSOLVER_CHECK(cuda_detail::geqrf_buffer(cusolver(), p, q, x, p, &lw1));
      HDPISSA_CUSOLVER_CHECK(cuda_detail::orgqr_buffer(cusolver(), p, q, q, x, p, tau, &lw2));
      HDPISSA_CUSOLVER_CHECK(cuda_detail::gesvdj_buffer(cusolver(), q, q, r, q, s, ur, q, vx, q, &lw3, prm));
      T* w = workspace(std::max({lw1, lw2, lw3}));
      HDPISSA_CUSOLVER_CHECK(cuda_detail::geqrf(cusolver(), p, q, x, p, tau, w, lw1, dev_info_.get()));
      cuda_kernels::launch_extract_upper(stream(), x, p, r, q, q);
      HDPISSA_CUSOLVER_CHECK(cuda_detail::orgqr(cusolver(), p, q, q, x, p, tau, w, lw2, dev_info_.get()));
      HDPISSA_CUSOLVER_CHECK(cuda_detail::gesvdj(cusolver(), q, q, r, q, s, ur, q, vx, q, w, lw3, dev_info_.get(), prm));
      check_svd_info(p, q);
      // Ux = Q Ur (column-major, exact fp32).
      const T one = 1, zero = 0;
      const auto dt = cuda_detail::data_type<T>();
      HDPISSA_CUBLAS_CHECK(cublasGemmEx(cublas(), CUBLAS_OP_N, CUBLAS_OP_N, p, q, q, &one, x, dt, p, ur, dt, q, &zero,
                                        ux, dt, p, std::is_same_v<T, double> ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F,
                                        CUBLAS_GEMM_DEFAULT));
    } else {
      int lw = 0;
      HDPISSA_CUSOLVER_CHECK(cuda_detail::gesvdj_buffer(cusolver(), p, q, x, p, s, ux, p, vx, q, &lw, prm));
      T* w = workspace(lw);
      HDPISSA_CUSOLVER_CHECK(cuda_detail::gesvdj(cusolver(), p, q, x, p, s, ux, p, vx, q, w, lw, dev_info_.get(), prm));
      check_svd_info(p, q);
    }
  }
  void check_svd_info(int p, int q) {
    const int info = read_info();
    if (info != 0)
      throw NumericError(cat("thin_svd: cuSOLVER gesvdj failed on a ", p, "×", q, " column-major matrix (info ",
                             info, info > 0 ? ": did not converge" : ": invalid argument", ")"));
  }

  /// Row-major A (m, n, lda) → U (m, k, ldu), S (k), Vt (k, n, ldvt), all in solver precision.
  void svd_impl(const T* A, index_t m, index_t n, int lda, T* U, int ldu, T* S, T* Vt, int ldvt) {
    const T one = 1, zero = 0;
    const bool tall = m >= n;
    const int p = int(tall ? m : n), q = int(tall ? n : m), k = q;
    T* x = solver_scratch(svd_x_, std::size_t(p) * q);
    T* ux = solver_scratch(svd_u_, std::size_t(p) * q);
    T* vx = solver_scratch(svd_v_, std::size_t(q) * q);
    set_exact_math();
    // Row-major A is column-major Aᵀ (n × m). Tall: X = A (transpose); wide: X = Aᵀ (copy).
    HDPISSA_CUBLAS_CHECK(cuda_detail::geam(cublas(), tall ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, p, q, &one, A,
                                           lda, &zero, x, p, x, p));
    tall_svd(x, p, q, ux, S, vx);
    // Tall: A = Ux S Vxᵀ → U = Ux, Vt = Vxᵀ. Wide: Aᵀ = Ux S Vxᵀ → U = Vx, Vt = Uxᵀ.
    // Row-major U (m, k) is column-major Uᵀ (k × m); row-major Vt (k, n) is column-major V (n × k).
    const T* u_src = tall ? ux : vx;
    const int u_ld = tall ? p : q;
    const T* v_src = tall ? vx : ux;
    const int v_ld = tall ? q : p;
    HDPISSA_CUBLAS_CHECK(cuda_detail::geam(cublas(), CUBLAS_OP_T, CUBLAS_OP_N, k, int(m), &one, u_src, u_ld, &zero,
                                           U, ldu, U, ldu));
    HDPISSA_CUBLAS_CHECK(cuda_detail::geam(cublas(), CUBLAS_OP_N, CUBLAS_OP_N, int(n), k, &one, v_src, v_ld, &zero,
                                           Vt, ldvt, Vt, ldvt));
  }

  CudaBackendOptions options_;
  CudaStream stream_;
  CublasHandle cublas_;
  CusolverHandle cusolver_;
  GesvdjParams gesvdj_;
  DeviceBuffer<double> partial_;
  DeviceBuffer<int> flag_, dev_info_;
  PinnedBuffer<int> host_flag_;
  PinnedBuffer<double> host_sum_;
  PinnedBuffer<int> host_info_;
  // Solver scratch: grown on first use, reused afterwards, freed by release_solver_scratch().
  DeviceBuffer<T> ws_, tau_, qr_x_, chol_g_, svd_x_, svd_u_, svd_v_, svd_r_, svd_ur_;
  DeviceBuffer<float> bf_a_, bf_u_, bf_s_, bf_v_;
  DeviceBuffer<double> g_c_, g_g_, g_w_, g_u_, g_v_, g_ws_;
  template <class U>
  static U* solver_scratch(DeviceBuffer<U>& b, std::size_t n) {
    memory::PartScope part("backend.solver-scratch");
    return b.reserve(n);
  }
  CudaGemmTuner tuner_;
  int device_ = 0;
};

static_assert(TensorBackend<CudaBackend<float>>);
static_assert(TensorBackend<CudaBackend<double>>);
static_assert(TensorBackend<CudaBackend<__nv_bfloat16>>);

}  // namespace hdpissa

// The Direct Weight Update's fused kernels specialise DwuKernels<CudaBackend<S>>: included here so
// that every translation unit that sees CudaBackend also sees the specialisation.
#include "hdpissa/backend/cuda/dwu_kernels.hpp"
