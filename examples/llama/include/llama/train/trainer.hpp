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
/// Saved state (a directory): state.json (format, trajectory config, fingerprints of the base
/// model and the tokenized data, step, shared counters), shared.safetensors (the target W, the
/// factors / adapters, data-parallel Adam moments), rank-<p>.safetensors + rank-<p>.json (worker
/// p's per-group Adam moments and step counts, its groups' data positions). Resuming restores all of
/// it, so the continued run is bit-identical to an uninterrupted one (same machine and thread count:
/// Eigen's GEMM blocking depends on the number of threads).

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
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
#include "llama/train/gsm8k.hpp"
#include "llama/train/lora_export.hpp"
#include "llama/train/methods.hpp"
#include "llama/train/options.hpp"

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
  /// The host model: trained in place on the CPU path; the base weights on the GPU path (the live
  /// weights are on the device: engine().merge_into()).
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
  double apply_step() {
    const double lr = sched_(step_);
    const auto rep = eng_->step(lr);
    if (rep.skipped) throw LlamaError(cat("step ", step_ + 1, " skipped: ", rep.reason));
    ++step_;
    return lr;
  }

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
  /// GSM8K-style accuracy on the first n problems of `file`; returns {correct, evaluated}.
  std::pair<long, long> eval_gsm8k(const std::string& file, int n) {
    const auto problems = load_instruction_data(file);
    long correct = 0, total = 0;
    for (const auto& p : problems) {
      if (total >= n) break;
      const auto gold = extract_answer(p.response);
      if (!gold)
        throw LlamaError(cat(file, ": problem ", total + 1, ": expected a reference answer after \"The answer is: \" or "
                                   "\"#### \", found none in '", p.response.substr(0, 80), "'"));
      const std::string text = sample(p.instruction, o_.eval_max_new_tokens);
      const auto pred = extract_answer(text);
      correct += pred && answers_match(*pred, *gold);
      ++total;
    }
    return {correct, total};
  }

  /// Writes the merged model (W for DWU / full; W_res + s·B A for LoRA / PiSSA) as an HF
  /// checkpoint, atomically. Worker 0 only.
  void save_merged(const std::filesystem::path& dir) {
    if (!root_) return;
    ModelWeights merged = w_;
    eng_->merge_into(merged);
    save_hf_checkpoint(dir, merged, hf_save_options());
  }
  /// Writes the PEFT adapters (lora, pissa; a truncated LoRA of ΔW with --export-lora-rank/-energy)
  /// into o.adapter_dir() (llama/train/lora_export.hpp); returns the truncated export's report.
  nlohmann::json save_adapters() {
    if (!root_ || o_.adapter_dir().empty() || !(o_.uses_adapter() || o_.exports_truncated_lora())) return {};
    const TrainState live = eng_->state();
    AdapterExportInputs in{&o_, eng_->info().targets, &live, [this](LinearId id) -> const Matrix& { return initial_target(id); },
                           pissa_init_ ? &*pissa_init_ : nullptr, &w_, hf_save_options(), log_};
    return write_adapter_outputs(in);
  }

  /// Writes the resumable state into `dir` (temp dir + rename; collective over workers).
  void save_state(const std::filesystem::path& dir) {
    namespace fs = std::filesystem;
    const fs::path target = fs::absolute(dir).lexically_normal();
    const fs::path tmp = target.string() + ".tmp";
    const fs::path old = target.string() + ".old";
    if (root_) {
      fs::remove_all(tmp);
      std::error_code ec;
      fs::create_directories(tmp, ec);
      if (ec) throw LlamaError(cat("cannot create ", tmp.string(), ": ", ec.message()));
    }
    comm_->barrier();
    try {
      write_state_files(tmp);
    } catch (...) {
      if (root_) fs::remove_all(tmp);  // never leave a half-written state behind
      throw;
    }
    comm_->barrier();
    if (root_) {  // the complete state replaces the previous one in one rename
      std::error_code ec;
      fs::remove_all(old);
      const bool had = fs::exists(target);
      if (had) fs::rename(target, old, ec);
      if (ec) throw LlamaError(cat("cannot move the old state ", target.string(), " aside: ", ec.message()));
      fs::rename(tmp, target, ec);
      if (ec) throw LlamaError(cat("cannot rename ", tmp.string(), " to ", target.string(), ": ", ec.message()));
      fsync_path(target.parent_path(), true);
      if (had) fs::remove_all(old);
    }
    comm_->barrier();
  }

  /// The whole run: echo, eval before, the steps (progress, metrics, periodic eval/state), eval
  /// after, sample, GSM8K, state, merged output.
  TrainSummary run() {
    TrainSummary sum;
    sum.total_steps = total_;
    const EngineInfo info = eng_->info();
    say(cat("hdpissa-train: ", name_of(o_.method), " | ", info.description, "\n",
            o_.device == Device::Cpu ? std::string() : cat("  device ", info.device, ", dtype ", name_of(o_.dtype), "\n"),
            "  workers ", comm_->size(),
            " (", threads_, " thread(s) each), groups per worker ", o_.groups_per_process, ", K = ", comm_->groups(), ", targets ", o_.targets, " (",
            info.targets.size(), " linears), trainable ", info.trainable_parameters, " of ",
            w_.num_parameters(), " parameters\n", "  data ", data_->size(), " examples (", dropped_,
            " dropped: all labels masked), ", loaders_[0].shard_size(), " per group; ", total_,
            " steps (warmup ", sched_.warmup_steps, ", cosine), tokens per step ≈ K·grad_accum·micro_batch·len\n",
            "  config ", o_.to_json().dump(), "\n"));
    if (step_ > 0) say(cat("  resumed from ", o_.resume, " at step ", step_, "\n"));
    if (!eval_batches_.empty()) {
      sum.eval_before = eval_loss();
      say(cat("eval loss (before, step ", step_, "): ", fixed(*sum.eval_before, 4), "\n"));
      metric({{"type", "eval"}, {"step", step_}, {"eval_loss", *sum.eval_before}, {"when", "before"}});
    }
    if (!o_.sample_prompt.empty()) say(cat("sample (before): ", sample(o_.sample_prompt, o_.sample_max_new_tokens), "\n"));

    const auto t0 = std::chrono::steady_clock::now();
    double tokens = 0;
    const long first = step_;
    while (step_ < total_ && !(o_.stop_after > 0 && step_ - first >= o_.stop_after)) {
      const auto ts = std::chrono::steady_clock::now();
      const auto [loss, tok] = accumulate_gradients();
      const double lr = apply_step();
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - ts).count();
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      tokens += tok;
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
      metric(rec);
      if (o_.eval_every > 0 && step_ % o_.eval_every == 0 && step_ < total_ && !eval_batches_.empty()) {
        const double e = eval_loss();
        say(cat("eval loss (step ", step_, "): ", fixed(e, 4), "\n"));
        metric({{"type", "eval"}, {"step", step_}, {"eval_loss", e}});
      }
      if (o_.save_every > 0 && step_ % o_.save_every == 0 && step_ < total_) save_state(o_.save_state);
    }
    sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    sum.steps_this_run = step_ - first;
    sum.steps_done = step_;
    sum.tokens_per_s = sum.seconds > 0 ? tokens / sum.seconds : 0;
    if (comm_->size() > 1) eng_->verify_replicas();
    sum.peak_device_bytes = eng_->peak_device_bytes();
    say(cat("trained ", sum.steps_this_run, " steps in ", fixed(sum.seconds, 1), " s (", fixed(sum.tokens_per_s, 0),
            " tok/s", sum.peak_device_bytes ? cat(", peak device memory ", fixed(double(*sum.peak_device_bytes) / (1 << 20), 0), " MiB") : std::string(),
            ")", step_ < total_ ? cat("; stopped at step ", step_, " of ", total_) : std::string(), "\n"));
    {
      nlohmann::json rec = {{"type", "summary"}, {"step", step_}, {"steps_this_run", sum.steps_this_run},
                            {"tokens", tokens}, {"seconds", sum.seconds}, {"tokens_per_s", sum.tokens_per_s},
                            {"device", info.device}, {"dtype", name_of(o_.dtype)}};
      if (sum.peak_device_bytes) rec["peak_device_bytes"] = *sum.peak_device_bytes;
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
    if (!o_.save_state.empty()) {
      save_state(o_.save_state);
      say(cat("state saved to ", o_.save_state, " (step ", step_, ")\n"));
    }
    if (!o_.output.empty()) {
      save_merged(o_.output);
      say(cat("merged model written to ", o_.output, " (", torch_dtype_name(hf_save_options().dtype), ")\n"));
    }
    save_adapters();
    return sum;
  }

 private:
  /// This worker's state files inside `tmp` (worker 0 also writes the shared ones, state.json last).
  void write_state_files(const std::filesystem::path& tmp) {
    const TrainState s = eng_->state();
    std::vector<TensorToWrite> shared, local;
    for (const auto& t : s.tensors) (t.local ? local : shared).push_back({t.name, {t.rows, t.cols}, t.data.data()});
    nlohmann::json rank_json, counters_shared = nlohmann::json::object(), counters_local = nlohmann::json::object();
    for (const auto& c : s.counters) (c.local ? counters_local : counters_shared)[c.name] = c.value;
    nlohmann::json positions = nlohmann::json::array();
    for (const auto& l : loaders_) positions.push_back({l.position().epoch, l.position().index});
    rank_json["first_group"] = comm_->first_group();
    rank_json["positions"] = positions;
    rank_json["counters"] = counters_local;
    const std::string p = cat("rank-", comm_->rank());
    write_safetensors(tmp / (p + ".safetensors"), local);
    write_file_atomic(tmp / (p + ".json"), rank_json.dump(1) + "\n");
    if (root_) {
      write_safetensors(tmp / "shared.safetensors", shared);
      nlohmann::json j;
      j["format"] = "hdpissa-train-state/1";
      j["config"] = trajectory();
      j["step"] = step_;
      j["total_steps"] = total_;
      j["counters"] = counters_shared;
      write_file_atomic(tmp / "state.json", j.dump(1) + "\n");
      fsync_path(tmp, true);
    }
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
  /// W_init of a target: the copy kept at setup (CPU path), else the host model (the GPU path's base).
  const Matrix& initial_target(LinearId id) const {
    if (initial_targets_.empty()) return w_.linear(id);
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
  void metric(const nlohmann::json& j) {
    if (root_ && metrics_.is_open()) metrics_ << j.dump() << "\n" << std::flush;
  }

  nlohmann::json trajectory() const {
    nlohmann::json j = trajectory_config(o_, comm_->size());
    j["model_fingerprint"] = model_fp_;
    j["data_fingerprint"] = data_fp_;
    return j;
  }

  void setup() {
    namespace fs = std::filesystem;
    // ---- model and tokenizer
    LoadOptions load_opt;
    load_opt.allow_unused = o_.allow_unused;
    if (!root_) load_opt.warn = [](const std::string&) {};  // rank 0 prints the warnings
    w_ = load_checkpoint(o_.model, load_opt);
    if (o_.tokenizer.empty())
      throw LlamaError(cat("missing --tokenizer: ", o_.model, " is not a directory holding a tokenizer"));
    tok_ = std::make_unique<Tokenizer>(o_.tokenizer);
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
    w_.config.check_sliding_window(o_.max_len, "--max-len");
    if (!o_.output.empty() && fs::exists(o_.output) && !fs::is_directory(o_.output))
      throw LlamaError(cat("--output ", o_.output, " exists and is not a directory"));

    // ---- data, one shard per group
    DataLoadReport data_rep;
    auto tokenized = std::make_shared<std::vector<TokenizedExample>>(
        load_tokenized_data(o_.data, o_.data_format, *tok_, tpl_, o_.max_len, o_.max_examples, &data_rep));
    dropped_ = data_rep.dropped;
    if (tokenized->empty())
      throw LlamaError(cat(o_.data, ": no usable training examples (", data_rep.records, " read, ", dropped_,
                           " dropped because every label was masked at --max-len ", o_.max_len, ")"));
    if (tokenized->size() < std::size_t(comm_->groups()))
      throw LlamaError(cat(o_.data, ": ", tokenized->size(), " usable examples cannot feed K = ", comm_->groups(), " groups"));
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
      const fs::path dir = o_.resume;
      if (!fs::is_directory(dir)) throw LlamaError(cat("--resume ", dir.string(), ": no such state directory"));
      if (!fs::exists(dir / "state.json"))
        throw LlamaError(cat("--resume ", dir.string(), ": expected a training state (state.json), found none"));
      state = parse_json(dir / "state.json");
      if (state.value("format", std::string()) != "hdpissa-train-state/1")
        throw LlamaError(cat(dir.string(), "/state.json: expected format hdpissa-train-state/1, found ",
                             state.contains("format") ? state["format"].dump() : std::string("none")));
      const nlohmann::json now = trajectory(), saved_config = state.at("config");
      for (auto it = now.begin(); it != now.end(); ++it) {
        const auto s = saved_config.find(it.key());
        if (s == saved_config.end() || *s != it.value())
          throw LlamaError(cat("cannot resume from ", dir.string(), ": incompatible config: field '", it.key(),
                               "' is ", s == saved_config.end() ? std::string("missing") : s->dump(),
                               " in the state but ", it.value().dump(), " in this run"));
      }
      rank_state = parse_json(dir / cat("rank-", comm_->rank(), ".json"));
      saved = read_state(dir, rank_state, state);
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
    switch (o_.device) {
      case Device::Cpu: eng_ = std::make_unique<CpuEngine<Comm>>(o_, w_, *comm_, resume); break;
      case Device::Cuda:
        if (comm_->size() > 1 && !device_comm_.make)
          throw LlamaError(cat("--device cuda: found ", comm_->size(), " processes but ",
                               device_comm_.unavailable.empty()
                                   ? std::string("no device communicator between them (NCCL) was provided")
                                   : device_comm_.unavailable,
                               "; run one process with --groups-per-process K, or use --device cpu"));
        eng_ = make_cuda_engine(o_, w_, EngineGroups{comm_->groups(), comm_->local_groups(), comm_->first_group(),
                                                     comm_->size(), comm_->rank(), device_comm_}, resume);
        break;
    }

    if (saved) {
      eng_->load_state(*saved, o_.resume);
      const auto& pos = rank_state.at("positions");
      if (pos.size() != loaders_.size() || rank_state.at("first_group").get<int>() != comm_->first_group())
        throw LlamaError(cat(o_.resume, ": the state holds ", pos.size(), " data positions from group ",
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
    if (!o_.eval_data.empty()) {
      auto tev = std::make_shared<std::vector<TokenizedExample>>(
          load_tokenized_data(o_.eval_data, o_.data_format, *tok_, tpl_, o_.max_len, o_.eval_examples));
      if (tev->empty()) throw LlamaError(cat(o_.eval_data, ": no usable held-out examples"));
      LoaderOptions lo;
      lo.micro_batch = o_.micro_batch;
      lo.shuffle = false;
      DataLoader dl(tev, lo);
      for (std::int64_t i = 0; i < dl.batches_per_epoch(); ++i) eval_batches_.push_back(dl.next());
    }
    if (!o_.eval_gsm8k.empty() && !fs::exists(o_.eval_gsm8k))
      throw LlamaError(cat("--eval-gsm8k: file not found: ", o_.eval_gsm8k));
    // ---- the metrics log, opened last so that a failed setup leaves no file behind (a resumed run
    // appends; every line is a complete JSON object, flushed as written)
    if (!o_.metrics.empty() && root_) {
      const fs::path mp = fs::absolute(o_.metrics);
      std::error_code ec;
      fs::create_directories(mp.parent_path(), ec);
      metrics_.open(mp, o_.resume.empty() ? std::ios::trunc : std::ios::app);
      if (!metrics_) throw LlamaError(cat("--metrics: cannot open ", o_.metrics, " for writing"));
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
  std::ofstream metrics_;
  int threads_ = 1;
  DeviceCommSetup device_comm_;
  std::vector<LinearId> initial_ids_;     // targets whose W_init is kept (adapter exports, CPU path)
  std::vector<Matrix> initial_targets_;
  std::optional<TrainState> pissa_init_;  // PiSSA's initial factors (fresh runs with an adapter output)
};

}  // namespace hdpissa::llama
