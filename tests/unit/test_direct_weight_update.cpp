// DirectWeightUpdate (spec §3–4) and DataParallelUpdate against hand-computed references and
// invariants; communicators against each other.
#include <cstring>
#include <memory>
#include <mutex>

#include "test_util.hpp"

using namespace hdpissa;
using hdtest::Ref;

namespace {

/// Adam's delta after the given gradients (PyTorch formula), elementwise in double.
Ref hand_adam_delta(const std::vector<Ref>& grads, double lr, double b1 = 0.9, double b2 = 0.999, double eps = 1e-8) {
  Ref m(grads[0].rows, grads[0].cols), v = m, d = m;
  for (std::size_t t = 1; t <= grads.size(); ++t) {
    const Ref& g = grads[t - 1];
    for (std::size_t i = 0; i < g.v.size(); ++i) {
      m.v[i] = b1 * m.v[i] + (1 - b1) * g.v[i];
      v.v[i] = b2 * v.v[i] + (1 - b2) * g.v[i] * g.v[i];
      const double bc1 = 1 - std::pow(b1, double(t)), bc2 = 1 - std::pow(b2, double(t));
      d.v[i] = (lr / bc1) * m.v[i] / (std::sqrt(v.v[i]) / std::sqrt(bc2) + eps);
    }
  }
  return d;
}

template <class T>
std::vector<double> decaying(index_t k) {
  std::vector<double> s(static_cast<std::size_t>(k));
  for (index_t i = 0; i < k; ++i) s[std::size_t(i)] = 2.0 * std::pow(0.8, double(i)) + 0.05;
  return s;
}

/// A small multi-layer HD-PiSSA run: every group draws its own data (seeded by its global group
/// id), computes MutedLinear gradients, and the DWU steps. Returns the final weights.
struct Problem {
  static constexpr int layers = 3;
  static constexpr int steps = 3;
  static constexpr index_t r = 2, tokens = 6;
  static constexpr index_t shapes[layers][2] = {{12, 10}, {10, 14}, {16, 12}};
};

/// What run_hdpissa reports of the update besides W.
struct RunInfo {
  std::size_t collectives = 0, receive_bytes = 0, sent_bytes = 0;
};

/// `opts`: the update's options (exchange buckets); `move_factors`: hand the factors over with
/// add_layer(…, AdapterSet&&) instead of copying them.
template <Communicator C>
std::vector<std::vector<float>> run_hdpissa(C& comm, int K, std::vector<int>* hook_calls = nullptr,
                                            UpdateOptions opts = {}, bool move_factors = false,
                                            RunInfo* info = nullptr) {
  EigenBackend<float> b;
  std::vector<EigenBackend<float>::Matrix> W;
  std::vector<AdapterSet<EigenBackend<float>>> sets;
  OrthogonalAdapterInit<ExactSvd> init(K, Problem::r);
  for (int l = 0; l < Problem::layers; ++l) {
    const index_t out = Problem::shapes[l][0], in = Problem::shapes[l][1];
    W.push_back(hdtest::matrix_with_spectrum(b, out, in, decaying<float>(std::min(out, in)), 100 + l));
  }
  DirectWeightUpdate<EigenBackend<float>, Adam, C> dwu(b, comm, Adam{}, opts);
  for (int l = 0; l < Problem::layers; ++l) {
    sets.push_back(init(b, ConstMatrixView<float>(W[l].view()), "layer" + std::to_string(l)));
    if (!move_factors) {
      dwu.add_layer("layer" + std::to_string(l), W[l].view(), sets.back());
      continue;
    }
    const Ref A = hdtest::to_ref(ConstMatrixView<float>(sets.back().A.view()));
    const Ref B = hdtest::to_ref(ConstMatrixView<float>(sets.back().B.view()));
    dwu.add_layer("layer" + std::to_string(l), W[l].view(), std::move(sets.back()));
    CHECK(sets.back().A.view().size() == 0);  // handed over: the caller keeps no copy
    CHECK(sets.back().B.view().size() == 0);
    CHECK(hdtest::violations<float>(hdtest::to_ref(ConstMatrixView<float>(dwu.stacked_A(l))), A, 0) == 0);
    CHECK(hdtest::violations<float>(hdtest::to_ref(ConstMatrixView<float>(dwu.stacked_B(l))), B, 0) == 0);
  }
  if (hook_calls) {  // the external W update: W += Δ by hand (what a W-precision policy does)
    hook_calls->assign(Problem::layers, 0);
    dwu.set_w_apply([&W, hook_calls](std::size_t l, ConstMatrixView<float> D) {
      ++(*hook_calls)[l];
      const MatrixView<float> w = W[l].view();
      REQUIRE(D.rows == w.rows);
      REQUIRE(D.cols == w.cols);
      for (index_t i = 0; i < w.rows; ++i)
        for (index_t j = 0; j < w.cols; ++j) w.data[i * w.ld + j] += D.data[i * D.ld + j];
    });
  }
  MutedLinear<EigenBackend<float>> muted(b, 1.0);
  for (int step = 0; step < Problem::steps; ++step) {
    dwu.zero_grad();
    for (int lg = 0; lg < comm.local_groups(); ++lg) {
      const int g = comm.first_group() + lg;
      for (int l = 0; l < Problem::layers; ++l) {
        const index_t out = Problem::shapes[l][0], in = Problem::shapes[l][1];
        const std::uint64_t seed = 1000u * std::uint64_t(step) + 10u * std::uint64_t(g) + std::uint64_t(l);
        auto X = hdtest::random_matrix(b, Problem::tokens, in, seed);
        auto dY = hdtest::random_matrix(b, Problem::tokens, out, seed + 7, 0.1);
        muted.backward(ConstMatrixView<float>(W[l].view()), dwu.A(l, g), dwu.Bf(l, g), ConstMatrixView<float>(X.view()),
                       ConstMatrixView<float>(dY.view()), MatrixView<float>{}, dwu.grad_A(l, lg), dwu.grad_B(l, lg));
      }
    }
    dwu.step(1e-2);
  }
  dwu.verify_replicas();
  if (info) *info = {dwu.collectives_per_step(), dwu.receive_buffer_bytes(), dwu.bytes_sent_per_step()};
  std::vector<std::vector<float>> out;
  for (auto& w : W) out.emplace_back(w.data(), w.data() + w.view().size());
  return out;
}

}  // namespace

TEST_CASE_TEMPLATE("DWU with K = 1: W + (B − dB)(A − dA) − BA with a hand-computed Adam step", T, float, double) {
  EigenBackend<T> b;
  SingleProcess comm;
  const index_t out = 9, in = 7, r = 3;
  const double lr = 0.05;
  auto W = hdtest::matrix_with_spectrum(b, out, in, decaying<T>(in), 5);
  auto set = OrthogonalAdapterInit<>(1, r)(b, ConstMatrixView<T>(W.view()));
  const Ref A = hdtest::to_ref(set.A.view()), B = hdtest::to_ref(set.B.view());
  DirectWeightUpdate<EigenBackend<T>, Adam, SingleProcess> dwu(b, comm);
  dwu.add_layer("w", W.view(), set);
  std::vector<Ref> gA, gB;
  Ref w = hdtest::to_ref(W.view());
  for (int step = 0; step < 2; ++step) {
    auto ga = hdtest::random_matrix(b, r, in, 50 + step), gb = hdtest::random_matrix(b, out, r, 60 + step);
    gA.push_back(hdtest::to_ref(ga.view()));
    gB.push_back(hdtest::to_ref(gb.view()));
    b.copy(ConstMatrixView<T>(ga.view()), dwu.grad_A(0, 0));
    b.copy(ConstMatrixView<T>(gb.view()), dwu.grad_B(0, 0));
    const auto report = dwu.step(lr);
    CHECK_FALSE(report.skipped);
    CHECK(report.step == step + 1);
    const Ref dA = hand_adam_delta(gA, lr), dB = hand_adam_delta(gB, lr);
    // W ← W + (B − dB)(A − dA) − B A, with the constant initial factors.
    w = hdtest::add(hdtest::add(w, hdtest::matmul(hdtest::add(B, dB, -1), hdtest::add(A, dA, -1))), hdtest::matmul(B, A), -1);
    CHECK(hdtest::violations<T>(hdtest::to_ref(W.view()), w, 10) == 0);
  }
  // The factors are never written after initialisation.
  CHECK(hdtest::violations<T>(hdtest::to_ref(dwu.A(0, 0)), A, 0) == 0);
  CHECK(hdtest::violations<T>(hdtest::to_ref(dwu.Bf(0, 0)), B, 0) == 0);
  // Only the factor deltas travel: r·(in + out) numbers per layer per group.
  CHECK(dwu.bytes_sent_per_step() == std::size_t(r * (in + out)) * sizeof(T));
}

TEST_CASE("ThreadGroup K = 4 and VirtualRanks K = 4 give the same W, and the same W on every rank") {
  SingleProcess single;
  VirtualRanks<SingleProcess> virt(single, 4);
  const auto reference = run_hdpissa(virt, 4);
  std::mutex mu;
  std::vector<std::vector<std::vector<float>>> per_rank(4);
  ThreadGroup::run(4, [&](ThreadGroup& comm) {
    auto w = run_hdpissa(comm, 4);
    std::lock_guard lock(mu);
    per_rank[comm.rank()] = std::move(w);
  });
  for (int rank = 0; rank < 4; ++rank)
    for (int l = 0; l < Problem::layers; ++l) CHECK(per_rank[rank][l] == reference[l]);  // bit-identical

  SUBCASE("2 threads × 2 virtual groups also match") {
    std::vector<std::vector<std::vector<float>>> mixed(2);
    ThreadGroup::run(2, [&](ThreadGroup& tg) {
      VirtualRanks<ThreadGroup> comm(tg, 2);
      auto w = run_hdpissa(comm, 4);
      std::lock_guard lock(mu);
      mixed[tg.rank()] = std::move(w);
    });
    for (int rank = 0; rank < 2; ++rank)
      for (int l = 0; l < Problem::layers; ++l) CHECK(mixed[rank][l] == reference[l]);
  }
  SUBCASE("the update really depends on K: K = 2 differs") {
    VirtualRanks<SingleProcess> two(single, 2);
    CHECK(run_hdpissa(two, 2)[0] != reference[0]);
  }
}

namespace {
/// Bit-for-bit equality of two runs' weights (memcmp: -0.0 ≠ +0.0, a NaN equals itself).
bool same_bits(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i].size() != b[i].size() || std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(float)) != 0) return false;
  return true;
}
}  // namespace

TEST_CASE("DWU exchange buckets: any bucketing gives W bit for bit, with a receive buffer of one bucket") {
  SingleProcess single;
  VirtualRanks<SingleProcess> virt(single, 4);
  RunInfo one_worker;
  const auto reference = run_hdpissa(virt, 4, nullptr, {}, false, &one_worker);
  // One worker exchanges nothing: its send buffer is the received one.
  CHECK(one_worker.collectives == 0);
  CHECK(one_worker.receive_bytes == 0);
  // The layers' packed deltas per group: r·(in + out) floats each.
  std::size_t per_group = 0;
  for (const auto& sh : Problem::shapes) per_group += std::size_t(Problem::r * (sh[0] + sh[1]));
  struct Case {
    const char* what;
    std::size_t bucket_bytes;
    std::size_t collectives;
  };
  // Layer sizes per group (r = 2): 44, 48, 56 floats; K = 4 → 704, 768, 896 bytes per layer.
  for (const Case c : {Case{"one bucket (0 = unbounded)", 0, 1}, Case{"the default (256 MiB)", std::size_t(256) << 20, 1},
                       Case{"one layer per bucket", 1, 3}, Case{"two layers fit, then one", 1500, 2}}) {
    CAPTURE(c.what);
    UpdateOptions opts;
    opts.exchange_bucket_bytes = c.bucket_bytes;
    std::mutex mu;
    std::vector<std::vector<std::vector<float>>> per_rank(4);
    std::vector<RunInfo> infos(4);
    ThreadGroup::run(4, [&](ThreadGroup& comm) {
      RunInfo info;
      auto w = run_hdpissa(comm, 4, nullptr, opts, /*move_factors=*/comm.rank() % 2 == 1, &info);
      std::lock_guard lock(mu);
      per_rank[comm.rank()] = std::move(w);
      infos[comm.rank()] = info;
    });
    for (int rank = 0; rank < 4; ++rank) {
      CHECK(same_bits(per_rank[rank], reference));
      CHECK(infos[rank].collectives == c.collectives);
      CHECK(infos[rank].sent_bytes == per_group * sizeof(float));
    }
    // The receive buffer: K × the largest bucket.
    const std::size_t largest = c.collectives == 1 ? per_group
                                : c.collectives == 3 ? std::size_t(Problem::r * (16 + 12))
                                                     : std::size_t(Problem::r * (12 + 10 + 10 + 14));
    CHECK(infos[0].receive_bytes == 4 * largest * sizeof(float));
    // 2 threads × 2 virtual groups: the virtual groups' deltas travel in the same buckets.
    std::vector<std::vector<std::vector<float>>> mixed(2);
    ThreadGroup::run(2, [&](ThreadGroup& tg) {
      VirtualRanks<ThreadGroup> comm(tg, 2);
      auto w = run_hdpissa(comm, 4, nullptr, opts);
      std::lock_guard lock(mu);
      mixed[tg.rank()] = std::move(w);
    });
    for (int rank = 0; rank < 2; ++rank) CHECK(same_bits(mixed[rank], reference));
  }
  SUBCASE("handing the factors over (add_layer with an rvalue set) gives the same W") {
    CHECK(same_bits(run_hdpissa(virt, 4, nullptr, {}, /*move_factors=*/true), reference));
  }
  SUBCASE("a set whose A does not have K·r rows is refused, copied or handed over") {
    EigenBackend<float> b;
    auto W = b.make_matrix(12, 10);
    DirectWeightUpdate<EigenBackend<float>, Adam, VirtualRanks<SingleProcess>> dwu(b, virt, Adam{});
    AdapterSet<EigenBackend<float>> bad{b.make_matrix(7, 10), b.make_matrix(12, 8), 4, 2};  // A: 7 rows, K·r = 8
    CHECK_THROWS_WITH_AS(dwu.add_layer("w", W.view(), bad), doctest::Contains("expected A (K·r, in)"), InvalidArgument);
    CHECK_THROWS_WITH_AS(dwu.add_layer("w", W.view(), std::move(bad)), doctest::Contains("found A with 7 rows"),
                         InvalidArgument);
  }
}

TEST_CASE("Sum and Mean aggregation differ by exactly the factor K") {
  EigenBackend<double> b;
  SingleProcess single;
  VirtualRanks<SingleProcess> comm(single, 4);
  auto W0 = hdtest::matrix_with_spectrum(b, 10, 8, decaying<double>(8), 9);
  auto set = OrthogonalAdapterInit<>(4, 2)(b, ConstMatrixView<double>(W0.view()));
  // Register a zero matrix as W, so W after one step is exactly −f·L R.
  auto Wsum = b.make_matrix(10, 8), Wmean = b.make_matrix(10, 8);
  DirectWeightUpdate<EigenBackend<double>, Adam, VirtualRanks<SingleProcess>, SumAggregation> s(b, comm);
  DirectWeightUpdate<EigenBackend<double>, Adam, VirtualRanks<SingleProcess>, MeanAggregation> m(b, comm);
  s.add_layer("w", Wsum.view(), set);
  m.add_layer("w", Wmean.view(), set);
  for (int g = 0; g < 4; ++g) {
    auto ga = hdtest::random_matrix(b, 2, 8, 70 + g), gb = hdtest::random_matrix(b, 10, 2, 80 + g);
    for (auto* u : {static_cast<void*>(&s), static_cast<void*>(&m)}) (void)u;
    b.copy(ConstMatrixView<double>(ga.view()), s.grad_A(0, g));
    b.copy(ConstMatrixView<double>(gb.view()), s.grad_B(0, g));
    b.copy(ConstMatrixView<double>(ga.view()), m.grad_A(0, g));
    b.copy(ConstMatrixView<double>(gb.view()), m.grad_B(0, g));
  }
  s.step(0.1);
  m.step(0.1);
  CHECK(b.sum_squares(ConstMatrixView<double>(Wsum.view())) > 0);
  for (index_t i = 0; i < Wsum.view().size(); ++i) CHECK(Wsum.data()[i] == 4.0 * Wmean.data()[i]);
}

TEST_CASE("Non-finite gradients: an error by default, or every worker skips the step") {
  EigenBackend<float> b;
  SingleProcess comm;
  auto W = hdtest::matrix_with_spectrum(b, 8, 6, decaying<float>(6), 3);
  auto set = OrthogonalAdapterInit<>(1, 2)(b, ConstMatrixView<float>(W.view()));
  const std::vector<float> before(W.data(), W.data() + W.view().size());
  SUBCASE("default: NumericError naming the layer and group") {
    DirectWeightUpdate<EigenBackend<float>, Adam, SingleProcess> dwu(b, comm);
    dwu.add_layer("layers.0.q_proj", W.view(), set);
    dwu.grad_B(0, 0)(3, 1) = std::numeric_limits<float>::quiet_NaN();
    hdtest::check_throws_with<NumericError>([&] { dwu.step(1e-3); }, {"layers.0.q_proj", "group 0", "SkipStep"});
    CHECK(std::equal(before.begin(), before.end(), W.data()));
  }
  SUBCASE("SkipStep: W and the optimizer state are untouched") {
    DirectWeightUpdate<EigenBackend<float>, Adam, SingleProcess> dwu(b, comm, Adam{}, {NonFinitePolicy::SkipStep});
    dwu.add_layer("w", W.view(), set);
    dwu.grad_A(0, 0)(0, 0) = std::numeric_limits<float>::infinity();
    const auto rep = dwu.step(1e-3);
    CHECK(rep.skipped);
    CHECK(rep.step == 0);
    CHECK(dwu.state_A(0, 0).step == 0);
    CHECK(std::equal(before.begin(), before.end(), W.data()));
  }
  SUBCASE("SkipStep over ThreadGroup: a NaN on one worker makes all of them skip") {
    std::mutex mu;
    int skipped = 0;
    ThreadGroup::run(3, [&](ThreadGroup& tg) {
      EigenBackend<float> lb;
      auto Wl = hdtest::matrix_with_spectrum(lb, 8, 6, decaying<float>(6), 3);
      auto s3 = OrthogonalAdapterInit<>(3, 2)(lb, ConstMatrixView<float>(Wl.view()));
      DirectWeightUpdate<EigenBackend<float>, Adam, ThreadGroup> dwu(lb, tg, Adam{}, {NonFinitePolicy::SkipStep});
      dwu.add_layer("w", Wl.view(), s3);
      lb.fill(dwu.grad_A(0, 0), 0.5f);
      if (tg.rank() == 2) dwu.grad_A(0, 0)(1, 1) = std::numeric_limits<float>::quiet_NaN();
      const auto rep = dwu.step(1e-3);
      std::lock_guard lock(mu);
      skipped += rep.skipped ? 1 : 0;
    });
    CHECK(skipped == 3);
  }
}

TEST_CASE("verify_replicas: a perturbed W on one worker fails loudly on every worker") {
  std::mutex mu;
  int errors = 0;
  CHECK_THROWS_AS(ThreadGroup::run(2,
                                   [&](ThreadGroup& tg) {
                                     EigenBackend<float> b;
                                     auto W = hdtest::matrix_with_spectrum(b, 8, 6, decaying<float>(6), 3);
                                     auto set = OrthogonalAdapterInit<>(2, 2)(b, ConstMatrixView<float>(W.view()));
                                     DirectWeightUpdate<EigenBackend<float>, Adam, ThreadGroup> dwu(b, tg);
                                     dwu.add_layer("layers.1.v_proj", W.view(), set);
                                     dwu.verify_replicas();  // identical: passes
                                     if (tg.rank() == 1) W.view()(2, 2) = std::nextafter(W.view()(2, 2), 10.f);
                                     try {
                                       dwu.verify_replicas();
                                     } catch (const CommError& e) {
                                       std::lock_guard lock(mu);
                                       ++errors;
                                       CHECK(std::string(e.what()).find("diverged") != std::string::npos);
                                       throw;
                                     }
                                   }),
                  CommError);
  CHECK(errors == 2);
}

TEST_CASE("DWU bad input: wrong K, wrong shapes, mixed ranks, late registration") {
  EigenBackend<float> b;
  SingleProcess single;
  VirtualRanks<SingleProcess> comm(single, 2);
  auto W = hdtest::random_matrix(b, 8, 6, 1), W2 = hdtest::random_matrix(b, 6, 8, 2);
  DirectWeightUpdate<EigenBackend<float>, Adam, VirtualRanks<SingleProcess>> dwu(b, comm);
  auto wrongK = OrthogonalAdapterInit<>(3, 1)(b, ConstMatrixView<float>(W.view()));
  hdtest::check_throws_with<InvalidArgument>([&] { dwu.add_layer("a", W.view(), wrongK); }, {"K = 2", "found 3"});
  auto ok = OrthogonalAdapterInit<>(2, 2)(b, ConstMatrixView<float>(W.view()));
  hdtest::check_throws_with<InvalidArgument>([&] { dwu.add_layer("b", W2.view(), ok); }, {"W is (6, 8)", "(8, 6)"});
  dwu.add_layer("c", W.view(), ok);
  auto r3 = OrthogonalAdapterInit<>(2, 3)(b, ConstMatrixView<float>(W2.view()));
  hdtest::check_throws_with<InvalidArgument>([&] { dwu.add_layer("d", W2.view(), r3); }, {"r = 2", "found 3"});
  dwu.step(1e-3);
  hdtest::check_throws_with<InvalidArgument>([&] { dwu.add_layer("e", W.view(), ok); }, {"before the first step"});
}

TEST_CASE("DataParallelUpdate: the mean gradient over K groups, one optimizer step, same on every worker") {
  // SGD makes the hand reference exact: p ← p − lr · mean_g(grad_g).
  const double lr = 0.1;
  std::vector<Ref> grads;
  EigenBackend<double> hb;
  for (int g = 0; g < 4; ++g) {
    auto m = hdtest::random_matrix(hb, 3, 5, 300 + g);
    grads.push_back(hdtest::to_ref(m.view()));
  }
  auto p0 = hdtest::random_matrix(hb, 3, 5, 400);
  Ref expect = hdtest::to_ref(p0.view());
  for (int g = 0; g < 4; ++g) expect = hdtest::add(expect, grads[g], -lr / 4);
  std::mutex mu;
  int checked = 0;
  ThreadGroup::run(2, [&](ThreadGroup& tg) {
    EigenBackend<double> b;
    VirtualRanks<ThreadGroup> comm(tg, 2);
    auto p = b.make_matrix(3, 5);
    b.copy(ConstMatrixView<double>(p0.view()), p.view());
    DataParallelUpdate<EigenBackend<double>, Sgd, VirtualRanks<ThreadGroup>> dp(b, comm, Sgd{});
    dp.add_param("lora_A", p.view());
    dp.zero_grad();
    for (int lg = 0; lg < 2; ++lg) {
      const Ref& g = grads[std::size_t(comm.first_group() + lg)];
      b.upload(std::vector<double>(g.v.begin(), g.v.end()).data(), dp.grad(0, lg));
    }
    dp.step(lr);
    std::lock_guard lock(mu);
    CHECK(hdtest::violations<double>(hdtest::to_ref(p.view()), expect) == 0);
    ++checked;
  });
  CHECK(checked == 2);
}

TEST_CASE("DataParallelUpdate: a non-finite gradient in any parameter is found (one batched check) and named") {
  // The step checks the whole flat gradient buffer once and only then looks for the parameter, so
  // the parameter named must be the right one wherever the bad value sits (first, middle, last
  // element of the buffer).
  EigenBackend<float> b;
  SingleProcess comm;
  auto p0 = b.make_matrix(3, 5), p1 = b.make_matrix(4, 2), p2 = b.make_matrix(2, 7);
  for (auto* m : {&p0, &p1, &p2}) b.fill(m->view(), 0.5f);
  struct Case { int param, row, col; float value; const char* name; };
  for (const Case c : {Case{0, 0, 0, std::numeric_limits<float>::quiet_NaN(), "first.lora_A"},
                       Case{1, 2, 1, std::numeric_limits<float>::infinity(), "middle.lora_B"},
                       Case{2, 1, 6, -std::numeric_limits<float>::infinity(), "last.lora_A"}}) {
    CAPTURE(c.name);
    for (const bool skip : {false, true}) {
      DataParallelUpdate<EigenBackend<float>, Adam, SingleProcess> dp(
          b, comm, Adam{}, {skip ? NonFinitePolicy::SkipStep : NonFinitePolicy::Throw});
      dp.add_param("first.lora_A", p0.view());
      dp.add_param("middle.lora_B", p1.view());
      dp.add_param("last.lora_A", p2.view());
      dp.zero_grad();
      dp.grad(std::size_t(c.param), 0)(c.row, c.col) = c.value;
      if (skip) {
        const auto rep = dp.step(1e-3);
        CHECK(rep.skipped);
        CHECK(rep.reason.find(c.name) != std::string::npos);
        CHECK(dp.steps() == 0);
      } else {
        hdtest::check_throws_with<NumericError>([&] { dp.step(1e-3); }, {c.name, "SkipStep"});
      }
      for (auto* m : {&p0, &p1, &p2})
        for (index_t i = 0; i < m->view().size(); ++i) CHECK(m->data()[i] == 0.5f);
    }
  }
  SUBCASE("finite gradients: the step is taken") {
    DataParallelUpdate<EigenBackend<float>, Adam, SingleProcess> dp(b, comm, Adam{});
    dp.add_param("a", p0.view());
    dp.zero_grad();
    dp.grad(0, 0)(1, 1) = 1.0f;
    CHECK_FALSE(dp.step(1e-3).skipped);
    CHECK(p0.data()[1 * 5 + 1] != 0.5f);
  }
}

TEST_CASE("DirectWeightUpdate::set_w_apply: Δ handed per layer and step; W += Δ by hand = the in-place update") {
  SingleProcess one;
  VirtualRanks<SingleProcess> virt(one, 4);
  const auto plain = run_hdpissa(virt, 4);
  std::vector<int> calls;
  const auto hooked = run_hdpissa(virt, 4, &calls);
  for (int l = 0; l < Problem::layers; ++l) {
    CAPTURE(l);
    CHECK(calls[std::size_t(l)] == Problem::steps);
    // Same Δ; only the fp32 rounding of W + Δ (GEMM with β = 1 vs a separate add) may differ.
    double worst = 0;
    for (std::size_t i = 0; i < plain[std::size_t(l)].size(); ++i)
      worst = std::max(worst, double(std::fabs(plain[std::size_t(l)][i] - hooked[std::size_t(l)][i])) /
                                  (std::fabs(double(plain[std::size_t(l)][i])) + 1e-3));
    CHECK(worst < 1e-5);
  }
}

// DirectWeightUpdate::set_w_storage (raw bf16 bits, the GPU trainer's layout) on the CPU == the CPU
// trainer's path (set_w_apply + the same rule on fp32 slots holding bf16 values), bit for bit, for
// both bf16 policies; verify_replicas checksums the storage; a resumed SR stream (set_w_step) matches.
TEST_CASE("DirectWeightUpdate::set_w_storage: bf16 bits == the set_w_apply path on fp32 slots, per policy") {
  for (const WPrecision p : {WPrecision::Bf16Compensated, WPrecision::Bf16StochasticRounding}) {
    CAPTURE(w_precision_name(p));
    const int K = 2, steps = 4;
    const index_t r = 2;
    const std::vector<std::pair<index_t, index_t>> shapes{{12, 10}, {9, 14}};
    auto run = [&](bool storage) {
      EigenBackend<float> b;
      SingleProcess one;
      VirtualRanks<SingleProcess> comm(one, K);
      DirectWeightUpdate<EigenBackend<float>, Adam, VirtualRanks<SingleProcess>> dwu(b, comm, Adam{});
      std::vector<EigenBackend<float>::Matrix> Wf, Cf;
      std::vector<std::vector<std::uint16_t>> Wb, Cb;
      std::vector<AdapterSet<EigenBackend<float>>> sets;
      std::uint64_t offset = 0;
      for (std::size_t l = 0; l < shapes.size(); ++l) {
        const auto [out, in] = shapes[l];
        auto W = hdtest::matrix_with_spectrum(b, out, in, decaying<float>(std::min(out, in)), 700 + l);
        sets.push_back(OrthogonalAdapterInit<ExactSvd>(K, r)(b, ConstMatrixView<float>(W.view()), "w"));
        for (index_t i = 0; i < W.view().rows; ++i)
          for (index_t j = 0; j < W.view().cols; ++j) W.view()(i, j) = round_bf16(W.view()(i, j));
        Wf.push_back(std::move(W));
        Cf.push_back(b.make_matrix(out, in));
        b.fill(Cf.back().view(), 0.0f);
        Wb.emplace_back();
        for (index_t i = 0; i < out; ++i)
          for (index_t j = 0; j < in; ++j) Wb.back().push_back(bf16_bits_rn(Wf.back().view()(i, j)));
        Cb.emplace_back(std::size_t(out * in), std::uint16_t(0));
        dwu.add_layer(std::string("w").append(std::to_string(l)), storage ? MatrixView<float>{nullptr, out, in, in} : Wf.back().view(),
                      sets.back());
        if (storage) {
          Bf16WStorage st;
          st.policy = p;
          st.w = Wb.back().data();
          st.ldw = in;
          st.c = Cb.back().data();
          st.ldc = in;
          st.seed = 11;
          st.offset = offset;
          dwu.set_w_storage(l, st);
        }
        offset += std::uint64_t(out * in);
      }
      long step = 5;  // as if resumed at step 5
      dwu.set_w_step(std::uint64_t(step));
      if (!storage)
        dwu.set_w_apply([&](std::size_t l, ConstMatrixView<float> D) {
          const auto W = Wf[l].view(), C = Cf[l].view();
          std::uint64_t off = 0;
          for (std::size_t m = 0; m < l; ++m) off += std::uint64_t(shapes[m].first * shapes[m].second);
          for (index_t i = 0; i < W.rows; ++i)
            for (index_t j = 0; j < W.cols; ++j) {
              if (p == WPrecision::Bf16Compensated) Bf16Compensated{}(W(i, j), C(i, j), D(i, j));
              else Bf16StochasticRounding{11, std::uint64_t(step)}(W(i, j), D(i, j), off + std::uint64_t(i * W.cols + j));
            }
        });
      for (int s = 0; s < steps; ++s) {
        for (std::size_t l = 0; l < shapes.size(); ++l)
          for (int g = 0; g < K; ++g) {
            fill_gaussian(b, dwu.grad_A(l, g), 900 + 10 * s + 3 * l + g);
            fill_gaussian(b, dwu.grad_B(l, g), 950 + 10 * s + 3 * l + g);
          }
        dwu.step(1e-2);
        ++step;
      }
      if (storage) dwu.verify_replicas();
      std::vector<std::uint16_t> out;  // W bits, then c bits, of every layer
      for (std::size_t l = 0; l < shapes.size(); ++l) {
        if (storage) {
          out.insert(out.end(), Wb[l].begin(), Wb[l].end());
          if (p == WPrecision::Bf16Compensated) out.insert(out.end(), Cb[l].begin(), Cb[l].end());
        } else {
          const auto W = Wf[l].view(), C = Cf[l].view();
          for (index_t i = 0; i < W.rows; ++i)
            for (index_t j = 0; j < W.cols; ++j) out.push_back(bf16_bits_rn(W(i, j)));
          if (p == WPrecision::Bf16Compensated)
            for (index_t i = 0; i < C.rows; ++i)
              for (index_t j = 0; j < C.cols; ++j) out.push_back(bf16_bits_rn(C(i, j)));
        }
      }
      return out;
    };
    const auto a = run(true), b = run(false);
    CHECK(a.size() == b.size());
    CHECK(a == b);
  }
}

// Bf16WStorage::amax: after each step it holds max |w| over the updated storage, as the bits of the
// float (the FP8 copies' scale input), for both policies and both updates (DirectWeightUpdate,
// DataParallelUpdate); the update maxes into it, so a value left from before stays when larger.
TEST_CASE("Bf16WStorage::amax: each update leaves max |w| of the updated bf16 W, by the bits") {
  auto max_abs_bits = [](const std::vector<std::uint16_t>& w) {
    std::uint32_t m = 0;
    for (const std::uint16_t b : w) m = std::max(m, std::uint32_t(b & 0x7fffu) << 16);
    float f;
    std::memcpy(&f, &m, sizeof f);
    return f;
  };
  for (const WPrecision p : {WPrecision::Bf16Compensated, WPrecision::Bf16StochasticRounding}) {
    CAPTURE(w_precision_name(p));
    const int K = 2;
    const index_t r = 2, out = 11, in = 13;
    EigenBackend<float> b;
    SingleProcess one;
    VirtualRanks<SingleProcess> comm(one, K);
    DirectWeightUpdate<EigenBackend<float>, Adam, VirtualRanks<SingleProcess>> dwu(b, comm, Adam{});
    auto W = hdtest::matrix_with_spectrum(b, out, in, decaying<float>(std::min(out, in)), 77);
    const auto set = OrthogonalAdapterInit<ExactSvd>(K, r)(b, ConstMatrixView<float>(W.view()), "w");
    std::vector<std::uint16_t> wb, cb(std::size_t(out * in), 0);
    for (index_t i = 0; i < out; ++i)
      for (index_t j = 0; j < in; ++j) wb.push_back(bf16_bits_rn(W.view()(i, j)));
    float amax = 0;
    dwu.add_layer("w", MatrixView<float>{nullptr, out, in, in}, set);
    Bf16WStorage st;
    st.policy = p;
    st.w = wb.data();
    st.ldw = in;
    st.c = cb.data();
    st.ldc = in;
    st.seed = 3;
    st.amax = &amax;
    dwu.set_w_storage(0, st);
    // DataParallelUpdate on a second W (full fine-tuning's layout), SGD
    DataParallelUpdate<EigenBackend<float>, Sgd, VirtualRanks<SingleProcess>> dp(b, comm, Sgd{});
    std::vector<std::uint16_t> wb2(std::size_t(out * in)), cb2(std::size_t(out * in), 0);
    for (std::size_t k = 0; k < wb2.size(); ++k) wb2[k] = bf16_bits_rn(float(0.01 * (double(k % 17) - 8.0)));
    float amax2 = 0;
    dp.add_param("w2", MatrixView<float>{nullptr, out, in, in});
    Bf16WStorage st2 = st;
    st2.w = wb2.data();
    st2.c = cb2.data();
    st2.amax = &amax2;
    dp.set_w_storage(0, st2);
    for (int s = 0; s < 3; ++s) {
      for (int g = 0; g < K; ++g) {
        fill_gaussian(b, dwu.grad_A(0, g), 40 + 10 * s + g);
        fill_gaussian(b, dwu.grad_B(0, g), 60 + 10 * s + g);
        fill_gaussian(b, dp.grad(0, g), 80 + 10 * s + g);
      }
      const auto before = wb;
      amax = 0;
      amax2 = 0;
      dwu.step(1e-2);
      dp.step(1e-1);
      CHECK(wb != before);  // the step changed W
      CHECK(amax == max_abs_bits(wb));
      CHECK(amax2 == max_abs_bits(wb2));
      CHECK(amax > 0.0f);
    }
    amax = 1e30f;  // not reset: the update maxes into it
    for (int g = 0; g < K; ++g) {
      fill_gaussian(b, dwu.grad_A(0, g), 7 + g);
      fill_gaussian(b, dwu.grad_B(0, g), 9 + g);
    }
    dwu.step(1e-2);
    CHECK(amax == 1e30f);
  }
}

// DataParallelUpdate::set_w_storage (raw bf16 bits: the GPU trainer's full fine-tuning layout) on
// the CPU against a hand reference: the mean gradient over K = 4 groups, SGD with decoupled weight
// decay reading the bf16 W (its exact fp32 widening), Δ = −delta folded into W by the policy's rule
// at SR element offset + r·cols + c and step set_w_step + applied steps. SGD on small dyadic values
// makes every fp32 operation exact, so the reference is bit-exact whatever the evaluation order. The
// same run through set_w_apply on fp32 slots holding bf16 values (the CPU trainer's path) with Adam
// (AdamW) gives the same bits as the storage with Adam.
TEST_CASE("DataParallelUpdate::set_w_storage: bf16 bits == hand reference (SGD) and == the set_w_apply path (AdamW)") {
  const int K = 4, steps = 4;
  const std::vector<std::pair<index_t, index_t>> shapes{{9, 7}, {5, 12}};
  const double lr = 0.25, wd = 0.5;
  const std::uint64_t seed = 13, first_step = 6;
  auto w0 = [](std::size_t l, std::size_t i) { return bf16_bits_rn(float(4.0 * (counter_uniform(70 + l, i) - 0.5))); };
  auto grad = [](int s, std::size_t l, int g, std::size_t i) {  // small multiples of 1/64
    return float(int(counter_uniform(800 + 31 * std::uint64_t(s) + 7 * l + std::uint64_t(g), i) * 17) - 8) / 64.f;
  };
  for (const WPrecision p : {WPrecision::Bf16Compensated, WPrecision::Bf16StochasticRounding}) {
    CAPTURE(w_precision_name(p));
    // kind 0: storage + SGD; 1: storage + AdamW; 2: set_w_apply on fp32 slots + AdamW
    auto run = [&](int kind) {
      EigenBackend<float> b;
      SingleProcess one;
      VirtualRanks<SingleProcess> comm(one, K);
      using Upd = DataParallelUpdate<EigenBackend<float>, Adam, VirtualRanks<SingleProcess>>;
      using UpdS = DataParallelUpdate<EigenBackend<float>, Sgd, VirtualRanks<SingleProcess>>;
      std::unique_ptr<Upd> adam;
      std::unique_ptr<UpdS> sgd;
      if (kind == 0) sgd = std::make_unique<UpdS>(b, comm, Sgd(SgdConfig{0, wd}));
      else adam = std::make_unique<Upd>(b, comm, Adam(AdamConfig{0.9, 0.999, 1e-8, 0.1}));
      std::vector<std::vector<std::uint16_t>> Wb, Cb;
      std::vector<EigenBackend<float>::Matrix> Wf, Cf;
      std::uint64_t offset = 0;
      std::vector<std::uint64_t> offs;
      for (std::size_t l = 0; l < shapes.size(); ++l) {
        const auto [out, in] = shapes[l];
        const std::size_t n = std::size_t(out * in);
        Wb.emplace_back(n);
        for (std::size_t i = 0; i < n; ++i) Wb.back()[i] = w0(l, i);
        Cb.emplace_back(n, std::uint16_t(0));
        Wf.push_back(b.make_matrix(out, in));
        Cf.push_back(b.make_matrix(out, in));
        b.fill(Cf.back().view(), 0.0f);
        for (std::size_t i = 0; i < n; ++i) Wf.back().view().data[i] = bf16_bits_to_float(Wb.back()[i]);
        const MatrixView<float> view = kind == 2 ? Wf.back().view() : MatrixView<float>{nullptr, out, in, in};
        const std::string name = std::string("w").append(std::to_string(l));
        if (sgd) sgd->add_param(name, view);
        else adam->add_param(name, view);
        if (kind != 2) {
          Bf16WStorage st;
          st.policy = p;
          st.w = Wb.back().data();
          st.ldw = in;
          st.c = Cb.back().data();
          st.ldc = in;
          st.seed = seed;
          st.offset = offset;
          if (sgd) sgd->set_w_storage(l, st);
          else adam->set_w_storage(l, st);
        }
        offs.push_back(offset);
        offset += n;
      }
      std::uint64_t step = first_step;  // as if resumed
      if (sgd) sgd->set_w_step(step);
      else adam->set_w_step(step);
      if (kind == 2)
        adam->set_w_apply([&](std::size_t l, ConstMatrixView<float> D) {
          const auto W = Wf[l].view(), C = Cf[l].view();
          for (index_t i = 0; i < W.rows; ++i)
            for (index_t j = 0; j < W.cols; ++j) {
              if (p == WPrecision::Bf16Compensated) Bf16Compensated{}(W(i, j), C(i, j), D(i, j));
              else Bf16StochasticRounding{seed, step}(W(i, j), D(i, j), offs[l] + std::uint64_t(i * W.cols + j));
            }
        });
      for (int s = 0; s < steps; ++s) {
        for (std::size_t l = 0; l < shapes.size(); ++l)
          for (int g = 0; g < K; ++g) {
            const MatrixView<float> G = sgd ? sgd->grad(l, g) : adam->grad(l, g);
            for (index_t i = 0; i < G.rows * G.cols; ++i) G.data[i] = grad(s, l, g, std::size_t(i));
          }
        const StepReport rep = sgd ? sgd->step(lr) : adam->step(1e-2);
        CHECK_FALSE(rep.skipped);
        ++step;
        CHECK((sgd ? sgd->w_step() : adam->w_step()) == step);
        if (sgd) sgd->zero_grad();
        else adam->zero_grad();
      }
      std::vector<std::uint16_t> out;  // W bits, then c bits, of every tensor
      for (std::size_t l = 0; l < shapes.size(); ++l) {
        if (kind != 2) {
          out.insert(out.end(), Wb[l].begin(), Wb[l].end());
          if (p == WPrecision::Bf16Compensated) out.insert(out.end(), Cb[l].begin(), Cb[l].end());
        } else {
          const auto W = Wf[l].view(), C = Cf[l].view();
          for (index_t i = 0; i < W.rows * W.cols; ++i) out.push_back(bf16_bits_rn(W.data[i]));
          if (p == WPrecision::Bf16Compensated)
            for (index_t i = 0; i < C.rows * C.cols; ++i) out.push_back(bf16_bits_rn(C.data[i]));
        }
      }
      return out;
    };
    // The hand reference of kind 0, element by element (every operation exact in fp32).
    std::vector<std::uint16_t> ref;
    {
      std::vector<std::vector<std::uint16_t>> W, C;
      std::uint64_t offset = 0;
      for (std::size_t l = 0; l < shapes.size(); ++l) {
        const std::size_t n = std::size_t(shapes[l].first * shapes[l].second);
        W.emplace_back(n);
        C.emplace_back(n, std::uint16_t(0));
        for (std::size_t i = 0; i < n; ++i) W.back()[i] = w0(l, i);
        for (int s = 0; s < steps; ++s)
          for (std::size_t i = 0; i < n; ++i) {
            double gsum = 0;
            for (int g = 0; g < K; ++g) gsum += grad(s, l, g, i);
            const double w = bf16_bits_to_float(W.back()[i]);
            const float delta = float(-lr * (gsum / K + wd * w));  // exact
            if (p == WPrecision::Bf16Compensated) Bf16Compensated{}(W.back()[i], C.back()[i], delta);
            else Bf16StochasticRounding{seed, first_step + std::uint64_t(s)}(W.back()[i], delta, offset + i);
          }
        offset += n;
        ref.insert(ref.end(), W.back().begin(), W.back().end());
        if (p == WPrecision::Bf16Compensated) ref.insert(ref.end(), C.back().begin(), C.back().end());
      }
    }
    const auto a = run(0);
    CHECK(a == ref);
    std::size_t moved = 0;
    for (std::size_t l = 0, k = 0; l < shapes.size(); ++l)
      for (std::size_t i = 0; i < std::size_t(shapes[l].first * shapes[l].second); ++i, ++k) moved += a[k] != w0(l, i);
    CHECK(moved > 0);
    CHECK(run(1) == run(2));
  }
}

// The local gradients live in one flat buffer (allocate_gradients): per local group every layer's
// gA, then every layer's gB, each block on a 64-byte boundary. Consecutive layers' gA are adjacent
// rows where r·in is a multiple of 16 floats (the trainer's stacked gA GEMM writes into them);
// no two views overlap; zero_grad zeroes every gradient and nothing else.
TEST_CASE("DirectWeightUpdate gradients: one flat buffer, gA of consecutive layers adjacent, zero_grad one fill") {
  EigenBackend<float> b;
  SingleProcess one;
  const int K = 2;
  const index_t r = 4;
  VirtualRanks<SingleProcess> comm(one, K);
  DirectWeightUpdate<EigenBackend<float>, Adam, VirtualRanks<SingleProcess>> dwu(b, comm, Adam{});
  // (out, in): the first three share in = 64 (r·in = 256: adjacent); the last has r·in = 4·13 = 52
  const std::vector<std::pair<index_t, index_t>> shapes{{64, 64}, {32, 64}, {32, 64}, {9, 13}};
  std::vector<EigenBackend<float>::Matrix> W;
  for (std::size_t l = 0; l < shapes.size(); ++l) {
    const auto [out, in] = shapes[l];
    W.push_back(hdtest::matrix_with_spectrum(b, out, in, decaying<float>(std::min(out, in)), 500 + l));
    dwu.add_layer("w" + std::to_string(l), W.back().view(),
                  OrthogonalAdapterInit<ExactSvd>(K, r)(b, ConstMatrixView<float>(W.back().view()), "w"));
  }
  for (int g = 0; g < K; ++g) {
    CAPTURE(g);
    CHECK(dwu.grad_A(1, g).data == dwu.grad_A(0, g).data + r * 64);
    CHECK(dwu.grad_A(2, g).data == dwu.grad_A(1, g).data + r * 64);
    CHECK(dwu.grad_A(0, g).ld == 64);
  }
  // every element of every view is its own (no overlap): mark them all, count the marks
  std::vector<MatrixView<float>> views;
  for (std::size_t l = 0; l < shapes.size(); ++l)
    for (int g = 0; g < K; ++g) {
      views.push_back(dwu.grad_A(l, g));
      views.push_back(dwu.grad_B(l, g));
    }
  for (auto& v : views) b.fill(v, 0.0f);
  std::size_t elems = 0;
  for (auto& v : views) {
    for (index_t i = 0; i < v.rows; ++i)
      for (index_t j = 0; j < v.cols; ++j) v(i, j) += 1.0f;
    elems += std::size_t(v.size());
  }
  std::size_t ones = 0;
  for (auto& v : views)
    for (index_t i = 0; i < v.rows; ++i)
      for (index_t j = 0; j < v.cols; ++j) ones += v(i, j) == 1.0f;
  CHECK(ones == elems);
  // zero_grad: every gradient back to 0; W untouched
  const auto w0 = W[0].view()(3, 5);
  for (auto& v : views) fill_gaussian(b, v, 9);
  dwu.zero_grad();
  std::size_t nonzero = 0;
  for (auto& v : views)
    for (index_t i = 0; i < v.rows; ++i)
      for (index_t j = 0; j < v.cols; ++j) nonzero += v(i, j) != 0.0f;
  CHECK(nonzero == 0);
  CHECK(W[0].view()(3, 5) == w0);
}
