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

#include "llama/model.hpp"

int main(int argc, char** argv) {
  using namespace hdpissa::llama;
  try {
    ModelConfig c;
    c.dim = 512; c.hidden_dim = 1376; c.n_layers = 4; c.n_heads = 8; c.n_kv_heads = 8;
    c.vocab_size = 32000; c.max_seq_len = 4096;
    int B = 4, T = 256, iters = 3;
    for (int i = 1; i < argc; ++i) {
      const std::string f = argv[i];
      if (f == "--help") {
        std::cout << "usage: hdpissa-llama-bench [--dim N] [--hidden N] [--layers N] [--heads N] [--kv-heads N] "
                     "[--vocab N] [--batch N] [--seq N] [--iters N]\n(random weights: throughput only)\n";
        return 0;
      }
      if (i + 1 >= argc) throw LlamaError("option " + f + " expects a value");
      const int v = std::stoi(argv[++i]);
      if (f == "--dim") c.dim = v; else if (f == "--hidden") c.hidden_dim = v; else if (f == "--layers") c.n_layers = v;
      else if (f == "--heads") c.n_heads = v; else if (f == "--kv-heads") c.n_kv_heads = v;
      else if (f == "--vocab") c.vocab_size = v; else if (f == "--batch") B = v; else if (f == "--seq") T = v;
      else if (f == "--iters") iters = v; else throw LlamaError("unknown option '" + f + "'");
    }
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
