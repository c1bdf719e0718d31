// Answer extractors of examples/llama/include/llama/eval/answers.hpp, against the datasets' own
// reference solutions (GSM8K train + test, MATH-500 solutions vs its answers) and adversarial strings.

#include <fstream>
#include <string>

#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include "../test_util.hpp"
#include "llama/eval/answers.hpp"
#include "llama/eval/evaluators.hpp"

using namespace hdpissa::llama::eval;

namespace {
std::vector<nlohmann::json> jsonl(const std::filesystem::path& p) {
  std::vector<nlohmann::json> out;
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}
}  // namespace

TEST_CASE("GSM8K extractor: every reference solution of train and test yields its '####' number") {
  const auto dir = llama_test::data_dir() / "gsm8k";
  if (!std::filesystem::exists(dir / "test.jsonl")) {
    MESSAGE("skipped: no " << dir.string());
    return;
  }
  for (const char* split : {"train.jsonl", "test.jsonl"}) {
    const auto recs = jsonl(dir / split);
    long ok = 0;
    for (const auto& r : recs) {
      const std::string ans = r["answer"];
      // independent reference: the text after the last "#### " with commas removed (the dataset's spec)
      std::string gold = ans.substr(ans.rfind("#### ") + 5);
      std::string g2;
      for (char c : gold)
        if (c != ',') g2 += c;
      const auto got = extract_gsm8k(ans);
      if (got && numbers_match(got->value, std::stod(g2)) && got->method == "####") ++ok;
      else FAIL_CHECK("no match in '" << ans.substr(ans.size() > 60 ? ans.size() - 60 : 0) << "'");
    }
    CHECK(ok == static_cast<long>(recs.size()));
    MESSAGE(std::string(split) << ": " << ok << "/" << recs.size());
  }
  // MetaMath form of the test set: "The answer is: N" agrees with GSM8K's own "####" answers
  const auto mm = llama_test::data_dir() / "metamath_eval";
  if (std::filesystem::exists(mm)) {
    for (const auto& e : std::filesystem::directory_iterator(mm)) {
      if (e.path().extension() != ".jsonl") continue;
      const auto recs = jsonl(e.path());
      long ok = 0, n = 0;
      for (const auto& r : recs) {
        if (!r.contains("response")) continue;
        ++n;
        ok += extract_gsm8k(r["response"].get<std::string>()).has_value();
      }
      CHECK(ok == n);
    }
  }
}

TEST_CASE("replace_all: left to right, never inside a replacement, exact values") {
  CHECK(replace_all("1,234,567", ",", "") == "1234567");
  CHECK(replace_all("aaa", "a", "aa") == "aaaaaa");    // the replacement contains the pattern
  CHECK(replace_all("aaaa", "aa", "a") == "aa");       // non-overlapping matches
  CHECK(replace_all("abcabc", "abc", "") == "");
  CHECK(replace_all("x\\left(y\\right)", "\\left", "") == "x(y\\right)");
  CHECK(replace_all("unchanged", "zz", "y") == "unchanged");
  CHECK(replace_all("keep", "", "y") == "keep");       // an empty pattern replaces nothing
  CHECK(replace_all("", "a", "b") == "");
}

TEST_CASE("GSM8K extractor: adversarial strings") {
  auto v = [](std::string_view s, bool fb = false) { return extract_gsm8k(s, fb); };
  CHECK(v("so #### 1,234,567")->value == 1234567);
  CHECK(v("The answer is: -42")->value == -42);
  CHECK(v("The answer is: \u221242")->value == -42);  // Unicode minus
  CHECK(v("The answer is: $1,000.00.")->value == 1000);
  CHECK(v("The answer is: 12.")->value == 12);
  CHECK(v("The answer is: .5")->value == 0.5);
  CHECK(v("#### 3\nThe answer is: 7")->value == 7);  // the later marker wins
  CHECK(v("The answer is therefore 3.\n#### 4")->value == 4);
  CHECK(v("The answer is: 3 ... The answer is: 9")->value == 9);  // the last marker
  CHECK(v("The answer is 18 dollars")->value == 18);
  CHECK_FALSE(v("no answer here"));
  CHECK_FALSE(v(""));
  CHECK_FALSE(v("The answer is: unknown\n5"));  // marker without a number: no fallback to other lines
  CHECK_FALSE(v("she has 5 apples and 7 pears"));
  CHECK(v("she has 5 apples and 7 pears", true)->value == 7);
  CHECK(v("she has 5 apples and 7 pears", true)->method == "last number");
  CHECK(v("range 3-5 #### 2")->value == 2);
  CHECK(numbers_match(*normalize_number("1,000"), 1000));
  CHECK_FALSE(normalize_number("12a"));
}

TEST_CASE("MATH: last \\boxed{} and normalisation, adversarial strings") {
  CHECK(*last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}");
  CHECK(*last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}");
  CHECK(*last_boxed("x \\boxed{a^{b^{c}}} y") == "a^{b^{c}}");
  CHECK(*last_boxed("$\\boxed 5$.") == "5");
  CHECK(*last_boxed("\\fbox{7}") == "7");
  CHECK(*last_boxed("\\boxed{1} then \\fbox{2}") == "2");
  CHECK_FALSE(last_boxed("\\boxed{unclosed"));
  CHECK_FALSE(last_boxed("no box"));
  CHECK(math_strip_string("\\left( 3, \\frac12 \\right)") == "(3,\\frac{1}{2})");
  CHECK(math_strip_string("\\dfrac{3}{4}") == "\\frac{3}{4}");
  CHECK(math_strip_string("3/4") == "\\frac{3}{4}");
  CHECK(math_strip_string("0.5") == "\\frac{1}{2}");
  CHECK(math_strip_string(".5") == "\\frac{1}{2}");
  CHECK(math_strip_string("90^\\circ") == "90");
  CHECK(math_strip_string("\\$18.90") == "18.90");
  CHECK(math_strip_string("50\\%") == "50");
  CHECK(math_strip_string("x = 5") == "5");
  CHECK(math_strip_string("5\\text{ cm}") == "5");
  CHECK(math_strip_string("10\\text{cents}") == "10");
  CHECK(math_strip_string("\\sqrt3") == "\\sqrt{3}");
  CHECK(math_strip_string("7.") == "7");
  CHECK(math_strip_string("\\!1,\\!000") == "1,000");
  CHECK(math_equiv("\\tfrac{1}{2}", "\\frac12"));
  CHECK_FALSE(math_equiv("\\frac{1}{3}", "\\frac{1}{2}"));
}

TEST_CASE("MATH: math500 solutions' last \\boxed{} equals its 'answer' after normalisation") {
  const auto path = llama_test::data_dir() / "math500" / "test.jsonl";
  if (!std::filesystem::exists(path)) {
    MESSAGE("skipped: no " << path.string());
    return;
  }
  const auto recs = jsonl(path);
  long ok = 0;
  for (const auto& r : recs) {
    const auto b = last_boxed(r["solution"].get<std::string>());
    const std::string ans = r["answer"];
    if (b && math_equiv(*b, ans)) ++ok;
    else FAIL_CHECK(r["unique_id"].get<std::string>() << ": boxed '" << (b ? *b : "<none>") << "' vs answer '" << ans << "'");
  }
  MESSAGE("math500: " << ok << "/" << recs.size());
  CHECK(ok == static_cast<long>(recs.size()));
}

TEST_CASE("MATH: math_test_5000 answers are loaded, and each is equivalent to itself boxed") {
  const auto path = llama_test::data_dir() / "math_test_5000" / "MATH_test.jsonl";
  if (!std::filesystem::exists(path)) {
    MESSAGE("skipped: no " << path.string());
    return;
  }
  const auto probs = load_task(Task::math, path);
  CHECK(probs.size() == 5000);
  long ok = 0;
  for (const auto& p : probs) {
    const std::string completion = "Therefore the answer is $\\boxed{" + p.reference + "}$.";
    const bool c = score(Task::math, p, completion, EvalOptions{}).correct;
    ok += c;
    if (!c) FAIL_CHECK(p.id << ": '" << p.reference << "'");
  }
  CHECK(ok == static_cast<long>(probs.size()));
}

TEST_CASE("GSM8K loader and scorer: the reference solution scores correct") {
  const auto path = llama_test::data_dir() / "gsm8k" / "test.jsonl";
  if (!std::filesystem::exists(path)) return;
  const auto probs = load_task(Task::gsm8k, path);
  REQUIRE(probs.size() == 1319);
  const auto recs = jsonl(path);
  long ok = 0;
  for (std::size_t i = 0; i < probs.size(); ++i)
    ok += score(Task::gsm8k, probs[i], recs[i]["answer"].get<std::string>(), EvalOptions{}).correct;
  CHECK(ok == 1319);
  CHECK_THROWS_AS(load_task(Task::gsm8k, "/nonexistent/gsm8k.jsonl"), hdpissa::llama::LlamaError);
}

// A record without the task's fields names the expected field and the record's keys (not the
// record, whose solution text would bury them); an MBPP file without the test split says which
// task_ids that is (session 36's audit).
TEST_CASE("task loaders: a wrong-dataset record names its keys; an MBPP file without the test split says so") {
  const auto dir = std::filesystem::temp_directory_path() / "hdpissa-eval-loaders";
  std::filesystem::create_directories(dir);
  const auto gsm = dir / "gsm.jsonl";
  std::ofstream(gsm) << R"({"question": "How many?", "answer": "Long text 1 + 1 = 2\n#### 2"})" << "\n";
  try {
    (void)load_task(Task::humaneval, gsm);
    FAIL("expected an error");
  } catch (const hdpissa::llama::LlamaError& e) {
    const std::string m = e.what();
    CHECK(m.find("expected a string field 'task_id'") != std::string::npos);
    CHECK(m.find("found keys {answer, question}") != std::string::npos);
    CHECK(m.find("Long text") == std::string::npos);
  }
  const auto mbpp = dir / "mbpp.jsonl";
  std::ofstream(mbpp) << R"({"task_id": 2, "text": "t", "code": "c", "test_list": ["assert True"], "test_setup_code": ""})"
                      << "\n";
  try {
    (void)load_task(Task::mbpp, mbpp);
    FAIL("expected an error");
  } catch (const hdpissa::llama::LlamaError& e) {
    CHECK(std::string(e.what()).find("no mbpp problems found (MBPP's test split: task_id 11 to 510)") != std::string::npos);
  }
  std::filesystem::remove_all(dir);
}

// Records are written under a temporary name and renamed when the task ends; a killed run leaves
// its temporary file, which the next writer into that directory on the same host removes, keeping
// those of running processes and of other hosts (session 36's audit).
TEST_CASE("TaskRecords: temporary records of dead writers on this host are swept, live and foreign ones kept") {
  namespace fs = std::filesystem;
  const auto dir = fs::temp_directory_path() / "hdpissa-eval-records-sweep";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) ::_exit(0);
  int st = 0;
  REQUIRE(::waitpid(child, &st, 0) == child);  // reaped: its pid names no process now
  std::string own;
  {
    TaskRecords probe(Task::gsm8k, dir);  // this host's name as TaskRecords spells it, with our pid
    own = probe.temporary().filename().string();
  }
  REQUIRE(!fs::exists(dir / own));  // not committed: removed by its destructor
  const std::string host_part = own.substr(0, own.rfind('-') + 1);  // ".gsm8k.jsonl.tmp-<host>-"
  const auto write = [&](const std::string& n) { std::ofstream(dir / n) << "{}\n"; };
  const std::string dead = host_part + std::to_string(child), live = host_part + "1";  // pid 1 always runs
  write(dead);
  write(live);
  write(".gsm8k.jsonl.tmp-otherhost-" + std::to_string(child));
  write(host_part + std::to_string(child) + "x");  // not a pid: kept
  write(".math.jsonl.tmp-" + host_part.substr(std::string(".gsm8k.jsonl.tmp-").size()) + std::to_string(child));  // another task
  {
    TaskRecords rec(Task::gsm8k, dir);
    rec.stream() << "{\"ok\": true}\n";
    rec.commit(nlohmann::json{{"n", 1}});
  }
  CHECK_FALSE(fs::exists(dir / dead));
  CHECK(fs::exists(dir / live));
  CHECK(fs::exists(dir / (".gsm8k.jsonl.tmp-otherhost-" + std::to_string(child))));
  CHECK(fs::exists(dir / (host_part + std::to_string(child) + "x")));
  CHECK(fs::exists(dir / (".math.jsonl.tmp-" + host_part.substr(std::string(".gsm8k.jsonl.tmp-").size()) + std::to_string(child))));
  CHECK(fs::exists(dir / "gsm8k.jsonl"));
  CHECK(fs::exists(dir / "gsm8k_summary.json"));
  fs::remove_all(dir);
}
