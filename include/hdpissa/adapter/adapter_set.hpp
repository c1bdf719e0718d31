#pragma once
/// \file adapter_set.hpp
/// AdapterSet: the K groups' adapter factors of one layer, stacked. Group g owns rows
/// [g·r, (g+1)·r) of A (K·r, in) and columns [g·r, (g+1)·r) of B (out, K·r), so B_g A_g is its
/// rank-r term. The common currency between initialisers (orthogonal, PiSSA, LoRA) and updates.

#include "hdpissa/core/concepts.hpp"

namespace hdpissa {

/// Stacked adapter factors of K groups for one (out, in) layer.
template <TensorBackend Backend>
struct AdapterSet {
  using scalar_type = typename Backend::scalar_type;
  typename Backend::matrix_type A;  // (K·r, in)
  typename Backend::matrix_type B;  // (out, K·r)
  int groups = 0;                   // K
  index_t rank = 0;                 // r

  index_t in() const { return A.cols(); }
  index_t out() const { return B.rows(); }
  /// Group g's A_g, shape (r, in).
  MatrixView<scalar_type> A_of(int g) {
    HDPISSA_ASSERT(g >= 0 && g < groups, "group out of range");
    return A.view().row_block(g * rank, rank);
  }
  /// Group g's B_g, shape (out, r); strided (ld = K·r).
  MatrixView<scalar_type> B_of(int g) {
    HDPISSA_ASSERT(g >= 0 && g < groups, "group out of range");
    return B.view().col_block(g * rank, rank);
  }
  ConstMatrixView<scalar_type> A_of(int g) const { return const_cast<AdapterSet*>(this)->A_of(g); }
  ConstMatrixView<scalar_type> B_of(int g) const { return const_cast<AdapterSet*>(this)->B_of(g); }
};

/// One group's adapter of one layer as a layer consumes it: the factors A (r, in), B (out, r) and
/// the gradient buffers of the same shapes. Views only: valid while the owner (e.g. a
/// DirectWeightUpdate, from adapter(layer, local_group)) lives and adds no layers.
template <class S>
struct AdapterHandle {
  ConstMatrixView<S> A;   // (r, in)
  ConstMatrixView<S> B;   // (out, r)
  MatrixView<S> grad_A;   // (r, in)
  MatrixView<S> grad_B;   // (out, r)
};

/// Allocates a zero AdapterSet for K groups of rank r on an (out, in) layer.
template <TensorBackend Backend>
AdapterSet<Backend> make_adapter_set(Backend& b, index_t out, index_t in, int groups, index_t rank) {
  HDPISSA_REQUIRE(groups >= 1 && rank >= 1, "adapter set: expected K >= 1 and r >= 1, found K = ",
                  groups, ", r = ", rank);
  return AdapterSet<Backend>{b.make_matrix(groups * rank, in), b.make_matrix(out, groups * rank), groups,
                             rank};
}

}  // namespace hdpissa
