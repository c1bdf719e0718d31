// Bytes communicated per optimizer step for a LLaMA-2-7B-shaped model at K = 8, r = 16 (the table
// in docs/distributed.md). The closed-form numbers are checked against DirectWeightUpdate's own
// bytes_sent_per_step() for one transformer block (the count is additive over layers, so the
// model is 32 blocks), and the table is printed.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstdio>
#include <vector>

#include "hdpissa/hdpissa.hpp"

using namespace hdpissa;

namespace {

/// Worker 0 of K = 8 workers, one group each. Collectives are never called here (no step is taken);
/// they throw if they ever are.
struct EightWorkers {
  using memory_space = host_memory;
  int rank() const { return 0; }
  int size() const { return 8; }
  int groups() const { return 8; }
  int local_groups() const { return 1; }
  int first_group() const { return 0; }
  template <class T>
  void all_gather(const T*, T*, std::size_t) { throw CommError("not a real communicator"); }
  template <class T>
  void all_reduce_sum(T*, std::size_t) { throw CommError("not a real communicator"); }
  template <class T>
  void broadcast(T*, std::size_t, int) { throw CommError("not a real communicator"); }
  void barrier() {}
};
static_assert(Communicator<EightWorkers>);

struct Shape {
  const char* name;
  index_t out, in;
};
// One LLaMA-2-7B decoder block; the model has 32. (out, in) in PyTorch layout.
const std::vector<Shape> kBlock = {{"q_proj", 4096, 4096},    {"k_proj", 4096, 4096},
                                   {"v_proj", 4096, 4096},    {"o_proj", 4096, 4096},
                                   {"gate_proj", 11008, 4096}, {"up_proj", 11008, 4096},
                                   {"down_proj", 4096, 11008}};
constexpr int kLayers = 32, K = 8;
constexpr index_t r = 16;

}  // namespace

TEST_CASE("bytes per step: LLaMA-2-7B shapes, K = 8, r = 16, fp32") {
  // Closed form: each group sends r·(in + out) numbers per adapted layer.
  std::size_t numbers_per_block = 0, adapter_params_block = 0;
  for (const auto& s : kBlock) {
    numbers_per_block += std::size_t(r * (s.in + s.out));
    adapter_params_block += std::size_t(r * s.in + s.out * r);
  }
  const double S = double(numbers_per_block) * kLayers * 4;  // bytes of one group's deltas
  CHECK(numbers_per_block == 1249280);
  CHECK(S == 159907840.0);

  // The DWU's own count for one block (W is never read by add_layer or bytes_sent_per_step, so a
  // view with no storage stands in for the (out, in) weights; the factors are real allocations).
  EigenBackend<float> b;
  EightWorkers comm;
  DirectWeightUpdate<EigenBackend<float>, Adam, EightWorkers> dwu(b, comm);
  for (const auto& s : kBlock)
    dwu.add_layer(s.name, MatrixView<float>{nullptr, s.out, s.in}, make_adapter_set(b, s.out, s.in, K, r));
  CHECK(dwu.bytes_sent_per_step() * kLayers == std::size_t(S));

  // Per-worker wire traffic of the collectives (ring algorithms, P = K workers):
  //   all-gather of S bytes per worker: each worker sends and receives (K − 1)·S;
  //   all-reduce of G bytes: 2(P − 1)/P · G.
  const double ours_wire = (K - 1) * S;
  const double authors_payload = 2 * S;  // dA, dB, A and B: twice the numbers
  const double authors_wire = (K - 1) * authors_payload;
  const double dp_lora_grad = double(adapter_params_block) * kLayers * 4;  // one rank-16 adapter
  const double dp_lora_wire = 2.0 * (K - 1) / K * dp_lora_grad;
  const double dp_lora_kr_wire = 2.0 * (K - 1) / K * dp_lora_grad * K;  // rank K·r = 128
  CHECK(dp_lora_grad == S);
  std::printf("per step, per worker (fp32, K = P = %d, r = %ld, %d layers of 7 targets):\n", K, long(r), kLayers);
  std::printf("  HD-PiSSA (ours)   payload %12.0f B  wire %14.0f B (%.3f GB)\n", S, ours_wire, ours_wire / 1e9);
  std::printf("  authors' code     payload %12.0f B  wire %14.0f B (%.3f GB)\n", authors_payload, authors_wire,
              authors_wire / 1e9);
  std::printf("  DP-LoRA r=16      grad    %12.0f B  wire %14.0f B (%.3f GB)\n", dp_lora_grad, dp_lora_wire,
              dp_lora_wire / 1e9);
  std::printf("  DP-LoRA r=128     grad    %12.0f B  wire %14.0f B (%.3f GB)\n", dp_lora_grad * K,
              dp_lora_kr_wire, dp_lora_kr_wire / 1e9);
  CHECK(ours_wire == 1119354880.0);
  CHECK(authors_wire == 2238709760.0);
  CHECK(dp_lora_wire == 279838720.0);
}
