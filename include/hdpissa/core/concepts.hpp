#pragma once
/// \file concepts.hpp
/// The three concepts the algorithms are written against: TensorBackend, Communicator, Optimizer.
/// Each is documented as the list of expressions it requires; tests/unit/test_concepts.cpp holds a
/// minimal mock satisfying each and a negative static_assert.

#include <concepts>
#include <cstddef>
#include <string>

#include "hdpissa/core/config.hpp"
#include "hdpissa/core/view.hpp"

namespace hdpissa {

/// Used in primary templates so a missing specialisation fails with a message (CUTLASS idiom).
template <class...>
inline constexpr bool dependent_false = false;

namespace detail {
/// A representative elementwise functor (one mutable and one read-only operand) for checking
/// TensorBackend's `b.elementwise`; a member template cannot be checked for every arity.
struct ElementwiseProbe {
  template <class T>
  HDPISSA_HOST_DEVICE void operator()(T& out, const T& in) const { out = in; }
};
}  // namespace detail

/// \concept TensorBackend
/// What every backend must have: storage, dense linear algebra and a generic elementwise map, in
/// one memory space. Nothing here names an algorithm: optimizers are functors over `b.elementwise`
/// (core/update_args.hpp), and the Direct Weight Update's fused kernels are a separate, optional
/// trait (DwuKernels / FusedDwuKernels, core/dwu_kernels.hpp). With `b` a backend, `s` = B::scalar_type (storage), `c` = B::compute_type
/// (accumulation / scalars), `X`,`Y` MatrixView<s>, `CX` ConstMatrixView<s>, `h` a host pointer:
///   - `B::scalar_type`, `B::compute_type`, `B::memory_space` (host_memory or device_memory), `B::matrix_type`
///   - `b.make_matrix(rows, cols)` → matrix_type, zero-filled, owning (setup only; hot paths never allocate)
///   - `m.view()` → MatrixView<s>, `m.rows()`, `m.cols()`
///   - `b.gemm(Op, Op, c alpha, CX A, CX B, c beta, Y C)`: C ← α op(A) op(B) + β C (β = 0 ignores C's contents)
///   - `b.copy(CX src, Y dst)`; `b.fill(Y, c)`; `b.scale(Y, c)`; `b.axpy(c alpha, CX x, Y y)`: y += αx
///   - `b.scale_rows(Y, CX d)`: Y[i,:] *= d[i] (d is 1×rows); `b.scale_cols(Y, CX d)`: Y[:,j] *= d[j]
///   - `b.sqrt(Y)`: elementwise in place
///   - `b.upload(const s* h, Y dst)`, `b.download(CX src, s* h)`: dense host (rows×cols) ↔ view
///   - `b.all_finite(CX)` → bool; `b.sum_squares(CX)` → double; `b.checksum(CX)` → double (order-sensitive)
///   - `b.elementwise(f, V0, V1, …)`: for every element (i, j), `f(v0(i,j), v1(i,j), …)` where each Vk is a
///     MatrixView<s> (passed as `s&`) or ConstMatrixView<s> (as `const s&`), all of V0's shape
///     (InvalidArgument otherwise). f is a copyable functor whose operator() is a template over the
///     element type, marked HDPISSA_HOST_DEVICE (a device backend runs it in a kernel); it converts
///     with load_as / store_as (core/element.hpp). Elements are independent: no order is promised.
///   - `b.thin_svd(CX A, Y U, Y S, Y Vt)`: A (m,n) = U (m,k) diag(S (1,k)) Vt (k,n), k = min(m,n), S descending
///   - `b.orthonormalize(Y)`: replaces the (m, n ≤ m) matrix by the Q of its thin QR
///   - `b.synchronize()`: waits for queued work (no-op on the CPU)
template <class B>
concept TensorBackend =
    requires(B& b, typename B::matrix_type& m, MatrixView<typename B::scalar_type> X,
             ConstMatrixView<typename B::scalar_type> CX, typename B::compute_type c,
             const typename B::scalar_type* hin, typename B::scalar_type* hout, index_t n, Op op,
             detail::ElementwiseProbe probe) {
      typename B::scalar_type;
      typename B::compute_type;
      typename B::memory_space;
      { b.make_matrix(n, n) } -> std::same_as<typename B::matrix_type>;
      { m.view() } -> std::same_as<MatrixView<typename B::scalar_type>>;
      { m.rows() } -> std::convertible_to<index_t>;
      { m.cols() } -> std::convertible_to<index_t>;
      b.gemm(op, op, c, CX, CX, c, X);
      b.copy(CX, X);
      b.fill(X, c);
      b.scale(X, c);
      b.axpy(c, CX, X);
      b.scale_rows(X, CX);
      b.scale_cols(X, CX);
      b.sqrt(X);
      b.upload(hin, X);
      b.download(CX, hout);
      { b.all_finite(CX) } -> std::convertible_to<bool>;
      { b.sum_squares(CX) } -> std::convertible_to<double>;
      { b.checksum(CX) } -> std::convertible_to<double>;
      b.elementwise(probe, X, CX);
      b.thin_svd(CX, X, X, X);
      b.orthonormalize(X);
      b.synchronize();
    };

/// \concept Communicator
/// Collectives among P physical workers hosting K logical adapter groups (K = P × groups per
/// worker; each worker hosts a contiguous block). With `c` a communicator, `T` ∈ {float, double},
/// `s` a const T*, `r` a T* (in C::memory_space), `n` a count, `root` a worker rank:
///   - `C::memory_space`
///   - `c.rank()`, `c.size()`: this worker and the number of workers (P)
///   - `c.groups()`: K; `c.local_groups()`: groups hosted here; `c.first_group()`: the first of them
///   - `c.all_gather(s, r, n)`: `s` holds local_groups()·n values (group-major), `r` receives groups()·n
///   - `c.all_reduce_sum(r, n)`: in place, over workers; every worker gets a bit-identical result
///   - `c.broadcast(r, n, root)`; `c.barrier()`
template <class C>
concept Communicator = requires(C& c, const float* sf, float* rf, const double* sd, double* rd,
                                std::size_t n, int root) {
  typename C::memory_space;
  { c.rank() } -> std::convertible_to<int>;
  { c.size() } -> std::convertible_to<int>;
  { c.groups() } -> std::convertible_to<int>;
  { c.local_groups() } -> std::convertible_to<int>;
  { c.first_group() } -> std::convertible_to<int>;
  c.all_gather(sf, rf, n);
  c.all_gather(sd, rd, n);
  c.all_reduce_sum(rf, n);
  c.all_reduce_sum(rd, n);
  c.broadcast(rf, n, root);
  c.broadcast(rd, n, root);
  c.barrier();
};

/// \concept Optimizer
/// A per-tensor update rule that produces a *delta* (param_new = param − delta) rather than writing
/// the parameter, because HD-PiSSA folds the deltas into W instead of applying them. With `o` an
/// optimizer, `b` a backend B, `st` an `O::template state<B>`, `p`,`g` const views, `d` a view, `lr`:
///   - `O::template state<B>`: its per-tensor state (moments, step count)
///   - `o.make_state(b, rows, cols)` → state<B>
///   - `o.compute_delta(b, st, p, g, d, lr)`: advances the state one step and writes delta into d
///   - `o.name()` → something convertible to std::string
template <class O, class B>
concept Optimizer = TensorBackend<B> &&
    requires(O& o, B& b, typename O::template state<B>& st,
             ConstMatrixView<typename B::scalar_type> p, MatrixView<typename B::scalar_type> d,
             double lr, index_t n) {
      { o.make_state(b, n, n) } -> std::same_as<typename O::template state<B>>;
      o.compute_delta(b, st, p, p, d, lr);
      { o.name() } -> std::convertible_to<std::string>;
    };

/// Compile-time check that backend B and communicator C exchange buffers in the same memory space.
template <class B, class C>
inline constexpr bool same_memory_space_v =
    std::is_same_v<typename B::memory_space, typename C::memory_space>;

}  // namespace hdpissa
