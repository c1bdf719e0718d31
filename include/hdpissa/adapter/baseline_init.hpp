#pragma once
/// \file baseline_init.hpp
/// The baselines' initialisations (spec §7), as AdapterSets so the same updates can consume them:
///  - LoraInit: A Kaiming-uniform (PyTorch's kaiming_uniform_(a=√5): U(−1/√in, 1/√in)), B = 0.
///    Each group draws its own A (seed + g) unless `same_on_all_groups`.
///  - PissaInit: the top-r singular triplets in every group (identical), with
///    subtract_adapter() forming PiSSA's residual W_res = W − scale·B A.

#include <string_view>
#include <vector>

#include "hdpissa/adapter/adapter_set.hpp"
#include "hdpissa/adapter/orthogonal_adapter_init.hpp"
#include "hdpissa/adapter/svd.hpp"
#include "hdpissa/core/random.hpp"

namespace hdpissa {

/// LoRA: A ~ U(−1/√in, 1/√in), B = 0.
struct LoraInit {
  int groups = 1;
  index_t rank = 8;
  std::uint64_t seed = 0x10a4ULL;
  bool same_on_all_groups = true;  ///< data-parallel LoRA: one adapter replicated everywhere

  template <TensorBackend B>
  AdapterSet<B> operator()(B& b, index_t out, index_t in, std::string_view layer = "W") const {
    using S = typename B::scalar_type;
    check_adapter_fits(layer, out, in, 1, rank);
    auto set = make_adapter_set(b, out, in, groups, rank);
    const double bound = 1.0 / std::sqrt(double(in));
    std::vector<S> host(static_cast<std::size_t>(rank * in));
    for (int g = 0; g < groups; ++g) {
      const std::uint64_t s = same_on_all_groups ? seed : seed + std::uint64_t(g);
      for (std::size_t i = 0; i < host.size(); ++i) host[i] = S((2.0 * counter_uniform(s, i) - 1.0) * bound);
      b.upload(host.data(), set.A_of(g));
    }
    return set;
  }
};

/// PiSSA: top-r principal components, the same in every group.
template <class SvdPolicy = ExactSvd>
struct PissaInit {
  int groups = 1;
  index_t rank = 8;
  SvdPolicy svd{};

  template <TensorBackend B>
  AdapterSet<B> operator()(B& b, ConstMatrixView<typename B::scalar_type> W, std::string_view layer = "W") const {
    using CV = ConstMatrixView<typename B::scalar_type>;
    check_adapter_fits(layer, W.rows, W.cols, 1, rank);
    SvdResult<B> r = svd.top_k(b, W, rank);
    AdapterSet<B> one = OrthogonalAdapterInit<SvdPolicy>::factors_from_svd(b, r, 1, rank);
    if (groups == 1) return one;
    auto set = make_adapter_set(b, W.rows, W.cols, groups, rank);
    for (int g = 0; g < groups; ++g) {
      b.copy(CV(one.A.view()), set.A_of(g));
      b.copy(CV(one.B.view()), set.B_of(g));
    }
    return set;
  }
};

/// W ← W − scale · B_g A_g (PiSSA's residual; the adapter then carries the principal part).
template <TensorBackend B>
void subtract_adapter(B& b, MatrixView<typename B::scalar_type> W, const AdapterSet<B>& set, int group,
                      double scale = 1.0) {
  using S = typename B::scalar_type;
  require_shape(W, set.out(), set.in(), "subtract_adapter W");
  b.gemm(Op::N, Op::N, S(-scale), set.B_of(group), set.A_of(group), S(1), W);
}

}  // namespace hdpissa
