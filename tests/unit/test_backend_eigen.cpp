// EigenBackend ops against plain-loop double references and invariants.
#include "test_util.hpp"

using namespace hdpissa;
using hdtest::Ref;

TEST_CASE_TEMPLATE("gemm: every transpose combination, strided views, alpha/beta", T, float, double) {
  EigenBackend<T> b;
  const index_t m = 7, k = 5, n = 6;
  for (Op ta : {Op::N, Op::T})
    for (Op tb : {Op::N, Op::T}) {
      auto A = hdtest::random_matrix(b, ta == Op::N ? m : k, ta == Op::N ? k : m, 1);
      auto Bm = hdtest::random_matrix(b, tb == Op::N ? k : n, tb == Op::N ? n : k, 2);
      // C is a strided block inside a larger matrix: the padding must stay untouched.
      auto big = hdtest::random_matrix(b, m + 2, n + 3, 3);
      auto C = big.view().block(1, 2, m, n);
      const Ref c0 = hdtest::to_ref(C);
      const Ref pad0 = hdtest::to_ref(big.view());
      b.gemm(ta, tb, T(0.5), ConstMatrixView<T>(A.view()), ConstMatrixView<T>(Bm.view()), T(-2), C);
      const Ref ab = hdtest::matmul(hdtest::to_ref(A.view()), hdtest::to_ref(Bm.view()), ta == Op::T, tb == Op::T);
      Ref expect(m, n);  // 0.5·op(A)op(B) − 2·C0
      for (std::size_t i = 0; i < expect.v.size(); ++i) expect.v[i] = 0.5 * ab.v[i] - 2 * c0.v[i];
      CHECK(hdtest::violations<T>(hdtest::to_ref(C), expect) == 0);
      const Ref pad1 = hdtest::to_ref(big.view());
      long changed_outside = 0;
      for (index_t i = 0; i < m + 2; ++i)
        for (index_t j = 0; j < n + 3; ++j) {
          const bool inside = i >= 1 && i < 1 + m && j >= 2 && j < 2 + n;
          if (!inside && pad1(i, j) != pad0(i, j)) ++changed_outside;
        }
      CHECK(changed_outside == 0);
    }
}

TEST_CASE("gemm: beta = 0 ignores NaN in C; shape mismatch is an error") {
  EigenBackend<float> b;
  auto A = hdtest::random_matrix(b, 3, 4, 1), Bm = hdtest::random_matrix(b, 4, 2, 2);
  auto C = b.make_matrix(3, 2);
  b.fill(C.view(), std::numeric_limits<float>::quiet_NaN());
  b.gemm(Op::N, Op::N, 1.f, ConstMatrixView<float>(A.view()), ConstMatrixView<float>(Bm.view()), 0.f, C.view());
  CHECK(b.all_finite(ConstMatrixView<float>(C.view())));
  auto bad = b.make_matrix(3, 3);
  hdtest::check_throws_with<InvalidArgument>(
      [&] { b.gemm(Op::N, Op::N, 1.f, ConstMatrixView<float>(A.view()), ConstMatrixView<float>(Bm.view()), 0.f, bad.view()); },
      {"gemm", "(3, 3)", "(3, 2)"});
}

TEST_CASE_TEMPLATE("thin_svd: reconstruction, orthonormality, descending values", T, float, double) {
  EigenBackend<T> b;
  for (auto [m, n] : {std::pair<index_t, index_t>{9, 6}, {6, 9}}) {
    auto A = hdtest::random_matrix(b, m, n, 7);
    const index_t k = std::min(m, n);
    auto U = b.make_matrix(m, k), S = b.make_matrix(1, k), Vt = b.make_matrix(k, n);
    b.thin_svd(ConstMatrixView<T>(A.view()), U.view(), S.view(), Vt.view());
    Ref us = hdtest::to_ref(U.view());
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < k; ++j) us(i, j) *= double(S.view()(0, j));
    CHECK(hdtest::violations<T>(hdtest::matmul(us, hdtest::to_ref(Vt.view())), hdtest::to_ref(A.view()), 10) == 0);
    Ref eye(k, k);
    for (index_t i = 0; i < k; ++i) eye(i, i) = 1;
    CHECK(hdtest::violations<T>(hdtest::matmul(hdtest::to_ref(U.view()), hdtest::to_ref(U.view()), true, false), eye, 10) == 0);
    CHECK(hdtest::violations<T>(hdtest::matmul(hdtest::to_ref(Vt.view()), hdtest::to_ref(Vt.view()), false, true), eye, 10) == 0);
    for (index_t i = 1; i < k; ++i) CHECK(S.view()(0, i - 1) >= S.view()(0, i));
  }
}

TEST_CASE_TEMPLATE("orthonormalize: QᵀQ = I and range preserved", T, float, double) {
  EigenBackend<T> b;
  auto Y = hdtest::random_matrix(b, 12, 4, 9);
  const Ref y0 = hdtest::to_ref(Y.view());
  b.orthonormalize(Y.view());
  const Ref q = hdtest::to_ref(Y.view());
  Ref eye(4, 4);
  for (int i = 0; i < 4; ++i) eye(i, i) = 1;
  CHECK(hdtest::violations<T>(hdtest::matmul(q, q, true, false), eye, 10) == 0);
  // Y0 = Q (Qᵀ Y0): Y0 lies in range(Q).
  CHECK(hdtest::violations<T>(hdtest::matmul(q, hdtest::matmul(q, y0, true, false)), y0, 10) == 0);
}

TEST_CASE("elementwise ops: exact values") {
  EigenBackend<double> b;
  auto X = b.make_matrix(2, 3);
  const double init[6] = {1, 4, 9, 16, 25, 36};
  b.upload(init, X.view());
  b.sqrt(X.view());
  const double d_rows[2] = {2, -1}, d_cols[3] = {1, 0.5, 2};
  auto dr = b.make_matrix(1, 2), dc = b.make_matrix(1, 3);
  b.upload(d_rows, dr.view());
  b.upload(d_cols, dc.view());
  b.scale_rows(X.view(), ConstMatrixView<double>(dr.view()));
  b.scale_cols(X.view(), ConstMatrixView<double>(dc.view()));
  double out[6];
  b.download(ConstMatrixView<double>(X.view()), out);
  const double expect[6] = {2, 2, 12, -4, -2.5, -12};
  for (int i = 0; i < 6; ++i) CHECK(out[i] == expect[i]);
  CHECK(b.sum_squares(ConstMatrixView<double>(X.view())) == 4 + 4 + 144 + 16 + 6.25 + 144);
  out[0] = std::numeric_limits<double>::infinity();
  b.upload(out, X.view());
  CHECK_FALSE(b.all_finite(ConstMatrixView<double>(X.view())));
}

TEST_CASE("checksum is order-sensitive") {
  EigenBackend<float> b;
  auto X = b.make_matrix(1, 2);
  const float a[2] = {1, 2}, c[2] = {2, 1};
  b.upload(a, X.view());
  const double s1 = b.checksum(ConstMatrixView<float>(X.view()));
  b.upload(c, X.view());
  CHECK(s1 != b.checksum(ConstMatrixView<float>(X.view())));
}
