// Packaging smoke test: one HD-PiSSA step through the public umbrella header. Exits non-zero if
// the update is not what the method prescribes (W changes; the factors stay orthogonal).
#include <hdpissa/hdpissa.hpp>

#include <cstdio>

int main() {
  using namespace hdpissa;
  EigenBackend<double> b;
  auto W = b.make_matrix(12, 10);
  fill_gaussian(b, W.view(), 42);
  const double before = b.checksum(ConstMatrixView<double>(W.view()));
  SingleProcess single;
  VirtualRanks<SingleProcess> comm(single, 2);
  auto set = OrthogonalAdapterInit<RandomizedSvd>(2, 2)(b, ConstMatrixView<double>(W.view()), "w");
  DirectWeightUpdate<EigenBackend<double>, Adam, VirtualRanks<SingleProcess>> dwu(b, comm);
  dwu.add_layer("w", W.view(), set);
  for (int g = 0; g < 2; ++g) b.fill(dwu.grad_A(0, g), 0.1);
  dwu.step(1e-2);
  auto cross = b.make_matrix(2, 2);
  b.gemm(Op::N, Op::T, 1.0, set.A_of(0), set.A_of(1), 0.0, cross.view());
  const bool orthogonal = b.sum_squares(ConstMatrixView<double>(cross.view())) < 1e-20;
  const bool changed = b.checksum(ConstMatrixView<double>(W.view())) != before;
  std::printf("hdpissa consumer: orthogonal=%d changed=%d\n", orthogonal, changed);
  return orthogonal && changed ? 0 : 1;
}
