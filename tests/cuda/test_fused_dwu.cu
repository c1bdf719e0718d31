// CudaBackend's fused Direct Weight Update hooks (multi-tensor Adam, one packing kernel per layer)
// against the core's generic per-tensor loops (the same backend with fused_update off): the math
// is the same, so W, the moments and the packed deltas must agree BIT FOR BIT; and against the CPU
// reference (EigenBackend) within the fp32/fp64 tolerance table.
#include <cstring>

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
void run_fused_vs_generic(AdamConfig cfg, int steps, Perturb perturb, bool check_cpu = true) {
  using GPU = CudaBackend<T>;
  using GDWU = DirectWeightUpdate<GPU, Adam, VirtualRanks<CudaSingleProcess>>;
  GPU fused, generic;
  fused.set_fused_update(true);
  generic.set_fused_update(false);
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
    cd.add_layer("w" + std::to_string(l), Wc.back().view(), cset);
    fd.add_layer("w" + std::to_string(l), Wf.back().view(), fset);
    gd.add_layer("w" + std::to_string(l), Wg.back().view(), gset);
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
