#pragma once
/// \file tokenizer.hpp
/// Tokenizer: the one tokenizer type the trainer and the tools use. It dispatches to
///  - SentencePieceTokenizer: a SentencePiece `.model` (LLaMA-1/2, Mistral v0.1-v0.3, TinyStories
///    tok512) via libsentencepiece, unchanged; or
///  - BpeTokenizer (llama/bpe_tokenizer.hpp): byte-level BPE from `tokenizer.json` (LLaMA-3, Qwen2,
///    Mistral Tekken) or LLaMA-3's tiktoken `original/tokenizer.model`.
/// The kind is detected from what the path holds (detect_tokenizer) or given explicitly.

#include <cctype>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <tuple>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <sentencepiece_processor.h>

#include "llama/bpe_tokenizer.hpp"
#include "llama/common.hpp"

namespace hdpissa::llama {

/// SentencePiece tokenizer with LLaMA conventions (BOS prepended on request, EOS appended by the
/// caller as a token id, never as the literal "</s>").
class SentencePieceTokenizer {
 public:
  /// Loads a SentencePiece model file; throws naming the file on failure.
  explicit SentencePieceTokenizer(const std::filesystem::path& model_path)
      : sp_(std::make_shared<sentencepiece::SentencePieceProcessor>()) {
    if (!std::filesystem::exists(model_path))
      throw LlamaError(cat("tokenizer model not found: ", model_path.string()));
    const auto status = sp_->Load(model_path.string());
    if (!status.ok())
      throw LlamaError(cat(model_path.string(), ": expected a SentencePiece model, load failed: ", status.ToString(),
                           model_path.extension() == ".bin"
                               ? " (llama2.c's tokenizer .bin files are not read: use the SentencePiece .model it was "
                                 "exported from, e.g. tok512.model beside tok512.bin)"
                               : ""));
  }

  /// Token ids of `text`, with BOS prepended when `add_bos`.
  [[nodiscard]] std::vector<std::int32_t> encode(std::string_view text, bool add_bos = false) const {
    std::vector<int> ids;
    const auto status = sp_->Encode(text, &ids);
    if (!status.ok()) throw LlamaError(cat("sentencepiece encode failed: ", status.ToString()));
    std::vector<std::int32_t> out;
    out.reserve(ids.size() + 1);
    if (add_bos) out.push_back(bos_id());
    out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }

  /// Text of `ids` (BOS/EOS/control tokens are dropped, as SentencePiece does).
  [[nodiscard]] std::string decode(const std::vector<std::int32_t>& ids) const {
    std::vector<int> v;
    v.reserve(ids.size());
    for (auto id : ids) {
      if (id < 0 || id >= vocab_size())
        throw LlamaError(cat("decode: expected token ids in [0, ", vocab_size(), "), found ", id));
      v.push_back(id);
    }
    std::string text;
    const auto status = sp_->Decode(v, &text);
    if (!status.ok()) throw LlamaError(cat("sentencepiece decode failed: ", status.ToString()));
    return text;
  }

  /// The piece string of one token (e.g. "▁Once").
  [[nodiscard]] std::string piece(std::int32_t id) const { return sp_->IdToPiece(id); }
  /// Id of a piece ("</s>", "▁Once"); nullopt if the model has no such piece.
  [[nodiscard]] std::optional<std::int32_t> token_id(std::string_view p) const {
    const int id = sp_->PieceToId(p);
    if (id < 0 || sp_->IdToPiece(id) != p) return std::nullopt;
    return id;
  }
  /// Beginning-of-sequence id (1 for LLaMA).
  [[nodiscard]] std::int32_t bos_id() const { return sp_->bos_id(); }
  /// End-of-sequence id (2 for LLaMA).
  [[nodiscard]] std::int32_t eos_id() const { return sp_->eos_id(); }
  /// Padding id as stored in the model (-1 for LLaMA, which has none).
  [[nodiscard]] std::int32_t pad_id() const { return sp_->pad_id(); }
  /// Number of pieces.
  [[nodiscard]] std::int32_t vocab_size() const { return sp_->GetPieceSize(); }

 private:
  std::shared_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

/// Which tokenizer implementation a file holds.
enum class TokenizerKind {
  automatic,      ///< detect_tokenizer decides
  sentencepiece,  ///< SentencePiece protobuf `.model`
  bpe_json,       ///< HF `tokenizer.json`, byte-level BPE
  tiktoken,       ///< LLaMA-3 `original/tokenizer.model` (base64 + rank lines)
};

/// Name of a kind: "auto", "sentencepiece", "tokenizer.json", "tiktoken".
inline const char* tokenizer_kind_name(TokenizerKind k) {
  switch (k) {
    case TokenizerKind::automatic: return "auto";
    case TokenizerKind::sentencepiece: return "sentencepiece";
    case TokenizerKind::bpe_json: return "tokenizer.json";
    case TokenizerKind::tiktoken: return "tiktoken";
  }
  return "?";
}

namespace detail {
/// Whether a file looks like tiktoken: its first line is "<base64> <integer>".
inline bool looks_like_tiktoken(const std::filesystem::path& p) {
  std::string head;
  std::ifstream in(p, std::ios::binary);
  if (!in) return false;
  head.resize(512);
  in.read(head.data(), std::streamsize(head.size()));
  head.resize(std::size_t(in.gcount()));
  const auto nl = head.find('\n');
  if (nl == std::string::npos) return false;
  const std::string line = head.substr(0, nl);
  const auto sp = line.find(' ');
  if (sp == std::string::npos || sp == 0 || sp + 1 >= line.size()) return false;
  for (std::size_t i = 0; i < sp; ++i) {
    const char c = line[i];
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/' || c == '=')) return false;
  }
  for (std::size_t i = sp + 1; i < line.size(); ++i)
    if (!std::isdigit(static_cast<unsigned char>(line[i])) && line[i] != '\r') return false;
  return true;
}
}  // namespace detail

/// Resolves `path` (a tokenizer file or a model directory) to (file, kind). In a directory, in
/// order: tokenizer.model if SentencePiece, tokenizer.json, tokenizer.model if tiktoken,
/// original/tokenizer.model (tiktoken). A file: `.json` = tokenizer.json, tiktoken by content,
/// else SentencePiece. Throws saying what was looked for.
inline std::pair<std::filesystem::path, TokenizerKind> detect_tokenizer(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  if (!fs::exists(path)) throw LlamaError(cat("tokenizer model not found: ", path.string()));
  if (fs::is_directory(path)) {
    const auto model = path / "tokenizer.model", json = path / "tokenizer.json", orig = path / "original" / "tokenizer.model";
    if (fs::exists(model) && !detail::looks_like_tiktoken(model)) return {model, TokenizerKind::sentencepiece};
    if (fs::exists(json)) return {json, TokenizerKind::bpe_json};
    if (fs::exists(model)) return {model, TokenizerKind::tiktoken};
    if (fs::exists(orig) && detail::looks_like_tiktoken(orig)) return {orig, TokenizerKind::tiktoken};
    throw LlamaError(cat(path.string(), ": expected a tokenizer (tokenizer.model, tokenizer.json or "
                                        "original/tokenizer.model), found none"));
  }
  if (path.extension() == ".json") return {path, TokenizerKind::bpe_json};
  if (detail::looks_like_tiktoken(path)) return {path, TokenizerKind::tiktoken};
  return {path, TokenizerKind::sentencepiece};
}

/// The tokenizer of the trainer and the tools: one of SentencePieceTokenizer / BpeTokenizer.
/// Interface (both kinds):
///  - `encode(text, add_bos) -> std::vector<int32_t>`; `decode(ids) -> std::string`
///  - `bos_id()` (-1: none), `eos_id()`, `eos_ids()` (all stop ids), `pad_id()`, `vocab_size()`
///  - `piece(id)`, `token_id(text) -> optional<int32_t>` (special-token lookups of chat templates)
///  - `chat_template()`: tokenizer_config.json's template text ("" for SentencePiece)
///  - `files()`: (source file, name inside a saved model directory) to copy next to a saved model
class Tokenizer {
 public:
  /// Loads `path` (a file or a model directory); `kind` = automatic detects it (detect_tokenizer).
  explicit Tokenizer(const std::filesystem::path& path, TokenizerKind kind = TokenizerKind::automatic) {
    std::filesystem::path file = path;
    if (kind == TokenizerKind::automatic) std::tie(file, kind) = detect_tokenizer(path);
    else if (!std::filesystem::exists(path)) throw LlamaError(cat("tokenizer model not found: ", path.string()));
    kind_ = kind;
    file_ = file;
    switch (kind) {
      case TokenizerKind::sentencepiece: sp_ = std::make_shared<SentencePieceTokenizer>(file); break;
      case TokenizerKind::bpe_json: bpe_ = std::make_shared<BpeTokenizer>(BpeTokenizer::from_tokenizer_json(file)); break;
      case TokenizerKind::tiktoken: bpe_ = std::make_shared<BpeTokenizer>(BpeTokenizer::from_tiktoken(file)); break;
      case TokenizerKind::automatic: break;
    }
  }

  /// Token ids of `text`, with BOS prepended when `add_bos` (and the tokenizer has a BOS).
  [[nodiscard]] std::vector<std::int32_t> encode(std::string_view text, bool add_bos = false) const {
    return sp_ ? sp_->encode(text, add_bos) : bpe_->encode(text, add_bos);
  }
  /// Text of `ids`. SentencePiece drops control tokens; byte-level BPE keeps special tokens
  /// unless `skip_special`.
  [[nodiscard]] std::string decode(const std::vector<std::int32_t>& ids, bool skip_special = false) const {
    return sp_ ? sp_->decode(ids) : bpe_->decode(ids, skip_special);
  }
  /// The piece string of one token.
  [[nodiscard]] std::string piece(std::int32_t id) const { return sp_ ? sp_->piece(id) : bpe_->piece(id); }
  /// Id of a token given by its text; nullopt if none.
  [[nodiscard]] std::optional<std::int32_t> token_id(std::string_view text) const {
    return sp_ ? sp_->token_id(text) : bpe_->token_id(text);
  }
  /// Beginning-of-sequence id (-1: the tokenizer has none, e.g. Qwen2).
  [[nodiscard]] std::int32_t bos_id() const { return sp_ ? sp_->bos_id() : bpe_->bos_id(); }
  /// End-of-sequence id.
  [[nodiscard]] std::int32_t eos_id() const { return sp_ ? sp_->eos_id() : bpe_->eos_id(); }
  /// Every id that ends generation (eos_id() first).
  [[nodiscard]] std::vector<std::int32_t> eos_ids() const {
    return sp_ ? std::vector<std::int32_t>{sp_->eos_id()} : bpe_->eos_ids();
  }
  /// Padding id (-1 if none).
  [[nodiscard]] std::int32_t pad_id() const { return sp_ ? sp_->pad_id() : bpe_->pad_id(); }
  /// Number of ids.
  [[nodiscard]] std::int32_t vocab_size() const { return sp_ ? sp_->vocab_size() : bpe_->vocab_size(); }
  /// tokenizer_config.json's chat_template ("" if none).
  [[nodiscard]] std::string chat_template() const { return bpe_ ? bpe_->chat_template() : std::string(); }
  /// Which implementation is in use.
  [[nodiscard]] TokenizerKind kind() const { return kind_; }
  /// The tokenizer file that was loaded.
  [[nodiscard]] const std::filesystem::path& file() const { return file_; }
  /// Files to copy into a saved model directory, as (source, relative destination).
  [[nodiscard]] std::vector<std::pair<std::filesystem::path, std::string>> files() const {
    std::vector<std::pair<std::filesystem::path, std::string>> f;
    switch (kind_) {
      case TokenizerKind::sentencepiece: f.emplace_back(file_, "tokenizer.model"); break;
      case TokenizerKind::bpe_json: f.emplace_back(file_, "tokenizer.json"); break;
      case TokenizerKind::tiktoken: f.emplace_back(file_, "original/tokenizer.model"); break;
      case TokenizerKind::automatic: break;
    }
    if (bpe_)
      for (const auto& c : bpe_->config_files())
        if (c.filename() == "tokenizer_config.json") f.emplace_back(c, "tokenizer_config.json");
    return f;
  }
  /// The SentencePiece implementation (nullptr for BPE).
  [[nodiscard]] const SentencePieceTokenizer* sentencepiece() const { return sp_.get(); }
  /// The BPE implementation (nullptr for SentencePiece).
  [[nodiscard]] const BpeTokenizer* bpe() const { return bpe_.get(); }

 private:
  TokenizerKind kind_ = TokenizerKind::automatic;
  std::filesystem::path file_;
  std::shared_ptr<const SentencePieceTokenizer> sp_;
  std::shared_ptr<const BpeTokenizer> bpe_;
};

}  // namespace hdpissa::llama
