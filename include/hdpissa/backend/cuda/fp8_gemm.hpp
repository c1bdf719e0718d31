#pragma once
/// \file fp8_gemm.hpp
/// CudaFp8Gemm: the FP8 GEMM of Hopper's tensor cores through cuBLASLt, in the library's row-major
/// terms:
///
///     D (M, N) ← α · a_scale · b_scale · A (M, K) · B (N, K)ᵀ + β · D       (D in bf16)
///
/// A and B are FP8 (E4M3 or E5M2, not both E5M2), both K-contiguous (row-major with K the column):
/// cuBLASLt's FP8 kernels on sm_89 / sm_90 need the "TN" form, which is exactly this one seen
/// column-major (Dᵀ (N, M) = op_T(B) · op_N(A)). `a_scale` / `b_scale` are DEVICE pointers to the
/// per-tensor dequantisation scales (fp8_quantize.hpp writes them), passed as
/// CUBLASLT_MATMUL_DESC_B/A_SCALE_POINTER, so a call never synchronises. Each scale pointer must be
/// 16-byte aligned, like the operands: cuBLASLt's heuristic does not see the pointers, but
/// cublasLtMatmul refuses (NOT_SUPPORTED) a scale at a 4-byte offset (see kScaleAlignment). Accumulation is fp32 with
/// cuBLASLt's default (no FAST_ACCUM: the partial sums are promoted, not kept in the tensor core's
/// reduced-precision accumulator). β ≠ 0 reads D as C (bf16).
///
/// The workflow follows the usual can_implement → run form: can_implement() names the first
/// requirement a problem breaks (empty: none), run() returns false — having run nothing — when
/// cuBLASLt proposes no algorithm for it, so the caller can take another path and say so. Every
/// distinct problem (shapes, leading dimensions, formats, β = 0 or not) asks the heuristic once,
/// for algorithms that accept 16-byte aligned operands (what can_implement requires; Hopper's
/// TMA-based kernels need no more); its plan (descriptors, algorithm) is cached. The choice thus
/// depends on the shapes only, never on where the buffers happen to lie: the same problem runs the
/// same algorithm (the same bits) in every pass, recompute and process. The workspace is allocated in
/// the constructor: run() never allocates device memory. Not thread-safe (like the backends).

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <string>
#include <tuple>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/backend/cuda/cuda_handles.hpp"
#include "hdpissa/backend/cuda/fp8_quantize.hpp"

namespace hdpissa {

/// cuBLASLt FP8 GEMM with device-side per-tensor scales (see the file comment).
class CudaFp8Gemm {
 public:
  /// The alignment, in bytes, that run() requires of the operands and of the two scale pointers.
  static constexpr std::size_t kScaleAlignment = 16;

  /// `workspace_bytes`: cuBLASLt's workspace (32 MiB is what NVIDIA recommends on Hopper).
  explicit CudaFp8Gemm(std::size_t workspace_bytes = std::size_t(32) << 20) : ws_(workspace_bytes) {
    HDPISSA_CUBLAS_CHECK(cublasLtCreate(&lt_));
  }
  CudaFp8Gemm(const CudaFp8Gemm&) = delete;
  CudaFp8Gemm& operator=(const CudaFp8Gemm&) = delete;
  ~CudaFp8Gemm() {
    for (auto& [k, p] : plans_) p.release();
    if (lt_) (void)cublasLtDestroy(lt_);
  }

  /// Why (M, N, K, lda, ldb, ldd, formats, pointers) cannot run as an FP8 GEMM here; empty if it
  /// can (the requirements of cuBLASLt's FP8 kernels: K and the FP8 leading dimensions multiples of
  /// 16, D's a multiple of 8, i.e. 16-byte rows; 16-byte aligned pointers; not E5M2 × E5M2).
  /// Null pointers are not checked (shape-only question).
  static std::string can_implement(index_t M, index_t N, index_t K, Fp8Format fa, index_t lda, Fp8Format fb,
                                   index_t ldb, index_t ldd, const void* A = nullptr, const void* B = nullptr,
                                   const void* D = nullptr) {
    if (M < 1 || N < 1 || K < 1) return cat("empty problem M ", M, " N ", N, " K ", K);
    if (fa == Fp8Format::E5M2 && fb == Fp8Format::E5M2) return "E5M2 x E5M2 is not an FP8 tensor-core product";
    if (K % 16 != 0) return cat("K = ", K, " is not a multiple of 16");
    if (N % 16 != 0) return cat("N = ", N, " is not a multiple of 16");
    if (lda < K || lda % 16 != 0) return cat("lda = ", lda, ": expected a multiple of 16 >= K = ", K);
    if (ldb < K || ldb % 16 != 0) return cat("ldb = ", ldb, ": expected a multiple of 16 >= K = ", K);
    if (ldd < N || ldd % 8 != 0) return cat("ldd = ", ldd, ": expected a multiple of 8 >= N = ", N);
    for (const void* p : {A, B, D})
      if (p && reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return "an operand is not 16-byte aligned";
    return {};
  }

  /// D (M, N, ldd; bf16) ← α·(*a_scale)·(*b_scale)·A (M, K, lda)·B (N, K, ldb)ᵀ + β·D on stream `s`.
  /// Throws (std::invalid_argument via HDPISSA_REQUIRE) when can_implement() fails; returns false,
  /// running nothing, when cuBLASLt has no algorithm for the problem; true when it ran.
  bool run(cudaStream_t s, index_t M, index_t N, index_t K, Fp8Format fa, const void* A, index_t lda,
           const float* a_scale, Fp8Format fb, const void* B, index_t ldb, const float* b_scale, float alpha,
           float beta, __nv_bfloat16* D, index_t ldd) {
    const std::string why = can_implement(M, N, K, fa, lda, fb, ldb, ldd, A, B, D);
    HDPISSA_REQUIRE(why.empty(), "CudaFp8Gemm: ", why);
    HDPISSA_REQUIRE(reinterpret_cast<std::uintptr_t>(a_scale) % kScaleAlignment == 0 &&
                        reinterpret_cast<std::uintptr_t>(b_scale) % kScaleAlignment == 0,
                    "CudaFp8Gemm: the scale pointers must be ", kScaleAlignment, "-byte aligned (found offsets ",
                    reinterpret_cast<std::uintptr_t>(a_scale) % kScaleAlignment, " and ",
                    reinterpret_cast<std::uintptr_t>(b_scale) % kScaleAlignment, ")");
    const Key key{M, N, K, lda, ldb, ldd, int(fa), int(fb), beta == 0.0f};
    auto it = plans_.find(key);
    if (it == plans_.end()) it = plans_.emplace(key, make_plan(key)).first;
    Plan& p = it->second;
    if (!p.ok) return false;
    // cuBLASLt's A is our B (op T), its B our A (op N): the scales swap accordingly.
    HDPISSA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &b_scale,
                                                        sizeof(b_scale)));
    HDPISSA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &a_scale,
                                                        sizeof(a_scale)));
    const cublasStatus_t st = cublasLtMatmul(lt_, p.desc, &alpha, B, p.la, A, p.lb, &beta, D, p.ld, D, p.ld, &p.algo,
                                             ws_.get(), ws_.size(), s);
    if (st == CUBLAS_STATUS_NOT_SUPPORTED) {  // the heuristic's algorithm refused at run time: the caller's
      p.ok = false;                           // fallback takes this problem from now on (and reports it)
      return false;
    }
    HDPISSA_CUBLAS_CHECK(st);
    return true;
  }

  /// Problems seen so far, and how many of them have no cuBLASLt algorithm.
  [[nodiscard]] std::size_t problems() const { return plans_.size(); }
  [[nodiscard]] std::size_t problems_without_algorithm() const {
    std::size_t n = 0;
    for (const auto& [k, p] : plans_) n += !p.ok;
    return n;
  }

 private:
  // M, N, K, lda, ldb, ldd, fa, fb, beta == 0
  using Key = std::tuple<index_t, index_t, index_t, index_t, index_t, index_t, int, int, bool>;
  struct Plan {
    bool ok = false;
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
    cublasLtMatmulAlgo_t algo{};
    void release() noexcept {
      if (ld) (void)cublasLtMatrixLayoutDestroy(ld);
      if (lb) (void)cublasLtMatrixLayoutDestroy(lb);
      if (la) (void)cublasLtMatrixLayoutDestroy(la);
      if (desc) (void)cublasLtMatmulDescDestroy(desc);
      ld = lb = la = nullptr;
      desc = nullptr;
    }
  };
  Plan make_plan(const Key& k) {
    const auto [M, N, K, lda, ldb, ldd, fa, fb, beta0] = k;
    (void)beta0;
    Plan p;
    const cublasOperation_t opT = CUBLAS_OP_T, opN = CUBLAS_OP_N;
    HDPISSA_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    HDPISSA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opT, sizeof(opT)));
    HDPISSA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opN, sizeof(opN)));
    // Placeholder scale pointers so the heuristic sees a scaled FP8 problem (run() sets the real ones).
    const float* dummy = reinterpret_cast<const float*>(ws_.get());
    HDPISSA_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &dummy, sizeof(dummy)));
    HDPISSA_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &dummy, sizeof(dummy)));
    // Column-major: cuBLASLt A = our B stored (K, N) ld ldb; its B = our A stored (K, M) ld lda;
    // D = ours transposed, (N, M) ld ldd.
    HDPISSA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.la, fp8_cuda_type(Fp8Format(fb)), std::uint64_t(K),
                                                    std::uint64_t(N), std::int64_t(ldb)));
    HDPISSA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.lb, fp8_cuda_type(Fp8Format(fa)), std::uint64_t(K),
                                                    std::uint64_t(M), std::int64_t(lda)));
    HDPISSA_CUBLAS_CHECK(
        cublasLtMatrixLayoutCreate(&p.ld, CUDA_R_16BF, std::uint64_t(N), std::uint64_t(M), std::int64_t(ldd)));
    cublasLtMatmulPreference_t pref = nullptr;
    HDPISSA_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    const std::size_t ws = ws_.size();
    const std::uint32_t a_al = 16, b_al = 16, d_al = 16;  // can_implement's requirement
    cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws));
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &a_al, sizeof(a_al));
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &b_al, sizeof(b_al));
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &d_al, sizeof(d_al));
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &d_al, sizeof(d_al));
    cublasLtMatmulHeuristicResult_t h{};
    int found = 0;
    if (st == CUBLAS_STATUS_SUCCESS)
      st = cublasLtMatmulAlgoGetHeuristic(lt_, p.desc, p.la, p.lb, p.ld, p.ld, pref, 1, &h, &found);
    (void)cublasLtMatmulPreferenceDestroy(pref);
    // No algorithm (NOT_SUPPORTED or zero results): the plan stays !ok and run() returns false.
    if (st == CUBLAS_STATUS_SUCCESS && found > 0 && h.state == CUBLAS_STATUS_SUCCESS) {
      p.algo = h.algo;
      p.ok = true;
    } else if (st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED) {
      p.release();
      HDPISSA_CUBLAS_CHECK(st);
    }
    return p;
  }

  cublasLtHandle_t lt_ = nullptr;
  DeviceBuffer<unsigned char> ws_;
  std::map<Key, Plan> plans_;
};

}  // namespace hdpissa
