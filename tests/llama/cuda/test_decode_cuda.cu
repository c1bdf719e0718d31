// CudaGreedyDecoder<T> (examples/llama/include/llama/cuda/decode_cuda.cuh) against the CPU greedy
// decoder (model.hpp generate_greedy, KV-cached, one prompt at a time):
//  - fp32: the GPU tokens EQUAL the CPU tokens on stories260K (GQA 8/4 heads) and on a tiny random
//    model (untied, llama3 RoPE, Qwen2 q/k/v biases, sliding windows), batched with mixed prompt
//    lengths, fewer slots than prompts (slots are refilled: continuous batching), prefill chunks
//    smaller than a prompt, with and without stop tokens, eager and CUDA-graph decode steps.
//  - bf16 (stories260K): tokens equal the CPU's on the bf16-rounded weights, or the first divergence
//    is at a step where the CPU's top-2 logits are within 2·tol·max|z| of each other, tol = 3e-2
//    the bf16 logits bound of test_model_cuda.cu ("bf16 CudaLlama matches the CPU model on
//    stories260K": max|Δz| ≤ 3e-2·max|z|; either of the two logits may move by that much). How many
//    completions are identical is reported, not required.
//
// One translation unit with its own main: without a CUDA device it exits 77 (CTest SKIP_RETURN_CODE).

#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <algorithm>
#include <array>
#include <optional>
#include <random>
#include <type_traits>
#include <utility>
#include <string>
#include <vector>

#include "../../common/scoped_env.hpp"
#include "llama/checkpoint.hpp"
#include "llama/cuda/decode_cuda.cuh"
#include "llama/model.hpp"

using namespace hdpissa::llama;
using hdpissa::llama::gpu::CudaGreedyDecoder;
using hdpissa::llama::gpu::CudaHooks;
using hdpissa::llama::gpu::CudaLlama;
using hdpissa::llama::gpu::GreedyDecodeOptions;
using hdpissa::llama::gpu::decode_kern::CacheAttentionKernel;
using bf16 = __nv_bfloat16;
namespace fs = std::filesystem;
using hdpissa::test::ScopedEnv;

namespace {


fs::path data_dir() {
  if (const char* env = std::getenv("HDPISSA_DATA"); env && *env) return env;
  return HDPISSA_LLAMA_TEST_DATA;
}
fs::path stories_dir() { return data_dir() / "stories260K-hf"; }
bool have_stories() { return fs::exists(stories_dir() / "model.safetensors"); }

/// Prompts of the given lengths: BOS (1) then random ids in [3, vocab).
std::vector<std::vector<std::int32_t>> make_prompts(int vocab, const std::vector<int>& lengths, unsigned seed) {
  std::mt19937 rng(seed);
  std::vector<std::vector<std::int32_t>> out;
  for (int n : lengths) {
    std::vector<std::int32_t> p{1};
    for (int i = 1; i < n; ++i) p.push_back(3 + static_cast<std::int32_t>(rng() % static_cast<unsigned>(vocab - 3)));
    out.push_back(std::move(p));
  }
  return out;
}

/// The CPU reference: generate_greedy per prompt with the GPU decoder's budget, truncated at the
/// first stop token.
std::vector<std::int32_t> cpu_greedy(const ModelWeights& w, const std::vector<std::int32_t>& prompt, int budget,
                                     const std::vector<std::int32_t>& stops) {
  if (budget < 1) return {};
  GenerateOptions g;
  g.max_new_tokens = budget;
  if (!stops.empty()) g.stop_token = stops.front();
  auto ids = generate_greedy(w, prompt, g);
  for (std::size_t i = 0; i < ids.size(); ++i)
    if (std::find(stops.begin(), stops.end(), ids[i]) != stops.end()) {
      ids.resize(i);
      break;
    }
  return ids;
}

std::string str(const std::vector<std::int32_t>& v) {
  std::string s;
  for (auto t : v) s += std::to_string(t) + " ";
  return s;
}

/// fp32: GPU tokens == CPU tokens for every prompt.
void check_fp32_equal(const ModelWeights& w, const std::vector<std::vector<std::int32_t>>& prompts, int max_new,
                      int slots, int prefill_rows, const std::vector<std::int32_t>& stops, bool graphs,
                      const std::string& tag) {
  hdpissa::CudaStream stream;
  CudaLlama<float> model(w, 1, 1, graphs ? stream.get() : nullptr);
  hdpissa::CudaBackend<float> be(model.stream(), {});
  CudaHooks<float> hooks(be);
  int ctx = 1;
  for (const auto& p : prompts) ctx = std::max(ctx, static_cast<int>(p.size()) + max_new);
  ctx = std::min(ctx, w.config.max_seq_len);
  CudaGreedyDecoder<float> dec(model, slots, ctx, prefill_rows, graphs);
  GreedyDecodeOptions o;
  o.max_new_tokens = max_new;
  o.stop_tokens = stops;
  const auto got = dec.generate(prompts, o, hooks);
  REQUIRE(got.size() == prompts.size());
  long total = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const auto ref = cpu_greedy(w, prompts[i], dec.budget(static_cast<int>(prompts[i].size()), max_new), stops);
    INFO(tag << " prompt " << i << " (" << prompts[i].size() << " tokens)\n  gpu " << str(got[i]) << "\n  cpu "
             << str(ref));
    CHECK(got[i] == ref);
    total += static_cast<long>(ref.size());
  }
  const auto& st = dec.stats();
  MESSAGE(tag << ": " << prompts.size() << " prompts, " << total << " tokens equal; " << st.decode_steps
              << " decode steps, prefill " << st.prefill_tokens << " tokens");
  // a second call on the same decoder (slots reused, graph recaptured) gives the same tokens
  const auto again = dec.generate(prompts, o, hooks);
  CHECK(again == got);
}

/// Tiny random model: untied lm_head, llama3 RoPE scaling, GQA 4/2, head_dim 4 (as test_model_cuda.cu).
ModelWeights tiny_random(unsigned seed, bool bias, int window, int from_layer) {
  ModelConfig c;
  c.dim = 16;
  c.hidden_dim = 24;
  c.n_layers = 2;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 4;
  c.vocab_size = 37;
  c.max_seq_len = 64;
  c.rope_theta = 500.0;
  c.rope_scaling.type = "llama3";
  c.rope_scaling.factor = 8.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 16;
  c.tie_embeddings = false;
  c.qkv_bias = bias;
  c.model_type = bias ? "qwen2" : window > 0 ? "mistral" : "llama";
  c.sliding_window = window;
  c.window_from_layer = from_layer;
  ModelWeights w = ModelWeights::zeros(c);
  if (bias)
    for (auto& l : w.layers) {
      l.bq = Vector(c.q_dim());
      l.bk = Vector(c.kv_dim());
      l.bv = Vector(c.kv_dim());
    }
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 0.5f);
  w.for_each_parameter([&](const std::string& name, float* p, std::int64_t count, const std::vector<std::int64_t>&) {
    const bool norm = name.find("norm") != std::string::npos;
    for (std::int64_t i = 0; i < count; ++i) p[i] = norm ? 1.0f + 0.3f * n(rng) : n(rng);
  });
  if (bias)
    for (auto& l : w.layers)
      for (Vector* v : {&l.bq, &l.bk, &l.bv})
        for (Eigen::Index i = 0; i < v->size(); ++i) (*v)(i) = n(rng);
  return w;
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

}  // namespace

TEST_CASE("fp32 GPU greedy decoding equals the CPU decoder on stories260K (GQA, batched, mixed lengths)") {
  if (!have_stories()) {
    MESSAGE("SKIPPED: " << stories_dir() << " not found (set HDPISSA_DATA)");
    return;
  }
  const ModelWeights w = load_hf_checkpoint(stories_dir());
  const auto prompts = make_prompts(w.config.vocab_size, {1, 7, 23, 2, 60, 13, 31, 5, 90, 4}, 5);
  for (bool graphs : {false, true}) {
    const std::string g = graphs ? " (graphs)" : " (eager)";
    check_fp32_equal(w, prompts, 64, 4, 32, {}, graphs, "stories260K fp32 no stop" + g);
    check_fp32_equal(w, prompts, 96, 3, 1024, {2, 1}, graphs, "stories260K fp32 stop EOS/BOS" + g);
  }
  check_fp32_equal(w, prompts, 40, 16, 7, {2, 1}, true, "stories260K fp32 more slots than prompts, prefill 7 rows");
  // context end: budgets capped by max_position_embeddings (prompt of max_seq_len − 3 tokens)
  const auto longp = make_prompts(w.config.vocab_size, {w.config.max_seq_len - 3, w.config.max_seq_len, 10}, 9);
  check_fp32_equal(w, longp, 50, 2, 64, {}, true, "stories260K fp32 at the context end");
}

TEST_CASE("fp32 GPU greedy decoding equals the CPU decoder with sliding windows and q/k/v biases") {
  const auto prompts = make_prompts(37, {1, 9, 3, 20, 14, 2, 33}, 3);
  for (int window : {1, 4, 11}) {
    const ModelWeights w = tiny_random(7, false, window, 0);
    check_fp32_equal(w, prompts, 24, 3, 8, {}, true, cat("tiny fp32 window ", window));
  }
  check_fp32_equal(tiny_random(8, true, 0, 0), prompts, 24, 2, 16, {}, true, "tiny fp32 qwen2 biases");
  check_fp32_equal(tiny_random(9, true, 5, 1), prompts, 24, 4, 5, {}, false, "tiny fp32 biases + window 5 from layer 1");
  if (have_stories()) {  // stories260K (head_dim 8, GQA) with a window shorter than the sequences
    ModelWeights w = load_hf_checkpoint(stories_dir());
    w.config.sliding_window = 16;
    w.config.model_type = "mistral";
    check_fp32_equal(w, make_prompts(w.config.vocab_size, {5, 40, 17, 70}, 4), 48, 3, 32, {}, true,
                     "stories260K fp32 window 16");
  }
}

TEST_CASE("HDPISSA_DECODE_CHUNK: every split size still gives the CPU decoder's fp32 tokens; a bad value is named") {
  // 16 keys per split: many splits per row; 8192 (capped at the context): one split, the fused
  // kernel (stories260K: GQA group 2) writes the output itself; the tiny model (group 2) too.
  const auto prompts = make_prompts(37, {1, 9, 3, 20, 14, 2, 33}, 3);
  const ModelWeights w = tiny_random(7, false, 0, 0);
  {
    CudaLlama<float> model(w, 1, 1, nullptr);
    {
      ScopedEnv e("HDPISSA_DECODE_CHUNK", nullptr);
      CudaGreedyDecoder<float> d(model, 2, 40);
      CHECK(d.decode_chunk() == 40);  // the default (256: the fused kernel runs at group 2), capped at max_ctx 40
      CHECK(d.decode_splits() == 1);
    }
    {  // the same weights with a longer context: the fused kernel's default of 256 keys per split
      ModelWeights longer = w;
      longer.config.max_seq_len = 600;
      CudaLlama<float> m2(longer, 1, 1, nullptr);
      ScopedEnv e("HDPISSA_DECODE_CHUNK", nullptr);
      REQUIRE(hdpissa::llama::gpu::decode_kern::cache_attention_auto_fused<float>(w.config.head_dim, w.config.n_heads / w.config.n_kv_heads));
      CudaGreedyDecoder<float> d(m2, 2, 600);
      CHECK(d.decode_chunk() == 256);
      CHECK(d.decode_splits() == 3);
      // 1024 slots x 2 kv heads: 2048 (row, kv head) pairs per step; the bulk kernel (sm_90) takes
      // 512 keys per split there, the fused one 256
      CudaGreedyDecoder<float> wide(m2, 1024, 600);
      CHECK(wide.decode_chunk() == (hdpissa::llama::gpu::decode_kern::device_has_bulk_copy() ? 512 : 256));
    }
    {
      ScopedEnv e("HDPISSA_DECODE_CHUNK", "16");
      CudaGreedyDecoder<float> d(model, 2, 40);
      CHECK(d.decode_chunk() == 16);
      CHECK(d.decode_splits() == 3);
    }
    {
      ScopedEnv e("HDPISSA_DECODE_CHUNK", "8");
      CHECK_THROWS_WITH_AS(CudaGreedyDecoder<float>(model, 2, 16),
                           doctest::Contains("HDPISSA_DECODE_CHUNK: expected an integer in [16, 8192]"), LlamaError);
    }
  }
  for (const char* chunk : {"16", "8192"}) {
    ScopedEnv e("HDPISSA_DECODE_CHUNK", chunk);
    check_fp32_equal(w, prompts, 40, 3, 8, {}, true, cat("tiny fp32, HDPISSA_DECODE_CHUNK=", chunk));
    if (have_stories()) {
      const ModelWeights s = load_hf_checkpoint(stories_dir());
      check_fp32_equal(s, make_prompts(s.config.vocab_size, {1, 30, 7, 60}, 6), 80, 4, 32, {}, true,
                       cat("stories260K fp32, HDPISSA_DECODE_CHUNK=", chunk));
    }
  }
}

namespace {

/// bf16 GPU greedy decoding of `prompts` (no stop tokens) against the CPU decoder on the
/// bf16-rounded weights: each completion equal, or first different at a step where the CPU's top
/// logit and the GPU's pick are within 2·3e-2·max|z| (3e-2·max|z|: the bf16 logits bound of the GPU
/// model's own test on stories260K; either logit may move by that much). Returns the number of
/// equal completions. `expect` (optional): the split kernel the decoder must have resolved to.
int check_bf16_follows_cpu(const ModelWeights& w, const std::vector<std::vector<std::int32_t>>& prompts, int max_new,
                           int slots, int prefill_rows, const std::string& tag,
                           std::optional<CacheAttentionKernel> expect = std::nullopt) {
  const ModelWeights wr = rounded_to_bf16(w);
  const double tol = 3e-2;
  hdpissa::CudaStream stream;
  CudaLlama<bf16> model(w, 1, 1, stream.get());
  hdpissa::CudaBackend<bf16> be(model.stream(), {});
  CudaHooks<bf16> hooks(be);
  int longest = 1;
  for (const auto& p : prompts) longest = std::max(longest, static_cast<int>(p.size()));
  CudaGreedyDecoder<bf16> dec(model, slots, std::min(w.config.max_seq_len, longest + max_new), prefill_rows);
  if (expect) REQUIRE(dec.attention_kernel() == *expect);
  GreedyDecodeOptions o;
  o.max_new_tokens = max_new;
  const auto got = dec.generate(prompts, o, hooks);
  int equal = 0;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const auto ref = cpu_greedy(wr, prompts[i], dec.budget(static_cast<int>(prompts[i].size()), max_new), {});
    REQUIRE(got[i].size() == ref.size());  // no stop tokens: both run the whole budget
    std::size_t d = 0;
    while (d < ref.size() && got[i][d] == ref[d]) ++d;
    if (d == ref.size()) {
      ++equal;
      continue;
    }
    // CPU logits at the divergence: prompt + the common prefix
    std::vector<std::int32_t> ctx = prompts[i];
    ctx.insert(ctx.end(), ref.begin(), ref.begin() + static_cast<std::ptrdiff_t>(d));
    KVCache cache(wr.config, static_cast<int>(ctx.size()));
    CpuHooks plain;
    const Matrix z = forward_incremental(wr, ctx, cache, plain);
    const auto row = z.row(z.rows() - 1);
    const double zmax = row.cwiseAbs().maxCoeff();
    const double top1 = row(ref[d]), gpu_pick = row(got[i][d]);
    INFO(tag << ", prompt " << i << ": first divergence at new token " << d << ": CPU " << ref[d] << " (z " << top1
             << "), GPU " << got[i][d] << " (z " << gpu_pick << "), max|z| " << zmax);
    CHECK(top1 - gpu_pick <= 2 * tol * zmax);
  }
  MESSAGE(tag << ": " << equal << "/" << prompts.size()
              << " completions equal to the CPU's; the rest diverge at near-ties");
  return equal;
}

}  // namespace

TEST_CASE("bf16 GPU greedy decoding follows the CPU decoder up to near-ties (stories260K)") {
  if (!have_stories()) {
    MESSAGE("SKIPPED: " << stories_dir() << " not found (set HDPISSA_DATA)");
    return;
  }
  const ModelWeights w = load_hf_checkpoint(stories_dir());
  const auto prompts = make_prompts(w.config.vocab_size, {1, 7, 23, 2, 60, 13, 31, 5, 90, 4, 1, 1}, 6);
  check_bf16_follows_cpu(w, prompts, 80, 5, 48, "stories260K bf16");
}

namespace {

/// A device copy of a host vector (cudaFree by the caller).
template <class E>
E* to_device(const std::vector<E>& h) {
  E* d = nullptr;
  REQUIRE(cudaMalloc(&d, h.size() * sizeof(E)) == cudaSuccess);
  REQUIRE(cudaMemcpy(d, h.data(), h.size() * sizeof(E), cudaMemcpyHostToDevice) == cudaSuccess);
  return d;
}

/// One cache-attention problem on random data, run through launch_cache_attention with the fused
/// kernel and with the two-phase kernel, each against a float64 softmax attention over the same
/// (T-valued) q, K, V: rows with their own slot and position (mixed context lengths across split
/// boundaries), a sliding window or none. Returns the two normalised errors ‖out − ref‖ / ‖ref‖.
template <class T>
std::pair<double, double> cache_attention_errors(int nh, int nkv, int hd, int window, unsigned seed, float q_sd = 1.0f,
                                                 int chunk = 128,
                                                 CacheAttentionKernel second = CacheAttentionKernel::TwoPhase) {
  const int slots = 5, max_ctx = 300, splits = (max_ctx + chunk - 1) / chunk;
  const std::vector<int> row_slot{0, 1, 2, 3, 4, 2, 0};
  const std::vector<int> row_pos{0, 1, 127, 128, 299, 200, 257};  // split edges, a full cache
  const int n = static_cast<int>(row_slot.size());
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto fill = [&](std::size_t count, float sd) {
    std::vector<T> v(count);
    for (auto& x : v) x = static_cast<T>(nd(rng) * sd);
    return v;
  };
  const auto hq = fill(std::size_t(n) * nh * hd, q_sd);  // q_sd > 1: widely separated running maxima
  const auto hk = fill(std::size_t(slots) * nkv * max_ctx * hd, 1.0f);
  const auto hv = fill(std::size_t(slots) * nkv * max_ctx * hd, 1.0f);
  T *q = to_device(hq), *kc = to_device(hk), *vc = to_device(hv);
  std::int32_t* slot = to_device(std::vector<std::int32_t>(row_slot.begin(), row_slot.end()));
  std::int32_t* pos = to_device(std::vector<std::int32_t>(row_pos.begin(), row_pos.end()));
  float *part_o = nullptr, *part_ml = nullptr;
  T* out = nullptr;
  REQUIRE(cudaMalloc(&part_o, sizeof(float) * std::size_t(n) * nh * splits * hd) == cudaSuccess);
  REQUIRE(cudaMalloc(&part_ml, sizeof(float) * std::size_t(n) * nh * splits * 2) == cudaSuccess);
  REQUIRE(cudaMalloc(&out, sizeof(T) * std::size_t(n) * nh * hd) == cudaSuccess);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  auto to_d = [](T x) { return static_cast<double>(static_cast<float>(x)); };
  // float64 reference
  std::vector<double> ref(std::size_t(n) * nh * hd, 0.0);
  const int group = nh / nkv;
  for (int r = 0; r < n; ++r)
    for (int h = 0; h < nh; ++h) {
      const int kvh = h / group, p = row_pos[std::size_t(r)], lo = window > 0 ? std::max(0, p - window + 1) : 0;
      const std::size_t base = (std::size_t(row_slot[std::size_t(r)]) * nkv + kvh) * max_ctx;
      std::vector<double> sc;
      for (int j = lo; j <= p; ++j) {
        double d = 0;
        for (int e = 0; e < hd; ++e)
          d += to_d(hq[(std::size_t(r) * nh + h) * hd + e]) * to_d(hk[(base + j) * hd + e]);
        sc.push_back(d * scale);
      }
      const double mx = *std::max_element(sc.begin(), sc.end());
      double sum = 0;
      for (auto& x : sc) sum += (x = std::exp(x - mx));
      for (int j = lo; j <= p; ++j)
        for (int e = 0; e < hd; ++e)
          ref[(std::size_t(r) * nh + h) * hd + e] += sc[std::size_t(j - lo)] / sum * to_d(hv[(base + j) * hd + e]);
    }
  double errs[2];
  const std::size_t n_parts = std::size_t(n) * nh * splits;
  for (int f = 0; f < 2; ++f) {
    REQUIRE(cudaMemset(out, 0xFF, sizeof(T) * std::size_t(n) * nh * hd) == cudaSuccess);  // NaN poison
    // Poison the split partials too, so that neither kernel can lean on the other's leftovers: o NaN,
    // (m, l) = (1e30, 1): an unwritten split would dominate the merge instead of being skipped.
    REQUIRE(cudaMemset(part_o, 0xFF, sizeof(float) * n_parts * hd) == cudaSuccess);
    {
      std::vector<float> ml(2 * n_parts);
      for (std::size_t i = 0; i < n_parts; ++i) ml[2 * i] = 1e30f, ml[2 * i + 1] = 1.0f;
      REQUIRE(cudaMemcpy(part_ml, ml.data(), ml.size() * sizeof(float), cudaMemcpyHostToDevice) == cudaSuccess);
    }
    if (f == 0)  // the fused kernel must really run (Fused falls back to the two-phase one silently)
      REQUIRE(hdpissa::llama::gpu::decode_kern::cache_attention_fused_supported<T>(hd, nh / nkv));
    hdpissa::llama::gpu::decode_kern::launch_cache_attention<T>(nullptr, q, kc, vc, slot, pos, n, nh, nkv, hd, max_ctx,
                                                                window, scale, chunk, splits, part_o, part_ml, out,
                                                                f == 0 ? CacheAttentionKernel::Fused : second);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    std::vector<T> got(ref.size());
    REQUIRE(cudaMemcpy(got.data(), out, got.size() * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
    double num = 0, den = 0;
    for (std::size_t i = 0; i < ref.size(); ++i) {
      const double g = to_d(got[i]);
      num += std::isfinite(g) ? (g - ref[i]) * (g - ref[i]) : 1e30;
      den += ref[i] * ref[i];
    }
    errs[f] = std::sqrt(num / den);
  }
  cudaFree(q), cudaFree(kc), cudaFree(vc), cudaFree(slot), cudaFree(pos), cudaFree(part_o), cudaFree(part_ml),
      cudaFree(out);
  return {errs[0], errs[1]};
}

}  // namespace

TEST_CASE("cache attention: the fused and the two-phase kernels against float64 (MHA, GQA, windows, head dims)") {
  struct Shape {
    int nh, nkv, hd, window;
  };
  // LLaMA-2-7B (MHA, hd 128), TinyLlama (group 8, hd 64), LLaMA-3 / Mistral (group 4, hd 128) with a
  // window, group 3 (a template for 4 run with 3), hd 96 (two vectors per lane in bf16), stories260K
  // (hd 8: one 16-byte vector per key in bf16, lpk = 1), hd 256.
  const std::vector<Shape> shapes{{32, 32, 128, 0}, {32, 4, 64, 0}, {32, 8, 128, 100}, {12, 4, 64, 0},
                                  {8, 8, 96, 0},    {8, 4, 8, 0},   {4, 2, 256, 37}};
  for (const Shape& sh : shapes) {
    INFO("nh " << sh.nh << " nkv " << sh.nkv << " hd " << sh.hd << " window " << sh.window);
    CHECK(hdpissa::llama::gpu::decode_kern::cache_attention_fused_supported<bf16>(sh.hd, sh.nh / sh.nkv));
    const auto [f32_fused, f32_two] = cache_attention_errors<float>(sh.nh, sh.nkv, sh.hd, sh.window, 11);
    const auto [b16_fused, b16_two] = cache_attention_errors<bf16>(sh.nh, sh.nkv, sh.hd, sh.window, 12);
    // peaked softmax: q 6× larger, scores spread over tens of units (online rescales, merges)
    const auto [pk_fused, pk_two] = cache_attention_errors<float>(sh.nh, sh.nkv, sh.hd, sh.window, 13, 6.0f);
    MESSAGE("  peaked fp32: fused " << pk_fused << " two-phase " << pk_two);
    CHECK(pk_fused < 1e-5);
    CHECK(pk_two < 1e-5);
    MESSAGE("nh " << sh.nh << " nkv " << sh.nkv << " hd " << sh.hd << " window " << sh.window << ": fp32 fused "
                  << f32_fused << " two-phase " << f32_two << "; bf16 fused " << b16_fused << " two-phase " << b16_two);
    CHECK(f32_fused < 1e-5);  // fp32 arithmetic throughout
    CHECK(f32_two < 1e-5);
    CHECK(b16_fused < 6e-3);  // the bf16 output's rounding (2^-9 relative) dominates
    CHECK(b16_two < 6e-3);
    // one split (chunk ≥ max_ctx): the fused kernel writes the output itself, no combine
    const auto [one_fused, one_two] = cache_attention_errors<float>(sh.nh, sh.nkv, sh.hd, sh.window, 14, 6.0f, 512);
    const auto [one_b16, one_b16_two] = cache_attention_errors<bf16>(sh.nh, sh.nkv, sh.hd, sh.window, 15, 1.0f, 512);
    MESSAGE("  one split: fp32 fused " << one_fused << " two-phase " << one_two << "; bf16 fused " << one_b16);
    CHECK(one_fused < 1e-5);
    CHECK(one_two < 1e-5);
    CHECK(one_b16 < 6e-3);
    CHECK(one_b16_two < 6e-3);
  }
  CHECK(!hdpissa::llama::gpu::decode_kern::cache_attention_fused_supported<bf16>(128, 16));  // group 16: two-phase
  CHECK(!hdpissa::llama::gpu::decode_kern::cache_attention_fused_supported<bf16>(100, 1));   // hd not 8-aligned
}

TEST_CASE("cache attention, one split: the fused kernel's own output equals its partial + the combine, bit for bit") {
  namespace dk = hdpissa::llama::gpu::decode_kern;
  auto run = [](auto tag, int nh, int nkv, int hd, int window) {
    using T = decltype(tag);
    const int slots = 3, max_ctx = 200, n = 5;
    // pos −1: an empty visible range (the combine writes 0 there; the direct path must too)
    const std::vector<std::int32_t> row_slot{0, 1, 2, 1, 0}, row_pos{0, 57, 199, 130, -1};
    std::mt19937 rng(5 + hd);
    std::normal_distribution<float> nd(0.0f, 2.0f);
    auto fill = [&](std::size_t count) {
      std::vector<T> v(count);
      for (auto& x : v) x = static_cast<T>(nd(rng));
      return v;
    };
    const auto hq = fill(std::size_t(n) * nh * hd), hk = fill(std::size_t(slots) * nkv * max_ctx * hd),
               hv = fill(std::size_t(slots) * nkv * max_ctx * hd);
    T *q = to_device(hq), *kc = to_device(hk), *vc = to_device(hv);
    std::int32_t *slot = to_device(row_slot), *pos = to_device(row_pos);
    float *part_o = nullptr, *part_ml = nullptr;
    T *a = nullptr, *b = nullptr;
    const std::size_t outn = std::size_t(n) * nh * hd;
    REQUIRE(cudaMalloc(&part_o, sizeof(float) * outn) == cudaSuccess);
    REQUIRE(cudaMalloc(&part_ml, sizeof(float) * std::size_t(n) * nh * 2) == cudaSuccess);
    REQUIRE(cudaMalloc(&a, sizeof(T) * outn) == cudaSuccess);
    REQUIRE(cudaMalloc(&b, sizeof(T) * outn) == cudaSuccess);
    REQUIRE(cudaMemset(a, 0xFF, sizeof(T) * outn) == cudaSuccess);
    REQUIRE(cudaMemset(b, 0x7F, sizeof(T) * outn) == cudaSuccess);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    // (a) the partial of the one split, then the combine kernel
    REQUIRE(dk::launch_cache_attention_fused<T>(nullptr, q, kc, vc, slot, pos, n, nh, nkv, hd, max_ctx, window, scale,
                                                max_ctx, 1, part_o, part_ml));
    dk::cache_attention_combine<T><<<static_cast<unsigned>(n) * nh, 128>>>(part_o, part_ml, 1, hd, a);
    // (b) the direct output (launch_cache_attention with one split)
    dk::launch_cache_attention<T>(nullptr, q, kc, vc, slot, pos, n, nh, nkv, hd, max_ctx, window, scale, max_ctx, 1,
                                  part_o, part_ml, b, CacheAttentionKernel::Fused);
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    std::vector<T> ha(outn), hb(outn);
    REQUIRE(cudaMemcpy(ha.data(), a, sizeof(T) * outn, cudaMemcpyDeviceToHost) == cudaSuccess);
    REQUIRE(cudaMemcpy(hb.data(), b, sizeof(T) * outn, cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(std::memcmp(ha.data(), hb.data(), sizeof(T) * outn) == 0);
    CHECK_THROWS_AS(dk::launch_cache_attention_fused<T>(nullptr, q, kc, vc, slot, pos, n, nh, nkv, hd, max_ctx, window,
                                                        scale, 64, 4, part_o, part_ml, b),
                    hdpissa::InvalidArgument);  // a direct output with several splits is refused
    cudaFree(q), cudaFree(kc), cudaFree(vc), cudaFree(slot), cudaFree(pos), cudaFree(part_o), cudaFree(part_ml),
        cudaFree(a), cudaFree(b);
  };
  for (int w : {0, 37}) {
    CAPTURE(w);
    run(float{}, 32, 32, 128, w);
    run(bf16{}, 32, 32, 128, w);
    run(bf16{}, 8, 4, 8, w);
    run(float{}, 4, 2, 256, w);
  }
}

TEST_CASE("cache attention: the bulk-copy kernel equals the fused one bit for bit (tilings, splits, direct output)") {
  namespace dk = hdpissa::llama::gpu::decode_kern;
  if (!dk::device_has_bulk_copy()) {
    MESSAGE("skipped: the bulk-copy kernel needs compute capability 9.0 (this device runs the fused kernel instead)");
    return;
  }
  auto run = [](auto tag, int nh, int nkv, int hd, int window, int chunk, dk::BulkTiling tiling) {
    using T = decltype(tag);
    const int slots = 3, max_ctx = 200, n = 6, splits = (max_ctx + chunk - 1) / chunk;
    // pos −1: an empty visible range; 199: the last cache position (a tile ending at max_ctx)
    const std::vector<std::int32_t> row_slot{0, 1, 2, 1, 0, 2}, row_pos{0, 57, 199, 130, -1, 64};
    std::mt19937 rng(31 + hd + chunk);
    std::normal_distribution<float> nd(0.0f, 2.0f);
    auto fill = [&](std::size_t count) {
      std::vector<T> v(count);
      for (auto& x : v) x = static_cast<T>(nd(rng));
      return v;
    };
    const auto hq = fill(std::size_t(n) * nh * hd), hk = fill(std::size_t(slots) * nkv * max_ctx * hd),
               hv = fill(std::size_t(slots) * nkv * max_ctx * hd);
    T *q = to_device(hq), *kc = to_device(hk), *vc = to_device(hv);
    std::int32_t *slot = to_device(row_slot), *pos = to_device(row_pos);
    const std::size_t outn = std::size_t(n) * nh * hd, parts = std::size_t(n) * nh * splits;
    float *part_o = nullptr, *part_ml = nullptr;
    REQUIRE(cudaMalloc(&part_o, sizeof(float) * parts * hd) == cudaSuccess);
    REQUIRE(cudaMalloc(&part_ml, sizeof(float) * parts * 2) == cudaSuccess);
    T *a = nullptr, *b = nullptr;
    REQUIRE(cudaMalloc(&a, sizeof(T) * outn) == cudaSuccess);
    REQUIRE(cudaMalloc(&b, sizeof(T) * outn) == cudaSuccess);
    REQUIRE(cudaMemset(a, 0xFF, sizeof(T) * outn) == cudaSuccess);
    REQUIRE(cudaMemset(b, 0x7F, sizeof(T) * outn) == cudaSuccess);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    dk::launch_cache_attention<T>(nullptr, q, kc, vc, slot, pos, n, nh, nkv, hd, max_ctx, window, scale, chunk, splits,
                                  part_o, part_ml, a, CacheAttentionKernel::Fused);
    int optin = 0;
    REQUIRE(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0) == cudaSuccess);
    const bool fits = dk::cache_attention_bulk_smem<T>(hd, nh / nkv, tiling) <= static_cast<std::size_t>(optin);
    if (!fits) {  // refused, naming the shared memory, before anything is launched
      CHECK_THROWS_WITH_AS(dk::launch_cache_attention<T>(nullptr, q, kc, vc, slot, pos, n, nh, nkv, hd, max_ctx, window,
                                                         scale, chunk, splits, part_o, part_ml, b,
                                                         CacheAttentionKernel::Bulk, tiling),
                           doctest::Contains("bytes of shared memory"), hdpissa::InvalidArgument);
      REQUIRE(cudaMemcpy(b, a, sizeof(T) * outn, cudaMemcpyDeviceToDevice) == cudaSuccess);
    } else {
      dk::launch_cache_attention<T>(nullptr, q, kc, vc, slot, pos, n, nh, nkv, hd, max_ctx, window, scale, chunk, splits,
                                    part_o, part_ml, b, CacheAttentionKernel::Bulk, tiling);
    }
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
    std::vector<T> ha(outn), hb(outn);
    REQUIRE(cudaMemcpy(ha.data(), a, sizeof(T) * outn, cudaMemcpyDeviceToHost) == cudaSuccess);
    REQUIRE(cudaMemcpy(hb.data(), b, sizeof(T) * outn, cudaMemcpyDeviceToHost) == cudaSuccess);
    CHECK(std::memcmp(ha.data(), hb.data(), sizeof(T) * outn) == 0);
    {  // the grid's rows in another order (the decoder's: by descending position): the same bits
      const std::vector<std::int32_t> perm{2, 3, 5, 1, 0, 4};
      std::int32_t* order = to_device(perm);
      for (auto kern : {CacheAttentionKernel::Fused, CacheAttentionKernel::TwoPhase, CacheAttentionKernel::Bulk}) {
        CAPTURE(static_cast<int>(kern));
        REQUIRE(cudaMemset(b, 0x7F, sizeof(T) * outn) == cudaSuccess);
        std::vector<T> hc(outn), hr(outn);
        if (kern == CacheAttentionKernel::Bulk && !fits) continue;
        dk::launch_cache_attention<T>(nullptr, q, kc, vc, slot, pos, n, nh, nkv, hd, max_ctx, window, scale, chunk,
                                      splits, part_o, part_ml, b, kern, tiling, order);
        REQUIRE(cudaMemcpy(hc.data(), b, sizeof(T) * outn, cudaMemcpyDeviceToHost) == cudaSuccess);
        dk::launch_cache_attention<T>(nullptr, q, kc, vc, slot, pos, n, nh, nkv, hd, max_ctx, window, scale, chunk,
                                      splits, part_o, part_ml, b, kern, tiling);
        REQUIRE(cudaMemcpy(hr.data(), b, sizeof(T) * outn, cudaMemcpyDeviceToHost) == cudaSuccess);
        CHECK(std::memcmp(hc.data(), hr.data(), sizeof(T) * outn) == 0);
        if (kern != CacheAttentionKernel::TwoPhase) CHECK(std::memcmp(hc.data(), ha.data(), sizeof(T) * outn) == 0);
      }
      cudaFree(order);
    }
    bool finite = true;  // the row of pos −1 is 0; every other row a finite mean of V rows
    for (const T& x : hb) finite = finite && std::isfinite(static_cast<float>(x));
    CHECK(finite);
    cudaFree(q), cudaFree(kc), cudaFree(vc), cudaFree(slot), cudaFree(pos), cudaFree(part_o), cudaFree(part_ml),
        cudaFree(a), cudaFree(b);
  };
  // 1 x 1: tiles of one block step, one stage (the ring refilled after every tile, parities
  // alternating); 208 x 1: one tile larger than any split. The tilings that do not fit a block's
  // shared memory at a shape (fp32, hd 256: 1 KiB per key) must be refused instead.
  const std::vector<dk::BulkTiling> tilings{{1, 1}, {16, 2}, {16, 2, 8}, {32, 4}, {64, 3}, {208, 1}};
  for (int w : {0, 37})
    for (int chunk : {16, 64, 256})  // 256 ≥ max_ctx: one split, the kernels write the output themselves
      for (const auto& t : tilings) {
        CAPTURE(w);
        CAPTURE(chunk);
        CAPTURE(t.tile_keys);
        CAPTURE(t.stages);
        CAPTURE(t.min_blocks);
        run(float{}, 32, 32, 128, w, chunk, t);  // MHA, hd 128 (LLaMA-2-7B)
        run(bf16{}, 32, 32, 128, w, chunk, t);
        run(bf16{}, 8, 4, 8, w, chunk, t);       // group 2 (stories260K): 1 lane per key, 128 keys per step
        run(float{}, 4, 2, 256, w, chunk, t);    // group 2, two vectors per lane
        run(bf16{}, 32, 4, 64, w, chunk, t);     // group 8 (TinyLlama), hd 64
      }
  // Auto: the bulk kernel for groups up to 4 (the fused kernel's shapes), two-phase for 8
  CHECK(dk::cache_attention_runs_bulk<bf16>(CacheAttentionKernel::Auto, 128, 1));
  CHECK(dk::cache_attention_runs_bulk<bf16>(CacheAttentionKernel::Auto, 128, 4));
  CHECK_FALSE(dk::cache_attention_runs_bulk<bf16>(CacheAttentionKernel::Auto, 64, 8));
  CHECK(dk::cache_attention_runs_bulk<bf16>(CacheAttentionKernel::Bulk, 64, 8));
  CHECK_FALSE(dk::cache_attention_runs_bulk<bf16>(CacheAttentionKernel::Fused, 128, 1));
  CHECK_FALSE(dk::cache_attention_runs_bulk<bf16>(CacheAttentionKernel::Auto, 4, 1));  // hd 4: not 16-byte rows
  CHECK(dk::bulk_tile_keys<bf16>(128, {1, 1}) == 16);  // hd 128 in bf16: 16 lanes per key, 8 keys per step
  CHECK(dk::bulk_tile_keys<bf16>(128, {33, 1}) == 48);
  CHECK(dk::bulk_tile_keys<bf16>(8, {32, 1}) == 256);  // hd 8 in bf16: one lane per key, 128 keys per step
  std::int32_t* none = nullptr;
  for (const auto& [t, what] : std::vector<std::pair<dk::BulkTiling, const char*>>{
           {{32, 0}, "expected 1 to 16 stages, found 0"},
           {{32, 17}, "expected 1 to 16 stages, found 17"},
           {{0, 2}, "expected at least 1 key per tile, found 0"},
           {{4096, 16}, "bytes of shared memory; this device gives a block at most"}}) {
    CAPTURE(what);
    CHECK_THROWS_WITH_AS(dk::launch_cache_attention_bulk<bf16>(nullptr, nullptr, nullptr, nullptr, none, none, 1, 32,
                                                               32, 128, 16, 0, 1.0f, 16, 1, nullptr, nullptr, nullptr, t),
                         doctest::Contains(what), hdpissa::InvalidArgument);
  }
}

TEST_CASE("HDPISSA_DECODE_ATTENTION=bulk and HDPISSA_DECODE_ORDER=0 give the CPU decoder's fp32 tokens; bad values are named") {
  const auto prompts = make_prompts(37, {1, 9, 3, 20, 14, 2, 33}, 3);
  const ModelWeights w = tiny_random(7, false, 0, 0);
  {
    CudaLlama<float> model(w, 1, 1, nullptr);
    {
      ScopedEnv e("HDPISSA_DECODE_ATTENTION", "flash");
      CHECK_THROWS_WITH_AS(CudaGreedyDecoder<float>(model, 2, 16),
                           doctest::Contains("HDPISSA_DECODE_ATTENTION: expected auto, fused, bulk, two-phase or mma"),
                           LlamaError);
    }
    for (const char* bad : {"32", "32x0", "0x4", "32x17", "32x4x", "32x4k"}) {
      CAPTURE(bad);
      ScopedEnv e("HDPISSA_DECODE_BULK_TILE", bad);
      CHECK_THROWS_WITH_AS(CudaGreedyDecoder<float>(model, 2, 16),
                           doctest::Contains("HDPISSA_DECODE_BULK_TILE: expected <keys>x<stages>"), LlamaError);
    }
    ScopedEnv e("HDPISSA_DECODE_ATTENTION", "bulk"), t("HDPISSA_DECODE_BULK_TILE", "48x3");
    CudaGreedyDecoder<float> d(model, 2, 16);
    CHECK(d.attention_kernel() == (hdpissa::llama::gpu::decode_kern::device_has_bulk_copy() ? CacheAttentionKernel::Bulk
                                                                                             : CacheAttentionKernel::Fused));
    CHECK(d.bulk_tiling().tile_keys == 48);
    CHECK(d.bulk_tiling().stages == 3);
  }
  {
    CudaLlama<float> model(w, 1, 1, nullptr);
    ScopedEnv e("HDPISSA_DECODE_ORDER", "yes");
    CHECK_THROWS_WITH_AS(CudaGreedyDecoder<float>(model, 2, 16), doctest::Contains("HDPISSA_DECODE_ORDER: expected 1"),
                         LlamaError);
  }
  {  // the rows in slot order (the default takes them by descending position): the same tokens
    ScopedEnv e("HDPISSA_DECODE_ORDER", "0");
    check_fp32_equal(w, prompts, 40, 3, 8, {}, true, "tiny fp32, HDPISSA_DECODE_ORDER=0");
  }
  for (const char* tile : {"1x1", "32x4"})
    for (const char* chunk : {"16", "8192"}) {
      ScopedEnv e("HDPISSA_DECODE_ATTENTION", "bulk"), t("HDPISSA_DECODE_BULK_TILE", tile),
          c("HDPISSA_DECODE_CHUNK", chunk);
      check_fp32_equal(w, prompts, 40, 3, 8, {}, true, cat("tiny fp32, bulk ", tile, ", chunk ", chunk));
      if (have_stories()) {
        const ModelWeights s = load_hf_checkpoint(stories_dir());
        check_fp32_equal(s, make_prompts(s.config.vocab_size, {1, 30, 7, 60}, 6), 80, 4, 32, {}, true,
                         cat("stories260K fp32, bulk ", tile, ", chunk ", chunk));
      }
    }
}

TEST_CASE("HDPISSA_DECODE_PDL=1 (programmatic dependent launches) keeps every token: fp32 = the CPU decoder, bf16 = plain launches") {
  const auto prompts = make_prompts(37, {1, 9, 3, 20, 14, 2, 33}, 3);
  const ModelWeights w = tiny_random(7, false, 0, 0);
  {
    CudaLlama<float> model(w, 1, 1, nullptr);
    ScopedEnv e("HDPISSA_DECODE_PDL", "yes");
    CHECK_THROWS_WITH_AS(CudaGreedyDecoder<float>(model, 2, 16), doctest::Contains("HDPISSA_DECODE_PDL: expected 1"),
                         LlamaError);
  }
  if (!hdpissa::llama::gpu::decode_kern::device_has_bulk_copy()) {
    CudaLlama<float> model(w, 1, 1, nullptr);
    ScopedEnv e("HDPISSA_DECODE_PDL", "1");
    CHECK_THROWS_WITH_AS(CudaGreedyDecoder<float>(model, 2, 16), doctest::Contains("compute capability 9.0"), LlamaError);
    MESSAGE("SKIPPED: programmatic dependent launches need sm_90");
    return;
  }
  ScopedEnv pdl("HDPISSA_DECODE_PDL", "1");
  // every split kernel, one split and several (the combine), eager and captured steps
  for (const char* kernel : {"bulk", "fused", "two-phase"})
    for (const char* chunk : {"16", "8192"}) {
      ScopedEnv e("HDPISSA_DECODE_ATTENTION", kernel), c("HDPISSA_DECODE_CHUNK", chunk);
      for (bool graphs : {false, true})
        check_fp32_equal(w, prompts, 40, 3, 8, {}, graphs,
                         cat("tiny fp32, pdl, ", kernel, ", chunk ", chunk, graphs ? " (graphs)" : " (eager)"));
    }
  if (!have_stories()) {
    MESSAGE("SKIPPED (stories260K parts): " << stories_dir() << " not found (set HDPISSA_DATA)");
    return;
  }
  const ModelWeights s = load_hf_checkpoint(stories_dir());
  const auto sp = make_prompts(s.config.vocab_size, {1, 7, 23, 2, 60, 13, 31, 5, 90, 4}, 5);
  check_fp32_equal(s, sp, 64, 4, 32, {2, 1}, true, "stories260K fp32, pdl");
  // bf16: the launches change when a block may start, never what it computes: the same tokens
  auto run_bf16 = [&](const char* on) {
    ScopedEnv p("HDPISSA_DECODE_PDL", on);
    hdpissa::CudaStream stream;
    CudaLlama<bf16> model(s, 1, 1, stream.get());
    hdpissa::CudaBackend<bf16> be(model.stream(), {});
    CudaHooks<bf16> hooks(be);
    CudaGreedyDecoder<bf16> dec(model, 5, std::min(s.config.max_seq_len, 90 + 80), 48);
    GreedyDecodeOptions o;
    o.max_new_tokens = 80;
    return dec.generate(sp, o, hooks);
  };
  const auto plain = run_bf16("0"), with_pdl = run_bf16("1");
  REQUIRE(plain.size() == sp.size());
  for (std::size_t i = 0; i < sp.size(); ++i) {
    INFO("prompt " << i << "\n  plain " << str(plain[i]) << "\n  pdl   " << str(with_pdl[i]));
    CHECK(with_pdl[i] == plain[i]);
  }
}

TEST_CASE("cache attention: the tensor-core GQA kernel (bf16) against float64 (groups 2-8, hd 64 / 128, windows, splits)") {
  namespace dk = hdpissa::llama::gpu::decode_kern;
  if (!dk::cache_attention_mma_supported<bf16>(128, 4)) {
    MESSAGE("SKIPPED: the tensor-core cache attention needs sm_80");
    return;
  }
  CHECK_FALSE(dk::cache_attention_mma_supported<float>(128, 4));  // bf16 only
  CHECK_FALSE(dk::cache_attention_mma_supported<bf16>(96, 4));    // hd 64 or 128
  CHECK_FALSE(dk::cache_attention_mma_supported<bf16>(128, 1));   // MHA: the bulk / fused kernels
  CHECK_FALSE(dk::cache_attention_mma_supported<bf16>(128, 16));
  CHECK(dk::resolve_cache_attention<bf16>(CacheAttentionKernel::Mma, 128, 4) == CacheAttentionKernel::Mma);
  // Auto takes it for bf16 GQA (groups 2-8, hd 64 / 128), not for MHA, other head sizes or fp32
  CHECK(dk::resolve_cache_attention<bf16>(CacheAttentionKernel::Auto, 128, 4) == CacheAttentionKernel::Mma);
  CHECK(dk::resolve_cache_attention<bf16>(CacheAttentionKernel::Auto, 64, 8) == CacheAttentionKernel::Mma);
  CHECK(dk::resolve_cache_attention<bf16>(CacheAttentionKernel::Auto, 128, 1) != CacheAttentionKernel::Mma);
  CHECK(dk::resolve_cache_attention<bf16>(CacheAttentionKernel::Auto, 8, 2) != CacheAttentionKernel::Mma);
  CHECK(dk::resolve_cache_attention<float>(CacheAttentionKernel::Auto, 128, 4) != CacheAttentionKernel::Mma);
  CHECK(dk::resolve_cache_attention<bf16>(CacheAttentionKernel::Bulk, 128, 4) != CacheAttentionKernel::Mma);
  CHECK(dk::resolve_cache_attention<float>(CacheAttentionKernel::Mma, 128, 4) ==
        dk::resolve_cache_attention<float>(CacheAttentionKernel::Auto, 128, 4));
  struct Shape {
    int nh, nkv, hd, window;
  };
  // LLaMA-3-8B / Mistral (group 4, hd 128), TinyLlama (group 8, hd 64), groups 2 and 3, windows
  const std::vector<Shape> shapes{{32, 8, 128, 0}, {32, 4, 64, 0}, {8, 4, 128, 100}, {12, 4, 64, 37}, {16, 2, 128, 0}};
  for (const Shape& sh : shapes)
    for (int chunk : {16, 128, 512}) {  // a run shorter than the warps' 64 keys, split edges, one split
      INFO("nh " << sh.nh << " nkv " << sh.nkv << " hd " << sh.hd << " window " << sh.window << " chunk " << chunk);
      const auto [fused, mma] = cache_attention_errors<bf16>(sh.nh, sh.nkv, sh.hd, sh.window, 21, 1.0f, chunk,
                                                             CacheAttentionKernel::Mma);
      const auto [pk_fused, pk_mma] = cache_attention_errors<bf16>(sh.nh, sh.nkv, sh.hd, sh.window, 22, 6.0f, chunk,
                                                                   CacheAttentionKernel::Mma);
      MESSAGE("nh " << sh.nh << " nkv " << sh.nkv << " hd " << sh.hd << " window " << sh.window << " chunk " << chunk
                    << ": bf16 fused " << fused << " mma " << mma << "; peaked fused " << pk_fused << " mma " << pk_mma);
      CHECK(mma < 6e-3);  // the output's rounding and P in bf16 (2^-9 relative each)
      CHECK(pk_mma < 6e-3);
      CHECK(mma < 2.5 * fused + 1e-3);  // not far from the fp32-arithmetic kernel on the same data
    }
  // stages: 2 and 4 give the same bits as the default 3 (the ring changes when, not what)
  {
    const int n = 5, nh = 32, nkv = 8, hd = 128, max_ctx = 300, chunk = 128, splits = 3;
    std::mt19937 rng(4);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    auto fill = [&](std::size_t count) {
      std::vector<bf16> v(count);
      for (auto& x : v) x = static_cast<bf16>(nd(rng));
      return v;
    };
    const auto hq = fill(std::size_t(n) * nh * hd), hk = fill(std::size_t(n) * nkv * max_ctx * hd),
               hv = fill(std::size_t(n) * nkv * max_ctx * hd);
    bf16 *q = to_device(hq), *kc = to_device(hk), *vc = to_device(hv);
    std::int32_t* pos = to_device(std::vector<std::int32_t>{0, 63, 64, 299, 150});
    float *part_o = nullptr, *part_ml = nullptr;
    REQUIRE(cudaMalloc(&part_o, sizeof(float) * std::size_t(n) * nh * splits * hd) == cudaSuccess);
    REQUIRE(cudaMalloc(&part_ml, sizeof(float) * std::size_t(n) * nh * splits * 2) == cudaSuccess);
    std::vector<std::vector<bf16>> outs;
    for (int stages : {3, 2, 4}) {
      bf16* out = nullptr;
      REQUIRE(cudaMalloc(&out, sizeof(bf16) * std::size_t(n) * nh * hd) == cudaSuccess);
      dk::BulkTiling t;
      t.mma_stages = stages;
      dk::launch_cache_attention<bf16>(nullptr, q, kc, vc, nullptr, pos, n, nh, nkv, hd, max_ctx, 0, 0.088f, chunk,
                                       splits, part_o, part_ml, out, CacheAttentionKernel::Mma, t);
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
      outs.emplace_back(std::size_t(n) * nh * hd);
      REQUIRE(cudaMemcpy(outs.back().data(), out, sizeof(bf16) * outs.back().size(), cudaMemcpyDeviceToHost) ==
              cudaSuccess);
      cudaFree(out);
      CAPTURE(stages);
      CHECK(std::memcmp(outs.back().data(), outs.front().data(), sizeof(bf16) * outs.front().size()) == 0);
    }
    std::int32_t* none = nullptr;
    for (int bad : {1, 5})
      CHECK_THROWS_WITH_AS(dk::launch_cache_attention_mma(nullptr, q, kc, vc, none, pos, n, nh, nkv, hd, max_ctx, 0,
                                                          1.0f, chunk, splits, part_o, part_ml, nullptr, bad),
                           doctest::Contains("expected 2 to 4 stages"), hdpissa::InvalidArgument);
    cudaFree(q), cudaFree(kc), cudaFree(vc), cudaFree(pos), cudaFree(part_o), cudaFree(part_ml);
  }
}

TEST_CASE("the tensor-core cache attention (Auto / HDPISSA_DECODE_ATTENTION=mma): bf16 greedy decoding follows the CPU decoder up to near-ties (GQA, hd 64 / 128)") {
  namespace dk = hdpissa::llama::gpu::decode_kern;
  if (!dk::cache_attention_mma_supported<bf16>(64, 2)) {
    MESSAGE("SKIPPED: the tensor-core cache attention needs sm_80");
    return;
  }
  for (const auto& [nh, nkv, hd] : std::vector<std::array<int, 3>>{{4, 2, 64}, {8, 1, 64}, {4, 1, 128}}) {
    ModelWeights w = tiny_random(31 + nh, false, 0, 0);
    ModelConfig c = w.config;
    c.n_heads = nh, c.n_kv_heads = nkv, c.head_dim = hd, c.dim = nh * hd, c.hidden_dim = 2 * c.dim;
    c.vocab_size = 97, c.max_seq_len = 200;
    w = ModelWeights::zeros(c);
    std::mt19937 rng(nh * 100 + hd);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    w.for_each_parameter([&](const std::string& name, float* p, std::int64_t count, const std::vector<std::int64_t>& shape) {
      const bool norm = name.find("norm") != std::string::npos;
      const float sd = shape.size() == 2 ? 1.0f / std::sqrt(static_cast<float>(shape.back())) : 1.0f;
      for (std::int64_t i = 0; i < count; ++i) p[i] = norm ? 1.0f + 0.1f * nd(rng) : sd * nd(rng);
    });
    const auto prompts = make_prompts(c.vocab_size, {1, 70, 9, 33, 120, 2, 64}, 7);
    ScopedEnv e("HDPISSA_DECODE_ATTENTION", "mma");
    for (const char* chunk : {"16", "8192"}) {
      ScopedEnv ch("HDPISSA_DECODE_CHUNK", chunk);
      check_bf16_follows_cpu(w, prompts, 60, 3, 40, cat("mma, ", nh, "/", nkv, " heads x ", hd, ", chunk ", chunk),
                             CacheAttentionKernel::Mma);
    }
    ScopedEnv a("HDPISSA_DECODE_ATTENTION", nullptr);  // Auto: the same kernel by default
    check_bf16_follows_cpu(w, prompts, 60, 3, 40, cat("auto, ", nh, "/", nkv, " heads x ", hd), CacheAttentionKernel::Mma);
  }
}

TEST_CASE("decoder input checks") {
  const ModelWeights w = tiny_random(7, false, 0, 0);
  CudaLlama<float> model(w, 1, 1, nullptr);
  hdpissa::CudaBackend<float> be(model.stream(), {});
  CudaHooks<float> hooks(be);
  CHECK_THROWS_WITH_AS(CudaGreedyDecoder<float>(model, 2, 1000), doctest::Contains("exceeds max_position_embeddings"),
                       LlamaError);
  CHECK_THROWS_WITH_AS(CudaGreedyDecoder<float>(model, 2, 16, 65536),
                       doctest::Contains("expected slots and prefill_rows <= 65535"), LlamaError);
  CudaGreedyDecoder<float> dec(model, 2, 16);
  GreedyDecodeOptions o;
  o.max_new_tokens = 8;
  CHECK_THROWS_WITH_AS(dec.generate({std::vector<std::int32_t>(12, 1)}, o, hooks),
                       doctest::Contains("cache positions"), LlamaError);
  CHECK_THROWS_WITH_AS(dec.generate({{1, 99}}, o, hooks), doctest::Contains("token id 99"), LlamaError);
  const auto empty = dec.generate({{}, std::vector<std::int32_t>(64, 1)}, o, hooks);  // no room: empty
  CHECK(empty.size() == 2);
  CHECK(empty[0].empty());
  CHECK(empty[1].empty());
}

int main(int argc, char** argv) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("SKIP: no CUDA device (%s); GPU tests not run\n",
                e != cudaSuccess ? cudaGetErrorString(e) : "device count is 0");
    return 77;
  }
  doctest::Context ctx;
  ctx.applyCommandLine(argc, argv);
  return ctx.run();
}
