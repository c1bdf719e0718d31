#pragma once
// Helpers of the GPU suite: the per-dtype tolerance table (one place), normalised MSE, random host
// data, and CPU/GPU twin matrices for parity tests against EigenBackend (the reference).
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "hdpissa/cuda.hpp"

namespace hdpissa::test {

/// Normalised-MSE tolerance per storage type: Σ(a−b)² / Σ b² ≤ nmse_tol<T>.
template <class T>
constexpr double nmse_tol() {
  if constexpr (std::is_same_v<T, double>) return 1e-24;
  else if constexpr (std::is_same_v<T, float>) return 1e-11;
  else return 1e-4;  // bf16 storage (8-bit mantissa)
}

inline double nmse(const std::vector<double>& a, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = a[i] - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  if (den == 0) return num;
  return num / den;
}

template <class T>
std::vector<T> random_host(index_t rows, index_t cols, std::uint64_t seed, double scale = 1.0) {
  std::vector<T> v(std::size_t(rows * cols));
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = T(scale * counter_normal(seed, i));
  return v;
}

/// Dense copy of a host view.
template <class T>
std::vector<double> dense(ConstMatrixView<T> v) {
  std::vector<double> out;
  out.reserve(std::size_t(v.size()));
  for (index_t i = 0; i < v.rows; ++i)
    for (index_t j = 0; j < v.cols; ++j) out.push_back(double(v(i, j)));
  return out;
}
/// Dense copy of a device view.
template <class T>
std::vector<double> dense(CudaBackend<T>& g, ConstMatrixView<T> v) {
  std::vector<T> h(std::size_t(v.size()));
  g.download(v, h.data());
  std::vector<double> out(h.size());
  for (std::size_t i = 0; i < h.size(); ++i) out[i] = double(cuda_kernels::load<float>(h[i]));
  if constexpr (std::is_same_v<T, double>)
    for (std::size_t i = 0; i < h.size(); ++i) out[i] = h[i];
  return out;
}

/// The same matrix on the CPU reference and on the GPU; `pad` extra columns make the views strided.
template <class T>
struct Twin {
  typename EigenBackend<T>::Matrix c;
  typename CudaBackend<T>::Matrix g;
  index_t rows, cols;
  MatrixView<T> cv() { return c.view().col_block(0, cols); }
  MatrixView<T> gv() { return g.view().col_block(0, cols); }
};
template <class T>
Twin<T> twin(EigenBackend<T>& cpu, CudaBackend<T>& gpu, index_t rows, index_t cols, std::uint64_t seed,
             index_t pad = 0, double scale = 1.0) {
  Twin<T> t{cpu.make_matrix(rows, cols + pad), gpu.make_matrix(rows, cols + pad), rows, cols};
  auto h = random_host<T>(rows, cols + pad, seed, scale);
  cpu.upload(h.data(), t.c.view());
  gpu.upload(h.data(), t.g.view());
  return t;
}
/// Poisons both copies' views with NaN (outputs must not depend on prior contents).
template <class T>
void poison(EigenBackend<T>& cpu, CudaBackend<T>& gpu, Twin<T>& t) {
  cpu.fill(t.cv(), std::numeric_limits<T>::quiet_NaN());
  gpu.fill(t.gv(), std::numeric_limits<T>::quiet_NaN());
}
/// CHECKs the GPU copy against the CPU copy by normalised MSE.
template <class T>
void check_twin(CudaBackend<T>& gpu, Twin<T>& t, const char* what, double tol = nmse_tol<T>()) {
  const auto a = dense(gpu, ConstMatrixView<T>(t.gv()));
  const auto r = dense(ConstMatrixView<T>(t.cv()));
  const double e = nmse(a, r);
  INFO(what, ": nmse = ", e, " (tolerance ", tol, ")");
  CHECK(e <= tol);
  bool finite = true;
  for (double x : a) finite = finite && std::isfinite(x);
  CHECK(finite);
}

inline bool have_gpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

}  // namespace hdpissa::test
