#pragma once
/// \file dwu_kernels.hpp
/// The Direct Weight Update's kernel trait, a second concept next to TensorBackend:
///  - DwuPackedDeltas: the packed wire layout of the per-step delta exchange, described here once
///    (the adapter writes it, the backends' fused kernels read it);
///  - DwuKernels<B>: the kernels DirectWeightUpdate runs for backend B. The primary template is the
///    generic path, written with the TensorBackend concept only; a backend with fused kernels
///    specialises it (backend/cuda/dwu_kernels.hpp does for CudaBackend<S>);
///  - DwuKernelSet<K, B>: what every DwuKernels provides; FusedDwuKernels<K, B>: what a fused
///    specialisation must add. DirectWeightUpdate takes the fused path at compile time exactly when
///    FusedDwuKernels<DwuKernels<B>, B> holds, so a signature typo in a specialisation is a
///    static_assert failure next to it, not a silent fallback to the generic loops.

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "hdpissa/core/concepts.hpp"
#include "hdpissa/core/error.hpp"
#include "hdpissa/core/update_args.hpp"
#include "hdpissa/core/view.hpp"
#include "hdpissa/core/w_precision.hpp"

namespace hdpissa {

/// One layer's slice of the Direct Weight Update's packed exchange buffer (T = S to write, const S
/// to read). Each group owns one contiguous chunk of `chunk` elements per step, holding every
/// layer's deltas back to back; this layer's part of group j starts at data + j·chunk:
///   dA_j (r, in), row-major, contiguous;  then  dB_j (out, r), row-major, contiguous
/// i.e. element dA_j[i][c] at data[j·chunk + i·in + c] and dB_j[o][c] at data[j·chunk + r·in + o·r + c].
/// A layer occupies layer_elements(r, in, out) = r·(in + out) elements of each chunk.
template <class T>
struct DwuPackedDeltas {
  T* data = nullptr;      ///< group 0's dA of this layer (buffer start + the layer's offset)
  std::size_t chunk = 0;  ///< elements between consecutive groups
  index_t groups = 0;     ///< chunks described (K when receiving, the local groups when sending)
  index_t rank = 0;       ///< r
  index_t in = 0, out = 0;

  static constexpr std::size_t layer_elements(index_t r, index_t in, index_t out) {
    return static_cast<std::size_t>(r * (in + out));
  }
  /// Group j's dA (r, in) and dB (out, r).
  MatrixView<T> dA(index_t j) const { return {data + std::size_t(j) * chunk, rank, in, in}; }
  MatrixView<T> dB(index_t j) const { return {data + std::size_t(j) * chunk + rank * in, out, rank, rank}; }
};

/// One tensor of a multi-tensor Adam pass (FusedDwuKernels::make_adam_batch): the operands
/// adam_delta takes, all of the grad's shape.
template <class T>
struct AdamTensor {
  ConstMatrixView<T> param, grad;
  MatrixView<T> m, v, delta;
};

/// The generic Direct Weight Update kernels over any TensorBackend: a fused specialisation derives
/// from it and falls back to it when its fused path is switched off at run time.
template <TensorBackend B>
class DwuGenericKernels {
 public:
  using S = typename B::scalar_type;
  using V = MatrixView<S>;
  using CV = ConstMatrixView<S>;

  explicit DwuGenericKernels(B& b) : b_(&b) {}
  B& backend() const { return *b_; }

  /// Builds one layer's GEMM operands from the all-gathered deltas d (K groups):
  ///   R (2Kr, in) = [A_0 − dA_0; …; A_{K−1} − dA_{K−1}; dA_0; …; dA_{K−1}],  Ldb (out, Kr) = [dB_0 … dB_{K−1}]
  /// with A (Kr, in) the constant factors; A − dA is computed as A + (−1)·dA (the backend's axpy).
  void unpack(CV A, DwuPackedDeltas<const S> d, V R, V Ldb) {
    const index_t K = d.groups, r = d.rank;
    b_->copy(A, R.row_block(0, K * r));
    for (index_t j = 0; j < K; ++j) {
      b_->axpy(S(-1), d.dA(j), R.row_block(j * r, r));
      b_->copy(d.dA(j), R.row_block((K + j) * r, r));
      b_->copy(d.dB(j), Ldb.col_block(j * r, r));
    }
  }

  /// Folds a layer's dense update Δ = sign · D (D (rows, cols); sign +1 or −1, so Δ is exact) into
  /// its bf16 storage `w` by the policy's rule, element by element (the unfused path; host memory
  /// here, the CUDA specialisation overrides). sign −1 serves an optimizer's p ← p − delta.
  void apply_w_storage(CV D, const Bf16WStorage& w, float sign = 1.0f) {
    if constexpr (std::is_same_v<typename B::memory_space, host_memory>) {
      for (index_t i = 0; i < D.rows; ++i)
        for (index_t j = 0; j < D.cols; ++j) w.apply(i, j, sign * float(D.data[i * D.ld + j]));
      if (w.amax) max_abs_into(w, D.rows, D.cols);
    } else {
      (void)D, (void)w, (void)sign;
      throw InvalidArgument("DwuKernels: this backend has no kernel for a bf16 W storage");
    }
  }
  /// *w.amax ← max(*w.amax, max |w|) over the storage's (rows, cols) W, by the bits
  /// (Bf16WStorage::amax; host memory).
  static void max_abs_into(const Bf16WStorage& w, index_t rows, index_t cols) {
    std::uint32_t m;
    std::memcpy(&m, w.amax, sizeof m);
    for (index_t i = 0; i < rows; ++i)
      for (index_t j = 0; j < cols; ++j) m = std::max(m, bf16_abs_bits_f32(w.w[i * w.ldw + j]));
    std::memcpy(w.amax, &m, sizeof m);
  }
  /// The exact fp32 values of the storage's W into `dst` (its shape: rows, cols): what an optimizer
  /// that reads the parameter (weight decay) sees (DataParallelUpdate; host memory here).
  void widen_w_storage(const Bf16WStorage& w, V dst) {
    if constexpr (std::is_same_v<typename B::memory_space, host_memory>) {
      for (index_t i = 0; i < dst.rows; ++i)
        for (index_t j = 0; j < dst.cols; ++j) dst.data[i * dst.ld + j] = S(bf16_bits_to_float(w.w[i * w.ldw + j]));
    } else {
      (void)w, (void)dst;
      throw InvalidArgument("DwuKernels: this backend has no kernel for a bf16 W storage");
    }
  }
  /// EigenBackend's order-sensitive checksum Σ x_ij·(1 + ((i·cols + j) mod 1021)/1021) of the
  /// storage's W values (rows, cols), in double (verify_replicas).
  double checksum_w_storage(const Bf16WStorage& w, index_t rows, index_t cols) {
    if constexpr (std::is_same_v<typename B::memory_space, host_memory>) {
      double s = 0;
      for (index_t i = 0; i < rows; ++i)
        for (index_t j = 0; j < cols; ++j) {
          const index_t idx = i * cols + j;
          s += double(bf16_bits_to_float(w.w[i * w.ldw + j])) * (1.0 + double(idx % 1021) / 1021.0);
        }
      return s;
    } else {
      (void)w, (void)rows, (void)cols;
      throw InvalidArgument("DwuKernels: this backend has no kernel for a bf16 W storage");
    }
  }

 private:
  B* b_;
};

/// DirectWeightUpdate's kernels for backend B. Primary template: the generic path only (satisfies
/// DwuKernelSet, not FusedDwuKernels). Specialise it, in the backend's own header, to add fused
/// kernels; see FusedDwuKernels for what the specialisation must provide.
template <class B>
class DwuKernels : public DwuGenericKernels<B> {
 public:
  using DwuGenericKernels<B>::DwuGenericKernels;
};

/// \concept DwuKernelSet
/// What every DwuKernels<B> provides. With `b` a B, `k` a K, `S` = B::scalar_type, `A` a
/// ConstMatrixView<S>, `d` a DwuPackedDeltas<const S>, `R`, `L` MatrixView<S>:
///   - `K k(b)`: constructed once per DirectWeightUpdate, on its backend
///   - `k.unpack(A, d, R, L)`: the generic packing (DwuGenericKernels::unpack)
template <class K, class B>
concept DwuKernelSet = TensorBackend<B> && std::constructible_from<K, B&> &&
    requires(K& k, ConstMatrixView<typename B::scalar_type> A, DwuPackedDeltas<const typename B::scalar_type> d,
             MatrixView<typename B::scalar_type> R) {
      k.unpack(A, d, R, R);
    };

/// \concept FusedDwuKernels
/// A DwuKernels specialisation with fused kernels (CudaBackend's: one multi-tensor Adam launch per
/// step, one packing kernel per layer, the sm_90a 3xTF32 update, one batched non-finite check).
/// Every `bool` member returns false, having done nothing, when the backend has it switched off at
/// run time (e.g. CudaBackendOptions::fused_update, DwuGemm::Cublas); DirectWeightUpdate then runs
/// the generic path for that call. With the names of DwuKernelSet, plus `views` a
/// std::vector<ConstMatrixView<S>>, `ts` a std::vector<AdamTensor<S>>, `a` an AdamArgs, `batch` a
/// K::adam_batch_type, `alpha` an S, `W` a MatrixView<S>:
///   - DwuKernelSet<K, B>
///   - `K::adam_batch_type`: a multi-tensor Adam table, default-constructible and movable
///   - `k.enabled()` → bool: the fused paths are on (checked before preparing batched work)
///   - `k.all_finite_batch(views)` → bool: every element of every view is finite (one wait)
///   - `k.make_adam_batch(ts)` → adam_batch_type: uploads the table (setup; may allocate and wait)
///   - `k.adam_step(a, batch)` → bool: one Adam pass with the same args over every tensor of the
///     table, bit for bit adam_delta on each
///   - `k.unpack_fused(A, d, R, L)` → bool: unpack's result, bit for bit
///   - `k.apply_fused(A, d, alpha, L, W)` → bool: the whole layer update W += alpha · L · R, with
///     L's first K·r columns written as unpack writes them (same math, the kernel's own rounding);
///     false also when the layer's layout does not suit the kernel
template <class K, class B>
concept FusedDwuKernels = DwuKernelSet<K, B> &&
    requires(K& k, ConstMatrixView<typename B::scalar_type> A, DwuPackedDeltas<const typename B::scalar_type> d,
             MatrixView<typename B::scalar_type> R, typename B::scalar_type alpha,
             const std::vector<ConstMatrixView<typename B::scalar_type>>& views,
             const std::vector<AdamTensor<typename B::scalar_type>>& ts, const AdamArgs& a,
             const typename K::adam_batch_type& batch) {
      requires std::default_initializable<typename K::adam_batch_type>;
      requires std::movable<typename K::adam_batch_type>;
      { k.enabled() } -> std::convertible_to<bool>;
      { k.all_finite_batch(views) } -> std::same_as<bool>;
      { k.make_adam_batch(ts) } -> std::same_as<typename K::adam_batch_type>;
      { k.adam_step(a, batch) } -> std::same_as<bool>;
      { k.unpack_fused(A, d, R, R) } -> std::same_as<bool>;
      { k.apply_fused(A, d, alpha, R, R) } -> std::same_as<bool>;
    };

/// \concept InPlaceAdamKernels
/// FusedDwuKernels whose multi-tensor Adam table can also apply the step in place
/// (`k.make_adam_batch(ts, true)`: each tensor's `delta` view receives param − delta, bit for bit
/// adam_delta followed by the backend's axpy(−1, delta, param)). DataParallelUpdate's batched step
/// (one launch for every parameter) needs it.
template <class K, class B>
concept InPlaceAdamKernels = FusedDwuKernels<K, B> &&
    requires(K& k, const std::vector<AdamTensor<typename B::scalar_type>>& ts) {
      { k.make_adam_batch(ts, true) } -> std::same_as<typename K::adam_batch_type>;
    };

namespace detail {
struct NoAdamBatch {};
/// The kernels' multi-tensor Adam table type (fused kernels only; NoAdamBatch otherwise).
template <class K, class B>
struct adam_batch_of { using type = NoAdamBatch; };
template <class K, class B>
  requires FusedDwuKernels<K, B>
struct adam_batch_of<K, B> { using type = typename K::adam_batch_type; };
}  // namespace detail

}  // namespace hdpissa
