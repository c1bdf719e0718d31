#pragma once
/// \file options.hpp
/// TrainOptions: every setting of hdpissa-train, its command-line parser (`parse_train_args`), the
/// usage text, and the subset of settings that fixes a run's trajectory (`trajectory_config`),
/// which a resumed run must match field by field.

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <iterator>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "hdpissa/adapter/muted_linear.hpp"
#include "hdpissa/core/stream_priority.hpp"
#include "hdpissa/core/w_precision.hpp"
#include "llama/cli.hpp"
#include "llama/common.hpp"
#include "llama/data_formats.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama {

/// A choice-valued option: each enum below has one name per value (the flag's spelling), parsed
/// once by parse_choice() and printed by name_of(); nothing compares strings after parsing.
template <class E>
struct Choices;
#define HDPISSA_LLAMA_CHOICES(E, ...)                                          \
  template <>                                                                 \
  struct Choices<E> {                                                         \
    static constexpr std::pair<E, const char*> table[] = {__VA_ARGS__};       \
  }

/// Fine-tuning method (--method).
enum class Method { Full, Lora, Pissa, Hdpissa, LoraDwu, PissaDwu };
HDPISSA_LLAMA_CHOICES(Method, {Method::Full, "full"}, {Method::Lora, "lora"}, {Method::Pissa, "pissa"},
                      {Method::Hdpissa, "hdpissa"}, {Method::LoraDwu, "lora-dwu"}, {Method::PissaDwu, "pissa-dwu"});
/// SVD of the orthogonal / PiSSA initialisation (--svd).
enum class SvdKind { Exact, Randomized };
HDPISSA_LLAMA_CHOICES(SvdKind, {SvdKind::Exact, "exact"}, {SvdKind::Randomized, "randomized"});
/// DWU aggregation over the K groups (--aggregation).
enum class Aggregation { Sum, Mean };
HDPISSA_LLAMA_CHOICES(Aggregation, {Aggregation::Sum, "sum"}, {Aggregation::Mean, "mean"});
/// Compute dtype (--dtype).
enum class ComputeDtype { Fp32, Bf16 };
HDPISSA_LLAMA_CHOICES(ComputeDtype, {ComputeDtype::Fp32, "fp32"}, {ComputeDtype::Bf16, "bf16"});
/// Which GEMMs use which arithmetic (--compute): dtype = every GEMM in --dtype (default); fp8 = the
/// target linears' large base GEMMs (forward and dX) in FP8 on cuBLASLt (--device cuda --dtype bf16;
/// docs/trainer.md, "FP8 compute").
enum class ComputeKind { Dtype, Fp8 };
HDPISSA_LLAMA_CHOICES(ComputeKind, {ComputeKind::Dtype, "dtype"}, {ComputeKind::Fp8, "fp8"});
/// Where the model and the method run (--device).
enum class Device { Cpu, Cuda };
HDPISSA_LLAMA_CHOICES(Device, {Device::Cpu, "cpu"}, {Device::Cuda, "cuda"});
/// The GPU model's attention (--attention).
enum class AttentionKind { Auto, Flash, Gemm };
HDPISSA_LLAMA_CHOICES(AttentionKind, {AttentionKind::Auto, "auto"}, {AttentionKind::Flash, "flash"},
                      {AttentionKind::Gemm, "gemm"});
/// Host communicator (--comm).
enum class CommKind { Auto, Single, Mpi };
HDPISSA_LLAMA_CHOICES(CommKind, {CommKind::Auto, "auto"}, {CommKind::Single, "single"}, {CommKind::Mpi, "mpi"});
/// Adapter scaling (--scaling): PEFT's alpha / r, or the reference's integer alpha // r.
enum class ScalingKind { Peft, Reference };
HDPISSA_LLAMA_CHOICES(ScalingKind, {ScalingKind::Peft, "peft"}, {ScalingKind::Reference, "reference"});
/// How a method that updates W stores and updates it (--w-precision; hdpissa/core/w_precision.hpp).
HDPISSA_LLAMA_CHOICES(hdpissa::WPrecision, {hdpissa::WPrecision::Fp32Master, "fp32-master"},
                      {hdpissa::WPrecision::Bf16Compensated, "bf16-compensated"},
                      {hdpissa::WPrecision::Bf16StochasticRounding, "bf16-sr"});
/// Element type of the merged output (--output-dtype); auto = the input checkpoint's.
enum class OutputDtype { Auto, F32, Bf16, F16 };
HDPISSA_LLAMA_CHOICES(OutputDtype, {OutputDtype::Auto, "auto"}, {OutputDtype::F32, "f32"}, {OutputDtype::Bf16, "bf16"},
                      {OutputDtype::F16, "f16"});
/// A step with a non-finite gradient (--on-nonfinite): the library's NonFinitePolicy Throw / SkipStep.
enum class OnNonFinite { Error, Skip };
HDPISSA_LLAMA_CHOICES(OnNonFinite, {OnNonFinite::Error, "error"}, {OnNonFinite::Skip, "skip"});
#undef HDPISSA_LLAMA_CHOICES

/// The flag spelling of `v`.
template <class E>
const char* name_of(E v) {
  for (const auto& [e, n] : Choices<E>::table)
    if (e == v) return n;
  return "?";
}
/// Parses `value` of `flag` into E; the error lists every accepted spelling.
template <class E>
E parse_choice(const std::string& flag, const std::string& value) {
  std::string all;
  const auto& t = Choices<E>::table;
  const std::size_t n = std::size(t);
  for (std::size_t i = 0; i < n; ++i) {
    if (value == t[i].second) return t[i].first;
    all += (i == 0 ? "" : i + 1 == n ? " or " : ", ") + std::string(t[i].second);
  }
  throw LlamaError(cat(flag, ": expected ", all, ", found '", value, "'"));
}

/// Every setting of one training run (defaults = the paper's recipe where it applies, §6).
struct TrainOptions {
  // ---- inputs / outputs
  std::string model;          ///< HF directory or llama2.c .bin
  std::string tokenizer;      ///< tokenizer file or directory (default: the model directory; llama/tokenizer.hpp)
  std::string data;           ///< training JSON / JSONL
  std::string output;         ///< merged HF checkpoint directory written at the end ("" = none)
  std::string save_state;     ///< resumable training state directory ("" = none)
  std::string resume;         ///< state directory to resume from ("" = fresh run)
  std::string metrics;        ///< metrics JSONL ("" = none)
  DataFormatOptions data_format;  ///< --data-format, --chat-template, --prompt/input/response-field
  bool allow_unused = false;      ///< --allow-unused: unused tensors / unsupported config fields warn instead of failing
  // ---- Hugging Face outputs (llama/train/lora_export.hpp, llama/peft_export.hpp)
  OutputDtype output_dtype = OutputDtype::Auto;  ///< merged model's dtype (auto: the input checkpoint's)
  std::int64_t max_shard_bytes = 5'000'000'000;  ///< --max-shard-size: shard the merged model above this
  std::string adapter_output;      ///< PEFT adapter directory ("" = <output>/adapter)
  int export_lora_rank = 0;        ///< > 0: ΔW → rank-R LoRA adapter (DWU methods, full)
  double export_lora_energy = 0;   ///< in (0, 1]: the smallest rank per layer keeping this share of ‖ΔW‖²
  // ---- method
  Method method = Method::Hdpissa;
  int rank = 16;                   ///< adapter rank r per group
  int alpha = -1;                  ///< adapter alpha; scaling = alpha / r (--scaling); -1 = r
  ScalingKind scaling = ScalingKind::Peft;  ///< peft: alpha / r; reference: alpha // r
  std::string targets = "q,k,v,o,gate,up,down";
  SvdKind svd = SvdKind::Exact;    ///< hdpissa / pissa-dwu / pissa init
  double mute_gamma = 0;           ///< 0 = ExactMute; > 0 = ScaledMute{gamma} (DWU methods)
  Aggregation aggregation = Aggregation::Sum;  ///< sum (reference) | mean (paper's 1/K)
  ComputeDtype dtype = ComputeDtype::Fp32;  ///< bf16: --device cuda only
  ComputeKind compute = ComputeKind::Dtype;  ///< fp8: --device cuda --dtype bf16 only
  hdpissa::WPrecision w_precision = hdpissa::WPrecision::Fp32Master;  ///< --w-precision (W-updating methods)
  Device device = Device::Cpu;     ///< llama/train/engine.hpp
  AttentionKind attention = AttentionKind::Auto;  ///< the GPU model's attention (--device cuda)
  bool activation_checkpointing = false;  ///< --activation-checkpointing: recompute each layer in backward (GPU)
  bool keep_swiglu = false;  ///< --keep-swiglu: every layer keeps silu(gate)·up for the backward (GPU)
  bool cuda_graphs = false;  ///< --cuda-graphs: each micro-batch's layers replayed from CUDA graphs (GPU)
  bool profile = false;  ///< --profile: GPU time per model section and optimizer step (CUDA events), per step
  // ---- distribution
  CommKind comm = CommKind::Auto;
  int groups_per_process = 1;      ///< V; K = processes × V
  double exchange_bucket_mb = 256;  ///< DWU methods, several processes: MiB of deltas received per all-gather (0: one)
  // ---- optimisation
  double lr = 2e-5;
  double weight_decay = 0;
  double warmup_ratio = 0.03;
  int grad_accum = 1;
  int micro_batch = 1;
  int max_len = 512;
  int pad_to_multiple = 1;         ///< --pad-to-multiple: micro-batch lengths rounded up to multiples of N
  int epochs = 1;
  long max_steps = -1;             ///< > 0 overrides epochs
  long max_examples = -1;          ///< use only the first N training examples (> 0)
  std::uint64_t seed = 42;
  // ---- run control
  long stop_after = -1;            ///< stop (and save state) after this many steps of this invocation
  long save_every = 0;             ///< save state every N steps (needs --save-state)
  long eval_every = 0;             ///< held-out loss every N steps (0: before and after only)
  int log_every = 1;
  // ---- evaluation
  std::string eval_data;           ///< held-out JSON / JSONL ("" = none)
  int eval_examples = 64;
  std::string sample_prompt;       ///< instruction for a greedy sample (Alpaca template)
  int sample_max_new_tokens = 64;
  std::string eval_gsm8k;          ///< GSM8K-style JSONL test set ("" = none)
  int eval_gsm8k_n = 50;
  int eval_max_new_tokens = 256;
  // ---- generation evaluators after training (llama/eval/evaluators.hpp): begin
  std::string eval_math;           ///< MATH JSONL (math500 / math_test_5000) ("" = none)
  std::string eval_humaneval;      ///< HumanEval JSONL(.gz) ("" = none)
  std::string eval_mbpp;           ///< MBPP JSONL, test split task_id 11-510 ("" = none)
  std::string eval_records;        ///< directory for <task>.jsonl + <task>_summary.json ("" = none)
  // ---- generation evaluators: end
  bool quiet = false;              ///< no per-step lines (errors and the summary still print)
  int threads = 0;                 ///< OpenMP / Eigen threads (0: the OpenMP default, OMP_NUM_THREADS)
  // ---- safety: divergence guard and non-finite policy (issue 18; checkpoints: llama/train/state_dir.hpp)
  double max_loss = 0;             ///< > 0: stop with an error when a step's loss exceeds it
  double loss_spike_factor = 0;    ///< > 0: stop when the loss is above factor x its running median ...
  int loss_spike_steps = 3;        ///< ... for this many consecutive steps
  OnNonFinite on_nonfinite = OnNonFinite::Error;  ///< non-finite gradient: error, or skip the step

  /// The parsed --targets list.
  [[nodiscard]] std::vector<Module> target_modules() const;
  /// alpha, defaulting to r.
  [[nodiscard]] int effective_alpha() const { return alpha > 0 ? alpha : rank; }
  /// The adapter scaling s of y = x (W + s·B A)ᵀ: alpha / r (peft) or alpha // r (reference).
  [[nodiscard]] double adapter_scaling() const {
    return scaling == ScalingKind::Reference ? hdpissa::reference_scaling(effective_alpha(), rank)
                                             : hdpissa::peft_scaling(effective_alpha(), rank);
  }
  /// Whether a ΔW → truncated LoRA export was asked for (--export-lora-rank / --export-lora-energy).
  [[nodiscard]] bool exports_truncated_lora() const { return export_lora_rank > 0 || export_lora_energy > 0; }
  /// Where PEFT adapters go: --adapter-output, else <output>/adapter, else "" (none).
  [[nodiscard]] std::string adapter_dir() const {
    if (!adapter_output.empty()) return adapter_output;
    if (output.empty() || !(uses_adapter() || exports_truncated_lora())) return {};
    return (std::filesystem::path(output) / "adapter").string();
  }
  /// Whether the method updates W through the Direct Weight Update (muted layers, per-group Adam).
  [[nodiscard]] bool uses_dwu() const {
    return method == Method::Hdpissa || method == Method::LoraDwu || method == Method::PissaDwu;
  }
  /// Whether the method's adapters come from an SVD of W (hdpissa, pissa, pissa-dwu): the ones --svd applies to.
  [[nodiscard]] bool uses_svd() const {
    return method == Method::Hdpissa || method == Method::Pissa || method == Method::PissaDwu;
  }
  /// Whether the method trains an active adapter data-parallel (LoRA / PiSSA).
  [[nodiscard]] bool uses_adapter() const { return method == Method::Lora || method == Method::Pissa; }
  /// Whether the method updates W (DWU methods, full): the ones --w-precision applies to.
  [[nodiscard]] bool updates_w() const { return uses_dwu() || method == Method::Full; }
  /// Every field as JSON (echoed at start).
  [[nodiscard]] nlohmann::json to_json() const;
  /// Checks value ranges and combinations; throws LlamaError naming the flag.
  void validate() const;
};

namespace detail {

inline double parse_double(const std::string& flag, const std::string& v) {
  std::size_t used = 0;
  double x = 0;
  try {
    x = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || v.empty()) throw LlamaError(cat(flag, " expects a number, found '", v, "'"));
  return x;
}

/// A byte count: an integer with an optional unit B, KB, MB, GB, TB (powers of 1000, as
/// transformers' max_shard_size) or KiB, MiB, GiB (powers of 1024).
inline std::int64_t parse_size(const std::string& flag, const std::string& v) {
  std::size_t used = 0;
  double x = 0;
  try {
    x = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  const std::string unit = used ? v.substr(used) : std::string();
  const std::pair<const char*, double> units[] = {{"", 1},      {"B", 1},     {"KB", 1e3},          {"MB", 1e6},
                                                  {"GB", 1e9},  {"TB", 1e12}, {"KiB", 1024.0},      {"MiB", 1048576.0},
                                                  {"GiB", 1073741824.0}};
  for (const auto& [u, m] : units)
    if (used && unit == u && x > 0) return std::int64_t(x * m);
  throw LlamaError(cat(flag, " expects a positive size such as 500MB or 5GB, found '", v, "'"));
}

}  // namespace detail

inline std::vector<Module> TrainOptions::target_modules() const {
  std::vector<Module> out;
  std::string item;
  auto flush = [&] {
    if (item.empty()) return;
    const std::string names[] = {"q", "k", "v", "o", "gate", "up", "down"};
    bool found = false;
    for (int m = 0; m < kModulesPerLayer; ++m) {
      const std::string full = module_name(static_cast<Module>(m));
      if (item == names[m] || item == full) {
        for (Module x : out)
          if (x == static_cast<Module>(m)) throw LlamaError(cat("--targets: '", item, "' is listed twice"));
        out.push_back(static_cast<Module>(m));
        found = true;
      }
    }
    if (!found)
      throw LlamaError(cat("--targets: unknown module '", item, "'; expected a comma-separated subset of "
                                                               "q,k,v,o,gate,up,down"));
    item.clear();
  };
  for (char ch : targets) {
    if (ch == ',') flush();
    else if (ch != ' ') item += ch;
  }
  flush();
  if (out.empty()) throw LlamaError("--targets: expected at least one module, found none");
  return out;
}

inline nlohmann::json TrainOptions::to_json() const {
  return {{"model", model},
          {"tokenizer", tokenizer},
          {"data", data},
          {"max_examples", max_examples},
          {"output", output},
          {"save_state", save_state},
          {"resume", resume},
          {"metrics", metrics},
          {"data_format", data_format.to_json()},
          {"allow_unused", allow_unused},
          {"method", name_of(method)},
          {"rank", rank},
          {"alpha", effective_alpha()},
          {"scaling", name_of(scaling)},
          {"output_dtype", name_of(output_dtype)},
          {"max_shard_bytes", max_shard_bytes},
          {"adapter_output", adapter_dir()},
          {"export_lora_rank", export_lora_rank},
          {"export_lora_energy", export_lora_energy},
          {"targets", targets},
          {"svd", name_of(svd)},
          {"aggregation", name_of(aggregation)},
          {"mute_gamma", mute_gamma},
          {"dtype", name_of(dtype)},
          {"compute", name_of(compute)},
          {"w_precision", name_of(w_precision)},
          {"device", name_of(device)},
          {"attention", name_of(attention)},
          {"activation_checkpointing", activation_checkpointing},
          {"keep_swiglu", keep_swiglu},
          {"cuda_graphs", cuda_graphs},
          {"profile", profile},
          {"comm", name_of(comm)},
          {"groups_per_process", groups_per_process},
          {"exchange_bucket_mb", exchange_bucket_mb},
          {"lr", lr},
          {"weight_decay", weight_decay},
          {"warmup_ratio", warmup_ratio},
          {"grad_accum", grad_accum},
          {"micro_batch", micro_batch},
          {"max_len", max_len},
          {"pad_to_multiple", pad_to_multiple},
          {"epochs", epochs},
          {"max_steps", max_steps},
          {"seed", seed},
          {"threads", threads},
          {"stop_after", stop_after},
          {"save_every", save_every},
          {"eval_every", eval_every},
          {"eval_data", eval_data},
          {"eval_examples", eval_examples},
          {"sample_prompt", sample_prompt},
          {"eval_gsm8k", eval_gsm8k},
          {"eval_gsm8k_n", eval_gsm8k_n},
          {"eval_math", eval_math},
          {"eval_humaneval", eval_humaneval},
          {"eval_mbpp", eval_mbpp},
          {"eval_records", eval_records},
          {"max_loss", max_loss},
          {"loss_spike_factor", loss_spike_factor},
          {"loss_spike_steps", loss_spike_steps},
          {"on_nonfinite", name_of(on_nonfinite)}};
}

inline void TrainOptions::validate() const {
  auto need = [](bool ok, const std::string& msg) {
    if (!ok) throw LlamaError(msg);
  };
  need(!model.empty(), "missing --model (see --help)");
  need(!data.empty(), "missing --data (see --help)");
  data_format.validate();
  need(dtype == ComputeDtype::Fp32 || device == Device::Cuda,
       "--dtype bf16: bf16 compute with an fp32 master copy of W is a GPU-path feature (--device cuda); the CPU "
       "trainer runs fp32 throughout (use --dtype fp32)");
  need(w_precision == hdpissa::WPrecision::Fp32Master || updates_w(),
       cat("--w-precision ", name_of(w_precision), ": applies to the methods that update W (hdpissa, lora-dwu, "
           "pissa-dwu through the Direct Weight Update; full through Adam on W); lora / pissa keep a frozen W "
           "(bf16-only under --dtype bf16)"));
  need(w_precision == hdpissa::WPrecision::Fp32Master || device == Device::Cpu || dtype == ComputeDtype::Bf16,
       cat("--w-precision ", name_of(w_precision), ": on --device cuda the bf16 W policies keep W as the model's bf16 "
           "copy, so they need --dtype bf16 (found --dtype fp32); the CPU trainer runs them in fp32 compute"));
  need(compute == ComputeKind::Dtype || (device == Device::Cuda && dtype == ComputeDtype::Bf16),
       cat("--compute fp8: runs the target linears' base GEMMs in FP8 on the GPU; expected --device cuda --dtype bf16, "
           "found --device ", name_of(device), " --dtype ", name_of(dtype)));
  need(compute == ComputeKind::Dtype || mute_gamma == 0,
       cat("--compute fp8: expected the exact mute (--mute-gamma 0), found --mute-gamma ", mute_gamma,
           ": the scaled mute multiplies X by W + gamma alpha B A, which has no FP8 copy"));
  need(!activation_checkpointing || device == Device::Cuda,
       "--activation-checkpointing: recomputes the GPU model's layers in backward (--device cuda); the CPU model keeps "
       "its activations");
  need(!keep_swiglu || device == Device::Cuda,
       "--keep-swiglu: keeps the GPU model's SwiGLU outputs for the backward (--device cuda); the CPU model keeps all "
       "its activations");
  need(!(keep_swiglu && activation_checkpointing),
       "--keep-swiglu keeps every layer's SwiGLU output for the backward, --activation-checkpointing recomputes each "
       "layer in its backward; expected at most one of them, found both");
  need(!cuda_graphs || device == Device::Cuda,
       "--cuda-graphs: replays the GPU model's layers from CUDA graphs (--device cuda); the CPU path has none");
  need(!(cuda_graphs && profile),
       "--cuda-graphs replays captured layers, --profile times them with host-recorded events; expected at most one "
       "of them, found both");
  need(!profile || device == Device::Cuda,
       "--profile: times the GPU model's sections with CUDA events (--device cuda); the CPU path has no section timers");
  need(attention == AttentionKind::Auto || device == Device::Cuda,
       cat("--attention ", name_of(attention), ": chooses the GPU model's attention (--device cuda); the CPU model has one"));
  need(rank >= 1, cat("--rank: expected >= 1, found ", rank));
  need(alpha == -1 || alpha >= 1, cat("--alpha: expected >= 1, found ", alpha));
  need(scaling == ScalingKind::Peft || effective_alpha() / rank >= 1 || method == Method::Full,
       cat("--alpha ", effective_alpha(), " / --rank ", rank, " is 0 in integer division (--scaling reference); "
           "expected alpha >= rank, or --scaling peft"));
  need(max_shard_bytes >= 1, cat("--max-shard-size: expected > 0 bytes, found ", max_shard_bytes));
  need(export_lora_rank >= 0, cat("--export-lora-rank: expected >= 1, found ", export_lora_rank));
  need(export_lora_energy == 0 || (export_lora_energy > 0 && export_lora_energy <= 1),
       cat("--export-lora-energy: expected a share in (0, 1], found ", export_lora_energy));
  need(export_lora_rank == 0 || export_lora_energy == 0, "--export-lora-rank and --export-lora-energy exclude each other");
  need(!exports_truncated_lora() || !uses_adapter(),
       cat("--export-lora-rank / --export-lora-energy apply to hdpissa, the DWU methods and full; --method ",
           name_of(method), " writes its own adapter (--adapter-output)"));
  need(!exports_truncated_lora() || !adapter_dir().empty(),
       "--export-lora-rank / --export-lora-energy need --adapter-output DIR or --output DIR");
  need(mute_gamma >= 0, cat("--mute-gamma: expected > 0, found ", mute_gamma));
  need(mute_gamma == 0 || uses_dwu(), cat("--mute-gamma applies to the DWU methods only, not --method ", name_of(method)));
  need(aggregation == Aggregation::Sum || uses_dwu(),
       cat("--aggregation applies to the DWU methods only, not --method ", name_of(method)));
  need(svd == SvdKind::Exact || uses_svd(),
       cat("--svd applies to the SVD-initialised methods (hdpissa, pissa, pissa-dwu), not --method ", name_of(method)));
  need(groups_per_process >= 1, cat("--groups-per-process: expected >= 1, found ", groups_per_process));
  need(exchange_bucket_mb >= 0 && exchange_bucket_mb <= 1e6,
       cat("--exchange-bucket-mb: expected a size in [0, 1e6] MiB, found ", exchange_bucket_mb));
  need(lr > 0, cat("--lr: expected > 0, found ", lr));
  need(weight_decay >= 0, cat("--weight-decay: expected >= 0, found ", weight_decay));
  need(warmup_ratio >= 0 && warmup_ratio <= 1, cat("--warmup-ratio: expected [0, 1], found ", warmup_ratio));
  need(grad_accum >= 1, cat("--grad-accum: expected >= 1, found ", grad_accum));
  need(micro_batch >= 1, cat("--micro-batch: expected >= 1, found ", micro_batch));
  need(max_len >= 2, cat("--max-len: expected >= 2, found ", max_len));
  need(pad_to_multiple >= 1, cat("--pad-to-multiple: expected >= 1, found ", pad_to_multiple));
  need(epochs >= 1, cat("--epochs: expected >= 1, found ", epochs));
  need(max_steps == -1 || max_steps >= 1, cat("--max-steps: expected >= 1, found ", max_steps));
  need(max_examples == -1 || max_examples >= 1, cat("--max-examples: expected >= 1, found ", max_examples));
  need(stop_after == -1 || stop_after >= 1, cat("--stop-after: expected >= 1, found ", stop_after));
  need(save_every >= 0, cat("--save-every: expected >= 0, found ", save_every));
  need(save_every == 0 || !save_state.empty(), "--save-every needs --save-state DIR");
  need(eval_every >= 0, cat("--eval-every: expected >= 0, found ", eval_every));
  need(eval_every == 0 || !eval_data.empty(), "--eval-every needs --eval-data FILE (the held-out loss it logs)");
  need(eval_records.empty() || !eval_gsm8k.empty() || !eval_math.empty() || !eval_humaneval.empty() || !eval_mbpp.empty(),
       "--eval-records needs a task to record: --eval-gsm8k, --eval-math, --eval-humaneval or --eval-mbpp");
  need(threads >= 0 && threads <= 1024, cat("--threads: expected 0 to 1024, found ", threads));
  need(log_every >= 1, cat("--log-every: expected >= 1, found ", log_every));
  need(eval_examples >= 1, cat("--eval-examples: expected >= 1, found ", eval_examples));
  need(eval_gsm8k_n >= 1, cat("--eval-gsm8k-n: expected >= 1, found ", eval_gsm8k_n));
  need(eval_max_new_tokens >= 1, cat("--eval-max-new-tokens: expected >= 1, found ", eval_max_new_tokens));
  need(sample_max_new_tokens >= 1, cat("--sample-max-new-tokens: expected >= 1, found ", sample_max_new_tokens));
  need(max_loss >= 0, cat("--max-loss: expected > 0, found ", max_loss));
  need(loss_spike_factor == 0 || loss_spike_factor > 1,
       cat("--loss-spike-factor: expected > 1, found ", loss_spike_factor));
  need(loss_spike_steps >= 1, cat("--loss-spike-steps: expected >= 1, found ", loss_spike_steps));
  (void)target_modules();
}

/// --targets in its canonical form: the short names in the model's module order, whatever the
/// spelling (q_proj …) or order of the same set ("down,up,q" → "q,up,down"): what the header echoes,
/// a state records and a resume compares. An invalid list throws target_modules()'s error.
inline std::string canonical_targets(const std::string& targets) {
  TrainOptions t;
  t.targets = targets;
  const std::vector<Module> mods = t.target_modules();
  static const char* const names[] = {"q", "k", "v", "o", "gate", "up", "down"};
  std::string out;
  for (int m = 0; m < kModulesPerLayer; ++m)
    if (std::find(mods.begin(), mods.end(), static_cast<Module>(m)) != mods.end())
      out += cat(out.empty() ? "" : ",", names[m]);
  return out;
}

/// The target-module list of --targets: "q,k,v" or "q k v", full names (q_proj …) or PEFT's
/// "all-linear" (every target linear of a LLaMA layer).
inline std::string parse_targets_list(const std::vector<std::string>& values) {
  std::string out;
  for (const std::string& t : cli::split_list(values)) {
    const std::string item = t == "all-linear" ? std::string("q,k,v,o,gate,up,down") : t;
    out += (out.empty() ? "" : ",") + item;
  }
  return out;
}

/// Every option of hdpissa-train, registered on `app` and writing into `o`. `attention` receives
/// the --attention option (its count tells whether the flag was given).
inline void add_train_options(CLI::App& app, TrainOptions& o, CLI::Option** attention = nullptr,
                              CLI::Option** w_precision = nullptr) {
  cli::setup(app);
  app.description("Fine-tunes a LLaMA-family model (LLaMA 1-3, Mistral, Qwen2 shapes) with HD-PiSSA or a baseline, "
                  "on the CPU (fp32) or a GPU (--device cuda).");
  app.footer(
      "safety (docs/trainer.md, \"Checkpoints\"):\n"
      "  SIGINT, SIGTERM, SIGUSR1 finish the current step, save the state (--save-state), flush the metrics and exit\n"
      "  with 128 + signal; a second SIGINT exits at once. A state directory has a manifest.json (size + xxHash64 of\n"
      "  every file, run id, step) that --resume verifies; --resume DIR takes the newest complete state among DIR,\n"
      "  DIR.tmp-*, DIR.old-*; DIR.lock keeps a second trainer out; outputs are checked up front.\n"
      "environment (each only a default: a flag, where there is one, wins):\n"
      "  HDPISSA_LLAMA_ATTENTION   auto|flash|gemm: --attention's default (--device cuda)\n"
      "  HDPISSA_CUDA_FUSED_DWU    0 turns off the fused DWU / multi-tensor Adam kernels (measurements only)\n"
      "  HDPISSA_CUDA_GEMM_TUNING  off|exact|fastest: the fp32 GEMM algorithm policy (default exact = bit-identical)\n"
      "  HDPISSA_CUDA_GEMM_TUNING_BF16  off|exact|fastest: the same for bf16 GEMMs (--dtype bf16 linears; default off)\n"
      "  HDPISSA_CUDA_DWU_GEMM     auto|3xtf32|simt|cublas: the Direct Weight Update's GEMM on the GPU\n"
      "  HDPISSA_FUSED_ADAPTER_GRADS  0|1: fused adapter-gradient kernels for the DWU methods (bf16, r 16; opt-in:\n"
      "                            faster only at narrow outputs, docs/trainer.md)\n"
      "  HDPISSA_STACKED_LINEARS   0 turns off the stacked q|k|v, gate|up GEMMs of the GPU trainer (measurements\n"
      "                            only; default 1: one forward and one summed-dX GEMM per group, docs/trainer.md)\n"
      "  HDPISSA_ADAPTER_STREAM    0 runs the DWU methods' adapter-gradient GEMMs on the model's stream (measurements\n"
      "                            only; default 1: on a second stream, beside the backward's dX GEMMs)\n"
      "  HDPISSA_ADAPTER_STREAM_PRIORITY  default|high: that second stream's scheduling priority (default high;\n"
      "                            same bits either way; measurements only)\n"
      "  HDPISSA_CUDA_DWU_PRIORITY default|high: the DWU step's W-update streams' priority (same bits)\n"
      "  HDPISSA_LOSS_CHUNK_ROWS   rows of full-vocabulary logits per loss chunk (GPU; default: a 192 MiB budget)\n"
      "  HDPISSA_LOSS_ROW_ALIGN    the loss GEMMs' row multiple (GPU; default 128: a few GEMM shapes; 1: exact)\n"
      "  HDPISSA_FLASH_BAND        1..2^30|all: the flash attention kernels' block order, heads per heavy-first band\n"
      "                            (measurements only; same bits in any order; 1 = the order before session 27)\n"
      "  HDPISSA_COMM_TIMEOUT_S    collective / rendezvous timeout of the multi-process paths (seconds)\n"
      "  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (torchrun, hdpissa-run) or SLURM_PROCID,\n"
      "  SLURM_NTASKS, SLURM_LOCALID (srun): one process of a multi-process run (docs/distributed.md)\n"
      "\n"
      "example (HD-PiSSA, K = 4 virtual groups, r = 4, on stories260K):\n"
      "  hdpissa-train --model $HDPISSA_DATA/stories260K-hf --data $HDPISSA_DATA/gsm8k/train.jsonl \\\n"
      "      --method hdpissa --groups-per-process 4 --rank 4 --lr 2e-3 --max-len 256 --max-steps 40 \\\n"
      "      --eval-data $HDPISSA_DATA/gsm8k/test.jsonl --output runs/demo\n"
      "several GPUs of one host (one process each, NCCL; K = 2 x 4 = 8 groups):\n"
      "  hdpissa-train --nproc-per-node 2 --device cuda --groups-per-process 4 ...   (or hdpissa-run, mpirun)\n");
  auto integer_at_least = [](long min) {
    return [min](const std::string& flag, const std::string& v) { return cli::parse_int<long>(flag, v, min); };
  };
  const std::string io = "inputs / outputs", me = "method", di = "distribution", op = "optimisation",
                    rc = "run control", sa = "safety", ev = "evaluation";
  app.add_option("--model", o.model, "HF directory (config.json + model.safetensors[.index.json]) or llama2.c .bin")
      ->group(io)->type_name("PATH");
  app.add_option("--tokenizer", o.tokenizer, "SentencePiece .model, tokenizer.json, tiktoken tokenizer.model or a "
                                             "directory holding one (default: the model directory)")
      ->group(io)->type_name("PATH");
  app.add_option("--data", o.data, "training data, JSON array or JSONL (instruction/output, query/response, "
                                   "question/answer, prompt/completion, chat, text, tokens)")
      ->group(io)->type_name("FILE");
  cli::add_data_format_options(app, o.data_format, io);
  app.add_flag("--allow-unused", o.allow_unused, "warn instead of failing on checkpoint tensors the model does not use "
                                                 "and unsupported config fields (the model then differs from the checkpoint)")
      ->group(io);
  cli::add_parsed(app, "--max-examples", "--max-examples", o.max_examples, integer_at_least(1),
                  "use only the first N training examples", "N")->group(io);
  app.add_option("--output,--output-dir", o.output, "write the merged model (HF safetensors + config.json + tokenizer "
                                                    "files) here at the end; lora / pissa also write a PEFT adapter to DIR/adapter")
      ->group(io)->type_name("DIR");
  cli::add_parsed(app, "--output-dtype", "--output-dtype", o.output_dtype, parse_choice<OutputDtype>,
                  "merged model's dtype: auto (the input checkpoint's) | f32 | bf16 | f16", "auto|f32|bf16|f16")->group(io);
  cli::add_parsed(app, "--max-shard-size", "--max-shard-size", o.max_shard_bytes, detail::parse_size,
                  "shard the merged model above SIZE (bytes, or 500MB, 5GB; default 5GB), with "
                  "model.safetensors.index.json as Hugging Face does", "SIZE")->group(io);
  app.add_option("--adapter-output", o.adapter_output,
                 "PEFT adapter directory (adapter_config.json + adapter_model.safetensors; default DIR/adapter of "
                 "--output); pissa: DIR = the rank-2r LoRA of the update relative to the original base, DIR/pissa = "
                 "the PiSSA adapter relative to the residual base in DIR/pissa/residual_model")
      ->group(io)->type_name("DIR");
  cli::add_parsed(app, "--export-lora-rank", "--export-lora-rank", o.export_lora_rank,
                  [](const std::string& f, const std::string& v) { return cli::parse_int<int>(f, v); },
                  "hdpissa, *-dwu, full: also write W_final - W_init as a rank-R PEFT LoRA (truncated SVD per layer; "
                  "kept share of |dW|^2 per layer in the log and in lora_export.json)", "R")->group(io);
  app.add_option("--export-lora-energy", o.export_lora_energy,
                 "as --export-lora-rank, with the smallest rank per layer keeping a share E in (0, 1] of |dW|^2 "
                 "(PEFT rank_pattern)")->group(io)->type_name("E");
  app.add_option("--save-state", o.save_state, "write a resumable training state here (at the end, at --stop-after, "
                                               "and every --save-every steps)")->group(io)->type_name("DIR");
  app.add_option("--resume", o.resume, "continue a run from its saved state (the config must match)")->group(io)->type_name("DIR");
  app.add_option("--metrics", o.metrics, "JSONL: one object per step plus eval records")->group(io)->type_name("FILE");

  cli::add_parsed(app, "--method", "--method", o.method, parse_choice<Method>, "fine-tuning method (default hdpissa)",
                  "hdpissa|lora|pissa|full|lora-dwu|pissa-dwu")->group(me);
  cli::add_parsed(app, "--rank,-r,--lora-r", "--rank", o.rank,
                  [](const std::string& f, const std::string& v) { return cli::parse_int<int>(f, v); },
                  "adapter rank per group (default 16)", "R")->group(me);
  cli::add_parsed(app, "--alpha,--lora-alpha", "--alpha", o.alpha,
                  [](const std::string& f, const std::string& v) { return cli::parse_int<int>(f, v); },
                  "adapter alpha >= 1 (default A = R); scaling = A / R (--scaling)", "A")->group(me);
  cli::add_parsed(app, "--scaling", "--scaling", o.scaling, parse_choice<ScalingKind>,
                  "peft (default): A / R as a float, as PEFT; reference: A // R in integer division, as the authors' "
                  "code (fidelity runs; needs A >= R)", "peft|reference")->group(me);
  app.add_option_function<std::vector<std::string>>(
         "--targets,--target-modules", [&o](const std::vector<std::string>& v) { o.targets = parse_targets_list(v); },
         "target linears: a subset of q,k,v,o,gate,up,down (or q_proj, …), comma- or space-separated, or all-linear "
         "(default all seven)")
      ->group(me)->type_name("LIST")->expected(1, -1)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  cli::add_parsed(app, "--svd", "--svd", o.svd, parse_choice<SvdKind>,
                  "SVD of the orthogonal / PiSSA initialisation: hdpissa, pissa, pissa-dwu (default exact)", "exact|randomized")->group(me);
  cli::add_parsed(app, "--aggregation", "--aggregation", o.aggregation, parse_choice<Aggregation>,
                  "DWU aggregation over the K groups (default sum, the reference)", "sum|mean")->group(me);
  app.add_option("--mute-gamma", o.mute_gamma, "DWU methods: the paper's literal x(W + G a B A)^T forward instead of the "
                                               "exact mute (fidelity experiments; default: exact mute)")->group(me)->type_name("G");
  cli::add_parsed(app, "--device", "--device", o.device, parse_choice<Device>,
                  "where the model and the method run (default cpu; cuda needs a CUDA build and a GPU; "
                  "--groups-per-process groups per GPU; several processes: one per GPU, NCCL between them)",
                  "cpu|cuda")->group(me);
  cli::add_parsed(app, "--dtype", "--dtype", o.dtype, parse_choice<ComputeDtype>,
                  "compute dtype (default fp32 = exact fp32 everywhere; bf16 = bf16 compute copies of W and the factors, "
                  "fp32 masters, Adam and gradient sums: --device cuda only)", "fp32|bf16")->group(me);
  cli::add_parsed(app, "--compute", "--compute", o.compute, parse_choice<ComputeKind>,
                  "dtype (default: every GEMM in --dtype) or fp8: the target linears' forward and dX base GEMMs in FP8 "
                  "(E4M3 W and X, E5M2 dY, per-tensor scaling, cuBLASLt; adapters, attention, lm_head, weight "
                  "gradients stay bf16; +2 bytes per target parameter); needs --device cuda --dtype bf16; "
                  "docs/trainer.md",
                  "dtype|fp8")->group(me);
  CLI::Option* wp = cli::add_parsed(
      app, "--w-precision", "--w-precision", o.w_precision, parse_choice<hdpissa::WPrecision>,
      "how the methods that update W (hdpissa / lora-dwu / pissa-dwu, full) store and update it: fp32-master (fp32 W, plus a bf16 compute copy under "
      "--dtype bf16; 6 B per parameter), bf16-compensated (bf16 W + bf16 Kahan compensation; 4 B) or bf16-sr (bf16 W, "
      "stochastic rounding seeded by --seed, step and element; 2 B, LoRA's memory). Default: bf16-sr for the DWU methods "
      "under --device cuda --dtype bf16 (same loss as fp32-master in docs/trainer.md's fidelity table; for studies of the update's "
      "spectrum pick bf16-compensated or fp32-master: SR's rounding noise is full-rank), fp32-master otherwise (full "
      "included: its dense update has no fidelity measurement under SR). On --device cuda the bf16 policies need "
      "--dtype bf16 and keep no fp32 W (DWU: the rule is fused into the update GEMM; full: one pass after Adam)",
      "fp32-master|bf16-compensated|bf16-sr");
  wp->group(me);
  if (w_precision) *w_precision = wp;
  CLI::Option* att = cli::add_parsed(
      app, "--attention", "--attention", o.attention, parse_choice<AttentionKind>,
      "the GPU model's attention (--device cuda): flash = fused kernels (bf16, head_dim 64 or 128), gemm = "
      "materialised scores through cuBLAS; auto (default) = flash where it runs; without this flag the environment "
      "variable HDPISSA_LLAMA_ATTENTION sets the default", "auto|flash|gemm")->group(me);
  if (attention) *attention = att;
  app.add_flag("--activation-checkpointing", o.activation_checkpointing,
               "--device cuda: keep only each decoder layer's residual input (fp32) and one layer's activations, "
               "recompute each layer's forward in backward (same gradients bit for bit; about one more forward pass "
               "per step, for long sequences and large micro-batches)")->group(me);
  app.add_flag("--keep-swiglu", o.keep_swiglu,
               "--device cuda: keep every layer's silu(gate)*up (the X of down) from the forward for the backward "
               "instead of recomputing it there: + (layers - 1) x tokens x hidden_dim x 2 bytes (2.6 GiB at "
               "LLaMA-2-7B, 8 x 512), one elementwise pass per layer less; the same gradients bit for bit")->group(me);
  app.add_flag("--cuda-graphs", o.cuda_graphs,
               "--device cuda: capture each micro-batch's layer forward and backward as CUDA graphs (per batch shape, "
               "after one eager micro-batch) and replay them: less host work per micro-batch; the same results bit "
               "for bit (the loss stays eager; pad micro-batches with --pad-to-multiple for few shapes)")->group(me);
  app.add_flag("--profile", o.profile,
               "--device cuda: time the model's sections (linears / attention / norms+elementwise, forward and "
               "backward; loss) and the optimizer step with CUDA events; at the end print their GPU ms per step over "
               "the steps after the first, and the rest of the step (host gaps, read-backs), also in the summary "
               "record (\"profile\"). Same results; a little host time per section")->group(me);

  cli::add_parsed(app, "--groups-per-process", "--groups-per-process", o.groups_per_process,
                  [](const std::string& f, const std::string& v) { return cli::parse_int<int>(f, v); },
                  "adapter groups per process (default 1); K = processes x V", "V")->group(di);
  app.add_option("--exchange-bucket-mb", o.exchange_bucket_mb,
                 "DWU methods over several processes: all-gather the factor deltas in buckets of consecutive layers "
                 "of at most this many MiB received (default 256; 0 = one all-gather per step). Same weights, bit "
                 "for bit; a smaller receive buffer")->group(di)->type_name("MIB");
  int nproc = 1;  // handled (and removed from the arguments) before parsing: train_launch.hpp
  app.add_option("--nproc-per-node", nproc, "start N processes of this host (one per GPU) under the MPI-free launcher "
                                            "(as hdpissa-run -n N; docs/distributed.md)")->group(di)->type_name("N");
  cli::add_parsed(app, "--comm", "--comm", o.comm, parse_choice<CommKind>,
                  "host communicator (auto: MPI when launched by mpirun with > 1 process and built with MPI, the "
                  "socket communicator under hdpissa-run / torchrun; mpi: also for mpirun -np 1)", "auto|single|mpi")->group(di);

  app.add_option("--lr,--learning-rate", o.lr, "peak learning rate (default 2e-5)")->group(op)->type_name("X");
  app.add_option("--weight-decay", o.weight_decay, "AdamW decoupled weight decay (default 0)")->group(op)->type_name("X");
  app.add_option("--warmup-ratio", o.warmup_ratio, "linear warmup fraction before cosine decay (default 0.03)")->group(op)->type_name("X");
  app.add_option("--grad-accum,--gradient-accumulation-steps", o.grad_accum, "micro-batches per group per step (default 1)")
      ->group(op)->type_name("N");
  app.add_option("--micro-batch,--per-device-train-batch-size", o.micro_batch, "sequences per micro-batch (default 1)")
      ->group(op)->type_name("N");
  app.add_option("--max-len,--max-seq-length", o.max_len, "truncate sequences to N tokens (default 512)")->group(op)->type_name("N");
  app.add_option("--pad-to-multiple", o.pad_to_multiple,
                 "pad each micro-batch to a multiple of N tokens, at most --max-len (default 1: its longest "
                 "example); fewer distinct shapes for the GPU")
      ->group(op)
      ->type_name("N");
  app.add_option("--epochs,--num-train-epochs", o.epochs, "epochs over each group's shard (default 1)")->group(op)->type_name("N");
  app.add_option("--max-steps", o.max_steps, "optimizer steps (overrides --epochs)")->group(op)->type_name("N");
  cli::add_parsed(app, "--seed", "--seed", o.seed,
                  [](const std::string& f, const std::string& v) { return std::uint64_t(cli::parse_int<long>(f, v, 0)); },
                  "data order / LoRA init seed (default 42)", "N")->group(op);

  app.add_option("--stop-after", o.stop_after, "stop after N steps of this invocation (state saved if --save-state)")
      ->group(rc)->type_name("N");
  app.add_option("--save-every,--save-steps", o.save_every, "save the state every N steps")->group(rc)->type_name("N");
  app.add_option("--eval-every,--eval-steps", o.eval_every, "held-out loss every N steps (default: before and after training)")
      ->group(rc)->type_name("N");
  app.add_option("--log-every,--logging-steps", o.log_every, "progress line every N steps (default 1)")->group(rc)->type_name("N");
  app.add_flag("--quiet,-q", o.quiet, "no progress lines")->group(rc);
  app.add_option("--threads", o.threads, "OpenMP/Eigen threads, 0 to 1024 (default: OMP_NUM_THREADS, else 1 for models "
                                         "narrower than 512, which run fastest so, else all cores)")->group(rc)->type_name("N");

  app.add_option("--max-loss", o.max_loss, "stop with an error when a step's loss exceeds X (before its update)")
      ->group(sa)->type_name("X");
  app.add_option("--loss-spike-factor", o.loss_spike_factor,
                 "stop with an error when the loss stays above K x its running median ...")->group(sa)->type_name("K");
  app.add_option("--loss-spike-steps", o.loss_spike_steps,
                 "... for N consecutive steps (default 3); either guard keeps the last good state (saved to --save-state)")
      ->group(sa)->type_name("N");
  cli::add_parsed(app, "--on-nonfinite", "--on-nonfinite", o.on_nonfinite, parse_choice<OnNonFinite>,
                  "a NaN/Inf gradient: stop with an error (default) or skip that step on every worker (the optimizer "
                  "state is left untouched)", "error|skip")->group(sa);

  app.add_option("--eval-data", o.eval_data, "held-out data for the loss")->group(ev)->type_name("FILE");
  app.add_option("--eval-examples", o.eval_examples, "first N held-out examples (default 64)")->group(ev)->type_name("N");
  app.add_option("--sample-prompt", o.sample_prompt, "greedy sample for this instruction before and after training")
      ->group(ev)->type_name("TEXT");
  app.add_option("--sample-max-new-tokens", o.sample_max_new_tokens, "(default 64)")->group(ev)->type_name("N");
  app.add_option("--eval-gsm8k", o.eval_gsm8k, "GSM8K-style accuracy after training (answer after \"The answer is: \" or "
                                               "\"#### \", commas removed, compared as numbers)")->group(ev)->type_name("FILE");
  app.add_option("--eval-gsm8k-n", o.eval_gsm8k_n, "problems to evaluate (default 50)")->group(ev)->type_name("N");
  app.add_option("--eval-max-new-tokens", o.eval_max_new_tokens, "generation budget per problem (default 256)")
      ->group(ev)->type_name("N");
  app.add_option("--eval-math", o.eval_math, "MATH accuracy after training (last \\boxed{}, Hendrycks normalisation; "
                                             "the first --eval-gsm8k-n problems)")->group(ev)->type_name("FILE");
  app.add_option("--eval-humaneval", o.eval_humaneval, "HumanEval pass@1 after training (sandboxed python3, "
                                                       "docs/evaluation.md)")->group(ev)->type_name("FILE");
  app.add_option("--eval-mbpp", o.eval_mbpp, "MBPP pass@1 after training (test split task_id 11-510)")
      ->group(ev)->type_name("FILE");
  app.add_option("--eval-records", o.eval_records, "write per-problem records and summaries of the --eval-* tasks here")
      ->group(ev)->type_name("DIR");
}

/// hdpissa-train's help text.
inline std::string train_usage() {
  TrainOptions o;
  CLI::App app{"", "hdpissa-train"};
  add_train_options(app, o);
  return app.help();
}

/// The command line's W policy when --w-precision is not given: bf16-sr for the methods whose W the
/// DWU updates (hdpissa, lora-dwu, pissa-dwu) under --device cuda --dtype bf16 — 2 bytes per
/// parameter, LoRA's memory; the fidelity table in docs/trainer.md found the same training and
/// held-out loss as fp32-master — and fp32-master otherwise (the exact fp32 paths). A TrainOptions
/// built in code keeps its member default (fp32-master) unless it calls this.
///
/// full keeps fp32-master as its default (a bf16 policy is opt-in): its update is not low-rank —
/// Adam moves every element of W by ~lr each step, which for lr ≪ |w|·2⁻⁸ is far below a bf16 ulp,
/// so bf16-sr turns every step into a full-rank random walk of ±ulp/2-scale rounding noise on all of
/// W (DWU's Δ is low-rank and its SR noise was measured harmless; full FT's has not been measured),
/// and fp32 masters are what the reference full fine-tuning uses. Ask for --w-precision bf16-sr or
/// bf16-compensated to fit a larger model (e.g. 7B full FT on one H200).
inline hdpissa::WPrecision default_w_precision(const TrainOptions& o) {
  const bool dwu = o.method == Method::Hdpissa || o.method == Method::LoraDwu || o.method == Method::PissaDwu;
  return dwu && o.device == Device::Cuda && o.dtype == ComputeDtype::Bf16 ? hdpissa::WPrecision::Bf16StochasticRounding
                                                                        : hdpissa::WPrecision::Fp32Master;
}

/// The row-count environment variable `name` in [lo, hi]: nullopt when unset or empty; otherwise the
/// value, or an error naming the variable, the range and what was found. The one parser of the GPU
/// engine's row-count switches (check_engine_env validates them with the command line; the engine
/// reads them with the same function when it sizes the loss).
inline std::optional<int> env_row_count(const char* name, long lo, long hi, const char* what = "a row count") {
  const char* e = std::getenv(name);
  if (!e || !*e) return std::nullopt;
  char* end = nullptr;
  const long v = std::strtol(e, &end, 10);
  if (end == e || *end != '\0' || v < lo || v > hi)
    throw LlamaError(cat(name, ": expected ", what, " in [", lo, ", ", hi, "], found '", e, "'"));
  return static_cast<int>(v);
}
/// HDPISSA_LOSS_CHUNK_ROWS: rows of full-vocabulary logits per loss chunk, [1, 65536].
inline std::optional<int> env_loss_chunk_rows() { return env_row_count("HDPISSA_LOSS_CHUNK_ROWS", 1, 65536); }
/// HDPISSA_LOSS_ROW_ALIGN: the loss GEMMs' row multiple, [1, 1024] (CudaLlama::set_loss_row_align).
inline std::optional<int> env_loss_row_align() { return env_row_count("HDPISSA_LOSS_ROW_ALIGN", 1, 1024); }

/// HDPISSA_STACKED_LINEARS: 1 (default, unset or empty) or 0. On: the training methods run a
/// layer's q|k|v and gate|up as stacked GEMMs where the model lays them out so (LinearHooks
/// backward_shared_summed, stack_linears); 0: one GEMM per member (measurements).
inline bool env_stacked_linears() {
  const char* e = std::getenv("HDPISSA_STACKED_LINEARS");
  if (!e || !*e || std::strcmp(e, "1") == 0) return true;
  if (std::strcmp(e, "0") == 0) return false;
  throw LlamaError(cat("HDPISSA_STACKED_LINEARS: expected 0 or 1, found '", e, "'"));
}

/// HDPISSA_ADAPTER_STREAM: 1 (default, unset or empty) or 0. On: the DWU methods on bf16 compute run
/// their adapter-gradient GEMMs on a second stream (AdapterSideStream); 0: on the model's stream.
inline bool env_adapter_stream() {
  const char* e = std::getenv("HDPISSA_ADAPTER_STREAM");
  if (!e || !*e || std::strcmp(e, "1") == 0) return true;
  if (std::strcmp(e, "0") == 0) return false;
  throw LlamaError(cat("HDPISSA_ADAPTER_STREAM: expected 0 or 1, found '", e, "'"));
}

/// HDPISSA_DWU_OVERLAP: 1 (default, unset or empty) or 0. On: HD-PiSSA and the DWU ablations on the
/// GPU with a bf16 W storage (--w-precision bf16-sr / bf16-compensated) leave each step's per-layer
/// W updates running on side streams (UpdateOptions::deferred_apply_join) while the next micro-
/// batch's forward starts; each target's forward waits for its own layer's update (docs/trainer.md
/// "The DWU step beside the next forward"); with --compute fp8 each target's FP8 copy is then
/// quantised at its first forward after the step (not with --cuda-graphs, whose replays would not
/// repeat that host decision: there the step joins); with --cuda-graphs the captured forward holds
/// one external event wait per target. The same bits either way; 0: the joined step (measurements).
inline bool env_dwu_overlap() {
  const char* e = std::getenv("HDPISSA_DWU_OVERLAP");
  if (!e || !*e || std::strcmp(e, "1") == 0) return true;
  if (std::strcmp(e, "0") == 0) return false;
  throw LlamaError(cat("HDPISSA_DWU_OVERLAP: expected 0 or 1, found '", e, "'"));
}

/// HDPISSA_FLASH_BAND: the flash attention kernels' block order (flash::TileOrder, docs/trainer.md):
/// (b, h) heads per band of heavy-tiles-first dispatch, a count in [1, 2^30] or "all"; nullopt when
/// unset or empty (the kernels' default band). 1 is the order before session 27. Measurements only:
/// every order gives the same bits.
inline std::optional<int> env_flash_band() {
  const char* e = std::getenv("HDPISSA_FLASH_BAND");
  if (e && std::strcmp(e, "all") == 0) return 1 << 30;
  return env_row_count("HDPISSA_FLASH_BAND", 1, 1 << 30, "a head count or 'all'");
}

/// HDPISSA_ADAPTER_STREAM_PRIORITY: default | high (unset or empty: high, session 35): the
/// scheduling priority of the training methods' second stream (the methods call this again when
/// they create their AdapterSideStream). The same bits either way.
inline hdpissa::StreamPriority env_adapter_stream_priority() {
  return hdpissa::stream_priority_from_env("HDPISSA_ADAPTER_STREAM_PRIORITY", hdpissa::StreamPriority::High);
}

/// The GPU engine's measurement switches, checked with the command line (before any model is
/// loaded): a value the engine would not understand is an error naming the variable, not a silent
/// default. HDPISSA_FUSED_ADAPTER_GRADS: 0 or 1 (llama/cuda/adapter_grads.cuh); HDPISSA_LOSS_CHUNK_ROWS:
/// a row count in [1, 65536]; HDPISSA_LOSS_ROW_ALIGN: [1, 1024] (the engine reads both again, with
/// env_row_count, when it sizes the loss); the two stream priorities: default or high
/// (HDPISSA_CUDA_DWU_PRIORITY is the CUDA backend's, read again by CudaBackendOptions::resolved).
inline void check_engine_env() {
  if (const char* e = std::getenv("HDPISSA_FUSED_ADAPTER_GRADS"); e && *e && std::strcmp(e, "0") != 0 &&
                                                                  std::strcmp(e, "1") != 0)
    throw LlamaError(cat("HDPISSA_FUSED_ADAPTER_GRADS: expected 0 or 1, found '", e, "'"));
  (void)env_stacked_linears();
  (void)env_adapter_stream();
  (void)env_dwu_overlap();
  (void)env_loss_chunk_rows();
  (void)env_loss_row_align();
  (void)env_flash_band();
  (void)env_adapter_stream_priority();
  (void)hdpissa::stream_priority_from_env("HDPISSA_CUDA_DWU_PRIORITY");
}

/// Parses hdpissa-train's arguments (CLI11; llama/cli.hpp has the conventions). `help` is set
/// (and nothing validated) for --help or --version, whose text goes to `out`. Unknown options
/// and malformed values throw cli::UsageError naming the flag; bad combinations LlamaError.
inline TrainOptions parse_train_args(const std::vector<std::string>& args, bool* help = nullptr,
                                     std::ostream& out = std::cout) {
  TrainOptions o;
  CLI::App app{"", "hdpissa-train"};
  CLI::Option* attention = nullptr;
  CLI::Option* w_precision = nullptr;
  add_train_options(app, o, &attention, &w_precision);
  if (help) *help = false;
  if (cli::parse(app, args, out) != cli::Outcome::Run) {
    if (help) *help = true;
    return o;
  }
  // The environment selects a default only where no flag was given (and --help says so).
  if (const char* env = std::getenv("HDPISSA_LLAMA_ATTENTION");
      env && *env && attention->count() == 0 && o.device == Device::Cuda)
    o.attention = parse_choice<AttentionKind>("HDPISSA_LLAMA_ATTENTION", env);
  if (w_precision->count() == 0) o.w_precision = default_w_precision(o);
  check_engine_env();
  if (o.tokenizer.empty() && !o.model.empty() && std::filesystem::is_directory(o.model))
    o.tokenizer = o.model;  // detect_tokenizer picks tokenizer.model / tokenizer.json / original/tokenizer.model
  o.validate();
  o.targets = canonical_targets(o.targets);  // valid (validate): one spelling per set, for states and resume
  return o;
}

/// The settings that determine a run's trajectory: a resumed run must match all of them.
/// `processes` is the number of workers (K = processes × groups_per_process). The trainer adds
/// fingerprints of the base model and of the tokenized data (paths may move; contents may not).
inline nlohmann::json trajectory_config(const TrainOptions& o, int processes) {
  nlohmann::json j = {{"method", name_of(o.method)},
          {"rank", o.rank},
          {"alpha", o.effective_alpha()},
          {"scaling", name_of(o.scaling)},
          {"targets", canonical_targets(o.targets)},
          {"aggregation", name_of(o.aggregation)},
          {"mute_gamma", o.mute_gamma},
          {"processes", processes},
          {"groups_per_process", o.groups_per_process},
          {"lr", o.lr},
          {"weight_decay", o.weight_decay},
          {"warmup_ratio", o.warmup_ratio},
          {"grad_accum", o.grad_accum},
          {"micro_batch", o.micro_batch},
          {"max_len", o.max_len},
          {"pad_to_multiple", o.pad_to_multiple},
          {"epochs", o.epochs},
          {"max_steps", o.max_steps},
          {"max_examples", o.max_examples},
          {"seed", o.seed},
          {"w_precision", name_of(o.w_precision)}};
  // the SVD shapes the initial adapters of hdpissa / pissa / pissa-dwu only: other methods' states
  // do not record it, and a resume ignores what an older state of theirs recorded
  if (o.uses_svd()) j["svd"] = name_of(o.svd);
  // bf16-sr's rounding follows the SR stream's definition (hdpissa::kSrStreamVersion)
  if (o.w_precision == hdpissa::WPrecision::Bf16StochasticRounding) j["sr_stream"] = hdpissa::kSrStreamVersion;
  return j;
}

}  // namespace hdpissa::llama
