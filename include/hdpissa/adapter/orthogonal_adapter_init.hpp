#pragma once
/// \file orthogonal_adapter_init.hpp
/// OrthogonalAdapterInit (spec §1): group i of K takes singular components [i·r, (i+1)·r) of W:
///   A_i = diag(√S_i) V_iᵀ (r, in),  B_i = U_i diag(√S_i) (out, r),  so B_i A_i = U_i S_i V_iᵀ.
/// W is not modified (unlike PiSSA). The K adapters are mutually orthogonal and Σ_i B_i A_i is the
/// best rank-K·r approximation of W. The SVD policy (ExactSvd by default — the reference; or
/// RandomizedSvd — the fast path) is a template parameter.

#include <string>
#include <string_view>

#include "hdpissa/adapter/adapter_set.hpp"
#include "hdpissa/adapter/svd.hpp"

namespace hdpissa {

/// Throws InvalidArgument naming the layer, its shape, K and r unless K·r ≤ min(out, in).
inline void check_adapter_fits(std::string_view layer, index_t out, index_t in, int groups, index_t rank) {
  HDPISSA_REQUIRE(groups >= 1 && rank >= 1, "layer '", layer, "': expected K >= 1 and r >= 1, found K = ",
                  groups, ", r = ", rank);
  const index_t kk = std::min(out, in);
  HDPISSA_REQUIRE(index_t(groups) * rank <= kk, "layer '", layer, "' with shape (out, in) = ",
                  shape_str(out, in), ": K·r = ", groups, "·", rank, " = ", index_t(groups) * rank,
                  " exceeds min(out, in) = ", kk, "; choose K·r <= ", kk);
}

/// Builds K mutually orthogonal rank-r adapters from W's top K·r singular triplets.
template <class SvdPolicy = ExactSvd>
class OrthogonalAdapterInit {
 public:
  OrthogonalAdapterInit(int groups, index_t rank, SvdPolicy svd = {})
      : groups_(groups), rank_(rank), svd_(svd) {
    HDPISSA_REQUIRE(groups >= 1 && rank >= 1, "OrthogonalAdapterInit: expected K >= 1 and r >= 1, found K = ",
                    groups, ", r = ", rank);
  }
  int groups() const { return groups_; }
  index_t rank() const { return rank_; }
  const SvdPolicy& svd() const { return svd_; }

  /// Factors for every group; `layer` names W in error messages.
  template <TensorBackend B>
  AdapterSet<B> operator()(B& b, ConstMatrixView<typename B::scalar_type> W, std::string_view layer = "W") const {
    check_adapter_fits(layer, W.rows, W.cols, groups_, rank_);
    const index_t k = index_t(groups_) * rank_;
    SvdResult<B> svd = svd_.top_k(b, W, k);
    return factors_from_svd(b, svd, groups_, rank_);
  }

  /// A = diag(√S) Vt, B = U diag(√S) from a top-(K·r) SVD.
  template <TensorBackend B>
  static AdapterSet<B> factors_from_svd(B& b, SvdResult<B>& svd, int groups, index_t rank) {
    using CV = ConstMatrixView<typename B::scalar_type>;
    AdapterSet<B> set{b.make_matrix(svd.Vt.rows(), svd.Vt.cols()), b.make_matrix(svd.U.rows(), svd.U.cols()),
                      groups, rank};
    auto root = b.make_matrix(1, svd.S.cols());
    b.copy(CV(svd.S.view()), root.view());
    b.sqrt(root.view());
    b.copy(CV(svd.Vt.view()), set.A.view());
    b.scale_rows(set.A.view(), CV(root.view()));
    b.copy(CV(svd.U.view()), set.B.view());
    b.scale_cols(set.B.view(), CV(root.view()));
    return set;
  }

 private:
  int groups_;
  index_t rank_;
  SvdPolicy svd_;
};

}  // namespace hdpissa
