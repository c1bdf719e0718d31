#pragma once
/// \file random.hpp
/// Counter-based random numbers: element i of a seeded stream is a pure function of (seed, i), so a
/// host loop and a GPU kernel produce the same matrix (up to libm rounding) with no shared state.
/// Used for the randomized SVD's test matrix and the LoRA baseline's Kaiming-uniform init.

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#  define HDPISSA_HOST_DEVICE __host__ __device__
#else
#  define HDPISSA_HOST_DEVICE
#endif

namespace hdpissa {

/// SplitMix64 finaliser: a bijective 64-bit mix with good avalanche.
HDPISSA_HOST_DEVICE inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

/// Uniform in (0, 1) (never 0, so log() is safe), element `i` of stream `seed`.
HDPISSA_HOST_DEVICE inline double counter_uniform(std::uint64_t seed, std::uint64_t i) {
  const std::uint64_t bits = splitmix64(splitmix64(seed) ^ i) >> 11;  // 53 random bits
  return (double(bits) + 0.5) * (1.0 / 9007199254740992.0);
}

/// Standard normal, element `i` of stream `seed` (Box–Muller on two independent uniforms).
HDPISSA_HOST_DEVICE inline double counter_normal(std::uint64_t seed, std::uint64_t i) {
  const double u1 = counter_uniform(seed, 2 * i);
  const double u2 = counter_uniform(seed, 2 * i + 1);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925 * u2);
}

}  // namespace hdpissa
