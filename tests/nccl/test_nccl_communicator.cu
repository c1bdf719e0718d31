// NcclCommunicator on device buffers (one rank per GPU; any rank count). Inputs are exactly
// representable (small integers and halves), so results compare exactly, as nccl-tests do.
// Then HD-PiSSA on the GPU: VirtualRanks<NcclCommunicator> with K = 4 groups against
// VirtualRanks<CudaSingleProcess> on the same GPU (bit for bit) and against ThreadGroup on the
// CPU backend (to fp32 tolerance: cuBLAS and Eigen sum in different orders).
#include <doctest/doctest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "hdpissa/cuda.hpp"
#include "hdpissa/comm/nccl_communicator.hpp"
#include "nccl_test_env.hpp"

using namespace hdpissa;

namespace {

template <class T>
struct DeviceVec {
  T* p = nullptr;
  std::size_t n = 0;
  explicit DeviceVec(std::size_t count) : n(count) {
    HDPISSA_CUDA_CHECK(cudaMalloc(&p, std::max<std::size_t>(n, 1) * sizeof(T)));
  }
  ~DeviceVec() { (void)cudaFree(p); }
  void put(const std::vector<T>& h) { HDPISSA_CUDA_CHECK(cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice)); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    HDPISSA_CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
  }
};

template <class T>
T exact_value(int rank, std::size_t i) {
  return T(rank * 1000) + T(i % 1000) + T(0.5);
}

}  // namespace

TEST_CASE_TEMPLATE("NcclCommunicator: collectives on exactly representable data", T, float, double) {
  auto comm = nccl_test::make_comm();
  const int P = comm.size(), me = comm.rank();
  REQUIRE(comm.groups() == P);
  for (std::size_t n : {std::size_t(1), std::size_t(37), std::size_t(1) << 20}) {
    CAPTURE(n);
    {  // all_gather, then in place
      DeviceVec<T> send(n), recv(n * std::size_t(P));
      std::vector<T> h(n);
      for (std::size_t i = 0; i < n; ++i) h[i] = exact_value<T>(me, i);
      send.put(h);
      comm.all_gather(send.p, recv.p, n);
      auto out = recv.get();
      long bad = 0;
      for (int p = 0; p < P; ++p)
        for (std::size_t i = 0; i < n; ++i) bad += out[std::size_t(p) * n + i] != exact_value<T>(p, i);
      CHECK(bad == 0);
      std::vector<T> blank(n * std::size_t(P), T(-1));
      std::copy(h.begin(), h.end(), blank.begin() + std::ptrdiff_t(std::size_t(me) * n));
      recv.put(blank);
      comm.all_gather(recv.p + std::size_t(me) * n, recv.p, n);
      out = recv.get();
      bad = 0;
      for (int p = 0; p < P; ++p)
        for (std::size_t i = 0; i < n; ++i) bad += out[std::size_t(p) * n + i] != exact_value<T>(p, i);
      CHECK(bad == 0);
    }
    {  // all_reduce_sum
      DeviceVec<T> buf(n);
      std::vector<T> h(n);
      for (std::size_t i = 0; i < n; ++i) h[i] = T(me + 1) * T(i % 4096) * T(0.5);
      buf.put(h);
      comm.all_reduce_sum(buf.p, n);
      auto out = buf.get();
      const double tri = double(P) * (P + 1) / 2;
      long bad = 0;
      for (std::size_t i = 0; i < n; ++i) bad += out[i] != T(tri * double(i % 4096) * 0.5);
      CHECK(bad == 0);
    }
    for (int root = 0; root < P; ++root) {  // broadcast
      DeviceVec<T> buf(n);
      std::vector<T> h(n, T(-1));
      if (me == root)
        for (std::size_t i = 0; i < n; ++i) h[i] = exact_value<T>(root, i);
      buf.put(h);
      comm.broadcast(buf.p, n, root);
      auto out = buf.get();
      long bad = 0;
      for (std::size_t i = 0; i < n; ++i) bad += out[i] != exact_value<T>(root, i);
      CHECK(bad == 0);
    }
  }
  CHECK_NOTHROW(comm.barrier());
  CHECK_THROWS_AS(comm.broadcast(static_cast<T*>(nullptr), 0, P), InvalidArgument);
}

TEST_CASE("NcclCommunicator: bucketed collectives in one NCCL group") {
  auto comm = nccl_test::make_comm();
  const int P = comm.size(), me = comm.rank();
  const std::size_t n1 = 1000, n2 = 333;
  DeviceVec<float> s1(n1), r1(n1 * P), s2(n2), r2(n2 * P), red(n2);
  std::vector<float> h1(n1), h2(n2);
  for (std::size_t i = 0; i < n1; ++i) h1[i] = exact_value<float>(me, i);
  for (std::size_t i = 0; i < n2; ++i) h2[i] = exact_value<float>(me + 7, i);
  s1.put(h1);
  s2.put(h2);
  red.put(std::vector<float>(n2, 1.5f));
  {
    NcclGroup group(comm);
    comm.all_gather(s1.p, r1.p, n1);
    comm.all_gather(s2.p, r2.p, n2);
    comm.all_reduce_sum(red.p, n2);
  }  // one launch; awaited here
  auto o1 = r1.get(), o2 = r2.get(), o3 = red.get();
  long bad = 0;
  for (int p = 0; p < P; ++p) {
    for (std::size_t i = 0; i < n1; ++i) bad += o1[p * n1 + i] != exact_value<float>(p, i);
    for (std::size_t i = 0; i < n2; ++i) bad += o2[p * n2 + i] != exact_value<float>(p + 7, i);
  }
  for (std::size_t i = 0; i < n2; ++i) bad += o3[i] != 1.5f * float(P);
  CHECK(bad == 0);
}

TEST_CASE("NcclCommunicator: ordered against the compute stream without host waits") {
  cudaStream_t compute = nullptr;
  HDPISSA_CUDA_CHECK(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking));
  NcclOptions opt;
  opt.compute_stream = compute;
  opt.wait_for_completion = false;
  {
    auto comm = nccl_test::make_comm(opt);
    const int P = comm.size(), me = comm.rank();
    const std::size_t n = std::size_t(1) << 22;  // 16 MiB: the H2D copy takes long enough to race
    std::vector<float> h(n);
    for (std::size_t i = 0; i < n; ++i) h[i] = exact_value<float>(me, i);
    float* pinned = nullptr;
    HDPISSA_CUDA_CHECK(cudaMallocHost(&pinned, n * P * sizeof(float)));
    std::memcpy(pinned, h.data(), n * sizeof(float));
    DeviceVec<float> send(n), recv(n * P);
    HDPISSA_CUDA_CHECK(cudaMemsetAsync(recv.p, 0, n * P * sizeof(float), compute));
    // Producer on the compute stream → collective on its own stream → consumer on the compute stream.
    HDPISSA_CUDA_CHECK(cudaMemcpyAsync(send.p, pinned, n * sizeof(float), cudaMemcpyHostToDevice, compute));
    comm.all_gather(send.p, recv.p, n);
    HDPISSA_CUDA_CHECK(cudaMemcpyAsync(pinned, recv.p, n * P * sizeof(float), cudaMemcpyDeviceToHost, compute));
    HDPISSA_CUDA_CHECK(cudaStreamSynchronize(compute));
    comm.synchronize();
    long bad = 0;
    for (int p = 0; p < P; ++p)
      for (std::size_t i = 0; i < n; ++i) bad += pinned[std::size_t(p) * n + i] != exact_value<float>(p, i);
    CHECK(bad == 0);
    HDPISSA_CUDA_CHECK(cudaFreeHost(pinned));
  }
  HDPISSA_CUDA_CHECK(cudaStreamDestroy(compute));
}

TEST_CASE("NcclCommunicator: abort makes every later call a clear CommError") {
  auto comm = nccl_test::make_comm();
  DeviceVec<float> buf(4);
  comm.abort("test abort");
  std::string msg;
  try {
    comm.all_reduce_sum(buf.p, 4);
  } catch (const CommError& e) {
    msg = e.what();
  }
  CHECK(msg.find("unusable") != std::string::npos);
  CHECK(msg.find("test abort") != std::string::npos);
  CHECK(msg.find("rank " + std::to_string(comm.rank())) != std::string::npos);
  CHECK(msg.find("device ") != std::string::npos);
}

// A peer that never arrives: rank 0 of a 2-rank communicator whose rank 1 never joins. The
// non-blocking init must give up at the deadline with a CommError (and abort), never hang.
// Run alone (-tc='*never arrives*'): it leaves NCCL's bootstrap thread to be torn down by abort.
TEST_CASE("NcclCommunicator: a peer that never arrives yields CommError at the deadline" * doctest::skip()) {
  NcclOptions opt;
  opt.device = 0;
  opt.timeout = std::chrono::milliseconds(3000);
  const auto t0 = std::chrono::steady_clock::now();
  std::string msg;
  try {
    NcclCommunicator lonely(NcclCommunicator::unique_id(), 0, 2, opt);
  } catch (const CommError& e) {
    msg = e.what();
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE("init gave up after ", s, " s: ", msg);
  CHECK(msg.find("timed out after 3 s") != std::string::npos);
  CHECK(msg.find("ncclCommInitRankConfig") != std::string::npos);
  CHECK(s < 30);
}

// ------------------------------------------------------------------ HD-PiSSA on the GPU

namespace {

struct Problem {
  std::vector<std::pair<index_t, index_t>> shapes{{48, 32}, {32, 48}, {40, 40}};  // (out, in)
  index_t r = 4;
  index_t tokens = 16;
  int steps = 4;
  double lr = 1e-3;
};

std::vector<float> det_matrix(std::uint64_t seed, index_t rows, index_t cols, double scale) {
  std::vector<float> m(std::size_t(rows * cols));
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = float(scale * counter_normal(seed, i));
  return m;
}

/// The HD-PiSSA training of tests/mpi/test_mpi_hdpissa.cpp, generic over the backend.
template <TensorBackend B, Communicator C>
std::vector<std::vector<float>> train(B& b, C& comm, const Problem& pb, std::vector<std::vector<float>>* W0 = nullptr) {
  using CV = ConstMatrixView<float>;
  const int K = comm.groups();
  std::vector<typename B::matrix_type> W;
  std::vector<LayerRef<B>> refs;
  for (std::size_t l = 0; l < pb.shapes.size(); ++l) {
    auto [out, in] = pb.shapes[l];
    W.push_back(b.make_matrix(out, in));
    auto h = det_matrix(1000 + l, out, in, 1.0 / std::sqrt(double(in)));
    b.upload(h.data(), W.back().view());
    if (W0) W0->push_back(h);
  }
  for (std::size_t l = 0; l < W.size(); ++l) refs.push_back({"layer" + std::to_string(l), CV(W[l].view())});
  auto sets = init_adapters_distributed(b, comm, OrthogonalAdapterInit<>(K, pb.r), refs, K, pb.r);
  DirectWeightUpdate<B, Adam, C> dwu(b, comm);
  for (std::size_t l = 0; l < W.size(); ++l) dwu.add_layer(refs[l].name, W[l].view(), sets[l]);
  MutedLinear<B> lin(b);
  for (int step = 0; step < pb.steps; ++step) {
    dwu.zero_grad();
    for (std::size_t l = 0; l < W.size(); ++l) {
      auto [out, in] = pb.shapes[l];
      auto X = b.make_matrix(pb.tokens, in), T = b.make_matrix(pb.tokens, out), Y = b.make_matrix(pb.tokens, out);
      for (int lg = 0; lg < comm.local_groups(); ++lg) {
        const int g = comm.first_group() + lg;
        const std::uint64_t seed = 7919u * std::uint64_t(g) + 104729u * l + 31u * std::uint64_t(step);
        auto hx = det_matrix(seed, pb.tokens, in, 1.0);
        auto ht = det_matrix(seed + 1, pb.tokens, out, 1.0);
        b.upload(hx.data(), X.view());
        b.upload(ht.data(), T.view());
        lin.forward(CV(W[l].view()), dwu.A(l, g), dwu.Bf(l, g), CV(X.view()), Y.view());
        b.axpy(-1.f, CV(T.view()), Y.view());
        b.scale(Y.view(), 1.f / float(pb.tokens));
        lin.backward(CV(W[l].view()), dwu.A(l, g), dwu.Bf(l, g), CV(X.view()), CV(Y.view()), MatrixView<float>{},
                     dwu.grad_A(l, lg), dwu.grad_B(l, lg), false);
      }
    }
    dwu.step(pb.lr);
    dwu.verify_replicas();
  }
  std::vector<std::vector<float>> result;
  for (auto& w : W) {
    std::vector<float> h(std::size_t(w.view().size()));
    b.download(CV(w.view()), h.data());
    result.push_back(std::move(h));
  }
  b.synchronize();
  return result;
}

}  // namespace

TEST_CASE("HD-PiSSA on the GPU: VirtualRanks<NcclCommunicator> K = 4 equals CudaSingleProcess and the CPU") {
  auto probe = nccl_test::make_comm();
  const int P = probe.size();
  if (4 % P != 0) return;
  Problem pb;
  std::vector<std::vector<float>> gpu_nccl, gpu_single, cpu, W0;
  {
    CudaBackend<float> b;
    NcclOptions opt;
    opt.compute_stream = b.stream();
    VirtualRanks<NcclCommunicator> comm(nccl_test::make_comm(opt), 4 / P);
    REQUIRE(comm.groups() == 4);
    const auto t0 = std::chrono::steady_clock::now();
    gpu_nccl = train(b, comm, pb, &W0);
    MESSAGE("GPU, NCCL (", P, " rank(s) x ", 4 / P, " groups): ",
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), " s");
  }
  {
    CudaBackend<float> b;
    VirtualRanks<CudaSingleProcess> comm(CudaSingleProcess(b.stream()), 4);
    gpu_single = train(b, comm, pb);
  }
  {
    std::vector<std::vector<std::vector<float>>> per(4);
    ThreadGroup::run(4, [&](ThreadGroup& tg) {
      EigenBackend<float> b;
      per[std::size_t(tg.rank())] = train(b, tg, pb);
    });
    cpu = per[0];
  }
  // Same GPU, same kernels, same all-gathered layout: bit for bit (on one rank; several ranks run
  // the SVDs on different GPUs, which are bit-identical only when the GPUs are the same model).
  bool same = true;
  for (std::size_t l = 0; l < gpu_nccl.size(); ++l)
    same = same && std::memcmp(gpu_nccl[l].data(), gpu_single[l].data(), gpu_nccl[l].size() * sizeof(float)) == 0;
  if (P == 1) CHECK(same);
  else MESSAGE("NCCL vs CudaSingleProcess bit-identical: ", same);
  // GPU vs CPU: the updates ΔW = W − W0 agree to fp32 tolerance (normalised squared error).
  for (std::size_t l = 0; l < cpu.size(); ++l) {
    double num = 0, den = 0;
    for (std::size_t i = 0; i < cpu[l].size(); ++i) {
      const double dg = double(gpu_nccl[l][i]) - W0[l][i], dc = double(cpu[l][i]) - W0[l][i];
      num += (dg - dc) * (dg - dc);
      den += dc * dc;
    }
    CAPTURE(l);
    CHECK(den > 0);
    CHECK(num / den <= 1e-6);
  }
}
