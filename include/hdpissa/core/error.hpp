#pragma once
/// \file error.hpp
/// The error types. Library code never calls exit(): bad user input throws InvalidArgument with a
/// message naming what was expected and what was found; runtime failures (numerics, collectives,
/// CUDA/NCCL/MPI calls) throw the other types, carrying the failed call, file, line and rank.

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include "hdpissa/core/config.hpp"

namespace hdpissa {

/// Base of every exception hdpissa throws.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Bad user input: wrong shapes, K·r too large, inconsistent options.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

/// A numerical failure: non-finite gradients, an SVD that did not converge.
class NumericError : public Error {
 public:
  using Error::Error;
};

/// A collective failed or a peer died; also raised when replicas of W diverge.
class CommError : public Error {
 public:
  using Error::Error;
};

/// A failed call into an external runtime (CUDA, cuBLAS, cuSOLVER, NCCL, MPI).
class RuntimeCallError : public Error {
 public:
  using Error::Error;
};

namespace detail {

inline void append_all(std::ostringstream&) {}
template <class T, class... Rest>
void append_all(std::ostringstream& os, const T& first, const Rest&... rest) {
  os << first;
  append_all(os, rest...);
}

}  // namespace detail

/// Builds a message from streamable pieces: cat("expected ", a, ", found ", b).
template <class... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream os;
  detail::append_all(os, parts...);
  return os.str();
}

/// Shape of a matrix as "(rows, cols)".
inline std::string shape_str(index_t rows, index_t cols) { return cat("(", rows, ", ", cols, ")"); }

}  // namespace hdpissa

/// HDPISSA_REQUIRE(cond, parts...): validates user input; throws InvalidArgument(cat(parts...)).
#define HDPISSA_REQUIRE(cond, ...)                                          \
  do {                                                                      \
    if (!(cond)) throw ::hdpissa::InvalidArgument(::hdpissa::cat(__VA_ARGS__)); \
  } while (0)
