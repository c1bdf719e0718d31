#pragma once
/// \file schedule.hpp
/// Learning-rate schedules: callables `double operator()(long step) const`, kept out of the
/// optimizers. `step` counts optimizer updates from 0. Unlike the authors' code, the first update of
/// a warmup schedule uses a non-zero rate: lr(0) = peak / warmup_steps.

#include <algorithm>
#include <cmath>
#include <numbers>

#include "hdpissa/core/error.hpp"

namespace hdpissa {

/// Constant learning rate.
struct ConstantSchedule {
  double lr = 0;
  double operator()(long) const { return lr; }
};

namespace detail {
/// Linear warmup to `peak`, then `decay(t)` for t ∈ [0, 1] over the remaining steps.
template <class Decay>
double warmup_then(long step, double peak, long warmup_steps, long total_steps, const char* who, Decay decay) {
  HDPISSA_REQUIRE(total_steps > 0, who, ": expected total_steps > 0, found ", total_steps);
  if (step < warmup_steps) return peak * double(step + 1) / double(warmup_steps);
  const long span = std::max<long>(1, total_steps - warmup_steps);
  return decay(std::min(1.0, double(step - warmup_steps) / double(span)));
}
}  // namespace detail

/// Linear warmup over `warmup_steps` updates to `peak`, then cosine decay to `min_lr` at `total_steps`.
struct WarmupCosineSchedule {
  double peak = 0;
  long warmup_steps = 0;
  long total_steps = 1;
  double min_lr = 0;
  double operator()(long step) const {
    return detail::warmup_then(step, peak, warmup_steps, total_steps, "WarmupCosineSchedule", [&](double t) {
      return min_lr + 0.5 * (peak - min_lr) * (1.0 + std::cos(std::numbers::pi * t));
    });
  }
};

/// Linear warmup, then linear decay to `min_lr` at `total_steps`.
struct WarmupLinearSchedule {
  double peak = 0;
  long warmup_steps = 0;
  long total_steps = 1;
  double min_lr = 0;
  double operator()(long step) const {
    return detail::warmup_then(step, peak, warmup_steps, total_steps, "WarmupLinearSchedule",
                               [&](double t) { return peak + (min_lr - peak) * t; });
  }
};

/// Warmup steps from a ratio of the total (the paper's recipe: 0.03), rounded up.
inline long warmup_steps_from_ratio(double ratio, long total_steps) {
  HDPISSA_REQUIRE(ratio >= 0 && ratio <= 1, "warmup ratio: expected [0, 1], found ", ratio);
  return static_cast<long>(std::ceil(ratio * double(total_steps)));
}

}  // namespace hdpissa
