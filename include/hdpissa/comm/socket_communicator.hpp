#pragma once
/// \file socket_communicator.hpp
/// SocketCommunicator: P CPU processes, one adapter group each (groups() = size()), over the TCP
/// star of a Rendezvous — host-side collectives with no MPI. Compose with VirtualRanks for more
/// groups than processes. Made for what the trainer and the library exchange on the host
/// (consensus flags, checksums, the ncclUniqueId, CPU-training deltas); every byte goes through
/// rank 0, so it is not a bandwidth-optimal transport for large tensors (use NCCL on GPUs).
///
/// - Exactness: every collective is a gather to rank 0 followed by a send from rank 0, so all_gather
///   and broadcast copy bits, and all_reduce_sum computes 0 + x_0 + x_1 + … + x_{P−1} once, at rank 0,
///   in rank order — bit-identical on every rank, and to ThreadGroup's and MpiCommunicator's
///   (OrderedSum) sums on the same inputs.
/// - Framing: each message carries (operation, sequence number, bytes); rank 0 checks them, so
///   processes calling different collectives get a CommError naming both calls instead of garbage.
/// - Faults: every wait has a deadline (SocketOptions::timeout, default $HDPISSA_COMM_TIMEOUT_S or
///   10 min). A peer that exits, crashes or throws closes its socket: rank 0 throws CommError
///   naming that rank and forwards the message to every other rank, which throws it too; a peer
///   that does not arrive in time is named the same way. If rank 0 itself dies, the others see its
///   socket close. After a failure the communicator refuses further calls.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "hdpissa/comm/comm_timeout.hpp"
#include "hdpissa/comm/distributed_env.hpp"
#include "hdpissa/comm/rendezvous.hpp"
#include "hdpissa/core/concepts.hpp"

namespace hdpissa {

/// Options of a SocketCommunicator.
struct SocketOptions {
  /// Deadline of one collective; zero or negative waits forever. Default: $HDPISSA_COMM_TIMEOUT_S
  /// seconds if set, else 10 minutes.
  std::chrono::milliseconds timeout = default_comm_timeout();
};

/// P processes, one adapter group each, over TCP sockets (star around rank 0).
class SocketCommunicator {
 public:
  using memory_space = host_memory;

  /// Joins the job described by `env` (collective: rendezvous within env.timeout).
  explicit SocketCommunicator(const DistributedEnv& env, SocketOptions options = {})
      : SocketCommunicator(rendezvous(env.rank, env.world_size, env.rendezvous, env.timeout), options) {}

  /// Over an already connected star.
  SocketCommunicator(SocketStar star, SocketOptions options) : star_(std::move(star)), options_(options) {}

  /// DistributedEnv::from_environment(), then the rendezvous.
  static SocketCommunicator from_environment(SocketOptions options = {}) {
    return SocketCommunicator(DistributedEnv::from_environment(), options);
  }

  SocketCommunicator(SocketCommunicator&&) noexcept = default;
  SocketCommunicator& operator=(SocketCommunicator&&) noexcept = default;

  int rank() const { return star_.rank; }
  int size() const { return star_.size; }
  int groups() const { return star_.size; }
  int local_groups() const { return 1; }
  int first_group() const { return star_.rank; }
  const SocketOptions& options() const { return options_; }
  void set_timeout(std::chrono::milliseconds t) { options_.timeout = t; }
  /// Why the communicator is unusable (empty while healthy).
  const std::string& failure() const { return failure_; }

  /// `send` holds n values; `recv` receives size()·n, rank-major. send may alias recv + rank()·n.
  template <class T>
  void all_gather(const T* send, T* recv, std::size_t n) {
    check_type<T>();
    const std::size_t bytes = n * sizeof(T);
    begin("all_gather");
    if (size() == 1) {
      if (send != recv && n) std::memmove(recv, send, bytes);
      return;
    }
    if (rank() == 0) {
      if (send != recv && n) std::memmove(recv, send, bytes);
      gather_at_root(Op::all_gather, recv, bytes);
      send_from_root(Op::all_gather, recv, bytes * std::size_t(size()), -1);
    } else {
      send_to_root(Op::all_gather, send, bytes);
      recv_from_root(Op::all_gather, recv, bytes * std::size_t(size()));
    }
  }

  /// In-place sum over processes: 0 + x_0 + … + x_{P−1} at rank 0, sent to all (bit-identical).
  template <class T>
  void all_reduce_sum(T* buf, std::size_t n) {
    check_type<T>();
    const std::size_t bytes = n * sizeof(T);
    begin("all_reduce_sum");
    if (size() == 1) return;
    if (rank() == 0) {
      scratch_.resize(bytes * std::size_t(size()));  // grows once to its high-water mark
      T* all = reinterpret_cast<T*>(scratch_.data());
      if (n) std::memcpy(all, buf, bytes);
      gather_at_root(Op::all_reduce_sum, all, bytes);
      for (std::size_t i = 0; i < n; ++i) {
        T acc = T(0);
        for (int p = 0; p < size(); ++p) acc += all[std::size_t(p) * n + i];
        buf[i] = acc;
      }
      send_from_root(Op::all_reduce_sum, buf, bytes, -1);
    } else {
      send_to_root(Op::all_reduce_sum, buf, bytes);
      recv_from_root(Op::all_reduce_sum, buf, bytes);
    }
  }

  /// `buf` (n values) on `root` is copied to every process.
  template <class T>
  void broadcast(T* buf, std::size_t n, int root) {
    check_type<T>();
    broadcast_bytes(buf, n * sizeof(T), root);
  }

  /// Raw bytes from `root` to every process (the ncclUniqueId travels this way).
  void broadcast_bytes(void* buf, std::size_t bytes, int root) {
    HDPISSA_REQUIRE(root >= 0 && root < size(), "broadcast: root ", root, " out of range for ", size(), " workers");
    begin("broadcast");
    if (size() == 1) return;
    // Every rank first sends rank 0 a frame (empty, or the data from a root ≠ 0), so that rank 0
    // checks that all called the same collective; then rank 0 sends the data to everyone but root.
    if (root == 0) {
      if (rank() == 0) {
        gather_at_root(Op::broadcast, nullptr, 0);
        send_from_root(Op::broadcast, buf, bytes, -1);
      } else {
        send_to_root(Op::broadcast, nullptr, 0);
        recv_from_root(Op::broadcast, buf, bytes);
      }
      return;
    }
    if (rank() == 0) {
      gather_at_root(Op::broadcast, nullptr, 0, root, buf, bytes);
      send_from_root(Op::broadcast, buf, bytes, root);
    } else if (rank() == root) {
      send_to_root(Op::broadcast, buf, bytes);
    } else {
      send_to_root(Op::broadcast, nullptr, 0);
      recv_from_root(Op::broadcast, buf, bytes);
    }
  }

  void barrier() {
    begin("barrier");
    if (size() == 1) return;
    if (rank() == 0) {
      gather_at_root(Op::barrier, nullptr, 0);
      send_from_root(Op::barrier, nullptr, 0, -1);
    } else {
      send_to_root(Op::barrier, nullptr, 0);
      recv_from_root(Op::barrier, nullptr, 0);
    }
  }

  /// "host h, rank r of P".
  const std::string& where() const { return star_.where; }

 private:
  enum class Op : std::uint32_t { all_gather = 1, all_reduce_sum, broadcast, barrier, abort };
  static const char* op_name(std::uint32_t op) {
    switch (Op(op)) {
      case Op::all_gather: return "all_gather";
      case Op::all_reduce_sum: return "all_reduce_sum";
      case Op::broadcast: return "broadcast";
      case Op::barrier: return "barrier";
      case Op::abort: return "abort";
    }
    return "unknown operation";
  }
  static constexpr std::uint32_t frame_magic = 0x48445053;  // "HDPS"
  struct Header {
    std::uint32_t magic = frame_magic;
    std::uint32_t op = 0;
    std::uint64_t seq = 0;
    std::uint64_t bytes = 0;
  };

  template <class T>
  static void check_type() {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                  "SocketCommunicator: supported element types are float and double");
  }

  void begin(const char* what) {
    if (!failure_.empty())
      throw CommError(cat("SocketCommunicator::", what, " on ", where(),
                          ": the communicator is unusable after an earlier failure (", failure_, ")"));
    ++seq_;
    what_ = what;
  }

  std::string call() const { return cat(what_, " #", seq_); }

  /// Marks the communicator failed and throws; rank 0 first tells every other rank why.
  [[noreturn]] void fail(const std::string& problem, const std::vector<bool>* mid_frame = nullptr) {
    failure_ = problem;
    if (rank() == 0) {
      const std::string msg = cat(problem, " (reported by rank 0 on host ", socket_detail::host_name(), ")");
      const auto dl = socket_detail::Deadline::after(std::chrono::milliseconds(200));
      for (int r = 1; r < size(); ++r) {
        auto& s = star_.peers[std::size_t(r)];
        if (!s || (mid_frame && (*mid_frame)[std::size_t(r)])) continue;
        Header h;
        h.op = std::uint32_t(Op::abort);
        h.seq = seq_;
        h.bytes = msg.size();
        if (socket_detail::send_all(s.fd(), &h, sizeof(h), dl) == socket_detail::Io::ok)
          (void)socket_detail::send_all(s.fd(), msg.data(), msg.size(), dl);
        ::shutdown(s.fd(), SHUT_WR);  // FIN right behind the message, before any reset at exit
      }
    }
    throw CommError(cat("SocketCommunicator: ", problem, "; seen on ", where()));
  }

  std::string peer_lost(int r, socket_detail::Io io, int err) const {
    using socket_detail::Io;
    if (io == Io::timeout)
      return cat("rank ", r, " did not arrive at ", call(), " within ", socket_detail::seconds(options_.timeout),
                 " (it is stuck, slow, or calling a different collective)");
    if (io == Io::closed)
      return cat("rank ", r, " closed its connection during ", call(), " (the process exited, crashed or threw)");
    return cat("socket error with rank ", r, " during ", call(), ": ", std::strerror(err));
  }

  /// Rank 0: reads one frame of `op` from every other rank, in whatever order they arrive. Each
  /// rank's payload (`bytes`) lands at dst + r·bytes. With `from` ≥ 0 (relayed broadcast), rank
  /// `from` sends `from_bytes` into `from_dst` and the others send empty frames.
  void gather_at_root(Op op, void* dst, std::size_t bytes, int from = -1, void* from_dst = nullptr,
                      std::size_t from_bytes = 0) {
    using namespace socket_detail;
    const Deadline dl = Deadline::after(options_.timeout);
    const int P = size();
    std::vector<Header> hdr(static_cast<std::size_t>(P));
    std::vector<std::size_t> got(std::size_t(P), 0);  // bytes received: header then payload
    std::vector<bool> done(std::size_t(P), false);
    done[0] = true;
    int left = P - 1;
    std::vector<pollfd> pf;
    std::vector<int> who;
    while (left > 0) {
      pf.clear();
      who.clear();
      for (int r = 1; r < P; ++r)
        if (!done[std::size_t(r)]) {
          pf.push_back({star_.peers[std::size_t(r)].fd(), POLLIN, 0});
          who.push_back(r);
        }
      if (dl.passed()) {
        std::string late;
        for (std::size_t i = 0; i < who.size(); ++i) late += cat(i ? ", " : "", who[i]);
        fail(cat("rank", who.size() > 1 ? "s " : " ", late, " did not arrive at ", call(), " within ",
                 seconds(options_.timeout), " (stuck, slow, or calling a different collective)"));
      }
      if (::poll(pf.data(), pf.size(), dl.poll_ms(200)) <= 0) continue;
      for (std::size_t i = 0; i < pf.size(); ++i) {
        if (!pf[i].revents) continue;
        const int r = who[i];
        const std::size_t ri = std::size_t(r);
        auto* h = reinterpret_cast<unsigned char*>(&hdr[ri]);
        const std::size_t expect = r == from ? from_bytes : (from >= 0 ? 0 : bytes);
        unsigned char* payload = r == from ? static_cast<unsigned char*>(from_dst)
                                           : static_cast<unsigned char*>(dst) + (from >= 0 ? 0 : ri * bytes);
        for (;;) {  // drain what is available without blocking
          const bool in_header = got[ri] < sizeof(Header);
          const std::size_t want = in_header ? sizeof(Header) - got[ri] : expect - (got[ri] - sizeof(Header));
          if (want == 0) break;
          unsigned char* at = in_header ? h + got[ri] : payload + (got[ri] - sizeof(Header));
          const ssize_t k = ::recv(pf[i].fd, at, want, 0);
          if (k == 0) fail(peer_lost(r, Io::closed, 0));
          if (k < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
            fail(peer_lost(r, errno == ECONNRESET ? Io::closed : Io::error, errno));
          }
          got[ri] += std::size_t(k);
          if (in_header && got[ri] == sizeof(Header)) check_header(r, hdr[ri], op, expect);
        }
        if (got[ri] == sizeof(Header) + expect) {
          done[ri] = true;
          --left;
        }
      }
    }
  }

  void check_header(int r, const Header& h, Op op, std::size_t bytes) {
    if (h.magic != frame_magic) fail(cat("rank ", r, " sent a malformed message during ", call()));
    if (h.op != std::uint32_t(op) || h.seq != seq_ || h.bytes != bytes)
      fail(cat("rank ", r, " called ", op_name(h.op), " #", h.seq, " (", h.bytes, " bytes) while rank 0 called ",
               call(), " (", bytes, " bytes): the processes are not calling the same collectives"));
  }

  /// Rank 0: sends (op, payload) to every rank but `skip`.
  void send_from_root(Op op, const void* data, std::size_t bytes, int skip) {
    using namespace socket_detail;
    const Deadline dl = Deadline::after(options_.timeout);
    Header h;
    h.op = std::uint32_t(op);
    h.seq = seq_;
    h.bytes = bytes;
    std::vector<bool> mid(std::size_t(size()), false);
    for (int r = 1; r < size(); ++r) {
      if (r == skip) continue;
      const int fd = star_.peers[std::size_t(r)].fd();
      int err = 0;
      mid[std::size_t(r)] = true;
      Io io = send_all(fd, &h, sizeof(h), dl, &err);
      if (io == Io::ok && bytes) io = send_all(fd, data, bytes, dl, &err);
      if (io != Io::ok) fail(peer_lost(r, io, err), &mid);
      mid[std::size_t(r)] = false;
    }
  }

  /// Rank r > 0: sends its frame to rank 0.
  void send_to_root(Op op, const void* data, std::size_t bytes) {
    using namespace socket_detail;
    const Deadline dl = Deadline::after(options_.timeout);
    Header h;
    h.op = std::uint32_t(op);
    h.seq = seq_;
    h.bytes = bytes;
    const int fd = star_.peers[0].fd();
    int err = 0;
    Io io = send_all(fd, &h, sizeof(h), dl, &err);
    if (io == Io::ok && bytes) io = send_all(fd, data, bytes, dl, &err);
    if (io == Io::closed) {
      // Rank 0 may have closed after sending an abort: report its reason if it is there.
      Header a;
      if (recv_all(fd, &a, sizeof(a), Deadline::after(std::chrono::milliseconds(100))) == Io::ok &&
          a.op == std::uint32_t(Op::abort))
        fail(read_abort(fd, a));
    }
    if (io != Io::ok) fail(root_lost(io, err));
  }

  std::string root_lost(socket_detail::Io io, int err) const {
    using socket_detail::Io;
    if (io == Io::timeout)
      return cat("no answer from rank 0 to ", call(), " within ", socket_detail::seconds(options_.timeout),
                 " (rank 0 or another rank is stuck)");
    if (io == Io::closed)
      return cat("rank 0 closed its connection during ", call(), " (the process exited, crashed or threw)");
    return cat("socket error with rank 0 during ", call(), ": ", std::strerror(err));
  }

  std::string read_abort(int fd, const Header& a) {
    std::string text(std::min<std::uint64_t>(a.bytes, 1u << 16), '\0');
    (void)socket_detail::recv_all(fd, text.data(), text.size(),
                                  socket_detail::Deadline::after(std::chrono::milliseconds(500)));
    return text;
  }

  /// Rank r > 0: receives rank 0's frame of `op` (`bytes` into dst), or its abort message.
  void recv_from_root(Op op, void* dst, std::size_t bytes) {
    using namespace socket_detail;
    // Rank 0 may wait a full timeout for a late peer before it answers or aborts: wait a bit longer
    // so that its message (naming the late rank) arrives before this rank's own deadline.
    const auto t = options_.timeout;
    const auto grace = std::max(std::chrono::milliseconds(1000), t / 10);
    const Deadline dl = Deadline::after(t.count() > 0 ? t + grace : t);
    const int fd = star_.peers[0].fd();
    Header h;
    int err = 0;
    Io io = recv_all(fd, &h, sizeof(h), dl, &err);
    if (io != Io::ok) fail(root_lost(io, err));
    if (h.magic != frame_magic) fail(cat("rank 0 sent a malformed message during ", call()));
    if (h.op == std::uint32_t(Op::abort)) fail(read_abort(fd, h));
    if (h.op != std::uint32_t(op) || h.seq != seq_ || h.bytes != bytes)
      fail(cat("rank 0 answered ", op_name(h.op), " #", h.seq, " (", h.bytes, " bytes) to ", call(), " (", bytes,
               " bytes): the processes are not calling the same collectives"));
    if (bytes) {
      io = recv_all(fd, dst, bytes, dl, &err);
      if (io != Io::ok) fail(root_lost(io, err));
    }
  }

  SocketStar star_;
  SocketOptions options_;
  std::uint64_t seq_ = 0;
  const char* what_ = "";
  std::vector<unsigned char> scratch_;  // all_reduce_sum's gather buffer (rank 0)
  std::string failure_;
};

static_assert(Communicator<SocketCommunicator>);

}  // namespace hdpissa
