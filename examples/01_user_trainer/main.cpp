// Example 01: a user's trainer (the README's "Using the library"). A student W starts at W0 and
// learns the teacher W0 + D (D full rank) by HD-PiSSA: K = 8 virtual groups of rank r = 8 (K r = 64
// slices cover all of W's singular directions). Passes if the loss falls 1000x and ends below the
// floor of any rank-r LoRA (the energy of D beyond its top r components: 1/2 sum_{i>=r} s_i(D)^2).
#include <hdpissa/hdpissa.hpp>
#include <cmath>
#include <cstdio>
using namespace hdpissa;

int main() {
  const index_t n = 64, r = 8, tokens = 32;
  const int K = 8, steps = 200;
  EigenBackend<float> b;                     // or CudaBackend<float> (hdpissa/cuda.hpp)
  SingleProcess one;
  VirtualRanks<SingleProcess> comm(one, K);  // K groups on one worker (or MpiCommunicator, NcclCommunicator)
  auto W = b.make_matrix(n, n), D = b.make_matrix(n, n), teacher = b.make_matrix(n, n);
  fill_gaussian(b, W.view(), 1), b.scale(W.view(), 1.f / std::sqrt(float(n)));
  fill_gaussian(b, D.view(), 2), b.scale(D.view(), 0.2f / std::sqrt(float(n)));
  b.copy(W, teacher.view()), b.axpy(1.f, D, teacher.view());
  auto X = b.make_matrix(tokens, n), Y = b.make_matrix(tokens, n), T = b.make_matrix(tokens, n);

  auto factors = OrthogonalAdapterInit<RandomizedSvd>(comm.groups(), r)(b, W, "layer");
  DirectWeightUpdate<EigenBackend<float>, Adam, decltype(comm)> dwu(b, comm, Adam{});
  const auto id = dwu.add_layer("layer", W.view(), factors);
  MutedLinear<EigenBackend<float>> layer(b, peft_scaling(/*alpha=*/r, r));
  const WarmupCosineSchedule schedule{/*peak=*/2e-2, /*warmup_steps=*/10, steps};
  double first = 0, last = 0;
  for (int step = 0; step < steps; ++step) {
    last = 0;
    for (int g = 0; g < comm.local_groups(); ++g) {  // each group: its own micro-batch
      fill_gaussian(b, X.view(), 100 + step * K + g);
      b.gemm(Op::N, Op::T, 1.f, X, teacher, 0.f, T.view());
      layer.forward(W, dwu.adapter(id, g), X, Y.view());  // Y = X W^T exactly: the adapter is muted
      b.axpy(-1.f, T, Y.view());                          // loss 1/2 |Y - T|^2 / tokens
      last += 0.5 * b.sum_squares(Y) / tokens / K;
      b.scale(Y.view(), 1.f / tokens);                    // dY
      layer.backward(W, dwu.adapter(id, g), X, Y, /*dX=*/{});
    }
    dwu.step(schedule(step));  // every group's Adam step -> one all-gather -> W -= [dB|B][A-dA; dA]
    dwu.zero_grad();
    if (step == 0) first = last;
  }
  double floor = 0;  // the best rank-r LoRA's loss: 1/2 the energy of D beyond its top r components
  const auto s = singular_values(b, D);
  for (std::size_t i = r; i < s.size(); ++i) floor += 0.5 * s[i] * s[i];
  std::printf("loss %.4f -> %.2e (%.0fx); rank-%ld LoRA floor %.4f\n", first, last, first / last, long(r), floor);
  return first / last >= 1000 && last < floor ? 0 : 1;
}
