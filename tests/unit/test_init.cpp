// Orthogonal adapter initialisation (spec §1) and the baselines' initialisations, against an
// independent SVD (Eigen's JacobiSVD in double, a different algorithm from the backend's BDCSVD)
// and against invariants.
#include <Eigen/SVD>
#include <mutex>

#include "test_util.hpp"

using namespace hdpissa;
using hdtest::Ref;

namespace {

/// Σ_{i in [lo, hi)} σ_i u_i v_iᵀ of W, from JacobiSVD in double.
Ref svd_components(const Ref& w, index_t lo, index_t hi) {
  Eigen::MatrixXd m(w.rows, w.cols);
  for (index_t i = 0; i < w.rows; ++i)
    for (index_t j = 0; j < w.cols; ++j) m(i, j) = w(i, j);
  Eigen::JacobiSVD<Eigen::MatrixXd> svd(m, Eigen::ComputeThinU | Eigen::ComputeThinV);
  Eigen::MatrixXd part = svd.matrixU().middleCols(lo, hi - lo) *
                         svd.singularValues().segment(lo, hi - lo).asDiagonal() *
                         svd.matrixV().middleCols(lo, hi - lo).transpose();
  Ref out(w.rows, w.cols);
  for (index_t i = 0; i < w.rows; ++i)
    for (index_t j = 0; j < w.cols; ++j) out(i, j) = part(i, j);
  return out;
}

/// A spectrum with distinct, decaying singular values (so each slice is unique up to sign).
std::vector<double> decaying(index_t k, double rate = 0.85) {
  std::vector<double> s(static_cast<std::size_t>(k));
  for (index_t i = 0; i < k; ++i) s[std::size_t(i)] = 3.0 * std::pow(rate, double(i)) + 0.01;
  return s;
}

}  // namespace

TEST_CASE_TEMPLATE("OrthogonalAdapterInit (exact SVD): slices, orthogonality, truncated SVD, W untouched", T,
                   float, double) {
  EigenBackend<T> b;
  const int K = 4;
  const index_t r = 3, out = 24, in = 18;
  auto W = hdtest::matrix_with_spectrum(b, out, in, decaying(in), 11);
  const std::vector<T> w_before(W.view().data, W.view().data + W.view().size());
  OrthogonalAdapterInit<ExactSvd> init(K, r);
  auto set = init(b, ConstMatrixView<T>(W.view()), "q_proj");
  REQUIRE(set.groups == K);
  REQUIRE(set.A.rows() == K * r);
  REQUIRE(set.B.cols() == K * r);

  SUBCASE("W is left unchanged, bit for bit") {
    CHECK(std::equal(w_before.begin(), w_before.end(), W.view().data));
  }
  const Ref w = hdtest::to_ref(W.view());
  SUBCASE("group i's B_i A_i is exactly components [i·r, (i+1)·r)") {
    for (int i = 0; i < K; ++i) {
      const Ref bi_ai = hdtest::matmul(hdtest::to_ref(set.B_of(i)), hdtest::to_ref(set.A_of(i)));
      CHECK(hdtest::violations<T>(bi_ai, svd_components(w, i * r, (i + 1) * r), 20) == 0);
    }
  }
  SUBCASE("Σ_i B_i A_i is the rank-K·r truncated SVD") {
    Ref sum(out, in);
    for (int i = 0; i < K; ++i)
      sum = hdtest::add(sum, hdtest::matmul(hdtest::to_ref(set.B_of(i)), hdtest::to_ref(set.A_of(i))));
    CHECK(hdtest::violations<T>(sum, svd_components(w, 0, K * r), 20) == 0);
  }
  SUBCASE("A_i A_jᵀ = 0 and B_iᵀ B_j = 0 for i ≠ j") {
    const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
    for (int i = 0; i < K; ++i)
      for (int j = 0; j < K; ++j) {
        if (i == j) continue;
        CHECK(hdtest::max_abs(hdtest::matmul(hdtest::to_ref(set.A_of(i)), hdtest::to_ref(set.A_of(j)), false, true)) < tol * 10);
        CHECK(hdtest::max_abs(hdtest::matmul(hdtest::to_ref(set.B_of(i)), hdtest::to_ref(set.B_of(j)), true, false)) < tol * 10);
      }
  }
}

TEST_CASE_TEMPLATE("RandomizedSvd matches the exact SVD on the top components", T, float, double) {
  EigenBackend<T> b;
  const index_t out = 60, in = 40, k = 8;
  auto W = hdtest::matrix_with_spectrum(b, out, in, decaying(in, 0.7), 21);
  auto exact = ExactSvd{}.top_k(b, ConstMatrixView<T>(W.view()), k);
  RandomizedSvd rsvd;
  rsvd.oversample = 8;
  rsvd.power_iterations = 3;
  auto approx = rsvd.top_k(b, ConstMatrixView<T>(W.view()), k);
  const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-9;  // per-dtype tolerance
  for (index_t i = 0; i < k; ++i) {
    const double se = exact.S.view()(0, i), sa = approx.S.view()(0, i);
    CHECK(std::abs(sa - se) <= tol * se);
  }
  // Same rank-k approximation (sign/rotation invariant): U S Vt agree.
  auto recon = [&](auto& r) {
    Ref us = hdtest::to_ref(r.U.view());
    for (index_t i = 0; i < us.rows; ++i)
      for (index_t j = 0; j < k; ++j) us(i, j) *= double(r.S.view()(0, j));
    return hdtest::matmul(us, hdtest::to_ref(r.Vt.view()));
  };
  CHECK(hdtest::count_violations(recon(approx), recon(exact), tol * 10, tol * 10) == 0);
  // And it is reproducible: same seed, same bits.
  auto again = rsvd.top_k(b, ConstMatrixView<T>(W.view()), k);
  CHECK(std::equal(again.U.view().data, again.U.view().data + again.U.view().size(), approx.U.view().data));
}

TEST_CASE_TEMPLATE("CholeskyQr2 and HouseholderQr give the same subspace and reconstruction", T, float, double) {
  EigenBackend<T> b;
  const index_t out = 70, in = 45, k = 8;
  auto W = hdtest::matrix_with_spectrum(b, out, in, decaying(in, 0.7), 33);
  const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-9;  // per-dtype tolerance
  SUBCASE("one orthonormalisation: QᵀQ = I and the same span (Q_c Q_cᵀ = Q_h Q_hᵀ)") {
    auto Y = hdtest::random_matrix(b, out, 12, 4);
    auto Qh = b.make_matrix(out, 12), Qc = b.make_matrix(out, 12);
    b.copy(ConstMatrixView<T>(Y.view()), Qh.view());
    b.copy(ConstMatrixView<T>(Y.view()), Qc.view());
    HouseholderQr{}.orthonormalize(b, Qh.view(), true);
    CholeskyQr2{}.orthonormalize(b, Qc.view(), true);
    const Ref qh = hdtest::to_ref(Qh.view()), qc = hdtest::to_ref(Qc.view());
    const Ref gram = hdtest::matmul(qc, qc, true, false);
    Ref eye(12, 12);
    for (index_t i = 0; i < 12; ++i) eye(i, i) = 1;
    CHECK(hdtest::count_violations(gram, eye, tol, tol) == 0);
    CHECK(hdtest::count_violations(hdtest::matmul(qc, qc, false, true), hdtest::matmul(qh, qh, false, true), tol, tol) == 0);
  }
  SUBCASE("a rank-deficient input: the Cholesky round declines, the policy falls back to Householder") {
    auto Y = hdtest::random_matrix(b, out, 6, 5);
    for (index_t i = 0; i < out; ++i) Y.view()(i, 5) = 0;  // a zero column: G is singular
    auto Z = b.make_matrix(out, 6);
    b.copy(ConstMatrixView<T>(Y.view()), Z.view());
    CHECK_FALSE(b.orthonormalize_cholesky(Z.view()));
    CHECK(std::equal(Z.view().data, Z.view().data + Z.view().size(), Y.view().data));  // unchanged
    CholeskyQr2{}.orthonormalize(b, Z.view(), true);
    const Ref z = hdtest::to_ref(Z.view());
    Ref eye(6, 6);
    for (index_t i = 0; i < 6; ++i) eye(i, i) = 1;
    CHECK(hdtest::count_violations(hdtest::matmul(z, z, true, false), eye, tol, tol) == 0);
  }
  SUBCASE("the randomized SVD: same singular values and rank-k reconstruction") {
    RandomizedSvd hh{8, 3};
    CholeskyRandomizedSvd ch{8, 3};
    CHECK(ch.name() == "randomized-cholqr");
    auto a = hh.top_k(b, ConstMatrixView<T>(W.view()), k);
    auto c = ch.top_k(b, ConstMatrixView<T>(W.view()), k);
    for (index_t i = 0; i < k; ++i) {
      const double sa = a.S.view()(0, i), sc = c.S.view()(0, i);
      CHECK(std::abs(sc - sa) <= tol * sa);
    }
    auto recon = [&](auto& r) {
      Ref us = hdtest::to_ref(r.U.view());
      for (index_t i = 0; i < us.rows; ++i)
        for (index_t j = 0; j < k; ++j) us(i, j) *= double(r.S.view()(0, j));
      return hdtest::matmul(us, hdtest::to_ref(r.Vt.view()));
    };
    CHECK(hdtest::count_violations(recon(c), recon(a), tol * 10, tol * 10) == 0);
    // intermediate_rounds = 1 (one CholQR round inside the power iterations) still converges.
    CholeskyRandomizedSvd one{8, 3};
    one.orthonormalizer.intermediate_rounds = 1;
    auto o = one.top_k(b, ConstMatrixView<T>(W.view()), k);
    CHECK(hdtest::count_violations(recon(o), recon(a), tol * 10, tol * 10) == 0);
  }
}

TEST_CASE("OrthogonalAdapterInit with RandomizedSvd gives the same adapters as exact, up to tolerance") {
  EigenBackend<double> b;
  auto W = hdtest::matrix_with_spectrum(b, 32, 24, decaying(24, 0.6), 5);
  auto e = OrthogonalAdapterInit<ExactSvd>(2, 3)(b, ConstMatrixView<double>(W.view()));
  auto r = OrthogonalAdapterInit<RandomizedSvd>(2, 3)(b, ConstMatrixView<double>(W.view()));
  for (int g = 0; g < 2; ++g) {
    const Ref pe = hdtest::matmul(hdtest::to_ref(e.B_of(g)), hdtest::to_ref(e.A_of(g)));
    const Ref pr = hdtest::matmul(hdtest::to_ref(r.B_of(g)), hdtest::to_ref(r.A_of(g)));
    CHECK(hdtest::count_violations(pr, pe, 1e-8, 1e-8) == 0);
  }
}

TEST_CASE("K·r larger than min(out, in) is rejected with the layer, its shape, K and r") {
  EigenBackend<float> b;
  auto W = hdtest::random_matrix(b, 64, 16, 1);
  hdtest::check_throws_with<InvalidArgument>(
      [&] { OrthogonalAdapterInit<>(8, 4)(b, ConstMatrixView<float>(W.view()), "layers.3.mlp.down_proj"); },
      {"layers.3.mlp.down_proj", "(64, 16)", "8", "4", "32", "min(out, in) = 16"});
  hdtest::check_throws_with<InvalidArgument>([&] { OrthogonalAdapterInit<>(0, 4); }, {"K >= 1", "K = 0"});
}

TEST_CASE("PissaInit: top-r in every group; W_res + B A = W") {
  EigenBackend<double> b;
  auto W = hdtest::matrix_with_spectrum(b, 20, 14, decaying(14), 3);
  const Ref w = hdtest::to_ref(W.view());
  auto set = PissaInit<>{3, 4}(b, ConstMatrixView<double>(W.view()));
  const Ref top = svd_components(w, 0, 4);
  for (int g = 0; g < 3; ++g)
    CHECK(hdtest::violations<double>(hdtest::matmul(hdtest::to_ref(set.B_of(g)), hdtest::to_ref(set.A_of(g))), top, 10) == 0);
  subtract_adapter(b, W.view(), set, 0);
  CHECK(hdtest::violations<double>(hdtest::to_ref(W.view()), svd_components(w, 4, 14), 10) == 0);
}

TEST_CASE("LoraInit: B = 0, A within the Kaiming-uniform bound, distinct per group unless replicated") {
  EigenBackend<float> b;
  auto set = LoraInit{2, 4, 7, false}(b, 10, 25);
  CHECK(b.sum_squares(ConstMatrixView<float>(set.B.view())) == 0.0);
  const Ref a = hdtest::to_ref(set.A.view());
  CHECK(hdtest::max_abs(a) <= 1.0 / 5.0);
  CHECK(hdtest::max_abs(a) > 0.15);  // 100 draws from U(−0.2, 0.2) reach past 0.15
  CHECK(a(0, 0) != a(4, 0));
  auto same = LoraInit{2, 4, 7, true}(b, 10, 25);
  for (index_t j = 0; j < 25; ++j) CHECK(same.A.view()(0, j) == same.A.view()(4, j));
}

TEST_CASE("init_adapters_distributed: every worker holds bit-identical factors equal to a serial init") {
  EigenBackend<double> serial_b;
  std::vector<EigenBackend<double>::Matrix> weights;
  for (int l = 0; l < 5; ++l) weights.push_back(hdtest::matrix_with_spectrum(serial_b, 16, 12, decaying(12), 40 + l));
  OrthogonalAdapterInit<RandomizedSvd> init(3, 2);
  std::vector<AdapterSet<EigenBackend<double>>> serial;
  for (auto& w : weights) serial.push_back(init(serial_b, ConstMatrixView<double>(w.view())));
  std::mutex mu;
  int checked = 0;
  ThreadGroup::run(3, [&](ThreadGroup& comm) {
    EigenBackend<double> b;
    std::vector<LayerRef<EigenBackend<double>>> layers;
    for (int l = 0; l < 5; ++l) layers.push_back({"layer" + std::to_string(l), ConstMatrixView<double>(weights[l].view())});
    auto sets = init_adapters_distributed(b, comm, init, layers, 3, 2);
    std::lock_guard lock(mu);
    for (int l = 0; l < 5; ++l) {
      CHECK(std::equal(sets[l].A.data(), sets[l].A.data() + sets[l].A.view().size(), serial[l].A.data()));
      CHECK(std::equal(sets[l].B.data(), sets[l].B.data() + sets[l].B.view().size(), serial[l].B.data()));
    }
    ++checked;
  });
  CHECK(checked == 3);
}
