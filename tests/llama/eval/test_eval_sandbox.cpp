// The code sandbox (examples/llama/include/llama/eval/code_sandbox.hpp): canonical HumanEval / MBPP
// solutions pass; hostile programs fail cleanly within the limit and touch nothing outside their
// temporary directory. The full canonical sets run in the CTest test llama_eval_full (test case names
// containing "[full]"); the default test runs every 16th problem.

#include <fstream>
#include <string>

#include <doctest/doctest.h>

#include "../test_util.hpp"
#include "llama/eval/evaluators.hpp"

using namespace hdpissa::llama::eval;

namespace {
void canonical(Task task, const char* rel, long stride) {
  const auto path = llama_test::data_dir() / rel;
  if (!std::filesystem::exists(path)) {
    MESSAGE("skipped: no " << path.string());
    return;
  }
  const auto probs = load_task(task, path);
  CHECK(probs.size() == (task == Task::humaneval ? 164u : 500u));
  long n = 0, ok = 0;
  SandboxLimits lim;
  lim.wall_seconds = 20;
  for (std::size_t i = 0; i < probs.size(); i += static_cast<std::size_t>(stride)) {
    const auto& p = probs[i];
    const auto r = run_python_sandboxed(code_program(p, task, p.reference), lim);
    ++n;
    if (r.status == "passed") ++ok;
    else FAIL_CHECK(p.id << ": " << r.status << " (exit " << r.exit_code << "): " << r.stderr_tail);
  }
  MESSAGE(std::string(task_name(task)) << " canonical: " << ok << "/" << n);
  CHECK(ok == n);
}
}  // namespace

TEST_CASE("sandbox: canonical HumanEval and MBPP solutions pass (every 16th)") {
  canonical(Task::humaneval, "humaneval/HumanEval.jsonl.gz", 16);
  canonical(Task::mbpp, "mbpp/mbpp.jsonl", 16);
}
TEST_CASE("sandbox: canonical HumanEval solutions pass (all 164) [full]") {
  canonical(Task::humaneval, "humaneval/HumanEval.jsonl.gz", 1);
}
TEST_CASE("sandbox: canonical MBPP test-split solutions pass (all 500) [full]") {
  canonical(Task::mbpp, "mbpp/mbpp.jsonl", 1);
}

TEST_CASE("sandbox: hostile and broken programs fail cleanly") {
  auto sandbox_dirs = [] {
    long n = 0;
    for (const auto& e : std::filesystem::directory_iterator(std::filesystem::temp_directory_path()))
      n += e.path().filename().string().rfind("hdpissa-sandbox-", 0) == 0;
    return n;
  };
  const long dirs_before = sandbox_dirs();
  const auto canary_dir = llama_test::scratch("sandbox_canary");
  const auto canary = canary_dir / "canary.txt";
  { std::ofstream(canary) << "alive\n"; }
  SandboxLimits lim;
  lim.wall_seconds = 3;
  lim.cpu_seconds = 3;
  lim.address_space_mb = 512;
  auto run = [&](const std::string& prog) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto r = run_python_sandboxed(prog, lim);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(s < lim.wall_seconds + 2);
    return r;
  };
  SUBCASE("passing and failing") {
    CHECK(run("assert 1 + 1 == 2").status == "passed");
    const auto r = run("assert 1 + 1 == 3");
    CHECK(r.status == "failed");
    CHECK(llama_test::contains(r.stderr_tail, "AssertionError"));
  }
  SUBCASE("empty completion of a HumanEval-style problem") {
    const std::string prog = "def f(x):\n    \"\"\"doc\"\"\"\n" + std::string("") + "\ndef check(g):\n    assert g(1) == 2\ncheck(f)\n";
    CHECK(run(prog).status == "failed");
  }
  SUBCASE("syntax error") { CHECK(run("def f(:\n").status == "failed"); }
  SUBCASE("infinite loop") { CHECK(run("while True:\n    pass\n").status == "timeout"); }
  SUBCASE("sleeping forever") { CHECK(run("import time\ntime.sleep(1000)\n").status == "timeout"); }
  SUBCASE("segfault via ctypes") {
    const auto r = run("import ctypes\nctypes.string_at(0)\n");
    CHECK(r.status == "error");
    CHECK(r.exit_code == -SIGSEGV);
  }
  SUBCASE("os.abort") { CHECK(run("import os\nos.abort()\n").status == "error"); }
  SUBCASE("memory hog") {
    // The address-space limit is under test, not the clock: zero-filling 512 MB on a loaded 2-core
    // CI machine once took longer than the 3 s the other cases get (a timeout, not a MemoryError).
    lim.wall_seconds = 20;
    lim.cpu_seconds = 20;
    const auto r = run("x = []\nwhile True:\n    x.append(bytearray(50 * 1024 * 1024))\n");
    CHECK(r.status == "failed");
    CHECK(llama_test::contains(r.stderr_tail, "MemoryError"));
  }
  SUBCASE("fork bomb") {
    const auto r = run("import os\nwhile True:\n    os.fork()\n");
    CHECK(r.status != "passed");
  }
  SUBCASE("subprocess and network") {
    CHECK(run("import subprocess\nsubprocess.run(['true'])\n").status == "failed");
    CHECK(run("import socket\nsocket.create_connection(('127.0.0.1', 9))\n").status == "failed");
  }
  SUBCASE("deleting or overwriting a file outside the working directory") {
    CHECK(run("import os\nos.remove(" + nlohmann::json(canary.string()).dump() + ")\n").status == "failed");
    CHECK(run("open(" + nlohmann::json(canary.string()).dump() + ", 'w').write('x')\n").status == "failed");
    CHECK(run("import shutil\nshutil.rmtree(" + nlohmann::json(canary_dir.string()).dump() + ")\n").status == "failed");
    CHECK(run("import os\nos.rename(" + nlohmann::json(canary.string()).dump() + ", 'stolen')\n").status == "failed");
  }
  SUBCASE("files inside the working directory are allowed, and removed afterwards") {
    const auto r = run("import os\nopen('a.txt', 'w').write('x')\nos.mkdir('d')\nos.remove('a.txt')\n"
                       "open('b.txt', 'w').write('y')\nos.chmod('b.txt', 0)\nprint(os.getcwd())\n");
    CHECK(r.status == "passed");
  }
  SUBCASE("huge file write hits the file-size limit") {
    CHECK(run("open('big', 'wb').write(b'x' * (64 << 20))\n").status != "passed");
  }
  std::ifstream in(canary);
  std::string line;
  std::getline(in, line);
  CHECK(line == "alive");
  CHECK(sandbox_dirs() <= dirs_before);  // every run removed its temporary directory
}
