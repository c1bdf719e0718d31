// hdpissa-train's checkpoints, signals and up-front checks (issue 18), on stories260K:
//  - a state is one verifiable unit: every mix (files of two steps, a flipped byte in each file, a
//    missing file, a manifest of another run) is refused naming the file;
//  - a second trainer on the same --save-state is refused (flock);
//  - a crash at each stage of the save path (fork + HDPISSA_TEST_CRASH_AT_SAVE_STAGE) leaves a state
//    that --resume finds, continuing to the bit-exact final model of an uninterrupted run;
//  - SIGTERM in the middle of a step: the step finishes, the state is saved at it, the resumed run is
//    bit-exact and the metrics log has every step once;
//  - bad outputs fail before the first step; a metrics write failure (/dev/full) is an error;
//  - the divergence guard and --on-nonfinite.

#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <doctest/doctest.h>

#include "llama/train/trainer.hpp"
#include "train_run.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;
using namespace hdpissa::llama;
using Comm = hdpissa::VirtualRanks<hdpissa::SingleProcess>;

namespace {

TrainOptions small_options() {
  const fs::path d = llama_test::data_dir();
  TrainOptions o;
  o.model = (d / "stories260K-hf").string();
  o.tokenizer = (d / "stories260K-hf" / "tokenizer.model").string();
  o.data = (d / "gsm8k" / "train.jsonl").string();
  o.max_examples = 64;
  o.method = Method::Hdpissa;
  o.rank = 4;
  o.groups_per_process = 2;
  o.lr = 2e-3;
  o.max_len = 256;
  o.micro_batch = 1;
  o.max_steps = 6;
  o.warmup_ratio = 0.3;
  o.quiet = true;
  o.threads = 1;
  return o;
}

using Run = llama_test::TrainRun;

template <class Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}
#define CHECK_ERROR(expr, ...)                                              \
  do {                                                                      \
    const std::string msg_ = error_of([&] { expr; });                      \
    INFO("message: " << msg_);                                              \
    for (const char* n_ : {__VA_ARGS__}) CHECK_MESSAGE(llama_test::contains(msg_, n_), n_); \
  } while (0)

bool same_targets(Trainer<Comm>& a, const ModelWeights& b) {
  for (int l = 0; l < b.config.n_layers; ++l)
    for (int m = 0; m < kModulesPerLayer; ++m) {
      const Matrix& x = a.model().layers[l].linear(Module(m));
      const Matrix& y = b.layers[l].linear(Module(m));
      if (x.size() != y.size() || std::memcmp(x.data(), y.data(), std::size_t(x.size()) * 4) != 0) return false;
    }
  return true;
}

/// The final model of an uninterrupted run of `o` (computed once per options).
const ModelWeights& reference_model() {
  static const ModelWeights w = [] {
    Run r(small_options());
    r.t->run();
    return r.t->model();
  }();
  return w;
}

void copy_dir(const fs::path& from, const fs::path& to) {
  fs::remove_all(to);
  fs::copy(from, to, fs::copy_options::recursive);
}
void flip_byte(const fs::path& f) {
  std::fstream s(f, std::ios::in | std::ios::out | std::ios::binary);
  const auto n = fs::file_size(f);
  s.seekg(std::streamoff(n / 2));
  char c = 0;
  s.get(c);
  s.seekp(std::streamoff(n / 2));
  s.put(char(c ^ 0x01));
}
using llama_test::forge_manifest;
std::vector<std::string> leftovers(const fs::path& s) {
  std::vector<std::string> out;
  for (const auto& c : state_candidates(s))
    if (c != fs::absolute(s).lexically_normal()) out.push_back(c.filename().string());
  return out;
}
std::vector<long> step_records(const fs::path& metrics) {
  std::ifstream in(metrics);
  std::string line;
  std::vector<long> steps;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    if (j["type"] == "step") steps.push_back(j["step"].get<long>());
  }
  return steps;
}

}  // namespace

TEST_CASE("train state: the manifest; every mix of files is refused naming the file") {
  if (!llama_test::have_data()) return;
  const fs::path dir = llama_test::scratch("state_mix");
  TrainOptions o = small_options();
  o.stop_after = 1;
  o.save_state = (dir / "s1").string();
  Run(o).t->run();  // step 1 of run R
  TrainOptions o2 = small_options();
  o2.stop_after = 1;
  o2.resume = (dir / "s1").string();
  o2.save_state = (dir / "s2").string();
  Run(o2).t->run();  // step 2 of run R
  TrainOptions o3 = o;
  o3.save_state = (dir / "x1").string();
  Run(o3).t->run();  // step 1 of another run

  const StateManifest m1 = verify_complete_state(dir / "s1"), m2 = verify_complete_state(dir / "s2"),
                      mx = verify_complete_state(dir / "x1");
  CHECK(m1.stamp.step == 1);
  CHECK(m2.stamp.step == 2);
  CHECK(m1.stamp.run_id == m2.stamp.run_id);  // carried through the resume
  CHECK(m1.stamp.run_id.size() == 32);
  CHECK(mx.stamp.run_id != m1.stamp.run_id);
  CHECK(m2.files.size() == 4);  // state.json, shared.safetensors, rank-0.{json,safetensors}
  CHECK(m2.files.count("rank-0.safetensors") == 1);
  CHECK(fs::exists(dir / "s2.lock"));

  TrainOptions r = small_options();
  const fs::path mix = dir / "mix";
  r.resume = mix.string();
  SUBCASE("state.json of step 2 with the rank files of step 1") {
    copy_dir(dir / "s2", mix);
    for (const char* f : {"rank-0.json", "rank-0.safetensors"}) fs::copy_file(dir / "s1" / f, mix / f, fs::copy_options::overwrite_existing);
    CHECK_ERROR(Run x(r), "rank-0.", "manifest.json");
    forge_manifest(mix);  // checksums fixed: the stamps still disagree
    CHECK_ERROR(Run x(r), "rank-0.", "saved at step 1", "says step 2");
  }
  SUBCASE("state.json of step 1 with the other files of step 2") {
    copy_dir(dir / "s2", mix);
    fs::copy_file(dir / "s1" / "state.json", mix / "state.json", fs::copy_options::overwrite_existing);
    CHECK_ERROR(Run x(r), "state.json");
    forge_manifest(mix);
    CHECK_ERROR(Run x(r), "state.json", "saved at step 1");
  }
  SUBCASE("a flipped byte in each file") {
    for (const char* f : {"state.json", "shared.safetensors", "rank-0.json", "rank-0.safetensors", "manifest.json"}) {
      CAPTURE(f);
      copy_dir(dir / "s2", mix);
      flip_byte(mix / f);
      const std::string msg = error_of([&] { Run x(r); });
      INFO("message: " << msg);
      CHECK(llama_test::contains(msg, "--resume"));
      CHECK((llama_test::contains(msg, f) || llama_test::contains(msg, "manifest")));
      if (std::string(f) != "manifest.json") CHECK(llama_test::contains(msg, "checksum mismatch"));
    }
  }
  SUBCASE("a missing file") {
    copy_dir(dir / "s2", mix);
    fs::remove(mix / "rank-0.safetensors");
    CHECK_ERROR(Run x(r), "rank-0.safetensors is missing");
  }
  SUBCASE("a manifest of another run") {
    copy_dir(dir / "s1", mix);
    fs::copy_file(dir / "x1" / "manifest.json", mix / "manifest.json", fs::copy_options::overwrite_existing);
    CHECK_ERROR(Run x(r), "manifest.json belongs to run", mx.stamp.run_id.c_str(), m1.stamp.run_id.c_str());
  }
  SUBCASE("a state without a manifest (format 1)") {
    copy_dir(dir / "s2", mix);
    fs::remove(mix / "manifest.json");
    CHECK_ERROR(Run x(r), "no manifest.json");
  }
}

TEST_CASE("train state: a second trainer on the same --save-state is refused") {
  if (!llama_test::have_data()) return;
  const fs::path dir = llama_test::scratch("state_lock");
  TrainOptions o = small_options();
  o.max_steps = 2;
  o.save_state = (dir / "s").string();
  Run first(o);  // holds s.lock until its run ends
  CHECK_ERROR(Run second(o), "--save-state", "in use by another trainer", "s.lock");
  TrainOptions reader = small_options();
  reader.resume = o.save_state;  // reading a state another trainer writes is refused too
  CHECK_ERROR(Run second(reader), "in use by another trainer");
  first.t->run();
  Run again(o);  // released at the end of the run
  CHECK(again.t->step() == 0);
}

TEST_CASE("train state: save_state(dir) without --save-state (the GPU suite's initial-state save)") {
  if (!llama_test::have_data()) return;
  const fs::path dir = llama_test::scratch("state_explicit");
  TrainOptions o = small_options();
  o.max_steps = 2;
  Run a(o);  // no --save-state: an explicit save still works and can be resumed from
  a.t->save_state(dir / "init");
  CHECK(fs::exists(dir / "init" / "manifest.json"));
  a.t->run();
  TrainOptions r = small_options();
  r.max_steps = 2;
  r.resume = (dir / "init").string();
  Run b(r);
  CHECK(b.t->step() == 0);
  b.t->run();
  CHECK(same_targets(*b.t, a.t->model()));  // resuming the step-0 state replays the same run
}

TEST_CASE("train state: a crash at each rename of a save; --resume takes the newest complete state, bit-exact") {
  if (!llama_test::have_data()) return;
  const ModelWeights& ref = reference_model();
  for (int stage = 1; stage <= 3; ++stage) {
    CAPTURE(stage);
    const fs::path dir = llama_test::scratch("state_crash_" + std::to_string(stage));
    TrainOptions o = small_options();
    o.save_state = (dir / "s").string();
    o.save_every = 2;
    std::cout << std::flush;
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {  // the child trains and dies inside the save of step 4
      ::setenv("HDPISSA_TEST_CRASH_AT_SAVE_STAGE", std::to_string(stage).c_str(), 1);
      ::setenv("HDPISSA_TEST_CRASH_AT_SAVE_STEP", "4", 1);
      try {
        Run c(o);
        c.t->run();
      } catch (...) {
        ::_exit(1);
      }
      ::_exit(0);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 86);
    const auto left = leftovers(o.save_state);
    CHECK(left.size() == (stage == 3 ? 1u : stage == 2 ? 2u : 1u));
    CHECK(fs::exists(o.save_state) == (stage != 2));
    TrainOptions r = small_options();
    r.resume = o.save_state;
    r.save_state = o.save_state;
    Run rest(r);
    CHECK(rest.t->step() == 4);  // the newest complete state is step 4's, whatever the stage
    if (stage < 3) CHECK(llama_test::contains(rest.log.str(), "the newest complete state"));
    CHECK(leftovers(o.save_state).empty());  // the others were removed, the chosen one renamed to s
    CHECK(verify_complete_state(o.save_state).stamp.step == 4);
    rest.t->run();
    CHECK(rest.t->step() == 6);
    CHECK(same_targets(*rest.t, ref));
  }
}

TEST_CASE("train state: SIGTERM in a step finishes it, saves, and the resumed run is bit-exact with no duplicate metrics") {
  if (!llama_test::have_data()) return;
  const ModelWeights& ref = reference_model();
  const fs::path dir = llama_test::scratch("state_sigterm");
  TrainOptions o = small_options();
  o.save_state = (dir / "s").string();
  o.metrics = (dir / "m.jsonl").string();
  ::setenv("HDPISSA_TEST_SIGNAL_AT_STEP", "3", 1);
  TrainSummary s;
  {
    Run r(o);
    s = r.t->run();
    CHECK(llama_test::contains(r.log.str(), "received SIGTERM: stopped after step 3 of 6"));
  }
  ::unsetenv("HDPISSA_TEST_SIGNAL_AT_STEP");
  CHECK(s.stop_signal == SIGTERM);
  CHECK(s.steps_done == 3);
  CHECK(verify_complete_state(o.save_state).stamp.step == 3);
  CHECK(step_records(o.metrics) == std::vector<long>{1, 2, 3});
  {  // a record written after the save (a crash between the two) is dropped on resume
    std::ofstream(o.metrics, std::ios::app) << "{\"type\":\"step\",\"step\":4,\"loss\":1}\n{\"type\":\"st";
  }
  TrainOptions r = small_options();
  r.resume = o.save_state;
  r.save_state = o.save_state;
  r.metrics = o.metrics;
  Run rest(r);
  CHECK(rest.t->step() == 3);
  const TrainSummary s2 = rest.t->run();
  CHECK(s2.stop_signal == 0);
  CHECK(same_targets(*rest.t, ref));
  CHECK(step_records(o.metrics) == std::vector<long>{1, 2, 3, 4, 5, 6});
}

// A state records the canonical --targets, and a resume compares canonical forms: another spelling
// or order of the same set continues the run; a changed --rank is named as the rank (not the alpha
// that defaults to it and comes first in key order).
TEST_CASE("train state: resume takes any spelling of the same --targets; a changed --rank is named") {
  if (!llama_test::have_data()) return;
  const fs::path dir = llama_test::scratch("state_targets");
  TrainOptions o = small_options();
  o.targets = "v_proj,q_proj";
  o.save_state = (dir / "s").string();
  o.stop_after = 2;
  {
    Run r(o);
    r.t->run();
  }
  TrainOptions r2 = small_options();
  r2.targets = "q,v";
  r2.resume = o.save_state;
  {
    Run r(r2);
    CHECK(r.t->step() == 2);
  }
  r2.rank = 2;
  CHECK_ERROR(Run r(r2), "incompatible config: field 'rank'");
}

// --svd is refused with the methods that take no SVD (session 37); a LoRA state written before that,
// by a run given --svd randomized, recorded it: it still resumes (the field is not LoRA's trajectory).
TEST_CASE("train state: a LoRA state that recorded an --svd resumes") {
  if (!llama_test::have_data()) return;
  const fs::path dir = llama_test::scratch("state_lora_svd");
  TrainOptions o = small_options();
  o.method = Method::Lora;
  o.groups_per_process = 1;
  o.save_state = (dir / "s").string();
  o.stop_after = 2;
  {
    Run r(o);
    r.t->run();
  }
  const fs::path st = o.save_state;
  nlohmann::json j = nlohmann::json::parse(std::ifstream(st / "state.json"));
  REQUIRE(j["config"]["method"] == "lora");
  CHECK_FALSE(j["config"].contains("svd"));  // not recorded for LoRA
  j["config"]["svd"] = "randomized";          // as a state of an older build, run with --svd randomized
  std::ofstream(st / "state.json") << j.dump();
  llama_test::forge_manifest(st);
  TrainOptions r2 = small_options();
  r2.method = Method::Lora;
  r2.groups_per_process = 1;
  r2.resume = o.save_state;
  Run r(r2);
  CHECK(r.t->step() == 2);
}

TEST_CASE("train state: bad outputs fail before the first step; a metrics write failure is an error") {
  if (!llama_test::have_data()) return;
  const fs::path dir = llama_test::scratch("state_outputs");
  TrainOptions o = small_options();
  SUBCASE("--output == --save-state") {
    o.output = (dir / "same").string();
    o.save_state = (dir / "same").string();
    CHECK_ERROR(Run r(o), "--output and --save-state are the same path");
    o.save_state = (dir / "same" / "inner").string();
    CHECK_ERROR(Run r(o), "--save-state", "lies inside --output");
    o.save_state.clear();
    o.metrics = (dir / "same" / "m.jsonl").string();
    CHECK_ERROR(Run r(o), "--metrics", "lies inside --output");
  }
  SUBCASE("an output that cannot be written") {
    // root ignores permission bits: a directory on sysfs cannot be created even by root
    o.output = ::geteuid() == 0 ? "/sys/hdpissa-test-output" : "/proc/hdpissa-test-output";
    CHECK_ERROR(Run r(o), "--output", "cannot be written");
    o.output.clear();
    std::ofstream(dir / "file") << "x";
    o.save_state = (dir / "file" / "state").string();
    CHECK_ERROR(Run r(o), "--save-state", "is not a directory");
  }
  SUBCASE("a missing input") {
    o.eval_data = (dir / "no-eval.jsonl").string();
    CHECK_ERROR(Run r(o), "--eval-data", "no-eval.jsonl", "no such file");
  }
  SUBCASE("an existing --output / --save-state holding anything else, or an input, is refused") {
    // each is replaced as a whole when written: what it holds besides a checkpoint / a state would
    // be deleted without a word (session 36's audit: the run's own --data was)
    const fs::path foreign = dir / "foreign";
    fs::create_directories(foreign / "sub");
    std::ofstream(foreign / "notes.txt") << "x";
    o.output = foreign.string();
    CHECK_ERROR(Run r(o), "--output", "holds files that are not a model checkpoint", "notes.txt", "sub/");
    o.output.clear();
    o.save_state = foreign.string();
    CHECK_ERROR(Run r(o), "--save-state", "holds files that are not a training state", "notes.txt");
    o.save_state.clear();
    const fs::path holder = dir / "holder";
    fs::create_directories(holder);
    fs::copy_file(o.data, holder / "train.jsonl", fs::copy_options::overwrite_existing);
    std::ofstream(holder / "config.json") << "{}";  // looks like a checkpoint: the input check decides
    o.data = (holder / "train.jsonl").string();
    o.output = (holder / ".").string();
    CHECK_ERROR(Run r(o), "--data", "lies inside --output");
    CHECK(fs::exists(holder / "train.jsonl"));
  }
  SUBCASE("a trailing '/' on --output and --save-state: written in place, nothing left inside") {
    o.max_steps = 1;
    o.output = (dir / "slash-out").string() + "/";
    o.save_state = (dir / "slash-state").string() + "/";
    fs::remove_all(dir / "slash-out");
    fs::remove_all(dir / "slash-state");
    for (int pass = 0; pass < 2; ++pass) {  // a fresh directory, then replacing it
      CAPTURE(pass);
      Run r(o);
      r.t->run();
      CHECK(fs::exists(dir / "slash-out" / "config.json"));
      CHECK(fs::exists(dir / "slash-state" / "state.json"));
      for (const auto& d : {dir / "slash-out", dir / "slash-state"})
        for (const auto& e : fs::directory_iterator(d)) {
          const std::string n = e.path().filename().string();
          CHECK_MESSAGE(n.find(".tmp") == std::string::npos, n);
          CHECK_MESSAGE(n.find(".lock") == std::string::npos, n);
          CHECK_MESSAGE(n.find(".old") == std::string::npos, n);
        }
    }
  }
  SUBCASE("/dev/full as --metrics") {
    if (!fs::exists("/dev/full")) return;
    o.metrics = "/dev/full";
    Run r(o);
    CHECK_ERROR(r.t->run(), "--metrics /dev/full: write failed", "No space left on device");
  }
}

// Issue 13 item 5: every input is checked before the first long phase (the checkpoint load, the
// SVDs). The --model here is a directory whose model.safetensors is garbage: loading it would fail
// with a checkpoint error, so an error naming the bad input proves it came first.
TEST_CASE("train state: bad inputs fail before the checkpoint is loaded; start-up progress lines") {
  if (!llama_test::have_data()) return;
  const fs::path dir = llama_test::scratch("startup_inputs");
  const fs::path bad_model = dir / "garbage-model";
  fs::create_directories(bad_model);
  fs::copy_file(llama_test::data_dir() / "stories260K-hf" / "config.json", bad_model / "config.json",
                fs::copy_options::overwrite_existing);
  std::ofstream(bad_model / "model.safetensors") << "not a safetensors file";
  TrainOptions o = small_options();
  o.model = bad_model.string();
  SUBCASE("the garbage model itself fails at load (the premise)") {
    CHECK_ERROR(Run r(o), "model.safetensors");
  }
  SUBCASE("a missing --eval-gsm8k") {
    o.eval_gsm8k = (dir / "no-gsm8k.jsonl").string();
    CHECK_ERROR(Run r(o), "--eval-gsm8k", "no-gsm8k.jsonl", "no such file");
  }
  SUBCASE("a malformed --eval-gsm8k, --eval-math, --eval-mbpp") {
    std::ofstream(dir / "broken.jsonl") << "{\"question\": \"no answer field\"}\n";
    o.eval_gsm8k = (dir / "broken.jsonl").string();
    CHECK_ERROR(Run r(o), "broken.jsonl");
    o.eval_gsm8k.clear();
    o.eval_math = (dir / "broken.jsonl").string();
    CHECK_ERROR(Run r(o), "broken.jsonl");
    o.eval_math.clear();
    o.eval_mbpp = (dir / "broken.jsonl").string();
    CHECK_ERROR(Run r(o), "broken.jsonl");
  }
  SUBCASE("a bad tokenizer") {
    o.tokenizer = (dir / "no-tokenizer.model").string();
    CHECK_ERROR(Run r(o), "--tokenizer", "no-tokenizer.model", "no such file");
    std::ofstream(dir / "bad-tokenizer.model") << "garbage";
    o.tokenizer = (dir / "bad-tokenizer.model").string();
    CHECK_ERROR(Run r(o), "bad-tokenizer.model");
  }
  SUBCASE("an --eval-records directory that cannot be written") {
    o.eval_records = ::geteuid() == 0 ? "/sys/hdpissa-test-records" : "/proc/hdpissa-test-records";
    o.eval_gsm8k = (llama_test::data_dir() / "gsm8k" / "test.jsonl").string();  // a task to record
    CHECK_ERROR(Run r(o), "--eval-records", "cannot be written");
  }
  SUBCASE("most of --data dropped at --max-len: a warning, even under --quiet") {
    TrainOptions g = small_options();  // quiet
    g.max_steps = 1;
    g.max_len = 160;  // stories260K's tokenizer: 62 of the first 64 GSM8K examples have no label left
    Run r(g);
    CHECK(llama_test::contains(r.log.str(), "warning: 62 of 64 examples dropped: every label lies beyond --max-len 160"));
    g.max_len = 256;
    Run r2(g);
    CHECK_FALSE(llama_test::contains(r2.log.str(), "warning:"));
  }
  SUBCASE("progress lines: load (GB/s) and adapter init (layers done / total)") {
    TrainOptions g = small_options();
    g.quiet = false;
    g.max_steps = 1;
    Run r(g);
    const std::string log = r.log.str();
    CHECK(log.find("loaded ") != std::string::npos);
    CHECK(log.find(" GB/s)") != std::string::npos);
    CHECK(log.find("tokenized 64 records of ") < log.find("loading "));  // the data before the model
    CHECK(log.find("adapter init: 35/35 target layers") != std::string::npos);  // stories260K: 5 layers × 7
  }
}

TEST_CASE("train state: the divergence guard keeps the last good state; --on-nonfinite") {
  if (!llama_test::have_data()) return;
  const fs::path dir = llama_test::scratch("state_guard");
  SUBCASE("--max-loss") {
    TrainOptions o = small_options();
    o.max_loss = 1.0;  // stories260K starts far above
    o.save_state = (dir / "s").string();
    Run r(o);
    CHECK_ERROR(r.t->run(), "divergence guard", "exceeds --max-loss 1", "at step 1", "last good state (step 0");
    CHECK(verify_complete_state(o.save_state).stamp.step == 0);
  }
  SUBCASE("--loss-spike-factor") {
    TrainOptions o = small_options();
    o.lr = 0.2;  // too high: losses 7.17 10.8 7.96 8.59 24.1 ...
    o.max_steps = 12;
    o.warmup_ratio = 0.5;
    o.loss_spike_factor = 1.05;  // steps 4 and 5 are above 1.05 x the median: trips at step 5
    o.loss_spike_steps = 2;
    o.save_state = (dir / "s").string();
    Run r(o);
    const std::string msg = error_of([&] { r.t->run(); });
    INFO("message: " << msg);
    CHECK(llama_test::contains(msg, "running median"));
    CHECK(llama_test::contains(msg, "for 2 consecutive step(s)"));
    const long kept = verify_complete_state(o.save_state).stamp.step;
    CHECK(r.t->step() == 4);  // step 5's update is not applied
    CHECK(kept == 3);         // the state before the spike began (step 4), not the diverged one
  }
  SUBCASE("--on-nonfinite") {
    TrainOptions o = small_options();
    o.lr = 1e30;  // the first update overflows the weights; later gradients are non-finite
    o.max_steps = 3;
    o.warmup_ratio = 0;
    Run r(o);
    const std::string msg = error_of([&] { r.t->run(); });
    INFO("message: " << msg);
    CHECK(llama_test::contains(msg, "non-finite"));
    CHECK(llama_test::contains(msg, "--on-nonfinite skip"));
    CHECK_FALSE(llama_test::contains(msg, "NonFinitePolicy"));
    o.on_nonfinite = OnNonFinite::Skip;
    o.metrics = (dir / "m.jsonl").string();
    Run k(o);
    const TrainSummary s = k.t->run();
    CHECK(s.steps_done == 3);
    CHECK(llama_test::contains(k.log.str(), "skipped (--on-nonfinite skip)"));
  }
  CHECK(parse_train_args({"--model", "m", "--data", "d", "--on-nonfinite", "skip", "--max-loss", "9", "--loss-spike-factor",
                          "3", "--loss-spike-steps", "4"})
            .on_nonfinite == OnNonFinite::Skip);
  CHECK_ERROR(parse_train_args({"--model", "m", "--data", "d", "--on-nonfinite", "ignore"}), "--on-nonfinite", "error or skip");
  CHECK_ERROR(parse_train_args({"--model", "m", "--data", "d", "--loss-spike-factor", "0.5"}), "--loss-spike-factor");
}
