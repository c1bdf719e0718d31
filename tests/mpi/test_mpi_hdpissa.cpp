// HD-PiSSA across MPI processes. The same training run — OrthogonalAdapterInit through
// init_adapters_distributed, MutedLinear gradients from per-group data, DirectWeightUpdate with
// Adam — is executed with
//   (a) MpiCommunicator, one group per process,               K = P
//   (b) VirtualRanks<MpiCommunicator>, 4/P groups per process  K = 4   (P ∈ {1, 2, 4})
//   (c) VirtualRanks<MpiCommunicator> on 2-process halves of the world, 2 groups each, K = 4 (P = 4)
// and compared bit for bit with the in-process communicators every rank can run alone:
// ThreadGroup (K threads) and VirtualRanks<SingleProcess> (K groups time-multiplexed).
// Bit-exactness is expected, not merely hoped for: every group's gradient and optimizer step is
// computed by the same code on the same bits whichever worker hosts it, the all-gathered buffer
// is laid out group-major in every configuration, and every worker then applies identical GEMMs
// to identical inputs. Initialisation is the one place where workers could disagree (SVDs are not
// reproducible across processes in general), which is why init_adapters_distributed computes each
// layer once and broadcasts it — also checked here.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "hdpissa/mpi.hpp"
#include "../common/hdpissa_problem.hpp"

using namespace hdpissa;
using Backend = EigenBackend<float>;
using CV = ConstMatrixView<float>;

namespace {

using testing::det_matrix;
using testing::initial_weights;
using testing::Problem;
using testing::train;

/// ThreadGroup with K threads in this process; every thread's W must agree; returns thread 0's.
std::vector<std::vector<float>> train_threads(int K, const Problem& pb) {
  std::vector<std::vector<std::vector<float>>> per(static_cast<std::size_t>(K));
  ThreadGroup::run(K, [&](ThreadGroup& tg) { per[std::size_t(tg.rank())] = train(tg, pb); });
  for (int k = 1; k < K; ++k) REQUIRE(per[std::size_t(k)] == per[0]);
  return per[0];
}

std::vector<std::vector<float>> train_virtual(int K, const Problem& pb) {
  VirtualRanks<SingleProcess> vr(SingleProcess{}, K);
  return train(vr, pb);
}

bool bit_equal(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t l = 0; l < a.size(); ++l)
    if (a[l].size() != b[l].size() || std::memcmp(a[l].data(), b[l].data(), a[l].size() * sizeof(float)) != 0)
      return false;
  return true;
}

double max_abs_diff(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  double m = 0;
  for (std::size_t l = 0; l < a.size(); ++l)
    for (std::size_t i = 0; i < a[l].size(); ++i) m = std::max(m, std::abs(double(a[l][i]) - double(b[l][i])));
  return m;
}

/// The OR over ranks of `bad` (each rank's verdict, so all ranks fail together).
bool any_rank(MpiCommunicator& comm, bool bad) {
  double n = bad ? 1 : 0;
  comm.all_reduce_sum(&n, 1);
  return n > 0;
}

}  // namespace

TEST_CASE("init_adapters_distributed over MPI: bit-identical, valid orthogonal factors on every rank") {
  MpiCommunicator comm;
  Problem pb;
  Backend b;
  const int K = 4;
  auto W = initial_weights(b, pb);
  std::vector<LayerRef<Backend>> refs;
  for (std::size_t l = 0; l < W.size(); ++l) refs.push_back({"layer" + std::to_string(l), CV(W[l].view())});
  auto sets = init_adapters_distributed(b, comm, OrthogonalAdapterInit<>(K, pb.r), refs, K, pb.r);
  REQUIRE(sets.size() == W.size());
  for (std::size_t l = 0; l < sets.size(); ++l) {
    CAPTURE(l);
    // Bitwise agreement with the owner's factors (layer l was computed on rank l mod P).
    for (auto* m : {&sets[l].A, &sets[l].B}) {
      std::vector<float> mine(m->data(), m->data() + m->view().size()), root = mine;
      comm.broadcast(root.data(), root.size(), 0);
      CHECK_FALSE(any_rank(comm, std::memcmp(mine.data(), root.data(), mine.size() * sizeof(float)) != 0));
    }
    // Invariants of A = diag(√S) Vᵀ, B = U diag(√S): A Aᵀ = Bᵀ B = diag(S_top), and
    // ‖W − B A‖²_F = ‖W‖²_F − Σ S_top² (Eckart–Young). Checked in double with plain loops.
    const auto& A = sets[l].A;
    const auto& Bm = sets[l].B;
    const index_t kr = A.rows(), in = A.cols(), out = Bm.rows();
    double offdiag = 0, diagdiff = 0, s2 = 0, maxs = 0;
    for (index_t i = 0; i < kr; ++i)
      for (index_t j = 0; j < kr; ++j) {
        double aa = 0, bb = 0;
        for (index_t c = 0; c < in; ++c) aa += double(A.view()(i, c)) * double(A.view()(j, c));
        for (index_t c = 0; c < out; ++c) bb += double(Bm.view()(c, i)) * double(Bm.view()(c, j));
        if (i != j) offdiag = std::max({offdiag, std::abs(aa), std::abs(bb)});
        else {
          diagdiff = std::max(diagdiff, std::abs(aa - bb));
          s2 += aa * aa;
          maxs = std::max(maxs, aa);
        }
      }
    double w2 = 0, res2 = 0;
    for (index_t i = 0; i < out; ++i)
      for (index_t j = 0; j < in; ++j) {
        double ba = 0;
        for (index_t k = 0; k < kr; ++k) ba += double(Bm.view()(i, k)) * double(A.view()(k, j));
        const double w = double(W[l].view()(i, j));
        w2 += w * w;
        res2 += (w - ba) * (w - ba);
      }
    CHECK(offdiag <= 1e-5 * maxs);
    CHECK(diagdiff <= 1e-5 * maxs);
    CHECK(std::abs(res2 - (w2 - s2)) <= 1e-4 * w2);
  }
}

TEST_CASE("HD-PiSSA over MPI processes equals ThreadGroup and VirtualRanks<SingleProcess>, bit for bit") {
  MpiCommunicator world;
  const int P = world.size();
  Problem pb;

  SUBCASE("MpiCommunicator, K = P groups") {
    auto mpi = train(world, pb);
    auto threads = train_threads(P, pb);
    auto virt = train_virtual(P, pb);
    CHECK(bit_equal(threads, virt));
    const bool same = bit_equal(mpi, threads);
    if (!same) MESSAGE("max |W_mpi − W_threads| = ", max_abs_diff(mpi, threads));
    CHECK_FALSE(any_rank(world, !same));
    // And training did something: W moved away from its initial value.
    Backend b;
    auto W0 = initial_weights(b, pb);
    CHECK(std::memcmp(W0[0].data(), mpi[0].data(), mpi[0].size() * sizeof(float)) != 0);
  }
  SUBCASE("VirtualRanks<MpiCommunicator>, K = 4 on P processes") {
    if (4 % P != 0) return;
    VirtualRanks<MpiCommunicator> comm(world, 4 / P);
    REQUIRE(comm.groups() == 4);
    auto mpi = train(comm, pb);
    auto threads = train_threads(4, pb);
    auto virt = train_virtual(4, pb);
    CHECK(bit_equal(threads, virt));
    const bool same = bit_equal(mpi, threads);
    if (!same) MESSAGE("max |W_mpi − W_threads| = ", max_abs_diff(mpi, threads));
    CHECK_FALSE(any_rank(world, !same));
  }
  SUBCASE("2 processes × 2 groups (world split in halves), K = 4") {
    if (P % 2 != 0) return;
    // Ranks {0,1}, {2,3}, …: each pair runs its own K = 4 job.
    boost::mpi::communicator pair = world.communicator().split(world.rank() / 2, world.rank());
    VirtualRanks<MpiCommunicator> comm(MpiCommunicator(pair), 2);
    REQUIRE(comm.size() == 2);
    REQUIRE(comm.groups() == 4);
    auto mpi = train(comm, pb);
    auto threads = train_threads(4, pb);
    const bool same = bit_equal(mpi, threads);
    if (!same) MESSAGE("max |W_mpi − W_threads| = ", max_abs_diff(mpi, threads));
    CHECK_FALSE(any_rank(world, !same));
  }
}

TEST_CASE("verify_replicas over MPI: a perturbed W on one rank raises CommError on every rank") {
  MpiCommunicator comm;
  Problem pb;
  pb.steps = 2;
  Backend b;
  const int K = comm.groups();
  auto W = initial_weights(b, pb);
  std::vector<LayerRef<Backend>> refs;
  for (std::size_t l = 0; l < W.size(); ++l) refs.push_back({"layer" + std::to_string(l), CV(W[l].view())});
  auto sets = init_adapters_distributed(b, comm, OrthogonalAdapterInit<>(K, pb.r), refs, K, pb.r);
  DirectWeightUpdate<Backend, Adam, MpiCommunicator> dwu(b, comm);
  for (std::size_t l = 0; l < W.size(); ++l) dwu.add_layer(refs[l].name, W[l].view(), sets[l]);
  for (int step = 0; step < pb.steps; ++step) {
    dwu.zero_grad();
    for (std::size_t l = 0; l < W.size(); ++l) {  // any gradient will do: the same on every rank
      auto h = det_matrix(50 + l + std::uint64_t(comm.rank()), pb.r, pb.shapes[l].second, 0.1);
      b.upload(h.data(), dwu.grad_A(l, 0));
    }
    dwu.step(pb.lr);
  }
  CHECK_NOTHROW(dwu.verify_replicas());  // healthy replicas pass

  const int victim = comm.size() - 1;
  if (comm.rank() == victim) W[3].view()(1, 2) = std::nextafter(W[3].view()(1, 2), 1e30f);  // one ulp
  std::string msg;
  try {
    dwu.verify_replicas();
  } catch (const CommError& e) {
    msg = e.what();
  }
  if (comm.size() == 1) {
    CHECK(msg.empty());  // one worker cannot diverge from itself
    return;
  }
  CHECK(msg.find("W diverged across workers") != std::string::npos);
  if (comm.rank() == victim) CHECK(msg.find("layer 'layer3' on worker " + std::to_string(victim)) != std::string::npos);
  else CHECK(msg.find("1 worker(s) differ from worker 0") != std::string::npos);
}
