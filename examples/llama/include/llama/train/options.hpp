#pragma once
/// \file options.hpp
/// TrainOptions: every setting of hdpissa-train, its command-line parser (`parse_train_args`), the
/// usage text, and the subset of settings that fixes a run's trajectory (`trajectory_config`),
/// which a resumed run must match field by field.

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "hdpissa/adapter/muted_linear.hpp"
#include "hdpissa/core/w_precision.hpp"
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
  hdpissa::WPrecision w_precision = hdpissa::WPrecision::Fp32Master;  ///< --w-precision (W-updating methods)
  Device device = Device::Cpu;     ///< llama/train/engine.hpp
  AttentionKind attention = AttentionKind::Auto;  ///< the GPU model's attention (--device cuda)
  // ---- distribution
  CommKind comm = CommKind::Auto;
  int groups_per_process = 1;      ///< V; K = processes × V
  // ---- optimisation
  double lr = 2e-5;
  double weight_decay = 0;
  double warmup_ratio = 0.03;
  int grad_accum = 1;
  int micro_batch = 1;
  int max_len = 512;
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
  /// Whether the method trains an active adapter data-parallel (LoRA / PiSSA).
  [[nodiscard]] bool uses_adapter() const { return method == Method::Lora || method == Method::Pissa; }
  /// Every field as JSON (echoed at start).
  [[nodiscard]] nlohmann::json to_json() const;
  /// Checks value ranges and combinations; throws LlamaError naming the flag.
  void validate() const;
};

/// The usage text of hdpissa-train.
inline const char* train_usage() {
  return "usage: hdpissa-train --model PATH --data FILE [options]\n"
         "\n"
         "Fine-tunes a LLaMA-family model on the CPU (fp32) with HD-PiSSA or a baseline.\n"
         "\n"
         "inputs / outputs\n"
         "  --model PATH              HF directory (config.json + model.safetensors) or llama2.c .bin\n"
         "  --tokenizer PATH          SentencePiece .model, tokenizer.json, tiktoken tokenizer.model or a\n"
         "                            directory holding one (default: the model directory)\n"
         "  --data FILE               training data, JSON array or JSONL (instruction/output,\n"
         "                            query/response, question/answer, prompt/completion)\n"
         "  --data-format F           auto (default: from the first record's keys) | alpaca | chat | text |\n"
         "                            tokens: alpaca = instruction/[input]/response fields, loss on the response;\n"
         "                            chat = messages [{role, content}] or conversations [{from, value}], loss\n"
         "                            on assistant turns; text = {text}, loss on everything; tokens =\n"
         "                            {input_ids, [labels, -100 = no loss]}, pre-tokenized\n"
         "  --chat-template T         auto (tokenizer_config.json's, if recognisable) | llama3 | mistral |\n"
         "                            chatml | alpaca\n"
         "  --prompt-field NAME       alpaca: the instruction field (default: detected)\n"
         "  --input-field NAME        alpaca: the optional input field (default: detected)\n"
         "  --response-field NAME     alpaca: the response field (default: detected)\n"
         "  --allow-unused            warn instead of failing on checkpoint tensors the model does not use\n"
         "                            and unsupported config fields (the model then differs from the checkpoint)\n"
         "  --max-examples N          use only the first N training examples\n"
         "  --output DIR              write the merged model (HF safetensors + config.json + tokenizer files)\n"
         "                            here at the end; lora / pissa also write a PEFT adapter to DIR/adapter\n"
         "  --output-dtype D          auto (default: the input checkpoint's dtype) | f32 | bf16 | f16\n"
         "  --max-shard-size SIZE     shard the merged model above SIZE (bytes, or 500MB, 5GB; default 5GB),\n"
         "                            with model.safetensors.index.json as Hugging Face does\n"
         "  --adapter-output DIR      PEFT adapter directory (adapter_config.json + adapter_model.safetensors;\n"
         "                            default DIR/adapter of --output); pissa: DIR = the rank-2r LoRA of the\n"
         "                            update relative to the original base, DIR/pissa = the PiSSA adapter\n"
         "                            relative to the residual base in DIR/pissa/residual_model\n"
         "  --export-lora-rank R      hdpissa, *-dwu, full: also write W_final - W_init as a rank-R PEFT LoRA\n"
         "                            (truncated SVD per layer; kept share of |dW|^2 per layer in the log and\n"
         "                            in lora_export.json beside the adapter)\n"
         "  --export-lora-energy E    as --export-lora-rank, with the smallest rank per layer keeping a share\n"
         "                            E in (0, 1] of |dW|^2 (PEFT rank_pattern)\n"
         "  --save-state DIR          write a resumable training state here (at the end, at --stop-after,\n"
         "                            and every --save-every steps)\n"
         "  --resume DIR              continue a run from its saved state (the config must match)\n"
         "  --metrics FILE            JSONL: one object per step plus eval records\n"
         "method\n"
         "  --method M                hdpissa (default) | lora | pissa | full | lora-dwu | pissa-dwu\n"
         "  --rank R                  adapter rank per group (default 16)\n"
         "  --alpha A                 adapter alpha >= 1 (default A = R); scaling = A / R (--scaling)\n"
         "  --scaling peft|reference  peft (default): A / R as a float, as PEFT; reference: A // R in integer\n"
         "                            division, as the authors' code (fidelity runs; needs A >= R)\n"
         "  --targets LIST            target linears (default q,k,v,o,gate,up,down)\n"
         "  --svd exact|randomized    SVD of the orthogonal / PiSSA initialisation (default exact)\n"
         "  --aggregation sum|mean    DWU aggregation over the K groups (default sum, the reference)\n"
         "  --mute-gamma G            DWU methods: the paper's literal x(W + G a B A)^T forward instead of\n"
         "                            the exact mute (fidelity experiments; default: exact mute)\n"
         "  --device cpu|cuda         where the model and the method run (default cpu; cuda needs a CUDA build\n"
         "                            and a GPU; --groups-per-process groups per GPU; under mpirun one process\n"
         "                            per GPU (GPU = rank on its host mod GPUs), NCCL between them, at most\n"
         "                            one process per GPU of a host)\n"
         "  --dtype fp32|bf16         compute dtype (default fp32 = exact fp32 everywhere; bf16 = bf16 compute\n"
         "                            copies of W and the factors, fp32 masters, Adam and gradient sums:\n"
         "                            --device cuda only)\n"
         "  --w-precision P           how hdpissa / lora-dwu / pissa-dwu store and update W: fp32-master\n"
         "                            (default: fp32 W, plus a bf16 compute copy under --dtype bf16),\n"
         "                            bf16-compensated (bf16 W + bf16 Kahan compensation) or bf16-sr (bf16 W,\n"
         "                            stochastic rounding seeded by --seed, step and element); see docs/trainer.md\n"
         "  --attention auto|flash|gemm  the GPU model's attention (--device cuda): flash = fused kernels\n"
         "                            (bf16, head_dim 64 or 128), gemm = materialised scores through cuBLAS;\n"
         "                            auto (default) = flash where it runs; without this flag the environment\n"
         "                            variable HDPISSA_LLAMA_ATTENTION=auto|flash|gemm sets the default\n"
         "distribution\n"
         "  --groups-per-process V    adapter groups per process (default 1); K = processes x V\n"
         "  --comm auto|single|mpi    communicator (auto: MPI when launched by mpirun with > 1 process and\n"
         "                            built with MPI; mpi: also for mpirun -np 1)\n"
         "optimisation\n"
         "  --lr X                    peak learning rate (default 2e-5)\n"
         "  --weight-decay X          AdamW decoupled weight decay (default 0)\n"
         "  --warmup-ratio X          linear warmup fraction before cosine decay (default 0.03)\n"
         "  --grad-accum N            micro-batches per group per step (default 1)\n"
         "  --micro-batch N           sequences per micro-batch (default 1)\n"
         "  --max-len N               truncate sequences to N tokens (default 512)\n"
         "  --epochs N                epochs over each group's shard (default 1)\n"
         "  --max-steps N             optimizer steps (overrides --epochs)\n"
         "  --seed N                  data order / LoRA init seed (default 42)\n"
         "run control\n"
         "  --stop-after N            stop after N steps of this invocation (state saved if --save-state)\n"
         "  --save-every N            save the state every N steps\n"
         "  --eval-every N            held-out loss every N steps (default: before and after training)\n"
         "  --log-every N             progress line every N steps (default 1)\n"
         "  --quiet                   no progress lines\n"
         "  --threads N               OpenMP/Eigen threads (default: OMP_NUM_THREADS or all cores; tiny\n"
         "                            models such as stories260K run fastest with 1)\n"
         "safety (docs/trainer.md, \"Checkpoints\")\n"
         "  SIGINT, SIGTERM, SIGUSR1  finish the current step, save the state (--save-state), flush the\n"
         "                            metrics and exit with 128 + signal; a second SIGINT exits at once\n"
         "  checkpoints               a state directory has a manifest.json (size + xxHash64 of every file,\n"
         "                            run id, step) that --resume verifies; --resume DIR takes the newest\n"
         "                            complete state among DIR, DIR.tmp-*, DIR.old-*; DIR.lock keeps a\n"
         "                            second trainer out; a resumed run drops --metrics records after its\n"
         "                            step; outputs are checked (writable, distinct, free space) up front\n"
         "  --max-loss X              stop with an error when a step's loss exceeds X (before its update)\n"
         "  --loss-spike-factor K     stop with an error when the loss stays above K x its running median\n"
         "  --loss-spike-steps N      ... for N consecutive steps (default 3); either guard keeps the last\n"
         "                            good state (saved to --save-state)\n"
         "  --on-nonfinite error|skip a NaN/Inf gradient: stop with an error (default) or skip that step\n"
         "                            on every worker (the optimizer state is left untouched)\n"
         "evaluation\n"
         "  --eval-data FILE          held-out data for the loss\n"
         "  --eval-examples N         first N held-out examples (default 64)\n"
         "  --sample-prompt TEXT      greedy sample for this instruction before and after training\n"
         "  --sample-max-new-tokens N (default 64)\n"
         "  --eval-gsm8k FILE         GSM8K-style accuracy after training (answer after \"The answer is: \"\n"
         "                            or \"#### \", commas removed, compared as numbers)\n"
         "  --eval-gsm8k-n N          problems to evaluate (default 50)\n"
         "  --eval-max-new-tokens N   generation budget per problem (default 256)\n"
         "  --help                    this text\n"
         "environment (each only a default: a flag, where there is one, wins)\n"
         "  HDPISSA_LLAMA_ATTENTION   auto|flash|gemm: --attention's default (--device cuda)\n"
         "  HDPISSA_CUDA_FUSED_DWU    0 turns off the fused DWU / multi-tensor Adam kernels (measurements only)\n"
         "  HDPISSA_CUDA_GEMM_TUNING  off|exact|fastest: the fp32 GEMM algorithm policy (default exact = bit-identical)\n"
         "  HDPISSA_CUDA_DWU_GEMM     auto|3xtf32|cublas: the Direct Weight Update's GEMM on the GPU\n"
         "  HDPISSA_COMM_TIMEOUT_S    collective / rendezvous timeout of the multi-process paths (seconds)\n"
         "  RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (torchrun, hdpissa-run) or SLURM_PROCID,\n"
         "  SLURM_NTASKS, SLURM_LOCALID (srun): one process of a multi-process run (docs/distributed.md)\n"
         "\n"
         "example (HD-PiSSA, K = 4 virtual groups, r = 4, on stories260K):\n"
         "  hdpissa-train --model $HDPISSA_DATA/stories260K-hf --data $HDPISSA_DATA/gsm8k/train.jsonl \\\n"
         "      --method hdpissa --groups-per-process 4 --rank 4 --lr 2e-3 --max-len 256 --max-steps 40 \\\n"
         "      --eval-data $HDPISSA_DATA/gsm8k/test.jsonl --output runs/demo\n"
         "several GPUs (one process each, NCCL; K = 2 x 4 = 8 groups):\n"
         "  mpirun -np 2 -x NCCL_NVLS_ENABLE=0 hdpissa-train --device cuda --groups-per-process 4 ...\n";
}

namespace detail {

inline long parse_long(const std::string& flag, const std::string& v) {
  std::size_t used = 0;
  long x = 0;
  try {
    x = std::stol(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || v.empty()) throw LlamaError(cat(flag, " expects an integer, found '", v, "'"));
  return x;
}
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
          {"w_precision", name_of(w_precision)},
          {"device", name_of(device)},
          {"attention", name_of(attention)},
          {"comm", name_of(comm)},
          {"groups_per_process", groups_per_process},
          {"lr", lr},
          {"weight_decay", weight_decay},
          {"warmup_ratio", warmup_ratio},
          {"grad_accum", grad_accum},
          {"micro_batch", micro_batch},
          {"max_len", max_len},
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
  need(w_precision == hdpissa::WPrecision::Fp32Master || method == Method::Hdpissa || method == Method::LoraDwu ||
           method == Method::PissaDwu,
       cat("--w-precision ", name_of(w_precision), ": applies to the methods whose W the Direct Weight Update changes "
           "(hdpissa, lora-dwu, pissa-dwu); lora / pissa keep a frozen W (bf16-only under --dtype bf16) and full "
           "fine-tuning's bf16 W update is not implemented"));
  need(w_precision == hdpissa::WPrecision::Fp32Master || device == Device::Cpu,
       cat("--w-precision ", name_of(w_precision), ": the GPU apply kernel of the bf16 W policies is not implemented "
           "yet; the CPU trainer runs them (bf16 values in fp32 tensors: the bit-exact reference of the rule)"));
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
  need(groups_per_process >= 1, cat("--groups-per-process: expected >= 1, found ", groups_per_process));
  need(lr > 0, cat("--lr: expected > 0, found ", lr));
  need(weight_decay >= 0, cat("--weight-decay: expected >= 0, found ", weight_decay));
  need(warmup_ratio >= 0 && warmup_ratio <= 1, cat("--warmup-ratio: expected [0, 1], found ", warmup_ratio));
  need(grad_accum >= 1, cat("--grad-accum: expected >= 1, found ", grad_accum));
  need(micro_batch >= 1, cat("--micro-batch: expected >= 1, found ", micro_batch));
  need(max_len >= 2, cat("--max-len: expected >= 2, found ", max_len));
  need(epochs >= 1, cat("--epochs: expected >= 1, found ", epochs));
  need(max_steps == -1 || max_steps >= 1, cat("--max-steps: expected >= 1, found ", max_steps));
  need(max_examples == -1 || max_examples >= 1, cat("--max-examples: expected >= 1, found ", max_examples));
  need(stop_after == -1 || stop_after >= 1, cat("--stop-after: expected >= 1, found ", stop_after));
  need(save_every >= 0, cat("--save-every: expected >= 0, found ", save_every));
  need(save_every == 0 || !save_state.empty(), "--save-every needs --save-state DIR");
  need(eval_every >= 0, cat("--eval-every: expected >= 0, found ", eval_every));
  need(threads >= 0, cat("--threads: expected >= 0, found ", threads));
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

/// Parses hdpissa-train's arguments. `help` is set (and nothing validated) for --help; unknown
/// flags and malformed values throw LlamaError naming the flag.
inline TrainOptions parse_train_args(const std::vector<std::string>& args, bool* help = nullptr) {
  TrainOptions o;
  bool attention_given = false;
  if (help) *help = false;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& f = args[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= args.size()) throw LlamaError(cat("option ", f, " expects a value, found none"));
      return args[++i];
    };
    auto integer = [&]() { return detail::parse_long(f, value()); };
    auto number = [&]() { return detail::parse_double(f, value()); };
    if (f == "--help" || f == "-h") {
      if (help) *help = true;
      return o;
    }
    else if (f == "--model") o.model = value();
    else if (f == "--tokenizer") o.tokenizer = value();
    else if (o.data_format.parse_flag(f, value)) {}
    else if (f == "--allow-unused") o.allow_unused = true;
    else if (f == "--data") o.data = value();
    else if (f == "--max-examples") o.max_examples = integer();
    else if (f == "--output") o.output = value();
    else if (f == "--output-dtype") o.output_dtype = parse_choice<OutputDtype>(f, value());
    else if (f == "--max-shard-size") o.max_shard_bytes = detail::parse_size(f, value());
    else if (f == "--adapter-output") o.adapter_output = value();
    else if (f == "--export-lora-rank") o.export_lora_rank = int(integer());
    else if (f == "--export-lora-energy") o.export_lora_energy = number();
    else if (f == "--scaling") o.scaling = parse_choice<ScalingKind>(f, value());
    else if (f == "--save-state") o.save_state = value();
    else if (f == "--resume") o.resume = value();
    else if (f == "--metrics") o.metrics = value();
    else if (f == "--method") o.method = parse_choice<Method>(f, value());
    else if (f == "--rank") o.rank = int(integer());
    else if (f == "--alpha") o.alpha = int(integer());
    else if (f == "--targets") o.targets = value();
    else if (f == "--svd") o.svd = parse_choice<SvdKind>(f, value());
    else if (f == "--aggregation") o.aggregation = parse_choice<Aggregation>(f, value());
    else if (f == "--mute-gamma") o.mute_gamma = number();
    else if (f == "--dtype") o.dtype = parse_choice<ComputeDtype>(f, value());
    else if (f == "--w-precision") o.w_precision = parse_choice<hdpissa::WPrecision>(f, value());
    else if (f == "--attention") {
      o.attention = parse_choice<AttentionKind>(f, value());
      attention_given = true;
    }
    else if (f == "--device") o.device = parse_choice<Device>(f, value());
    else if (f == "--comm") o.comm = parse_choice<CommKind>(f, value());
    else if (f == "--groups-per-process") o.groups_per_process = int(integer());
    else if (f == "--lr") o.lr = number();
    else if (f == "--weight-decay") o.weight_decay = number();
    else if (f == "--warmup-ratio") o.warmup_ratio = number();
    else if (f == "--grad-accum") o.grad_accum = int(integer());
    else if (f == "--micro-batch") o.micro_batch = int(integer());
    else if (f == "--max-len") o.max_len = int(integer());
    else if (f == "--epochs") o.epochs = int(integer());
    else if (f == "--max-steps") o.max_steps = integer();
    else if (f == "--seed") {
      const long s = integer();
      if (s < 0) throw LlamaError(cat("--seed: expected >= 0, found ", s));
      o.seed = std::uint64_t(s);
    }
    else if (f == "--stop-after") o.stop_after = integer();
    else if (f == "--save-every") o.save_every = integer();
    else if (f == "--eval-every") o.eval_every = integer();
    else if (f == "--log-every") o.log_every = int(integer());
    else if (f == "--quiet") o.quiet = true;
    else if (f == "--threads") o.threads = int(integer());
    else if (f == "--eval-data") o.eval_data = value();
    else if (f == "--eval-examples") o.eval_examples = int(integer());
    else if (f == "--sample-prompt") o.sample_prompt = value();
    else if (f == "--sample-max-new-tokens") o.sample_max_new_tokens = int(integer());
    else if (f == "--eval-gsm8k") o.eval_gsm8k = value();
    else if (f == "--eval-gsm8k-n") o.eval_gsm8k_n = int(integer());
    else if (f == "--eval-max-new-tokens") o.eval_max_new_tokens = int(integer());
    else if (f == "--max-loss") o.max_loss = number();
    else if (f == "--loss-spike-factor") o.loss_spike_factor = number();
    else if (f == "--loss-spike-steps") o.loss_spike_steps = int(integer());
    else if (f == "--on-nonfinite") o.on_nonfinite = parse_choice<OnNonFinite>(f, value());
    else throw LlamaError(cat("unknown option '", f, "' (see --help)"));
  }
  // The environment selects a default only where no flag was given (and --help says so).
  if (const char* env = std::getenv("HDPISSA_LLAMA_ATTENTION"); env && *env && !attention_given && o.device == Device::Cuda)
    o.attention = parse_choice<AttentionKind>("HDPISSA_LLAMA_ATTENTION", env);
  if (o.tokenizer.empty() && !o.model.empty() && std::filesystem::is_directory(o.model))
    o.tokenizer = o.model;  // detect_tokenizer picks tokenizer.model / tokenizer.json / original/tokenizer.model
  o.validate();
  return o;
}

/// The settings that determine a run's trajectory: a resumed run must match all of them.
/// `processes` is the number of workers (K = processes × groups_per_process). The trainer adds
/// fingerprints of the base model and of the tokenized data (paths may move; contents may not).
inline nlohmann::json trajectory_config(const TrainOptions& o, int processes) {
  return {{"method", name_of(o.method)},
          {"rank", o.rank},
          {"alpha", o.effective_alpha()},
          {"scaling", name_of(o.scaling)},
          {"targets", o.targets},
          {"svd", name_of(o.svd)},
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
          {"epochs", o.epochs},
          {"max_steps", o.max_steps},
          {"max_examples", o.max_examples},
          {"seed", o.seed}};
}

}  // namespace hdpissa::llama
