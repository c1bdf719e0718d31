// The command-line conventions (llama/cli.hpp, CLI11) on hdpissa-train's real options: aliases,
// --x=y, lists, all-linear, --config files with command-line overrides, did-you-mean, choice
// errors, --help / --version. Each expectation is an exact value or the exact text of an error.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "../common/scoped_env.hpp"
#include "llama/cli.hpp"
#include "llama/train/options.hpp"

using namespace hdpissa::llama;

namespace {

std::string error_of(const std::vector<std::string>& args, bool* usage = nullptr) {
  std::ostringstream sink;
  try {
    (void)parse_train_args(args, nullptr, sink);
  } catch (const cli::UsageError& e) {
    if (usage) *usage = true;
    return e.what();
  } catch (const std::exception& e) {
    if (usage) *usage = false;
    return e.what();
  }
  return "";
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

std::vector<std::string> base(std::vector<std::string> more) {
  std::vector<std::string> a{"--model", "m", "--data", "d"};
  a.insert(a.end(), more.begin(), more.end());
  return a;
}

/// An environment variable checked with the command line: each bad value is the error
/// "VAR: expected <expected>, found '<bad>'", each good value parses; the caller's value is back after.
void check_env_values(const char* var, std::initializer_list<const char*> bad, std::initializer_list<const char*> ok,
                      const std::string& expected) {
  CAPTURE(std::string(var));
  const hdpissa::test::ScopedEnv restore(var, nullptr);
  for (const char* b : bad) {
    ::setenv(var, b, 1);
    CHECK(error_of(base({})) == std::string(var) + ": expected " + expected + ", found '" + b + "'");
  }
  for (const char* g : ok) {
    ::setenv(var, g, 1);
    CHECK(error_of(base({})) == "");
  }
}

}  // namespace

TEST_CASE("cli: edit distance and suggestions") {
  CHECK(cli::edit_distance("", "abc") == 3);
  CHECK(cli::edit_distance("kitten", "sitting") == 3);
  CHECK(cli::edit_distance("--lr", "--lr") == 0);
  CHECK(cli::split_list({"q,k", "v", "o, gate"}) == std::vector<std::string>{"q", "k", "v", "o", "gate"});
}

TEST_CASE("cli: --x=y equals --x y, aliases, negative values") {
  const TrainOptions a = parse_train_args(base({"--lr=3e-4", "--rank=8", "--method=lora", "--max-len", "128"}));
  const TrainOptions b = parse_train_args(base({"--learning-rate", "3e-4", "--lora-r", "8", "--method", "lora",
                                                "--max-seq-length=128"}));
  CHECK(a.lr == 3e-4);
  CHECK(b.lr == 3e-4);
  CHECK(a.rank == 8);
  CHECK(b.rank == 8);
  CHECK(a.method == Method::Lora);
  CHECK(b.method == Method::Lora);
  CHECK(a.max_len == 128);
  CHECK(b.max_len == 128);
  CHECK(parse_train_args(base({"--gradient-accumulation-steps", "4", "--per-device-train-batch-size=2"})).grad_accum == 4);
  CHECK(parse_train_args(base({"--per-device-train-batch-size=2"})).micro_batch == 2);
  CHECK(parse_train_args(base({"--output-dir", "o"})).output == "o");
  CHECK(parse_train_args(base({"-q"})).quiet);
  CHECK(parse_train_args(base({"--max-steps", "-1"})).max_steps == -1);  // a negative number is a value
  CHECK(parse_train_args(base({"--max-steps", "4", "--max-steps=9"})).max_steps == 9);  // the last one wins
  CHECK(parse_train_args(base({"--max-shard-size=500MB"})).max_shard_bytes == 500'000'000);
}

TEST_CASE("cli: --targets lists: commas, spaces, full names, all-linear") {
  CHECK(parse_train_args(base({"--targets", "q,k,v"})).targets == "q,k,v");
  CHECK(parse_train_args(base({"--targets", "q", "k", "v", "--rank", "4"})).targets == "q,k,v");
  CHECK(parse_train_args(base({"--targets=q_proj,down_proj"})).target_modules() ==
        std::vector<Module>{Module::q, Module::down});
  const TrainOptions all = parse_train_args(base({"--target-modules", "all-linear"}));
  CHECK(all.target_modules().size() == 7);
  CHECK(contains(error_of(base({"--targets", "q,x"})), "'x'"));
  // one canonical spelling per set (the model's module order, short names): what a state records
  // and a resume compares, so q_proj,… or a reordered list continue a run saved with q,…
  CHECK(parse_train_args(base({"--targets", "down_proj,q,up_proj"})).targets == "q,up,down");
  CHECK(all.targets == "q,k,v,o,gate,up,down");
  CHECK(canonical_targets("v_proj, q") == "q,v");
  CHECK(contains(error_of(base({"--targets", "q,q_proj"})), "listed twice"));
}

TEST_CASE("cli: options that would do nothing without their companion are errors") {
  CHECK(error_of(base({"--eval-every", "2"})) == "--eval-every needs --eval-data FILE (the held-out loss it logs)");
  CHECK(error_of(base({"--eval-records", "recs"})) ==
        "--eval-records needs a task to record: --eval-gsm8k, --eval-math, --eval-humaneval or --eval-mbpp");
}

TEST_CASE("cli: --threads is 0 (the default) to 1024") {
  CHECK(parse_train_args(base({"--threads", "1024"})).threads == 1024);
  CHECK(error_of(base({"--threads", "1025"})) == "--threads: expected 0 to 1024, found 1025");
  CHECK(error_of(base({"--threads", "100000"})) == "--threads: expected 0 to 1024, found 100000");
}

TEST_CASE("cli: unknown options name themselves and suggest the closest") {
  bool usage = false;
  const std::string e = error_of(base({"--lrr", "1e-3"}), &usage);
  CHECK(usage);
  CHECK(contains(e, "unknown option '--lrr'"));
  CHECK(contains(e, "did you mean '--lr'?"));
  CHECK(contains(error_of(base({"--grad-acum=2"})), "did you mean '--grad-accum'?"));
  const std::string far = error_of(base({"--completely-unrelated"}));
  CHECK(contains(far, "unknown option '--completely-unrelated'"));
  CHECK(!contains(far, "did you mean"));
}

TEST_CASE("cli: malformed values and choices name the flag") {
  CHECK(contains(error_of(base({"--method", "dora"})), "--method: expected full, lora, pissa, hdpissa, lora-dwu or pissa-dwu, found 'dora'"));
  CHECK(contains(error_of(base({"--rank", "four"})), "--rank expects an integer, found 'four'"));
  bool usage = false;
  const std::string e = error_of(base({"--micro-batch", "two"}), &usage);
  CHECK(usage);
  CHECK(contains(e, "--micro-batch"));
  CHECK(contains(e, "two"));
  CHECK(contains(error_of({"--model", "m", "--data", "d", "--prompt-field"}), "--prompt-field"));
  CHECK(contains(error_of(base({"--seed", "-3"})), "--seed: expected >= 0, found -3"));
  CHECK(contains(error_of(base({"--max-examples", "0"})), "--max-examples: expected >= 1, found 0"));
  CHECK(contains(error_of({"--data", "d"}), "missing --model"));
}

TEST_CASE("cli: parse_int (hdpissa-train and hdpissa-eval) checks the whole text and the range") {
  CHECK(cli::parse_int<int>("--x", "42") == 42);
  CHECK(cli::parse_int<long>("--x", "-7", -10, 10) == -7);
  auto err = [](auto f) -> std::string {
    try {
      (void)f();
    } catch (const LlamaError& e) {
      return e.what();
    }
    return "";
  };
  CHECK(err([] { return cli::parse_int<int>("--x", ""); }) == "--x expects an integer, found ''");
  CHECK(err([] { return cli::parse_int<int>("--x", "12abc"); }) == "--x expects an integer, found '12abc'");
  CHECK(err([] { return cli::parse_int<int>("--x", "1e3"); }) == "--x expects an integer, found '1e3'");
  CHECK(err([] { return cli::parse_int<int>("--x", "99999999999999999999"); }) ==
        "--x expects an integer, found '99999999999999999999'");
  CHECK(err([] { return cli::parse_int<int>("--x", "3", 4); }) == "--x: expected >= 4, found 3");
  CHECK(err([] { return cli::parse_int<int>("--x", "9", 0, 8); }) == "--x: expected <= 8, found 9");
  CHECK(err([] { return cli::parse_int<int>("--x", "4294967296"); }) == "--x: expected <= 2147483647, found 4294967296");
  CHECK(contains(error_of(base({"--rank", "4294967296"})), "--rank: expected <= 2147483647, found 4294967296"));
  CHECK(contains(error_of(base({"--groups-per-process=1.5"})), "--groups-per-process expects an integer, found '1.5'"));
}

TEST_CASE("cli: --config TOML / INI, the command line wins") {
  const auto dir = std::filesystem::path(HDPISSA_LLAMA_SCRATCH) / "cli-config";
  std::filesystem::create_directories(dir);
  const auto toml = dir / "run.toml";
  {
    std::ofstream f(toml);
    f << "# hdpissa-train options\nmodel = \"m\"\ndata = \"d\"\nmethod = \"pissa\"\nrank = 8\nlr = 1e-3\n"
         "targets = [\"q\", \"v\"]\nquiet = true\nmax-len = 256\n";
  }
  const TrainOptions a = parse_train_args({"--config", toml.string()});
  CHECK(a.model == "m");
  CHECK(a.method == Method::Pissa);
  CHECK(a.rank == 8);
  CHECK(a.lr == 1e-3);
  CHECK(a.targets == "q,v");
  CHECK(a.quiet);
  CHECK(a.max_len == 256);
  const TrainOptions b = parse_train_args({"--config=" + toml.string(), "--rank", "4", "--method", "hdpissa"});
  CHECK(b.rank == 4);  // the command line wins
  CHECK(b.method == Method::Hdpissa);
  CHECK(b.lr == 1e-3);  // the rest from the file
  const auto bad = dir / "bad.toml";
  {
    std::ofstream f(bad);
    f << "model = \"m\"\ndata = \"d\"\nmethod = \"dora\"\n";
  }
  CHECK(contains(error_of({"--config", bad.string()}), "--method: expected"));
  CHECK(contains(error_of({"--config", (dir / "absent.toml").string()}), "absent.toml"));
  const auto extra = dir / "extra.toml";
  {
    std::ofstream f(extra);
    f << "model = \"m\"\ndata = \"d\"\nmax-lenn = 64\n";
  }
  const std::string e = error_of({"--config", extra.string()});  // an unknown key is not silently ignored
  CHECK(contains(e, "--config " + extra.string() + ": unknown key 'max-lenn'; did you mean 'max-len'?"));
  const auto broken = dir / "broken.toml";
  {
    std::ofstream f(broken);
    f << "[train\nrank = 4\n";
  }
  CHECK(contains(error_of({"--config", broken.string()}),
                 "--config " + broken.string() + ": cannot parse '[train' (expected key = value lines and [section] headers)"));
}

TEST_CASE("cli: --svd applies to the SVD-initialised methods only") {
  for (const char* m : {"lora", "lora-dwu", "full"})
    CHECK(contains(error_of(base({"--method", m, "--svd", "randomized"})),
                   std::string("--svd applies to the SVD-initialised methods (hdpissa, pissa, pissa-dwu), not --method ") + m));
  for (const char* m : {"hdpissa", "pissa", "pissa-dwu"})
    CHECK(parse_train_args(base({"--method", m, "--svd", "randomized"})).svd == SvdKind::Randomized);
  CHECK(parse_train_args(base({"--method", "lora"})).svd == SvdKind::Exact);  // the default stays accepted
}

TEST_CASE("cli: --help and --version print and ask for no validation") {
  std::ostringstream out;
  bool help = false;
  (void)parse_train_args({"--help"}, &help, out);
  CHECK(help);
  CHECK(contains(out.str(), "--groups-per-process"));
  CHECK(contains(out.str(), "--config"));
  CHECK(contains(out.str(), "hdpissa|lora|pissa|full|lora-dwu|pissa-dwu"));
  std::ostringstream ver;
  help = false;
  (void)parse_train_args({"--version"}, &help, ver);
  CHECK(help);
  CHECK(contains(ver.str(), std::string("hdpissa-train (hdpissa) ") + HDPISSA_VERSION_STRING));
  CHECK(std::string(HDPISSA_VERSION_STRING) != "unknown");
}

TEST_CASE("cli: --compute fp8 needs --device cuda --dtype bf16 and the exact mute, and says so") {
  CHECK(contains(error_of(base({"--compute", "fp16"})), "--compute: expected dtype or fp8, found 'fp16'"));
  CHECK(contains(error_of(base({"--compute", "fp8"})),
                 "--compute fp8: runs the target linears' base GEMMs in FP8 on the GPU; expected --device cuda --dtype "
                 "bf16, found --device cpu --dtype fp32"));
  CHECK(contains(error_of(base({"--compute", "fp8", "--device", "cuda"})),
                 "expected --device cuda --dtype bf16, found --device cuda --dtype fp32"));
  CHECK(contains(error_of(base({"--compute", "fp8", "--device", "cuda", "--dtype", "bf16", "--mute-gamma", "1e-8"})),
                 "--compute fp8: expected the exact mute (--mute-gamma 0), found --mute-gamma 1e-08"));
  // accepted: parsed into the options, echoed in the run's config
  std::ostringstream sink;
  const TrainOptions o = parse_train_args(base({"--compute", "fp8", "--device", "cuda", "--dtype", "bf16"}), nullptr, sink);
  CHECK(o.compute == ComputeKind::Fp8);
  CHECK(o.to_json()["compute"] == "fp8");
  CHECK(parse_train_args(base({}), nullptr, sink).compute == ComputeKind::Dtype);
}

TEST_CASE("cli: the GPU engine's environment switches are checked with the command line, naming the variable") {
  // the variables as they were, whatever the checks do
  const hdpissa::test::ScopedEnv fused("HDPISSA_FUSED_ADAPTER_GRADS", nullptr);
  const hdpissa::test::ScopedEnv chunk("HDPISSA_LOSS_CHUNK_ROWS", nullptr);
  const hdpissa::test::ScopedEnv align("HDPISSA_LOSS_ROW_ALIGN", nullptr);
  ::setenv("HDPISSA_FUSED_ADAPTER_GRADS", "yes", 1);
  CHECK(error_of(base({})) == "HDPISSA_FUSED_ADAPTER_GRADS: expected 0 or 1, found 'yes'");
  for (const char* ok : {"0", "1", ""}) {
    ::setenv("HDPISSA_FUSED_ADAPTER_GRADS", ok, 1);
    CHECK(error_of(base({})) == "");
  }
  ::unsetenv("HDPISSA_FUSED_ADAPTER_GRADS");
  for (const char* bad : {"0", "65537", "12x", "-4", "x"}) {
    ::setenv("HDPISSA_LOSS_CHUNK_ROWS", bad, 1);
    CHECK(error_of(base({})) == std::string("HDPISSA_LOSS_CHUNK_ROWS: expected a row count in [1, 65536], found '") + bad + "'");
  }
  for (const char* ok : {"1", "512", "65536"}) {
    ::setenv("HDPISSA_LOSS_CHUNK_ROWS", ok, 1);
    CHECK(error_of(base({})) == "");
    CHECK(env_loss_chunk_rows() == std::atoi(ok));  // the value the engine sizes the loss with
  }
  ::unsetenv("HDPISSA_LOSS_CHUNK_ROWS");
  CHECK_FALSE(env_loss_chunk_rows().has_value());
  // HDPISSA_LOSS_ROW_ALIGN: the loss GEMMs' row multiple (GPU engine), the same parser
  for (const char* bad : {"0", "1025", "128rows", "-1", " "}) {
    ::setenv("HDPISSA_LOSS_ROW_ALIGN", bad, 1);
    CHECK(error_of(base({})) == std::string("HDPISSA_LOSS_ROW_ALIGN: expected a row count in [1, 1024], found '") + bad + "'");
  }
  for (const char* ok : {"1", "128", "1024"}) {
    ::setenv("HDPISSA_LOSS_ROW_ALIGN", ok, 1);
    CHECK(error_of(base({})) == "");
    CHECK(env_loss_row_align() == std::atoi(ok));
  }
  ::unsetenv("HDPISSA_LOSS_ROW_ALIGN");
  CHECK_FALSE(env_loss_row_align().has_value());
}

TEST_CASE("cli: --cuda-graphs needs --device cuda and not --profile; it is in the config") {
  std::ostringstream sink;
  CHECK(error_of(base({"--cuda-graphs"})).find("--cuda-graphs: replays the GPU model's layers") != std::string::npos);
  CHECK(error_of(base({"--cuda-graphs", "--device", "cuda", "--profile"})) ==
        "--cuda-graphs replays captured layers, --profile times them with host-recorded events; expected at most one "
        "of them, found both");
  const TrainOptions o = parse_train_args(base({"--cuda-graphs", "--device", "cuda"}), nullptr, sink);
  CHECK(o.cuda_graphs);
  CHECK(o.to_json()["cuda_graphs"] == true);
  CHECK_FALSE(parse_train_args(base({}), nullptr, sink).cuda_graphs);
}

TEST_CASE("cli: HDPISSA_FLASH_BAND is a head count or 'all', checked with the command line") {
  const hdpissa::test::ScopedEnv restore("HDPISSA_FLASH_BAND", nullptr);  // the caller's value back at the end
  for (const char* bad : {"0", "-3", "1073741825", "32x", "ALL", " "}) {
    ::setenv("HDPISSA_FLASH_BAND", bad, 1);
    CHECK(error_of(base({})) ==
          std::string("HDPISSA_FLASH_BAND: expected a head count or 'all' in [1, 1073741824], found '") + bad + "'");
  }
  for (const char* ok : {"1", "32", "1073741824"}) {
    ::setenv("HDPISSA_FLASH_BAND", ok, 1);
    CHECK(error_of(base({})) == "");
    CHECK(env_flash_band() == std::atoi(ok));
  }
  ::setenv("HDPISSA_FLASH_BAND", "all", 1);
  CHECK(error_of(base({})) == "");
  CHECK(env_flash_band() == (1 << 30));
  ::unsetenv("HDPISSA_FLASH_BAND");
  CHECK_FALSE(env_flash_band().has_value());
}

TEST_CASE("cli: HDPISSA_ADAPTER_STREAM_PRIORITY and HDPISSA_CUDA_DWU_PRIORITY are default or high, checked with the command line") {
  for (const char* var : {"HDPISSA_ADAPTER_STREAM_PRIORITY", "HDPISSA_CUDA_DWU_PRIORITY"})
    check_env_values(var, {"1", "HIGH", "low", "urgent"}, {"default", "high", ""}, "default or high");
  // the values: the second stream high unless told otherwise (session 35), the DWU streams default
  const hdpissa::test::ScopedEnv a("HDPISSA_ADAPTER_STREAM_PRIORITY", nullptr), d("HDPISSA_CUDA_DWU_PRIORITY", nullptr);
  CHECK(env_adapter_stream_priority() == hdpissa::StreamPriority::High);
  CHECK(hdpissa::stream_priority_from_env("HDPISSA_CUDA_DWU_PRIORITY") == hdpissa::StreamPriority::Default);
  ::setenv("HDPISSA_ADAPTER_STREAM_PRIORITY", "default", 1);
  CHECK(env_adapter_stream_priority() == hdpissa::StreamPriority::Default);
  ::setenv("HDPISSA_CUDA_DWU_PRIORITY", "high", 1);
  CHECK(hdpissa::stream_priority_from_env("HDPISSA_CUDA_DWU_PRIORITY") == hdpissa::StreamPriority::High);
}

TEST_CASE("cli: HDPISSA_STACKED_LINEARS, HDPISSA_ADAPTER_STREAM and HDPISSA_DWU_OVERLAP are 0 or 1, checked with the command line") {
  for (const char* var : {"HDPISSA_STACKED_LINEARS", "HDPISSA_ADAPTER_STREAM", "HDPISSA_DWU_OVERLAP"}) {
    check_env_values(var, {"2", "yes", "on", "00"}, {"0", "1", ""}, "0 or 1");
    const hdpissa::test::ScopedEnv restore(var, nullptr);  // the caller's value back at the end
    auto value = [&] {
      const std::string v = var;
      return v == "HDPISSA_STACKED_LINEARS" ? env_stacked_linears()
             : v == "HDPISSA_ADAPTER_STREAM" ? env_adapter_stream()
                                              : env_dwu_overlap();
    };
    ::setenv(var, "0", 1);
    const bool off = value();
    ::unsetenv(var);
    const bool on = value();
    CHECK_FALSE(off);
    CHECK(on);  // the default
  }
}
