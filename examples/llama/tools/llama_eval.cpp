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
#include "llama/cli.hpp"
#include "llama/data.hpp"
#include "llama/data_formats.hpp"
#include "llama/eval/cuda_generator.hpp"
#include "llama/eval/evaluators.hpp"
#include "llama/linear_hooks.hpp"
#include "llama/model.hpp"
#include "llama/tokenizer.hpp"
#include "llama/train/preflight.hpp"

namespace {

using hdpissa::llama::LlamaError;

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
  std::string device = "cpu", dtype = "bf16";
  int batch_size = 64;
  bool batch_given = false;
  // ---- generation tasks: end
};

/// An integer option with a lower bound (cli::parse_int: the error names the flag and the value).
CLI::Option* add_int(CLI::App& app, const std::string& flag, int& ref, int min, const std::string& help) {
  return hdpissa::llama::cli::add_parsed(
      app, flag, flag, ref,
      [min](const std::string& f, const std::string& v) { return hdpissa::llama::cli::parse_int<int>(f, v, min); },
      help, "N");
}

Args parse(int argc, char** argv) {
  namespace cli = hdpissa::llama::cli;
  Args a;
  CLI::App app{"Evaluates a LLaMA checkpoint: the held-out loss (our CPU model, with the exact batches it was computed "
               "on) or a task (GSM8K, MATH, HumanEval, MBPP) by greedy decoding on the CPU or the GPU.",
               "hdpissa-eval"};
  cli::setup(app);
  app.footer("example: hdpissa-eval --model runs/demo --tokenizer $HDPISSA_DATA/stories260K/tok512.model \\\n"
             "             --data $HDPISSA_DATA/gsm8k/test.jsonl --max-len 256 --eval-examples 32 --json eval.json\n"
             "environment (--device cuda): HDPISSA_CUDA_GEMM_TUNING_BF16 (default here: exact, bit-identical) and\n"
             "  HDPISSA_DECODE_CHUNK (keys per split of the decode attention), as for hdpissa-generate");
  app.add_option("--model", a.model, "HF directory (config.json + model.safetensors[.index.json]) or llama2.c .bin")
      ->type_name("PATH");
  app.add_option("--tokenizer", a.tokenizer,
                 "SentencePiece .model, tokenizer.json, tiktoken file or a directory (default: --model)")->type_name("PATH");
  app.add_flag("--allow-unused", a.allow_unused, "warn instead of failing on unused checkpoint tensors / unsupported config fields");
  app.add_option("--data", a.data, "instruction data, JSON array or JSONL (instruction/output, query/response, "
                                   "question/answer, chat, text, tokens), Alpaca template")->type_name("FILE");
  cli::add_data_format_options(app, a.data_format, "data format (as hdpissa-train)");
  add_int(app, "--max-len", a.max_len, 2, "truncate tokenized examples to N tokens (default 512)");
  add_int(app, "--eval-examples", a.eval_examples, 1, "use the first N records of FILE, in file order (default 32)");
  add_int(app, "--micro-batch", a.micro_batch, 1, "sequences per right-padded batch (default 4)");
  add_int(app, "--threads", a.threads, 1, "OpenMP threads (default: OMP_NUM_THREADS or all)");
  app.add_option("--json", a.json, "write {loss, loss_sum, n_tokens, batches: [{input_ids, labels, lengths}], ...}")
      ->type_name("FILE");
  app.add_flag("--tokens-only", a.tokens_only, "tokenize and write the batches only: no model is loaded, no loss "
                                               "computed (--model is then optional; feeds identical ids to other frameworks)");
  // ---- generation tasks (--task ...; docs/evaluation.md): greedy decoding, scored per problem
  const std::string gt = "generation tasks (docs/evaluation.md)";
  app.add_option("--task", a.task, "loss (default: the held-out loss), gsm8k, math, humaneval or mbpp; --data is "
                                   "then the task's JSONL (gsm8k/test.jsonl, math500/test.jsonl or "
                                   "math_test_5000/MATH_test.jsonl, humaneval/HumanEval.jsonl.gz, mbpp/mbpp.jsonl: "
                                   "the test split task_id 11-510)")->group(gt)->type_name("T");
  add_int(app, "--max-new-tokens", a.max_new_tokens, 1, "generation budget per problem (default 512; capped by the "
                                                         "model's context)")->group(gt);
  cli::add_parsed(app, "--limit", "--limit", a.limit,
                  [](const std::string& f, const std::string& v) { return cli::parse_int<long>(f, v, 1); },
                  "the first N problems in file order (default: all)", "N")->group(gt);
  add_int(app, "--batch", a.batch, 1, "prompts per generator call (default 1; the CPU decoder loops over them)")->group(gt);
  app.add_option("--output", a.output, "writes DIR/<task>.jsonl (one record per problem) and DIR/<task>_summary.json "
                                       "(default: eval-<task>)")->group(gt)->type_name("DIR");
  app.add_option("--device", a.device, "cpu (default: one prompt at a time) or cuda (batched KV-cached greedy decoding "
                                       "on GPU 0, docs/evaluation.md)")->group(gt)->type_name("D")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--dtype", a.dtype, "--device cuda: bf16 (default) or fp32 compute")->group(gt)->type_name("T")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  add_int(app, "--batch-size", a.batch_size, 1, "--device cuda: sequences decoded at once (default 64); --batch "
                                                "then defaults to 4x this")->group(gt);
  app.add_flag("--gsm8k-last-number", a.gsm8k_last_number,
               "GSM8K: fall back to the last number when no answer marker is found (off)")->group(gt);
  app.add_option("--timeout", a.timeout, "code tasks: wall-clock seconds per program (default 10)")
      ->group(gt)->type_name("S");
  if (cli::parse(app, std::vector<std::string>(argv + 1, argv + argc)) != cli::Outcome::Run) {
    a.help = true;
    return a;
  }
  a.batch_given = app.count("--batch") > 0;
  if (!(a.timeout > 0 && a.timeout <= 86400))  // also NaN
    throw cli::UsageError(hdpissa::llama::cat("--timeout: expected seconds in (0, 86400], found ", a.timeout));
  if (a.threads > 1024) throw cli::UsageError(hdpissa::llama::cat("--threads: expected <= 1024, found ", a.threads));
  // Each mode's options are an error in the other, never silently ignored (the two count the
  // problems or examples with different flags: --limit, --eval-examples).
  const bool task_mode = a.task != "loss";
  if (task_mode) hdpissa::llama::eval::parse_task(a.task);  // a mistyped --task first: it decides the mode
  for (const char* f : {"--eval-examples", "--max-len", "--micro-batch", "--json", "--tokens-only", "--prompt-field",
                        "--response-field", "--input-field", "--data-format", "--chat-template"})
    if (task_mode && app.count(f) > 0)
      throw cli::UsageError(hdpissa::llama::cat(f, " applies to --task loss only (a task counts its problems with --limit)"));
  for (const char* f : {"--max-new-tokens", "--limit", "--batch", "--output", "--device", "--dtype", "--batch-size",
                        "--gsm8k-last-number", "--timeout"})
    if (!task_mode && app.count(f) > 0)
      throw cli::UsageError(hdpissa::llama::cat(f, " applies to --task gsm8k|math|humaneval|mbpp only (the loss "
                                                   "counts its examples with --eval-examples)"));
  if (task_mode && a.output.empty()) a.output = "eval-" + a.task;
  if (a.model.empty() && !a.tokens_only) throw cli::UsageError("missing --model (see --help)");
  if (a.tokens_only && a.json.empty())
    throw cli::UsageError("--tokens-only writes the batches to --json FILE: missing --json (see --help)");
  // the outputs can be written, checked before any work (a probe file where they will be: beside
  // --json, inside an existing --output, where a new --output will be created otherwise)
  if (!a.json.empty()) hdpissa::llama::preflight_detail::check_output("--json", a.json, true);
  if (task_mode) hdpissa::llama::preflight_detail::check_output_into("--output", a.output);
  if (!a.model.empty() && !std::filesystem::exists(a.model))
    throw LlamaError("--model: no such file or directory: '" + a.model + "'");
  if (a.data.empty()) throw cli::UsageError("missing --data (see --help)");
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
  LoadOptions lo{args.allow_unused, {}};
  lo.keep_linears_stored = args.device == "cuda";  // uploaded from the mapped checkpoint
  const ModelWeights w = load_checkpoint(args.model, lo);
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
  std::unique_ptr<ev::CudaGenerator> gpu;
  if (args.device == "cuda") {
    ev::CudaGeneratorOptions go;
    go.bf16 = args.dtype == "bf16";
    go.decode.slots = args.batch_size;
    go.decode.detokenize = [&tok](const std::vector<std::int32_t>& ids) { return tok.decode(ids); };
    gpu = ev::make_cuda_generator(w, go);
    if (!args.batch_given) o.batch_size = 4 * args.batch_size;
    std::cerr << "[hdpissa-eval] decoding on " << gpu->describe() << ", " << o.batch_size << " prompts per call\n";
  }
  o.progress = ev::stderr_progress_with("hdpissa-eval", task, gpu.get());
  const ev::EvalSummary s = ev::evaluate_to_dir(task, args.data, gpu ? ev::as_generator(*gpu) : ev::cpu_greedy_generator(w),
                                                tok, o, args.output);
  if (gpu) {
    const DecodeStats st = gpu->stats();
    std::cout << "decode: " << st.prompts << " prompts, prefill " << st.prefill_tokens << " tokens in "
              << st.prefill_seconds << " s (" << static_cast<long>(st.prefill_tok_s()) << " tok/s), decode "
              << st.decode_tokens << " tokens in " << st.decode_steps << " steps, " << st.decode_seconds << " s ("
              << static_cast<long>(st.decode_tok_s()) << " tok/s)\n";
  }
  std::cout << args.task << " accuracy " << std::setprecision(6) << s.accuracy << " (" << s.correct << "/" << s.n
            << ") in " << std::setprecision(3) << s.seconds << " s; records in " << args.output << "/" << args.task
            << ".jsonl\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace hdpissa::llama;
  try {
    Args parsed;
    try {
      parsed = parse(argc, argv);
    } catch (const std::exception& e) {  // anything wrong with the command line (values, paths): 2
      std::cerr << "hdpissa-eval: error: " << e.what() << "\n";
      return 2;
    }
    const Args args = std::move(parsed);
    if (args.help) return 0;  // --help / --version: printed
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
      if (const auto parent = std::filesystem::absolute(args.json).parent_path(); !parent.empty())
        std::filesystem::create_directories(parent);  // checked writable before the work
      std::ofstream f(args.json);
      if (!f) throw LlamaError(cat("--json: cannot open ", args.json, " for writing"));
      f << j.dump() << "\n";
      if (!f) throw LlamaError(cat("--json: write to ", args.json, " failed"));
    }
    return 0;
  } catch (const std::exception& e) {  // after the command line: 1 (hdpissa-train's rule)
    std::cerr << "hdpissa-eval: error: " << e.what() << "\n";
    return 1;
  }
}
