#pragma once
/// \file data_formats.hpp
/// Training data formats beyond Alpaca-style instructions, and one entry point that reads a file
/// of any of them into TokenizedExamples (input_ids + labels, -100 = no loss):
///  - alpaca: instruction / [input] / response fields (detected, or --prompt-field,
///    --input-field, --response-field); loss on the response + "\n" + EOS (data.hpp)
///  - chat:   `messages` [{role, content}] or `conversations` [{from, value}] (ShareGPT: human /
///            gpt / system); rendered by a chat template (chat_template.hpp); loss on assistant turns
///  - text:   `text`; BOS + text + EOS, loss on every token
///  - tokens: pre-tokenized `input_ids` [ints] with optional `labels` [ints, -100 = no loss] of the
///            same length (default: labels = input_ids); used as is (no BOS / EOS added)
/// `auto` picks the format from the first record's keys. Every example is truncated to max_len;
/// examples left with no trained label (after position 0) are dropped and counted.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "llama/chat_template.hpp"
#include "llama/common.hpp"
#include "llama/data.hpp"

namespace hdpissa::llama {

/// Format of a training file.
enum class DataFormat { automatic, alpaca, chat, text, tokens };

/// Name of a format ("auto", "alpaca", "chat", "text", "tokens").
inline const char* data_format_name(DataFormat f) {
  switch (f) {
    case DataFormat::automatic: return "auto";
    case DataFormat::alpaca: return "alpaca";
    case DataFormat::chat: return "chat";
    case DataFormat::text: return "text";
    case DataFormat::tokens: return "tokens";
  }
  return "?";
}

/// Parses --data-format; throws naming the flag.
inline DataFormat parse_data_format(const std::string& s) {
  for (auto f : {DataFormat::automatic, DataFormat::alpaca, DataFormat::chat, DataFormat::text, DataFormat::tokens})
    if (s == data_format_name(f)) return f;
  throw LlamaError(cat("--data-format: expected auto, alpaca, chat, text or tokens, found '", s, "'"));
}

/// How to read a data file (the data flags of hdpissa-train and hdpissa-eval).
struct DataFormatOptions {
  std::string format = "auto";         ///< --data-format auto|alpaca|chat|text|tokens
  std::string chat_template = "auto";  ///< --chat-template auto|llama3|mistral|chatml|alpaca (auto: tokenizer_config.json's)
  std::string prompt_field;            ///< --prompt-field (alpaca instruction field; "" = detect)
  std::string input_field;             ///< --input-field (alpaca optional input field; "" = detect)
  std::string response_field;          ///< --response-field (alpaca response field; "" = detect)

  /// Consumes `flag` if it is one of the data flags (reading its value through `value`).
  bool parse_flag(const std::string& flag, const std::function<std::string()>& value) {
    if (flag == "--data-format") format = value();
    else if (flag == "--chat-template") chat_template = value();
    else if (flag == "--prompt-field") prompt_field = value();
    else if (flag == "--input-field") input_field = value();
    else if (flag == "--response-field") response_field = value();
    else return false;
    return true;
  }
  /// Checks the values; throws naming the flag.
  void validate() const {
    (void)parse_data_format(format);
    if (chat_template != "auto") (void)parse_chat_template(chat_template);
  }
  /// The settings as JSON (for config echoes). Usage text: train_usage() and hdpissa-eval --help.
  [[nodiscard]] nlohmann::json to_json() const {
    return {{"data_format", format}, {"chat_template", chat_template}, {"prompt_field", prompt_field},
            {"input_field", input_field}, {"response_field", response_field}};
  }
};

namespace detail {

inline std::string record_keys(const nlohmann::json& rec) {
  std::string keys;
  if (rec.is_object())
    for (auto it = rec.begin(); it != rec.end(); ++it) keys += (keys.empty() ? "" : ", ") + it.key();
  return keys;
}

/// Drops all-masked examples (after truncation); returns whether `t` is kept.
inline bool finish_example(TokenizedExample& t, int max_len) {
  if (t.input_ids.size() > std::size_t(max_len)) {
    t.input_ids.resize(std::size_t(max_len));
    t.labels.resize(std::size_t(max_len));
  }
  if (t.input_ids.size() < 2) return false;
  return std::any_of(t.labels.begin() + 1, t.labels.end(), [](std::int32_t l) { return l != kIgnoreIndex; });
}

inline FieldNames alpaca_fields(const nlohmann::json& rec, const DataFormatOptions& o, const std::string& where) {
  if (!o.prompt_field.empty() && !o.response_field.empty()) return {o.prompt_field, o.input_field, o.response_field};
  FieldNames f = detect_fields(rec, where);
  if (!o.prompt_field.empty()) f.instruction = o.prompt_field;
  if (!o.response_field.empty()) f.response = o.response_field;
  if (!o.input_field.empty()) f.input = o.input_field;
  return f;
}

}  // namespace detail

/// The format of a record with keys as in `rec`: input_ids -> tokens; messages / conversations
/// -> chat; an instruction/response pair (or the --prompt-field / --response-field given) ->
/// alpaca; text -> text. Throws naming the keys found.
inline DataFormat detect_data_format(const nlohmann::json& rec, const DataFormatOptions& o, const std::string& where) {
  if (!rec.is_object()) throw LlamaError(cat(where, ": expected a JSON object, found ", rec.type_name()));
  if (rec.contains("input_ids")) return DataFormat::tokens;
  if (rec.contains("messages") || rec.contains("conversations")) return DataFormat::chat;
  if (!o.prompt_field.empty() && !o.response_field.empty() && rec.contains(o.prompt_field) && rec.contains(o.response_field))
    return DataFormat::alpaca;
  try {
    (void)detail::alpaca_fields(rec, o, where);
    return DataFormat::alpaca;
  } catch (const LlamaError&) {
  }
  if (rec.contains("text")) return DataFormat::text;
  throw LlamaError(cat(where, ": cannot detect the data format from the keys {", detail::record_keys(rec),
                       "}: expected input_ids (tokens), messages or conversations (chat), an instruction/response "
                       "pair such as instruction/output, query/response, question/answer, prompt/completion, "
                       "problem/solution (alpaca; or name the fields with --prompt-field/--response-field), or text "
                       "(text); or pass --data-format"));
}

/// Messages of a chat record: `messages` [{role, content}] or `conversations` [{from, value}]
/// (from: human/user, gpt/assistant/model, system). Throws naming the record and the message.
inline std::vector<ChatMessage> parse_chat_messages(const nlohmann::json& rec, const std::string& where) {
  const bool sharegpt = !rec.contains("messages") && rec.contains("conversations");
  const char* key = sharegpt ? "conversations" : "messages";
  if (!rec.contains(key))
    throw LlamaError(cat(where, ": expected a 'messages' or 'conversations' array, found keys {", detail::record_keys(rec), "}"));
  const auto& arr = rec[key];
  if (!arr.is_array() || arr.empty())
    throw LlamaError(cat(where, ": expected '", key, "' to be a non-empty array, found ", arr.is_array() ? "an empty array" : arr.type_name()));
  const char* role_key = sharegpt ? "from" : "role";
  const char* content_key = sharegpt ? "value" : "content";
  std::vector<ChatMessage> out;
  for (std::size_t i = 0; i < arr.size(); ++i) {
    const auto& m = arr[i];
    if (!m.is_object() || !m.contains(role_key) || !m[role_key].is_string() || !m.contains(content_key) ||
        !m[content_key].is_string())
      throw LlamaError(cat(where, ": ", key, "[", i, "]: expected an object with string fields '", role_key, "' and '",
                           content_key, "', found ", m.dump().substr(0, 120)));
    std::string role = m[role_key].get<std::string>();
    if (sharegpt) {
      if (role == "human" || role == "user") role = "user";
      else if (role == "gpt" || role == "assistant" || role == "model") role = "assistant";
      else if (role != "system")
        throw LlamaError(cat(where, ": conversations[", i, "]: expected from human, gpt or system, found '", role, "'"));
    }
    out.push_back({std::move(role), m[content_key].get<std::string>()});
  }
  return out;
}

/// Tokenizes a chat record with template `k`; nullopt if no assistant label survives.
template <class Tok>
std::optional<TokenizedExample> tokenize_chat(const nlohmann::json& rec, ChatTemplateKind k, const Tok& tok,
                                              const PromptTemplate& tpl, int max_len, const std::string& where) {
  const auto msgs = parse_chat_messages(rec, where);
  const auto parts = render_chat(k, msgs, tok, [&](const std::string& u) { return tpl.prompt({u, "", ""}); }, where);
  TokenizedExample t;
  for (const auto& p : parts) {
    std::vector<std::int32_t> ids;
    if (p.token >= 0) ids.push_back(p.token);
    else ids = tok.encode(p.text, false);
    t.input_ids.insert(t.input_ids.end(), ids.begin(), ids.end());
    if (p.loss) t.labels.insert(t.labels.end(), ids.begin(), ids.end());
    else t.labels.insert(t.labels.end(), ids.size(), kIgnoreIndex);
  }
  if (!detail::finish_example(t, max_len)) return std::nullopt;
  return t;
}

/// Tokenizes a `text` record: BOS + text + EOS, loss everywhere.
template <class Tok>
std::optional<TokenizedExample> tokenize_text(const nlohmann::json& rec, const Tok& tok, int max_len, const std::string& where) {
  if (!rec.contains("text") || !rec["text"].is_string())
    throw LlamaError(cat(where, ": expected a string field 'text', found ",
                         rec.contains("text") ? rec["text"].type_name() : cat("keys {", detail::record_keys(rec), "}")));
  TokenizedExample t;
  t.input_ids = tok.encode(rec["text"].get<std::string>(), true);
  t.input_ids.push_back(tok.eos_id());
  t.labels = t.input_ids;
  if (!detail::finish_example(t, max_len)) return std::nullopt;
  return t;
}

/// Reads a pre-tokenized record: input_ids in [0, vocab_size), labels (optional, same length)
/// each -100 or in [0, vocab_size).
inline std::optional<TokenizedExample> tokenize_tokens(const nlohmann::json& rec, std::int32_t vocab_size, int max_len,
                                                       const std::string& where) {
  auto ints = [&](const char* key, bool allow_ignore) {
    const auto& a = rec[key];
    if (!a.is_array()) throw LlamaError(cat(where, ": expected '", key, "' to be an array of integers, found ", a.type_name()));
    std::vector<std::int32_t> v;
    v.reserve(a.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
      if (!a[i].is_number_integer())
        throw LlamaError(cat(where, ": ", key, "[", i, "]: expected an integer, found ", a[i].dump()));
      const auto x = a[i].get<std::int64_t>();
      if (!(x >= 0 && x < vocab_size) && !(allow_ignore && x == kIgnoreIndex))
        throw LlamaError(cat(where, ": ", key, "[", i, "]: expected a token id in [0, ", vocab_size, ")",
                             allow_ignore ? " or -100" : "", ", found ", x));
      v.push_back(std::int32_t(x));
    }
    return v;
  };
  if (!rec.is_object() || !rec.contains("input_ids"))
    throw LlamaError(cat(where, ": expected 'input_ids', found keys {", detail::record_keys(rec), "}"));
  TokenizedExample t;
  t.input_ids = ints("input_ids", false);
  if (rec.contains("labels") && !rec["labels"].is_null()) {
    t.labels = ints("labels", true);
    if (t.labels.size() != t.input_ids.size())
      throw LlamaError(cat(where, ": expected 'labels' as long as 'input_ids' (", t.input_ids.size(), "), found ",
                           t.labels.size()));
  } else {
    t.labels = t.input_ids;
  }
  if (!detail::finish_example(t, max_len)) return std::nullopt;
  return t;
}

/// The chat template to use: `name` unless "auto", else the one tokenizer_config.json's
/// chat_template is recognisably (detect_chat_template). Throws saying what to pass.
template <class Tok>
ChatTemplateKind resolve_chat_template(const std::string& name, const Tok& tok) {
  if (name != "auto") return parse_chat_template(name);
  const std::string jinja = tok.chat_template();
  if (auto k = detect_chat_template(jinja)) return *k;
  throw LlamaError(cat("--chat-template auto: ",
                       jinja.empty() ? "the tokenizer has no chat_template (tokenizer_config.json)"
                                     : "the tokenizer's chat_template is not recognisably llama3, mistral, chatml or alpaca",
                       "; pass --chat-template llama3|mistral|chatml|alpaca"));
}

/// Summary of one load.
struct DataLoadReport {
  DataFormat format = DataFormat::automatic;  ///< the format used
  std::int64_t records = 0;                   ///< records read (after max_examples)
  std::int64_t dropped = 0;                   ///< dropped: no trained label within max_len
  std::string chat_template;                  ///< template used (chat data), else ""
};

/// Reads `path` in the format `o` names (or detects) and tokenizes it. `max_examples` > 0 keeps
/// only the first records. `Tok` needs encode(text, add_bos), bos_id(), eos_id(), vocab_size(),
/// token_id(text) and chat_template().
template <class Tok>
std::vector<TokenizedExample> load_tokenized_data(const std::filesystem::path& path, const DataFormatOptions& o,
                                                  const Tok& tok, const PromptTemplate& tpl, int max_len,
                                                  long max_examples = -1, DataLoadReport* report = nullptr) {
  if (max_len < 2) throw LlamaError(cat("--max-len: expected >= 2, found ", max_len));
  auto records = read_json_records(path);
  if (max_examples > 0 && records.size() > std::size_t(max_examples)) records.resize(std::size_t(max_examples));
  DataLoadReport rep;
  rep.records = std::int64_t(records.size());
  rep.format = parse_data_format(o.format);
  std::vector<TokenizedExample> out;
  if (records.empty()) {
    if (report) *report = rep;
    return out;
  }
  if (rep.format == DataFormat::automatic) rep.format = detect_data_format(records.front().value, o, records.front().where);
  std::optional<FieldNames> fields;
  std::optional<ChatTemplateKind> chat;
  if (rep.format == DataFormat::alpaca) {
    if (!records.front().value.is_object())
      throw LlamaError(cat(records.front().where, ": expected a JSON object, found ", records.front().value.type_name()));
    fields = detail::alpaca_fields(records.front().value, o, records.front().where);
  }
  if (rep.format == DataFormat::chat) {
    chat = resolve_chat_template(o.chat_template, tok);
    rep.chat_template = chat_template_name(*chat);
  }
  out.reserve(records.size());
  for (const auto& r : records) {
    if (!r.value.is_object()) throw LlamaError(cat(r.where, ": expected a JSON object, found ", r.value.type_name()));
    std::optional<TokenizedExample> t;
    switch (rep.format) {
      case DataFormat::alpaca: t = tokenize_example(detail::to_example(r.value, fields, r.where), tok, tpl, max_len); break;
      case DataFormat::chat: t = tokenize_chat(r.value, *chat, tok, tpl, max_len, r.where); break;
      case DataFormat::text: t = tokenize_text(r.value, tok, max_len, r.where); break;
      case DataFormat::tokens: t = tokenize_tokens(r.value, tok.vocab_size(), max_len, r.where); break;
      case DataFormat::automatic: break;
    }
    if (t) out.push_back(std::move(*t));
    else ++rep.dropped;
  }
  if (report) *report = rep;
  return out;
}

}  // namespace hdpissa::llama
