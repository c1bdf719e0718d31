#pragma once
/// \file distributed_init.hpp
/// Initialisation consistency (spec §1): singular vectors are defined only up to sign/rotation and
/// GPU or randomized SVDs are not bit-reproducible across processes, so each layer's factors are
/// computed once — layer l on worker l mod P — and broadcast. Every worker ends up with
/// bit-identical factors, which the Direct Weight Update relies on.

#include <string>
#include <vector>

#include "hdpissa/adapter/adapter_set.hpp"
#include "hdpissa/core/concepts.hpp"

namespace hdpissa {

/// A layer to initialise: its name (for errors) and its weight (out, in).
template <TensorBackend B>
struct LayerRef {
  std::string name;
  ConstMatrixView<typename B::scalar_type> W;
};

/// Computes `init(b, W, name)` → AdapterSet<B> for layer l on worker l mod P and broadcasts it.
/// `groups`/`rank` give the shape the non-owning workers allocate. Returns one set per layer.
template <TensorBackend B, Communicator C, class Init>
std::vector<AdapterSet<B>> init_adapters_distributed(B& b, C& comm, const Init& init,
                                                     const std::vector<LayerRef<B>>& layers, int groups,
                                                     index_t rank) {
  static_assert(same_memory_space_v<B, C>, "backend and communicator must share a memory space");
  std::vector<AdapterSet<B>> out;
  out.reserve(layers.size());
  const int P = comm.size();
  for (std::size_t l = 0; l < layers.size(); ++l) {
    const int owner = int(l % std::size_t(P));
    AdapterSet<B> set = comm.rank() == owner
                            ? init(b, layers[l].W, layers[l].name)
                            : make_adapter_set(b, layers[l].W.rows, layers[l].W.cols, groups, rank);
    HDPISSA_REQUIRE(set.groups == groups && set.rank == rank, "layer '", layers[l].name,
                    "': the initialiser produced K = ", set.groups, ", r = ", set.rank, ", expected K = ",
                    groups, ", r = ", rank);
    comm.broadcast(set.A.view().data, std::size_t(set.A.view().size()), owner);
    comm.broadcast(set.B.view().data, std::size_t(set.B.view().size()), owner);
    out.push_back(std::move(set));
  }
  return out;
}

}  // namespace hdpissa
