#pragma once
// Shared by the CPU trainer suites (test_train*.cpp): a trainer on one process with K virtual
// groups, and bitwise matrix equality. Those files compile as one translation unit
// (tests/llama/CMakeLists.txt), so the trainer's templates are instantiated and optimised once.

#include <cstdint>
#include <cstring>
#include <filesystem>
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

/// Rewrites a saved state's manifest.json to match the files present (what a genuine state with
/// those contents would hold, or a forger who fixed the checksums).
inline void forge_manifest(const std::filesystem::path& dir) {
  hdpissa::llama::StateManifest m = hdpissa::llama::read_manifest(dir);
  for (auto& [name, d] : m.files)
    d = {std::uint64_t(std::filesystem::file_size(dir / name)), hdpissa::llama::file_xxh64(dir / name)};
  hdpissa::llama::write_manifest(dir, m);
}

/// Same shape and the same bits.
inline bool same_bits(const hdpissa::llama::Matrix& a, const hdpissa::llama::Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), std::size_t(a.size()) * sizeof(float)) == 0;
}

}  // namespace llama_test
