// hdpissa-generate: load a LLaMA checkpoint (HF directory or llama2.c .bin) and a SentencePiece
// tokenizer, and greedily continue a prompt on the CPU.
//
//   hdpissa-generate --checkpoint DIR_OR_BIN --tokenizer tok.model [--prompt TEXT]
//                    [--max-new-tokens N] [--template] [--no-bos] [--stop-at-eos|--no-stop]

#include <chrono>
#include <iostream>
#include <string>
#include <vector>

#include "llama/checkpoint.hpp"
#include "llama/data.hpp"
#include "llama/model.hpp"
#include "llama/tokenizer.hpp"

namespace {

const char* kUsage =
    "usage: hdpissa-generate --checkpoint PATH --tokenizer PATH [options]\n"
    "\n"
    "Greedy (temperature 0) generation with a LLaMA-family model on the CPU.\n"
    "\n"
    "  --checkpoint PATH     HF directory (config.json + model.safetensors[.index.json]) or llama2.c .bin\n"
    "  --tokenizer PATH      SentencePiece .model, tokenizer.json, tiktoken file or a directory\n"
    "                        (default: the checkpoint directory)\n"
    "  --allow-unused        warn instead of failing on unused checkpoint tensors / unsupported config fields\n"
    "  --prompt TEXT         text to continue (default: empty, i.e. BOS only)\n"
    "  --template            wrap the prompt in the Alpaca instruction template (spec section 6)\n"
    "  --max-new-tokens N    tokens to generate (default 256)\n"
    "  --no-stop             do not stop at EOS / BOS\n"
    "  --help                this text\n"
    "\n"
    "example: hdpissa-generate --checkpoint $HDPISSA_DATA/stories260K/stories260K.bin \\\n"
    "             --tokenizer $HDPISSA_DATA/stories260K/tok512.model --max-new-tokens 64\n";

struct Args {
  std::string checkpoint, tokenizer, prompt;
  bool use_template = false, stop = true, help = false, allow_unused = false;
  int max_new_tokens = 256;
};

Args parse(int argc, char** argv) {
  Args a;
  auto value = [&](int& i, const std::string& flag) -> std::string {
    if (i + 1 >= argc) throw hdpissa::llama::LlamaError("option " + flag + " expects a value, found none");
    return argv[++i];
  };
  for (int i = 1; i < argc; ++i) {
    const std::string f = argv[i];
    if (f == "--help" || f == "-h") {
      a.help = true;
      return a;
    } else if (f == "--checkpoint") {
      a.checkpoint = value(i, f);
    } else if (f == "--tokenizer") {
      a.tokenizer = value(i, f);
    } else if (f == "--prompt") {
      a.prompt = value(i, f);
    } else if (f == "--template") {
      a.use_template = true;
    } else if (f == "--allow-unused") {
      a.allow_unused = true;
    } else if (f == "--no-stop") {
      a.stop = false;
    } else if (f == "--max-new-tokens") {
      const std::string v = value(i, f);
      std::size_t used = 0;
      try {
        a.max_new_tokens = std::stoi(v, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != v.size() || a.max_new_tokens < 1)
        throw hdpissa::llama::LlamaError("--max-new-tokens expects a positive integer, found '" + v + "'");
    } else {
      throw hdpissa::llama::LlamaError("unknown option '" + f + "' (see --help)");
    }
  }
  if (a.checkpoint.empty()) throw hdpissa::llama::LlamaError("missing --checkpoint (see --help)");
  if (a.tokenizer.empty()) {
    if (std::filesystem::is_directory(a.checkpoint)) a.tokenizer = a.checkpoint;  // detect_tokenizer
    else throw hdpissa::llama::LlamaError("missing --tokenizer (see --help)");
  }
  return a;
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
