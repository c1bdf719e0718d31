// hdpissa-train (examples/llama/include/llama/train): end-to-end runs on stories260K + GSM8K-train,
// checked against invariants and independent computations, never against the trainer's own
// earlier output:
//  - HD-PiSSA lowers the held-out loss; the merged checkpoint reloads (plain linears) with the
//    same held-out loss; frozen parameters are untouched.
//  - resume from a saved state is bit-identical to an uninterrupted run (hdpissa, pissa, full).
//  - one DWU step on one layer: the trainer's per-group g_A, g_B equal α B_gᵀ G_g and α G_g A_gᵀ with
//    G_g the model's full-W gradient on that group's shard, and W₁ equals the reference's
//    three-term update W₀ − Σ_g (dB_g A_g + B_g dA_g − dB_g dA_g) with Adam's first step.
//  - LoRA (B = 0) and PiSSA (W_res + B A = W) leave the forward unchanged at step 0.
//  - bad input gives clear errors.

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <doctest/doctest.h>

#include "llama/train/trainer.hpp"
#include "train_run.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace hdpissa::llama;
using Comm = hdpissa::VirtualRanks<hdpissa::SingleProcess>;

namespace {

TrainOptions base_options(const std::string& method) {
  const fs::path d = llama_test::data_dir();
  TrainOptions o;
  o.model = (d / "stories260K-hf").string();
  o.tokenizer = (d / "stories260K-hf" / "tokenizer.model").string();
  o.data = (d / "gsm8k" / "train.jsonl").string();
  o.max_examples = 160;
  o.method = parse_choice<Method>("--method", method);
  o.rank = 4;
  o.groups_per_process = 2;
  o.lr = 2e-3;
  o.max_len = 256;  // GSM8K prompts are ~200 tok512 tokens: shorter limits drop most examples
  o.micro_batch = 2;
  o.max_steps = 6;
  o.quiet = true;
  o.threads = 1;
  return o;
}

/// The CPU engine's method (tests look inside it; the trainer itself never does).
TrainMethod<CpuDevice>& method_of(Trainer<Comm>& t) { return dynamic_cast<CpuEngine<Comm>&>(t.engine()).method(); }

using Run = llama_test::TrainRun;

/// Held-out batches built independently of the trainer (file order, micro-batches of 2).
std::vector<Batch> eval_batches(const Tokenizer& tok, int n, int max_len) {
  auto ex = load_instruction_data(llama_test::data_dir() / "gsm8k" / "test.jsonl");
  ex.resize(std::size_t(n));
  auto t = std::make_shared<std::vector<TokenizedExample>>(tokenize_dataset(ex, tok, PromptTemplate{}, max_len));
  LoaderOptions lo;
  lo.micro_batch = 2;
  lo.shuffle = false;
  DataLoader dl(t, lo);
  std::vector<Batch> out;
  for (std::int64_t i = 0; i < dl.batches_per_epoch(); ++i) out.push_back(dl.next());
  return out;
}

/// Runs fn, expects an exception whose message contains every needle.
template <class Fn>
void expect_error(Fn&& fn, std::initializer_list<const char*> needles) {
  bool thrown = false;
  try {
    fn();
  } catch (const std::exception& e) {
    thrown = true;
    const std::string msg = e.what();
    INFO("message: " << msg);
    for (const char* n : needles) CHECK_MESSAGE(msg.find(n) != std::string::npos, n);
  }
  CHECK_MESSAGE(thrown, "expected an exception");
}

using llama_test::same_bits;

}  // namespace

TEST_CASE("train: answer extraction (GSM8K / MetaMath style)") {
  CHECK(extract_answer("so 3 + 4 = 7.\nThe answer is: 1,234") == doctest::Approx(1234));
  CHECK(extract_answer("Natalia sold 48/2 = 24 clips.\n#### 72") == doctest::Approx(72));
  CHECK(extract_answer("The answer is: -3.5 apples") == doctest::Approx(-3.5));
  CHECK(extract_answer("The answer is: $18.") == doctest::Approx(18));
  CHECK_FALSE(extract_answer("no marker 42").has_value());
  CHECK_FALSE(extract_answer("The answer is: unknown").has_value());
  // the last marker wins
  CHECK(extract_answer("#### 1\nThe answer is: 2\nThe answer is: 3") == doctest::Approx(3));
  CHECK(answers_match(72.0, 72.0));
  CHECK(answers_match(1234.0000001, 1234.0));
  CHECK_FALSE(answers_match(71.0, 72.0));
}

TEST_CASE("train: HD-PiSSA on GSM8K lowers the held-out loss; the merged checkpoint reloads with it") {
  if (!llama_test::have_data()) {
    MESSAGE("skipped: no data folder at " << llama_test::data_dir());
    return;
  }
  const fs::path dir = llama_test::scratch("train_hdpissa");
  TrainOptions o = base_options("hdpissa");
  o.groups_per_process = 4;  // K = 4 virtual groups, r = 4: K·r = 16 ≤ 32
  o.max_steps = 12;
  o.eval_data = (llama_test::data_dir() / "gsm8k" / "test.jsonl").string();
  o.eval_examples = 16;
  o.output = (dir / "merged").string();
  o.metrics = (dir / "metrics.jsonl").string();
  Run r(o);
  const ModelWeights base = r.t->model();
  const TrainSummary s = r.t->run();
  REQUIRE(s.eval_before.has_value());
  REQUIRE(s.eval_after.has_value());
  MESSAGE("held-out loss " << *s.eval_before << " -> " << *s.eval_after);
  CHECK(*s.eval_after < *s.eval_before - 0.2);
  CHECK(s.steps_done == 12);

  // The merged checkpoint reloads through the plain model path (no hooks) and gives the same
  // held-out loss on batches built here.
  const ModelWeights merged = load_checkpoint(o.output);
  const Tokenizer tok(o.tokenizer);
  const auto batches = eval_batches(tok, o.eval_examples, o.max_len);
  CpuHooks plain;
  const double reloaded = evaluate_loss(merged, batches, plain).mean();
  CHECK(reloaded == doctest::Approx(*s.eval_after).epsilon(1e-5));
  // Only target linears changed; every one of them did.
  CHECK(same_bits(merged.embed, base.embed));
  for (int l = 0; l < base.config.n_layers; ++l) {
    CHECK(merged.layers[l].attn_norm == base.layers[l].attn_norm);
    for (int m = 0; m < kModulesPerLayer; ++m)
      CHECK_FALSE(same_bits(merged.layers[l].linear(Module(m)), base.layers[l].linear(Module(m))));
  }
  // metrics: one step record per step plus two eval records, all valid JSON
  std::ifstream mf(o.metrics);
  std::string line;
  int steps = 0, evals = 0;
  while (std::getline(mf, line)) {
    const auto j = nlohmann::json::parse(line);
    steps += j["type"] == "step";
    evals += j["type"] == "eval";
  }
  CHECK(steps == 12);
  CHECK(evals == 2);
}

TEST_CASE("train: resuming from a saved state equals an uninterrupted run, bit for bit") {
  if (!llama_test::have_data()) return;
  for (const std::string method : {"hdpissa", "pissa", "full"}) {
    CAPTURE(method);
    const fs::path dir = llama_test::scratch("train_resume_" + method);
    TrainOptions o = base_options(method);
    o.grad_accum = 2;
    o.micro_batch = 1;
    o.max_steps = 5;
    o.warmup_ratio = 0.3;  // warmup and cosine both cross the interruption
    Run whole(o);
    const TrainSummary sw = whole.t->run();

    TrainOptions first = o;
    first.stop_after = 2;
    first.save_state = (dir / "state").string();
    Run part(first);
    part.t->run();
    REQUIRE(part.t->step() == 2);
    TrainOptions second = o;
    second.resume = first.save_state;
    Run rest(second);
    CHECK(rest.t->step() == 2);
    const TrainSummary sr = rest.t->run();
    CHECK(sr.steps_done == 5);
    CHECK(sr.last_loss == sw.last_loss);
    bool all_equal = true;
    for (const LinearId& id : method_of(*whole.t).targets())
      all_equal = all_equal && same_bits(whole.t->model().linear(id), rest.t->model().linear(id));
    CHECK(all_equal);
    // and the run did change W (the comparison is not vacuous)
    const ModelWeights base = load_checkpoint(o.model);
    CHECK_FALSE(same_bits(base.layers[0].wq, whole.t->model().layers[0].wq));
  }
}

TEST_CASE("train: --pad-to-multiple trains the same model (losses within fp32 rounding, same tokens); resume checks it") {
  if (!llama_test::have_data()) return;
  for (const std::string method : {"hdpissa", "lora"}) {
    CAPTURE(method);
    TrainOptions o = base_options(method);
    o.max_steps = 3;
    TrainOptions padded = o;
    padded.pad_to_multiple = 64;
    Run a(o), b(padded);
    const TrainSummary sa = a.t->run(), sb = b.t->run();
    CHECK(sb.steps_done == sa.steps_done);
    // padded positions are never attended nor targets: only summation orders over the longer rows
    // differ (fp32 rounding)
    CHECK(std::fabs(sb.first_loss - sa.first_loss) <= 1e-5 * std::fabs(sa.first_loss));
    CHECK(std::fabs(sb.last_loss - sa.last_loss) <= 1e-4 * std::fabs(sa.last_loss));
    double worst = 0;
    for (const LinearId& id : method_of(*a.t).targets()) {
      const auto& wa = a.t->model().linear(id);
      const auto& wb = b.t->model().linear(id);
      for (Eigen::Index i = 0; i < wa.size(); ++i)
        worst = std::max(worst, std::fabs(double(wa.data()[i]) - double(wb.data()[i])) / (std::fabs(double(wa.data()[i])) + 1e-3));
    }
    INFO("max relative W difference " << worst);
    CHECK(worst < 1e-3);
  }
  // a saved state records the padding: resuming with another value is refused by name
  const fs::path dir = llama_test::scratch("train_pad_resume");
  TrainOptions first = base_options("lora");
  first.pad_to_multiple = 64;
  first.stop_after = 1;
  first.save_state = (dir / "state").string();
  Run part(first);
  part.t->run();
  TrainOptions second = base_options("lora");
  second.resume = first.save_state;
  expect_error([&] { Run rest(second); }, {"pad_to_multiple"});
}

TEST_CASE("train: one DWU step on one layer matches a direct computation from the full-W gradient") {
  if (!llama_test::have_data()) return;
  TrainOptions o = base_options("hdpissa");
  o.groups_per_process = 2;
  o.warmup_ratio = 0;  // lr(0) = peak
  Run r(o);
  auto* m = dynamic_cast<DwuMethod<CpuDevice, Comm, hdpissa::ExactMute, hdpissa::SumAggregation>*>(&method_of(*r.t));
  REQUIRE(m != nullptr);
  const ModelWeights W0 = r.t->model();
  const LinearId id{1, Module::up};  // (hidden 172, dim 64)
  const std::size_t s = std::size_t(m->slot(id));
  const int K = 2;
  const double alpha = m->scaling();
  r.t->accumulate_gradients();

  // Independent: each group's micro-batch (shard g of K of the same seeded order) through the
  // model with FullFineTuneHooks gives G_g = ∂loss/∂W for this layer.
  auto data = std::make_shared<std::vector<TokenizedExample>>(r.t->train_data());
  using DM = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  DM expected_delta = DM::Zero(W0.linear(id).rows(), W0.linear(id).cols());
  const double lr = r.t->lr_at(0);
  for (int g = 0; g < K; ++g) {
    LoaderOptions lo;
    lo.micro_batch = o.micro_batch;
    lo.seed = o.seed;
    lo.num_shards = K;
    lo.shard_index = g;
    DataLoader dl(data, lo);
    const Batch b = dl.next();
    ModelWeights grads = ModelWeights::zeros_like(W0);
    FullFineTuneHooks full(grads);
    Activations acts;
    forward(W0, b, full, acts);
    backward(W0, acts, full, nullptr, 1.0f);
    const DM G = grads.linear(id).cast<double>();
    const DM A = TrainBackend::map(m->factors(s).A_of(g)).cast<double>();  // (r, in)
    const DM B = TrainBackend::map(m->factors(s).B_of(g)).cast<double>();  // (out, r)
    const DM gA_ref = alpha * B.transpose() * G;
    const DM gB_ref = alpha * G * A.transpose();
    const DM gA = TrainBackend::map(m->update().grad_A(s, g)).cast<double>();
    const DM gB = TrainBackend::map(m->update().grad_B(s, g)).cast<double>();
    CHECK((gA - gA_ref).cwiseAbs().maxCoeff() <= 1e-6 + 1e-4 * gA_ref.cwiseAbs().maxCoeff());
    CHECK((gB - gB_ref).cwiseAbs().maxCoeff() <= 1e-6 + 1e-4 * gB_ref.cwiseAbs().maxCoeff());
    // Adam's first step from zero moments: m̂ = g, v̂ = g², delta = lr·g / (|g| + ε) (from the
    // trainer's gradients, verified above, so the update formula is checked tightly).
    const DM dA = (lr * gA.array() / (gA.array().abs() + 1e-8)).matrix();
    const DM dB = (lr * gB.array() / (gB.array().abs() + 1e-8)).matrix();
    expected_delta += dB * A + B * dA - dB * dA;  // the reference's three terms, Sum aggregation
  }
  r.t->apply_step();
  const DM W1 = r.t->model().linear(id).cast<double>();
  const DM W1_ref = W0.linear(id).cast<double>() - expected_delta;
  const double err = (W1 - W1_ref).cwiseAbs().maxCoeff();
  MESSAGE("max |W1 - W1_ref| = " << err << ", max |dW| = " << expected_delta.cwiseAbs().maxCoeff());
  CHECK(err <= 1e-6 + 1e-4 * expected_delta.cwiseAbs().maxCoeff());
  CHECK(expected_delta.cwiseAbs().maxCoeff() > 1e-4);  // the step did something
}

TEST_CASE("train: LoRA (B = 0) and PiSSA (W_res + B A = W) leave the forward unchanged at step 0") {
  if (!llama_test::have_data()) return;
  const ModelWeights base = load_checkpoint(llama_test::data_dir() / "stories260K-hf");
  const Tokenizer tok(llama_test::data_dir() / "stories260K-hf" / "tokenizer.model");
  const auto batches = eval_batches(tok, 4, 256);
  CpuHooks plain;
  Activations a0;
  const double ref = forward(base, batches[0], plain, a0).mean();
  for (const std::string method : {"lora", "pissa"}) {
    CAPTURE(method);
    Run r(base_options(method));
    auto* m = dynamic_cast<AdapterMethod<CpuDevice, Comm>*>(&method_of(*r.t));
    REQUIRE(m != nullptr);
    if (method == "lora") {
      bool b_zero = true, a_nonzero = true;
      for (std::size_t i = 0; i < m->targets().size(); ++i) {
        b_zero = b_zero && TrainBackend::map(m->adapter(i).B.view()).cwiseAbs().maxCoeff() == 0.0f;
        a_nonzero = a_nonzero && TrainBackend::map(m->adapter(i).A.view()).cwiseAbs().maxCoeff() > 0.0f;
      }
      CHECK(b_zero);
      CHECK(a_nonzero);
      for (const LinearId& id : m->targets()) CHECK(same_bits(r.t->model().linear(id), base.linear(id)));
    }
    Activations a1;
    const double got = forward(r.t->model(), batches[0], method_of(*r.t).hooks(0), a1).mean();
    CHECK(got == doctest::Approx(ref).epsilon(method == "lora" ? 1e-6 : 1e-5));
    const std::vector<std::int64_t> rows = {0, 5, 17};
    const Matrix l0 = logits_at(base, a0, rows), l1 = logits_at(r.t->model(), a1, rows);
    CHECK((l0 - l1).cwiseAbs().maxCoeff() <= (method == "lora" ? 1e-5 : 1e-4) * (1 + l0.cwiseAbs().maxCoeff()));
  }
}

TEST_CASE("train: bad input gives clear errors") {
  SUBCASE("unknown flag, bad values, bf16 on the CPU") {
    expect_error([] { parse_train_args({"--model", "m", "--data", "d", "--no-such-flag"}); }, {"--no-such-flag"});
    expect_error([] { parse_train_args({"--model", "m", "--data", "d", "--rank", "four"}); }, {"--rank", "four"});
    expect_error([] { parse_train_args({"--model", "m", "--data", "d", "--method", "dora"}); }, {"--method", "dora"});
    expect_error([] { parse_train_args({"--model", "m", "--data", "d", "--dtype", "bf16"}); }, {"bf16", "GPU"});
    expect_error([] { parse_train_args({"--model", "m", "--data", "d", "--device", "tpu"}); }, {"--device", "tpu"});
    expect_error([] { parse_train_args({"--model", "m", "--data", "d", "--attention", "flash"}); },
                 {"--attention flash", "--device cuda"});
    expect_error([] { parse_train_args({"--model", "m", "--data", "d", "--device", "cuda", "--attention", "sdpa"}); },
                 {"--attention: expected auto, flash or gemm, found 'sdpa'"});
    CHECK(parse_train_args({"--model", "m", "--data", "d", "--device", "cuda", "--attention", "gemm"}).attention == AttentionKind::Gemm);
    expect_error([] { parse_train_args({"--model", "m", "--data", "d", "--profile"}); }, {"--profile", "--device cuda"});
    CHECK(parse_train_args({"--model", "m", "--data", "d", "--device", "cuda", "--profile"}).profile);
    CHECK_FALSE(parse_train_args({"--model", "m", "--data", "d", "--device", "cuda"}).profile);
    expect_error([] { parse_train_args({"--model", "m", "--data", "d", "--keep-swiglu"}); },
                 {"--keep-swiglu", "--device cuda"});
    expect_error([] {
      parse_train_args({"--model", "m", "--data", "d", "--device", "cuda", "--keep-swiglu", "--activation-checkpointing"});
    }, {"--keep-swiglu", "--activation-checkpointing", "found both"});
    CHECK(parse_train_args({"--model", "m", "--data", "d", "--device", "cuda", "--keep-swiglu"}).keep_swiglu);
    CHECK_FALSE(parse_train_args({"--model", "m", "--data", "d", "--device", "cuda"}).keep_swiglu);
    expect_error([] { parse_train_args({"--data", "d"}); }, {"--model"});
    expect_error([] { parse_train_args({"--model", "m", "--data", "d", "--targets", "q,x"}); }, {"--targets", "'x'"});
    bool help = false;
    parse_train_args({"--help"}, &help);
    CHECK(help);
  }
  if (!llama_test::have_data()) return;
  const fs::path dir = llama_test::scratch("train_errors");
  const fs::path hf = llama_test::data_dir() / "stories260K-hf";
  SUBCASE("--device cuda in a build without the CUDA engine") {  // this binary never links it
    TrainOptions o = base_options("hdpissa");
    o.device = Device::Cuda;
    expect_error([&] { Run r(o); }, {"--device cuda", "without CUDA"});
  }
  SUBCASE("missing paths") {
    TrainOptions o = base_options("hdpissa");
    o.data = (dir / "nope.jsonl").string();
    expect_error([&] { Run r(o); }, {"nope.jsonl"});
    o = base_options("hdpissa");
    o.model = (dir / "no-model").string();
    expect_error([&] { Run r(o); }, {"no-model"});
  }
  SUBCASE("malformed JSONL names the file and line") {
    const fs::path bad = dir / "bad.jsonl";
    std::ofstream(bad) << "{\"question\": \"1+1?\", \"answer\": \"#### 2\"}\n\n{\"question\": \"2+2?\", \"answer\": \n";
    TrainOptions o = base_options("hdpissa");
    o.data = bad.string();
    o.output = (dir / "never-out").string();
    o.metrics = (dir / "never-metrics.jsonl").string();
    o.save_state = (dir / "never-state").string();
    expect_error([&] { Run r(o); }, {"bad.jsonl:3"});
    // nothing half-written left behind
    CHECK_FALSE(fs::exists(dir / "never-out"));
    CHECK_FALSE(fs::exists(dir / "never-metrics.jsonl"));
    CHECK_FALSE(fs::exists(dir / "never-state"));
    CHECK_FALSE(fs::exists(dir / "never-state.tmp"));
  }
  SUBCASE("truncated checkpoint") {
    fs::create_directories(dir / "trunc");
    fs::copy_file(hf / "config.json", dir / "trunc" / "config.json");
    std::ifstream in(hf / "model.safetensors", std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    std::ofstream(dir / "trunc" / "model.safetensors", std::ios::binary) << bytes.substr(0, bytes.size() / 2);
    TrainOptions o = base_options("hdpissa");
    o.model = (dir / "trunc").string();
    expect_error([&] { Run r(o); }, {"truncated"});
  }
  SUBCASE("config / weight shape mismatch names the tensor") {
    fs::create_directories(dir / "shape");
    auto cfg = nlohmann::json::parse(read_file_text(hf / "config.json"));
    cfg["intermediate_size"] = 160;  // the stored gate/up/down are 172 wide
    std::ofstream(dir / "shape" / "config.json") << cfg.dump();
    fs::copy_file(hf / "model.safetensors", dir / "shape" / "model.safetensors");
    TrainOptions o = base_options("hdpissa");
    o.model = (dir / "shape").string();
    expect_error([&] { Run r(o); }, {"gate_proj", "wrong shape", "172"});
  }
  SUBCASE("K·r too large names the layer") {
    TrainOptions o = base_options("hdpissa");
    o.groups_per_process = 8;
    o.rank = 8;  // K·r = 64 > min(32, 64) of k_proj
    expect_error([&] { Run r(o); }, {"model.layers.0.self_attn.k_proj", "64", "32"});
  }
  SUBCASE("resume: incompatible config, truncated state") {
    TrainOptions o = base_options("hdpissa");
    o.max_steps = 2;
    o.stop_after = 1;
    o.save_state = (dir / "state").string();
    Run(o).t->run();
    TrainOptions other = base_options("hdpissa");
    other.max_steps = 2;
    other.resume = o.save_state;
    other.lr = 1e-3;
    expect_error([&] { Run r(other); }, {"incompatible config", "'lr'"});
    other.lr = o.lr;
    other.rank = 2;
    other.alpha = 4;  // keep alpha equal so that rank is the only difference
    expect_error([&] { Run r(other); }, {"'rank'"});
    other.rank = o.rank;
    other.alpha = -1;
    {  // truncate the shared tensors file
      const fs::path f = dir / "state" / "shared.safetensors";
      const auto n = fs::file_size(f);
      fs::resize_file(f, n - 100);
    }
    expect_error([&] { Run r(other); }, {"shared.safetensors", "truncated"});
    other.resume = (dir / "no-state").string();
    expect_error([&] { Run r(other); }, {"no-state"});
  }
}

TEST_CASE("train: ScaledMute (the paper's gamma form) tracks ExactMute; the DWU ablations' factors") {
  if (!llama_test::have_data()) return;
  // Two code paths for the same maths: the literal x(W + γαBA)ᵀ with gradients × 1/γ versus the
  // analytic exact mute. With γ = 1e-16 in fp32 they agree to rounding.
  TrainOptions o = base_options("hdpissa");
  o.max_steps = 2;
  o.micro_batch = 1;
  Run exact(o);
  const ModelWeights W0 = exact.t->model();
  exact.t->run();
  o.mute_gamma = 1e-16;
  Run scaled(o);
  scaled.t->run();
  double worst = 0, moved = 0;
  for (const LinearId& id : method_of(*exact.t).targets()) {
    worst = std::max(worst, double((exact.t->model().linear(id) - scaled.t->model().linear(id)).cwiseAbs().maxCoeff()));
    moved = std::max(moved, double((exact.t->model().linear(id) - W0.linear(id)).cwiseAbs().maxCoeff()));
  }
  MESSAGE("max |W_exact - W_scaled| = " << worst << " (max |dW| = " << moved << ")");
  CHECK(moved > 1e-4);
  CHECK(worst <= 1e-3 * moved);

  for (const std::string method : {"lora-dwu", "pissa-dwu"}) {
    CAPTURE(method);
    TrainOptions a = base_options(method);
    a.max_steps = 2;
    a.micro_batch = 1;
    Run r(a);
    auto* m = dynamic_cast<DwuMethod<CpuDevice, Comm, hdpissa::ExactMute, hdpissa::SumAggregation>*>(&method_of(*r.t));
    REQUIRE(m != nullptr);
    const auto& f = m->factors(0);  // layer 0 q_proj, K = 2 groups
    const Matrix A0 = TrainBackend::map(f.A_of(0)), A1 = TrainBackend::map(f.A_of(1));
    if (method == "pissa-dwu") CHECK(same_bits(A0, A1));        // top-r identical on every group
    else CHECK((A0 - A1).cwiseAbs().maxCoeff() > 1e-3);         // distinct seeds per group
    const TrainSummary s = r.t->run();
    CHECK(std::isfinite(s.last_loss));
  }
}

TEST_CASE("train: GSM8K-style evaluation runs generation and scores against the reference answers") {
  if (!llama_test::have_data()) return;
  TrainOptions o = base_options("hdpissa");
  o.eval_max_new_tokens = 8;
  Run r(o);
  const auto [correct, n] = r.t->eval_gsm8k((llama_test::data_dir() / "gsm8k" / "test.jsonl").string(), 2);
  CHECK(n == 2);
  CHECK(correct >= 0);
  CHECK(correct <= 2);
  const fs::path dir = llama_test::scratch("train_gsm8k");
  std::ofstream(dir / "noanswer.jsonl") << "{\"question\": \"1+1?\", \"answer\": \"two\"}\n";
  expect_error([&] { r.t->eval_gsm8k((dir / "noanswer.jsonl").string(), 1); }, {"noanswer.jsonl", "reference answer"});
}

TEST_CASE("train: data-format flags and --allow-unused are parsed, checked and echoed") {
  const auto o = parse_train_args({"--model", "m", "--data", "d", "--data-format", "chat", "--chat-template", "llama3",
                                   "--prompt-field", "q", "--input-field", "c", "--response-field", "r", "--allow-unused"});
  CHECK(o.data_format.format == "chat");
  CHECK(o.data_format.chat_template == "llama3");
  CHECK(o.data_format.prompt_field == "q");
  CHECK(o.data_format.input_field == "c");
  CHECK(o.data_format.response_field == "r");
  CHECK(o.allow_unused);
  CHECK(o.to_json()["data_format"]["chat_template"] == "llama3");
  CHECK(!parse_train_args({"--model", "m", "--data", "d"}).allow_unused);
  expect_error([] { parse_train_args({"--model", "m", "--data", "d", "--data-format", "csv"}); }, {"--data-format", "'csv'"});
  expect_error([] { parse_train_args({"--model", "m", "--data", "d", "--chat-template", "zephyr"}); },
               {"--chat-template", "'zephyr'"});
  expect_error([] { parse_train_args({"--model", "m", "--data", "d", "--prompt-field"}); }, {"--prompt-field", "expects a value"});
}
