#pragma once
/// \file w_precision.hpp
/// W-precision policies (spec §5): how a method that updates W (DWU, full fine-tuning) stores W and
/// folds an fp32 update `delta` into it. Each policy is ONE elementwise `HDPISSA_HOST_DEVICE` rule,
/// used by the CPU path (host loop) and by a GPU kernel alike, so both give the same bits.
///
///  - Fp32Master: fp32 W (with bf16 compute: fp32 master + bf16 copy, 6 B/param; fp32 compute: 4):
///        w ← w + delta                                             (fp32 round to nearest)
///  - Bf16Compensated: bf16 W + a bf16 Kahan compensation c (4 B/param); in fp32:
///        t = delta + c;  new = bf16_rn(w + t);  c ← bf16_rn(t − (new − w));  w ← new
///    so updates smaller than half a bf16 ulp of w accumulate in c instead of vanishing.
///  - Bf16StochasticRounding: bf16 W only (2 B/param):
///        w ← bf16_sr(w + delta)  (the fp32 sum rounded up in magnitude with probability equal to its
///    position between the two neighbouring bf16 values; E[w_new] = w + delta up to fp32 rounding).
///    The 16 random bits are a counter-based hash of (seed, step, element index): reproducible, the
///    same on every worker (W stays bit-identical without communication) and after a resume.
///
/// Storage: a rule reads and writes its bf16 values through `Bf16Slot<T>`: T = std::uint16_t (raw
/// bf16 bits, e.g. a reinterpreted __nv_bfloat16 buffer on the GPU) or T = float (an fp32 tensor
/// holding bf16-representable values: the CPU reference, bit-exact with the GPU rule).

#include <cstdint>
#include <cstring>
#include <string_view>

#include "hdpissa/core/config.hpp"
#include "hdpissa/core/error.hpp"
#include "hdpissa/core/random.hpp"

namespace hdpissa {

// ---------------------------------------------------------------- bf16 bit helpers (host + device)

/// fp32 bits of `f`.
HDPISSA_HOST_DEVICE inline std::uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
#endif
}
/// The float with bits `u`.
HDPISSA_HOST_DEVICE inline float f32_from_bits(std::uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}
/// The exact fp32 value of bf16 bits `h`.
HDPISSA_HOST_DEVICE inline float bf16_bits_to_float(std::uint16_t h) { return f32_from_bits(std::uint32_t(h) << 16); }
/// `f` rounded to the nearest bf16, ties to even (as __float2bfloat16_rn for finite values and inf);
/// overflow gives ±inf; every NaN gives the one canonical quiet NaN 0x7fc0 (NaN payloads differ
/// between host and device arithmetic, so keeping them would break the host == device guarantee).
HDPISSA_HOST_DEVICE inline std::uint16_t bf16_bits_rn(float f) {
  const std::uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t(0x7fc0u);  // NaN
  return std::uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
/// `f` rounded to a neighbouring bf16 by the 16 random bits `r`: the magnitude is rounded up when
/// the 16 discarded bits + r carry, i.e. with probability (discarded bits) / 2^16 — the exact
/// fractional position of |f| between its two bf16 neighbours. Inf and NaN round to nearest.
HDPISSA_HOST_DEVICE inline std::uint16_t bf16_bits_sr(float f, std::uint32_t r) {
  const std::uint32_t u = f32_bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u) return bf16_bits_rn(f);  // inf / NaN
  return std::uint16_t((u + (r & 0xffffu)) >> 16);
}
/// bf16_rn as a float (the value a bf16 store then load gives).
HDPISSA_HOST_DEVICE inline float round_bf16(float f) { return bf16_bits_to_float(bf16_bits_rn(f)); }

/// A bf16 value stored as raw bits (std::uint16_t) or as an fp32 holding a bf16 value (float).
template <class T>
struct Bf16Slot;
template <>
struct Bf16Slot<std::uint16_t> {
  HDPISSA_HOST_DEVICE static float load(std::uint16_t s) { return bf16_bits_to_float(s); }
  HDPISSA_HOST_DEVICE static std::uint16_t store(std::uint16_t bits) { return bits; }
};
template <>
struct Bf16Slot<float> {
  /// The stored float is a bf16 value already (the rules write only such values).
  HDPISSA_HOST_DEVICE static float load(float s) { return s; }
  HDPISSA_HOST_DEVICE static float store(std::uint16_t bits) { return bf16_bits_to_float(bits); }
};

/// The per-step part of the SR stream's hash (the same for every element of a step): kernels that
/// round many elements of one step compute it once and call sr_bits_keyed per element.
HDPISSA_HOST_DEVICE inline std::uint64_t sr_step_key(std::uint64_t seed, std::uint64_t step) {
  return splitmix64(splitmix64(seed) ^ step);
}
/// The 16 random bits of element `index` under a step key (sr_step_key): field index & 3 of one
/// splitmix64 of key ^ (index >> 2), so four consecutive elements (index 4g … 4g + 3) share one
/// hash. Kernels that round such a group together hash once (dwu_lowrank.cuh); every other caller
/// computes the element's field, with the same bits. (Session 23: the stream was one splitmix64 per
/// element before; a quarter of the hashes made the 7B step's 224 low-rank updates 12 % faster, c50.)
HDPISSA_HOST_DEVICE inline std::uint32_t sr_bits_keyed(std::uint64_t key, std::uint64_t index) {
  return std::uint32_t(splitmix64(key ^ (index >> 2)) >> (16 * (index & 3u))) & 0xffffu;
}
/// The SR stream's version: 2 since the four-element hash (1: one splitmix64 per element, before
/// session 23). A trainer records it with a run's state so that a run is never resumed under
/// another stream (its rounding would no longer match an uninterrupted run).
inline constexpr int kSrStreamVersion = 2;
/// The 16 random bits of element `index` at optimizer step `step` of stream `seed`.
HDPISSA_HOST_DEVICE inline std::uint32_t sr_bits(std::uint64_t seed, std::uint64_t step, std::uint64_t index) {
  return sr_bits_keyed(sr_step_key(seed, step), index);
}

// ---------------------------------------------------------------- the policies

/// Which policy (the trainer's --w-precision).
enum class WPrecision { Fp32Master, Bf16Compensated, Bf16StochasticRounding };

/// fp32 W: w ← w + delta.
struct Fp32Master {
  static constexpr WPrecision kind = WPrecision::Fp32Master;
  static constexpr std::string_view name() { return "fp32-master"; }
  /// Bytes per W parameter: fp32 W, plus a 2-byte bf16 compute copy when the model runs in bf16.
  static constexpr int w_bytes_per_param(bool bf16_compute) { return bf16_compute ? 6 : 4; }
  HDPISSA_HOST_DEVICE void operator()(float& w, float delta) const { w = w + delta; }
};

/// bf16 W + bf16 Kahan compensation (see the file comment).
struct Bf16Compensated {
  static constexpr WPrecision kind = WPrecision::Bf16Compensated;
  static constexpr std::string_view name() { return "bf16-compensated"; }
  static constexpr int w_bytes_per_param(bool) { return 4; }
  /// w, c: bf16 values (bits or fp32 holding bf16 values); delta: the fp32 update of this element.
  template <class T>
  HDPISSA_HOST_DEVICE void operator()(T& w, T& c, float delta) const {
    const float w0 = Bf16Slot<T>::load(w);
    const float t = delta + Bf16Slot<T>::load(c);
    const std::uint16_t nb = bf16_bits_rn(w0 + t);
    const float nw = bf16_bits_to_float(nb);
    c = Bf16Slot<T>::store(bf16_bits_rn(t - (nw - w0)));
    w = Bf16Slot<T>::store(nb);
  }
};

/// bf16 W with stochastic rounding from a counter-based hash of (seed, step, index).
struct Bf16StochasticRounding {
  static constexpr WPrecision kind = WPrecision::Bf16StochasticRounding;
  static constexpr std::string_view name() { return "bf16-sr"; }
  static constexpr int w_bytes_per_param(bool) { return 2; }
  std::uint64_t seed = 0;
  std::uint64_t step = 0;  ///< the optimizer step being applied (set per step by the caller)
  /// w: bf16 value; delta: fp32 update; index: the element's global index in its tensor stream
  /// (e.g. a per-layer offset + row·cols + col), the same on every worker.
  template <class T>
  HDPISSA_HOST_DEVICE void operator()(T& w, float delta, std::uint64_t index) const {
    apply_keyed(w, delta, sr_step_key(seed, step), index);
  }
  /// The same rule with the step's hash part precomputed (key = sr_step_key(seed, step)).
  template <class T>
  HDPISSA_HOST_DEVICE static void apply_keyed(T& w, float delta, std::uint64_t key, std::uint64_t index) {
    w = Bf16Slot<T>::store(bf16_bits_sr(Bf16Slot<T>::load(w) + delta, sr_bits_keyed(key, index)));
  }
};

/// One layer's W held under a bf16 policy as raw bf16 bits (in the backend's memory: host for
/// EigenBackend, device for CudaBackend), for DirectWeightUpdate::set_w_storage: the update folds
/// each element's fp32 Δ into it by the policy's rule (fused into the GEMM's epilogue on the GPU).
///   w (rows, cols), row-major with leading dimension ldw;
///   c the Kahan compensation (Bf16Compensated only; same shape, leading dimension ldc);
///   seed / offset: the SR stream and this layer's first element index in it (element (i, j) is
///   offset + i·cols + j), step: the optimizer step being applied (set per step by the update).
struct Bf16WStorage {
  WPrecision policy = WPrecision::Bf16StochasticRounding;
  std::uint16_t* w = nullptr;
  std::int64_t ldw = 0;
  std::uint16_t* c = nullptr;
  std::int64_t ldc = 0;
  std::int64_t cols = 0;
  std::uint64_t seed = 0, step = 0, offset = 0;
  /// Optional: where every apply path leaves max |w| over the storage's updated W (the storage's
  /// memory: device for CudaBackend, host for EigenBackend). It holds the bits of a non-negative
  /// float, so the unsigned maximum is the float maximum (a NaN sorts above +inf); each path maxes
  /// into it (the fused kernels in their epilogue, the others in a pass over W after the update), so
  /// the caller zeroes it before the step. It is launch_fp8_amax's value over the same W: an FP8
  /// copy of W takes its scale from it without a pass of its own (the GPU trainer's --compute fp8).
  float* amax = nullptr;
  /// Folds `delta` into element (i, j) by the policy's rule (the same function as everywhere).
  HDPISSA_HOST_DEVICE void apply(std::int64_t i, std::int64_t j, float delta) const {
    if (policy == WPrecision::Bf16Compensated)
      Bf16Compensated{}(w[i * ldw + j], c[i * ldc + j], delta);
    else
      Bf16StochasticRounding{seed, step}(w[i * ldw + j], delta, offset + std::uint64_t(i * cols + j));
  }
};

/// The bits of |w| as an fp32 value, for a bf16 element's bits (what Bf16WStorage::amax maxes over).
HDPISSA_HOST_DEVICE inline std::uint32_t bf16_abs_bits_f32(std::uint16_t b) { return std::uint32_t(b & 0x7fffu) << 16; }

/// `s` checked for the (rows, cols) parameter `name` (whose fp32 view was registered by
/// `registered_by`, e.g. "add_layer"), with s.cols set: the validation DirectWeightUpdate and
/// DataParallelUpdate::set_w_storage share (a bf16 policy, W storage with ld ≥ cols, and a
/// compensation buffer for Bf16Compensated).
inline Bf16WStorage checked_w_storage(Bf16WStorage s, std::string_view name, index_t rows, index_t cols,
                                      std::string_view registered_by) {
  HDPISSA_REQUIRE(s.policy != WPrecision::Fp32Master, "set_w_storage('", name, "'): Fp32Master keeps W in the fp32 view given to ",
                  registered_by, "; expected a bf16 policy");
  HDPISSA_REQUIRE(s.w != nullptr && s.ldw >= cols, "set_w_storage('", name, "'): no W storage or ld < ", cols);
  HDPISSA_REQUIRE(s.policy != WPrecision::Bf16Compensated || (s.c != nullptr && s.ldc >= cols), "set_w_storage('", name,
                  "'): Bf16Compensated needs a compensation buffer of ", shape_str(rows, cols));
  s.cols = cols;
  return s;
}

/// Parses "fp32-master" | "bf16-compensated" | "bf16-sr"; false if `s` is none of them.
inline bool parse_w_precision(std::string_view s, WPrecision& out) {
  if (s == Fp32Master::name()) out = WPrecision::Fp32Master;
  else if (s == Bf16Compensated::name()) out = WPrecision::Bf16Compensated;
  else if (s == Bf16StochasticRounding::name()) out = WPrecision::Bf16StochasticRounding;
  else return false;
  return true;
}
inline constexpr std::string_view w_precision_name(WPrecision p) {
  return p == WPrecision::Fp32Master        ? Fp32Master::name()
         : p == WPrecision::Bf16Compensated ? Bf16Compensated::name()
                                            : Bf16StochasticRounding::name();
}

}  // namespace hdpissa
