#pragma once
/// \file bpe_tokenizer.hpp
/// BpeTokenizer: byte-level BPE as used by GPT-2, LLaMA-3, Qwen2 and Mistral's Tekken, read from
///  - a Hugging Face `tokenizer.json` (model type BPE: vocab + merges; pre-tokenizer Split regexes
///    and/or ByteLevel; added tokens), or
///  - LLaMA-3's tiktoken file `original/tokenizer.model` (one "base64(token) rank" per line; LLaMA-3's
///    split regex and its 256 special tokens are built in, as in Meta's `tokenizer.py`).
/// BOS / EOS come from `tokenizer_config.json` (bos_token / eos_token) and `generation_config.json`
/// (eos_token_id, int or list) beside the tokenizer.
///
/// Encoding: added tokens are split out first (leftmost, then longest, exact match); the text
/// between them is cut by the pre-tokenizer regex (PCRE2, UTF + UCP: `\p{L}`, `\s` are Unicode),
/// each piece's UTF-8 bytes are BPE-merged by merge rank. decode(encode(s)) == s for every valid
/// UTF-8 `s`. A `NFC` normalizer is accepted but not applied (it is the identity on NFC text, which
/// all of our data is); any other normalizer is an error.

#ifndef PCRE2_CODE_UNIT_WIDTH
#define PCRE2_CODE_UNIT_WIDTH 8
#endif

#include <algorithm>
#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <pcre2.h>

#include "llama/common.hpp"

namespace hdpissa::llama {

namespace bpe_detail {

/// GPT-2's bytes_to_unicode(): the code point that stands for each byte in vocab / merges strings.
inline std::array<char32_t, 256> byte_to_codepoint() {
  std::array<char32_t, 256> t{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    t[b] = printable ? char32_t(b) : next++;
  }
  return t;
}

/// Appends the UTF-8 encoding of `cp`.
inline void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

/// Decodes the code point at s[i] and advances i; false on malformed UTF-8.
inline bool next_utf8(std::string_view s, std::size_t& i, char32_t& cp) {
  const auto c = static_cast<unsigned char>(s[i]);
  int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (n == 0 || i + n > s.size()) return false;
  cp = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
  for (int k = 1; k < n; ++k) {
    const auto d = static_cast<unsigned char>(s[i + k]);
    if ((d >> 6) != 2) return false;
    cp = (cp << 6) | (d & 0x3F);
  }
  i += n;
  return true;
}

/// Raw bytes of a byte-level vocab string ("Ġthe" -> " the"); nullopt if it is not byte-level.
inline std::optional<std::string> unmap_bytes(std::string_view mapped) {
  static const auto inverse = [] {
    std::array<int, 324> inv{};
    inv.fill(-1);
    const auto fwd = byte_to_codepoint();
    for (int b = 0; b < 256; ++b) inv[fwd[b]] = b;
    return inv;
  }();
  std::string out;
  std::size_t i = 0;
  char32_t cp = 0;
  while (i < mapped.size()) {
    if (!next_utf8(mapped, i, cp) || cp >= inverse.size() || inverse[cp] < 0) return std::nullopt;
    out += char(inverse[cp]);
  }
  return out;
}

/// Byte-level vocab string of raw bytes (" the" -> "Ġthe").
inline std::string map_bytes(std::string_view raw) {
  static const auto fwd = byte_to_codepoint();
  std::string out;
  for (unsigned char b : raw) append_utf8(out, fwd[b]);
  return out;
}

/// Standard base64 (RFC 4648, with padding) -> bytes; nullopt on a malformed string.
inline std::optional<std::string> base64_decode(std::string_view s) {
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  if (s.size() % 4 != 0) return std::nullopt;
  std::string out;
  for (std::size_t i = 0; i < s.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      if (s[i + k] == '=' && i + 4 == s.size() && k >= 2) { v[k] = 0; ++pad; continue; }
      if (pad) return std::nullopt;
      v[k] = val(s[i + k]);
      if (v[k] < 0) return std::nullopt;
    }
    const std::uint32_t w = (std::uint32_t(v[0]) << 18) | (std::uint32_t(v[1]) << 12) | (std::uint32_t(v[2]) << 6) | std::uint32_t(v[3]);
    out += char((w >> 16) & 0xFF);
    if (pad < 2) out += char((w >> 8) & 0xFF);
    if (pad < 1) out += char(w & 0xFF);
  }
  return out;
}

}  // namespace bpe_detail

/// A compiled PCRE2 pattern (UTF + UCP) used as an "Isolated" splitter: matches and the gaps
/// between them become pieces, in order, so the pieces concatenate to the input.
class Pcre2Splitter {
 public:
  /// Compiles `pattern`; throws naming the pattern and PCRE2's message.
  explicit Pcre2Splitter(const std::string& pattern) : pattern_(pattern) {
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code* c = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                                  &err, &off, nullptr);
    if (!c) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(err, buf, sizeof(buf));
      throw LlamaError(cat("pre-tokenizer regex /", pattern, "/: PCRE2 cannot compile it at offset ", off, ": ",
                           reinterpret_cast<const char*>(buf)));
    }
    code_.reset(c, Free{});
    (void)pcre2_jit_compile(c, PCRE2_JIT_COMPLETE);  // falls back to the interpreter if JIT is unavailable
  }
  /// Appends the pieces of `s` (valid UTF-8, checked by the caller) to `out`.
  void split(std::string_view s, std::vector<std::string_view>& out) const {
    std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> md(
        pcre2_match_data_create_from_pattern(code_.get(), nullptr), pcre2_match_data_free);
    std::size_t pos = 0, last = 0;
    while (pos < s.size()) {
      const int rc = pcre2_match(code_.get(), reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos,
                                 PCRE2_NO_UTF_CHECK, md.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) throw LlamaError(cat("pre-tokenizer regex /", pattern_, "/: PCRE2 match error ", rc));
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
      const std::size_t b = ov[0], e = ov[1];
      if (e == b) {  // empty match: step one code point
        std::size_t i = b;
        char32_t cp;
        if (i >= s.size() || !bpe_detail::next_utf8(s, i, cp)) break;
        pos = i;
        continue;
      }
      if (b > last) out.push_back(s.substr(last, b - last));
      out.push_back(s.substr(b, e - b));
      last = pos = e;
    }
    if (last < s.size()) out.push_back(s.substr(last));
  }
  /// The source pattern.
  [[nodiscard]] const std::string& pattern() const { return pattern_; }

 private:
  struct Free {
    void operator()(pcre2_code* c) const { pcre2_code_free(c); }
  };
  std::string pattern_;
  std::shared_ptr<pcre2_code> code_;
};

/// Byte-level BPE tokenizer (see the file comment). Copyable; encode/decode are const and thread-safe.
class BpeTokenizer {
 public:
  /// GPT-2's pre-tokenizer regex (ByteLevel with use_regex = true).
  static constexpr const char* kGpt2Regex =
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
  /// LLaMA-3's pre-tokenizer regex (Meta's tokenizer.py `pat_str`, also in its tokenizer.json).
  static constexpr const char* kLlama3Regex =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
  /// Qwen2's pre-tokenizer regex (single digits).
  static constexpr const char* kQwen2Regex =
      R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

  /// One added token (special or not): split out of the text before BPE, matched exactly.
  struct AddedToken {
    std::string content;  ///< literal text
    std::int32_t id = 0;  ///< token id
    bool special = true;  ///< skipped by decode(ids, skip_special = true)
  };

  /// Loads a HF `tokenizer.json`; BOS / EOS from `config_dir`'s tokenizer_config.json and
  /// generation_config.json (default: the json's folder). Throws naming the file and what is unsupported.
  static BpeTokenizer from_tokenizer_json(const std::filesystem::path& file, std::filesystem::path config_dir = {}) {
    const std::string where = file.string();
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(read_file_text(file));
    } catch (const nlohmann::json::parse_error& e) {
      throw LlamaError(cat(where, ": corrupt JSON (", e.what(), ")"));
    }
    BpeTokenizer t;
    t.source_ = file;
    const auto& m = j.value("model", nlohmann::json::object());
    const std::string type = m.value("type", std::string("?"));
    if (type != "BPE")
      throw LlamaError(cat(where, ": expected a byte-level BPE tokenizer (model.type \"BPE\"), found model.type \"", type,
                           "\"; SentencePiece models load from tokenizer.model"));
    if (m.value("byte_fallback", false))
      throw LlamaError(cat(where, ": model.byte_fallback=true is a SentencePiece-style BPE (LLaMA-2, Mistral v0.1-v0.3), "
                                  "not byte-level; load its tokenizer.model instead"));
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (m.contains(key) && m[key].is_string() && !m[key].get<std::string>().empty())
        throw LlamaError(cat(where, ": model.", key, " = ", m[key].dump(), " is not supported (expected none)"));
    t.ignore_merges_ = m.value("ignore_merges", false);

    // normalizer: none, or NFC (the identity on NFC text; not applied)
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      const auto nt = j["normalizer"].value("type", std::string("?"));
      if (nt != "NFC")
        throw LlamaError(cat(where, ": normalizer ", nt, " is not supported (expected none or NFC)"));
    }
    // pre-tokenizer: [Split(regex, Isolated)...] then ByteLevel
    bool byte_level = false;
    auto pre = [&](const nlohmann::json& p, auto& self) -> void {
      const std::string pt = p.value("type", std::string("?"));
      if (pt == "Sequence") {
        for (const auto& q : p.at("pretokenizers")) self(q, self);
      } else if (pt == "Split") {
        const auto& pat = p.at("pattern");
        const std::string behavior = p.value("behavior", std::string("?"));
        if (behavior != "Isolated" || p.value("invert", false))
          throw LlamaError(cat(where, ": Split pre-tokenizer with behavior ", behavior, (p.value("invert", false) ? " (inverted)" : ""),
                               " is not supported (expected Isolated, not inverted)"));
        if (pat.contains("Regex")) t.splitters_.emplace_back(pat["Regex"].get<std::string>());
        else throw LlamaError(cat(where, ": Split pre-tokenizer pattern ", pat.dump(), " is not supported (expected {\"Regex\": ...})"));
      } else if (pt == "ByteLevel") {
        byte_level = true;
        t.add_prefix_space_ = p.value("add_prefix_space", false);
        if (p.value("use_regex", true)) t.splitters_.emplace_back(kGpt2Regex);
      } else {
        throw LlamaError(cat(where, ": pre-tokenizer ", pt, " is not supported (expected Split and ByteLevel: a byte-level BPE)"));
      }
    };
    if (!j.contains("pre_tokenizer") || j["pre_tokenizer"].is_null())
      throw LlamaError(cat(where, ": expected a ByteLevel pre-tokenizer, found none (not a byte-level BPE)"));
    pre(j["pre_tokenizer"], pre);
    if (!byte_level) throw LlamaError(cat(where, ": expected a ByteLevel pre-tokenizer, found none (not a byte-level BPE)"));

    // added tokens first (their ids may also be in the vocab, with text that is not byte-level)
    std::unordered_map<std::int32_t, std::size_t> added_by_id;
    if (j.contains("added_tokens") && j["added_tokens"].is_array())
      for (const auto& a : j["added_tokens"]) {
        AddedToken at{a.at("content").get<std::string>(), a.at("id").get<std::int32_t>(), a.value("special", false)};
        added_by_id[at.id] = t.added_.size();
        t.added_.push_back(std::move(at));
      }
    const auto& vocab = m.at("vocab");
    std::int32_t max_id = -1;
    for (const auto& a : t.added_) max_id = std::max(max_id, a.id);
    for (auto it = vocab.begin(); it != vocab.end(); ++it) max_id = std::max(max_id, it.value().get<std::int32_t>());
    t.decoder_.assign(std::size_t(max_id + 1), std::string());
    t.present_.assign(std::size_t(max_id + 1), false);
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      const auto id = it.value().get<std::int32_t>();
      if (id < 0) throw LlamaError(cat(where, ": vocab entry ", it.key(), " has a negative id ", id));
      if (added_by_id.count(id)) continue;
      auto raw = bpe_detail::unmap_bytes(it.key());
      if (!raw) throw LlamaError(cat(where, ": vocab entry \"", it.key(), "\" (id ", id, ") is not a byte-level string"));
      t.encoder_[*raw] = id;
      t.decoder_[std::size_t(id)] = std::move(*raw);
      t.present_[std::size_t(id)] = true;
    }
    for (const auto& a : t.added_) {
      t.decoder_[std::size_t(a.id)] = a.content;
      t.present_[std::size_t(a.id)] = true;
    }
    // merges: "a b" strings (tokenizers < 0.20) or [a, b] pairs
    const auto& merges = m.at("merges");
    t.merges_.reserve(merges.size());
    for (std::size_t r = 0; r < merges.size(); ++r) {
      std::string a, b;
      if (merges[r].is_string()) {
        const auto s = merges[r].get<std::string>();
        const auto sp = s.find(' ');
        if (sp == std::string::npos) throw LlamaError(cat(where, ": merge ", r, " \"", s, "\": expected \"left right\""));
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else {
        a = merges[r].at(0).get<std::string>();
        b = merges[r].at(1).get<std::string>();
      }
      const auto ra = bpe_detail::unmap_bytes(a), rb = bpe_detail::unmap_bytes(b);
      if (!ra || !rb) throw LlamaError(cat(where, ": merge ", r, " (", a, " ", b, ") is not byte-level"));
      auto ia = t.encoder_.find(*ra), ib = t.encoder_.find(*rb), im = t.encoder_.find(*ra + *rb);
      if (ia == t.encoder_.end() || ib == t.encoder_.end() || im == t.encoder_.end())
        throw LlamaError(cat(where, ": merge ", r, " (", a, " ", b, ") uses or makes a token that is not in the vocab"));
      t.merges_.emplace(pair_key(ia->second, ib->second), std::make_pair(std::int32_t(r), im->second));
    }
    t.finish(config_dir.empty() ? file.parent_path() : config_dir);
    return t;
  }

  /// Loads LLaMA-3's tiktoken `tokenizer.model` (base64 token + rank per line): LLaMA-3's regex
  /// and its 256 special tokens (ids from the line count on: <|begin_of_text|>, <|end_of_text|>,
  /// ..., <|start_header_id|>, <|end_header_id|>, <|eom_id|>, <|eot_id|>, <|python_tag|>, reserved).
  /// BOS / EOS: tokenizer_config.json / generation_config.json in `config_dir` if present, else
  /// <|begin_of_text|> / <|end_of_text|>.
  static BpeTokenizer from_tiktoken(const std::filesystem::path& file, std::filesystem::path config_dir = {}) {
    const std::string where = file.string();
    const std::string text = read_file_text(file);
    BpeTokenizer t;
    t.source_ = file;
    t.tiktoken_ = true;
    t.ignore_merges_ = true;  // tiktoken returns a piece that is a token as is
    std::size_t pos = 0;
    std::int64_t line_no = 0;
    while (pos < text.size()) {
      std::size_t end = text.find('\n', pos);
      if (end == std::string::npos) end = text.size();
      ++line_no;
      std::string_view line(text.data() + pos, end - pos);
      pos = end + 1;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty()) continue;
      const auto sp = line.find(' ');
      std::optional<std::string> bytes;
      std::int64_t rank = -1;
      if (sp != std::string_view::npos) {
        bytes = bpe_detail::base64_decode(line.substr(0, sp));
        try {
          std::size_t used = 0;
          const std::string r(line.substr(sp + 1));
          rank = std::stoll(r, &used);
          if (used != r.size()) rank = -1;
        } catch (const std::exception&) {
          rank = -1;
        }
      }
      if (!bytes || rank < 0)
        throw LlamaError(cat(where, ":", line_no, ": expected \"<base64 token> <rank>\" (tiktoken format), found \"",
                             std::string(line.substr(0, 60)), "\""));
      if (rank != std::int64_t(t.decoder_.size()))
        throw LlamaError(cat(where, ":", line_no, ": expected rank ", t.decoder_.size(), " (consecutive), found ", rank));
      t.encoder_[*bytes] = std::int32_t(rank);
      t.decoder_.push_back(std::move(*bytes));
    }
    if (t.decoder_.empty()) throw LlamaError(cat(where, ": expected tiktoken lines, found none"));
    t.present_.assign(t.decoder_.size(), true);
    const auto n_base = std::int32_t(t.decoder_.size());
    const char* named[] = {"<|begin_of_text|>", "<|end_of_text|>",  "<|reserved_special_token_0|>",
                           "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                           "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"};
    constexpr int kNamed = 11, kSpecial = 256;
    for (int i = 0; i < kSpecial; ++i) {
      std::string s = i < kNamed ? named[i] : cat("<|reserved_special_token_", 2 + i - kNamed, "|>");
      t.added_.push_back({s, n_base + i, true});
      t.decoder_.push_back(std::move(s));
      t.present_.push_back(true);
    }
    t.splitters_.emplace_back(kLlama3Regex);
    t.bos_ = n_base;
    t.eos_ = n_base + 1;
    if (config_dir.empty()) {
      config_dir = file.parent_path();
      if (config_dir.filename() == "original") config_dir = config_dir.parent_path();
    }
    t.finish(config_dir);
    return t;
  }

  /// Token ids of `text`, BOS first when `add_bos` (and the tokenizer has one). Throws on invalid UTF-8.
  [[nodiscard]] std::vector<std::int32_t> encode(std::string_view text, bool add_bos = false) const {
    std::vector<std::int32_t> out;
    if (add_bos && bos_ >= 0) out.push_back(bos_);
    {
      std::size_t i = 0;
      char32_t cp;
      while (i < text.size())
        if (!bpe_detail::next_utf8(text, i, cp))
          throw LlamaError(cat("BPE encode: expected UTF-8 text, found an invalid byte sequence at byte ", i));
    }
    std::size_t start = 0;
    while (start <= text.size()) {
      const auto [at, which] = find_added(text, start);
      encode_ordinary(text.substr(start, at - start), out, start == 0);
      if (which < 0) break;
      out.push_back(added_[std::size_t(which)].id);
      start = at + added_[std::size_t(which)].content.size();
    }
    return out;
  }

  /// Text of `ids` (bytes concatenated; added tokens as their content, or dropped when they are
  /// special and `skip_special`). Throws on an id outside the vocabulary.
  [[nodiscard]] std::string decode(const std::vector<std::int32_t>& ids, bool skip_special = false) const {
    std::string s;
    for (auto id : ids) {
      if (id < 0 || id >= vocab_size() || !present_[std::size_t(id)])
        throw LlamaError(cat("decode: expected token ids in [0, ", vocab_size(), "), found ", id));
      if (skip_special && is_special(id)) continue;
      s += decoder_[std::size_t(id)];
    }
    return s;
  }

  /// The token string as HF shows it ("Ġthe"; added tokens as their content).
  [[nodiscard]] std::string piece(std::int32_t id) const {
    if (id < 0 || id >= vocab_size() || !present_[std::size_t(id)]) return {};
    if (added_id(id)) return decoder_[std::size_t(id)];
    return bpe_detail::map_bytes(decoder_[std::size_t(id)]);
  }
  /// Id of a token given as its literal text (an added token such as "<|eot_id|>", or raw bytes).
  [[nodiscard]] std::optional<std::int32_t> token_id(std::string_view text) const {
    for (const auto& a : added_)
      if (a.content == text) return a.id;
    auto it = encoder_.find(std::string(text));
    if (it != encoder_.end()) return it->second;
    return std::nullopt;
  }
  /// BOS id, -1 if the tokenizer has none (Qwen2).
  [[nodiscard]] std::int32_t bos_id() const { return bos_; }
  /// EOS id (tokenizer_config.json's eos_token, else generation_config.json's first eos_token_id).
  [[nodiscard]] std::int32_t eos_id() const { return eos_; }
  /// Every end-of-generation id: eos_id() plus generation_config.json's eos_token_id list.
  [[nodiscard]] const std::vector<std::int32_t>& eos_ids() const { return eos_ids_; }
  /// Padding id from tokenizer_config.json's pad_token, -1 if none.
  [[nodiscard]] std::int32_t pad_id() const { return pad_; }
  /// Number of ids (largest id + 1).
  [[nodiscard]] std::int32_t vocab_size() const { return std::int32_t(decoder_.size()); }
  /// The added tokens.
  [[nodiscard]] const std::vector<AddedToken>& added_tokens() const { return added_; }
  /// tokenizer_config.json's chat_template ("" if none).
  [[nodiscard]] const std::string& chat_template() const { return chat_template_; }
  /// Whether this was read from a tiktoken file.
  [[nodiscard]] bool is_tiktoken() const { return tiktoken_; }
  /// The tokenizer file, and the config files that were read (to copy them next to a saved model).
  [[nodiscard]] const std::filesystem::path& source() const { return source_; }
  [[nodiscard]] const std::vector<std::filesystem::path>& config_files() const { return config_files_; }

 private:
  static std::uint64_t pair_key(std::int32_t a, std::int32_t b) {
    return (std::uint64_t(std::uint32_t(a)) << 32) | std::uint32_t(b);
  }
  [[nodiscard]] bool added_id(std::int32_t id) const {
    return std::any_of(added_.begin(), added_.end(), [&](const AddedToken& a) { return a.id == id; });
  }
  [[nodiscard]] bool is_special(std::int32_t id) const {
    return std::any_of(added_.begin(), added_.end(), [&](const AddedToken& a) { return a.id == id && a.special; });
  }

  /// Leftmost added token at or after `from` (longest at that position): (position, index) or (size, -1).
  [[nodiscard]] std::pair<std::size_t, int> find_added(std::string_view s, std::size_t from) const {
    for (std::size_t i = from; i < s.size(); ++i) {
      int best = -1;
      for (int k : by_first_[static_cast<unsigned char>(s[i])]) {
        const auto& c = added_[std::size_t(k)].content;
        if (s.compare(i, c.size(), c) == 0 && (best < 0 || c.size() > added_[std::size_t(best)].content.size())) best = k;
      }
      if (best >= 0) return {i, best};
    }
    return {s.size(), -1};
  }

  /// Pre-tokenizes and BPE-encodes text that holds no added token.
  void encode_ordinary(std::string_view text, std::vector<std::int32_t>& out, bool at_start) const {
    if (text.empty()) return;
    std::string prefixed;
    if (add_prefix_space_ && at_start && text.front() != ' ') {
      prefixed.reserve(text.size() + 1);
      prefixed += ' ';
      prefixed.append(text);
      text = prefixed;
    }
    std::vector<std::string_view> pieces{text}, next;
    for (const auto& sp : splitters_) {
      next.clear();
      for (auto p : pieces) sp.split(p, next);
      pieces.swap(next);
    }
    for (auto p : pieces) bpe(p, out);
  }

  /// Rank and result of merging adjacent tokens (a, b); rank < 0 when they do not merge.
  [[nodiscard]] std::pair<std::int32_t, std::int32_t> merge_of(std::int32_t a, std::int32_t b) const {
    if (tiktoken_) {  // tiktoken: the rank of a merge is the rank (= id) of the merged bytes
      auto it = encoder_.find(decoder_[std::size_t(a)] + decoder_[std::size_t(b)]);
      return it == encoder_.end() ? std::make_pair(-1, -1) : std::make_pair(it->second, it->second);
    }
    auto it = merges_.find(pair_key(a, b));
    return it == merges_.end() ? std::make_pair(-1, -1) : it->second;
  }

  /// BPE of one pre-token: bytes -> byte tokens, then repeatedly merge the lowest-rank adjacent
  /// pair (all its occurrences, left to right), as GPT-2's `bpe()` and HF tokenizers do.
  void bpe(std::string_view word, std::vector<std::int32_t>& out) const {
    if (word.empty()) return;
    if (ignore_merges_) {
      auto it = encoder_.find(std::string(word));
      if (it != encoder_.end()) { out.push_back(it->second); return; }
    }
    std::vector<std::int32_t> sym;
    sym.reserve(word.size());
    for (unsigned char b : word) {
      auto it = encoder_.find(std::string(1, char(b)));
      if (it == encoder_.end())
        throw LlamaError(cat(source_.string(), ": byte 0x", "0123456789abcdef"[b >> 4], "0123456789abcdef"[b & 15],
                             " has no token (a byte-level vocabulary holds all 256 bytes)"));
      sym.push_back(it->second);
    }
    while (sym.size() > 1) {
      std::int32_t best_rank = -1, best_a = 0, best_b = 0, best_m = 0;
      for (std::size_t i = 0; i + 1 < sym.size(); ++i) {
        const auto [r, m] = merge_of(sym[i], sym[i + 1]);
        if (r >= 0 && (best_rank < 0 || r < best_rank)) {
          best_rank = r;
          best_a = sym[i];
          best_b = sym[i + 1];
          best_m = m;
        }
      }
      if (best_rank < 0) break;
      std::size_t w = 0;
      for (std::size_t i = 0; i < sym.size(); ++i) {
        if (i + 1 < sym.size() && sym[i] == best_a && sym[i + 1] == best_b) {
          sym[w++] = best_m;
          ++i;
        } else {
          sym[w++] = sym[i];
        }
      }
      sym.resize(w);
    }
    out.insert(out.end(), sym.begin(), sym.end());
  }

  /// Reads BOS / EOS / PAD / chat template from `dir`'s tokenizer_config.json and
  /// generation_config.json; builds the added-token index.
  void finish(const std::filesystem::path& dir) {
    for (int i = 0; i < 256; ++i) by_first_[std::size_t(i)].clear();
    for (std::size_t k = 0; k < added_.size(); ++k)
      if (!added_[k].content.empty())
        by_first_[static_cast<unsigned char>(added_[k].content[0])].push_back(int(k));
    auto read_json = [&](const std::filesystem::path& p) -> nlohmann::json {
      if (!std::filesystem::exists(p)) return nullptr;
      config_files_.push_back(p);
      try {
        return nlohmann::json::parse(read_file_text(p));
      } catch (const nlohmann::json::parse_error& e) {
        throw LlamaError(cat(p.string(), ": corrupt JSON (", e.what(), ")"));
      }
    };
    auto token_of = [&](const nlohmann::json& cfg, const char* key, const std::filesystem::path& p) -> std::optional<std::int32_t> {
      if (!cfg.is_object() || !cfg.contains(key) || cfg[key].is_null()) return std::nullopt;
      const auto& v = cfg[key];
      const std::string s = v.is_string() ? v.get<std::string>() : v.value("content", std::string());
      auto id = token_id(s);
      if (!id) throw LlamaError(cat(p.string(), ": ", key, " \"", s, "\" is not a token of ", source_.string()));
      return id;
    };
    const auto tc_path = dir / "tokenizer_config.json", gc_path = dir / "generation_config.json";
    const nlohmann::json tc = read_json(tc_path), gc = read_json(gc_path);
    std::vector<std::int32_t> gen_eos;
    if (gc.is_object() && gc.contains("eos_token_id")) {
      const auto& e = gc["eos_token_id"];
      if (e.is_number_integer()) gen_eos.push_back(e.get<std::int32_t>());
      else if (e.is_array())
        for (const auto& x : e) gen_eos.push_back(x.get<std::int32_t>());
    }
    if (tc.is_object()) {
      if (tc.contains("bos_token")) bos_ = token_of(tc, "bos_token", tc_path).value_or(-1);
      if (auto e = token_of(tc, "eos_token", tc_path)) eos_ = *e;
      else if (!gen_eos.empty()) eos_ = gen_eos.front();
      if (auto p = token_of(tc, "pad_token", tc_path)) pad_ = *p;
      if (tc.contains("chat_template") && tc["chat_template"].is_string()) chat_template_ = tc["chat_template"].get<std::string>();
    } else if (!gen_eos.empty()) {
      eos_ = gen_eos.front();
      if (gc.contains("bos_token_id") && gc["bos_token_id"].is_number_integer()) bos_ = gc["bos_token_id"].get<std::int32_t>();
    }
    if (eos_ < 0)
      throw LlamaError(cat(source_.string(), ": expected an EOS token: eos_token in ", tc_path.string(),
                           " or eos_token_id in ", gc_path.string(), ", found neither"));
    eos_ids_ = {eos_};
    for (auto e : gen_eos)
      if (std::find(eos_ids_.begin(), eos_ids_.end(), e) == eos_ids_.end()) eos_ids_.push_back(e);
    for (auto id : eos_ids_)
      if (id < 0 || id >= vocab_size())
        throw LlamaError(cat(gc_path.string(), ": eos id ", id, " is outside the vocabulary [0, ", vocab_size(), ")"));
  }

  std::filesystem::path source_;
  std::vector<std::filesystem::path> config_files_;
  std::unordered_map<std::string, std::int32_t> encoder_;  // raw bytes -> id (ordinary tokens)
  std::vector<std::string> decoder_;                       // id -> raw bytes / added content
  std::vector<bool> present_;                              // id is assigned
  std::unordered_map<std::uint64_t, std::pair<std::int32_t, std::int32_t>> merges_;  // (a, b) -> (rank, merged)
  std::vector<AddedToken> added_;
  std::array<std::vector<int>, 256> by_first_;  // added token indices by first byte
  std::vector<Pcre2Splitter> splitters_;        // applied in order
  bool add_prefix_space_ = false;
  bool ignore_merges_ = false;
  bool tiktoken_ = false;
  std::int32_t bos_ = -1, eos_ = -1, pad_ = -1;
  std::vector<std::int32_t> eos_ids_;
  std::string chat_template_;
};

}  // namespace hdpissa::llama
