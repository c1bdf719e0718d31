#pragma once
/// \file config.hpp
/// ModelConfig: the hyper-parameters of a LLaMA-family model, read from / written to a Hugging
/// Face `config.json` (transformers 4 and 5 forms), plus the RoPE frequency table it implies.

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "llama/common.hpp"

namespace hdpissa::llama {

/// RoPE frequency scaling. `type` is "default" (none) or "llama3" (LLaMA-3.1 smooth scaling);
/// "linear" (positions divided by `factor`) is also accepted.
struct RopeScaling {
  std::string type = "default";                  ///< "default", "linear" or "llama3"
  double factor = 1.0;                           ///< context extension factor
  double low_freq_factor = 1.0;                  ///< llama3 only
  double high_freq_factor = 4.0;                 ///< llama3 only
  int original_max_position_embeddings = 8192;   ///< llama3 only
};

/// Hyper-parameters of a LLaMA-family decoder (names follow llama2.c; HF names in comments).
struct ModelConfig {
  int dim = 0;            ///< hidden_size
  int hidden_dim = 0;     ///< intermediate_size (SwiGLU width)
  int n_layers = 0;       ///< num_hidden_layers
  int n_heads = 0;        ///< num_attention_heads
  int n_kv_heads = 0;     ///< num_key_value_heads (GQA; = n_heads for MHA)
  int head_dim = 0;       ///< head_dim (default dim / n_heads)
  int vocab_size = 0;     ///< vocab_size
  int max_seq_len = 0;    ///< max_position_embeddings
  float norm_eps = 1e-5f; ///< rms_norm_eps
  double rope_theta = 10000.0;   ///< rope_theta (top level) or rope_parameters.rope_theta
  RopeScaling rope_scaling;      ///< rope_scaling / rope_parameters
  bool tie_embeddings = true;    ///< tie_word_embeddings (lm_head = embed_tokens)
  int bos_token_id = 1;          ///< bos_token_id
  int eos_token_id = 2;          ///< eos_token_id (first one if a list)
  int sliding_window = 0;        ///< sliding_window W (0 = none): query i attends to keys j with
                                 ///< i − W < j ≤ i (transformers' masking_utils convention)
  int window_from_layer = 0;     ///< layers l ≥ this use the window (Qwen2's max_window_layers; 0 for Mistral)
  bool qkv_bias = false;         ///< q/k/v projections carry biases (Qwen2; o_proj and the MLP do not)
  std::string model_type = "llama";  ///< HF model_type: llama, mistral or qwen2 (llama2c → llama);
                                     ///< kept so a saved config names the same architecture

  /// Width of the q projection output, n_heads·head_dim.
  [[nodiscard]] int q_dim() const { return n_heads * head_dim; }
  /// Width of the k / v projection outputs, n_kv_heads·head_dim.
  [[nodiscard]] int kv_dim() const { return n_kv_heads * head_dim; }

  /// The attention window of decoder layer `layer`: sliding_window where that layer is a
  /// sliding-attention layer, else 0 (full causal attention).
  [[nodiscard]] int attention_window(int layer) const {
    return sliding_window > 0 && layer >= window_from_layer ? sliding_window : 0;
  }
  /// Whether any layer's window is smaller than `max_len` (so attention differs from full causal).
  [[nodiscard]] bool window_binds(int max_len) const {
    return sliding_window > 0 && window_from_layer < n_layers && sliding_window < max_len;
  }
  /// For a consumer that implements full causal attention only: throws unless every sequence of up
  /// to `max_len` tokens fits in the sliding window. `what` names that consumer and where max_len
  /// comes from (e.g. "--max-len").
  void check_sliding_window(int max_len, const std::string& what) const {
    if (window_binds(max_len))
      throw LlamaError(cat("model config: sliding_window ", sliding_window, " is smaller than ", what, " ", max_len,
                           ": sliding-window attention is not supported there; use ", what, " <= ",
                           sliding_window));
  }

  /// Checks internal consistency; throws LlamaError saying which field is wrong and why.
  void validate() const {
    auto positive = [](const char* name, int v) {
      if (v <= 0) throw LlamaError(cat("model config: expected ", name, " > 0, found ", v));
    };
    positive("hidden_size", dim);
    positive("intermediate_size", hidden_dim);
    positive("num_hidden_layers", n_layers);
    positive("num_attention_heads", n_heads);
    positive("num_key_value_heads", n_kv_heads);
    positive("head_dim", head_dim);
    positive("vocab_size", vocab_size);
    positive("max_position_embeddings", max_seq_len);
    if (n_heads % n_kv_heads != 0)
      throw LlamaError(cat("model config: num_attention_heads (", n_heads,
                           ") must be a multiple of num_key_value_heads (", n_kv_heads, ")"));
    if (head_dim % 2 != 0)
      throw LlamaError(cat("model config: head_dim must be even for RoPE, found ", head_dim));
    if (rope_scaling.type != "default" && rope_scaling.type != "llama3" && rope_scaling.type != "linear")
      throw LlamaError(cat("model config: rope type must be default, linear or llama3, found '",
                           rope_scaling.type, "'"));
  }

  /// Parses a HF `config.json` object. Accepts `rope_theta` at top level (transformers 4) or in
  /// `rope_parameters` (transformers 5), and `rope_scaling` of type llama3 / linear.
  /// Fields that change the architecture in ways the model does not implement (attention_bias,
  /// mlp_bias, other rope types, hidden_act other than silu, qk norms, soft-capping, partial
  /// rotary, non-full attention layers) are errors naming them; with `allow_unsupported` they are
  /// ignored instead and reported through `warnings` (the model then differs from the checkpoint's).
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source = "config.json",
                               bool allow_unsupported = false, std::vector<std::string>* warnings = nullptr) {
    ModelConfig c;
    auto need_int = [&](const char* key) -> int {
      if (!j.contains(key) || !j[key].is_number_integer())
        throw LlamaError(cat(source, ": expected integer field '", key, "', found ",
                             j.contains(key) ? j[key].dump() : std::string("nothing")));
      return j[key].get<int>();
    };
    std::string model_type = "llama";
    if (j.contains("model_type") && j["model_type"].is_string()) {
      model_type = j["model_type"].get<std::string>();
      if (model_type != "llama" && model_type != "mistral" && model_type != "qwen2" && model_type != "llama2c")
        throw LlamaError(cat(source, ": expected model_type llama, mistral or qwen2, found '", model_type, "'"));
    }
    c.model_type = model_type == "llama2c" ? "llama" : model_type;
    c.qkv_bias = model_type == "qwen2";  // transformers' Qwen2Attention: q/k/v bias=True, o_proj bias=False
    std::vector<std::string> unsupported;
    auto truthy = [&](const char* key) {
      if (!j.contains(key) || j[key].is_null()) return false;
      const auto& v = j[key];
      return v.is_boolean() ? v.get<bool>() : !(v.is_number() && v.get<double>() == 0);
    };
    for (const char* key : {"attention_bias", "mlp_bias"})
      if (truthy(key)) unsupported.push_back(cat(key, "=true (biases in the linears)"));
    for (const char* key : {"qk_layernorm", "use_qk_norm", "attn_logit_softcapping", "final_logit_softcapping"})
      if (truthy(key)) unsupported.push_back(cat(key, "=", j[key].dump()));
    if (j.contains("partial_rotary_factor") && j["partial_rotary_factor"].is_number() &&
        j["partial_rotary_factor"].get<double>() != 1.0)
      unsupported.push_back(cat("partial_rotary_factor=", j["partial_rotary_factor"].dump()));
    if (j.contains("hidden_act") && j["hidden_act"] != "silu")
      unsupported.push_back(cat("hidden_act=", j["hidden_act"].dump(), " (expected \"silu\")"));
    // layer_types (transformers >= 4.53): full_attention layers, then optionally sliding_attention
    // ones (the form Qwen2's max_window_layers produces); anything else is unsupported
    int first_sliding = -1;
    bool layer_types_bad = false;
    if (j.contains("layer_types") && j["layer_types"].is_array()) {
      const auto& lt = j["layer_types"];
      for (std::size_t i = 0; i < lt.size(); ++i) {
        if (lt[i] == "sliding_attention") {
          if (first_sliding < 0) first_sliding = static_cast<int>(i);
        } else if (lt[i] != "full_attention" || first_sliding >= 0) {
          unsupported.push_back(cat("layer_types ", lt.dump(),
                                    " (expected full_attention layers followed by sliding_attention layers)"));
          layer_types_bad = true;
          break;
        }
      }
    }
    c.dim = need_int("hidden_size");
    c.hidden_dim = need_int("intermediate_size");
    c.n_layers = need_int("num_hidden_layers");
    c.n_heads = need_int("num_attention_heads");
    c.n_kv_heads = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                       ? j["num_key_value_heads"].get<int>() : c.n_heads;
    c.head_dim = j.contains("head_dim") && !j["head_dim"].is_null() ? j["head_dim"].get<int>()
                                                                      : (c.n_heads ? c.dim / c.n_heads : 0);
    c.vocab_size = need_int("vocab_size");
    c.max_seq_len = j.contains("max_position_embeddings") ? j["max_position_embeddings"].get<int>() : 2048;
    if (j.contains("rms_norm_eps")) c.norm_eps = j["rms_norm_eps"].get<float>();
    c.tie_embeddings = j.value("tie_word_embeddings", false);
    if (j.contains("bos_token_id") && j["bos_token_id"].is_number_integer()) c.bos_token_id = j["bos_token_id"];
    if (j.contains("eos_token_id")) {
      const auto& e = j["eos_token_id"];
      if (e.is_number_integer()) c.eos_token_id = e.get<int>();
      else if (e.is_array() && !e.empty()) c.eos_token_id = e[0].get<int>();
    }
    auto read_rope = [&](const nlohmann::json& r) {
      if (r.contains("rope_theta")) c.rope_theta = r["rope_theta"].get<double>();
      std::string type = r.value("rope_type", r.value("type", std::string("default")));
      c.rope_scaling.type = type;
      if (type == "llama3" || type == "linear") {
        if (!r.contains("factor"))
          throw LlamaError(cat(source, ": rope type ", type, " needs 'factor', found ", r.dump()));
        c.rope_scaling.factor = r["factor"].get<double>();
      }
      if (type == "llama3") {
        for (const char* key : {"low_freq_factor", "high_freq_factor", "original_max_position_embeddings"})
          if (!r.contains(key))
            throw LlamaError(cat(source, ": llama3 rope scaling needs '", key, "', found ", r.dump()));
        c.rope_scaling.low_freq_factor = r["low_freq_factor"].get<double>();
        c.rope_scaling.high_freq_factor = r["high_freq_factor"].get<double>();
        c.rope_scaling.original_max_position_embeddings = r["original_max_position_embeddings"].get<int>();
      }
    };
    if (j.contains("rope_theta")) c.rope_theta = j["rope_theta"].get<double>();
    if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) read_rope(j["rope_scaling"]);
    if (j.contains("rope_parameters") && j["rope_parameters"].is_object()) read_rope(j["rope_parameters"]);
    if (c.rope_scaling.type != "default" && c.rope_scaling.type != "llama3" && c.rope_scaling.type != "linear") {
      unsupported.push_back(cat("rope type '", c.rope_scaling.type, "' (expected default, linear or llama3)"));
      c.rope_scaling = RopeScaling{};
    }
    // sliding window: Mistral's sliding_window applies to every layer; Qwen2's only when
    // use_sliding_window is true, and then to layers >= max_window_layers (transformers'
    // Qwen2Config builds layer_types that way)
    const bool window_on = model_type == "mistral" || (model_type == "qwen2" && truthy("use_sliding_window"));
    if (window_on && j.contains("sliding_window") && j["sliding_window"].is_number_integer() &&
        j["sliding_window"].get<int>() > 0) {
      c.sliding_window = j["sliding_window"].get<int>();
      if (model_type == "qwen2")
        c.window_from_layer = j.contains("max_window_layers") && j["max_window_layers"].is_number_integer()
                                  ? j["max_window_layers"].get<int>() : 0;
      if (first_sliding >= 0) c.window_from_layer = first_sliding;  // explicit layer_types win
      else if (j.contains("layer_types") && j["layer_types"].is_array() && !layer_types_bad)
        c.window_from_layer = c.n_layers;  // every layer listed as full_attention
    } else if (first_sliding >= 0) {
      unsupported.push_back(cat("layer_types with sliding_attention but no usable sliding_window (found ",
                                j.contains("sliding_window") ? j["sliding_window"].dump() : std::string("none"), ")"));
    }
    if (c.sliding_window > 0 && c.window_from_layer >= c.n_layers) {  // no layer uses it
      c.sliding_window = 0;
      c.window_from_layer = 0;
    }
    if (!unsupported.empty()) {
      std::string list;
      for (const auto& u : unsupported) list += (list.empty() ? "" : "; ") + u;
      if (!allow_unsupported)
        throw LlamaError(cat(source, ": unsupported architecture field(s): ", list,
                             " (pass --allow-unused to ignore them with a warning; the model then differs)"));
      if (warnings)
        for (const auto& u : unsupported) warnings->push_back(cat(source, ": ignoring unsupported field ", u));
    }
    c.validate();
    return c;
  }

  /// Reads and parses `config.json`; errors name the file.
  static ModelConfig from_file(const std::filesystem::path& path, bool allow_unsupported = false,
                               std::vector<std::string>* warnings = nullptr) {
    const std::string text = read_file_text(path);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
      throw LlamaError(cat(path.string(), ": corrupt JSON (", e.what(), ")"));
    }
    if (!j.is_object()) throw LlamaError(cat(path.string(), ": expected a JSON object, found ", j.type_name()));
    return from_json(j, path.string(), allow_unsupported, warnings);
  }

  /// HF `config.json` loadable by transformers 4.x and 5.x (`rope_theta` top level + `rope_scaling`).
  [[nodiscard]] nlohmann::json to_json(const std::string& dtype = "float32") const {
    nlohmann::json j;
    const bool qwen2 = model_type == "qwen2" || qkv_bias;
    const bool mistral = !qwen2 && (model_type == "mistral" || sliding_window > 0);
    j["architectures"] = {qwen2 ? "Qwen2ForCausalLM" : mistral ? "MistralForCausalLM" : "LlamaForCausalLM"};
    j["model_type"] = qwen2 ? "qwen2" : mistral ? "mistral" : "llama";
    if (qwen2) {  // Qwen2Config: sliding window on layers >= max_window_layers when use_sliding_window
      j["use_sliding_window"] = sliding_window > 0;
      j["sliding_window"] = sliding_window > 0 ? nlohmann::json(sliding_window) : nlohmann::json(nullptr);
      j["max_window_layers"] = sliding_window > 0 ? window_from_layer : n_layers;
    } else if (mistral) {
      j["sliding_window"] = sliding_window > 0 ? nlohmann::json(sliding_window) : nlohmann::json(nullptr);
    }
    if (sliding_window > 0 && window_from_layer > 0) {  // which layers slide, explicitly (transformers >= 4.53)
      nlohmann::json lt = nlohmann::json::array();
      for (int l = 0; l < n_layers; ++l) lt.push_back(l >= window_from_layer ? "sliding_attention" : "full_attention");
      j["layer_types"] = lt;
    }
    if (!qwen2) j["attention_bias"] = false;
    j["attention_dropout"] = 0.0;
    j["mlp_bias"] = false;
    j["hidden_act"] = "silu";
    j["hidden_size"] = dim;
    j["intermediate_size"] = hidden_dim;
    j["num_hidden_layers"] = n_layers;
    j["num_attention_heads"] = n_heads;
    j["num_key_value_heads"] = n_kv_heads;
    j["head_dim"] = head_dim;
    j["vocab_size"] = vocab_size;
    j["max_position_embeddings"] = max_seq_len;
    j["rms_norm_eps"] = norm_eps;
    j["rope_theta"] = rope_theta;
    if (rope_scaling.type == "llama3") {
      j["rope_scaling"] = {{"rope_type", "llama3"},
                           {"factor", rope_scaling.factor},
                           {"low_freq_factor", rope_scaling.low_freq_factor},
                           {"high_freq_factor", rope_scaling.high_freq_factor},
                           {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings}};
    } else if (rope_scaling.type == "linear") {
      j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rope_scaling.factor}};
    } else {
      j["rope_scaling"] = nullptr;
    }
    j["tie_word_embeddings"] = tie_embeddings;
    j["bos_token_id"] = bos_token_id;
    j["eos_token_id"] = eos_token_id;
    j["initializer_range"] = 0.02;
    if (!qwen2) j["pretraining_tp"] = 1;
    j["use_cache"] = true;
    j["torch_dtype"] = dtype;
    return j;
  }

  /// RoPE inverse frequencies (head_dim/2), HF `_compute_default_rope_parameters` /
  /// `_compute_llama3_parameters`; "linear" scaling is folded in here as inv_freq / factor.
  [[nodiscard]] std::vector<double> rope_inv_freq() const {
    const int half = head_dim / 2;
    std::vector<double> inv(half);
    for (int i = 0; i < half; ++i)
      inv[i] = 1.0 / std::pow(rope_theta, static_cast<double>(2 * i) / head_dim);
    if (rope_scaling.type == "linear") {
      for (auto& f : inv) f /= rope_scaling.factor;
    } else if (rope_scaling.type == "llama3") {
      const auto& s = rope_scaling;
      const double old_len = s.original_max_position_embeddings;
      const double low_wavelen = old_len / s.low_freq_factor;
      const double high_wavelen = old_len / s.high_freq_factor;
      for (auto& f : inv) {
        const double wavelen = 2.0 * M_PI / f;
        if (wavelen > low_wavelen) {
          f = f / s.factor;
        } else if (wavelen >= high_wavelen) {  // medium band: smooth interpolation
          const double smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
          f = (1.0 - smooth) * f / s.factor + smooth * f;
        }
      }
    }
    return inv;
  }
};

}  // namespace hdpissa::llama
