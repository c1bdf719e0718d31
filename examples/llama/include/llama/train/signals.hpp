#pragma once
/// \file signals.hpp
/// Graceful stop of hdpissa-train (issue 18). StopSignals (RAII) installs handlers for SIGINT,
/// SIGTERM and SIGUSR1 that only set a `volatile sig_atomic_t` (async-signal-safe); the trainer
/// polls it once per step, agrees on it with the other workers, finishes the step, saves and
/// exits with 128 + signal. A second SIGINT writes one line with write(2) and _exits at once
/// (130). The previous handlers are restored when the scope ends.
///
/// Test hook: HDPISSA_TEST_SIGNAL_AT_STEP=k[:sig] raises `sig` (default SIGTERM) in the middle of
/// step k (after its forward/backward, before its update); HDPISSA_TEST_SIGNAL_PARENT_AT_STEP=k
/// sends SIGTERM to the parent process (a launcher, which forwards it) at step k on rank 0 and
/// waits (at most 10 s) until the forwarded signal arrives.

#include <csignal>
#include <cstdlib>
#include <cstring>
#include <string>

#include <signal.h>
#include <unistd.h>

namespace hdpissa::llama {

namespace signal_detail {
/// The first stop signal received (0 = none). A function-local static: no namespace-scope state
/// in a header, and an object of type volatile sig_atomic_t is what a handler may write.
inline volatile std::sig_atomic_t& pending() {
  static volatile std::sig_atomic_t sig = 0;
  return sig;
}
inline void on_stop_signal(int sig) {
  if (sig == SIGINT && pending() == SIGINT) {  // the second Ctrl-C: now
    static const char msg[] = "\nhdpissa-train: second SIGINT, exiting now (the state of this step is not saved)\n";
    const ssize_t rc = ::write(STDERR_FILENO, msg, sizeof msg - 1);
    (void)rc;
    ::_exit(128 + SIGINT);
  }
  if (pending() == 0) pending() = sig;
}
}  // namespace signal_detail

/// The stop signal received so far (0 = none).
inline int stop_signal_received() { return int(signal_detail::pending()); }

/// The name of a stop signal ("SIGTERM").
inline std::string signal_name(int sig) {
  switch (sig) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    case SIGUSR1: return "SIGUSR1";
    default: return "signal " + std::to_string(sig);
  }
}

/// Installs the stop handlers for its lifetime (clears any earlier pending signal).
class StopSignals {
 public:
  StopSignals() {
    signal_detail::pending() = 0;
    struct sigaction sa {};
    sa.sa_handler = &signal_detail::on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;  // blocking reads and writes resume; the flag is polled per step
    for (int i = 0; i < 3; ++i) ::sigaction(kSignals[i], &sa, &old_[i]);
  }
  ~StopSignals() {
    for (int i = 0; i < 3; ++i) ::sigaction(kSignals[i], &old_[i], nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  static constexpr int kSignals[3] = {SIGINT, SIGTERM, SIGUSR1};
  struct sigaction old_[3] {};
};

/// The test hooks (see the file comment), called by the trainer in the middle of step `step`.
inline void signal_test_hook(long step, int rank) {
  if (const char* v = std::getenv("HDPISSA_TEST_SIGNAL_AT_STEP"); v && *v && std::atol(v) == step) {
    const char* colon = std::strchr(v, ':');
    ::raise(colon ? std::atoi(colon + 1) : SIGTERM);
  }
  if (const char* v = std::getenv("HDPISSA_TEST_SIGNAL_PARENT_AT_STEP"); v && *v && std::atol(v) == step && rank == 0) {
    ::kill(::getppid(), SIGTERM);
    for (int i = 0; i < 1000 && stop_signal_received() == 0; ++i) ::usleep(10000);
  }
}

}  // namespace hdpissa::llama
