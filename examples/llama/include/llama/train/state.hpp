#pragma once
/// \file state.hpp
/// A training run's state as a VALUE (TrainState: a named-tensor dictionary of fp32 host arrays plus
/// named counters), and the views a method exposes of its live state (StateRefs) with the two
/// conversions between them: snapshot() (live → value) and restore() (value → live, every name and
/// shape checked). Engines return their state with the first and take it back with the second, so
/// nothing depends on call order and no raw pointers cross the engine boundary.

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "hdpissa/core/concepts.hpp"
#include "llama/common.hpp"

namespace hdpissa::llama {

/// One tensor of a run's state: contiguous row-major fp32 on the host. `local`: owned by this
/// worker (its own file), else identical on every worker (saved once by worker 0).
struct StateTensor {
  std::string name;
  std::int64_t rows = 0, cols = 0;
  std::vector<float> data;
  bool local = false;
};
/// One integer of a run's state (e.g. Adam's step count).
struct StateCounter {
  std::string name;
  long value = 0;
  bool local = false;
};

/// Everything needed to resume a run exactly, in a fixed order (the method's listing order).
struct TrainState {
  std::vector<StateTensor> tensors;
  std::vector<StateCounter> counters;

  [[nodiscard]] const StateTensor* find(std::string_view name) const {
    for (const auto& t : tensors)
      if (t.name == name) return &t;
    return nullptr;
  }
  [[nodiscard]] const StateCounter* find_counter(std::string_view name) const {
    for (const auto& c : counters)
      if (c.name == name) return &c;
    return nullptr;
  }
  /// Tensor `name` of shape (rows, cols); throws naming `origin`, the tensor and the mismatch.
  [[nodiscard]] const StateTensor& at(const std::string& name, std::int64_t rows, std::int64_t cols,
                                      const std::string& origin) const {
    const StateTensor* t = find(name);
    if (!t) throw LlamaError(cat(origin, ": expected tensor '", name, "' in the saved state, not found"));
    if (t->rows != rows || t->cols != cols || std::int64_t(t->data.size()) != rows * cols)
      throw LlamaError(cat(origin, ": tensor '", name, "': expected shape ", shape_str(rows, cols), ", found ",
                           shape_str(t->rows, t->cols)));
    return *t;
  }
};

/// A method's live state: views into its storage (fp32, in the master backend's memory space).
struct StateRefs {
  /// A tensor is an fp32 view, or (view.data null) a tensor stored in another dtype, reached
  /// through `get` (host fp32 ← live, exact) and `set` (live ← host fp32): e.g. a bf16-only frozen
  /// W. Its saved form is fp32 either way, so checkpoints do not depend on the storage dtype.
  struct Tensor {
    std::string name;
    MatrixView<float> view;
    bool local = false;
    std::function<void(float*)> get{};
    std::function<void(const float*)> set{};
  };
  struct Counter {
    std::string name;
    long* value = nullptr;
    bool local = false;
  };
  std::vector<Tensor> tensors;
  std::vector<Counter> counters;

  void add(std::string name, MatrixView<float> v, bool local) { tensors.push_back({std::move(name), v, local}); }
  /// A (rows, cols) tensor kept in another dtype, through `get` / `set` (see Tensor).
  void add_converted(std::string name, index_t rows, index_t cols, bool local, std::function<void(float*)> get,
                     std::function<void(const float*)> set) {
    tensors.push_back({std::move(name), MatrixView<float>{nullptr, rows, cols, cols}, local, std::move(get), std::move(set)});
  }
  /// An Adam state (moments and step count) under `name`.m / .v / .step.
  template <class AdamState>
  void add_adam(const std::string& name, AdamState& st, bool local) {
    add(name + ".m", st.m.view(), local);
    add(name + ".v", st.v.view(), local);
    counters.push_back({name + ".step", &st.step, local});
  }
};

/// The live state behind `refs` as a value (downloads through backend `b`; waits for it).
template <class Backend>
TrainState snapshot(Backend& b, const StateRefs& refs) {
  TrainState s;
  for (const auto& r : refs.tensors) {
    HDPISSA_REQUIRE(r.view.contiguous(), "state tensor '", r.name, "' is not contiguous");
    StateTensor t{r.name, r.view.rows, r.view.cols, std::vector<float>(std::size_t(r.view.size())), r.local};
    if (r.get) r.get(t.data.data());
    else b.download(ConstMatrixView<float>(r.view), t.data.data());
    s.tensors.push_back(std::move(t));
  }
  for (const auto& c : refs.counters) s.counters.push_back({c.name, *c.value, c.local});
  b.synchronize();
  return s;
}

/// Writes `s` into the live state behind `refs`: every listed tensor and counter must be present
/// with its shape (errors name `origin` and the entry). Uploads through backend `b`.
template <class Backend>
void restore(Backend& b, const StateRefs& refs, const TrainState& s, const std::string& origin) {
  for (const auto& r : refs.tensors) {
    const StateTensor& t = s.at(r.name, r.view.rows, r.view.cols, origin);
    if (t.local != r.local)
      throw LlamaError(cat(origin, ": tensor '", r.name, "' is saved as ", t.local ? "per-worker" : "shared",
                           " but this run keeps it ", r.local ? "per worker" : "shared"));
    if (r.set) r.set(t.data.data());
    else b.upload(t.data.data(), r.view);
  }
  for (const auto& c : refs.counters) {
    const StateCounter* v = s.find_counter(c.name);
    if (!v) throw LlamaError(cat(origin, ": expected counter '", c.name, "' in the saved state, not found"));
    *c.value = v->value;
  }
  b.synchronize();
}

}  // namespace hdpissa::llama
