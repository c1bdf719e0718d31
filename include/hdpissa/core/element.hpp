#pragma once
/// \file element.hpp
/// Element access for functors written once for every backend (TensorBackend's `b.elementwise`):
/// element_traits<T> gives a storage type's arithmetic type and its load/store conversions, and
/// element_sqrt is the square root both host and device code use. A backend with a storage-only
/// type specialises element_traits (CudaBackend does for __nv_bfloat16: fp32 arithmetic).

#include <cmath>

#include "hdpissa/core/config.hpp"

namespace hdpissa {

/// Storage type T → arithmetic type and conversions. Primary: T computes in itself.
template <class T>
struct element_traits {
  using compute_type = T;
  template <class C>
  HDPISSA_HOST_DEVICE static C load(T v) { return C(v); }
  template <class C>
  HDPISSA_HOST_DEVICE static T store(C v) { return T(v); }
};
template <class T>
struct element_traits<const T> : element_traits<T> {};

/// Arithmetic type of storage type T (float for bf16 storage).
template <class T>
using element_compute_t = typename element_traits<T>::compute_type;

/// The stored value `v` read as arithmetic type C.
template <class C, class T>
HDPISSA_HOST_DEVICE inline C load_as(const T& v) {
  return element_traits<T>::template load<C>(v);
}
/// Arithmetic value `v` rounded to storage type T.
template <class T, class C>
HDPISSA_HOST_DEVICE inline T store_as(C v) {
  return element_traits<T>::template store<C>(v);
}

/// Square root in C (correctly rounded: std::sqrt on the host, CUDA's sqrt overloads on the device).
template <class C>
HDPISSA_HOST_DEVICE inline C element_sqrt(C x) {
#if defined(__CUDA_ARCH__)
  return C(::sqrt(x));
#else
  return std::sqrt(x);
#endif
}

}  // namespace hdpissa
