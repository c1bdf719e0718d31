#pragma once
// Test helpers: the one tolerance formula |a − b| ≤ atol + rtol·|ref| with one per-dtype table,
// normalised error, and dense double-precision references computed with plain loops (independent
// of the backend's GEMM).
#include <doctest/doctest.h>

#include <cmath>
#include <string>
#include <vector>

#include "hdpissa/hdpissa.hpp"

namespace hdtest {
using hdpissa::index_t;

template <class T>
struct Tol;
template <>
struct Tol<float> {
  static constexpr double atol = 1e-5, rtol = 1e-4;
};
template <>
struct Tol<double> {
  static constexpr double atol = 1e-12, rtol = 1e-10;
};

/// Dense row-major double matrix for references.
struct Ref {
  index_t rows = 0, cols = 0;
  std::vector<double> v;
  Ref() = default;
  Ref(index_t r, index_t c) : rows(r), cols(c), v(std::size_t(r * c), 0.0) {}
  double& operator()(index_t i, index_t j) { return v[std::size_t(i * cols + j)]; }
  double operator()(index_t i, index_t j) const { return v[std::size_t(i * cols + j)]; }
};

template <class T>
Ref to_ref(hdpissa::ConstMatrixView<T> x) {
  Ref r(x.rows, x.cols);
  for (index_t i = 0; i < x.rows; ++i)
    for (index_t j = 0; j < x.cols; ++j) r(i, j) = double(x(i, j));
  return r;
}
template <class T>
Ref to_ref(hdpissa::MatrixView<T> x) {
  return to_ref(hdpissa::ConstMatrixView<T>(x));
}

inline Ref matmul(const Ref& a, const Ref& b, bool ta = false, bool tb = false) {
  const index_t m = ta ? a.cols : a.rows, k = ta ? a.rows : a.cols, n = tb ? b.rows : b.cols;
  REQUIRE(k == (tb ? b.cols : b.rows));
  Ref c(m, n);
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) {
      double s = 0;
      for (index_t p = 0; p < k; ++p) s += (ta ? a(p, i) : a(i, p)) * (tb ? b(j, p) : b(p, j));
      c(i, j) = s;
    }
  return c;
}
inline Ref add(const Ref& a, const Ref& b, double sb = 1.0) {
  REQUIRE((a.rows == b.rows && a.cols == b.cols));
  Ref c = a;
  for (std::size_t i = 0; i < c.v.size(); ++i) c.v[i] += sb * b.v[i];
  return c;
}
inline double max_abs(const Ref& a) {
  double m = 0;
  for (double x : a.v) m = std::max(m, std::abs(x));
  return m;
}

/// Number of elements violating |a − ref| ≤ atol + rtol·|ref|; with `scale`, atol is relative to max|ref|.
inline long count_violations(const Ref& a, const Ref& ref, double atol, double rtol, bool scale_atol = true) {
  REQUIRE(a.rows == ref.rows);
  REQUIRE(a.cols == ref.cols);
  const double s = scale_atol ? std::max(1.0, max_abs(ref)) : 1.0;
  long bad = 0;
  for (std::size_t i = 0; i < a.v.size(); ++i)
    if (!(std::abs(a.v[i] - ref.v[i]) <= atol * s + rtol * std::abs(ref.v[i]))) ++bad;
  return bad;
}
template <class T>
long violations(const Ref& a, const Ref& ref, double factor = 1.0) {
  return count_violations(a, ref, Tol<T>::atol * factor, Tol<T>::rtol * factor);
}

/// Random matrix with entries from the library's counter-based normal stream, times `scale`.
template <class B>
typename B::matrix_type random_matrix(B& b, index_t r, index_t c, std::uint64_t seed, double scale = 1.0) {
  auto m = b.make_matrix(r, c);
  hdpissa::fill_gaussian(b, m.view(), seed);
  b.scale(m.view(), typename B::scalar_type(scale));
  return m;
}

/// A matrix with a prescribed spectrum: U diag(sigma) Vᵀ with random orthonormal U, V.
template <class B>
typename B::matrix_type matrix_with_spectrum(B& b, index_t m, index_t n, const std::vector<double>& sigma,
                                             std::uint64_t seed) {
  using S = typename B::scalar_type;
  const index_t k = index_t(sigma.size());
  auto U = random_matrix(b, m, k, seed);
  auto V = random_matrix(b, n, k, seed + 1);
  b.orthonormalize(U.view());
  b.orthonormalize(V.view());
  auto d = b.make_matrix(1, k);
  for (index_t i = 0; i < k; ++i) d.view()(0, i) = S(sigma[std::size_t(i)]);
  b.scale_cols(U.view(), hdpissa::ConstMatrixView<S>(d.view()));
  auto W = b.make_matrix(m, n);
  b.gemm(hdpissa::Op::N, hdpissa::Op::T, S(1), hdpissa::ConstMatrixView<S>(U.view()),
         hdpissa::ConstMatrixView<S>(V.view()), S(0), W.view());
  return W;
}

/// Runs `fn` and checks it throws E with a message containing every fragment.
template <class E, class Fn>
void check_throws_with(Fn&& fn, std::initializer_list<const char*> fragments) {
  bool thrown = false;
  try {
    fn();
  } catch (const E& e) {
    thrown = true;
    const std::string msg = e.what();
    for (const char* f : fragments) {
      INFO("message: " << msg);
      CHECK(msg.find(f) != std::string::npos);
    }
  }
  CHECK(thrown);
}

}  // namespace hdtest
