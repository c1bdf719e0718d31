// CudaBackend's fused Direct Weight Update hooks (multi-tensor Adam, one packing kernel per layer)
// against the core's generic per-tensor loops (the same backend with fused_update off): the math
// is the same, so W, the moments and the packed deltas must agree BIT FOR BIT; and against the CPU
// reference (EigenBackend) within the fp32/fp64 tolerance table.
#include <cstdlib>
#include <cstring>
#include <string>

#include "../common/scoped_env.hpp"
#include "cuda_test_util.hpp"

using namespace hdpissa;
using namespace hdpissa::test;

namespace {


template <class T>
std::vector<T> raw(CudaBackend<T>& g, ConstMatrixView<T> v) {
  std::vector<T> h(std::size_t(v.size()));
  g.download(v, h.data());
  return h;
}
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

/// Three layers (odd shapes), K = 4 groups on one worker, `steps` Adam(W) steps on a fused GPU
/// run, a generic GPU run and a CPU run fed the same factors and gradients. `perturb` runs before
/// each step on both GPU updates (to exercise the fallbacks).
template <class T, class Perturb>
void run_fused_vs_generic(AdamConfig cfg, int steps, Perturb perturb, bool check_cpu = true, bool tune_fused = false) {
  using GPU = CudaBackend<T>;
  using GDWU = DirectWeightUpdate<GPU, Adam, VirtualRanks<CudaSingleProcess>>;
  GPU fused, generic;
  fused.set_fused_update(true);
  generic.set_fused_update(false);
  fused.set_dwu_gemm(DwuGemm::Cublas);  // bit-for-bit: the same GEMM on both (3xTF32: test_dwu_gemm_sm90.cu)
  // tune_fused: the fused run's GEMMs go through the cuBLASLt tuner (forced on these small shapes),
  // the generic run's through plain cublasGemmEx.
  fused.set_gemm_tuning(tune_fused ? GemmTuning::BitExact : GemmTuning::Off);
  fused.set_gemm_tuning_min_flop(0);
  generic.set_gemm_tuning(GemmTuning::Off);
  EigenBackend<T> cpu;
  const int K = 4;
  const index_t r = 3;
  const std::vector<std::pair<index_t, index_t>> shapes{{40, 30}, {30, 53}, {17, 13}};
  VirtualRanks<CudaSingleProcess> fcomm(CudaSingleProcess(fused.stream()), K), gcomm(CudaSingleProcess(generic.stream()), K);
  VirtualRanks<SingleProcess> ccomm(SingleProcess{}, K);
  GDWU fd(fused, fcomm, Adam(cfg)), gd(generic, gcomm, Adam(cfg));
  DirectWeightUpdate<EigenBackend<T>, Adam, VirtualRanks<SingleProcess>> cd(cpu, ccomm, Adam(cfg));
  static_assert(GDWU::kBatchedAdam && GDWU::kFusedUnpack, "CudaBackend must offer both DWU hooks");
  static_assert(!decltype(cd)::kBatchedAdam && !decltype(cd)::kFusedUnpack, "EigenBackend keeps the generic loops");
  std::vector<typename GPU::Matrix> Wf, Wg;
  std::vector<typename EigenBackend<T>::Matrix> Wc;
  for (std::size_t l = 0; l < shapes.size(); ++l) {
    const auto [out, in] = shapes[l];
    auto hw = random_host<T>(out, in, 10 + l);
    Wf.push_back(fused.make_matrix(out, in));
    Wg.push_back(generic.make_matrix(out, in));
    Wc.push_back(cpu.make_matrix(out, in));
    fused.upload(hw.data(), Wf.back().view());
    generic.upload(hw.data(), Wg.back().view());
    cpu.upload(hw.data(), Wc.back().view());
    auto cset = OrthogonalAdapterInit<>(K, r)(cpu, ConstMatrixView<T>(Wc.back().view()), "w");
    auto fset = make_adapter_set(fused, out, in, K, r), gset = make_adapter_set(generic, out, in, K, r);
    fused.upload(cset.A.data(), fset.A.view());
    fused.upload(cset.B.data(), fset.B.view());
    generic.upload(cset.A.data(), gset.A.view());
    generic.upload(cset.B.data(), gset.B.view());
    cd.add_layer(std::string("w").append(std::to_string(l)), Wc.back().view(), cset);
    fd.add_layer(std::string("w").append(std::to_string(l)), Wf.back().view(), fset);
    gd.add_layer(std::string("w").append(std::to_string(l)), Wg.back().view(), gset);
  }
  for (int step = 0; step < steps; ++step) {
    for (std::size_t l = 0; l < shapes.size(); ++l)
      for (int g = 0; g < K; ++g) {
        const auto [out, in] = shapes[l];
        auto ha = random_host<T>(r, in, 1000 + 97 * step + 13 * l + g, 0.1);
        auto hb = random_host<T>(out, r, 2000 + 97 * step + 13 * l + g, 0.1);
        fused.upload(ha.data(), fd.grad_A(l, g));
        fused.upload(hb.data(), fd.grad_B(l, g));
        generic.upload(ha.data(), gd.grad_A(l, g));
        generic.upload(hb.data(), gd.grad_B(l, g));
        cpu.upload(ha.data(), cd.grad_A(l, g));
        cpu.upload(hb.data(), cd.grad_B(l, g));
      }
    perturb(step, fused, fd, cpu);
    perturb(step, generic, gd, cpu);
    fd.step(1e-2);
    gd.step(1e-2);
    cd.step(1e-2);
  }
  for (std::size_t l = 0; l < shapes.size(); ++l) {
    CAPTURE(l);
    CHECK(same_bits(raw(fused, ConstMatrixView<T>(Wf[l].view())), raw(generic, ConstMatrixView<T>(Wg[l].view()))));
    for (int g = 0; g < K; ++g) {
      CAPTURE(g);
      CHECK(fd.state_A(l, g).step == gd.state_A(l, g).step);
      CHECK(same_bits(raw(fused, fd.state_A(l, g).m.cview()), raw(generic, gd.state_A(l, g).m.cview())));
      CHECK(same_bits(raw(fused, fd.state_A(l, g).v.cview()), raw(generic, gd.state_A(l, g).v.cview())));
      CHECK(same_bits(raw(fused, fd.state_B(l, g).m.cview()), raw(generic, gd.state_B(l, g).m.cview())));
      CHECK(same_bits(raw(fused, fd.state_B(l, g).v.cview()), raw(generic, gd.state_B(l, g).v.cview())));
    }
    // And the CPU reference, within the parity table's tolerance.
    if (!check_cpu) continue;
    const double e = nmse(dense(fused, ConstMatrixView<T>(Wf[l].view())), dense(ConstMatrixView<T>(Wc[l].view())));
    INFO("fused GPU vs CPU: nmse = ", e);
    CHECK(e <= nmse_tol<T>());
  }
}

struct NoPerturb {
  template <class... A>
  void operator()(A&&...) const {}
};

}  // namespace

TEST_CASE("fused DWU hooks (multi-tensor Adam + packing kernel) equal the generic loops bit for bit, fp32") {
  run_fused_vs_generic<float>(AdamConfig{}, 3, NoPerturb{});
}

TEST_CASE("fused DWU hooks equal the generic loops bit for bit: AdamW (strided B param read), fp32 and fp64") {
  AdamConfig w;
  w.weight_decay = 0.1;
  run_fused_vs_generic<float>(w, 3, NoPerturb{});
  run_fused_vs_generic<double>(w, 2, NoPerturb{});
}

TEST_CASE("fused DWU: replaced moments rebuild the table; unequal step counts fall back to per-tensor Adam") {
  // Step 1: a state of layer 1 is replaced by a fresh one (new device storage): the table must be
  // rebuilt. Step 2: one state is one step ahead: the batched pass cannot use one AdamArgs, and the
  // per-tensor loop runs (same bits either way).
  auto perturb = [](int step, auto& b, auto& dwu, auto&) {
    if (step == 1) {
      auto& st = dwu.state_B(1, 2);
      auto fresh = Adam().make_state(b, st.m.rows(), st.m.cols());
      b.copy(st.m.cview(), fresh.m.view());
      b.copy(st.v.cview(), fresh.v.view());
      fresh.step = st.step;
      st = std::move(fresh);
    }
    if (step == 2) dwu.state_A(0, 1).step += 1;
  };
  // The CPU run is not perturbed, so only GPU fused vs generic is compared here.
  run_fused_vs_generic<float>(AdamConfig{}, 4, perturb, /*check_cpu=*/false);
}

TEST_CASE("fused DWU with bit-exact tuned GEMMs (fused + cuBLASLt) equals the generic loops with cublasGemmEx bit for bit") {
  run_fused_vs_generic<float>(AdamConfig{}, 3, NoPerturb{}, /*check_cpu=*/true, /*tune_fused=*/true);
}

namespace {
/// C (m, n; strided, padded) ← α op(A) op(B) + β C on a tuned backend and on an untuned one (same
/// inputs): returns both results and the CPU reference's.
struct GemmRun {
  std::vector<float> tuned, plain;
  std::vector<double> tuned_d, cpu_d;
};
GemmRun tuned_vs_plain(GemmTuning mode, bool tf32, Op ta, Op tb, index_t m, index_t n, index_t k, float alpha, float beta,
                       std::uint64_t seed, std::vector<GemmTuningRecord>* report = nullptr) {
  CudaBackend<float> tuned, plain;
  EigenBackend<float> cpu;
  tuned.set_gemm_tuning(mode);
  tuned.set_gemm_tuning_min_flop(0);
  plain.set_gemm_tuning(GemmTuning::Off);
  tuned.set_tf32(tf32);
  plain.set_tf32(tf32);
  const index_t ar = ta == Op::N ? m : k, ac = ta == Op::N ? k : m, br = tb == Op::N ? k : n, bc = tb == Op::N ? n : k;
  const index_t pad = 3;  // strided views: C and A are column blocks of wider parents
  auto hA = random_host<float>(ar, ac + pad, seed), hB = random_host<float>(br, bc, seed + 1),
       hC = random_host<float>(m, n + pad, seed + 2);
  auto At = tuned.make_matrix(ar, ac + pad), Bt = tuned.make_matrix(br, bc), Ct = tuned.make_matrix(m, n + pad);
  auto Ap = plain.make_matrix(ar, ac + pad), Bp = plain.make_matrix(br, bc), Cp = plain.make_matrix(m, n + pad);
  auto Ac = cpu.make_matrix(ar, ac + pad), Bc = cpu.make_matrix(br, bc), Cc = cpu.make_matrix(m, n + pad);
  tuned.upload(hA.data(), At.view()), tuned.upload(hB.data(), Bt.view()), tuned.upload(hC.data(), Ct.view());
  plain.upload(hA.data(), Ap.view()), plain.upload(hB.data(), Bp.view()), plain.upload(hC.data(), Cp.view());
  cpu.upload(hA.data(), Ac.view()), cpu.upload(hB.data(), Bc.view()), cpu.upload(hC.data(), Cc.view());
  // Twice: the first call tunes, the second runs the cached choice.
  for (int rep = 0; rep < 2; ++rep) {
    tuned.gemm(ta, tb, alpha, ConstMatrixView<float>(At.view().col_block(0, ac)), Bt.cview(), beta, Ct.view().col_block(0, n));
    plain.gemm(ta, tb, alpha, ConstMatrixView<float>(Ap.view().col_block(0, ac)), Bp.cview(), beta, Cp.view().col_block(0, n));
    cpu.gemm(ta, tb, alpha, ConstMatrixView<float>(Ac.view().col_block(0, ac)), Bc.cview(), beta, Cc.view().col_block(0, n));
  }
  GemmRun out;
  out.tuned = raw(tuned, Ct.cview());
  out.plain = raw(plain, Cp.cview());
  out.tuned_d = dense(tuned, ConstMatrixView<float>(Ct.view().col_block(0, n)));
  out.cpu_d = dense(ConstMatrixView<float>(Cc.view().col_block(0, n)));
  if (report) *report = tuned.gemm_tuning_report();
  return out;
}
}  // namespace

TEST_CASE("bit-exact GEMM tuning: cuBLASLt choice equals cublasGemmEx bit for bit (DWU shape, beta = 1, strided), fp32 and TF32") {
  struct Case { Op ta, tb; index_t m, n, k; float alpha, beta; };
  const Case cases[] = {{Op::N, Op::N, 700, 520, 256, -0.125f, 1.f},  // W ← W − f·L R (inner 2Kr)
                        {Op::N, Op::N, 333, 1029, 96, 0.37f, 0.f},
                        {Op::T, Op::N, 257, 300, 64, 1.f, 0.5f},
                        {Op::N, Op::T, 300, 257, 128, -1.f, 1.f}};
  for (bool tf32 : {false, true})
    for (const auto& c : cases) {
      CAPTURE(tf32);
      CAPTURE(c.m);
      std::vector<GemmTuningRecord> rep;
      const auto r = tuned_vs_plain(GemmTuning::BitExact, tf32, c.ta, c.tb, c.m, c.n, c.k, c.alpha, c.beta, 31 + c.m, &rep);
      CHECK(same_bits(r.tuned, r.plain));
      // And the independent CPU reference (exact fp32 only; TF32 is checked bit for bit above).
      if (!tf32) CHECK(nmse(r.tuned_d, r.cpu_d) <= nmse_tol<float>());
      REQUIRE(rep.size() == 1);  // one distinct problem, tuned once
      INFO(rep[0].str());
      CHECK(rep[0].m == c.n);  // column-major terms: the row-major C (m, n) is Cᵀ (n × m)
      CHECK(rep[0].n == c.m);
      CHECK(rep[0].k == c.k);
      CHECK(rep[0].tf32 == tf32);
      CHECK(rep[0].reference_ms > 0);
      CHECK(rep[0].chosen_ms <= rep[0].reference_ms);
      if (rep[0].uses_lt) CHECK(rep[0].bit_identical >= 1);
      MESSAGE(rep[0].str());
    }
}

TEST_CASE("fastest GEMM tuning: any cuBLASLt algorithm, still exact fp32 (CPU reference within the fp32 tolerance)") {
  std::vector<GemmTuningRecord> rep;
  const auto r = tuned_vs_plain(GemmTuning::Fastest, false, Op::N, Op::N, 700, 520, 256, -0.125f, 1.f, 77, &rep);
  CHECK(nmse(r.tuned_d, r.cpu_d) <= nmse_tol<float>());
  REQUIRE(rep.size() == 1);
  CHECK(rep[0].mode == GemmTuning::Fastest);
  CHECK(rep[0].best_any_ms <= rep[0].reference_ms);
}

TEST_CASE("bit-exact bf16 GEMM tuning: equals cublasGemmEx bit for bit (decode M = 64, long k, beta != 0, strided); the fp32 CPU agrees") {
  using bf = __nv_bfloat16;
  struct Case { Op ta, tb; index_t m, n, k; float alpha, beta; };
  // Row-major terms, as CudaLlama's linears call the backend: Y (rows, out) = X (rows, in) · Wᵀ.
  const Case cases[] = {{Op::N, Op::T, 64, 3072, 1024, 1.f, 0.f},   // a decode step's fused q|k|v (64 rows)
                        {Op::N, Op::T, 64, 1024, 2816, 1.f, 0.f},   // its down projection (long k)
                        {Op::N, Op::N, 512, 700, 256, 1.f, 1.f},    // dX += dY · W (beta = 1)
                        {Op::T, Op::N, 300, 257, 128, -1.f, 0.5f}};
  auto to_bf = [](const std::vector<float>& v) {
    std::vector<bf> o(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) o[i] = __float2bfloat16(v[i]);
    return o;
  };
  auto rounded = [](std::vector<float> v) {
    for (auto& x : v) x = __bfloat162float(__float2bfloat16(x));
    return v;
  };
  for (const auto& c : cases) {
    CAPTURE(c.m);
    CAPTURE(c.n);
    CAPTURE(c.k);
    CudaBackend<bf> tuned(CudaBackendOptions{.gemm_tuning_bf16 = GemmTuning::BitExact});
    CudaBackend<bf> plain(CudaBackendOptions{.gemm_tuning_bf16 = GemmTuning::Off});
    EigenBackend<float> cpu;
    tuned.set_gemm_tuning_min_flop(0);
    const index_t ar = c.ta == Op::N ? c.m : c.k, ac = c.ta == Op::N ? c.k : c.m;
    const index_t br = c.tb == Op::N ? c.k : c.n, bc = c.tb == Op::N ? c.n : c.k;
    const index_t pad = 3;  // A and C are column blocks of wider parents
    const auto hA = rounded(random_host<float>(ar, ac + pad, 41 + c.m)), hB = rounded(random_host<float>(br, bc, 42 + c.n)),
               hC = rounded(random_host<float>(c.m, c.n + pad, 43 + c.k));
    const auto bA = to_bf(hA), bB = to_bf(hB), bC = to_bf(hC);
    auto At = tuned.make_matrix(ar, ac + pad), Bt = tuned.make_matrix(br, bc), Ct = tuned.make_matrix(c.m, c.n + pad);
    auto Ap = plain.make_matrix(ar, ac + pad), Bp = plain.make_matrix(br, bc), Cp = plain.make_matrix(c.m, c.n + pad);
    auto Ac = cpu.make_matrix(ar, ac + pad), Bc = cpu.make_matrix(br, bc), Cc = cpu.make_matrix(c.m, c.n + pad);
    tuned.upload(bA.data(), At.view()), tuned.upload(bB.data(), Bt.view()), tuned.upload(bC.data(), Ct.view());
    plain.upload(bA.data(), Ap.view()), plain.upload(bB.data(), Bp.view()), plain.upload(bC.data(), Cp.view());
    cpu.upload(hA.data(), Ac.view()), cpu.upload(hB.data(), Bc.view()), cpu.upload(hC.data(), Cc.view());
    for (int rep = 0; rep < 2; ++rep) {  // the first call tunes, the second runs the cached choice
      tuned.gemm(c.ta, c.tb, c.alpha, ConstMatrixView<bf>(At.view().col_block(0, ac)), Bt.cview(), c.beta,
                 Ct.view().col_block(0, c.n));
      plain.gemm(c.ta, c.tb, c.alpha, ConstMatrixView<bf>(Ap.view().col_block(0, ac)), Bp.cview(), c.beta,
                 Cp.view().col_block(0, c.n));
      if (rep == 0)  // the CPU reference of the first product (the GPUs' second call adds it again when beta != 0)
        cpu.gemm(c.ta, c.tb, c.alpha, ConstMatrixView<float>(Ac.view().col_block(0, ac)), Bc.cview(), c.beta,
                 Cc.view().col_block(0, c.n));
    }
    CHECK(same_bits(raw(tuned, Ct.cview()), raw(plain, Cp.cview())));  // pad columns included: untouched
    const auto& rep = tuned.gemm_tuning_report();
    REQUIRE(rep.size() == 1);
    INFO(rep[0].str());
    CHECK(rep[0].bf16);
    CHECK(rep[0].candidates > 0);  // cuBLASLt offered and ran algorithms for this bf16 problem
    CHECK(rep[0].m == c.n);  // column-major terms
    CHECK(rep[0].n == c.m);
    CHECK(rep[0].reference_ms > 0);
    CHECK(rep[0].chosen_ms <= rep[0].reference_ms);
    if (rep[0].uses_lt) CHECK(rep[0].bit_identical >= 1);
    CHECK(plain.gemm_tuning_report().empty());
    MESSAGE(rep[0].str());
    if (c.beta == 0.f) {  // one product (beta = 0 makes the second call repeat it): the fp32 CPU agrees
      CHECK(nmse(dense(tuned, ConstMatrixView<bf>(Ct.view().col_block(0, c.n))),
                 dense(ConstMatrixView<float>(Cc.view().col_block(0, c.n)))) <= nmse_tol<bf>());
    }
  }
}

TEST_CASE("GEMM tuning: at most 4 row counts tuned per weight shape (a prefill's varying rows pay no search each); results unchanged") {
  CudaBackend<float> tuned(CudaBackendOptions{.gemm_tuning = GemmTuning::BitExact});
  CudaBackend<float> plain(CudaBackendOptions{.gemm_tuning = GemmTuning::Off});
  tuned.set_gemm_tuning_min_flop(0);
  const index_t in = 96, out = 160;
  auto hW = random_host<float>(out, in, 3);
  auto Wt = tuned.make_matrix(out, in), Wp = plain.make_matrix(out, in);
  tuned.upload(hW.data(), Wt.view());
  plain.upload(hW.data(), Wp.view());
  std::size_t expected_report[] = {1, 2, 2, 3, 4, 4, 4};  // 8 again is a cache hit; 136 is over the cap
  std::size_t i = 0;
  for (index_t rows : {8, 24, 8, 40, 72, 136, 8}) {  // Y (rows, out) = X Wᵀ
    CAPTURE(rows);
    auto hX = random_host<float>(rows, in, 100 + rows);
    auto Xt = tuned.make_matrix(rows, in), Yt = tuned.make_matrix(rows, out);
    auto Xp = plain.make_matrix(rows, in), Yp = plain.make_matrix(rows, out);
    tuned.upload(hX.data(), Xt.view());
    plain.upload(hX.data(), Xp.view());
    tuned.gemm(Op::N, Op::T, 1.f, Xt.cview(), Wt.cview(), 0.f, Yt.view());
    plain.gemm(Op::N, Op::T, 1.f, Xp.cview(), Wp.cview(), 0.f, Yp.view());
    CHECK(same_bits(raw(tuned, Yt.cview()), raw(plain, Yp.cview())));
    CHECK(tuned.gemm_tuning_report().size() == expected_report[i++]);
  }
  const auto& rep = tuned.gemm_tuning_report();
  REQUIRE(rep.size() == 4);  // rows 8, 24, 40, 72 tuned; 136 runs cublasGemmEx untuned
  for (const auto& r : rep) CHECK(r.m == out);
}

TEST_CASE("GEMM tuning under CUDA graph capture: a new problem is not tuned while captured, runs cublasGemmEx, is tuned later") {
  CudaBackend<float> b(CudaBackendOptions{.gemm_tuning = GemmTuning::BitExact});
  b.set_gemm_tuning_min_flop(0);
  auto A = b.make_matrix(256, 192), B = b.make_matrix(192, 320), C = b.make_matrix(256, 320);
  b.fill_normal(A.view(), 5);
  b.fill_normal(B.view(), 6);
  b.synchronize();  // the capture below records only the GEMM
  CudaBackend<float> ref(CudaBackendOptions{.gemm_tuning = GemmTuning::Off});
  auto Ar = ref.make_matrix(256, 192), Br = ref.make_matrix(192, 320), R = ref.make_matrix(256, 320);
  ref.fill_normal(Ar.view(), 5);
  ref.fill_normal(Br.view(), 6);
  ref.gemm(Op::N, Op::N, 1.f, Ar.cview(), Br.cview(), 0.f, R.view());  // the untuned product, same inputs
  cudaGraph_t g = nullptr;
  HDPISSA_CUDA_CHECK(cudaStreamBeginCapture(b.stream(), cudaStreamCaptureModeRelaxed));
  b.gemm(Op::N, Op::N, 1.f, A.cview(), B.cview(), 0.f, C.view());
  HDPISSA_CUDA_CHECK(cudaStreamEndCapture(b.stream(), &g));
  CHECK(b.gemm_tuning_report().empty());  // nothing tuned inside the capture
  cudaGraphExec_t ex = nullptr;
  HDPISSA_CUDA_CHECK(cudaGraphInstantiate(&ex, g, 0));
  HDPISSA_CUDA_CHECK(cudaGraphLaunch(ex, b.stream()));
  b.synchronize();
  ref.synchronize();
  CHECK(same_bits(raw(b, C.cview()), raw(ref, R.cview())));  // the captured call ran cublasGemmEx
  (void)cudaGraphExecDestroy(ex);
  (void)cudaGraphDestroy(g);
  b.gemm(Op::N, Op::N, 1.f, A.cview(), B.cview(), 0.f, C.view());  // outside a capture: tuned now
  b.synchronize();
  CHECK(b.gemm_tuning_report().size() == 1);
  CHECK(same_bits(raw(b, C.cview()), raw(ref, R.cview())));
}

TEST_CASE("GEMM tuning: small GEMMs below the threshold stay untuned; a bad HDPISSA_CUDA_GEMM_TUNING is named") {
  CudaBackend<float> b;  // default: BitExact, ≥ 1 GFLOP
  CHECK(b.gemm_tuning() == GemmTuning::BitExact);
  auto A = b.make_matrix(64, 64), C = b.make_matrix(64, 64);
  b.gemm(Op::N, Op::N, 1.f, A.cview(), A.cview(), 0.f, C.view());
  CHECK(b.gemm_tuning_report().empty());
  ::setenv("HDPISSA_CUDA_GEMM_TUNING", "sometimes", 1);
  try {
    CudaBackend<float> bad;
    FAIL("expected InvalidArgument");
  } catch (const InvalidArgument& e) {
    CHECK(std::string(e.what()).find("expected off, exact or fastest, found 'sometimes'") != std::string::npos);
  }
  // The environment only fills fields the caller left empty: an explicit value is kept (and the
  // variable not even parsed).
  CHECK(CudaBackend<float>(CudaBackendOptions{.gemm_tuning = GemmTuning::Fastest}).gemm_tuning() == GemmTuning::Fastest);
  ::setenv("HDPISSA_CUDA_GEMM_TUNING", "off", 1);
  CHECK(CudaBackend<float>().gemm_tuning() == GemmTuning::Off);
  CHECK(CudaBackend<float>(CudaBackendOptions{.gemm_tuning = GemmTuning::BitExact}).gemm_tuning() == GemmTuning::BitExact);
  {  // bf16 storage: its own variable, off by default, the same values and the same error
    ScopedEnv unset("HDPISSA_CUDA_GEMM_TUNING_BF16", nullptr);
    CHECK(CudaBackend<__nv_bfloat16>().gemm_tuning_bf16() == GemmTuning::Off);
  }
  {
    ScopedEnv exact("HDPISSA_CUDA_GEMM_TUNING_BF16", "exact");
    CHECK(CudaBackend<__nv_bfloat16>().gemm_tuning_bf16() == GemmTuning::BitExact);
  }
  {
    ScopedEnv bad_value("HDPISSA_CUDA_GEMM_TUNING_BF16", "always");
    try {
      CudaBackend<__nv_bfloat16> bad;
      FAIL("expected InvalidArgument");
    } catch (const InvalidArgument& e) {
      CHECK(std::string(e.what()).find("HDPISSA_CUDA_GEMM_TUNING_BF16: expected off, exact or fastest, found 'always'") !=
            std::string::npos);
    }
  }
  ::setenv("HDPISSA_CUDA_FUSED_DWU", "0", 1);
  CHECK_FALSE(CudaBackend<float>().fused_update());
  CHECK(CudaBackend<float>(CudaBackendOptions{.fused_update = true}).fused_update());
  ::unsetenv("HDPISSA_CUDA_FUSED_DWU");
  ::unsetenv("HDPISSA_CUDA_GEMM_TUNING");
}
