#pragma once
/// \file batch.hpp
/// Batch: a right-padded micro-batch of token sequences with HF-style labels.

#include <cstdint>
#include <vector>

#include "llama/common.hpp"

namespace hdpissa::llama {

/// Position in the data stream: the next micro-batch starts at `index` of this shard's order for
/// `epoch`. Saving it and calling DataLoader::seek resumes a run exactly.
struct DataPosition {
  std::int64_t epoch = 0;  ///< epoch number (selects the shuffle)
  std::int64_t index = 0;  ///< position inside this shard's order for that epoch
  friend bool operator==(const DataPosition&, const DataPosition&) = default;
};

/// A micro-batch: `batch_size` sequences of `seq_len` tokens, right-padded.
///  - `input_ids` and `labels` are `(batch_size, seq_len)` row-major.
///  - `labels` follow the HF convention: aligned with `input_ids` (NOT shifted); the model predicts
///    `labels[b, t+1]` from position `t`. Masked and padding positions hold kIgnoreIndex (-100).
///  - `lengths[b]` is the number of real (unpadded) tokens of row b; positions ≥ length are padding
///    (attention_mask 0) and are never attended to.
struct Batch {
  int batch_size = 0;                     ///< rows
  int seq_len = 0;                        ///< padded length
  std::vector<std::int32_t> input_ids;    ///< (batch_size, seq_len)
  std::vector<std::int32_t> labels;       ///< (batch_size, seq_len), -100 = ignored
  std::vector<int> lengths;               ///< (batch_size)
  std::vector<std::int64_t> example_ids;  ///< source example index of each row (for logging / checks)
  DataPosition position;                  ///< where this batch started in the stream

  /// Number of tokens that contribute to the loss (labels[b, t] != -100 for t ≥ 1, t < length).
  [[nodiscard]] std::int64_t num_target_tokens() const {
    return for_each_target([](std::int64_t, std::int32_t) {});
  }

  /// The loss targets, in row-major order: calls emit(row, label) for every (b, t) with
  /// t + 1 < lengths[b] and label = labels[b, t+1] ≠ -100, where row = b·seq_len + t is the token
  /// row that predicts it. Returns their number. Labels are not range-checked here (see check()).
  template <class Emit>
  std::int64_t for_each_target(Emit&& emit) const {
    std::int64_t n = 0;
    for (int b = 0; b < batch_size; ++b)
      for (int t = 0; t + 1 < lengths[b]; ++t) {
        const std::int32_t lab = labels[static_cast<std::size_t>(b) * seq_len + t + 1];
        if (lab == kIgnoreIndex) continue;
        emit(static_cast<std::int64_t>(b) * seq_len + t, lab);
        ++n;
      }
    return n;
  }

  /// A batch of one unpadded sequence; labels = tokens (every next token is a target) unless given.
  static Batch single(const std::vector<std::int32_t>& tokens, std::vector<std::int32_t> labels = {}) {
    Batch b;
    b.batch_size = 1;
    b.seq_len = static_cast<int>(tokens.size());
    b.input_ids = tokens;
    b.labels = labels.empty() ? tokens : std::move(labels);
    if (b.labels.size() != tokens.size())
      throw LlamaError(cat("Batch::single: expected ", tokens.size(), " labels, found ", b.labels.size()));
    b.lengths = {b.seq_len};
    b.example_ids = {0};
    return b;
  }

  /// Checks the sizes agree; throws saying which does not.
  void validate() const {
    const auto n = static_cast<std::size_t>(batch_size) * seq_len;
    if (input_ids.size() != n || labels.size() != n || lengths.size() != static_cast<std::size_t>(batch_size))
      throw LlamaError(cat("batch: expected input_ids and labels of ", batch_size, "x", seq_len, " = ", n,
                           " and ", batch_size, " lengths, found ", input_ids.size(), ", ", labels.size(), " and ",
                           lengths.size()));
    for (int b = 0; b < batch_size; ++b)
      if (lengths[b] < 1 || lengths[b] > seq_len)
        throw LlamaError(cat("batch: expected row lengths in [1, ", seq_len, "], found ", lengths[b], " in row ", b));
  }

  /// What a model checks before running the batch: validate(), then every input id in
  /// [0, vocab_size) and every target label (see for_each_target) in [0, vocab_size) or -100.
  /// Throws at the first bad entry, prefixed with `who` and naming its row and position.
  void check(int vocab_size, const char* who) const {
    validate();
    const auto n = static_cast<std::int64_t>(batch_size) * seq_len;
    for (std::int64_t r = 0; r < n; ++r) {
      const std::int32_t id = input_ids[r];
      if (id < 0 || id >= vocab_size)
        throw LlamaError(cat(who, ": expected token ids in [0, ", vocab_size, "), found ", id, " at row ", r / seq_len,
                             " position ", r % seq_len));
    }
    for_each_target([&](std::int64_t row, std::int32_t lab) {
      if (lab < 0 || lab >= vocab_size)
        throw LlamaError(cat(who, ": expected labels in [0, ", vocab_size, ") or -100, found ", lab, " at row ",
                             row / seq_len, " position ", row % seq_len + 1));
    });
  }
};

}  // namespace hdpissa::llama
