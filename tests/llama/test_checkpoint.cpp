// Checkpoint IO: llama2.c .bin vs HF, save/reload, sharding, bf16, config parsing, clear errors.

#include <fstream>
#include <random>

#include <doctest/doctest.h>

#include "llama/checkpoint.hpp"
#include "llama/model.hpp"
#include "test_util.hpp"

using namespace hdpissa::llama;
namespace fs = std::filesystem;

namespace {

bool weights_equal(const ModelWeights& a, const ModelWeights& b, std::string* first_diff = nullptr) {
  std::vector<std::pair<std::string, std::vector<float>>> va, vb;
  auto grab = [](auto& out) {
    return [&out](const std::string& n, const float* p, std::int64_t c, const std::vector<std::int64_t>&) {
      out.emplace_back(n, std::vector<float>(p, p + c));
    };
  };
  a.for_each_parameter(grab(va));
  b.for_each_parameter(grab(vb));
  if (va.size() != vb.size()) return false;
  for (std::size_t i = 0; i < va.size(); ++i)
    if (va[i] != vb[i]) {
      if (first_diff) *first_diff = va[i].first;
      return false;
    }
  return true;
}

void write_bytes(const fs::path& p, const std::string& s) {
  std::ofstream(p, std::ios::binary).write(s.data(), static_cast<std::streamsize>(s.size()));
}

fs::path copy_hf(const std::string& name) {
  const auto dir = llama_test::scratch(name);
  for (const char* f : {"config.json", "model.safetensors"})
    fs::copy_file(llama_test::data_dir() / "stories260K-hf" / f, dir / f);
  fs::permissions(dir / "config.json", fs::perms::owner_write, fs::perm_options::add);
  fs::permissions(dir / "model.safetensors", fs::perms::owner_write, fs::perm_options::add);
  return dir;
}

}  // namespace

TEST_CASE("checkpoint: llama2.c .bin (q/k permuted on load) equals the HF conversion exactly") {
  if (!llama_test::have_data()) { MESSAGE("SKIPPED: no shared data"); return; }
  const auto d = llama_test::data_dir();
  const ModelWeights bin = load_checkpoint(d / "stories260K" / "stories260K.bin");
  const ModelWeights hf = load_checkpoint(d / "stories260K-hf");
  CHECK(bin.config.dim == 64);
  CHECK(bin.config.hidden_dim == 172);
  CHECK(bin.config.n_layers == 5);
  CHECK(bin.config.n_heads == 8);
  CHECK(bin.config.n_kv_heads == 4);
  CHECK(bin.config.vocab_size == 512);
  CHECK(bin.config.tie_embeddings);
  CHECK(hf.config.rope_theta == 10000.0);  // from rope_parameters (transformers-5 form)
  CHECK(hf.config.head_dim == 8);
  std::string diff;
  CHECK_MESSAGE(weights_equal(bin, hf, &diff), "first differing tensor: " << diff);
  // and the same logits (same code path)
  const std::vector<std::int32_t> toks = {1, 400, 31, 7, 260, 15, 99, 2};
  CpuHooks plain;
  Activations a1, a2;
  forward(bin, Batch::single(toks), plain, a1);
  forward(hf, Batch::single(toks), plain, a2);
  const std::vector<std::int64_t> rows = {0, 3, 7};
  CHECK(logits_at(bin, a1, rows) == logits_at(hf, a2, rows));
  // the permutation is invertible
  CHECK(permute_rotate_half_to_interleaved(permute_interleaved_to_rotate_half(bin.layers[0].wk, 4), 4) == bin.layers[0].wk);
}

TEST_CASE("checkpoint: save -> reload is bit-exact (F32), BF16 rounds, directory replaced atomically") {
  if (!llama_test::have_data()) { MESSAGE("SKIPPED: no shared data"); return; }
  const auto d = llama_test::data_dir();
  ModelWeights w = load_checkpoint(d / "stories260K" / "stories260K.bin");
  const auto dir = llama_test::scratch("save_roundtrip");
  const auto out = dir / "ckpt";
  SaveOptions opt;
  opt.tokenizer_model = d / "stories260K" / "tok512.model";
  save_hf_checkpoint(out, w, opt);
  CHECK(fs::exists(out / "config.json"));
  CHECK(fs::exists(out / "tokenizer.model"));
  CHECK(weights_equal(load_hf_checkpoint(out), w));
  // no temp leftovers
  for (const auto& e : fs::directory_iterator(dir)) CHECK(e.path().filename() == "ckpt");
  for (const auto& e : fs::directory_iterator(out)) CHECK(e.path().extension() != ".tmp");
  // overwrite with a modified model: the directory is replaced
  w.final_norm(0) += 1.0f;
  save_hf_checkpoint(out, w);
  CHECK(load_hf_checkpoint(out).final_norm(0) == w.final_norm(0));
  // untied + BF16
  w.config.tie_embeddings = false;
  w.lm_head = w.embed * 0.5f;
  opt.dtype = DType::BF16;
  save_hf_checkpoint(out, w, opt);
  const ModelWeights r = load_hf_checkpoint(out);
  REQUIRE(r.lm_head.rows() == w.config.vocab_size);
  CHECK(SafetensorsFile(out / "model.safetensors").info("lm_head.weight").dtype == DType::BF16);
  CHECK(nlohmann::json::parse(read_file_text(out / "config.json"))["torch_dtype"] == "bfloat16");
  int bad = 0;
  for (Eigen::Index i = 0; i < w.lm_head.size(); ++i)
    bad += r.lm_head.data()[i] != bf16_to_float(float_to_bf16(w.lm_head.data()[i]));
  CHECK(bad == 0);
  CHECK(std::abs(r.layers[2].wq(3, 5) - w.layers[2].wq(3, 5)) <= std::abs(w.layers[2].wq(3, 5)) / 256.0f);
}

TEST_CASE("checkpoint: sharded safetensors with model.safetensors.index.json") {
  if (!llama_test::have_data()) { MESSAGE("SKIPPED: no shared data"); return; }
  const ModelWeights w = load_checkpoint(llama_test::data_dir() / "stories260K-hf");
  const auto dir = llama_test::scratch("sharded");
  std::vector<TensorToWrite> a, b;
  nlohmann::json map;
  int i = 0;
  w.for_each_parameter([&](const std::string& n, const float* p, std::int64_t, const std::vector<std::int64_t>& s) {
    const bool first = (i++ % 2) == 0;
    (first ? a : b).push_back({n, s, p});
    map[n] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  });
  write_safetensors(dir / "model-00001-of-00002.safetensors", a);
  write_safetensors(dir / "model-00002-of-00002.safetensors", b, DType::F32);
  write_file_atomic(dir / "model.safetensors.index.json", nlohmann::json{{"metadata", {}}, {"weight_map", map}}.dump());
  write_file_atomic(dir / "config.json", w.config.to_json().dump());
  CHECK(weights_equal(load_checkpoint(dir), w));
}

TEST_CASE("checkpoint: f16/bf16 conversions are exact where representable") {
  CHECK(f16_to_float(0x3c00) == 1.0f);
  CHECK(f16_to_float(0xc000) == -2.0f);
  CHECK(f16_to_float(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
  CHECK(f16_to_float(0x7bff) == 65504.0f);
  CHECK(std::isinf(f16_to_float(0x7c00)));
  CHECK(bf16_to_float(float_to_bf16(1.5f)) == 1.5f);
  CHECK(float_to_bf16(1.0f + std::ldexp(1.0f, -8)) == float_to_bf16(1.0f));  // tie → even
  CHECK(bf16_to_float(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8))) == 1.0f + std::ldexp(1.0f, -6));
}

TEST_CASE("checkpoint: config accepts rope_theta forms and llama3 rope scaling") {
  nlohmann::json j = {{"model_type", "llama"}, {"hidden_size", 128}, {"intermediate_size", 256},
                      {"num_hidden_layers", 2}, {"num_attention_heads", 4}, {"num_key_value_heads", 2},
                      {"vocab_size", 100}, {"max_position_embeddings", 64}, {"rms_norm_eps", 1e-6},
                      {"rope_theta", 500000.0}, {"tie_word_embeddings", false}, {"eos_token_id", {128001, 128009}}};
  ModelConfig c = ModelConfig::from_json(j);
  CHECK(c.rope_theta == 500000.0);
  CHECK(c.head_dim == 32);
  CHECK(c.eos_token_id == 128001);
  CHECK_FALSE(c.tie_embeddings);
  const auto plain = c.rope_inv_freq();
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                       {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  c = ModelConfig::from_json(j);
  CHECK(c.rope_scaling.type == "llama3");
  const auto scaled = c.rope_inv_freq();
  int high = 0, low = 0, mid = 0;
  for (std::size_t i = 0; i < plain.size(); ++i) {
    const double wavelen = 2 * M_PI / plain[i];
    if (wavelen < 8192.0 / 4.0) { CHECK(scaled[i] == plain[i]); ++high; }
    else if (wavelen > 8192.0) { CHECK(scaled[i] == doctest::Approx(plain[i] / 8.0)); ++low; }
    else { CHECK(scaled[i] < plain[i]); CHECK(scaled[i] > plain[i] / 8.0); ++mid; }
  }
  CHECK(high > 0);
  CHECK(low > 0);
  // written config round-trips
  const ModelConfig back = ModelConfig::from_json(c.to_json());
  CHECK(back.rope_scaling.factor == 8.0);
  CHECK(back.rope_theta == 500000.0);
  CHECK(back.n_kv_heads == 2);
  // rope_parameters (transformers 5) carrying theta and llama3 together
  nlohmann::json j5 = j;
  j5.erase("rope_theta");
  j5.erase("rope_scaling");
  j5["rope_parameters"] = {{"rope_type", "llama3"}, {"rope_theta", 500000.0}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                           {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 8192}};
  CHECK(ModelConfig::from_json(j5).rope_inv_freq() == scaled);
  j5["rope_parameters"].erase("factor");
  LLAMA_CHECK_THROWS_WITH_ALL(ModelConfig::from_json(j5), "factor");
  nlohmann::json bad = j;
  bad["num_key_value_heads"] = 3;
  LLAMA_CHECK_THROWS_WITH_ALL(ModelConfig::from_json(bad), "num_key_value_heads", "3");
}

TEST_CASE("checkpoint: clear errors for missing, truncated, corrupt and mis-shaped checkpoints") {
  if (!llama_test::have_data()) { MESSAGE("SKIPPED: no shared data"); return; }
  const auto d = llama_test::data_dir();
  SUBCASE("missing") {
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint("/nonexistent/ckpt"), "not found", "/nonexistent/ckpt");
    const auto dir = llama_test::scratch("missing_st");
    fs::copy_file(d / "stories260K-hf" / "config.json", dir / "config.json");
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(dir), "model.safetensors", "found neither");
    const auto dir2 = llama_test::scratch("missing_cfg");
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(dir2), "file not found", "config.json");
  }
  SUBCASE("truncated safetensors") {
    const auto dir = copy_hf("truncated_st");
    fs::resize_file(dir / "model.safetensors", fs::file_size(dir / "model.safetensors") - 1000);
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(dir), "truncated", "model.safetensors");
    fs::resize_file(dir / "model.safetensors", 100);  // cut inside the header
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(dir), "truncated", "header");
    fs::resize_file(dir / "model.safetensors", 5);
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(dir), "truncated", "8 bytes");
  }
  SUBCASE("corrupt JSON header") {
    const auto dir = copy_hf("corrupt_header");
    std::fstream f(dir / "model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(8);  // first byte of the JSON: '{' -> '#'
    f.write("#", 1);
    f.close();
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(dir), "corrupt safetensors header", "expected JSON");
  }
  SUBCASE("corrupt config.json") {
    const auto dir = copy_hf("corrupt_config");
    write_bytes(dir / "config.json", "{\"hidden_size\": 64,");
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(dir), "config.json", "corrupt JSON");
    write_bytes(dir / "config.json", "{\"hidden_size\": 64}");
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(dir), "config.json", "intermediate_size");
  }
  SUBCASE("shape disagrees with config") {
    const auto dir = copy_hf("shape_mismatch");
    auto cfg = nlohmann::json::parse(read_file_text(dir / "config.json"));
    cfg["intermediate_size"] = 173;
    write_bytes(dir / "config.json", cfg.dump());
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(dir), "model.layers.0.mlp.gate_proj.weight", "expected [173, 64]",
                                "found [172, 64]");
  }
  SUBCASE("untied config without lm_head") {
    const auto dir = copy_hf("no_lm_head");
    auto cfg = nlohmann::json::parse(read_file_text(dir / "config.json"));
    cfg["tie_word_embeddings"] = false;
    write_bytes(dir / "config.json", cfg.dump());
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(dir), "lm_head.weight", "not found");
  }
  SUBCASE("truncated llama2.c .bin") {
    const auto dir = llama_test::scratch("truncated_bin");
    fs::copy_file(d / "stories260K" / "stories260K.bin", dir / "m.bin");
    fs::permissions(dir / "m.bin", fs::perms::owner_write, fs::perm_options::add);
    fs::resize_file(dir / "m.bin", 500000);
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(dir / "m.bin"), "truncated", "1056540", "500000");
    fs::resize_file(dir / "m.bin", 12);
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(dir / "m.bin"), "truncated", "28-byte header");
  }
}

TEST_CASE("checkpoint: an interrupted save never looks like a checkpoint") {
  if (!llama_test::have_data()) { MESSAGE("SKIPPED: no shared data"); return; }
  const ModelWeights w = load_checkpoint(llama_test::data_dir() / "stories260K-hf");
  const auto dir = llama_test::scratch("interrupted");
  // what a crash mid-save leaves behind: a temp directory with a partial file, nothing at the final name
  fs::create_directories(dir / "ckpt.tmp-999");
  write_bytes(dir / "ckpt.tmp-999" / "model.safetensors", "partial");
  LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(dir / "ckpt"), "not found");
  save_hf_checkpoint(dir / "ckpt", w);
  CHECK(weights_equal(load_checkpoint(dir / "ckpt"), w));
  // a crash mid-write of a single file leaves only name.tmp; the previous complete file survives
  write_file_atomic(dir / "f.bin", std::string("complete"));
  write_bytes(dir / "f.bin.tmp", "parti");
  CHECK(read_file_text(dir / "f.bin") == "complete");
  write_file_atomic(dir / "f.bin", std::string("new"));
  CHECK(read_file_text(dir / "f.bin") == "new");
  CHECK_FALSE(fs::exists(dir / "f.bin.tmp"));
}

// ---------------------------------------------------------------- no silent loss (LoadOptions)
namespace {

/// A tiny HF checkpoint (dim 4, 1 layer, 2 heads of 2, 1 KV head, vocab 6) with `extra` tensors
/// added and `config_patch` merged into its config.json.
fs::path tiny_checkpoint(const std::string& name, const std::vector<std::pair<std::string, std::vector<std::int64_t>>>& extra,
                         const nlohmann::json& config_patch = nlohmann::json::object()) {
  ModelConfig c;
  c.dim = 4;
  c.hidden_dim = 8;
  c.n_layers = 1;
  c.n_heads = 2;
  c.n_kv_heads = 1;
  c.head_dim = 2;
  c.vocab_size = 6;
  c.max_seq_len = 16;
  c.tie_embeddings = true;
  ModelWeights w = ModelWeights::zeros(c);
  w.embed.setConstant(0.5f);
  const auto dir = llama_test::scratch(name) / "ckpt";
  save_hf_checkpoint(dir, w);
  static const std::vector<float> zeros(64, 0.0f);
  std::vector<TensorToWrite> tensors;
  w.for_each_parameter([&](const std::string& n, const float* p, std::int64_t, const std::vector<std::int64_t>& s) {
    tensors.push_back({n, s, p});
  });
  for (const auto& [n, s] : extra) tensors.push_back({n, s, zeros.data()});
  write_safetensors(dir / "model.safetensors", tensors, DType::F32);
  nlohmann::json cfg = nlohmann::json::parse(read_file_text(dir / "config.json"));
  cfg.merge_patch(config_patch);
  write_file_atomic(dir / "config.json", cfg.dump(2));
  return dir;
}

}  // namespace

TEST_CASE("checkpoint: unused tensors and unsupported config fields are errors unless --allow-unused") {
  const auto ok = tiny_checkpoint("nsl_ok", {});
  CHECK(load_checkpoint(ok).config.dim == 4);

  SUBCASE("an extra tensor") {
    const auto dir = tiny_checkpoint("nsl_extra", {{"model.layers.0.mlp.extra.weight", {2, 2}}});
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(dir), "model.layers.0.mlp.extra.weight", "not used by the model",
                                "--allow-unused");
    std::vector<std::string> warnings;
    LoadOptions allow{true, [&](const std::string& m) { warnings.push_back(m); }};
    CHECK(load_checkpoint(dir, allow).config.dim == 4);
    REQUIRE(warnings.size() == 1);
    CHECK(llama_test::contains(warnings[0], "model.layers.0.mlp.extra.weight"));
  }
  SUBCASE("Qwen2 q/k/v biases: loaded for qwen2, required there, an error elsewhere") {
    const std::vector<std::pair<std::string, std::vector<std::int64_t>>> biases = {
        {"model.layers.0.self_attn.q_proj.bias", {4}},
        {"model.layers.0.self_attn.k_proj.bias", {2}},
        {"model.layers.0.self_attn.v_proj.bias", {2}}};
    const nlohmann::json qwen2 = {{"model_type", "qwen2"}, {"architectures", {"Qwen2ForCausalLM"}}};
    const ModelWeights w = load_checkpoint(tiny_checkpoint("nsl_qwen2", biases, qwen2));
    CHECK(w.config.qkv_bias);
    CHECK(w.config.model_type == "qwen2");
    CHECK(w.layers[0].bq.size() == 4);
    CHECK(w.layers[0].bv.size() == 2);
    CHECK(w.layers[0].bias(Module::o) == nullptr);
    CHECK(w.config.to_json()["model_type"] == "qwen2");
    CHECK(w.config.to_json()["architectures"][0] == "Qwen2ForCausalLM");
    // a qwen2 config without the biases: the missing tensor is named
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(tiny_checkpoint("nsl_qwen2_nob", {}, qwen2)),
                                "model.layers.0.self_attn.q_proj.bias");
    // biases in a llama checkpoint: not part of the architecture
    const auto dir = tiny_checkpoint("nsl_llama_bias", biases);
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(dir), "model.layers.0.self_attn.q_proj.bias",
                                "not part of model_type llama");
    std::vector<std::string> warnings;
    CHECK_NOTHROW(load_checkpoint(dir, LoadOptions{true, [&](const std::string& m) { warnings.push_back(m); }}));
    CHECK(warnings.size() == 1);
    // o_proj bias in a qwen2 checkpoint: named, never dropped
    LLAMA_CHECK_THROWS_WITH_ALL(
        load_checkpoint(tiny_checkpoint("nsl_qwen2_o", {biases[0], biases[1], biases[2],
                                                         {"model.layers.0.self_attn.o_proj.bias", {4}}}, qwen2)),
        "model.layers.0.self_attn.o_proj.bias");
  }
  SUBCASE("Qwen2 sliding window: use_sliding_window, max_window_layers, layer_types") {
    auto cfg_of = [](const nlohmann::json& patch) {
      nlohmann::json j = {{"model_type", "qwen2"}, {"hidden_size", 8}, {"intermediate_size", 16},
                          {"num_hidden_layers", 4}, {"num_attention_heads", 2}, {"vocab_size", 10}};
      j.merge_patch(patch);
      return ModelConfig::from_json(j);
    };
    CHECK(cfg_of({{"use_sliding_window", false}, {"sliding_window", 4}}).sliding_window == 0);
    const ModelConfig c = cfg_of({{"use_sliding_window", true}, {"sliding_window", 4}, {"max_window_layers", 2}});
    CHECK(c.attention_window(1) == 0);
    CHECK(c.attention_window(2) == 4);
    CHECK(c.to_json()["max_window_layers"] == 2);
    CHECK(c.to_json()["use_sliding_window"] == true);
    CHECK(cfg_of({{"use_sliding_window", true}, {"sliding_window", 4}, {"max_window_layers", 4}}).sliding_window == 0);
    const ModelConfig lt = cfg_of({{"use_sliding_window", true}, {"sliding_window", 4},
                                   {"layer_types", {"full_attention", "full_attention", "full_attention", "sliding_attention"}}});
    CHECK(lt.attention_window(2) == 0);
    CHECK(lt.attention_window(3) == 4);
    LLAMA_CHECK_THROWS_WITH_ALL(
        cfg_of({{"use_sliding_window", true}, {"sliding_window", 4},
                {"layer_types", {"sliding_attention", "full_attention", "full_attention", "full_attention"}}}),
        "layer_types");
  }
  SUBCASE("a tied lm_head.weight equal to the embedding is accepted, a different one is not") {
    const auto dir = tiny_checkpoint("nsl_head", {{"lm_head.weight", {6, 4}}});  // zeros: differs
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(dir), "lm_head.weight", "differs");
  }
  SUBCASE("unsupported config fields") {
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(tiny_checkpoint("nsl_ab", {}, {{"attention_bias", true}})),
                                "config.json", "attention_bias=true", "--allow-unused");
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(tiny_checkpoint("nsl_mlp", {}, {{"mlp_bias", true}})), "mlp_bias=true");
    const auto yarn = tiny_checkpoint("nsl_yarn", {}, {{"rope_scaling", {{"rope_type", "yarn"}, {"factor", 4.0}}}});
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(yarn), "rope type 'yarn'");
    std::vector<std::string> warnings;
    const auto w = load_checkpoint(yarn, LoadOptions{true, [&](const std::string& m) { warnings.push_back(m); }});
    CHECK(w.config.rope_scaling.type == "default");
    REQUIRE(warnings.size() == 1);
    CHECK(llama_test::contains(warnings[0], "yarn"));
    LLAMA_CHECK_THROWS_WITH_ALL(load_checkpoint(tiny_checkpoint("nsl_act", {}, {{"hidden_act", "gelu"}})), "hidden_act");
    // what already loads keeps loading: llama3 rope scaling, a list of EOS ids
    const auto l31 = tiny_checkpoint("nsl_l31", {}, {{"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0},
                                                                       {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
                                                                       {"original_max_position_embeddings", 8}}},
                                                     {"eos_token_id", {5, 4}}});
    CHECK(load_checkpoint(l31).config.eos_token_id == 5);
  }
  SUBCASE("Mistral sliding window: loaded and saved; consumers without it reject binding windows") {
    const auto dir = tiny_checkpoint("nsl_swa", {}, {{"model_type", "mistral"}, {"sliding_window", 8}});
    const ModelWeights w = load_checkpoint(dir);
    CHECK(w.config.sliding_window == 8);
    CHECK(w.config.attention_window(0) == 8);
    CHECK_FALSE(w.config.window_binds(8));
    CHECK(w.config.window_binds(9));
    CHECK_NOTHROW(w.config.check_sliding_window(8, "--max-len"));
    LLAMA_CHECK_THROWS_WITH_ALL(w.config.check_sliding_window(16, "--max-len"), "sliding_window 8", "--max-len 16",
                                "not supported");
    CHECK(w.config.to_json()["sliding_window"] == 8);  // saved, not dropped
    CHECK(w.config.to_json()["model_type"] == "mistral");
    const auto off = tiny_checkpoint("nsl_swa_null", {}, {{"model_type", "mistral"}, {"sliding_window", nullptr}});
    CHECK(load_checkpoint(off).config.sliding_window == 0);
  }

}

// ---------------------------------------------------------------- stored linears (stored_linears.hpp)

namespace {
std::string file_bytes(const fs::path& p) {
  const auto b = read_file_bytes(p);
  return std::string(b.begin(), b.end());
}
/// Every file of an HF directory's weights (model.safetensors, or the index and its shards), by name.
std::map<std::string, std::string> weight_files(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.ends_with(".safetensors") || n == "model.safetensors.index.json") out[n] = file_bytes(e.path());
  }
  return out;
}
LoadOptions stored_load() {
  LoadOptions o;
  o.keep_linears_stored = true;
  return o;
}
}  // namespace

TEST_CASE("stored linears: a stored load holds no target linear and gives the full load's values (F32, BF16, F16; sharded)") {
  if (!llama_test::have_data()) { MESSAGE("SKIPPED: no shared data"); return; }
  const ModelWeights base = load_checkpoint(llama_test::data_dir() / "stories260K-hf");  // F32
  const auto dir = llama_test::scratch("stored_load");
  struct Case { const char* name; DType dtype; std::int64_t shard; };
  for (const Case c : {Case{"f32", DType::F32, 0}, Case{"bf16", DType::BF16, 0}, Case{"f16", DType::F16, 0},
                       Case{"bf16-sharded", DType::BF16, 100000}}) {
    CAPTURE(c.name);
    SaveOptions so;
    so.dtype = c.dtype;
    so.max_shard_bytes = c.shard;
    save_hf_checkpoint(dir / c.name, base, so);
    if (c.shard) REQUIRE(fs::exists(dir / c.name / "model.safetensors.index.json"));
    const ModelWeights full = load_checkpoint(dir / c.name);
    const ModelWeights st = load_checkpoint(dir / c.name, stored_load());
    REQUIRE(st.stored_linears != nullptr);
    CHECK_FALSE(st.holds_linears());
    CHECK(full.holds_linears());
    CHECK(st.stored_linears->describe().find(dtype_name(c.dtype)) != std::string::npos);
    CHECK(st.num_parameters() == full.num_parameters());
    CHECK(st.num_parameters() == base.num_parameters());
    // the other parameters are loaded as before
    CHECK(st.embed == full.embed);
    CHECK(st.final_norm == full.final_norm);
    long mismatched = 0, held = 0;
    for (int l = 0; l < full.config.n_layers; ++l) {
      CHECK(st.layers[l].attn_norm == full.layers[l].attn_norm);
      CHECK(st.layers[l].ffn_norm == full.layers[l].ffn_norm);
      for (int m = 0; m < kModulesPerLayer; ++m) {
        const LinearId id{l, static_cast<Module>(m)};
        held += st.linear(id).size() != 0;
        REQUIRE(st.is_stored(id));
        const auto sl = stored_linear(st, id);
        REQUIRE(sl.has_value());
        CHECK(sl->dtype == c.dtype);
        CHECK(stored_as_bf16(st, id) == (c.dtype == DType::BF16));
        Matrix scratch;
        const Matrix& v = linear_value(st, id, scratch);
        CHECK(&v == &scratch);
        mismatched += !(v == full.linear(id));
        // a held linear wins over the source (a copy given a merged value)
        ModelWeights copy = st;
        copy.linear(id) = full.linear(id) * 2.0f;
        CHECK_FALSE(copy.is_stored(id));
        CHECK(&linear_value(copy, id, scratch) == &copy.linear(id));
      }
    }
    CHECK(held == 0);
    CHECK(mismatched == 0);
    CHECK(weights_equal(held_copy(st), full));
    CHECK(held_copy(st).holds_linears());
    CHECK(held_copy(st).stored_linears == nullptr);
  }
  // a llama2.c .bin is always loaded in full (its q/k rows are permuted on load)
  const ModelWeights bin = load_checkpoint(llama_test::data_dir() / "stories260K" / "stories260K.bin", stored_load());
  CHECK(bin.holds_linears());
  CHECK(bin.stored_linears == nullptr);
}

TEST_CASE("stored linears: saving a stored model writes the bytes of saving the full one (F32, BF16; sharded)") {
  if (!llama_test::have_data()) { MESSAGE("SKIPPED: no shared data"); return; }
  const auto src = llama_test::data_dir() / "stories260K-hf";
  const ModelWeights full = load_checkpoint(src);
  const ModelWeights st = load_checkpoint(src, stored_load());
  const auto dir = llama_test::scratch("stored_save");
  for (const DType d : {DType::F32, DType::BF16})
    for (const std::int64_t shard : {std::int64_t(0), std::int64_t(150000)}) {
      const std::string dname = dtype_name(d);
      CAPTURE(dname);
      CAPTURE(shard);
      SaveOptions so;
      so.dtype = d;
      so.max_shard_bytes = shard;
      save_hf_checkpoint(dir / "full", full, so);
      save_hf_checkpoint(dir / "stored", st, so);
      const auto a = weight_files(dir / "full"), b = weight_files(dir / "stored");
      if (shard) CHECK((a.size() >= 3 && a.count("model.safetensors.index.json") == 1));  // shards + the index
      else CHECK(a.size() == 1u);
      CHECK(a == b);
      CHECK(file_bytes(dir / "full" / "config.json") == file_bytes(dir / "stored" / "config.json"));
    }
}

TEST_CASE("save_hf_checkpoint: an override replaces exactly its linears; a bad one leaves nothing behind") {
  if (!llama_test::have_data()) { MESSAGE("SKIPPED: no shared data"); return; }
  const auto src = llama_test::data_dir() / "stories260K-hf";
  const ModelWeights full = load_checkpoint(src);
  const ModelWeights st = load_checkpoint(src, stored_load());
  const auto dir = llama_test::scratch("override_save");
  // the reference: a held copy whose q and down projections changed
  auto changed = [](LinearId id) { return id.module == Module::q || id.module == Module::down; };
  auto value = [&](LinearId id) { return Matrix(full.linear(id).array() * 0.5f + float(id.layer)); };
  ModelWeights ref = full;
  for (int l = 0; l < full.config.n_layers; ++l)
    for (int m = 0; m < kModulesPerLayer; ++m)
      if (const LinearId id{l, static_cast<Module>(m)}; changed(id)) ref.linear(id) = value(id);
  int calls = 0;
  const LinearOverride over = [&](LinearId id, Matrix& out) {
    ++calls;
    if (!changed(id)) return false;
    out = value(id);
    return true;
  };
  SaveOptions so;
  so.dtype = DType::BF16;
  save_hf_checkpoint(dir / "ref", ref, so);
  save_hf_checkpoint(dir / "stored", st, so, over);
  CHECK(calls == full.config.n_layers * kModulesPerLayer);  // once per linear
  save_hf_checkpoint(dir / "held", full, so, over);
  CHECK(weight_files(dir / "ref") == weight_files(dir / "stored"));
  CHECK(weight_files(dir / "ref") == weight_files(dir / "held"));
  // an override of the wrong shape: an error naming the tensor; the previous checkpoint stays, no temporary
  const auto before = weight_files(dir / "stored");
  const LinearOverride bad = [](LinearId id, Matrix& out) {
    if (id.layer != 1 || id.module != Module::o) return false;
    out = Matrix::Zero(3, 4);
    return true;
  };
  CHECK_THROWS_WITH_AS(save_hf_checkpoint(dir / "stored", st, so, bad),
                       doctest::Contains("model.layers.1.self_attn.o_proj.weight has shape [3, 4], expected [64, 64]"),
                       LlamaError);
  CHECK(weight_files(dir / "stored") == before);
  for (const auto& e : fs::directory_iterator(dir)) {
    CAPTURE(e.path().filename().string());
    CHECK(e.path().filename().string().find(".tmp") == std::string::npos);
  }
}

TEST_CASE("stored linears: a mis-shaped linear is refused at load, naming it and both shapes") {
  if (!llama_test::have_data()) { MESSAGE("SKIPPED: no shared data"); return; }
  ModelWeights w = load_checkpoint(llama_test::data_dir() / "stories260K-hf");
  w.layers[3].w_up = Matrix::Zero(w.config.hidden_dim + 1, w.config.dim);
  const auto dir = llama_test::scratch("stored_misshaped");
  save_hf_checkpoint(dir / "m", w);
  CHECK_THROWS_WITH_AS(load_checkpoint(dir / "m", stored_load()),
                       doctest::Contains("tensor 'model.layers.3.mlp.up_proj.weight' has the wrong shape: expected [172, 64], found [173, 64]"),
                       LlamaError);
}
