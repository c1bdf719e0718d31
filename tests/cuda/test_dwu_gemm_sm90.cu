// The sm_90a Direct Weight Update GEMM (dwu_gemm_sm90.cuh) and CudaBackend's dwu_apply hook:
//  - the kernel (3xTF32 and plain TF32) against an fp64 host reference on odd shapes (edge tiles,
//    a K tail, padded rows that must stay untouched), next to cuBLAS SGEMM's own error;
//  - one DirectWeightUpdate step (K = 2, r = 4) against a hand fp64 Adam + update;
//  - several Adam steps with the kernel against the same run on cuBLAS: moments and L's dB half
//    bit-identical, W within fp32 rounding of the update, unfit layouts falling back bit for bit;
//  - the selection rules (TF32 on, DwuGemm::Cublas, HDPISSA_CUDA_DWU_GEMM).
// On a GPU or binary without the sm_90a kernel the kernel cases report that and check the fallback.
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "../common/scoped_env.hpp"
#include "cuda_test_util.hpp"
#include "hdpissa/backend/cuda/dwu_gemm_sm90.cuh"

using namespace hdpissa;
using namespace hdpissa::test;
namespace k90 = hdpissa::cuda_kernels::sm90;

namespace {

bool kernel_here() {
  int dev = 0;
  cudaGetDevice(&dev);
  return k90::dwu_gemm_sm90_supported(dev);
}

std::vector<float> host_of(CudaBackend<float>& g, ConstMatrixView<float> v) {
  std::vector<float> h(std::size_t(v.size()));
  g.download(v, h.data());
  return h;
}
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

/// max over entries of |out − ref| / (|c| + |alpha| Σ|p q|), with ref = C + alpha·P·Qᵀ in fp64, for
/// a (M, N) problem stored with leading dimension ldc (the pad columns must come back unchanged).
struct KernelCase {
  int M, N, Kd;
};
template <class Run>
double kernel_error(const KernelCase& c, float alpha, Run&& run) {
  CudaBackend<float> g;
  const int ldc = (c.N + 3) / 4 * 4;
  const auto hC = random_host<float>(c.M, ldc, 11), hP = random_host<float>(c.M, c.Kd, 12), hQ = random_host<float>(c.N, c.Kd, 13);
  auto C = g.make_matrix(c.M, ldc), P = g.make_matrix(c.M, c.Kd), Q = g.make_matrix(c.N, c.Kd);
  g.upload(hC.data(), C.view());
  g.upload(hP.data(), P.view());
  g.upload(hQ.data(), Q.view());
  run(g, C.data(), ldc, P.data(), Q.data());
  const auto out = host_of(g, C.cview());
  double worst = 0;
  for (int i = 0; i < c.M; ++i)
    for (int j = 0; j < ldc; ++j) {
      const std::size_t at = std::size_t(i) * ldc + j;
      double ref = hC[at], mag = 1.0;
      if (j < c.N) {
        double acc = 0, m = 0;
        for (int k = 0; k < c.Kd; ++k) {
          const double t = double(hP[std::size_t(i) * c.Kd + k]) * double(hQ[std::size_t(j) * c.Kd + k]);
          acc += t;
          m += std::fabs(t);
        }
        ref += double(alpha) * acc;
        mag = std::fabs(double(hC[at])) + std::fabs(double(alpha)) * m;
      }
      worst = std::max(worst, std::fabs(double(out[at]) - ref) / mag);
    }
  return worst;
}

}  // namespace

TEST_CASE("sm_90a DWU GEMM: 3xTF32 is fp32-accurate and TF32 within TF32 rounding (fp64 reference, odd shapes)") {
  if (!kernel_here()) {
    MESSAGE("sm_90a DWU kernel not available on this GPU/binary: kernel cases skipped");
    return;
  }
  const float alpha = -0.375f;
  for (const KernelCase c : {KernelCase{300, 264, 256}, KernelCase{130, 70, 100}, KernelCase{517, 389, 96},
                             KernelCase{64, 128, 32}, KernelCase{1, 5, 4}}) {
    CAPTURE(c.M);
    CAPTURE(c.N);
    CAPTURE(c.Kd);
    const double sgemm = kernel_error(c, alpha, [&](CudaBackend<float>& g, float* C, int ldc, const float* P, const float* Q) {
      const float one = 1.f;
      HDPISSA_CUBLAS_CHECK(cublasGemmEx(g.cublas(), CUBLAS_OP_T, CUBLAS_OP_N, c.N, c.M, c.Kd, &alpha, Q, CUDA_R_32F, c.Kd, P,
                                        CUDA_R_32F, c.Kd, &one, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    });
    const double x3 = kernel_error(c, alpha, [&](CudaBackend<float>& g, float* C, int ldc, const float* P, const float* Q) {
      k90::launch_dwu_gemm_tf32<cuda_kernels::DwuGemm3xTf32Config>(g.stream(), C, ldc, P, c.Kd, Q, c.Kd, c.M, c.N, c.Kd, alpha);
    });
    const double x1 = kernel_error(c, alpha, [&](CudaBackend<float>& g, float* C, int ldc, const float* P, const float* Q) {
      k90::launch_dwu_gemm_tf32<k90::DwuGemmConfig<2, 128, 3, 1>>(g.stream(), C, ldc, P, c.Kd, Q, c.Kd, c.M, c.N, c.Kd, alpha);
    });
    INFO("max normalised error: cuBLAS SGEMM ", sgemm, ", 3xTF32 ", x3, ", TF32 ", x1);
    CHECK(sgemm < 1e-6);
    // 3xTF32 drops only lo·lo (≤ 2⁻²² per product): a few fp32 ulps, never TF32's 2⁻¹¹.
    CHECK(x3 <= std::max(8 * sgemm, 1.5e-6));
    CHECK(x1 > x3);  // TF32 really rounds (the test can tell the two apart)
    CHECK(x1 < 2e-3);
  }
}

TEST_CASE("sm_90a DWU GEMM: the layout check names what the kernel cannot take") {
  CudaBackend<float> g;
  auto M = g.make_matrix(8, 16);
  float* p = M.data();
  CHECK(k90::dwu_gemm_sm90_layout_ok(p, 16, p, 32, p, 32, 32));
  CHECK_FALSE(k90::dwu_gemm_sm90_layout_ok(p, 15, p, 32, p, 32, 32));      // ldc % 4
  CHECK_FALSE(k90::dwu_gemm_sm90_layout_ok(p, 16, p, 32, p, 32, 30));      // Kd % 4
  CHECK_FALSE(k90::dwu_gemm_sm90_layout_ok(p + 1, 16, p, 32, p, 32, 32));  // C not 16-byte aligned
  CHECK_FALSE(k90::dwu_gemm_sm90_layout_ok(p, 16, p, 32, p + 2, 32, 32));  // Q not 16-byte aligned
}

namespace {
using GDWU = DirectWeightUpdate<CudaBackend<float>, Adam, VirtualRanks<CudaSingleProcess>>;
static_assert(GDWU::kFusedApply, "CudaBackend<float> offers dwu_apply");
}  // namespace

namespace {
/// One DirectWeightUpdate step (K = 2, r = 4, Adam from zero moments) with the given DWU GEMM,
/// against a hand fp64 Adam + update. Returns max |W − W_ref| / (|W0| + Σ|terms|) per entry (the
/// kernel test's normalisation) and the largest update entry.
std::pair<double, double> hand_step_error(DwuGemm which, float w_scale) {
  CudaBackend<float> gpu;
  gpu.set_dwu_gemm(which);
  const int K = 2;
  const index_t out = 72, in = 40, r = 4;  // 2Kr = 16: the kernel takes it
  const double lr = 1e-2;
  auto hW = random_host<float>(out, in, 1, w_scale), hA = random_host<float>(K * r, in, 2),
       hB = random_host<float>(out, K * r, 3);
  auto W = gpu.make_matrix(out, in);
  gpu.upload(hW.data(), W.view());
  auto set = make_adapter_set(gpu, out, in, K, r);
  gpu.upload(hA.data(), set.A.view());
  gpu.upload(hB.data(), set.B.view());
  VirtualRanks<CudaSingleProcess> comm(CudaSingleProcess(gpu.stream()), K);
  GDWU dwu(gpu, comm);
  dwu.add_layer("w", W.view(), set);
  std::vector<std::vector<float>> gA, gB;
  for (int g = 0; g < K; ++g) {
    gA.push_back(random_host<float>(r, in, 10 + g));
    gB.push_back(random_host<float>(out, r, 20 + g));
    gpu.upload(gA.back().data(), dwu.grad_A(0, g));
    gpu.upload(gB.back().data(), dwu.grad_B(0, g));
  }
  CHECK_FALSE(dwu.step(lr).skipped);
  // First Adam step from zero moments (PyTorch's formula): m = (1 − β1)·g, v = (1 − β2)·g²,
  // delta = lr/bc1 · m / (√v / √bc2 + eps), bc = 1 − β. The kernel runs in fp32 with β1, β2 as fp32
  // (1 − 0.999f = 0.00099998713, not 0.001: a 6e-6 relative effect), the corrections in double.
  // Group j owns rows j·r.. of A and columns j·r.. of B; W ← W − Σ_j [dB_j (A_j − dA_j) + B_j dA_j].
  const double b1 = double(0.9f), b2 = double(0.999f);
  auto delta = [&](double g) {
    return lr / (1 - 0.9) * ((1 - b1) * g) / (std::sqrt((1 - b2) * g * g) / std::sqrt(1 - 0.999) + 1e-8);
  };
  const auto got = host_of(gpu, W.cview());
  double worst = 0, upd = 0;
  for (index_t i = 0; i < out; ++i)
    for (index_t c = 0; c < in; ++c) {
      double s = 0, mag = 0;
      for (int j = 0; j < K; ++j)
        for (index_t q = 0; q < r; ++q) {
          const double a = hA[std::size_t((j * r + q) * in + c)], b = hB[std::size_t(i * K * r + j * r + q)];
          const double da = delta(gA[j][std::size_t(q * in + c)]), db = delta(gB[j][std::size_t(i * r + q)]);
          s += db * (a - da) + b * da;
          mag += std::fabs(db * (a - da)) + std::fabs(b * da);
        }
      const double w0 = hW[std::size_t(i * in + c)];
      worst = std::max(worst, std::fabs(double(got[std::size_t(i * in + c)]) - (w0 - s)) / (std::fabs(w0) + mag));
      upd = std::max(upd, std::fabs(s));
    }
  return {worst, upd};
}
}  // namespace

TEST_CASE("DirectWeightUpdate on the 3xTF32 kernel: one step equals a hand fp64 Adam + update (K = 2, r = 4)") {
  for (float w_scale : {1.f, 0.f}) {  // W0 random, then W0 = 0 (the update alone)
    CAPTURE(w_scale);
    const auto [e_cublas, upd] = hand_step_error(DwuGemm::Cublas, w_scale);
    const auto [e_kernel, upd2] = hand_step_error(kernel_here() ? DwuGemm::Tf32x3 : DwuGemm::Auto, w_scale);
    INFO("max normalised error vs the fp64 hand step: cuBLAS ", e_cublas, ", 3xTF32 path ", e_kernel,
         " (largest update entry ", upd, ")");
    CHECK(upd > 1e-2);
    CHECK(upd2 == upd);
    CHECK(e_cublas < 5e-7);
    // The kernel test's bound: a few fp32 ulps of |W| + Σ|terms|, never TF32's 2⁻¹¹.
    CHECK(e_kernel <= std::max(8 * e_cublas, 1.5e-6));
  }
}

TEST_CASE("DirectWeightUpdate: 3xTF32 kernel vs cuBLAS over Adam steps (moments and dB bit-identical, W within rounding; unfit layouts fall back)") {
  CudaBackend<float> kb, cb;
  kb.set_dwu_gemm(DwuGemm::Auto);
  cb.set_dwu_gemm(DwuGemm::Cublas);
  const int K = 4;
  const index_t r = 4;
  // (out, in): in % 4 == 0 → the kernel (where available); in = 30 → W's ld not a multiple of 4 → cuBLAS.
  const std::vector<std::pair<index_t, index_t>> shapes{{64, 48}, {100, 36}, {40, 128}, {33, 30}};
  VirtualRanks<CudaSingleProcess> kc(CudaSingleProcess(kb.stream()), K), cc(CudaSingleProcess(cb.stream()), K);
  GDWU kd(kb, kc), cd(cb, cc);
  std::vector<CudaBackend<float>::Matrix> Wk, Wc;
  std::vector<std::vector<float>> W0;
  for (std::size_t l = 0; l < shapes.size(); ++l) {
    const auto [out, in] = shapes[l];
    W0.push_back(random_host<float>(out, in, 40 + l));
    Wk.push_back(kb.make_matrix(out, in));
    Wc.push_back(cb.make_matrix(out, in));
    kb.upload(W0.back().data(), Wk.back().view());
    cb.upload(W0.back().data(), Wc.back().view());
    auto hA = random_host<float>(K * r, in, 50 + l), hB = random_host<float>(out, K * r, 60 + l);
    auto ks = make_adapter_set(kb, out, in, K, r), cs = make_adapter_set(cb, out, in, K, r);
    kb.upload(hA.data(), ks.A.view()), kb.upload(hB.data(), ks.B.view());
    cb.upload(hA.data(), cs.A.view()), cb.upload(hB.data(), cs.B.view());
    kd.add_layer(std::string("w").append(std::to_string(l)), Wk.back().view(), ks);
    cd.add_layer(std::string("w").append(std::to_string(l)), Wc.back().view(), cs);
  }
  for (int step = 0; step < 3; ++step) {
    for (std::size_t l = 0; l < shapes.size(); ++l)
      for (int g = 0; g < K; ++g) {
        const auto [out, in] = shapes[l];
        auto ha = random_host<float>(r, in, 1000 + 97 * step + 13 * l + g, 0.1);
        auto hb = random_host<float>(out, r, 2000 + 97 * step + 13 * l + g, 0.1);
        kb.upload(ha.data(), kd.grad_A(l, g)), kb.upload(hb.data(), kd.grad_B(l, g));
        cb.upload(ha.data(), cd.grad_A(l, g)), cb.upload(hb.data(), cd.grad_B(l, g));
      }
    kd.step(1e-2);
    cd.step(1e-2);
  }
  for (std::size_t l = 0; l < shapes.size(); ++l) {
    CAPTURE(l);
    const auto wk = host_of(kb, Wk[l].cview()), wc = host_of(cb, Wc[l].cview());
    for (int g = 0; g < K; ++g) {
      CHECK(same_bits(host_of(kb, kd.state_A(l, g).m.cview()), host_of(cb, cd.state_A(l, g).m.cview())));
      CHECK(same_bits(host_of(kb, kd.state_B(l, g).v.cview()), host_of(cb, cd.state_B(l, g).v.cview())));
      CHECK(same_bits(host_of(kb, kd.last_dB(l, g)), host_of(cb, cd.last_dB(l, g))));
    }
    if (shapes[l].second % 4 != 0 || !kernel_here()) {
      CHECK(same_bits(wk, wc));  // the fallback is the cuBLAS path itself
      continue;
    }
    double worst = 0, upd = 0;
    for (std::size_t e = 0; e < wk.size(); ++e) {
      worst = std::max(worst, std::fabs(double(wk[e]) - double(wc[e])) - 1.2e-7 * std::fabs(double(wc[e])));
      upd = std::max(upd, std::fabs(double(wc[e]) - double(W0[l][e])));
    }
    INFO("max |W_3xtf32 − W_cublas| beyond 1 ulp of W: ", worst, "; largest update entry ", upd);
    CHECK_FALSE(same_bits(wk, wc));  // the kernel really ran on this layer
    CHECK(upd > 1e-3);
    CHECK(worst <= 1e-5 * upd);
  }
}

TEST_CASE("DwuGemm selection: TF32 or Cublas keep cuBLAS; HDPISSA_CUDA_DWU_GEMM is checked") {
  CudaBackend<float> b;
  CHECK(b.dwu_gemm() == DwuGemm::Auto);
  CHECK(b.dwu_gemm_kernel_active() == kernel_here());
  b.set_tf32(true);
  CHECK_FALSE(b.dwu_gemm_kernel_active());
  b.set_tf32(false);
  b.set_dwu_gemm(DwuGemm::Cublas);
  CHECK_FALSE(b.dwu_gemm_kernel_active());
  b.set_dwu_gemm(DwuGemm::Tf32x3);
  b.set_fused_update(false);
  CHECK_FALSE(b.dwu_gemm_kernel_active());
  CudaBackend<double> d;
  CHECK_FALSE(d.dwu_gemm_kernel_active());
  setenv("HDPISSA_CUDA_DWU_GEMM", "cublas", 1);
  CHECK(CudaBackend<float>().dwu_gemm() == DwuGemm::Cublas);
  setenv("HDPISSA_CUDA_DWU_GEMM", "simt", 1);
  CHECK(CudaBackend<float>().dwu_gemm() == DwuGemm::Simt);
  CHECK_FALSE(CudaBackend<float>().dwu_gemm_kernel_active());  // Simt is not the sm_90a kernel
  setenv("HDPISSA_CUDA_DWU_GEMM", "fast", 1);
  try {
    CudaBackend<float> bad;
    FAIL("expected InvalidArgument");
  } catch (const InvalidArgument& e) {
    const std::string what = e.what();
    CHECK(what.find("HDPISSA_CUDA_DWU_GEMM") != std::string::npos);
    CHECK(what.find("'fast'") != std::string::npos);
  }
  unsetenv("HDPISSA_CUDA_DWU_GEMM");
  // the low-rank kernel's tiling: 8 rows per thread by default, 4 by option or environment
  const char* prev_rows = std::getenv("HDPISSA_CUDA_DWU_ROWS");
  const std::string saved_rows = prev_rows ? prev_rows : "";
  unsetenv("HDPISSA_CUDA_DWU_ROWS");
  CHECK(CudaBackend<float>().dwu_lowrank_rows() == 8);
  {
    CudaBackendOptions o;
    o.dwu_lowrank_rows = 4;
    CHECK(CudaBackend<float>(o).dwu_lowrank_rows() == 4);
    o.dwu_lowrank_rows = 6;
    CHECK_THROWS_AS(CudaBackend<float>{o}, InvalidArgument);
  }
  setenv("HDPISSA_CUDA_DWU_ROWS", "4", 1);
  CHECK(CudaBackend<float>().dwu_lowrank_rows() == 4);
  setenv("HDPISSA_CUDA_DWU_ROWS", "16", 1);
  std::string what;
  try {
    CudaBackend<float> bad;
  } catch (const InvalidArgument& e) {
    what = e.what();
  }
  if (prev_rows) setenv("HDPISSA_CUDA_DWU_ROWS", saved_rows.c_str(), 1);  // restored before any check can stop the test
  else unsetenv("HDPISSA_CUDA_DWU_ROWS");
  CHECK(what.find("HDPISSA_CUDA_DWU_ROWS: expected 8 or 4, found '16'") != std::string::npos);
  // the apply streams (1 = none): default, environment, a bad value named, an explicit bad value
  {
    const char* var = "HDPISSA_CUDA_DWU_STREAMS";
    const char* prev = std::getenv(var);
    const std::string saved = prev ? prev : "";
    unsetenv(var);
    const int dflt = CudaBackend<float>().dwu_apply_streams();
    setenv(var, "3", 1);
    const int three = CudaBackend<float>().dwu_apply_streams();
    setenv(var, "9", 1);
    what.clear();
    try {
      CudaBackend<float> bad;
    } catch (const InvalidArgument& e) {
      what = e.what();
    }
    if (prev) setenv(var, saved.c_str(), 1);
    else unsetenv(var);
    CHECK(dflt == 1);
    CHECK(three == 3);
    CHECK(what.find("HDPISSA_CUDA_DWU_STREAMS: expected 1 … 8, found '9'") != std::string::npos);
    CudaBackendOptions o;
    o.dwu_apply_streams = 0;
    CHECK_THROWS_AS(CudaBackend<float>{o}, InvalidArgument);
    o.dwu_apply_streams = 9;
    CHECK_THROWS_AS(CudaBackend<float>{o}, InvalidArgument);
  }
  // the apply streams' priority: default, high from the environment, a bad value named; a stream
  // made at StreamPriority::High has the device's greatest priority, a default one its least
  {
    const ScopedEnv unset("HDPISSA_CUDA_DWU_PRIORITY", nullptr);
    CHECK(CudaBackend<float>().dwu_apply_priority() == StreamPriority::Default);
    {
      const ScopedEnv high("HDPISSA_CUDA_DWU_PRIORITY", "high");
      CHECK(CudaBackend<float>().dwu_apply_priority() == StreamPriority::High);
    }
    {
      const ScopedEnv bad("HDPISSA_CUDA_DWU_PRIORITY", "2");
      what.clear();
      try {
        CudaBackend<float> b;
      } catch (const InvalidArgument& e) {
        what = e.what();
      }
      CHECK(what.find("HDPISSA_CUDA_DWU_PRIORITY: expected default or high, found '2'") != std::string::npos);
    }
    int least = 0, greatest = 0, hp = 1, dp = 1;
    REQUIRE(cudaDeviceGetStreamPriorityRange(&least, &greatest) == cudaSuccess);
    const CudaStream hs(StreamPriority::High), ds;
    REQUIRE(cudaStreamGetPriority(hs.get(), &hp) == cudaSuccess);
    REQUIRE(cudaStreamGetPriority(ds.get(), &dp) == cudaSuccess);
    CHECK(hp == greatest);
    CHECK(dp == least);
    MESSAGE("stream priorities: least ", least, ", greatest ", greatest);
    CudaBackendOptions o;
    o.stream_priority = StreamPriority::High;
    CudaBackend<float> hb(o);
    REQUIRE(cudaStreamGetPriority(hb.stream(), &hp) == cudaSuccess);
    CHECK(hp == greatest);
  }
}

TEST_CASE("DwuGemm::Simt: fp32 W within rounding of cuBLAS; 2Kr above the CUDA-core kernel's limit is named") {
  // fp32 W: Auto keeps the sm_90a / cuBLAS path; Simt runs the CUDA-core kernel (plain fp32 fmaf
  // chain, so within a few ulps of cuBLAS SGEMM's sum).
  {  // which layers take the CUDA-core kernel (so the comparison below is not a silent fallback)
    CudaBackend<float> g;
    DwuKernels<CudaBackend<float>> k(g);
    auto A = g.make_matrix(2 * 4, 40), L = g.make_matrix(72, 16);
    const DwuPackedDeltas<const float> d{nullptr, 0, 2, 4, 40, 72};  // K = 2, r = 4: 2Kr = 16
    g.set_dwu_gemm(DwuGemm::Simt);
    CHECK(k.lowrank_usable(A.cview(), d, L.view(), 72, false));
    g.set_dwu_gemm(DwuGemm::Auto);
    CHECK_FALSE(k.lowrank_usable(A.cview(), d, L.view(), 72, false));  // Auto: fp32 W keeps 3xTF32 / cuBLAS
    CHECK(k.lowrank_usable(A.cview(), d, L.view(), 72, true));         // Auto: a bf16 storage takes it
    g.set_tf32(true);
    CHECK_FALSE(k.lowrank_usable(A.cview(), d, L.view(), 72, true));   // TF32 keeps cuBLAS
  }
  const auto [e_cublas, upd] = hand_step_error(DwuGemm::Cublas, 1.f);
  const auto [e_simt, upd2] = hand_step_error(DwuGemm::Simt, 1.f);
  INFO("max normalised error vs the fp64 hand step: cuBLAS ", e_cublas, ", simt ", e_simt);
  CHECK(upd2 == upd);
  CHECK(e_simt <= std::max(8 * e_cublas, 1.5e-6));
  CudaBackend<float> gpu;
  gpu.set_dwu_gemm(DwuGemm::Simt);
  const index_t out = 40, in = 24, r = 17;  // K = 2: 2Kr = 68 > 64
  auto W = gpu.make_matrix(out, in);
  auto set = make_adapter_set(gpu, out, in, 2, r);
  VirtualRanks<CudaSingleProcess> comm(CudaSingleProcess(gpu.stream()), 2);
  GDWU dwu(gpu, comm);
  dwu.add_layer("w", W.view(), set);
  try {
    dwu.step(1e-3);
    FAIL("expected InvalidArgument");
  } catch (const InvalidArgument& e) {
    const std::string what = e.what();
    CHECK(what.find("2Kr = 68") != std::string::npos);
    CHECK(what.find("64") != std::string::npos);
  }
}
