#pragma once
/// \file weights.hpp
/// ModelWeights: every parameter of a LLaMA decoder as fp32 Eigen matrices in PyTorch layout.
/// The same type holds gradients (`ModelWeights::zeros_like`).

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "llama/common.hpp"
#include "llama/config.hpp"

namespace hdpissa::llama {

/// The seven target linears of a decoder layer (the modules HD-PiSSA / LoRA adapt).
enum class Module : std::uint8_t { q = 0, k, v, o, gate, up, down };
/// Number of target linears per layer.
inline constexpr int kModulesPerLayer = 7;

/// HF short name of a module ("q_proj", ..., "down_proj").
inline const char* module_name(Module m) {
  constexpr const char* names[] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  return names[static_cast<int>(m)];
}

/// Identifies one target linear: (layer, module). `index()` is dense in [0, 7·n_layers).
struct LinearId {
  int layer = 0;               ///< decoder layer
  Module module = Module::q;   ///< which projection
  /// Dense index layer·7 + module, for per-linear tables in hooks.
  [[nodiscard]] int index() const { return layer * kModulesPerLayer + static_cast<int>(module); }
  /// HF parameter name of the weight, e.g. "model.layers.3.self_attn.q_proj.weight".
  [[nodiscard]] std::string hf_name() const {
    const bool attn = module == Module::q || module == Module::k || module == Module::v || module == Module::o;
    return cat("model.layers.", layer, attn ? ".self_attn." : ".mlp.", module_name(module), ".weight");
  }
  /// HF parameter name of the bias, e.g. "model.layers.3.self_attn.q_proj.bias".
  [[nodiscard]] std::string hf_bias_name() const {
    std::string n = hf_name();
    return n.substr(0, n.size() - 6) + "bias";
  }
  friend bool operator==(const LinearId&, const LinearId&) = default;
};

/// Shape (out, in) of a target linear under `c` (HF layout).
inline std::pair<std::int64_t, std::int64_t> linear_shape(const ModelConfig& c, Module m) {
  switch (m) {
    case Module::q: return {c.q_dim(), c.dim};
    case Module::k:
    case Module::v: return {c.kv_dim(), c.dim};
    case Module::o: return {c.dim, c.q_dim()};
    case Module::gate:
    case Module::up: return {c.hidden_dim, c.dim};
    case Module::down: return {c.dim, c.hidden_dim};
  }
  return {0, 0};
}

/// Where the target linears of a ModelWeights live when the model does not hold them in fp32 (a
/// stored load, llama/stored_linears.hpp: the mapped safetensors of the checkpoint). Defined there.
class LinearSource;

/// Parameters of one decoder layer.
struct LayerWeights {
  Vector attn_norm;  ///< input_layernorm (dim)
  Matrix wq;         ///< q_proj (n_heads·head_dim, dim), HF rotate-half row order
  Matrix wk;         ///< k_proj (n_kv_heads·head_dim, dim), HF rotate-half row order
  Matrix wv;         ///< v_proj (n_kv_heads·head_dim, dim)
  Matrix wo;         ///< o_proj (dim, n_heads·head_dim)
  Vector ffn_norm;   ///< post_attention_layernorm (dim)
  Matrix w_gate;     ///< gate_proj (hidden, dim)
  Matrix w_up;       ///< up_proj (hidden, dim)
  Matrix w_down;     ///< down_proj (dim, hidden)
  Vector bq;         ///< q_proj.bias (n_heads·head_dim), only with config.qkv_bias (Qwen2), else empty
  Vector bk;         ///< k_proj.bias (n_kv_heads·head_dim), as bq
  Vector bv;         ///< v_proj.bias (n_kv_heads·head_dim), as bq

  /// The bias of a target linear: bq / bk / bv for q / k / v when present (non-empty), else
  /// nullptr. Biases are frozen: a linear computes Y = X Wᵀ (through the hooks) and the model adds
  /// the bias afterwards, so adapters and merged weights never see it.
  Vector* bias(Module m) {
    Vector* b = m == Module::q ? &bq : m == Module::k ? &bk : m == Module::v ? &bv : nullptr;
    return b && b->size() > 0 ? b : nullptr;
  }
  /// The bias of a target linear (const); nullptr when it has none.
  [[nodiscard]] const Vector* bias(Module m) const { return const_cast<LayerWeights*>(this)->bias(m); }

  /// The weight of a target linear.
  Matrix& linear(Module m) {
    switch (m) {
      case Module::q: return wq;
      case Module::k: return wk;
      case Module::v: return wv;
      case Module::o: return wo;
      case Module::gate: return w_gate;
      case Module::up: return w_up;
      case Module::down: return w_down;
    }
    return wq;
  }
  /// The weight of a target linear (const).
  [[nodiscard]] const Matrix& linear(Module m) const { return const_cast<LayerWeights*>(this)->linear(m); }
};

/// All parameters of a LLaMA decoder. With `config.tie_embeddings` the classifier is `embed` and
/// `lm_head` is empty.
///
/// Stored linears. A checkpoint loaded with `LoadOptions::keep_linears_stored` (the GPU paths) does
/// not convert its target linears to fp32: their matrices stay empty (0 × 0) and `stored_linears`
/// reads them from the mapped checkpoint on demand (llama/stored_linears.hpp: `linear_value`,
/// `stored_linear`). At 34B that is the difference between 135 GB of host fp32 and none. A linear
/// that is held (non-empty) always wins over the stored one, so a copy of a stored model can be
/// given some linears (a merged model, PiSSA's residual) and saved: save_hf_checkpoint reads the
/// others from the source, one tensor at a time. Code that needs every value in fp32 (the CPU
/// model) takes a held model; `holds_linears()` says which this is.
struct ModelWeights {
  ModelConfig config;               ///< hyper-parameters
  Matrix embed;                     ///< embed_tokens (vocab, dim)
  std::vector<LayerWeights> layers; ///< n_layers
  Vector final_norm;                ///< norm (dim)
  Matrix lm_head;                   ///< (vocab, dim), empty when tied
  /// Non-null: the target linears whose matrices are empty are read from here (see above).
  std::shared_ptr<const LinearSource> stored_linears;

  /// Whether every target linear is held in fp32 (no stored linear).
  [[nodiscard]] bool holds_linears() const {
    if (!stored_linears) return true;
    for (const auto& l : layers)
      for (int m = 0; m < kModulesPerLayer; ++m)
        if (l.linear(static_cast<Module>(m)).size() == 0) return false;
    return true;
  }
  /// Whether target `id` is stored (not held): its matrix is empty and a source is set.
  [[nodiscard]] bool is_stored(LinearId id) const { return stored_linears && linear(id).size() == 0; }

  /// The classifier matrix (vocab, dim): lm_head, or embed when tied.
  [[nodiscard]] const Matrix& classifier() const { return config.tie_embeddings ? embed : lm_head; }
  /// The classifier matrix (mutable).
  Matrix& classifier() { return config.tie_embeddings ? embed : lm_head; }
  /// Weight of a target linear.
  Matrix& linear(LinearId id) { return layers.at(id.layer).linear(id.module); }
  /// Weight of a target linear (const).
  [[nodiscard]] const Matrix& linear(LinearId id) const { return layers.at(id.layer).linear(id.module); }

  /// Zero-filled weights with the shapes `config` implies.
  static ModelWeights zeros(const ModelConfig& c) {
    ModelWeights w;
    w.config = c;
    w.embed = Matrix::Zero(c.vocab_size, c.dim);
    w.layers.resize(c.n_layers);
    for (auto& l : w.layers) {
      l.attn_norm = Vector::Zero(c.dim);
      l.wq = Matrix::Zero(c.q_dim(), c.dim);
      l.wk = Matrix::Zero(c.kv_dim(), c.dim);
      l.wv = Matrix::Zero(c.kv_dim(), c.dim);
      l.wo = Matrix::Zero(c.dim, c.q_dim());
      l.ffn_norm = Vector::Zero(c.dim);
      l.w_gate = Matrix::Zero(c.hidden_dim, c.dim);
      l.w_up = Matrix::Zero(c.hidden_dim, c.dim);
      l.w_down = Matrix::Zero(c.dim, c.hidden_dim);
      if (c.qkv_bias) {
        l.bq = Vector::Zero(c.q_dim());
        l.bk = Vector::Zero(c.kv_dim());
        l.bv = Vector::Zero(c.kv_dim());
      }
    }
    w.final_norm = Vector::Zero(c.dim);
    if (!c.tie_embeddings) w.lm_head = Matrix::Zero(c.vocab_size, c.dim);
    return w;
  }
  /// Zero-filled weights shaped like `other` (used as a gradient buffer).
  static ModelWeights zeros_like(const ModelWeights& other) { return zeros(other.config); }

  /// Sets every parameter to zero (keeps shapes).
  void set_zero() {
    for_each_parameter([](const std::string&, float* p, std::int64_t n, const std::vector<std::int64_t>&) {
      std::fill(p, p + n, 0.0f);
    });
  }

  /// Visits every parameter as (HF name, data, numel, HF shape), in checkpoint order. Tied
  /// classifiers are visited once (as the embedding). A stored linear is visited as what the model
  /// holds of it: an empty matrix (numel 0, shape [0, 0]).
  template <class F>
  void for_each_parameter(F&& f) {
    using S = std::vector<std::int64_t>;
    auto mat = [&](const std::string& name, Matrix& m) { f(name, m.data(), static_cast<std::int64_t>(m.size()), S{m.rows(), m.cols()}); };
    auto vec = [&](const std::string& name, Vector& v) { f(name, v.data(), static_cast<std::int64_t>(v.size()), S{v.size()}); };
    mat("model.embed_tokens.weight", embed);
    for (int i = 0; i < static_cast<int>(layers.size()); ++i) {
      auto& l = layers[i];
      const std::string p = cat("model.layers.", i, ".");
      vec(p + "input_layernorm.weight", l.attn_norm);
      for (int m = 0; m < kModulesPerLayer; ++m) {
        const LinearId id{i, static_cast<Module>(m)};
        mat(id.hf_name(), l.linear(id.module));
        if (Vector* b = l.bias(id.module)) vec(id.hf_bias_name(), *b);
      }
      vec(p + "post_attention_layernorm.weight", l.ffn_norm);
    }
    vec("model.norm.weight", final_norm);
    if (!config.tie_embeddings) mat("lm_head.weight", lm_head);
  }
  /// Const visitor: (HF name, const data, numel, shape).
  template <class F>
  void for_each_parameter(F&& f) const {
    const_cast<ModelWeights*>(this)->for_each_parameter(
        [&](const std::string& n, float* p, std::int64_t c, const std::vector<std::int64_t>& s) {
          f(n, static_cast<const float*>(p), c, s);
        });
  }
  /// Total number of parameters (tied classifier counted once; stored linears by their shapes).
  [[nodiscard]] std::int64_t num_parameters() const {
    std::int64_t n = 0;
    for_each_parameter([&](const std::string&, const float*, std::int64_t c, const std::vector<std::int64_t>&) { n += c; });
    for (int l = 0; l < static_cast<int>(layers.size()); ++l)
      for (int m = 0; m < kModulesPerLayer; ++m)
        if (const LinearId id{l, static_cast<Module>(m)}; is_stored(id)) {
          const auto [r, c] = linear_shape(config, id.module);
          n += r * c;
        }
    return n;
  }
};

}  // namespace hdpissa::llama
