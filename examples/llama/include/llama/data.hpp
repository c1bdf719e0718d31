#pragma once
/// \file data.hpp
/// Instruction data for supervised fine-tuning (spec §6):
///  - load_instruction_data: a JSON array or JSONL file; field names auto-detected
///    (query/response, instruction/input/output, question/answer, prompt/completion) or given.
///  - PromptTemplate: the Alpaca template (with the `input` variant when an input is present).
///  - tokenize_example: prompt + response + "\n", then EOS; prompt tokens labelled -100; truncated to
///    max_len; examples whose labels are all masked are dropped.
///  - DataLoader: deterministic per-epoch shuffle by seed, disjoint per-shard (per group / rank)
///    split, right-padded micro-batches, resumable position (epoch, index).

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "llama/batch.hpp"
#include "llama/common.hpp"

namespace hdpissa::llama {

/// Which JSON fields hold the instruction, the optional input and the response.
struct FieldNames {
  std::string instruction;  ///< e.g. "instruction", "query", "question"
  std::string input;        ///< e.g. "input"; empty = the data has no input field
  std::string response;     ///< e.g. "output", "response", "answer"
  friend bool operator==(const FieldNames&, const FieldNames&) = default;
};

/// One instruction example (strings as in the file).
struct InstructionExample {
  std::string instruction;  ///< the task
  std::string input;        ///< optional context (empty if none)
  std::string response;     ///< the target answer
};

/// Picks field names from the keys of one record: instruction/input/output, query/response,
/// question/answer, prompt/completion (first match wins). Throws listing the keys found.
inline FieldNames detect_fields(const nlohmann::json& record, const std::string& where) {
  const FieldNames candidates[] = {{"instruction", "input", "output"}, {"query", "", "response"},
                                   {"question", "", "answer"},        {"instruction", "", "response"},
                                   {"prompt", "", "completion"},      {"problem", "", "solution"}};
  for (const auto& c : candidates)
    if (record.contains(c.instruction) && record.contains(c.response)) {
      FieldNames f = c;
      if (!f.input.empty() && !record.contains(f.input)) f.input.clear();
      return f;
    }
  std::string keys;
  for (auto it = record.begin(); it != record.end(); ++it) keys += (keys.empty() ? "" : ", ") + it.key();
  throw LlamaError(cat(where, ": cannot detect the instruction/response fields: expected one of "
                              "instruction/output, query/response, question/answer, prompt/completion, "
                              "problem/solution; found keys {", keys, "} (name them with --prompt-field, --response-field "
                              "and --input-field, or choose another --data-format)"));
}

namespace detail {

inline std::string field_string(const nlohmann::json& rec, const std::string& key, bool required,
                                const std::string& where) {
  if (key.empty()) return {};
  auto it = rec.find(key);
  if (it == rec.end() || it->is_null()) {
    if (required) throw LlamaError(cat(where, ": expected field '", key, "', not found"));
    return {};
  }
  if (it->is_string()) return it->get<std::string>();
  if (it->is_number() || it->is_boolean()) return it->dump();
  throw LlamaError(cat(where, ": expected field '", key, "' to be a string, found ", it->type_name()));
}

inline InstructionExample to_example(const nlohmann::json& rec, std::optional<FieldNames>& fields,
                                     const std::string& where) {
  if (!rec.is_object()) throw LlamaError(cat(where, ": expected a JSON object, found ", rec.type_name()));
  if (!fields) fields = detect_fields(rec, where);
  InstructionExample ex;
  ex.instruction = field_string(rec, fields->instruction, true, where);
  ex.input = field_string(rec, fields->input, false, where);
  ex.response = field_string(rec, fields->response, true, where);
  return ex;
}

}  // namespace detail

/// One record of a JSON / JSONL data file and where it came from ("file:line" or "file: element i").
struct JsonRecord {
  nlohmann::json value;  ///< the parsed record
  std::string where;     ///< location for error messages
};

/// Reads a JSON array file or a JSONL file (detected from the first non-blank character) into
/// records. Errors name the file, the line number and what was wrong.
inline std::vector<JsonRecord> read_json_records(const std::filesystem::path& path) {
  const std::string text = read_file_text(path);
  const std::string file = path.string();
  std::vector<JsonRecord> out;
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) return out;
  if (text[first] == '[') {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
      const auto upto = std::min<std::size_t>(e.byte, text.size());
      const auto line = 1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(upto), '\n');
      throw LlamaError(cat(file, ":", line, ": invalid JSON array (", e.what(), ")"));
    }
    out.reserve(j.size());
    for (std::size_t i = 0; i < j.size(); ++i) out.push_back({std::move(j[i]), cat(file, ": element ", i)});
    return out;
  }
  std::size_t pos = 0;
  std::int64_t line_no = 0;
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    ++line_no;
    const std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    std::string where = cat(file, ":", line_no);
    nlohmann::json rec;
    try {
      rec = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      throw LlamaError(cat(where, ": expected one JSON object per line, parse failed (", e.what(), ")"));
    }
    out.push_back({std::move(rec), std::move(where)});
  }
  return out;
}

/// Loads instruction data from a JSON array file or a JSONL file (detected from the first
/// non-blank character). `fields` overrides auto-detection (done on the first record). Errors name
/// the file, the line number and what was wrong.
inline std::vector<InstructionExample> load_instruction_data(const std::filesystem::path& path,
                                                            std::optional<FieldNames> fields = std::nullopt) {
  std::vector<InstructionExample> out;
  for (const auto& r : read_json_records(path)) out.push_back(detail::to_example(r.value, fields, r.where));
  return out;
}

/// The Alpaca prompt template (spec §6). `{instruction}` and `{input}` are substituted; the target
/// is response + `target_suffix`, followed by the EOS token id.
struct PromptTemplate {
  /// Used when the example has no input.
  std::string no_input =
      "Below is an instruction that describes a task. Write a response that appropriately completes the request."
      "\n\n### Instruction:\n{instruction}\n\n### Response:";
  /// Used when the example has a non-empty input (Alpaca's variant).
  std::string with_input =
      "Below is an instruction that describes a task, paired with an input that provides further context. "
      "Write a response that appropriately completes the request."
      "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";
  /// Appended to the response before EOS (spec §6: response + "\n" + EOS).
  std::string target_suffix = "\n";

  /// The prompt text of `ex`.
  [[nodiscard]] std::string prompt(const InstructionExample& ex) const {
    std::string s = ex.input.empty() ? no_input : with_input;
    replace_all(s, "{instruction}", ex.instruction);
    replace_all(s, "{input}", ex.input);
    return s;
  }
  /// The target text of `ex` (without EOS).
  [[nodiscard]] std::string target(const InstructionExample& ex) const { return ex.response + target_suffix; }

 private:
  static void replace_all(std::string& s, const std::string& key, const std::string& value) {
    for (std::size_t p = s.find(key); p != std::string::npos; p = s.find(key, p + value.size()))
      s.replace(p, key.size(), value);
  }
};

/// A tokenized training example: `input_ids` and HF-aligned `labels` of equal length.
struct TokenizedExample {
  std::vector<std::int32_t> input_ids;  ///< BOS + prompt + target + EOS (truncated)
  std::vector<std::int32_t> labels;     ///< -100 on the prompt, token ids on the target
};

/// Tokenizes one example as the HF recipe does: ids = encode(prompt + target, BOS) + [EOS];
/// the first len(encode(prompt, BOS)) labels are -100; truncated to `max_len`. Returns nullopt
/// when every label is masked (the example is dropped).
/// `Tok` needs `encode(std::string_view, bool add_bos) -> std::vector<int32_t>` and `eos_id()`.
template <class Tok>
std::optional<TokenizedExample> tokenize_example(const InstructionExample& ex, const Tok& tok,
                                                 const PromptTemplate& tpl = {}, int max_len = 512) {
  if (max_len < 2) throw LlamaError(cat("tokenize_example: expected max_len >= 2, found ", max_len));
  const std::string prompt = tpl.prompt(ex);
  TokenizedExample t;
  t.input_ids = tok.encode(prompt + tpl.target(ex), /*add_bos=*/true);
  t.input_ids.push_back(tok.eos_id());
  const std::size_t prompt_len = tok.encode(prompt, /*add_bos=*/true).size();
  t.labels = t.input_ids;
  std::fill(t.labels.begin(), t.labels.begin() + static_cast<std::ptrdiff_t>(std::min(prompt_len, t.labels.size())),
            kIgnoreIndex);
  if (t.input_ids.size() > static_cast<std::size_t>(max_len)) {
    t.input_ids.resize(max_len);
    t.labels.resize(max_len);
  }
  // position 0 is never a target (nothing predicts it), so only labels[1:] count
  const bool any = std::any_of(t.labels.begin() + 1, t.labels.end(), [](std::int32_t l) { return l != kIgnoreIndex; });
  if (!any) return std::nullopt;
  return t;
}

/// Tokenizes a whole data set, dropping all-masked examples. `dropped`, if given, receives the count.
template <class Tok>
std::vector<TokenizedExample> tokenize_dataset(const std::vector<InstructionExample>& data, const Tok& tok,
                                               const PromptTemplate& tpl = {}, int max_len = 512,
                                               std::int64_t* dropped = nullptr) {
  std::vector<TokenizedExample> out;
  out.reserve(data.size());
  std::int64_t n_dropped = 0;
  for (const auto& ex : data) {
    if (auto t = tokenize_example(ex, tok, tpl, max_len)) out.push_back(std::move(*t));
    else ++n_dropped;
  }
  if (dropped) *dropped = n_dropped;
  return out;
}

/// splitmix64: a tiny, fully specified generator, so a seed gives the same order on every
/// platform and standard library (std::shuffle / distributions do not guarantee that).
struct SplitMix64 {
  std::uint64_t state;  ///< current state
  /// Next 64 random bits.
  std::uint64_t next() {
    std::uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  /// Uniform integer in [0, n): rejection of the biased low range, then modulo (unbiased).
  std::uint64_t below(std::uint64_t n) {
    const std::uint64_t threshold = (0 - n) % n;  // 2^64 mod n
    std::uint64_t r = next();
    while (r < threshold) r = next();
    return r % n;
  }
};

/// Deterministic permutation of [0, n) for (seed, epoch) (Fisher–Yates with SplitMix64).
inline std::vector<std::int64_t> shuffled_indices(std::int64_t n, std::uint64_t seed, std::int64_t epoch) {
  std::vector<std::int64_t> p(static_cast<std::size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  SplitMix64 rng{seed * 0x9e3779b97f4a7c15ull ^ (static_cast<std::uint64_t>(epoch) + 0x632be59bd9b4e019ull)};
  for (std::int64_t i = n - 1; i > 0; --i)
    std::swap(p[i], p[rng.below(static_cast<std::uint64_t>(i) + 1)]);
  return p;
}

/// Options of DataLoader.
struct LoaderOptions {
  int micro_batch = 1;        ///< sequences per micro-batch
  std::uint64_t seed = 42;    ///< shuffle seed (the same on every shard: shards split one permutation)
  bool shuffle = true;        ///< false: file order
  int num_shards = 1;         ///< K groups (or ranks) splitting the data
  int shard_index = 0;        ///< this shard, in [0, num_shards)
  bool even_shards = true;    ///< drop the N mod K leftover per epoch so every shard has the same size
                              ///< (keeps groups in lock-step); false: shards cover everything
  bool drop_last = false;     ///< drop a final micro-batch smaller than micro_batch
  std::int32_t pad_id = 0;    ///< token used for right padding (label -100, never attended)
  int pad_multiple = 1;       ///< a micro-batch's length: its longest example rounded up to a multiple
                              ///< of this (fewer distinct shapes for the GPU's GEMMs), capped at max_len
  int max_len = 0;            ///< the cap of that rounding (0: none); never below the longest example
};

/// Iterates micro-batches of one shard. Per epoch e the global order is
/// shuffled_indices(N, seed, e); shard s takes positions s, s+K, s+2K, ... of it (disjoint across
/// shards, and covering when even_shards is false). Epochs roll over automatically.
class DataLoader {
 public:
  /// `data` is shared, not copied, between loaders of different shards.
  DataLoader(std::shared_ptr<const std::vector<TokenizedExample>> data, LoaderOptions opt)
      : data_(std::move(data)), opt_(opt) {
    if (!data_ || data_->empty()) throw LlamaError("DataLoader: expected a non-empty data set, found none");
    if (opt_.micro_batch < 1) throw LlamaError(cat("DataLoader: expected micro_batch >= 1, found ", opt_.micro_batch));
    if (opt_.pad_multiple < 1)
      throw LlamaError(cat("DataLoader: expected pad_multiple >= 1, found ", opt_.pad_multiple));
    if (opt_.num_shards < 1 || opt_.shard_index < 0 || opt_.shard_index >= opt_.num_shards)
      throw LlamaError(cat("DataLoader: expected 0 <= shard_index < num_shards, found shard_index ", opt_.shard_index,
                           " and num_shards ", opt_.num_shards));
    if (shard_size() == 0)
      throw LlamaError(cat("DataLoader: ", data_->size(), " examples cannot feed ", opt_.num_shards, " shards"));
    if (opt_.drop_last && shard_size() < opt_.micro_batch)
      throw LlamaError(cat("DataLoader: drop_last with micro_batch ", opt_.micro_batch, " needs at least that many "
                           "examples per shard, found ", shard_size()));
    load_epoch(0);
  }

  /// Example indices of this shard for `epoch`, in iteration order.
  [[nodiscard]] std::vector<std::int64_t> shard_order(std::int64_t epoch) const {
    const auto n = static_cast<std::int64_t>(data_->size());
    std::vector<std::int64_t> global = opt_.shuffle ? shuffled_indices(n, opt_.seed, epoch) : iota(n);
    const std::int64_t used = opt_.even_shards ? (n / opt_.num_shards) * opt_.num_shards : n;
    std::vector<std::int64_t> mine;
    for (std::int64_t i = opt_.shard_index; i < used; i += opt_.num_shards) mine.push_back(global[i]);
    return mine;
  }
  /// Examples per epoch in this shard.
  [[nodiscard]] std::int64_t shard_size() const {
    const auto n = static_cast<std::int64_t>(data_->size());
    if (opt_.even_shards) return n / opt_.num_shards;
    return n / opt_.num_shards + (opt_.shard_index < n % opt_.num_shards ? 1 : 0);
  }
  /// Micro-batches per epoch in this shard.
  [[nodiscard]] std::int64_t batches_per_epoch() const {
    const auto s = shard_size();
    return opt_.drop_last ? s / opt_.micro_batch : (s + opt_.micro_batch - 1) / opt_.micro_batch;
  }
  /// Where the next micro-batch starts.
  [[nodiscard]] DataPosition position() const { return pos_; }
  /// Resumes at `p` (from a previous position()).
  void seek(DataPosition p) {
    if (p.epoch < 0 || p.index < 0 || p.index > shard_size())
      throw LlamaError(cat("DataLoader::seek: expected epoch >= 0 and index in [0, ", shard_size(), "], found (",
                           p.epoch, ", ", p.index, ")"));
    if (p.epoch != loaded_epoch_) load_epoch(p.epoch);
    pos_ = p;
  }

  /// The next micro-batch (rolling over to the next epoch at the end of this one).
  Batch next() {
    const auto size = static_cast<std::int64_t>(order_.size());
    const bool short_tail = opt_.drop_last && size - pos_.index < opt_.micro_batch;
    if (pos_.index >= size || short_tail) {
      load_epoch(pos_.epoch + 1);
      pos_ = {pos_.epoch + 1, 0};
    }
    const std::int64_t count = std::min<std::int64_t>(opt_.micro_batch, size - pos_.index);
    Batch b;
    b.position = pos_;
    b.batch_size = static_cast<int>(count);
    for (std::int64_t i = 0; i < count; ++i) b.example_ids.push_back(order_[pos_.index + i]);
    int len = 0;
    for (auto id : b.example_ids) len = std::max<int>(len, static_cast<int>((*data_)[id].input_ids.size()));
    if (opt_.pad_multiple > 1) {  // right padding up to the multiple (capped at max_len, never below len)
      int padded = (len + opt_.pad_multiple - 1) / opt_.pad_multiple * opt_.pad_multiple;
      if (opt_.max_len > 0) padded = std::min(padded, std::max(opt_.max_len, len));
      len = padded;
    }
    b.seq_len = len;
    b.input_ids.assign(static_cast<std::size_t>(count) * len, opt_.pad_id);
    b.labels.assign(static_cast<std::size_t>(count) * len, kIgnoreIndex);
    for (std::int64_t r = 0; r < count; ++r) {
      const auto& ex = (*data_)[b.example_ids[r]];
      std::copy(ex.input_ids.begin(), ex.input_ids.end(), b.input_ids.begin() + r * len);
      std::copy(ex.labels.begin(), ex.labels.end(), b.labels.begin() + r * len);
      b.lengths.push_back(static_cast<int>(ex.input_ids.size()));
    }
    pos_.index += count;
    return b;
  }

 private:
  static std::vector<std::int64_t> iota(std::int64_t n) {
    std::vector<std::int64_t> v(static_cast<std::size_t>(n));
    std::iota(v.begin(), v.end(), 0);
    return v;
  }
  void load_epoch(std::int64_t e) {
    order_ = shard_order(e);
    loaded_epoch_ = e;
  }

  std::shared_ptr<const std::vector<TokenizedExample>> data_;
  LoaderOptions opt_;
  std::vector<std::int64_t> order_;
  std::int64_t loaded_epoch_ = -1;
  DataPosition pos_;
};

}  // namespace hdpissa::llama
