#pragma once
/// ScopedEnv: sets (or, with nullptr, unsets) an environment variable for a scope and restores its
/// earlier value (or absence) on exit, also when a REQUIRE / FAIL leaves the scope early.

#include <cstdlib>
#include <string>

namespace hdpissa::test {

struct ScopedEnv {
  std::string name;
  bool had = false;
  std::string old;
  ScopedEnv(const char* n, const char* value) : name(n) {
    if (const char* e = std::getenv(n)) had = true, old = e;
    if (value) ::setenv(n, value, 1);
    else ::unsetenv(n);
  }
  ~ScopedEnv() {
    if (had) ::setenv(name.c_str(), old.c_str(), 1);
    else ::unsetenv(name.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
};

}  // namespace hdpissa::test
