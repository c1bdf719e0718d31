// W-precision apply rules (core/w_precision.hpp) on the GPU == the same rules on the CPU, bit for
// bit: each rule is one HDPISSA_HOST_DEVICE function; here a kernel runs it over bf16 device
// storage (__nv_bfloat16 reinterpreted as raw bits) and the host loop over raw bits and over fp32
// slots (the CPU reference), for many steps of random-sized updates (tiny, ulp-sized, large, and
// non-finite ones).
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cuda_test_util.hpp"
#include "hdpissa/core/w_precision.hpp"

using namespace hdpissa;

namespace {
__global__ void apply_compensated(__nv_bfloat16* w, __nv_bfloat16* c, const float* d, std::int64_t n) {
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  auto* wb = reinterpret_cast<std::uint16_t*>(w);
  auto* cb = reinterpret_cast<std::uint16_t*>(c);
  Bf16Compensated{}(wb[i], cb[i], d[i]);
}
__global__ void apply_sr(__nv_bfloat16* w, const float* d, std::int64_t n, Bf16StochasticRounding sr) {
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  sr(reinterpret_cast<std::uint16_t*>(w)[i], d[i], std::uint64_t(i));
}
__global__ void apply_fp32(float* w, const float* d, std::int64_t n) {
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) Fp32Master{}(w[i], d[i]);
}
__global__ void round_rn(const float* x, __nv_bfloat16* y, std::int64_t n) {
  const std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = __float2bfloat16_rn(x[i]);
}

template <class T>
T* dalloc(std::size_t n) {
  T* p = nullptr;
  REQUIRE(cudaMalloc(&p, n * sizeof(T)) == cudaSuccess);
  return p;
}
template <class T>
void h2d(T* d, const std::vector<T>& h) {
  REQUIRE(cudaMemcpy(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
}
template <class T>
std::vector<T> d2h(const T* d, std::size_t n) {
  std::vector<T> h(n);
  REQUIRE(cudaMemcpy(h.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
  return h;
}
/// Step k's update of element i: tiny (below half an ulp), ulp-sized, large, occasionally non-finite.
float update(std::int64_t i, int k) {
  const double u = counter_uniform(1000 + std::uint64_t(k), std::uint64_t(i)) - 0.5;
  const int kind = int(i % 7);
  if (kind == 6 && k == 3 && i % 91 == 6) return i % 2 ? INFINITY : NAN;
  const double scale = kind < 3 ? 1e-4 : kind < 5 ? 1e-2 : 0.5;
  return float(u * scale);
}
}  // namespace

TEST_CASE("W-precision rules: GPU kernel == CPU rule, bit for bit (raw bits and fp32 slots)") {
  const std::int64_t n = 50000;
  const std::size_t N = std::size_t(n);
  const int steps = 6;
  std::vector<float> w0(N);
  for (std::size_t i = 0; i < N; ++i) w0[i] = float(4.0 * (counter_uniform(5, i) - 0.5));
  // The bf16 rounding itself: bf16_bits_rn == __float2bfloat16_rn on the device.
  std::vector<std::uint16_t> wb(N), cb(N, 0);
  for (std::size_t i = 0; i < N; ++i) wb[i] = bf16_bits_rn(w0[i]);
  {
    float* x = dalloc<float>(N);
    __nv_bfloat16* y = dalloc<__nv_bfloat16>(N);
    h2d(x, w0);
    round_rn<<<unsigned((n + 255) / 256), 256>>>(x, y, n);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    std::vector<std::uint16_t> got(N);
    REQUIRE(cudaMemcpy(got.data(), y, N * 2, cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(got == wb);
    cudaFree(x);
    cudaFree(y);
  }
  auto* dw = dalloc<__nv_bfloat16>(N);
  auto* dc = dalloc<__nv_bfloat16>(N);
  auto* ds = dalloc<__nv_bfloat16>(N);
  auto* df = dalloc<float>(N);
  auto* dd = dalloc<float>(N);
  REQUIRE(cudaMemcpy(dw, wb.data(), N * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemcpy(ds, wb.data(), N * 2, cudaMemcpyHostToDevice) == cudaSuccess);
  REQUIRE(cudaMemset(dc, 0, N * 2) == cudaSuccess);
  h2d(df, w0);
  std::vector<std::uint16_t> sb = wb;  // SR, raw bits
  std::vector<float> wf(N), cf(N, 0.0f), sf(N), f32 = w0;
  for (std::size_t i = 0; i < N; ++i) wf[i] = sf[i] = bf16_bits_to_float(wb[i]);
  for (int k = 0; k < steps; ++k) {
    std::vector<float> d(N);
    for (std::size_t i = 0; i < N; ++i) d[i] = update(std::int64_t(i), k);
    h2d(dd, d);
    const Bf16StochasticRounding sr{.seed = 42, .step = std::uint64_t(k)};
    const unsigned blocks = unsigned((n + 255) / 256);
    apply_compensated<<<blocks, 256>>>(dw, dc, dd, n);
    apply_sr<<<blocks, 256>>>(ds, dd, n, sr);
    apply_fp32<<<blocks, 256>>>(df, dd, n);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    for (std::size_t i = 0; i < N; ++i) {
      Bf16Compensated{}(wb[i], cb[i], d[i]);
      Bf16Compensated{}(wf[i], cf[i], d[i]);
      sr(sb[i], d[i], i);
      sr(sf[i], d[i], i);
      Fp32Master{}(f32[i], d[i]);
    }
    std::vector<std::uint16_t> gw(N), gc(N), gs(N);
    REQUIRE(cudaMemcpy(gw.data(), dw, N * 2, cudaMemcpyDeviceToHost) == cudaSuccess);
    REQUIRE(cudaMemcpy(gc.data(), dc, N * 2, cudaMemcpyDeviceToHost) == cudaSuccess);
    REQUIRE(cudaMemcpy(gs.data(), ds, N * 2, cudaMemcpyDeviceToHost) == cudaSuccess);
    const std::vector<float> gf = d2h(df, N);
    CAPTURE(k);
    CHECK(gw == wb);
    CHECK(gc == cb);
    CHECK(gs == sb);
    const auto same = [](float a, float b) {  // bits, except that any NaN equals any NaN (payloads differ)
      return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof a) == 0;
    };
    std::size_t fp32_mismatch = 0, float_slot_mismatch = 0;
    for (std::size_t i = 0; i < N; ++i) fp32_mismatch += !same(gf[i], f32[i]);
    CHECK(fp32_mismatch == 0);
    for (std::size_t i = 0; i < N; ++i) {
      float_slot_mismatch += !same(wf[i], bf16_bits_to_float(wb[i])) || !same(cf[i], bf16_bits_to_float(cb[i])) ||
                             !same(sf[i], bf16_bits_to_float(sb[i]));
    }
    CHECK(float_slot_mismatch == 0);
  }
  cudaFree(dw);
  cudaFree(dc);
  cudaFree(ds);
  cudaFree(df);
  cudaFree(dd);
}
