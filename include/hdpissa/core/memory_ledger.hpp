#pragma once
/// \file memory_ledger.hpp
/// Device-memory accounting by part: every DeviceBuffer (backend/cuda/cuda_handles.hpp) charges
/// the bytes it allocates to the *current part* of the allocating thread — the innermost
/// `memory::PartScope` alive on it, "untagged" outside every scope — and gives them back when it
/// frees them. The ledger keeps, per part, the bytes held now, their peak and the allocation count,
/// and the total's peak with every part's bytes at that moment (`at_peak()`). It answers "where do
/// the bytes of the peak go" without a profiler: a trainer prints it beside the device-wide peak
/// (cudaMemGetInfo), whose remainder is what the ledger cannot see (the CUDA context, the modules
/// loaded, library handles' own workspaces, allocations made with raw cudaMalloc).
///
/// No CUDA here: the ledger counts bytes and is testable on any machine. Thread-safe (one mutex;
/// allocations are rare: set-up and first use, never a step's hot path). Part names are interned
/// (Ledger::intern: one stable copy per distinct name, kept for the process), so a scope may be
/// given any string, not only a literal.
///
/// \code
///   { hdpissa::memory::PartScope s("model.activations"); acts.reserve(n); }   // charged there
///   for (const auto& p : hdpissa::memory::Ledger::instance().at_peak()) std::cout << p.name << p.bytes;
/// \endcode

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

namespace hdpissa::memory {

/// One part of the ledger: bytes held now, their peak, allocations made under it.
struct Part {
  std::string name;
  std::int64_t bytes = 0;        ///< held now (at_peak(): held when the total peaked)
  std::int64_t peak = 0;         ///< the most this part held at once
  std::int64_t allocations = 0;  ///< allocations charged to it so far (frees not subtracted)
};

/// The process-wide ledger (see the file comment).
class Ledger {
 public:
  static Ledger& instance() {
    static Ledger l;
    return l;
  }

  /// Charges `bytes` (> 0: an allocation, < 0: a free of what was charged) to `part`.
  void charge(const char* part, std::int64_t bytes) {
    std::lock_guard<std::mutex> g(mu_);
    Part& p = find(part);
    p.bytes += bytes;
    if (bytes > 0) ++p.allocations;
    p.peak = std::max(p.peak, p.bytes);
    total_ += bytes;
    if (total_ > peak_total_) {
      peak_total_ = total_;
      at_peak_.clear();
      for (const Part& q : parts_) at_peak_.push_back({q.name, q.bytes, q.peak, q.allocations});
    }
  }

  /// A stable copy of `name` (the same pointer for equal names, valid until the process ends).
  const char* intern(const char* name) {
    std::lock_guard<std::mutex> g(mu_);
    for (const std::string& n : names_)
      if (n == name) return n.c_str();
    names_.emplace_back(name);
    return names_.back().c_str();
  }

  /// Every part (in first-charge order) with its bytes held now.
  std::vector<Part> parts() const {
    std::lock_guard<std::mutex> g(mu_);
    return parts_;
  }
  /// Every part with the bytes it held when the total peaked (parts first charged later: 0 bytes).
  std::vector<Part> at_peak() const {
    std::lock_guard<std::mutex> g(mu_);
    std::vector<Part> out = parts_;
    for (Part& p : out) {
      p.bytes = 0;
      for (const Part& q : at_peak_)
        if (q.name == p.name) p.bytes = q.bytes;
    }
    return out;
  }
  /// Bytes held now, over every part.
  std::int64_t total() const {
    std::lock_guard<std::mutex> g(mu_);
    return total_;
  }
  /// The most held at once since the start (or the last reset_peak()).
  std::int64_t peak_total() const {
    std::lock_guard<std::mutex> g(mu_);
    return peak_total_;
  }
  /// Restarts the peaks from what is held now (per part and in total).
  void reset_peak() {
    std::lock_guard<std::mutex> g(mu_);
    peak_total_ = total_;
    at_peak_.clear();
    for (Part& p : parts_) {
      p.peak = p.bytes;
      at_peak_.push_back(p);
    }
  }

 private:
  Ledger() = default;
  Part& find(const char* name) {
    for (Part& p : parts_)
      if (p.name == name) return p;
    parts_.push_back(Part{name, 0, 0, 0});
    return parts_.back();
  }
  mutable std::mutex mu_;
  std::deque<std::string> names_;  // interned part names (stable addresses)
  std::vector<Part> parts_;
  std::vector<Part> at_peak_;
  std::int64_t total_ = 0, peak_total_ = 0;
};

/// The name of "no scope": what a thread allocates outside every PartScope.
inline constexpr const char* kUntagged = "untagged";

namespace detail {
inline const char*& current_part() {
  thread_local const char* p = kUntagged;
  return p;
}
}  // namespace detail

/// The part the calling thread's allocations are charged to now.
inline const char* current_part() { return detail::current_part(); }

/// Makes `part` the calling thread's current part until the scope ends (scopes nest: the innermost
/// wins; the previous part comes back at the end). The name is interned: any string will do. Not
/// movable; use on the stack.
class PartScope {
 public:
  explicit PartScope(const char* part) : prev_(detail::current_part()) {
    detail::current_part() = Ledger::instance().intern(part);
  }
  explicit PartScope(const std::string& part) : PartScope(part.c_str()) {}
  PartScope(const PartScope&) = delete;
  PartScope& operator=(const PartScope&) = delete;
  ~PartScope() { detail::current_part() = prev_; }

 private:
  const char* prev_;
};

}  // namespace hdpissa::memory
