#pragma once
// Helpers shared by the llama tests: data / scratch locations and the one tolerance formula.

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <doctest/doctest.h>

#include "llama/common.hpp"

namespace llama_test {

/// Shared data folder: $HDPISSA_DATA, else the configured default (never copied into the repo).
inline std::filesystem::path data_dir() {
  if (const char* env = std::getenv("HDPISSA_DATA"); env && *env) return env;
  return HDPISSA_LLAMA_TEST_DATA;
}
/// Whether the data folder is present (tests needing it are skipped with a message otherwise).
inline bool have_data() { return std::filesystem::exists(data_dir() / "stories260K" / "stories260K.bin"); }
/// Scratch folder in the build tree, one per test name.
inline std::filesystem::path scratch(const std::string& name) {
  auto p = std::filesystem::path(HDPISSA_LLAMA_SCRATCH) / name;
  std::filesystem::remove_all(p);
  std::filesystem::create_directories(p);
  return p;
}

/// |a − b| ≤ atol + rtol·|ref| over two equally sized arrays; returns the worst excess ratio
/// (≤ 1 passes) and reports the first offending index.
struct CloseResult {
  double worst_ratio = 0;      ///< max |a−b| / (atol + rtol|ref|)
  long long worst_index = -1;  ///< where
  double a = 0, ref = 0;       ///< values there
};
template <class A, class B>
CloseResult compare(const A* a, const B* ref, long long n, double atol, double rtol) {
  CloseResult r;
  for (long long i = 0; i < n; ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - static_cast<double>(ref[i]));
    const double ratio = d / (atol + rtol * std::abs(static_cast<double>(ref[i])));
    if (!(ratio <= r.worst_ratio)) {  // also catches NaN
      r.worst_ratio = std::isnan(ratio) ? INFINITY : ratio;
      r.worst_index = i;
      r.a = a[i];
      r.ref = ref[i];
    }
  }
  return r;
}

/// Whether `what` of an exception contains `needle`.
inline bool contains(const std::string& what, const std::string& needle) { return what.find(needle) != std::string::npos; }

}  // namespace llama_test

/// Checks that `expr` throws hdpissa::llama::LlamaError whose message contains every listed substring.
#define LLAMA_CHECK_THROWS_WITH_ALL(expr, ...)                                                   \
  do {                                                                                           \
    bool thrown_ = false;                                                                        \
    try {                                                                                        \
      (void)(expr);                                                                              \
    } catch (const hdpissa::llama::LlamaError& e_) {                                             \
      thrown_ = true;                                                                            \
      const std::string msg_ = e_.what();                                                        \
      INFO("message: " << msg_);                                                                 \
      for (const char* needle_ : {__VA_ARGS__}) CHECK_MESSAGE(llama_test::contains(msg_, needle_), needle_); \
    }                                                                                            \
    CHECK_MESSAGE(thrown_, "expected a LlamaError from " #expr);                                 \
  } while (0)
