#pragma once
/// \file state_dir.hpp
/// hdpissa-train's state directory as one verifiable unit (issue 18):
///  - StateStamp: the run id (random 128-bit hex made at a fresh start, carried through resumes)
///    and the step; state.json, rank-<p>.json and every safetensors' __metadata__ carry it.
///  - manifest.json (written last, by worker 0 after a barrier): the stamp, the worker count and
///    every file of every worker with its size and xxHash64 (Debian's libxxhash-dev, inlined).
///  - verify_state(): size, checksum and stamp of the files a worker reads; a mix of saves, a
///    flipped byte, a missing file or a manifest of another run is refused naming the file.
///  - find_newest_state(): `--resume S` looks at S, S.old* and S.tmp* (a crash between the two
///    renames of a save leaves only those) and takes the newest complete one.
///  - DirLock: flock on `DIR.lock` beside a directory (exclusive while a trainer writes it, shared
///    while one only reads it); the lock file is left in place (removing it would race).
///  - recover_output_dir(): the same rename window for --output (save_hf_checkpoint's
///    `DIR.tmp-<pid>` / `DIR.old-<pid>`).
///  - test hook: HDPISSA_TEST_CRASH_AT_SAVE_STAGE=k (and optionally HDPISSA_TEST_CRASH_AT_SAVE_STEP=n)
///    makes a save _exit(86) at stage k (1: temp complete, 2: previous state moved aside,
///    3: new state renamed in, old not yet removed).

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#define XXH_INLINE_ALL  // header-only use of libxxhash (no link dependency)
#include <xxhash.h>

#include <nlohmann/json.hpp>

#include "llama/common.hpp"
#include "llama/safetensors.hpp"

namespace hdpissa::llama {

inline constexpr const char* kStateFormat = "hdpissa-train-state/2";
inline constexpr const char* kManifestFormat = "hdpissa-train-manifest/1";

/// The identity every file of one save carries.
struct StateStamp {
  std::string run_id;  ///< 32 hex digits, fixed for a run and its resumes
  long step = -1;      ///< optimizer steps done when the state was saved
};

/// 32 random hex digits (128 bits from std::random_device).
inline std::string new_run_id() {
  std::random_device rd;
  std::string s;
  char buf[9];
  for (int i = 0; i < 4; ++i) {
    std::snprintf(buf, sizeof buf, "%08x", static_cast<unsigned>(rd()));
    s += buf;
  }
  return s;
}

/// xxHash64 (seed 0) of a whole file as 16 hex digits; throws naming the file on a read error.
inline std::string file_xxh64(const std::filesystem::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY);
  if (fd < 0) throw LlamaError(cat("cannot open ", p.string(), ": ", std::strerror(errno)));
  XXH64_state_t st;
  XXH64_reset(&st, 0);
  std::vector<char> buf(1 << 20);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      throw LlamaError(cat("cannot read ", p.string(), ": ", std::strerror(err)));
    }
    if (n == 0) break;
    XXH64_update(&st, buf.data(), std::size_t(n));
  }
  ::close(fd);
  char out[17];
  std::snprintf(out, sizeof out, "%016llx", static_cast<unsigned long long>(XXH64_digest(&st)));
  return out;
}

/// Size and checksum of one file of a state.
struct FileDigest {
  std::uint64_t size = 0;
  std::string xxh64;
};

/// manifest.json of a state directory.
struct StateManifest {
  StateStamp stamp;
  int processes = 0;
  std::map<std::string, FileDigest> files;  ///< by file name inside the directory
};

/// The files of worker `rank` (rank-<p>.json, rank-<p>.safetensors).
inline std::vector<std::string> rank_files(int rank) {
  return {cat("rank-", rank, ".json"), cat("rank-", rank, ".safetensors")};
}
/// The files every worker reads (state.json, shared.safetensors).
inline std::vector<std::string> shared_files() { return {"state.json", "shared.safetensors"}; }

/// Safetensors __metadata__ that carries the stamp.
inline std::map<std::string, std::string> stamp_metadata(const StateStamp& s) {
  return {{"format", "pt"}, {"hdpissa_run_id", s.run_id}, {"hdpissa_step", std::to_string(s.step)}};
}

inline void write_manifest(const std::filesystem::path& dir, const StateManifest& m) {
  nlohmann::json files = nlohmann::json::object();
  for (const auto& [name, d] : m.files) files[name] = {{"size", d.size}, {"xxh64", d.xxh64}};
  const nlohmann::json j = {{"format", kManifestFormat}, {"run_id", m.stamp.run_id}, {"step", m.stamp.step},
                            {"processes", m.processes},  {"checksum", "xxh64"},        {"files", files}};
  write_file_atomic(dir / "manifest.json", j.dump(1) + "\n");
}

/// Reads `dir/manifest.json`; throws naming what is missing or malformed.
inline StateManifest read_manifest(const std::filesystem::path& dir) {
  const auto p = dir / "manifest.json";
  if (!std::filesystem::exists(p))
    throw LlamaError(cat(dir.string(), ": no manifest.json (an incomplete save, or a state of an older "
                                       "hdpissa-train without checksums)"));
  StateManifest m;
  try {
    const auto j = nlohmann::json::parse(read_file_text(p));
    if (j.value("format", std::string()) != kManifestFormat)
      throw LlamaError(cat("expected format ", kManifestFormat, ", found ", j.contains("format") ? j["format"].dump() : "none"));
    m.stamp.run_id = j.at("run_id").get<std::string>();
    m.stamp.step = j.at("step").get<long>();
    m.processes = j.at("processes").get<int>();
    for (auto it = j.at("files").begin(); it != j.at("files").end(); ++it)
      m.files[it.key()] = {it.value().at("size").get<std::uint64_t>(), it.value().at("xxh64").get<std::string>()};
  } catch (const nlohmann::json::exception& e) {
    throw LlamaError(cat(p.string(), ": corrupt manifest (", e.what(), ")"));
  } catch (const LlamaError& e) {
    throw LlamaError(cat(p.string(), ": ", e.what()));
  }
  return m;
}

namespace state_detail {
/// The stamp a file of a state carries (JSON fields, or safetensors __metadata__).
inline StateStamp embedded_stamp(const std::filesystem::path& f) {
  StateStamp s;
  if (f.extension() == ".safetensors") {
    const SafetensorsFile st(f);
    const auto& md = st.metadata();
    const auto r = md.find("hdpissa_run_id"), k = md.find("hdpissa_step");
    if (r == md.end() || k == md.end()) throw LlamaError(cat(f.string(), ": no run id / step in its __metadata__"));
    s.run_id = r->second;
    s.step = std::stol(k->second);
    return s;
  }
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(read_file_text(f));
    s.run_id = j.at("run_id").get<std::string>();
    s.step = j.at("step").get<long>();
  } catch (const nlohmann::json::exception& e) {
    throw LlamaError(cat(f.string(), ": expected JSON with run_id and step (", e.what(), ")"));
  }
  return s;
}
}  // namespace state_detail

/// Verifies `files` of state `dir` against its manifest: each listed, present, of the listed size
/// and checksum, and stamped with the manifest's run id and step. `rank_count`: when > 0, the
/// manifest must list that many workers. Throws LlamaError naming the directory, the file and the
/// mismatch. Returns the manifest.
inline StateManifest verify_state(const std::filesystem::path& dir, const std::vector<std::string>& files) {
  const StateManifest m = read_manifest(dir);
  const std::string where = dir.string();
  // A manifest of another run or save is named as such (before the checksums would flag it).
  if (std::filesystem::exists(dir / "state.json")) {
    std::optional<StateStamp> s;
    try {
      s = state_detail::embedded_stamp(dir / "state.json");
    } catch (const LlamaError&) {
    }  // corrupt: the checksum below names it
    if (s && s->run_id != m.stamp.run_id)
      throw LlamaError(cat(where, ": manifest.json belongs to run ", m.stamp.run_id, " but state.json to run ", s->run_id,
                           " (files of different runs were mixed)"));
  }
  for (const auto& name : files) {
    const auto it = m.files.find(name);
    if (it == m.files.end()) throw LlamaError(cat(where, ": ", name, " is not listed in manifest.json"));
    const auto path = dir / name;
    std::error_code ec;
    if (!std::filesystem::is_regular_file(path, ec))
      throw LlamaError(cat(where, ": ", name, " is missing (listed in manifest.json)"));
    const auto size = std::filesystem::file_size(path, ec);
    if (ec || size != it->second.size)
      throw LlamaError(cat(where, ": ", name, ": expected ", it->second.size, " bytes (manifest.json), found ", size,
                           " (truncated, replaced or from another save)"));
    const std::string h = file_xxh64(path);
    if (h != it->second.xxh64)
      throw LlamaError(cat(where, ": ", name, ": checksum mismatch: manifest.json says xxh64 ", it->second.xxh64,
                           ", the file has ", h, " (corrupted or replaced after the save)"));
    const StateStamp s = state_detail::embedded_stamp(path);
    if (s.run_id != m.stamp.run_id)
      throw LlamaError(cat(where, ": ", name, " belongs to run ", s.run_id, " but manifest.json to run ", m.stamp.run_id,
                           " (files of different runs were mixed)"));
    if (s.step != m.stamp.step)
      throw LlamaError(cat(where, ": ", name, " was saved at step ", s.step, " but manifest.json says step ",
                           m.stamp.step, " (files of different saves were mixed)"));
  }
  return m;
}

/// Every file a complete state of `processes` workers has.
inline std::vector<std::string> all_state_files(int processes) {
  auto f = shared_files();
  for (int p = 0; p < processes; ++p)
    for (auto& n : rank_files(p)) f.push_back(std::move(n));
  return f;
}

/// Verifies every file of `dir` (all workers'); returns the manifest.
inline StateManifest verify_complete_state(const std::filesystem::path& dir) {
  const StateManifest m = read_manifest(dir);
  if (m.processes < 1) throw LlamaError(cat(dir.string(), "/manifest.json: expected processes >= 1, found ", m.processes));
  return verify_state(dir, all_state_files(m.processes));
}

/// A state directory `S` and the leftovers of its saves beside it (S.tmp*, S.old*), sorted.
inline std::vector<std::filesystem::path> state_candidates(const std::filesystem::path& s) {
  namespace fs = std::filesystem;
  const fs::path target = normal_path(s);
  std::vector<fs::path> out;
  std::error_code ec;
  if (fs::is_directory(target, ec)) out.push_back(target);
  const std::string base = target.filename().string();
  const fs::path parent = target.parent_path();
  std::vector<fs::path> rest;
  for (const auto& e : fs::directory_iterator(parent, ec)) {
    const std::string n = e.path().filename().string();
    if ((n.rfind(base + ".tmp", 0) == 0 || n.rfind(base + ".old", 0) == 0) && e.is_directory(ec))
      rest.push_back(e.path());
  }
  std::sort(rest.begin(), rest.end());
  out.insert(out.end(), rest.begin(), rest.end());
  return out;
}

/// The outcome of find_newest_state.
struct StateChoice {
  std::filesystem::path dir;                 ///< the newest complete state
  StateManifest manifest;
  std::vector<std::filesystem::path> stale;  ///< the other candidates (older, incomplete or of another run)
  std::vector<std::string> notes;            ///< why each candidate was taken or passed over
};

/// `--resume S`: the newest complete state among S, S.tmp* and S.old* (every file verified). On a
/// tie S itself wins. When S is complete, candidates of another run are passed over. Throws when
/// none is complete, listing why each failed.
inline StateChoice find_newest_state(const std::filesystem::path& s) {
  namespace fs = std::filesystem;
  const auto cands = state_candidates(s);
  const fs::path target = normal_path(s);
  if (cands.empty()) throw LlamaError(cat("--resume ", s.string(), ": no such state directory"));
  StateChoice c;
  std::vector<std::pair<fs::path, StateManifest>> ok;
  std::string why;
  for (const auto& d : cands) {
    try {
      ok.emplace_back(d, verify_complete_state(d));
    } catch (const std::exception& e) {
      why += cat("\n  ", e.what());
      c.notes.push_back(cat(d.filename().string(), ": incomplete or corrupt (", e.what(), ")"));
      c.stale.push_back(d);
    }
  }
  if (ok.empty()) {
    if (cands.size() == 1 && cands[0] == target) throw LlamaError(cat("--resume ", s.string(), ": ", why.substr(3)));
    throw LlamaError(cat("--resume ", s.string(), ": no complete state among ", cands.size(), " candidate(s):", why));
  }
  std::optional<std::string> run;  // S's run, when S is complete
  for (const auto& [d, m] : ok)
    if (d == target) run = m.stamp.run_id;
  std::size_t best = ok.size();
  for (std::size_t i = 0; i < ok.size(); ++i) {
    if (run && ok[i].second.stamp.run_id != *run) continue;
    if (best == ok.size() || ok[i].second.stamp.step > ok[best].second.stamp.step) best = i;
  }
  c.dir = ok[best].first;
  c.manifest = ok[best].second;
  for (std::size_t i = 0; i < ok.size(); ++i) {
    if (i == best) continue;
    c.stale.push_back(ok[i].first);
    c.notes.push_back(cat(ok[i].first.filename().string(), ": complete, step ", ok[i].second.stamp.step,
                          run && ok[i].second.stamp.run_id != *run ? cat(" of another run (", ok[i].second.stamp.run_id, ")")
                                                                   : std::string(", older")));
  }
  return c;
}

/// flock on `<dir>.lock` (beside `dir`). Exclusive: a trainer writes `dir`; shared: one reads it.
/// A conflicting holder is refused at once with an error naming the directory and the holder's pid.
class DirLock {
 public:
  DirLock() = default;
  DirLock(const std::filesystem::path& dir, bool exclusive, const std::string& flag) {
    namespace fs = std::filesystem;
    const fs::path target = normal_path(dir);
    path_ = target.string() + ".lock";
    std::error_code ec;
    fs::create_directories(target.parent_path(), ec);
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw LlamaError(cat(flag, " ", dir.string(), ": cannot create the lock file ", path_, ": ", std::strerror(errno)));
    if (::flock(fd_, (exclusive ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0) {
      const int err = errno;
      char buf[64] = {};
      const ssize_t n = ::pread(fd_, buf, sizeof buf - 1, 0);
      ::close(fd_);
      fd_ = -1;
      std::string holder = n > 0 ? std::string(buf, std::size_t(n)) : std::string();
      while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
      if (err == EWOULDBLOCK)
        throw LlamaError(cat(flag, " ", dir.string(), ": the state directory is in use by another trainer",
                             holder.empty() ? std::string() : cat(" (pid ", holder, ")"), " — it holds the lock ", path_,
                             "; wait for it to finish or use another directory"));
      throw LlamaError(cat(flag, " ", dir.string(), ": cannot lock ", path_, ": ", std::strerror(err)));
    }
    if (exclusive) {  // for the message of a refused second trainer
      const std::string pid = std::to_string(::getpid()) + "\n";
      if (::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, pid.data(), pid.size(), 0) < 0) {
      }
    }
  }
  DirLock(DirLock&& o) noexcept : fd_(o.fd_), path_(std::move(o.path_)) { o.fd_ = -1; }
  DirLock& operator=(DirLock&& o) noexcept {
    std::swap(fd_, o.fd_);
    std::swap(path_, o.path_);
    return *this;
  }
  DirLock(const DirLock&) = delete;
  DirLock& operator=(const DirLock&) = delete;
  ~DirLock() { release(); }
  void release() {
    if (fd_ >= 0) ::close(fd_);  // closing drops the flock
    fd_ = -1;
  }
  [[nodiscard]] bool held() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
  std::string path_;
};

/// The test hook of the save path (see the file comment): _exit(86) at stage `stage` of the save
/// of step `step` when the environment asks for it.
inline void save_stage_hook(int stage, long step) {
  const char* k = std::getenv("HDPISSA_TEST_CRASH_AT_SAVE_STAGE");
  if (!k || std::atoi(k) != stage) return;
  if (const char* s = std::getenv("HDPISSA_TEST_CRASH_AT_SAVE_STEP"); s && *s && std::atol(s) != step) return;
  std::fprintf(stderr, "hdpissa-train: test hook: crash at save stage %d (step %ld)\n", stage, step);
  std::fflush(stderr);
  ::_exit(86);
}

/// `--output DIR` left by a write interrupted between its two renames (save_hf_checkpoint:
/// DIR.tmp-<pid> complete, DIR moved to DIR.old-<pid>): puts the newest complete copy back at DIR
/// and removes leftovers of crashed writes. Call with DIR's lock held. Messages go to `say`.
inline void recover_output_dir(const std::filesystem::path& dir, const std::function<void(const std::string&)>& say) {
  namespace fs = std::filesystem;
  const fs::path target = normal_path(dir);
  const std::string base = target.filename().string();
  std::error_code ec;
  std::map<std::string, std::pair<fs::path, fs::path>> by_pid;  // suffix -> (tmp, old)
  for (const auto& e : fs::directory_iterator(target.parent_path(), ec)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(base + ".tmp-", 0) == 0) by_pid[n.substr(base.size() + 5)].first = e.path();
    else if (n.rfind(base + ".old-", 0) == 0) by_pid[n.substr(base.size() + 5)].second = e.path();
  }
  for (auto& [pid, p] : by_pid) {
    auto& [tmp, old] = p;
    if (!fs::exists(target) && !tmp.empty() && !old.empty()) {
      // save_hf_checkpoint moves DIR aside only once the temp copy is complete and fsynced
      fs::rename(tmp, target, ec);
      if (!ec) {
        say(cat("--output: recovered ", target.string(), " from ", tmp.filename().string(),
                " (a write was interrupted between its renames); removing the previous copy ", old.filename().string(), "\n"));
        tmp.clear();
      }
    } else if (!fs::exists(target) && tmp.empty() && !old.empty()) {
      fs::rename(old, target, ec);
      if (!ec) {
        say(cat("--output: restored ", target.string(), " from ", old.filename().string(), " (an interrupted write)\n"));
        old.clear();
      }
    }
    for (const auto& x : {tmp, old}) {
      if (x.empty()) continue;
      say(cat("--output: removing ", x.filename().string(), ", left by an interrupted write of ", target.string(), "\n"));
      fs::remove_all(x, ec);
    }
  }
}

}  // namespace hdpissa::llama
