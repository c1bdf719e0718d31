#pragma once
/// \file preflight.hpp
/// hdpissa-train's up-front checks (issue 18), run before the model is loaded so that a run never
/// trains for hours and then fails to write its result:
///  - every input path (--model, --data, --eval-data, --eval-gsm8k, --tokenizer) exists and is
///    readable (--resume is checked by find_newest_state, which also looks at S.tmp* / S.old*);
///  - --output, --save-state, --metrics and --eval-records are distinct, none inside another, and creatable and
///    writable (probed by creating a file in the directory where they will be renamed into place);
///  - no input lies inside --output or --save-state (each is replaced as a whole when written), and
///    an existing one holds only what the trainer writes there (written_by_trainer) or nothing;
///  - the file systems of --output and --save-state have room for one merged model and one state,
///    estimated from the model's parameter count (safetensors headers, or the llama2.c file size).

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "llama/checkpoint.hpp"
#include "llama/common.hpp"
#include "llama/train/options.hpp"

namespace hdpissa::llama {

namespace preflight_detail {

namespace fs = std::filesystem;

inline fs::path normal(const std::string& p) { return fs::weakly_canonical(normal_path(p)); }

/// Whether `inner` is `outer` or lies below it.
inline bool within(const fs::path& inner, const fs::path& outer) {
  auto i = inner.begin(), o = outer.begin();
  for (; o != outer.end(); ++o, ++i)
    if (i == inner.end() || *i != *o) return false;
  return true;
}

inline void check_input(const char* flag, const std::string& p) {
  if (p.empty()) return;
  std::error_code ec;
  if (!fs::exists(p, ec)) throw LlamaError(cat(flag, " ", p, ": no such file or directory"));
  const bool dir = fs::is_directory(p, ec);
  if (::access(p.c_str(), dir ? (R_OK | X_OK) : R_OK) != 0)
    throw LlamaError(cat(flag, " ", p, ": not readable (", std::strerror(errno), ")"));
}

/// The nearest existing ancestor of `p` (p itself when it exists).
inline fs::path existing_ancestor(fs::path p) {
  std::error_code ec;
  while (!p.empty() && !fs::exists(p, ec) && p != p.root_path()) p = p.parent_path();
  return p;
}

/// A file can be created in the existing directory `dir` (for `flag` `p`; `what` names the attempt in
/// the error). A probe file says more than access(2) (root, read-only mounts, ACLs).
inline void probe_directory(const char* flag, const std::string& p, const fs::path& dir, const std::string& what) {
  const fs::path probe = dir / cat(".hdpissa-write-probe-", ::getpid());
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) throw LlamaError(cat(flag, " ", p, ": cannot be written: ", what, " failed (", std::strerror(errno), ")"));
  ::close(fd);
  ::unlink(probe.c_str());
}

/// `p` (a directory, or a file when `file`) can be created or replaced: its existing part is of the
/// right kind, and a file can be created in the directory that will hold it.
inline void check_output(const char* flag, const std::string& p, bool file) {
  std::error_code ec;
  const fs::path a = normal_path(p);  // "dir/" probes beside dir, not inside it
  if (fs::exists(a, ec)) {
    if (!file && !fs::is_directory(a, ec)) throw LlamaError(cat(flag, " ", p, ": exists and is not a directory"));
    if (file && fs::is_directory(a, ec)) throw LlamaError(cat(flag, " ", p, ": is a directory, expected a file"));
    if (file && !fs::is_regular_file(a, ec)) {  // a device (/dev/null, /dev/full): writability is all we can check
      if (::access(a.c_str(), W_OK) != 0)
        throw LlamaError(cat(flag, " ", p, ": not writable (", std::strerror(errno), ")"));
      return;
    }
  }
  const fs::path anc = existing_ancestor(a.parent_path());
  if (!fs::is_directory(anc, ec))
    throw LlamaError(cat(flag, " ", p, ": cannot be created: ", anc.string(), " is not a directory"));
  probe_directory(flag, p, anc, cat("creating a file in ", anc.string()));
}

/// A directory that files will be written into (not renamed into place, as check_output's): an
/// existing one must take a new file, a new one must be creatable.
inline void check_output_into(const char* flag, const std::string& p) {
  std::error_code ec;
  const fs::path a = normal_path(p);
  if (!fs::is_directory(a, ec)) return check_output(flag, p, false);
  probe_directory(flag, p, a, "creating a file in it");
}

/// Whether `name` (an entry of a directory; directories end in "/") is one the trainer writes into
/// --output (a merged model, its tokenizer files, the PEFT adapters' default `adapter/`) or
/// --save-state (a state's files).
inline bool written_by_trainer(const std::string& name, bool state) {
  auto glob = [&](const char* prefix, const char* suffix) {
    const std::string p = prefix, s = suffix;
    return name.size() > p.size() + s.size() && name.starts_with(p) && name.ends_with(s);
  };
  if (state)
    return name == "manifest.json" || name == "state.json" || name == "shared.safetensors" ||
           glob("rank-", ".json") || glob("rank-", ".safetensors");
  for (const char* n : {"config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
                        "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                        "added_tokens.json", "original/", "adapter/"})
    if (name == n) return true;
  return glob("model-", ".safetensors");
}

/// An existing directory `p` that `flag` replaces as a whole when it writes it must hold only what
/// the trainer writes there (written_by_trainer) or nothing: anything else would be deleted without
/// a word. The error names the first entries that are not the trainer's.
inline void check_replaceable(const char* flag, const std::string& p, bool state, const char* what) {
  std::error_code ec;
  if (p.empty() || !fs::is_directory(p, ec)) return;
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(p, ec)) {
    const std::string n = e.path().filename().string() + (e.is_directory(ec) ? "/" : "");
    if (!written_by_trainer(n, state)) names.push_back(n);
  }
  if (names.empty()) return;
  std::sort(names.begin(), names.end());
  std::string list;
  for (std::size_t i = 0; i < names.size() && i < 3; ++i) list += cat(i ? ", " : "", names[i]);
  if (names.size() > 3) list += cat(", ... (", names.size(), " entries)");
  throw LlamaError(cat(flag, " ", p, ": exists and holds files that are not ", what, " (", list,
                       "), and it is replaced as a whole when written; choose a new or empty directory, or remove it"));
}

/// Parameters of the model at `p` (safetensors headers; llama2.c: file size / 4); 0 if unknown.
inline std::int64_t parameter_count(const std::string& p) {
  std::error_code ec;
  try {
    fs::path dir = p;
    if (!fs::is_directory(dir, ec)) {
      if (fs::path(p).extension() != ".safetensors") return std::int64_t(fs::file_size(p, ec) / 4);
      dir = fs::path(p).parent_path();
    }
    const auto c = SafetensorsCollection::open_directory(dir);
    std::int64_t n = 0;
    for (const auto& name : c.names()) n += c.file_of(name).info(name).numel();
    return n;
  } catch (const std::exception&) {
    return 0;  // the loader reports what is wrong with the model
  }
}

}  // namespace preflight_detail

/// Bytes of the checkpoint at `p` on disk (a directory: its *.safetensors / *.bin files; a file:
/// its size); 0 if unknown. For the load's progress line (GB/s).
inline std::uint64_t checkpoint_bytes(const std::string& p) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_directory(p, ec)) {
    const auto n = fs::file_size(p, ec);
    return ec ? 0 : std::uint64_t(n);
  }
  std::uint64_t n = 0;
  for (const auto& e : fs::directory_iterator(p, ec)) {
    const auto ext = e.path().extension();
    if (ext == ".safetensors" || ext == ".bin") n += std::uint64_t(e.file_size(ec));
  }
  return n;
}

/// What check_run_paths found (for the echo).
struct PreflightReport {
  std::int64_t parameters = 0;        ///< of the base model
  std::uint64_t output_bytes = 0;     ///< estimate of one merged model
  std::uint64_t state_bytes = 0;      ///< estimate of one state
};

/// The up-front checks of the file comment; throws LlamaError naming the flag, the path and the
/// problem. `processes`: the worker count (every worker writes its own optimizer state).
inline PreflightReport check_run_paths(const TrainOptions& o, int processes = 1) {
  namespace fs = std::filesystem;
  using namespace preflight_detail;
  // every input (--resume's contents are checked by find_newest_state, its place below)
  const std::pair<const char*, const std::string*> inputs[] = {
      {"--model", &o.model},           {"--data", &o.data},           {"--eval-data", &o.eval_data},
      {"--eval-gsm8k", &o.eval_gsm8k}, {"--eval-math", &o.eval_math}, {"--eval-humaneval", &o.eval_humaneval},
      {"--eval-mbpp", &o.eval_mbpp},   {"--tokenizer", &o.tokenizer}, {"--resume", &o.resume}};
  for (const auto& [flag, in] : inputs)
    if (in != &o.resume) check_input(flag, *in);

  struct Out {
    const char* flag;
    std::string path;
    bool file;
  };
  std::vector<Out> outs;
  if (!o.output.empty()) outs.push_back({"--output", o.output, false});
  if (!o.save_state.empty()) outs.push_back({"--save-state", o.save_state, false});
  if (!o.metrics.empty()) outs.push_back({"--metrics", o.metrics, true});
  if (!o.eval_records.empty()) outs.push_back({"--eval-records", o.eval_records, false});
  for (std::size_t i = 0; i < outs.size(); ++i)
    for (std::size_t j = 0; j < outs.size(); ++j) {
      if (i == j) continue;
      const fs::path a = normal(outs[i].path), b = normal(outs[j].path);
      if (i < j && a == b)
        throw LlamaError(cat(outs[i].flag, " and ", outs[j].flag, " are the same path (", outs[i].path,
                             "): each needs its own (one would replace the other)"));
      if (a != b && within(a, b) && !outs[j].file)
        throw LlamaError(cat(outs[i].flag, " ", outs[i].path, " lies inside ", outs[j].flag, " ", outs[j].path,
                             ", which is replaced as a whole when written; choose a path outside it"));
    }
  if (!o.resume.empty() && !o.output.empty() && normal(o.resume) == normal(o.output))
    throw LlamaError(cat("--resume and --output are the same path (", o.output, ")"));
  // --output and --save-state are replaced as a whole: no input may lie inside either (--resume
  // may be --save-state itself: a run continues its own state), and an existing one must hold only
  // what the trainer writes there
  for (const auto& x : outs) {
    if (x.file || x.path == o.eval_records) continue;
    const fs::path d = normal(x.path);
    for (const auto& [flag, in] : inputs) {
      if (in->empty() || (in == &o.resume && x.path == o.save_state && normal(*in) == d)) continue;
      if (within(normal(*in), d))
        throw LlamaError(cat(flag, " ", *in, normal(*in) == d ? " is the same directory as " : " lies inside ", x.flag,
                             " ", x.path, ", which is replaced as a whole when written; choose an output path outside the inputs"));
    }
  }
  check_replaceable("--output", o.output, false, "a model checkpoint");
  check_replaceable("--save-state", o.save_state, true, "a training state");
  for (const auto& x : outs) check_output(x.flag, x.path, x.file);

  PreflightReport r;
  r.parameters = parameter_count(o.model);
  const std::uint64_t n = std::uint64_t(std::max<std::int64_t>(r.parameters, 0));
  r.output_bytes = 4 * n;  // F32
  // Full fine-tuning keeps W and Adam's two moments; the adapter and DWU methods W plus small factors;
  // --w-precision bf16-compensated adds the compensation of W (saved as fp32 values, like W).
  r.state_bytes = o.method == Method::Full ? 12 * n : 4 * n + 4 * n / 8;
  if (o.updates_w() && o.w_precision == hdpissa::WPrecision::Bf16Compensated) r.state_bytes += 4 * n;
  (void)processes;
  std::map<std::uint64_t, std::pair<std::uint64_t, std::string>> need;  // device -> (bytes, paths)
  auto add = [&](const std::string& p, const char* flag, std::uint64_t bytes) {
    if (p.empty() || bytes == 0) return;
    const fs::path anc = existing_ancestor(fs::absolute(p).parent_path());
    struct stat st {};
    if (::stat(anc.c_str(), &st) != 0) return;
    auto& [b, who] = need[std::uint64_t(st.st_dev)];
    b += bytes;
    who += cat(who.empty() ? "" : " and ", flag, " ", p, " (~", bytes >> 20, " MiB)");
    struct statvfs vf {};
    if (::statvfs(anc.c_str(), &vf) != 0) return;
    const std::uint64_t free_bytes = std::uint64_t(vf.f_bavail) * vf.f_frsize;
    if (b > free_bytes)
      throw LlamaError(cat("not enough free disk space: ", who, " need about ", b >> 20, " MiB (estimated from the model's ",
                           r.parameters, " parameters), but ", anc.string(), " has ", free_bytes >> 20, " MiB free"));
  };
  add(o.output, "--output", r.output_bytes);
  add(o.save_state, "--save-state", r.state_bytes);
  return r;
}

}  // namespace hdpissa::llama
