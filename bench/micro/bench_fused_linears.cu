// bench_fused_linears — what folding a LLaMA layer's linears into fewer cuBLAS GEMMs would save, per
// shared-input group (q/k/v, gate/up) and single linear (o, down), at TinyLlama and LLaMA-2-7B
// shapes, bf16 operands, fp32 accumulation (cublasGemmEx, CUBLAS_COMPUTE_32F, the default
// heuristic, as the trainer's GEMMs).
//
// Why (session 23): the trainer's HD-PiSSA backward spends +57 % on top of the bare model's linear
// backward at TinyLlama 8 × 512 (docs/results/session22/c47/profile-tiny8.md). Its four thin GEMMs
// per linear read X and dY twice each: u = X·Aᵀ and gA = α·tᵀ·X read X; t = dY·B and gB = α·dYᵀ·u
// read dY. Two of them can ride on a frozen GEMM that reads the same operand anyway:
//   forward:  X·[W_q; W_k; W_v; A_q; A_k; A_v]ᵀ = [Y_q | Y_k | Y_v | u]   (A rows after the W rows);
//   backward: [dY_q | dY_k | dY_v]·[[W_q | B_q 0 0]; [W_k | 0 B_k 0]; [W_v | 0 0 B_v]] = [dX | t]
//             (each B as extra columns of its W, block-diagonal so that the members' t stay apart
//             while their dX add up).
// The same folds also fuse the group's frozen GEMMs into one (one launch, one read of X or of dY
// per group). This bench times, per group, the trainer's GEMM set today against the folded one:
//   today:  n frozen forward GEMMs; n dX GEMMs (accumulating); u (one stacked GEMM); n t GEMMs;
//           gA (one stacked GEMM, fp32 out); n gB GEMMs (fp32 out)
//   folded: 1 forward GEMM with the A rows; 1 dX GEMM with the B columns; gA; n gB
// and the frozen parts alone (fused against separate), so that a change of the model's layout can
// be judged before it is made. No trainer code changes with it.
//
// Usage: bench_fused_linears [--reps N] [--rank R]. Every "JSON " line is one record.
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_bench_util.hpp"

using namespace hdpissa;
using namespace hdpissa::bench;
using bf16 = __nv_bfloat16;

namespace {

#define BFL_CUBLAS(call)                                                                                  \
  do {                                                                                                    \
    const cublasStatus_t st_ = (call);                                                                    \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                                                                   \
      std::fprintf(stderr, "bench_fused_linears: %s failed: %s\n", #call, cublasGetStatusString(st_));     \
      std::exit(1);                                                                                       \
    }                                                                                                     \
  } while (0)

struct Gemm {
  cublasHandle_t h;
  /// Row-major C (M × N, ldc; bf16 or fp32 `ct`) = alpha · A (M × K, lda) · op(B) + beta · C, where
  /// op(B) is B (K × N, ldb) or, with tb, Bᵀ for B stored (N × K, ldb). cuBLAS is column-major: it
  /// computes Cᵀ = op(B)ᵀ · Aᵀ on the same memory.
  void operator()(int M, int N, int K, const bf16* A, int lda, const bf16* B, int ldb, bool tb, void* C, int ldc,
                  cudaDataType_t ct, float beta = 0.f, float alpha = 1.f) const {
    BFL_CUBLAS(cublasGemmEx(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &alpha, B, CUDA_R_16BF, ldb, A,
                            CUDA_R_16BF, lda, &beta, C, ct, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  /// Row-major C (M × N) = alpha · Aᵀ · B for A stored (K × M, lda), B (K × N, ldb): the weight
  /// gradients' reduction over the tokens.
  void tn(int M, int N, int K, const bf16* A, int lda, const bf16* B, int ldb, void* C, int ldc, cudaDataType_t ct,
          float beta, float alpha) const {
    BFL_CUBLAS(cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_T, N, M, K, &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda,
                            &beta, C, ct, ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
};

/// A device buffer of n bf16 values uniform in ±scale (a fixed LCG: the values do not matter for
/// the timing, only that they are finite and not all zero).
DeviceBuffer<bf16> filled(std::size_t n, float scale, std::uint32_t seed) {
  std::vector<bf16> h(n);
  std::uint32_t x = seed * 2654435761u + 1u;
  for (auto& v : h) {
    x = x * 1664525u + 1013904223u;
    v = __float2bfloat16(scale * (float(x >> 8) / 8388608.0f - 1.0f));
  }
  DeviceBuffer<bf16> d(n);
  HDPISSA_CUDA_CHECK(cudaMemcpy(d.get(), h.data(), n * sizeof(bf16), cudaMemcpyHostToDevice));
  return d;
}

struct Group {
  const char* name;
  int in;
  std::vector<int> outs;  // the members' output widths (one member: a single linear)
  int per_layer = 1;      // how many of this group a layer has
};

struct Times {
  double fwd_sep, fwd_fused, fwd_fused_u, u;           // forward: separate, fused, fused with A rows; u alone
  double dx_sep, dx_fused, dx_fused_t, t;               // backward dX: separate, fused, fused with B cols; t alone
  double ga, gb;                                        // the gradient GEMMs that stay (fp32 out)
  double today() const { return fwd_sep + u + dx_sep + t + ga + gb; }
  double folded() const { return fwd_fused_u + dx_fused_t + ga + gb; }
};

Times time_group(const Gemm& g, cudaStream_t s, const Group& gr, int N, int r, int reps) {
  const int n = int(gr.outs.size()), in = gr.in, nr = n * r;
  int O = 0;
  for (int o : gr.outs) O += o;
  // X (N × in); W_stack with A rows: (O + nr) × in, row-major [W_0; …; W_{n-1}; A_0; …; A_{n-1}]
  auto X = filled(std::size_t(N) * in, 1.0f, 1);
  auto Wa = filled(std::size_t(O + nr) * in, 0.02f, 2);
  // dY_cat (N × O): the members' dY side by side (dY_j = columns [off_j, off_j + o_j))
  auto dY = filled(std::size_t(N) * O, 1.0f, 3);
  // W_ext (O × (in + nr)): row block j = [W_j | 0 … B_j … 0] (B_j at columns in + j·r)
  auto Wb = filled(std::size_t(O) * (in + nr), 0.02f, 4);
  DeviceBuffer<bf16> Y(std::size_t(N) * (O + nr)), dX(std::size_t(N) * (in + nr)), U(std::size_t(N) * nr),
      Tb(std::size_t(N) * nr);
  DeviceBuffer<float> gA(std::size_t(nr) * in), gB(std::size_t(O) * r);
  HDPISSA_CUDA_CHECK(cudaMemsetAsync(gA.get(), 0, std::size_t(nr) * in * sizeof(float), s));
  HDPISSA_CUDA_CHECK(cudaMemsetAsync(gB.get(), 0, std::size_t(O) * r * sizeof(float), s));
  std::vector<int> off(std::size_t(n), 0);
  for (int j = 1; j < n; ++j) off[std::size_t(j)] = off[std::size_t(j - 1)] + gr.outs[std::size_t(j - 1)];
  EventTimer t(s);
  auto best = [&](auto&& f) {
    double b = 1e30;
    for (int i = 0; i < reps + 3; ++i) {
      t.start();
      f();
      const double ms = t.stop_ms();
      if (i >= 3) b = std::min(b, ms);
    }
    return b * 1e3;  // µs
  };
  const int ldw = in + nr;  // W_ext's leading dimension
  Times tm{};
  // ---- forward
  tm.fwd_sep = best([&] {  // Y_j = X W_jᵀ, each into its own contiguous buffer (as q_rows_, k_rows_, …)
    for (int j = 0; j < n; ++j)
      g(N, gr.outs[std::size_t(j)], in, X.get(), in, Wa.get() + std::size_t(off[std::size_t(j)]) * in, in, true,
        Y.get() + std::size_t(N) * off[std::size_t(j)], gr.outs[std::size_t(j)], CUDA_R_16BF);
  });
  tm.u = best([&] { g(N, nr, in, X.get(), in, Wa.get() + std::size_t(O) * in, in, true, U.get(), nr, CUDA_R_16BF); });
  tm.fwd_fused = best([&] { g(N, O, in, X.get(), in, Wa.get(), in, true, Y.get(), O, CUDA_R_16BF); });
  tm.fwd_fused_u = best([&] { g(N, O + nr, in, X.get(), in, Wa.get(), in, true, Y.get(), O + nr, CUDA_R_16BF); });
  // ---- backward: dX = Σ_j dY_j W_j (the members' W_j are the row blocks of W_ext's first `in` columns)
  tm.dx_sep = best([&] {
    for (int j = 0; j < n; ++j)
      g(N, in, gr.outs[std::size_t(j)], dY.get() + off[std::size_t(j)], O, Wb.get() + std::size_t(off[std::size_t(j)]) * ldw,
        ldw, false, dX.get(), in, CUDA_R_16BF, j == 0 ? 0.f : 1.f);
  });
  tm.t = best([&] {  // t_j = dY_j B_j, into the stacked (N × n·r) scratch
    for (int j = 0; j < n; ++j)
      g(N, r, gr.outs[std::size_t(j)], dY.get() + off[std::size_t(j)], O,
        Wb.get() + std::size_t(off[std::size_t(j)]) * ldw + in + j * r, ldw, false, Tb.get() + j * r, nr, CUDA_R_16BF);
  });
  tm.dx_fused = best([&] { g(N, in, O, dY.get(), O, Wb.get(), ldw, false, dX.get(), in, CUDA_R_16BF); });
  tm.dx_fused_t = best([&] { g(N, in + nr, O, dY.get(), O, Wb.get(), ldw, false, dX.get(), in + nr, CUDA_R_16BF); });
  // ---- the gradient GEMMs that stay: gA_stack (n·r × in) += tᵀ X; gB_j (o_j × r) += dY_jᵀ u_j (fp32 sums)
  tm.ga = best([&] { g.tn(nr, in, N, Tb.get(), nr, X.get(), in, gA.get(), in, CUDA_R_32F, 1.f, 0.5f); });
  tm.gb = best([&] {
    for (int j = 0; j < n; ++j)
      g.tn(gr.outs[std::size_t(j)], r, N, dY.get() + off[std::size_t(j)], O, U.get() + j * r, nr,
           gB.get() + std::size_t(off[std::size_t(j)]) * r, r, CUDA_R_32F, 1.f, 0.5f);
  });
  return tm;
}

}  // namespace

int main(int argc, char** argv) {
  int reps = 20, r = 16;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if ((a == "--reps" || a == "--rank") && i + 1 < argc) {
      const int v = std::atoi(argv[++i]);
      if (v < 1) {
        std::fprintf(stderr, "bench_fused_linears: %s expects a positive integer, found '%s'\n", a.c_str(), argv[i]);
        return 2;
      }
      (a == "--reps" ? reps : r) = v;
    } else {
      std::fprintf(stderr, "bench_fused_linears: unknown or incomplete argument '%s' (expected --reps N, --rank R)\n",
                   a.c_str());
      return 2;
    }
  }
  const char* dev = nullptr;
  if (!have_gpu(&dev)) {
    std::printf("bench_fused_linears: no CUDA device\n");
    return 0;
  }
  CudaStream stream;
  cublasHandle_t h = nullptr;
  BFL_CUBLAS(cublasCreate(&h));
  BFL_CUBLAS(cublasSetStream(h, stream.get()));
  DeviceBuffer<char> ws(std::size_t(32) << 20);
  BFL_CUBLAS(cublasSetWorkspace(h, ws.get(), std::size_t(32) << 20));
  const Gemm g{h};
  std::printf("device %s; r = %d; µs per group, best of %d; today = the trainer's GEMM set, folded = the A rows on "
              "the forward GEMM and the B columns on the dX GEMM\n",
              dev, r, reps);
  struct Model {
    const char* name;
    int layers;
    std::vector<Group> groups;
  };
  const std::vector<Model> models{
      {"tinyllama", 22, {{"q/k/v", 2048, {2048, 256, 256}}, {"o", 2048, {2048}}, {"gate/up", 2048, {5632, 5632}},
                         {"down", 5632, {2048}}}},
      {"llama2-7b", 32, {{"q/k/v", 4096, {4096, 4096, 4096}}, {"o", 4096, {4096}}, {"gate/up", 4096, {11008, 11008}},
                         {"down", 11008, {4096}}}}};
  for (const Model& m : models)
    for (const int N : {4096, 1024}) {
      double today = 0, folded = 0, frozen_sep = 0, frozen_fused = 0;
      for (const Group& gr : m.groups) {
        const Times t = time_group(g, stream.get(), gr, N, r, reps);
        std::printf("%-9s N %5d %-7s fwd %8.1f (fused %8.1f, +A rows %8.1f; u %6.1f)  dX %8.1f (fused %8.1f, +B cols %8.1f; "
                    "t %6.1f)  gA %6.1f gB %6.1f  today %8.1f folded %8.1f (%.2fx)\n",
                    m.name, N, gr.name, t.fwd_sep, t.fwd_fused, t.fwd_fused_u, t.u, t.dx_sep, t.dx_fused, t.dx_fused_t, t.t,
                    t.ga, t.gb, t.today(), t.folded(), t.today() / t.folded());
        std::printf("JSON {\"bench\":\"fused_linears\",\"model\":\"%s\",\"tokens\":%d,\"group\":\"%s\",\"rank\":%d,"
                    "\"fwd_sep_us\":%.2f,\"fwd_fused_us\":%.2f,\"fwd_fused_u_us\":%.2f,\"u_us\":%.2f,\"dx_sep_us\":%.2f,"
                    "\"dx_fused_us\":%.2f,\"dx_fused_t_us\":%.2f,\"t_us\":%.2f,\"ga_us\":%.2f,\"gb_us\":%.2f}\n",
                    m.name, N, gr.name, r, t.fwd_sep, t.fwd_fused, t.fwd_fused_u, t.u, t.dx_sep, t.dx_fused, t.dx_fused_t,
                    t.t, t.ga, t.gb);
        today += gr.per_layer * t.today();
        folded += gr.per_layer * t.folded();
        frozen_sep += gr.per_layer * (t.fwd_sep + t.dx_sep);
        frozen_fused += gr.per_layer * (t.fwd_fused + t.dx_fused);
      }
      std::printf("%-9s N %5d per micro-batch (%d layers): linears today %.2f ms, folded %.2f ms (saves %.2f ms); the "
                  "frozen GEMMs alone %.2f ms separate, %.2f fused\n",
                  m.name, N, m.layers, today * m.layers / 1e3, folded * m.layers / 1e3, (today - folded) * m.layers / 1e3,
                  frozen_sep * m.layers / 1e3, frozen_fused * m.layers / 1e3);
      std::printf("JSON {\"bench\":\"fused_linears_total\",\"model\":\"%s\",\"tokens\":%d,\"today_ms\":%.3f,\"folded_ms\":%.3f,"
                  "\"frozen_sep_ms\":%.3f,\"frozen_fused_ms\":%.3f}\n",
                  m.name, N, today * m.layers / 1e3, folded * m.layers / 1e3, frozen_sep * m.layers / 1e3,
                  frozen_fused * m.layers / 1e3);
    }
  cublasDestroy(h);
  return 0;
}
