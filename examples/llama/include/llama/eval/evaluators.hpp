#pragma once
/// \file evaluators.hpp
/// Generation-based evaluators (docs/evaluation.md): GSM8K, MATH, HumanEval and MBPP pass@1.
///
///  - Generator: the one interface between an evaluator and a decoder. A batch of prompts (token ids,
///    BOS included) + a budget + stop conditions → one completion (new token ids) per prompt.
///    `cpu_greedy_generator` wraps today's CPU greedy decoder (one prompt at a time); a batched GPU
///    decoder plugs in as another callable with the same signature.
///  - load_task: reads a dataset file into EvalProblems (prompt text, reference, test program).
///  - evaluate: generates, scores, writes one JSON line per problem, returns the summary.

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iomanip>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <signal.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "llama/common.hpp"
#include "llama/data.hpp"
#include "llama/eval/answers.hpp"
#include "llama/eval/code_sandbox.hpp"
#include "llama/model.hpp"

namespace hdpissa::llama::eval {

// ------------------------------------------------------------------------------------- the interface

/// A batch to decode. Stop conditions are a contract on the *result*: the evaluator also truncates the
/// decoded text at the first stop string, so a generator may ignore `stop_strings` (they only let it
/// stop early); it must honour `stop_tokens` (the stop token itself is not returned).
struct GenerationRequest {
  std::vector<std::vector<std::int32_t>> prompts;  ///< each starts with BOS where the model has one
  int max_new_tokens = 512;
  std::vector<std::int32_t> stop_tokens;  ///< e.g. EOS (and BOS for llama2.c-trained models)
  std::vector<std::string> stop_strings;  ///< e.g. "\ndef" for HumanEval
};

/// Generator concept: a callable `std::vector<std::vector<int32_t>>(const GenerationRequest&)`
/// returning exactly one completion (new token ids only) per prompt, in order.
using Generator = std::function<std::vector<std::vector<std::int32_t>>(const GenerationRequest&)>;

/// Today's CPU greedy decoder (model.hpp generate_greedy) as a Generator: prompts one at a time; the
/// budget is capped so that prompt + completion fit max_seq_len (a prompt that does not fit gets an
/// empty completion); decoding stops at the first stop token.
inline Generator cpu_greedy_generator(const ModelWeights& w) {
  return [&w](const GenerationRequest& req) {
    std::vector<std::vector<std::int32_t>> out;
    out.reserve(req.prompts.size());
    for (const auto& prompt : req.prompts) {
      const int room = w.config.max_seq_len - static_cast<int>(prompt.size());
      if (room < 1 || prompt.empty()) {
        out.emplace_back();
        continue;
      }
      GenerateOptions g;
      g.max_new_tokens = std::min(req.max_new_tokens, room);
      if (!req.stop_tokens.empty()) g.stop_token = req.stop_tokens.front();
      std::vector<std::int32_t> ids = generate_greedy(w, prompt, g);
      for (std::size_t i = 0; i < ids.size(); ++i)
        if (std::find(req.stop_tokens.begin(), req.stop_tokens.end(), ids[i]) != req.stop_tokens.end()) {
          ids.resize(i);
          break;
        }
      out.push_back(std::move(ids));
    }
    return out;
  };
}

// ---------------------------------------------------------------------------------------- the tasks

enum class Task { gsm8k, math, humaneval, mbpp };

inline const char* task_name(Task t) {
  switch (t) {
    case Task::gsm8k: return "gsm8k";
    case Task::math: return "math";
    case Task::humaneval: return "humaneval";
    case Task::mbpp: return "mbpp";
  }
  return "?";
}

inline Task parse_task(const std::string& s) {
  for (Task t : {Task::gsm8k, Task::math, Task::humaneval, Task::mbpp})
    if (s == task_name(t)) return t;
  throw LlamaError(cat("--task: expected loss, gsm8k, math, humaneval or mbpp, found '", s, "'"));
}

inline bool is_code_task(Task t) { return t == Task::humaneval || t == Task::mbpp; }

/// One problem, ready to prompt and score.
struct EvalProblem {
  std::string id;
  std::string question;   ///< the problem as the dataset states it
  std::string prompt;     ///< the text given to the model (template applied)
  std::string reference;  ///< gold answer (gsm8k: the number as written; math: the boxed/answer text)
  std::string program_prefix;  ///< code: what precedes the completion in the test program
  std::string program_suffix;  ///< code: what follows it (the tests)
};

/// The prompt templates (docs/evaluation.md).
struct PromptTemplates {
  /// GSM8K and MATH: the trainer's Alpaca template (data.hpp PromptTemplate, no input), as in the
  /// PiSSA / MetaMath evaluation; the instruction is the question.
  PromptTemplate alpaca{};
  /// MBPP, zero-shot form of the MBPP paper's prompt (Austin et al. 2021): {text} and the test
  /// asserts, one per line; the completion ends at "[DONE]".
  std::string mbpp = "You are an expert Python programmer, and here is your task: {text} "
                     "Your code should pass these tests:\n\n{tests}\n[BEGIN]\n";
  /// HumanEval: the dataset's prompt verbatim (signature + docstring); the model continues the body.
  std::string humaneval = "{prompt}";
};

/// Stop strings of each task (the Codex paper's for HumanEval).
inline std::vector<std::string> task_stop_strings(Task t) {
  switch (t) {
    case Task::humaneval: return {"\nclass", "\ndef", "\n#", "\nif", "\nprint"};
    case Task::mbpp: return {"[DONE]"};
    default: return {};
  }
}

namespace detail {
inline std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& path) {
  std::string text;
  const std::string p = path.string();
  if (p.size() > 3 && p.substr(p.size() - 3) == ".gz") {  // gzip -dc: no zlib dependency
    std::string quoted = "'";
    for (char c : p) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    quoted += "'";
    FILE* f = popen(("gzip -dc " + quoted).c_str(), "r");
    if (!f) throw LlamaError(cat(p, ": cannot run gzip -dc"));
    char buf[1 << 16];
    std::size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
    if (pclose(f) != 0) throw LlamaError(cat(p, ": gzip -dc failed (not a gzip file?)"));
  } else {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw LlamaError(cat("cannot open ", p));
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  std::vector<nlohmann::json> out;
  std::istringstream lines(text);
  std::string line;
  long no = 0;
  while (std::getline(lines, line)) {
    ++no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    try {
      out.push_back(nlohmann::json::parse(line));
    } catch (const std::exception& e) {
      throw LlamaError(cat(p, ":", no, ": expected a JSON object per line: ", e.what()));
    }
  }
  return out;
}

inline std::string str_field(const nlohmann::json& r, std::initializer_list<const char*> names, const std::string& where) {
  for (const char* n : names)
    if (r.contains(n) && r[n].is_string()) return r[n].get<std::string>();
  std::string want;
  for (const char* n : names) want += cat(want.empty() ? "" : " or ", "'", n, "'");
  std::string keys;  // the record's keys, not its contents (a long solution would bury them)
  if (r.is_object())
    for (auto it = r.begin(); it != r.end(); ++it) keys += cat(keys.empty() ? "" : ", ", it.key());
  throw LlamaError(cat(where, ": expected a string field ", want, ", found ",
                       r.is_object() ? cat("keys {", keys, "}") : cat("a JSON ", r.type_name())));
}

inline std::string id_of(const nlohmann::json& r, const char* key, std::size_t index) {
  if (r.contains(key)) return r[key].is_string() ? r[key].get<std::string>() : r[key].dump();
  return std::to_string(index);
}
}  // namespace detail

/// Reads `path` as `task`:
///  - gsm8k: JSONL {question, answer} (answer ends with "#### N") or MetaMath's {query, response};
///  - math: JSONL with "problem"/"question" and "answer" (math500, math_test_5000), else the last
///    \boxed{} of "solution";
///  - humaneval: HumanEval JSONL (optionally .gz): program = prompt + completion + test + check(entry_point);
///  - mbpp: MBPP JSONL, the test split task_id 11–510 only; program = completion + test_setup_code + asserts.
inline std::vector<EvalProblem> load_task(Task task, const std::filesystem::path& path,
                                          const PromptTemplates& tpl = {}) {
  if (!std::filesystem::is_regular_file(path))
    throw LlamaError(cat(task_name(task), " data: file not found: ", path.string()));
  const auto recs = detail::read_jsonl(path);
  std::vector<EvalProblem> out;
  for (std::size_t i = 0; i < recs.size(); ++i) {
    const auto& r = recs[i];
    const std::string where = cat(path.string(), ": record ", i + 1);
    EvalProblem p;
    switch (task) {
      case Task::gsm8k: {
        p.id = detail::id_of(r, "id", i);
        p.question = detail::str_field(r, {"question", "query"}, where);
        const std::string ans = detail::str_field(r, {"answer", "response"}, where);
        const auto gold = extract_gsm8k(ans);
        if (!gold) throw LlamaError(cat(where, ": expected a reference answer after \"####\" or \"The answer is\", found none"));
        p.reference = gold->text;
        p.prompt = tpl.alpaca.prompt({p.question, "", ""});
        break;
      }
      case Task::math: {
        p.id = r.contains("unique_id") ? detail::id_of(r, "unique_id", i) : detail::id_of(r, "id", i);
        p.question = detail::str_field(r, {"problem", "question"}, where);
        if (r.contains("answer") && r["answer"].is_string()) {
          p.reference = r["answer"].get<std::string>();
        } else {
          const auto b = last_boxed(detail::str_field(r, {"solution"}, where));
          if (!b) throw LlamaError(cat(where, ": expected an 'answer' field or a \\boxed{} in 'solution', found neither"));
          p.reference = *b;
        }
        p.prompt = tpl.alpaca.prompt({p.question, "", ""});
        break;
      }
      case Task::humaneval: {
        p.id = detail::str_field(r, {"task_id"}, where);
        p.question = detail::str_field(r, {"prompt"}, where);
        p.prompt = replace_all(tpl.humaneval, "{prompt}", p.question);
        p.program_prefix = p.question;
        p.program_suffix = cat("\n", detail::str_field(r, {"test"}, where), "\ncheck(",
                               detail::str_field(r, {"entry_point"}, where), ")\n");
        p.reference = detail::str_field(r, {"canonical_solution"}, where);
        break;
      }
      case Task::mbpp: {
        if (!r.contains("task_id") || !r["task_id"].is_number_integer())
          throw LlamaError(cat(where, ": expected an integer 'task_id'"));
        const long tid = r["task_id"].get<long>();
        if (tid < 11 || tid > 510) continue;  // the test split
        p.id = std::to_string(tid);
        p.question = detail::str_field(r, {"text"}, where);
        std::string tests;
        for (const auto& t : r.at("test_list")) tests += t.get<std::string>() + "\n";
        p.prompt = replace_all(replace_all(tpl.mbpp, "{text}", p.question), "{tests}", tests);
        // test_setup_code goes after the completion: task 367's setup builds trees of the Node class
        // that the solution defines (found by running all 500 canonical solutions)
        const std::string setup = r.contains("test_setup_code") && r["test_setup_code"].is_string()
                                      ? r["test_setup_code"].get<std::string>()
                                      : std::string();
        p.program_suffix = "\n" + setup + "\n" + tests;
        p.reference = detail::str_field(r, {"code"}, where);
        break;
      }
    }
    out.push_back(std::move(p));
  }
  if (out.empty())
    throw LlamaError(cat(path.string(), ": no ", task_name(task), " problems found",
                         task == Task::mbpp ? " (MBPP's test split: task_id 11 to 510)" : ""));
  return out;
}

/// Truncates `text` at the earliest occurrence of any stop string.
inline std::string truncate_at_stops(std::string text, const std::vector<std::string>& stops) {
  std::size_t cut = text.size();
  for (const auto& s : stops)
    if (const std::size_t p = text.find(s); p != std::string::npos) cut = std::min(cut, p);
  text.resize(cut);
  return text;
}

/// MBPP completions often arrive in a Markdown fence: keep the inside of the first ```…``` block.
inline std::string strip_code_fence(const std::string& text) {
  const std::size_t a = text.find("```");
  if (a == std::string::npos) return text;
  std::size_t body = text.find('\n', a);
  if (body == std::string::npos) return text;
  ++body;
  const std::size_t b = text.find("```", body);
  return text.substr(body, b == std::string::npos ? std::string::npos : b - body);
}

/// The scored outcome of one completion.
struct Scored {
  bool correct = false;
  std::string extracted;  ///< gsm8k/math: the extracted answer ("" when none)
  std::string method;     ///< gsm8k: how the answer was found
  SandboxResult run;      ///< code tasks
};

/// The full test program of a code problem with `completion`.
inline std::string code_program(const EvalProblem& p, Task task, const std::string& completion) {
  return p.program_prefix + (task == Task::mbpp ? strip_code_fence(completion) : completion) + p.program_suffix;
}

/// Options of evaluate.
struct EvalOptions {
  int max_new_tokens = 512;
  long limit = 0;                      ///< first N problems in file order (0: all)
  int batch_size = 1;                  ///< prompts per Generator call
  bool gsm8k_last_number_fallback = false;
  SandboxLimits sandbox{};
  /// Called after each batch: problems done, total, new tokens so far, seconds elapsed.
  std::function<void(long, long, long, double)> progress;
};

/// Scores one completion (text already truncated at the stop strings).
inline Scored score(Task task, const EvalProblem& p, const std::string& completion, const EvalOptions& o) {
  Scored s;
  switch (task) {
    case Task::gsm8k: {
      const auto pred = extract_gsm8k(completion, o.gsm8k_last_number_fallback);
      const auto gold = normalize_number(p.reference);
      if (pred) {
        s.extracted = pred->text;
        s.method = pred->method;
        s.correct = gold && numbers_match(pred->value, *gold);
      }
      break;
    }
    case Task::math: {
      const auto b = last_boxed(completion);
      if (b) {
        s.extracted = *b;
        s.correct = math_equiv(*b, p.reference);
      }
      break;
    }
    case Task::humaneval:
    case Task::mbpp:
      s.run = run_python_sandboxed(code_program(p, task, completion), o.sandbox);
      s.correct = s.run.status == "passed";
      break;
  }
  return s;
}

/// Summary of one evaluation.
struct EvalSummary {
  std::string task;
  long n = 0, correct = 0;
  double accuracy = 0;
  long new_tokens = 0;
  double seconds = 0;
  nlohmann::json to_json() const {
    return {{"task", task}, {"n", n}, {"correct", correct}, {"accuracy", accuracy},
            {"new_tokens", new_tokens}, {"seconds", seconds}};
  }
};

/// Runs `task` over `problems` with `gen`. `Tok` is the tokenizer concept of tokenizer.hpp
/// (encode(text, add_bos), decode(ids), bos_id(), eos_id()). Writes one JSON object per problem to
/// `records` when given: {id, prompt, completion, extracted, reference, correct[, method]
/// [, status, exit_code, seconds, stderr_tail]}.
template <class Tok>
EvalSummary evaluate(Task task, const std::vector<EvalProblem>& problems, const Generator& gen, const Tok& tok,
                     const EvalOptions& o, std::ostream* records = nullptr) {
  const long total = o.limit > 0 ? std::min<long>(o.limit, static_cast<long>(problems.size()))
                                 : static_cast<long>(problems.size());
  EvalSummary sum;
  sum.task = task_name(task);
  const auto t0 = std::chrono::steady_clock::now();
  const auto stops = task_stop_strings(task);
  std::vector<std::int32_t> stop_tokens{tok.eos_id()};
  if (tok.bos_id() >= 0 && tok.bos_id() != tok.eos_id()) stop_tokens.push_back(tok.bos_id());  // llama2.c models
  const int bs = std::max(1, o.batch_size);
  for (long start = 0; start < total; start += bs) {
    const long end = std::min<long>(total, start + bs);
    GenerationRequest req;
    req.max_new_tokens = o.max_new_tokens;
    req.stop_tokens = stop_tokens;
    req.stop_strings = stops;
    for (long i = start; i < end; ++i) req.prompts.push_back(tok.encode(problems[i].prompt, /*add_bos=*/true));
    const auto outs = gen(req);
    if (outs.size() != req.prompts.size())
      throw LlamaError(cat("generator returned ", outs.size(), " completions for ", req.prompts.size(), " prompts"));
    for (long i = start; i < end; ++i) {
      const auto& ids = outs[i - start];
      sum.new_tokens += static_cast<long>(ids.size());
      const std::string completion = truncate_at_stops(tok.decode(ids), stops);
      const EvalProblem& p = problems[i];
      const Scored s = score(task, p, completion, o);
      sum.correct += s.correct;
      ++sum.n;
      if (records) {
        nlohmann::json j = {{"id", p.id}, {"prompt", p.prompt}, {"completion", completion},
                            {"reference", p.reference}, {"correct", s.correct}};
        if (is_code_task(task)) {
          j["extracted"] = code_program(p, task, completion);
          j["status"] = s.run.status;
          j["exit_code"] = s.run.exit_code;
          j["seconds"] = s.run.seconds;
          j["stderr_tail"] = s.run.stderr_tail;
        } else {
          j["extracted"] = s.extracted.empty() ? nlohmann::json(nullptr) : nlohmann::json(s.extracted);
          if (task == Task::gsm8k) j["method"] = s.method.empty() ? nlohmann::json(nullptr) : nlohmann::json(s.method);
        }
        *records << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
        records->flush();
      }
    }
    sum.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (o.progress) o.progress(end, total, sum.new_tokens, sum.seconds);
  }
  sum.accuracy = sum.n ? static_cast<double>(sum.correct) / static_cast<double>(sum.n) : 0.0;
  return sum;
}

/// The description of the prompt template and scoring of `task`, written into the summary.
inline nlohmann::json task_protocol(Task task, const EvalOptions& o, const PromptTemplates& tpl = {}) {
  nlohmann::json j;
  switch (task) {
    case Task::gsm8k:
      j["prompt_template"] = tpl.alpaca.no_input;
      j["extraction"] = o.gsm8k_last_number_fallback
                            ? "first number after the last 'The answer is', else after the last '####', else the last number in the text (fallback ON)"
                            : "first number after the last 'The answer is', else after the last '####' (no last-number fallback)";
      j["comparison"] = "numbers: Unicode minus to '-', commas, '$', spaces and a trailing '.' removed; |a-b| <= 1e-6*max(1,|b|)";
      break;
    case Task::math:
      j["prompt_template"] = tpl.alpaca.no_input;
      j["extraction"] = "content of the last \\boxed{...} or \\fbox{...} (balanced braces; '\\boxed x' up to '$')";
      j["comparison"] = "string equality after Hendrycks' strip_string (docs/evaluation.md)";
      break;
    case Task::humaneval:
      j["prompt_template"] = tpl.humaneval;
      j["stop_strings"] = task_stop_strings(task);
      j["program"] = "prompt + completion + '\\n' + test + '\\ncheck(entry_point)\\n'";
      break;
    case Task::mbpp:
      j["prompt_template"] = tpl.mbpp;
      j["split"] = "test: task_id 11-510";
      j["stop_strings"] = task_stop_strings(task);
      j["program"] = "completion (inside of a ``` fence if any) + test_setup_code + test_list asserts";
      break;
  }
  if (is_code_task(task))
    j["sandbox"] = {{"wall_seconds", o.sandbox.wall_seconds}, {"cpu_seconds", o.sandbox.cpu_seconds},
                    {"address_space_mb", o.sandbox.address_space_mb}, {"file_size_mb", o.sandbox.file_size_mb}};
  j["max_new_tokens"] = o.max_new_tokens;
  j["decoding"] = "greedy";
  return j;
}

/// DIR/<task>.jsonl (per-problem records) and DIR/<task>_summary.json, written so that an
/// interrupted run leaves no partial records and records are never beside another run's summary:
/// the records go to a temporary name beside them (removed if commit() is never reached); commit()
/// removes the old summary, renames the records into place, then writes the summary (a crash
/// between the last two steps leaves the new records without a summary).
class TaskRecords {
 public:
  TaskRecords(Task task, const std::filesystem::path& dir)
      : records_(dir / cat(task_name(task), ".jsonl")), summary_(dir / cat(task_name(task), "_summary.json")),
        tmp_(dir / cat(tmp_prefix(task), host_name(), "-", ::getpid())) {
    std::filesystem::create_directories(dir);
    sweep_dead_writers(task, dir);
    out_.open(tmp_, std::ios::binary);
    if (!out_) throw LlamaError(cat("cannot write ", tmp_.string()));
  }
  TaskRecords(const TaskRecords&) = delete;
  TaskRecords& operator=(const TaskRecords&) = delete;
  ~TaskRecords() {
    if (committed_) return;
    out_.close();
    std::error_code ec;
    std::filesystem::remove(tmp_, ec);
  }
  /// Where evaluate() writes the records.
  std::ostream& stream() { return out_; }
  /// The temporary records file (".<task>.jsonl.tmp-<host>-<pid>" in the directory).
  const std::filesystem::path& temporary() const { return tmp_; }
  /// Removes the temporary records of `task` in `dir` that a killed writer on this host left
  /// (".<task>.jsonl.tmp-<host>-<pid>" whose pid no longer runs); those of live processes and of
  /// other hosts (a shared directory) stay. Called by the constructor.
  static void sweep_dead_writers(Task task, const std::filesystem::path& dir) {
    const std::string mine = cat(tmp_prefix(task), host_name(), "-");
    std::error_code ec;
    std::vector<std::filesystem::path> dead;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      const std::string n = e.path().filename().string();
      if (n.rfind(mine, 0) != 0) continue;
      const std::string pid = n.substr(mine.size());
      if (pid.empty() || pid.size() > 9 || pid.find_first_not_of("0123456789") != std::string::npos) continue;
      if (::kill(static_cast<pid_t>(std::stol(pid)), 0) != 0 && errno == ESRCH) dead.push_back(e.path());
    }
    for (const auto& p : dead) std::filesystem::remove(p, ec);
  }
  /// The final records path (the summary's "records").
  const std::filesystem::path& records() const { return records_; }
  /// The records into place, then `summary` beside them.
  void commit(const nlohmann::json& summary) {
    out_.close();
    if (!out_) throw LlamaError(cat("cannot write ", tmp_.string()));
    std::error_code ec;
    std::filesystem::remove(summary_, ec);
    std::filesystem::rename(tmp_, records_, ec);
    if (ec) throw LlamaError(cat("cannot rename ", tmp_.string(), " to ", records_.string(), ": ", ec.message()));
    committed_ = true;
    write_file_atomic(summary_, summary.dump(2) + "\n");
  }

 private:
  static std::string tmp_prefix(Task task) { return cat(".", task_name(task), ".jsonl.tmp-"); }
  static std::string host_name() {
    char h[256] = {};
    if (::gethostname(h, sizeof h - 1) != 0 || !h[0]) return "host";
    std::string s(h);
    for (char& c : s)
      if (c == '/' || c == '-') c = '_';  // a file-name part; '-' separates the pid
    return s;
  }

  std::filesystem::path records_, summary_, tmp_;
  std::ofstream out_;
  bool committed_ = false;
};

/// Runs `task` on `data` and writes DIR/<task>.jsonl (per problem) and DIR/<task>_summary.json
/// (TaskRecords).
template <class Tok>
EvalSummary evaluate_to_dir(Task task, const std::filesystem::path& data, const Generator& gen, const Tok& tok,
                            const EvalOptions& o, const std::filesystem::path& out_dir) {
  const auto problems = load_task(task, data);
  TaskRecords rec(task, out_dir);
  const EvalSummary s = evaluate(task, problems, gen, tok, o, &rec.stream());
  nlohmann::json j = s.to_json();
  j["data"] = data.string();
  j["protocol"] = task_protocol(task, o);
  j["records"] = rec.records().string();
  rec.commit(j);
  return s;
}

/// One progress line (no newline): "task: done/total problems, tok/s<extra>, elapsed, ETA".
inline std::string progress_line(Task task, long done, long total, long toks, double secs,
                                 const std::string& extra = {}) {
  const double eta = done > 0 ? secs / double(done) * double(total - done) : 0.0;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s: %ld/%ld problems, %.1f tok/s%s, elapsed %.0f s, ETA %.0f s", task_name(task),
                done, total, secs > 0 ? double(toks) / secs : 0.0, extra.c_str(), secs, eta);
  return buf;
}
/// A progress printer for EvalOptions::progress: "[tag] " + progress_line to stderr.
inline std::function<void(long, long, long, double)> stderr_progress(std::string tag, Task task) {
  return [tag, task](long done, long total, long toks, double secs) {
    std::fprintf(stderr, "[%s] %s\n", tag.c_str(), progress_line(task, done, total, toks, secs).c_str());
  };
}

}  // namespace hdpissa::llama::eval
