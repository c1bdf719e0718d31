#pragma once
/// \file chat_template.hpp
/// Chat templates for supervised fine-tuning on conversations: a list of messages (system / user /
/// assistant) is rendered into parts (text or one special token id), each marked as trained on
/// ("loss": the assistant's content and its end-of-turn token) or not (everything else).
///
/// Templates (the HF chat templates of these families, without generation prompts):
///  - llama3:  <|begin_of_text|> then per message
///             <|start_header_id|>ROLE<|end_header_id|>"\n\n" CONTENT(trimmed) <|eot_id|>
///  - mistral: BOS then per user/assistant pair "[INST] USER [/INST]" ASSISTANT EOS; a system
///             message is prepended to the first user message with "\n\n" (v0.1 style)
///  - chatml:  per message <|im_start|>ROLE"\n" CONTENT <|im_end|>"\n" (Qwen2; no default system)
///  - alpaca:  BOS then per user/assistant pair the Alpaca prompt of the user message, then
///             ASSISTANT"\n" EOS (as the instruction format; a system message prefixes the instruction)
/// Text parts are encoded one by one without BOS (adjacent text parts with the same flag first
/// joined), so the loss mask follows the parts exactly.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "llama/common.hpp"

namespace hdpissa::llama {

/// The chat templates we implement.
enum class ChatTemplateKind { llama3, mistral, chatml, alpaca };

/// Name of a template ("llama3", "mistral", "chatml", "alpaca").
inline const char* chat_template_name(ChatTemplateKind k) {
  switch (k) {
    case ChatTemplateKind::llama3: return "llama3";
    case ChatTemplateKind::mistral: return "mistral";
    case ChatTemplateKind::chatml: return "chatml";
    case ChatTemplateKind::alpaca: return "alpaca";
  }
  return "?";
}

/// Parses a template name; throws naming `flag` and the accepted names.
inline ChatTemplateKind parse_chat_template(const std::string& name, const std::string& flag = "--chat-template") {
  for (auto k : {ChatTemplateKind::llama3, ChatTemplateKind::mistral, ChatTemplateKind::chatml, ChatTemplateKind::alpaca})
    if (name == chat_template_name(k)) return k;
  throw LlamaError(cat(flag, ": expected auto, llama3, mistral, chatml or alpaca, found '", name, "'"));
}

/// Recognises a tokenizer_config.json chat_template (Jinja text) by its markers:
/// <|start_header_id|> = llama3, <|im_start|> = chatml, [INST] = mistral, "### Instruction" = alpaca.
inline std::optional<ChatTemplateKind> detect_chat_template(std::string_view jinja) {
  if (jinja.find("<|start_header_id|>") != std::string_view::npos) return ChatTemplateKind::llama3;
  if (jinja.find("<|im_start|>") != std::string_view::npos) return ChatTemplateKind::chatml;
  if (jinja.find("[INST]") != std::string_view::npos) return ChatTemplateKind::mistral;
  if (jinja.find("### Instruction") != std::string_view::npos) return ChatTemplateKind::alpaca;
  return std::nullopt;
}

/// One chat message.
struct ChatMessage {
  std::string role;     ///< "system", "user" or "assistant"
  std::string content;  ///< the text
};

/// One rendered part: text to encode, or a single token id (token >= 0).
struct ChatPart {
  std::string text;         ///< text (when token < 0)
  std::int32_t token = -1;  ///< a special token id
  bool loss = false;        ///< trained on
};

namespace detail {
inline std::string trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return {};
  const auto e = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(b, e - b + 1));
}
template <class Tok>
std::int32_t require_token(const Tok& tok, const char* text, ChatTemplateKind k) {
  if (auto id = tok.token_id(text)) return *id;
  throw LlamaError(cat("chat template ", chat_template_name(k), ": expected the tokenizer to have the token ", text,
                       ", found none (choose the template of this model's family with --chat-template)"));
}
inline void add_text(std::vector<ChatPart>& parts, std::string text, bool loss) {
  if (text.empty()) return;
  if (!parts.empty() && parts.back().token < 0 && parts.back().loss == loss) parts.back().text += text;
  else parts.push_back({std::move(text), -1, loss});
}
inline void add_token(std::vector<ChatPart>& parts, std::int32_t id, bool loss) { parts.push_back({{}, id, loss}); }
}  // namespace detail

/// Renders `msgs` with template `k` into parts (see the file comment). `Tok` needs bos_id(),
/// eos_id() and token_id(text). `alpaca_prompt(instruction)` gives the Alpaca prompt text.
/// Throws naming `where` for an unknown role or a turn order the template cannot express.
template <class Tok, class AlpacaPrompt>
std::vector<ChatPart> render_chat(ChatTemplateKind k, const std::vector<ChatMessage>& msgs, const Tok& tok,
                                  const AlpacaPrompt& alpaca_prompt, const std::string& where) {
  std::vector<ChatPart> parts;
  for (std::size_t i = 0; i < msgs.size(); ++i)
    if (msgs[i].role != "system" && msgs[i].role != "user" && msgs[i].role != "assistant")
      throw LlamaError(cat(where, ": message ", i, ": expected role system, user or assistant, found '", msgs[i].role, "'"));
  switch (k) {
    case ChatTemplateKind::llama3: {
      const auto start = detail::require_token(tok, "<|start_header_id|>", k);
      const auto end = detail::require_token(tok, "<|end_header_id|>", k);
      const auto eot = detail::require_token(tok, "<|eot_id|>", k);
      detail::add_token(parts, detail::require_token(tok, "<|begin_of_text|>", k), false);
      for (const auto& m : msgs) {
        const bool loss = m.role == "assistant";
        detail::add_token(parts, start, false);
        detail::add_text(parts, m.role, false);
        detail::add_token(parts, end, false);
        detail::add_text(parts, "\n\n", false);
        detail::add_text(parts, detail::trim(m.content), loss);
        detail::add_token(parts, eot, loss);
      }
      break;
    }
    case ChatTemplateKind::chatml: {
      const auto start = detail::require_token(tok, "<|im_start|>", k);
      const auto end = detail::require_token(tok, "<|im_end|>", k);
      for (const auto& m : msgs) {
        const bool loss = m.role == "assistant";
        detail::add_token(parts, start, false);
        detail::add_text(parts, m.role + "\n", false);
        detail::add_text(parts, m.content, loss);
        detail::add_token(parts, end, loss);
        detail::add_text(parts, "\n", false);
      }
      break;
    }
    case ChatTemplateKind::mistral:
    case ChatTemplateKind::alpaca: {
      if (tok.bos_id() >= 0) detail::add_token(parts, tok.bos_id(), false);
      std::string system;
      bool expect_user = true;
      for (std::size_t i = 0; i < msgs.size(); ++i) {
        const auto& m = msgs[i];
        if (m.role == "system") {
          if (i != 0)
            throw LlamaError(cat(where, ": message ", i, ": template ", chat_template_name(k),
                                 " expects a system message only first, found one later"));
          system = m.content;
          continue;
        }
        if ((m.role == "user") != expect_user)
          throw LlamaError(cat(where, ": message ", i, ": template ", chat_template_name(k), " expects alternating user / "
                               "assistant turns starting with user, found '", m.role, "'"));
        expect_user = !expect_user;
        if (m.role == "user") {
          std::string u = system.empty() ? m.content : system + "\n\n" + m.content;
          system.clear();
          detail::add_text(parts, k == ChatTemplateKind::mistral ? "[INST] " + u + " [/INST]" : alpaca_prompt(u), false);
        } else {
          detail::add_text(parts, k == ChatTemplateKind::mistral ? m.content : m.content + "\n", true);
          detail::add_token(parts, tok.eos_id(), true);
        }
      }
      break;
    }
  }
  return parts;
}

}  // namespace hdpissa::llama
