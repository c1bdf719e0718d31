#pragma once
/// \file trainer.hpp
/// Trainer<Comm>: hdpissa-train's loop, readable top to bottom.
///  setup: model + tokenizer + data (Alpaca template, prompt masked, sharded: group G of K reads
///         shard G) → method (methods.hpp) → optional resume from a saved state.
///  step:  for each local group: its own micro-batches (forward/backward through the method's
///         hooks, loss scaled by 1/grad_accum) → method step (DWU or data-parallel) at the
///         warmup+cosine learning rate.
///  eval:  held-out loss, a greedy sample, GSM8K-style accuracy.
///  out:   merged HF checkpoint (input dtype, sharded), PEFT adapters (lora_export.hpp), resumable
///         state (temp dir + rename), metrics JSONL.
/// Only worker 0 prints and writes shared files; each worker writes its own optimizer state.
/// The model and the method live behind TrainEngine (engine.hpp): CpuEngine (model.hpp +
/// methods.hpp) for --device cpu, the CUDA engine (src/engine_cuda.cu) for --device cuda.
///
/// Saved state (a directory): state.json (format, run id, step, trajectory config, fingerprints of
/// the base model and the tokenized data, shared counters, the divergence guard's recent losses),
/// shared.safetensors (the target W, the factors / adapters, data-parallel Adam moments),
/// rank-<p>.safetensors + rank-<p>.json (worker p's per-group Adam moments and step counts, its
/// groups' data positions), manifest.json (every file's size and xxHash64, written last; every file
/// carries the run id and step: state_dir.hpp). Resuming verifies and restores all of it, so the
/// continued run is bit-identical to an uninterrupted one (same machine and thread count: Eigen's
/// GEMM blocking depends on the number of threads).
/// Safety (issue 18): up-front path checks (preflight.hpp), a flock on the state directory,
/// recovery of interrupted saves, SIGINT/SIGTERM/SIGUSR1 stop after the current step with a save
/// (signals.hpp), fatal metrics write errors, a divergence guard.

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "llama/checkpoint.hpp"
#include "llama/data.hpp"
#include "llama/data_formats.hpp"
#include "llama/model.hpp"
#include "llama/safetensors.hpp"
#include "llama/tokenizer.hpp"
#include "llama/train/engine.hpp"
#include "llama/eval/evaluators.hpp"
#include "llama/train/gsm8k.hpp"
#include "llama/train/lora_export.hpp"
#include "llama/train/methods.hpp"
#include "llama/train/options.hpp"
#include "llama/train/preflight.hpp"
#include "llama/train/signals.hpp"
#include "llama/train/state_dir.hpp"

namespace hdpissa::llama {

/// What a run did (for the caller and the tests).
struct TrainSummary {
  long steps_done = 0;                   ///< optimizer steps completed overall
  long total_steps = 0;                  ///< planned steps
  long steps_this_run = 0;               ///< steps of this invocation
  std::optional<double> eval_before;     ///< held-out loss before this invocation's first step
  std::optional<double> eval_after;      ///< held-out loss at the end
  double last_loss = 0;                  ///< training loss of the last step
  double first_loss = 0;                 ///< training loss of this invocation's first step
  double tokens_per_s = 0;               ///< training throughput of this invocation
  double seconds = 0;                    ///< training wall time of this invocation
  std::optional<std::int64_t> peak_device_bytes;  ///< GPU path: peak device memory in use
  std::optional<double> gsm8k_accuracy;  ///< fraction correct
  std::string sample_after;              ///< generated sample text
  int stop_signal = 0;                   ///< SIGINT / SIGTERM / SIGUSR1 that stopped the run early (0: none)
};

/// The metrics JSONL (worker 0): every record is written and flushed at once, and a failed write
/// is an error naming the file and the cause (a full disk must not leave a silently cut log).
class MetricsFile {
 public:
  MetricsFile() = default;
  MetricsFile(const MetricsFile&) = delete;
  MetricsFile& operator=(const MetricsFile&) = delete;
  ~MetricsFile() { close(); }
  void open(const std::filesystem::path& p, bool append) {
    path_ = p.string();
    f_ = std::fopen(p.c_str(), append ? "ab" : "wb");
    if (!f_) throw LlamaError(cat("--metrics: cannot open ", path_, " for writing: ", std::strerror(errno)));
  }
  [[nodiscard]] bool is_open() const { return f_ != nullptr; }
  void write(const std::string& line) {
    if (!f_) return;
    errno = 0;
    if (std::fputs(line.c_str(), f_) < 0 || std::fputc('\n', f_) == EOF || std::fflush(f_) != 0) {
      const int err = errno;
      throw LlamaError(cat("--metrics ", path_, ": write failed after ", records_, " complete record(s): ",
                           err ? std::strerror(err) : "unknown error", "; stopping (the metrics log must be complete)"));
    }
    ++records_;
  }
  void close() {
    if (f_) std::fclose(f_);
    f_ = nullptr;
  }

 private:
  std::FILE* f_ = nullptr;
  std::string path_;
  long records_ = 0;
};

/// 64-bit FNV-1a of raw bytes (fingerprints: cheap, deterministic, order-sensitive).
inline std::uint64_t fnv1a(const void* data, std::size_t n, std::uint64_t h = 1469598103934665603ull) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}
inline std::string hex64(std::uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}
/// h:mm:ss
inline std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e8) return "?";
  const long t = static_cast<long>(s + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, (t / 60) % 60, t % 60);
  return buf;
}

/// The training loop over communicator `Comm` (VirtualRanks<SingleProcess> or VirtualRanks<MpiCommunicator>);
/// on --device cuda the engine has its own device communicator with the same K groups (engine.hpp).
template <class Comm>
class Trainer {
 public:
  /// Loads everything and builds the method (or restores it from --resume). `log` receives the
  /// human-readable output (on worker 0 only). `device_comm`: how the CUDA engine reaches the other
  /// processes (--device cuda under several processes; hdpissa-train's main fills it under MPI).
  Trainer(TrainOptions opt, Comm& comm, std::ostream& log = std::cout, DeviceCommSetup device_comm = {})
      : o_(std::move(opt)), comm_(&comm), log_(&log), root_(comm.rank() == 0), device_comm_(std::move(device_comm)) {
    o_.validate();
    setup();
  }

  // ------------------------------------------------------------------ accessors
  /// The host model: trained in place on the CPU path; the base weights on the GPU path, whose
  /// target linears stay stored in the mapped checkpoint when it is an HF safetensors directory
  /// (llama/stored_linears.hpp: linear_value, held_copy; the live weights are on the device:
  /// engine().merge_into()).
  ModelWeights& model() { return w_; }
  TrainEngine& engine() { return *eng_; }
  const TrainOptions& options() const { return o_; }
  long step() const { return step_; }
  long total_steps() const { return total_; }
  double lr_at(long step) const { return sched_(step); }
  const std::vector<TokenizedExample>& train_data() const { return *data_; }
  const Tokenizer& tokenizer() const { return *tok_; }

  // ------------------------------------------------------------------ one step, in two halves
  /// Forward/backward of every local group's micro-batches for the next step (gradients zeroed
  /// first). Returns {mean loss over all K groups' micro-batches, tokens processed by all workers}.
  std::pair<double, double> accumulate_gradients() {
    eng_->zero_grad();
    double sums[3] = {0, 0, 0};  // Σ micro-batch mean losses, Σ real tokens, micro-batches
    const float scale = 1.0f / static_cast<float>(o_.grad_accum);
    for (int lg = 0; lg < comm_->local_groups(); ++lg) {
      for (int a = 0; a < o_.grad_accum; ++a) {
        const Batch b = loaders_[std::size_t(lg)].next();
        const LossResult r = eng_->forward_backward(lg, b, scale);
        sums[0] += r.mean();
        for (int len : b.lengths) sums[1] += len;
        sums[2] += 1;
      }
    }
    comm_->all_reduce_sum(sums, 3);
    return {sums[0] / sums[2], sums[1]};
  }
  /// The optimizer step at lr(step); advances the step counter.
  /// With --on-nonfinite skip a step with a non-finite gradient is skipped on every worker (the
  /// data and the schedule move on; last_step_skipped() says so).
  double apply_step() {
    const double lr = sched_(step_);
    hdpissa::StepReport rep;
    try {
      rep = eng_->step(lr);
    } catch (const hdpissa::NumericError& e) {  // the library names its C++ policy; users have a flag
      std::string m = e.what();
      const auto at = m.find(" (set NonFinitePolicy::SkipStep");
      if (at != std::string::npos) m.erase(at, m.find(')', at) + 1 - at);
      throw LlamaError(cat(m, " (pass --on-nonfinite skip to skip such steps instead)"));
    }
    skipped_ = rep.skipped ? std::optional<std::string>(rep.reason) : std::nullopt;
    if (rep.skipped && o_.on_nonfinite != OnNonFinite::Skip)
      throw LlamaError(cat("step ", step_ + 1, " skipped: ", rep.reason));
    ++step_;
    return lr;
  }
  /// Why the last step was skipped (--on-nonfinite skip), if it was.
  const std::optional<std::string>& last_step_skipped() const { return skipped_; }

  /// Mean held-out loss over --eval-data's first --eval-examples examples (group 0's view).
  double eval_loss() {
    if (eval_batches_.empty()) throw LlamaError("eval_loss: no --eval-data given");
    return eng_->eval_loss(eval_batches_).mean();
  }
  /// Greedy continuation of `instruction` in the Alpaca template (group 0's view).
  std::string sample(const std::string& instruction, int max_new_tokens) {
    InstructionExample ex{instruction, "", ""};
    const auto prompt = tok_->encode(tpl_.prompt(ex), true);
    GenerateOptions g;
    g.max_new_tokens = std::max(1, std::min<int>(max_new_tokens, w_.config.max_seq_len - int(prompt.size())));
    g.stop_token = tok_->eos_id();
    if (int(prompt.size()) >= w_.config.max_seq_len) return {};
    return tok_->decode(eng_->generate(prompt, g));
  }
  /// The engine's greedy decoder as an eval::Generator (TrainEngine::generate_batch: batched on the
  /// GPU, one prompt at a time on the CPU; every worker calls it, as for sample()). The budget is
  /// capped so that prompt + completion fit max_seq_len.
  eval::Generator engine_generator() {
    return [this](const eval::GenerationRequest& req) {
      return eng_->generate_batch(req.prompts, req.max_new_tokens, req.stop_tokens, w_.config.max_seq_len);
    };
  }
  /// `task` on the first n problems of `file` (llama/eval/evaluators.hpp, the code hdpissa-eval
  /// --task runs); per-problem records under --eval-records (worker 0 only).
  eval::EvalSummary eval_task(eval::Task task, const std::string& file, int n) {
    const auto problems = eval::load_task(task, file, eval::PromptTemplates{tpl_});
    eval::EvalOptions eo;
    eo.max_new_tokens = o_.eval_max_new_tokens;
    eo.limit = n;
    // prompts per generate_batch: the GPU decoder refills its slots from them; the CPU decodes one
    // prompt at a time, so smaller batches only make the progress lines more frequent
    eo.batch_size = o_.device == Device::Cuda ? 256 : 8;
    if (root_ && !o_.quiet)  // problems done / total, tok/s, ETA after each batch
      eo.progress = [this, task](long done, long total, long toks, double secs) {
        say(eval::progress_line(task, done, total, toks, secs) + "\n");
      };
    std::optional<eval::TaskRecords> rec;  // worker 0's --eval-records (renamed into place at the end)
    if (root_ && !o_.eval_records.empty()) rec.emplace(task, o_.eval_records);
    const eval::EvalSummary s =
        eval::evaluate(task, problems, engine_generator(), *tok_, eo, rec ? &rec->stream() : nullptr);
    if (rec) {
      nlohmann::json j = s.to_json();
      j["data"] = file;
      j["protocol"] = eval::task_protocol(task, eo, eval::PromptTemplates{tpl_});
      rec->commit(j);
    }
    return s;
  }
  /// GSM8K accuracy on the first n problems of `file`; returns {correct, evaluated}.
  std::pair<long, long> eval_gsm8k(const std::string& file, int n) {
    const eval::EvalSummary s = eval_task(eval::Task::gsm8k, file, n);
    return {s.correct, s.n};
  }

  /// Writes the merged model (W for DWU / full; W_res + s·B A for LoRA / PiSSA) as an HF
  /// checkpoint, atomically. Worker 0 only.
  /// One target at a time: the engine's merged weight of each target is made as the writer reaches
  /// it (no merged copy of the model on the host); the other linears come from the host model.
  void save_merged(const std::filesystem::path& dir) {
    if (!root_) return;
    const auto targets = eng_->info().targets;
    std::vector<int> slot(std::size_t(w_.config.n_layers) * kModulesPerLayer, -1);
    for (std::size_t i = 0; i < targets.size(); ++i) slot[std::size_t(targets[i].index())] = int(i);
    save_hf_checkpoint(dir, w_, hf_save_options(), [&](LinearId id, Matrix& out) {
      const int i = slot[std::size_t(id.index())];
      if (i < 0) return false;
      eng_->merged_weight(std::size_t(i), out);
      return true;
    });
  }
  /// Writes the PEFT adapters (lora, pissa; a truncated LoRA of ΔW with --export-lora-rank/-energy)
  /// into o.adapter_dir() (llama/train/lora_export.hpp); returns the truncated export's report.
  nlohmann::json save_adapters() {
    if (!root_ || o_.adapter_dir().empty() || !(o_.uses_adapter() || o_.exports_truncated_lora())) return {};
    // A truncated export on an engine that truncates where W lives (the GPU) downloads no W.
    const bool where_w_lives = !o_.uses_adapter() && eng_->truncates_delta_where_w_lives();
    std::optional<TrainState> live;
    if (!where_w_lives) live = eng_->state();
    AdapterExportInputs in;
    in.o = &o_;
    in.targets = eng_->info().targets;
    in.state = live ? &*live : nullptr;
    in.initial = [this](LinearId id) -> const Matrix& { return initial_target(id); };
    in.pissa_init = pissa_init_ ? &*pissa_init_ : nullptr;
    in.frame = &w_;
    in.save = hf_save_options();
    in.log = log_;
    if (where_w_lives) {
      in.truncate = [this](std::size_t i, const Matrix& w0, int rank, double energy) {
        return eng_->truncated_delta_where_w_lives(i, w0, rank, energy);
      };
      in.truncation_device = eng_->info().device;
    }
    return write_adapter_outputs(in);
  }

  /// Writes the resumable state into `dir` (collective over workers): every file goes into
  /// `dir.tmp-<pid>-<nonce>`, worker 0 adds manifest.json (every worker's files, sizes, checksums)
  /// after a barrier, then moves the previous state to `dir.old-<pid>-<nonce>`, renames the new one
  /// into place and removes the old one. A crash at any point leaves a complete state that
  /// `--resume dir` finds (state_dir.hpp).
  void save_state(const std::filesystem::path& dir) { save_snapshot(dir, take_snapshot(positions())); }

  /// The whole run: echo, eval before, the steps (progress, metrics, periodic eval/state), eval
  /// after, sample, GSM8K, state, merged output.
  TrainSummary run() {
    const StopSignals signals;  // SIGINT / SIGTERM / SIGUSR1: finish the step, save, exit 128 + signal
    TrainSummary sum;
    sum.total_steps = total_;
    const EngineInfo info = eng_->info();
    say(cat("hdpissa-train: ", name_of(o_.method), " | ", info.description, "\n",
            o_.device == Device::Cpu ? std::string() : cat("  device ", info.device, ", dtype ", name_of(o_.dtype), "\n"),
            "  workers ", comm_->size(),
            " (", threads_, " thread(s) each), groups per worker ", o_.groups_per_process, ", K = ", comm_->groups(), ", targets ", o_.targets, " (",
            info.targets.size(), " linears), trainable ", info.trainable_parameters, " of ",
            w_.num_parameters(), " parameters; W ", info.w_bytes_per_param, " bytes per target parameter (w_bytes_per_param)\n", "  data ", data_->size(), " examples (", dropped_,
            " dropped: all labels masked), ", loaders_[0].shard_size(), " per group; ", total_,
            " steps (warmup ", sched_.warmup_steps, ", cosine), tokens per step ≈ K·grad_accum·micro_batch·len\n",
            "  config ", o_.to_json().dump(), "\n"));
    if (step_ > 0) say(cat("  resumed from ", resume_dir_.string(), " at step ", step_, " (run ", run_id_, ")\n"));
    if (!eval_batches_.empty()) {
      sum.eval_before = eval_loss();
      say(cat("eval loss (before, step ", step_, "): ", fixed(*sum.eval_before, 4), "\n"));
      metric({{"type", "eval"}, {"step", step_}, {"eval_loss", *sum.eval_before}, {"when", "before"}});
    }
    if (!o_.sample_prompt.empty()) say(cat("sample (before): ", sample(o_.sample_prompt, o_.sample_max_new_tokens), "\n"));

    const auto t0 = std::chrono::steady_clock::now();
    double tokens = 0;
    const long first = step_;
    double prof_wall = 0;  // --profile: the steps after this run's first
    long prof_steps = 0;
    while (step_ < total_ && !(o_.stop_after > 0 && step_ - first >= o_.stop_after)) {
      const auto ts = std::chrono::steady_clock::now();
      const std::vector<DataPosition> before = positions();
      const auto [loss, tok] = accumulate_gradients();
      signal_test_hook(step_ + 1, comm_->rank());
      guard_divergence(loss, before);  // throws (after keeping the last good state) when it trips
      const double lr = apply_step();
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      tokens += tok;
      if (o_.profile) {
        if (step_ == first + 1) eng_->reset_profile();
        else prof_wall += dt, ++prof_steps;
      }
      if (step_ == first + 1) sum.first_loss = loss;
      sum.last_loss = loss;
      const double eta = elapsed / double(step_ - first) * double(total_ - step_);
      if (!o_.quiet && (step_ % o_.log_every == 0 || step_ == total_)) {
        char line[256];
        std::snprintf(line, sizeof line, "step %ld/%ld | loss %.4f | lr %.3e | %.0f tok/s | ETA %s\n", step_, total_,
                      loss, lr, tok / dt, format_duration(eta).c_str());
        say(line);
      }
      nlohmann::json rec = {{"type", "step"}, {"step", step_}, {"total_steps", total_}, {"loss", loss}, {"lr", lr},
                            {"tokens", tok}, {"tokens_per_s", tok / dt}, {"step_s", dt}, {"elapsed_s", elapsed}};
      if (const auto peak = eng_->peak_device_bytes()) rec["peak_device_bytes"] = *peak;
      if (skipped_) {
        rec["skipped"] = true;
        rec["reason"] = *skipped_;
        say(cat("step ", step_, " skipped (--on-nonfinite skip): ", *skipped_, "\n"));
      }
      metric(rec);
      if (o_.eval_every > 0 && step_ % o_.eval_every == 0 && step_ < total_ && !eval_batches_.empty()) {
        const double e = eval_loss();
        say(cat("eval loss (step ", step_, "): ", fixed(e, 4), "\n"));
        metric({{"type", "eval"}, {"step", step_}, {"eval_loss", e}});
      }
      if (o_.save_every > 0 && step_ % o_.save_every == 0 && step_ < total_) {
        if (spike_start_) say(cat("step ", step_, ": periodic save skipped (the loss is spiking)\n"));
        else save_state(o_.save_state);
      }
      if ((sum.stop_signal = agree_on_stop()) != 0) break;  // every worker stops after the same step
    }
    sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    sum.steps_this_run = step_ - first;
    sum.steps_done = step_;
    sum.tokens_per_s = sum.seconds > 0 ? tokens / sum.seconds : 0;
    if (sum.stop_signal) return stop_on_signal(sum, tokens);
    if (comm_->size() > 1) eng_->verify_replicas();
    sum.peak_device_bytes = eng_->peak_device_bytes();
    say(cat("trained ", sum.steps_this_run, " steps in ", fixed(sum.seconds, 1), " s (", fixed(sum.tokens_per_s, 0),
            " tok/s", sum.peak_device_bytes ? cat(", peak device memory ", fixed(double(*sum.peak_device_bytes) / (1 << 20), 0), " MiB") : std::string(),
            ")", step_ < total_ ? cat("; stopped at step ", step_, " of ", total_) : std::string(), "\n"));
    {
      nlohmann::json rec = {{"type", "summary"}, {"step", step_}, {"steps_this_run", sum.steps_this_run},
                            {"tokens", tokens}, {"seconds", sum.seconds}, {"tokens_per_s", sum.tokens_per_s},
                            {"device", info.device}, {"dtype", name_of(o_.dtype)},
                            {"w_bytes_per_param", info.w_bytes_per_param}};
      if (sum.peak_device_bytes) rec["peak_device_bytes"] = *sum.peak_device_bytes;
      if (const auto parts = eng_->peak_memory_parts(); !parts.empty()) {
        nlohmann::json by = nlohmann::json::object(), tracked = nlohmann::json::object();
        std::string line = "device memory at the peak, MiB:";
        for (const auto& [name, bytes] : parts) {
          by[name] = bytes;
          line += cat(" ", name, " ", fixed(double(bytes) / (1 << 20), 0), ";");
        }
        for (const auto& [name, bytes] : eng_->tracked_peak_parts()) tracked[name] = bytes;
        rec["peak_memory_parts"] = by;
        rec["tracked_peak_parts"] = tracked;
        nlohmann::json allocs = nlohmann::json::object();
        for (const auto& [name, n] : eng_->memory_allocations()) allocs[name] = n;
        rec["memory_allocations"] = allocs;
        line.back() = '\n';
        if (!o_.quiet) say(line);
      }
      if (o_.profile) rec["profile"] = report_profile(prof_wall, prof_steps);
      metric(rec);
    }
    if (!eval_batches_.empty()) {
      sum.eval_after = eval_loss();
      say(cat("eval loss (after, step ", step_, "): ", fixed(*sum.eval_after, 4),
              sum.eval_before ? cat(" (before: ", fixed(*sum.eval_before, 4), ")") : std::string(), "\n"));
      metric({{"type", "eval"}, {"step", step_}, {"eval_loss", *sum.eval_after}, {"when", "after"}});
    }
    if (!o_.sample_prompt.empty()) {
      sum.sample_after = sample(o_.sample_prompt, o_.sample_max_new_tokens);
      say(cat("sample (after): ", sum.sample_after, "\n"));
    }
    if (!o_.eval_gsm8k.empty()) {
      const auto [c, n] = eval_gsm8k(o_.eval_gsm8k, o_.eval_gsm8k_n);
      sum.gsm8k_accuracy = n ? double(c) / double(n) : 0.0;
      say(cat("gsm8k accuracy: ", c, "/", n, " = ", fixed(100.0 * *sum.gsm8k_accuracy, 1), "%\n"));
      metric({{"type", "gsm8k"}, {"step", step_}, {"correct", c}, {"n", n}, {"accuracy", *sum.gsm8k_accuracy}});
    }
    for (const auto& [task, file] : {std::pair{eval::Task::math, o_.eval_math}, std::pair{eval::Task::humaneval, o_.eval_humaneval},
                                     std::pair{eval::Task::mbpp, o_.eval_mbpp}}) {
      if (file.empty()) continue;
      const eval::EvalSummary s = eval_task(task, file, o_.eval_gsm8k_n);
      say(cat(eval::task_name(task), " accuracy: ", s.correct, "/", s.n, " = ", fixed(100.0 * s.accuracy, 1), "%\n"));
      metric({{"type", eval::task_name(task)}, {"step", step_}, {"correct", s.correct}, {"n", s.n}, {"accuracy", s.accuracy}});
    }
    if (!o_.save_state.empty()) {
      if (last_saved_step_ != step_) save_state(o_.save_state);
      say(cat("state saved to ", o_.save_state, " (step ", step_, ")\n"));
    }
    if (!o_.output.empty()) {
      save_merged(o_.output);
      say(cat("merged model written to ", o_.output, " (", torch_dtype_name(hf_save_options().dtype), ")\n"));
    }
    save_adapters();
    release_locks();
    return sum;
  }

 private:
  /// What a save writes: the engine's state, this worker's data positions, the step, the guard's
  /// window (taken before a step's update when the divergence guard keeps a last good state).
  struct Snapshot {
    TrainState state;
    std::vector<DataPosition> positions;
    long step = 0;
    std::vector<double> recent_losses;
  };
  std::vector<DataPosition> positions() const {
    std::vector<DataPosition> p;
    for (const auto& l : loaders_) p.push_back(l.position());
    return p;
  }
  Snapshot take_snapshot(std::vector<DataPosition> pos) { return {eng_->state(), std::move(pos), step_, recent_losses_}; }

  void save_snapshot(const std::filesystem::path& dir, const Snapshot& snap) {
    namespace fs = std::filesystem;
    // fs::absolute("") throws: an explicit save_state(dir) without --save-state compares with nothing.
    const bool to_save_state = !o_.save_state.empty() && normal_path(dir) == normal_path(o_.save_state);
    if (root_ && !state_lock_.held() && to_save_state)
      state_lock_ = DirLock(dir, true, "--save-state");  // save_state() after run() released it
    const fs::path target = normal_path(dir);
    // A name unique to this save: worker 0's pid and a random nonce, shared with every worker.
    double id[2] = {0, 0};
    if (root_) {
      std::random_device rd;
      id[0] = double(::getpid());
      id[1] = double(rd() & 0xffffffu);
    }
    comm_->all_reduce_sum(id, 2);
    char suffix[48];
    std::snprintf(suffix, sizeof suffix, "-%ld-%06lx", long(id[0]), static_cast<unsigned long>(id[1]));
    const fs::path tmp = target.string() + ".tmp" + suffix;
    const fs::path old = target.string() + ".old" + suffix;
    if (root_) {
      fs::remove_all(tmp);
      std::error_code ec;
      fs::create_directories(tmp, ec);
      if (ec) throw LlamaError(cat("cannot create ", tmp.string(), ": ", ec.message()));
    }
    comm_->barrier();
    const int P = comm_->size();
    std::vector<double> digests(std::size_t(P) * 2 * 4, 0.0);  // per worker, per file: size hi/lo, hash hi/lo
    std::map<std::string, FileDigest> mine;
    try {
      mine = write_state_files(tmp, snap);
      const auto names = rank_files(comm_->rank());
      for (std::size_t f = 0; f < 2; ++f) {
        const FileDigest& d = mine.at(names[f]);
        const std::uint64_t h = std::stoull(d.xxh64, nullptr, 16);
        double* o = &digests[(std::size_t(comm_->rank()) * 2 + f) * 4];
        o[0] = double(d.size >> 32), o[1] = double(d.size & 0xffffffffu), o[2] = double(h >> 32), o[3] = double(h & 0xffffffffu);
      }
    } catch (...) {
      if (root_) fs::remove_all(tmp);  // never leave a half-written state behind
      throw;
    }
    comm_->all_reduce_sum(digests.data(), digests.size());  // also the barrier after every worker's files
    if (root_) {
      StateManifest m;
      m.stamp = {run_id_, snap.step};
      m.processes = P;
      for (const auto& n : shared_files()) m.files[n] = mine.at(n);
      for (int p = 0; p < P; ++p) {
        const auto names = rank_files(p);
        for (std::size_t f = 0; f < 2; ++f) {
          const double* o = &digests[(std::size_t(p) * 2 + f) * 4];
          const auto u = [](double hi, double lo) { return (std::uint64_t(hi) << 32) | std::uint64_t(lo); };
          m.files[names[f]] = {u(o[0], o[1]), hex64(u(o[2], o[3]))};
        }
      }
      write_manifest(tmp, m);
      fsync_path(tmp, true);
      save_stage_hook(1, snap.step);
      // the complete state replaces the previous one: DIR -> DIR.old-*, DIR.tmp-* -> DIR, rm DIR.old-*
      std::error_code ec;
      const bool had = fs::exists(target);
      if (had) fs::rename(target, old, ec);
      if (ec) throw LlamaError(cat("cannot move the old state ", target.string(), " aside: ", ec.message()));
      save_stage_hook(2, snap.step);
      fs::rename(tmp, target, ec);
      if (ec) throw LlamaError(cat("cannot rename ", tmp.string(), " to ", target.string(), ": ", ec.message()));
      fsync_path(target.parent_path(), true);
      save_stage_hook(3, snap.step);
      if (had) fs::remove_all(old);
    }
    comm_->barrier();
    if (to_save_state) last_saved_step_ = snap.step;
  }

  /// This worker's state files inside `tmp` (worker 0 also writes the shared ones, state.json last),
  /// each stamped with the run id and step. Returns their sizes and checksums.
  std::map<std::string, FileDigest> write_state_files(const std::filesystem::path& tmp, const Snapshot& snap) {
    const TrainState& s = snap.state;
    const StateStamp stamp{run_id_, snap.step};
    std::vector<TensorToWrite> shared, local;
    for (const auto& t : s.tensors) (t.local ? local : shared).push_back({t.name, {t.rows, t.cols}, t.data.data()});
    nlohmann::json rank_json, counters_shared = nlohmann::json::object(), counters_local = nlohmann::json::object();
    for (const auto& c : s.counters) (c.local ? counters_local : counters_shared)[c.name] = c.value;
    nlohmann::json positions = nlohmann::json::array();
    for (const auto& p : snap.positions) positions.push_back({p.epoch, p.index});
    rank_json["run_id"] = run_id_;
    rank_json["step"] = snap.step;
    rank_json["first_group"] = comm_->first_group();
    rank_json["positions"] = positions;
    rank_json["counters"] = counters_local;
    const auto names = rank_files(comm_->rank());
    write_safetensors(tmp / names[1], local, DType::F32, stamp_metadata(stamp));
    write_file_atomic(tmp / names[0], rank_json.dump(1) + "\n");
    std::vector<std::string> written = names;
    if (root_) {
      write_safetensors(tmp / "shared.safetensors", shared, DType::F32, stamp_metadata(stamp));
      nlohmann::json j;
      j["format"] = kStateFormat;
      j["run_id"] = run_id_;
      j["step"] = snap.step;
      j["config"] = trajectory();
      j["total_steps"] = total_;
      j["counters"] = counters_shared;
      j["recent_losses"] = snap.recent_losses;
      write_file_atomic(tmp / "state.json", j.dump(1) + "\n");
      written.push_back("shared.safetensors");
      written.push_back("state.json");
    }
    std::map<std::string, FileDigest> out;
    for (const auto& n : written) out[n] = {std::uint64_t(std::filesystem::file_size(tmp / n)), file_xxh64(tmp / n)};
    return out;
  }

  /// --max-loss and the loss-spike detector, before step_+1's update (`before`: the data positions
  /// at its start). On a trip: the last good state — the live one, or the one kept when the spike
  /// began — is saved to --save-state (unless already there) and a LlamaError says what happened.
  void guard_divergence(double loss, const std::vector<DataPosition>& before) {
    if (!std::isfinite(loss)) return;  // --on-nonfinite decides
    std::string why;
    if (o_.max_loss > 0 && loss > o_.max_loss)
      why = cat("loss ", fixed(loss, 4), " at step ", step_ + 1, " exceeds --max-loss ", o_.max_loss);
    if (why.empty() && o_.loss_spike_factor > 0 && recent_losses_.size() >= 3) {
      std::vector<double> w = recent_losses_;
      std::nth_element(w.begin(), w.begin() + std::ptrdiff_t(w.size() / 2), w.end());
      const double median = w[w.size() / 2];
      if (loss > o_.loss_spike_factor * median) {
        if (!spike_start_) spike_start_ = take_snapshot(before);  // the state before the first spiking step
        if (++spike_run_ >= o_.loss_spike_steps)
          why = cat("loss ", fixed(loss, 4), " at step ", step_ + 1, " is above ", o_.loss_spike_factor,
                    " x its running median ", fixed(median, 4), " for ", spike_run_, " consecutive step(s) "
                    "(--loss-spike-factor ", o_.loss_spike_factor, " --loss-spike-steps ", o_.loss_spike_steps, ")");
        else return;
      }
    }
    if (why.empty()) {
      spike_run_ = 0;
      spike_start_.reset();
      recent_losses_.push_back(loss);
      if (recent_losses_.size() > kLossWindow) recent_losses_.erase(recent_losses_.begin());
      return;
    }
    const Snapshot good = spike_start_ ? std::move(*spike_start_) : take_snapshot(before);
    spike_start_.reset();
    std::string kept = " (no --save-state: nothing saved)";
    if (!o_.save_state.empty()) {
      if (last_saved_step_ != good.step) save_snapshot(o_.save_state, good);
      kept = cat("; the last good state (step ", good.step, ", before the divergence) is in ", o_.save_state);
    }
    metric({{"type", "diverged"}, {"step", step_ + 1}, {"loss", loss}, {"reason", why}});
    release_locks();
    throw LlamaError(cat("divergence guard: ", why, kept));
  }

  /// --profile: prints the engine's GPU ms per section per step over `steps` steps of `wall` seconds
  /// (this run's steps after the first) with each share of the step's wall time, and the rest of the
  /// step (host work, waits, read-backs); returns it as JSON ({} when there is nothing to report).
  nlohmann::json report_profile(double wall, long steps) {
    const auto p = eng_->profile();
    if (p.empty() || steps < 1) {
      say("profile: needs at least 2 steps in this run (the first is dropped)\n");
      return {{"steps", steps}};
    }
    const double step_ms = 1e3 * wall / double(steps);
    nlohmann::ordered_json j;
    j["steps"] = steps;
    j["step_ms"] = step_ms;
    std::string table = cat("profile: GPU time per step (CUDA events), mean of ", steps,
                            " steps after the first; step wall time ", fixed(step_ms, 2), " ms\n");
    double in_sections = 0;
    for (const auto& [name, ms] : p) {
      const double per = ms / double(steps);
      in_sections += per;
      j["sections_ms"][name] = per;
      char line[160];
      std::snprintf(line, sizeof line, "  %-40s %10.3f ms  %5.1f %%\n", name.c_str(), per, 100.0 * per / step_ms);
      table += line;
    }
    char line[160];
    std::snprintf(line, sizeof line, "  %-40s %10.3f ms  %5.1f %%\n", "rest (host, waits, read-backs, gaps)",
                  step_ms - in_sections, 100.0 * (step_ms - in_sections) / step_ms);
    table += line;
    j["rest_ms"] = step_ms - in_sections;
    // the loss row in its parts (indented: already counted in the row above)
    for (const auto& [name, ms] : eng_->profile_loss_parts()) {
      const double per = ms / double(steps);
      j["loss_parts_ms"][name] = per;
      std::snprintf(line, sizeof line, "    %-38s %10.3f ms  (part of the loss row)\n", name.c_str(), per);
      table += line;
    }
    // the host's time between the same marks: where it exceeds a section's GPU time, the GPU waited
    std::string host;
    for (const auto& [name, ms] : eng_->profile_host()) {
      const double per = ms / double(steps);
      j["host_ms"][name] = per;
      host += cat(host.empty() ? "" : "; ", name, " ", fixed(per, 2));
    }
    if (!host.empty()) table += "  host time between the same marks, ms per step: " + host + "\n";
    say(table);
    return nlohmann::json::parse(j.dump());
  }

  /// Whether any worker received a stop signal, agreed by all (the first such signal; 0: none).
  int agree_on_stop() {
    const int mine = stop_signal_received();
    double v[2] = {mine ? 1.0 : 0.0, double(mine)};
    comm_->all_reduce_sum(v, 2);
    if (v[0] == 0) return 0;
    const int sig = int(v[1] / v[0] + 0.5);
    return double(sig) * v[0] == v[1] ? sig : SIGTERM;
  }

  /// The end of a run stopped by a signal: save (if --save-state), flush the metrics, say so.
  TrainSummary& stop_on_signal(TrainSummary& sum, double tokens) {
    if (!o_.save_state.empty() && last_saved_step_ != step_) save_state(o_.save_state);
    metric({{"type", "summary"}, {"step", step_}, {"steps_this_run", sum.steps_this_run}, {"tokens", tokens},
            {"seconds", sum.seconds}, {"tokens_per_s", sum.tokens_per_s}, {"stopped_by", signal_name(sum.stop_signal)}});
    metrics_.close();
    say(cat("hdpissa-train: received ", signal_name(sum.stop_signal), ": stopped after step ", step_, " of ", total_,
            o_.save_state.empty() ? std::string("; no --save-state, so the progress is not saved")
                                  : cat("; state saved to ", o_.save_state, " (continue with --resume ", o_.save_state, ")"),
            "; exit code ", 128 + sum.stop_signal, "\n"));
    release_locks();
    return sum;
  }

  void release_locks() {
    state_lock_.release();
    resume_lock_.release();
    output_lock_.release();
  }

  /// Worker 0's 32-hex-digit `id` on every worker (through the host communicator, 16 bits a double).
  std::string share_hex_id(const std::string& id) {
    double v[8] = {};
    if (root_)
      for (int i = 0; i < 8; ++i) v[i] = double(std::stoul(id.substr(std::size_t(4 * i), 4), nullptr, 16));
    comm_->all_reduce_sum(v, 8);
    std::string out;
    char buf[5];
    for (double x : v) {
      std::snprintf(buf, sizeof buf, "%04x", unsigned(x));
      out += buf;
    }
    return out;
  }

  /// A resumed run's metrics log keeps only the records up to the resumed step (and drops a
  /// cut-off last line), so that no step appears twice.
  void truncate_metrics(const std::filesystem::path& p) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(p, ec)) return;
    std::istringstream in(read_file_text(p));
    std::string line, kept;
    long dropped = 0;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      bool keep = false;
      try {
        const auto j = nlohmann::json::parse(line);
        keep = !j.contains("step") || !j["step"].is_number() || j["step"].get<long>() <= step_;
      } catch (const nlohmann::json::exception&) {
      }
      if (keep) kept += line + "\n";
      else ++dropped;
    }
    if (dropped == 0) return;
    write_file_atomic(p, kept);
    say(cat("--metrics ", p.string(), ": removed ", dropped, " record(s) after the resumed step ", step_, "\n"));
  }

  /// How HF outputs are saved: --output-dtype (auto: the input's), --max-shard-size, the input's
  /// config.json kept (unless --allow-unused dropped tensors), the tokenizer's files copied.
  SaveOptions hf_save_options() const {
    namespace fs = std::filesystem;
    SaveOptions so;
    switch (o_.output_dtype) {
      case OutputDtype::Auto: so.dtype = checkpoint_dtype(o_.model); break;
      case OutputDtype::F32: so.dtype = DType::F32; break;
      case OutputDtype::Bf16: so.dtype = DType::BF16; break;
      case OutputDtype::F16: so.dtype = DType::F16; break;
    }
    so.max_shard_bytes = o_.max_shard_bytes;
    if (!o_.allow_unused && fs::is_directory(o_.model)) so.source_config_dir = o_.model;
    so.tokenizer_files = tok_->files();  // tokenizer.model / tokenizer.json (+ tokenizer_config.json)
    const fs::path tdir = fs::is_directory(o_.tokenizer) ? fs::path(o_.tokenizer) : fs::path(o_.tokenizer).parent_path();
    for (const char* f : {"tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"}) {
      bool listed = false;
      for (const auto& [src, name] : so.tokenizer_files) listed = listed || name == f;
      if (!listed && fs::exists(tdir / f)) so.tokenizer_files.emplace_back(tdir / f, f);
    }
    return so;
  }
  /// W_init of a target: the copy kept at setup (CPU path), else the host model (the GPU path's
  /// base; a stored linear is converted into a one-entry cache, valid until the next other id).
  const Matrix& initial_target(LinearId id) const {
    if (initial_targets_.empty()) {
      if (!w_.is_stored(id)) return w_.linear(id);
      if (!(initial_cached_ == id)) {
        initial_cached_ = LinearId{-1, Module::q};
        linear_value(w_, id, initial_cache_);
        initial_cached_ = id;
      }
      return initial_cache_;
    }
    for (std::size_t i = 0; i < initial_ids_.size(); ++i)
      if (initial_ids_[i] == id) return initial_targets_[i];
    throw LlamaError(cat("adapter export: no initial weight kept for ", id.hf_name()));
  }

  static std::string fixed(double v, int digits) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.*f", digits, v);
    return buf;
  }
  void say(const std::string& s) {
    if (root_) *log_ << s << std::flush;
  }
  /// The adapter initialisation's progress line (target layers done / total, elapsed), at most one
  /// every 2 s and the last; nothing under --quiet or when resuming (no initialisation runs).
  std::function<void(std::size_t, std::size_t)> init_progress() {
    if (o_.quiet || !root_) return {};
    const auto t0 = std::chrono::steady_clock::now();
    auto last = std::make_shared<double>(-1e9);
    return [this, t0, last](std::size_t done, std::size_t total) {
      const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (done < total && t - *last < 2.0) return;
      *last = t;
      say(cat("adapter init: ", done, "/", total, " target layers, ", fixed(t, 1), " s\n"));
    };
  }
  void metric(const nlohmann::json& j) {
    if (root_ && metrics_.is_open()) metrics_.write(j.dump());
  }

  nlohmann::json trajectory() const {
    nlohmann::json j = trajectory_config(o_, comm_->size());
    j["model_fingerprint"] = model_fp_;
    j["data_fingerprint"] = data_fp_;
    return j;
  }

  void setup() {
    namespace fs = std::filesystem;
    // ---- up-front checks and locks, before anything expensive (preflight.hpp, state_dir.hpp)
    (void)check_run_paths(o_, comm_->size());
    if (o_.device == Device::Cuda)  // no GPU (or no CUDA in this build): say so now, not after loading
      if (const std::string why = cuda_unavailable_reason(); !why.empty()) throw LlamaError(why);
    // The inputs' contents, before the first long phase (the checkpoint load, the SVDs): the
    // tokenizer and every evaluation set are read now, so a malformed --eval-gsm8k fails in a second,
    // not after the model loaded (or, as once, after training).
    if (o_.tokenizer.empty())
      throw LlamaError(cat("missing --tokenizer: ", o_.model, " is not a directory holding a tokenizer"));
    tok_ = std::make_unique<Tokenizer>(o_.tokenizer);
    for (const auto& [task, file] : {std::pair{eval::Task::gsm8k, o_.eval_gsm8k}, std::pair{eval::Task::math, o_.eval_math},
                                     std::pair{eval::Task::humaneval, o_.eval_humaneval}, std::pair{eval::Task::mbpp, o_.eval_mbpp}})
      if (!file.empty()) (void)eval::load_task(task, file);
    const auto same = [](const std::string& a, const std::string& b) {
      return !a.empty() && !b.empty() && normal_path(a) == normal_path(b);
    };
    if (root_) {  // worker 0 holds the locks for the job
      if (!o_.save_state.empty()) state_lock_ = DirLock(o_.save_state, true, "--save-state");
      if (!o_.resume.empty() && !same(o_.resume, o_.save_state)) resume_lock_ = DirLock(o_.resume, false, "--resume");
      if (!o_.output.empty()) {
        output_lock_ = DirLock(o_.output, true, "--output");
        recover_output_dir(o_.output, [this](const std::string& m) { say(m); });
      }
    }
    std::optional<StateChoice> choice;
    if (!o_.resume.empty()) {
      // worker 0 verifies every candidate and picks one; the others verify their own files of it
      double pick = 0;
      std::string err;
      if (root_) {
        try {
          choice = find_newest_state(o_.resume);
          const auto cands = state_candidates(o_.resume);
          pick = double(std::find(cands.begin(), cands.end(), choice->dir) - cands.begin());
        } catch (const std::exception& e) {
          err = e.what();
          pick = -1;
        }
      }
      comm_->all_reduce_sum(&pick, 1);
      if (pick < 0) throw LlamaError(root_ ? err : cat("--resume ", o_.resume, ": worker 0 found no complete state"));
      if (root_) {
        resume_dir_ = choice->dir;
        const fs::path target = normal_path(o_.resume);
        if (resume_dir_ != target)
          say(cat("--resume ", o_.resume, ": taking ", resume_dir_.filename().string(), " (step ", choice->manifest.stamp.step,
                  "), the newest complete state (a save was interrupted)\n"));
        for (const auto& n : choice->notes) say(cat("  ", n, "\n"));
      } else {
        resume_dir_ = state_candidates(o_.resume).at(std::size_t(pick));
        auto files = shared_files();
        for (auto& f : rank_files(comm_->rank())) files.push_back(std::move(f));
        (void)verify_state(resume_dir_, files);
      }
      run_id_ = read_manifest(resume_dir_).stamp.run_id;
    } else {
      run_id_ = share_hex_id(root_ ? new_run_id() : std::string());
      if (root_ && !o_.save_state.empty())  // leftovers of crashed saves of an earlier run into this directory
        for (const auto& d : state_candidates(o_.save_state))
          if (d != normal_path(o_.save_state)) {
            say(cat("--save-state: removing ", d.filename().string(), ", left by an interrupted save (this is a fresh run)\n"));
            std::error_code ec;
            fs::remove_all(d, ec);
          }
    }
    // ---- model and tokenizer
    // --data and --eval-data, still before the load (session 36: they were read after the checkpoint
    // load, --eval-data after the SVDs) but after the locks and the resume checks, with a progress
    // line: a large data set takes seconds to tokenize
    DataLoadReport data_rep;
    std::shared_ptr<std::vector<TokenizedExample>> tokenized, held_out;
    {
      const auto t0 = std::chrono::steady_clock::now();
      if (!o_.quiet) say(cat("tokenizing ", o_.data, "\n"));
      tokenized = std::make_shared<std::vector<TokenizedExample>>(
          load_tokenized_data(o_.data, o_.data_format, *tok_, tpl_, o_.max_len, o_.max_examples, &data_rep));
      if (!o_.eval_data.empty())
        held_out = std::make_shared<std::vector<TokenizedExample>>(
            load_tokenized_data(o_.eval_data, o_.data_format, *tok_, tpl_, o_.max_len, o_.eval_examples));
      if (!o_.quiet)
        say(cat("tokenized ", data_rep.records, " records of ", o_.data, " in ",
                fixed(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 1), " s\n"));
    }
    LoadOptions load_opt;
    load_opt.allow_unused = o_.allow_unused;
    // The GPU engine uploads the target linears from the mapped checkpoint (no host fp32 copy).
    load_opt.keep_linears_stored = o_.device == Device::Cuda;
    if (!root_) load_opt.warn = [](const std::string&) {};  // rank 0 prints the warnings
    {
      const auto t0 = std::chrono::steady_clock::now();
      if (!o_.quiet) say(cat("loading ", o_.model, " (", fixed(double(checkpoint_bytes(o_.model)) / 1e9, 2), " GB)\n"));
      w_ = load_checkpoint(o_.model, load_opt);
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!o_.quiet)
        say(w_.holds_linears()
                ? cat("loaded ", w_.config.n_layers, " layers in ", fixed(secs, 1), " s (",
                      fixed(double(checkpoint_bytes(o_.model)) / 1e9 / std::max(secs, 1e-9), 2), " GB/s)\n")
                : cat("loaded ", w_.config.n_layers, " layers in ", fixed(secs, 1), " s (embedding, norms, lm_head; the ",
                      w_.config.n_layers * kModulesPerLayer, " target linears stay mapped: ", w_.stored_linears->describe(),
                      ", uploaded by the engine)\n"));
    }
    if (tok_->vocab_size() > w_.config.vocab_size)
      throw LlamaError(cat(o_.tokenizer, ": the tokenizer has ", tok_->vocab_size(), " pieces but the model's vocab_size is ",
                           w_.config.vocab_size));
    {  // the frozen parameters identify the base model
      std::uint64_t h = fnv1a(w_.embed.data(), std::size_t(w_.embed.size()) * 4);
      for (const auto& l : w_.layers) {
        h = fnv1a(l.attn_norm.data(), std::size_t(l.attn_norm.size()) * 4, h);
        h = fnv1a(l.ffn_norm.data(), std::size_t(l.ffn_norm.size()) * 4, h);
      }
      model_fp_ = hex64(fnv1a(w_.final_norm.data(), std::size_t(w_.final_norm.size()) * 4, h));
    }
    // Threads: --threads, else OMP_NUM_THREADS, else one thread for narrow models (dim < 512),
    // whose 64..256-wide GEMMs lose more to OpenMP synchronisation than they gain (measured on
    // stories260K: 4190 tok/s with 1 thread vs 465 with 2 on a busy 2-core machine, docs/trainer.md).
    threads_ = configure_threads(o_.threads, w_.config.dim < 512);
    if (o_.max_len > w_.config.max_seq_len)
      throw LlamaError(cat("--max-len ", o_.max_len, " exceeds the model's max_position_embeddings ", w_.config.max_seq_len));
    // sliding window / q-k-v biases: the CPU model implements them; the GPU model rejects them by name
    if (!o_.output.empty() && fs::exists(o_.output) && !fs::is_directory(o_.output))
      throw LlamaError(cat("--output ", o_.output, " exists and is not a directory"));

    // ---- data, one shard per group (tokenized before the load, above)
    dropped_ = data_rep.dropped;
    if (tokenized->empty())
      throw LlamaError(cat(o_.data, ": no usable training examples (", data_rep.records, " read, ", dropped_,
                           " dropped because every label was masked at --max-len ", o_.max_len, ")"));
    if (tokenized->size() < std::size_t(comm_->groups()))
      throw LlamaError(cat(o_.data, ": ", tokenized->size(), " usable examples cannot feed K = ", comm_->groups(),
                           " groups (", dropped_, " dropped because every label was masked at --max-len ", o_.max_len, ")"));
    // most of the data gone at --max-len is rarely what was meant: say so (quiet or not)
    if (dropped_ > 0 && 2 * dropped_ > data_rep.records)
      say(cat("warning: ", dropped_, " of ", data_rep.records, " examples dropped: every label lies beyond --max-len ",
              o_.max_len, " (a larger --max-len keeps them)\n"));
    {
      std::uint64_t h = 1469598103934665603ull;
      for (const auto& t : *tokenized) {
        h = fnv1a(t.input_ids.data(), t.input_ids.size() * 4, h);
        h = fnv1a(t.labels.data(), t.labels.size() * 4, h);
      }
      data_fp_ = hex64(h);
    }
    data_ = tokenized;
    for (int lg = 0; lg < comm_->local_groups(); ++lg) {
      LoaderOptions lo;
      lo.micro_batch = o_.micro_batch;
      lo.seed = o_.seed;
      lo.pad_multiple = o_.pad_to_multiple;
      lo.max_len = o_.max_len;
      lo.num_shards = comm_->groups();
      lo.shard_index = comm_->first_group() + lg;
      loaders_.emplace_back(data_, lo);
    }
    const long per_epoch = std::max<long>(1, long(loaders_[0].batches_per_epoch()) / o_.grad_accum);
    total_ = o_.max_steps > 0 ? o_.max_steps : per_epoch * o_.epochs;
    sched_ = hdpissa::WarmupCosineSchedule{o_.lr, hdpissa::warmup_steps_from_ratio(o_.warmup_ratio, total_), total_, 0.0};

    // ---- resume: check compatibility before any expensive initialisation
    std::optional<TrainState> saved;
    nlohmann::json state, rank_state;
    if (!o_.resume.empty()) {
      const fs::path dir = resume_dir_;
      state = parse_json(dir / "state.json");
      if (state.value("format", std::string()) != kStateFormat)
        throw LlamaError(cat(dir.string(), "/state.json: expected format ", kStateFormat, ", found ",
                             state.contains("format") ? state["format"].dump() : std::string("none")));
      const nlohmann::json now = trajectory(), saved_config = state.at("config");
      // the fields a user sets first (a changed --rank is named, not the alpha that follows it), then
      // the rest in key order
      std::vector<nlohmann::json::const_iterator> fields;
      for (const char* k : {"method", "rank"})
        if (const auto f = now.find(k); f != now.end()) fields.push_back(f);
      for (auto it = now.cbegin(); it != now.cend(); ++it)
        if (it.key() != "method" && it.key() != "rank") fields.push_back(it);
      for (const auto& it : fields) {
        auto s = saved_config.find(it.key());
        // states written before the targets were recorded canonically (session 36) may spell them
        // otherwise: the same set is the same config
        if (s != saved_config.end() && it.key() == "targets" && s->is_string()) {
          try {
            if (nlohmann::json(canonical_targets(s->get<std::string>())) == it.value()) continue;
          } catch (const LlamaError&) {  // not a list this build reads: reported as it is
          }
        }
        // states written before w_precision was recorded were fp32-master runs
        if (s == saved_config.end() && it.key() == "w_precision" && it.value() == "fp32-master") continue;
        // ... and before pad_to_multiple was recorded, unpadded (1)
        if (s == saved_config.end() && it.key() == "pad_to_multiple" && it.value() == 1) continue;
        // the SR stream matters only between two bf16-sr runs: a state of another policy is refused
        // by the w_precision check, with its hint (the keys are sorted: sr_stream comes first)
        if (it.key() == "sr_stream" && saved_config.value("w_precision", std::string("fp32-master")) !=
                                           now.value("w_precision", std::string()))
          continue;
        if (s == saved_config.end() || *s != it.value()) {
          // the W policy's default depends on device and dtype: say how to keep the saved one
          const std::string hint =
              it.key() == "sr_stream"
                  ? std::string(" (the bf16-sr rounding stream changed in session 23: a state saved with stream 1 "
                                "continues only under the build that wrote it; start a new run here)")
              : it.key() != "w_precision" ? std::string()
              : s == saved_config.end() ? std::string(" (a state without it was trained with fp32-master: pass "
                                                      "--w-precision fp32-master to continue it)")
                                        : cat(" (pass --w-precision ", s->get<std::string>(), " to continue it)");
          throw LlamaError(cat("cannot resume from ", dir.string(), ": incompatible config: field '", it.key(),
                               "' is ", s == saved_config.end() ? std::string("missing") : s->dump(),
                               " in the state but ", it.value().dump(), " in this run", hint));
        }
      }
      rank_state = parse_json(dir / cat("rank-", comm_->rank(), ".json"));
      saved = read_state(dir, rank_state, state);
      if (state.contains("recent_losses")) recent_losses_ = state["recent_losses"].get<std::vector<double>>();
      comm_->barrier();  // every worker has read its files
      if (root_ && choice && same(o_.resume, o_.save_state)) {
        // this run owns S: S becomes the state resumed from, the other candidates go
        const fs::path target = normal_path(o_.resume);
        std::error_code ec;
        for (const auto& d : choice->stale) {
          say(cat("--resume: removing ", d.filename().string(), " (older than ", resume_dir_.filename().string(),
                  ", or incomplete)\n"));
          fs::remove_all(d, ec);
        }
        if (resume_dir_ != target) {
          fs::rename(resume_dir_, target, ec);
          if (ec) throw LlamaError(cat("cannot rename ", resume_dir_.string(), " to ", target.string(), ": ", ec.message()));
          fsync_path(target.parent_path(), true);
          resume_dir_ = target;
        }
      }
      last_saved_step_ = same(o_.resume, o_.save_state) ? state.at("step").get<long>() : -1;
      resume_lock_.release();
    }
    const TrainState* resume = saved ? &*saved : nullptr;
    // ---- adapter exports: W_init of the targets (the CPU path trains the host model in place)
    const bool adapters = root_ && !o_.adapter_dir().empty() && (o_.exports_truncated_lora() || o_.method == Method::Pissa);
    if (adapters && o_.device == Device::Cpu)
      for (const Module m : o_.target_modules())
        for (int l = 0; l < w_.config.n_layers; ++l) {
          initial_ids_.push_back({l, m});
          initial_targets_.push_back(w_.linear({l, m}));
        }
    const auto t_engine = std::chrono::steady_clock::now();
    if (!o_.quiet && o_.device == Device::Cuda) {  // the upload is silent: say what it moves
      std::int64_t bytes = 0;
      int stored = 0;
      for (int l = 0; l < w_.config.n_layers; ++l)
        for (int m = 0; m < kModulesPerLayer; ++m) {
          const LinearId id{l, static_cast<Module>(m)};
          if (const auto st = stored_linear(w_, id)) {
            bytes += st->numel() * std::int64_t(dtype_size(st->dtype));
            ++stored;
          } else {
            bytes += std::int64_t(w_.linear(id).size()) * 4;
          }
        }
      say(cat("engine: uploading ", w_.config.n_layers * kModulesPerLayer, " target linears (", fixed(double(bytes) / 1e9, 2),
              " GB ", stored ? "from the mapped checkpoint" : "of host fp32", ") to the GPU",
              resume ? "" : ", then the adapter initialisation", "\n"));
    }
    switch (o_.device) {
      case Device::Cpu: eng_ = std::make_unique<CpuEngine<Comm>>(o_, w_, *comm_, resume, init_progress()); break;
      case Device::Cuda:
        if (comm_->size() > 1 && !device_comm_.make)
          throw LlamaError(cat("--device cuda: found ", comm_->size(), " processes but ",
                               device_comm_.unavailable.empty()
                                   ? std::string("no device communicator between them (NCCL) was provided")
                                   : device_comm_.unavailable,
                               "; run one process with --groups-per-process K, or use --device cpu"));
        eng_ = make_cuda_engine(o_, w_, EngineGroups{comm_->groups(), comm_->local_groups(), comm_->first_group(),
                                                     comm_->size(), comm_->rank(), device_comm_, init_progress()},
                               resume);
        break;
    }
    if (!o_.quiet)
      say(cat("engine ready in ", fixed(std::chrono::duration<double>(std::chrono::steady_clock::now() - t_engine).count(), 1),
              " s (", eng_->info().device,
              resume ? ": factors from the saved state"
                     : o_.device == Device::Cuda ? ": model upload + adapter initialisation" : ": adapter initialisation",
              ")\n"));

    if (saved) {
      eng_->load_state(*saved, resume_dir_.string());
      const auto& pos = rank_state.at("positions");
      if (pos.size() != loaders_.size() || rank_state.at("first_group").get<int>() != comm_->first_group())
        throw LlamaError(cat(resume_dir_.string(), ": the state holds ", pos.size(), " data positions from group ",
                             rank_state.at("first_group").dump(), ", this worker runs ", loaders_.size(),
                             " from group ", comm_->first_group()));
      for (std::size_t i = 0; i < loaders_.size(); ++i)
        loaders_[i].seek({pos[i][0].get<std::int64_t>(), pos[i][1].get<std::int64_t>()});
      step_ = state.at("step").get<long>();
    } else if (adapters && o_.method == Method::Pissa) {  // PiSSA's A0, B0 for the converted adapter
      pissa_init_.emplace();
      TrainState now = eng_->state();
      for (auto& t : now.tensors)
        if (t.name.starts_with("adapter.")) pissa_init_->tensors.push_back(std::move(t));
    }

    // ---- evaluation data (file order, micro-batches of --micro-batch)
    if (held_out) {
      const auto& tev = held_out;
      if (tev->empty()) throw LlamaError(cat(o_.eval_data, ": no usable held-out examples"));
      LoaderOptions lo;
      lo.micro_batch = o_.micro_batch;
      lo.shuffle = false;
      lo.pad_multiple = o_.pad_to_multiple;
      lo.max_len = o_.max_len;
      DataLoader dl(tev, lo);
      for (std::int64_t i = 0; i < dl.batches_per_epoch(); ++i) eval_batches_.push_back(dl.next());
    }
    // ---- the metrics log, opened last so that a failed setup leaves no file behind (a resumed run
    // drops the records after its step, then appends; every line is a complete JSON object, flushed
    // as written; a failed write is an error)
    if (!o_.metrics.empty() && root_) {
      const fs::path mp = fs::absolute(o_.metrics);
      std::error_code ec;
      fs::create_directories(mp.parent_path(), ec);
      if (!o_.resume.empty()) truncate_metrics(mp);
      metrics_.open(mp, !o_.resume.empty());
    }
  }

  /// A saved state as a value: every tensor of shared.safetensors (shared) and of this worker's
  /// rank-<p>.safetensors (local), the counters of state.json (shared) and rank-<p>.json (local).
  TrainState read_state(const std::filesystem::path& dir, const nlohmann::json& rank_state,
                        const nlohmann::json& state) const {
    TrainState s;
    auto read_all = [&](const std::filesystem::path& file, bool local) {
      const SafetensorsFile f(file);
      for (const auto& [name, info] : f.tensors()) {
        if (info.shape.size() != 2)
          throw LlamaError(cat(file.string(), ": tensor '", name, "': expected 2 dimensions, found ", info.shape.size()));
        StateTensor t{name, info.shape[0], info.shape[1], std::vector<float>(std::size_t(info.numel())), local};
        f.read_into(name, t.data.data());
        s.tensors.push_back(std::move(t));
      }
    };
    read_all(dir / "shared.safetensors", false);
    read_all(dir / cat("rank-", comm_->rank(), ".safetensors"), true);
    auto counters = [&](const nlohmann::json& j, bool local) {
      if (!j.contains("counters")) return;
      for (auto it = j.at("counters").begin(); it != j.at("counters").end(); ++it)
        s.counters.push_back({it.key(), it.value().get<long>(), local});
    };
    counters(state, false);
    counters(rank_state, true);
    return s;
  }

  static nlohmann::json parse_json(const std::filesystem::path& p) {
    try {
      return nlohmann::json::parse(read_file_text(p));
    } catch (const nlohmann::json::exception& e) {
      throw LlamaError(cat(p.string(), ": corrupt JSON (", e.what(), ")"));
    }
  }

  TrainOptions o_;
  Comm* comm_;
  std::ostream* log_;
  bool root_;
  ModelWeights w_;
  std::unique_ptr<Tokenizer> tok_;
  PromptTemplate tpl_;
  std::shared_ptr<const std::vector<TokenizedExample>> data_;
  std::int64_t dropped_ = 0;
  std::vector<DataLoader> loaders_;
  std::vector<Batch> eval_batches_;
  std::unique_ptr<TrainEngine> eng_;
  long step_ = 0, total_ = 0;
  hdpissa::WarmupCosineSchedule sched_;
  std::string model_fp_, data_fp_;
  MetricsFile metrics_;
  // ---- issue 18: identity, locks, guard
  static constexpr std::size_t kLossWindow = 100;  ///< the spike detector's running-median window
  std::string run_id_;
  std::filesystem::path resume_dir_;  ///< the state actually resumed from (S, or S.tmp-* / S.old-*)
  DirLock state_lock_, resume_lock_, output_lock_;
  long last_saved_step_ = -1;
  std::vector<double> recent_losses_;
  int spike_run_ = 0;
  std::optional<Snapshot> spike_start_;
  std::optional<std::string> skipped_;
  int threads_ = 1;
  DeviceCommSetup device_comm_;
  std::vector<LinearId> initial_ids_;     // targets whose W_init is kept (adapter exports, CPU path)
  std::vector<Matrix> initial_targets_;
  mutable Matrix initial_cache_;                         // initial_target()'s stored linear
  mutable LinearId initial_cached_{-1, Module::q};
  std::optional<TrainState> pissa_init_;  // PiSSA's initial factors (fresh runs with an adapter output)
};

}  // namespace hdpissa::llama
