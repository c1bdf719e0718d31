// Model forward/backward: PyTorch reference (logits, loss, every gradient), finite differences,
// known generation, KV-cache consistency, hook contract.

#include <cstdlib>
#include <random>
#include <set>
#include <tuple>

#include <doctest/doctest.h>

#include "llama/checkpoint.hpp"
#include "llama/data.hpp"
#include "llama/model.hpp"
#include "llama/tokenizer.hpp"
#include "test_util.hpp"

using namespace hdpissa::llama;
namespace fs = std::filesystem;

namespace {

ModelConfig tiny_config(bool tied) {
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
  return c;
}

ModelWeights random_weights(const ModelConfig& c, unsigned seed) {
  ModelWeights w = ModelWeights::zeros(c);
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 0.35f);
  w.for_each_parameter([&](const std::string& name, float* p, std::int64_t count, const std::vector<std::int64_t>&) {
    const bool norm = name.find("norm") != std::string::npos;
    for (std::int64_t i = 0; i < count; ++i) p[i] = norm ? 1.0f + 0.3f * n(rng) : n(rng);
  });
  return w;
}

/// 3 rows, right padded, one masked prompt.
Batch tiny_batch(int vocab) {
  Batch b;
  b.batch_size = 3;
  b.seq_len = 7;
  b.lengths = {7, 5, 3};
  std::mt19937 rng(7);
  for (int r = 0; r < 3; ++r)
    for (int t = 0; t < 7; ++t) {
      const bool pad = t >= b.lengths[r];
      const int id = pad ? 0 : static_cast<int>(rng() % static_cast<unsigned>(vocab));
      b.input_ids.push_back(id);
      b.labels.push_back(pad || (r == 1 && t < 3) ? kIgnoreIndex : id);
    }
  b.example_ids = {0, 1, 2};
  return b;
}

double loss_of(const ModelWeights& w, const Batch& b) {
  CpuHooks plain;
  Activations acts;
  return forward(w, b, plain, acts).mean();
}

}  // namespace

namespace {

/// Runs tests/reference/llama_ref.py on `model_dir` and compares logits, loss and every gradient.
void compare_with_torch_reference(const fs::path& model_dir, const std::string& tag) {
  const std::string python = HDPISSA_LLAMA_TORCH_PYTHON;
  if (python.empty()) {
    MESSAGE("SKIPPED: no python3 with torch at configure time; set HDPISSA_LLAMA_PYTHON to enable "
            "the reference comparison (tests/reference/llama_ref.py)");
    return;
  }
  const auto dir = llama_test::scratch("torch_reference_" + tag);
  const auto fixture = dir / "ref.safetensors";
  const std::string cmd = "\"" + python + "\" \"" HDPISSA_LLAMA_REF_SCRIPT "\" \"" + model_dir.string() + "\" \"" +
                          fixture.string() + "\" > \"" + (dir / "log.txt").string() + "\" 2>&1";
  const int rc = std::system(cmd.c_str());
  if (WIFEXITED(rc) && WEXITSTATUS(rc) == 3) {
    MESSAGE("SKIPPED: torch not importable by " << python);
    return;
  }
  INFO("reference log: " << read_file_text(dir / "log.txt"));
  REQUIRE(rc == 0);
  const SafetensorsFile ref(fixture);

  const ModelWeights w = load_hf_checkpoint(model_dir);
  Batch b;
  const auto ids = ref.read("input_ids"), labels = ref.read("labels"), lengths = ref.read("lengths");
  b.batch_size = static_cast<int>(ref.info("input_ids").shape[0]);
  b.seq_len = static_cast<int>(ref.info("input_ids").shape[1]);
  for (float v : ids) b.input_ids.push_back(static_cast<std::int32_t>(v));
  for (float v : labels) b.labels.push_back(static_cast<std::int32_t>(v));
  for (float v : lengths) b.lengths.push_back(static_cast<int>(v));

  ModelWeights grads = ModelWeights::zeros_like(w);
  FullFineTuneHooks hooks(grads);
  Activations acts;
  ForwardOptions fopt;
  fopt.loss_chunk_rows = 16;  // several chunks, exercises the chunked loss
  const LossResult loss = forward(w, b, hooks, acts, fopt);
  backward(w, acts, hooks, &grads, 1.0f, /*loss_chunk_rows=*/16);

  const float ref_loss = ref.read("loss")[0];
  CHECK(loss.mean() == doctest::Approx(ref_loss).epsilon(1e-5));
  CHECK(loss.n_tokens == b.num_target_tokens());

  std::vector<std::int64_t> rows;
  for (float r : ref.read("logit_rows")) rows.push_back(static_cast<std::int64_t>(r));
  const Matrix logits = logits_at(w, acts, rows);
  const auto ref_logits = ref.read("logits");
  REQUIRE(static_cast<std::size_t>(logits.size()) == ref_logits.size());
  const auto lc = llama_test::compare(logits.data(), ref_logits.data(), logits.size(), 1e-4, 1e-4);
  INFO("logits worst index " << lc.worst_index << ": " << lc.a << " vs " << lc.ref);
  CHECK(lc.worst_ratio <= 1.0);

  // every gradient: fp32 vs an fp64 reference. atol is relative to the tensor's largest entry.
  int compared = 0;
  double worst = 0;
  std::string worst_name;
  grads.for_each_parameter([&](const std::string& name, const float* g, std::int64_t n, const std::vector<std::int64_t>& shape) {
    const std::string key = "grad." + name;
    REQUIRE_MESSAGE(ref.contains(key), key);
    CHECK(ref.info(key).shape == shape);
    const auto rg = ref.read(key);
    double gmax = 0;
    for (float v : rg) gmax = std::max(gmax, static_cast<double>(std::abs(v)));
    const auto r = llama_test::compare(g, rg.data(), n, 1e-4 * gmax + 1e-7, 1e-3);
    INFO(name << " worst index " << r.worst_index << ": " << r.a << " vs " << r.ref << " (max |g| " << gmax
              << ", ratio " << r.worst_ratio << ")");
    CHECK(r.worst_ratio <= 1.0);
    if (r.worst_ratio > worst) { worst = r.worst_ratio; worst_name = name; }
    ++compared;
  });
  MESSAGE(tag << " reference: loss " << loss.mean() << " vs " << ref_loss << "; logits worst ratio " << lc.worst_ratio
          << "; gradients worst ratio " << worst << " (" << worst_name << "), 1 = tolerance");
  CHECK(compared == (w.config.tie_embeddings ? 47 : 48));  // embedding + 5 × 9 + final norm (+ lm_head)
}

}  // namespace


TEST_CASE("model: logits, loss and every gradient match the PyTorch reference (stories260K-hf)") {
  if (!llama_test::have_data()) {
    MESSAGE("SKIPPED: shared data not found at " << llama_test::data_dir());
    return;
  }
  compare_with_torch_reference(llama_test::data_dir() / "stories260K-hf", "stories260K");
}

TEST_CASE("model: PyTorch reference on an untied, BF16-stored, llama3-RoPE-scaled variant") {
  if (!llama_test::have_data()) {
    MESSAGE("SKIPPED: shared data not found at " << llama_test::data_dir());
    return;
  }
  ModelWeights w = load_hf_checkpoint(llama_test::data_dir() / "stories260K-hf");
  w.config.tie_embeddings = false;
  w.lm_head = w.embed * 0.75f;
  w.lm_head.row(3).array() += 0.1f;
  w.config.rope_theta = 5000.0;
  // hd = 8: wavelengths 6.3, 53, 444, 3737 vs [16, 64] → one high (kept), one medium (smoothed), two low (÷ factor)
  w.config.rope_scaling = {"llama3", 4.0, 1.0, 4.0, 64};
  const auto inv = w.config.rope_inv_freq();
  REQUIRE(inv.size() == 4);
  CHECK(inv[0] == 1.0);
  const auto out = llama_test::scratch("variant_ckpt") / "ckpt";
  SaveOptions opt;
  opt.dtype = DType::BF16;
  save_hf_checkpoint(out, w, opt);
  compare_with_torch_reference(out, "variant");
}

TEST_CASE("model: backward agrees with central finite differences (tiny random model)") {
  for (bool tied : {true, false}) {
    CAPTURE(tied);
    const ModelConfig c = tiny_config(tied);
    ModelWeights w = random_weights(c, tied ? 1 : 2);
    const Batch b = tiny_batch(c.vocab_size);
    ModelWeights grads = ModelWeights::zeros_like(w);
    FullFineTuneHooks hooks(grads);
    Activations acts;
    forward(w, b, hooks, acts);
    backward(w, acts, hooks, &grads);
    // padding tokens (id 0 at padded positions) must not receive embedding gradient from padding
    std::mt19937 rng(99);
    int checked = 0;
    std::vector<std::pair<std::string, float*>> params;
    std::vector<std::int64_t> sizes;
    w.for_each_parameter([&](const std::string& name, float* p, std::int64_t n, const std::vector<std::int64_t>&) {
      params.emplace_back(name, p);
      sizes.push_back(n);
    });
    std::vector<const float*> gptr;
    grads.for_each_parameter([&](const std::string&, float* p, std::int64_t, const std::vector<std::int64_t>&) { gptr.push_back(p); });
    for (std::size_t k = 0; k < params.size(); ++k) {
      for (int rep = 0; rep < 4; ++rep) {
        const std::int64_t i = static_cast<std::int64_t>(rng() % static_cast<unsigned>(sizes[k]));
        float* p = params[k].second + i;
        const float orig = *p;
        const float eps = 1e-2f;
        *p = orig + eps;
        const double lp = loss_of(w, b);
        *p = orig - eps;
        const double lm = loss_of(w, b);
        *p = orig;
        const double fd = (lp - lm) / (2.0 * eps);
        const double an = gptr[k][i];
        INFO(params[k].first << "[" << i << "]: analytic " << an << " vs finite difference " << fd);
        CHECK(std::abs(an - fd) <= 2e-3 + 3e-2 * std::abs(fd));
        ++checked;
      }
    }
    CHECK(checked == static_cast<int>(params.size()) * 4);
  }
}

TEST_CASE("model: gradient accumulation is linear in grad_scale; padding rows do not matter") {
  const ModelConfig c = tiny_config(false);
  const ModelWeights w = random_weights(c, 3);
  Batch b = tiny_batch(c.vocab_size);
  ModelWeights g1 = ModelWeights::zeros_like(w), g2 = ModelWeights::zeros_like(w);
  FullFineTuneHooks h1(g1), h2(g2);
  Activations acts;
  const double l1 = forward(w, b, h1, acts).mean();
  backward(w, acts, h1, &g1, 1.0f);
  // different padding token ids must change nothing
  for (int r = 0; r < b.batch_size; ++r)
    for (int t = b.lengths[r]; t < b.seq_len; ++t) b.input_ids[r * b.seq_len + t] = 5;
  const double l2 = forward(w, b, h2, acts).mean();
  backward(w, acts, h2, &g2, 0.5f);
  backward(w, acts, h2, &g2, 0.5f);
  CHECK(l1 == doctest::Approx(l2).epsilon(1e-6));
  g1.for_each_parameter([&, k = 0](const std::string& name, const float* a, std::int64_t n, const std::vector<std::int64_t>&) mutable {
    std::vector<const float*> bs;
    g2.for_each_parameter([&](const std::string&, const float* p, std::int64_t, const std::vector<std::int64_t>&) { bs.push_back(p); });
    const auto r = llama_test::compare(bs[k], a, n, 1e-6, 1e-5);
    INFO(name);
    CHECK(r.worst_ratio <= 1.0);
    ++k;
  });
}

TEST_CASE("model: hooks see every target linear with the documented order, shapes and inputs") {
  const ModelConfig c = tiny_config(true);
  const ModelWeights w = random_weights(c, 4);
  const Batch b = tiny_batch(c.vocab_size);
  struct Recorder : EigenHooks {
    std::vector<std::pair<LinearId, bool>> calls;  // (id, is_backward)
    std::vector<Matrix> saved_x;
    int bad_shapes = 0, bad_inputs = 0;
    void forward(LinearId id, ConstMatrixRef W, ConstMatrixRef X, MatrixRef Y) override {
      calls.push_back({id, false});
      if (X.cols() != W.cols() || Y.cols() != W.rows() || Y.rows() != X.rows()) ++bad_shapes;
      saved_x.push_back(X);
      EigenHooks::forward(id, W, X, Y);
    }
    void backward(LinearId id, ConstMatrixRef W, ConstMatrixRef X, ConstMatrixRef dY, MatrixRef dX) override {
      calls.push_back({id, true});
      if (dY.cols() != W.rows() || dX.cols() != W.cols() || dX.rows() != X.rows()) ++bad_shapes;
      if (!X.isApprox(saved_x.at(id.index()), 0.0f) && X != saved_x.at(id.index())) ++bad_inputs;
      EigenHooks::backward(id, W, X, dY, dX);
    }
  } rec;
  Activations acts;
  forward(w, b, rec, acts);
  backward(w, acts, rec, nullptr);
  REQUIRE(rec.calls.size() == static_cast<std::size_t>(2 * 7 * c.n_layers));
  CHECK(rec.bad_shapes == 0);
  CHECK(rec.bad_inputs == 0);  // backward gets exactly the X the forward saw
  for (int i = 0; i < 7 * c.n_layers; ++i) {
    CHECK(rec.calls[i].first.index() == i);
    CHECK_FALSE(rec.calls[i].second);
  }
  const Module back_order[] = {Module::down, Module::up, Module::gate, Module::o, Module::v, Module::k, Module::q};
  for (int l = c.n_layers - 1, i = 7 * c.n_layers; l >= 0; --l)
    for (Module m : back_order) {
      CHECK(rec.calls[i].first == LinearId{l, m});
      CHECK(rec.calls[i].second);
      ++i;
    }
}

TEST_CASE("model: KV-cache incremental logits equal the full forward") {
  const ModelConfig c = tiny_config(false);
  const ModelWeights w = random_weights(c, 5);
  std::vector<std::int32_t> toks = {1, 4, 9, 16, 25, 36, 2, 3, 5, 7, 11};
  CpuHooks plain;
  Activations acts;
  forward(w, Batch::single(toks), plain, acts);
  std::vector<std::int64_t> rows(toks.size());
  for (std::size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<std::int64_t>(i);
  const Matrix full = logits_at(w, acts, rows);
  KVCache cache(c, 16);
  const Matrix a = forward_incremental(w, {toks.begin(), toks.begin() + 4}, cache, plain);
  Matrix inc(static_cast<Eigen::Index>(toks.size()), c.vocab_size);
  inc.topRows(4) = a;
  for (std::size_t i = 4; i < toks.size(); ++i) inc.row(static_cast<Eigen::Index>(i)) = forward_incremental(w, {toks[i]}, cache, plain);
  const auto r = llama_test::compare(inc.data(), full.data(), full.size(), 1e-5, 1e-5);
  CHECK(r.worst_ratio <= 1.0);
}

TEST_CASE("model: greedy generation from BOS reproduces the known TinyStories output") {
  if (!llama_test::have_data()) {
    MESSAGE("SKIPPED: shared data not found at " << llama_test::data_dir());
    return;
  }
  const auto d = llama_test::data_dir();
  const Tokenizer tok(d / "stories260K" / "tok512.model");
  const std::string expected =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park.";
  for (const auto& path : {d / "stories260K" / "stories260K.bin", d / "stories260K-hf"}) {
    CAPTURE(path.string());
    const ModelWeights w = load_checkpoint(path);
    GenerateOptions opt;
    opt.max_new_tokens = 40;
    const auto out = generate_greedy(w, {tok.bos_id()}, opt);
    const std::string text = tok.decode(out);
    CHECK(text.rfind(expected, 0) == 0);
    INFO(text);
  }
}

TEST_CASE("model: held-out loss evaluation sums over batches") {
  const ModelConfig c = tiny_config(true);
  const ModelWeights w = random_weights(c, 6);
  const Batch b = tiny_batch(c.vocab_size);
  CpuHooks plain;
  const LossResult one = evaluate_loss(w, std::vector<Batch>{b}, plain);
  const LossResult two = evaluate_loss(w, std::vector<Batch>{b, b}, plain);
  CHECK(two.n_tokens == 2 * one.n_tokens);
  CHECK(two.mean() == doctest::Approx(one.mean()).epsilon(1e-6));
  CHECK(one.n_tokens == b.num_target_tokens());
}

TEST_CASE("model: an active-adapter (LoRA-style) hook gets what it needs; its gradients match finite differences") {
  // Y = X Wᵀ + s (X Aᵀ) Bᵀ on every target linear; backward: dX = dY W + s (dY B) A,
  // g_A += s (dY B)ᵀ X, g_B += s dYᵀ (X Aᵀ). Written only against the LinearHooks contract.
  struct LoraHooks : EigenHooks {
    int r = 2;
    float s = 0.5f;
    std::vector<Matrix> A, B, gA, gB;  // per LinearId::index(): A (r, in), B (out, r)
    LoraHooks(const ModelWeights& w, unsigned seed) {
      std::mt19937 rng(seed);
      std::normal_distribution<float> nd(0.0f, 0.3f);
      for (int l = 0; l < w.config.n_layers; ++l)
        for (int m = 0; m < kModulesPerLayer; ++m) {
          const Matrix& W = w.linear({l, static_cast<Module>(m)});
          Matrix a(r, W.cols()), b(W.rows(), r);
          for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = nd(rng);
          for (Eigen::Index i = 0; i < b.size(); ++i) b.data()[i] = nd(rng);
          A.push_back(a);
          B.push_back(b);
          gA.push_back(Matrix::Zero(a.rows(), a.cols()));
          gB.push_back(Matrix::Zero(b.rows(), b.cols()));
        }
    }
    void forward(LinearId id, ConstMatrixRef W, ConstMatrixRef X, MatrixRef Y) override {
      const int i = id.index();
      Y.noalias() = X * W.transpose();
      Y.noalias() += s * ((X * A[i].transpose()) * B[i].transpose());
    }
    void backward(LinearId id, ConstMatrixRef W, ConstMatrixRef X, ConstMatrixRef dY, MatrixRef dX) override {
      const int i = id.index();
      const Matrix dYB = dY * B[i];  // (tokens, r)
      dX.noalias() = dY * W;
      dX.noalias() += s * (dYB * A[i]);
      gA[i].noalias() += s * (dYB.transpose() * X);
      gB[i].noalias() += s * (dY.transpose() * (X * A[i].transpose()));
    }
  };
  const ModelConfig c = tiny_config(true);
  const ModelWeights w = random_weights(c, 8);
  const Batch b = tiny_batch(c.vocab_size);
  LoraHooks hooks(w, 9);
  Activations acts;
  forward(w, b, hooks, acts);
  backward(w, acts, hooks, nullptr);
  auto loss_now = [&] {
    Activations a2;
    return forward(w, b, hooks, a2).mean();
  };
  std::mt19937 rng(5);
  for (int i = 0; i < 7 * c.n_layers; ++i) {
    for (int which = 0; which < 2; ++which) {
      Matrix& P = which == 0 ? hooks.A[i] : hooks.B[i];
      const Matrix& G = which == 0 ? hooks.gA[i] : hooks.gB[i];
      const auto k = static_cast<Eigen::Index>(rng() % static_cast<unsigned>(P.size()));
      const float orig = P.data()[k], eps = 1e-2f;
      P.data()[k] = orig + eps;
      const double lp = loss_now();
      P.data()[k] = orig - eps;
      const double lm = loss_now();
      P.data()[k] = orig;
      const double fd = (lp - lm) / (2.0 * eps);
      INFO("linear " << i << (which == 0 ? " A[" : " B[") << k << "]: analytic " << G.data()[k] << " vs fd " << fd);
      CHECK(std::abs(G.data()[k] - fd) <= 2e-3 + 3e-2 * std::abs(fd));
    }
  }
}

TEST_CASE("model: end-to-end — real data, tokenizer, loader, full fine-tuning steps lower the loss") {
  if (!llama_test::have_data()) {
    MESSAGE("SKIPPED: shared data not found at " << llama_test::data_dir());
    return;
  }
  const auto d = llama_test::data_dir();
  ModelWeights w = load_checkpoint(d / "stories260K-hf");
  const Tokenizer tok(d / "stories260K" / "tok512.model");
  auto all = load_instruction_data(d / "gsm8k" / "train.jsonl");
  all.resize(8);
  auto data = std::make_shared<std::vector<TokenizedExample>>(tokenize_dataset(all, tok, PromptTemplate{}, 512));
  REQUIRE(data->size() == 8);
  LoaderOptions lo;
  lo.micro_batch = 4;
  DataLoader loader(data, lo);
  const Batch b = loader.next();
  ModelWeights grads = ModelWeights::zeros_like(w);
  FullFineTuneHooks hooks(grads);
  Activations acts;
  std::vector<double> losses;
  for (int step = 0; step < 5; ++step) {
    grads.set_zero();
    losses.push_back(forward(w, b, hooks, acts).mean());
    backward(w, acts, hooks, &grads);
    // plain SGD over every parameter
    std::vector<float*> gp;
    grads.for_each_parameter([&](const std::string&, float* p, std::int64_t, const std::vector<std::int64_t>&) { gp.push_back(p); });
    std::size_t k = 0;
    w.for_each_parameter([&](const std::string&, float* p, std::int64_t n, const std::vector<std::int64_t>&) {
      for (std::int64_t i = 0; i < n; ++i) p[i] -= 0.01f * gp[k][i];
      ++k;
    });
  }
  INFO("losses " << losses[0] << " " << losses[1] << " " << losses[2] << " " << losses[3] << " " << losses[4]);
  for (std::size_t i = 1; i < losses.size(); ++i) CHECK(losses[i] < losses[i - 1]);
}

// stack_linears (linear_hooks.hpp): the GPU model's [W_q; W_k; W_v] rows and [q | k | v] columns
// seen as one linear, whatever the order the members come in; any gap, other ld or width mismatch
// is "not stacked" (the hooks then run one GEMM per member).
TEST_CASE("stack_linears: consecutive W rows and output columns are one linear; anything else is not") {
  using CV = hdpissa::ConstMatrixView<float>;
  std::vector<float> w(13 * 7), z(5 * 15);
  const float* W = w.data();
  const float* Z = z.data();
  // widths 3, 4, 6 over in = 7; outputs in a (5, 15) buffer
  const CV Wq(W, 3, 7, 7), Wk(W + 3 * 7, 4, 7, 7), Wv(W + 7 * 7, 6, 7, 7);
  const CV Zq(Z, 5, 3, 15), Zk(Z + 3, 5, 4, 15), Zv(Z + 7, 5, 6, 15);
  for (const auto& [ws, zs, first] :
       {std::tuple{std::array{Wq, Wk, Wv}, std::array{Zq, Zk, Zv}, std::size_t(0)},
        std::tuple{std::array{Wv, Wk, Wq}, std::array{Zv, Zk, Zq}, std::size_t(2)}}) {
    const auto st = stack_linears<float>(std::span<const CV>(ws), std::span<const CV>(zs));
    REQUIRE(st.has_value());
    CHECK(st->n == 3);
    CHECK(st->order[0] == first);
    CHECK(st->W.data == W);
    CHECK(st->W.rows == 13);
    CHECK(st->W.cols == 7);
    CHECK(st->W.ld == 7);
    CHECK(st->Z.data == Z);
    CHECK(st->Z.rows == 5);
    CHECK(st->Z.cols == 13);
    CHECK(st->Z.ld == 15);
  }
  auto none = [](std::array<CV, 3> ws, std::array<CV, 3> zs) {
    return !stack_linears<float>(std::span<const CV>(ws), std::span<const CV>(zs)).has_value();
  };
  CHECK(none({Wq, Wk, CV(W + 8 * 7, 5, 7, 7)}, {Zq, Zk, CV(Z + 7, 5, 5, 15)}));      // a gap in W's rows
  CHECK(none({Wq, Wk, Wv}, {Zq, Zk, CV(Z + 8, 5, 6, 15)}));                           // a gap in the columns
  CHECK(none({Wq, Wk, Wv}, {Zq, Zv, Zk}));                                            // output order differs
  CHECK(none({Wq, Wk, Wv}, {Zq, Zk, CV(Z + 7, 4, 6, 15)}));                           // other token count
  CHECK_FALSE(none({Wq, Wk, Wv}, {CV(Z, 5, 3, 13), CV(Z + 3, 5, 4, 13), CV(Z + 7, 5, 6, 13)}));  // ld = 13 fits
  CHECK(none({Wq, Wk, Wv}, {Zq, Zk, CV(Z + 7, 5, 6, 14)}));                           // one member's ld differs
  CHECK(none({Wq, Wk, CV(W + 7 * 7, 6, 6, 7)}, {Zq, Zk, Zv}));                         // other input width
  const std::array<CV, 1> one{Wq};
  CHECK_FALSE(stack_linears<float>(std::span<const CV>(one), std::span<const CV>(one)).has_value());
}
