// Example 00 — rank matters.
//
// A linear layer W0 (a "pretrained" weight with a decaying spectrum) must learn a full-rank update
// Δ: the target is y = x (W0 + Δ)ᵀ. Four methods fit it from the same data stream, with the same
// per-group adapter rank r, the same optimizer (Adam) and the same number of steps:
//   LoRA      — one rank-r adapter, data-parallel over K groups (gradients averaged)
//   PiSSA     — the top-r principal adapter, W_res = W0 − B A, data-parallel
//   HD-PiSSA  — K = 8 groups (virtual, on this one process), each with its own slice of the top
//               K·r singular components, muted forward, Direct Weight Update
//   Full FT   — W itself trainable, data-parallel
// It prints the final relative error ‖W_eff − (W0 + Δ)‖_F / ‖Δ‖_F and the rank of the learned
// update of each method side by side, and checks the rank bounds the method implies
// (LoRA ≤ r, PiSSA ≤ 2r, HD-PiSSA beyond 2r): exit code 1 if any is violated.
#include <hdpissa/hdpissa.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

using namespace hdpissa;
using Backend = EigenBackend<float>;
using Mat = Backend::Matrix;
using CV = ConstMatrixView<float>;

namespace {

struct Options {
  index_t dim = 64;      // W is (dim, dim)
  index_t rank = 4;      // r per group
  int groups = 8;        // K
  index_t tokens = 32;   // per group per step
  long steps = 300;
  double lr = 1e-2;
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "%s\nusage: hdpissa_example_rank_matters [--steps N] [--rank R] [--groups K] [--dim D] [--lr LR]\n",
               why);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    auto need = [&](const char* flag) -> const char* {
      if (i + 1 >= argc) usage((std::string("missing value after ") + flag).c_str());
      return argv[++i];
    };
    auto to_long = [&](const char* flag, const char* s) {
      char* end = nullptr;
      const long v = std::strtol(s, &end, 10);
      if (!*s || *end || v <= 0) usage((std::string(flag) + ": expected a positive integer, found '" + s + "'").c_str());
      return v;
    };
    if (!std::strcmp(argv[i], "--steps")) o.steps = to_long("--steps", need("--steps"));
    else if (!std::strcmp(argv[i], "--rank")) o.rank = to_long("--rank", need("--rank"));
    else if (!std::strcmp(argv[i], "--groups")) o.groups = int(to_long("--groups", need("--groups")));
    else if (!std::strcmp(argv[i], "--dim")) o.dim = to_long("--dim", need("--dim"));
    else if (!std::strcmp(argv[i], "--lr")) o.lr = std::atof(need("--lr"));
    else if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) usage("Fits a full-rank update with four methods.");
    else usage((std::string("unknown flag '") + argv[i] + "'").c_str());
  }
  return o;
}

Mat spectrum_matrix(Backend& b, index_t n, double decay, double scale, std::uint64_t seed) {
  auto U = b.make_matrix(n, n), V = b.make_matrix(n, n), W = b.make_matrix(n, n);
  fill_gaussian(b, U.view(), seed);
  fill_gaussian(b, V.view(), seed + 1);
  b.orthonormalize(U.view());
  b.orthonormalize(V.view());
  auto s = b.make_matrix(1, n);
  for (index_t i = 0; i < n; ++i) s.view()(0, i) = float(scale * std::pow(decay, double(i)));
  b.scale_cols(U.view(), CV(s.view()));
  b.gemm(Op::N, Op::T, 1.f, CV(U.view()), CV(V.view()), 0.f, W.view());
  return W;
}

/// Group g's batch at step t: X (tokens, dim) and the target Y* = X W*ᵀ.
struct Data {
  Backend* b;
  const Mat* target;
  Mat X, Y;
  void draw(long step, int group, index_t tokens) {
    const index_t n = target->cols();
    if (X.rows() != tokens) X = b->make_matrix(tokens, n), Y = b->make_matrix(tokens, n);
    fill_gaussian(*b, X.view(), 0x9000000ull + std::uint64_t(step) * 1024u + std::uint64_t(group));
    b->gemm(Op::N, Op::T, 1.f, CV(X.view()), CV(target->view()), 0.f, Y.view());
  }
};

/// dY = (Y − Y*) / tokens for the loss ½‖Y − Y*‖² / tokens; returns the loss.
double residual(Backend& b, MatrixView<float> Y, CV target) {
  b.axpy(-1.f, target, Y);
  const double loss = 0.5 * b.sum_squares(CV(Y)) / double(Y.rows);
  b.scale(Y, 1.f / float(Y.rows));
  return loss;
}

struct Result {
  std::string method;
  double rel_error = 0, last_loss = 0, seconds = 0;
  RankMetrics rank;
};

Result measure(Backend& b, const std::string& name, CV W_eff, const Mat& W0, const Mat& target, double loss, double secs) {
  const index_t n = W0.rows();
  auto dW = b.make_matrix(n, n), err = b.make_matrix(n, n), delta = b.make_matrix(n, n);
  b.copy(W_eff, dW.view());
  b.axpy(-1.f, CV(W0.view()), dW.view());
  b.copy(W_eff, err.view());
  b.axpy(-1.f, CV(target.view()), err.view());
  b.copy(CV(target.view()), delta.view());
  b.axpy(-1.f, CV(W0.view()), delta.view());
  Result r{name, std::sqrt(b.sum_squares(CV(err.view())) / b.sum_squares(CV(delta.view()))), loss, secs, {}};
  r.rank = rank_metrics(singular_values(b, CV(dW.view())), 1e-3);
  return r;
}

}  // namespace

int main(int argc, char** argv) try {
  const Options o = parse(argc, argv);
  Backend b;
  const index_t n = o.dim, r = o.rank;
  const int K = o.groups;
  check_adapter_fits("example W", n, n, K, r);
  const Mat W0 = spectrum_matrix(b, n, 0.93, 4.0, 1);
  Mat target = spectrum_matrix(b, n, 0.985, 0.4, 7);  // Δ: full rank, slowly decaying
  b.axpy(1.f, CV(W0.view()), target.view());
  std::printf("W: (%ld, %ld); per-group rank r = %ld; K = %d groups; %ld steps of %ld tokens per group; Adam lr %.3g\n",
              long(n), long(n), long(r), K, o.steps, long(o.tokens), o.lr);

  SingleProcess single;
  VirtualRanks<SingleProcess> comm(single, K);
  Data data{&b, &target, {}, {}};
  std::vector<Result> results;
  auto Y = b.make_matrix(o.tokens, n);
  const auto clock = [] { return std::chrono::steady_clock::now(); };

  // --- LoRA and PiSSA: active adapters, data-parallel over the K groups.
  for (const std::string method : {"LoRA", "PiSSA"}) {
    const auto t0 = clock();
    Mat W = b.make_matrix(n, n);
    b.copy(CV(W0.view()), W.view());
    AdapterSet<Backend> ad = method == "LoRA" ? LoraInit{1, r}(b, n, n) : PissaInit<>{1, r}(b, CV(W.view()));
    if (method == "PiSSA") subtract_adapter(b, W.view(), ad, 0);
    DataParallelUpdate<Backend, Adam, VirtualRanks<SingleProcess>> dp(b, comm, Adam{});
    dp.add_param("A", ad.A.view());
    dp.add_param("B", ad.B.view());
    AdapterLinear<Backend> layer(b, 1.0);
    double loss = 0;
    for (long s = 0; s < o.steps; ++s) {
      dp.zero_grad();
      loss = 0;
      for (int g = 0; g < K; ++g) {
        data.draw(s, g, o.tokens);
        layer.forward(CV(W.view()), CV(ad.A.view()), CV(ad.B.view()), CV(data.X.view()), Y.view());
        loss += residual(b, Y.view(), CV(data.Y.view())) / K;
        layer.backward(CV(W.view()), CV(ad.A.view()), CV(ad.B.view()), CV(data.X.view()), CV(Y.view()),
                       MatrixView<float>{}, dp.grad(0, g), dp.grad(1, g));
      }
      dp.step(o.lr);
    }
    Mat Weff = b.make_matrix(n, n);
    b.copy(CV(W.view()), Weff.view());
    b.gemm(Op::N, Op::N, 1.f, CV(ad.B.view()), CV(ad.A.view()), 1.f, Weff.view());
    results.push_back(measure(b, method, CV(Weff.view()), W0, target, loss,
                              std::chrono::duration<double>(clock() - t0).count()));
  }

  // --- HD-PiSSA: K orthogonal slices, muted forward, Direct Weight Update.
  {
    const auto t0 = clock();
    Mat W = b.make_matrix(n, n);
    b.copy(CV(W0.view()), W.view());
    auto ad = OrthogonalAdapterInit<ExactSvd>(K, r)(b, CV(W.view()), "W");
    DirectWeightUpdate<Backend, Adam, VirtualRanks<SingleProcess>> dwu(b, comm, Adam{});
    dwu.add_layer("W", W.view(), ad);
    MutedLinear<Backend> layer(b, 1.0);
    double loss = 0;
    for (long s = 0; s < o.steps; ++s) {
      dwu.zero_grad();
      loss = 0;
      for (int g = 0; g < K; ++g) {
        data.draw(s, g, o.tokens);
        layer.forward(CV(W.view()), dwu.A(0, g), dwu.Bf(0, g), CV(data.X.view()), Y.view());
        loss += residual(b, Y.view(), CV(data.Y.view())) / K;
        layer.backward(CV(W.view()), dwu.A(0, g), dwu.Bf(0, g), CV(data.X.view()), CV(Y.view()), MatrixView<float>{},
                       dwu.grad_A(0, g), dwu.grad_B(0, g));
      }
      dwu.step(o.lr);
    }
    results.push_back(measure(b, "HD-PiSSA", CV(W.view()), W0, target, loss,
                              std::chrono::duration<double>(clock() - t0).count()));
  }

  // --- Full fine-tuning, data-parallel.
  {
    const auto t0 = clock();
    Mat W = b.make_matrix(n, n);
    b.copy(CV(W0.view()), W.view());
    DataParallelUpdate<Backend, Adam, VirtualRanks<SingleProcess>> dp(b, comm, Adam{});
    dp.add_param("W", W.view());
    DenseLinear<Backend> layer(b);
    double loss = 0;
    for (long s = 0; s < o.steps; ++s) {
      dp.zero_grad();
      loss = 0;
      for (int g = 0; g < K; ++g) {
        data.draw(s, g, o.tokens);
        layer.forward(CV(W.view()), CV(data.X.view()), Y.view());
        loss += residual(b, Y.view(), CV(data.Y.view())) / K;
        layer.backward(CV(W.view()), CV(data.X.view()), CV(Y.view()), MatrixView<float>{}, dp.grad(0, g));
      }
      dp.step(o.lr);
    }
    results.push_back(measure(b, "Full FT", CV(W.view()), W0, target, loss,
                              std::chrono::duration<double>(clock() - t0).count()));
  }

  std::printf("\n%-10s %12s %12s %14s %12s %8s\n", "method", "final loss", "rel. error", "rank(ΔW)@1e-3",
              "entropy rank", "time s");
  for (const auto& x : results)
    std::printf("%-10s %12.5f %12.4f %14ld %12.1f %8.2f\n", x.method.c_str(), x.last_loss, x.rel_error,
                x.rank.numerical_rank, x.rank.entropy_rank, x.seconds);
  std::printf("\nrank bounds: LoRA <= r = %ld, PiSSA <= 2r = %ld, HD-PiSSA per step <= 2Kr = %ld (accumulates beyond)\n",
              long(r), long(2 * r), long(2 * K * r));

  bool ok = results[0].rank.numerical_rank <= r && results[1].rank.numerical_rank <= 2 * r &&
            results[2].rank.numerical_rank > 2 * r && results[2].rel_error < results[0].rel_error &&
            results[2].rel_error < results[1].rel_error;
  if (!ok) std::printf("CHECK FAILED: the rank bounds / ordering above do not hold\n");
  return ok ? 0 : 1;
} catch (const hdpissa::Error& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
