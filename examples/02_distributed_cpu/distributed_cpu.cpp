// Example 02: HD-PiSSA across CPU processes with MPI.
//
//   mpirun -np 4 ./hdpissa_example_distributed [--groups-per-process V] [--steps N] [--lr X]
//
// A stack of linear layers W_l (out, in) is fine-tuned towards a synthetic teacher
// W*_l = W_l + (a full-rank perturbation). Each of the K = P·V adapter groups sees its own data
// shard (inputs X_g, targets X_g W*ᵀ) and computes its MutedLinear adapter gradients; one
// DirectWeightUpdate step all-gathers every group's (dA, dB) once and applies the same update on
// every process. Rank 0 prints the loss averaged over groups at each step; replicas of W are
// verified every few steps; the run fails unless the loss drops by the expected factor.
// Every process exits with a clear message if any one fails (run_or_abort → MPI_Abort).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "hdpissa/mpi.hpp"

using namespace hdpissa;
using Backend = EigenBackend<float>;
using CV = ConstMatrixView<float>;

namespace {

struct Args {
  int groups_per_process = 1;
  int steps = 60;
  double lr = 5e-3;
  index_t rank = 8;
  index_t tokens = 64;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto next = [&]() -> const char* {
      HDPISSA_REQUIRE(i + 1 < argc, "option ", k, " expects a value");
      return argv[++i];
    };
    if (k == "--groups-per-process") a.groups_per_process = std::atoi(next());
    else if (k == "--steps") a.steps = std::atoi(next());
    else if (k == "--lr") a.lr = std::atof(next());
    else if (k == "--rank") a.rank = std::atol(next());
    else HDPISSA_REQUIRE(false, "unknown option '", k, "'; expected --groups-per-process, --steps, --lr, --rank");
  }
  return a;
}

void fill(std::vector<float>& v, std::uint64_t seed, double scale) {
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = float(scale * counter_normal(seed, i));
}

}  // namespace

int main(int argc, char** argv) {
  boost::mpi::environment env(argc, argv);
  return run_or_abort([&] {
    const Args args = parse(argc, argv);
    VirtualRanks<MpiCommunicator> comm(MpiCommunicator(), args.groups_per_process);
    const int K = comm.groups();
    const bool root = comm.rank() == 0;
    const std::vector<std::pair<index_t, index_t>> shapes{{64, 48}, {48, 64}, {64, 64}};  // (out, in)

    Backend b;
    std::vector<Backend::Matrix> W, Wt;  // current weights, teacher
    std::vector<LayerRef<Backend>> refs;
    for (std::size_t l = 0; l < shapes.size(); ++l) {
      auto [out, in] = shapes[l];
      std::vector<float> w(std::size_t(out * in)), d(w.size());
      fill(w, 100 + l, 1.0 / std::sqrt(double(in)));
      fill(d, 200 + l, 0.2 / std::sqrt(double(in)));  // full-rank: beyond any single rank-r adapter
      for (std::size_t i = 0; i < w.size(); ++i) d[i] += w[i];
      W.push_back(b.make_matrix(out, in));
      Wt.push_back(b.make_matrix(out, in));
      b.upload(w.data(), W.back().view());
      b.upload(d.data(), Wt.back().view());
    }
    for (std::size_t l = 0; l < W.size(); ++l) refs.push_back({"layer" + std::to_string(l), CV(W[l].view())});

    // Layer l's SVD on process l mod P, broadcast: every process holds bit-identical factors.
    auto sets = init_adapters_distributed(b, comm, OrthogonalAdapterInit<>(K, args.rank), refs, K, args.rank);
    DirectWeightUpdate<Backend, Adam, VirtualRanks<MpiCommunicator>> dwu(b, comm);
    for (std::size_t l = 0; l < W.size(); ++l) dwu.add_layer(refs[l].name, W[l].view(), sets[l]);
    MutedLinear<Backend> lin(b);

    if (root)
      std::printf("HD-PiSSA over %d MPI processes x %d groups = K %d, r %ld, %zu layers; %zu bytes per process per step\n",
                  comm.size(), args.groups_per_process, K, long(args.rank), W.size(), dwu.bytes_sent_per_step());
    double first = 0, last = 0;
    for (int step = 0; step < args.steps; ++step) {
      dwu.zero_grad();
      double loss = 0;  // Σ over local groups and layers
      for (std::size_t l = 0; l < W.size(); ++l) {
        auto [out, in] = shapes[l];
        auto X = b.make_matrix(args.tokens, in), T = b.make_matrix(args.tokens, out), Y = b.make_matrix(args.tokens, out);
        std::vector<float> hx(std::size_t(args.tokens * in));
        for (int lg = 0; lg < comm.local_groups(); ++lg) {
          const int g = comm.first_group() + lg;
          fill(hx, 1000003u * std::uint64_t(g) + 7919u * l + std::uint64_t(step), 1.0);  // group g's shard
          b.upload(hx.data(), X.view());
          b.gemm(Op::N, Op::T, 1.f, CV(X.view()), CV(Wt[l].view()), 0.f, T.view());  // targets X W*ᵀ
          lin.forward(CV(W[l].view()), dwu.A(l, g), dwu.Bf(l, g), CV(X.view()), Y.view());
          b.axpy(-1.f, CV(T.view()), Y.view());                                  // residual
          loss += 0.5 * b.sum_squares(CV(Y.view())) / double(args.tokens);
          b.scale(Y.view(), 1.f / float(args.tokens));                           // dL/dY
          lin.backward(CV(W[l].view()), dwu.A(l, g), dwu.Bf(l, g), CV(X.view()), CV(Y.view()),
                       MatrixView<float>{}, dwu.grad_A(l, lg), dwu.grad_B(l, lg), false);
        }
      }
      comm.all_reduce_sum(&loss, 1);
      loss /= K;
      dwu.step(args.lr);
      if (step % 10 == 9 || step + 1 == args.steps) dwu.verify_replicas();  // CommError on every rank if W diverged
      if (step == 0) first = loss;
      last = loss;
      if (root) std::printf("step %3d  loss %.6f\n", step + 1, loss);
    }
    dwu.verify_replicas();
    const bool ok = last < 0.5 * first;
    if (root)
      std::printf("replicas verified (bit-identical W on all %d processes); loss %.6f -> %.6f: %s\n", comm.size(),
                  first, last, ok ? "OK" : "FAILED (expected at least a 2x drop)");
    return ok ? 0 : 1;
  });
}
