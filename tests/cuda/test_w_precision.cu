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
#include "hdpissa/backend/cuda/dwu_lowrank.cuh"
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

// DirectWeightUpdate::set_w_storage on the GPU (CudaBackend<float>: the rule fused into the sm_90a
// GEMM's epilogue, and the unfused Δ-scratch path) == the same update on the CPU (EigenBackend<float>,
// host loop over host bf16 bits), bit for bit, for each bf16 policy. The data are exactly
// representable (factors k/8, SGD deltas k/256: few-bit products and sums), so every GEMM — 3xTF32
// tensor cores, cuBLAS, Eigen — gives the same exact fp32 Δ whatever its summation order, and only
// the policies' rounding is compared. verify_replicas() runs on the storage's checksum.
namespace {
struct StorageRun {
  std::vector<std::vector<std::uint16_t>> w, c;  // per layer: W bits, compensation bits
  std::vector<std::uint32_t> amax;               // per layer: Bf16WStorage::amax after the last step (bits)
  std::int64_t side_launches = 0;                // low-rank updates run on an apply stream
  std::vector<std::vector<std::vector<std::uint16_t>>> after_step;  // per step, per layer: W bits right after it
};
/// run_storage's deferred mode (UpdateOptions::deferred_apply_join): after each step the stream
/// waits for each layer alone (wait_layer) and copies its W, while each side launch first spins
/// `spin_cycles` (a copy that skipped its wait would read the step's old W).
struct Deferred {
  bool on = false;
  long long spin_cycles = 0;
};
/// Keeps the stream busy for about `ns` nanoseconds (work queued after it waits).
__global__ void spin_ns(long long ns) {
  const long long t0 = clock64();
  long long f = 0;
  while (clock64() - t0 < ns) ++f;  // clock64 counts SM cycles (≥ 1 GHz): at least ns nanoseconds
  if (f == -1) printf("%lld", f);
}
/// max |w| over bf16 bits, as the bits of the float (what Bf16WStorage::amax must hold).
std::uint32_t max_abs_bits(const std::vector<std::uint16_t>& w) {
  std::uint32_t m = 0;
  for (const std::uint16_t b : w) m = std::max(m, std::uint32_t(b & 0x7fffu) << 16);
  return m;
}
/// Storage-side float slots for Bf16WStorage::amax: device floats for a device backend, host ones
/// otherwise; reset() zeroes them (stream-ordered on the GPU), bits() reads them back.
template <class Bk>
struct AmaxSlots {
  static constexpr bool dev = std::is_same_v<typename Bk::memory_space, device_memory>;
  Bk* b;
  std::vector<float> host;
  float* d = nullptr;
  AmaxSlots(Bk& bk, std::size_t n) : b(&bk), host(n, 0.f) {
    if constexpr (dev) d = dalloc<float>(n);
  }
  ~AmaxSlots() {
    if constexpr (dev) cudaFree(d);
  }
  float* at(std::size_t l) { return dev ? d + l : host.data() + l; }
  void reset() {
    if constexpr (dev) REQUIRE(cudaMemsetAsync(d, 0, host.size() * sizeof(float), b->stream()) == cudaSuccess);
    else std::fill(host.begin(), host.end(), 0.f);
  }
  std::vector<std::uint32_t> bits() {
    if constexpr (dev) {
      b->synchronize();
      REQUIRE(cudaMemcpy(host.data(), d, host.size() * sizeof(float), cudaMemcpyDeviceToHost) == cudaSuccess);
    }
    std::vector<std::uint32_t> out(host.size());
    std::memcpy(out.data(), host.data(), host.size() * sizeof(float));
    return out;
  }
};
constexpr int kSK = 3;
constexpr index_t kSr = 4;
const std::vector<std::pair<index_t, index_t>> kSShapes{{130, 72}, {64, 200}, {33, 20}};
float small_int_over(std::uint64_t seed, std::size_t i, int range, float denom) {
  return float(int(counter_uniform(seed, i) * (2 * range + 1)) - range) / denom;
}
std::vector<std::uint16_t> w0_bits(std::size_t l, index_t out, index_t in) {
  std::vector<std::uint16_t> w(std::size_t(out * in));
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = bf16_bits_rn(float(4.0 * (counter_uniform(900 + l, i) - 0.5)));
  return w;
}
/// `steps` SGD steps (K = 3, r = 4, three layers) with every W in a bf16 storage of `policy`.
/// Storage is host memory for EigenBackend and device memory for CudaBackend.
template <class Bk, class Comm>
StorageRun run_storage(Bk& b, Comm& comm, WPrecision policy, int steps, Deferred deferred = {}) {
  constexpr bool dev = std::is_same_v<typename Bk::memory_space, device_memory>;
  std::int64_t out_side = 0;
  UpdateOptions uo;
  uo.deferred_apply_join = deferred.on;
  DirectWeightUpdate<Bk, Sgd, Comm> dwu(b, comm, Sgd{}, uo);
  if constexpr (requires { dwu.kernels().set_apply_side_spin_for_tests(1LL); })
    dwu.kernels().set_apply_side_spin_for_tests(deferred.spin_cycles);
  // device: per step, per layer, W right after the step — allocated before the steps (a cudaMalloc
  // between a wait and its copy could synchronise the streams and hide a missing wait)
  std::vector<std::vector<std::uint16_t*>> snap;
  if constexpr (dev)
    if (deferred.on)
      for (int s = 0; s < steps; ++s) {
        snap.emplace_back();
        for (const auto& [o, in] : kSShapes) snap.back().push_back(dalloc<std::uint16_t>(std::size_t(o * in)));
      }
  std::vector<std::vector<std::vector<std::uint16_t>>> out_after_step;  // host: the same
  std::vector<std::vector<std::uint16_t>> hw, hc;  // host storage (CPU)
  std::vector<std::uint16_t*> W, C;
  AmaxSlots<Bk> amax(b, kSShapes.size());
  std::uint64_t offset = 0;
  for (std::size_t l = 0; l < kSShapes.size(); ++l) {
    const auto [o, in] = kSShapes[l];
    const std::size_t n = std::size_t(o * in);
    auto set = make_adapter_set(b, o, in, kSK, kSr);
    std::vector<float> A(std::size_t(kSK * kSr * in)), B(std::size_t(o * kSK * kSr));
    for (std::size_t i = 0; i < A.size(); ++i) A[i] = small_int_over(300 + l, i, 4, 8.f);
    for (std::size_t i = 0; i < B.size(); ++i) B[i] = small_int_over(400 + l, i, 4, 8.f);
    b.upload(A.data(), set.A.view());
    b.upload(B.data(), set.B.view());
    dwu.add_layer(std::string("w").append(std::to_string(l)), MatrixView<float>{nullptr, o, in, in}, set);
    hw.push_back(w0_bits(l, o, in));
    hc.push_back(std::vector<std::uint16_t>(n, 0));
    if constexpr (dev) {
      W.push_back(dalloc<std::uint16_t>(n));
      C.push_back(dalloc<std::uint16_t>(n));
      h2d(W.back(), hw.back());
      h2d(C.back(), hc.back());
    } else {
      W.push_back(hw.back().data());
      C.push_back(hc.back().data());
    }
    Bf16WStorage st;
    st.policy = policy;
    st.w = W.back();
    st.ldw = in;
    st.c = policy == WPrecision::Bf16Compensated ? C.back() : nullptr;
    st.ldc = in;
    st.seed = 7;
    st.offset = offset;
    st.amax = amax.at(l);
    offset += std::uint64_t(n);
    dwu.set_w_storage(l, st);
  }
  dwu.set_w_step(3);  // as after a resume at step 3
  for (int s = 0; s < steps; ++s) {
    for (std::size_t l = 0; l < kSShapes.size(); ++l)
      for (int g = 0; g < kSK; ++g) {
        const auto [o, in] = kSShapes[l];
        std::vector<float> ga(std::size_t(kSr * in)), gb(std::size_t(o * kSr));
        for (std::size_t i = 0; i < ga.size(); ++i) ga[i] = small_int_over(5000 + 97 * s + 13 * l + g, i, 8, 64.f);
        for (std::size_t i = 0; i < gb.size(); ++i) gb[i] = small_int_over(6000 + 97 * s + 13 * l + g, i, 8, 64.f);
        b.upload(ga.data(), dwu.grad_A(l, g));
        b.upload(gb.data(), dwu.grad_B(l, g));
      }
    amax.reset();
    // ≈ 5 ms of work ahead of the step on the backend's stream (the step's batched non-finite check
    // waits for it on the host before Adam, so this does not time the side streams' wait for the
    // fork; the deferred mode's side spins time the waits after the step)
    if constexpr (dev) spin_ns<<<1, 1, 0, b.stream()>>>(5000000LL);
    dwu.step(0.25);
    if constexpr (dev) {
      if (deferred.on) {
        // what the next forward does: each layer's W read on the stream after its own wait only
        for (std::size_t l = 0; l < kSShapes.size(); ++l) {
          const std::size_t n = std::size_t(kSShapes[l].first * kSShapes[l].second);
          dwu.wait_layer(l);
          REQUIRE(cudaMemcpyAsync(snap[std::size_t(s)][l], W[l], n * 2, cudaMemcpyDeviceToDevice, b.stream()) ==
                  cudaSuccess);
        }
      }
    } else {
      out_after_step.push_back(hw);
    }
    dwu.zero_grad();
  }
  if constexpr (requires { dwu.kernels().apply_side_launches(); }) out_side = dwu.kernels().apply_side_launches();
  dwu.verify_replicas();
  b.synchronize();
  StorageRun out;
  out.amax = amax.bits();
  out.side_launches = out_side;
  out.after_step = std::move(out_after_step);
  for (auto& step_snap : snap) {
    out.after_step.emplace_back();
    for (std::size_t l = 0; l < kSShapes.size(); ++l) {
      out.after_step.back().push_back(d2h(step_snap[l], std::size_t(kSShapes[l].first * kSShapes[l].second)));
      cudaFree(step_snap[l]);
    }
  }
  for (std::size_t l = 0; l < kSShapes.size(); ++l) {
    const auto [o, in] = kSShapes[l];
    if constexpr (dev) {
      out.w.push_back(d2h(W[l], std::size_t(o * in)));
      out.c.push_back(d2h(C[l], std::size_t(o * in)));
      cudaFree(W[l]);
      cudaFree(C[l]);
    } else {
      out.w.push_back(hw[l]);
      out.c.push_back(hc[l]);
    }
  }
  return out;
}
}  // namespace

TEST_CASE("DWU with a bf16 W storage: GPU fused epilogue == GPU unfused == CPU, bit for bit, per policy") {
  // 2Kr = 24: Auto runs the CUDA-core low-rank kernel (dwu_lowrank.cuh); Tf32x3 the sm_90a kernel
  // where this GPU and binary have it. Dyadic data: every product and sum is exact in fp32 (and in
  // 3xTF32), so the paths must agree bit for bit whatever their summation order.
  std::vector<DwuGemm> kernels{DwuGemm::Auto, DwuGemm::Simt};
  if (cuda_kernels::sm90::dwu_gemm_sm90_supported(0)) kernels.push_back(DwuGemm::Tf32x3);
  for (const DwuGemm which : kernels)
  for (const WPrecision p : {WPrecision::Bf16Compensated, WPrecision::Bf16StochasticRounding}) {
    CAPTURE(w_precision_name(p));
    CAPTURE(dwu_gemm_name(which));
    const int steps = 6;
    EigenBackend<float> cpu;
    VirtualRanks<SingleProcess> ccomm(SingleProcess{}, kSK);
    const StorageRun ref = run_storage(cpu, ccomm, p, steps);
    CudaBackend<float> fused, generic;
    fused.set_fused_update(true);
    fused.set_dwu_gemm(which);
    generic.set_fused_update(false);
    VirtualRanks<CudaSingleProcess> fcomm(CudaSingleProcess(fused.stream()), kSK),
        gcomm(CudaSingleProcess(generic.stream()), kSK);
    const StorageRun f = run_storage(fused, fcomm, p, steps);
    const StorageRun g = run_storage(generic, gcomm, p, steps);
    // the layers' low-rank updates spread over 2 apply streams (DwuKernels::apply_begin): the same bits
    CudaBackend<float> streamed;
    streamed.set_fused_update(true);
    streamed.set_dwu_gemm(which);
    streamed.set_dwu_apply_streams(2);
    VirtualRanks<CudaSingleProcess> scomm(CudaSingleProcess(streamed.stream()), kSK);
    const StorageRun sr = run_storage(streamed, scomm, p, steps);
    // the low-rank path (Auto, Simt at 2Kr = 24) took the apply streams; the sm_90a one does not
    if (which != DwuGemm::Tf32x3) CHECK(sr.side_launches == std::int64_t(steps * kSShapes.size()));
    CHECK(f.side_launches == 0);
    // deferred joins (UpdateOptions::deferred_apply_join) on 1 and 2 apply streams, each side launch
    // behind a ≈ 1 ms spin: W read on the stream after wait_layer(l) alone is the CPU's W after that
    // step, bit for bit (a wait that did not cover the layer would read the old W); the next step's
    // packing after the step's own join
    // (the third run: 2 apply streams at StreamPriority::High, the same bits)
    std::vector<StorageRun> dr;
    for (const int n : {1, 2, -2}) {
      CudaBackendOptions dopt;
      if (n < 0) dopt.dwu_apply_priority = StreamPriority::High;
      CudaBackend<float> db(dopt);
      db.set_fused_update(true);
      db.set_dwu_gemm(which);
      db.set_dwu_apply_streams(n < 0 ? -n : n);
      VirtualRanks<CudaSingleProcess> dcomm(CudaSingleProcess(db.stream()), kSK);
      dr.push_back(run_storage(db, dcomm, p, steps, Deferred{true, 2000000LL}));
      if (which != DwuGemm::Tf32x3) CHECK(dr.back().side_launches == std::int64_t(steps * kSShapes.size()));
    }
    REQUIRE(ref.after_step.size() == std::size_t(steps));
    for (const StorageRun& d : dr) {
      REQUIRE(d.after_step.size() == std::size_t(steps));
      for (int t = 0; t < steps; ++t)
        for (std::size_t l = 0; l < kSShapes.size(); ++l) {
          CAPTURE(t);
          CAPTURE(l);
          CHECK(d.after_step[std::size_t(t)][l] == ref.after_step[std::size_t(t)][l]);
        }
      for (std::size_t l = 0; l < kSShapes.size(); ++l) {
        CHECK(d.w[l] == ref.w[l]);
        CHECK(d.c[l] == ref.c[l]);
        CHECK(d.amax[l] == ref.amax[l]);
      }
    }
    for (int t = 1; t < steps; ++t) CHECK(ref.after_step[std::size_t(t)] != ref.after_step[std::size_t(t - 1)]);
    MESSAGE("sm_90a fused kernel available: ", cuda_kernels::sm90::dwu_gemm_sm90_supported(fused.device()));
    std::size_t changed = 0;
    for (std::size_t l = 0; l < kSShapes.size(); ++l) {
      CAPTURE(l);
      CHECK(f.w[l] == ref.w[l]);
      CHECK(g.w[l] == ref.w[l]);
      CHECK(sr.w[l] == ref.w[l]);
      CHECK(f.c[l] == ref.c[l]);
      CHECK(g.c[l] == ref.c[l]);
      CHECK(sr.c[l] == ref.c[l]);
      CHECK(sr.amax[l] == ref.amax[l]);
      // Bf16WStorage::amax after the last step: max |w| of the updated W on every path (the
      // low-rank kernel's epilogue, the pass after the 3xTF32 kernel and after the unfused apply,
      // the CPU loop)
      CHECK(ref.amax[l] == max_abs_bits(ref.w[l]));
      CHECK(f.amax[l] == ref.amax[l]);
      CHECK(g.amax[l] == ref.amax[l]);
      const auto w0 = w0_bits(l, kSShapes[l].first, kSShapes[l].second);
      for (std::size_t i = 0; i < w0.size(); ++i) changed += w0[i] != ref.w[l][i];
    }
    CHECK(changed > 0);  // the updates did move W (not a vacuous comparison)
  }
}

// DataParallelUpdate::set_w_storage on the GPU (full fine-tuning's bf16 W: CudaBackend<float>, the
// unfused apply_w_storage kernel after the optimizer, the bf16 W widened for weight decay) == the
// same update on the CPU (EigenBackend<float>, host bf16 bits), bit for bit, per policy, with and
// without weight decay. K = 4 groups, SGD on dyadic data (gradients k/64, lr 1/4, weight decay 1/2
// on bf16 W): the mean gradient, the decay term and Δ are exact in fp32 on both, so only the
// policies' rounding (and the SR stream's indices and steps) is compared.
namespace {
constexpr int kDK = 4;
const std::vector<std::pair<index_t, index_t>> kDShapes{{70, 33}, {16, 130}};
template <class Bk, class Comm>
StorageRun run_dp_storage(Bk& b, Comm& comm, WPrecision policy, double wd, int steps) {
  constexpr bool dev = std::is_same_v<typename Bk::memory_space, device_memory>;
  DataParallelUpdate<Bk, Sgd, Comm> dp(b, comm, Sgd(SgdConfig{0, wd}));
  std::vector<std::vector<std::uint16_t>> hw, hc;
  std::vector<std::uint16_t*> W, C;
  AmaxSlots<Bk> amax(b, kDShapes.size());
  std::uint64_t offset = 0;
  for (std::size_t l = 0; l < kDShapes.size(); ++l) {
    const auto [o, in] = kDShapes[l];
    dp.add_param(std::string("w").append(std::to_string(l)), MatrixView<float>{nullptr, o, in, in});
  }
  for (std::size_t l = 0; l < kDShapes.size(); ++l) {
    const auto [o, in] = kDShapes[l];
    const std::size_t n = std::size_t(o * in);
    hw.push_back(w0_bits(10 + l, o, in));
    hc.push_back(std::vector<std::uint16_t>(n, 0));
    if constexpr (dev) {
      W.push_back(dalloc<std::uint16_t>(n));
      C.push_back(dalloc<std::uint16_t>(n));
      h2d(W.back(), hw.back());
      h2d(C.back(), hc.back());
    } else {
      W.push_back(hw.back().data());
      C.push_back(hc.back().data());
    }
    Bf16WStorage st;
    st.policy = policy;
    st.w = W.back();
    st.ldw = in;
    st.c = policy == WPrecision::Bf16Compensated ? C.back() : nullptr;
    st.ldc = in;
    st.seed = 9;
    st.offset = offset;
    st.amax = amax.at(l);
    offset += std::uint64_t(n);
    dp.set_w_storage(l, st);
  }
  dp.set_w_step(2);  // as after a resume at step 2
  for (int s = 0; s < steps; ++s) {
    dp.zero_grad();
    for (std::size_t l = 0; l < kDShapes.size(); ++l)
      for (int g = 0; g < comm.local_groups(); ++g) {
        const auto [o, in] = kDShapes[l];
        std::vector<float> gr(std::size_t(o * in));
        for (std::size_t i = 0; i < gr.size(); ++i) gr[i] = small_int_over(7000 + 97 * s + 13 * l + g, i, 8, 64.f);
        b.upload(gr.data(), dp.grad(l, g));
      }
    amax.reset();
    dp.step(0.25);
  }
  b.synchronize();
  StorageRun out;
  out.amax = amax.bits();
  for (std::size_t l = 0; l < kDShapes.size(); ++l) {
    const auto [o, in] = kDShapes[l];
    if constexpr (dev) {
      out.w.push_back(d2h(W[l], std::size_t(o * in)));
      out.c.push_back(d2h(C[l], std::size_t(o * in)));
      cudaFree(W[l]);
      cudaFree(C[l]);
    } else {
      out.w.push_back(hw[l]);
      out.c.push_back(hc[l]);
    }
  }
  return out;
}
}  // namespace

TEST_CASE("DataParallelUpdate with a bf16 W storage (full fine-tuning): GPU == CPU, bit for bit, per policy") {
  for (const WPrecision p : {WPrecision::Bf16Compensated, WPrecision::Bf16StochasticRounding})
    for (const double wd : {0.0, 0.5}) {
      CAPTURE(w_precision_name(p));
      CAPTURE(wd);
      const int steps = 5;
      EigenBackend<float> cpu;
      VirtualRanks<SingleProcess> ccomm(SingleProcess{}, kDK);
      const StorageRun ref = run_dp_storage(cpu, ccomm, p, wd, steps);
      CudaBackend<float> gpu;
      VirtualRanks<CudaSingleProcess> gcomm(CudaSingleProcess(gpu.stream()), kDK);
      const StorageRun g = run_dp_storage(gpu, gcomm, p, wd, steps);
      std::size_t changed = 0;
      for (std::size_t l = 0; l < kDShapes.size(); ++l) {
        CAPTURE(l);
        CHECK(g.w[l] == ref.w[l]);
        CHECK(g.c[l] == ref.c[l]);
        CHECK(ref.amax[l] == max_abs_bits(ref.w[l]));  // Bf16WStorage::amax (the pass after the apply)
        CHECK(g.amax[l] == ref.amax[l]);
        const auto w0 = w0_bits(10 + l, kDShapes[l].first, kDShapes[l].second);
        for (std::size_t i = 0; i < w0.size(); ++i) changed += w0[i] != ref.w[l][i];
      }
      CHECK(changed > 0);
    }
}

// The CUDA-core low-rank DWU kernel (dwu_lowrank.cuh) on its own, against a host replay of its
// contract: acc = Σ_k L(i,k)·R(k,j) as one fmaf chain in k order, Δ = alpha·acc rounded, then the
// policy's rule (bf16 storage, bit for bit) or w = fmaf(alpha, acc, w) (fp32 W, bit for bit).
// Random (not dyadic) data, so any other summation order or a TF32 rounding would show; shapes with
// ragged and unaligned column blocks (scalar path), kd from 1 to the kernel's limit, strided L / W.
namespace {
float host_delta(const std::vector<float>& L, index_t ldl, const std::vector<float>& R, index_t ldr, index_t i,
                 index_t j, int kd, float alpha, float* acc_out = nullptr) {
  float acc = 0.f;
  for (int k = 0; k < kd; ++k) acc = std::fmaf(L[std::size_t(i * ldl + k)], R[std::size_t(k * ldr + j)], acc);
  if (acc_out) *acc_out = acc;
  volatile float d = alpha * acc;  // rounded on its own (no contraction into the rule's add)
  return d;
}
}  // namespace

TEST_CASE("low-rank DWU kernel (CUDA cores): bf16 SR / compensated and fp32 W equal a host replay bit for bit") {
  struct Shape { int M, N, kd; index_t ldl, ldw; };
  const std::vector<Shape> shapes{{130, 72, 24, 24, 72},   {64, 200, 32, 40, 208}, {33, 20, 8, 8, 20},
                                  {257, 513, 64, 64, 520}, {70, 33, 1, 3, 33},     {128, 4096, 32, 32, 4096}};
  // cap: 0 = the launcher's grid; 1 = one row block per column strip, so every block walks all of
  // its strip's row tiles (the L tile and the W staging reused across tiles, as at the 7B shapes);
  // 2 = two row blocks, each walking every other tile (the production case of a row stride > 1
  // with several tiles per block: 7B gate / up has 16 row blocks × 11 tiles).
  // rpt: rows per thread, 8 (256 threads) or 4 (512): the same contract, so the same bits.
  // stages: one tile buffer (0, the launcher's default, is 1), or two (the next row tile's L and W
  // copied during this one). The same contract, so the same bits.
  for (const int stages : {0, 2})
  for (const int rpt : {8, 4})
  for (const int cap : {0, 1, 2})
  for (const Shape& sh : shapes) {
    {  // two stages at kd = 64 may exceed a device's shared memory per block
      int optin = 0;
      REQUIRE(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0) == cudaSuccess);
      if (stages == 2 && cuda_kernels::DwuLowrank::smem_bytes(sh.kd, true, 2) > std::size_t(optin)) continue;
    }
    CAPTURE(stages);
    CAPTURE(rpt);
    CAPTURE(cap);
    CAPTURE(sh.M);
    CAPTURE(sh.N);
    CAPTURE(sh.kd);
    const float alpha = -0.75f;
    const index_t ldr = sh.N + 3;
    std::vector<float> L(std::size_t(sh.M * sh.ldl)), R(std::size_t(sh.kd * ldr));
    for (std::size_t i = 0; i < L.size(); ++i) L[i] = float(counter_uniform(71, i) - 0.5) * 0.2f;
    for (std::size_t i = 0; i < R.size(); ++i) R[i] = float(counter_uniform(72, i) - 0.5) * 0.5f;
    float* dL = dalloc<float>(L.size());
    float* dR = dalloc<float>(R.size());
    h2d(dL, L);
    h2d(dR, R);
    const std::size_t nw = std::size_t(sh.M * sh.ldw);
    for (const WPrecision p : {WPrecision::Bf16StochasticRounding, WPrecision::Bf16Compensated}) {
      CAPTURE(w_precision_name(p));
      std::vector<std::uint16_t> w(nw), c(nw);
      for (std::size_t i = 0; i < nw; ++i) {
        w[i] = bf16_bits_rn(float(2.0 * (counter_uniform(73, i) - 0.5)));
        c[i] = bf16_bits_rn(float(1e-3 * (counter_uniform(74, i) - 0.5)));
      }
      // non-finite and extreme W in every row (vector and scalar paths alike): ±inf, NaNs of both
      // signs, ± the largest finite bf16 (an update may round it to ±inf), the smallest normal
      const std::uint16_t special[] = {0x7f80u, 0xff80u, 0x7fc1u, 0xffffu, 0x7f7fu, 0xff7fu, 0x0080u};
      for (index_t i = 0; i < sh.M; ++i)
        for (int q = 0; q < 2; ++q) {
          const index_t j = (i * 7 + q * (sh.N / 2)) % sh.N;
          w[std::size_t(i * sh.ldw + j)] = special[std::size_t(i * 2 + q) % std::size(special)];
        }
      auto* dw = dalloc<std::uint16_t>(nw);
      auto* dc = dalloc<std::uint16_t>(nw);
      h2d(dw, w);
      h2d(dc, c);
      Bf16WStorage st;
      st.policy = p;
      st.w = dw;
      st.ldw = sh.ldw;
      st.c = p == WPrecision::Bf16Compensated ? dc : nullptr;
      st.ldc = sh.ldw;
      st.cols = sh.N;
      st.seed = 11;
      st.step = 5;
      st.offset = sh.M % 2 ? 1003 : 1000;  // a base that is not a multiple of 4 too
      float* damax = dalloc<float>(1);
      REQUIRE(cudaMemset(damax, 0, sizeof(float)) == cudaSuccess);
      st.amax = damax;  // the epilogue's max |w| (Bf16WStorage::amax)
      cuda_kernels::launch_dwu_lowrank(nullptr, st, dL, sh.ldl, dR, ldr, sh.M, sh.N, sh.kd, alpha, cap, rpt, stages);
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      const auto gw = d2h(dw, nw), gc = d2h(dc, nw);
      std::uint32_t amax_bits = 0, want_amax = 0;
      REQUIRE(cudaMemcpy(&amax_bits, damax, sizeof amax_bits, cudaMemcpyDeviceToHost) == cudaSuccess);
      cudaFree(damax);
      for (index_t i = 0; i < sh.M; ++i)  // over the updated columns only (not the padding)
        for (index_t j = 0; j < sh.N; ++j) want_amax = std::max(want_amax, bf16_abs_bits_f32(gw[std::size_t(i * sh.ldw + j)]));
      CHECK(amax_bits == want_amax);  // a NaN in W (the specials) included: the largest bits win
      std::size_t bad = 0, moved = 0;
      for (index_t i = 0; i < sh.M; ++i)
        for (index_t j = 0; j < sh.ldw; ++j) {
          const std::size_t e = std::size_t(i * sh.ldw + j);
          std::uint16_t ew = w[e], ec = c[e];
          if (j < sh.N) {
            const float d = host_delta(L, sh.ldl, R, ldr, i, j, sh.kd, alpha);
            if (p == WPrecision::Bf16Compensated) Bf16Compensated{}(ew, ec, d);
            else Bf16StochasticRounding{11, 5}(ew, d, st.offset + std::uint64_t(i * sh.N + j));
          }
          bad += gw[e] != ew || (p == WPrecision::Bf16Compensated && gc[e] != ec);
          moved += ew != w[e] || ec != c[e];
        }
      CHECK(bad == 0);          // padding columns (j ≥ N) untouched as well
      CHECK(moved > nw / 10);   // the update did move W
      cudaFree(dw);
      cudaFree(dc);
    }
    {  // fp32 W
      std::vector<float> w(nw);
      for (std::size_t i = 0; i < nw; ++i) w[i] = float(counter_uniform(75, i) - 0.5);
      float* dw = dalloc<float>(nw);
      h2d(dw, w);
      cuda_kernels::launch_dwu_lowrank(nullptr, cuda_kernels::DwuLowrankFp32W{dw, sh.ldw}, dL, sh.ldl, dR, ldr, sh.M,
                                       sh.N, sh.kd, alpha, cap, rpt, stages);
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      const auto gw = d2h(dw, nw);
      std::size_t bad = 0;
      for (index_t i = 0; i < sh.M; ++i)
        for (index_t j = 0; j < sh.ldw; ++j) {
          const std::size_t e = std::size_t(i * sh.ldw + j);
          float ew = w[e];
          if (j < sh.N) {
            float acc = 0;
            host_delta(L, sh.ldl, R, ldr, i, j, sh.kd, alpha, &acc);
            ew = std::fmaf(alpha, acc, w[e]);
          }
          bad += std::memcmp(&gw[e], &ew, sizeof(float)) != 0;
        }
      CHECK(bad == 0);
      cudaFree(dw);
    }
    cudaFree(dL);
    cudaFree(dR);
  }
}
