// MutedLinear (spec §2) and the baselines' layers against central finite differences of the
// unmuted PiSSA layer, and the exact/scaled mute policies against each other.
#include "test_util.hpp"

using namespace hdpissa;
using hdtest::Ref;
using CV = ConstMatrixView<double>;

namespace {
// L(A, B) = Σ C ⊙ (X (W_res + α B A)ᵀ), the unmuted PiSSA layer with W_res = W − α B0 A0, so that
// at (A0, B0) it equals W. Its gradient at (A0, B0) is what MutedLinear must produce.
double pissa_loss(const Ref& X, const Ref& Wres, const Ref& A, const Ref& B, const Ref& C, double alpha) {
  const Ref ba = hdtest::matmul(B, A);
  const Ref weff = hdtest::add(Wres, ba, alpha);
  const Ref y = hdtest::matmul(X, weff, false, true);
  double s = 0;
  for (std::size_t i = 0; i < y.v.size(); ++i) s += y.v[i] * C.v[i];
  return s;
}
Ref fd_grad(const Ref& p, const std::function<double(const Ref&)>& f, double h = 1e-6) {
  Ref g(p.rows, p.cols);
  for (std::size_t i = 0; i < p.v.size(); ++i) {
    Ref pp = p, pm = p;
    pp.v[i] += h;
    pm.v[i] -= h;
    g.v[i] = (f(pp) - f(pm)) / (2 * h);
  }
  return g;
}
}  // namespace

TEST_CASE("MutedLinear (exact mute): g_A, g_B equal finite differences of the unmuted PiSSA layer") {
  EigenBackend<double> b;
  const index_t tokens = 5, in = 7, out = 6, r = 2;
  const double alpha = 2.0;
  auto W = hdtest::random_matrix(b, out, in, 1), X = hdtest::random_matrix(b, tokens, in, 2);
  auto A = hdtest::random_matrix(b, r, in, 3), Bf = hdtest::random_matrix(b, out, r, 4);
  auto dY = hdtest::random_matrix(b, tokens, out, 5);  // = C, the loss weights
  const Ref w = hdtest::to_ref(W.view()), x = hdtest::to_ref(X.view()), a = hdtest::to_ref(A.view()),
            bb = hdtest::to_ref(Bf.view()), c = hdtest::to_ref(dY.view());
  const Ref wres = hdtest::add(w, hdtest::matmul(bb, a), -alpha);

  MutedLinear<EigenBackend<double>> layer(b, alpha);
  auto dX = b.make_matrix(tokens, in), gA = b.make_matrix(r, in), gB = b.make_matrix(out, r);
  layer.backward(CV(W.view()), CV(A.view()), CV(Bf.view()), CV(X.view()), CV(dY.view()), dX.view(), gA.view(),
                 gB.view(), false);
  const Ref fd_a = fd_grad(a, [&](const Ref& ap) { return pissa_loss(x, wres, ap, bb, c, alpha); });
  const Ref fd_b = fd_grad(bb, [&](const Ref& bp) { return pissa_loss(x, wres, a, bp, c, alpha); });
  CHECK(hdtest::count_violations(hdtest::to_ref(gA.view()), fd_a, 1e-7, 1e-6) == 0);
  CHECK(hdtest::count_violations(hdtest::to_ref(gB.view()), fd_b, 1e-7, 1e-6) == 0);
  // dX = dY W: the adapter contributes nothing to the input gradient.
  CHECK(hdtest::violations<double>(hdtest::to_ref(dX.view()), hdtest::matmul(c, w)) == 0);

  SUBCASE("accumulate adds to the existing gradient") {
    layer.backward(CV(W.view()), CV(A.view()), CV(Bf.view()), CV(X.view()), CV(dY.view()), dX.view(), gA.view(),
                   gB.view(), true);
    Ref twice = fd_a;
    for (auto& v : twice.v) v *= 2;
    CHECK(hdtest::count_violations(hdtest::to_ref(gA.view()), twice, 1e-7, 1e-6) == 0);
  }
}

TEST_CASE("MutedLinear (exact mute): the forward is x Wᵀ exactly") {
  EigenBackend<float> b;
  auto W = hdtest::random_matrix(b, 9, 11, 1), X = hdtest::random_matrix(b, 4, 11, 2);
  auto A = hdtest::random_matrix(b, 3, 11, 3), Bf = hdtest::random_matrix(b, 9, 3, 4);
  auto Y = b.make_matrix(4, 9), Yref = b.make_matrix(4, 9);
  MutedLinear<EigenBackend<float>>(b, 1.0).forward(ConstMatrixView<float>(W.view()), ConstMatrixView<float>(A.view()),
                                                   ConstMatrixView<float>(Bf.view()), ConstMatrixView<float>(X.view()),
                                                   Y.view());
  b.gemm(Op::N, Op::T, 1.f, ConstMatrixView<float>(X.view()), ConstMatrixView<float>(W.view()), 0.f, Yref.view());
  CHECK(std::equal(Y.data(), Y.data() + 36, Yref.data()));  // bit-identical to a plain GEMM
  CHECK(hdtest::violations<float>(hdtest::to_ref(Y.view()),
                                  hdtest::matmul(hdtest::to_ref(X.view()), hdtest::to_ref(W.view()), false, true)) == 0);
}

TEST_CASE("Exact mute and scaled mute (γ = 1e-16, double) agree") {
  EigenBackend<double> b;
  const index_t tokens = 6, in = 8, out = 5, r = 2;
  auto W = hdtest::random_matrix(b, out, in, 1), X = hdtest::random_matrix(b, tokens, in, 2);
  auto A = hdtest::random_matrix(b, r, in, 3), Bf = hdtest::random_matrix(b, out, r, 4);
  auto dY = hdtest::random_matrix(b, tokens, out, 5);
  MutedLinear<EigenBackend<double>, ExactMute> exact(b, 1.0);
  MutedLinear<EigenBackend<double>, ScaledMute> scaled(b, 1.0, ScaledMute{1e-16});
  auto Ye = b.make_matrix(tokens, out), Ys = b.make_matrix(tokens, out);
  exact.forward(CV(W.view()), CV(A.view()), CV(Bf.view()), CV(X.view()), Ye.view());
  scaled.forward(CV(W.view()), CV(A.view()), CV(Bf.view()), CV(X.view()), Ys.view());
  CHECK(hdtest::count_violations(hdtest::to_ref(Ys.view()), hdtest::to_ref(Ye.view()), 1e-14, 1e-14) == 0);
  auto gAe = b.make_matrix(r, in), gBe = b.make_matrix(out, r), gAs = b.make_matrix(r, in), gBs = b.make_matrix(out, r);
  auto dXe = b.make_matrix(tokens, in), dXs = b.make_matrix(tokens, in);
  exact.backward(CV(W.view()), CV(A.view()), CV(Bf.view()), CV(X.view()), CV(dY.view()), dXe.view(), gAe.view(), gBe.view(), false);
  scaled.backward(CV(W.view()), CV(A.view()), CV(Bf.view()), CV(X.view()), CV(dY.view()), dXs.view(), gAs.view(), gBs.view(), false);
  CHECK(hdtest::count_violations(hdtest::to_ref(gAs.view()), hdtest::to_ref(gAe.view()), 1e-12, 1e-10) == 0);
  CHECK(hdtest::count_violations(hdtest::to_ref(gBs.view()), hdtest::to_ref(gBe.view()), 1e-12, 1e-10) == 0);
  CHECK(hdtest::count_violations(hdtest::to_ref(dXs.view()), hdtest::to_ref(dXe.view()), 1e-14, 1e-14) == 0);

  SUBCASE("γ = 1e-2 leaks into the forward (the paper's observation)") {
    MutedLinear<EigenBackend<double>, ScaledMute> leaky(b, 1.0, ScaledMute{1e-2});
    leaky.forward(CV(W.view()), CV(A.view()), CV(Bf.view()), CV(X.view()), Ys.view());
    CHECK(hdtest::count_violations(hdtest::to_ref(Ys.view()), hdtest::to_ref(Ye.view()), 1e-6, 1e-6) > 0);
  }
}

TEST_CASE("AdapterLinear (LoRA/PiSSA) and DenseLinear gradients equal finite differences") {
  EigenBackend<double> b;
  const index_t tokens = 4, in = 6, out = 5, r = 2;
  const double s = 0.5;
  auto W = hdtest::random_matrix(b, out, in, 1), X = hdtest::random_matrix(b, tokens, in, 2);
  auto A = hdtest::random_matrix(b, r, in, 3), Bf = hdtest::random_matrix(b, out, r, 4);
  auto C = hdtest::random_matrix(b, tokens, out, 5);
  const Ref w = hdtest::to_ref(W.view()), x = hdtest::to_ref(X.view()), a = hdtest::to_ref(A.view()),
            bb = hdtest::to_ref(Bf.view()), c = hdtest::to_ref(C.view());
  auto loss = [&](const Ref& xp, const Ref& wp, const Ref& ap, const Ref& bp) {
    return pissa_loss(xp, wp, ap, bp, c, s);  // Σ C ⊙ x (W + s B A)ᵀ
  };
  AdapterLinear<EigenBackend<double>> layer(b, s);
  auto Y = b.make_matrix(tokens, out);
  layer.forward(CV(W.view()), CV(A.view()), CV(Bf.view()), CV(X.view()), Y.view());
  CHECK(hdtest::violations<double>(hdtest::to_ref(Y.view()),
                                   hdtest::matmul(x, hdtest::add(w, hdtest::matmul(bb, a), s), false, true)) == 0);
  auto dX = b.make_matrix(tokens, in), gA = b.make_matrix(r, in), gB = b.make_matrix(out, r);
  layer.backward(CV(W.view()), CV(A.view()), CV(Bf.view()), CV(X.view()), CV(C.view()), dX.view(), gA.view(), gB.view(), false);
  CHECK(hdtest::count_violations(hdtest::to_ref(dX.view()), fd_grad(x, [&](const Ref& p) { return loss(p, w, a, bb); }), 1e-7, 1e-6) == 0);
  CHECK(hdtest::count_violations(hdtest::to_ref(gA.view()), fd_grad(a, [&](const Ref& p) { return loss(x, w, p, bb); }), 1e-7, 1e-6) == 0);
  CHECK(hdtest::count_violations(hdtest::to_ref(gB.view()), fd_grad(bb, [&](const Ref& p) { return loss(x, w, a, p); }), 1e-7, 1e-6) == 0);

  DenseLinear<EigenBackend<double>> dense(b);
  auto gW = b.make_matrix(out, in);
  dense.backward(CV(W.view()), CV(X.view()), CV(C.view()), dX.view(), gW.view(), false);
  const Ref zero_a(r, in), zero_b(out, r);
  CHECK(hdtest::count_violations(hdtest::to_ref(gW.view()), fd_grad(w, [&](const Ref& p) { return loss(x, p, zero_a, zero_b); }), 1e-7, 1e-6) == 0);
}

TEST_CASE("AdapterLinear: backward_u, backward_dx, backward_gradients (split over two layers) give backward()'s bits") {
  // The LLaMA trainer's LoRA / PiSSA second-stream path runs the parts on two backends: u and dX on
  // the model's, gA and gB on a second AdapterLinear's. Each part is the same GEMM as in backward(),
  // so the bits must match, with and without the forward's X Aᵀ, accumulating or not; and they are
  // the plain products dY B, s u A + dY W, s uᵀ X, s dYᵀ (X Aᵀ).
  using Backend = EigenBackend<double>;
  Backend b, b2;
  const index_t tokens = 7, in = 6, out = 5, r = 3;
  const double s = 0.75;
  auto W = hdtest::random_matrix(b, out, in, 11), X = hdtest::random_matrix(b, tokens, in, 12);
  auto A = hdtest::random_matrix(b, r, in, 13), Bf = hdtest::random_matrix(b, out, r, 14);
  auto dY = hdtest::random_matrix(b, tokens, out, 15), g0A = hdtest::random_matrix(b, r, in, 16),
       g0B = hdtest::random_matrix(b, out, r, 17);
  AdapterLinear<Backend> layer(b, s), side(b2, s);
  auto xa = b.make_matrix(tokens, r), Y = b.make_matrix(tokens, out);
  layer.forward(CV(W.view()), CV(A.view()), CV(Bf.view()), CV(X.view()), Y.view(), {}, xa.view());
  const Ref x = hdtest::to_ref(X.view()), w = hdtest::to_ref(W.view()), a = hdtest::to_ref(A.view()),
            bb = hdtest::to_ref(Bf.view()), dy = hdtest::to_ref(dY.view());
  for (bool keep : {false, true})
    for (bool acc : {false, true}) {
      CAPTURE(keep);
      CAPTURE(acc);
      const CV xa_v = keep ? CV(xa.view()) : CV{};
      auto dX1 = b.make_matrix(tokens, in), gA1 = b.make_matrix(r, in), gB1 = b.make_matrix(out, r);
      b.copy(CV(g0A.view()), gA1.view());
      b.copy(CV(g0B.view()), gB1.view());
      layer.backward(CV(W.view()), CV(A.view()), CV(Bf.view()), CV(X.view()), CV(dY.view()), dX1.view(), gA1.view(),
                     gB1.view(), acc, xa_v);
      auto u = b.make_matrix(tokens, r), dX2 = b.make_matrix(tokens, in), gA2 = b.make_matrix(r, in),
           gB2 = b.make_matrix(out, r);
      b.copy(CV(g0A.view()), gA2.view());
      b.copy(CV(g0B.view()), gB2.view());
      layer.backward_u(CV(dY.view()), CV(Bf.view()), u.view());
      side.backward_gradients(CV(X.view()), CV(A.view()), CV(dY.view()), CV(u.view()), gA2.view(), gB2.view(), acc, xa_v);
      layer.backward_dx(CV(W.view()), CV(A.view()), CV(dY.view()), CV(u.view()), dX2.view());
      CHECK(hdtest::to_ref(dX2.view()).v == hdtest::to_ref(dX1.view()).v);
      CHECK(hdtest::to_ref(gA2.view()).v == hdtest::to_ref(gA1.view()).v);
      CHECK(hdtest::to_ref(gB2.view()).v == hdtest::to_ref(gB1.view()).v);
      // the plain products
      const Ref uu = hdtest::matmul(dy, bb, false, false);
      CHECK(hdtest::count_violations(hdtest::to_ref(u.view()), uu, 1e-12, 1e-12) == 0);
      const Ref dx = hdtest::add(hdtest::matmul(dy, w), hdtest::matmul(uu, a), s);
      CHECK(hdtest::count_violations(hdtest::to_ref(dX2.view()), dx, 1e-12, 1e-12) == 0);
      const Ref ga = hdtest::add(acc ? hdtest::to_ref(g0A.view()) : Ref(r, in), hdtest::matmul(uu, x, true, false), s);
      const Ref gb = hdtest::add(acc ? hdtest::to_ref(g0B.view()) : Ref(out, r),
                                 hdtest::matmul(dy, hdtest::matmul(x, a, false, true), true, false), s);
      CHECK(hdtest::count_violations(hdtest::to_ref(gA2.view()), ga, 1e-12, 1e-12) == 0);
      CHECK(hdtest::count_violations(hdtest::to_ref(gB2.view()), gb, 1e-12, 1e-12) == 0);
    }
  // a part given mismatched shapes names what it expected
  auto u_bad = b.make_matrix(tokens, r + 1);
  CHECK_THROWS_WITH_AS(layer.backward_u(CV(dY.view()), CV(Bf.view()), u_bad.view()),
                       doctest::Contains("AdapterLinear u"), std::exception);
  auto gA_bad = b.make_matrix(r, in + 1), gB = b.make_matrix(out, r), u = b.make_matrix(tokens, r);
  CHECK_THROWS_AS(side.backward_gradients(CV(X.view()), CV(A.view()), CV(dY.view()), CV(u.view()), gA_bad.view(), gB.view()),
                  std::exception);
}

TEST_CASE("linear layers: bias is added to every row") {
  EigenBackend<double> b;
  auto W = hdtest::random_matrix(b, 3, 4, 1), X = hdtest::random_matrix(b, 2, 4, 2);
  auto A = b.make_matrix(1, 4), Bf = b.make_matrix(3, 1), Y = b.make_matrix(2, 3);
  const double bias[3] = {1, 2, 3};
  MutedLinear<EigenBackend<double>>(b).forward(CV(W.view()), CV(A.view()), CV(Bf.view()), CV(X.view()), Y.view(),
                                               CV(bias, 1, 3));
  Ref expect = hdtest::matmul(hdtest::to_ref(X.view()), hdtest::to_ref(W.view()), false, true);
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) expect(i, j) += bias[j];
  CHECK(hdtest::violations<double>(hdtest::to_ref(Y.view()), expect) == 0);
}

TEST_CASE("AdapterHandle: dwu.adapter(layer, g) with MutedLinear's handle overloads; Matrix passes as a const view") {
  using Backend = EigenBackend<double>;
  Backend b;
  auto W = b.make_matrix(6, 5), X = b.make_matrix(3, 5), Y = b.make_matrix(3, 6), Y2 = b.make_matrix(3, 6);
  fill_gaussian(b, W.view(), 1);
  fill_gaussian(b, X.view(), 2);
  static_assert(std::is_convertible_v<const Backend::Matrix&, CV>, "an owning matrix converts to a const view");
  static_assert(!std::is_convertible_v<const Backend::Matrix&, MatrixView<double>>, "but never to a mutable one");
  SingleProcess one;
  VirtualRanks<SingleProcess> comm(one, 2);
  auto factors = OrthogonalAdapterInit<ExactSvd>(2, 2)(b, W, "w");  // W, not CV(W.view())
  DirectWeightUpdate<Backend, Adam, VirtualRanks<SingleProcess>> dwu(b, comm);
  const auto id = dwu.add_layer("w", W.view(), factors);
  MutedLinear<Backend> layer(b, peft_scaling(3, 2));
  for (int g = 0; g < 2; ++g) {
    const AdapterHandle<double> h = dwu.adapter(id, g);
    CHECK(h.A.data == dwu.A(id, g).data);
    CHECK(h.B.data == dwu.Bf(id, g).data);
    CHECK(h.grad_A.data == dwu.grad_A(id, g).data);
    CHECK(h.grad_B.data == dwu.grad_B(id, g).data);
    layer.forward(W, h, X, Y.view());
    layer.forward(W, dwu.A(id, g), dwu.Bf(id, g), X, Y2.view());
    CHECK(b.checksum(Y) == b.checksum(Y2));
    auto gA = b.make_matrix(2, 5), gB = b.make_matrix(6, 2);
    layer.backward(W, h, X, Y, {});
    layer.backward(W, dwu.A(id, g), dwu.Bf(id, g), X, Y, {}, gA.view(), gB.view());
    CHECK(b.checksum(h.grad_A) == b.checksum(gA));  // the handle's buffers got the same gradients
    CHECK(b.checksum(h.grad_B) == b.checksum(gB));
  }
}

TEST_CASE("linear layers: mismatched shapes are clear errors") {
  EigenBackend<float> b;
  auto W = b.make_matrix(6, 8), X = b.make_matrix(4, 7), A = b.make_matrix(2, 8), Bf = b.make_matrix(6, 2);
  auto Y = b.make_matrix(4, 6);
  MutedLinear<EigenBackend<float>> layer(b);
  using FV = ConstMatrixView<float>;
  hdtest::check_throws_with<InvalidArgument>(
      [&] { layer.forward(FV(W.view()), FV(A.view()), FV(Bf.view()), FV(X.view()), Y.view()); },
      {"X is (4, 7)", "W is (6, 8)", "(tokens, 8)"});
  auto A_bad = b.make_matrix(2, 5), X_ok = b.make_matrix(4, 8);
  hdtest::check_throws_with<InvalidArgument>(
      [&] { layer.forward(FV(W.view()), FV(A_bad.view()), FV(Bf.view()), FV(X_ok.view()), Y.view()); },
      {"expected A (r, 8)", "found A (2, 5)"});
}

TEST_CASE("MutedLinear::backward_shared (linears reading one X): every gradient equals finite differences") {
  // Three linears of different widths reading the same X (a layer's v, k, q), their A factors
  // stacked: each gA_j / gB_j must be its own layer's finite-difference gradient, each dX_j = dY_j W_j.
  EigenBackend<double> b;
  const index_t tokens = 5, in = 7, r = 2;
  const double alpha = 1.5;
  const index_t outs[3] = {3, 4, 6};
  auto X = hdtest::random_matrix(b, tokens, in, 40);
  const Ref x = hdtest::to_ref(X.view());
  using M = typename EigenBackend<double>::matrix_type;
  std::vector<M> W, Bf, dY, dX, gB;
  for (int j = 0; j < 3; ++j) {
    W.push_back(hdtest::random_matrix(b, outs[j], in, 41 + 10 * std::uint64_t(j)));
    Bf.push_back(hdtest::random_matrix(b, outs[j], r, 42 + 10 * std::uint64_t(j)));
    dY.push_back(hdtest::random_matrix(b, tokens, outs[j], 43 + 10 * std::uint64_t(j)));
    dX.push_back(b.make_matrix(tokens, in));
    gB.push_back(b.make_matrix(outs[j], r));
  }
  auto A_stack = hdtest::random_matrix(b, 3 * r, in, 70);
  auto gA_stack = b.make_matrix(3 * r, in);
  MutedLinear<EigenBackend<double>> layer(b, alpha);
  using SI = MutedLinear<EigenBackend<double>>::SharedInput<double>;
  std::vector<SI> lins;
  for (int j = 0; j < 3; ++j) lins.push_back({CV(W[j].view()), CV(Bf[j].view()), CV(dY[j].view()), dX[j].view(), gB[j].view()});
  layer.backward_shared(CV(X.view()), CV(A_stack.view()), std::span<const SI>(lins), gA_stack.view(), false);
  const Ref gas = hdtest::to_ref(gA_stack.view()), as = hdtest::to_ref(A_stack.view());
  for (int j = 0; j < 3; ++j) {
    CAPTURE(j);
    const Ref w = hdtest::to_ref(W[j].view()), bb = hdtest::to_ref(Bf[j].view()), c = hdtest::to_ref(dY[j].view());
    Ref a(r, in);
    for (index_t i = 0; i < r * in; ++i) a.v[std::size_t(i)] = as.v[std::size_t(j * r * in + i)];  // A_j
    const Ref wres = hdtest::add(w, hdtest::matmul(bb, a), -alpha);
    const Ref fd_a = fd_grad(a, [&](const Ref& ap) { return pissa_loss(x, wres, ap, bb, c, alpha); });
    const Ref fd_b = fd_grad(bb, [&](const Ref& bp) { return pissa_loss(x, wres, a, bp, c, alpha); });
    Ref ga(r, in);
    for (index_t i = 0; i < r * in; ++i) ga.v[std::size_t(i)] = gas.v[std::size_t(j * r * in + i)];
    CHECK(hdtest::count_violations(ga, fd_a, 1e-7, 1e-6) == 0);
    CHECK(hdtest::count_violations(hdtest::to_ref(gB[j].view()), fd_b, 1e-7, 1e-6) == 0);
    CHECK(hdtest::violations<double>(hdtest::to_ref(dX[j].view()), hdtest::matmul(c, w)) == 0);
  }

  SUBCASE("accumulate adds; a null dX is skipped") {
    const Ref gb0 = hdtest::to_ref(gB[1].view());
    for (auto& l : lins) l.dX = MatrixView<double>{};
    b.fill(dX[0].view(), 7.0);
    layer.backward_shared(CV(X.view()), CV(A_stack.view()), std::span<const SI>(lins), gA_stack.view(), true);
    Ref twice_a = gas, twice_b = gb0;
    for (auto& v : twice_a.v) v *= 2;
    for (auto& v : twice_b.v) v *= 2;
    CHECK(hdtest::count_violations(hdtest::to_ref(gA_stack.view()), twice_a, 1e-12, 1e-12) == 0);
    CHECK(hdtest::count_violations(hdtest::to_ref(gB[1].view()), twice_b, 1e-12, 1e-12) == 0);
    bool untouched = true;
    for (double v : hdtest::to_ref(dX[0].view()).v) untouched = untouched && v == 7.0;
    CHECK(untouched);
  }

  SUBCASE("accumulate_gA = false: gA_stack overwritten (a per-micro-batch scratch), the gB_j still added to") {
    const Ref gb0 = hdtest::to_ref(gB[2].view());
    b.fill(gA_stack.view(), 5.0);  // stale scratch contents must not survive
    layer.backward_shared(CV(X.view()), CV(A_stack.view()), std::span<const SI>(lins), gA_stack.view(),
                          /*accumulate=*/true, /*accumulate_gA=*/false);
    Ref twice_b = gb0;
    for (auto& v : twice_b.v) v *= 2;
    CHECK(hdtest::count_violations(hdtest::to_ref(gA_stack.view()), gas, 1e-12, 1e-12) == 0);
    CHECK(hdtest::count_violations(hdtest::to_ref(gB[2].view()), twice_b, 1e-12, 1e-12) == 0);
  }

  SUBCASE("a stack that does not split into n blocks of r rows, or a wrong gA_stack, is a clear error") {
    auto A_bad = b.make_matrix(3 * r + 1, in);
    hdtest::check_throws_with<InvalidArgument>(
        [&] { layer.backward_shared(CV(X.view()), CV(A_bad.view()), std::span<const SI>(lins), gA_stack.view(), false); },
        {"A_stack (n·r, in) for n = 3", "(7, 7)"});
    auto dY_bad = b.make_matrix(tokens, outs[1] + 1);  // linear 1's dY one column too wide
    auto bad = lins;
    bad[1].dY = CV(dY_bad.view());
    hdtest::check_throws_with<InvalidArgument>(
        [&] { layer.backward_shared(CV(X.view()), CV(A_stack.view()), std::span<const SI>(bad), gA_stack.view(), false); },
        {"backward_shared, linear 1 of 3", "rows 2..3 of A_stack", "MutedLinear dY", "(5, 4)", "(5, 5)"});
    auto gA_bad = b.make_matrix(2 * r, in);
    hdtest::check_throws_with<InvalidArgument>(
        [&] { layer.backward_shared(CV(X.view()), CV(A_stack.view()), std::span<const SI>(lins), gA_bad.view(), false); },
        {"gA_stack"});
  }
}

TEST_CASE("AdapterLinear::forward_shared / backward_shared (linears reading one X): outputs and gradients") {
  // Three LoRA linears of different widths reading the same X, their A factors stacked: Y_j is X (W_j +
  // s B_j A_j)ᵀ, and every dX_j, gA_j, gB_j is its own layer's finite-difference gradient of
  // Σ C_j ⊙ Y_j, with U from the forward (keep_u) and recomputed.
  EigenBackend<double> b;
  const index_t tokens = 5, in = 7, r = 2;
  const double s = 0.75;
  const index_t outs[3] = {3, 4, 6};
  auto X = hdtest::random_matrix(b, tokens, in, 140);
  auto A_stack = hdtest::random_matrix(b, 3 * r, in, 141);
  const Ref x = hdtest::to_ref(X.view()), as = hdtest::to_ref(A_stack.view());
  using M = typename EigenBackend<double>::matrix_type;
  using AL = AdapterLinear<EigenBackend<double>>;
  std::vector<M> W, Bf, C, Y, dX, gB;
  for (int j = 0; j < 3; ++j) {
    W.push_back(hdtest::random_matrix(b, outs[j], in, 150 + 10 * std::uint64_t(j)));
    Bf.push_back(hdtest::random_matrix(b, outs[j], r, 151 + 10 * std::uint64_t(j)));
    C.push_back(hdtest::random_matrix(b, tokens, outs[j], 152 + 10 * std::uint64_t(j)));
    Y.push_back(b.make_matrix(tokens, outs[j]));
    dX.push_back(b.make_matrix(tokens, in));
    gB.push_back(b.make_matrix(outs[j], r));
  }
  AL layer(b, s);
  std::vector<AL::SharedForward> fw;
  for (int j = 0; j < 3; ++j) fw.push_back({CV(W[j].view()), CV(Bf[j].view()), Y[j].view()});
  auto U = b.make_matrix(tokens, 3 * r);
  layer.forward_shared(CV(X.view()), CV(A_stack.view()), std::span<const AL::SharedForward>(fw), U.view());
  auto a_of = [&](int j) {
    Ref a(r, in);
    for (index_t i = 0; i < r * in; ++i) a.v[std::size_t(i)] = as.v[std::size_t(j * r * in + i)];
    return a;
  };
  for (int j = 0; j < 3; ++j) {
    CAPTURE(j);
    const Ref w = hdtest::to_ref(W[j].view()), bb = hdtest::to_ref(Bf[j].view());
    CHECK(hdtest::violations<double>(hdtest::to_ref(Y[j].view()),
                                     hdtest::matmul(x, hdtest::add(w, hdtest::matmul(bb, a_of(j)), s), false, true)) == 0);
  }
  using SB = AL::SharedBackward<double>;
  for (bool keep : {true, false}) {
    CAPTURE(keep);
    std::vector<SB> bw;
    for (int j = 0; j < 3; ++j) bw.push_back({CV(W[j].view()), CV(Bf[j].view()), CV(C[j].view()), dX[j].view(), gB[j].view()});
    auto gA = b.make_matrix(3 * r, in);
    layer.backward_shared(CV(X.view()), CV(A_stack.view()), std::span<const SB>(bw), gA.view(), false, std::nullopt,
                          keep ? CV(U.view()) : CV{});
    const Ref ga = hdtest::to_ref(gA.view());
    for (int j = 0; j < 3; ++j) {
      CAPTURE(j);
      const Ref w = hdtest::to_ref(W[j].view()), bb = hdtest::to_ref(Bf[j].view()), c = hdtest::to_ref(C[j].view());
      const Ref a = a_of(j);
      auto loss = [&](const Ref& xp, const Ref& ap, const Ref& bp) { return pissa_loss(xp, w, ap, bp, c, s); };
      Ref gaj(r, in);
      for (index_t i = 0; i < r * in; ++i) gaj.v[std::size_t(i)] = ga.v[std::size_t(j * r * in + i)];
      CHECK(hdtest::count_violations(hdtest::to_ref(dX[j].view()), fd_grad(x, [&](const Ref& p) { return loss(p, a, bb); }), 1e-7, 1e-6) == 0);
      CHECK(hdtest::count_violations(gaj, fd_grad(a, [&](const Ref& p) { return loss(x, p, bb); }), 1e-7, 1e-6) == 0);
      CHECK(hdtest::count_violations(hdtest::to_ref(gB[j].view()), fd_grad(bb, [&](const Ref& p) { return loss(x, a, p); }), 1e-7, 1e-6) == 0);
    }
  }

  SUBCASE("two linears, U recomputed, the trainer's flags: gB added to, gA_stack overwritten") {
    // linears 0 and 1 as a group of two (A rows 0..2r-1): after a first call, a second one with
    // accumulate = true, accumulate_gA = false leaves gA_stack at one call's value and doubles gB
    auto A2 = b.make_matrix(2 * r, in);
    b.copy(CV(A_stack.view()).row_block(0, 2 * r), A2.view());
    std::vector<SB> bw;
    std::vector<M> g2;
    for (int j = 0; j < 2; ++j) {
      g2.push_back(b.make_matrix(outs[j], r));
      bw.push_back({CV(W[j].view()), CV(Bf[j].view()), CV(C[j].view()), MatrixView<double>{}, g2.back().view()});
    }
    auto gA2 = b.make_matrix(2 * r, in);
    layer.backward_shared(CV(X.view()), CV(A2.view()), std::span<const SB>(bw), gA2.view(), false);
    const Ref ga1 = hdtest::to_ref(gA2.view()), gb1 = hdtest::to_ref(g2[1].view());
    layer.backward_shared(CV(X.view()), CV(A2.view()), std::span<const SB>(bw), gA2.view(), true, false);
    Ref twice_b = gb1;
    for (auto& v : twice_b.v) v *= 2;
    CHECK(hdtest::count_violations(hdtest::to_ref(gA2.view()), ga1, 1e-12, 1e-12) == 0);
    CHECK(hdtest::count_violations(hdtest::to_ref(g2[1].view()), twice_b, 1e-12, 1e-12) == 0);
    for (int j = 0; j < 2; ++j) {  // and one call's values are the finite differences
      CAPTURE(j);
      const Ref w = hdtest::to_ref(W[j].view()), bb = hdtest::to_ref(Bf[j].view()), c = hdtest::to_ref(C[j].view());
      const Ref a = a_of(j);
      auto loss = [&](const Ref& ap) { return pissa_loss(x, w, ap, bb, c, s); };
      Ref gaj(r, in);
      for (index_t i = 0; i < r * in; ++i) gaj.v[std::size_t(i)] = ga1.v[std::size_t(j * r * in + i)];
      CHECK(hdtest::count_violations(gaj, fd_grad(a, loss), 1e-7, 1e-6) == 0);
    }
  }

  SUBCASE("a wrong member is a clear error naming it") {
    auto Y_bad = b.make_matrix(tokens, outs[2] + 1);
    auto bad = fw;
    bad[2].Y = Y_bad.view();
    hdtest::check_throws_with<InvalidArgument>(
        [&] { layer.forward_shared(CV(X.view()), CV(A_stack.view()), std::span<const AL::SharedForward>(bad)); },
        {"shared-input group, linear 2 of 3", "rows 4..5 of A_stack", "AdapterLinear Y"});
    auto A_bad = b.make_matrix(3 * r + 2, in);
    hdtest::check_throws_with<InvalidArgument>(
        [&] { layer.forward_shared(CV(X.view()), CV(A_bad.view()), std::span<const AL::SharedForward>(fw)); },
        {"A_stack (n·r, in) for n = 3", "(8, 7)"});
  }
}

// FoldedMutedLinears (folded_linears.hpp): three linears of different widths reading one X, their
// W, A and B in one folded storage (with ld > cols and garbage where the layout says "unused" or
// before zero_adapter_columns): the forward's [Y_j | U] and the backward's dX = Σ_j dY_j W_j, V, gA
// and gB_j equal MutedLinear's forward / backward_shared on separate matrices (the reference), up
// to the GEMMs' summation order.
TEST_CASE("FoldedMutedLinears: one forward GEMM and one dX GEMM give MutedLinear's results") {
  EigenBackend<double> b;
  using M = typename EigenBackend<double>::matrix_type;
  const index_t tokens = 5, in = 7, r = 2;
  const double alpha = 1.5;
  const std::vector<index_t> outs = {3, 4, 6};
  const FoldedLayout L(outs, in, r);
  REQUIRE(L.out_total() == 13);
  REQUIRE(L.rows() == 19);
  REQUIRE(L.cols() == 13);
  CHECK(L.row_of(2) == 7);
  auto X = hdtest::random_matrix(b, tokens, in, 140);
  std::vector<M> W, Bf, dY, dX, gB, Y;
  for (int j = 0; j < 3; ++j) {
    W.push_back(hdtest::random_matrix(b, outs[j], in, 141 + 10 * std::uint64_t(j)));
    Bf.push_back(hdtest::random_matrix(b, outs[j], r, 142 + 10 * std::uint64_t(j)));
    dY.push_back(hdtest::random_matrix(b, tokens, outs[j], 143 + 10 * std::uint64_t(j)));
    dX.push_back(b.make_matrix(tokens, in));
    gB.push_back(b.make_matrix(outs[j], r));
    Y.push_back(b.make_matrix(tokens, outs[j]));
  }
  auto A_stack = hdtest::random_matrix(b, 3 * r, in, 170);
  auto gA_stack = b.make_matrix(3 * r, in);

  // the reference: MutedLinear on separate matrices
  MutedLinear<EigenBackend<double>> layer(b, alpha);
  using SI = MutedLinear<EigenBackend<double>>::SharedInput<double>;
  std::vector<SI> lins;
  for (int j = 0; j < 3; ++j) {
    lins.push_back({CV(W[j].view()), CV(Bf[j].view()), CV(dY[j].view()), dX[j].view(), gB[j].view()});
    layer.forward(CV(W[j].view()), CV(A_stack.view()).row_block(j * r, r), CV(Bf[j].view()), CV(X.view()), Y[j].view());
  }
  layer.backward_shared(CV(X.view()), CV(A_stack.view()), std::span<const SI>(lins), gA_stack.view(), false);
  auto U_ref = b.make_matrix(tokens, 3 * r);
  b.gemm(Op::N, Op::T, 1.0, CV(X.view()), CV(A_stack.view()), 0.0, U_ref.view());
  Ref dX_ref = hdtest::to_ref(dX[0].view());
  for (int j = 1; j < 3; ++j) dX_ref = hdtest::add(dX_ref, hdtest::to_ref(dX[j].view()), 1.0);

  // the folded storage: ld 15 > cols 13, every element 9 first
  auto big = b.make_matrix(L.rows(), L.cols() + 2);
  b.fill(big.view(), 9.0);
  const MatrixView<double> store(big.view().data, L.rows(), L.cols(), L.cols() + 2);
  L.zero_adapter_columns(b, store);
  for (int j = 0; j < 3; ++j) {
    b.copy(CV(W[j].view()), L.W(store, j));
    b.copy(CV(A_stack.view()).row_block(j * r, r), L.A(store, j));
    b.copy(CV(Bf[j].view()), L.B(store, j));
  }
  {  // every adapter column outside the B_j is zero (and the rows' W / A untouched by the zeroing)
    const Ref s = hdtest::to_ref(CV(store));
    long nonzero = 0;
    for (index_t i = 0; i < L.rows(); ++i)
      for (index_t c = in; c < L.cols(); ++c) {
        const int blk = int((c - in) / r);
        const bool in_b = i < L.out_total() && i >= L.row_of(blk) && i < L.row_of(blk) + L.out(blk);
        if (!in_b && s.v[std::size_t(i * L.cols() + c)] != 0.0) ++nonzero;
      }
    CHECK(nonzero == 0);
  }
  FoldedMutedLinears<EigenBackend<double>> folded(b, alpha);
  auto YU = b.make_matrix(tokens, L.rows());
  folded.forward(L, CV(store), CV(X.view()), YU.view());
  for (int j = 0; j < 3; ++j) {
    CAPTURE(j);
    CHECK(hdtest::count_violations(hdtest::to_ref(CV(YU.view()).col_block(L.row_of(j), outs[j])),
                                   hdtest::to_ref(Y[j].view()), 1e-13, 1e-13) == 0);
  }
  const CV U = CV(YU.view()).col_block(L.out_total(), 3 * r);
  CHECK(hdtest::count_violations(hdtest::to_ref(U), hdtest::to_ref(U_ref.view()), 1e-13, 1e-13) == 0);

  auto dY_all = b.make_matrix(tokens, L.out_total());
  for (int j = 0; j < 3; ++j) b.copy(CV(dY[j].view()), dY_all.view().col_block(L.row_of(j), outs[j]));
  auto dXV = b.make_matrix(tokens, L.cols());
  auto gA_f = b.make_matrix(3 * r, in);
  std::vector<M> gB_f;
  std::vector<MatrixView<double>> gBv;
  for (int j = 0; j < 3; ++j) gB_f.push_back(b.make_matrix(outs[j], r));
  for (auto& g : gB_f) gBv.push_back(g.view());
  b.fill(gA_f.view(), 3.0);  // overwritten without accumulate
  folded.backward(L, CV(store), CV(X.view()), CV(dY_all.view()), U, dXV.view(), gA_f.view(),
                  std::span<const MatrixView<double>>(gBv), false);
  CHECK(hdtest::count_violations(hdtest::to_ref(CV(dXV.view()).col_block(0, in)), dX_ref, 1e-13, 1e-13) == 0);
  CHECK(hdtest::count_violations(hdtest::to_ref(gA_f.view()), hdtest::to_ref(gA_stack.view()), 1e-13, 1e-13) == 0);
  for (int j = 0; j < 3; ++j) {
    CAPTURE(j);
    CHECK(hdtest::count_violations(hdtest::to_ref(gB_f[j].view()), hdtest::to_ref(gB[j].view()), 1e-13, 1e-13) == 0);
    // V_j = dY_j B_j
    CHECK(hdtest::count_violations(hdtest::to_ref(CV(dXV.view()).col_block(in + j * r, r)),
                                   hdtest::matmul(hdtest::to_ref(dY[j].view()), hdtest::to_ref(Bf[j].view())), 1e-13,
                                   1e-13) == 0);
  }

  SUBCASE("accumulate adds") {
    folded.backward(L, CV(store), CV(X.view()), CV(dY_all.view()), U, dXV.view(), gA_f.view(),
                    std::span<const MatrixView<double>>(gBv), true);
    Ref twice_a = hdtest::to_ref(gA_stack.view()), twice_b = hdtest::to_ref(gB[1].view());
    for (auto& v : twice_a.v) v *= 2;
    for (auto& v : twice_b.v) v *= 2;
    CHECK(hdtest::count_violations(hdtest::to_ref(gA_f.view()), twice_a, 1e-13, 1e-13) == 0);
    CHECK(hdtest::count_violations(hdtest::to_ref(gB_f[1].view()), twice_b, 1e-13, 1e-13) == 0);
  }

  SUBCASE("wrong shapes are clear errors") {
    auto small = b.make_matrix(L.rows() - 1, L.cols());
    hdtest::check_throws_with<InvalidArgument>([&] { folded.forward(L, CV(small.view()), CV(X.view()), YU.view()); },
                                               {"FoldedLayout storage", "(19, 13)", "(18, 13)"});
    auto dY_bad = b.make_matrix(tokens, L.out_total() + 1);
    hdtest::check_throws_with<InvalidArgument>(
        [&] {
          folded.backward(L, CV(store), CV(X.view()), CV(dY_bad.view()), U, dXV.view(), gA_f.view(),
                          std::span<const MatrixView<double>>(gBv), false);
        },
        {"FoldedMutedLinears dY"});
    hdtest::check_throws_with<InvalidArgument>(
        [&] {
          folded.backward(L, CV(store), CV(X.view()), CV(dY_all.view()), U, dXV.view(), gA_f.view(),
                          std::span<const MatrixView<double>>(gBv).first(2), false);
        },
        {"expected 3 gB views, found 2"});
    hdtest::check_throws_with<InvalidArgument>([] { (void)FoldedLayout({}, 4, 2); }, {"at least one linear"});
  }
}

// Three linears of widths 3, 4, 6 over in = 7 that read one X (tokens = 5), stored stacked as the
// GPU model stores q|k|v: W_cat (13, 7) with ld 10, dY_cat (5, 13) with ld 15 (the padding 9s),
// B_diag (13, 3·r) block-diagonal; the members also as separate matrices (the references' inputs).
// Seeds: X, A_stack, then member j's W, B, dY from `members` + 10·j (+0, +1, +2).
struct StackedGroup {
  using M = typename EigenBackend<double>::matrix_type;
  static constexpr index_t tokens = 5, in = 7, r = 2, O = 13;
  const std::vector<index_t> outs = {3, 4, 6};
  M X, A_stack, Wbig, dYbig, B_diag;
  MatrixView<double> W_cat, dY_cat;
  std::vector<M> W, Bf, dY, dX, gB;
  StackedGroup(EigenBackend<double>& b, std::uint64_t seed_x, std::uint64_t seed_a, std::uint64_t members)
      : X(hdtest::random_matrix(b, tokens, in, seed_x)),
        A_stack(hdtest::random_matrix(b, 3 * r, in, seed_a)),
        Wbig(b.make_matrix(O, in + 3)),
        dYbig(b.make_matrix(tokens, O + 2)),
        B_diag(b.make_matrix(O, 3 * r)),
        W_cat(Wbig.view().data, O, in, in + 3),
        dY_cat(dYbig.view().data, tokens, O, O + 2) {
    b.fill(Wbig.view(), 9.0);
    b.fill(dYbig.view(), 9.0);
    b.fill(B_diag.view(), 0.0);
    index_t o = 0;
    for (int j = 0; j < 3; ++j) {
      const std::uint64_t sj = members + 10 * std::uint64_t(j);
      W.push_back(hdtest::random_matrix(b, outs[j], in, sj));
      Bf.push_back(hdtest::random_matrix(b, outs[j], r, sj + 1));
      dY.push_back(hdtest::random_matrix(b, tokens, outs[j], sj + 2));
      dX.push_back(b.make_matrix(tokens, in));
      gB.push_back(b.make_matrix(outs[j], r));
      b.copy(CV(W[j].view()), W_cat.row_block(o, outs[j]));
      b.copy(CV(dY[j].view()), dY_cat.col_block(o, outs[j]));
      b.copy(CV(Bf[j].view()), B_diag.view().block(o, j * r, outs[j], r));
      o += outs[j];
    }
  }
};

// MutedLinear::backward_stacked: three linears of different widths reading one X, their W as
// consecutive row blocks of one W_cat (ld > cols) and their dY as consecutive column blocks of one
// dY_cat (ld > Σ out): dX_sum = Σ_j dY_j W_j (against the plain products), gA_stack and the gB_j
// equal backward_shared() on separate matrices, up to the GEMMs' summation order.
TEST_CASE("MutedLinear::backward_stacked: stacked W rows and dY columns give backward_shared's gradients") {
  EigenBackend<double> b;
  StackedGroup g(b, 240, 270, 241);
  using M = StackedGroup::M;
  constexpr index_t tokens = StackedGroup::tokens, in = StackedGroup::in, r = StackedGroup::r, O = StackedGroup::O;
  const double alpha = 1.5;
  const std::vector<index_t>& outs = g.outs;
  auto& X = g.X;
  auto& A_stack = g.A_stack;
  auto& B_diag = g.B_diag;
  const MatrixView<double> W_cat = g.W_cat, dY_cat = g.dY_cat;
  std::vector<M>&W = g.W, &Bf = g.Bf, &dY = g.dY, &dX = g.dX, &gB = g.gB;
  // the reference gradients: backward_shared on separate matrices; dX: Σ_j dY_j W_j, plain products
  MutedLinear<EigenBackend<double>> layer(b, alpha);
  using SI = MutedLinear<EigenBackend<double>>::SharedInput<double>;
  std::vector<SI> lins;
  for (int j = 0; j < 3; ++j)
    lins.push_back({CV(W[j].view()), CV(Bf[j].view()), CV(dY[j].view()), dX[j].view(), gB[j].view()});
  auto gA_ref = b.make_matrix(3 * r, in);
  layer.backward_shared(CV(X.view()), CV(A_stack.view()), std::span<const SI>(lins), gA_ref.view(), false);
  Ref dX_ref = hdtest::matmul(hdtest::to_ref(dY[0].view()), hdtest::to_ref(W[0].view()));
  for (int j = 1; j < 3; ++j)
    dX_ref = hdtest::add(dX_ref, hdtest::matmul(hdtest::to_ref(dY[j].view()), hdtest::to_ref(W[j].view())), 1.0);

  auto dX_sum = b.make_matrix(tokens, in);
  b.fill(dX_sum.view(), 5.0);  // overwritten
  auto gA = b.make_matrix(3 * r, in);
  b.fill(gA.view(), 3.0);  // overwritten without accumulate
  std::vector<M> gB_s;
  std::vector<MatrixView<double>> gBv;
  for (int j = 0; j < 3; ++j) gB_s.push_back(b.make_matrix(outs[j], r));
  for (auto& g : gB_s) gBv.push_back(g.view());
  MutedLinear<EigenBackend<double>> stacked(b, alpha);
  stacked.backward_stacked(CV(X.view()), CV(W_cat), CV(A_stack.view()), CV(B_diag.view()), CV(dY_cat),
                           std::span<const index_t>(outs), dX_sum.view(), std::span<const MatrixView<double>>(gBv),
                           gA.view(), false);
  CHECK(hdtest::count_violations(hdtest::to_ref(dX_sum.view()), dX_ref, 1e-13, 1e-13) == 0);
  CHECK(hdtest::count_violations(hdtest::to_ref(gA.view()), hdtest::to_ref(gA_ref.view()), 1e-13, 1e-13) == 0);
  for (int j = 0; j < 3; ++j) {
    CAPTURE(j);
    CHECK(hdtest::count_violations(hdtest::to_ref(gB_s[j].view()), hdtest::to_ref(gB[j].view()), 1e-13, 1e-13) == 0);
  }

  SUBCASE("accumulate adds, accumulate_gA decides for gA alone") {
    stacked.backward_stacked(CV(X.view()), CV(W_cat), CV(A_stack.view()), CV(B_diag.view()), CV(dY_cat),
                             std::span<const index_t>(outs), dX_sum.view(), std::span<const MatrixView<double>>(gBv),
                             gA.view(), true, false);
    Ref twice_b = hdtest::to_ref(gB[2].view());
    for (auto& v : twice_b.v) v *= 2;
    CHECK(hdtest::count_violations(hdtest::to_ref(gB_s[2].view()), twice_b, 1e-13, 1e-13) == 0);
    CHECK(hdtest::count_violations(hdtest::to_ref(gA.view()), hdtest::to_ref(gA_ref.view()), 1e-13, 1e-13) == 0);
    CHECK(hdtest::count_violations(hdtest::to_ref(dX_sum.view()), dX_ref, 1e-13, 1e-13) == 0);
  }
  SUBCASE("wrong shapes are clear errors") {
    hdtest::check_throws_with<InvalidArgument>(
        [&] {
          stacked.backward_stacked(CV(X.view()), CV(W_cat).row_block(0, O - 1), CV(A_stack.view()), CV(B_diag.view()),
                                   CV(dY_cat), std::span<const index_t>(outs), dX_sum.view(),
                                   std::span<const MatrixView<double>>(gBv), gA.view(), false);
        },
        {"backward_stacked W_cat", "(13, 7)", "(12, 7)"});
    hdtest::check_throws_with<InvalidArgument>(
        [&] {
          stacked.backward_stacked(CV(X.view()), CV(W_cat), CV(A_stack.view()), CV(B_diag.view()), CV(dY_cat),
                                   std::span<const index_t>(outs), dX_sum.view(),
                                   std::span<const MatrixView<double>>(gBv).first(2), gA.view(), false);
        },
        {"3 widths, 2 gB"});
  }
}

// AdapterLinear::forward_stacked / backward_stacked: three LoRA linears of different widths reading
// one X, stored stacked (W_cat rows with ld > cols, Y_cat / dY_cat columns with ld > Σ out, B_diag
// block-diagonal): Y_j = X (W_j + s B_j A_j)ᵀ and dX_sum = Σ_j dX_j against plain products, gA and
// gB_j against backward_shared() on separate matrices, U kept by the forward and recomputed.
TEST_CASE("AdapterLinear::forward_stacked / backward_stacked: plain products and backward_shared's gradients") {
  EigenBackend<double> b;
  StackedGroup g(b, 340, 341, 350);
  using M = StackedGroup::M;
  using AL = AdapterLinear<EigenBackend<double>>;
  constexpr index_t tokens = StackedGroup::tokens, in = StackedGroup::in, r = StackedGroup::r, O = StackedGroup::O;
  const double s = 0.75;
  const std::vector<index_t>& outs = g.outs;
  auto& X = g.X;
  auto& A_stack = g.A_stack;
  auto& B_diag = g.B_diag;
  const MatrixView<double> W_cat = g.W_cat, dY_cat = g.dY_cat;
  std::vector<M>&W = g.W, &Bf = g.Bf, &dY = g.dY, &dX = g.dX, &gB = g.gB;
  auto Ybig = b.make_matrix(tokens, O + 2);
  b.fill(Ybig.view(), 9.0);
  const MatrixView<double> Y_cat(Ybig.view().data, tokens, O, O + 2);
  AL ref(b, s), stacked(b, s);
  auto keep = b.make_matrix(tokens, 3 * r);
  stacked.forward_stacked(CV(X.view()), CV(W_cat), CV(A_stack.view()), CV(B_diag.view()), Y_cat, keep.view());
  const Ref x = hdtest::to_ref(X.view());
  index_t o = 0;
  Ref dX_ref;
  for (int j = 0; j < 3; ++j) {
    CAPTURE(j);
    // Y_j = X Wᵀ + s (X Aᵀ) Bᵀ, plain products
    const Ref a = hdtest::to_ref(CV(A_stack.view()).row_block(j * r, r));
    Ref want = hdtest::matmul(x, hdtest::to_ref(W[j].view()), false, true);
    want = hdtest::add(want, hdtest::matmul(hdtest::matmul(x, a, false, true), hdtest::to_ref(Bf[j].view()), false, true),
                       s);
    CHECK(hdtest::count_violations(hdtest::to_ref(CV(Y_cat).col_block(o, outs[j])), want, 1e-13, 1e-13) == 0);
    // dX_j = dY_j W_j + s (dY_j B_j) A_j
    Ref dxj = hdtest::matmul(hdtest::to_ref(dY[j].view()), hdtest::to_ref(W[j].view()));
    dxj = hdtest::add(dxj, hdtest::matmul(hdtest::matmul(hdtest::to_ref(dY[j].view()), hdtest::to_ref(Bf[j].view())), a),
                      s);
    dX_ref = j == 0 ? dxj : hdtest::add(dX_ref, dxj, 1.0);
    o += outs[j];
  }
  // reference gradients: backward_shared on separate matrices
  std::vector<AL::SharedBackward<double>> lins;
  for (int j = 0; j < 3; ++j)
    lins.push_back({CV(W[j].view()), CV(Bf[j].view()), CV(dY[j].view()), dX[j].view(), gB[j].view()});
  auto gA_ref = b.make_matrix(3 * r, in);
  ref.backward_shared(CV(X.view()), CV(A_stack.view()), std::span<const AL::SharedBackward<double>>(lins),
                      gA_ref.view(), false);
  for (const bool kept : {true, false}) {
    CAPTURE(kept);
    auto dX_sum = b.make_matrix(tokens, in), gA = b.make_matrix(3 * r, in);
    b.fill(dX_sum.view(), 5.0);
    b.fill(gA.view(), 3.0);
    std::vector<M> gB_s;
    std::vector<MatrixView<double>> gBv;
    for (int j = 0; j < 3; ++j) gB_s.push_back(b.make_matrix(outs[j], r));
    for (auto& g : gB_s) gBv.push_back(g.view());
    stacked.backward_stacked(CV(X.view()), CV(W_cat), CV(A_stack.view()), CV(B_diag.view()), CV(dY_cat),
                             std::span<const index_t>(outs), dX_sum.view(), std::span<const MatrixView<double>>(gBv),
                             gA.view(), false, std::nullopt, kept ? CV(keep.view()) : CV{});
    CHECK(hdtest::count_violations(hdtest::to_ref(dX_sum.view()), dX_ref, 1e-13, 1e-13) == 0);
    CHECK(hdtest::count_violations(hdtest::to_ref(gA.view()), hdtest::to_ref(gA_ref.view()), 1e-13, 1e-13) == 0);
    for (int j = 0; j < 3; ++j) {
      CAPTURE(j);
      CHECK(hdtest::count_violations(hdtest::to_ref(gB_s[j].view()), hdtest::to_ref(gB[j].view()), 1e-13, 1e-13) == 0);
    }
  }
  hdtest::check_throws_with<InvalidArgument>(
      [&] {
        stacked.forward_stacked(CV(X.view()), CV(W_cat), CV(A_stack.view()), CV(B_diag.view()).row_block(0, O - 1),
                                Y_cat);
      },
      {"AdapterLinear stacked group", "B_diag (12, 6)"});
}
