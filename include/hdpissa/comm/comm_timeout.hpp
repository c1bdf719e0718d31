#pragma once
/// \file comm_timeout.hpp
/// timeout_from_env(): the deadline of the process communicators (MpiCommunicator,
/// NcclCommunicator) defaults from $HDPISSA_COMM_TIMEOUT_S, so a launcher can change it without
/// recompiling.

#include <chrono>
#include <cstdlib>

#include "hdpissa/core/error.hpp"

namespace hdpissa {

/// Reads a timeout in seconds (fractions allowed) from environment variable `var`, else returns
/// `fallback`. Zero or negative means "no deadline" to the communicators.
inline std::chrono::milliseconds timeout_from_env(const char* var, std::chrono::milliseconds fallback) {
  const char* s = std::getenv(var);
  if (!s || !*s) return fallback;
  char* end = nullptr;
  const double seconds = std::strtod(s, &end);
  HDPISSA_REQUIRE(end && *end == '\0', var, ": expected a number of seconds, found '", s, "'");
  return std::chrono::milliseconds(static_cast<long long>(seconds * 1000.0));
}

/// The default deadline of one collective: $HDPISSA_COMM_TIMEOUT_S, else 10 minutes
/// (torch.distributed's default).
inline std::chrono::milliseconds default_comm_timeout() {
  return timeout_from_env("HDPISSA_COMM_TIMEOUT_S", std::chrono::minutes(10));
}

}  // namespace hdpissa
