#pragma once
/// \file convert_batch.hpp
/// CudaConvertBatch<Src, Dst>: many storage conversions (e.g. fp32 adapter factors → their bf16
/// compute copies) in one launch, over a table of (source, destination) views uploaded once.
/// Element (i, j) of each destination gets exactly what launch_convert writes for it,
/// store<Dst>(load<float>(src(i, j))), so a batch is bit for bit its pairs converted one by one.
/// For work repeated every step on fixed buffers (the LoRA / PiSSA trainer refreshes hundreds of
/// compute copies after each optimizer step: one launch instead of one per matrix).

#include <cuda_runtime.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "hdpissa/backend/cuda/cuda_check.hpp"
#include "hdpissa/backend/cuda/cuda_handles.hpp"
#include "hdpissa/backend/cuda/kernels.cuh"
#include "hdpissa/core/error.hpp"
#include "hdpissa/core/view.hpp"

namespace hdpissa {
namespace cuda_kernels {

/// One pair of a conversion batch: rows × cols, each operand with its leading dimension.
struct ConvertDesc {
  const void* src;
  void* dst;
  index_t rows, cols, lds, ldd;
};
/// blockIdx.y picks the pair, blockIdx.x strides over its elements (launch_convert's formula).
template <class Src, class Dst>
__global__ void convert_multi_kernel(const ConvertDesc* pairs) {
  const ConvertDesc p = pairs[blockIdx.y];
  const Src* x = static_cast<const Src*>(p.src);
  Dst* y = static_cast<Dst*>(p.dst);
  const index_t n = p.rows * p.cols;
  if ((p.rows == 1 || p.lds == p.cols) && (p.rows == 1 || p.ldd == p.cols)) {  // dense: no index division
    for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x)
      y[idx] = store<Dst>(load<float>(x[idx]));
    return;
  }
  for (index_t idx = index_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < n; idx += index_t(gridDim.x) * blockDim.x) {
    const index_t i = idx / p.cols, j = idx - i * p.cols;
    y[i * p.ldd + j] = store<Dst>(load<float>(x[i * p.lds + j]));
  }
}

}  // namespace cuda_kernels

/// A fixed set of conversions dst_k ← convert(src_k), run in one launch on a stream. The views
/// must stay valid (and keep their shapes) while the batch is used; their contents may change.
/// Destinations must not overlap each other or any source (checked: an overlap would make the
/// result depend on the order of the blocks).
template <class Src, class Dst>
class CudaConvertBatch {
 public:
  using Pair = std::pair<ConstMatrixView<Src>, MatrixView<Dst>>;

  CudaConvertBatch() = default;
  /// Uploads the table (allocates, and waits for the copy on `stream`). Empty pairs are skipped.
  CudaConvertBatch(const std::vector<Pair>& pairs, cudaStream_t stream) {
    std::vector<cuda_kernels::ConvertDesc> h;
    h.reserve(pairs.size());
    std::vector<std::pair<const char*, const char*>> spans;  // destinations' byte ranges, for the overlap check
    for (const auto& [src, dst] : pairs) {
      require_shape(dst, src.rows, src.cols, "convert batch destination");
      if (dst.empty()) continue;
      h.push_back({src.data, dst.data, src.rows, src.cols, index_t(ld_of(src)), index_t(ld_of(dst))});
      max_elems_ = std::max(max_elems_, dst.size());
      spans.push_back(range(dst));
    }
    std::sort(spans.begin(), spans.end());
    for (std::size_t k = 1; k < spans.size(); ++k)
      HDPISSA_REQUIRE(spans[k].first >= spans[k - 1].second,
                      "CudaConvertBatch: expected destinations that do not overlap, found two sharing memory");
    for (const auto& [src, dst] : pairs) {
      if (dst.empty()) continue;
      const auto s = range(src);
      for (const auto& d : spans)
        HDPISSA_REQUIRE(s.second <= d.first || d.second <= s.first,
                        "CudaConvertBatch: expected sources that no destination overlaps, found one that does");
    }
    count_ = int(h.size());
    if (h.empty()) return;
    desc_.reserve(h.size());
    HDPISSA_CUDA_CHECK(cudaMemcpyAsync(desc_.get(), h.data(), h.size() * sizeof(h[0]), cudaMemcpyHostToDevice, stream));
    HDPISSA_CUDA_CHECK(cudaStreamSynchronize(stream));  // h is pageable and local
  }

  int size() const { return count_; }

  /// Every conversion of the table, one launch (several only past 65,535 pairs).
  void run(cudaStream_t stream) const {
    if (count_ == 0) return;
    constexpr int kMaxY = 65535;
    // ~8 elements per thread on the largest pair, as the multi-tensor Adam
    const unsigned bx = std::max(1u, std::min(cuda_kernels::grid_for(max_elems_),
                                              cuda_kernels::grid_for((max_elems_ + 7) / 8)));
    for (int first = 0; first < count_; first += kMaxY) {
      const unsigned by = unsigned(std::min(kMaxY, count_ - first));
      cuda_kernels::convert_multi_kernel<Src, Dst><<<dim3(bx, by), cuda_kernels::kThreads, 0, stream>>>(desc_.get() + first);
      HDPISSA_CUDA_CHECK_LAUNCH("convert_multi_kernel");
    }
  }

 private:
  template <class V>
  static index_t ld_of(const V& v) {
    return v.rows <= 1 ? v.cols : v.ld;
  }
  /// The bytes a view spans, first row's start to last row's end.
  template <class V>
  static std::pair<const char*, const char*> range(const V& v) {
    using E = std::remove_cv_t<std::remove_pointer_t<decltype(v.data)>>;
    const char* b = reinterpret_cast<const char*>(v.data);
    if (v.empty()) return {b, b};
    return {b, b + ((v.rows - 1) * ld_of(v) + v.cols) * index_t(sizeof(E))};
  }

  DeviceBuffer<cuda_kernels::ConvertDesc> desc_;
  int count_ = 0;
  index_t max_elems_ = 0;
};

}  // namespace hdpissa
