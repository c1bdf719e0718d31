// The baselines' optimizer step in one launch: DataParallelUpdate's batched Adam (the multi-tensor
// kernel applying p ← p − delta in place) against its per-parameter loop (the same backend with
// fused_update off: adam_delta + axpy(−1) per parameter) BIT FOR BIT, and against the CPU reference
// (EigenBackend) within the fp32 tolerance; and CudaConvertBatch against one launch_convert per pair
// bit for bit.
#include <cstring>
#include <string>
#include <vector>

#include "cuda_test_util.hpp"

using namespace hdpissa;
using namespace hdpissa::test;

namespace {

std::vector<float> raw(CudaBackend<float>& g, ConstMatrixView<float> v) {
  std::vector<float> h(std::size_t(v.size()));
  g.download(v, h.data());
  return h;
}
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

using GDP = DataParallelUpdate<CudaBackend<float>, Adam, VirtualRanks<CudaSingleProcess>>;
using CDP = DataParallelUpdate<EigenBackend<float>, Adam, VirtualRanks<SingleProcess>>;
static_assert(GDP::kBatchedAdam, "CudaBackend<float> must offer the batched DataParallelUpdate step");
static_assert(!CDP::kBatchedAdam, "EigenBackend keeps the per-parameter loop");

/// Parameters of odd shapes, one of them a strided view (a column block of a wider matrix: the
/// kernel's non-flat path); K = 2 groups on one worker; `steps` steps on a fused GPU run, a generic
/// GPU run and a CPU run fed the same gradients. At `skew_at` one state is set a step ahead on
/// both GPU runs (unequal steps: the batched step must decline and the loop run).
void run_batched_vs_loop(double weight_decay, int steps, int skew_at = -1) {
  CudaBackend<float> fused, generic;
  fused.set_fused_update(true);
  generic.set_fused_update(false);
  EigenBackend<float> cpu;
  const int K = 2;
  VirtualRanks<CudaSingleProcess> fcomm(CudaSingleProcess(fused.stream()), K), gcomm(CudaSingleProcess(generic.stream()), K);
  VirtualRanks<SingleProcess> ccomm(SingleProcess{}, K);
  const AdamConfig cfg{0.9, 0.999, 1e-8, weight_decay};
  GDP fd(fused, fcomm, Adam(cfg)), gd(generic, gcomm, Adam(cfg));
  CDP cd(cpu, ccomm, Adam(cfg));
  // (rows, cols, cols of the parent matrix: > cols means a strided view into it)
  struct Shape { index_t rows, cols, parent_cols; };
  const std::vector<Shape> shapes{{16, 37, 37}, {5, 1, 1}, {33, 16, 24}, {1, 7, 7}, {40, 300, 300}};
  std::vector<CudaBackend<float>::Matrix> Pf, Pg;
  std::vector<EigenBackend<float>::Matrix> Pc;
  std::vector<MatrixView<float>> vf, vg, vc;
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    const auto [rows, cols, pc] = shapes[i];
    const auto h = random_host<float>(rows, pc, 50 + i);
    Pf.push_back(fused.make_matrix(rows, pc));
    Pg.push_back(generic.make_matrix(rows, pc));
    Pc.push_back(cpu.make_matrix(rows, pc));
    fused.upload(h.data(), Pf.back().view());
    generic.upload(h.data(), Pg.back().view());
    cpu.upload(h.data(), Pc.back().view());
    vf.push_back(Pf.back().view().col_block(pc - cols, cols));
    vg.push_back(Pg.back().view().col_block(pc - cols, cols));
    vc.push_back(Pc.back().view().col_block(pc - cols, cols));
    const std::string name = "p" + std::to_string(i);
    fd.add_param(name, vf.back());
    gd.add_param(name, vg.back());
    cd.add_param(name, vc.back());
  }
  for (int step = 0; step < steps; ++step) {
    for (std::size_t i = 0; i < shapes.size(); ++i)
      for (int g = 0; g < K; ++g) {
        const auto h = random_host<float>(shapes[i].rows, shapes[i].cols, 1000 + 97 * step + 13 * i + g, 0.1);
        fused.upload(h.data(), fd.grad(i, g));
        generic.upload(h.data(), gd.grad(i, g));
        cpu.upload(h.data(), cd.grad(i, g));
      }
    if (step == skew_at) {
      fd.state(3).step += 1;
      gd.state(3).step += 1;
    }
    const auto rf = fd.step(1e-2), rg = gd.step(1e-2);
    cd.step(1e-2);
    CHECK_FALSE(rf.skipped);
    CHECK_FALSE(rg.skipped);
  }
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    CAPTURE(i);
    // the whole parent matrix: the columns outside a strided view must be untouched too
    CHECK(same_bits(raw(fused, Pf[i].cview()), raw(generic, Pg[i].cview())));
    CHECK(fd.state(i).step == gd.state(i).step);
    CHECK(same_bits(raw(fused, fd.state(i).m.cview()), raw(generic, gd.state(i).m.cview())));
    CHECK(same_bits(raw(fused, fd.state(i).v.cview()), raw(generic, gd.state(i).v.cview())));
    if (skew_at >= 0) continue;  // the CPU run was not skewed
    const double e = nmse(dense(fused, ConstMatrixView<float>(Pf[i].view())), dense(ConstMatrixView<float>(Pc[i].view())));
    INFO("batched GPU vs CPU: nmse = ", e);
    CHECK(e <= nmse_tol<float>());
  }
  // the batched run really changed the parameters (an update of zero would also be "identical")
  const auto before = random_host<float>(shapes[0].rows, shapes[0].cols, 50);
  CHECK_FALSE(same_bits(raw(fused, ConstMatrixView<float>(vf[0])), before));
}

}  // namespace

TEST_CASE("DataParallelUpdate's batched Adam step (one launch) equals the per-parameter loop bit for bit, Adam and AdamW") {
  run_batched_vs_loop(0.0, 3);
  run_batched_vs_loop(0.05, 3);  // weight decay: the kernel reads p before writing it in place
}

TEST_CASE("DataParallelUpdate's batched Adam: unequal step counts decline to the loop (same bits)") {
  run_batched_vs_loop(0.0, 4, /*skew_at=*/1);
}

TEST_CASE("CudaConvertBatch equals one launch_convert per pair bit for bit (dense, strided source, strided destination)") {
  CudaBackend<float> f;
  using bf = __nv_bfloat16;
  CudaBackend<bf> h;
  struct Case { index_t rows, cols, src_cols, dst_rows_above; };
  // a strided source (column block), a destination that is a row block of a taller stack, a row
  const std::vector<Case> cases{{16, 64, 64, 0}, {7, 5, 9, 3}, {1, 300, 300, 0}, {33, 17, 17, 16}};
  std::vector<CudaBackend<float>::Matrix> src;
  std::vector<CudaBackend<bf>::Matrix> batched, single;
  std::vector<CudaConvertBatch<float, bf>::Pair> pairs;
  for (std::size_t k = 0; k < cases.size(); ++k) {
    const auto c = cases[k];
    auto hs = random_host<float>(c.rows, c.src_cols, 300 + k, 3.0);
    src.push_back(f.make_matrix(c.rows, c.src_cols));
    f.upload(hs.data(), src.back().view());
    batched.push_back(h.make_matrix(c.rows + c.dst_rows_above, c.cols));
    single.push_back(h.make_matrix(c.rows + c.dst_rows_above, c.cols));
    h.fill(batched.back().view(), bf(1.0f));
    h.fill(single.back().view(), bf(1.0f));
  }
  for (std::size_t k = 0; k < cases.size(); ++k) {
    const auto c = cases[k];
    const ConstMatrixView<float> s = src[k].cview().col_block(c.src_cols - c.cols, c.cols);
    pairs.emplace_back(s, batched[k].view().row_block(c.dst_rows_above, c.rows));
    cuda_kernels::launch_convert(f.stream(), s, single[k].view().row_block(c.dst_rows_above, c.rows));
  }
  const CudaConvertBatch<float, bf> batch(pairs, f.stream());
  CHECK(batch.size() == int(cases.size()));
  batch.run(f.stream());
  f.synchronize();
  for (std::size_t k = 0; k < cases.size(); ++k) {
    CAPTURE(k);
    const auto a = batched[k].cview(), b = single[k].cview();
    std::vector<bf> ha(std::size_t(a.size())), hb(std::size_t(b.size()));
    h.download(a, ha.data());
    h.download(b, hb.data());
    CHECK(std::memcmp(ha.data(), hb.data(), ha.size() * sizeof(bf)) == 0);
    // and the exact rounding of one element against the host's round-to-nearest-even
    std::vector<float> hs(std::size_t(src[k].view().size()));
    f.download(src[k].cview(), hs.data());
    const auto c = cases[k];
    const float x = hs[std::size_t(c.src_cols - c.cols)];  // row 0, first column of the block
    const bf y = ha[std::size_t(c.dst_rows_above * c.cols)], want = __float2bfloat16_rn(x);
    CHECK(std::memcmp(&y, &want, sizeof(bf)) == 0);
  }
}

TEST_CASE("CudaConvertBatch: overlapping destinations, or a source a destination overlaps, are named errors") {
  CudaBackend<float> f;
  using bf = __nv_bfloat16;
  CudaBackend<bf> h;
  auto s = f.make_matrix(4, 8);
  auto d = h.make_matrix(6, 8);
  std::vector<CudaConvertBatch<float, bf>::Pair> pairs{{s.cview(), d.view().row_block(0, 4)},
                                                       {s.cview(), d.view().row_block(2, 4)}};
  using ToBf = CudaConvertBatch<float, bf>;
  using ToF = CudaConvertBatch<float, float>;
  CHECK_THROWS_WITH_AS(ToBf(pairs, f.stream()), doctest::Contains("destinations that do not overlap"), InvalidArgument);
  // a float → float batch whose destination is its own source
  auto m = f.make_matrix(4, 8);
  std::vector<ToF::Pair> self{{m.cview(), m.view()}};
  CHECK_THROWS_WITH_AS(ToF(self, f.stream()), doctest::Contains("sources that no destination overlaps"), InvalidArgument);
}
