#pragma once
/// \file checkpoint.hpp
/// Loading and saving model weights.
///  - HF format: a directory with `config.json` and `model.safetensors`, or shards listed in
///    `model.safetensors.index.json`; F32 / BF16 / F16 converted to float.
///  - llama2.c legacy `.bin`: 7 int32 header + fp32 tensors. Its q/k rows are in llama2.c's
///    interleaved-pair RoPE order; they are permuted on load into HF's rotate-half order, so one
///    model code path (HF RoPE) serves both formats.
///  - Saving: HF safetensors (F32, BF16 or F16; sharded with an index above a size limit) +
///    config.json (the input's, kept, when given), written into a temporary directory that
///    is renamed into place only when complete.

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <iostream>
#include <map>
#include <set>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "llama/common.hpp"
#include "llama/config.hpp"
#include "llama/safetensors.hpp"
#include "llama/stored_linears.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama {

/// Permutes the rows of a q or k projection from llama2.c / Meta interleaved-pair RoPE order to
/// HF rotate-half order (the inverse of HF's `convert_llama_weights_to_hf.permute`'s input):
/// within each head, HF row `c·(hd/2) + i` is llama2.c row `2i + c`.  // w: (n_heads·hd, in)
inline Matrix permute_interleaved_to_rotate_half(const Matrix& w, int n_heads) {
  const Eigen::Index hd = w.rows() / n_heads;
  Matrix out(w.rows(), w.cols());
  for (int h = 0; h < n_heads; ++h)
    for (Eigen::Index c = 0; c < 2; ++c)
      for (Eigen::Index i = 0; i < hd / 2; ++i)
        out.row(h * hd + c * (hd / 2) + i) = w.row(h * hd + 2 * i + c);
  return out;
}

/// Inverse of permute_interleaved_to_rotate_half (HF order -> llama2.c order).
inline Matrix permute_rotate_half_to_interleaved(const Matrix& w, int n_heads) {
  const Eigen::Index hd = w.rows() / n_heads;
  Matrix out(w.rows(), w.cols());
  for (int h = 0; h < n_heads; ++h)
    for (Eigen::Index c = 0; c < 2; ++c)
      for (Eigen::Index i = 0; i < hd / 2; ++i)
        out.row(h * hd + 2 * i + c) = w.row(h * hd + c * (hd / 2) + i);
  return out;
}

/// Loads a llama2.c legacy checkpoint (karpathy/llama2.c `run.c` format). Throws on a missing
/// file, a header with impossible values, or a file size that disagrees with the header.
inline ModelWeights load_llama2c_checkpoint(const std::filesystem::path& path) {
  const std::vector<char> bytes = read_file_bytes(path);
  const std::string where = path.string();
  if (bytes.size() < 28)
    throw LlamaError(cat(where, ": truncated llama2.c checkpoint: expected a 28-byte header, found ", bytes.size(), " bytes"));
  std::int32_t h[7];
  std::memcpy(h, bytes.data(), sizeof(h));
  if (static_cast<std::uint32_t>(h[0]) == 0x616b3432u)
    throw LlamaError(cat(where, ": this is a llama2.c version-1/2 export (magic 'ak42'); expected the legacy format "
                                "(export.py --version 0)"));
  ModelConfig c;
  c.dim = h[0];
  c.hidden_dim = h[1];
  c.n_layers = h[2];
  c.n_heads = h[3];
  c.n_kv_heads = h[4];
  c.tie_embeddings = h[5] > 0;
  c.vocab_size = h[5] > 0 ? h[5] : -h[5];
  c.max_seq_len = h[6];
  c.head_dim = c.n_heads > 0 ? c.dim / c.n_heads : 0;
  c.rope_theta = 10000.0;  // run.c hard-codes 10000
  c.norm_eps = 1e-5f;      // run.c hard-codes 1e-5
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  try {
    c.validate();
    if (c.head_dim * c.n_heads != c.dim) throw LlamaError(cat("dim ", c.dim, " is not a multiple of n_heads ", c.n_heads));
  } catch (const LlamaError& e) {
    throw LlamaError(cat(where, ": corrupt llama2.c header (", e.what(), ")"));
  }
  const std::int64_t D = c.dim, H = c.hidden_dim, L = c.n_layers, V = c.vocab_size, KV = c.kv_dim();
  const std::int64_t hd = c.head_dim;
  const std::int64_t floats = V * D + L * D + L * D * D + 2 * L * KV * D + L * D * D + L * D + 3 * L * H * D + D +
                              c.max_seq_len * hd + (c.tie_embeddings ? 0 : V * D);
  const std::uint64_t expected = 28 + static_cast<std::uint64_t>(floats) * 4;
  if (bytes.size() != expected)
    throw LlamaError(cat(where, ": ", bytes.size() < expected ? "truncated" : "oversized",
                         " llama2.c checkpoint: the header (dim ", D, ", hidden ", H, ", layers ", L, ", heads ",
                         c.n_heads, ", kv heads ", c.n_kv_heads, ", vocab ", V, ", seq_len ", c.max_seq_len,
                         ") implies ", expected, " bytes, found ", bytes.size()));
  const float* p = reinterpret_cast<const float*>(bytes.data() + 28);  // 28 is 4-aligned
  auto take = [&](Eigen::Index rows, Eigen::Index cols) {
    Matrix m(rows, cols);
    std::memcpy(m.data(), p, static_cast<std::size_t>(rows * cols) * 4);
    p += rows * cols;
    return m;
  };
  ModelWeights w = ModelWeights::zeros(c);
  w.embed = take(V, D);
  for (auto& l : w.layers) l.attn_norm = take(D, 1);
  for (auto& l : w.layers) l.wq = permute_interleaved_to_rotate_half(take(D, D), c.n_heads);
  for (auto& l : w.layers) l.wk = permute_interleaved_to_rotate_half(take(KV, D), c.n_kv_heads);
  for (auto& l : w.layers) l.wv = take(KV, D);
  for (auto& l : w.layers) l.wo = take(D, D);
  for (auto& l : w.layers) l.ffn_norm = take(D, 1);
  for (auto& l : w.layers) l.w_gate = take(H, D);   // w1
  for (auto& l : w.layers) l.w_down = take(D, H);   // w2
  for (auto& l : w.layers) l.w_up = take(H, D);     // w3
  w.final_norm = take(D, 1);
  p += 2 * c.max_seq_len * (hd / 2);  // freq_cis_real / imag: recomputed from theta instead
  if (!c.tie_embeddings) w.lm_head = take(V, D);
  return w;
}

/// Name -> file lookup over one or several safetensors files (a sharded HF checkpoint).
class SafetensorsCollection {
 public:
  /// Opens `dir/model.safetensors.index.json` if present, else `dir/model.safetensors`.
  static SafetensorsCollection open_directory(const std::filesystem::path& dir) {
    SafetensorsCollection c;
    const auto index = dir / "model.safetensors.index.json";
    const auto single = dir / "model.safetensors";
    if (std::filesystem::exists(index)) {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(read_file_text(index));
      } catch (const nlohmann::json::parse_error& e) {
        throw LlamaError(cat(index.string(), ": corrupt JSON (", e.what(), ")"));
      }
      if (!j.contains("weight_map") || !j["weight_map"].is_object())
        throw LlamaError(cat(index.string(), ": expected an object 'weight_map', found ",
                             j.contains("weight_map") ? j["weight_map"].type_name() : "nothing"));
      std::map<std::string, std::size_t> file_index;
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
        const std::string file = it.value().get<std::string>();
        auto [pos, inserted] = file_index.emplace(file, c.files_.size());
        if (inserted) c.files_.push_back(std::make_shared<SafetensorsFile>(dir / file));
        c.where_[it.key()] = pos->second;
      }
      for (std::size_t i = 0; i < c.files_.size(); ++i)  // tensors present but not in the map
        for (const auto& [name, info] : c.files_[i]->tensors()) c.where_.emplace(name, i);
    } else if (std::filesystem::exists(single)) {
      c.add_file(single);
    } else {
      throw LlamaError(cat(dir.string(), ": expected model.safetensors or model.safetensors.index.json, found neither"));
    }
    return c;
  }
  /// Adds one safetensors file.
  void add_file(const std::filesystem::path& file) {
    files_.push_back(std::make_shared<SafetensorsFile>(file));
    for (const auto& [name, info] : files_.back()->tensors()) where_.emplace(name, files_.size() - 1);
  }
  /// Every tensor name, sorted.
  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const auto& [name, i] : where_) n.push_back(name);
    return n;
  }
  /// Whether `name` exists.
  [[nodiscard]] bool contains(const std::string& name) const { return where_.count(name) != 0; }
  /// The file holding `name`; throws naming the tensor if none does.
  [[nodiscard]] const SafetensorsFile& file_of(const std::string& name) const {
    auto it = where_.find(name);
    if (it == where_.end())
      throw LlamaError(cat("checkpoint: expected tensor '", name, "', not found in ",
                           files_.empty() ? std::string("(no files)") : files_.front()->path().string(),
                           files_.size() > 1 ? cat(" and ", files_.size() - 1, " other shard(s)") : std::string()));
    return *files_[it->second];
  }
  /// Reads `name` as a (rows, cols) matrix with a shape check.
  [[nodiscard]] Matrix read_matrix(const std::string& name, std::int64_t rows, std::int64_t cols) const {
    return file_of(name).read_matrix(name, rows, cols);
  }
  /// Reads `name` as a vector of `n` with a shape check.
  [[nodiscard]] Vector read_vector(const std::string& name, std::int64_t n) const {
    Matrix m = read_matrix(name, n, 1);
    return Eigen::Map<Vector>(m.data(), n);
  }

 private:
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::size_t> where_;
};

/// Options of the checkpoint loaders.
struct LoadOptions {
  /// false (default): a tensor the model does not use (e.g. Qwen2's q/k/v biases) or a config
  /// field that changes the architecture and is not implemented is an error naming it. true
  /// (`--allow-unused`): they are ignored, each reported through `warn`.
  bool allow_unused = false;
  /// Receives warnings (default: "warning: ..." on stderr).
  std::function<void(const std::string&)> warn;
  /// true: an HF safetensors checkpoint's target linears are not converted to fp32; they stay in
  /// the mapped files and ModelWeights::stored_linears reads them (llama/stored_linears.hpp). Their
  /// names, shapes and dtypes are checked as a full load checks them. The GPU paths load this way.
  /// A llama2.c .bin (its q/k rows need a permutation) is always loaded in full.
  bool keep_linears_stored = false;
};

/// The target linears of an HF safetensors checkpoint, in its mapped files (one or several shards).
class SafetensorsLinearSource final : public LinearSource {
 public:
  /// `st` is the checkpoint's collection; every target linear of `c` must be in it with its shape
  /// (checked here, naming the tensor, the expected and the found shape).
  SafetensorsLinearSource(SafetensorsCollection st, const ModelConfig& c, std::string where)
      : st_(std::move(st)), where_(std::move(where)) {
    layers_ = c.n_layers;
    views_.resize(static_cast<std::size_t>(c.n_layers) * kModulesPerLayer);
    std::map<std::string, int> dtypes;
    for (int l = 0; l < c.n_layers; ++l)
      for (int m = 0; m < kModulesPerLayer; ++m) {
        const LinearId id{l, static_cast<Module>(m)};
        const std::string name = id.hf_name();
        const SafetensorsFile& f = st_.file_of(name);
        const TensorInfo& t = f.info(name);
        const auto [rows, cols] = linear_shape(c, id.module);
        if (t.shape.size() != 2 || t.shape[0] != rows || t.shape[1] != cols)
          throw LlamaError(cat(f.path().string(), ": tensor '", name, "' has the wrong shape: expected ",
                               shape_string(std::vector<std::int64_t>{rows, cols}), ", found ", shape_string(t.shape)));
        if (t.dtype != DType::F32 && t.dtype != DType::BF16 && t.dtype != DType::F16)
          throw LlamaError(cat(f.path().string(), ": tensor '", name, "': expected a floating dtype (F32, BF16 or F16), found ",
                               dtype_name(t.dtype)));
        views_[static_cast<std::size_t>(id.index())] = {t.dtype, f.raw(name), rows, cols};
        ++dtypes[dtype_name(t.dtype)];
      }
    for (const auto& [d, n] : dtypes) dtypes_ += cat(dtypes_.empty() ? "" : "/", d);
  }
  [[nodiscard]] StoredLinear stored(LinearId id) const override {
    if (id.layer < 0 || id.layer >= layers_)
      throw LlamaError(cat("stored linears of ", where_, ": expected a layer in [0, ", layers_, "), found ", id.layer));
    return views_[static_cast<std::size_t>(id.index())];
  }
  [[nodiscard]] std::string describe() const override { return cat(where_, " (", dtypes_, ", mapped)"); }

 private:
  SafetensorsCollection st_;  // keeps the mappings alive
  std::string where_, dtypes_;
  int layers_ = 0;
  std::vector<StoredLinear> views_;
};

namespace detail {
inline void load_warning(const LoadOptions& opt, const std::string& msg) {
  if (opt.warn) opt.warn(msg);
  else std::cerr << "warning: " << msg << "\n";
}

/// Throws (or, with allow_unused, warns) about tensors of `st` that the model `w` does not hold.
/// Derived buffers (rotary_emb.inv_freq) are skipped; a tied checkpoint's lm_head.weight is
/// accepted when it equals the embedding.
inline void check_unused_tensors(const std::filesystem::path& dir, const SafetensorsCollection& st, const ModelWeights& w,
                                 const LoadOptions& opt) {
  std::set<std::string> used;
  w.for_each_parameter([&](const std::string& n, const float*, std::int64_t, const std::vector<std::int64_t>&) { used.insert(n); });
  std::vector<std::string> biases, attn_biases, others;
  for (const auto& n : st.names()) {
    if (used.count(n)) continue;
    if (n.size() > 21 && n.ends_with("rotary_emb.inv_freq")) continue;  // recomputed from rope_theta
    if (n == "lm_head.weight" && w.config.tie_embeddings) {
      const Matrix head = st.read_matrix(n, w.embed.rows(), w.embed.cols());
      if (head == w.embed) continue;
      others.push_back(n + " (differs from model.embed_tokens.weight, but tie_word_embeddings=true)");
      continue;
    }
    const bool attn = n.ends_with("q_proj.bias") || n.ends_with("k_proj.bias") || n.ends_with("v_proj.bias") ||
                      n.ends_with("o_proj.bias");
    if (attn) attn_biases.push_back(n);
    else if (n.ends_with(".bias")) biases.push_back(n);
    else others.push_back(n);
  }
  auto listing = [](const std::vector<std::string>& v) {  // the first three, then the count
    std::string s;
    for (std::size_t i = 0; i < v.size() && i < 3; ++i) s += (i ? ", " : "") + v[i];
    if (v.size() > 3) s += cat(", ... (", v.size(), " in all)");
    return s;
  };
  std::vector<std::string> problems;
  if (!attn_biases.empty())
    problems.push_back(listing(attn_biases) + cat(": attention biases are not part of model_type ", w.config.model_type,
                                                  " (only qwen2's q/k/v biases are supported)"));
  if (!biases.empty()) problems.push_back(listing(biases) + ": biases are not supported yet");
  if (!others.empty()) problems.push_back(listing(others) + ": not used by the model (LLaMA architecture)");
  if (problems.empty()) return;
  std::string msg;
  for (const auto& p : problems) msg += (msg.empty() ? "" : "; ") + p;
  if (!opt.allow_unused)
    throw LlamaError(cat(dir.string(), ": ", msg, " (pass --allow-unused to drop such tensors with a warning; "
                                                  "the model then differs from the checkpoint)"));
  load_warning(opt, cat(dir.string(), ": dropping ", msg));
}
}  // namespace detail

/// Loads an HF LLaMA checkpoint directory (`config.json` + safetensors, sharded or not). Every
/// tensor's shape is checked against the config; a mismatch names the tensor and both shapes.
/// Tensors the model does not use and unsupported config fields are errors (see LoadOptions).
inline ModelWeights load_hf_checkpoint(const std::filesystem::path& dir, const LoadOptions& opt = {}) {
  if (!std::filesystem::exists(dir)) throw LlamaError(cat("checkpoint not found: ", dir.string()));
  if (!std::filesystem::is_directory(dir))
    throw LlamaError(cat("expected an HF checkpoint directory (config.json + model.safetensors), found a file: ", dir.string()));
  std::vector<std::string> warnings;
  const ModelConfig c = ModelConfig::from_file(dir / "config.json", opt.allow_unused, &warnings);
  for (const auto& m : warnings) detail::load_warning(opt, m);
  const SafetensorsCollection st = SafetensorsCollection::open_directory(dir);
  ModelWeights w;
  w.config = c;
  const std::int64_t D = c.dim, V = c.vocab_size;
  w.embed = st.read_matrix("model.embed_tokens.weight", V, D);
  w.layers.resize(c.n_layers);
  for (int i = 0; i < c.n_layers; ++i) {
    auto& l = w.layers[i];
    const std::string p = cat("model.layers.", i, ".");
    l.attn_norm = st.read_vector(p + "input_layernorm.weight", D);
    l.ffn_norm = st.read_vector(p + "post_attention_layernorm.weight", D);
    for (int m = 0; m < kModulesPerLayer; ++m) {
      const LinearId id{i, static_cast<Module>(m)};
      const auto [rows, cols] = linear_shape(c, id.module);
      if (!opt.keep_linears_stored) l.linear(id.module) = st.read_matrix(id.hf_name(), rows, cols);
      if (c.qkv_bias && m <= static_cast<int>(Module::v)) {  // Qwen2: q/k/v biases are required
        Vector& b = id.module == Module::q ? l.bq : id.module == Module::k ? l.bk : l.bv;
        b = st.read_vector(id.hf_bias_name(), rows);
      }
    }
  }
  w.final_norm = st.read_vector("model.norm.weight", D);
  if (!c.tie_embeddings) {
    if (!st.contains("lm_head.weight"))
      throw LlamaError(cat(dir.string(), ": config says tie_word_embeddings=false, so expected tensor 'lm_head.weight', not found"));
    w.lm_head = st.read_matrix("lm_head.weight", V, D);
  }
  if (opt.keep_linears_stored) w.stored_linears = std::make_shared<const SafetensorsLinearSource>(st, c, dir.string());
  detail::check_unused_tensors(dir, st, w, opt);
  return w;
}

/// Loads any supported checkpoint: an HF directory, a `.safetensors` file (config.json beside
/// it), or a llama2.c `.bin`.
inline ModelWeights load_checkpoint(const std::filesystem::path& path, const LoadOptions& opt = {}) {
  if (!std::filesystem::exists(path)) throw LlamaError(cat("checkpoint not found: ", path.string()));
  if (std::filesystem::is_directory(path)) return load_hf_checkpoint(path, opt);
  if (path.extension() == ".safetensors") {
    if (path.filename() != "model.safetensors")
      throw LlamaError(cat("expected an HF directory or its model.safetensors, found ", path.string()));
    return load_hf_checkpoint(path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path(), opt);
  }
  return load_llama2c_checkpoint(path);
}

/// The element type of a checkpoint's weights (model.embed_tokens.weight's): F32, BF16 or F16 for
/// an HF directory or its model.safetensors, F32 for a llama2.c .bin.
inline DType checkpoint_dtype(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  fs::path dir = path;
  if (!fs::is_directory(path)) {
    if (path.extension() != ".safetensors") return DType::F32;
    dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  }
  const auto st = SafetensorsCollection::open_directory(dir);
  const DType d = st.file_of("model.embed_tokens.weight").info("model.embed_tokens.weight").dtype;
  return d == DType::BF16 || d == DType::F16 ? d : DType::F32;
}

/// transformers' torch_dtype spelling of a floating dtype.
inline const char* torch_dtype_name(DType d) {
  return d == DType::BF16 ? "bfloat16" : d == DType::F16 ? "float16" : "float32";
}

/// Options for save_hf_checkpoint.
struct SaveOptions {
  DType dtype = DType::F32;                  ///< F32, BF16 or F16
  /// > 0: shard above this many bytes of data (model-0000i-of-0000n.safetensors +
  /// model.safetensors.index.json, as transformers' save_pretrained(max_shard_size=...)); 0: one file
  std::int64_t max_shard_bytes = 0;
  /// optional: the input checkpoint's directory; its config.json is kept (architectures,
  /// model_type and every other field; torch_dtype set to `dtype`) and its generation_config.json copied
  std::filesystem::path source_config_dir;
  std::filesystem::path tokenizer_model;     ///< optional: copied in as tokenizer.model
  /// optional: (source, name inside `dir`) copied in, e.g. Tokenizer::files() (tokenizer.json, ...)
  std::vector<std::pair<std::filesystem::path, std::string>> tokenizer_files;
  bool overwrite = true;                     ///< replace an existing directory at `dir`
};

/// A target linear's value to save instead of the model's (e.g. the merged weight of a training
/// run, computed where it lives): fills `out` with the (out, in) fp32 matrix and returns true, or
/// returns false to save the model's own (held or stored) value.
using LinearOverride = std::function<bool(LinearId, Matrix& out)>;

/// Writes `w` as an HF checkpoint directory (`config.json`, `generation_config.json`,
/// `model.safetensors`, optional `tokenizer.model`) that transformers' LlamaForCausalLM loads.
/// Crash safety: everything is written and fsynced inside `dir.tmp-<pid>`, which is then renamed
/// to `dir` (an existing `dir` is first moved aside and removed only after the rename).
/// Stored linears (ModelWeights::stored_linears) and `override`'s linears are made one at a time as
/// the writer reaches them, so saving a stored model or a merged one needs one linear of host
/// memory, not the model.
inline void save_hf_checkpoint(const std::filesystem::path& dir, const ModelWeights& w, const SaveOptions& opt = {},
                               const LinearOverride& override_linear = {}) {
  namespace fs = std::filesystem;
  const fs::path target = normal_path(dir);
  const fs::path tmp = target.string() + cat(".tmp-", ::getpid());
  const fs::path old = target.string() + cat(".old-", ::getpid());
  if (fs::exists(target) && !opt.overwrite) throw LlamaError(cat("checkpoint directory exists: ", target.string()));
  fs::remove_all(tmp);
  std::error_code ec;
  fs::create_directories(tmp, ec);
  if (ec) throw LlamaError(cat("cannot create ", tmp.string(), ": ", ec.message()));
  auto write_files = [&] {  // everything inside tmp; on any error tmp is removed
    std::map<std::string, LinearId> linear_of;  // HF name → target linear
    for (int l = 0; l < static_cast<int>(w.layers.size()); ++l)
      for (int m = 0; m < kModulesPerLayer; ++m) {
        const LinearId id{l, static_cast<Module>(m)};
        linear_of.emplace(id.hf_name(), id);
      }
    std::vector<TensorToWrite> tensors;
    w.for_each_parameter([&](const std::string& name, const float* data, std::int64_t, const std::vector<std::int64_t>& shape) {
      const auto it = linear_of.find(name);
      if (it == linear_of.end() || (!override_linear && !w.is_stored(it->second))) {
        tensors.push_back({name, shape, data});
        return;
      }
      const LinearId id = it->second;
      const auto [rows, cols] = linear_shape(w.config, id.module);
      tensors.push_back({name, {rows, cols}, nullptr, [&w, &override_linear, id, rows, cols](Matrix& scratch) -> const float* {
                           const Matrix& v = override_linear && override_linear(id, scratch) ? scratch : linear_value(w, id, scratch);
                           if (v.rows() != rows || v.cols() != cols)
                             throw LlamaError(cat("save_hf_checkpoint: ", id.hf_name(), " has shape [", v.rows(), ", ", v.cols(),
                                                  "], expected [", rows, ", ", cols, "] (config)"));
                           return v.data();
                         }});
    });
    const std::uint64_t total = safetensors_data_bytes(tensors, opt.dtype);
    if (opt.max_shard_bytes <= 0 || total <= std::uint64_t(opt.max_shard_bytes)) {
      write_safetensors(tmp / "model.safetensors", tensors, opt.dtype);
    } else {  // consecutive tensors per shard; a tensor larger than the limit gets a shard of its own
      std::vector<std::vector<TensorToWrite>> shards(1);
      std::uint64_t in_shard = 0;
      for (const auto& t : tensors) {
        const std::uint64_t b = safetensors_data_bytes({t}, opt.dtype);
        if (!shards.back().empty() && in_shard + b > std::uint64_t(opt.max_shard_bytes)) shards.emplace_back(), in_shard = 0;
        shards.back().push_back(t);
        in_shard += b;
      }
      nlohmann::ordered_json index;
      index["metadata"] = {{"total_size", total}};
      index["weight_map"] = nlohmann::ordered_json::object();
      for (std::size_t i = 0; i < shards.size(); ++i) {
        char name[64];
        std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
        write_safetensors(tmp / name, shards[i], opt.dtype);
        for (const auto& t : shards[i]) index["weight_map"][t.name] = name;
      }
      write_file_atomic(tmp / "model.safetensors.index.json", index.dump(2) + "\n");
    }
    const char* dtype = torch_dtype_name(opt.dtype);
    const fs::path src_config = opt.source_config_dir / "config.json";
    if (!opt.source_config_dir.empty() && fs::exists(src_config)) {
      nlohmann::ordered_json j = nlohmann::ordered_json::parse(read_file_text(src_config));
      if (j.contains("dtype")) j["dtype"] = dtype;  // transformers >= 4.56 spells torch_dtype "dtype"
      else j["torch_dtype"] = dtype;
      write_file_atomic(tmp / "config.json", j.dump(2) + "\n");
    } else {
      write_file_atomic(tmp / "config.json", w.config.to_json(dtype).dump(2) + "\n");
    }
    if (const fs::path g = opt.source_config_dir / "generation_config.json"; !opt.source_config_dir.empty() && fs::exists(g)) {
      write_file_atomic(tmp / "generation_config.json", read_file_text(g));
    } else {
      nlohmann::json gen = {{"bos_token_id", w.config.bos_token_id}, {"eos_token_id", w.config.eos_token_id},
                            {"_from_model_config", true}};
      write_file_atomic(tmp / "generation_config.json", gen.dump(2) + "\n");
    }
    if (!opt.tokenizer_model.empty()) {
      const auto bytes = read_file_bytes(opt.tokenizer_model);
      write_file_atomic(tmp / "tokenizer.model", std::string_view(bytes.data(), bytes.size()));
    }
    for (const auto& [src, name] : opt.tokenizer_files) {
      const auto bytes = read_file_bytes(src);
      fs::create_directories((tmp / name).parent_path());
      write_file_atomic(tmp / name, std::string_view(bytes.data(), bytes.size()));
    }
    fsync_path(tmp, true);
  };
  try {
    write_files();
  } catch (...) {
    std::error_code ec2;
    fs::remove_all(tmp, ec2);
    throw;
  }
  const bool had_old = fs::exists(target);
  if (had_old) {
    fs::remove_all(old);
    fs::rename(target, old, ec);
    if (ec) throw LlamaError(cat("cannot move old checkpoint ", target.string(), " aside: ", ec.message()));
  }
  fs::rename(tmp, target, ec);
  if (ec) throw LlamaError(cat("cannot rename ", tmp.string(), " to ", target.string(), ": ", ec.message()));
  fsync_path(target.parent_path(), true);
  if (had_old) fs::remove_all(old);
}

}  // namespace hdpissa::llama
