#pragma once
/// \file peft_export.hpp
/// PEFT LoRA adapters on disk, in Hugging Face PEFT's format, so that
/// `PeftModel.from_pretrained(base, dir)` loads them:
///  - adapter_model.safetensors: per target linear `base_model.model.<module>.lora_A.weight` (r, in)
///    and `…lora_B.weight` (out, r), e.g.
///    `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`;
///  - adapter_config.json: a LoraConfig (peft_type LORA, task_type CAUSAL_LM, r, lora_alpha,
///    target_modules, init_lora_weights, rank_pattern / alpha_pattern for per-layer ranks, …).
/// The adapter adds (lora_alpha / r)·B A to each target W (no rslora, no DoRA, no dropout at
/// inference). Written F32 (PEFT casts to the base model's dtype on load).

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "llama/common.hpp"
#include "llama/safetensors.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama {

/// One target linear's LoRA factors: W + s·B A with s = lora_alpha / r of its layer.
struct PeftLoraLayer {
  LinearId id;
  Matrix A;  // (r, in)
  Matrix B;  // (out, r)
};

/// The adapter_config.json fields we set (the rest are PEFT's defaults, written out).
struct PeftLoraConfig {
  int r = 8;                          ///< rank (the largest, when rank_pattern lists others)
  double lora_alpha = 8;              ///< scaling = lora_alpha / r
  std::vector<Module> target_modules; ///< q_proj, …, down_proj
  nlohmann::json init_lora_weights = true;  ///< true, or a method name PEFT knows ("pissa")
  std::string base_model_name_or_path;
  std::map<std::string, int> rank_pattern;      ///< module path (layers.3.mlp.up_proj) → its r
  std::map<std::string, double> alpha_pattern;  ///< module path → its lora_alpha
};

/// The module path of a target as PEFT names it: "model.layers.3.self_attn.q_proj".
inline std::string peft_module_path(const LinearId& id) {
  std::string n = id.hf_name();
  return n.substr(0, n.size() - std::string(".weight").size());
}
/// Key of a factor in adapter_model.safetensors (`ab` = "lora_A" or "lora_B").
inline std::string peft_tensor_key(const LinearId& id, const char* ab) {
  return cat("base_model.model.", peft_module_path(id), ".", ab, ".weight");
}
/// Key of a target in rank_pattern / alpha_pattern: "layers.3.self_attn.q_proj" (PEFT matches a
/// pattern key against the module path's suffix after a dot).
inline std::string peft_pattern_key(const LinearId& id) { return peft_module_path(id).substr(std::string("model.").size()); }

/// lora_alpha as JSON: an integer when it is one (PEFT's type), else a float.
inline nlohmann::json peft_alpha_json(double a) {
  if (a == double(static_cast<long long>(a))) return static_cast<long long>(a);
  return a;
}

/// The adapter_config.json of `c` (a LoraConfig as PEFT ≥ 0.10 writes it).
inline nlohmann::ordered_json peft_config_json(const PeftLoraConfig& c) {
  nlohmann::ordered_json j;
  std::vector<std::string> targets;
  for (Module m : c.target_modules) targets.emplace_back(module_name(m));
  nlohmann::ordered_json ranks = nlohmann::ordered_json::object(), alphas = nlohmann::ordered_json::object();
  for (const auto& [k, v] : c.rank_pattern) ranks[k] = v;
  for (const auto& [k, v] : c.alpha_pattern) alphas[k] = peft_alpha_json(v);
  j["alpha_pattern"] = alphas;
  j["auto_mapping"] = nullptr;
  j["base_model_name_or_path"] = c.base_model_name_or_path;
  j["bias"] = "none";
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = true;
  j["init_lora_weights"] = c.init_lora_weights;
  j["layers_pattern"] = nullptr;
  j["layers_to_transform"] = nullptr;
  j["lora_alpha"] = peft_alpha_json(c.lora_alpha);
  j["lora_dropout"] = 0.0;
  j["modules_to_save"] = nullptr;
  j["peft_type"] = "LORA";
  j["r"] = c.r;
  j["rank_pattern"] = ranks;
  j["revision"] = nullptr;
  j["target_modules"] = targets;
  j["task_type"] = "CAUSAL_LM";
  j["use_dora"] = false;
  j["use_rslora"] = false;
  return j;
}

/// Writes adapter_config.json + adapter_model.safetensors into `dir` (created; files replaced
/// atomically). Each layer's A is (r_l, in), B (out, r_l), with r_l = c.r unless rank_pattern says.
inline void write_peft_adapter(const std::filesystem::path& dir, const PeftLoraConfig& c,
                               const std::vector<PeftLoraLayer>& layers,
                               const std::map<std::string, std::string>& metadata = {{"format", "pt"}}) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw LlamaError(cat("cannot create the adapter directory ", dir.string(), ": ", ec.message()));
  std::vector<TensorToWrite> tensors;
  for (const auto& l : layers) {
    const auto p = c.rank_pattern.find(peft_pattern_key(l.id));
    const long r = p == c.rank_pattern.end() ? c.r : p->second;
    if (l.A.rows() != r || l.B.cols() != r || l.A.cols() < 1 || l.B.rows() < 1)
      throw LlamaError(cat("PEFT adapter ", dir.string(), ": ", peft_module_path(l.id), ": expected rank ", r,
                           ", found A ", shape_str(l.A.rows(), l.A.cols()), " and B ", shape_str(l.B.rows(), l.B.cols())));
    tensors.push_back({peft_tensor_key(l.id, "lora_A"), {l.A.rows(), l.A.cols()}, l.A.data()});
    tensors.push_back({peft_tensor_key(l.id, "lora_B"), {l.B.rows(), l.B.cols()}, l.B.data()});
  }
  write_safetensors(dir / "adapter_model.safetensors", tensors, DType::F32, metadata);
  write_file_atomic(dir / "adapter_config.json", peft_config_json(c).dump(2) + "\n");
}

}  // namespace hdpissa::llama
