// Communicators on exactly representable data (compared exactly), fault propagation, optimizers
// and schedules against hand-computed values, effective-rank metrics against closed forms.
#include <mutex>

#include "test_util.hpp"

using namespace hdpissa;

TEST_CASE("ThreadGroup collectives on exactly representable data") {
  constexpr int P = 4;
  std::mutex mu;
  int ok = 0;
  ThreadGroup::run(P, [&](ThreadGroup& c) {
    const int r = c.rank();
    // all_gather: rank r contributes {r, r + 0.5, r + 0.25}.
    float send[3] = {float(r), r + 0.5f, r + 0.25f};
    float recv[3 * P];
    c.all_gather(send, recv, 3);
    bool good = true;
    for (int p = 0; p < P; ++p) good &= recv[3 * p] == p && recv[3 * p + 1] == p + 0.5f && recv[3 * p + 2] == p + 0.25f;
    // all_reduce_sum: Σ_r 2^r = 15; Σ_r r/8.
    double red[2] = {std::ldexp(1.0, r), r / 8.0};
    c.all_reduce_sum(red, 2);
    good &= red[0] == 15.0 && red[1] == 0.75;
    // broadcast from rank 2.
    double bc[2] = {double(r), -double(r)};
    c.broadcast(bc, 2, 2);
    good &= bc[0] == 2 && bc[1] == -2;
    c.barrier();
    std::lock_guard lock(mu);
    ok += good;
  });
  CHECK(ok == P);
}

TEST_CASE("VirtualRanks: group bookkeeping and group-major all_gather") {
  SingleProcess single;
  VirtualRanks<SingleProcess> v(single, 3);
  CHECK(v.groups() == 3);
  CHECK(v.local_groups() == 3);
  CHECK(v.first_group() == 0);
  float send[6] = {0, 1, 2, 3, 4, 5}, recv[6] = {};
  v.all_gather(send, recv, 2);
  for (int i = 0; i < 6; ++i) CHECK(recv[i] == float(i));
  std::mutex mu;
  std::vector<int> first(2);
  ThreadGroup::run(2, [&](ThreadGroup& tg) {
    VirtualRanks<ThreadGroup> vr(tg, 2);
    float s[2] = {float(vr.first_group()), float(vr.first_group() + 1)}, r[4];
    vr.all_gather(s, r, 1);
    std::lock_guard lock(mu);
    first[tg.rank()] = vr.first_group();
    for (int i = 0; i < 4; ++i) CHECK(r[i] == float(i));
  });
  CHECK(first[0] == 0);
  CHECK(first[1] == 2);
}

TEST_CASE("ThreadGroup: a worker that throws aborts its peers instead of hanging") {
  hdtest::check_throws_with<std::runtime_error>(
      [] {
        ThreadGroup::run(3, [](ThreadGroup& c) {
          if (c.rank() == 1) throw std::runtime_error("rank 1 ran out of data");
          float x = 1;
          c.all_reduce_sum(&x, 1);  // ranks 0 and 2 block here until aborted
        });
      },
      {"rank 1 ran out of data"});
}

TEST_CASE("Adam: hand-computed first steps, AdamW decoupled decay, SGD with momentum") {
  EigenBackend<double> b;
  auto p = b.make_matrix(1, 2), g = b.make_matrix(1, 2), d = b.make_matrix(1, 2);
  p.view()(0, 0) = 1.0;
  p.view()(0, 1) = -2.0;
  g.view()(0, 0) = 0.5;
  g.view()(0, 1) = -4.0;
  Adam adam;
  auto st = adam.make_state(b, 1, 2);
  adam.compute_delta(b, st, ConstMatrixView<double>(p.view()), ConstMatrixView<double>(g.view()), d.view(), 0.1);
  // Step 1: m̂ = g, v̂ = g², delta = lr · g / (|g| + eps).
  CHECK(d.view()(0, 0) == doctest::Approx(0.1 * 0.5 / (0.5 + 1e-8)).epsilon(1e-14));
  CHECK(d.view()(0, 1) == doctest::Approx(-0.1 * 4.0 / (4.0 + 1e-8)).epsilon(1e-14));
  // Step 2 with g2: m = 0.09 g + 0.1 g2 ... computed in closed form.
  g.view()(0, 0) = 1.5;
  adam.compute_delta(b, st, ConstMatrixView<double>(p.view()), ConstMatrixView<double>(g.view()), d.view(), 0.1);
  const double m = 0.9 * 0.05 + 0.1 * 1.5, v = 0.999 * 0.00025 + 0.001 * 2.25;
  const double expect = (0.1 / (1 - 0.81)) * m / (std::sqrt(v) / std::sqrt(1 - 0.999 * 0.999) + 1e-8);
  CHECK(d.view()(0, 0) == doctest::Approx(expect).epsilon(1e-13));
  CHECK(st.step == 2);

  Adam adamw(AdamConfig{0.9, 0.999, 1e-8, 0.01});
  auto stw = adamw.make_state(b, 1, 2);
  g.view()(0, 0) = 0.5;
  adamw.compute_delta(b, stw, ConstMatrixView<double>(p.view()), ConstMatrixView<double>(g.view()), d.view(), 0.1);
  CHECK(d.view()(0, 0) == doctest::Approx(0.1 * 0.5 / (0.5 + 1e-8) + 0.1 * 0.01 * 1.0).epsilon(1e-14));
  CHECK(adamw.name() == "adamw");

  Sgd sgd(SgdConfig{0.5, 0});
  auto ss = sgd.make_state(b, 1, 2);
  sgd.compute_delta(b, ss, ConstMatrixView<double>(p.view()), ConstMatrixView<double>(g.view()), d.view(), 0.1);
  sgd.compute_delta(b, ss, ConstMatrixView<double>(p.view()), ConstMatrixView<double>(g.view()), d.view(), 0.1);
  CHECK(d.view()(0, 0) == doctest::Approx(0.1 * (0.5 * 0.5 + 0.5)));  // buf = 0.5·g + g

  hdtest::check_throws_with<InvalidArgument>([] { Adam(AdamConfig{1.0, 0.999, 1e-8, 0}); }, {"betas", "(1, 0.999)"});
}

TEST_CASE("LR schedules: exact values") {
  WarmupCosineSchedule cos{1.0, 4, 14, 0.0};
  CHECK(cos(0) == 0.25);  // non-zero on the first update (unlike the reference)
  CHECK(cos(3) == 1.0);
  CHECK(cos(4) == 1.0);
  CHECK(cos(9) == doctest::Approx(0.5));
  CHECK(cos(14) == doctest::Approx(0.0));
  WarmupLinearSchedule lin{2.0, 2, 12, 0.0};
  CHECK(lin(0) == 1.0);
  CHECK(lin(7) == doctest::Approx(1.0));
  CHECK(ConstantSchedule{0.3}(100) == 0.3);
  CHECK(warmup_steps_from_ratio(0.03, 100) == 3);
  CHECK(reference_scaling(16, 16) == 1.0);
  CHECK(reference_scaling(32, 12) == 2.0);  // integer division, as the authors' code
  CHECK(peft_scaling(12, 8) == 1.5);         // PEFT: alpha / r as a float
  CHECK(peft_scaling(16, 64) == 0.25);       // alpha < r (QLoRA's r = 64, alpha = 16)
  CHECK_THROWS_AS(peft_scaling(16, 0), InvalidArgument);
}

TEST_CASE("effective-rank metrics against closed forms") {
  // Flat spectrum of n ones: every rank is n.
  const auto flat = rank_metrics(std::vector<double>(10, 1.0));
  CHECK(flat.numerical_rank == 10);
  CHECK(flat.energy90_rank == 9);
  CHECK(flat.stable_rank == doctest::Approx(10));
  CHECK(flat.entropy_rank == doctest::Approx(10));
  // {4, 2, 1, 1e-5}: numerical rank at 1e-3 is 3; stable = 21/16; energy: 16/21 < 0.9 ≤ 20/21 → 2.
  const auto m = rank_metrics({1.0, 1e-5, 4.0, 2.0}, 1e-3);
  CHECK(m.numerical_rank == 3);
  CHECK(m.energy90_rank == 2);
  CHECK(m.stable_rank == doctest::Approx((16 + 4 + 1 + 1e-10) / 16));
  const double s = 7 + 1e-5;
  double h = 0;
  for (double x : {4.0, 2.0, 1.0, 1e-5}) h -= x / s * std::log(x / s);
  CHECK(m.entropy_rank == doctest::Approx(std::exp(h)));
  // Through an SVD: a rank-2 matrix.
  EigenBackend<double> b;
  auto u = hdtest::random_matrix(b, 8, 2, 1), v = hdtest::random_matrix(b, 2, 6, 2), x = b.make_matrix(8, 6);
  b.gemm(Op::N, Op::N, 1.0, ConstMatrixView<double>(u.view()), ConstMatrixView<double>(v.view()), 0.0, x.view());
  CHECK(rank_metrics(singular_values(b, ConstMatrixView<double>(x.view())), 1e-9).numerical_rank == 2);
}
