// hdpissa-generate: load a LLaMA checkpoint (HF directory or llama2.c .bin) and a SentencePiece
// tokenizer, and greedily continue a prompt on the CPU.
//
//   hdpissa-generate --model DIR_OR_BIN (or --checkpoint) --tokenizer tok.model [--prompt TEXT]
//                    [--max-new-tokens N] [--template] [--no-bos] [--stop-at-eos|--no-stop]

#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "llama/checkpoint.hpp"
#include "llama/cli.hpp"
#include "llama/data.hpp"
#include "llama/model.hpp"
#include "llama/tokenizer.hpp"

namespace {

struct Args {
  std::string checkpoint, tokenizer, prompt;
  bool use_template = false, stop = true, help = false, allow_unused = false;
  int max_new_tokens = 256;
};

Args parse(int argc, char** argv) {
  namespace cli = hdpissa::llama::cli;
  Args a;
  CLI::App app{"Greedy (temperature 0) generation with a LLaMA-family model on the CPU.", "hdpissa-generate"};
  cli::setup(app);
  app.footer("example: hdpissa-generate --model $HDPISSA_DATA/stories260K/stories260K.bin \\\n"
             "             --tokenizer $HDPISSA_DATA/stories260K/tok512.model --max-new-tokens 64");
  app.add_option("--model,--checkpoint", a.checkpoint,
                 "HF directory (config.json + model.safetensors[.index.json]) or llama2.c .bin")->type_name("PATH");
  app.add_option("--tokenizer", a.tokenizer, "SentencePiece .model, tokenizer.json, tiktoken file or a directory "
                                             "(default: the model directory)")->type_name("PATH");
  app.add_flag("--allow-unused", a.allow_unused, "warn instead of failing on unused checkpoint tensors / unsupported config fields");
  app.add_option("--prompt", a.prompt, "text to continue (default: empty, i.e. BOS only)")->type_name("TEXT");
  app.add_flag("--template", a.use_template, "wrap the prompt in the Alpaca instruction template (spec section 6)");
  cli::add_parsed(app, "--max-new-tokens", "--max-new-tokens", a.max_new_tokens,
                  [](const std::string& f, const std::string& v) {
                    std::size_t used = 0;
                    int x = 0;
                    try {
                      x = std::stoi(v, &used);
                    } catch (const std::exception&) {
                      used = 0;
                    }
                    if (used != v.size() || x < 1)
                      throw hdpissa::llama::LlamaError(f + " expects a positive integer, found '" + v + "'");
                    return x;
                  },
                  "tokens to generate (default 256)", "N");
  app.add_flag_callback("--no-stop", [&a] { a.stop = false; }, "do not stop at EOS / BOS");
  if (cli::parse(app, std::vector<std::string>(argv + 1, argv + argc)) != cli::Outcome::Run) {
    a.help = true;
    return a;
  }
  if (a.checkpoint.empty()) throw cli::UsageError("missing --model (see --help)");
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
    const ModelWeights w = load_checkpoint(args.checkpoint, LoadOptions{args.allow_unused, {}});
    const Tokenizer tok(args.tokenizer);
    if (tok.vocab_size() > w.config.vocab_size)
      throw LlamaError(cat("tokenizer has ", tok.vocab_size(), " pieces but the model expects vocab_size ",
                           w.config.vocab_size));
    std::string text = args.prompt;
    if (args.use_template) text = PromptTemplate{}.prompt({args.prompt, "", ""});
    const std::vector<std::int32_t> prompt = tok.encode(text, /*add_bos=*/true);
    GenerateOptions opt;
    opt.max_new_tokens = args.max_new_tokens;
    if (args.stop) opt.stop_token = tok.eos_id();
    const auto t1 = std::chrono::steady_clock::now();
    std::vector<std::int32_t> out = generate_greedy(w, prompt, opt);
    // llama2.c-trained models end a story with BOS; stop there too
    for (std::size_t i = 0; args.stop && i < out.size(); ++i)
      if (out[i] == tok.bos_id()) {
        out.resize(i);
        break;
      }
    const auto t2 = std::chrono::steady_clock::now();
    std::vector<std::int32_t> all = prompt;
    all.insert(all.end(), out.begin(), out.end());
    std::cout << tok.decode(all, /*skip_special=*/true) << "\n";
    const double load_s = std::chrono::duration<double>(t1 - t0).count();
    const double gen_s = std::chrono::duration<double>(t2 - t1).count();
    std::cerr << "[hdpissa-generate] " << w.num_parameters() << " parameters, load " << load_s << " s, "
              << out.size() << " tokens in " << gen_s << " s (" << (gen_s > 0 ? out.size() / gen_s : 0.0)
              << " tok/s)\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "hdpissa-generate: error: " << e.what() << "\n";
    return 2;
  }
}
