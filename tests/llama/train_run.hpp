#pragma once
// Shared by the CPU trainer suites (test_train*.cpp): a trainer on one process with K virtual
// groups, and bitwise matrix equality. Those files compile as one translation unit
// (tests/llama/CMakeLists.txt), so the trainer's templates are instantiated and optimised once.

#include <cstring>
#include <memory>
#include <sstream>

#include "llama/train/trainer.hpp"

namespace llama_test {

/// The CPU trainer on one process: K = o.groups_per_process virtual groups; its log is kept.
struct TrainRun {
  using Comm = hdpissa::VirtualRanks<hdpissa::SingleProcess>;
  Comm comm;
  std::ostringstream log;
  std::unique_ptr<hdpissa::llama::Trainer<Comm>> t;
  explicit TrainRun(const hdpissa::llama::TrainOptions& o) : comm(hdpissa::SingleProcess{}, o.groups_per_process) {
    t = std::make_unique<hdpissa::llama::Trainer<Comm>>(o, comm, log);
  }
};

/// Same shape and the same bits.
inline bool same_bits(const hdpissa::llama::Matrix& a, const hdpissa::llama::Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), std::size_t(a.size()) * sizeof(float)) == 0;
}

}  // namespace llama_test
