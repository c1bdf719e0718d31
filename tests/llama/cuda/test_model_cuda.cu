// CudaLlama<T> (examples/llama/include/llama/cuda/model_cuda.cuh) against the CPU model (model.hpp,
// an independent implementation already checked against PyTorch): loss, full logits, and the
// weight gradient gW = dYᵀX of every target linear (which checks both the linear's input X and the
// gradient dY reaching its output), on the real stories260K checkpoint and on a tiny random model with
// untied embeddings and llama3 RoPE scaling. Padded batches of unequal lengths with masked prompt
// labels. Plus: forward_loss = forward_backward's loss, loss_scale scales every gradient exactly,
// the hook call order of the contract, and bad-input messages.
//
// One translation unit with its own main: without a CUDA device it exits 77 (CTest SKIP_RETURN_CODE).

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <unistd.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "hdpissa/cuda.hpp"
#include "llama/checkpoint.hpp"
#include "llama/cuda/adapter_grads.cuh"
#include "llama/cuda/cuda_device.cuh"
#include "llama/cuda/fp8_linears.cuh"
#include "llama/cuda/model_cuda.cuh"
#include "llama/model.hpp"

using namespace hdpissa::llama;
using hdpissa::llama::gpu::CudaHooks;
using hdpissa::llama::gpu::CudaLlama;
using bf16 = __nv_bfloat16;
namespace fs = std::filesystem;

namespace {

fs::path data_dir() {
  if (const char* env = std::getenv("HDPISSA_DATA"); env && *env) return env;
  return HDPISSA_LLAMA_TEST_DATA;
}
fs::path stories_dir() { return data_dir() / "stories260K-hf"; }
bool have_stories() { return fs::exists(stories_dir() / "model.safetensors"); }

/// GPU hooks for the comparison: the plain frozen linear (the base class) plus gW += dYᵀX in fp32 for
/// every target linear, and a log of the call order.
template <class T>
class RecordingHooks : public CudaHooks<T> {
 public:
  RecordingHooks(hdpissa::CudaBackend<T>& b, const ModelConfig& c) : CudaHooks<T>(b), cfg_(c) {
    for (int l = 0; l < c.n_layers; ++l)
      for (int m = 0; m < kModulesPerLayer; ++m) {
        const auto [r, cc] = shape(static_cast<Module>(m));
        grads_.emplace_back(static_cast<std::size_t>(r * cc));
        HDPISSA_CUDA_CHECK(cudaMemset(grads_.back().get(), 0, sizeof(float) * r * cc));
      }
  }
  void reserve(hdpissa::index_t max_tokens) override { reserved = max_tokens; }
  void forward(LinearId id, hdpissa::ConstMatrixView<T> W, hdpissa::ConstMatrixView<T> X,
               hdpissa::MatrixView<T> Y) override {
    log.push_back(id.index());
    CudaHooks<T>::forward(id, W, X, Y);
  }
  void backward(LinearId id, hdpissa::ConstMatrixView<T> W, hdpissa::ConstMatrixView<T> X,
                hdpissa::ConstMatrixView<T> dY, hdpissa::MatrixView<T> dX) override {
    log.push_back(-1 - id.index());
    CudaHooks<T>::backward(id, W, X, dY, dX);
    // gW (out, in) += dYᵀ (out, tok) · X (tok, in), fp32 accumulator
    const cudaDataType_t t = hdpissa::llama::gpu::cuda_data_type<T>();
    hdpissa::llama::gpu::gemm_rowmajor(this->backend().cublas(), CUBLAS_OP_T, CUBLAS_OP_N, dY.cols, X.cols, X.rows, 1.0f,
                                       dY.data, t, dY.ld, X.data, t, X.ld, 1.0f, grads_[id.index()].get(), CUDA_R_32F,
                                       X.cols);
  }
  /// gW of every linear, indexed by LinearId::index().
  std::vector<Matrix> download() const {
    HDPISSA_CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<Matrix> out;
    for (int i = 0; i < static_cast<int>(grads_.size()); ++i) {
      const auto [r, c] = shape(static_cast<Module>(i % kModulesPerLayer));
      Matrix m(r, c);
      HDPISSA_CUDA_CHECK(cudaMemcpy(m.data(), grads_[i].get(), sizeof(float) * r * c, cudaMemcpyDeviceToHost));
      out.push_back(std::move(m));
    }
    return out;
  }
  std::vector<int> log;  ///< forward: index, backward: −1 − index
  hdpissa::index_t reserved = -1;

 private:
  std::pair<int, int> shape(Module m) const {
    switch (m) {
      case Module::q: return {cfg_.q_dim(), cfg_.dim};
      case Module::k:
      case Module::v: return {cfg_.kv_dim(), cfg_.dim};
      case Module::o: return {cfg_.dim, cfg_.q_dim()};
      case Module::gate:
      case Module::up: return {cfg_.hidden_dim, cfg_.dim};
      case Module::down: return {cfg_.dim, cfg_.hidden_dim};
    }
    return {0, 0};
  }
  ModelConfig cfg_;
  std::vector<hdpissa::DeviceBuffer<float>> grads_;
};

/// Right-padded batch with random tokens; row 1 has its first `masked` labels set to -100.
Batch make_batch(int vocab, int seq_len, std::vector<int> lengths, int masked, unsigned seed) {
  Batch b;
  b.batch_size = static_cast<int>(lengths.size());
  b.seq_len = seq_len;
  b.lengths = lengths;
  std::mt19937 rng(seed);
  for (int r = 0; r < b.batch_size; ++r) {
    for (int t = 0; t < seq_len; ++t) {
      const bool pad = t >= lengths[r];
      const int id = pad ? 0 : static_cast<int>(rng() % static_cast<unsigned>(vocab));
      b.input_ids.push_back(id);
      b.labels.push_back(pad || (r == 1 && t < masked) ? kIgnoreIndex : id);
    }
    b.example_ids.push_back(r);
  }
  return b;
}

/// CPU reference: loss, full logits (B·T, vocab) and gW of every linear (FullFineTuneHooks).
struct CpuRef {
  LossResult loss;
  Matrix logits;
  std::vector<Matrix> grads;
};
CpuRef cpu_reference(const ModelWeights& w, const Batch& b) {
  CpuRef r;
  ModelWeights g = ModelWeights::zeros_like(w);
  FullFineTuneHooks hooks(g);
  Activations acts;
  r.loss = forward(w, b, hooks, acts);
  backward(w, acts, hooks, nullptr, 1.0f);
  std::vector<std::int64_t> rows(static_cast<std::size_t>(b.batch_size) * b.seq_len);
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<std::int64_t>(i);
  r.logits = logits_at(w, acts, rows);
  for (int l = 0; l < w.config.n_layers; ++l)
    for (int m = 0; m < kModulesPerLayer; ++m) r.grads.push_back(g.linear({l, static_cast<Module>(m)}));
  return r;
}

/// ‖a − b‖_F / ‖b‖_F.
double rel_err(const float* a, const float* b, std::size_t n) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

/// Tolerances of one comparison.
struct Tol {
  double loss;    ///< relative error of the mean loss
  double logits;  ///< max |Δlogit| / max |logit|
  double grad;    ///< relative Frobenius error of each gW
  double grad_qk; ///< the same for q_proj and k_proj (their dY comes through the softmax backward)
};

/// GPU (T) vs CPU on `w_ref` (the CPU weights; for bf16 the target linears rounded to bf16 first).
template <class T>
void compare_with_cpu(const ModelWeights& w_gpu, const ModelWeights& w_ref, const std::vector<Batch>& batches,
                      int max_batch, int max_seq, const Tol& tol, const std::string& tag,
                      hdpissa::llama::gpu::Attention att = hdpissa::llama::gpu::Attention::Gemm) {
  CudaLlama<T> model(w_gpu, max_batch, max_seq, nullptr, /*loss_chunk_rows=*/16, att);  // several loss chunks
  hdpissa::CudaBackend<T> be(model.stream(), {});
  CHECK(model.flash_attention() == (att == hdpissa::llama::gpu::Attention::Flash));
  for (std::size_t bi = 0; bi < batches.size(); ++bi) {
    const Batch& b = batches[bi];
    const CpuRef ref = cpu_reference(w_ref, b);
    RecordingHooks<T> hooks(be, w_gpu.config);
    const LossResult loss = model.forward_backward(b, hooks, 1.0f);
    CHECK(hooks.reserved == static_cast<hdpissa::index_t>(max_batch) * max_seq);
    CHECK(loss.n_tokens == ref.loss.n_tokens);
    CHECK(loss.n_tokens == b.num_target_tokens());
    const double loss_err = std::abs(loss.mean() - ref.loss.mean()) / std::abs(ref.loss.mean());
    CHECK(loss_err <= tol.loss);
    const auto grads = hooks.download();
    double worst = 0;
    std::string worst_name;
    for (std::size_t i = 0; i < grads.size(); ++i) {
      const double e = rel_err(grads[i].data(), ref.grads[i].data(), static_cast<std::size_t>(grads[i].size()));
      const LinearId id{static_cast<int>(i) / kModulesPerLayer, static_cast<Module>(i % kModulesPerLayer)};
      INFO(tag << " batch " << bi << " " << id.hf_name() << " gW relative error " << e);
      CHECK(e <= (id.module == Module::q || id.module == Module::k ? tol.grad_qk : tol.grad));
      if (!(e <= worst)) { worst = e; worst_name = id.hf_name(); }
    }
    std::vector<float> logits;
    RecordingHooks<T> plain(be, w_gpu.config);
    model.forward_logits(b, plain, logits);
    REQUIRE(logits.size() == static_cast<std::size_t>(ref.logits.size()));
    double max_ref = 0, max_diff = 0;
    for (std::size_t i = 0; i < logits.size(); ++i) {
      max_ref = std::max(max_ref, static_cast<double>(std::abs(ref.logits.data()[i])));
      max_diff = std::max(max_diff, static_cast<double>(std::abs(logits[i] - ref.logits.data()[i])));
    }
    CHECK(max_diff / max_ref <= tol.logits);
    MESSAGE(tag << " batch " << bi << " (" << b.batch_size << "x" << b.seq_len << ", " << loss.n_tokens
                << " targets): loss " << loss.mean() << " vs CPU " << ref.loss.mean() << " (rel " << loss_err
                << "); logits max|Δ|/max|z| " << max_diff / max_ref << "; worst gW rel error " << worst << " ("
                << worst_name << ")");
  }
}

ModelWeights rounded_to_bf16(ModelWeights w) {
  for (int l = 0; l < w.config.n_layers; ++l)
    for (int m = 0; m < kModulesPerLayer; ++m) {
      Matrix& W = w.linear({l, static_cast<Module>(m)});
      for (Eigen::Index i = 0; i < W.size(); ++i) W.data()[i] = __bfloat162float(__float2bfloat16_rn(W.data()[i]));
    }
  Matrix& C = w.classifier();
  for (Eigen::Index i = 0; i < C.size(); ++i) C.data()[i] = __bfloat162float(__float2bfloat16_rn(C.data()[i]));
  return w;
}

std::vector<Batch> stories_batches(int vocab) {
  return {make_batch(vocab, 48, {48, 31, 17}, 10, 1), make_batch(vocab, 64, {64, 40}, 25, 2),
          make_batch(vocab, 9, {9}, 0, 3)};
}

/// Tiny random model: untied lm_head, llama3 RoPE scaling, GQA 4/2, head_dim 4.
ModelWeights tiny_random(unsigned seed) {
  ModelConfig c;
  c.dim = 16;
  c.hidden_dim = 24;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 4;
  c.vocab_size = 37;
  c.max_seq_len = 32;
  c.rope_theta = 500.0;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 16;
  c.tie_embeddings = false;
  ModelWeights w = ModelWeights::zeros(c);
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 0.35f);
  w.for_each_parameter([&](const std::string& name, float* p, std::int64_t count, const std::vector<std::int64_t>&) {
    const bool norm = name.find("norm") != std::string::npos;
    for (std::int64_t i = 0; i < count; ++i) p[i] = norm ? 1.0f + 0.3f * n(rng) : n(rng);
  });
  return w;
}

}  // namespace

// fp32: both sides are fp32 with different summation orders; 2e-5 is ~100 fp32 ulps.
TEST_CASE("fp32 CudaLlama matches the CPU model: tiny random model, untied, llama3 RoPE") {
  const ModelWeights w = tiny_random(11);
  const std::vector<Batch> batches = {make_batch(37, 7, {7, 5, 3}, 3, 7), make_batch(37, 12, {12, 12}, 4, 8)};
  compare_with_cpu<float>(w, w, batches, 3, 12, {1e-5, 2e-5, 2e-5, 2e-5}, "tiny fp32");
}

// bf16 on the tiny model checks the bf16-only paths (untied classifier copy, 4-wide bf16 accesses)
// against gross errors; its large random weights (std 0.35) make rounding effects larger than on a
// trained model, hence the wider bounds.
TEST_CASE("bf16 CudaLlama matches the CPU model: tiny random model, untied, llama3 RoPE") {
  const ModelWeights w = tiny_random(11);
  const std::vector<Batch> batches = {make_batch(37, 7, {7, 5, 3}, 3, 7), make_batch(37, 12, {12, 12}, 4, 8)};
  compare_with_cpu<bf16>(w, rounded_to_bf16(w), batches, 3, 12, {1e-2, 5e-2, 1e-1, 2e-1}, "tiny bf16");
}

TEST_CASE("fp32 CudaLlama matches the CPU model on stories260K") {
  if (!have_stories()) {
    MESSAGE("SKIPPED: " << stories_dir() << " not found (set HDPISSA_DATA)");
    return;
  }
  const ModelWeights w = load_hf_checkpoint(stories_dir());
  compare_with_cpu<float>(w, w, stories_batches(w.config.vocab_size), 3, 64, {1e-5, 2e-5, 2e-5, 2e-5}, "stories260K fp32");
}

// bf16: the CPU reference runs on the same bf16-rounded target linears and classifier, so what is
// measured is the bf16 rounding of activations (GEMM operands: xn, q/k/v, P, attn, act, dY, dX)
// with fp32 accumulation. The unit roundoff of bf16 is 2^-9 ≈ 2e-3 per rounding; ~10 roundings along
// each path through 5 layers give ~1e-2 relative error: measured on an H200, ≤ 1.9e-2 for v, o, gate,
// up, down (held to 4e-2). q_proj / k_proj receive dY through dS = P∘(dP − D), a difference of nearly
// equal terms (Σ_j P_ij dP_ij = D_i) that amplifies the rounding of dO, V and O: measured ≤ 6.0e-2
// (held to 1.2e-1). Loss (a mean over many tokens): measured ≤ 1.6e-4 (held to 1e-3); logits ≤ 1.3e-2
// of max |z| (held to 3e-2). fp32 with the same code meets 1e-5, so these are rounding, not logic.
TEST_CASE("bf16 CudaLlama matches the CPU model on stories260K within bf16 rounding") {
  if (!have_stories()) {
    MESSAGE("SKIPPED: " << stories_dir() << " not found (set HDPISSA_DATA)");
    return;
  }
  const ModelWeights w = load_hf_checkpoint(stories_dir());
  compare_with_cpu<bf16>(w, rounded_to_bf16(w), stories_batches(w.config.vocab_size), 3, 64, {1e-3, 3e-2, 4e-2, 1.2e-1},
                         "stories260K bf16");
}

template <class T>
void check_loss_scale_and_order(const ModelWeights& w, const Batch& b) {
  CudaLlama<T> model(w, b.batch_size, b.seq_len, nullptr);
  hdpissa::CudaBackend<T> be(model.stream(), {});
  RecordingHooks<T> h1(be, w.config), h4(be, w.config), heval(be, w.config);
  const LossResult l1 = model.forward_backward(b, h1, 1.0f);
  const LossResult l4 = model.forward_backward(b, h4, 4.0f);
  const LossResult le = model.forward_loss(b, heval);
  // forward_loss and forward_backward run the same forward and loss kernels: identical sums
  CHECK(le.loss_sum == l1.loss_sum);
  CHECK(l4.loss_sum == l1.loss_sum);
  CHECK(le.n_tokens == l1.n_tokens);
  // a power-of-two loss_scale scales every floating-point operation of the backward exactly
  const auto g1 = h1.download(), g4 = h4.download();
  long long mismatches = 0;
  double norm = 0;
  for (std::size_t i = 0; i < g1.size(); ++i)
    for (Eigen::Index j = 0; j < g1[i].size(); ++j) {
      mismatches += g4[i].data()[j] != 4.0f * g1[i].data()[j];
      norm += std::abs(g1[i].data()[j]);
    }
  CHECK(mismatches == 0);
  CHECK(norm > 0);
  // contract order: forward q,k,v,o,gate,up,down per layer; backward down,up,gate,o,v,k,q in reverse
  std::vector<int> expect;
  const int L = w.config.n_layers;
  for (int l = 0; l < L; ++l)
    for (int m = 0; m < kModulesPerLayer; ++m) expect.push_back(l * kModulesPerLayer + m);
  for (int l = L - 1; l >= 0; --l)
    for (Module m : {Module::down, Module::up, Module::gate, Module::o, Module::v, Module::k, Module::q})
      expect.push_back(-1 - LinearId{l, m}.index());
  CHECK(h1.log == expect);
  CHECK(heval.log == std::vector<int>(expect.begin(), expect.begin() + L * kModulesPerLayer));
}

TEST_CASE("forward_loss equals forward_backward's loss; loss_scale scales gradients exactly; hook order") {
  const ModelWeights w = tiny_random(5);
  const Batch b = make_batch(37, 10, {10, 6}, 3, 9);
  SUBCASE("fp32") { check_loss_scale_and_order<float>(w, b); }
  SUBCASE("bf16") { check_loss_scale_and_order<bf16>(w, b); }
}

TEST_CASE("CudaLlama: linear views, upload / download, bad input") {
  const ModelWeights w = tiny_random(3);
  CudaLlama<float> model(w, 2, 8, nullptr);
  const LinearId id{1, Module::gate};
  const auto v = model.linear(id);
  CHECK(v.rows == w.config.hidden_dim);
  CHECK(v.cols == w.config.dim);
  Matrix back;
  model.download_linear(id, back);
  CHECK(back == w.linear(id));
  Matrix twice = 2.0f * w.linear(id);
  model.upload_linear(id, twice);
  model.download_linear(id, back);
  CHECK(back == twice);

  hdpissa::CudaBackend<float> be(model.stream(), {});
  CudaHooks<float> plain(be);
  auto expect_error = [](auto&& f, const char* needle) {
    bool thrown = false;
    try {
      f();
    } catch (const LlamaError& e) {
      thrown = true;
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
    CHECK_MESSAGE(thrown, needle);
  };
  expect_error([&] { model.forward_loss(make_batch(37, 9, {9, 9}, 0, 1), plain); }, "at most 2 x 8");
  expect_error([&] { model.forward_loss(make_batch(37, 4, {4, 4, 4}, 0, 1), plain); }, "at most 2 x 8");
  Batch bad = make_batch(37, 4, {4, 3}, 0, 1);
  bad.input_ids[2] = 37;
  expect_error([&] { model.forward_loss(bad, plain); }, "token ids in [0, 37)");
  Batch badlab = make_batch(37, 4, {4, 3}, 0, 1);
  badlab.labels[3] = 40;
  expect_error([&] { model.forward_loss(badlab, plain); }, "labels in [0, 37)");
  expect_error([&] { model.upload_linear(id, Matrix::Zero(3, 3)); }, "expected shape [24, 16]");
  expect_error([&] { CudaLlama<float>(w, 1, 64, nullptr); }, "exceeds max_position_embeddings");
}

// ------------------------------------------------------------------------------------------------
// Flash attention (flash_attn.cuh): the kernels against a double-precision reference written from
// the definition, and the bf16 model with Attention::Flash against the CPU model.

namespace {

namespace flash = hdpissa::llama::gpu::flash;

/// softmax(scale·q·kᵀ) over keys 0..t (window > 0: max(0, t − W + 1)..t) for rows t < L_b, zero elsewhere;
/// gradients for a given dO.
struct AttnRef {
  std::vector<double> O, lse, dQ, dK, dV, D;
};
AttnRef attention_reference(const std::vector<float>& Q, const std::vector<float>& K, const std::vector<float>& V,
                            const std::vector<float>& dO, int B, int nh, int nkv, int T, int hd,
                            const std::vector<int>& lengths, double scale, int window = 0) {
  AttnRef r;
  const std::size_t nq = static_cast<std::size_t>(B) * nh * T * hd, nk = static_cast<std::size_t>(B) * nkv * T * hd;
  r.O.assign(nq, 0.0);
  r.dQ.assign(nq, 0.0);
  r.dK.assign(nk, 0.0);
  r.dV.assign(nk, 0.0);
  r.lse.assign(static_cast<std::size_t>(B) * nh * T, 0.0);
  r.D = r.lse;
  const int group = nh / nkv;
  std::vector<double> p(T), dp(T);
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < nh; ++h) {
      const std::size_t qh = (static_cast<std::size_t>(b) * nh + h) * T, kh = (static_cast<std::size_t>(b) * nkv + h / group) * T;
      for (int t = 0; t < lengths[b]; ++t) {
        const float* q = &Q[(qh + t) * hd];
        const int j_lo = window > 0 ? std::max(0, t - window + 1) : 0;  // sliding window: keys > t − W
        double m = -1e300;
        for (int j = j_lo; j <= t; ++j) {
          double s = 0;
          for (int d = 0; d < hd; ++d) s += static_cast<double>(q[d]) * K[(kh + j) * hd + d];
          p[j] = scale * s;
          m = std::max(m, p[j]);
        }
        double z = 0;
        for (int j = j_lo; j <= t; ++j) z += std::exp(p[j] - m);
        r.lse[qh + t] = m + std::log(z);
        for (int j = j_lo; j <= t; ++j) p[j] = std::exp(p[j] - r.lse[qh + t]);
        double* o = &r.O[(qh + t) * hd];
        for (int j = j_lo; j <= t; ++j)
          for (int d = 0; d < hd; ++d) o[d] += p[j] * V[(kh + j) * hd + d];
        const float* g = &dO[(qh + t) * hd];
        double D = 0;
        for (int d = 0; d < hd; ++d) D += static_cast<double>(g[d]) * o[d];
        r.D[qh + t] = D;
        for (int j = j_lo; j <= t; ++j) {
          double s = 0;
          for (int d = 0; d < hd; ++d) s += static_cast<double>(g[d]) * V[(kh + j) * hd + d];
          dp[j] = p[j] * (s - D);  // dS
          for (int d = 0; d < hd; ++d) {
            r.dQ[(qh + t) * hd + d] += scale * dp[j] * K[(kh + j) * hd + d];
            r.dK[(kh + j) * hd + d] += scale * dp[j] * q[d];
            r.dV[(kh + j) * hd + d] += p[j] * g[d];
          }
        }
      }
    }
  return r;
}

/// ‖a − b‖ / ‖b‖; with `scale` > 0, ‖a − b‖ / scale instead (for a reference that is exactly zero).
double rel_err_d(const std::vector<float>& a, const std::vector<double>& b, double scale = 0) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < b.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return std::sqrt(num) / (scale > 0 ? scale : std::sqrt(den));
}
double norm_d(const std::vector<double>& b) {
  double s = 0;
  for (double x : b) s += x * x;
  return std::sqrt(s);
}

void check_flash_kernels(int hd, int window = 0) {
  const int B = 2, nh = 4, nkv = 2, T = 150;  // T not a multiple of the 64-row tile; GQA group 2
  const std::vector<int> lengths = {150, 97};
  const double scale = 1.0 / std::sqrt(static_cast<double>(hd));
  const std::size_t nq = static_cast<std::size_t>(B) * nh * T * hd, nk = static_cast<std::size_t>(B) * nkv * T * hd;
  std::mt19937 rng(17u + hd);
  // std 1.5 on q and k: peaked rows (scores up to ~±10) exercise the online-softmax rescaling
  auto fill = [&](std::size_t n, float sd) {
    std::normal_distribution<float> nd(0.0f, sd);
    std::vector<float> v(n);
    for (float& x : v) x = __bfloat162float(__float2bfloat16_rn(nd(rng)));
    return v;
  };
  const auto Q = fill(nq, 1.5f), K = fill(nk, 1.5f), V = fill(nk, 1.0f), dO = fill(nq, 1.0f);
  const AttnRef ref = attention_reference(Q, K, V, dO, B, nh, nkv, T, hd, lengths, scale, window);

  auto up_bf16 = [](const std::vector<float>& v) {
    std::vector<bf16> h(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) h[i] = __float2bfloat16_rn(v[i]);
    hdpissa::DeviceBuffer<bf16> d(v.size());
    HDPISSA_CUDA_CHECK(cudaMemcpy(d.get(), h.data(), sizeof(bf16) * h.size(), cudaMemcpyHostToDevice));
    return d;
  };
  auto dQ_ = up_bf16(Q), dK_ = up_bf16(K), dV_ = up_bf16(V), ddO = up_bf16(dO);
  hdpissa::DeviceBuffer<bf16> dOut(nq);
  hdpissa::DeviceBuffer<float> dlse(static_cast<std::size_t>(B) * nh * T), dD(static_cast<std::size_t>(B) * nh * T);
  hdpissa::DeviceBuffer<float> gq(nq), gk(nq), gv(nq);
  hdpissa::DeviceBuffer<int> dlen(B);
  HDPISSA_CUDA_CHECK(cudaMemcpy(dlen.get(), lengths.data(), sizeof(int) * B, cudaMemcpyHostToDevice));
  std::vector<float> Dh(ref.D.begin(), ref.D.end());
  HDPISSA_CUDA_CHECK(cudaMemcpy(dD.get(), Dh.data(), sizeof(float) * Dh.size(), cudaMemcpyHostToDevice));
  // poison the outputs: every element must be written
  HDPISSA_CUDA_CHECK(cudaMemset(dOut.get(), 0xff, sizeof(bf16) * nq));
  HDPISSA_CUDA_CHECK(cudaMemset(dlse.get(), 0xff, sizeof(float) * B * nh * T));
  for (auto* g : {&gq, &gk, &gv}) HDPISSA_CUDA_CHECK(cudaMemset(g->get(), 0xff, sizeof(float) * nq));

  flash::forward(dQ_.get(), dK_.get(), dV_.get(), dOut.get(), dlse.get(), dlen.get(), B, nh, nkv, T, hd,
                 static_cast<float>(scale), nullptr, window);
  flash::backward(dQ_.get(), dK_.get(), dV_.get(), ddO.get(), dlse.get(), dD.get(), gq.get(), gk.get(), gv.get(),
                  dlen.get(), B, nh, nkv, T, hd, static_cast<float>(scale), nullptr, window);
  HDPISSA_CUDA_CHECK(cudaDeviceSynchronize());
  auto down = [](const auto& d, std::size_t n) {
    using E = std::remove_cv_t<std::remove_pointer_t<decltype(d.get())>>;
    std::vector<E> h(n);
    HDPISSA_CUDA_CHECK(cudaMemcpy(h.data(), d.get(), sizeof(E) * n, cudaMemcpyDeviceToHost));
    return h;
  };
  const auto Ob = down(dOut, nq);
  std::vector<float> O(nq);
  for (std::size_t i = 0; i < nq; ++i) O[i] = __bfloat162float(Ob[i]);
  const auto lse = down(dlse, static_cast<std::size_t>(B) * nh * T);
  const auto dq = down(gq, nq), dkp = down(gk, nq), dvp = down(gv, nq);
  // the caller's reduction over each kv head's group of query heads
  std::vector<float> dk(nk, 0.0f), dv(nk, 0.0f);
  const int group = nh / nkv;
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < nh; ++h)
      for (std::size_t i = 0; i < static_cast<std::size_t>(T) * hd; ++i) {
        const std::size_t src = (static_cast<std::size_t>(b) * nh + h) * T * hd + i;
        const std::size_t dst = (static_cast<std::size_t>(b) * nkv + h / group) * T * hd + i;
        dk[dst] += dkp[src];
        dv[dst] += dvp[src];
      }

  // padding rows (t ≥ L_b) and keys past L_b: exactly zero
  long long nonzero = 0;
  for (int b = 0; b < B; ++b)
    for (int t = lengths[b]; t < T; ++t) {
      for (int h = 0; h < nh; ++h) {
        const std::size_t r = (static_cast<std::size_t>(b) * nh + h) * T + t;
        nonzero += lse[r] != 0.0f;
        for (int d = 0; d < hd; ++d) nonzero += (O[r * hd + d] != 0.0f) + (dq[r * hd + d] != 0.0f);
      }
      for (int h = 0; h < nkv; ++h) {
        const std::size_t r = (static_cast<std::size_t>(b) * nkv + h) * T + t;
        for (int d = 0; d < hd; ++d) nonzero += (dk[r * hd + d] != 0.0f) + (dv[r * hd + d] != 0.0f);
      }
    }
  CHECK(nonzero == 0);
  double lse_err = 0;
  for (std::size_t i = 0; i < lse.size(); ++i) lse_err = std::max(lse_err, std::abs(lse[i] - ref.lse[i]));
  // Bounds: inputs are exact bf16 values, products accumulate in fp32; what remains is the bf16
  // rounding of P (forward, dV) and dS (dK, dQ) as tensor-core operands (2^-9 relative each, ~3e-3
  // in aggregate) and of O's store. lse has no bf16 step: fp32 accumulation and exp2 / log2 only.
  // Window 1: every query sees only itself, so its softmax has no gradient and the reference dQ and
  // dK are exactly zero (dS = P·(dP − D) with P = 1, O = V). What the kernel leaves there is the fp32
  // residue of dP − D; it is measured against dV's norm (the same pass's gradient scale).
  const double zscale = window == 1 ? norm_d(ref.dV) : 0;
  if (window == 1) CHECK(norm_d(ref.dQ) <= 1e-9 * zscale);
  const double eO = rel_err_d(O, ref.O), eQ = rel_err_d(dq, ref.dQ, zscale), eK = rel_err_d(dk, ref.dK, zscale),
               eV = rel_err_d(dv, ref.dV);
  MESSAGE("flash hd " << hd << " window " << window << ": O rel " << eO << ", lse max|Δ| " << lse_err << ", dQ rel " << eQ << ", dK rel " << eK
                      << ", dV rel " << eV);
  CHECK(eO <= 1e-2);
  CHECK(lse_err <= 1e-4);
  CHECK(eQ <= 2e-2);
  CHECK(eK <= 2e-2);
  CHECK(eV <= 2e-2);

  // deterministic: a second backward gives the same bits
  flash::backward(dQ_.get(), dK_.get(), dV_.get(), ddO.get(), dlse.get(), dD.get(), gq.get(), gk.get(), gv.get(),
                  dlen.get(), B, nh, nkv, T, hd, static_cast<float>(scale), nullptr, window);
  HDPISSA_CUDA_CHECK(cudaDeviceSynchronize());
  CHECK(down(gq, nq) == dq);
  CHECK(down(gk, nq) == dkp);
  CHECK(down(gv, nq) == dvp);
}

/// A small random model with head_dim 64 (the flash kernels' shape): GQA 4/2, untied.
ModelWeights small_hd64(unsigned seed, int n_kv_heads = 2) {
  ModelConfig c;
  c.dim = 256;
  c.hidden_dim = 384;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = n_kv_heads;
  c.head_dim = 64;
  c.vocab_size = 61;
  c.max_seq_len = 160;
  c.tie_embeddings = false;
  ModelWeights w = ModelWeights::zeros(c);
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  w.for_each_parameter([&](const std::string& name, float* p, std::int64_t count, const std::vector<std::int64_t>& shape) {
    const bool norm = name.find("norm") != std::string::npos;
    // fan-in scaling, a little larger on q/k so that attention rows are not flat
    const double fan = shape.size() == 2 ? static_cast<double>(shape[1]) : 1.0;
    const bool qk = name.find("q_proj") != std::string::npos || name.find("k_proj") != std::string::npos;
    const float sd = static_cast<float>((qk ? 2.0 : 1.0) / std::sqrt(fan));
    for (std::int64_t i = 0; i < count; ++i) p[i] = norm ? 1.0f + 0.1f * n(rng) : sd * n(rng);
  });
  return w;
}

}  // namespace

TEST_CASE("flash attention kernels match a double-precision reference (hd 64 and 128, GQA, padding)") {
  SUBCASE("hd 64") { check_flash_kernels(64); }
  SUBCASE("hd 128") { check_flash_kernels(128); }
  // sliding windows: 1 (self only), 40 (partial tiles; query tile 2 skips key tile 0), 64 (= the tile)
  SUBCASE("hd 64, window 1") { check_flash_kernels(64, 1); }
  SUBCASE("hd 64, window 40") { check_flash_kernels(64, 40); }
  SUBCASE("hd 128, window 64") { check_flash_kernels(128, 64); }
}

namespace {
// Shared by the bitwise kernel tests below.

/// A host vector on the device.
template <class E>
hdpissa::DeviceBuffer<E> to_device(const std::vector<E>& h) {
  hdpissa::DeviceBuffer<E> d(h.size());
  HDPISSA_CUDA_CHECK(cudaMemcpy(d.get(), h.data(), sizeof(E) * h.size(), cudaMemcpyHostToDevice));
  return d;
}
/// n draws of N(0, sd) as E (each rounded once), on the device.
template <class E>
hdpissa::DeviceBuffer<E> random_device(std::size_t n, std::mt19937& rng, float sd) {
  std::normal_distribution<float> nd(0.0f, sd);
  std::vector<E> h(n);
  for (auto& x : h) x = E(nd(rng));
  return to_device(h);
}
/// The first n elements of a device buffer as bytes, once the device is idle: for bitwise checks.
template <class E>
std::vector<unsigned char> bits(const hdpissa::DeviceBuffer<E>& d, std::size_t n) {
  std::vector<unsigned char> b(sizeof(E) * n);
  HDPISSA_CUDA_CHECK(cudaDeviceSynchronize());
  HDPISSA_CUDA_CHECK(cudaMemcpy(b.data(), d.get(), b.size(), cudaMemcpyDeviceToHost));
  return b;
}
/// Rotate-half RoPE tables (T, hd/2) with θ_i = 10000^(−2i/hd), on the device.
struct DeviceRope {
  hdpissa::DeviceBuffer<float> cos, sin;
};
DeviceRope device_rope(int T, int hd) {
  const int half = hd / 2;
  std::vector<float> cs(std::size_t(T) * half), sn(cs.size());
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < half; ++i) {
      const double th = t * std::pow(10000.0, -2.0 * i / hd);
      cs[std::size_t(t) * half + i] = static_cast<float>(std::cos(th));
      sn[std::size_t(t) * half + i] = static_cast<float>(std::sin(th));
    }
  return {to_device(cs), to_device(sn)};
}
}  // namespace

/// forward()'s register target (kFwdMinBlocks: 4 resident blocks per SM at head dim 64) changes
/// register allocation only: the forward must give the unconstrained kernel's bits, with padding,
/// partial tiles and sliding windows.
template <int HD>
void check_flash_fwd_min_blocks_bitwise(int T, std::vector<int> lengths, int window) {
  const int B = static_cast<int>(lengths.size()), nh = 4, nkv = 2;
  const std::size_t nq = std::size_t(B) * nh * T * HD, nk = std::size_t(B) * nkv * T * HD, nr = std::size_t(B) * nh * T;
  std::mt19937 rng(5u + HD + T + window);
  auto Q = random_device<bf16>(nq, rng, 1.5f), K = random_device<bf16>(nk, rng, 1.5f), V = random_device<bf16>(nk, rng, 1.5f);
  hdpissa::DeviceBuffer<bf16> O(nq);
  hdpissa::DeviceBuffer<float> lse(nr);
  auto L = to_device(lengths);
  const float scale = 1.0f / std::sqrt(float(HD));
  auto poison = [&] {
    HDPISSA_CUDA_CHECK(cudaMemset(O.get(), 0xff, sizeof(bf16) * nq));
    HDPISSA_CUDA_CHECK(cudaMemset(lse.get(), 0xff, sizeof(float) * nr));
  };
  poison();
  flash::launch_fwd_kernel<HD, 1>(nullptr, Q.get(), K.get(), V.get(), O.get(), lse.get(), L.get(), B, nh, nkv, T, scale, window);
  const auto O1 = bits(O, nq), l1 = bits(lse, nr);
  for (int variant = 0; variant < 2; ++variant) {
    poison();
    if (variant == 0)
      flash::launch_fwd_kernel<HD, 4>(nullptr, Q.get(), K.get(), V.get(), O.get(), lse.get(), L.get(), B, nh, nkv, T, scale, window);
    else
      flash::forward(Q.get(), K.get(), V.get(), O.get(), lse.get(), L.get(), B, nh, nkv, T, HD, scale, nullptr, window);
    CHECK(bits(O, nq) == O1);
    CHECK(bits(lse, nr) == l1);
  }
}

TEST_CASE("flash forward: the register target gives the unconstrained kernel's bits") {
  for (int window : {0, 1, 40, 100}) {
    CAPTURE(window);
    check_flash_fwd_min_blocks_bitwise<64>(150, {150, 97, 1, 64}, window);
    check_flash_fwd_min_blocks_bitwise<128>(300, {300, 129, 256, 190}, window);
  }
}

/// The block order (flash::TileOrder: bands of heads, every head's heaviest causal tile of a band
/// dispatched before its next one; band 1 = each head's tiles in a row as before session 27)
/// changes only which SM runs a block when: forward (O, lse) and both backward kernels (dQ, dK, dV
/// partials) must give the same bits for every band (1, 3 — a short last band —, 32, the default:
/// 32 K / V heads' query heads, all),
/// with padding, partial tiles, sliding windows and GQA.
template <int HD>
void check_flash_tile_order_bitwise(int T, std::vector<int> lengths, int window) {
  using flash::TileOrder;
  const int B = static_cast<int>(lengths.size()), nh = 4, nkv = 2;
  const std::size_t nq = std::size_t(B) * nh * T * HD, nk = std::size_t(B) * nkv * T * HD, nr = std::size_t(B) * nh * T;
  std::mt19937 rng(17u + HD + T + window);
  auto Q = random_device<bf16>(nq, rng, 1.5f), K = random_device<bf16>(nk, rng, 1.5f), V = random_device<bf16>(nk, rng, 1.5f);
  auto dO = random_device<bf16>(nq, rng, 1.0f);
  std::vector<float> hD(nr);
  std::uniform_real_distribution<float> u(-0.5f, 0.5f);
  for (auto& x : hD) x = u(rng);
  auto D = to_device(hD);
  hdpissa::DeviceBuffer<bf16> O(nq);
  hdpissa::DeviceBuffer<float> lse(nr), dq(nq), dk(nq), dv(nq);
  auto L = to_device(lengths);
  const float scale = 1.0f / std::sqrt(float(HD));
  struct Out {
    std::vector<unsigned char> o, lse, dq, dk, dv;
  };
  auto run = [&](TileOrder order) {
    for (void* p : {static_cast<void*>(lse.get()), static_cast<void*>(dq.get()), static_cast<void*>(dk.get()),
                    static_cast<void*>(dv.get())})
      HDPISSA_CUDA_CHECK(cudaMemset(p, 0xff, sizeof(float) * (p == lse.get() ? nr : nq)));
    HDPISSA_CUDA_CHECK(cudaMemset(O.get(), 0xff, sizeof(bf16) * nq));
    flash::forward(Q.get(), K.get(), V.get(), O.get(), lse.get(), L.get(), B, nh, nkv, T, HD, scale, nullptr, window,
                   0, order);
    flash::backward(Q.get(), K.get(), V.get(), dO.get(), lse.get(), D.get(), dq.get(), dk.get(), dv.get(), L.get(), B,
                    nh, nkv, T, HD, scale, nullptr, window, 0, {}, order);
    HDPISSA_CUDA_CHECK(cudaDeviceSynchronize());
    return Out{bits(O, nq), bits(lse, nr), bits(dq, nq), bits(dk, nq), bits(dv, nq)};
  };
  const Out a = run(TileOrder::interleaved());
  for (TileOrder order : {TileOrder{3}, TileOrder{32}, TileOrder{}, TileOrder::heavy_first()}) {
    CAPTURE(order.band);
    const Out b = run(order);
    CHECK(a.o == b.o);
    CHECK(a.lse == b.lse);
    CHECK(a.dq == b.dq);
    CHECK(a.dk == b.dk);
    CHECK(a.dv == b.dv);
  }
  CHECK_THROWS_AS(flash::forward(Q.get(), K.get(), V.get(), O.get(), lse.get(), L.get(), B, nh, nkv, T, HD, scale,
                                 nullptr, window, 0, TileOrder{-1}),
                  std::invalid_argument);
  // and not trivially: the outputs were written (no 0xff poison left on a valid row's first value)
  const std::vector<unsigned char> poisoned(4, 0xff);
  CHECK(std::vector<unsigned char>(a.lse.begin(), a.lse.begin() + 4) != poisoned);
  CHECK(std::vector<unsigned char>(a.dq.begin(), a.dq.begin() + 4) != poisoned);
}

TEST_CASE("flash kernels: every block order (bands of heads, heavy tiles first) gives the same bits") {
  for (int window : {0, 40}) {
    CAPTURE(window);
    check_flash_tile_order_bitwise<64>(150, {150, 97, 1, 64}, window);
    check_flash_tile_order_bitwise<128>(300, {300, 129, 256, 190}, window);
  }
}

/// The attention layout kernels' 4-wide forms (kernels_llama.cuh) against the scalar kernels, bit
/// for bit: rows → heads with and without RoPE, heads → rows with the inverse rotation, the fp32
/// group sum; a row stride wider than the heads; head dims 8, 64, 128; bf16 and fp32. attn_rowdot's
/// 4-wide form sums in another order: both against a double-precision sum.
template <class T>
void check_layout_kernels(int hd, int extra_ld) {
  namespace kern = hdpissa::llama::gpu::kern;
  const int B = 2, Tn = 37, nh = 4, nkv = 2, group = nh / nkv;
  const int ld = nh * hd + extra_ld, N = B * Tn;
  std::mt19937 rng(11u + hd + extra_ld);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto host = [&](std::size_t n) {
    std::vector<T> h(n);
    for (auto& x : h) x = T(nd(rng));
    return h;
  };
  const DeviceRope rp = device_rope(Tn, hd);
  const float* dcos = rp.cos.get();
  const float* dsin = rp.sin.get();
  auto rows = random_device<T>(static_cast<std::size_t>(N) * ld, rng, 1.0f);
  const std::size_t nheads_el = static_cast<std::size_t>(B) * nh * Tn * hd;
  hdpissa::DeviceBuffer<T> h1(nheads_el), h2(nheads_el), r1(static_cast<std::size_t>(N) * ld), r2(r1.size());
  const unsigned g = 64;
  for (bool rope : {false, true}) {
    CAPTURE(rope);
    kern::rows_to_heads<T><<<g, 256>>>(rows.get(), ld, h1.get(), B, Tn, nh, hd, dcos, dsin, rope);
    kern::launch_rows_to_heads<T>(nullptr, rows.get(), ld, h2.get(), B, Tn, nh, hd, dcos, dsin, rope);
    CHECK(bits(h1, nheads_el) == bits(h2, nheads_el));
    HDPISSA_CUDA_CHECK(cudaMemset(r1.get(), 0, sizeof(T) * r1.size()));
    HDPISSA_CUDA_CHECK(cudaMemset(r2.get(), 0, sizeof(T) * r2.size()));
    kern::heads_to_rows<T><<<g, 256>>>(h1.get(), r1.get(), ld, B, Tn, nh, hd, dcos, dsin, rope);
    kern::launch_heads_to_rows<T>(nullptr, h1.get(), r2.get(), ld, B, Tn, nh, hd, dcos, dsin, rope);
    CHECK(bits(r1, r1.size()) == bits(r2, r2.size()));
    // fp32 per-query-head partials summed over each kv head's group
    std::vector<float> part(nheads_el);
    for (auto& x : part) x = nd(rng);
    auto dpart = to_device(part);
    const int ldk = nkv * hd + extra_ld;
    hdpissa::DeviceBuffer<T> k1(static_cast<std::size_t>(N) * ldk), k2(k1.size());
    HDPISSA_CUDA_CHECK(cudaMemset(k1.get(), 0, sizeof(T) * k1.size()));
    HDPISSA_CUDA_CHECK(cudaMemset(k2.get(), 0, sizeof(T) * k2.size()));
    kern::group_sum_heads_to_rows<T><<<g, 256>>>(dpart.get(), group, k1.get(), ldk, B, Tn, nkv, hd, dcos, dsin, rope);
    kern::launch_group_sum_heads_to_rows<T>(nullptr, dpart.get(), group, k2.get(), ldk, B, Tn, nkv, hd, dcos, dsin, rope);
    CHECK(bits(k1, k1.size()) == bits(k2, k2.size()));
  }
  // D = rowsum(dO ∘ O) per (row, head), rows of nh·hd
  const auto a = host(static_cast<std::size_t>(N) * nh * hd), b = host(a.size());
  auto da = to_device(a), db = to_device(b);
  hdpissa::DeviceBuffer<float> D(static_cast<std::size_t>(B) * nh * Tn);
  kern::launch_attn_rowdot<T>(nullptr, da.get(), db.get(), D.get(), B, Tn, nh, hd);
  std::vector<float> Dh(D.size());
  HDPISSA_CUDA_CHECK(cudaDeviceSynchronize());
  HDPISSA_CUDA_CHECK(cudaMemcpy(Dh.data(), D.get(), sizeof(float) * Dh.size(), cudaMemcpyDeviceToHost));
  double worst = 0;
  for (int n = 0; n < N; ++n)
    for (int h = 0; h < nh; ++h) {
      double ref = 0, mag = 0;
      for (int d = 0; d < hd; ++d) {
        const double p = double(float(a[(std::size_t(n) * nh + h) * hd + d])) * double(float(b[(std::size_t(n) * nh + h) * hd + d]));
        ref += p;
        mag += std::abs(p);
      }
      const int bb = n / Tn, t = n % Tn;
      worst = std::max(worst, std::abs(Dh[(std::size_t(bb) * nh + h) * Tn + t] - ref) / (mag + 1e-30));
    }
  CHECK(worst <= 1e-6);  // fp32 sums of hd ≤ 128 products: ≲ hd · 2^-24 of Σ|p|
}

TEST_CASE("attention layout kernels: the 4-wide forms give the scalar kernels' bits; rowdot against a double sum") {
  for (int hd : {8, 64, 128})
    for (int extra : {0, 8}) {
      CAPTURE(hd);
      CAPTURE(extra);
      check_layout_kernels<bf16>(hd, extra);
      check_layout_kernels<float>(hd, extra);
    }
}

/// The flash kernels' row-layout operands against the head-major ones plus the layout kernels, bit
/// for bit: O written as rows (stride wider than the heads), dO read from rows, and the gradients
/// written as bf16 rows (flash::RowGrads: dQ always, dK and dV for MHA) against the fp32 partials
/// taken through group_sum_heads_to_rows; padding rows and a sliding window included. RowGrads for
/// K and V with GQA is refused.
void check_flash_row_layouts(int hd, int nh, int nkv, int window) {
  namespace kern = hdpissa::llama::gpu::kern;
  const int T = 150;
  const std::vector<int> lengths = {150, 97, 1};
  const int B = static_cast<int>(lengths.size()), N = B * T, group = nh / nkv;
  const int ldo = nh * hd + 8, ldq = nh * hd, ldkv = nkv * hd;
  const std::size_t nq = std::size_t(B) * nh * T * hd, nk = std::size_t(B) * nkv * T * hd, nr = std::size_t(B) * nh * T;
  std::mt19937 rng(3u + hd + nkv + window);
  auto Q = random_device<bf16>(nq, rng, 1.5f), K = random_device<bf16>(nk, rng, 1.5f);
  auto V = random_device<bf16>(nk, rng, 1.5f), dOh = random_device<bf16>(nq, rng, 1.5f);
  auto D = random_device<float>(nr, rng, 0.15f);
  const DeviceRope rp = device_rope(T, hd);
  const float* dcos = rp.cos.get();
  const float* dsin = rp.sin.get();
  auto L = to_device(lengths);
  const float scale = 1.0f / std::sqrt(float(hd));

  // forward: head-major O then heads_to_rows == O written as rows
  hdpissa::DeviceBuffer<bf16> Oh(nq), Or1(std::size_t(N) * ldo), Or2(Or1.size());
  hdpissa::DeviceBuffer<float> lse(nr);
  // poisoned alike: every row the kernels own (padding rows included) must be written, the
  // stride's spare columns must not
  HDPISSA_CUDA_CHECK(cudaMemset(Or1.get(), 0xff, sizeof(bf16) * Or1.size()));
  HDPISSA_CUDA_CHECK(cudaMemset(Or2.get(), 0xff, sizeof(bf16) * Or2.size()));
  flash::forward(Q.get(), K.get(), V.get(), Oh.get(), lse.get(), L.get(), B, nh, nkv, T, hd, scale, nullptr, window);
  kern::launch_heads_to_rows<bf16>(nullptr, Oh.get(), Or1.get(), ldo, B, T, nh, hd, dcos, dsin, false);
  flash::forward(Q.get(), K.get(), V.get(), Or2.get(), lse.get(), L.get(), B, nh, nkv, T, hd, scale, nullptr, window, ldo);
  CHECK(bits(Or1, Or1.size()) == bits(Or2, Or2.size()));
  {  // rows past a sequence's length: +0 in every head's columns (batch 2 has length 1)
    std::vector<bf16> h(Or2.size());
    HDPISSA_CUDA_CHECK(cudaMemcpy(h.data(), Or2.get(), sizeof(bf16) * h.size(), cudaMemcpyDeviceToHost));
    long long bad = 0;
    for (int b = 0; b < B; ++b)
      for (int t = lengths[b]; t < T; ++t)
        for (int j = 0; j < nh * hd; ++j) {
          std::uint16_t u;
          std::memcpy(&u, &h[(std::size_t(b) * T + t) * ldo + j], 2);
          bad += u != 0;
        }
    CHECK(bad == 0);
  }

  // backward: head-major dO, fp32 partials, group sums (the model's GQA path) ...
  hdpissa::DeviceBuffer<bf16> dOr(std::size_t(N) * ldo);
  kern::launch_heads_to_rows<bf16>(nullptr, dOh.get(), dOr.get(), ldo, B, T, nh, hd, dcos, dsin, false);
  hdpissa::DeviceBuffer<float> fq(nq), fk(nq), fv(nq);
  hdpissa::DeviceBuffer<bf16> q1(std::size_t(N) * ldq), k1(std::size_t(N) * ldkv), v1(k1.size());
  hdpissa::DeviceBuffer<bf16> q2(q1.size()), k2(k1.size()), v2(k1.size());
  for (auto* d : {&q1, &k1, &v1, &q2, &k2, &v2}) HDPISSA_CUDA_CHECK(cudaMemset(d->get(), 0xff, sizeof(bf16) * d->size()));
  flash::backward(Q.get(), K.get(), V.get(), dOh.get(), lse.get(), D.get(), fq.get(), fk.get(), fv.get(), L.get(), B, nh,
                  nkv, T, hd, scale, nullptr, window);
  kern::launch_group_sum_heads_to_rows<bf16>(nullptr, fq.get(), 1, q1.get(), ldq, B, T, nh, hd, dcos, dsin, true);
  kern::launch_group_sum_heads_to_rows<bf16>(nullptr, fk.get(), group, k1.get(), ldkv, B, T, nkv, hd, dcos, dsin, true);
  kern::launch_group_sum_heads_to_rows<bf16>(nullptr, fv.get(), group, v1.get(), ldkv, B, T, nkv, hd, dcos, dsin, false);
  // ... against dO read from rows and the gradients written as bf16 rows (K, V only for MHA)
  flash::RowGrads rg{q2.get(), ldq, nullptr, nullptr, ldkv, dcos, dsin};
  if (group == 1) {
    rg.k = k2.get();
    rg.v = v2.get();
  }
  hdpissa::DeviceBuffer<float> gk(nq), gv(nq);
  flash::backward(Q.get(), K.get(), V.get(), dOr.get(), lse.get(), D.get(), nullptr, gk.get(), gv.get(), L.get(), B, nh,
                  nkv, T, hd, scale, nullptr, window, ldo, rg);
  CHECK(bits(q1, q1.size()) == bits(q2, q2.size()));
  if (group == 1) {
    CHECK(bits(k1, k1.size()) == bits(k2, k2.size()));
    CHECK(bits(v1, v1.size()) == bits(v2, v2.size()));
  } else {  // GQA: the partials, read through the row-layout dO, are the head-major ones
    CHECK(bits(gk, nq) == bits(fk, nq));
    CHECK(bits(gv, nq) == bits(fv, nq));
    flash::RowGrads bad = rg;
    bad.k = k2.get();
    bad.v = v2.get();
    CHECK_THROWS_WITH_AS(flash::backward(Q.get(), K.get(), V.get(), dOr.get(), lse.get(), D.get(), nullptr, gk.get(),
                                         gv.get(), L.get(), B, nh, nkv, T, hd, scale, nullptr, window, ldo, bad),
                         doctest::Contains("need MHA (nh == nkv)"), std::invalid_argument);
  }
}

TEST_CASE("flash attention row layouts (O out, dO in, bf16 row gradients) give the head-major path's bits") {
  for (int window : {0, 40}) {
    CAPTURE(window);
    check_flash_row_layouts(64, 4, 4, window);   // MHA: dQ, dK, dV as rows
    check_flash_row_layouts(128, 4, 4, window);
    check_flash_row_layouts(64, 4, 2, window);   // GQA: dQ as rows, dK / dV partials + group sum
  }
}

/// The register-cached RMSNorm kernels (kCache > 0, what the launchers pick for 4-wide rows up to
/// 8192) against the two-pass form, bit for bit: forward with and without the residual add,
/// backward with one to three bf16 gradient terms and the fp32 one; D at, below and between the
/// cache sizes.
template <class T>
void check_cached_norms(int D) {
  namespace kern = hdpissa::llama::gpu::kern;
  const int N = 37;
  std::mt19937 rng(29u + D);
  const std::size_t n = std::size_t(N) * D;
  auto prev = random_device<float>(n, rng, 1.0f), w = random_device<float>(D, rng, 1.0f);
  auto dyf = random_device<float>(n, rng, 1.0f), dx0 = random_device<float>(n, rng, 1.0f);
  auto y = random_device<T>(n, rng, 1.0f), dy0 = random_device<T>(n, rng, 1.0f);
  auto dy1 = random_device<T>(n, rng, 1.0f), dy2 = random_device<T>(n, rng, 1.0f);
  hdpissa::DeviceBuffer<float> out1(n), out2(n), r1(N), r2(N), dx1(n), dx2(n);
  hdpissa::DeviceBuffer<T> xn1(n), xn2(n), dt1(n), dt2(n);
  for (bool add : {false, true}) {
    kern::add_rmsnorm_fwd<T, 0><<<N, 256>>>(prev.get(), add ? y.get() : nullptr, out1.get(), w.get(), r1.get(), xn1.get(), D, 1e-5f);
    kern::launch_add_rmsnorm_fwd<T>(nullptr, prev.get(), add ? y.get() : nullptr, out2.get(), w.get(), r2.get(), xn2.get(), N, D, 1e-5f);
    CHECK(bits(out1, n) == bits(out2, n));
    CHECK(bits(r1, N) == bits(r2, N));
    CHECK(bits(xn1, n) == bits(xn2, n));
  }
  for (int terms = 1; terms <= 4; ++terms) {
    CAPTURE(terms);
    const float* f = terms == 4 ? dyf.get() : nullptr;
    const T* a = dy0.get();
    const T* b = terms >= 2 ? dy1.get() : nullptr;
    const T* c = terms >= 3 ? dy2.get() : nullptr;
    HDPISSA_CUDA_CHECK(cudaMemcpy(dx1.get(), dx0.get(), sizeof(float) * n, cudaMemcpyDeviceToDevice));
    HDPISSA_CUDA_CHECK(cudaMemcpy(dx2.get(), dx0.get(), sizeof(float) * n, cudaMemcpyDeviceToDevice));
    kern::rmsnorm_bwd<T, 0><<<N, 256>>>(out1.get(), r1.get(), w.get(), f, a, b, c, dx1.get(), dt1.get(), D);
    kern::launch_rmsnorm_bwd<T>(nullptr, out1.get(), r1.get(), w.get(), f, a, b, c, dx2.get(), dt2.get(), N, D);
    CHECK(bits(dx1, n) == bits(dx2, n));
    CHECK(bits(dt1, n) == bits(dt2, n));
  }
}

TEST_CASE("register-cached RMSNorm kernels give the two-pass kernels' bits") {
  for (int D : {64, 2048, 3000, 4096, 5120, 8192}) {
    CAPTURE(D);
    check_cached_norms<bf16>(D);
    check_cached_norms<float>(D);
  }
}

/// Producer-kept amax (FP8 compute, issue 20): each kernel that writes a tensor an FP8 GEMM
/// quantises next (the RMSNorm forward's xn, the backward's dx_t, SwiGLU's act, d_gate, d_up) maxes
/// max |output| into a slot. The outputs are the same bits as without the slot, and the slot holds
/// exactly what launch_fp8_amax reads back from the stored output (the FP8 copy then quantises with
/// the same scale). Rows on the 4-wide, register-cached and scalar paths, an odd element count for
/// SwiGLU, and a slot that already holds a larger value (the kernels max into it, they do not reset).
template <class T>
void check_producer_amax(int D, int N) {
  namespace kern = hdpissa::llama::gpu::kern;
  CAPTURE(D);
  CAPTURE(N);
  std::mt19937 rng(71u + D + N);
  const std::size_t n = std::size_t(N) * D;
  auto prev = random_device<float>(n, rng, 1.0f), w = random_device<float>(D, rng, 1.0f);
  auto y = random_device<T>(n, rng, 1.0f), dy0 = random_device<T>(n, rng, 3.0f);
  auto dx0 = random_device<float>(n, rng, 1.0f);
  auto gate = random_device<T>(n, rng, 2.0f), up = random_device<T>(n, rng, 2.0f), dact = random_device<T>(n, rng, 1.0f);
  hdpissa::DeviceBuffer<float> out1(n), out2(n), r1(N), r2(N), dx1(n), dx2(n), slots(8);
  hdpissa::DeviceBuffer<T> o1(n), o2(n), p1(n), p2(n);
  // (the slot, the output just written): the slot must equal launch_fp8_amax over the output
  auto check_slot = [&](int k, const hdpissa::DeviceBuffer<T>& out, std::size_t count, float floor) {
    hdpissa::DeviceBuffer<float> ref(1);
    using hdpissa::index_t;
    hdpissa::launch_fp8_amax<T>(nullptr, hdpissa::ConstMatrixView<T>(out.get(), index_t(1), index_t(count), index_t(count)),
                                ref.get());
    float got = 0, want = 0;
    HDPISSA_CUDA_CHECK(cudaMemcpy(&got, slots.get() + k, sizeof(float), cudaMemcpyDeviceToHost));
    HDPISSA_CUDA_CHECK(cudaMemcpy(&want, ref.get(), sizeof(float), cudaMemcpyDeviceToHost));
    CHECK(want > 0.0f);
    CHECK(got == std::max(want, floor));
  };
  auto reset = [&](float v) {
    std::vector<float> h(8, v);
    HDPISSA_CUDA_CHECK(cudaMemcpy(slots.get(), h.data(), sizeof(float) * 8, cudaMemcpyHostToDevice));
  };
  for (const float floor : {0.0f, 1e6f}) {
    CAPTURE(floor);
    reset(floor);
    kern::launch_add_rmsnorm_fwd<T>(nullptr, prev.get(), y.get(), out1.get(), w.get(), r1.get(), o1.get(), N, D, 1e-5f);
    kern::launch_add_rmsnorm_fwd<T>(nullptr, prev.get(), y.get(), out2.get(), w.get(), r2.get(), o2.get(), N, D, 1e-5f,
                                    false, slots.get() + 0);
    CHECK(bits(o1, n) == bits(o2, n));
    CHECK(bits(out1, n) == bits(out2, n));
    check_slot(0, o2, n, floor);
    HDPISSA_CUDA_CHECK(cudaMemcpy(dx1.get(), dx0.get(), sizeof(float) * n, cudaMemcpyDeviceToDevice));
    HDPISSA_CUDA_CHECK(cudaMemcpy(dx2.get(), dx0.get(), sizeof(float) * n, cudaMemcpyDeviceToDevice));
    kern::launch_rmsnorm_bwd<T>(nullptr, out1.get(), r1.get(), w.get(), nullptr, dy0.get(), y.get(), nullptr, dx1.get(),
                                o1.get(), N, D);
    kern::launch_rmsnorm_bwd<T>(nullptr, out1.get(), r1.get(), w.get(), nullptr, dy0.get(), y.get(), nullptr, dx2.get(),
                                o2.get(), N, D, slots.get() + 1);
    CHECK(bits(o1, n) == bits(o2, n));
    CHECK(bits(dx1, n) == bits(dx2, n));
    check_slot(1, o2, n, floor);
    for (const std::size_t m : {n, n - 3}) {  // n - 3: the scalar path
      CAPTURE(m);
      reset(floor);
      kern::launch_swiglu_fwd<T>(nullptr, gate.get(), up.get(), o1.get(), std::int64_t(m));
      kern::launch_swiglu_fwd<T>(nullptr, gate.get(), up.get(), o2.get(), std::int64_t(m), slots.get() + 2);
      CHECK(bits(o1, m) == bits(o2, m));
      check_slot(2, o2, m, floor);
      kern::launch_swiglu_bwd<T>(nullptr, dact.get(), gate.get(), up.get(), o1.get(), p1.get(), std::int64_t(m));
      kern::launch_swiglu_bwd<T>(nullptr, dact.get(), gate.get(), up.get(), o2.get(), p2.get(), std::int64_t(m),
                                 slots.get() + 3, slots.get() + 4);
      CHECK(bits(o1, m) == bits(o2, m));
      CHECK(bits(p1, m) == bits(p2, m));
      check_slot(3, o2, m, floor);
      check_slot(4, p2, m, floor);
      // one of the two slots only
      reset(floor);
      kern::launch_swiglu_bwd<T>(nullptr, dact.get(), gate.get(), up.get(), o2.get(), p2.get(), std::int64_t(m),
                                 nullptr, slots.get() + 4);
      CHECK(bits(p1, m) == bits(p2, m));
      check_slot(4, p2, m, floor);
    }
  }
}

/// Special values through SwiGLU's slot: an all-zero output leaves it at 0 (no atomic, as the amax
/// pass's memset), −0 counts as 0, and a NaN makes it NaN (as the pass: a NaN amax scales by 1).
void check_producer_amax_special() {
  namespace kern = hdpissa::llama::gpu::kern;
  using hdpissa::index_t;
  const std::size_t n = 4096;
  std::vector<bf16> g(n, bf16(-0.0f)), u(n, bf16(1.0f));
  auto gate = to_device(g), up = to_device(u);
  hdpissa::DeviceBuffer<bf16> act(n);
  hdpissa::DeviceBuffer<float> slot(1), ref(1);
  auto run = [&] {
    HDPISSA_CUDA_CHECK(cudaMemset(slot.get(), 0, sizeof(float)));
    kern::launch_swiglu_fwd<bf16>(nullptr, gate.get(), up.get(), act.get(), std::int64_t(n), slot.get());
    hdpissa::launch_fp8_amax<bf16>(nullptr, hdpissa::ConstMatrixView<bf16>(act.get(), index_t(1), index_t(n), index_t(n)),
                                   ref.get());
    float got = 0, want = 0;
    HDPISSA_CUDA_CHECK(cudaMemcpy(&got, slot.get(), sizeof(float), cudaMemcpyDeviceToHost));
    HDPISSA_CUDA_CHECK(cudaMemcpy(&want, ref.get(), sizeof(float), cudaMemcpyDeviceToHost));
    return std::pair{got, want};
  };
  {  // silu(−0)·1 = −0 everywhere
    const auto [got, want] = run();
    CHECK(want == 0.0f);
    CHECK(got == 0.0f);
    CHECK_FALSE(std::signbit(got));
  }
  g[1234] = bf16(std::numeric_limits<float>::quiet_NaN());
  gate = to_device(g);
  {
    const auto [got, want] = run();
    CHECK(std::isnan(want));
    CHECK(std::isnan(got));
  }
}

TEST_CASE("producer-kept amax: RMSNorm and SwiGLU kernels keep max |output| exactly, their outputs unchanged") {
  check_producer_amax_special();
  check_producer_amax<bf16>(4096, 600);  // 2.5 M elements: SwiGLU's grid at its 2048-block cap, several loops a thread
  // D: register-cached rows (64, 2048, 3000, 4096), the two-pass 4-wide form (10000), scalar (1001)
  for (const auto& [D, N] : {std::pair{64, 37}, std::pair{2048, 64}, std::pair{4096, 33}, std::pair{3000, 17},
                            std::pair{10000, 9}, std::pair{1001, 5}}) {
    check_producer_amax<bf16>(D, N);
    check_producer_amax<float>(D, N);
  }
}

// The strided SwiGLU kernels (the model's [gate | up] rows, ld 2H, and [d_gate | d_up] likewise):
// each output element is the contiguous kernels' bits on the same values (one kernel function, the
// index arithmetic only differs), on the 4-wide path (H % 4 == 0) and the scalar one (H odd), with
// the amax slots equal to launch_fp8_amax over the contiguous outputs.
template <class T>
void check_swiglu_strided(int H, int N) {
  namespace kern = hdpissa::llama::gpu::kern;
  using hdpissa::index_t;
  CAPTURE(H);
  CAPTURE(N);
  std::mt19937 rng(91u + H + N);
  const std::size_t n = std::size_t(N) * H;
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<T> g(n), u(n), da(n), gu(2 * n, T(7.0f));
  for (std::size_t i = 0; i < n; ++i) g[i] = T(nd(rng)), u[i] = T(nd(rng)), da[i] = T(nd(rng));
  for (int r = 0; r < N; ++r)
    for (int c = 0; c < H; ++c) {
      gu[std::size_t(r) * 2 * H + c] = g[std::size_t(r) * H + c];
      gu[std::size_t(r) * 2 * H + H + c] = u[std::size_t(r) * H + c];
    }
  auto dg = to_device(g), du = to_device(u), dda = to_device(da), dgu = to_device(gu);
  hdpissa::DeviceBuffer<T> act1(n), act2(n), dg1(n), du1(n), dgu2(2 * n);
  hdpissa::DeviceBuffer<float> slots(3), ref(3);
  HDPISSA_CUDA_CHECK(cudaMemset(slots.get(), 0, 3 * sizeof(float)));
  HDPISSA_CUDA_CHECK(cudaMemset(dgu2.get(), 0, 2 * n * sizeof(T)));
  kern::launch_swiglu_fwd<T>(nullptr, dg.get(), du.get(), act1.get(), std::int64_t(n));
  kern::launch_swiglu_fwd<T>(nullptr, dgu.get(), dgu.get() + H, 2 * H, act2.get(), N, H, slots.get());
  CHECK(bits(act1, n) == bits(act2, n));
  kern::launch_swiglu_bwd<T>(nullptr, dda.get(), dg.get(), du.get(), dg1.get(), du1.get(), std::int64_t(n));
  kern::launch_swiglu_bwd<T>(nullptr, dda.get(), dgu.get(), dgu.get() + H, 2 * H, dgu2.get(), dgu2.get() + H, 2 * H,
                             N, H, slots.get() + 1, slots.get() + 2);
  std::vector<T> h1(n), h2(2 * n), h3(n);
  HDPISSA_CUDA_CHECK(cudaMemcpy(h1.data(), dg1.get(), sizeof(T) * n, cudaMemcpyDeviceToHost));
  HDPISSA_CUDA_CHECK(cudaMemcpy(h3.data(), du1.get(), sizeof(T) * n, cudaMemcpyDeviceToHost));
  HDPISSA_CUDA_CHECK(cudaMemcpy(h2.data(), dgu2.get(), sizeof(T) * 2 * n, cudaMemcpyDeviceToHost));
  long wrong = 0;
  for (int r = 0; r < N; ++r)
    for (int c = 0; c < H; ++c) {
      const std::size_t at = std::size_t(r) * H + c, st = std::size_t(r) * 2 * H + c;
      wrong += std::memcmp(&h1[at], &h2[st], sizeof(T)) != 0;
      wrong += std::memcmp(&h3[at], &h2[st + H], sizeof(T)) != 0;
    }
  CHECK(wrong == 0);
  hdpissa::launch_fp8_amax<T>(nullptr, hdpissa::ConstMatrixView<T>(act1.get(), index_t(1), index_t(n), index_t(n)),
                              ref.get());
  hdpissa::launch_fp8_amax<T>(nullptr, hdpissa::ConstMatrixView<T>(dg1.get(), index_t(1), index_t(n), index_t(n)),
                              ref.get() + 1);
  hdpissa::launch_fp8_amax<T>(nullptr, hdpissa::ConstMatrixView<T>(du1.get(), index_t(1), index_t(n), index_t(n)),
                              ref.get() + 2);
  float got[3], want[3];
  HDPISSA_CUDA_CHECK(cudaMemcpy(got, slots.get(), sizeof(got), cudaMemcpyDeviceToHost));
  HDPISSA_CUDA_CHECK(cudaMemcpy(want, ref.get(), sizeof(want), cudaMemcpyDeviceToHost));
  for (int k = 0; k < 3; ++k) {
    CAPTURE(k);
    CHECK(want[k] > 0.0f);
    CHECK(got[k] == want[k]);
  }
}

TEST_CASE("SwiGLU over [gate | up] rows (ld 2H): the contiguous kernels' bits and amax") {
  for (const auto& [H, N] : {std::pair{172, 9}, std::pair{37, 5}, std::pair{5632, 3}}) {
    check_swiglu_strided<bf16>(H, N);
    check_swiglu_strided<float>(H, N);
  }
}

// The bf16 model with the fused kernels against the CPU model, next to the same model with the
// materialised (Gemm) attention: both see the same bf16 rounding of the linears; flash rounds P and
// dS as tensor-core operands where Gemm rounds them as stored matrices. Same bounds for both.
// Measured on an H200 (run 15): loss rel ≤ 6.5e-4 (flash) / 5.7e-4 (gemm); logits max|Δ|/max|z|
// 3.4e-2 / 2.9e-2; worst gW (q_proj / k_proj) 4.7e-2 / 4.7e-2 — this model's q/k weights are twice
// fan-in scale, so its attention rows are peaked and its logits larger than stories260K's.
TEST_CASE("bf16 CudaLlama with flash attention matches the CPU model (head_dim 64, GQA and MHA, padding)") {
  const ModelWeights w = small_hd64(21);
  const ModelWeights wr = rounded_to_bf16(w);
  const std::vector<Batch> batches = {make_batch(61, 150, {150, 97, 64}, 20, 31), make_batch(61, 70, {70, 1}, 0, 32)};
  const Tol tol{2e-3, 5e-2, 8e-2, 1e-1};
  compare_with_cpu<bf16>(w, wr, batches, 3, 150, tol, "hd64 bf16 flash", hdpissa::llama::gpu::Attention::Flash);
  compare_with_cpu<bf16>(w, wr, batches, 3, 150, tol, "hd64 bf16 gemm", hdpissa::llama::gpu::Attention::Gemm);
  // MHA (4/4): the model's other flash wiring — dK, dV as bf16 rows (flash::RowGrads), no group sums
  const ModelWeights m = small_hd64(22, 4);
  const ModelWeights mr = rounded_to_bf16(m);
  compare_with_cpu<bf16>(m, mr, batches, 3, 150, tol, "hd64 MHA bf16 flash", hdpissa::llama::gpu::Attention::Flash);
  compare_with_cpu<bf16>(m, mr, batches, 3, 150, tol, "hd64 MHA bf16 gemm", hdpissa::llama::gpu::Attention::Gemm);
}

TEST_CASE("CudaLlama attention selection: Auto picks flash for bf16 at head_dim 64, Flash refuses what it cannot run") {
  const ModelWeights w = small_hd64(3);
  {
    CudaLlama<bf16> m(w, 1, 16, nullptr, 1024, hdpissa::llama::gpu::Attention::Auto);
    CHECK(m.flash_attention());
    CudaLlama<float> f(w, 1, 16, nullptr, 1024, hdpissa::llama::gpu::Attention::Auto);
    CHECK_FALSE(f.flash_attention());  // Auto falls back to Gemm where flash cannot run
  }
  bool thrown = false;
  try {
    CudaLlama<float> m(w, 1, 16, nullptr, 1024, hdpissa::llama::gpu::Attention::Flash);
  } catch (const LlamaError& e) {
    thrown = true;
    CHECK(std::string(e.what()).find("needs bf16 storage, head_dim 64 or 128") != std::string::npos);
    CHECK(std::string(e.what()).find("found fp32, head_dim 64") != std::string::npos);
  }
  CHECK(thrown);
  thrown = false;
  try {
    CudaLlama<bf16> m(tiny_random(3), 1, 16, nullptr, 1024, hdpissa::llama::gpu::Attention::Flash);
  } catch (const LlamaError& e) {
    thrown = true;
    CHECK(std::string(e.what()).find("found bf16, head_dim 4") != std::string::npos);
  }
  CHECK(thrown);
  CudaLlama<bf16> g(w, 1, 16, nullptr, 1024, hdpissa::llama::gpu::Attention::Gemm);
  CHECK_FALSE(g.flash_attention());
}

// ---- model families: Qwen2 q/k/v biases and sliding-window attention (Mistral; Qwen2 layers >=
// max_window_layers), GPU vs the CPU model (itself checked against a naive double-precision model,
// finite differences and transformers in tests/llama/test_model_families.cpp).
namespace {
/// `base` with random q/k/v biases (qkv_bias) and/or a sliding window on layers >= from_layer.
ModelWeights with_family(const ModelWeights& base, bool bias, int window, int from_layer, unsigned seed, float sd) {
  ModelWeights w = base;
  w.config.qkv_bias = bias;
  w.config.model_type = bias ? "qwen2" : window > 0 ? "mistral" : "llama";
  w.config.sliding_window = window;
  w.config.window_from_layer = from_layer;
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, sd);
  if (bias)
    for (auto& l : w.layers) {
      l.bq = Vector(w.config.q_dim());
      l.bk = Vector(w.config.kv_dim());
      l.bv = Vector(w.config.kv_dim());
      for (Vector* v : {&l.bq, &l.bk, &l.bv})
        for (Eigen::Index i = 0; i < v->size(); ++i) (*v)(i) = n(rng);
    }
  return w;
}
}  // namespace

TEST_CASE("model families: fp32 CudaLlama matches the CPU model with q/k/v biases and sliding windows") {
  const std::vector<Batch> batches = {make_batch(37, 7, {7, 5, 3}, 3, 7), make_batch(37, 12, {12, 12}, 4, 8)};
  const ModelWeights base = tiny_random(11);
  compare_with_cpu<float>(with_family(base, true, 0, 0, 1, 0.35f), with_family(base, true, 0, 0, 1, 0.35f), batches, 3,
                          12, {1e-5, 2e-5, 2e-5, 2e-5}, "tiny fp32 qwen2 bias");
  for (int window : {1, 3, 5}) {
    const ModelWeights w = with_family(base, false, window, 0, 2, 0.35f);
    compare_with_cpu<float>(w, w, batches, 3, 12, {1e-5, 2e-5, 2e-5, 2e-5}, cat("tiny fp32 window ", window));
  }
  const ModelWeights both = with_family(base, true, 4, 1, 3, 0.35f);  // bias + window on layer 1 only
  compare_with_cpu<float>(both, both, batches, 3, 12, {1e-5, 2e-5, 2e-5, 2e-5}, "tiny fp32 bias + window from layer 1");
}

TEST_CASE("model families: bf16 CudaLlama matches the CPU model with q/k/v biases and sliding windows") {
  const std::vector<Batch> batches = {make_batch(37, 7, {7, 5, 3}, 3, 7), make_batch(37, 12, {12, 12}, 4, 8)};
  const ModelWeights w = with_family(tiny_random(11), true, 3, 0, 4, 0.35f);
  compare_with_cpu<bf16>(w, rounded_to_bf16(w), batches, 3, 12, {1e-2, 5e-2, 1e-1, 2e-1}, "tiny bf16 bias + window");
}

// head_dim 64 (the flash shape): biases and sliding windows on the flash and Gemm paths. Same
// bounds as the llama hd64 case above.
TEST_CASE("model families: bf16 hd64 with biases and sliding windows, flash and gemm attention") {
  const ModelWeights base = small_hd64(21);
  const std::vector<Batch> batches = {make_batch(61, 150, {150, 97, 64}, 20, 31), make_batch(61, 70, {70, 1}, 0, 32)};
  const Tol tol{2e-3, 5e-2, 8e-2, 1e-1};
  const ModelWeights wb = with_family(base, true, 0, 0, 5, 0.5f);
  compare_with_cpu<bf16>(wb, rounded_to_bf16(wb), batches, 3, 150, tol, "hd64 bf16 bias flash",
                         hdpissa::llama::gpu::Attention::Flash);
  compare_with_cpu<bf16>(wb, rounded_to_bf16(wb), batches, 3, 150, tol, "hd64 bf16 bias gemm",
                         hdpissa::llama::gpu::Attention::Gemm);
  const ModelWeights ww = with_family(base, true, 40, 0, 6, 0.5f);  // window 40 < T = 150
  compare_with_cpu<bf16>(ww, rounded_to_bf16(ww), batches, 3, 150, tol, "hd64 bf16 bias + window 40 flash",
                         hdpissa::llama::gpu::Attention::Flash);
  compare_with_cpu<bf16>(ww, rounded_to_bf16(ww), batches, 3, 150, tol, "hd64 bf16 bias + window 40 gemm",
                         hdpissa::llama::gpu::Attention::Gemm);
  const ModelWeights wl = with_family(base, false, 70, 1, 7, 0.5f);  // window on layer 1 only
  compare_with_cpu<bf16>(wl, rounded_to_bf16(wl), batches, 3, 150, tol, "hd64 bf16 window 70 from layer 1 flash",
                         hdpissa::llama::gpu::Attention::Flash);
  CudaLlama<bf16> autom(ww, 1, 150, nullptr, 1024, hdpissa::llama::gpu::Attention::Auto);
  CHECK(autom.flash_attention());  // flash implements the window
  ModelWeights missing = wb;  // config says biases, the weights lack one: named
  missing.layers[1].bk = Vector();
  bool thrown = false;
  try {
    CudaLlama<bf16> m(missing, 1, 16, nullptr, 1024, hdpissa::llama::gpu::Attention::Gemm);
  } catch (const LlamaError& e) {
    thrown = true;
    CHECK(std::string(e.what()).find("model.layers.1.self_attn.k_proj.bias") != std::string::npos);
  }
  CHECK(thrown);
}

int main(int argc, char** argv) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("SKIP: no CUDA device (%s); GPU tests not run\n",
                e != cudaSuccess ? cudaGetErrorString(e) : "device count is 0");
    return 77;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}

TEST_CASE("Fp8Linears: q|k|v and gate|up quantise their shared input once, bit-identical to quantising each") {
  // Two layers' q, k, v, o, gate, up (64 x 64 each) on random bf16 data: the same calls with and
  // without set_input_ids give bit-identical outputs; the reuse counts follow the groups; a new
  // pass that writes new data into the same X buffer re-quantises (its first member always does).
  using hdpissa::llama::gpu::Fp8Linears;
  using hdpissa::index_t;
  const index_t D = 64, N = 32;
  hdpissa::CudaBackend<bf16> b;
  std::vector<LinearId> ids;
  std::vector<std::pair<index_t, index_t>> shapes;
  std::vector<std::string> names;
  for (int l = 0; l < 2; ++l)
    for (Module m : {Module::q, Module::k, Module::v, Module::o, Module::gate, Module::up}) {
      ids.push_back({l, m});
      shapes.push_back({D, D});
      names.push_back(LinearId{l, m}.hf_name());
    }
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto rand_up = [&](index_t r, index_t c, float sd) {
    auto M = b.make_matrix(r, c);
    std::vector<bf16> h(std::size_t(r * c));
    for (auto& x : h) x = __float2bfloat16(nd(rng) * sd);
    b.upload(h.data(), M.view());
    return M;
  };
  std::vector<decltype(b.make_matrix(1, 1))> W;
  for (std::size_t i = 0; i < ids.size(); ++i) W.push_back(rand_up(D, D, 0.1f));
  auto X = rand_up(N, D, 1.0f), X2 = rand_up(N, D, 3.0f);
  auto run = [&](bool share) {
    Fp8Linears f(b, shapes, names);
    if (share) f.set_input_ids(ids);
    f.reserve(N);
    for (std::size_t i = 0; i < ids.size(); ++i) {
      f.set_bf16_weight(i, W[i].cview());
      f.quantize_weight(i, W[i].cview());
    }
    std::vector<std::vector<bf16>> out;
    auto Y = b.make_matrix(N, D);
    auto call = [&](std::size_t i) {
      f.forward(i, X.cview(), Y.view(), 0.0f);
      std::vector<bf16> h(std::size_t(N * D));
      b.download(Y.cview(), h.data());
      out.push_back(h);
    };
    for (std::size_t i = 0; i < ids.size(); ++i) call(i);  // pass 1 (both layers on one X buffer)
    // pass 2: new content in the same buffer, layer 0's k first (k after another layer's up: must quantise)
    b.copy(X2.cview(), X.view());
    call(1), call(2), call(0), call(1);
    // q on X, then k on another buffer (X2) and on fewer rows of X: each must quantise
    f.forward(0, X.cview(), Y.view(), 0.0f);
    f.forward(1, X2.cview(), Y.view(), 0.0f);
    f.forward(2, hdpissa::ConstMatrixView<bf16>{X.data(), N / 2, D, D}, hdpissa::MatrixView<bf16>{Y.data(), N / 2, D, D}, 0.0f);
    // the FP8 GEMMs really ran (a bf16 fallback never reads X8 and would pass the comparison trivially)
    CHECK(f.fallback_problems() == 0);
    return std::tuple{out, f.x_quantisations(), f.x_reuses()};
  };
  const auto [plain, q0, r0] = run(false);
  const auto [shared, q1, r1] = run(true);
  const auto [plain2, q2, r2] = run(false);  // a second unshared instance: the GEMMs' own reproducibility
  CHECK(r0 == 0);
  CHECK(q0 == 16 + 3);
  // pass 1: per layer q quantises, k, v reuse, o quantises, gate quantises, up reuses -> 3 + 3 each;
  // pass 2: k (after layer 1's up) quantises, v reuses, q quantises, k reuses; then q, k on another
  // buffer, v on fewer rows: 3 quantisations
  CHECK(q1 == 6 + 2 + 3);
  CHECK(r1 == 6 + 2);
  REQUIRE(plain.size() == shared.size());
  REQUIRE(plain.size() == plain2.size());
  // Session 12 on an H200: every shared output differed from the unshared one, the first call too
  // (which quantises in both), so the reuse alone cannot explain it. If two unshared instances
  // already differ, the FP8 GEMM is not bit-reproducible between instances, and the reuse is
  // held to that variation (relative Frobenius difference); otherwise it must be bit-identical.
  auto rel = [](const std::vector<bf16>& a, const std::vector<bf16>& b) {
    double num = 0, den = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
      const double x = __bfloat162float(a[i]), y = __bfloat162float(b[i]);
      num += (x - y) * (x - y);
      den += x * x;
    }
    return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
  };
  for (std::size_t c = 0; c < plain.size(); ++c) {
    INFO("call " << c);
    const bool reproducible = std::memcmp(plain[c].data(), plain2[c].data(), plain[c].size() * sizeof(bf16)) == 0;
    const double d_plain = rel(plain[c], plain2[c]), d_shared = rel(plain[c], shared[c]);
    MESSAGE("call ", c, ": unshared instances bit-identical ", reproducible, ", rel diff unshared ", d_plain,
            ", shared vs unshared ", d_shared);
    if (reproducible)
      CHECK(std::memcmp(plain[c].data(), shared[c].data(), plain[c].size() * sizeof(bf16)) == 0);
    else
      CHECK(d_shared <= 2.0 * d_plain + 1e-6);
  }
}

TEST_CASE("PinnedUploader: the same bits as the device-side conversion (ties, subnormals, inf; chunked, threaded)") {
  // The start-up upload (host threads round fp32 to bf16 into pinned chunks) against upload_as
  // (fp32 to the device, converted there): every bit equal, over arrays that span several chunks,
  // with the host fill split across threads (n ≥ 2^20), and special values at the front.
  using hdpissa::llama::gpu::detail_cuda::PinnedUploader;
  using hdpissa::llama::gpu::detail_cuda::upload_as;
  const std::int64_t n = (std::int64_t(1) << 21) + 12345;
  std::vector<float> h(static_cast<std::size_t>(n));
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] = nd(rng) * std::ldexp(1.0f, int(i % 61) - 30);
  const float special[] = {1.0f + 0x1p-8f,  1.0f + 0x1p-7f + 0x1p-8f, -(1.0f + 0x1p-8f), 1e-40f, -1e-40f, 0x1p-130f,
                           INFINITY,        -INFINITY,                 -0.0f,              0.0f,   3.4028235e38f, 0x1.fffffep127f};
  std::copy(std::begin(special), std::end(special), h.begin());
  hdpissa::CudaStream stream;
  hdpissa::DeviceBuffer<bf16> a(static_cast<std::size_t>(n)), b(static_cast<std::size_t>(n));
  hdpissa::DeviceBuffer<float> stage(static_cast<std::size_t>(n));
  {
    PinnedUploader<bf16> up(stream.get(), std::int64_t(1) << 19);  // 4+ chunks per array
    up.upload(h.data(), a.get(), n / 3);
    up.upload(h.data() + n / 3, a.get() + n / 3, n - n / 3);
    up.finish();
  }
  upload_as<bf16>(h.data(), b.get(), n, stage.get(), n / 7 + 1, stream.get());  // through the stage in 7 chunks
  std::vector<bf16> ha(static_cast<std::size_t>(n)), hb(static_cast<std::size_t>(n));
  REQUIRE(cudaMemcpy(ha.data(), a.get(), ha.size() * sizeof(bf16), cudaMemcpyDeviceToHost) == cudaSuccess);
  REQUIRE(cudaMemcpy(hb.data(), b.get(), hb.size() * sizeof(bf16), cudaMemcpyDeviceToHost) == cudaSuccess);
  std::size_t diff = 0, first = ha.size();
  for (std::size_t i = 0; i < ha.size(); ++i)
    if (std::memcmp(&ha[i], &hb[i], sizeof(bf16)) != 0) {
      ++diff;
      first = std::min(first, i);
    }
  INFO("first difference at " << first);
  CHECK(diff == 0);
}

TEST_CASE("PinnedUploader::upload_stored: BF16 / F16 / F32 bytes (unaligned) give the bits of converting to fp32 first") {
  // The stored-linear upload (a mapped checkpoint's values in their own dtype, at any alignment)
  // against upload() of the same values converted to fp32 on the host (exact): equal bits, into
  // bf16 and fp32 arrays, over several chunks with a threaded fill. Every finite value, ±inf and
  // subnormals; NaN payloads are excluded (a BF16 → bf16 copy keeps them, the conversion quietens
  // them to 0x7fff: a checkpoint holding NaNs is broken either way). The F32 case checks the
  // unaligned reads only (upload() is upload_stored(F32)).
  using hdpissa::llama::gpu::detail_cuda::PinnedUploader;
  const std::int64_t n = (std::int64_t(1) << 21) + 777;
  std::mt19937 rng(9);
  std::uniform_int_distribution<int> bits(0, 0xffff);
  std::vector<std::uint16_t> h16(static_cast<std::size_t>(n));
  for (auto& v : h16) {
    v = static_cast<std::uint16_t>(bits(rng));
    if ((v & 0x7fff) > 0x7f80) v &= 0xff7f;  // no NaN: a bf16 → bf16 copy keeps its payload, the RNE path quietens it
  }
  for (const DType d : {DType::BF16, DType::F16, DType::F32}) {
    const std::string dname = dtype_name(d);
    INFO("stored dtype " << dname);
    std::vector<float> f32(static_cast<std::size_t>(n));
    for (std::size_t i = 0; i < f32.size(); ++i)
      f32[i] = d == DType::F16 ? f16_to_float(h16[i]) : bf16_to_float(h16[i]) * (d == DType::F32 ? 1.0009765625f : 1.0f);
    // the stored bytes, one byte off alignment
    std::vector<char> raw(static_cast<std::size_t>(n) * dtype_size(d) + 1);
    const char* src = raw.data() + 1;
    if (d == DType::F32) std::memcpy(raw.data() + 1, f32.data(), std::size_t(n) * 4);
    else std::memcpy(raw.data() + 1, h16.data(), std::size_t(n) * 2);
    hdpissa::CudaStream stream;
    auto both = [&](auto tag) {
      using T = decltype(tag);
      hdpissa::DeviceBuffer<T> a(static_cast<std::size_t>(n)), b(static_cast<std::size_t>(n));
      {
        PinnedUploader<T> up(stream.get(), std::int64_t(1) << 19);
        up.upload_stored(d, src, a.get(), n);
        up.upload(f32.data(), b.get(), n);
        up.finish();
      }
      std::vector<T> ha(static_cast<std::size_t>(n)), hb(static_cast<std::size_t>(n));
      REQUIRE(cudaMemcpy(ha.data(), a.get(), ha.size() * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
      REQUIRE(cudaMemcpy(hb.data(), b.get(), hb.size() * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
      CHECK(std::memcmp(ha.data(), hb.data(), ha.size() * sizeof(T)) == 0);
    };
    both(bf16{});
    both(float{});
  }
  hdpissa::CudaStream stream;
  hdpissa::DeviceBuffer<bf16> x(4);
  PinnedUploader<bf16> up(stream.get(), 4);
  CHECK_THROWS_WITH_AS(up.upload_stored(DType::I32, reinterpret_cast<const char*>(h16.data()), x.get(), 2),
                       doctest::Contains("expected F32, BF16 or F16 values, found I32"), LlamaError);
}

TEST_CASE("CudaLlama from stored linears: the device weights and logits of the full load (F32 / BF16 / F16 checkpoints)") {
  // The GPU paths load HF checkpoints with LoadOptions::keep_linears_stored: the model uploads each
  // target linear from the mapped file. Against the model built from the fully loaded (fp32 host)
  // weights of the same checkpoint: every linear bit-identical after download, and the logits of
  // one batch bit-identical, for fp32 and bf16 models.
  if (!have_stories()) {
    MESSAGE("SKIPPED: no stories260K-hf");
    return;
  }
  const ModelWeights base = load_checkpoint(stories_dir());
  const fs::path dir = fs::temp_directory_path() / cat("hdpissa-stored-", ::getpid());
  fs::remove_all(dir);
  const Batch batch = make_batch(base.config.vocab_size, 24, {24, 17}, 4, 3);
  for (const DType d : {DType::F32, DType::BF16, DType::F16}) {
    const std::string dname = dtype_name(d);
    INFO("checkpoint dtype " << dname);
    SaveOptions so;
    so.dtype = d;
    save_hf_checkpoint(dir / dname, base, so);
    const ModelWeights full = load_checkpoint(dir / dname);
    LoadOptions lo;
    lo.keep_linears_stored = true;
    const ModelWeights st = load_checkpoint(dir / dname, lo);
    REQUIRE_FALSE(st.holds_linears());
    auto compare = [&](auto tag) {
      using T = decltype(tag);
      hdpissa::CudaStream stream;
      CudaLlama<T> a(full, batch.batch_size, batch.seq_len, stream.get()), b(st, batch.batch_size, batch.seq_len, stream.get());
      long differ = 0;
      for (int l = 0; l < base.config.n_layers; ++l)
        for (int m = 0; m < kModulesPerLayer; ++m) {
          const LinearId id{l, static_cast<Module>(m)};
          Matrix x, y;
          a.download_linear(id, x);
          b.download_linear(id, y);
          differ += !(x == y);
        }
      CHECK(differ == 0);
      hdpissa::CudaBackend<T> be(stream.get(), {});
      CudaHooks<T> ha(be), hb(be);
      std::vector<float> la, lb;
      a.forward_logits(batch, ha, la);
      b.forward_logits(batch, hb, lb);
      REQUIRE(la.size() == lb.size());
      CHECK(std::memcmp(la.data(), lb.data(), la.size() * sizeof(float)) == 0);
    };
    compare(float{});
    compare(bf16{});
  }
  fs::remove_all(dir);
}

// ------------------------------------------------------------------------------------------------
// Memory: the embedding stored in bf16 when that is exact, and the ledger's parts against the
// buffers' sizes.

namespace {
std::int64_t ledger_bytes(const std::string& part) {
  for (const auto& p : hdpissa::memory::Ledger::instance().parts())
    if (p.name == part) return p.bytes;
  return 0;
}
}  // namespace

TEST_CASE("CudaLlama bf16: a bf16-exact embedding is stored in bf16, gathers the same bits, and the ledger counts it") {
  ModelWeights w = rounded_to_bf16(tiny_random(5));
  Matrix& E = w.embed;
  for (Eigen::Index i = 0; i < E.size(); ++i) E.data()[i] = __bfloat162float(__float2bfloat16_rn(E.data()[i]));
  ModelWeights w32 = w;  // the same, but token V−1's embedding row is not a bf16 value: fp32 storage
  const int V = w.config.vocab_size, D = w.config.dim, L = w.config.n_layers;
  w32.embed(V - 1, 0) = std::nextafter(w32.embed(V - 1, 0), 10.0f);
  Batch b = make_batch(V, 12, {12, 9}, 3, 4);
  for (auto& t : b.input_ids) t = t % (V - 1);  // token V−1 (the only difference) never appears
  std::int64_t lin = 0;
  for (int m = 0; m < kModulesPerLayer; ++m) {
    const auto [r, c] = linear_shape(w.config, static_cast<Module>(m));
    lin += std::int64_t(r) * c * L;
  }
  const std::int64_t lin0 = ledger_bytes("model.linears"), emb0 = ledger_bytes("model.embedding+classifier");
  std::vector<float> l16, l32;
  {
    CudaLlama<bf16> m16(w, 2, 12, nullptr);
    CHECK(m16.embedding_in_compute_type());
    CHECK(ledger_bytes("model.linears") - lin0 == lin * 2);
    CHECK(ledger_bytes("model.embedding+classifier") - emb0 == std::int64_t(V) * D * (2 + 2));  // untied: bf16 + bf16
    hdpissa::CudaBackend<bf16> be(m16.stream(), {});
    CudaHooks<bf16> plain(be);
    m16.forward_logits(b, plain, l16);
  }
  CHECK(ledger_bytes("model.linears") == lin0);  // given back with the model
  CHECK(ledger_bytes("model.embedding+classifier") == emb0);
  {
    CudaLlama<bf16> m32(w32, 2, 12, nullptr);
    CHECK_FALSE(m32.embedding_in_compute_type());
    CHECK(ledger_bytes("model.embedding+classifier") - emb0 == std::int64_t(V) * D * (4 + 2));  // fp32 + bf16
    hdpissa::CudaBackend<bf16> be(m32.stream(), {});
    CudaHooks<bf16> plain(be);
    m32.forward_logits(b, plain, l32);
  }
  REQUIRE(l16.size() == l32.size());
  CHECK(std::memcmp(l16.data(), l32.data(), l16.size() * sizeof(float)) == 0);  // bit for bit
  SUBCASE("tied and bf16-exact: the classifier is the bf16 embedding itself") {
    ModelWeights t = w;
    t.config.tie_embeddings = true;
    t.lm_head = Matrix();
    CudaLlama<bf16> m(t, 1, 4, nullptr);
    CHECK(ledger_bytes("model.embedding+classifier") - emb0 == std::int64_t(V) * D * 2);
  }
}

TEST_CASE("CudaLlama: default loss chunk within 192 MiB; the bf16 staging is chunked (a linear larger than the stage)") {
  CHECK(CudaLlama<bf16>::default_loss_chunk_rows(32000) == 1024);   // 32000 · 6 B · 1024 = 187.5 MiB
  CHECK(CudaLlama<bf16>::default_loss_chunk_rows(128256) == 256);   // 128256 · 6 B · 256 = 187.9 MiB
  CHECK(CudaLlama<bf16>::default_loss_chunk_rows(37) == 1024);
  CHECK(CudaLlama<float>::default_loss_chunk_rows(32000) == 1024);  // fp32: the gradient is written in place
  CHECK(CudaLlama<float>::default_loss_chunk_rows(128256) == 384);  // 128256 · 4 B · 384 = 187.9 MiB
  // upload / download through the chunked stage give the bits of the one-shot conversion.
  const ModelWeights w = tiny_random(9);
  CudaLlama<bf16> m(w, 1, 4, nullptr);
  m.set_staging_elements(7);  // 384 elements in 55 chunks (the last one short)
  const LinearId id{1, Module::down};
  Matrix x = w.linear(id) * 3.0f, back;
  m.upload_linear(id, x);
  m.download_linear(id, back);
  for (Eigen::Index i = 0; i < x.size(); ++i)
    CHECK(back.data()[i] == __bfloat162float(__float2bfloat16_rn(x.data()[i])));
}

/// HD-PiSSA's fused adapter gradients (adapter_grads.cuh) against a float64 reference and against
/// the cuBLAS path they replace (MutedLinear<CudaBackend<bf16>>::backward, bf16 gradients added into
/// fp32): gA += α (dY B)ᵀ X, gB += α dYᵀ (X Aᵀ), accumulated onto non-zero fp32 gradients. Shapes
/// with one and several token slices, partial 64-column strips, token counts off every tile size,
/// and X / dY rows wider than their columns with NaN in the spare columns.
TEST_CASE("fused adapter gradients: float64 reference, no worse than the cuBLAS path, deterministic") {
  using hdpissa::llama::gpu::FusedAdapterGrads;
  using CVb = hdpissa::ConstMatrixView<bf16>;
  struct Shape {
    int N, in, out, pad;  // pad: X and dY rows `pad` elements wider than their columns, filled with NaN
  };
  for (const Shape sh : {Shape{4096, 2048, 256, 0}, Shape{1000, 2048, 5632, 0}, Shape{37, 64, 72, 8},
                         Shape{513, 136, 48, 16}, Shape{1, 8, 8, 0}}) {
    CAPTURE(sh.N);
    CAPTURE(sh.in);
    CAPTURE(sh.out);
    CAPTURE(sh.pad);
    const int N = sh.N, in = sh.in, out = sh.out, r = 16, ldx = in + sh.pad, ldy = out + sh.pad;
    const float alpha = 2.0f;
    std::mt19937 rng(11u + N + in + out);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    auto hostb = [&](std::size_t n, float sd) {
      std::vector<bf16> h(n);
      for (auto& x : h) x = bf16(sd * nd(rng));
      return h;
    };
    auto X = hostb(std::size_t(N) * ldx, 1.0f), dY = hostb(std::size_t(N) * ldy, 1.0f);
    for (int n = 0; n < N; ++n) {  // the stride's spare columns: NaN, which must not reach a gradient
      for (int i = in; i < ldx; ++i) X[std::size_t(n) * ldx + i] = bf16(std::nanf(""));
      for (int o = out; o < ldy; ++o) dY[std::size_t(n) * ldy + o] = bf16(std::nanf(""));
    }
    const auto A = hostb(std::size_t(r) * in, 0.1f), B = hostb(std::size_t(out) * r, 0.1f);
    std::vector<float> gA0(std::size_t(r) * in), gB0(std::size_t(out) * r);
    for (auto& x : gA0) x = nd(rng);
    for (auto& x : gB0) x = nd(rng);
    auto dX = to_device(X), ddY = to_device(dY), dA = to_device(A), dB = to_device(B);
    hdpissa::DeviceBuffer<bf16> dBt(std::size_t(r) * out);
    FusedAdapterGrads::transpose_into(nullptr, CVb(dB.get(), out, r, r), hdpissa::MatrixView<bf16>(dBt.get(), r, out, out));
    const CVb Xv(dX.get(), N, in, ldx), dYv(ddY.get(), N, out, ldy), Av(dA.get(), r, in, in), Btv(dBt.get(), r, out, out);

    // float64 reference of the increments
    std::vector<double> t(std::size_t(N) * r, 0.0), u(std::size_t(N) * r, 0.0);
    for (int n = 0; n < N; ++n)
      for (int j = 0; j < r; ++j) {
        double st = 0, su = 0;
        for (int o = 0; o < out; ++o) st += double(float(dY[std::size_t(n) * ldy + o])) * double(float(B[std::size_t(o) * r + j]));
        for (int i = 0; i < in; ++i) su += double(float(X[std::size_t(n) * ldx + i])) * double(float(A[std::size_t(j) * in + i]));
        t[std::size_t(n) * r + j] = st;
        u[std::size_t(n) * r + j] = su;
      }
    std::vector<double> incA(std::size_t(r) * in, 0.0), incB(std::size_t(out) * r, 0.0);
    for (int n = 0; n < N; ++n) {
      for (int j = 0; j < r; ++j) {
        const double tj = t[std::size_t(n) * r + j];
        for (int i = 0; i < in; ++i) incA[std::size_t(j) * in + i] += alpha * tj * double(float(X[std::size_t(n) * ldx + i]));
      }
      for (int o = 0; o < out; ++o) {
        const double y = double(float(dY[std::size_t(n) * ldy + o]));
        for (int j = 0; j < r; ++j) incB[std::size_t(o) * r + j] += alpha * y * u[std::size_t(n) * r + j];
      }
    }
    // normalised error of (g − g0) against the increment: max |Δ| / max |inc|
    auto err = [](const std::vector<float>& g, const std::vector<float>& g0, const std::vector<double>& inc) {
      double worst = 0, mag = 0;
      for (std::size_t k = 0; k < inc.size(); ++k) {
        worst = std::max(worst, std::abs(double(g[k]) - double(g0[k]) - inc[k]));
        mag = std::max(mag, std::abs(inc[k]));
      }
      return worst / (mag + 1e-30);
    };
    auto download = [](const hdpissa::DeviceBuffer<float>& d, std::size_t n) {
      std::vector<float> h(n);
      HDPISSA_CUDA_CHECK(cudaDeviceSynchronize());
      HDPISSA_CUDA_CHECK(cudaMemcpy(h.data(), d.get(), sizeof(float) * n, cudaMemcpyDeviceToHost));
      return h;
    };

    // the fused kernels, twice from the same start: the same bits (the slice partials' order is fixed)
    FusedAdapterGrads ag;
    std::vector<float> fa[2], fb[2];
    for (int rep = 0; rep < 2; ++rep) {
      auto gA = to_device(gA0), gB = to_device(gB0);
      const hdpissa::MatrixView<float> gAv(gA.get(), r, in, in), gBv(gB.get(), out, r, r);
      REQUIRE(FusedAdapterGrads::usable(Xv, dYv, Av, Btv, gAv, gBv));
      ag.run(nullptr, Xv, dYv, Av, Btv, alpha, gAv, gBv);
      fa[rep] = download(gA, gA0.size());
      fb[rep] = download(gB, gB0.size());
    }
    CHECK(std::all_of(fa[0].begin(), fa[0].end(), [](float v) { return std::isfinite(v); }));
    CHECK(std::all_of(fb[0].begin(), fb[0].end(), [](float v) { return std::isfinite(v); }));
    CHECK(std::memcmp(fa[0].data(), fa[1].data(), sizeof(float) * fa[0].size()) == 0);
    CHECK(std::memcmp(fb[0].data(), fb[1].data(), sizeof(float) * fb[0].size()) == 0);

    // the cuBLAS path: MutedLinear's four GEMMs into bf16, then added into fp32
    hdpissa::CudaBackend<bf16> be(nullptr, {});
    hdpissa::MutedLinear<hdpissa::CudaBackend<bf16>> ml(be, alpha);
    hdpissa::DeviceBuffer<bf16> ga16(gA0.size()), gb16(gB0.size());
    ml.backward(CVb(nullptr, out, in, in), Av, CVb(dB.get(), out, r, r), Xv, dYv, hdpissa::MatrixView<bf16>{},
                hdpissa::MatrixView<bf16>(ga16.get(), r, in, in), hdpissa::MatrixView<bf16>(gb16.get(), out, r, r), false);
    std::vector<bf16> ha(gA0.size()), hb(gB0.size());
    HDPISSA_CUDA_CHECK(cudaDeviceSynchronize());
    HDPISSA_CUDA_CHECK(cudaMemcpy(ha.data(), ga16.get(), sizeof(bf16) * ha.size(), cudaMemcpyDeviceToHost));
    HDPISSA_CUDA_CHECK(cudaMemcpy(hb.data(), gb16.get(), sizeof(bf16) * hb.size(), cudaMemcpyDeviceToHost));
    std::vector<float> ca(gA0), cbv(gB0);
    for (std::size_t k = 0; k < ca.size(); ++k) ca[k] += float(ha[k]);
    for (std::size_t k = 0; k < cbv.size(); ++k) cbv[k] += float(hb[k]);

    const double ea = err(fa[0], gA0, incA), eb = err(fb[0], gB0, incB);
    const double ca_err = err(ca, gA0, incA), cb_err = err(cbv, gB0, incB);
    MESSAGE("fused adapter grads N ", N, " in ", in, " out ", out, ": gA err ", ea, " (cuBLAS path ", ca_err, "), gB err ",
            eb, " (cuBLAS path ", cb_err, ")");
    // t and u are rounded to bf16 once (as on the cuBLAS path): ≲ 2^-8 of the largest increment
    CHECK(ea <= 8e-3);
    CHECK(eb <= 8e-3);
    CHECK(ea <= 1.25 * ca_err + 1e-4);
    CHECK(eb <= 1.25 * cb_err + 1e-4);
  }
  SUBCASE("operands the kernels do not take are refused (the caller then runs MutedLinear)") {
    hdpissa::DeviceBuffer<bf16> x(64 * 24), a(16 * 24), bt(16 * 24);
    hdpissa::DeviceBuffer<float> ga(16 * 24), gb(24 * 16);
    const CVb X(x.get(), 64, 24, 24), A(a.get(), 16, 24, 24), Bt(bt.get(), 16, 24, 24);
    const hdpissa::MatrixView<float> gA(ga.get(), 16, 24, 24), gB(gb.get(), 24, 16, 16);
    CHECK(FusedAdapterGrads::usable(X, X, A, Bt, gA, gB));
    CHECK_FALSE(FusedAdapterGrads::usable(CVb(x.get(), 64, 20, 20), X, A, Bt, gA, gB));  // width not a multiple of 8
    CHECK_FALSE(FusedAdapterGrads::usable(CVb(x.get() + 1, 64, 24, 24), X, A, Bt, gA, gB));  // misaligned rows
    CHECK_FALSE(FusedAdapterGrads::usable(X, X, CVb(a.get(), 8, 24, 24), Bt, gA, gB));  // rank 8
  }
}

namespace {
// One thread spins for `cycles` clock cycles, then sets *flag (the side stream's "adapter gradients").
__global__ void side_spin_then_set(int* flag, long long cycles) {
  const long long t0 = clock64();
  while (clock64() - t0 < cycles) {
  }
  *reinterpret_cast<volatile int*>(flag) = 1;
}
// The model's stream reads the flag (what a rewrite of the side's inputs would have to wait for).
__global__ void main_read_flag(const int* flag, int* out) { *out = *reinterpret_cast<const volatile int*>(flag); }
}  // namespace

// The lagged join of the adapters' second stream (AdapterSideStream, docs/trainer.md "The lagged
// join"): side work forked before a join_lagged() must be complete when the model's stream passes
// the NEXT join_lagged() (and any join()). The side work here spins for ≈ 20 ms before it writes its
// flag, so a missing wait shows as a 0 read on the model's stream; with the waits the reads are 1 on
// every run (no timing can make a correct join fail).
TEST_CASE("AdapterSideStream: join_lagged() waits for the work forked before the previous call, join() for all") {
  const long long cycles = 40'000'000;  // ≈ 20 ms at 2 GHz
  hdpissa::CudaStream main_stream;
  const cudaStream_t ms = main_stream.get();
  gpu::AdapterSideStream side;
  const cudaStream_t ss = side.backend().stream();
  hdpissa::DeviceBuffer<int> d(8);
  HDPISSA_CUDA_CHECK(cudaMemsetAsync(d.get(), 0, 8 * sizeof(int), ms));
  HDPISSA_CUDA_CHECK(cudaStreamSynchronize(ms));
  int* flag = d.get();
  int* out = d.get() + 4;
  // 1. fork, side work, lagged join (marks it), more side-free model work, lagged join (waits): read
  side.fork(ms);
  side_spin_then_set<<<1, 1, 0, ss>>>(flag + 0, cycles);
  side.join_lagged(ms);
  side.join_lagged(ms);
  main_read_flag<<<1, 1, 0, ms>>>(flag + 0, out + 0);
  // 2. a lagged mark, then a full join: everything forked so far
  side.fork(ms);
  side_spin_then_set<<<1, 1, 0, ss>>>(flag + 1, cycles);
  side.join_lagged(ms);
  side.fork(ms);
  side_spin_then_set<<<1, 1, 0, ss>>>(flag + 2, cycles);
  side.join(ms);
  main_read_flag<<<1, 1, 0, ms>>>(flag + 1, out + 1);
  main_read_flag<<<1, 1, 0, ms>>>(flag + 2, out + 2);
  // 3. the pattern of the model's backward: fork per half-layer, a lagged join before each norm
  //    backward; the join after the second half-layer covers the first half-layer's work
  side.fork(ms);
  side_spin_then_set<<<1, 1, 0, ss>>>(flag + 3, cycles);
  side.join_lagged(ms);  // norm backward 1: nothing earlier to wait for
  side.fork(ms);         // the next half-layer's side work (fast)
  side.join_lagged(ms);  // norm backward 2: the first half-layer's work is done here
  main_read_flag<<<1, 1, 0, ms>>>(flag + 3, out + 3);
  side.join(ms);
  HDPISSA_CUDA_CHECK_LAUNCH("AdapterSideStream test kernels");
  HDPISSA_CUDA_CHECK(cudaStreamSynchronize(ms));
  HDPISSA_CUDA_CHECK(cudaStreamSynchronize(ss));
  int h[8] = {};
  HDPISSA_CUDA_CHECK(cudaMemcpy(h, d.get(), sizeof(h), cudaMemcpyDeviceToHost));
  for (int i = 0; i < 4; ++i) {
    INFO("case ", i, ": flag ", h[i], ", read on the model's stream ", h[4 + i]);
    CHECK(h[i] == 1);
    CHECK(h[4 + i] == 1);
  }
}
