// Every CudaBackend op against EigenBackend (the reference) by normalised MSE, on fresh random
// inputs, strided views (pad > 0) and NaN-poisoned outputs, for fp32 and fp64 storage.
#include "cuda_test_util.hpp"

using namespace hdpissa;
using namespace hdpissa::test;

TEST_CASE_TEMPLATE("CudaBackend satisfies TensorBackend in device memory", T, float, double, __nv_bfloat16) {
  static_assert(TensorBackend<CudaBackend<T>>);
  static_assert(std::is_same_v<typename CudaBackend<T>::memory_space, device_memory>);
  static_assert(!same_memory_space_v<CudaBackend<T>, SingleProcess>);
  static_assert(same_memory_space_v<CudaBackend<T>, CudaSingleProcess>);
  CHECK(true);
}

TEST_CASE_TEMPLATE("gemm parity: every transpose, strided operands, beta 0 / 1 / 0.5", T, float, double) {
  EigenBackend<T> cpu;
  CudaBackend<T> gpu;
  const index_t m = 37, n = 29, k = 53;
  std::uint64_t seed = 100;
  for (Op ta : {Op::N, Op::T})
    for (Op tb : {Op::N, Op::T})
      for (double beta : {0.0, 1.0, 0.5}) {
        CAPTURE(int(ta));
        CAPTURE(int(tb));
        CAPTURE(beta);
        auto A = ta == Op::N ? twin<T>(cpu, gpu, m, k, seed++, 3) : twin<T>(cpu, gpu, k, m, seed++, 3);
        auto B = tb == Op::N ? twin<T>(cpu, gpu, k, n, seed++, 5) : twin<T>(cpu, gpu, n, k, seed++, 5);
        auto C = twin<T>(cpu, gpu, m, n, seed++, 7);
        if (beta == 0) poison(cpu, gpu, C);
        cpu.gemm(ta, tb, T(0.75), ConstMatrixView<T>(A.cv()), ConstMatrixView<T>(B.cv()), T(beta), C.cv());
        gpu.gemm(ta, tb, T(0.75), ConstMatrixView<T>(A.gv()), ConstMatrixView<T>(B.gv()), T(beta), C.gv());
        check_twin(gpu, C, "gemm");
      }
}

TEST_CASE("gemm: TF32 is off unless asked for, and the option works") {
  CudaBackend<float> gpu;
  EigenBackend<float> cpu;
  const index_t n = 512;
  auto A = twin<float>(cpu, gpu, n, n, 1), B = twin<float>(cpu, gpu, n, n, 2), C = twin<float>(cpu, gpu, n, n, 3);
  cpu.gemm(Op::N, Op::N, 1.f, ConstMatrixView<float>(A.cv()), ConstMatrixView<float>(B.cv()), 0.f, C.cv());
  CHECK_FALSE(gpu.tf32());
  gpu.gemm(Op::N, Op::N, 1.f, ConstMatrixView<float>(A.gv()), ConstMatrixView<float>(B.gv()), 0.f, C.gv());
  const auto exact = dense(gpu, ConstMatrixView<float>(C.gv()));
  const auto r = dense(ConstMatrixView<float>(C.cv()));
  CHECK(nmse(exact, r) <= 1e-12);
  gpu.set_tf32(true);
  gpu.gemm(Op::N, Op::N, 1.f, ConstMatrixView<float>(A.gv()), ConstMatrixView<float>(B.gv()), 0.f, C.gv());
  const auto tf = dense(gpu, ConstMatrixView<float>(C.gv()));
  const double e = nmse(tf, r);
  INFO("TF32 nmse = ", e);
  CHECK(e > 1e-10);  // TF32 rounding is visible ...
  CHECK(e < 1e-4);   // ... and bounded
}

TEST_CASE_TEMPLATE("elementwise parity: copy fill scale axpy scale_rows scale_cols sqrt", T, float, double) {
  EigenBackend<T> cpu;
  CudaBackend<T> gpu;
  const index_t m = 33, n = 70;
  SUBCASE("copy (strided to strided)") {
    auto X = twin<T>(cpu, gpu, m, n, 1, 4), Y = twin<T>(cpu, gpu, m, n, 2, 9);
    cpu.fill(Y.c.view(), std::numeric_limits<T>::quiet_NaN());  // the view and its padding
    gpu.fill(Y.g.view(), std::numeric_limits<T>::quiet_NaN());
    cpu.copy(ConstMatrixView<T>(X.cv()), Y.cv());
    gpu.copy(ConstMatrixView<T>(X.gv()), Y.gv());
    check_twin(gpu, Y, "copy");
    // The padding beyond the view is untouched.
    auto full = dense(gpu, ConstMatrixView<T>(Y.g.view()));
    CHECK(std::isnan(full[std::size_t(n)]));
  }
  SUBCASE("fill") {
    auto X = twin<T>(cpu, gpu, m, n, 3, 2);
    for (double v : {0.0, -2.5}) {
      cpu.fill(X.cv(), T(v));
      gpu.fill(X.gv(), T(v));
      check_twin(gpu, X, "fill");
    }
  }
  SUBCASE("scale") {
    auto X = twin<T>(cpu, gpu, m, n, 4, 2);
    cpu.scale(X.cv(), T(-1.7));
    gpu.scale(X.gv(), T(-1.7));
    check_twin(gpu, X, "scale");
  }
  SUBCASE("axpy") {
    auto X = twin<T>(cpu, gpu, m, n, 5, 3), Y = twin<T>(cpu, gpu, m, n, 6, 1);
    cpu.axpy(T(0.3), ConstMatrixView<T>(X.cv()), Y.cv());
    gpu.axpy(T(0.3), ConstMatrixView<T>(X.gv()), Y.gv());
    check_twin(gpu, Y, "axpy");
  }
  SUBCASE("scale_rows / scale_cols") {
    auto X = twin<T>(cpu, gpu, m, n, 7, 3), dr = twin<T>(cpu, gpu, 1, m, 8), dc = twin<T>(cpu, gpu, 1, n, 9);
    cpu.scale_rows(X.cv(), ConstMatrixView<T>(dr.cv()));
    gpu.scale_rows(X.gv(), ConstMatrixView<T>(dr.gv()));
    check_twin(gpu, X, "scale_rows");
    cpu.scale_cols(X.cv(), ConstMatrixView<T>(dc.cv()));
    gpu.scale_cols(X.gv(), ConstMatrixView<T>(dc.gv()));
    check_twin(gpu, X, "scale_cols");
  }
  SUBCASE("sqrt") {
    auto X = twin<T>(cpu, gpu, m, n, 10, 2);
    auto h = random_host<T>(m, n + 2, 10);
    for (auto& x : h) x = std::abs(x);
    cpu.upload(h.data(), X.c.view());
    gpu.upload(h.data(), X.g.view());
    cpu.sqrt(X.cv());
    gpu.sqrt(X.gv());
    check_twin(gpu, X, "sqrt");
  }
  SUBCASE("upload / download of a strided view round-trips exactly") {
    auto X = twin<T>(cpu, gpu, m, n, 11, 5);
    auto h = random_host<T>(m, n, 12);
    gpu.upload(h.data(), X.gv());
    std::vector<T> back(h.size());
    gpu.download(ConstMatrixView<T>(X.gv()), back.data());
    CHECK(back == h);
  }
}

TEST_CASE_TEMPLATE("reductions: all_finite, sum_squares, checksum", T, float, double) {
  EigenBackend<T> cpu;
  CudaBackend<T> gpu;
  auto X = twin<T>(cpu, gpu, 301, 257, 20, 3);
  CHECK(gpu.all_finite(ConstMatrixView<T>(X.gv())));
  const double ss_c = cpu.sum_squares(ConstMatrixView<T>(X.cv())), ss_g = gpu.sum_squares(ConstMatrixView<T>(X.gv()));
  CHECK(std::abs(ss_g - ss_c) <= 1e-12 * std::abs(ss_c));
  const double cs_c = cpu.checksum(ConstMatrixView<T>(X.cv())), cs_g = gpu.checksum(ConstMatrixView<T>(X.gv()));
  CHECK(std::abs(cs_g - cs_c) <= 1e-12 * std::abs(cs_c));
  // Deterministic: the same input gives the bit-identical checksum.
  CHECK(gpu.checksum(ConstMatrixView<T>(X.gv())) == cs_g);
  // Non-finite values inside the view are found, those in the padding are not.
  const T nan = std::numeric_limits<T>::quiet_NaN(), inf = std::numeric_limits<T>::infinity();
  auto full = X.g.view();
  gpu.fill(full.block(5, 257, 1, 1), nan);
  CHECK(gpu.all_finite(ConstMatrixView<T>(X.gv())));
  gpu.fill(full.block(300, 256, 1, 1), inf);
  CHECK_FALSE(gpu.all_finite(ConstMatrixView<T>(X.gv())));
  CHECK(gpu.sum_squares(ConstMatrixView<T>(X.gv().block(0, 0, 0, 0))) == 0.0);
}

TEST_CASE_TEMPLATE("adam_delta parity over several steps (Adam and AdamW, strided param)", T, float, double) {
  EigenBackend<T> cpu;
  CudaBackend<T> gpu;
  const index_t m = 19, n = 45;
  for (double wd : {0.0, 0.1}) {
    CAPTURE(wd);
    auto P = twin<T>(cpu, gpu, m, n, 30, 6), M = twin<T>(cpu, gpu, m, n, 31), V = twin<T>(cpu, gpu, m, n, 32);
    auto D = twin<T>(cpu, gpu, m, n, 33);
    cpu.fill(M.cv(), T(0)); gpu.fill(M.gv(), T(0));
    cpu.fill(V.cv(), T(0)); gpu.fill(V.gv(), T(0));
    for (int step = 1; step <= 3; ++step) {
      auto G = twin<T>(cpu, gpu, m, n, 40 + step, 2, 1e-2);
      AdamArgs a;
      a.lr = 1e-3;
      a.weight_decay = wd;
      a.bias_correction1 = 1 - std::pow(a.beta1, step);
      a.bias_correction2 = 1 - std::pow(a.beta2, step);
      poison(cpu, gpu, D);
      adam_delta(cpu, a, ConstMatrixView<T>(P.cv()), ConstMatrixView<T>(G.cv()), M.cv(), V.cv(), D.cv());
      adam_delta(gpu, a, ConstMatrixView<T>(P.gv()), ConstMatrixView<T>(G.gv()), M.gv(), V.gv(), D.gv());
    }
    check_twin(gpu, M, "adam m");
    check_twin(gpu, V, "adam v");
    check_twin(gpu, D, "adam delta");
  }
}

TEST_CASE_TEMPLATE("sgd_delta parity (plain, momentum, weight decay)", T, float, double) {
  EigenBackend<T> cpu;
  CudaBackend<T> gpu;
  const index_t m = 23, n = 31;
  for (double mu : {0.0, 0.9}) {
    CAPTURE(mu);
    auto P = twin<T>(cpu, gpu, m, n, 50, 2), Bf = twin<T>(cpu, gpu, m, n, 51), D = twin<T>(cpu, gpu, m, n, 52);
    cpu.fill(Bf.cv(), T(0)); gpu.fill(Bf.gv(), T(0));
    for (int step = 0; step < 3; ++step) {
      auto G = twin<T>(cpu, gpu, m, n, 60 + step);
      SgdArgs a{0.05, mu, 0.01};
      poison(cpu, gpu, D);
      sgd_delta(cpu, a, ConstMatrixView<T>(P.cv()), ConstMatrixView<T>(G.cv()), Bf.cv(), D.cv());
      sgd_delta(gpu, a, ConstMatrixView<T>(P.gv()), ConstMatrixView<T>(G.gv()), Bf.gv(), D.gv());
    }
    check_twin(gpu, D, "sgd delta");
    if (mu != 0) check_twin(gpu, Bf, "sgd momentum");
  }
}

// SVD outputs are compared through invariants (reconstruction, orthonormality) and the singular
// values, never vector by vector (signs are arbitrary).
template <class T>
void check_svd(index_t m, index_t n, std::uint64_t seed) {
  CAPTURE(m);
  CAPTURE(n);
  EigenBackend<T> cpu;
  CudaBackend<T> gpu;
  const index_t k = std::min(m, n);
  auto A = twin<T>(cpu, gpu, m, n, seed, 3);
  auto U = twin<T>(cpu, gpu, m, k, seed + 1, 2), S = twin<T>(cpu, gpu, 1, k, seed + 2),
       Vt = twin<T>(cpu, gpu, k, n, seed + 3, 1);
  poison(cpu, gpu, U); poison(cpu, gpu, S); poison(cpu, gpu, Vt);
  cpu.thin_svd(ConstMatrixView<T>(A.cv()), U.cv(), S.cv(), Vt.cv());
  gpu.thin_svd(ConstMatrixView<T>(A.gv()), U.gv(), S.gv(), Vt.gv());
  check_twin(gpu, S, "singular values", std::is_same_v<T, float> ? 1e-10 : 1e-22);
  // Reconstruction U diag(S) Vt = A, on the GPU.
  auto US = gpu.make_matrix(m, k), R = gpu.make_matrix(m, n);
  gpu.copy(ConstMatrixView<T>(U.gv()), US.view());
  gpu.scale_cols(US.view(), ConstMatrixView<T>(S.gv()));
  gpu.gemm(Op::N, Op::N, T(1), ConstMatrixView<T>(US.view()), ConstMatrixView<T>(Vt.gv()), T(0), R.view());
  const auto rec = dense(gpu, ConstMatrixView<T>(R.view()));
  const auto ref = dense(ConstMatrixView<T>(A.cv()));
  CHECK(nmse(rec, ref) <= (std::is_same_v<T, float> ? 1e-10 : 1e-22));
  // Orthonormal columns of U and rows of Vt.
  auto I1 = gpu.make_matrix(k, k), I2 = gpu.make_matrix(k, k);
  gpu.gemm(Op::T, Op::N, T(1), ConstMatrixView<T>(U.gv()), ConstMatrixView<T>(U.gv()), T(0), I1.view());
  gpu.gemm(Op::N, Op::T, T(1), ConstMatrixView<T>(Vt.gv()), ConstMatrixView<T>(Vt.gv()), T(0), I2.view());
  for (auto* I : {&I1, &I2}) {
    const auto h = dense(gpu, ConstMatrixView<T>(I->view()));
    double worst = 0;
    for (index_t i = 0; i < k; ++i)
      for (index_t j = 0; j < k; ++j) worst = std::max(worst, std::abs(h[std::size_t(i * k + j)] - (i == j ? 1.0 : 0.0)));
    CHECK(worst <= (std::is_same_v<T, float> ? 1e-4 : 1e-12));
  }
}

TEST_CASE_TEMPLATE("thin_svd: square, tall, wide, very tall and very wide (QR-preconditioned)", T, float, double) {
  check_svd<T>(40, 40, 70);
  check_svd<T>(60, 41, 71);
  check_svd<T>(41, 60, 72);
  check_svd<T>(300, 24, 73);
  check_svd<T>(24, 300, 74);
}

TEST_CASE_TEMPLATE("orthonormalize (Householder) and orthonormalize_cholesky", T, float, double) {
  EigenBackend<T> cpu;
  CudaBackend<T> gpu;
  const index_t m = 200, n = 24;
  for (int variant = 0; variant < 2; ++variant) {
    CAPTURE(variant);
    auto Y = twin<T>(cpu, gpu, m, n, 80 + variant, 4);
    const auto y0 = dense(ConstMatrixView<T>(Y.cv()));
    if (variant == 0) gpu.orthonormalize(Y.gv());
    else {
      REQUIRE(gpu.orthonormalize_cholesky(Y.gv()));
      REQUIRE(gpu.orthonormalize_cholesky(Y.gv()));
    }
    cpu.orthonormalize(Y.cv());
    // QᵀQ = I and Q Qᵀ Y0 = Y0 (same span); Householder Q also equals Eigen's up to column signs.
    const auto q = dense(gpu, ConstMatrixView<T>(Y.gv()));
    const auto qc = dense(ConstMatrixView<T>(Y.cv()));
    double worst_orth = 0, worst_sign = 0;
    for (index_t a = 0; a < n; ++a) {
      double dot_c = 0;
      for (index_t b = 0; b < n; ++b) {
        double d = 0;
        for (index_t i = 0; i < m; ++i) d += q[std::size_t(i * n + a)] * q[std::size_t(i * n + b)];
        worst_orth = std::max(worst_orth, std::abs(d - (a == b ? 1 : 0)));
      }
      for (index_t i = 0; i < m; ++i) dot_c += q[std::size_t(i * n + a)] * qc[std::size_t(i * n + a)];
      worst_sign = std::max(worst_sign, 1 - std::abs(dot_c));
    }
    CHECK(worst_orth <= (std::is_same_v<T, float> ? 1e-5 : 1e-13));
    CHECK(worst_sign <= (std::is_same_v<T, float> ? 1e-4 : 1e-10));
  }
  // A rank-deficient matrix: Cholesky reports failure and leaves Y alone.
  auto Z = gpu.make_matrix(50, 4);
  gpu.fill(Z.view(), T(1));
  CHECK_FALSE(gpu.orthonormalize_cholesky(Z.view()));
  CHECK(gpu.sum_squares(ConstMatrixView<T>(Z.view())) == doctest::Approx(200.0));
}

TEST_CASE_TEMPLATE("fill_normal computes fill_gaussian's counter_normal stream on the device", T, float, double) {
  CudaBackend<T> gpu;
  auto X = gpu.make_matrix(37, 53);
  fill_gaussian(gpu, X.view(), 1234);  // uses the hook
  const auto h = dense(gpu, ConstMatrixView<T>(X.view()));
  std::vector<double> ref(h.size());
  for (std::size_t i = 0; i < ref.size(); ++i) ref[i] = double(T(counter_normal(1234, i)));
  CHECK(nmse(h, ref) <= nmse_tol<T>());
}

TEST_CASE("bf16 storage: gemm, elementwise and Adam against fp32 on bf16-rounded inputs") {
  using bf = __nv_bfloat16;
  EigenBackend<float> cpu;
  CudaBackend<bf> gpu;
  const index_t m = 64, n = 48, k = 96;
  auto to_bf = [](const std::vector<float>& v) {
    std::vector<bf> o(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) o[i] = __float2bfloat16(v[i]);
    return o;
  };
  auto round = [&](std::vector<float> v) {
    for (auto& x : v) x = __bfloat162float(__float2bfloat16(x));
    return v;
  };
  auto ha = round(random_host<float>(m, k, 1)), hb = round(random_host<float>(k, n, 2));
  auto A = gpu.make_matrix(m, k), B = gpu.make_matrix(k, n), C = gpu.make_matrix(m, n);
  auto ba = to_bf(ha), bb = to_bf(hb);
  gpu.upload(ba.data(), A.view());
  gpu.upload(bb.data(), B.view());
  gpu.gemm(Op::N, Op::N, 1.f, ConstMatrixView<bf>(A.view()), ConstMatrixView<bf>(B.view()), 0.f, C.view());
  auto cA = cpu.make_matrix(m, k), cB = cpu.make_matrix(k, n), cC = cpu.make_matrix(m, n);
  cpu.upload(ha.data(), cA.view());
  cpu.upload(hb.data(), cB.view());
  cpu.gemm(Op::N, Op::N, 1.f, ConstMatrixView<float>(cA.view()), ConstMatrixView<float>(cB.view()), 0.f, cC.view());
  CHECK(nmse(dense(gpu, ConstMatrixView<bf>(C.view())), dense(ConstMatrixView<float>(cC.view()))) <= nmse_tol<bf>());
  gpu.scale(C.view(), 0.5f);
  cpu.scale(cC.view(), 0.5f);
  CHECK(nmse(dense(gpu, ConstMatrixView<bf>(C.view())), dense(ConstMatrixView<float>(cC.view()))) <= nmse_tol<bf>());
  // Adam: one step from zero moments.
  auto G = gpu.make_matrix(m, k), M = gpu.make_matrix(m, k), V = gpu.make_matrix(m, k), D = gpu.make_matrix(m, k);
  auto cG = cpu.make_matrix(m, k), cM = cpu.make_matrix(m, k), cV = cpu.make_matrix(m, k), cD = cpu.make_matrix(m, k);
  gpu.upload(ba.data(), G.view());
  cpu.upload(ha.data(), cG.view());
  AdamArgs a;
  a.lr = 1e-2;
  a.bias_correction1 = 0.1;
  a.bias_correction2 = 0.001;
  adam_delta(gpu, a, ConstMatrixView<bf>(G.view()), ConstMatrixView<bf>(G.view()), M.view(), V.view(), D.view());
  adam_delta(cpu, a, ConstMatrixView<float>(cG.view()), ConstMatrixView<float>(cG.view()), cM.view(), cV.view(), cD.view());
  CHECK(nmse(dense(gpu, ConstMatrixView<bf>(D.view())), dense(ConstMatrixView<float>(cD.view()))) <= nmse_tol<bf>());
  // fp32 master → bf16 compute copy.
  auto W32 = CudaBackend<float>{}.make_matrix(1, 1);  // different backend instance: allocation only
  (void)W32;
  CudaBackend<float> g32;
  auto M32 = g32.make_matrix(m, k);
  g32.upload(ha.data(), M32.view());
  g32.convert(ConstMatrixView<float>(M32.view()), A.view());
  g32.synchronize();
  CHECK(nmse(dense(gpu, ConstMatrixView<bf>(A.view())), std::vector<double>(ha.begin(), ha.end())) == 0.0);
}

TEST_CASE("checking macros throw RuntimeCallError naming the call, file and line") {
  try {
    HDPISSA_CUDA_CHECK(cudaMemcpy(nullptr, reinterpret_cast<void*>(1), 16, cudaMemcpyDeviceToDevice));
    FAIL("expected a throw");
  } catch (const RuntimeCallError& e) {
    const std::string what = e.what();
    INFO(what);
    CHECK(what.find("cudaMemcpy") != std::string::npos);
    CHECK(what.find("test_backend_parity.cu") != std::string::npos);
  }
  (void)cudaGetLastError();
  CudaBackend<float> gpu;
  try {
    HDPISSA_CUBLAS_CHECK(cublasSgemm(gpu.cublas(), CUBLAS_OP_N, CUBLAS_OP_N, -1, 1, 1, nullptr, nullptr, 1, nullptr,
                                     1, nullptr, nullptr, 1));
    FAIL("expected a throw");
  } catch (const RuntimeCallError& e) {
    CHECK(std::string(e.what()).find("cublasSgemm") != std::string::npos);
  }
  try {
    // cuSOLVER dereferences bad handles instead of reporting them, so feed the macro a failing status.
    auto cusolver_call_that_fails = [] { return CUSOLVER_STATUS_INVALID_VALUE; };
    HDPISSA_CUSOLVER_CHECK(cusolver_call_that_fails());
    FAIL("expected a throw");
  } catch (const RuntimeCallError& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find("cusolver_call_that_fails()") != std::string::npos);
    CHECK(std::string(e.what()).find("CUSOLVER_STATUS_INVALID_VALUE") != std::string::npos);
  }
  // Shape errors are InvalidArgument with the shapes in the message.
  auto A = gpu.make_matrix(3, 4), C = gpu.make_matrix(3, 3);
  CHECK_THROWS_AS(gpu.gemm(Op::N, Op::N, 1.f, ConstMatrixView<float>(A.view()), ConstMatrixView<float>(A.view()), 0.f,
                           C.view()),
                  InvalidArgument);
}

namespace {
// Host bf16 <-> float helpers of the fp32-result tests below.
std::vector<__nv_bfloat16> to_bf16(const std::vector<float>& v) {
  std::vector<__nv_bfloat16> o(v.size());
  for (std::size_t i = 0; i < v.size(); ++i) o[i] = __float2bfloat16(v[i]);
  return o;
}
std::vector<float> bf16_rounded(std::vector<float> v) {
  for (auto& x : v) x = __bfloat162float(__float2bfloat16(x));
  return v;
}
// C (m, n) = Σ_k op(A)(i, k) op(B)(k, j) in double, A / B row-major (lda / ldb = their cols).
std::vector<double> ref_gemm(Op ta, Op tb, const std::vector<float>& A, index_t acols, const std::vector<float>& B,
                             index_t bcols, index_t m, index_t n, index_t k) {
  std::vector<double> C(std::size_t(m * n), 0.0);
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) {
      double s = 0;
      for (index_t p = 0; p < k; ++p) {
        const double a = ta == Op::N ? A[std::size_t(i * acols + p)] : A[std::size_t(p * acols + i)];
        const double b = tb == Op::N ? B[std::size_t(p * bcols + j)] : B[std::size_t(j * bcols + p)];
        s += a * b;
      }
      C[std::size_t(i * n + j)] = s;
    }
  return C;
}
}  // namespace

TEST_CASE("bf16 storage: gemm_f32 keeps the result in fp32 (every transpose, beta 0 / 1, strided C)") {
  using bf = __nv_bfloat16;
  CudaBackend<bf> gpu;
  CudaBackend<float> g32;
  const index_t m = 40, n = 56, k = 300, pad = 3;
  for (Op ta : {Op::N, Op::T})
    for (Op tb : {Op::N, Op::T})
      for (float beta : {0.0f, 1.0f}) {
        CAPTURE(int(ta));
        CAPTURE(int(tb));
        CAPTURE(beta);
        const index_t ar = ta == Op::N ? m : k, ac = ta == Op::N ? k : m;
        const index_t br = tb == Op::N ? k : n, bc = tb == Op::N ? n : k;
        const auto ha = bf16_rounded(random_host<float>(ar, ac, 11)), hb = bf16_rounded(random_host<float>(br, bc, 12));
        // C0: fp32 values that bf16 cannot hold (a bf16 round trip anywhere would change them)
        auto hc = random_host<float>(m, n + pad, 13);
        for (auto& x : hc) x = x * 3.0f + 1e-3f;
        auto A = gpu.make_matrix(ar, ac), B = gpu.make_matrix(br, bc);
        auto C = g32.make_matrix(m, n + pad);
        const auto ba = to_bf16(ha), bb = to_bf16(hb);
        gpu.upload(ba.data(), A.view());
        gpu.upload(bb.data(), B.view());
        g32.upload(hc.data(), C.view());
        const MatrixView<float> Cv{C.data(), m, n, n + pad};  // strided: the pad columns must stay
        const float alpha = 0.75f;
        gpu.gemm_f32(ta, tb, alpha, ConstMatrixView<bf>(A.view()), ConstMatrixView<bf>(B.view()), beta, Cv);
        gpu.synchronize();
        std::vector<float> out(std::size_t(m * (n + pad)));
        g32.download(ConstMatrixView<float>(C.view()), out.data());
        const auto prod = ref_gemm(ta, tb, ha, ac, hb, bc, m, n, k);
        std::vector<double> got, want;
        bool pad_kept = true;
        for (index_t i = 0; i < m; ++i) {
          for (index_t j = 0; j < n; ++j) {
            got.push_back(out[std::size_t(i * (n + pad) + j)]);
            want.push_back(alpha * prod[std::size_t(i * n + j)] + double(beta) * hc[std::size_t(i * (n + pad) + j)]);
          }
          for (index_t j = n; j < n + pad; ++j)
            pad_kept = pad_kept && out[std::size_t(i * (n + pad) + j)] == hc[std::size_t(i * (n + pad) + j)];
        }
        CHECK(pad_kept);
        // fp32 accumulation over k = 300: ≈ 1e-13; one bf16 rounding of the result would give ≈ 1e-6
        CHECK(nmse(got, want) <= nmse_tol<float>());
      }
}

TEST_CASE("MutedLinear and AdapterLinear on bf16: fp32 gradients against float64, closer than the bf16 ones") {
  using bf = __nv_bfloat16;
  using CVb = ConstMatrixView<bf>;
  CudaBackend<bf> gpu;
  CudaBackend<float> g32;
  const index_t N = 200, in = 96, out = 80, r = 16;
  const double alpha = 0.5;
  const auto hW = bf16_rounded(random_host<float>(out, in, 21)), hA = bf16_rounded(random_host<float>(r, in, 22));
  const auto hB = bf16_rounded(random_host<float>(out, r, 23)), hX = bf16_rounded(random_host<float>(N, in, 24));
  const auto hdY = bf16_rounded(random_host<float>(N, out, 25));
  const auto gA0 = random_host<float>(r, in, 26), gB0 = random_host<float>(out, r, 27);  // sums so far (fp32)
  auto up = [&](const std::vector<float>& h, index_t rows, index_t cols) {
    auto m = gpu.make_matrix(rows, cols);
    const auto b = to_bf16(h);
    gpu.upload(b.data(), m.view());
    return m;
  };
  auto W = up(hW, out, in), A = up(hA, r, in), B = up(hB, out, r), X = up(hX, N, in), dY = up(hdY, N, out);
  // float64 reference of the gradient GEMMs. Their thin operands dY B and X Aᵀ are bf16 in the layers:
  // taken from the same cuBLAS calls here (a float64 product rounded to bf16 may land on the other
  // bf16 neighbour of a value near a rounding boundary, ≈ 1.5e-8 of normalised MSE per such element)
  auto thin = [&](Op tb, const auto& lhs, const auto& rhs, index_t rows) {
    auto m = gpu.make_matrix(rows, r);
    gpu.gemm(Op::N, tb, 1.0f, CVb(lhs.view()), CVb(rhs.view()), 0.0f, m.view());
    gpu.synchronize();
    const auto d = dense(gpu, CVb(m.view()));
    return std::vector<float>(d.begin(), d.end());
  };
  const auto tf = thin(Op::N, dY, B, N);  // (N, r) = dY B
  const auto uf = thin(Op::T, X, A, N);   // (N, r) = X Aᵀ
  const auto pA = ref_gemm(Op::T, Op::N, tf, r, hX, in, r, in, N), pB = ref_gemm(Op::T, Op::N, hdY, out, uf, r, out, r, N);
  std::vector<double> wantA(pA.size()), wantB(pB.size());
  for (std::size_t i = 0; i < pA.size(); ++i) wantA[i] = gA0[i] + alpha * pA[i];
  for (std::size_t i = 0; i < pB.size(); ++i) wantB[i] = gB0[i] + alpha * pB[i];
  auto run = [&](auto& layer, bool fp32_grads, bool with_xa = false) {
    auto gA = g32.make_matrix(r, in), gB = g32.make_matrix(out, r);
    g32.upload(gA0.data(), gA.view());
    g32.upload(gB0.data(), gB.view());
    if (fp32_grads) {
      if constexpr (std::is_same_v<std::decay_t<decltype(layer)>, AdapterLinear<CudaBackend<bf>>>) {
        if (with_xa) {  // the trainer's way: X Aᵀ kept from the forward of the same X
          auto Y = gpu.make_matrix(N, out), xa = gpu.make_matrix(N, r);
          layer.forward(CVb(W.view()), CVb(A.view()), CVb(B.view()), CVb(X.view()), Y.view(), {}, xa.view());
          layer.backward(CVb(W.view()), CVb(A.view()), CVb(B.view()), CVb(X.view()), CVb(dY.view()), MatrixView<bf>{},
                         gA.view(), gB.view(), /*accumulate=*/true, CVb(xa.view()));
          gpu.synchronize();
          return std::pair{nmse(dense(g32, ConstMatrixView<float>(gA.view())), wantA),
                           nmse(dense(g32, ConstMatrixView<float>(gB.view())), wantB)};
        }
      }
      layer.backward(CVb(W.view()), CVb(A.view()), CVb(B.view()), CVb(X.view()), CVb(dY.view()), MatrixView<bf>{},
                     gA.view(), gB.view(), /*accumulate=*/true);
    } else {  // the bf16 gradients of one call, then added into the fp32 sums on the host
      auto ga = gpu.make_matrix(r, in), gb = gpu.make_matrix(out, r);
      layer.backward(CVb(W.view()), CVb(A.view()), CVb(B.view()), CVb(X.view()), CVb(dY.view()), MatrixView<bf>{},
                     ga.view(), gb.view(), /*accumulate=*/false);
      gpu.synchronize();
      auto a = dense(gpu, CVb(ga.view())), b = dense(gpu, CVb(gb.view()));
      for (std::size_t i = 0; i < a.size(); ++i) a[i] += gA0[i];
      for (std::size_t i = 0; i < b.size(); ++i) b[i] += gB0[i];
      return std::pair{nmse(a, wantA), nmse(b, wantB)};
    }
    gpu.synchronize();
    return std::pair{nmse(dense(g32, ConstMatrixView<float>(gA.view())), wantA),
                     nmse(dense(g32, ConstMatrixView<float>(gB.view())), wantB)};
  };
  MutedLinear<CudaBackend<bf>> muted(gpu, alpha);
  AdapterLinear<CudaBackend<bf>> adapter(gpu, alpha);
  const auto [mA, mB] = run(muted, true);
  const auto [aA, aB] = run(adapter, true);
  const auto [xA, xB] = run(adapter, true, /*with_xa=*/true);
  const auto [mA16, mB16] = run(muted, false);
  CAPTURE(mA16);
  CAPTURE(mB16);
  // fp32 sums over 200 tokens: ≈ 1e-13; bf16 gradients: ≈ 1e-6 (one rounding of every result)
  CHECK(mA <= 1e-10);
  CHECK(mB <= 1e-10);
  CHECK(aA <= 1e-10);
  CHECK(aB <= 1e-10);
  CHECK(xA <= 1e-10);
  CHECK(xB <= 1e-10);
  CHECK(mA16 > 1e-8);  // the bf16-gradient path, for contrast: what the fp32 results remove
  CHECK(mB16 > 1e-8);
}

TEST_CASE("MutedLinear::backward_shared on bf16 (q, k, v reading one X): fp32 gradients against float64") {
  using bf = __nv_bfloat16;
  using CVb = ConstMatrixView<bf>;
  CudaBackend<bf> gpu;
  CudaBackend<float> g32;
  const index_t N = 200, in = 96, r = 16, n = 3;
  const index_t outs[n] = {24, 24, 80};  // v, k (GQA: narrow), q
  const double alpha = 0.5;
  auto up = [&](const std::vector<float>& h, index_t rows, index_t cols) {
    auto m = gpu.make_matrix(rows, cols);
    const auto b = to_bf16(h);
    gpu.upload(b.data(), m.view());
    return m;
  };
  const auto hX = bf16_rounded(random_host<float>(N, in, 60)), hA = bf16_rounded(random_host<float>(n * r, in, 61));
  auto X = up(hX, N, in), A = up(hA, n * r, in);
  std::vector<std::vector<float>> hW, hB, hdY, gB0;
  std::vector<CudaBackend<bf>::matrix_type> W, B, dY, dX;
  std::vector<CudaBackend<float>::matrix_type> gB;
  for (index_t j = 0; j < n; ++j) {
    const auto o = outs[j];
    const std::uint64_t sd = 70 + 10 * std::uint64_t(j);
    hW.push_back(bf16_rounded(random_host<float>(o, in, sd)));
    hB.push_back(bf16_rounded(random_host<float>(o, r, sd + 1)));
    hdY.push_back(bf16_rounded(random_host<float>(N, o, sd + 2)));
    gB0.push_back(random_host<float>(o, r, sd + 3));  // fp32 sums so far
    W.push_back(up(hW.back(), o, in));
    B.push_back(up(hB.back(), o, r));
    dY.push_back(up(hdY.back(), N, o));
    dX.push_back(gpu.make_matrix(N, in));
    gB.push_back(g32.make_matrix(o, r));
    g32.upload(gB0.back().data(), gB.back().view());
  }
  const auto gA0 = random_host<float>(n * r, in, 99);
  auto gA = g32.make_matrix(n * r, in);
  g32.upload(gA0.data(), gA.view());

  MutedLinear<CudaBackend<bf>> layer(gpu, alpha);
  using SI = MutedLinear<CudaBackend<bf>>::SharedInput<float>;
  std::vector<SI> lins;
  for (index_t j = 0; j < n; ++j)
    lins.push_back({CVb(W[j].view()), CVb(B[j].view()), CVb(dY[j].view()), dX[j].view(), gB[j].view()});
  layer.reserve_shared(N, n, r);
  layer.backward_shared(CVb(X.view()), CVb(A.view()), std::span<const SI>(lins), gA.view(), /*accumulate=*/true);
  gpu.synchronize();

  // float64 reference. The thin products are bf16 in the layer: taken from the same cuBLAS calls
  // (the same shapes and leading dimensions), so that no bf16 rounding boundary separates the sides.
  auto t = gpu.make_matrix(N, n * r), u = gpu.make_matrix(N, n * r);
  for (index_t j = 0; j < n; ++j)
    gpu.gemm(Op::N, Op::N, 1.0f, CVb(dY[j].view()), CVb(B[j].view()), 0.0f, t.view().col_block(j * r, r));
  gpu.gemm(Op::N, Op::T, 1.0f, CVb(X.view()), CVb(A.view()), 0.0f, u.view());
  gpu.synchronize();
  const auto td = dense(gpu, CVb(t.view())), ud = dense(gpu, CVb(u.view()));
  const std::vector<float> tf(td.begin(), td.end()), uf(ud.begin(), ud.end());
  const auto pA = ref_gemm(Op::T, Op::N, tf, n * r, hX, in, n * r, in, N);
  std::vector<double> wantA(pA.size());
  for (std::size_t i = 0; i < pA.size(); ++i) wantA[i] = gA0[i] + alpha * pA[i];
  CHECK(nmse(dense(g32, ConstMatrixView<float>(gA.view())), wantA) <= 1e-10);
  for (index_t j = 0; j < n; ++j) {
    CAPTURE(j);
    const auto o = outs[j];
    std::vector<float> uj(std::size_t(N * r));  // column block j of u
    for (index_t i = 0; i < N; ++i)
      for (index_t c = 0; c < r; ++c) uj[std::size_t(i * r + c)] = uf[std::size_t(i * n * r + j * r + c)];
    const auto pB = ref_gemm(Op::T, Op::N, hdY[j], o, uj, r, o, r, N);
    std::vector<double> wantB(pB.size());
    for (std::size_t i = 0; i < pB.size(); ++i) wantB[i] = gB0[j][i] + alpha * pB[i];
    CHECK(nmse(dense(g32, ConstMatrixView<float>(gB[j].view())), wantB) <= 1e-10);
    // dX_j = dY_j W_j: the same GEMM as the per-linear backward, bit for bit
    auto ref = gpu.make_matrix(N, in);
    gpu.gemm(Op::N, Op::N, 1.0f, CVb(dY[j].view()), CVb(W[j].view()), 0.0f, ref.view());
    gpu.synchronize();
    CHECK(dense(gpu, CVb(dX[j].view())) == dense(gpu, CVb(ref.view())));
  }

  // The trainer's call (DwuMethod::shared_backward): the gB_j added to their sums, the stacked gA
  // written (accumulate_gA = false: one micro-batch's, added to each target's sum by the caller).
  for (index_t j = 0; j < n; ++j) lins[std::size_t(j)].dX = MatrixView<bf>{};  // dX skipped
  layer.backward_shared(CVb(X.view()), CVb(A.view()), std::span<const SI>(lins), gA.view(), /*accumulate=*/true,
                        /*accumulate_gA=*/false);
  gpu.synchronize();
  std::vector<double> onceA(pA.size());
  for (std::size_t i = 0; i < pA.size(); ++i) onceA[i] = alpha * pA[i];
  CHECK(nmse(dense(g32, ConstMatrixView<float>(gA.view())), onceA) <= 1e-10);
  for (index_t j = 0; j < n; ++j) {
    CAPTURE(j);
    const auto o = outs[j];
    std::vector<float> uj(std::size_t(N * r));
    for (index_t i = 0; i < N; ++i)
      for (index_t c = 0; c < r; ++c) uj[std::size_t(i * r + c)] = uf[std::size_t(i * n * r + j * r + c)];
    const auto pB = ref_gemm(Op::T, Op::N, hdY[j], o, uj, r, o, r, N);
    std::vector<double> twiceB(pB.size());
    for (std::size_t i = 0; i < pB.size(); ++i) twiceB[i] = gB0[j][i] + 2.0 * alpha * pB[i];
    CHECK(nmse(dense(g32, ConstMatrixView<float>(gB[j].view())), twiceB) <= 1e-10);
  }
}

TEST_CASE("AdapterLinear::forward_shared / backward_shared on bf16 (gate, up reading one X): against float64") {
  using bf = __nv_bfloat16;
  using CVb = ConstMatrixView<bf>;
  CudaBackend<bf> gpu;
  CudaBackend<float> g32;
  const index_t N = 160, in = 64, r = 8, n = 2;
  const index_t outs[n] = {112, 48};
  const double alpha = 2.0;
  auto up = [&](const std::vector<float>& h, index_t rows, index_t cols) {
    auto m = gpu.make_matrix(rows, cols);
    const auto b = to_bf16(h);
    gpu.upload(b.data(), m.view());
    return m;
  };
  const auto hX = bf16_rounded(random_host<float>(N, in, 160)), hA = bf16_rounded(random_host<float>(n * r, in, 161));
  auto X = up(hX, N, in), A = up(hA, n * r, in);
  std::vector<std::vector<float>> hW, hB, hdY, gB0;
  std::vector<CudaBackend<bf>::matrix_type> W, B, dY, dX, Y;
  std::vector<CudaBackend<float>::matrix_type> gB;
  for (index_t j = 0; j < n; ++j) {
    const auto o = outs[j];
    const std::uint64_t sd = 170 + 10 * std::uint64_t(j);
    hW.push_back(bf16_rounded(random_host<float>(o, in, sd)));
    hB.push_back(bf16_rounded(random_host<float>(o, r, sd + 1)));
    hdY.push_back(bf16_rounded(random_host<float>(N, o, sd + 2)));
    gB0.push_back(random_host<float>(o, r, sd + 3));
    W.push_back(up(hW.back(), o, in));
    B.push_back(up(hB.back(), o, r));
    dY.push_back(up(hdY.back(), N, o));
    dX.push_back(gpu.make_matrix(N, in));
    Y.push_back(gpu.make_matrix(N, o));
    gB.push_back(g32.make_matrix(o, r));
    g32.upload(gB0.back().data(), gB.back().view());
  }
  const auto gA0 = random_host<float>(n * r, in, 199);
  auto gA = g32.make_matrix(n * r, in);
  g32.upload(gA0.data(), gA.view());

  AdapterLinear<CudaBackend<bf>> layer(gpu, alpha);
  using AL = AdapterLinear<CudaBackend<bf>>;
  layer.reserve_shared(N, n, r);
  // forward: Y_j = X W_jᵀ + s (X A_jᵀ) B_jᵀ, U = X A_stackᵀ kept
  auto U = gpu.make_matrix(N, n * r);
  std::vector<AL::SharedForward> fw;
  for (index_t j = 0; j < n; ++j) fw.push_back({CVb(W[j].view()), CVb(B[j].view()), Y[j].view()});
  layer.forward_shared(CVb(X.view()), CVb(A.view()), std::span<const AL::SharedForward>(fw), U.view());
  gpu.synchronize();
  const auto ud = dense(gpu, CVb(U.view()));
  const std::vector<float> uf(ud.begin(), ud.end());  // the layer's bf16 U: the reference's thin operand
  CHECK(nmse(ud, ref_gemm(Op::N, Op::T, hX, in, hA, in, N, n * r, in)) <= 1e-4);  // one bf16 rounding
  for (index_t j = 0; j < n; ++j) {
    CAPTURE(j);
    const auto o = outs[j];
    std::vector<float> uj(std::size_t(N * r));
    for (index_t i = 0; i < N; ++i)
      for (index_t c = 0; c < r; ++c) uj[std::size_t(i * r + c)] = uf[std::size_t(i * n * r + j * r + c)];
    auto want = ref_gemm(Op::N, Op::T, hX, in, hW[j], in, N, o, in);
    const auto low = ref_gemm(Op::N, Op::T, uj, r, hB[j], r, N, o, r);
    for (std::size_t i = 0; i < want.size(); ++i) want[i] += alpha * low[i];
    CHECK(nmse(dense(gpu, CVb(Y[j].view())), want) <= 1e-4);  // bf16 Y (two roundings at most)
  }

  // backward with fp32 gradients, dX and the kept U; gA_stack and the gB_j added to their sums
  using SB = AL::SharedBackward<float>;
  std::vector<SB> bw;
  for (index_t j = 0; j < n; ++j)
    bw.push_back({CVb(W[j].view()), CVb(B[j].view()), CVb(dY[j].view()), dX[j].view(), gB[j].view()});
  layer.backward_shared(CVb(X.view()), CVb(A.view()), std::span<const SB>(bw), gA.view(), /*accumulate=*/true,
                        std::nullopt, CVb(U.view()));
  gpu.synchronize();
  // t_j = dY_j B_j as the layer's bf16 GEMMs (same shapes and leading dimensions)
  auto t = gpu.make_matrix(N, n * r);
  for (index_t j = 0; j < n; ++j)
    gpu.gemm(Op::N, Op::N, 1.0f, CVb(dY[j].view()), CVb(B[j].view()), 0.0f, t.view().col_block(j * r, r));
  gpu.synchronize();
  const auto td = dense(gpu, CVb(t.view()));
  const std::vector<float> tf(td.begin(), td.end());
  const auto pA = ref_gemm(Op::T, Op::N, tf, n * r, hX, in, n * r, in, N);
  std::vector<double> wantA(pA.size());
  for (std::size_t i = 0; i < pA.size(); ++i) wantA[i] = gA0[i] + alpha * pA[i];
  CHECK(nmse(dense(g32, ConstMatrixView<float>(gA.view())), wantA) <= 1e-10);
  for (index_t j = 0; j < n; ++j) {
    CAPTURE(j);
    const auto o = outs[j];
    std::vector<float> uj(std::size_t(N * r)), tj(std::size_t(N * r));
    for (index_t i = 0; i < N; ++i)
      for (index_t c = 0; c < r; ++c) {
        uj[std::size_t(i * r + c)] = uf[std::size_t(i * n * r + j * r + c)];
        tj[std::size_t(i * r + c)] = tf[std::size_t(i * n * r + j * r + c)];
      }
    const auto pB = ref_gemm(Op::T, Op::N, hdY[j], o, uj, r, o, r, N);
    std::vector<double> wantB(pB.size());
    for (std::size_t i = 0; i < pB.size(); ++i) wantB[i] = gB0[j][i] + alpha * pB[i];
    CHECK(nmse(dense(g32, ConstMatrixView<float>(gB[j].view())), wantB) <= 1e-10);
    // dX_j = dY_j W_j + s t_j A_j (bf16)
    std::vector<float> Aj(hA.begin() + std::ptrdiff_t(j * r * in), hA.begin() + std::ptrdiff_t((j + 1) * r * in));
    auto wantX = ref_gemm(Op::N, Op::N, hdY[j], o, hW[j], in, N, in, o);
    const auto lowX = ref_gemm(Op::N, Op::N, tj, r, Aj, in, N, in, r);
    for (std::size_t i = 0; i < wantX.size(); ++i) wantX[i] += alpha * lowX[i];
    CHECK(nmse(dense(gpu, CVb(dX[j].view())), wantX) <= 1e-4);
  }
  // the gradients alone, overwritten (accumulate = false), U recomputed by the layer
  for (auto& b : bw) b.dX = MatrixView<bf>{};
  layer.backward_shared(CVb(X.view()), CVb(A.view()), std::span<const SB>(bw), gA.view(), /*accumulate=*/false);
  gpu.synchronize();
  std::vector<double> onceA(pA.size());
  for (std::size_t i = 0; i < pA.size(); ++i) onceA[i] = alpha * pA[i];
  CHECK(nmse(dense(g32, ConstMatrixView<float>(gA.view())), onceA) <= 1e-10);
  for (index_t j = 0; j < n; ++j) {
    CAPTURE(j);
    const auto o = outs[j];
    std::vector<float> uj(std::size_t(N * r));
    for (index_t i = 0; i < N; ++i)
      for (index_t c = 0; c < r; ++c) uj[std::size_t(i * r + c)] = uf[std::size_t(i * n * r + j * r + c)];
    const auto pB = ref_gemm(Op::T, Op::N, hdY[j], o, uj, r, o, r, N);
    std::vector<double> onceB(pB.size());
    for (std::size_t i = 0; i < pB.size(); ++i) onceB[i] = alpha * pB[i];
    // U recomputed in the layer's scratch (the forward's GEMM shape; a last-bit difference of a U
    // element would give ≈ 1e-7): overwritten, not added to gB0 (that would give ≈ 1)
    CHECK(nmse(dense(g32, ConstMatrixView<float>(gB[j].view())), onceB) <= 1e-6);
  }
}

TEST_CASE("bf16 storage: gemm_f32 with an empty inner dimension fills (beta 0) or scales (beta 1) C") {
  using bf = __nv_bfloat16;
  CudaBackend<bf> gpu;
  CudaBackend<float> g32;
  auto A = gpu.make_matrix(5, 0), B = gpu.make_matrix(0, 7);
  auto C = g32.make_matrix(5, 7);
  const auto h = random_host<float>(5, 7, 31);
  for (float beta : {0.0f, 1.0f}) {
    g32.upload(h.data(), C.view());
    gpu.gemm_f32(Op::N, Op::N, 2.0f, ConstMatrixView<bf>(A.view()), ConstMatrixView<bf>(B.view()), beta, C.view());
    gpu.synchronize();
    std::vector<float> out(35);
    g32.download(ConstMatrixView<float>(C.view()), out.data());
    bool ok = true;
    for (std::size_t i = 0; i < out.size(); ++i) ok = ok && out[i] == (beta == 0.0f ? 0.0f : h[i]);
    CHECK(ok);
  }
}

// FoldedMutedLinears (folded_linears.hpp) on bf16 with fp32 gradients: one storage of (v, k, q)'s
// W, A and block-diagonal B with ld > cols, the forward's [Y_j | U] and the backward's dX, V, gA,
// gB_j against float64. The bf16 outputs (Y, U, dX, V) are one rounding of an fp32 sum: nmse within
// bf16's; the fp32 gradients are computed from the layer's own V and U (as the MutedLinear test
// above takes its t and u), so they match float64 to fp32 summation error.
TEST_CASE("FoldedMutedLinears on bf16 (q, k, v in one storage): against float64") {
  using bf = __nv_bfloat16;
  using CVb = ConstMatrixView<bf>;
  CudaBackend<bf> gpu;
  CudaBackend<float> g32;
  const index_t N = 200, in = 96, r = 16, n = 3, pad = 8;
  const std::vector<index_t> outs = {24, 24, 80};  // v, k (GQA: narrow), q
  const double alpha = 0.5;
  const FoldedLayout L(outs, in, r);
  const index_t O = L.out_total(), ld = L.cols() + pad;
  // the storage on the host: W_j, A_j, B_j in place, zeros in the other adapter blocks, 7 in the pad
  std::vector<float> hs(std::size_t(L.rows() * ld), 7.0f);
  for (index_t i = 0; i < L.rows(); ++i)
    for (index_t c = in; c < L.cols(); ++c) hs[std::size_t(i * ld + c)] = 0.0f;
  std::vector<std::vector<float>> hW, hB;
  const auto hA = bf16_rounded(random_host<float>(n * r, in, 161));
  for (index_t j = 0; j < n; ++j) {
    const std::uint64_t sd = 170 + 10 * std::uint64_t(j);
    hW.push_back(bf16_rounded(random_host<float>(outs[j], in, sd)));
    hB.push_back(bf16_rounded(random_host<float>(outs[j], r, sd + 1)));
    for (index_t i = 0; i < outs[j]; ++i) {
      for (index_t c = 0; c < in; ++c) hs[std::size_t((L.row_of(int(j)) + i) * ld + c)] = hW[j][std::size_t(i * in + c)];
      for (index_t c = 0; c < r; ++c)
        hs[std::size_t((L.row_of(int(j)) + i) * ld + in + j * r + c)] = hB[j][std::size_t(i * r + c)];
    }
  }
  for (index_t i = 0; i < n * r; ++i)
    for (index_t c = 0; c < in; ++c) hs[std::size_t((O + i) * ld + c)] = hA[std::size_t(i * in + c)];
  auto up = [&](const std::vector<float>& h, index_t rows, index_t cols) {
    auto m = gpu.make_matrix(rows, cols);
    const auto b = to_bf16(h);
    gpu.upload(b.data(), m.view());
    return m;
  };
  auto store_m = up(hs, L.rows(), ld);
  const CVb store(store_m.view().data, L.rows(), L.cols(), ld);
  const auto hX = bf16_rounded(random_host<float>(N, in, 160));
  auto X = up(hX, N, in);
  const auto hdY = bf16_rounded(random_host<float>(N, O, 162));  // [dY_v | dY_k | dY_q]
  auto dY = up(hdY, N, O);

  FoldedMutedLinears<CudaBackend<bf>> folded(gpu, alpha);
  auto YU = gpu.make_matrix(N, L.rows());
  folded.forward(L, store, CVb(X.view()), YU.view());
  gpu.synchronize();
  const auto yu = dense(gpu, CVb(YU.view()));
  // float64: X [W; A]ᵀ from the host storage's first `in` columns
  std::vector<float> hWA(std::size_t(L.rows() * in));
  for (index_t i = 0; i < L.rows(); ++i)
    for (index_t c = 0; c < in; ++c) hWA[std::size_t(i * in + c)] = hs[std::size_t(i * ld + c)];
  const auto wantYU = ref_gemm(Op::N, Op::T, hX, in, hWA, in, N, L.rows(), in);
  CHECK(nmse(yu, wantYU) <= nmse_tol<bf>());

  auto gA = g32.make_matrix(n * r, in);
  const auto gA0 = random_host<float>(n * r, in, 199);
  g32.upload(gA0.data(), gA.view());
  std::vector<CudaBackend<float>::matrix_type> gB;
  std::vector<MatrixView<float>> gBv;
  std::vector<std::vector<float>> gB0;
  for (index_t j = 0; j < n; ++j) {
    gB0.push_back(random_host<float>(outs[j], r, 180 + std::uint64_t(j)));
    gB.push_back(g32.make_matrix(outs[j], r));
    g32.upload(gB0.back().data(), gB.back().view());
  }
  for (auto& g : gB) gBv.push_back(g.view());
  auto dXV = gpu.make_matrix(N, L.cols());
  const CVb U = CVb(YU.view()).col_block(O, n * r);
  folded.backward(L, store, CVb(X.view()), CVb(dY.view()), U, dXV.view(), gA.view(),
                  std::span<const MatrixView<float>>(gBv), /*accumulate=*/true);
  gpu.synchronize();
  // dY [W | blockdiag(B)] in float64
  std::vector<float> hWB(std::size_t(O * L.cols()));
  for (index_t i = 0; i < O; ++i)
    for (index_t c = 0; c < L.cols(); ++c) hWB[std::size_t(i * L.cols() + c)] = hs[std::size_t(i * ld + c)];
  const auto wantXV = ref_gemm(Op::N, Op::N, hdY, O, hWB, L.cols(), N, L.cols(), O);
  const auto xv = dense(gpu, CVb(dXV.view()));
  CHECK(nmse(xv, wantXV) <= nmse_tol<bf>());
  // the gradients from the layer's own bf16 V and U
  std::vector<float> vf(std::size_t(N * n * r)), uf(std::size_t(N * n * r));
  for (index_t i = 0; i < N; ++i)
    for (index_t c = 0; c < n * r; ++c) {
      vf[std::size_t(i * n * r + c)] = float(xv[std::size_t(i * L.cols() + in + c)]);
      uf[std::size_t(i * n * r + c)] = float(yu[std::size_t(i * L.rows() + O + c)]);
    }
  const auto pA = ref_gemm(Op::T, Op::N, vf, n * r, hX, in, n * r, in, N);
  std::vector<double> wantA(pA.size());
  for (std::size_t i = 0; i < pA.size(); ++i) wantA[i] = gA0[i] + alpha * pA[i];
  CHECK(nmse(dense(g32, ConstMatrixView<float>(gA.view())), wantA) <= 1e-10);
  for (index_t j = 0; j < n; ++j) {
    CAPTURE(j);
    const index_t o = outs[j];
    std::vector<float> dyj(std::size_t(N * o)), uj(std::size_t(N * r));
    for (index_t i = 0; i < N; ++i) {
      for (index_t c = 0; c < o; ++c) dyj[std::size_t(i * o + c)] = hdY[std::size_t(i * O + L.row_of(int(j)) + c)];
      for (index_t c = 0; c < r; ++c) uj[std::size_t(i * r + c)] = uf[std::size_t(i * n * r + j * r + c)];
    }
    const auto pB = ref_gemm(Op::T, Op::N, dyj, o, uj, r, o, r, N);
    std::vector<double> wantB(pB.size());
    for (std::size_t i = 0; i < pB.size(); ++i) wantB[i] = gB0[std::size_t(j)][i] + alpha * pB[i];
    CHECK(nmse(dense(g32, ConstMatrixView<float>(gB[std::size_t(j)].view())), wantB) <= 1e-10);
  }
}
