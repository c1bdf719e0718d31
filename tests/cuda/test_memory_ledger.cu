// DeviceBuffer's charges to the memory ledger (core/memory_ledger.hpp): reserve (first, no-op,
// growth re-tagged to the part current at the growth), move construction and assignment, reset and
// destruction, exactly; CudaBackend::release_solver_scratch gives the solvers' scratch back; a
// backend sharing a workspace allocates no cuBLASLt workspace of its own when its GEMMs are tuned.
#include <cstdint>
#include <string>
#include <utility>

#include "cuda_test_util.hpp"
#include "hdpissa/backend/cuda/cuda_backend.hpp"

using namespace hdpissa;

namespace {
std::int64_t held(const std::string& part) {
  for (const auto& p : memory::Ledger::instance().parts())
    if (p.name == part) return p.bytes;
  return 0;
}
}  // namespace

TEST_CASE("DeviceBuffer charges the ledger: reserve, growth, moves, reset, destruction") {
  const std::int64_t a0 = held("ledger.a"), b0 = held("ledger.b");
  {
    DeviceBuffer<float> x;
    {
      memory::PartScope s("ledger.a");
      x.reserve(100);
      x.reserve(50);  // no growth: nothing changes
    }
    CHECK(held("ledger.a") - a0 == 400);
    CHECK(std::string(x.part()) == "ledger.a");
    {
      memory::PartScope s(std::string("ledger.") + "b");  // any string: the name is interned
      x.reserve(200);                                      // growth: freed from a, charged to b
    }
    CHECK(held("ledger.a") == a0);
    CHECK(held("ledger.b") - b0 == 800);
    DeviceBuffer<float> y(std::move(x));  // the charge moves with the memory
    CHECK(held("ledger.b") - b0 == 800);
    CHECK(x.part() == nullptr);
    DeviceBuffer<float> z;
    {
      memory::PartScope s("ledger.a");
      z.reserve(10);
    }
    z = std::move(y);  // z's own 40 bytes (a) are freed, y's 800 (b) taken over
    CHECK(held("ledger.a") == a0);
    CHECK(held("ledger.b") - b0 == 800);
    z.reset();
    CHECK(held("ledger.b") == b0);
    CHECK(z.size() == 0);
    memory::PartScope s("ledger.a");
    z.reserve(3);
    CHECK(held("ledger.a") - a0 == 12);
  }  // destruction gives it back
  CHECK(held("ledger.a") == a0);
  CHECK(held("ledger.b") == b0);
}

TEST_CASE("CudaBackend: release_solver_scratch frees the SVD scratch; a shared workspace replaces the tuner's") {
  CudaBackend<float> b(CudaBackendOptions{});
  const std::int64_t s0 = held("backend.solver-scratch");
  auto A = b.make_matrix(300, 200);
  b.fill_normal(A.view(), 3);
  auto U = b.make_matrix(300, 200), S = b.make_matrix(1, 200), Vt = b.make_matrix(200, 200);
  b.thin_svd(A, U.view(), S.view(), Vt.view());
  b.synchronize();
  CHECK(held("backend.solver-scratch") > s0);
  b.release_solver_scratch();
  CHECK(held("backend.solver-scratch") == s0);
  b.thin_svd(A, U.view(), S.view(), Vt.view());  // works again after the release
  b.synchronize();
  b.release_solver_scratch();
  CHECK(held("backend.solver-scratch") == s0);

  DeviceBuffer<char> ws(std::size_t(32) << 20);
  CudaBackend<float> shared(CudaBackendOptions{});
  shared.share_workspace(ws.get(), ws.size());
  const std::int64_t lt0 = held("cublaslt.workspace");
  auto X = shared.make_matrix(1024, 1024), Y = shared.make_matrix(1024, 1024), Z = shared.make_matrix(1024, 1024);
  shared.fill_normal(X.view(), 1);
  shared.fill_normal(Y.view(), 2);
  shared.gemm(Op::N, Op::N, 1.0f, X, Y, 0.0f, Z.view());  // 2·1024³ ≥ the tuning threshold: tuned here
  shared.synchronize();
  CHECK(held("cublaslt.workspace") == lt0);  // no workspace of its own
  CHECK(shared.all_finite(Z));
}
