#pragma once
/// \file config.hpp
/// Basic types and the overridable assertion macro used by every hdpissa header.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

namespace hdpissa {

/// Index type for matrix extents and leading dimensions (signed, 64-bit: 11008×4096 overflows nothing).
using index_t = std::int64_t;

}  // namespace hdpissa

/// HDPISSA_HOST_DEVICE marks functions callable from host and device code (elementwise functors
/// written once for every backend, e.g. AdamElement). Expands to `__host__ __device__` under nvcc
/// and to nothing for host-only compilers.
#if defined(__CUDACC__)
#  define HDPISSA_HOST_DEVICE __host__ __device__
#else
#  define HDPISSA_HOST_DEVICE
#endif

/// HDPISSA_ASSERT(cond, msg): checks programmer errors (broken invariants inside the library).
/// Define HDPISSA_ASSERT before including hdpissa to route it elsewhere (Eigen's eigen_assert idiom);
/// define HDPISSA_NO_ASSERT to compile the checks out. User input is never checked with this macro:
/// bad input throws hdpissa::InvalidArgument with a message (see error.hpp).
#ifndef HDPISSA_ASSERT
#  ifdef HDPISSA_NO_ASSERT
#    define HDPISSA_ASSERT(cond, msg) ((void)0)
#  else
#    define HDPISSA_ASSERT(cond, msg)                                                        \
       ((cond) ? (void)0                                                                     \
               : (std::fprintf(stderr, "hdpissa: assertion failed: %s (%s) at %s:%d\n", #cond, \
                               msg, __FILE__, __LINE__),                                     \
                  std::abort()))
#  endif
#endif
