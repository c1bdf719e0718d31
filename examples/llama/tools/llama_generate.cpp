// hdpissa-generate: load a LLaMA checkpoint (HF directory or llama2.c .bin) and a tokenizer, and
// greedily continue a prompt (or every prompt of a JSONL file) on the CPU or on the GPU (batched,
// KV-cached: llama/cuda/decode_cuda.cuh).
//
//   hdpissa-generate --model DIR_OR_BIN (or --checkpoint) --tokenizer tok.model [--prompt TEXT]
//                    [--max-new-tokens N] [--template] [--no-stop]
//                    [--input prompts.jsonl [--output out.jsonl]] [--device cpu|cuda] [--dtype bf16|fp32]
//                    [--batch-size 64]
// --input: one prompt per line, a JSON string or an object with "prompt" (optional "id"); the output
// has one JSON line per prompt, in order: {id, prompt, completion, new_tokens}.

#include <chrono>
#include <fstream>
#include <memory>
#include <iostream>
#include <string>
#include <vector>

#include "llama/checkpoint.hpp"
#include "llama/cli.hpp"
#include "llama/data.hpp"
#include "llama/eval/cuda_generator.hpp"
#include "llama/model.hpp"
#include "llama/tokenizer.hpp"

namespace {

struct Args {
  std::string checkpoint, tokenizer, prompt, input, output, device = "cpu", dtype = "bf16";
  int batch_size = 64;
  std::string stats_json;
  bool warmup = false;
  bool use_template = false, stop = true, help = false, allow_unused = false;
  int max_new_tokens = 256;
};

Args parse(int argc, char** argv) {
  namespace cli = hdpissa::llama::cli;
  Args a;
  CLI::App app{"Greedy (temperature 0) generation with a LLaMA-family model: on the CPU, or batched with a KV cache "
               "on the GPU (--device cuda).",
               "hdpissa-generate"};
  cli::setup(app);
  app.footer("example: hdpissa-generate --model $HDPISSA_DATA/stories260K/stories260K.bin \\\n"
             "             --tokenizer $HDPISSA_DATA/stories260K/tok512.model --max-new-tokens 64\n"
             "environment (--device cuda):\n"
             "  HDPISSA_CUDA_GEMM_TUNING_BF16  off|exact|fastest: bf16 GEMM algorithm choice (default here: exact,\n"
             "                                 bit-identical to cuBLAS's default, so the tokens do not change)\n"
             "  HDPISSA_DECODE_CHUNK           16..8192 keys per split of the decode attention (default: by the kernel\n"
             "                                 Auto picks: tensor-core GQA 512; bulk 512 when slots x kv heads >= 2048,\n"
             "                                 else 256; fused 256; two-phase 128; docs/evaluation.md)");
  app.add_option("--model,--checkpoint", a.checkpoint,
                 "HF directory (config.json + model.safetensors[.index.json]) or llama2.c .bin")->type_name("PATH");
  app.add_option("--tokenizer", a.tokenizer, "SentencePiece .model, tokenizer.json, tiktoken file or a directory "
                                             "(default: the model directory)")->type_name("PATH");
  app.add_flag("--allow-unused", a.allow_unused, "warn instead of failing on unused checkpoint tensors / unsupported config fields");
  app.add_option("--prompt", a.prompt, "text to continue (default: empty, i.e. BOS only)")->type_name("TEXT");
  app.add_flag("--template", a.use_template, "wrap the prompt in the Alpaca instruction template (spec section 6)");
  const auto positive_int = [](const std::string& f, const std::string& v) { return cli::parse_int<int>(f, v, 1); };
  cli::add_parsed(app, "--max-new-tokens", "--max-new-tokens", a.max_new_tokens,
                  positive_int,
                  "tokens to generate (default 256)", "N");
  app.add_flag_callback("--no-stop", [&a] { a.stop = false; }, "do not stop at EOS / BOS");
  app.add_option("--input", a.input, "JSONL of prompts (a JSON string or {\"prompt\": ..., \"id\": ...} per line); "
                                     "writes one JSON line per prompt")->type_name("FILE");
  app.add_option("--stats-json", a.stats_json, "write the timings (load, prefill / decode tokens and seconds, "
                                               "tok/s) as JSON")->type_name("FILE");
  app.add_flag("--warmup", a.warmup, "run the whole generation once untimed first (benchmarks)");
  app.add_option("--output", a.output, "with --input: where the JSON lines go (default: stdout)")->type_name("FILE");
  app.add_option("--device", a.device, "cpu (default) or cuda (batched KV-cached decoding on GPU 0)")
      ->type_name("D")->check(CLI::IsMember({"cpu", "cuda"}));
  app.add_option("--dtype", a.dtype, "--device cuda: bf16 (default) or fp32 compute")->type_name("T")
      ->check(CLI::IsMember({"fp32", "bf16"}));
  cli::add_parsed(app, "--batch-size", "--batch-size", a.batch_size,
                  positive_int,
                  "--device cuda: sequences decoded at once (default 64)", "N");
  if (cli::parse(app, std::vector<std::string>(argv + 1, argv + argc)) != cli::Outcome::Run) {
    a.help = true;
    return a;
  }
  if (a.checkpoint.empty()) throw cli::UsageError("missing --model (see --help)");
  if (!a.output.empty() && a.input.empty()) throw cli::UsageError("--output needs --input");
  if (!a.input.empty() && !a.prompt.empty()) throw cli::UsageError("give --prompt or --input, not both");
  if (a.tokenizer.empty()) {
    if (std::filesystem::is_directory(a.checkpoint)) a.tokenizer = a.checkpoint;  // detect_tokenizer
    else throw cli::UsageError("missing --tokenizer (see --help)");
  }
  return a;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace hdpissa::llama;
  try {
    const Args args = parse(argc, argv);
    if (args.help) return 0;  // --help / --version: printed
    const auto t0 = std::chrono::steady_clock::now();
    LoadOptions lo{args.allow_unused, {}};
    lo.keep_linears_stored = args.device == "cuda";  // uploaded from the mapped checkpoint
    const ModelWeights w = load_checkpoint(args.checkpoint, lo);
    const auto t_loaded = std::chrono::steady_clock::now();
    const Tokenizer tok(args.tokenizer);
    if (tok.vocab_size() > w.config.vocab_size)
      throw LlamaError(cat("tokenizer has ", tok.vocab_size(), " pieces but the model expects vocab_size ",
                           w.config.vocab_size));
    std::vector<std::string> texts, ids;
    std::vector<std::vector<std::int32_t>> pre_ids;  // per prompt: given ids (empty: tokenize the text)
    if (args.input.empty()) {
      texts.push_back(args.prompt);
      ids.emplace_back("0");
    } else {
      std::ifstream in(args.input);
      if (!in) throw LlamaError(cat("--input: cannot read '", args.input, "'"));
      std::string line;
      for (long ln = 1; std::getline(in, line); ++ln) {
        if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(line);
        } catch (const std::exception& e) {
          throw LlamaError(cat(args.input, ":", ln, ": expected a JSON string or object, found: ", e.what()));
        }
        if (j.is_string()) {
          texts.push_back(j.get<std::string>());
        } else if (j.is_object() && j.contains("prompt") && j["prompt"].is_string()) {
          texts.push_back(j["prompt"].get<std::string>());
        } else if (j.is_object() && j.contains("ids") && j["ids"].is_array()) {  // pre-tokenized (BOS included)
          std::vector<std::int32_t> v;
          for (const auto& x : j["ids"]) {
            if (!x.is_number_integer() || x.get<long>() < 0 || x.get<long>() >= w.config.vocab_size)
              throw LlamaError(cat(args.input, ":", ln, ": \"ids\" must hold token ids in [0, ", w.config.vocab_size, ")"));
            v.push_back(x.get<std::int32_t>());
          }
          pre_ids.resize(texts.size());
          texts.push_back(tok.decode(v));  // for the output record
          pre_ids.push_back(std::move(v));
        } else {
          throw LlamaError(cat(args.input, ":", ln, ": expected a JSON string or an object with a string \"prompt\" "
                               "or an array \"ids\""));
        }
        ids.push_back(j.is_object() && j.contains("id") ? (j["id"].is_string() ? j["id"].get<std::string>() : j["id"].dump())
                                                        : std::to_string(texts.size() - 1));
      }
    }
    eval::GenerationRequest req;
    req.max_new_tokens = args.max_new_tokens;
    if (args.stop) {
      req.stop_tokens.push_back(tok.eos_id());
      // llama2.c-trained models end a story with BOS; stop there too
      if (tok.bos_id() >= 0 && tok.bos_id() != tok.eos_id()) req.stop_tokens.push_back(tok.bos_id());
    }
    pre_ids.resize(texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i)
      req.prompts.push_back(!pre_ids[i].empty() ? pre_ids[i]
                                                : tok.encode(args.use_template ? PromptTemplate{}.prompt({texts[i], "", ""})
                                                                               : texts[i],
                                                             /*add_bos=*/true));
    std::unique_ptr<eval::CudaGenerator> gpu;
    if (args.device == "cuda") {
      eval::CudaGeneratorOptions go;
      go.bf16 = args.dtype == "bf16";
      go.decode.slots = args.batch_size;
      gpu = eval::make_cuda_generator(w, go);
    }
    const auto t_ready = std::chrono::steady_clock::now();
    DecodeStats before;
    if (args.warmup) {
      (void)(gpu ? gpu->generate(req) : eval::cpu_greedy_generator(w)(req));
      if (gpu) before = gpu->stats();
    }
    const auto t1 = std::chrono::steady_clock::now();
    const auto outs = gpu ? gpu->generate(req) : eval::cpu_greedy_generator(w)(req);
    const auto t2 = std::chrono::steady_clock::now();
    long n_new = 0;
    for (const auto& o : outs) n_new += static_cast<long>(o.size());
    if (args.input.empty()) {
      std::vector<std::int32_t> all = req.prompts[0];
      all.insert(all.end(), outs[0].begin(), outs[0].end());
      std::cout << tok.decode(all, /*skip_special=*/true) << "\n";
    } else {
      std::ofstream file;
      if (!args.output.empty()) {
        file.open(args.output, std::ios::binary);
        if (!file) throw LlamaError(cat("--output: cannot write '", args.output, "'"));
      }
      std::ostream& os = args.output.empty() ? std::cout : file;
      for (std::size_t i = 0; i < outs.size(); ++i) {
        const nlohmann::json j = {{"id", ids[i]}, {"prompt", texts[i]}, {"completion", tok.decode(outs[i])},
                                  {"new_tokens", outs[i].size()}};
        os << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
      }
      if (!os) throw LlamaError(cat("--output: write to '", args.output, "' failed"));
    }
    // load = the checkpoint read; setup = tokenizer, prompts and the GPU model (upload); warm-up =
    // the untimed --warmup pass. Earlier builds printed their sum as "load".
    const auto secs = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
    const double load_s = secs(t0, t_loaded), setup_s = secs(t_loaded, t_ready), warmup_s = secs(t_ready, t1);
    const double gen_s = secs(t1, t2);
    const std::vector<std::string> tuning = gpu ? gpu->gemm_tuning_report() : std::vector<std::string>{};
    for (const auto& r : tuning) std::cerr << "[hdpissa-generate] gemm tuning: " << r << "\n";
    std::cerr << "[hdpissa-generate] " << w.num_parameters() << " parameters, " << (gpu ? gpu->describe() : "cpu")
              << ", load " << load_s << " s, setup " << setup_s << " s" << (args.warmup ? ", warm-up " : "")
              << (args.warmup ? std::to_string(warmup_s) + " s" : std::string()) << ", " << outs.size() << " prompt(s), " << n_new << " tokens in " << gen_s
              << " s (" << (gen_s > 0 ? double(n_new) / gen_s : 0.0) << " tok/s)";
    DecodeStats st;
    if (gpu) {
      const DecodeStats after = gpu->stats();
      st.prompts = after.prompts - before.prompts;
      st.prefill_tokens = after.prefill_tokens - before.prefill_tokens;
      st.decode_tokens = after.decode_tokens - before.decode_tokens;
      st.decode_steps = after.decode_steps - before.decode_steps;
      st.prefill_seconds = after.prefill_seconds - before.prefill_seconds;
      st.decode_seconds = after.decode_seconds - before.decode_seconds;
      std::cerr << "; prefill " << st.prefill_tokens << " tokens, " << static_cast<long>(st.prefill_tok_s())
                << " tok/s; decode " << st.decode_tokens << " tokens in " << st.decode_steps << " steps, "
                << static_cast<long>(st.decode_tok_s()) << " tok/s";
    }
    std::cerr << "\n";
    if (!args.stats_json.empty()) {
      long prompt_tokens = 0;
      for (const auto& p : req.prompts) prompt_tokens += static_cast<long>(p.size());
      nlohmann::json j = {{"side", "ours"}, {"device", gpu ? gpu->describe() : std::string("cpu")},
                                {"batch_size", args.batch_size}, {"prompts", outs.size()},
                                {"prompt_tokens", prompt_tokens}, {"new_tokens", n_new},
                                {"max_new_tokens", args.max_new_tokens}, {"load_seconds", load_s},
                                {"setup_seconds", setup_s}, {"warmup_seconds", args.warmup ? warmup_s : 0.0},
                                {"generate_seconds", gen_s}, {"e2e_tok_s", gen_s > 0 ? double(n_new) / gen_s : 0.0},
                                {"prefill_tokens", st.prefill_tokens}, {"prefill_seconds", st.prefill_seconds},
                                {"prefill_tok_s", st.prefill_tok_s()}, {"decode_tokens", st.decode_tokens},
                                {"decode_steps", st.decode_steps}, {"decode_seconds", st.decode_seconds},
                                {"decode_tok_s", st.decode_tok_s()}, {"gemm_tuning", tuning}};
      if (!gpu)  // the CPU decoder does not split prefill from decode: those fields are null, not 0
        for (const char* k : {"prefill_tokens", "prefill_seconds", "prefill_tok_s", "decode_tokens", "decode_steps",
                              "decode_seconds", "decode_tok_s"})
          j[k] = nullptr;
      std::ofstream f(args.stats_json);
      f << j.dump(1) << "\n";
      if (!f) throw LlamaError(cat("--stats-json: cannot write '", args.stats_json, "'"));
    }
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "hdpissa-generate: error: " << e.what() << "\n";
    return 2;
  }
}
