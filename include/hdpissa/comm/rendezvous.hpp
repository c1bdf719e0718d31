#pragma once
/// \file rendezvous.hpp
/// Rendezvous: connects the P processes of a job into a star of TCP sockets around rank 0, without
/// MPI. SocketCommunicator runs its collectives over the star; the NCCL socket bootstrap sends the
/// ncclUniqueId over it.
///
///  - `tcp://host:port` (MASTER_ADDR:MASTER_PORT): rank 0 listens on the port; every other rank
///    connects, retrying until the deadline (rank 0 may start later).
///  - `file:///shared/dir`: rank 0 listens on any free port and writes "host port" to
///    dir/hdpissa-rendezvous (atomically: write, then rename); the others wait for the file and
///    connect to that address. One directory per job. The host written is $HDPISSA_RENDEZVOUS_HOST,
///    else rank 0's host name.
///  - Handshake: each rank sends (magic, rank, world size); rank 0 checks them (rank in range, not
///    twice, same world size) and, once all P − 1 arrived, answers every one with "ok". If the
///    deadline passes first, rank 0 throws CommError naming the ranks that never connected and
///    sends that message to those that did, which throw it too. Every wait has the deadline; no
///    error leaves a process blocked.
/// POSIX sockets, IPv4 (getaddrinfo resolves MASTER_ADDR).

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "hdpissa/comm/distributed_env.hpp"
#include "hdpissa/core/error.hpp"

namespace hdpissa {

namespace socket_detail {

using clock = std::chrono::steady_clock;

/// A deadline; `forever()` when the timeout is zero or negative.
struct Deadline {
  clock::time_point at;
  bool bounded = true;
  static Deadline after(std::chrono::milliseconds t) {
    Deadline d;
    d.bounded = t.count() > 0;
    d.at = clock::now() + (d.bounded ? t : std::chrono::milliseconds(0));
    return d;
  }
  bool passed() const { return bounded && clock::now() >= at; }
  /// Milliseconds left for poll() (−1 = forever), capped at `cap_ms`.
  int poll_ms(int cap_ms = 1000) const {
    if (!bounded) return cap_ms;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(at - clock::now()).count();
    return int(std::max<long long>(0, std::min<long long>(left, cap_ms)));
  }
};

inline std::string host_name() {
  char h[256] = {};
  if (gethostname(h, sizeof(h) - 1) != 0) return "?";
  return h;
}

inline std::string seconds(std::chrono::milliseconds t) { return cat(double(t.count()) / 1000.0, " s"); }

/// An owned file descriptor (move-only).
class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  Socket(Socket&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Socket& operator=(Socket&& o) noexcept {
    if (this != &o) {
      close();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  ~Socket() { close(); }
  int fd() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void close() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

inline void set_nonblocking(int fd) {
  const int fl = fcntl(fd, F_GETFL, 0);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
    throw RuntimeCallError(cat("fcntl(O_NONBLOCK) failed: ", std::strerror(errno), " at ", __FILE__, ":", __LINE__));
}

inline void tune(int fd) {
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  set_nonblocking(fd);
}

/// Outcome of a transfer with a deadline.
enum class Io { ok, closed, timeout, error };

/// Sends `n` bytes (non-blocking socket, MSG_NOSIGNAL: a dead peer is an error, not SIGPIPE).
inline Io send_all(int fd, const void* data, std::size_t n, const Deadline& dl, int* err = nullptr) {
  const auto* p = static_cast<const unsigned char*>(data);
  while (n > 0) {
    const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k > 0) {
      p += k;
      n -= std::size_t(k);
      continue;
    }
    if (k < 0 && errno == EINTR) continue;
    if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (dl.passed()) return Io::timeout;
      pollfd pf{fd, POLLOUT, 0};
      (void)::poll(&pf, 1, dl.poll_ms());
      continue;
    }
    if (err) *err = errno;
    return (errno == EPIPE || errno == ECONNRESET) ? Io::closed : Io::error;
  }
  return Io::ok;
}

/// Receives exactly `n` bytes.
inline Io recv_all(int fd, void* data, std::size_t n, const Deadline& dl, int* err = nullptr) {
  auto* p = static_cast<unsigned char*>(data);
  while (n > 0) {
    const ssize_t k = ::recv(fd, p, n, 0);
    if (k > 0) {
      p += k;
      n -= std::size_t(k);
      continue;
    }
    if (k == 0) return Io::closed;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (dl.passed()) return Io::timeout;
      pollfd pf{fd, POLLIN, 0};
      (void)::poll(&pf, 1, dl.poll_ms());
      continue;
    }
    if (err) *err = errno;
    return errno == ECONNRESET ? Io::closed : Io::error;
  }
  return Io::ok;
}

/// Resolves an IPv4 address of `host` (a name or a dotted quad).
inline bool resolve(const std::string& host, int port, sockaddr_in& out, std::string& why) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || !res) {
    why = cat("cannot resolve host '", host, "': ", gai_strerror(rc));
    return false;
  }
  std::memcpy(&out, res->ai_addr, sizeof(sockaddr_in));
  out.sin_port = htons(std::uint16_t(port));
  freeaddrinfo(res);
  return true;
}

/// One connection attempt (bounded by `dl`); empty Socket + `why` on failure.
inline Socket try_connect(const sockaddr_in& addr, const Deadline& dl, std::string& why) {
  Socket s(::socket(AF_INET, SOCK_STREAM, 0));
  if (!s) {
    why = cat("socket(): ", std::strerror(errno));
    return {};
  }
  tune(s.fd());
  if (::connect(s.fd(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0) return s;
  if (errno != EINPROGRESS) {
    why = std::strerror(errno);
    return {};
  }
  pollfd pf{s.fd(), POLLOUT, 0};
  const int pr = ::poll(&pf, 1, dl.poll_ms());
  if (pr <= 0) {
    why = "connection attempt timed out";
    return {};
  }
  int so = 0;
  socklen_t len = sizeof(so);
  (void)getsockopt(s.fd(), SOL_SOCKET, SO_ERROR, &so, &len);
  if (so != 0) {
    why = std::strerror(so);
    return {};
  }
  return s;
}

inline constexpr std::uint32_t hello_magic = 0x48445052;  // "HDPR"

/// Client → rank 0.
struct Hello {
  std::uint32_t magic = hello_magic;
  std::int32_t rank = 0;
  std::int32_t world = 0;
  std::int32_t pid = 0;
};
/// Rank 0 → client: status 0 = ok; otherwise `len` bytes of error text follow.
struct Answer {
  std::uint32_t magic = hello_magic;
  std::int32_t status = 0;
  std::uint32_t len = 0;
};

inline std::string rendezvous_file(const std::string& dir) { return dir + "/hdpissa-rendezvous"; }

}  // namespace socket_detail

/// The connected star: rank 0 holds one socket per other rank (index = rank; its own is empty),
/// every other rank holds one socket to rank 0.
struct SocketStar {
  int rank = 0;
  int size = 1;
  std::vector<socket_detail::Socket> peers;  ///< rank 0: size entries; others: 1 entry (rank 0)
  std::string where;                         ///< "host h, rank r of P" for messages
};

/// Connects this process (rank of size) with the others at `spec` within `timeout` (collective
/// over all P processes). Size 1 connects nothing.
inline SocketStar rendezvous(int rank, int size, const RendezvousSpec& spec, std::chrono::milliseconds timeout) {
  using namespace socket_detail;
  HDPISSA_REQUIRE(size >= 1 && rank >= 0 && rank < size, "rendezvous: rank ", rank, " out of range for ", size,
                  " processes");
  SocketStar star;
  star.rank = rank;
  star.size = size;
  star.where = cat("host ", host_name(), ", rank ", rank, " of ", size);
  if (size == 1) return star;
  HDPISSA_REQUIRE(spec.kind != RendezvousSpec::Kind::none, "rendezvous on ", star.where,
                  ": no rendezvous address (MASTER_ADDR/MASTER_PORT or HDPISSA_RENDEZVOUS)");
  const Deadline dl = Deadline::after(timeout);
  const std::string at = spec.str();

  if (rank == 0) {
    Socket lst(::socket(AF_INET, SOCK_STREAM, 0));
    if (!lst) throw RuntimeCallError(cat("rendezvous on ", star.where, ": socket(): ", std::strerror(errno)));
    int one = 1;
    (void)setsockopt(lst.fd(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(std::uint16_t(spec.kind == RendezvousSpec::Kind::tcp ? spec.port : 0));
    if (::bind(lst.fd(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0)
      throw CommError(cat("rendezvous on ", star.where, ": cannot listen on port ", ntohs(addr.sin_port), " (", at,
                          "): ", std::strerror(errno),
                          errno == EADDRINUSE ? "; another job (or a leftover process) holds MASTER_PORT: pick "
                                                "another port"
                                              : ""));
    if (::listen(lst.fd(), size + 16) != 0)
      throw RuntimeCallError(cat("rendezvous on ", star.where, ": listen(): ", std::strerror(errno)));
    set_nonblocking(lst.fd());
    std::string file_tmp, file_final;
    if (spec.kind == RendezvousSpec::Kind::file) {
      socklen_t len = sizeof(addr);
      (void)getsockname(lst.fd(), reinterpret_cast<sockaddr*>(&addr), &len);
      const char* h = std::getenv("HDPISSA_RENDEZVOUS_HOST");
      const std::string host = h && *h ? std::string(h) : host_name();
      file_final = rendezvous_file(spec.path);
      file_tmp = cat(file_final, ".tmp.", getpid());
      {
        std::ofstream f(file_tmp);
        f << host << " " << ntohs(addr.sin_port) << "\n";
        if (!f) throw CommError(cat("rendezvous on ", star.where, ": cannot write ", file_tmp,
                                    " (is the directory there and writable?)"));
      }
      if (std::rename(file_tmp.c_str(), file_final.c_str()) != 0)
        throw CommError(cat("rendezvous on ", star.where, ": cannot rename ", file_tmp, " to ", file_final, ": ",
                            std::strerror(errno)));
    }
    struct Remove {  // the file only serves this rendezvous; a later job must not read it
      std::string f;
      ~Remove() {
        if (!f.empty()) std::remove(f.c_str());
      }
    } remove_file{file_final};

    star.peers.resize(std::size_t(size));
    int joined = 1;
    std::vector<Socket> pending;  // accepted, hello not yet read
    std::string problem;
    while (joined < size && problem.empty()) {
      if (dl.passed()) break;
      pollfd pf{lst.fd(), POLLIN, 0};
      if (::poll(&pf, 1, dl.poll_ms(200)) <= 0) continue;
      Socket c(::accept(lst.fd(), nullptr, nullptr));
      if (!c) continue;
      tune(c.fd());
      Hello h;
      // A peer sends its hello right after connecting; a few seconds is plenty.
      Deadline hd = Deadline::after(std::chrono::milliseconds(5000));
      if (dl.bounded && dl.at < hd.at) hd = dl;
      if (recv_all(c.fd(), &h, sizeof(h), hd) != Io::ok || h.magic != hello_magic) continue;  // not one of ours
      if (h.world != size) {
        problem = cat("rank ", h.rank, " (pid ", h.pid, ") joined with world size ", h.world, " but rank 0 has ",
                      size, ": WORLD_SIZE differs between processes");
      } else if (h.rank <= 0 || h.rank >= size) {
        problem = cat("a process (pid ", h.pid, ") joined as rank ", h.rank, ", out of range 1..", size - 1);
      } else if (star.peers[std::size_t(h.rank)]) {
        problem = cat("two processes joined as rank ", h.rank, ": RANK must be unique");
      } else {
        star.peers[std::size_t(h.rank)] = std::move(c);
        ++joined;
        continue;
      }
      pending.push_back(std::move(c));  // tell it why below
    }
    if (joined < size && problem.empty()) {
      std::string missing;
      int n_missing = 0;
      for (int r = 1; r < size; ++r)
        if (!star.peers[std::size_t(r)]) missing += cat(n_missing++ ? ", " : "", r);
      problem = cat("rendezvous at ", at, " timed out after ", seconds(timeout), ": rank", n_missing > 1 ? "s " : " ",
                    missing, " of ", size, " never connected (not started, crashed, or a different MASTER_ADDR/",
                    "MASTER_PORT/rendezvous)");
    }
    const Deadline short_dl = Deadline::after(std::chrono::milliseconds(500));
    auto answer = [&](Socket& s, const std::string& text) {
      Answer a;
      a.status = text.empty() ? 0 : 1;
      a.len = std::uint32_t(text.size());
      (void)send_all(s.fd(), &a, sizeof(a), text.empty() ? dl : short_dl);
      if (!text.empty()) (void)send_all(s.fd(), text.data(), text.size(), short_dl);
    };
    if (!problem.empty()) {
      const std::string msg = cat(problem, " (reported by rank 0 on host ", host_name(), ")");
      for (auto& s : star.peers)
        if (s) answer(s, msg);
      for (auto& s : pending) answer(s, msg);
      throw CommError(cat("rendezvous on ", star.where, ": ", problem));
    }
    for (int r = 1; r < size; ++r) answer(star.peers[std::size_t(r)], "");
    return star;
  }

  // ---- rank r > 0: find rank 0, connect, say hello, wait for the answer.
  std::string last_error = "no attempt";
  Socket s;
  while (!s) {
    if (dl.passed()) {
      throw CommError(cat("rendezvous on ", star.where, ": could not reach rank 0 at ", at, " within ",
                          seconds(timeout), " (last error: ", last_error, "); is rank 0 running, and do all ",
                          "processes use the same ",
                          spec.kind == RendezvousSpec::Kind::file ? "rendezvous directory (shared between hosts)?"
                                                                  : "MASTER_ADDR and MASTER_PORT?"));
    }
    std::string host = spec.host;
    int port = spec.port;
    if (spec.kind == RendezvousSpec::Kind::file) {
      std::ifstream f(rendezvous_file(spec.path));
      if (!(f >> host >> port)) {
        last_error = cat("no rendezvous file ", rendezvous_file(spec.path), " yet");
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
    }
    sockaddr_in addr{};
    if (!resolve(host, port, addr, last_error)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
      continue;
    }
    s = try_connect(addr, dl, last_error);
    if (!s) {
      last_error = cat(host, ":", port, ": ", last_error);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      continue;
    }
    Hello h;
    h.rank = rank;
    h.world = size;
    h.pid = int(getpid());
    if (send_all(s.fd(), &h, sizeof(h), dl) != Io::ok) {  // e.g. a stale listener that went away
      last_error = cat(host, ":", port, ": connection lost while sending the hello");
      s.close();
    }
  }
  // Rank 0 answers by its own deadline (about ours): wait a little longer to hear its reason.
  Deadline answer_dl = dl;
  answer_dl.at += std::max(std::chrono::milliseconds(1000), timeout / 10);
  Answer a;
  const Io io = recv_all(s.fd(), &a, sizeof(a), answer_dl);
  if (io == Io::timeout)
    throw CommError(cat("rendezvous on ", star.where, ": connected to rank 0 at ", at,
                        " but the rendezvous did not complete within ", seconds(timeout),
                        " (other ranks never joined)"));
  if (io != Io::ok || a.magic != hello_magic)
    throw CommError(cat("rendezvous on ", star.where, ": rank 0 at ", at,
                        " closed the connection during the rendezvous (it exited or crashed)"));
  if (a.status != 0) {
    std::string text(std::min<std::uint32_t>(a.len, 1u << 16), '\0');
    (void)recv_all(s.fd(), text.data(), text.size(), Deadline::after(std::chrono::milliseconds(500)));
    throw CommError(cat("rendezvous on ", star.where, ": ", text));
  }
  star.peers.push_back(std::move(s));
  return star;
}

}  // namespace hdpissa
