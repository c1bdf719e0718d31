#pragma once
// The small HD-PiSSA training run shared by the multi-process tests (tests/mpi/test_mpi_hdpissa.cpp,
// tests/launch/launch_worker.cpp), callable on any host communicator: OrthogonalAdapterInit through
// init_adapters_distributed, MutedLinear gradients on per-group data (a pure function of group,
// layer and step), DirectWeightUpdate with Adam on EigenBackend<float>, verify_replicas() every
// step. Returns every layer's final W, so runs on different communicators compare bit for bit.

#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "hdpissa/hdpissa.hpp"

namespace hdpissa::testing {

using Backend = EigenBackend<float>;
using CV = ConstMatrixView<float>;

struct Problem {
  std::vector<std::pair<index_t, index_t>> shapes{{24, 16}, {16, 24}, {20, 20}, {12, 28}, {28, 12}};  // (out, in)
  index_t r = 2;
  index_t tokens = 10;
  int steps = 4;
  double lr = 1e-2;
};

/// Deterministic (out, in) matrix: element i of counter stream `seed`, scaled.
inline std::vector<float> det_matrix(std::uint64_t seed, index_t rows, index_t cols, double scale) {
  std::vector<float> m(std::size_t(rows * cols));
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = float(scale * counter_normal(seed, i));
  return m;
}

/// Initial weights of every layer (identical on every rank: a pure function of the layer index).
inline std::vector<Backend::Matrix> initial_weights(Backend& b, const Problem& pb) {
  std::vector<Backend::Matrix> W;
  for (std::size_t l = 0; l < pb.shapes.size(); ++l) {
    auto [out, in] = pb.shapes[l];
    W.push_back(b.make_matrix(out, in));
    auto h = det_matrix(1000 + l, out, in, 1.0 / std::sqrt(double(in)));
    b.upload(h.data(), W.back().view());
  }
  return W;
}

/// Runs the whole training on communicator `comm` with K = comm.groups() groups; returns every
/// layer's final W (host copies). Group g's data depends only on (g, layer, step).
template <Communicator C>
std::vector<std::vector<float>> train(C& comm, const Problem& pb, bool verify = true) {
  Backend b;
  const int K = comm.groups();
  auto W = initial_weights(b, pb);
  std::vector<LayerRef<Backend>> refs;
  for (std::size_t l = 0; l < W.size(); ++l) refs.push_back({"layer" + std::to_string(l), CV(W[l].view())});
  auto sets = init_adapters_distributed(b, comm, OrthogonalAdapterInit<>(K, pb.r), refs, K, pb.r);
  DirectWeightUpdate<Backend, Adam, C> dwu(b, comm);
  for (std::size_t l = 0; l < W.size(); ++l) dwu.add_layer(refs[l].name, W[l].view(), sets[l]);
  MutedLinear<Backend> lin(b);
  for (int step = 0; step < pb.steps; ++step) {
    dwu.zero_grad();
    for (std::size_t l = 0; l < W.size(); ++l) {
      auto [out, in] = pb.shapes[l];
      auto X = b.make_matrix(pb.tokens, in), T = b.make_matrix(pb.tokens, out), Y = b.make_matrix(pb.tokens, out);
      for (int lg = 0; lg < comm.local_groups(); ++lg) {
        const int g = comm.first_group() + lg;
        const std::uint64_t seed = 7919u * std::uint64_t(g) + 104729u * l + 31u * std::uint64_t(step);
        auto hx = det_matrix(seed, pb.tokens, in, 1.0);
        auto ht = det_matrix(seed + 1, pb.tokens, out, 1.0);
        b.upload(hx.data(), X.view());
        b.upload(ht.data(), T.view());
        // Loss ½‖X Wᵀ − T‖² / tokens on group g's data; dY = (Y − T) / tokens.
        lin.forward(CV(W[l].view()), dwu.A(l, g), dwu.Bf(l, g), CV(X.view()), Y.view());
        b.axpy(-1.f, CV(T.view()), Y.view());
        b.scale(Y.view(), 1.f / float(pb.tokens));
        lin.backward(CV(W[l].view()), dwu.A(l, g), dwu.Bf(l, g), CV(X.view()), CV(Y.view()), MatrixView<float>{},
                     dwu.grad_A(l, lg), dwu.grad_B(l, lg), false);
      }
    }
    dwu.step(pb.lr);
    if (verify) dwu.verify_replicas();
  }
  (void)K;
  std::vector<std::vector<float>> result;
  for (auto& w : W) result.emplace_back(w.data(), w.data() + w.view().size());
  return result;
}

}  // namespace hdpissa::testing
