// Tokenizer: tok512 and the LLaMA-2 SentencePiece models.

#include <doctest/doctest.h>

#include "llama/tokenizer.hpp"
#include "test_util.hpp"

using namespace hdpissa::llama;

TEST_CASE("tokenizer: tok512 and LLaMA-2 load, encode, decode") {
  if (!llama_test::have_data()) { MESSAGE("SKIPPED: no shared data"); return; }
  const auto d = llama_test::data_dir();
  const Tokenizer tiny(d / "stories260K" / "tok512.model");
  CHECK(tiny.vocab_size() == 512);
  CHECK(tiny.bos_id() == 1);
  CHECK(tiny.eos_id() == 2);
  const std::string text = "Once upon a time, there was a little girl named Lily.";
  const auto ids = tiny.encode(text, true);
  REQUIRE(ids.size() > 2);
  CHECK(ids[0] == 1);
  CHECK(tiny.encode(text, false).size() == ids.size() - 1);
  CHECK(tiny.decode(ids) == text);

  const Tokenizer llama2(d / "llama2_tokenizer" / "tokenizer.model");
  CHECK(llama2.vocab_size() == 32000);
  CHECK(llama2.bos_id() == 1);
  CHECK(llama2.eos_id() == 2);
  CHECK(llama2.encode("Hello world", true) == std::vector<std::int32_t>{1, 15043, 3186});  // known LLaMA ids
  CHECK(llama2.decode(llama2.encode("### Response:\nThe answer is: 42", true)) == "### Response:\nThe answer is: 42");
  LLAMA_CHECK_THROWS_WITH_ALL(Tokenizer("/nonexistent.model"), "not found");
  LLAMA_CHECK_THROWS_WITH_ALL(Tokenizer(d / "stories260K" / "stories260K.bin"), "SentencePiece");
  LLAMA_CHECK_THROWS_WITH_ALL(tiny.decode({5, 900}), "[0, 512)", "900");
}

// ---------------------------------------------------------------- byte-level BPE (bpe_tokenizer.hpp)
#include <fstream>

#include <nlohmann/json.hpp>

namespace {

namespace fs = std::filesystem;
using Ids = std::vector<std::int32_t>;

/// GPT-2's bytes_to_unicode, written out here from its definition (independent of bpe_detail).
std::string gpt2_char(unsigned char b) {
  int cp = b;
  if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174))) {
    int n = 0;
    for (int x = 0; x < b; ++x)
      if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174))) ++n;
    cp = 256 + n;
  }
  std::string s;
  if (cp < 0x80) s += char(cp);
  else { s += char(0xC0 | (cp >> 6)); s += char(0x80 | (cp & 0x3F)); }
  return s;
}

/// Standard base64 of `s`, written out here (independent of bpe_detail).
std::string b64(const std::string& s) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  std::size_t i = 0;
  for (; i + 2 < s.size(); i += 3) {
    const unsigned v = (unsigned char)s[i] << 16 | (unsigned char)s[i + 1] << 8 | (unsigned char)s[i + 2];
    out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], t[v & 63]};
  }
  if (s.size() - i == 1) {
    const unsigned v = (unsigned char)s[i] << 16;
    out += {t[v >> 18], t[(v >> 12) & 63], '=', '='};
  } else if (s.size() - i == 2) {
    const unsigned v = (unsigned char)s[i] << 16 | (unsigned char)s[i + 1] << 8;
    out += {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], '='};
  }
  return out;
}

/// The tiny vocabulary: id b = the byte b (0..255), then the merges' results 256..262 (raw bytes).
const std::vector<std::pair<std::string, std::string>> kMerges = {
    {" ", "t"}, {"h", "e"}, {" t", "he"}, {"1", "2"}, {"l", "l"}, {"e", "ll"}, {"h", "ell"}};

/// A hand-built tokenizer.json (+ tokenizer_config.json): 256 byte tokens, the merges above,
/// added tokens <|bos|> = 300 and <|eot|> = 301, split regex `regex` then ByteLevel.
fs::path tiny_tokenizer_json(const std::string& name, const std::string& regex, bool ignore_merges = false,
                             bool extra_hello = false) {
  const auto dir = llama_test::scratch(name);
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[gpt2_char(static_cast<unsigned char>(b))] = b;
  auto mapped = [](const std::string& raw) {
    std::string s;
    for (unsigned char c : raw) s += gpt2_char(c);
    return s;
  };
  nlohmann::json merges = nlohmann::json::array();
  for (std::size_t i = 0; i < kMerges.size(); ++i) {
    vocab[mapped(kMerges[i].first + kMerges[i].second)] = 256 + int(i);
    merges.push_back(mapped(kMerges[i].first) + " " + mapped(kMerges[i].second));
  }
  if (extra_hello) vocab["hello"] = 263;
  nlohmann::json j = {
      {"version", "1.0"},
      {"added_tokens", {{{"id", 300}, {"content", "<|bos|>"}, {"special", true}},
                        {{"id", 301}, {"content", "<|eot|>"}, {"special", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers", {{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}},
                           {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"ignore_merges", ignore_merges}, {"vocab", vocab}, {"merges", merges}}}};
  write_file_atomic(dir / "tokenizer.json", j.dump());
  write_file_atomic(dir / "tokenizer_config.json",
                    nlohmann::json({{"bos_token", "<|bos|>"}, {"eos_token", {{"content", "<|eot|>"}}},
                                    {"chat_template", "{{ '<|im_start|>' }}"}}).dump());
  return dir;
}

/// The same vocabulary as a LLaMA-3 tiktoken file (ranks = ids); 263 lines, so the special
/// tokens start at 263 (<|begin_of_text|> 263, <|end_of_text|> 264, <|eot_id|> 272).
fs::path tiny_tiktoken(const std::string& name) {
  const auto dir = llama_test::scratch(name);
  fs::create_directories(dir / "original");
  std::string text;
  for (int b = 0; b < 256; ++b) text += b64(std::string(1, char(b))) + " " + std::to_string(b) + "\n";
  for (std::size_t i = 0; i < kMerges.size(); ++i)
    text += b64(kMerges[i].first + kMerges[i].second) + " " + std::to_string(256 + i) + "\n";
  write_file_atomic(dir / "original" / "tokenizer.model", text);
  return dir;
}

const char* kRoundTrip[] = {
    "",
    "the",
    "Hello, world! 12345 67890",
    "  leading and trailing   \n\n\t tabs\r\nCRLF",
    "don't I'LL we've they'RE",
    "naïve café — Ελληνικά, русский, 中文字符, 日本語のテキスト, 한국어",
    "emoji 😀👍🏽 and flags 🇩🇪 zero\u200bwidth",
    "<|bos|>special<|eot|> inside <|eot|><|eot|>and <|bo|> not",
    "digits 3.14159 1,000,000 -42 x²",
    "\n",
    "    ",
};

}  // namespace

TEST_CASE("BPE tokenizer: hand-derived encodings of a tiny tokenizer.json (LLaMA-3 regex)") {
  const auto dir = tiny_tokenizer_json("bpe_llama3", BpeTokenizer::kLlama3Regex);
  const Tokenizer tok(dir);  // a directory without tokenizer.model: tokenizer.json
  CHECK(tok.kind() == TokenizerKind::bpe_json);
  CHECK(tok.bos_id() == 300);
  CHECK(tok.eos_id() == 301);
  CHECK(tok.vocab_size() == 302);
  CHECK(tok.token_id("<|eot|>") == std::optional<std::int32_t>(301));
  CHECK(!tok.token_id("<|nope|>"));
  CHECK(tok.piece(258) == "\xC4\xA0the");  // "Ġthe"
  CHECK(tok.chat_template() == "{{ '<|im_start|>' }}");
  const auto files = tok.files();  // what a saved model directory gets
  REQUIRE(files.size() == 2);
  CHECK(files[0].second == "tokenizer.json");
  CHECK(files[1].second == "tokenizer_config.json");
  // "the": t h e -> (h,e) rank 1 -> [t, he]
  CHECK(tok.encode("the") == Ids{'t', 257});
  // " the": ( ,t) rank 0 -> [ t, h, e] -> (h,e) -> [ t, he] -> ( t,he) rank 2 -> [ the]
  CHECK(tok.encode(" the") == Ids{258});
  // "hello": (h,e) rank 1 first, then (l,l) rank 4 -> [he, ll, o]; e+ll (rank 5) never applies
  CHECK(tok.encode("hello the") == Ids{257, 260, 'o', 258});
  // digits: \p{N}{1,3} -> "123" "45"; (1,2) rank 3
  CHECK(tok.encode("12345") == Ids{259, '3', '4', '5'});
  // two spaces: \s+(?!\S) takes the first, " the" the rest
  CHECK(tok.encode("  the") == Ids{' ', 258});
  CHECK(tok.encode("a\n\nb") == Ids{'a', '\n', '\n', 'b'});
  // added tokens split out first, BOS on request
  CHECK(tok.encode("<|bos|>the<|eot|>") == Ids{300, 't', 257, 301});
  CHECK(tok.encode("the", true) == Ids{300, 't', 257});
  CHECK(tok.encode("é") == Ids{0xC3, 0xA9});
  CHECK(tok.decode({300, 't', 257, 301}) == "<|bos|>the<|eot|>");
  CHECK(tok.decode({300, 't', 257, 301}, true) == "the");
  LLAMA_CHECK_THROWS_WITH_ALL(tok.decode({280}), "[0, 302)", "280");
  LLAMA_CHECK_THROWS_WITH_ALL(tok.encode("bad \xFF byte"), "UTF-8", "byte 4");
  for (const char* s : kRoundTrip) CHECK_MESSAGE(tok.decode(tok.encode(s)) == s, s);

  SUBCASE("Qwen2 regex: single digits") {
    const Tokenizer q(tiny_tokenizer_json("bpe_qwen2", BpeTokenizer::kQwen2Regex));
    CHECK(q.encode("12345") == Ids{'1', '2', '3', '4', '5'});
    CHECK(q.encode(" the 12") == Ids{258, ' ', '1', '2'});  // " 12": ` ?[^\s\p{L}\p{N}]+` does not take digits
    for (const char* s : kRoundTrip) CHECK_MESSAGE(q.decode(q.encode(s)) == s, s);
  }
  SUBCASE("ignore_merges: a whole pre-token in the vocab is one token") {
    const Tokenizer a(tiny_tokenizer_json("bpe_ign0", BpeTokenizer::kLlama3Regex, false, true));
    const Tokenizer b(tiny_tokenizer_json("bpe_ign1", BpeTokenizer::kLlama3Regex, true, true));
    CHECK(a.encode("hello") == Ids{257, 260, 'o'});
    CHECK(b.encode("hello") == Ids{263});
  }
}

TEST_CASE("BPE tokenizer: LLaMA-3 tiktoken file, detection, errors") {
  const auto dir = tiny_tiktoken("bpe_tiktoken");
  const Tokenizer tok(dir);  // only original/tokenizer.model
  CHECK(tok.kind() == TokenizerKind::tiktoken);
  CHECK(tok.files().at(0).second == "original/tokenizer.model");
  CHECK(tok.vocab_size() == 263 + 256);
  CHECK(tok.bos_id() == 263);
  CHECK(tok.eos_id() == 264);
  CHECK(tok.token_id("<|eot_id|>") == std::optional<std::int32_t>(272));
  CHECK(tok.token_id("<|start_header_id|>") == std::optional<std::int32_t>(269));
  CHECK(tok.token_id("<|reserved_special_token_2|>") == std::optional<std::int32_t>(274));
  // tiktoken merges by the rank of the merged bytes: he + ll = "hell" (262) exists, so it merges
  CHECK(tok.encode("hello") == Ids{262, 'o'});
  CHECK(tok.encode(" the") == Ids{258});
  CHECK(tok.encode("12345") == Ids{259, '3', '4', '5'});
  CHECK(tok.encode("<|begin_of_text|>the<|eot_id|>", false) == Ids{263, 't', 257, 272});
  for (const char* s : kRoundTrip) CHECK_MESSAGE(tok.decode(tok.encode(s)) == s, s);
  // with generation_config.json beside original/: EOS list as in LLaMA-3.1 Instruct
  write_file_atomic(dir / "generation_config.json", "{\"bos_token_id\": 263, \"eos_token_id\": [264, 272]}");
  const Tokenizer tok2(dir / "original" / "tokenizer.model");
  CHECK(tok2.eos_id() == 264);
  CHECK(tok2.eos_ids() == Ids{264, 272});

  SUBCASE("detection order and explicit kinds") {
    if (llama_test::have_data()) {
      const Tokenizer sp(llama_test::data_dir() / "stories260K-hf");
      CHECK(sp.kind() == TokenizerKind::sentencepiece);
      CHECK(sp.eos_ids() == Ids{2});
      CHECK(sp.token_id("</s>") == std::optional<std::int32_t>(2));
    }
    const auto [file, kind] = detect_tokenizer(dir / "original" / "tokenizer.model");
    CHECK(kind == TokenizerKind::tiktoken);
    LLAMA_CHECK_THROWS_WITH_ALL(Tokenizer(llama_test::scratch("bpe_empty")), "expected a tokenizer", "tokenizer.json");
  }
  SUBCASE("malformed files") {
    const auto d = llama_test::scratch("bpe_bad");
    write_file_atomic(d / "t.model", "QUJD 0\nQUJ 1\n");
    LLAMA_CHECK_THROWS_WITH_ALL(Tokenizer(d / "t.model", TokenizerKind::tiktoken), "t.model:2", "tiktoken");
    write_file_atomic(d / "u.model", "QQ== 0\nQg== 5\n");
    LLAMA_CHECK_THROWS_WITH_ALL(Tokenizer(d / "u.model", TokenizerKind::tiktoken), "u.model:2", "expected rank 1", "5");
    write_file_atomic(d / "tokenizer.json", R"({"model": {"type": "Unigram", "vocab": []}})");
    LLAMA_CHECK_THROWS_WITH_ALL(Tokenizer(d / "tokenizer.json"), "model.type \"BPE\"", "Unigram");
    write_file_atomic(d / "tokenizer.json",
                      R"({"pre_tokenizer": {"type": "Metaspace"}, "model": {"type": "BPE", "vocab": {}, "merges": []}})");
    LLAMA_CHECK_THROWS_WITH_ALL(Tokenizer(d / "tokenizer.json"), "Metaspace", "not supported");
    write_file_atomic(d / "tokenizer.json",
                      R"({"model": {"type": "BPE", "byte_fallback": true, "vocab": {}, "merges": []}})");
    LLAMA_CHECK_THROWS_WITH_ALL(Tokenizer(d / "tokenizer.json"), "byte_fallback", "tokenizer.model");
    write_file_atomic(d / "tokenizer.json",
                      R"({"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(?<x"}, "behavior": "Isolated"},
                          "model": {"type": "BPE", "vocab": {}, "merges": []}})");
    LLAMA_CHECK_THROWS_WITH_ALL(Tokenizer(d / "tokenizer.json"), "PCRE2", "(?<x");
  }
}

TEST_CASE("BPE tokenizer: matches HF tokenizers on the committed fixtures (scripts/make-tokenizer-fixtures.py)") {
  const fs::path root = HDPISSA_LLAMA_FIXTURES "/tokenizers";
  int checked = 0;
  if (fs::exists(root))
    for (const auto& e : fs::directory_iterator(root)) {
      const auto json = e.path() / "tokenizer.json", ref = e.path() / "reference.jsonl";
      if (!fs::exists(json) || !fs::exists(ref)) continue;
      const Tokenizer tok(e.path());
      std::ifstream in(ref);
      std::string line;
      int n = 0, bad = 0;
      while (std::getline(in, line)) {
        if (line.empty()) continue;
        const auto j = nlohmann::json::parse(line);
        const std::string text = j.at("text").get<std::string>();
        const auto want = j.at("ids").get<Ids>();
        const auto got = tok.encode(text, false);
        ++n;
        if (got != want && ++bad <= 5) CHECK_MESSAGE(got == want, e.path().filename().string() << ": " << j.dump());
        CHECK_MESSAGE(tok.decode(got) == text, text);
      }
      CHECK_MESSAGE(bad == 0, e.path().filename().string() << ": " << bad << " of " << n << " strings differ");
      MESSAGE(e.path().filename().string() << ": " << n << " strings compared with HF tokenizers");
      CHECK(n > 0);
      ++checked;
    }
  if (checked == 0)
    MESSAGE("SKIPPED: no fixtures in " << root.string() << " (run scripts/make-tokenizer-fixtures.py where "
            "tokenizers/transformers are installed)");
}
