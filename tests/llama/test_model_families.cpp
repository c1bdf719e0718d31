// Model families beyond LLaMA: Qwen2 (frozen q/k/v biases) and sliding-window attention (Mistral;
// Qwen2 layers >= max_window_layers). Checked against an independent naive double-precision model
// (per-position attention written from transformers' mask definition), central finite differences,
// the KV-cache path, hooks (adapters must not drop the bias), a checkpoint written and read back,
// and, when tests/llama/fixtures/models exists, transformers' own logits / loss / gradients
// (tests/reference/make_model_fixtures.py).

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>
#include <map>
#include <tuple>
#include <random>

#include <doctest/doctest.h>

#include "llama/checkpoint.hpp"
#include "llama/model.hpp"
#include "llama/safetensors.hpp"
#include "test_util.hpp"

using namespace hdpissa::llama;
namespace fs = std::filesystem;

namespace {

ModelConfig family_config(bool qkv_bias, int window, int window_from_layer, bool tied) {
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
  c.tie_embeddings = tied;
  c.qkv_bias = qkv_bias;
  c.model_type = qkv_bias ? "qwen2" : window > 0 ? "mistral" : "llama";
  c.sliding_window = window;
  c.window_from_layer = window_from_layer;
  c.validate();
  return c;
}

ModelWeights family_weights(const ModelConfig& c, unsigned seed) {
  ModelWeights w = ModelWeights::zeros(c);
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 0.35f);
  w.for_each_parameter([&](const std::string& name, float* p, std::int64_t count, const std::vector<std::int64_t>&) {
    const bool norm = name.find("norm") != std::string::npos;
    for (std::int64_t i = 0; i < count; ++i) p[i] = norm ? 1.0f + 0.3f * n(rng) : n(rng);
  });
  return w;
}

/// 3 rows of 9, right padded (9, 6, 4), one masked prompt: longer than the windows used.
Batch family_batch(int vocab) {
  Batch b;
  b.batch_size = 3;
  b.seq_len = 9;
  b.lengths = {9, 6, 4};
  std::mt19937 rng(11);
  for (int r = 0; r < 3; ++r)
    for (int t = 0; t < 9; ++t) {
      const bool pad = t >= b.lengths[r];
      const int id = pad ? 0 : static_cast<int>(rng() % static_cast<unsigned>(vocab));
      b.input_ids.push_back(id);
      b.labels.push_back(pad || (r == 1 && t < 2) ? kIgnoreIndex : id);
    }
  return b;
}

using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Independent reference: the whole model in double, one sequence at a time, attention written
/// per (query position, head) from transformers' masks (causal: kv ≤ q; sliding_window_overlay:
/// kv > q − W). Returns the mean loss; `logits` (optional) receives (B·T, vocab), padding rows 0.
double reference_model(const ModelWeights& w, const Batch& b, MatD* logits) {
  const ModelConfig& c = w.config;
  const int D = c.dim, hd = c.head_dim, nh = c.n_heads, group = c.n_heads / c.n_kv_heads, T = b.seq_len;
  const auto inv = c.rope_inv_freq();
  auto rms = [&](const MatD& x, const Vector& g) {
    MatD y(x.rows(), x.cols());
    for (Eigen::Index i = 0; i < x.rows(); ++i) {
      const double r = 1.0 / std::sqrt(x.row(i).squaredNorm() / D + static_cast<double>(c.norm_eps));
      for (int j = 0; j < D; ++j) y(i, j) = x(i, j) * r * g(j);
    }
    return y;
  };
  auto lin = [](const MatD& x, const Matrix& W, const Vector* bias) {
    MatD y = x * W.cast<double>().transpose();
    if (bias) y.rowwise() += bias->cast<double>().transpose();
    return y;
  };
  auto rope = [&](MatD& m, int heads) {
    for (Eigen::Index t = 0; t < m.rows(); ++t)
      for (int h = 0; h < heads; ++h)
        for (int i = 0; i < hd / 2; ++i) {
          const double a = m(t, h * hd + i), bb = m(t, h * hd + i + hd / 2);
          const double ang = static_cast<double>(t) * inv[i], cs = std::cos(ang), sn = std::sin(ang);
          m(t, h * hd + i) = a * cs - bb * sn;
          m(t, h * hd + i + hd / 2) = bb * cs + a * sn;
        }
  };
  if (logits) *logits = MatD::Zero(static_cast<Eigen::Index>(b.batch_size) * T, c.vocab_size);
  double loss = 0;
  long long n = 0;
  for (int s = 0; s < b.batch_size; ++s) {
    const int L = b.lengths[s];
    MatD x(L, D);
    for (int t = 0; t < L; ++t) x.row(t) = w.embed.row(b.input_ids[s * T + t]).cast<double>();
    for (int l = 0; l < c.n_layers; ++l) {
      const LayerWeights& lw = w.layers[l];
      const int W = c.sliding_window > 0 && l >= c.window_from_layer ? c.sliding_window : 0;
      const MatD xn = rms(x, lw.attn_norm);
      MatD q = lin(xn, lw.wq, lw.bq.size() ? &lw.bq : nullptr);
      MatD k = lin(xn, lw.wk, lw.bk.size() ? &lw.bk : nullptr);
      const MatD v = lin(xn, lw.wv, lw.bv.size() ? &lw.bv : nullptr);
      rope(q, nh);
      rope(k, c.n_kv_heads);
      MatD o = MatD::Zero(L, c.q_dim());
      for (int i = 0; i < L; ++i)
        for (int h = 0; h < nh; ++h) {
          const int g = h / group;
          std::vector<double> sc;
          std::vector<int> keys;
          for (int j = 0; j < L; ++j) {
            const bool causal = j <= i;
            const bool in_window = W == 0 || j > i - W;
            if (!causal || !in_window) continue;
            keys.push_back(j);
            sc.push_back(q.row(i).segment(h * hd, hd).dot(k.row(j).segment(g * hd, hd)) / std::sqrt(double(hd)));
          }
          double mx = -1e300, sum = 0;
          for (double z : sc) mx = std::max(mx, z);
          for (double& z : sc) sum += (z = std::exp(z - mx));
          for (std::size_t u = 0; u < keys.size(); ++u)
            o.row(i).segment(h * hd, hd) += (sc[u] / sum) * v.row(keys[u]).segment(g * hd, hd);
        }
      x += lin(o, lw.wo, nullptr);
      const MatD xn2 = rms(x, lw.ffn_norm);
      const MatD gate = lin(xn2, lw.w_gate, nullptr), up = lin(xn2, lw.w_up, nullptr);
      MatD act(L, c.hidden_dim);
      for (int i = 0; i < L; ++i)
        for (int j = 0; j < c.hidden_dim; ++j) act(i, j) = gate(i, j) / (1 + std::exp(-gate(i, j))) * up(i, j);
      x += lin(act, lw.w_down, nullptr);
    }
    const MatD lg = rms(x, w.final_norm) * w.classifier().cast<double>().transpose();
    if (logits) logits->middleRows(static_cast<Eigen::Index>(s) * T, L) = lg;
    for (int t = 0; t + 1 < L; ++t) {
      const int lab = b.labels[s * T + t + 1];
      if (lab == kIgnoreIndex) continue;
      const double mx = lg.row(t).maxCoeff();
      loss += mx + std::log((lg.row(t).array() - mx).exp().sum()) - lg(t, lab);
      ++n;
    }
  }
  return n ? loss / static_cast<double>(n) : 0.0;
}

double model_loss(const ModelWeights& w, const Batch& b) {
  CpuHooks plain;
  Activations acts;
  return forward(w, b, plain, acts).mean();
}

struct Variant {
  const char* name;
  bool bias;
  int window, from_layer;
  bool tied;
};
const Variant kVariants[] = {
    {"mistral window 3 (every layer)", false, 3, 0, false},
    {"qwen2 biases, full attention", true, 0, 0, true},
    {"qwen2 biases, window 2 from layer 1", true, 2, 1, false},
    {"window 1 (each query sees itself only)", false, 1, 0, true},
};

}  // namespace

TEST_CASE("model families: forward matches a naive double-precision model (biases, sliding window)") {
  for (const Variant& vt : kVariants) {
    CAPTURE(vt.name);
    const ModelWeights w = family_weights(family_config(vt.bias, vt.window, vt.from_layer, vt.tied), 21);
    const Batch b = family_batch(w.config.vocab_size);
    MatD ref_logits;
    const double ref = reference_model(w, b, &ref_logits);
    CpuHooks plain;
    Activations acts;
    const double ours = forward(w, b, plain, acts).mean();
    CHECK(ours == doctest::Approx(ref).epsilon(2e-5));
    std::vector<std::int64_t> rows;
    for (int s = 0; s < b.batch_size; ++s)
      for (int t = 0; t < b.lengths[s]; ++t) rows.push_back(static_cast<std::int64_t>(s) * b.seq_len + t);
    const Matrix lg = logits_at(w, acts, rows);
    double worst = 0;
    for (std::size_t i = 0; i < rows.size(); ++i)
      for (int j = 0; j < w.config.vocab_size; ++j)
        worst = std::max(worst, std::abs(lg(static_cast<Eigen::Index>(i), j) - ref_logits(rows[i], j)));
    CHECK(worst < 2e-4);
    // the window (and the bias) matter: without them the reference differs
    ModelWeights plain_w = w;
    plain_w.config.sliding_window = 0;
    plain_w.config.qkv_bias = false;
    for (auto& l : plain_w.layers) l.bq = l.bk = l.bv = Vector();
    CHECK(std::abs(reference_model(plain_w, b, nullptr) - ref) > 1e-4);
  }
}

TEST_CASE("model families: backward agrees with central finite differences (biases, sliding window)") {
  for (const Variant& vt : kVariants) {
    CAPTURE(vt.name);
    ModelWeights w = family_weights(family_config(vt.bias, vt.window, vt.from_layer, vt.tied), 5);
    const Batch b = family_batch(w.config.vocab_size);
    ModelWeights grads = ModelWeights::zeros_like(w);
    FullFineTuneHooks hooks(grads);
    Activations acts;
    forward(w, b, hooks, acts);
    backward(w, acts, hooks, &grads);
    std::vector<std::tuple<std::string, float*, std::int64_t>> params;
    w.for_each_parameter([&](const std::string& name, float* p, std::int64_t n, const std::vector<std::int64_t>&) {
      params.emplace_back(name, p, n);
    });
    std::vector<const float*> gptr;
    grads.for_each_parameter([&](const std::string&, float* p, std::int64_t, const std::vector<std::int64_t>&) { gptr.push_back(p); });
    REQUIRE(gptr.size() == params.size());
    std::mt19937 rng(123);
    int biases = 0;
    for (std::size_t k = 0; k < params.size(); ++k) {
      const auto& [name, base, size] = params[k];
      const bool bias = name.ends_with(".bias");
      biases += bias;
      for (int rep = 0; rep < (bias ? 8 : 3); ++rep) {
        const std::int64_t i = static_cast<std::int64_t>(rng() % static_cast<unsigned>(size));
        float* p = base + i;
        const float orig = *p, eps = 1e-2f;
        *p = orig + eps;
        const double lp = model_loss(w, b);
        *p = orig - eps;
        const double lm = model_loss(w, b);
        *p = orig;
        const double fd = (lp - lm) / (2.0 * eps), an = gptr[k][i];
        INFO(name << "[" << i << "]: analytic " << an << " vs finite difference " << fd);
        CHECK(std::abs(an - fd) <= 2e-3 + 3e-2 * std::abs(fd));
      }
    }
    CHECK(biases == (vt.bias ? 3 * w.config.n_layers : 0));
  }
}

TEST_CASE("model families: KV-cache decoding matches the full forward within the window") {
  for (const Variant& vt : kVariants) {
    CAPTURE(vt.name);
    const ModelWeights w = family_weights(family_config(vt.bias, vt.window, vt.from_layer, vt.tied), 8);
    Batch b = family_batch(w.config.vocab_size);
    const int L = b.lengths[0];
    std::vector<std::int32_t> seq(b.input_ids.begin(), b.input_ids.begin() + L);
    CpuHooks plain;
    Activations acts;
    forward(w, b, plain, acts);
    std::vector<std::int64_t> rows;
    for (int t = 0; t < L; ++t) rows.push_back(t);
    const Matrix full = logits_at(w, acts, rows);
    KVCache cache(w.config, L);
    Matrix inc = forward_incremental(w, {seq.begin(), seq.begin() + 2}, cache, plain);  // a 2-token prompt
    double worst = (inc - full.topRows(2)).cwiseAbs().maxCoeff();
    for (int t = 2; t < L; ++t) {
      inc = forward_incremental(w, {seq[t]}, cache, plain);
      worst = std::max(worst, static_cast<double>((inc.row(0) - full.row(t)).cwiseAbs().maxCoeff()));
    }
    CHECK(worst < 1e-4);
  }
}

TEST_CASE("model families: adapters see X·Wᵀ only; the frozen bias is kept (adapter ≡ merged weight)") {
  const ModelWeights w = family_weights(family_config(true, 3, 0, false), 9);
  const Batch b = family_batch(w.config.vocab_size);
  // a hook adding a fixed low-rank delta to q and v: Y = X (W + ΔW)ᵀ
  struct DeltaHooks : EigenHooks {
    std::map<int, Matrix> delta;
    void forward(LinearId id, ConstMatrixRef W, ConstMatrixRef X, MatrixRef Y) override {
      Y.noalias() = X * W.transpose();
      if (auto it = delta.find(id.index()); it != delta.end()) Y.noalias() += X * it->second.transpose();
    }
  } hooks;
  ModelWeights merged = w;
  std::mt19937 rng(3);
  std::normal_distribution<float> n(0.0f, 0.2f);
  for (int l = 0; l < w.config.n_layers; ++l)
    for (Module m : {Module::q, Module::v}) {
      const LinearId id{l, m};
      Matrix a(w.linear(id).rows(), 2), bb(2, w.linear(id).cols());
      for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = n(rng);
      for (Eigen::Index i = 0; i < bb.size(); ++i) bb.data()[i] = n(rng);
      hooks.delta[id.index()] = a * bb;
      merged.linear(id) += a * bb;
    }
  Activations acts;
  const double with_adapter = forward(w, b, hooks, acts).mean();
  CHECK(with_adapter == doctest::Approx(reference_model(merged, b, nullptr)).epsilon(2e-5));
  CHECK(with_adapter == doctest::Approx(model_loss(merged, b)).epsilon(1e-5));
}

TEST_CASE("model families: a Qwen2 checkpoint written with our writer loads back with its biases and window") {
  const ModelWeights w = family_weights(family_config(true, 4, 1, true), 13);
  const fs::path dir = llama_test::scratch("families_qwen2") / "ckpt";
  save_hf_checkpoint(dir, w);
  const nlohmann::json cfg = nlohmann::json::parse(read_file_text(dir / "config.json"));
  CHECK(cfg["model_type"] == "qwen2");
  CHECK(cfg["architectures"][0] == "Qwen2ForCausalLM");
  CHECK(cfg["use_sliding_window"] == true);
  CHECK(cfg["sliding_window"] == 4);
  CHECK(cfg["max_window_layers"] == 1);
  CHECK_FALSE(cfg.contains("attention_bias"));  // Qwen2Config has no such field: biases are implied
  const SafetensorsFile st(dir / "model.safetensors");
  CHECK(st.tensors().count("model.layers.1.self_attn.k_proj.bias") == 1);
  CHECK(st.tensors().count("model.layers.1.self_attn.o_proj.bias") == 0);
  const ModelWeights r = load_checkpoint(dir);
  CHECK(r.config.qkv_bias);
  CHECK(r.config.sliding_window == 4);
  CHECK(r.config.window_from_layer == 1);
  CHECK(r.config.model_type == "qwen2");
  std::vector<std::pair<std::string, std::vector<float>>> a, bb;
  w.for_each_parameter([&](const std::string& nme, const float* p, std::int64_t n, const std::vector<std::int64_t>&) {
    a.emplace_back(nme, std::vector<float>(p, p + n));
  });
  r.for_each_parameter([&](const std::string& nme, const float* p, std::int64_t n, const std::vector<std::int64_t>&) {
    bb.emplace_back(nme, std::vector<float>(p, p + n));
  });
  CHECK(a == bb);  // bit-exact, biases included
  const Batch b = family_batch(w.config.vocab_size);
  CHECK(model_loss(r, b) == model_loss(w, b));
  // saving again with the source config keeps model_type / architectures and the biases
  SaveOptions opt;
  opt.source_config_dir = dir;
  const fs::path dir2 = llama_test::scratch("families_qwen2_resave") / "ckpt";
  save_hf_checkpoint(dir2, r, opt);
  const nlohmann::json cfg2 = nlohmann::json::parse(read_file_text(dir2 / "config.json"));
  CHECK(cfg2["model_type"] == "qwen2");
  CHECK(cfg2["architectures"][0] == "Qwen2ForCausalLM");
  CHECK(load_checkpoint(dir2).layers[0].bv == w.layers[0].bv);
}

// transformers' own numbers (tests/reference/make_model_fixtures.py, run on the GPU machine with
// transformers 5.17; the fixtures in tests/llama/fixtures/models are committed): logits of every
// non-padded row, loss and recorded weight gradients of tiny random Qwen2 (tied / untied), Mistral
// with a binding sliding window, and LLaMA-3.1 rope scaling.
namespace {

void compare_family(const std::string& name, int expect_window, bool expect_bias) {
  const fs::path dir = fs::path(HDPISSA_LLAMA_FIXTURES) / "models" / name;
  REQUIRE_MESSAGE(fs::exists(dir / "reference.safetensors"),
                  "missing fixture " << dir << ": run tests/reference/make_model_fixtures.py where transformers exists");
  const ModelWeights w = load_checkpoint(dir);
  CHECK(w.config.sliding_window == expect_window);
  CHECK(w.config.qkv_bias == expect_bias);
  const SafetensorsFile ref(dir / "reference.safetensors");
  Batch b;
  b.batch_size = static_cast<int>(ref.info("input_ids").shape[0]);
  b.seq_len = static_cast<int>(ref.info("input_ids").shape[1]);
  const auto ids = ref.read("input_ids"), lengths = ref.read("lengths");
  for (float v : lengths) b.lengths.push_back(static_cast<int>(v));
  for (int r = 0; r < b.batch_size; ++r)
    for (int t = 0; t < b.seq_len; ++t) {
      const float id = ids[static_cast<std::size_t>(r * b.seq_len + t)];
      b.input_ids.push_back(static_cast<std::int32_t>(id));
      b.labels.push_back(t < b.lengths[std::size_t(r)] ? static_cast<std::int32_t>(id) : kIgnoreIndex);
    }
  if (expect_window > 0) REQUIRE(b.seq_len > expect_window);  // the window must matter

  ModelWeights grads = ModelWeights::zeros_like(w);
  FullFineTuneHooks hooks(grads);
  Activations acts;
  const LossResult loss = forward(w, b, hooks, acts);
  backward(w, acts, hooks, &grads);
  const float ref_loss = ref.read("loss")[0];
  CHECK(loss.mean() == doctest::Approx(ref_loss).epsilon(1e-5));

  std::vector<std::int64_t> rows;
  for (int r = 0; r < b.batch_size; ++r)
    for (int t = 0; t < b.lengths[std::size_t(r)]; ++t) rows.push_back(std::int64_t(r) * b.seq_len + t);
  const Matrix logits = logits_at(w, acts, rows);
  const auto all = ref.read("logits");  // (B, T, V)
  const std::int64_t V = w.config.vocab_size;
  std::vector<float> sel;
  for (std::int64_t row : rows) sel.insert(sel.end(), all.begin() + row * V, all.begin() + (row + 1) * V);
  const auto lc = llama_test::compare(logits.data(), sel.data(), logits.size(), 1e-4, 1e-4);
  INFO(name << " logits worst index " << lc.worst_index << ": " << lc.a << " vs " << lc.ref);
  CHECK(lc.worst_ratio <= 1.0);

  int compared = 0;
  grads.for_each_parameter([&](const std::string& pname, const float* g, std::int64_t n, const std::vector<std::int64_t>& shape) {
    const std::string key = "grad." + pname;
    if (!ref.contains(key)) return;
    CHECK(ref.info(key).shape == shape);
    const auto rg = ref.read(key);
    double gmax = 0;
    for (float v : rg) gmax = std::max(gmax, static_cast<double>(std::abs(v)));
    const auto r = llama_test::compare(g, rg.data(), n, 1e-4 * gmax + 1e-7, 1e-3);
    INFO(name << ": " << pname << " worst index " << r.worst_index << ": " << r.a << " vs " << r.ref);
    CHECK(r.worst_ratio <= 1.0);
    ++compared;
  });
  CHECK(compared >= 1);
  MESSAGE(name << ": loss " << loss.mean() << " vs transformers " << ref_loss << ", logits worst ratio " << lc.worst_ratio
               << ", " << compared << " weight gradients compared");
}

}  // namespace

TEST_CASE("model families: transformers fixtures: Qwen2 (q/k/v biases, untied) equals transformers") { compare_family("qwen2", 0, true); }
TEST_CASE("model families: transformers fixtures: Qwen2 with tied embeddings equals transformers") { compare_family("qwen2-tied", 0, true); }
TEST_CASE("model families: transformers fixtures: Mistral, sliding window 8 on 24 tokens, equals transformers") {
  compare_family("mistral-swa", 8, false);
}
TEST_CASE("model families: transformers fixtures: LLaMA-3.1 rope scaling equals transformers") { compare_family("llama3-rope", 0, false); }

