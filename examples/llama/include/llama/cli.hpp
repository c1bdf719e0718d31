#pragma once
/// \file cli.hpp
/// The command-line conventions every hdpissa tool shares, on CLI11 (Debian's libcli11-dev):
///  - `--x y` and `--x=y`; `-h/--help`; `--version` (the project version);
///  - `--config FILE` (TOML or INI; keys are the long option names, `max-len = 256`; the command line wins);
///  - list options take `a,b,c` and `a b c`;
///  - choice options (enums) parse through parse_choice: the error lists every accepted spelling;
///  - an unknown option is an error that names it and suggests the closest known option;
///  - usage errors exit with 2 and print `TOOL: error: …`.
/// A tool builds a CLI::App with `make_app`, registers its options, and calls `parse`.

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <iostream>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

#include "llama/common.hpp"
#include "llama/data_formats.hpp"

#ifndef HDPISSA_VERSION_STRING
#define HDPISSA_VERSION_STRING "unknown"
#endif

namespace hdpissa::llama::cli {

/// A usage error (exit status 2): bad option, bad value, missing value.
struct UsageError : LlamaError {
  using LlamaError::LlamaError;
};

/// What parse() found: run the tool, or print help / version and exit 0 (already printed).
enum class Outcome { Run, Help, Version };

/// Levenshtein distance (for "did you mean").
inline std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

/// Every long option name of `app` ("--lr", …).
inline std::vector<std::string> long_names(const CLI::App& app) {
  std::vector<std::string> out;
  for (const CLI::Option* o : app.get_options())
    for (const std::string& n : o->get_lnames()) out.push_back("--" + n);
  return out;
}

/// The known option closest to `arg` ("--lrr=3" → "--lr"), or "" when nothing is close.
inline std::string suggest(const CLI::App& app, std::string arg) {
  if (const auto eq = arg.find('='); eq != std::string::npos) arg.resize(eq);
  std::string best;
  std::size_t best_d = std::string::npos;
  for (const std::string& n : long_names(app)) {
    const std::size_t d = edit_distance(arg, n);
    if (d < best_d) best_d = d, best = n;
  }
  const std::size_t limit = std::max<std::size_t>(2, arg.size() / 3);
  return best_d <= limit ? best : std::string();
}

/// A CLI::App with the shared conventions: --version and (when `config`) --config FILE.
inline void setup(CLI::App& app, bool config = true) {
  app.set_version_flag("--version", std::string(app.get_name()) + " (hdpissa) " + HDPISSA_VERSION_STRING);
  // A repeated option: the last one wins (as the hand parsers did; scripts append overrides). List
  // options set TakeAll themselves.
  app.option_defaults()->always_capture_default()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  if (config) {
    app.set_config("--config", "", "read options from a TOML or INI file (keys: long option names, e.g. "
                                   "max-len = 256); options on the command line win");
    app.config_formatter(std::make_shared<CLI::ConfigTOML>());
    app.allow_config_extras(false);  // an unknown key in a config file is an error (CLI11 ignores it by default)
  }
  app.get_formatter()->column_width(34);
}

/// Registers an option whose text `parse_value(flag, text)` converts into `ref` (choices, sizes,
/// ranged integers): the converter's error names the flag and what it expected.
template <class T, class ParseFn>
CLI::Option* add_parsed(CLI::App& app, const std::string& names, const std::string& flag, T& ref, ParseFn parse_value,
                        const std::string& help, const std::string& type_name) {
  return app
      .add_option_function<std::string>(
          names, [&ref, parse_value, flag](const std::string& v) { ref = parse_value(flag, v); }, help)
      ->type_name(type_name);
}

/// An integer option's value: the whole text a decimal integer of type T in [min, max] (the
/// defaults: T's range). Every error names the flag and what was found:
///   "--rank expects an integer, found 'four'" (not a number, trailing text, beyond long long),
///   "--seed: expected >= 0, found -3", "--batch: expected <= 2147483647, found 9999999999".
/// The converter of add_parsed for every integer option with a bound (hdpissa-train, hdpissa-eval).
template <std::integral T = int>
T parse_int(const std::string& flag, const std::string& text, long long min = std::numeric_limits<T>::min(),
            long long max = static_cast<long long>(std::min<unsigned long long>(std::numeric_limits<T>::max(),
                                                                                std::numeric_limits<long long>::max()))) {
  std::size_t used = 0;
  long long x = 0;
  try {
    x = std::stoll(text, &used);
  } catch (const std::exception&) {  // std::invalid_argument, std::out_of_range
    used = 0;
  }
  if (text.empty() || used != text.size()) throw LlamaError(cat(flag, " expects an integer, found '", text, "'"));
  if (x < min) throw LlamaError(cat(flag, ": expected >= ", min, ", found ", x));
  if (x > max) throw LlamaError(cat(flag, ": expected <= ", max, ", found ", x));
  return static_cast<T>(x);
}

/// Parses `args` (without the program name). Help and version are printed to `out`; usage errors
/// throw UsageError with CLI11's message, plus "did you mean" for an unknown option. Errors a
/// tool's callbacks throw (LlamaError) propagate unchanged.
inline Outcome parse(CLI::App& app, const std::vector<std::string>& args, std::ostream& out = std::cout) {
  std::vector<std::string> rev(args.rbegin(), args.rend());  // CLI11 takes a reversed vector
  try {
    app.parse(rev);
  } catch (const CLI::CallForHelp&) {
    out << app.help();
    return Outcome::Help;
  } catch (const CLI::CallForAllHelp&) {
    out << app.help("", CLI::AppFormatMode::All);
    return Outcome::Help;
  } catch (const CLI::CallForVersion&) {
    out << app.version() << "\n";
    return Outcome::Version;
  } catch (const CLI::ExtrasError& e) {
    std::string msg, hint;
    for (const std::string& a : args) {
      if (a.rfind("--", 0) != 0 || a == "--") continue;
      const std::string name = a.substr(0, a.find('='));
      const auto known = long_names(app);
      if (std::find(known.begin(), known.end(), name) != known.end()) continue;
      msg = cat("unknown option '", name, "'");
      if (const std::string s = suggest(app, name); !s.empty()) hint = cat("; did you mean '", s, "'?");
      break;
    }
    if (msg.empty()) msg = e.what();
    throw UsageError(cat(msg, hint, " (see --help)"));
  } catch (const CLI::ConfigError& e) {  // e.g. an unknown key: "INI was not able to parse max-lenn"
    std::string file;
    if (const CLI::Option* c = app.get_config_ptr(); c && c->count() > 0) file = cat(" ", c->as<std::string>());
    const std::string msg = e.what(), marker = "was not able to parse ";
    const auto at = msg.rfind(marker);
    if (at == std::string::npos) throw UsageError(cat("--config", file, ": ", msg));
    const std::string what = msg.substr(at + marker.size());
    const bool key = !what.empty() && what.find_first_of("[]= \t\"'") == std::string::npos;
    if (!key) throw UsageError(cat("--config", file, ": cannot parse '", what, "' (expected key = value lines and [section] headers)"));
    std::string hint;
    if (const std::string s = suggest(app, "--" + what); !s.empty()) hint = cat("; did you mean '", s.substr(2), "'?");
    throw UsageError(cat("--config", file, ": unknown key '", what, "'", hint));
  } catch (const CLI::ArgumentMismatch& e) {  // "--x" at the end, or followed by another option
    throw UsageError(cat(e.what(), ": expects a value, found none (see --help)"));
  } catch (const CLI::ParseError& e) {
    throw UsageError(cat(e.what(), " (see --help)"));
  }
  return Outcome::Run;
}

/// Splits list values given as "a,b c" (CLI11 delivers space-separated items one by one and
/// comma-separated ones whole) into items; empty items are dropped only between separators.
inline std::vector<std::string> split_list(const std::vector<std::string>& values) {
  std::vector<std::string> out;
  for (const std::string& v : values) {
    std::string item;
    for (char c : v) {
      if (c == ',' || c == ' ') {
        if (!item.empty()) out.push_back(item);
        item.clear();
      } else {
        item += c;
      }
    }
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

/// Registers --data-format, --chat-template, --prompt-field, --input-field, --response-field
/// (hdpissa-train, hdpissa-eval).
inline void add_data_format_options(CLI::App& app, DataFormatOptions& d, const std::string& group) {
  app.add_option("--data-format", d.format,
                 "auto (from the first record's keys) | alpaca | chat | text | tokens: alpaca = "
                 "instruction/[input]/response fields, loss on the response; chat = messages [{role, content}] "
                 "or conversations [{from, value}], loss on assistant turns; text = {text}, loss on everything; "
                 "tokens = {input_ids, [labels, -100 = no loss]}, pre-tokenized")
      ->group(group)->type_name("F");
  app.add_option("--chat-template", d.chat_template,
                 "auto (tokenizer_config.json's, if recognisable) | llama3 | mistral | chatml | alpaca")
      ->group(group)->type_name("T");
  app.add_option("--prompt-field", d.prompt_field, "alpaca: the instruction field (default: detected)")->group(group)->type_name("NAME");
  app.add_option("--input-field", d.input_field, "alpaca: the optional input field (default: detected)")->group(group)->type_name("NAME");
  app.add_option("--response-field", d.response_field, "alpaca: the response field (default: detected)")->group(group)->type_name("NAME");
}

}  // namespace hdpissa::llama::cli
