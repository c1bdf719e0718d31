#pragma once
/// \file code_sandbox.hpp
/// Runs an untrusted Python program (a model's completion plus its tests) in a child `python3`
/// process and reports passed / failed / timeout / error (docs/evaluation.md, "Sandbox"). POSIX only.
///
/// Guarantees, in the child, before exec:
///  - its own process group; the parent kills the whole group (SIGKILL) at the wall-clock limit and
///    after the program ends, so stray children never outlive the run;
///  - a fresh temporary working directory (mkdtemp), removed afterwards; HOME and TMPDIR point into it;
///  - setrlimit: CPU seconds, address space, file size, number of processes, no core dumps;
///  - no network: a new user + network namespace (unshare(CLONE_NEWUSER|CLONE_NEWNET)) when the kernel
///    permits it (`network_namespace` in the result says whether it did); always, too, a Python prelude
///    that installs an audit hook refusing socket connections, subprocesses, fork/exec, and any file
///    write, removal, rename or chmod outside the working directory.
/// Limits: the prelude is enforced inside the interpreter only; native code (ctypes) can bypass it.
/// The address-space, process-count and time limits hold regardless.

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>

namespace hdpissa::llama::eval {

/// Limits of one sandboxed run.
struct SandboxLimits {
  double wall_seconds = 10;              ///< wall-clock limit; the process group is killed after it
  long cpu_seconds = 10;                 ///< RLIMIT_CPU
  long address_space_mb = 2048;          ///< RLIMIT_AS
  long file_size_mb = 16;                ///< RLIMIT_FSIZE
  long max_processes = 0;                ///< RLIMIT_NPROC above the user's current count (0: 8 more)
  bool try_network_namespace = true;     ///< unshare(CLONE_NEWUSER|CLONE_NEWNET) when permitted
  std::string python = "python3";        ///< interpreter (looked up in PATH)
  std::size_t stderr_tail_bytes = 2000;  ///< keep this much of the end of stderr
};

/// Outcome of one sandboxed run.
struct SandboxResult {
  std::string status;           ///< "passed", "failed" (non-zero exit, e.g. an assertion), "timeout", "error"
  int exit_code = -1;           ///< exit status, or -signal when killed by a signal
  double seconds = 0;           ///< wall-clock
  std::string stderr_tail;      ///< the end of stderr
  bool network_namespace = false;
};

namespace detail {
/// The prelude run before the program: an audit hook confining the interpreter (see the file doc).
inline const char* sandbox_prelude() {
  return R"PY(
import os as _os, sys as _sys
def _hdpissa_guard():
    _root = _os.path.realpath(_os.getcwd())
    _abspath, _realpath, _sep = _os.path.abspath, _os.path.realpath, _os.sep
    def _inside(p):
        try:
            if isinstance(p, int): return True
            if isinstance(p, bytes): p = p.decode(errors='replace')
            q = _realpath(_abspath(str(p)))
        except Exception:
            return False
        return q == _root or q.startswith(_root + _sep)
    _blocked = {'socket.connect', 'socket.bind', 'socket.sendto', 'socket.getaddrinfo', 'subprocess.Popen',
                'os.system', 'os.fork', 'os.forkpty', 'os.exec', 'os.posix_spawn', 'os.spawn', 'os.kill',
                'os.killpg', 'pty.spawn'}
    _path_events = {'os.remove', 'os.rmdir', 'os.rename', 'os.chmod', 'os.chown', 'os.mkdir', 'os.link',
                    'os.symlink', 'os.truncate', 'os.utime', 'shutil.rmtree', 'os.chdir'}
    def _hook(event, args):
        if event in _blocked:
            raise PermissionError('sandbox: ' + event + ' is not allowed')
        if event == 'open' and len(args) >= 2:
            mode, flags = args[1], (args[2] if len(args) > 2 else 0)
            writing = (isinstance(mode, str) and any(c in mode for c in 'wax+')) or \
                      (isinstance(flags, int) and flags & (_os.O_WRONLY | _os.O_RDWR | _os.O_CREAT | _os.O_TRUNC))
            if writing and not _inside(args[0]):
                raise PermissionError('sandbox: writing outside the working directory is not allowed')
        elif event in _path_events:
            for a in args[:2]:
                if isinstance(a, (str, bytes, _os.PathLike)) and not _inside(a):
                    raise PermissionError('sandbox: ' + event + ' outside the working directory is not allowed')
    _sys.addaudithook(_hook)
_hdpissa_guard()
del _hdpissa_guard
)PY";
}

inline std::string read_tail(const std::filesystem::path& p, std::size_t n) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  return s.size() > n ? s.substr(s.size() - n) : s;
}

inline long current_process_count() {
  long n = 0;
  const uid_t uid = getuid();
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    struct stat st {};
    if (::stat(e.path().c_str(), &st) == 0 && st.st_uid == uid) ++n;
  }
  return n;
}
}  // namespace detail

/// Run `program` (Python source) under `limits`. Never throws for anything the program does; throws
/// std::runtime_error only when the sandbox itself cannot be set up (no temp dir, fork failure).
inline SandboxResult run_python_sandboxed(const std::string& program, const SandboxLimits& limits = {}) {
  namespace fs = std::filesystem;
  std::string tmpl = (fs::temp_directory_path() / "hdpissa-sandbox-XXXXXX").string();
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("sandbox: mkdtemp failed in " + fs::temp_directory_path().string());
  const fs::path dir = tmpl;
  {
    std::ofstream f(dir / "program.py", std::ios::binary);
    f << detail::sandbox_prelude() << "\n" << program << "\n";
    if (!f) throw std::runtime_error("sandbox: cannot write " + (dir / "program.py").string());
  }
  const std::string err_path = (dir / "stderr.txt").string();
  const long nproc = detail::current_process_count() + (limits.max_processes > 0 ? limits.max_processes : 8);
  // Everything the child needs, prepared before fork (no allocation after fork).
  const std::string dir_s = dir.string(), prog_s = (dir / "program.py").string();
  const std::string home_env = "HOME=" + dir_s, tmp_env = "TMPDIR=" + dir_s;
  const char* path_env_c = std::getenv("PATH");
  const std::string path_env = std::string("PATH=") + (path_env_c ? path_env_c : "/usr/bin:/bin");
  char* const argv[] = {const_cast<char*>(limits.python.c_str()), const_cast<char*>("-I"), const_cast<char*>("-B"),
                        const_cast<char*>(prog_s.c_str()), nullptr};
  char* const envp[] = {const_cast<char*>(home_env.c_str()), const_cast<char*>(tmp_env.c_str()),
                        const_cast<char*>(path_env.c_str()), const_cast<char*>("PYTHONHASHSEED=0"),
                        const_cast<char*>("LANG=C.UTF-8"), nullptr};
  int ns_pipe[2];
  if (pipe(ns_pipe) != 0) throw std::runtime_error("sandbox: pipe failed");
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid = fork();
  if (pid < 0) {
    close(ns_pipe[0]);
    close(ns_pipe[1]);
    fs::remove_all(dir);
    throw std::runtime_error("sandbox: fork failed");
  }
  if (pid == 0) {  // child: async-signal-safe calls only
    setpgid(0, 0);
    close(ns_pipe[0]);
    char ns = 0;
    if (limits.try_network_namespace && unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0) ns = 1;
    (void)!write(ns_pipe[1], &ns, 1);
    close(ns_pipe[1]);
    if (chdir(dir_s.c_str()) != 0) _exit(126);
    const int devnull = open("/dev/null", O_RDWR);
    const int err = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (devnull < 0 || err < 0) _exit(126);
    dup2(devnull, 0);
    dup2(devnull, 1);
    dup2(err, 2);
    auto lim = [](auto what, rlim_t v) {  // auto: glibc types the resource as an enum in C++
      struct rlimit r {v, v};
      setrlimit(what, &r);
    };
    lim(RLIMIT_CPU, static_cast<rlim_t>(limits.cpu_seconds));
    lim(RLIMIT_AS, static_cast<rlim_t>(limits.address_space_mb) << 20);
    lim(RLIMIT_FSIZE, static_cast<rlim_t>(limits.file_size_mb) << 20);
    lim(RLIMIT_NPROC, static_cast<rlim_t>(nproc));
    lim(RLIMIT_CORE, 0);
    execvpe(argv[0], argv, envp);
    _exit(127);
  }
  setpgid(pid, pid);  // also from the parent: no race with the kill below
  close(ns_pipe[1]);
  SandboxResult r;
  char ns = 0;
  if (read(ns_pipe[0], &ns, 1) == 1) r.network_namespace = ns != 0;
  close(ns_pipe[0]);
  int wstatus = 0;
  bool timed_out = false;
  for (;;) {
    const pid_t w = waitpid(pid, &wstatus, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) break;
    const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (el > limits.wall_seconds) {
      timed_out = true;
      kill(-pid, SIGKILL);
      while (waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(el < 1 ? 2 : 10));
  }
  kill(-pid, SIGKILL);  // any descendants left in the group
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.stderr_tail = detail::read_tail(err_path, limits.stderr_tail_bytes);
  std::error_code ec;
  // the program may have made files read-only or directories unreadable: restore before removing
  for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
    fs::permissions(it->path(), fs::perms::owner_all, fs::perm_options::add, ec);
  fs::remove_all(dir, ec);
  if (timed_out) {
    r.status = "timeout";
    r.exit_code = -SIGKILL;
  } else if (WIFEXITED(wstatus)) {
    r.exit_code = WEXITSTATUS(wstatus);
    r.status = r.exit_code == 0 ? "passed" : (r.exit_code >= 126 ? "error" : "failed");
  } else if (WIFSIGNALED(wstatus)) {
    r.exit_code = -WTERMSIG(wstatus);
    r.status = WTERMSIG(wstatus) == SIGXCPU ? "timeout" : "error";
  } else {
    r.status = "error";
  }
  return r;
}

}  // namespace hdpissa::llama::eval
