#pragma once
/// \file tokenizer.hpp
/// Tokenizer: a SentencePiece `.model` (LLaMA-1/2, TinyStories tok512) via libsentencepiece.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <sentencepiece_processor.h>

#include "llama/common.hpp"

namespace hdpissa::llama {

/// SentencePiece tokenizer with LLaMA conventions (BOS prepended on request, EOS appended by the
/// caller as a token id, never as the literal "</s>").
class Tokenizer {
 public:
  /// Loads a SentencePiece model file; throws naming the file on failure.
  explicit Tokenizer(const std::filesystem::path& model_path)
      : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
    if (!std::filesystem::exists(model_path))
      throw LlamaError(cat("tokenizer model not found: ", model_path.string()));
    const auto status = sp_->Load(model_path.string());
    if (!status.ok())
      throw LlamaError(cat(model_path.string(), ": expected a SentencePiece model, load failed: ", status.ToString()));
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
  /// Beginning-of-sequence id (1 for LLaMA).
  [[nodiscard]] std::int32_t bos_id() const { return sp_->bos_id(); }
  /// End-of-sequence id (2 for LLaMA).
  [[nodiscard]] std::int32_t eos_id() const { return sp_->eos_id(); }
  /// Padding id as stored in the model (-1 for LLaMA, which has none).
  [[nodiscard]] std::int32_t pad_id() const { return sp_->pad_id(); }
  /// Number of pieces.
  [[nodiscard]] std::int32_t vocab_size() const { return sp_->GetPieceSize(); }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
};

}  // namespace hdpissa::llama
