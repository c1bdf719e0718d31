// Each concept has a minimal mock that satisfies it and a near-miss that does not.
#include "test_util.hpp"

namespace {
using namespace hdpissa;

struct MockBackend {
  using scalar_type = float;
  using compute_type = float;
  using memory_space = host_memory;
  struct matrix_type {
    MatrixView<float> view();
    index_t rows() const;
    index_t cols() const;
  };
  matrix_type make_matrix(index_t, index_t);
  void gemm(Op, Op, float, ConstMatrixView<float>, ConstMatrixView<float>, float, MatrixView<float>);
  void copy(ConstMatrixView<float>, MatrixView<float>);
  void fill(MatrixView<float>, float);
  void scale(MatrixView<float>, float);
  void axpy(float, ConstMatrixView<float>, MatrixView<float>);
  void scale_rows(MatrixView<float>, ConstMatrixView<float>);
  void scale_cols(MatrixView<float>, ConstMatrixView<float>);
  void sqrt(MatrixView<float>);
  void upload(const float*, MatrixView<float>);
  void download(ConstMatrixView<float>, float*);
  bool all_finite(ConstMatrixView<float>);
  double sum_squares(ConstMatrixView<float>);
  double checksum(ConstMatrixView<float>);
  template <class F, class... Ts>
  void elementwise(const F&, MatrixView<Ts>...);
  void thin_svd(ConstMatrixView<float>, MatrixView<float>, MatrixView<float>, MatrixView<float>);
  void orthonormalize(MatrixView<float>);
  void synchronize();
};
/// Same as MockBackend but without an SVD: not a backend.
struct BackendWithoutSvd : MockBackend {
  void thin_svd() = delete;
};
/// Same as MockBackend but with the old optimizer-specific hooks instead of the generic map: not
/// a backend (TensorBackend names no algorithm).
struct BackendWithOptimizerHooks : MockBackend {
  void elementwise() = delete;
  void adam_delta(const AdamArgs&, ConstMatrixView<float>, ConstMatrixView<float>, MatrixView<float>,
                  MatrixView<float>, MatrixView<float>);
};
struct BackendWithoutMemorySpace {
  using scalar_type = float;
  using compute_type = float;
};

struct MockComm {
  using memory_space = host_memory;
  int rank() const;
  int size() const;
  int groups() const;
  int local_groups() const;
  int first_group() const;
  template <class T>
  void all_gather(const T*, T*, std::size_t);
  template <class T>
  void all_reduce_sum(T*, std::size_t);
  template <class T>
  void broadcast(T*, std::size_t, int);
  void barrier();
};
/// Float-only collectives: not a communicator (checksums travel in double).
struct FloatOnlyComm {
  using memory_space = host_memory;
  int rank() const;
  int size() const;
  int groups() const;
  int local_groups() const;
  int first_group() const;
  void all_gather(const float*, float*, std::size_t);
  void all_reduce_sum(float*, std::size_t);
  void broadcast(float*, std::size_t, int);
  void barrier();
};

struct MockOptimizer {
  template <class B>
  struct state {};
  template <class B>
  state<B> make_state(B&, index_t, index_t) const;
  template <class B>
  void compute_delta(B&, state<B>&, ConstMatrixView<typename B::scalar_type>,
                     ConstMatrixView<typename B::scalar_type>, MatrixView<typename B::scalar_type>, double) const;
  std::string name() const;
};
/// An optimizer that updates in place instead of producing a delta: not an Optimizer.
struct InPlaceOptimizer {
  template <class B>
  struct state {};
  template <class B>
  state<B> make_state(B&, index_t, index_t) const;
  template <class B>
  void step(B&, state<B>&, MatrixView<typename B::scalar_type>, double) const;
  std::string name() const;
};

static_assert(TensorBackend<MockBackend>);
static_assert(!TensorBackend<BackendWithoutSvd>);
static_assert(!TensorBackend<BackendWithOptimizerHooks>);
static_assert(!TensorBackend<BackendWithoutMemorySpace>);
static_assert(TensorBackend<EigenBackend<float>> && TensorBackend<EigenBackend<double>>);

static_assert(Communicator<MockComm>);
static_assert(!Communicator<FloatOnlyComm>);
static_assert(Communicator<SingleProcess> && Communicator<ThreadGroup>);
static_assert(Communicator<VirtualRanks<SingleProcess>> && Communicator<VirtualRanks<ThreadGroup>>);

static_assert(Optimizer<MockOptimizer, MockBackend>);
static_assert(!Optimizer<InPlaceOptimizer, MockBackend>);
static_assert(Optimizer<Adam, EigenBackend<float>> && Optimizer<Sgd, EigenBackend<double>>);

static_assert(same_memory_space_v<EigenBackend<float>, ThreadGroup>);

// AdamFamily: what a multi-tensor Adam kernel needs from an optimizer.
static_assert(AdamFamily<Adam, EigenBackend<float>> && AdamFamily<Adam, MockBackend>);
static_assert(!AdamFamily<Sgd, EigenBackend<float>> && !AdamFamily<MockOptimizer, MockBackend>);

// DwuKernelSet / FusedDwuKernels. The primary DwuKernels (generic loops) is a kernel set without
// fused paths; a mock with every fused member satisfies FusedDwuKernels; one whose adam_step has
// a signature typo (returns void) does not, so a specialisation like it fails its static_assert
// instead of silently falling back to the generic path.
struct MockAdamBatch {};
struct MockFusedKernels {
  using adam_batch_type = MockAdamBatch;
  explicit MockFusedKernels(MockBackend&);
  void unpack(ConstMatrixView<float>, DwuPackedDeltas<const float>, MatrixView<float>, MatrixView<float>);
  bool enabled() const;
  bool all_finite_batch(const std::vector<ConstMatrixView<float>>&);
  MockAdamBatch make_adam_batch(const std::vector<AdamTensor<float>>&);
  bool adam_step(const AdamArgs&, const MockAdamBatch&);
  bool unpack_fused(ConstMatrixView<float>, DwuPackedDeltas<const float>, MatrixView<float>, MatrixView<float>);
  bool apply_fused(ConstMatrixView<float>, DwuPackedDeltas<const float>, float, MatrixView<float>, MatrixView<float>);
};
struct FusedKernelsWithTypo : MockFusedKernels {
  using MockFusedKernels::MockFusedKernels;
  void adam_step(const AdamArgs&, const MockAdamBatch&);
};
static_assert(DwuKernelSet<DwuKernels<MockBackend>, MockBackend>);
static_assert(DwuKernelSet<DwuKernels<EigenBackend<float>>, EigenBackend<float>>);
static_assert(!FusedDwuKernels<DwuKernels<EigenBackend<float>>, EigenBackend<float>>);
static_assert(FusedDwuKernels<MockFusedKernels, MockBackend>);
static_assert(!FusedDwuKernels<FusedKernelsWithTypo, MockBackend>);
static_assert(!DirectWeightUpdate<EigenBackend<float>, Adam, SingleProcess>::kFusedKernels);

// CholeskyOrthonormalizable: what the CholeskyQr2 policy needs.
static_assert(CholeskyOrthonormalizable<EigenBackend<float>> && CholeskyOrthonormalizable<EigenBackend<double>>);
static_assert(!CholeskyOrthonormalizable<MockBackend>);
}  // namespace

TEST_CASE("concepts are checked at compile time") { CHECK(true); }
