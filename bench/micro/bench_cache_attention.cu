// bench_cache_attention — the greedy decoder's cache attention (examples/llama/include/llama/cuda/
// decode_cuda.cuh: the split kernel + the combine, as one decode step launches it per layer) alone,
// at decode-bench's setup: batch 64, prompts of 96–224 tokens, 256 new tokens, so the rows' cache
// positions at decode step t are prompt + t; K and V of every (slot, kv head) contiguous.
//
// Why: at LLaMA-2-7B, batch 64, the attention is 40 % of a decode step and streams its K / V at ≈ 80
// % of the DRAM read rate (docs/evaluation.md, "Session 32"). This times the kernels on their own —
// the register kernel (fused), the two-phase one, the bulk-copy one (cache_attention_bulk: K / V
// tiles brought into shared memory by cp.async.bulk, `stages` ahead) at several tilings — against
// two read ceilings measured in the same run: a plain 16-byte streaming read of 2 GiB, and the same
// per-(row, head, split) ranges read with 16-byte loads and no arithmetic. Every bulk result is
// compared with the fused kernel's at the same chunk, bit for bit; the tensor-core GQA kernel
// (cache_attention_mma, bf16, P·V with P in bf16: not the same bits) by its normalised difference.
//
// Usage: bench_cache_attention [--shape 7b|8b|tiny] [--rows N] [--steps a,b,...] [--reps N]
// (steps: decode steps t whose positions are timed, averaged; default 1,128,255). Every "JSON " line
// is one machine-readable record.
#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_bench_util.hpp"
#include "llama/cuda/decode_cuda.cuh"

using namespace hdpissa;
using namespace hdpissa::bench;
namespace dk = hdpissa::llama::gpu::decode_kern;
using bf16 = __nv_bfloat16;

namespace {

__global__ void fill_bf16(bf16* p, std::size_t n, std::uint32_t seed) {
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x) {
    std::uint32_t h = static_cast<std::uint32_t>(i) * 2654435761u ^ seed;
    h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
    p[i] = __float2bfloat16((static_cast<float>(h & 0xFFFF) / 65535.0f - 0.5f) * 4.0f);
  }
}

/// Reads what the split kernels read (row r's slot's kv heads, keys [chunk·sp, min(pos + 1, …))
/// with 16-byte loads and no arithmetic: the ceiling of this access pattern.
__global__ void read_ranges(const uint4* __restrict__ kc, const uint4* __restrict__ vc, const std::int32_t* __restrict__ pos,
                            int nkv, int max_ctx, int row_vecs, int chunk, unsigned* __restrict__ sink) {
  const int r = blockIdx.x, h = blockIdx.y, sp = blockIdx.z;
  const int k0 = sp * chunk, k1 = min(pos[r] + 1, k0 + chunk);
  if (k0 >= k1) return;
  const std::int64_t base = ((static_cast<std::int64_t>(r) * nkv + h) * max_ctx + k0) * row_vecs;
  const std::int64_t nvec = static_cast<std::int64_t>(k1 - k0) * row_vecs;
  unsigned acc = 0;
  for (std::int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
    const uint4 a = kc[base + i], b = vc[base + i];
    acc ^= a.x ^ a.y ^ a.z ^ a.w ^ b.x ^ b.y ^ b.z ^ b.w;
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;  // never in practice; keeps the loads
}

__global__ void read_all(const uint4* __restrict__ p, std::size_t n, unsigned* __restrict__ sink) {
  unsigned acc = 0;
  for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n; i += std::size_t(gridDim.x) * blockDim.x) {
    const uint4 a = p[i];
    acc ^= a.x ^ a.y ^ a.z ^ a.w;
  }
  if (acc == 0x9e3779b9u) sink[0] = acc;
}

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string t;
  while (std::getline(ss, t, ',')) v.push_back(std::atoi(t.c_str()));
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  const char* gpu = nullptr;
  if (!have_gpu(&gpu)) {
    std::printf("bench_cache_attention: no CUDA device\n");
    return 0;
  }
  std::string shape = "7b";
  int rows = 64, reps = 20;
  std::vector<int> steps{1, 128, 255};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_cache_attention: %s expects a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--shape") shape = next();
    else if (a == "--rows") rows = std::atoi(next().c_str());
    else if (a == "--reps") reps = std::atoi(next().c_str());
    else if (a == "--steps") steps = parse_list(next());
    else {
      std::fprintf(stderr, "bench_cache_attention: unknown argument '%s' (expected --shape, --rows, --steps, --reps)\n",
                   a.c_str());
      return 2;
    }
  }
  if (shape != "7b" && shape != "tiny" && shape != "8b") {
    std::fprintf(stderr, "bench_cache_attention: --shape expects 7b, 8b or tiny, found '%s'\n", shape.c_str());
    return 2;
  }
  if (rows < 1 || reps < 1 || steps.empty()) {
    std::fprintf(stderr, "bench_cache_attention: expected --rows >= 1, --reps >= 1 and at least one step\n");
    return 2;
  }
  // 7b: LLaMA-2-7B (MHA); 8b: LLaMA-3-8B / Mistral-7B (GQA 4); tiny: TinyLlama (GQA 8, hd 64)
  const int nh = 32, nkv = shape == "7b" ? 32 : shape == "8b" ? 8 : 4, hd = shape == "tiny" ? 64 : 128;
  const int max_ctx = 224 + 256, n = rows;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  std::mt19937 rng(0);
  std::uniform_int_distribution<int> plen(96, 224);
  std::vector<int> prompt(n);
  for (auto& p : prompt) p = plen(rng);

  CudaStream stream;
  cudaStream_t s = stream.get();
  const std::size_t cache = std::size_t(n) * nkv * max_ctx * hd;
  DeviceBuffer<bf16> q(std::size_t(n) * nh * hd), kc(cache), vc(cache), out(std::size_t(n) * nh * hd),
      ref(std::size_t(n) * nh * hd);
  fill_bf16<<<1024, 256, 0, s>>>(q.get(), std::size_t(n) * nh * hd, 1);
  fill_bf16<<<4096, 256, 0, s>>>(kc.get(), cache, 2);
  fill_bf16<<<4096, 256, 0, s>>>(vc.get(), cache, 3);
  const int max_splits = (max_ctx + 15) / 16;
  DeviceBuffer<float> part_o(std::size_t(n) * nh * max_splits * hd), part_ml(std::size_t(n) * nh * max_splits * 2);
  DeviceBuffer<std::int32_t> pos(n), order(n);
  DeviceBuffer<unsigned> sink(1);
  std::vector<std::int32_t> hpos(n);

  // the device's plain streaming read rate (2 GiB, 16-byte loads)
  double ceiling_gbps = 0;
  {
    const std::size_t bytes = std::size_t(2) << 30;
    DeviceBuffer<uint4> big(bytes / 16);
    HDPISSA_CUDA_CHECK(cudaMemsetAsync(big.get(), 1, bytes, s));
    EventTimer t(s);
    double best = 1e30;
    for (int i = 0; i < 8; ++i) {
      t.start();
      read_all<<<132 * 16, 512, 0, s>>>(big.get(), bytes / 16, sink.get());
      const double ms = t.stop_ms();
      if (i >= 2) best = std::min(best, ms);
    }
    ceiling_gbps = double(bytes) / (best * 1e-3) / 1e9;
  }
  std::printf("device: %s; plain 16-byte streaming read of 2 GiB: %.0f GB/s\n", gpu, ceiling_gbps);
  std::printf("shape %s: %d rows, %d / %d heads x %d, context %d, decode steps", shape.c_str(), n, nh, nkv, hd, max_ctx);
  for (int t : steps) std::printf(" %d", t);
  std::printf(" (mean cache positions");
  double mean_pos = 0;
  for (int t : steps)
    for (int p : prompt) mean_pos += double(p + t) / double(n * steps.size());
  std::printf(" %.1f)\n\n", mean_pos);

  struct Variant {
    std::string name;
    dk::CacheAttentionKernel kernel;
    int chunk;
    dk::BulkTiling tiling;
    bool ordered;  // grid rows by descending position (the decoder's order)
  };
  using K = dk::CacheAttentionKernel;
  std::vector<Variant> vars;
  for (bool o : {false, true})
    for (int chunk : {256, 512}) vars.push_back({"fused", K::Fused, chunk, {}, o});
  if (nkv != nh)
    for (bool o : {false, true}) vars.push_back({"two-phase", K::TwoPhase, 128, {}, o});
  auto add_bulk = [&](dk::BulkTiling t, int chunk, bool o) {
    char nm[64];
    std::snprintf(nm, sizeof nm, "bulk %dx%d", dk::bulk_tile_keys<bf16>(hd, t), t.stages);
    vars.push_back({nm, K::Bulk, chunk, t, o});
  };
  for (int chunk : {256, 512})
    for (dk::BulkTiling t : std::vector<dk::BulkTiling>{{16, 2}, {16, 3}, {32, 2}, {32, 3}})
      add_bulk(t, chunk, true);
  add_bulk({16, 2}, 512, false);
  for (int chunk : {256, 512}) {
    add_bulk({16, 2, 8}, chunk, true);
    add_bulk({32, 2, 8}, chunk, true);
    vars.back().name += " min8", vars[vars.size() - 2].name += " min8";
  }
  // the tensor-core GQA kernel (bf16, groups 2-8, hd 64 / 128): stages per warp x chunk
  const bool mma_ok = dk::cache_attention_mma_supported<bf16>(hd, nh / nkv);
  if (nkv != nh)
    for (int chunk : {128, 256, 512})
      for (int st : {2, 3, 4}) {
        dk::BulkTiling t;
        t.mma_stages = st;
        vars.push_back({"mma x" + std::to_string(st), K::Mma, chunk, t, true});
      }
  const bool bulk_ok = dk::device_has_bulk_copy();
  std::printf("| kernel | chunk | rows by position | us per launch | K/V GB/s | of the read ceiling | bits vs fused (same chunk) |\n");
  std::printf("|---|---:|---|---:|---:|---:|---|\n");
  std::vector<bf16> h_ref(std::size_t(n) * nh * hd), h_out(h_ref.size());
  EventTimer timer(s);
  auto time_launches = [&](auto&& launch) {
    double best = 1e30;
    for (int sample = 0; sample < 3; ++sample) {
      launch();
      launch();
      timer.start();
      for (int i = 0; i < reps; ++i) launch();
      best = std::min(best, timer.stop_ms() * 1e3 / reps);
    }
    return best;
  };
  // ranges read once per launch: every row's keys 0 .. pos of every kv head, K and V
  auto kv_bytes = [&](int t) {
    double b = 0;
    for (int p : prompt) b += double(p + t) * nkv * hd * sizeof(bf16) * 2;
    return b;
  };
  // the read-only ceiling of this pattern (chunk 256)
  {
    double us = 0, bytes = 0;
    for (int t : steps) {
      for (int r = 0; r < n; ++r) hpos[r] = prompt[r] + t - 1;
      HDPISSA_CUDA_CHECK(cudaMemcpyAsync(pos.get(), hpos.data(), sizeof(std::int32_t) * n, cudaMemcpyHostToDevice, s));
      HDPISSA_CUDA_CHECK(cudaStreamSynchronize(s));
      const int chunk = 256, splits = (max_ctx + chunk - 1) / chunk;
      us += time_launches([&] {
        read_ranges<<<dim3(n, nkv, splits), 128, 0, s>>>(reinterpret_cast<const uint4*>(kc.get()),
                                                           reinterpret_cast<const uint4*>(vc.get()), pos.get(), nkv,
                                                           max_ctx, hd * 2 / 16, chunk, sink.get());
      });
      bytes += kv_bytes(t);
    }
    const double gbps = bytes / (us * 1e-6) / 1e9;
    std::printf("| read only (same ranges, no arithmetic) | 256 | no | %.1f | %.0f | %.1f %% | – |\n", us / steps.size(), gbps,
                100 * gbps / ceiling_gbps);
  }
  for (const Variant& v : vars) {
    if (v.kernel == K::Bulk && !bulk_ok) {
      std::printf("| %s | %d | %s | – | – | – | skipped: needs sm_90 |\n", v.name.c_str(), v.chunk, v.ordered ? "yes" : "no");
      continue;
    }
    if (v.kernel == K::Mma && !mma_ok) {
      std::printf("| %s | %d | %s | – | – | – | skipped: needs sm_80 and this shape |\n", v.name.c_str(), v.chunk,
                  v.ordered ? "yes" : "no");
      continue;
    }
    double us = 0, bytes = 0;
    bool same = true, compared = false;
    double rel = 0;  // the mma kernel: max over steps of ||out - fused|| / ||fused||
    for (int t : steps) {
      for (int r = 0; r < n; ++r) hpos[r] = prompt[r] + t - 1;
      std::vector<std::int32_t> hord(n);
      for (int r = 0; r < n; ++r) hord[r] = r;
      std::stable_sort(hord.begin(), hord.end(), [&](int a, int b) { return hpos[a] > hpos[b]; });
      HDPISSA_CUDA_CHECK(cudaMemcpyAsync(pos.get(), hpos.data(), sizeof(std::int32_t) * n, cudaMemcpyHostToDevice, s));
      HDPISSA_CUDA_CHECK(cudaMemcpyAsync(order.get(), hord.data(), sizeof(std::int32_t) * n, cudaMemcpyHostToDevice, s));
      HDPISSA_CUDA_CHECK(cudaStreamSynchronize(s));
      const int splits = (max_ctx + v.chunk - 1) / v.chunk;
      auto launch = [&](bf16* o, K kern) {
        dk::launch_cache_attention<bf16>(s, q.get(), kc.get(), vc.get(), nullptr, pos.get(), n, nh, nkv, hd, max_ctx, 0,
                                         scale, v.chunk, splits, part_o.get(), part_ml.get(), o, kern, v.tiling,
                                         v.ordered ? order.get() : nullptr);
      };
      us += time_launches([&] { launch(out.get(), v.kernel); });
      bytes += kv_bytes(t);
      if (v.kernel == K::Bulk || v.kernel == K::Mma) {
        launch(ref.get(), K::Fused);
        HDPISSA_CUDA_CHECK(cudaMemcpyAsync(h_ref.data(), ref.get(), sizeof(bf16) * h_ref.size(), cudaMemcpyDeviceToHost, s));
        HDPISSA_CUDA_CHECK(cudaMemcpyAsync(h_out.data(), out.get(), sizeof(bf16) * h_out.size(), cudaMemcpyDeviceToHost, s));
        HDPISSA_CUDA_CHECK(cudaStreamSynchronize(s));
        same = same && std::memcmp(h_ref.data(), h_out.data(), sizeof(bf16) * h_ref.size()) == 0;
        double num = 0, den = 0;
        for (std::size_t i = 0; i < h_ref.size(); ++i) {
          const double a = __bfloat162float(h_out[i]), b = __bfloat162float(h_ref[i]);
          num += (a - b) * (a - b), den += b * b;
        }
        rel = std::max(rel, std::sqrt(num / std::max(den, 1e-30)));
        compared = true;
      }
    }
    const double gbps = bytes / (us * 1e-6) / 1e9;
    char cmp[64];
    if (!compared) std::snprintf(cmp, sizeof cmp, "–");
    else if (v.kernel == K::Mma) std::snprintf(cmp, sizeof cmp, "normalised difference %.1e", rel);
    else std::snprintf(cmp, sizeof cmp, "%s", same ? "identical" : "DIFFERENT");
    std::printf("| %s | %d | %s | %.1f | %.0f | %.1f %% | %s |\n", v.name.c_str(), v.chunk, v.ordered ? "yes" : "no",
                us / steps.size(), gbps, 100 * gbps / ceiling_gbps, cmp);
    std::printf("JSON {\"bench\":\"cache_attention\",\"shape\":\"%s\",\"kernel\":\"%s\",\"chunk\":%d,\"ordered\":%s,\"us\":%.2f,\"gbps\":%.1f,\"ceiling_gbps\":%.1f,\"identical\":%s,\"rel_diff_vs_fused\":%.3e}\n",
                shape.c_str(), v.name.c_str(), v.chunk, v.ordered ? "true" : "false", us / steps.size(), gbps, ceiling_gbps,
                compared ? (same ? "true" : "false") : "null", rel);
  }
  return 0;
}
