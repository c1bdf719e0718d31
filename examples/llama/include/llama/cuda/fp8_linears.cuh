#pragma once
/// \file fp8_linears.cuh
/// gpu::Fp8Linears: the FP8 copies of a model's target weights and the FP8 base products of
/// hdpissa-train's --compute fp8 (docs/trainer.md, "FP8 compute"), on CudaBackend<bf16>'s stream.
///
/// Per eligible target i (out and in multiples of 16, the FP8 GEMM's requirement):
///  - W8 (out, in) and W8ᵀ (in, out) in E4M3 with one per-tensor scale (amax of the bf16 W): the
///    K-contiguous operands of the forward Y = X Wᵀ (K = in) and of the backward dX = dY W
///    (K = out). quantize_weight(i, W) rebuilds them from the model's bf16 W; a method calls it once
///    at the start (frozen W) and after every optimizer step that changed W (DWU, full). 2 bytes per
///    target parameter, device-resident.
///  - forward: X (bf16) → E4M3 with its own current amax, then Y = X8 · W8ᵀ (+ β Y), bf16 out.
///    Linears that read the same input — q, k, v of a layer (its attention norm's output) and
///    gate, up (the MLP norm's output), which the model runs one after the other on one buffer —
///    quantise it once: a call for k, v or up reuses X8 when the previous forward call was an
///    earlier member of the same group of the same layer on the same X view (set_input_ids). Any
///    other call quantises; so does every call when the ids are not given.
///  - backward_dx: dY (bf16) → E5M2 (gradients: the wider range; E4M3 × E5M2 is a Hopper FP8 pair)
///    with its own current amax, then dX = dY8 · (W8ᵀ)ᵀ (+ β dX).
/// Every scale stays on the device (cuBLASLt reads it through a pointer): nothing synchronises.
/// Targets whose shape the FP8 GEMM cannot take keep the bf16 product (listed by describe()); a
/// problem for which cuBLASLt proposes no algorithm (e.g. an unusual token count), or whose bf16
/// output is not 16-byte aligned, runs in bf16 too, and is REPORTED: one line on stderr the first time, and fallback_problems() counts them.
/// One process's object: several processes each hold their own copy of their (identical) W.

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "hdpissa/backend/cuda/cuda_backend.hpp"
#include "hdpissa/backend/cuda/cuda_handles.hpp"
#include "hdpissa/backend/cuda/fp8_gemm.hpp"
#include "hdpissa/backend/cuda/fp8_quantize.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama::gpu {

/// FP8 copies of the target weights and the FP8 base GEMMs (see the file comment).
class Fp8Linears {
 public:
  using Bc = hdpissa::CudaBackend<__nv_bfloat16>;
  using CV = ConstMatrixView<__nv_bfloat16>;
  using V = MatrixView<__nv_bfloat16>;
  static constexpr Fp8Format kWeightFormat = Fp8Format::E4M3;
  static constexpr Fp8Format kActivationFormat = Fp8Format::E4M3;
  static constexpr Fp8Format kGradientFormat = Fp8Format::E5M2;

  /// Why a (out, in) target keeps its bf16 product; empty when it can run in FP8.
  static std::string ineligible_reason(index_t out, index_t in) {
    if (out % 16 != 0 || in % 16 != 0)
      return cat("(", out, ", ", in, ") is not a multiple of 16 in both dimensions");
    return {};
  }

  /// FP8 copies for every target of `shapes` ((out, in) each, in target order) that can take them;
  /// `names`: the targets' names (for describe()). Allocates the copies (not filled: quantize_weight).
  Fp8Linears(Bc& b, const std::vector<std::pair<index_t, index_t>>& shapes, const std::vector<std::string>& names)
      : b_(&b), shapes_(shapes) {
    std::size_t bytes = 0;
    off_.assign(shapes.size(), SIZE_MAX);
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      const auto [out, in] = shapes[i];
      if (!ineligible_reason(out, in).empty()) {
        skipped_.push_back(i < names.size() ? names[i] : cat("target ", i));
        continue;
      }
      off_[i] = bytes;
      bytes += round256(2 * std::size_t(out) * std::size_t(in));  // W8 then W8ᵀ
      ++n_fp8_;
      params_fp8_ += std::int64_t(out) * in;
      max_in_ = std::max(max_in_, in);
      max_out_ = std::max(max_out_, out);
    }
    params_all_ = 0;
    for (const auto& [o, i] : shapes) params_all_ += std::int64_t(o) * i;
    w8_.reserve(std::max<std::size_t>(bytes, 1));
    scales_.reserve(kScaleStride * (2 * shapes.size() + 4 + kHintSlots));
    HDPISSA_CUDA_CHECK(cudaMemsetAsync(scales_.get(), 0,
                                       sizeof(float) * kScaleStride * (2 * shapes.size() + 4 + kHintSlots), b.stream()));
    if (const char* e = std::getenv("HDPISSA_FP8_PRODUCER_AMAX")) {
      const std::string v(e);
      HDPISSA_REQUIRE(v == "0" || v == "1", "HDPISSA_FP8_PRODUCER_AMAX: expected 0 (every FP8 call runs its own amax ",
                      "pass) or 1 (the default: the model's kernels keep X's and dY's amax), found '", v, "'");
      hints_on_ = v == "1";
    }
  }

  /// Producer-kept amax (issue 20). The model's kernel that writes t — the next forward's X or the
  /// next backward_dx's dY — can max max |t| into a device slot; the FP8 call that reads exactly t
  /// (data, rows, cols, ld) then quantises with it and skips its own amax pass over t: the same amax
  /// bits (the kernels' rule is fp8_amax_kernel's), so the same X8 / dY8 and products. amax_hint
  /// returns the slot, zeroed (stream-ordered), or null when hints are off (HDPISSA_FP8_PRODUCER_AMAX=0)
  /// or kHintSlots are pending. A hint lasts until that call consumes it or drop_amax_hints(): the
  /// model drops them after the hooks call that follows the producer, so none outlives t's contents.
  float* amax_hint(const void* data, index_t rows, index_t cols, index_t ld) {
    if (!hints_on_ || !data || rows <= 0 || cols <= 0) return nullptr;
    std::size_t k = 0;  // the pending hint on the same buffer (replaced), else the first free slot
    while (k < kHintSlots && hints_[k].data != data) ++k;
    if (k == kHintSlots) {
      k = 0;
      while (k < kHintSlots && hints_[k].data) ++k;
      if (k == kHintSlots) return nullptr;
    }
    hints_[k] = {data, rows, cols, ld};
    HDPISSA_CUDA_CHECK(cudaMemsetAsync(hint_amax(k), 0, sizeof(float), b_->stream()));
    return hint_amax(k);
  }
  /// Forgets every pending amax_hint.
  void drop_amax_hints() {
    for (Hint& h : hints_) h = Hint{};
  }
  /// FP8 calls that took their amax from a producer's hint (tests, profiles).
  [[nodiscard]] std::int64_t amax_hints_used() const { return n_hinted_; }
  /// Whether amax_hint hands out slots (HDPISSA_FP8_PRODUCER_AMAX, default on).
  [[nodiscard]] bool amax_hints_enabled() const { return hints_on_; }

  /// The targets' (layer, module) ids, in target order: enables the reuse of X8 across the linears
  /// of one input group (see the file comment). Without it every forward quantises its X.
  void set_input_ids(const std::vector<LinearId>& ids) {
    HDPISSA_REQUIRE(ids.size() == shapes_.size(), "Fp8Linears::set_input_ids: ", ids.size(), " ids for ",
                    shapes_.size(), " targets");
    ids_ = ids;
    last_ = -1;
  }
  /// Forward calls that quantised their X / that reused the previous call's X8 (tests, profiles).
  [[nodiscard]] std::int64_t x_quantisations() const { return n_quant_; }
  [[nodiscard]] std::int64_t x_reuses() const { return n_reuse_; }

  /// Whether target i runs in FP8.
  [[nodiscard]] bool enabled(std::size_t i) const { return i < off_.size() && off_[i] != SIZE_MAX; }
  /// Targets with FP8 copies / all targets.
  [[nodiscard]] std::size_t fp8_targets() const { return n_fp8_; }
  [[nodiscard]] std::size_t targets() const { return shapes_.size(); }
  /// Device bytes of the FP8 copies (W8 and W8ᵀ: 2 per covered parameter) and of the activation
  /// buffers (after reserve()).
  [[nodiscard]] std::int64_t weight_bytes() const { return 2 * params_fp8_; }
  [[nodiscard]] std::int64_t activation_bytes() const { return std::int64_t(x8_.size() + dy8_.size()); }
  /// Extra device bytes per target parameter: 2 when every target has FP8 copies, else 0 (then
  /// describe() says which ones have them and how many bytes they take).
  [[nodiscard]] int bytes_per_param() const { return n_fp8_ == shapes_.size() && n_fp8_ > 0 ? 2 : 0; }
  /// Problems that fell back to bf16 because cuBLASLt had no FP8 algorithm for them.
  [[nodiscard]] std::size_t fallback_problems() const { return fallbacks_.size(); }

  /// One line for the engine's notes.
  [[nodiscard]] std::string describe() const {
    std::string s = cat("FP8 compute (", fp8_format_name(kWeightFormat), " W and X, ", fp8_format_name(kGradientFormat),
                        " dY, per-tensor current scaling, cuBLASLt", hints_on_ ? "; X and dY amax kept by the kernels that write them" : "",
                        ") on ", n_fp8_, " of ", shapes_.size(),
                        " targets' forward and dX GEMMs; FP8 copies W8 + W8^T ", weight_bytes(), " bytes (2 per ",
                        "covered parameter)");
    if (!skipped_.empty()) {
      s += cat("; bf16 for ", skipped_.size(), " target(s) whose shape is not a multiple of 16 (", skipped_.front());
      s += skipped_.size() > 1 ? cat(", ... ", skipped_.back(), ")") : std::string(")");
    }
    return s;
  }

  /// Sizes the FP8 activation buffers for up to `max_tokens` rows (setup; no-op unless it grows).
  void reserve(index_t max_tokens) {
    if (max_tokens <= reserved_) return;
    reserved_ = max_tokens;
    last_ = -1;  // a new X8 buffer holds nothing to reuse
    x8_.reserve(std::max<std::size_t>(1, std::size_t(max_tokens) * std::size_t(max_in_)));
    dy8_.reserve(std::max<std::size_t>(1, std::size_t(max_tokens) * std::size_t(max_out_)));
  }

  /// Rebuilds target i's W8, W8ᵀ and scale from the bf16 W (out, in) (no-op for a bf16 target).
  /// `amax_current`: weight_amax(i) already holds max |W| (the update wrote it, Bf16WStorage::amax),
  /// so the amax pass is skipped: the same bytes; one read of W fewer where the update's kernel kept
  /// the maximum in its epilogue (the DWU's low-rank kernel; other paths run the pass themselves).
  void quantize_weight(std::size_t i, CV W, bool amax_current = false) {
    if (!enabled(i)) return;
    HDPISSA_REQUIRE(W.rows == shapes_[i].first && W.cols == shapes_[i].second, "Fp8Linears: target ", i, " is ",
                    shape_str(shapes_[i].first, shapes_[i].second), ", W is ", shape_str(W.rows, W.cols));
    cudaStream_t s = b_->stream();
    if (!amax_current) launch_fp8_amax(s, W, w_amax(i));
    launch_fp8_quantize_transpose<kWeightFormat>(s, W, w_amax(i), w8(i), w8t(i), w_dequant(i));
  }
  /// Target i's weight-amax slot (device; what quantize_weight's amax pass writes): a W update that
  /// maxes max |W| into it (Bf16WStorage::amax) lets the next quantize_weight skip that pass.
  float* weight_amax(std::size_t i) const {
    HDPISSA_REQUIRE(enabled(i), "Fp8Linears::weight_amax: target ", i, " has no FP8 copy");
    return w_amax(i);
  }
  /// Every target's weight-amax slot ← 0 (one strided memset, stream-ordered), before an update
  /// that maxes into them.
  void zero_weight_amax() {
    if (shapes_.empty()) return;
    HDPISSA_CUDA_CHECK(cudaMemset2DAsync(w_amax(0), 2 * kScaleStride * sizeof(float), 0, sizeof(float),
                                         shapes_.size(), b_->stream()));
  }

  /// Y (tokens, out) ← X (tokens, in) · Wᵀ + β·Y with target i's FP8 copy.
  void forward(std::size_t i, CV X, V Y, float beta) {
    HDPISSA_REQUIRE(enabled(i), "Fp8Linears::forward: target ", i, " has no FP8 copy");
    const auto [out, in] = shapes_[i];
    HDPISSA_REQUIRE(X.cols == in && Y.rows == X.rows && Y.cols == out, "Fp8Linears::forward: X ",
                    shape_str(X.rows, X.cols), ", Y ", shape_str(Y.rows, Y.cols), " for W ", shape_str(out, in));
    HDPISSA_REQUIRE(X.rows <= reserved_, "Fp8Linears: ", X.rows, " tokens, reserve() was for ", reserved_);
    if (X.rows == 0) return;
    cudaStream_t s = b_->stream();
    if (shares_input_with_last(i, X)) {
      ++n_reuse_;
    } else {
      const float* am = take_hint(X);
      if (!am) {
        launch_fp8_amax(s, X, act_amax());
        am = act_amax();
      }
      launch_fp8_quantize<kActivationFormat>(s, X, am, x8_.get(), in, act_dequant());
      ++n_quant_;
    }
    last_ = static_cast<std::int64_t>(i);
    last_x_ = X;
    if (aligned16(Y.data, Y.ld) &&
        gemm_.run(s, X.rows, out, in, kActivationFormat, x8_.get(), in, act_dequant(), kWeightFormat, w8(i), in,
                  w_dequant(i), 1.0f, beta, Y.data, Y.ld))
      return;
    report_fallback("forward", X.rows, out, in);
    b_->gemm(Op::N, Op::T, __nv_bfloat16(1.0f), X, W_bf16(i), __nv_bfloat16(beta), Y);
  }

  /// dX (tokens, in) ← dY (tokens, out) · W + β·dX with target i's FP8 copy (W8ᵀ).
  void backward_dx(std::size_t i, CV dY, V dX, float beta) {
    HDPISSA_REQUIRE(enabled(i), "Fp8Linears::backward_dx: target ", i, " has no FP8 copy");
    const auto [out, in] = shapes_[i];
    HDPISSA_REQUIRE(dY.cols == out && dX.rows == dY.rows && dX.cols == in, "Fp8Linears::backward_dx: dY ",
                    shape_str(dY.rows, dY.cols), ", dX ", shape_str(dX.rows, dX.cols), " for W ", shape_str(out, in));
    HDPISSA_REQUIRE(dY.rows <= reserved_, "Fp8Linears: ", dY.rows, " tokens, reserve() was for ", reserved_);
    if (dY.rows == 0) return;
    cudaStream_t s = b_->stream();
    const float* am = take_hint(dY);
    if (!am) {
      launch_fp8_amax(s, dY, grad_amax());
      am = grad_amax();
    }
    launch_fp8_quantize<kGradientFormat>(s, dY, am, dy8_.get(), out, grad_dequant());
    if (aligned16(dX.data, dX.ld) &&
        gemm_.run(s, dY.rows, in, out, kGradientFormat, dy8_.get(), out, grad_dequant(), kWeightFormat, w8t(i), out,
                  w_dequant(i), 1.0f, beta, dX.data, dX.ld))
      return;
    report_fallback("dX", dY.rows, in, out);
    b_->gemm(Op::N, Op::N, __nv_bfloat16(1.0f), dY, W_bf16(i), __nv_bfloat16(beta), dX);
  }

  /// The bf16 W each target's fallback GEMM reads (set by the method: the model's compute copy).
  void set_bf16_weight(std::size_t i, CV W) {
    if (wb_.size() < shapes_.size()) wb_.resize(shapes_.size());
    wb_[i] = W;
  }

  /// Diagnostic (tests; allocates and waits): the number of FP8 targets whose stored W8 / W8ᵀ /
  /// scale differ from a fresh quantisation of `W(i)` — 0 when every copy is current.
  template <class GetW>
  std::int64_t stale_targets(GetW&& W) {
    cudaStream_t s = b_->stream();
    std::int64_t stale = 0;
    for (std::size_t i = 0; i < shapes_.size(); ++i) {
      if (!enabled(i)) continue;
      const auto [out, in] = shapes_[i];
      const std::size_t n = std::size_t(out) * std::size_t(in);
      DeviceBuffer<unsigned char> fresh(2 * n);
      DeviceBuffer<float> sc(2);
      const CV w = W(i);
      launch_fp8_amax(s, w, sc.get());
      launch_fp8_quantize_transpose<kWeightFormat>(s, w, sc.get(), fresh.get(), fresh.get() + n, sc.get() + 1);
      std::vector<unsigned char> a(2 * n), c(2 * n);
      float sa[2], sf[2];
      HDPISSA_CUDA_CHECK(cudaMemcpyAsync(a.data(), w8(i), 2 * n, cudaMemcpyDeviceToHost, s));
      HDPISSA_CUDA_CHECK(cudaMemcpyAsync(c.data(), fresh.get(), 2 * n, cudaMemcpyDeviceToHost, s));
      HDPISSA_CUDA_CHECK(cudaMemcpyAsync(sa, w_amax(i), sizeof(float), cudaMemcpyDeviceToHost, s));
      HDPISSA_CUDA_CHECK(cudaMemcpyAsync(sa + 1, w_dequant(i), sizeof(float), cudaMemcpyDeviceToHost, s));
      HDPISSA_CUDA_CHECK(cudaMemcpyAsync(sf, sc.get(), 2 * sizeof(float), cudaMemcpyDeviceToHost, s));
      HDPISSA_CUDA_CHECK(cudaStreamSynchronize(s));
      stale += (a != c || sa[0] != sf[0] || sa[1] != sf[1]) ? 1 : 0;
    }
    return stale;
  }

 private:
  static std::size_t round256(std::size_t n) { return (n + 255) / 256 * 256; }
  /// 0 for q, k, v (the attention norm's output), 1 for gate, up (the MLP norm's), -1 otherwise.
  static int input_group(Module m) {
    if (m == Module::q || m == Module::k || m == Module::v) return 0;
    if (m == Module::gate || m == Module::up) return 1;
    return -1;
  }
  /// X8 already holds target i's input: the previous forward call was an earlier member of i's
  /// input group, in the same layer, on the same X view (the model runs a group back to back on
  /// one unchanged buffer; a new pass starts at the group's first member, which always quantises).
  bool shares_input_with_last(std::size_t i, CV X) const {
    if (ids_.empty() || last_ < 0) return false;
    const LinearId a = ids_[static_cast<std::size_t>(last_)], b = ids_[i];
    const int g = input_group(b.module);
    return g >= 0 && input_group(a.module) == g && a.layer == b.layer &&
           static_cast<int>(a.module) < static_cast<int>(b.module) && last_x_.data == X.data &&
           last_x_.rows == X.rows && last_x_.cols == X.cols && last_x_.ld == X.ld;
  }
  /// The bf16 output's rows start on 16-byte boundaries (else the bf16 fallback, reported).
  static bool aligned16(const void* p, index_t ld) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0 && ld % 8 == 0; }
  unsigned char* w8(std::size_t i) const { return w8_.get() + off_[i]; }
  unsigned char* w8t(std::size_t i) const {
    return w8_.get() + off_[i] + std::size_t(shapes_[i].first) * std::size_t(shapes_[i].second);
  }
  // Every scale in its own 16-byte slot: cuBLASLt reads the dequantisation scales through pointers
  // that must be 16-byte aligned (CudaFp8Gemm::kScaleAlignment).
  static constexpr std::size_t kScaleStride = CudaFp8Gemm::kScaleAlignment / sizeof(float);
  float* scale(std::size_t slot) const { return scales_.get() + kScaleStride * slot; }
  float* w_amax(std::size_t i) const { return scale(2 * i); }
  float* w_dequant(std::size_t i) const { return scale(2 * i + 1); }
  float* act_amax() const { return scale(2 * shapes_.size()); }
  float* act_dequant() const { return scale(2 * shapes_.size() + 1); }
  float* grad_amax() const { return scale(2 * shapes_.size() + 2); }
  float* grad_dequant() const { return scale(2 * shapes_.size() + 3); }
  float* hint_amax(std::size_t k) const { return scale(2 * shapes_.size() + 4 + k); }
  /// The slot of the pending hint for exactly t (consumed: freed), or null.
  const float* take_hint(CV t) {
    for (std::size_t k = 0; k < kHintSlots; ++k) {
      Hint& h = hints_[k];
      if (h.data == t.data && h.rows == t.rows && h.cols == t.cols && h.ld == t.ld && h.data) {
        h = Hint{};
        ++n_hinted_;
        return hint_amax(k);
      }
    }
    return nullptr;
  }
  CV W_bf16(std::size_t i) const {
    HDPISSA_REQUIRE(i < wb_.size() && wb_[i].data, "Fp8Linears: no bf16 weight set for target ", i,
                    " (needed by the bf16 fallback)");
    return wb_[i];
  }
  void report_fallback(const char* what, index_t M, index_t N, index_t K) {
    if (fallbacks_.insert({what[0] == 'f', M, N, K}).second)
      std::cerr << "hdpissa-train --compute fp8: cuBLASLt proposes no FP8 algorithm for the " << what << " GEMM M "
                << M << " N " << N << " K " << K << "; this problem runs in bf16\n";
  }

  Bc* b_;
  std::vector<std::pair<index_t, index_t>> shapes_;
  std::vector<std::size_t> off_;        // byte offset of target i's W8 (then W8ᵀ) in w8_; SIZE_MAX: bf16
  std::vector<std::string> skipped_;
  std::vector<CV> wb_;                  // the bf16 W per target (fallback)
  std::vector<LinearId> ids_;           // per target (set_input_ids; empty: no X8 reuse)
  std::int64_t last_ = -1;              // the target of the last forward call (-1: none)
  CV last_x_{};                         // ... and its X
  std::int64_t n_quant_ = 0, n_reuse_ = 0;
  std::size_t n_fp8_ = 0;
  std::int64_t params_fp8_ = 0, params_all_ = 0;
  index_t max_in_ = 0, max_out_ = 0, reserved_ = 0;
  DeviceBuffer<unsigned char> w8_, x8_, dy8_;
  DeviceBuffer<float> scales_;          // per target (amax, 1/s); then X (amax, 1/s), dY (amax, 1/s); kScaleStride apart
  CudaFp8Gemm gemm_;
  std::set<std::tuple<bool, index_t, index_t, index_t>> fallbacks_;
  struct Hint {
    const void* data = nullptr;
    index_t rows = 0, cols = 0, ld = 0;
  };
  static constexpr std::size_t kHintSlots = 4;  // the model's largest set: d_gate and d_up (and spares)
  std::array<Hint, kHintSlots> hints_{};         // amax_hint()s pending, slot k's amax at hint_amax(k)
  bool hints_on_ = true;                         // HDPISSA_FP8_PRODUCER_AMAX
  std::int64_t n_hinted_ = 0;
};

}  // namespace hdpissa::llama::gpu
