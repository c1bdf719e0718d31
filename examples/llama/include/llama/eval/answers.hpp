#pragma once
/// \file answers.hpp
/// Answer extraction and comparison for the math evaluators (docs/evaluation.md):
///  - GSM8K: the number after the last "The answer is:" (MetaMath) or, failing that, the last "####"
///    (GSM8K's own solutions); optionally the last number in the text as a fallback (off by default,
///    and reported in the output when on). Numbers compare after normalize_number.
///  - MATH: the content of the last \boxed{...} / \fbox{...} (balanced braces; also "\boxed 5"),
///    normalised by math_strip_string (Hendrycks et al.'s `strip_string`, reimplemented) and compared
///    as strings, like the MATH dataset's `is_equiv`.

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hdpissa::llama::eval {

/// Replace every occurrence of `from` in `s` by `to`.
/// Left to right, never inside a replacement. (Built into a new string: GCC 12's -Wrestrict
/// misfires on std::string::replace in place.)
inline std::string replace_all(std::string s, std::string_view from, std::string_view to) {
  if (from.empty()) return s;
  std::string out;
  out.reserve(s.size());
  std::size_t p = 0, q = 0;
  while ((q = s.find(from, p)) != std::string::npos) {
    out.append(s, p, q - p);
    out.append(to);
    p = q + from.size();
  }
  out.append(s, p, std::string::npos);
  return out;
}

// ---------------------------------------------------------------------------------------------- GSM8K

/// A number as GSM8K writes it, canonicalised: Unicode minus (U+2212) → '-', commas, '$' and spaces
/// removed, a trailing '.' removed, then parsed as a double. nullopt when what is left is not a number.
/// "1,234" → 1234, "$5.00" → 5, "-3" → -3, "−3" → -3, "12." → 12, "0.5" → 0.5.
inline std::optional<double> normalize_number(std::string_view text) {
  std::string s = replace_all(std::string(text), "\u2212", "-");
  std::string t;
  for (char c : s)
    if (c != ',' && c != '$' && c != ' ') t += c;
  while (!t.empty() && t.back() == '.') t.pop_back();
  if (t.empty()) return std::nullopt;
  char* end = nullptr;
  const double v = std::strtod(t.c_str(), &end);
  if (end != t.c_str() + t.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

namespace detail {
inline bool is_digit(char c) { return std::isdigit(static_cast<unsigned char>(c)) != 0; }

/// The numeric tokens of `s`, in order: an optional '-' (or U+2212), digits with ',' group separators,
/// an optional fraction (".5" too). Returned as written (normalize_number parses them).
inline std::vector<std::string> number_tokens(std::string_view s) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i < s.size()) {
    std::size_t start = i;
    std::string tok;
    if (s.substr(i, 3) == "\u2212" && i + 3 < s.size() && (is_digit(s[i + 3]) || s[i + 3] == '.')) {
      tok = "-";
      i += 3;
    } else if (s[i] == '-' && i + 1 < s.size() && (is_digit(s[i + 1]) || s[i + 1] == '.')) {
      tok = "-";
      ++i;
    }
    const bool digit_start = i < s.size() && (is_digit(s[i]) || (s[i] == '.' && i + 1 < s.size() && is_digit(s[i + 1])));
    if (!digit_start) {
      i = start + 1;
      continue;
    }
    bool dot = false;
    while (i < s.size()) {
      const char c = s[i];
      if (is_digit(c)) {
        tok += c;
      } else if (c == ',' && i + 1 < s.size() && is_digit(s[i + 1]) && !dot) {
        tok += c;  // group separator
      } else if (c == '.' && !dot && i + 1 < s.size() && is_digit(s[i + 1])) {
        tok += c;
        dot = true;
      } else {
        break;
      }
      ++i;
    }
    out.push_back(tok);
  }
  return out;
}
}  // namespace detail

/// What extract_gsm8k found and how.
struct Gsm8kAnswer {
  double value = 0;
  std::string text;    ///< the number as written in the completion
  std::string method;  ///< "the answer is", "####" or "last number"
};

/// The GSM8K answer of `text`: the first number after the last "The answer is" (optional ':'; case
/// sensitive, MetaMath's form) or the last "####", whichever occurs later in the text. With `last_number_fallback`,
/// a text with neither marker yields its last number (method "last number"). Only the rest of the
/// marker's line is searched. nullopt when nothing is found.
inline std::optional<Gsm8kAnswer> extract_gsm8k(std::string_view text, bool last_number_fallback = false) {
  struct Marker {
    std::string_view s;
    const char* name;
  };
  // whichever marker occurs last wins: two GSM8K train solutions say "The answer is ..." in the
  // reasoning and end with "#### N"; a MetaMath-style completion ends with "The answer is: N"
  const Marker markers[] = {{"The answer is", "the answer is"}, {"####", "####"}};
  const Marker* best = nullptr;
  std::size_t best_pos = 0;
  for (const Marker& m : markers)
    if (const std::size_t p = text.rfind(m.s); p != std::string_view::npos && (!best || p > best_pos)) {
      best = &m;
      best_pos = p;
    }
  if (best) {
    const Marker& m = *best;
    const std::size_t p = best_pos;
    std::string_view rest = text.substr(p + m.s.size());
    if (const std::size_t nl = rest.find('\n'); nl != std::string_view::npos) rest = rest.substr(0, nl);
    const auto toks = detail::number_tokens(rest);
    if (toks.empty()) return std::nullopt;  // a marker without a number is a wrong answer, not a fallback
    if (const auto v = normalize_number(toks.front())) return Gsm8kAnswer{*v, toks.front(), m.name};
    return std::nullopt;
  }
  if (!last_number_fallback) return std::nullopt;
  const auto toks = detail::number_tokens(text);
  if (toks.empty()) return std::nullopt;
  if (const auto v = normalize_number(toks.back())) return Gsm8kAnswer{*v, toks.back(), "last number"};
  return std::nullopt;
}

/// Float comparison of two numeric answers: |a − b| ≤ 1e-6·max(1, |b|).
inline bool numbers_match(double predicted, double gold) {
  return std::abs(predicted - gold) <= 1e-6 * std::max(1.0, std::abs(gold));
}

// ----------------------------------------------------------------------------------------------- MATH

/// The content of the last \boxed{...} or \fbox{...} in `text` (braces balanced; "\boxed 5" gives
/// the text up to the next '$' or end, as in Hendrycks' `last_boxed_only_string`). Like the reference,
/// every '{' and '}' counts, escaped or not ("\{1,2\}" balances either way; math_test_5000's
/// geometry/1107 answer "\frac{\}{p}i4+2-\sqrt{2}" only balances this way). nullopt if none or if
/// the braces never close.
inline std::optional<std::string> last_boxed(std::string_view text) {
  std::size_t p = text.rfind("\\boxed");
  const std::size_t f = text.rfind("\\fbox");
  std::size_t skip = 6;
  if (p == std::string_view::npos || (f != std::string_view::npos && f > p)) {
    p = f;
    skip = 5;
  }
  if (p == std::string_view::npos) return std::nullopt;
  std::size_t i = p + skip;
  if (i < text.size() && text[i] == ' ') {  // "\boxed 5": up to '$' or the end
    std::string_view rest = text.substr(i + 1);
    if (const std::size_t d = rest.find('$'); d != std::string_view::npos) rest = rest.substr(0, d);
    while (!rest.empty() && std::isspace(static_cast<unsigned char>(rest.back()))) rest.remove_suffix(1);
    if (rest.empty()) return std::nullopt;
    return std::string(rest);
  }
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  if (i >= text.size() || text[i] != '{') return std::nullopt;
  int depth = 0;
  for (std::size_t j = i; j < text.size(); ++j) {
    if (text[j] == '{') ++depth;
    else if (text[j] == '}' && --depth == 0) return std::string(text.substr(i + 1, j - i - 1));
  }
  return std::nullopt;
}

namespace detail {
/// Hendrycks' _fix_fracs: "\frac12" → "\frac{1}{2}", "\frac1{72}" → "\frac{1}{72}".
inline std::string fix_fracs(const std::string& s) {
  std::vector<std::string> subs;
  {
    std::size_t p = 0, q;
    while ((q = s.find("\\frac", p)) != std::string::npos) {
      subs.push_back(s.substr(p, q - p));
      p = q + 5;
    }
    subs.push_back(s.substr(p));
  }
  std::string out = subs[0];
  for (std::size_t k = 1; k < subs.size(); ++k) {
    const std::string& sub = subs[k];
    out += "\\frac";
    if (!sub.empty() && sub[0] == '{') {
      out += sub;
      continue;
    }
    if (sub.size() < 2) return s;  // malformed: leave the string as it was (as the reference does)
    const char a = sub[0], b = sub[1];
    if (b != '{') {
      out += std::string("{") + a + "}{" + b + "}" + sub.substr(2);
    } else {
      out += std::string("{") + a + "}" + sub.substr(1);
    }
  }
  return out;
}

/// Hendrycks' _fix_a_slash_b: "3/4" (two integers) → "\frac{3}{4}".
inline std::string fix_a_slash_b(const std::string& s) {
  const std::size_t p = s.find('/');
  if (p == std::string::npos || s.find('/', p + 1) != std::string::npos) return s;
  const std::string a = s.substr(0, p), b = s.substr(p + 1);
  auto is_int = [](const std::string& x) {
    if (x.empty()) return false;
    std::size_t i = (x[0] == '-' || x[0] == '+') ? 1 : 0;
    if (i == x.size()) return false;
    for (; i < x.size(); ++i)
      if (!is_digit(x[i])) return false;
    return true;
  };
  if (!is_int(a) || !is_int(b)) return s;
  const std::string A = std::to_string(std::stoll(a)), B = std::to_string(std::stoll(b));
  if (A != a || B != b) return s;  // the reference requires str(int(a)) == a
  return "\\frac{" + a + "}{" + b + "}";
}

/// Units: "\text{ " starts trailing units (Hendrycks' _remove_right_units); we also drop a trailing
/// \text{...} / \mbox{...} group whose content is letters/spaces only ("5\text{ cm}", "10\text{cents}").
inline std::string remove_right_units(std::string s) {
  if (const std::size_t p = s.find("\\text{ "); p != std::string::npos) s = s.substr(0, p);
  for (std::string_view cmd : {std::string_view("\\text{"), std::string_view("\\mbox{")}) {
    const std::size_t p = s.rfind(cmd);
    if (p == std::string::npos || p == 0 || s.back() != '}') continue;
    const std::string inner = s.substr(p + cmd.size(), s.size() - 1 - p - cmd.size());
    bool letters = !inner.empty();
    for (char c : inner)
      if (!std::isalpha(static_cast<unsigned char>(c)) && c != ' ') letters = false;
    if (letters) s = s.substr(0, p);
  }
  return s;
}

/// Hendrycks' _fix_sqrt: "\sqrt3" → "\sqrt{3}".
inline std::string fix_sqrt(const std::string& s) {
  if (s.find("\\sqrt") == std::string::npos) return s;
  std::string out;
  std::size_t p = 0, q;
  out = s.substr(0, s.find("\\sqrt"));
  p = s.find("\\sqrt");
  while (p != std::string::npos) {
    q = s.find("\\sqrt", p + 5);
    std::string sub = s.substr(p + 5, q == std::string::npos ? std::string::npos : q - p - 5);
    out += "\\sqrt";
    if (!sub.empty() && sub[0] != '{') out += std::string("{") + sub[0] + "}" + sub.substr(1);
    else out += sub;
    p = q;
  }
  return out;
}
}  // namespace detail

/// MATH answer normalisation: Hendrycks et al.'s `strip_string` (github.com/hendrycks/math,
/// modeling/math_equivalence.py), step by step, plus a trailing '.' removal and a trailing
/// \text{letters} unit removal:
///  newlines, "\!" removed; "\\" → "\"; tfrac/dfrac → frac; "\left", "\right" removed; "^{\circ}",
///  "^\circ" removed; "\$" removed; units removed; "\%", "%" removed; " ." → " 0.", "{." → "{0.",
///  leading "." → "0."; "x = 5" → "5" when the left side has ≤ 2 characters; \sqrt3 → \sqrt{3};
///  spaces removed; \frac12 → \frac{1}{2}; "0.5" → \frac{1}{2}; "a/b" (integers) → \frac{a}{b};
///  trailing '.' removed.
inline std::string math_strip_string(std::string s) {
  s = replace_all(s, "\n", "");
  s = replace_all(s, "\\!", "");
  s = replace_all(s, "\\\\", "\\");
  s = replace_all(s, "tfrac", "frac");
  s = replace_all(s, "dfrac", "frac");
  s = replace_all(s, "\\left", "");
  s = replace_all(s, "\\right", "");
  s = replace_all(s, "^{\\circ}", "");
  s = replace_all(s, "^\\circ", "");
  s = replace_all(s, "\\$", "");
  s = detail::remove_right_units(s);
  s = replace_all(s, "\\%", "");
  s = replace_all(s, "%", "");
  s = replace_all(s, " .", " 0.");
  s = replace_all(s, "{.", "{0.");
  if (s.empty()) return s;
  if (s[0] == '.') s = "0" + s;
  if (const std::size_t e = s.find('='); e != std::string::npos && s.find('=', e + 1) == std::string::npos &&
                                         e <= 2)
    s = s.substr(e + 1);
  s = detail::fix_sqrt(s);
  s = replace_all(s, " ", "");
  s = detail::fix_fracs(s);
  if (s == "0.5") s = "\\frac{1}{2}";
  s = detail::fix_a_slash_b(s);
  while (!s.empty() && s.back() == '.') s.pop_back();
  return s;
}

/// MATH equivalence: equal after math_strip_string (the reference's `is_equiv`).
inline bool math_equiv(std::string_view a, std::string_view b) {
  return math_strip_string(std::string(a)) == math_strip_string(std::string(b));
}

}  // namespace hdpissa::llama::eval
