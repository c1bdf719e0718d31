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

/// Linear warmup over `warmup_steps` updates to `peak`, then cosine decay to `min_lr` at `total_steps`.
struct WarmupCosineSchedule {
  double peak = 0;
  long warmup_steps = 0;
  long total_steps = 1;
  double min_lr = 0;
  double operator()(long step) const {
    HDPISSA_REQUIRE(total_steps > 0, "WarmupCosineSchedule: expected total_steps > 0, found ", total_steps);
    if (step < warmup_steps) return peak * double(step + 1) / double(warmup_steps);
    const long decay = std::max<long>(1, total_steps - warmup_steps);
    const double t = std::min(1.0, double(step - warmup_steps) / double(decay));
    return min_lr + 0.5 * (peak - min_lr) * (1.0 + std::cos(std::numbers::pi * t));
  }
};

/// Linear warmup, then linear decay to `min_lr` at `total_steps`.
struct WarmupLinearSchedule {
  double peak = 0;
  long warmup_steps = 0;
  long total_steps = 1;
  double min_lr = 0;
  double operator()(long step) const {
    HDPISSA_REQUIRE(total_steps > 0, "WarmupLinearSchedule: expected total_steps > 0, found ", total_steps);
    if (step < warmup_steps) return peak * double(step + 1) / double(warmup_steps);
    const long decay = std::max<long>(1, total_steps - warmup_steps);
    const double t = std::min(1.0, double(step - warmup_steps) / double(decay));
    return peak + (min_lr - peak) * t;
  }
};

/// Warmup steps from a ratio of the total (the paper's recipe: 0.03), rounded up.
inline long warmup_steps_from_ratio(double ratio, long total_steps) {
  HDPISSA_REQUIRE(ratio >= 0 && ratio <= 1, "warmup ratio: expected [0, 1], found ", ratio);
  return static_cast<long>(std::ceil(ratio * double(total_steps)));
}

}  // namespace hdpissa
