// hdpissa-eval: held-out loss of a LLaMA checkpoint on instruction data, computed by our CPU model,
// plus the exact tokenized batches it used, so that another implementation (transformers,
// tests/reference/hf_load_check.py; PEFT, bench/e2e/peft_throughput.py) can run on the same ids.
//
//   hdpissa-eval --model DIR --tokenizer tok.model --data FILE.jsonl [--max-len 512]
//                [--eval-examples 32] [--micro-batch 4] [--json OUT.json] [--tokens-only]
//
// The pipeline is the trainer's evaluation path (docs/trainer.md): the first --eval-examples records
// in file order, Alpaca template, BOS + prompt + response + "\n" + EOS, prompt labels -100,
// truncated to --max-len, all-masked examples dropped, right-padded micro-batches (pad id 0, label
// -100). The loss is the token mean over all batches (Σ per-token cross-entropy / Σ target tokens).

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "llama/checkpoint.hpp"
#include "llama/data.hpp"
#include "llama/data_formats.hpp"
#include "llama/eval/evaluators.hpp"
#include "llama/linear_hooks.hpp"
#include "llama/model.hpp"
#include "llama/tokenizer.hpp"

namespace {

using hdpissa::llama::LlamaError;

const char* kUsage =
    "usage: hdpissa-eval --model DIR --data FILE [options]\n"
    "\n"
    "Held-out loss of a LLaMA checkpoint (our CPU model) and the exact batches it was computed on.\n"
    "\n"
    "  --model PATH          HF directory (config.json + model.safetensors[.index.json]) or llama2.c .bin\n"
    "  --tokenizer PATH      SentencePiece .model, tokenizer.json, tiktoken file or a directory (default: --model)\n"
    "  --allow-unused        warn instead of failing on unused checkpoint tensors / unsupported config fields\n"
    "  --data-format F, --chat-template T, --prompt-field N, --input-field N, --response-field N\n"
    "                        how to read --data, as in hdpissa-train --help (default: auto)\n"
    "  --data FILE           instruction data, JSON array or JSONL (instruction/output, query/response,\n"
    "                        question/answer, ...), Alpaca template\n"
    "  --max-len N           truncate tokenized examples to N tokens (default 512)\n"
    "  --eval-examples N     use the first N records of FILE, in file order (default 32)\n"
    "  --micro-batch N       sequences per right-padded batch (default 4)\n"
    "  --json FILE           write {loss, loss_sum, n_tokens, batches: [{input_ids, labels, lengths}], ...}\n"
    "  --tokens-only         tokenize and write the batches only: no model is loaded, no loss computed\n"
    "                        (--model is then optional; used to feed identical ids to other frameworks)\n"
    "  --threads N           OpenMP threads (default: OMP_NUM_THREADS or all)\n"
    "\n"
    "generation tasks (docs/evaluation.md): greedy decoding, scored per problem\n"
    "  --task T              loss (default: the held-out loss above), gsm8k, math, humaneval or mbpp\n"
    "  --data FILE           the task's JSONL (gsm8k/test.jsonl, math500/test.jsonl or math_test_5000/MATH_test.jsonl,\n"
    "                        humaneval/HumanEval.jsonl.gz, mbpp/mbpp.jsonl: the test split task_id 11-510 is used)\n"
    "  --max-new-tokens N    generation budget per problem (default 512; capped by the model's context)\n"
    "  --limit N             the first N problems in file order (default: all)\n"
    "  --batch N             prompts per generator call (default 1; the CPU decoder loops over them)\n"
    "  --output DIR          writes DIR/<task>.jsonl (one record per problem) and DIR/<task>_summary.json\n"
    "                        (default: eval-<task>)\n"
    "  --gsm8k-last-number   GSM8K: fall back to the last number when no answer marker is found (off)\n"
    "  --timeout S           code tasks: wall-clock seconds per program (default 10)\n"
    "  --help                this text\n"
    "\n"
    "example: hdpissa-eval --model runs/demo --tokenizer $HDPISSA_DATA/stories260K/tok512.model \\\n"
    "             --data $HDPISSA_DATA/gsm8k/test.jsonl --max-len 256 --eval-examples 32 --json eval.json\n";

struct Args {
  std::string model, tokenizer, data, json;
  int max_len = 512, eval_examples = 32, micro_batch = 4, threads = 0;
  bool tokens_only = false, help = false, allow_unused = false;
  hdpissa::llama::DataFormatOptions data_format;
  // ---- generation tasks (--task ...): begin
  std::string task = "loss", output;
  int max_new_tokens = 512, batch = 1;
  long limit = 0;
  double timeout = 10;
  bool gsm8k_last_number = false;
  // ---- generation tasks: end
};

int positive(const std::string& flag, const std::string& v, int min = 1) {
  std::size_t used = 0;
  long x = 0;
  try {
    x = std::stol(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || x < min || x > 1'000'000'000)
    throw LlamaError(flag + " expects an integer >= " + std::to_string(min) + ", found '" + v + "'");
  return static_cast<int>(x);
}

Args parse(int argc, char** argv) {
  Args a;
  auto value = [&](int& i, const std::string& flag) -> std::string {
    if (i + 1 >= argc) throw LlamaError("option " + flag + " expects a value, found none");
    return argv[++i];
  };
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "--help" || f == "-h") {
      a.help = true;
      return a;
    } else if (f == "--model") a.model = value(i, f);
    else if (f == "--tokenizer") a.tokenizer = value(i, f);
    else if (f == "--data") a.data = value(i, f);
    else if (f == "--json") a.json = value(i, f);
    else if (f == "--max-len") a.max_len = positive(f, value(i, f), 2);
    else if (f == "--eval-examples") a.eval_examples = positive(f, value(i, f));
    else if (f == "--micro-batch") a.micro_batch = positive(f, value(i, f));
    else if (f == "--threads") a.threads = positive(f, value(i, f));
    else if (f == "--tokens-only") a.tokens_only = true;
    else if (f == "--allow-unused") a.allow_unused = true;
    else if (a.data_format.parse_flag(f, [&] { return value(i, f); })) {}
    // ---- generation tasks (--task ...): begin
    else if (f == "--task") a.task = value(i, f);
    else if (f == "--output") a.output = value(i, f);
    else if (f == "--max-new-tokens") a.max_new_tokens = positive(f, value(i, f));
    else if (f == "--limit") a.limit = positive(f, value(i, f));
    else if (f == "--batch") a.batch = positive(f, value(i, f));
    else if (f == "--timeout") a.timeout = positive(f, value(i, f));
    else if (f == "--gsm8k-last-number") a.gsm8k_last_number = true;
    // ---- generation tasks: end
    else throw LlamaError("unknown option '" + f + "' (see --help)");
  }
  if (a.task != "loss") {
    hdpissa::llama::eval::parse_task(a.task);  // throws on an unknown task
    if (a.tokens_only) throw LlamaError("--tokens-only applies to --task loss only");
    if (a.output.empty()) a.output = "eval-" + a.task;
  }
  if (a.model.empty() && !a.tokens_only) throw LlamaError("missing --model (see --help)");
  if (a.data.empty()) throw LlamaError("missing --data (see --help)");
  a.data_format.validate();
  if (a.tokenizer.empty()) {
    if (!a.model.empty() && std::filesystem::is_directory(a.model)) a.tokenizer = a.model;  // detect_tokenizer
    else throw LlamaError("missing --tokenizer (see --help): '" + a.model + "' is not a directory holding a tokenizer");
  }
  return a;
}

/// --task gsm8k|math|humaneval|mbpp: every input path is checked before the model is loaded.
int run_task(const Args& args) {
  namespace ev = hdpissa::llama::eval;
  using namespace hdpissa::llama;
  const ev::Task task = ev::parse_task(args.task);
  const std::pair<const char*, std::string> inputs[] = {
      {"--model", args.model}, {"--tokenizer", args.tokenizer}, {"--data", args.data}};
  for (const auto& [flag, path] : inputs)
    if (!std::filesystem::exists(path)) throw LlamaError(cat(flag, ": no such file or directory: '", path, "'"));
  if (!std::filesystem::is_regular_file(args.data))
    throw LlamaError(cat("--data: expected a file, found a directory or special file: '", args.data, "'"));
  if (std::filesystem::exists(args.output) && !std::filesystem::is_directory(args.output))
    throw LlamaError(cat("--output: expected a directory, found a file: '", args.output, "'"));
  (void)ev::load_task(task, args.data);  // parse errors before the model load
  const ModelWeights w = load_checkpoint(args.model, LoadOptions{args.allow_unused, {}});
  const Tokenizer tok(args.tokenizer);
  if (tok.vocab_size() > w.config.vocab_size)
    throw LlamaError(cat(args.tokenizer, ": the tokenizer has ", tok.vocab_size(),
                         " pieces but the model's vocab_size is ", w.config.vocab_size));
  ev::EvalOptions o;
  o.max_new_tokens = args.max_new_tokens;
  o.limit = args.limit;
  o.batch_size = args.batch;
  o.gsm8k_last_number_fallback = args.gsm8k_last_number;
  o.sandbox.wall_seconds = args.timeout;
  o.sandbox.cpu_seconds = static_cast<long>(args.timeout) + 1;
  o.progress = ev::stderr_progress("hdpissa-eval", task);
  const ev::EvalSummary s = ev::evaluate_to_dir(task, args.data, ev::cpu_greedy_generator(w), tok, o, args.output);
  std::cout << args.task << " accuracy " << std::setprecision(6) << s.accuracy << " (" << s.correct << "/" << s.n
            << ") in " << std::setprecision(3) << s.seconds << " s; records in " << args.output << "/" << args.task
            << ".jsonl\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace hdpissa::llama;
  try {
    const Args args = parse(argc, argv);
    if (args.help) {
      std::cout << kUsage;
      return 0;
    }
#ifdef _OPENMP
    if (args.threads > 0) omp_set_num_threads(args.threads);
#endif
    if (args.task != "loss") return run_task(args);
    const auto t0 = std::chrono::steady_clock::now();
    std::unique_ptr<ModelWeights> w;
    if (!args.tokens_only) w = std::make_unique<ModelWeights>(load_checkpoint(args.model, LoadOptions{args.allow_unused, {}}));
    const Tokenizer tok(args.tokenizer);
    if (w && tok.vocab_size() > w->config.vocab_size)
      throw LlamaError(cat(args.tokenizer, ": the tokenizer has ", tok.vocab_size(),
                           " pieces but the model's vocab_size is ", w->config.vocab_size));
    if (w && args.max_len > w->config.max_seq_len)
      throw LlamaError(cat("--max-len ", args.max_len, " exceeds the model's max_position_embeddings ",
                           w->config.max_seq_len));
    if (w) w->config.check_sliding_window(args.max_len, "--max-len");

    DataLoadReport rep;
    auto data = std::make_shared<std::vector<TokenizedExample>>(
        load_tokenized_data(args.data, args.data_format, tok, PromptTemplate{}, args.max_len, args.eval_examples, &rep));
    const std::int64_t dropped = rep.dropped;
    if (data->empty())
      throw LlamaError(cat(args.data, ": expected at least one example with a target token within --max-len ",
                           args.max_len, ", found none (", dropped, " dropped)"));
    LoaderOptions lo;  // the trainer's evaluation loader: file order, right padding with id 0
    lo.micro_batch = args.micro_batch;
    lo.shuffle = false;
    DataLoader dl(data, lo);
    std::vector<Batch> batches;
    for (std::int64_t i = 0; i < dl.batches_per_epoch(); ++i) batches.push_back(dl.next());

    LossResult r;
    if (w) {
      CpuHooks plain;
      r = evaluate_loss(*w, batches, plain);
    } else {
      for (const auto& b : batches) r.n_tokens += b.num_target_tokens();
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

    if (w)
      std::cout << "eval_loss " << std::setprecision(9) << r.mean() << " over " << r.n_tokens << " target tokens ("
                << data->size() << " examples, " << batches.size() << " batches of <= " << args.micro_batch
                << ", max-len " << args.max_len << ", " << dropped << " dropped) in " << std::setprecision(3) << secs
                << " s\n";
    else
      std::cout << "tokenized " << data->size() << " examples into " << batches.size() << " batches, "
                << r.n_tokens << " target tokens (" << dropped << " dropped, max-len " << args.max_len << ")\n";

    if (!args.json.empty()) {
      nlohmann::json j;
      j["tool"] = "hdpissa-eval";
      j["model"] = args.model;
      j["tokenizer"] = args.tokenizer;
      j["data"] = args.data;
      j["max_len"] = args.max_len;
      j["micro_batch"] = args.micro_batch;
      j["pad_id"] = lo.pad_id;
      j["ignore_index"] = kIgnoreIndex;
      j["bos_id"] = tok.bos_id();
      j["eos_id"] = tok.eos_id();
      j["examples"] = data->size();
      j["dropped"] = dropped;
      j["n_tokens"] = r.n_tokens;
      if (w) {
        j["loss"] = r.mean();
        j["loss_sum"] = r.loss_sum;
      }
      nlohmann::json jb = nlohmann::json::array();
      for (const Batch& b : batches) {
        nlohmann::json ids = nlohmann::json::array(), labels = nlohmann::json::array();
        for (int row = 0; row < b.batch_size; ++row) {
          const auto off = static_cast<std::ptrdiff_t>(row) * b.seq_len;
          ids.push_back(std::vector<std::int32_t>(b.input_ids.begin() + off, b.input_ids.begin() + off + b.seq_len));
          labels.push_back(std::vector<std::int32_t>(b.labels.begin() + off, b.labels.begin() + off + b.seq_len));
        }
        jb.push_back({{"input_ids", ids}, {"labels", labels}, {"lengths", b.lengths}});
      }
      j["batches"] = std::move(jb);
      std::ofstream f(args.json);
      if (!f) throw LlamaError(cat("--json: cannot open ", args.json, " for writing"));
      f << j.dump() << "\n";
      if (!f) throw LlamaError(cat("--json: write to ", args.json, " failed"));
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "hdpissa-eval: error: " << e.what() << "\n";
    return 2;
  }
}
