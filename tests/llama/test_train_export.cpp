// hdpissa-train's Hugging Face outputs (issue 17), checked against PEFT's documented format
// (hand-written expectations) and independent computations:
//  - lora: adapter_config.json fields, adapter_model.safetensors key names and shapes; the base
//    checkpoint + s·B A of the adapter read back equals the merged model written beside it.
//  - pissa: the rank-2r converted adapter on the ORIGINAL base, and the native adapter on
//    pissa/residual_model, both give the merged model (fp32 tolerance).
//  - hdpissa --export-lora-rank: the kept share of ‖ΔW‖² equals the one computed from Eigen's
//    JacobiSVD of ΔW (an independent SVD); at R = min(out, in) B A reproduces ΔW.
//  - merged output: input dtype by default, bf16 / f16 on request, sharding + index, the input's
//    config.json kept, tokenizer files copied.
//  - scaling: PEFT's alpha / r by default, the reference's alpha // r with --scaling reference.

#include <filesystem>
#include <fstream>
#include <sstream>

#include <Eigen/SVD>
#include <doctest/doctest.h>

#include "llama/train/trainer.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace hdpissa::llama;
using Comm = hdpissa::VirtualRanks<hdpissa::SingleProcess>;

namespace {

TrainOptions export_options(const std::string& method, const fs::path& out) {
  const fs::path d = llama_test::data_dir();
  TrainOptions o;
  o.model = (d / "stories260K-hf").string();
  o.tokenizer = o.model;
  o.data = (d / "gsm8k" / "train.jsonl").string();
  o.max_examples = 32;
  o.method = parse_choice<Method>("--method", method);
  o.rank = 4;
  o.alpha = 6;  // scaling 1.5 (PEFT's float scaling)
  o.groups_per_process = 2;
  o.lr = 5e-3;
  o.max_len = 256;
  o.micro_batch = 2;
  o.max_steps = 3;
  o.quiet = true;
  o.threads = 1;
  o.output = out.string();
  return o;
}

void train(const TrainOptions& o, std::ostream& log) {
  Comm comm(hdpissa::SingleProcess{}, o.groups_per_process);
  Trainer<Comm>(o, comm, log).run();
}

nlohmann::json read_json(const fs::path& p) { return nlohmann::json::parse(read_file_text(p)); }

/// max |a − b| / (atol + rtol·|b|) (≤ 1 passes).
double worst(const Matrix& a, const Matrix& b, double atol, double rtol) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  return llama_test::compare(a.data(), b.data(), a.size(), atol, rtol).worst_ratio;
}

/// Checks the adapter in `dir` against PEFT's format and returns W_base + s·B A per target.
std::vector<Matrix> apply_adapter(const fs::path& dir, const ModelWeights& base, const std::vector<LinearId>& ids,
                                  int r, double alpha) {
  const auto cfg = read_json(dir / "adapter_config.json");
  CHECK(cfg["peft_type"] == "LORA");
  CHECK(cfg["task_type"] == "CAUSAL_LM");
  CHECK(cfg["r"] == r);
  CHECK(cfg["lora_alpha"].get<double>() == doctest::Approx(alpha));
  CHECK(cfg["init_lora_weights"] == true);
  CHECK(cfg["use_rslora"] == false);
  CHECK(cfg["use_dora"] == false);
  CHECK(cfg["bias"] == "none");
  CHECK(cfg["base_model_name_or_path"].is_string());
  CHECK(cfg["target_modules"] == nlohmann::json::array({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}));
  const SafetensorsFile f(dir / "adapter_model.safetensors");
  CHECK(f.tensors().size() == 2 * ids.size());
  std::vector<Matrix> out;
  const double s = alpha / r;
  for (const LinearId& id : ids) {
    const Matrix& W = base.linear(id);
    const bool attn = id.module <= Module::o;
    const std::string key = cat("base_model.model.model.layers.", id.layer, attn ? ".self_attn." : ".mlp.", module_name(id.module));
    const Matrix A = f.read_matrix(key + ".lora_A.weight", r, W.cols());  // shape-checked: (r, in)
    const Matrix B = f.read_matrix(key + ".lora_B.weight", W.rows(), r);  // (out, r)
    out.push_back(W + float(s) * (B * A));
  }
  return out;
}

std::vector<LinearId> all_targets(const ModelWeights& w) {
  std::vector<LinearId> ids;
  for (int l = 0; l < w.config.n_layers; ++l)
    for (int m = 0; m < kModulesPerLayer; ++m) ids.push_back({l, static_cast<Module>(m)});
  return ids;
}

}  // namespace

TEST_CASE("export: --scaling, --alpha, --max-shard-size and the export flags are parsed and checked") {
  auto parse = [](std::vector<std::string> extra) {
    std::vector<std::string> a = {"--model", "m", "--data", "d"};
    a.insert(a.end(), extra.begin(), extra.end());
    return parse_train_args(a);
  };
  CHECK(parse({"--rank", "8", "--alpha", "12"}).adapter_scaling() == 1.5);  // PEFT: 12 / 8
  CHECK(parse({"--rank", "8", "--alpha", "12", "--scaling", "reference"}).adapter_scaling() == 1.0);  // 12 // 8
  CHECK(parse({"--rank", "64", "--alpha", "16"}).adapter_scaling() == 0.25);  // QLoRA-style alpha < r
  CHECK_THROWS_WITH_AS(parse({"--rank", "64", "--alpha", "16", "--scaling", "reference"}),
                       doctest::Contains("--scaling peft"), LlamaError);
  CHECK_THROWS_WITH_AS(parse({"--scaling", "float"}), doctest::Contains("expected peft or reference"), LlamaError);
  CHECK(trajectory_config(parse({"--scaling", "reference"}), 1)["scaling"] == "reference");
  CHECK(trajectory_config(parse({}), 1)["scaling"] == "peft");
  // --svd is part of the trajectory of the SVD-initialised methods only
  CHECK(trajectory_config(parse({"--method", "hdpissa", "--svd", "randomized"}), 1)["svd"] == "randomized");
  CHECK(trajectory_config(parse({"--method", "pissa-dwu"}), 1)["svd"] == "exact");
  CHECK_FALSE(trajectory_config(parse({"--method", "lora"}), 1).contains("svd"));
  CHECK_FALSE(trajectory_config(parse({"--method", "full"}), 1).contains("svd"));
  CHECK(parse({"--max-shard-size", "5GB"}).max_shard_bytes == 5'000'000'000);
  CHECK(parse({"--max-shard-size", "2MiB"}).max_shard_bytes == 2 * 1048576);
  CHECK(parse({"--max-shard-size", "1000"}).max_shard_bytes == 1000);
  CHECK_THROWS_WITH_AS(parse({"--max-shard-size", "5 parsecs"}), doctest::Contains("--max-shard-size"), LlamaError);
  CHECK(parse({"--output-dtype", "bf16"}).output_dtype == OutputDtype::Bf16);
  CHECK(parse({"--output", "o", "--method", "lora"}).adapter_dir() == (fs::path("o") / "adapter").string());
  CHECK(parse({"--output", "o"}).adapter_dir().empty());  // hdpissa without an export: no adapter
  CHECK(parse({"--output", "o", "--export-lora-rank", "8"}).adapter_dir() == (fs::path("o") / "adapter").string());
  CHECK_THROWS_WITH_AS(parse({"--export-lora-rank", "8"}), doctest::Contains("--adapter-output"), LlamaError);
  CHECK_THROWS_WITH_AS(parse({"--output", "o", "--method", "lora", "--export-lora-rank", "8"}),
                       doctest::Contains("writes its own adapter"), LlamaError);
  CHECK_THROWS_WITH_AS(parse({"--output", "o", "--export-lora-energy", "1.5"}), doctest::Contains("(0, 1]"), LlamaError);
}

TEST_CASE("export: truncated_delta keeps the energy share of an independent SVD; full rank reproduces dW") {
  Matrix dW(40, 24);
  for (int i = 0; i < dW.rows(); ++i)
    for (int j = 0; j < dW.cols(); ++j) dW(i, j) = float(std::sin(0.37 * i * j + 0.11 * i) / (1.0 + 0.2 * j));
  const Eigen::JacobiSVD<Eigen::MatrixXd> ref(dW.cast<double>());
  const Eigen::VectorXd sv = ref.singularValues();
  const double total = sv.squaredNorm();
  for (int R : {1, 3, 10}) {
    const TruncatedDelta t = truncated_delta(dW, R, 0);
    CHECK(t.rank == R);
    CHECK(t.kept_share == doctest::Approx(sv.head(R).squaredNorm() / total).epsilon(1e-10));
    // B A is the best rank-R approximation: its error is the energy beyond R (Eckart–Young)
    const double err = (dW.cast<double>() - (t.B * t.A).cast<double>()).squaredNorm();
    CHECK(err == doctest::Approx(total - sv.head(R).squaredNorm()).epsilon(1e-4));
  }
  const TruncatedDelta full = truncated_delta(dW, 1000, 0);  // clamped to min(out, in)
  CHECK(full.rank == 24);
  CHECK(worst(full.B * full.A, dW, 1e-5, 1e-4) <= 1.0);
  const TruncatedDelta e = truncated_delta(dW, 0, 0.9);  // the smallest R keeping 90 %
  int R = 0;
  while (sv.head(R).squaredNorm() < 0.9 * total) ++R;
  CHECK(e.rank == R);
  CHECK(e.kept_share >= 0.9);
}

TEST_CASE("export: merged output in the input's dtype, bf16 / f16 on request, sharded with an index") {
  if (!llama_test::have_data()) return;
  const fs::path hf = llama_test::data_dir() / "stories260K-hf";
  const fs::path dir = llama_test::scratch("export_merged");
  const ModelWeights w = load_checkpoint(hf);
  CHECK(checkpoint_dtype(hf) == DType::F32);
  SaveOptions so;
  so.dtype = DType::BF16;
  so.max_shard_bytes = 200'000;  // ~260k parameters in bf16: 3 shards
  so.source_config_dir = hf;
  so.tokenizer_files = {{hf / "tokenizer.model", "tokenizer.model"}};
  save_hf_checkpoint(dir / "bf16", w, so);
  CHECK_FALSE(fs::exists(dir / "bf16" / "model.safetensors"));
  const auto index = read_json(dir / "bf16" / "model.safetensors.index.json");
  CHECK(index["weight_map"]["model.embed_tokens.weight"] == "model-00001-of-00003.safetensors");
  CHECK(index["metadata"]["total_size"] == 2 * w.num_parameters());
  CHECK(fs::exists(dir / "bf16" / "model-00003-of-00003.safetensors"));
  for (int i = 1; i <= 3; ++i)
    CHECK(fs::file_size(dir / "bf16" / cat("model-0000", i, "-of-00003.safetensors")) <= 200'000 + 4096);
  CHECK(checkpoint_dtype(dir / "bf16") == DType::BF16);
  const auto cfg = read_json(dir / "bf16" / "config.json"), src = read_json(hf / "config.json");
  CHECK(cfg["dtype"] == "bfloat16");
  CHECK(cfg["architectures"] == src["architectures"]);
  CHECK(cfg["model_type"] == src["model_type"]);
  CHECK(cfg["rope_parameters"] == src["rope_parameters"]);  // every other field kept
  CHECK(read_file_text(dir / "bf16" / "generation_config.json") == read_file_text(hf / "generation_config.json"));
  const ModelWeights back = load_checkpoint(dir / "bf16");
  for (const LinearId& id : all_targets(w)) {
    const Matrix& a = back.linear(id);
    const Matrix& ref = w.linear(id);
    bool exact = true;  // the reload is the round-to-nearest-even bf16 of every weight
    for (Eigen::Index i = 0; i < a.size(); ++i) exact = exact && a.data()[i] == bf16_to_float(float_to_bf16(ref.data()[i]));
    CHECK(exact);
  }
  so.dtype = DType::F16;
  so.max_shard_bytes = 0;
  save_hf_checkpoint(dir / "f16", w, so);
  CHECK(checkpoint_dtype(dir / "f16") == DType::F16);
  const ModelWeights h = load_checkpoint(dir / "f16");
  CHECK(worst(h.linear({2, Module::up}), w.linear({2, Module::up}), 1e-7, 1.0 / 2048) <= 1.0);
  // float_to_f16 on the cases that matter: exact values, ties to even, subnormals, overflow
  CHECK(float_to_f16(1.0f) == 0x3c00);
  CHECK(float_to_f16(-2.0f) == 0xc000);
  CHECK(float_to_f16(65504.0f) == 0x7bff);
  CHECK(float_to_f16(65520.0f) == 0x7c00);
  CHECK(float_to_f16(1.0f + 1.0f / 2048) == 0x3c00);        // a tie: to even
  CHECK(float_to_f16(1.0f + 3.0f / 2048) == 0x3c02);        // a tie: to even (up)
  CHECK(float_to_f16(5.960464477539063e-08f) == 0x0001);    // 2^-24, the smallest subnormal
  CHECK(f16_to_float(float_to_f16(6.1e-5f)) == doctest::Approx(6.1e-5).epsilon(1e-3));
}

TEST_CASE("export: lora and pissa write PEFT adapters that reproduce the merged model") {
  if (!llama_test::have_data()) return;
  const fs::path dir = llama_test::scratch("export_peft");
  const fs::path hf = llama_test::data_dir() / "stories260K-hf";
  const ModelWeights base = load_checkpoint(hf);
  const auto ids = all_targets(base);
  std::ostringstream log;
  SUBCASE("lora: adapter on the original base = merged model; tokenizer files and config kept") {
    const TrainOptions o = export_options("lora", dir / "lora");
    train(o, log);
    CHECK(log.str().find("PEFT LoRA adapter (r 4, lora_alpha 6)") != std::string::npos);
    const auto W = apply_adapter(dir / "lora" / "adapter", base, ids, 4, 6.0);
    const ModelWeights merged = load_checkpoint(dir / "lora");  // F32: the input's dtype
    CHECK(checkpoint_dtype(dir / "lora") == DType::F32);
    double w = 0;
    for (std::size_t i = 0; i < ids.size(); ++i) w = std::max(w, worst(W[i], merged.linear(ids[i]), 1e-6, 1e-5));
    CHECK(w <= 1.0);
    CHECK(fs::exists(dir / "lora" / "tokenizer.model"));
    CHECK(read_json(dir / "lora" / "config.json")["architectures"] == read_json(hf / "config.json")["architectures"]);
    CHECK(merged.embed == base.embed);  // frozen parameters untouched
  }
  SUBCASE("pissa: converted rank-2r adapter on the original base, native adapter on the residual base") {
    const TrainOptions o = export_options("pissa", dir / "pissa");
    train(o, log);
    const ModelWeights merged = load_checkpoint(dir / "pissa");
    const auto conv = apply_adapter(dir / "pissa" / "adapter", base, ids, 8, 12.0);  // r, alpha doubled
    const ModelWeights residual = load_checkpoint(dir / "pissa" / "adapter" / "pissa" / "residual_model");
    const auto native = apply_adapter(dir / "pissa" / "adapter" / "pissa", residual, ids, 4, 6.0);
    double wc = 0, wn = 0, moved = 0;
    for (std::size_t i = 0; i < ids.size(); ++i) {
      wc = std::max(wc, worst(conv[i], merged.linear(ids[i]), 1e-5, 1e-4));
      wn = std::max(wn, worst(native[i], merged.linear(ids[i]), 1e-6, 1e-5));
      moved = std::max(moved, double((merged.linear(ids[i]) - base.linear(ids[i])).cwiseAbs().maxCoeff()));
    }
    CHECK(wc <= 1.0);
    CHECK(wn <= 1.0);
    CHECK(moved > 1e-4);  // training changed the model (the adapters carry a real update)
  }
}

TEST_CASE("export: hdpissa's dW as a truncated LoRA keeps the reported energy share") {
  if (!llama_test::have_data()) return;
  const fs::path dir = llama_test::scratch("export_dwu");
  const fs::path hf = llama_test::data_dir() / "stories260K-hf";
  const ModelWeights base = load_checkpoint(hf);
  const auto ids = all_targets(base);
  TrainOptions o = export_options("hdpissa", dir / "out");
  o.export_lora_rank = 3;
  o.adapter_output = (dir / "adapter3").string();
  std::ostringstream log;
  train(o, log);
  CHECK(log.str().find("lora export: model.layers.0.self_attn.q_proj rank 3 keeps") != std::string::npos);
  const ModelWeights merged = load_checkpoint(dir / "out");
  const auto report = read_json(dir / "adapter3" / "lora_export.json");
  REQUIRE(report["layers"].size() == ids.size());
  const auto W = apply_adapter(dir / "adapter3", base, ids, 3, 3.0);
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const Eigen::MatrixXd dW = (merged.linear(ids[i]) - base.linear(ids[i])).cast<double>();
    const Eigen::VectorXd sv = Eigen::JacobiSVD<Eigen::MatrixXd>(dW).singularValues();
    CHECK(report["layers"][i]["name"] == peft_module_path(ids[i]));
    CHECK(report["layers"][i]["kept_share"].get<double>() == doctest::Approx(sv.head(3).squaredNorm() / sv.squaredNorm()).epsilon(1e-6));
    const double err = (dW - (W[i] - base.linear(ids[i])).cast<double>()).squaredNorm();
    CHECK(err == doctest::Approx(sv.squaredNorm() - sv.head(3).squaredNorm()).epsilon(1e-3).scale(sv.squaredNorm()));
    // at R = min(out, in) the factors reproduce dW to fp32 tolerance
    const TruncatedDelta full = truncated_delta(merged.linear(ids[i]) - base.linear(ids[i]), 100000, 0);
    CHECK(worst(full.B * full.A, merged.linear(ids[i]) - base.linear(ids[i]), 1e-7, 1e-4) <= 1.0);
  }
}
