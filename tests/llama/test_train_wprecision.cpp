// hdpissa-train --w-precision on the CPU trainer (the bit-exact reference of the bf16 rules: the fp32
// tensors hold bf16 values), checked against invariants and independent computations:
//  - every policy trains stories260K a few steps (finite, decreasing-or-moving loss), reports the
//    policy's bytes per parameter (startup info and the summary record: 4 / 4 / 2 on the CPU's fp32
//    compute; fp32-master + bf16 compute would be 6), and the bf16 ones keep W on the bf16 grid;
//  - the bf16-compensated W, replayed from the trainer's own first-step W and an independent
//    Direct Weight Update Δ, is not required here — instead: W + compensation after one step equals
//    the fp32-master W after one step to within one bf16 ulp of the compensation (both start from
//    the same bf16-rounded W; the Δ of step 1 is the same because the factors and the gradient are);
//  - resume under bf16-sr (and bf16-compensated) is bit-identical to an uninterrupted run;
//  - --w-precision is parsed, echoed in the config, and refused where it does not apply.
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
TrainOptions wp_options(const std::string& method, const std::string& wp) {
  const fs::path d = llama_test::data_dir();
  TrainOptions o;
  o.model = (d / "stories260K-hf").string();
  o.tokenizer = (d / "stories260K-hf" / "tokenizer.model").string();
  o.data = (d / "gsm8k" / "train.jsonl").string();
  o.max_examples = 48;
  o.method = parse_choice<Method>("--method", method);
  o.w_precision = parse_choice<hdpissa::WPrecision>("--w-precision", wp);
  o.rank = 4;
  o.groups_per_process = 2;
  o.lr = 2e-3;
  o.max_len = 256;
  o.micro_batch = 1;
  o.max_steps = 3;
  o.warmup_ratio = 0.3;
  o.quiet = true;
  o.threads = 1;
  return o;
}
using Run = llama_test::TrainRun;
using llama_test::same_bits;
bool on_bf16_grid(const Matrix& m) {
  for (std::int64_t i = 0; i < m.size(); ++i)
    if (hdpissa::round_bf16(m.data()[i]) != m.data()[i]) return false;
  return true;
}
nlohmann::json summary_record(const std::string& file) {
  std::ifstream f(file);
  std::string line;
  nlohmann::json out;
  while (std::getline(f, line))
    if (!line.empty()) {
      auto j = nlohmann::json::parse(line);
      if (j["type"] == "summary") out = j;
    }
  return out;
}
}  // namespace

TEST_CASE("w-precision: each policy trains stories260K, reports its bytes per parameter, keeps bf16 W on the grid") {
  if (!llama_test::have_data()) return;
  struct Case {
    const char* wp;
    int bytes;
  };
  const ModelWeights base = load_checkpoint(wp_options("hdpissa", "fp32-master").model);
  for (const Case c : {Case{"fp32-master", 4}, Case{"bf16-compensated", 4}, Case{"bf16-sr", 2}}) {
    CAPTURE(std::string(c.wp));
    const fs::path dir = llama_test::scratch(std::string("wprec_") + c.wp);
    TrainOptions o = wp_options("hdpissa", c.wp);
    o.metrics = (dir / "metrics.jsonl").string();
    fs::remove(o.metrics);
    Run r(o);
    CHECK(r.t->engine().info().w_bytes_per_param == c.bytes);
    const TrainSummary s = r.t->run();
    CHECK(s.steps_done == 3);
    CHECK(std::isfinite(s.last_loss));
    CHECK(r.log.str().find(cat("W ", c.bytes, " bytes per target parameter")) != std::string::npos);
    CHECK(r.log.str().find(cat("W ", c.wp)) != std::string::npos);  // the method description
    const nlohmann::json sum = summary_record(o.metrics);
    REQUIRE(sum.contains("w_bytes_per_param"));
    CHECK(sum["w_bytes_per_param"].get<int>() == c.bytes);
    bool grid = true, moved = false;
    for (int l = 0; l < base.config.n_layers; ++l)
      for (int m = 0; m < kModulesPerLayer; ++m) {
        const LinearId id{l, static_cast<Module>(m)};
        grid = grid && on_bf16_grid(r.t->model().linear(id));
        moved = moved || !same_bits(r.t->model().linear(id), base.linear(id));
      }
    CHECK(moved);
    if (std::string(c.wp) != "fp32-master") CHECK(grid);
  }
  // lora-dwu and pissa-dwu take the policies too.
  for (const char* method : {"lora-dwu", "pissa-dwu"}) {
    CAPTURE(std::string(method));
    TrainOptions o = wp_options(method, "bf16-sr");
    o.max_steps = 2;
    Run r(o);
    CHECK(r.t->engine().info().w_bytes_per_param == 2);
    CHECK(r.t->run().steps_done == 2);
  }
}

TEST_CASE("w-precision: one bf16-compensated step equals the fp32 step of the same bf16 W (w + c vs fp32)") {
  if (!llama_test::have_data()) return;
  // Reference: fp32-master started from the bf16-rounded base (written as a checkpoint), so both
  // runs see the same W, factors (the SVD of the same W) and gradients at step 1; the fp32 run's
  // W₁ = W₀ + Δ (fp32), the compensated run's w₁ + c₁ must equal W₀ + Δ to the rounding of c₁ and
  // of the fp32 sum.
  const fs::path dir = llama_test::scratch("wprec_kahan_step");
  ModelWeights w = load_checkpoint(wp_options("hdpissa", "fp32-master").model);
  for (int l = 0; l < w.config.n_layers; ++l)
    for (int m = 0; m < kModulesPerLayer; ++m) {
      Matrix& x = w.linear({l, static_cast<Module>(m)});
      for (std::int64_t i = 0; i < x.size(); ++i) x.data()[i] = hdpissa::round_bf16(x.data()[i]);
    }
  const fs::path model = dir / "bf16-grid-model";
  SaveOptions so;
  so.overwrite = true;
  so.source_config_dir = wp_options("hdpissa", "fp32-master").model;
  save_hf_checkpoint(model, w, so);

  TrainOptions a = wp_options("hdpissa", "fp32-master");
  a.model = model.string();
  a.max_steps = 1;
  Run fa(a);
  fa.t->run();
  TrainOptions b = a;
  b.w_precision = hdpissa::WPrecision::Bf16Compensated;
  b.save_state = (dir / "state").string();
  fs::remove_all(b.save_state);
  Run fb(b);
  fb.t->run();
  const TrainState st = fb.t->engine().state();
  double worst = 0, scale = 0;
  bool any_c = false;
  for (int l = 0; l < w.config.n_layers; ++l)
    for (int m = 0; m < kModulesPerLayer; ++m) {
      const LinearId id{l, static_cast<Module>(m)};
      const Matrix& W32 = fa.t->model().linear(id);
      const Matrix& Wb = fb.t->model().linear(id);
      const StateTensor& C = st.at("wprec." + id.hf_name() + ".compensation", Wb.rows(), Wb.cols(), "test");
      const Matrix& W0 = w.linear(id);
      for (std::int64_t i = 0; i < Wb.size(); ++i) {
        const double c = C.data[std::size_t(i)];
        any_c = any_c || c != 0;
        // |(w + c) − W32| ≤ bf16 rounding of c (2^-9 |t|, t = c + (new − w) ≤ |Δ| + ulp) + fp32 rounding
        const double delta = double(W32.data()[i]) - double(W0.data()[i]);
        const double bound = std::ldexp(std::fabs(delta) + std::fabs(c), -8) + std::ldexp(std::fabs(W0.data()[i]), -22);
        worst = std::max(worst, std::fabs(double(Wb.data()[i]) + c - double(W32.data()[i])) / (bound + 1e-30));
        scale = std::max(scale, std::fabs(delta));
      }
    }
  MESSAGE("max |(w + c) - W_fp32| / bound = ", worst, " (largest |delta| ", scale, ")");
  CHECK(any_c);
  CHECK(scale > 0);
  CHECK(worst <= 1.0);
}

TEST_CASE("w-precision: resume is bit-identical under bf16-sr and bf16-compensated") {
  if (!llama_test::have_data()) return;
  for (const std::string wp : {"bf16-sr", "bf16-compensated"}) {
    CAPTURE(wp);
    const fs::path dir = llama_test::scratch("wprec_resume_" + wp);
    TrainOptions o = wp_options("hdpissa", wp);
    o.max_steps = 4;
    Run whole(o);
    const TrainSummary sw = whole.t->run();
    TrainOptions first = o;
    first.stop_after = 2;
    first.save_state = (dir / "state").string();
    fs::remove_all(first.save_state);
    Run part(first);
    part.t->run();
    REQUIRE(part.t->step() == 2);
    TrainOptions second = o;
    second.resume = first.save_state;
    Run rest(second);
    const TrainSummary sr = rest.t->run();
    CHECK(sr.steps_done == 4);
    CHECK(sr.last_loss == sw.last_loss);
    bool all_equal = true;
    const ModelWeights& a = whole.t->model();
    const ModelWeights& b = rest.t->model();
    for (int l = 0; l < a.config.n_layers; ++l)
      for (int m = 0; m < kModulesPerLayer; ++m)
        all_equal = all_equal && same_bits(a.linear({l, static_cast<Module>(m)}), b.linear({l, static_cast<Module>(m)}));
    CHECK(all_equal);
    // the saved state holds the policy's state
    const TrainState st = rest.t->engine().state();
    if (wp == "bf16-sr") {
      REQUIRE(st.find_counter("wprec.sr_step"));
      CHECK(st.find_counter("wprec.sr_step")->value == 4);
    } else {
      CHECK(st.find("wprec." + LinearId{0, Module::q}.hf_name() + ".compensation"));
    }
  }
}

TEST_CASE("w-precision: parsed, echoed, refused where it does not apply") {
  const TrainOptions o = parse_train_args({"--model", "m", "--data", "d", "--method", "hdpissa", "--w-precision", "bf16-sr"});
  CHECK(o.w_precision == hdpissa::WPrecision::Bf16StochasticRounding);
  CHECK(o.to_json()["w_precision"] == "bf16-sr");
  auto refused = [](const char* method, const char* device, const char* needle) {
    TrainOptions t;
    t.model = "m";
    t.data = "d";
    t.method = parse_choice<Method>("--method", method);
    t.device = parse_choice<Device>("--device", device);
    t.w_precision = hdpissa::WPrecision::Bf16Compensated;
    bool thrown = false;
    try {
      t.validate();
    } catch (const std::exception& e) {
      thrown = true;
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
    CHECK(thrown);
  };
  refused("lora", "cpu", "--w-precision bf16-compensated");
  refused("full", "cpu", "full fine-tuning");
  refused("hdpissa", "cuda", "need --dtype bf16");  // GPU fp32 compute: W is the bf16 compute copy
}

TEST_CASE("w-precision: the command line's default is bf16-sr for the DWU methods in GPU bf16, fp32-master elsewhere") {
  using hdpissa::WPrecision;
  auto parsed = [](std::vector<std::string> extra) {
    std::vector<std::string> a{"--model", "m", "--data", "d"};
    a.insert(a.end(), extra.begin(), extra.end());
    return parse_train_args(a).w_precision;
  };
  for (const char* m : {"hdpissa", "lora-dwu", "pissa-dwu"}) {
    CAPTURE(m);
    CHECK(parsed({"--method", m, "--device", "cuda", "--dtype", "bf16"}) == WPrecision::Bf16StochasticRounding);
    CHECK(parsed({"--method", m, "--device", "cuda", "--dtype", "fp32"}) == WPrecision::Fp32Master);
    CHECK(parsed({"--method", m}) == WPrecision::Fp32Master);  // CPU: the exact fp32 reference
    // an explicit choice wins
    CHECK(parsed({"--method", m, "--device", "cuda", "--dtype", "bf16", "--w-precision", "fp32-master"}) ==
          WPrecision::Fp32Master);
    CHECK(parsed({"--method", m, "--device", "cuda", "--dtype", "bf16", "--w-precision", "bf16-compensated"}) ==
          WPrecision::Bf16Compensated);
  }
  for (const char* m : {"lora", "pissa", "full"}) {  // frozen W, or full fine-tuning (fp32 master only)
    CAPTURE(m);
    CHECK(parsed({"--method", m, "--device", "cuda", "--dtype", "bf16"}) == WPrecision::Fp32Master);
  }
  // the struct's own default stays fp32-master (code that builds TrainOptions chooses explicitly)
  CHECK(TrainOptions{}.w_precision == WPrecision::Fp32Master);
}

TEST_CASE("w-precision: resuming under another policy is refused by name") {
  if (!llama_test::have_data()) return;
  const fs::path dir = llama_test::scratch("wprec_resume_mismatch");
  TrainOptions first = wp_options("hdpissa", "bf16-sr");
  first.max_steps = 4;
  first.stop_after = 2;
  first.save_state = (dir / "state").string();
  fs::remove_all(first.save_state);
  {
    Run part(first);
    part.t->run();
    REQUIRE(part.t->step() == 2);
  }
  TrainOptions second = wp_options("hdpissa", "fp32-master");
  second.max_steps = 4;
  second.resume = first.save_state;
  std::string msg;
  try {
    Run r(second);
    r.t->run();
  } catch (const std::exception& e) {
    msg = e.what();
  }
  INFO("message: " << msg);
  for (const char* needle : {"incompatible config", "'w_precision'", "\"bf16-sr\"", "\"fp32-master\"",
                            "pass --w-precision bf16-sr to continue it"})
    CHECK_MESSAGE(msg.find(needle) != std::string::npos, needle);
}
