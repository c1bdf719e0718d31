#pragma once
/// \file gemm_tuner.hpp
/// CudaGemmTuner: picks, once per distinct GEMM problem, the fastest cuBLASLt algorithm for an fp32
/// (or TF32) or a bf16 GEMM (bf16 A, B, C; fp32 accumulation) and caches it, so that repeated GEMMs
/// of the same shape — the Direct Weight Update's W ← W − f·L R with inner dimension 2Kr and β = 1,
/// for the ~3 distinct shapes of a transformer; a bf16 model's linears, e.g. the M = 64 weight GEMMs
/// of a decode step — run with it.
///
/// The search (first call of a problem; setup cost, allocates scratch and waits for the stream):
///  - scratch operands with the real call's shape, leading dimensions and pointer alignment (class
///    4…256 B), filled with counter-Gaussian values;
///  - the reference is cublasGemmEx (what CudaBackend runs without tuning), timed like the rest;
///  - candidates: cublasLtMatmulAlgoGetHeuristic's top results (up to 32; tiles, stages, split-K,
///    swizzle as the library proposes) plus, where the algorithm supports it, each one with its CTA
///    swizzling flipped;
///  - GemmTuning::BitExact (default) accepts only candidates whose result equals cublasGemmEx's BIT
///    FOR BIT on the scratch problem at two α (the call's and a generic one): then the choice, which
///    depends on timings, cannot change any result — runs, processes and replicas stay identical to
///    the untuned backend. GemmTuning::Fastest accepts every candidate that runs (results then
///    differ in rounding from cublasGemmEx and, because the choice is timed, possibly between
///    processes: never use it where replicas must agree bit for bit).
///  - The winner must beat the reference by more than 1%, else cublasGemmEx stays.
/// Every decision is recorded in report() (shape, reference / chosen / best-of-all times, numbers of
/// candidates and of bit-identical ones, the chosen algorithm's id, tile, stages, split-K, swizzle).
/// If the scratch cannot be allocated the problem is marked untuned (cublasGemmEx) and the error
/// cleared. At most kMaxNPerShape distinct n are tuned per problem otherwise equal (m, k, ops,
/// leading dimensions, alignment classes, β = 0 or not, types): a model's linears see one n per
/// micro-batch or decode batch, but a prefill's row count varies from call to call, and those calls
/// must not each pay a search (the rest run cublasGemmEx). A problem first met while its stream is
/// being captured into a CUDA graph is not tuned then (the search allocates and waits): that call
/// runs cublasGemmEx, and a later call outside a capture tunes it. A problem tuned before the
/// capture is captured with its cuBLASLt algorithm.

#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/backend/cuda/cuda_handles.hpp"
#include "hdpissa/backend/cuda/kernels.cuh"

namespace hdpissa {

/// How CudaBackend<float> chooses the algorithm of its large GEMMs (see gemm_tuner.hpp).
enum class GemmTuning {
  Off,       ///< always cublasGemmEx with CUBLAS_GEMM_DEFAULT
  BitExact,  ///< the fastest cuBLASLt algorithm whose results equal cublasGemmEx's bit for bit
  Fastest,   ///< the fastest cuBLASLt algorithm (rounding may differ; choice may differ per process)
};
inline const char* gemm_tuning_name(GemmTuning t) {
  return t == GemmTuning::Off ? "off" : t == GemmTuning::BitExact ? "bit-exact" : "fastest";
}

/// One tuned problem (column-major terms, as cuBLAS sees it: C (m×n) = op(A) (m×k) · op(B) (k×n)).
struct GemmTuningRecord {
  GemmTuning mode = GemmTuning::Off;
  bool tf32 = false;
  bool bf16 = false;  ///< bf16 A, B, C (fp32 accumulation); else fp32 storage
  char ta = 'N', tb = 'N';
  long m = 0, n = 0, k = 0, lda = 0, ldb = 0, ldc = 0;
  bool beta_zero = false;
  double reference_ms = 0;  ///< cublasGemmEx
  double chosen_ms = 0;     ///< what runs from now on (= reference_ms when cublasGemmEx stays)
  double best_any_ms = 0;   ///< the fastest candidate, bit-identical or not
  int candidates = 0;       ///< cuBLASLt candidates that ran
  int bit_identical = 0;    ///< of which equal cublasGemmEx bit for bit
  bool uses_lt = false;     ///< false: cublasGemmEx stays
  int algo_id = -1, tile = -1, stages = -1, split_k = -1, swizzle = -1;
  std::string note;         ///< why untuned, when it is
  std::string str() const;
};

inline std::string GemmTuningRecord::str() const {
  return cat(gemm_tuning_name(mode), bf16 ? " bf16" : tf32 ? " tf32" : " fp32", " C(", m, "x", n, ") k=", k, " op ", ta, tb, " ld ", lda,
             "/", ldb, "/", ldc, beta_zero ? " beta=0" : " beta!=0", ": cublasGemmEx ", reference_ms, " ms, chosen ",
             chosen_ms, " ms (", uses_lt ? "cuBLASLt algo " + std::to_string(algo_id) + " tile " + std::to_string(tile) +
                                               " stages " + std::to_string(stages) + " splitK " +
                                               std::to_string(split_k) + " swizzle " + std::to_string(swizzle)
                                         : std::string("cublasGemmEx"),
             "), best of all ", best_any_ms, " ms; ", candidates, " candidates, ", bit_identical, " bit-identical",
             note.empty() ? "" : "; ", note);
}

namespace cuda_kernels {
/// flag ← 1 if any word (W: 16 or 32 bits) of a and b differ (n words).
template <class W>
__global__ void bits_differ_kernel(const W* a, const W* b, std::size_t n, int* flag) {
  bool d = false;
  for (std::size_t i = std::size_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x)
    d |= a[i] != b[i];
  if (__syncthreads_or(d) && threadIdx.x == 0) *flag = 1;
}
}  // namespace cuda_kernels

/// Per-backend cache of tuned fp32/TF32/bf16 GEMM algorithms (not thread-safe, like the backend).
class CudaGemmTuner {
 public:
  CudaGemmTuner() = default;
  CudaGemmTuner(const CudaGemmTuner&) = delete;
  CudaGemmTuner& operator=(const CudaGemmTuner&) = delete;
  ~CudaGemmTuner() {
    for (auto& [k, e] : cache_) e.release();
    if (lt_) (void)cublasLtDestroy(lt_);
  }

  /// Column-major C (m×n, ldc) ← α op(A) op(B) + β C with compute type `ct`, in fp32 storage
  /// (T = float) or bf16 storage (T = __nv_bfloat16: A, B and C bf16, α, β and the accumulation
  /// fp32). Runs it with a tuned cuBLASLt algorithm and returns true, or returns false (the caller
  /// then runs cublasGemmEx with the same types) when the problem is untuned or cublasGemmEx was
  /// fastest.
  template <class T>
  bool run(cudaStream_t s, cublasHandle_t h, GemmTuning mode, cublasComputeType_t ct, cublasOperation_t ta,
           cublasOperation_t tb, int m, int n, int k, const float* alpha, const T* A, int lda, const T* B, int ldb,
           const float* beta, T* C, int ldc) {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>, "CudaGemmTuner: fp32 or bf16");
    if (mode == GemmTuning::Off) return false;
    const Key key{int(mode), int(ct), int(ta), int(tb), m, n, k, lda, ldb, ldc, align_of(A), align_of(B), align_of(C),
                  *beta == 0.f, int(data_type<T>())};
    auto it = cache_.find(key);
    if (it == cache_.end()) {
      if (cache_.size() >= kMaxEntries) return false;
      Key shape = key;  // the problem without its n: every new key of one shape differs in n only
      std::get<5>(shape) = 0;
      if (auto sh = n_per_shape_.find(shape); sh != n_per_shape_.end() && sh->second >= kMaxNPerShape) return false;
      cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
      if (cudaStreamIsCapturing(s, &cap) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
      }
      if (cap != cudaStreamCaptureStatusNone) return false;  // tuned by a later call outside the capture
      ++n_per_shape_[shape];
      it = cache_.emplace(key, Entry{}).first;
      tune<T>(s, h, key, *alpha, *beta, it->second);
    }
    Entry& e = it->second;
    if (!e.use_lt) return false;
    HDPISSA_CUBLAS_CHECK(cublasLtMatmul(lt_, e.op, alpha, A, e.a, B, e.b, beta, C, e.c, C, e.c, &e.algo, ws(),
                                        e.ws, s));
    return true;
  }

  const std::vector<GemmTuningRecord>& report() const { return report_; }

  /// The cuBLASLt workspace every tuned call gets, in bytes (its own is allocated at the first tuning).
  static constexpr std::size_t kWorkspace = std::size_t(32) << 20;
  /// Uses `p` (≥ kWorkspace bytes, caller-owned, alive while this tuner runs GEMMs) instead of a
  /// workspace of its own: for GEMMs on one stream shared with other users of `p` (they never
  /// overlap). Frees its own workspace if it had one.
  void set_workspace(void* p, std::size_t bytes) {
    HDPISSA_REQUIRE(p != nullptr && bytes >= kWorkspace, "CudaGemmTuner::set_workspace: expected at least ",
                    kWorkspace, " bytes, found ", bytes, p ? "" : " (null)");
    ext_ws_ = static_cast<char*>(p);
    ws_.reset();
  }

 private:
  static constexpr std::size_t kMaxEntries = 256;
  static constexpr int kMaxNPerShape = 4;
  char* ws() { return ext_ws_ ? ext_ws_ : ws_.get(); }
  static constexpr int kRequested = 32;

  using Key = std::tuple<int, int, int, int, int, int, int, int, int, int, int, int, int, bool, int>;
  template <class T>
  static constexpr cudaDataType_t data_type() {
    return std::is_same_v<T, float> ? CUDA_R_32F : CUDA_R_16BF;
  }
  struct Entry {
    bool use_lt = false;
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
    cublasLtMatmulAlgo_t algo{};
    std::size_t ws = 0;
    void release() noexcept {
      if (op) (void)cublasLtMatmulDescDestroy(op);
      if (a) (void)cublasLtMatrixLayoutDestroy(a);
      if (b) (void)cublasLtMatrixLayoutDestroy(b);
      if (c) (void)cublasLtMatrixLayoutDestroy(c);
      op = nullptr;
      a = b = c = nullptr;
    }
  };

  /// Alignment class of a pointer: the largest power of two ≤ 256 dividing it.
  static int align_of(const void* p) {
    const auto v = reinterpret_cast<std::uintptr_t>(p);
    int a = 256;
    while (a > 1 && v % std::uintptr_t(a) != 0) a >>= 1;
    return a;
  }
  static int cfg(const cublasLtMatmulAlgo_t& algo, cublasLtMatmulAlgoConfigAttributes_t attr) {
    std::uint32_t v = 0;  // every attribute read here fits 32 bits (int32/uint32/uint16 read as such)
    std::size_t written = 0;
    if (cublasLtMatmulAlgoConfigGetAttribute(&algo, attr, &v, sizeof(v), &written) != CUBLAS_STATUS_SUCCESS) return -1;
    if (written == 2) v &= 0xffffu;
    return int(v);
  }

  template <class T>
  void tune(cudaStream_t s, cublasHandle_t h, const Key& key, float alpha, float beta, Entry& e) {
    constexpr cudaDataType_t dt = data_type<T>();
    // Plain variables (not structured bindings: they are captured by the lambdas below).
    const auto mode = GemmTuning(std::get<0>(key));
    const auto ct = cublasComputeType_t(std::get<1>(key));
    const auto ta = cublasOperation_t(std::get<2>(key)), tb = cublasOperation_t(std::get<3>(key));
    const int m = std::get<4>(key), n = std::get<5>(key), k = std::get<6>(key);
    const int lda = std::get<7>(key), ldb = std::get<8>(key), ldc = std::get<9>(key);
    const int al_a = std::get<10>(key), al_b = std::get<11>(key), al_c = std::get<12>(key);
    const bool beta_zero = std::get<13>(key);
    GemmTuningRecord rec;
    rec.mode = mode;
    rec.tf32 = ct == CUBLAS_COMPUTE_32F_FAST_TF32;
    rec.bf16 = dt == CUDA_R_16BF;
    rec.ta = ta == CUBLAS_OP_N ? 'N' : 'T';
    rec.tb = tb == CUBLAS_OP_N ? 'N' : 'T';
    rec.m = m, rec.n = n, rec.k = k, rec.lda = lda, rec.ldb = ldb, rec.ldc = ldc, rec.beta_zero = beta_zero;
    // Stored extents (column-major): A is m×k (N) or k×m (T) with ld lda; B k×n or n×k; C m×n.
    const std::size_t a_cols = std::size_t(ta == CUBLAS_OP_N ? k : m), b_cols = std::size_t(tb == CUBLAS_OP_N ? n : k);
    const std::size_t na = std::size_t(lda) * a_cols, nb = std::size_t(ldb) * b_cols, nc = std::size_t(ldc) * n;
    // Scratch: A, B, C0 (the input C), Wk (a candidate's output), Ref[2] (cublasGemmEx at two α).
    auto padded = [](std::size_t elems) { return (elems * sizeof(T) + 1023) / 1024 * 1024; };
    const std::size_t total = padded(na) + padded(nb) + 4 * padded(nc) + 6 * 256;
    void* raw = nullptr;
    if (cudaMalloc(&raw, total) != cudaSuccess) {
      (void)cudaGetLastError();
      rec.note = cat("untuned: no room for ", total >> 20, " MiB of tuning scratch");
      report_.push_back(rec);
      return;
    }
    Scratch guard{raw};
    char* cur = static_cast<char*>(raw);
    auto carve = [&](std::size_t elems, int align) {  // same alignment class as the real operand
      char* p = cur + (align >= 256 ? 0 : align);
      cur += padded(elems) + 256;
      return reinterpret_cast<T*>(p);
    };
    T* dA = carve(na, al_a);
    T* dB = carve(nb, al_b);
    T* dC0 = carve(nc, al_c);
    T* dW = carve(nc, al_c);
    T* dRef[2] = {carve(nc, al_c), carve(nc, al_c)};
    const float alphas[2] = {alpha, 0.78539818f};  // the call's α and a generic one (exposes epilogue rounding)
    const std::size_t elems[3] = {na, nb, nc};
    T* fills[3] = {dA, dB, dC0};
    for (int i = 0; i < 3; ++i)
      if (elems[i] > 0)
        cuda_kernels::launch_map(s, MatrixView<T>(fills[i], 1, index_t(elems[i])),
                                 cuda_kernels::NormalOp<T>{std::uint64_t(7919 + i), index_t(elems[i])});
    if (!lt_) HDPISSA_CUBLAS_CHECK(cublasLtCreate(&lt_));
    if (!ext_ws_) {
      memory::PartScope part("cublaslt.workspace");
      ws_.reserve(kWorkspace);
    }
    {
      memory::PartScope part("cublaslt.tuner");  // the tuner's 4-byte verdict flag
      flag_.reserve(1);
    }
    if (!host_flag_.get()) host_flag_ = PinnedBuffer<int>(1);
    EventPair ev;

    auto reference = [&](float a, T* out) {
      HDPISSA_CUBLAS_CHECK(cublasGemmEx(h, ta, tb, m, n, k, &a, dA, dt, lda, dB, dt, ldb, &beta, out, dt, ldc, ct,
                                        CUBLAS_GEMM_DEFAULT));
    };
    for (int i = 0; i < 2; ++i) {
      HDPISSA_CUDA_CHECK(cudaMemcpyAsync(dRef[i], dC0, nc * sizeof(T), cudaMemcpyDeviceToDevice, s));
      reference(alphas[i], dRef[i]);
    }
    // Median-free but robust: best average of two windows of 3 runs after one warm-up.
    auto time_it = [&](auto&& launch) {
      if (!launch()) return -1.0;
      double best = 1e30;
      for (int w = 0; w < 2; ++w) {
        HDPISSA_CUDA_CHECK(cudaEventRecord(ev.a, s));
        for (int r = 0; r < 3; ++r)
          if (!launch()) return -1.0;
        HDPISSA_CUDA_CHECK(cudaEventRecord(ev.b, s));
        HDPISSA_CUDA_CHECK(cudaEventSynchronize(ev.b));
        float ms = 0;
        HDPISSA_CUDA_CHECK(cudaEventElapsedTime(&ms, ev.a, ev.b));
        best = std::min(best, double(ms) / 3);
      }
      return best;
    };
    rec.reference_ms = time_it([&] { reference(alpha, dW); return true; });

    // cuBLASLt problem description (kept for the real runs if a candidate wins).
    HDPISSA_CUBLAS_CHECK(cublasLtMatmulDescCreate(&e.op, ct, CUDA_R_32F));
    HDPISSA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    HDPISSA_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(e.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    HDPISSA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e.a, dt, ta == CUBLAS_OP_N ? m : k, ta == CUBLAS_OP_N ? k : m,
                                                    lda));
    HDPISSA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e.b, dt, tb == CUBLAS_OP_N ? k : n, tb == CUBLAS_OP_N ? n : k,
                                                    ldb));
    HDPISSA_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&e.c, dt, m, n, ldc));
    cublasLtMatmulPreference_t pref = nullptr;
    HDPISSA_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    PrefGuard pg{pref};
    const std::uint64_t wsz = kWorkspace;
    const std::uint32_t aa = std::uint32_t(al_a), ab = std::uint32_t(al_b), ac = std::uint32_t(al_c);
    HDPISSA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsz, sizeof(wsz)));
    HDPISSA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof(aa)));
    HDPISSA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof(ab)));
    HDPISSA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof(ac)));
    HDPISSA_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof(ac)));
    // Fixed arrays, not std::vector: nvcc's front end crashes instantiating std::_Destroy on these
    // anonymous-struct typedefs.
    cublasLtMatmulHeuristicResult_t res[kRequested] = {};
    int found = 0;
    if (cublasLtMatmulAlgoGetHeuristic(lt_, e.op, e.a, e.b, e.c, e.c, pref, kRequested, res, &found) !=
        CUBLAS_STATUS_SUCCESS)
      found = 0;
    cublasLtMatmulAlgo_t cands[2 * kRequested] = {};
    std::size_t ncand = 0;
    for (int i = 0; i < found; ++i) {
      if (res[std::size_t(i)].state != CUBLAS_STATUS_SUCCESS) continue;
      cands[ncand++] = res[std::size_t(i)].algo;
      int sw = 0;
      std::size_t written = 0;
      if (cublasLtMatmulAlgoCapGetAttribute(&res[std::size_t(i)].algo, CUBLASLT_ALGO_CAP_CTA_SWIZZLING_SUPPORT, &sw,
                                            sizeof(sw), &written) == CUBLAS_STATUS_SUCCESS && sw) {
        cublasLtMatmulAlgo_t alt = res[std::size_t(i)].algo;
        const std::uint32_t flipped = cfg(alt, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING) == 1 ? 0u : 1u;
        if (cublasLtMatmulAlgoConfigSetAttribute(&alt, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING, &flipped, sizeof(flipped)) ==
            CUBLAS_STATUS_SUCCESS)
          cands[ncand++] = alt;
      }
    }
    auto lt_run = [&](const cublasLtMatmulAlgo_t& algo, std::size_t ws, float a, T* out) {
      return cublasLtMatmul(lt_, e.op, &a, dA, e.a, dB, e.b, &beta, out, e.c, out, e.c, &algo, this->ws(), ws, s) ==
             CUBLAS_STATUS_SUCCESS;
    };
    double best_exact = 1e30, best_any = 1e30;
    int best_exact_i = -1, best_any_i = -1;
    std::vector<std::size_t> wss(ncand, 0);
    for (std::size_t i = 0; i < ncand; ++i) {
      cublasLtMatmulHeuristicResult_t chk{};
      if (cublasLtMatmulAlgoCheck(lt_, e.op, e.a, e.b, e.c, e.c, &cands[i], &chk) != CUBLAS_STATUS_SUCCESS ||
          chk.state != CUBLAS_STATUS_SUCCESS || chk.workspaceSize > kWorkspace)
        continue;
      wss[i] = chk.workspaceSize;
      bool same = true, ran = true;
      for (int j = 0; j < 2 && ran; ++j) {
        HDPISSA_CUDA_CHECK(cudaMemcpyAsync(dW, dC0, nc * sizeof(T), cudaMemcpyDeviceToDevice, s));
        ran = lt_run(cands[i], wss[i], alphas[j], dW);
        if (ran) same = same && equal_bits(s, dW, dRef[j], nc);
      }
      if (!ran) continue;
      const double ms = time_it([&] { return lt_run(cands[i], wss[i], alpha, dW); });
      if (ms < 0) continue;
      ++rec.candidates;
      if (same) ++rec.bit_identical;
      if (ms < best_any) best_any = ms, best_any_i = int(i);
      if (same && ms < best_exact) best_exact = ms, best_exact_i = int(i);
    }
    rec.best_any_ms = std::min(best_any, rec.reference_ms);
    const int pick = mode == GemmTuning::Fastest ? best_any_i : best_exact_i;
    const double pick_ms = mode == GemmTuning::Fastest ? best_any : best_exact;
    if (pick >= 0 && pick_ms < 0.99 * rec.reference_ms) {
      e.use_lt = true;
      e.algo = cands[std::size_t(pick)];
      e.ws = wss[std::size_t(pick)];
      rec.uses_lt = true;
      rec.chosen_ms = pick_ms;
      rec.algo_id = cfg(e.algo, CUBLASLT_ALGO_CONFIG_ID);
      rec.tile = cfg(e.algo, CUBLASLT_ALGO_CONFIG_TILE_ID);
      rec.stages = cfg(e.algo, CUBLASLT_ALGO_CONFIG_STAGES_ID);
      rec.split_k = cfg(e.algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM);
      rec.swizzle = cfg(e.algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING);
    } else {
      rec.chosen_ms = rec.reference_ms;
      e.release();
    }
    HDPISSA_CUDA_CHECK(cudaStreamSynchronize(s));  // scratch is freed next
    report_.push_back(rec);
  }

  template <class T>
  bool equal_bits(cudaStream_t s, const T* a, const T* b, std::size_t n) {
    using W = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint16_t>;
    static_assert(sizeof(T) == sizeof(W));
    HDPISSA_CUDA_CHECK(cudaMemsetAsync(flag_.get(), 0, sizeof(int), s));
    cuda_kernels::bits_differ_kernel<W><<<1024, 256, 0, s>>>(reinterpret_cast<const W*>(a),
                                                             reinterpret_cast<const W*>(b), n, flag_.get());
    HDPISSA_CUDA_CHECK_LAUNCH("bits_differ_kernel");
    HDPISSA_CUDA_CHECK(cudaMemcpyAsync(host_flag_.get(), flag_.get(), sizeof(int), cudaMemcpyDeviceToHost, s));
    HDPISSA_CUDA_CHECK(cudaStreamSynchronize(s));
    return *host_flag_.get() == 0;
  }

  struct Scratch {
    void* p;
    ~Scratch() { (void)cudaFree(p); }
  };
  struct PrefGuard {
    cublasLtMatmulPreference_t p;
    ~PrefGuard() { (void)cublasLtMatmulPreferenceDestroy(p); }
  };
  struct EventPair {
    cudaEvent_t a = nullptr, b = nullptr;
    EventPair() {
      HDPISSA_CUDA_CHECK(cudaEventCreate(&a));
      HDPISSA_CUDA_CHECK(cudaEventCreate(&b));
    }
    ~EventPair() {
      (void)cudaEventDestroy(a);
      (void)cudaEventDestroy(b);
    }
  };

  cublasLtHandle_t lt_ = nullptr;
  DeviceBuffer<char> ws_;
  char* ext_ws_ = nullptr;  // set_workspace: a shared workspace instead of ws_
  DeviceBuffer<int> flag_;
  PinnedBuffer<int> host_flag_;
  std::map<Key, Entry> cache_;
  std::map<Key, int> n_per_shape_;  // distinct n tuned so far per problem-without-n (n zeroed in the key)
  std::vector<GemmTuningRecord> report_;
};

}  // namespace hdpissa
