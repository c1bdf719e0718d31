#pragma once
/// \file stream_priority.hpp
/// StreamPriority, the scheduling priority of a stream the CUDA backend creates
/// (CudaStream(StreamPriority), CudaBackendOptions::stream_priority / dwu_apply_priority), and its
/// environment-variable parser. No CUDA dependency: a trainer validates the variables with its
/// command line, before any device or model is touched.

#include <cstdlib>
#include <cstring>

#include "hdpissa/core/error.hpp"

namespace hdpissa {

/// Scheduling priority of a stream the library creates. Default: what cudaStreamCreate gives (the
/// device's lowest). High: the device's greatest — whenever an SM has room, the block scheduler
/// starts this stream's pending blocks before those of lower-priority streams (running blocks are
/// not preempted). For a side stream whose work another stream will soon wait for (the adapters'
/// gradient GEMMs beside the model's backward, the DWU's W updates beside the next forward).
/// A priority changes which ready work starts first, never an order the streams' events impose:
/// results are the same bit for bit.
enum class StreamPriority { Default, High };

/// A StreamPriority from environment variable `var`: "default" → Default, "high" → High, unset or
/// empty → `unset`; anything else is an InvalidArgument naming the variable.
inline StreamPriority stream_priority_from_env(const char* var, StreamPriority unset = StreamPriority::Default) {
  const char* e = std::getenv(var);
  if (!e || !*e) return unset;
  if (std::strcmp(e, "default") == 0) return StreamPriority::Default;
  if (std::strcmp(e, "high") == 0) return StreamPriority::High;
  throw InvalidArgument(cat(var, ": expected default or high, found '", e, "'"));
}

}  // namespace hdpissa
