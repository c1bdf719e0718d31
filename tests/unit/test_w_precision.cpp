// W-precision policies (core/w_precision.hpp): each apply rule against float64, the bf16 helpers
// against exact invariants, and the stochastic rounding's statistics and reproducibility.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "hdpissa/core/w_precision.hpp"

using namespace hdpissa;

namespace {
/// A bf16 unit in the last place at |x| (x a normal bf16 value): 2^(exponent − 7).
double bf16_ulp(double x) { return std::ldexp(1.0, std::ilogb(x) - 7); }
/// The k-th tiny update: ~1e-3 with a deterministic wobble, always below half a bf16 ulp at |w| ≥ 1.
float tiny(int k) { return float(1e-3 * (1.0 + 0.5 * std::sin(0.37 * k))); }
}  // namespace

TEST_CASE("bf16 helpers: round to nearest even, exact widening, NaN / inf") {
  CHECK(round_bf16(1.0f) == 1.0f);
  const float ulp1 = std::ldexp(1.0f, -7);  // bf16 ulp at 1
  CHECK(round_bf16(1.0f + 0.49f * ulp1) == 1.0f);
  CHECK(round_bf16(1.0f + 0.51f * ulp1) == 1.0f + ulp1);
  CHECK(round_bf16(1.0f + 0.5f * ulp1) == 1.0f);                  // tie → even (1.0)
  CHECK(round_bf16(1.0f + 1.5f * ulp1) == 1.0f + 2.0f * ulp1);    // tie → even
  CHECK(round_bf16(-1.0f - 0.51f * ulp1) == -1.0f - ulp1);
  CHECK(std::isinf(round_bf16(3.4e38f)));
  CHECK(std::isnan(round_bf16(std::nanf(""))));
  // Every bf16 value survives bits → float → bits.
  for (std::uint32_t h = 0; h < 0x10000u; ++h) {
    const float f = bf16_bits_to_float(std::uint16_t(h));
    if (std::isnan(f)) continue;
    REQUIRE(bf16_bits_rn(f) == h);
  }
  // Round to nearest against float64 on a sweep of non-tie values: the result is one of the two
  // bf16 neighbours and the nearer one.
  for (int k = 1; k < 20000; ++k) {
    const float x = float(std::ldexp(1.0 + 0.0000371 * k, (k % 40) - 20)) * ((k & 1) ? -1.0f : 1.0f);
    const double r = round_bf16(x);
    const double u = bf16_ulp(std::fabs(double(x)));
    REQUIRE(std::fabs(r - double(x)) <= 0.5 * u);
  }
}

TEST_CASE("Fp32Master: w + delta in fp32 tracks the float64 sum over 1000 updates") {
  float w = 1.0f;
  double exact = 1.0;
  for (int k = 0; k < 1000; ++k) {
    Fp32Master{}(w, tiny(k));
    exact += double(tiny(k));
  }
  CHECK(std::fabs(double(w) - exact) <= 1000 * std::ldexp(1.0, -23));
  CHECK(Fp32Master::w_bytes_per_param(true) == 6);
  CHECK(Fp32Master::w_bytes_per_param(false) == 4);
}

TEST_CASE("Bf16Compensated: tracks the float64 sum of 1000 sub-half-ulp updates; plain bf16 stalls") {
  // Plain round to nearest bf16: every update is below half an ulp of w, so w never moves.
  std::uint16_t plain = bf16_bits_rn(1.0f);
  for (int k = 0; k < 1000; ++k) {
    REQUIRE(double(tiny(k)) < 0.5 * bf16_ulp(bf16_bits_to_float(plain)));
    plain = bf16_bits_rn(bf16_bits_to_float(plain) + tiny(k));
  }
  CHECK(bf16_bits_to_float(plain) == 1.0f);  // the stall

  // Kahan-compensated bf16, on raw bits (the GPU storage) and on fp32 slots (the CPU reference).
  std::uint16_t w = bf16_bits_rn(1.0f), c = 0;
  float wf = 1.0f, cf = 0.0f;
  double exact = 1.0;
  for (int k = 0; k < 1000; ++k) {
    Bf16Compensated{}(w, c, tiny(k));
    Bf16Compensated{}(wf, cf, tiny(k));
    exact += double(tiny(k));
    REQUIRE(bf16_bits_to_float(w) == wf);  // both storages give the same bits
    REQUIRE(bf16_bits_to_float(c) == cf);
    REQUIRE(round_bf16(wf) == wf);  // the fp32 slots hold bf16 values only
    REQUIRE(round_bf16(cf) == cf);
  }
  const double W = bf16_bits_to_float(w), C = bf16_bits_to_float(c);
  INFO("exact ", exact, " w ", W, " c ", C);
  CHECK(exact - 1.0 > 0.9);                                   // the updates add up to ~1
  CHECK(std::fabs(W - exact) <= bf16_ulp(exact));            // w itself within one bf16 ulp
  CHECK(std::fabs(W + C - exact) <= 0.02 * bf16_ulp(exact));  // w + c: the sum to ~2% of an ulp
  CHECK(Bf16Compensated::w_bytes_per_param(true) == 4);
}

TEST_CASE("Bf16StochasticRounding: P(round up) is the fractional position; unbiased; no stall") {
  const Bf16StochasticRounding sr{.seed = 1234, .step = 7};
  const int N = 200000;
  for (double frac : {0.3, 0.75, 0.0625}) {
    for (float sign : {1.0f, -1.0f}) {
      CAPTURE(frac);
      CAPTURE(sign);
      const float w0 = sign * 1.5f;                           // a bf16 value, ulp 2^-7
      const float delta = sign * float(frac * std::ldexp(1.0, -7));  // exact in fp32
      int up = 0;
      double sum = 0;
      for (int i = 0; i < N; ++i) {
        float w = w0;
        sr(w, delta, std::uint64_t(i));
        const double d = std::fabs(double(w)) - std::fabs(double(w0));
        REQUIRE((d == 0.0 || d == std::ldexp(1.0, -7)));  // one of the two neighbours
        up += d != 0.0;
        sum += double(w);
      }
      const double p = double(up) / N, se = std::sqrt(frac * (1 - frac) / N);
      CHECK(std::fabs(p - frac) <= 5 * se);
      const double mean = sum / N, exact = double(w0) + double(delta);
      CHECK(std::fabs(mean - exact) <= 5 * se * std::ldexp(1.0, -7));
    }
  }
  // 1000 sub-half-ulp updates per element: plain bf16 stalls (test above), SR's mean over many
  // elements follows the float64 sum.
  const int E = 4000;
  double exact = 1.0, mean = 0;
  std::vector<std::uint16_t> w(E, bf16_bits_rn(1.0f));
  for (int k = 0; k < 1000; ++k) {
    const Bf16StochasticRounding s{.seed = 99, .step = std::uint64_t(k)};
    for (int i = 0; i < E; ++i) s(w[std::size_t(i)], tiny(k), std::uint64_t(i));
    exact += double(tiny(k));
  }
  for (int i = 0; i < E; ++i) mean += bf16_bits_to_float(w[std::size_t(i)]) / E;
  INFO("exact ", exact, " mean ", mean);
  // Each step's rounding noise is at most one ulp (2^-7 below 2, 2^-6 above): the per-element
  // variance is ≤ 1000·(2^-6)²/4: the standard error of the mean is ≤ √1000·2^-6/2/√E; 5 SE ≈ 0.02.
  CHECK(std::fabs(mean - exact) <= 5 * std::sqrt(1000.0) * std::ldexp(1.0, -6) / 2 / std::sqrt(double(E)));
  CHECK(Bf16StochasticRounding::w_bytes_per_param(true) == 2);
}

TEST_CASE("SR stream: four consecutive elements share one splitmix64; their rounding decisions are independent") {
  // The definition, as exact values: element 4g + j takes the 16-bit field j of splitmix64(key ^ g).
  const std::uint64_t key = sr_step_key(5, 10);
  for (std::uint64_t g : {std::uint64_t(0), std::uint64_t(1), std::uint64_t(250), std::uint64_t(1) << 40}) {
    const std::uint64_t h = splitmix64(key ^ g);
    for (std::uint64_t j = 0; j < 4; ++j) {
      CAPTURE(g);
      CAPTURE(j);
      CHECK(sr_bits_keyed(key, 4 * g + j) == std::uint32_t((h >> (16 * j)) & 0xffffu));
      CHECK(sr_bits(5, 10, 4 * g + j) == sr_bits_keyed(key, 4 * g + j));
    }
  }
  // Independence inside a group: at a half-ulp update each element rounds up with p = 1/2, so two
  // elements of one group (fields 0 and 1, 0 and 3, 2 and 3) both round up with p = 1/4, and
  // across groups too (field 3 of g and field 0 of g + 1).
  const Bf16StochasticRounding sr{.seed = 77, .step = 3};
  const float w0 = 1.5f, delta = float(0.5 * std::ldexp(1.0, -7));
  auto up = [&](std::uint64_t i) {
    float w = w0;
    sr(w, delta, i);
    return w != w0;
  };
  const int G = 100000;
  const double se = std::sqrt(0.25 * 0.75 / G);
  const std::pair<int, int> pairs[] = {{0, 1}, {0, 3}, {2, 3}, {3, 4}};
  for (const auto& [a, b] : pairs) {
    CAPTURE(a);
    CAPTURE(b);
    int both = 0, ua = 0;
    for (int g = 0; g < G; ++g) {
      const bool x = up(std::uint64_t(4 * g + a)), y = up(std::uint64_t(4 * g + b));
      both += x && y;
      ua += x;
    }
    CHECK(std::fabs(double(ua) / G - 0.5) <= 5 * std::sqrt(0.25 / G));
    CHECK(std::fabs(double(both) / G - 0.25) <= 5 * se);
  }
}

TEST_CASE("Bf16StochasticRounding: same bits for the same (seed, step, index), different across steps") {
  const int N = 4096;
  const float w0 = 1.0f, delta = float(0.5 * std::ldexp(1.0, -7));
  auto run = [&](std::uint64_t seed, std::uint64_t step) {
    std::vector<std::uint16_t> out(N);
    const Bf16StochasticRounding sr{.seed = seed, .step = step};
    for (int i = 0; i < N; ++i) {
      std::uint16_t w = bf16_bits_rn(w0);
      sr(w, delta, std::uint64_t(i));
      out[std::size_t(i)] = w;
    }
    return out;
  };
  const auto a = run(5, 10), b = run(5, 10), c = run(5, 11), d = run(6, 10);
  CHECK(a == b);
  int diff_step = 0, diff_seed = 0;
  for (int i = 0; i < N; ++i) {
    diff_step += a[std::size_t(i)] != c[std::size_t(i)];
    diff_seed += a[std::size_t(i)] != d[std::size_t(i)];
  }
  // Independent fair coins differ in half the positions: 2048 ± 32 (σ); 5σ bounds.
  CHECK(std::abs(diff_step - N / 2) <= 160);
  CHECK(std::abs(diff_seed - N / 2) <= 160);
  // Float slots (the CPU reference) give the same bits as raw bf16 storage.
  const Bf16StochasticRounding sr{.seed = 5, .step = 10};
  for (int i = 0; i < N; ++i) {
    float wf = w0;
    sr(wf, delta, std::uint64_t(i));
    REQUIRE(wf == bf16_bits_to_float(a[std::size_t(i)]));
  }
}

TEST_CASE("parse_w_precision / w_precision_name round trip") {
  for (WPrecision p : {WPrecision::Fp32Master, WPrecision::Bf16Compensated, WPrecision::Bf16StochasticRounding}) {
    WPrecision q{};
    CHECK(parse_w_precision(w_precision_name(p), q));
    CHECK(q == p);
  }
  WPrecision q{};
  CHECK_FALSE(parse_w_precision("bf16", q));
}

TEST_CASE("checked_w_storage: the validation both updates share names the parameter and what is missing") {
  std::uint16_t w[12] = {}, c[12] = {};
  Bf16WStorage s;
  s.policy = WPrecision::Bf16StochasticRounding;
  s.w = w;
  s.ldw = 4;
  const Bf16WStorage ok = checked_w_storage(s, "layer0.q", 3, 4, "add_layer");
  CHECK(ok.cols == 4);
  CHECK(ok.w == w);
  Bf16WStorage bad = s;
  bad.policy = WPrecision::Fp32Master;
  CHECK_THROWS_WITH(checked_w_storage(bad, "layer0.q", 3, 4, "add_param"),
                    doctest::Contains("set_w_storage('layer0.q'): Fp32Master keeps W in the fp32 view given to add_param"));
  bad = s;
  bad.ldw = 3;
  CHECK_THROWS_WITH(checked_w_storage(bad, "layer0.q", 3, 4, "add_layer"), doctest::Contains("no W storage or ld < 4"));
  bad = s;
  bad.w = nullptr;
  CHECK_THROWS_WITH(checked_w_storage(bad, "layer0.q", 3, 4, "add_layer"), doctest::Contains("no W storage"));
  bad = s;
  bad.policy = WPrecision::Bf16Compensated;
  CHECK_THROWS_WITH(checked_w_storage(bad, "layer0.q", 3, 4, "add_layer"),
                    doctest::Contains("Bf16Compensated needs a compensation buffer of (3, 4)"));
  bad.c = c;
  bad.ldc = 4;
  CHECK(checked_w_storage(bad, "layer0.q", 3, 4, "add_layer").c == c);
}
