#pragma once
/// \file gsm8k.hpp
/// GSM8K-style answer extraction (spec §6, the authors' PiSSA/MetaMath evaluation): the answer is
/// the first number after the last "The answer is: " (MetaMath style) or, failing that, after the
/// last "#### " (GSM8K's own data); commas are removed and numbers compare as floats.

#include <cmath>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

namespace hdpissa::llama {

/// The numeric answer in `text`, or nullopt when there is no marker or no number after it.
inline std::optional<double> extract_answer(std::string_view text) {
  std::size_t start = std::string_view::npos;
  for (std::string_view marker : {std::string_view("The answer is: "), std::string_view("#### ")}) {
    const std::size_t p = text.rfind(marker);
    if (p != std::string_view::npos) {
      start = p + marker.size();
      break;
    }
  }
  if (start == std::string_view::npos) return std::nullopt;
  std::string s;  // the rest of the line, commas removed
  for (std::size_t i = start; i < text.size() && text[i] != '\n'; ++i)
    if (text[i] != ',') s += text[i];
  // first number: [+-]?digits[.digits] (also ".5")
  for (std::size_t i = 0; i < s.size(); ++i) {
    const bool sign = (s[i] == '-' || s[i] == '+') && i + 1 < s.size() &&
                      (std::isdigit(static_cast<unsigned char>(s[i + 1])) || s[i + 1] == '.');
    if (!sign && !std::isdigit(static_cast<unsigned char>(s[i])) &&
        !(s[i] == '.' && i + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[i + 1]))))
      continue;
    std::size_t j = i + (sign ? 1 : 0);
    bool dot = false;
    while (j < s.size() && (std::isdigit(static_cast<unsigned char>(s[j])) ||
                            (s[j] == '.' && !dot && j + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[j + 1]))))) {
      dot = dot || s[j] == '.';
      ++j;
    }
    return std::strtod(s.substr(i, j - i).c_str(), nullptr);
  }
  return std::nullopt;
}

/// Float comparison of two answers (|a − b| ≤ 1e-6·max(1, |b|)).
inline bool answers_match(double predicted, double gold) {
  return std::abs(predicted - gold) <= 1e-6 * std::max(1.0, std::abs(gold));
}

}  // namespace hdpissa::llama
