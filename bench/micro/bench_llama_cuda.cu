// bench_llama_cuda: forward+backward throughput of CudaLlama<T> (examples/llama/include/llama/cuda)
// with frozen plain hooks (dX through every linear, no weight gradient) on a RANDOM-INIT model of
// TinyLlama-1.1B's shape (hidden 2048, 22 layers, 32 heads / 4 KV heads, MLP 5632, vocab 32000,
// untied lm_head), micro-batch B x T (default 2 x 512), every next token a target.
//
// Reported, all measured in the same run:
//  - step time (forward_backward incl. its one loss read-back), tokens/s, eval forward time;
//  - "linears only": the same 7·L forward + 7·L backward GEMMs of the plain hooks on the same
//    weights and token count, alone (the floor the linears set);
//  - the GEMM ceiling of the compute type: cublasGemmEx at 8192³ and at the model's own MLP shape (random data);
//  - FLOPs counted: linears 4·N·P_lin (fwd 2·N·P, dX 2·N·P); lm_head 4·n_targets·V·D; attention as
//    executed (full T×T products: 2 fwd + 5 bwd GEMMs of 2·B·nh·T²·hd each). TFLOP/s = counted / time.
//
//  - attention: --attention flash (fused kernels, flash_attn.cuh; the bf16 default at head_dim 64)
//    or gemm (materialised scores, cuBLAS); with flash the attention FLOPs counted are those of the
//    causal 64×64 tiles it executes (2 fwd + 7 bwd tile products: dK/dV and dQ kernels).
//
// Usage: bench_llama_cuda [--shape tinyllama|llama2-7b] [--layers N] [--batch 2] [--seq 512] [--steps 20]
//                         [--warmup 3] [--fp32] [--attention auto|flash|gemm] [--prompt-fraction F]
// --prompt-fraction F (0 ≤ F < 1, default 0): the first ⌊F·seq⌋ labels of every row are ignored, as a
// trainer's prompt masking does (the trainer's throughput data has ≈ 20 % prompt), so the loss covers
// the other rows only: to compare the loss section with `hdpissa-train --profile`'s.
// --shape llama2-7b: hidden 4096, 32 layers, 32 heads (no GQA), head_dim 128, MLP 11008, vocab 32000
// (the trainer's 7B benchmark shape; the bare model beside `hdpissa-train --profile` of the same shape).

#include <cuda_bf16.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <string>
#include <vector>

#include "llama/cuda/model_cuda.cuh"

using namespace hdpissa::llama;
using hdpissa::llama::gpu::CudaHooks;
using hdpissa::llama::gpu::CudaLlama;

namespace {

struct Args {
  int layers = 0, batch = 2, seq = 512, steps = 20, warmup = 3;  // layers 0: the shape's
  bool fp32 = false;
  double prompt_fraction = 0.0;
  std::string attention = "auto", shape = "tinyllama";
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto next = [&]() -> int {
      if (i + 1 >= argc) { std::fprintf(stderr, "expected a value after %s\n", k.c_str()); std::exit(2); }
      return std::atoi(argv[++i]);
    };
    if (k == "--layers") a.layers = next();
    else if (k == "--batch") a.batch = next();
    else if (k == "--seq") a.seq = next();
    else if (k == "--steps") a.steps = next();
    else if (k == "--warmup") a.warmup = next();
    else if (k == "--fp32") a.fp32 = true;
    else if (k == "--prompt-fraction") {
      if (i + 1 >= argc) { std::fprintf(stderr, "expected a value after --prompt-fraction\n"); std::exit(2); }
      char* end = nullptr;
      a.prompt_fraction = std::strtod(argv[++i], &end);
      if (end == argv[i] || *end != '\0' || !(a.prompt_fraction >= 0.0 && a.prompt_fraction < 1.0)) {
        std::fprintf(stderr, "--prompt-fraction: expected a number in [0, 1), found '%s'\n", argv[i]);
        std::exit(2);
      }
    }
    else if (k == "--shape") {
      if (i + 1 >= argc) { std::fprintf(stderr, "expected a value after --shape\n"); std::exit(2); }
      a.shape = argv[++i];
      if (a.shape != "tinyllama" && a.shape != "llama2-7b") {
        std::fprintf(stderr, "--shape: expected tinyllama or llama2-7b, found '%s'\n", a.shape.c_str());
        std::exit(2);
      }
    }
    else if (k == "--attention") {
      if (i + 1 >= argc) { std::fprintf(stderr, "expected a value after --attention\n"); std::exit(2); }
      a.attention = argv[++i];
      if (a.attention != "auto" && a.attention != "flash" && a.attention != "gemm") {
        std::fprintf(stderr, "--attention: expected auto, flash or gemm, found '%s'\n", a.attention.c_str());
        std::exit(2);
      }
    }
    else { std::fprintf(stderr, "unknown flag %s (expected --shape --layers --batch --seq --steps --warmup --fp32 --attention --prompt-fraction)\n", k.c_str()); std::exit(2); }
  }
  return a;
}

ModelConfig model_shape(const std::string& shape, int layers) {
  ModelConfig c;
  const bool l7 = shape == "llama2-7b";
  c.dim = l7 ? 4096 : 2048;
  c.hidden_dim = l7 ? 11008 : 5632;
  c.n_layers = layers > 0 ? layers : l7 ? 32 : 22;
  c.n_heads = 32;
  c.n_kv_heads = l7 ? 32 : 4;
  c.head_dim = l7 ? 128 : 64;
  c.vocab_size = 32000;
  c.max_seq_len = l7 ? 4096 : 2048;
  c.norm_eps = 1e-5f;
  c.rope_theta = 10000.0;
  c.tie_embeddings = false;
  return c;
}

/// Random init (uniform, std 0.02; norms 1) with a fast xorshift: 1.1e9 values in seconds.
ModelWeights random_weights(const ModelConfig& c) {
  ModelWeights w = ModelWeights::zeros(c);
  std::uint64_t s = 0x9E3779B97F4A7C15ull;
  const float a = 0.02f * 1.7320508f;
  w.for_each_parameter([&](const std::string& name, float* p, std::int64_t n, const std::vector<std::int64_t>&) {
    if (name.find("norm") != std::string::npos) {
      for (std::int64_t i = 0; i < n; ++i) p[i] = 1.0f;
      return;
    }
    for (std::int64_t i = 0; i < n; ++i) {
      s ^= s << 13; s ^= s >> 7; s ^= s << 17;
      p[i] = a * (static_cast<float>(s >> 40) * (2.0f / 16777216.0f) - 1.0f);
    }
  });
  return w;
}

struct Timer {
  cudaEvent_t a{}, b{};
  Timer() { cudaEventCreate(&a); cudaEventCreate(&b); }
  ~Timer() { cudaEventDestroy(a); cudaEventDestroy(b); }
  void start(cudaStream_t s) { cudaEventRecord(a, s); }
  float stop_ms(cudaStream_t s) { cudaEventRecord(b, s); cudaEventSynchronize(b); float ms = 0; cudaEventElapsedTime(&ms, a, b); return ms; }
};

/// Uniform values in [-1, 1) (random data: zeros would let the tensor cores run cooler and faster).
template <class T>
__global__ void fill_random(T* p, std::int64_t n, std::uint32_t seed) {
  for (std::int64_t i = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 16; h *= 0x85ebca6bu; h ^= h >> 13; h *= 0xc2b2ae35u; h ^= h >> 16;
    p[i] = static_cast<T>(static_cast<float>(h >> 8) * (2.0f / 16777216.0f) - 1.0f);
  }
}
template <class T>
void launch_fill_random(cudaStream_t s, T* p, std::int64_t n, std::uint32_t seed) {
  fill_random<T><<<1024, 256, 0, s>>>(p, n, seed);
  HDPISSA_CUDA_CHECK_LAUNCH("fill_random");
}

/// TFLOP/s of C (m, n) = A (m, k) Bᵀ, T operands, fp32 accumulation, best of `reps` after warm-up.
template <class T>
double gemm_tflops(cublasHandle_t h, cudaStream_t s, int m, int n, int k, int reps) {
  hdpissa::DeviceBuffer<T> A(static_cast<std::size_t>(m) * k), B(static_cast<std::size_t>(n) * k), C(static_cast<std::size_t>(m) * n);
  launch_fill_random<T>(s, A.get(), static_cast<std::int64_t>(m) * k, 1u);
  launch_fill_random<T>(s, B.get(), static_cast<std::int64_t>(n) * k, 2u);
  const auto t = hdpissa::llama::gpu::cuda_data_type<T>();
  auto run = [&] {
    hdpissa::llama::gpu::gemm_rowmajor(h, CUBLAS_OP_N, CUBLAS_OP_T, m, n, k, 1.0f, A.get(), t, k, B.get(), t, k, 0.0f,
                                       C.get(), t, n);
  };
  for (int i = 0; i < 3; ++i) run();
  Timer tm;
  tm.start(s);
  for (int i = 0; i < reps; ++i) run();
  const double ms = tm.stop_ms(s) / reps;
  return 2.0 * m * n * k / (ms * 1e-3) / 1e12;
}

template <class T>
int run(const Args& args) {
  const ModelConfig c = model_shape(args.shape, args.layers);
  const int B = args.batch, Tn = args.seq;
  const std::int64_t N = static_cast<std::int64_t>(B) * Tn;
  std::printf("model: random-init %s shape (dim %d, layers %d, heads %d/%d, hd %d, mlp %d, vocab %d), %s, "
              "micro-batch %d x %d\n", args.shape == "llama2-7b" ? "LLaMA-2-7B" : "TinyLlama-1.1B", c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, c.hidden_dim, c.vocab_size,
              std::is_same_v<T, float> ? "fp32" : "bf16", B, Tn);
  auto t0 = std::chrono::steady_clock::now();
  const ModelWeights w = random_weights(c);
  auto t1 = std::chrono::steady_clock::now();
  cudaStream_t stream;
  HDPISSA_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const auto kind = args.attention == "flash"  ? hdpissa::llama::gpu::Attention::Flash
                    : args.attention == "gemm" ? hdpissa::llama::gpu::Attention::Gemm
                                               : hdpissa::llama::gpu::Attention::Auto;
  CudaLlama<T> model(w, B, Tn, stream, 1024, kind);
  std::printf("attention: %s\n", model.flash_attention() ? "flash (fused kernels)" : "gemm (materialised scores, cuBLAS)");
  auto t2 = std::chrono::steady_clock::now();
  std::printf("host init %.1f s, upload %.1f s\n", std::chrono::duration<double>(t1 - t0).count(),
              std::chrono::duration<double>(t2 - t1).count());
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  std::printf("GPU memory in use after construction: %.2f GiB\n", (total_b - free_b) / 1073741824.0);

  Batch b;
  b.batch_size = B;
  b.seq_len = Tn;
  b.lengths.assign(B, Tn);
  std::uint32_t r = 12345;
  for (std::int64_t i = 0; i < N; ++i) {
    r = r * 1664525u + 1013904223u;
    b.input_ids.push_back(static_cast<std::int32_t>((r >> 8) % static_cast<std::uint32_t>(c.vocab_size)));
  }
  b.labels = b.input_ids;
  const int prompt = static_cast<int>(args.prompt_fraction * Tn);  // masked like a prompt
  for (int row = 0; row < B; ++row)
    for (int t = 0; t < prompt; ++t) b.labels[static_cast<std::size_t>(row) * Tn + t] = kIgnoreIndex;
  b.example_ids.assign(B, 0);
  const std::int64_t n_targets = b.num_target_tokens();

  hdpissa::CudaBackend<T> backend(model.stream(), {});
  CudaHooks<T> hooks(backend);  // frozen plain linears on the model's stream
  for (int i = 0; i < args.warmup; ++i) model.forward_backward(b, hooks, 1.0f);
  Timer tm;
  std::vector<float> step_ms;
  double loss = 0;
  for (int i = 0; i < args.steps; ++i) {
    tm.start(stream);
    loss = model.forward_backward(b, hooks, 1.0f).mean();
    step_ms.push_back(tm.stop_ms(stream));
  }
  std::sort(step_ms.begin(), step_ms.end());
  const double med = step_ms[step_ms.size() / 2];
  // where the time goes: the same step with section events (slightly slower than unprofiled)
  model.enable_profiling(true);
  const int prof_steps = 5;
  for (int i = 0; i < prof_steps; ++i) model.forward_backward(b, hooks, 1.0f);
  const auto prof = model.profile();
  const auto loss_parts = model.loss_parts();
  const auto host_prof = model.host_profile();
  model.enable_profiling(false);
  double fwd_ms = 0;
  {
    model.forward_loss(b, hooks);
    tm.start(stream);
    for (int i = 0; i < 5; ++i) model.forward_loss(b, hooks);
    fwd_ms = tm.stop_ms(stream) / 5;
  }

  // linears only: the same GEMMs through the same hooks, nothing else
  double lin_ms = 0;
  {
    const std::int64_t maxw = std::max<std::int64_t>({c.dim, c.hidden_dim, c.q_dim()});
    hdpissa::DeviceBuffer<T> X(N * maxw), Y(N * maxw), dY(N * maxw), dX(N * maxw);
    launch_fill_random<T>(stream, X.get(), N * maxw, 3u);
    launch_fill_random<T>(stream, dY.get(), N * maxw, 4u);
    auto pass = [&] {
      for (int l = 0; l < c.n_layers; ++l)
        for (int m = 0; m < kModulesPerLayer; ++m) {
          const LinearId id{l, static_cast<Module>(m)};
          const auto W = model.linear(id);
          hooks.forward(id, W, {X.get(), N, W.cols, W.cols}, {Y.get(), N, W.rows, W.rows});
        }
      for (int l = c.n_layers - 1; l >= 0; --l)
        for (int m = kModulesPerLayer - 1; m >= 0; --m) {
          const LinearId id{l, static_cast<Module>(m)};
          const auto W = model.linear(id);
          hooks.backward(id, W, {X.get(), N, W.cols, W.cols}, {dY.get(), N, W.rows, W.rows}, {dX.get(), N, W.cols, W.cols});
        }
    };
    pass();
    tm.start(stream);
    for (int i = 0; i < 5; ++i) pass();
    lin_ms = tm.stop_ms(stream) / 5;
  }
  const double ceil_big = gemm_tflops<T>(model.cublas(), stream, 8192, 8192, 8192, 10);
  const double ceil_mlp = gemm_tflops<T>(model.cublas(), stream, static_cast<int>(N), c.hidden_dim, c.dim, 50);

  const double P_lin = static_cast<double>(c.n_layers) *
                       (2.0 * c.dim * c.q_dim() + 2.0 * c.dim * c.kv_dim() + 3.0 * c.dim * c.hidden_dim);
  const double f_lin = 4.0 * N * P_lin;
  const double f_head = 4.0 * n_targets * c.vocab_size * c.dim;
  const double nt = (Tn + 63) / 64;
  const double f_attn = model.flash_attention()
                            ? c.n_layers * 9.0 * 2.0 * B * c.n_heads * (nt * (nt + 1) / 2) * 64.0 * 64.0 * c.head_dim
                            : c.n_layers * 7.0 * 2.0 * B * c.n_heads * static_cast<double>(Tn) * Tn * c.head_dim;
  const double f_total = f_lin + f_head + f_attn;
  const double tflops = f_total / (med * 1e-3) / 1e12;
  std::printf("loss %.4f (%lld targets)\n", loss, static_cast<long long>(n_targets));
  std::printf("forward+backward: median %.2f ms/step (min %.2f, max %.2f over %d steps) = %.0f tokens/s\n", med,
              step_ms.front(), step_ms.back(), args.steps, N / (med * 1e-3));
  std::printf("eval forward (forward_loss): %.2f ms = %.0f tokens/s\n", fwd_ms, N / (fwd_ms * 1e-3));
  std::printf("FLOPs counted per step: linears %.3f T + lm_head %.3f T + attention (executed: %s) %.3f T = %.3f T\n",
              f_lin / 1e12, f_head / 1e12, model.flash_attention() ? "causal 64x64 tiles" : "full T x T",
              f_attn / 1e12, f_total / 1e12);
  std::printf("achieved %.1f TFLOP/s\n", tflops);
  std::printf("%s GEMM ceiling (same run): 8192^3 %.1f TFLOP/s; model MLP shape %lldx%dx%d %.1f TFLOP/s\n",
              std::is_same_v<T, float> ? "fp32 (no TF32)" : "bf16", ceil_big,
              static_cast<long long>(N), c.hidden_dim, c.dim, ceil_mlp);
  std::printf("achieved / 8192^3 ceiling: %.1f %%\n", 100.0 * tflops / ceil_big);
  std::printf("linears only (same 14*L GEMMs through the hooks): %.2f ms = %.1f TFLOP/s; step / linears-only = %.2f\n",
              lin_ms, f_lin / (lin_ms * 1e-3) / 1e12, med / lin_ms);
  double prof_total = 0;
  for (const auto& [name, ms] : prof) prof_total += ms / prof_steps;
  std::printf("profiled step (section events): %.2f ms\n", prof_total);
  for (const auto& [name, ms] : prof)
    std::printf("  %-24s %7.2f ms  %5.1f %%\n", name.c_str(), ms / prof_steps, 100.0 * ms / prof_steps / prof_total);
  for (const auto& [name, ms] : loss_parts)  // already counted in the loss row
    std::printf("    %-30s %7.2f ms  (part of the loss row)\n", name.c_str(), ms / prof_steps);
  std::printf("host time between the same marks, ms per step:");
  for (const auto& [name, ms] : host_prof) std::printf(" %s %.2f;", name.c_str(), ms / prof_steps);
  std::printf("\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const Args args = parse(argc, argv);
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    std::printf("no CUDA device: nothing to measure\n");
    return 0;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  std::printf("device: %s (%d SMs)\n", prop.name, prop.multiProcessorCount);
  try {
    return args.fp32 ? run<float>(args) : run<__nv_bfloat16>(args);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
