// The device-memory ledger (core/memory_ledger.hpp): exact byte arithmetic per part, the peak and
// the parts at the peak, nested and per-thread scopes. (DeviceBuffer's charges are checked on the
// GPU: tests/llama/cuda/test_model_cuda.cu.)
#include <doctest/doctest.h>

#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "hdpissa/core/memory_ledger.hpp"

using namespace hdpissa::memory;

namespace {
std::int64_t bytes_of(const std::vector<Part>& parts, const std::string& name) {
  for (const Part& p : parts)
    if (p.name == name) return p.bytes;
  return -1;  // absent
}
}  // namespace

TEST_CASE("memory ledger: per-part bytes, the total's peak and the parts at that peak") {
  Ledger& l = Ledger::instance();
  const std::int64_t base = l.total();
  l.reset_peak();
  l.charge("test.a", 1000);
  l.charge("test.b", 300);
  CHECK(l.total() == base + 1300);
  CHECK(l.peak_total() == base + 1300);
  l.charge("test.a", -1000);  // a's buffer freed: the peak stays, with a's 1000 in it
  l.charge("test.b", 200);
  CHECK(l.total() == base + 500);
  CHECK(l.peak_total() == base + 1300);
  const auto now = l.parts();
  CHECK(bytes_of(now, "test.a") == 0);
  CHECK(bytes_of(now, "test.b") == 500);
  const auto peak = l.at_peak();
  CHECK(bytes_of(peak, "test.a") == 1000);
  CHECK(bytes_of(peak, "test.b") == 300);
  for (const Part& p : now)
    if (p.name == "test.a") {
      CHECK(p.peak == 1000);
      CHECK(p.allocations == 1);  // frees do not count
    }
  // A new peak replaces the snapshot; a part first charged after it is 0 in at_peak().
  l.charge("test.b", 2000);
  CHECK(l.peak_total() == base + 2500);
  CHECK(bytes_of(l.at_peak(), "test.a") == 0);
  CHECK(bytes_of(l.at_peak(), "test.b") == 2500);
  l.charge("test.b", -2500);
  l.charge("test.c", 1);  // below the peak: the snapshot keeps c at 0
  l.charge("test.c", -1);
  CHECK(bytes_of(l.at_peak(), "test.c") == 0);
  CHECK(l.total() == base);
  // reset_peak restarts from what is held now.
  l.reset_peak();
  CHECK(l.peak_total() == base);
}

TEST_CASE("memory ledger: scopes nest, restore the previous part, and are per thread") {
  CHECK(std::string(current_part()) == kUntagged);
  {
    PartScope outer("test.outer");
    CHECK(std::string(current_part()) == "test.outer");
    {
      PartScope inner("test.inner");
      CHECK(std::string(current_part()) == "test.inner");
      std::string seen;
      std::thread t([&seen] { seen = current_part(); });  // another thread: no scope there
      t.join();
      CHECK(seen == kUntagged);
    }
    CHECK(std::string(current_part()) == "test.outer");
  }
  CHECK(std::string(current_part()) == kUntagged);
}

TEST_CASE("memory ledger: concurrent charges add up exactly") {
  Ledger& l = Ledger::instance();
  const std::int64_t base = l.total();
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&l] {
      for (int i = 0; i < 1000; ++i) l.charge("test.threads", 3);
    });
  for (auto& t : ts) t.join();
  CHECK(l.total() == base + 12000);
  CHECK(bytes_of(l.parts(), "test.threads") == 12000);
  l.charge("test.threads", -12000);
  CHECK(l.total() == base);
}
