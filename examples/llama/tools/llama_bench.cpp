// hdpissa-llama-bench: times forward + backward (full fine-tuning gradients) of the CPU LLaMA on
// RANDOMLY INITIALISED weights with shapes given on the command line (throughput only; the
// numbers say nothing about model quality).
//
//   hdpissa-llama-bench [--dim 512] [--hidden 1376] [--layers 4] [--heads 8] [--kv-heads 8]
//                       [--vocab 32000] [--batch 4] [--seq 256] [--iters 3]

#include <chrono>
#include <iostream>
#include <random>
#include <string>

#include "llama/cli.hpp"
#include "llama/model.hpp"

int main(int argc, char** argv) {
  using namespace hdpissa::llama;
  try {
    ModelConfig c;
    c.dim = 512; c.hidden_dim = 1376; c.n_layers = 4; c.n_heads = 8; c.n_kv_heads = 8;
    c.vocab_size = 32000; c.max_seq_len = 4096;
    int B = 4, T = 256, iters = 3;
    CLI::App app{"CPU model forward/backward throughput on random weights (throughput only).", "hdpissa-llama-bench"};
    cli::setup(app);
    auto pos = [&](const std::string& flag, int& ref, const std::string& help) {
      app.add_option(flag, ref, help)->type_name("N")->check(CLI::PositiveNumber);
    };
    pos("--dim", c.dim, "model width (default 512)");
    pos("--hidden", c.hidden_dim, "MLP width (default 1376)");
    pos("--layers", c.n_layers, "decoder layers (default 4)");
    pos("--heads", c.n_heads, "attention heads (default 8)");
    pos("--kv-heads", c.n_kv_heads, "key/value heads (default 8)");
    pos("--vocab", c.vocab_size, "vocabulary (default 32000)");
    pos("--batch,--micro-batch", B, "sequences per batch (default 4)");
    pos("--seq,--max-len", T, "tokens per sequence (default 256)");
    pos("--iters", iters, "timed iterations (default 3)");
    if (cli::parse(app, std::vector<std::string>(argv + 1, argv + argc)) != cli::Outcome::Run) return 0;
    c.head_dim = c.dim / c.n_heads;
    c.tie_embeddings = false;
    c.validate();
    ModelWeights w = ModelWeights::zeros(c);
    std::mt19937 rng(0);
    std::normal_distribution<float> nd(0.0f, 0.02f);
    w.for_each_parameter([&](const std::string& n, float* p, std::int64_t k, const std::vector<std::int64_t>&) {
      const bool norm = n.find("norm") != std::string::npos;
      for (std::int64_t i = 0; i < k; ++i) p[i] = norm ? 1.0f : nd(rng);
    });
    Batch b;
    b.batch_size = B; b.seq_len = T;
    for (int i = 0; i < B * T; ++i) b.input_ids.push_back(static_cast<int>(rng() % c.vocab_size));
    b.labels = b.input_ids;
    b.lengths.assign(B, T);
    ModelWeights g = ModelWeights::zeros_like(w);
    FullFineTuneHooks hooks(g);
    Activations acts;
    double best_f = 1e30, best_b = 1e30;
    for (int it = 0; it < iters; ++it) {
      const auto t0 = std::chrono::steady_clock::now();
      const auto loss = forward(w, b, hooks, acts);
      const auto t1 = std::chrono::steady_clock::now();
      backward(w, acts, hooks, &g);
      const auto t2 = std::chrono::steady_clock::now();
      best_f = std::min(best_f, std::chrono::duration<double>(t1 - t0).count());
      best_b = std::min(best_b, std::chrono::duration<double>(t2 - t1).count());
      std::cout << "iter " << it << " loss " << loss.mean() << "\n";
    }
    const double tokens = static_cast<double>(B) * T;
    std::cout << w.num_parameters() << " params (random init), " << B << "x" << T << " tokens: forward " << best_f
              << " s, backward " << best_b << " s, " << tokens / (best_f + best_b) << " tok/s (fwd+bwd)\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "hdpissa-llama-bench: error: " << e.what() << "\n";
    return 2;
  }
}
