// MpiCommunicator's collectives over the processes mpirun started (any count ≥ 1). Inputs are
// exactly representable (small integers, halves), so results compare exactly, as nccl-tests do;
// where they are not (random data), the references are computed independently on every rank
// from the counter-based generator, and cross-rank agreement is checked bit for bit.
#include <doctest/doctest.h>

#include <chrono>
#include <cstring>
#include <limits>
#include <cstdlib>
#include <thread>
#include <vector>

#include "hdpissa/mpi.hpp"

using namespace hdpissa;

namespace {

/// True on every rank iff `ok` is true on every rank (so a failed rank fails the check everywhere).
bool all_ranks(MpiCommunicator& comm, bool ok) {
  double bad = ok ? 0.0 : 1.0;
  comm.all_reduce_sum(&bad, 1);
  return bad == 0.0;
}

/// True iff `v` is bitwise equal to rank 0's `v` (checked on every rank).
template <class T>
bool same_bits_as_rank0(MpiCommunicator& comm, const std::vector<T>& v) {
  std::vector<T> root = v;
  comm.broadcast(root.data(), root.size(), 0);
  return all_ranks(comm, std::memcmp(root.data(), v.data(), v.size() * sizeof(T)) == 0);
}

template <class T>
T exact_value(int rank, std::size_t i) {
  return T(rank * 1000) + T(i % 1000) + T(0.5);  // < 2^24: exact in float
}

}  // namespace

TEST_CASE_TEMPLATE("MpiCommunicator: collectives on exactly representable data", T, float, double) {
  MpiCommunicator comm;
  const int P = comm.size(), me = comm.rank();
  REQUIRE(comm.groups() == P);
  REQUIRE(comm.local_groups() == 1);
  REQUIRE(comm.first_group() == me);

  for (std::size_t n : {std::size_t(0), std::size_t(1), std::size_t(37), std::size_t(100003)}) {
    CAPTURE(n);
    {  // all_gather
      std::vector<T> send(n), recv(n * std::size_t(P), T(-1));
      for (std::size_t i = 0; i < n; ++i) send[i] = exact_value<T>(me, i);
      comm.all_gather(send.data(), recv.data(), n);
      long bad = 0;
      for (int p = 0; p < P; ++p)
        for (std::size_t i = 0; i < n; ++i) bad += recv[std::size_t(p) * n + i] != exact_value<T>(p, i);
      CHECK(bad == 0);
    }
    {  // all_gather in place (send = recv + rank·n)
      std::vector<T> recv(n * std::size_t(P), T(-1));
      for (std::size_t i = 0; i < n; ++i) recv[std::size_t(me) * n + i] = exact_value<T>(me, i);
      comm.all_gather(recv.data() + std::size_t(me) * n, recv.data(), n);
      long bad = 0;
      for (int p = 0; p < P; ++p)
        for (std::size_t i = 0; i < n; ++i) bad += recv[std::size_t(p) * n + i] != exact_value<T>(p, i);
      CHECK(bad == 0);
    }
    {  // all_reduce_sum, both policies
      BasicMpiCommunicator<NativeAllReduce> native;
      for (int policy = 0; policy < 2; ++policy) {
        CAPTURE(policy);
        std::vector<T> buf(n);
        for (std::size_t i = 0; i < n; ++i) buf[i] = T(me + 1) * T(i % 4096) * T(0.5);
        if (policy == 0) comm.all_reduce_sum(buf.data(), n);
        else native.all_reduce_sum(buf.data(), n);
        const double tri = double(P) * (P + 1) / 2;  // Σ (p + 1)
        long bad = 0;
        for (std::size_t i = 0; i < n; ++i) bad += buf[i] != T(tri * double(i % 4096) * 0.5);
        CHECK(bad == 0);
      }
    }
    {  // broadcast from every root
      for (int root = 0; root < P; ++root) {
        std::vector<T> buf(n, T(-1));
        if (me == root)
          for (std::size_t i = 0; i < n; ++i) buf[i] = exact_value<T>(root, i);
        comm.broadcast(buf.data(), n, root);
        long bad = 0;
        for (std::size_t i = 0; i < n; ++i) bad += buf[i] != exact_value<T>(root, i);
        CHECK(bad == 0);
      }
    }
  }
  comm.barrier();
}

TEST_CASE_TEMPLATE("MpiCommunicator: all_reduce_sum is bit-identical on every rank for inexact data", T,
                   float, double) {
  MpiCommunicator ordered;
  BasicMpiCommunicator<NativeAllReduce> native;
  const int P = ordered.size(), me = ordered.rank();
  // Small (recursive doubling), large (ring / Rabenseifner), and across OrderedSum's chunk boundary.
  for (std::size_t n : {std::size_t(3), std::size_t(300001), OrderedSum::chunk_elements + 5}) {
    CAPTURE(n);
    std::vector<std::vector<T>> x(static_cast<std::size_t>(P), std::vector<T>(n));  // every rank's input, known to all
    for (int p = 0; p < P; ++p)
      for (std::size_t i = 0; i < n; ++i) x[std::size_t(p)][i] = T(1000.0 * counter_normal(std::uint64_t(p) + 11, i));
    std::vector<T> a = x[std::size_t(me)], b = x[std::size_t(me)];
    ordered.all_reduce_sum(a.data(), n);
    native.all_reduce_sum(b.data(), n);
    // OrderedSum: the independent reference is 0 + x_0 + … + x_{P−1} in T, computable on any rank.
    long bad_ordered = 0, bad_native = 0;
    for (std::size_t i = 0; i < n; ++i) {
      T ref = T(0);
      double ref_d = 0, mag = 0;
      for (int p = 0; p < P; ++p) {
        ref += x[std::size_t(p)][i];
        ref_d += double(x[std::size_t(p)][i]);
        mag += std::abs(double(x[std::size_t(p)][i]));
      }
      bad_ordered += a[i] != ref;
      // Native: any summation order; |err| ≤ P·eps·Σ|x| is ample.
      bad_native += !(std::abs(double(b[i]) - ref_d) <= 1e-30 + P * double(std::numeric_limits<T>::epsilon()) * mag);
    }
    CHECK(bad_ordered == 0);
    CHECK(bad_native == 0);
    CHECK(same_bits_as_rank0(ordered, a));
    CHECK(same_bits_as_rank0(ordered, b));
  }
}

TEST_CASE("VirtualRanks<MpiCommunicator>: V groups per process, group-major layout") {
  MpiCommunicator world;
  const int V = 3, P = world.size(), me = world.rank();
  VirtualRanks<MpiCommunicator> comm(world, V);
  REQUIRE(comm.groups() == P * V);
  REQUIRE(comm.local_groups() == V);
  REQUIRE(comm.first_group() == me * V);
  const std::size_t n = 5;
  std::vector<float> send(n * V), recv(n * std::size_t(P * V), -1.f);
  for (int v = 0; v < V; ++v)
    for (std::size_t i = 0; i < n; ++i) send[std::size_t(v) * n + i] = exact_value<float>(me * V + v, i);
  comm.all_gather(send.data(), recv.data(), n);
  long bad = 0;
  for (int g = 0; g < P * V; ++g)
    for (std::size_t i = 0; i < n; ++i) bad += recv[std::size_t(g) * n + i] != exact_value<float>(g, i);
  CHECK(bad == 0);
}

TEST_CASE("MpiCommunicator: errors carry call, host, rank, file and line") {
  MpiCommunicator comm;
  SUBCASE("bad root is rejected before any communication") {
    float x = 0;
    CHECK_THROWS_AS(comm.broadcast(&x, 1, comm.size()), InvalidArgument);
  }
  SUBCASE("a failing MPI call becomes RuntimeCallError, not an abort") {
    float x = 0;
    // A negative count is rejected locally by Open MPI's parameter check (MPI_ERR_COUNT), so every
    // rank fails the same way without communicating; MPI_ERRORS_RETURN on the duplicate makes it
    // return instead of aborting.
    std::string msg;
    try {
      HDPISSA_MPI_CHECK(MPI_Bcast(&x, -1, MPI_FLOAT, 0, MPI_Comm(comm.communicator())));
    } catch (const RuntimeCallError& e) {
      msg = e.what();
    }
    CHECK(msg.find("MPI_Bcast") != std::string::npos);
    CHECK(msg.find("rank " + std::to_string(comm.rank())) != std::string::npos);
    CHECK(msg.find("host ") != std::string::npos);
    CHECK(msg.find("test_mpi_communicator.cpp:") != std::string::npos);
  }
  comm.barrier();
}

TEST_CASE("MpiCommunicator: a collective that misses its deadline throws CommError, then drain() recovers") {
  MpiCommunicator comm;
  if (comm.size() < 2) return;  // needs a late peer
  MpiOptions fast;
  fast.timeout = std::chrono::milliseconds(200);
  MpiCommunicator impatient(comm.communicator(), fast);  // rank 0 uses the short deadline
  if (comm.rank() == 0) {
    std::string msg;
    try {
      impatient.barrier();
    } catch (const CommError& e) {
      msg = e.what();
    }
    CHECK(msg.find("barrier") != std::string::npos);
    CHECK(msg.find("timed out after 0.2 s") != std::string::npos);
    CHECK(msg.find("rank 0") != std::string::npos);
    CHECK(msg.find("host ") != std::string::npos);
    float x = 0;
    CHECK_THROWS_AS(impatient.broadcast(&x, 1, 0), CommError);  // unusable until drained
    CHECK(impatient.drain());                                    // the peers do arrive, late
    CHECK_NOTHROW(impatient.barrier());
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(1200));
    impatient.set_timeout(std::chrono::milliseconds(0));
    impatient.barrier();
    impatient.barrier();
  }
  comm.barrier();
}

TEST_CASE("timeout_from_env") {
  ::setenv("HDPISSA_TEST_TIMEOUT_S", "2.5", 1);
  CHECK(timeout_from_env("HDPISSA_TEST_TIMEOUT_S", std::chrono::milliseconds(1)) == std::chrono::milliseconds(2500));
  ::setenv("HDPISSA_TEST_TIMEOUT_S", "soon", 1);
  CHECK_THROWS_AS(timeout_from_env("HDPISSA_TEST_TIMEOUT_S", std::chrono::milliseconds(1)), InvalidArgument);
  ::unsetenv("HDPISSA_TEST_TIMEOUT_S");
  CHECK(timeout_from_env("HDPISSA_TEST_TIMEOUT_S", std::chrono::milliseconds(7)) == std::chrono::milliseconds(7));
}
