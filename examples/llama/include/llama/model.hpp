#pragma once
/// \file model.hpp
/// The LLaMA-family decoder on the CPU in fp32 with Eigen: forward with loss, backward with every
/// gradient, held-out loss, and greedy generation with a KV cache.
///
/// Architecture (HF LlamaForCausalLM; Mistral, Qwen2): embedding → n_layers × [RMSNorm → q,k,v (+ Qwen2 bias) → RoPE (HF
/// rotate-half; theta, llama3 / linear scaling from the config) → causal grouped-query attention
/// (right padding masked; sliding window per config.attention_window) → o, residual → RMSNorm → SwiGLU (gate, up, down), residual] → RMSNorm →
/// lm_head (tied or not) → cross-entropy (ignore_index -100, mean over non-masked targets).
/// Every target linear goes through LinearHooks. Attention probabilities are not stored: the
/// backward recomputes them from the saved q, k and row log-sum-exp (flash-attention style), and
/// the loss is computed in row chunks so full-vocabulary logits are never all alive.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "llama/batch.hpp"
#include "llama/common.hpp"
#include "llama/config.hpp"
#include "llama/linear_hooks.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama {

/// Activations of one decoder layer saved for the backward. N = batch·seq rows.
struct LayerActivations {
  Matrix x;        ///< (N, dim) residual stream entering the layer
  Vector rstd1;    ///< (N) 1/rms of x
  Matrix xn1;      ///< (N, dim) attention-norm output = X of q, k, v
  Matrix q;        ///< (N, n_heads·hd) after RoPE
  Matrix k;        ///< (N, n_kv·hd) after RoPE
  Matrix v;        ///< (N, n_kv·hd)
  Matrix lse;      ///< (N, n_heads) log-sum-exp of each attention row (for the recompute)
  Matrix attn;     ///< (N, n_heads·hd) attention output = X of o
  Matrix h;        ///< (N, dim) residual after attention
  Vector rstd2;    ///< (N) 1/rms of h
  Matrix xn2;      ///< (N, dim) ffn-norm output = X of gate, up
  Matrix gate;     ///< (N, hidden) gate pre-activation
  Matrix up;       ///< (N, hidden) up output
  Matrix act;      ///< (N, hidden) silu(gate)·up = X of down
};

/// Everything forward() saves; reusable across steps (buffers are resized, not reallocated, when
/// shapes repeat).
struct Activations {
  int batch_size = 0;                    ///< B
  int seq_len = 0;                       ///< T
  std::vector<std::int32_t> tokens;      ///< (B·T) input ids
  std::vector<std::int32_t> labels;      ///< (B·T) HF-aligned labels
  std::vector<int> lengths;              ///< (B) real lengths
  Matrix rope_cos;                       ///< (T, hd/2)
  Matrix rope_sin;                       ///< (T, hd/2)
  std::vector<LayerActivations> layers;  ///< n_layers
  Matrix x_final;                        ///< (N, dim) residual before the final norm
  Vector rstd_final;                     ///< (N)
  Matrix xn_final;                       ///< (N, dim) final-norm output (lm_head input)
  std::vector<std::int64_t> target_rows; ///< rows r whose next label is a target
  std::vector<std::int32_t> target_ids;  ///< the target token of each target row
};

/// Result of a loss computation.
struct LossResult {
  double loss_sum = 0.0;     ///< Σ of per-token cross-entropies (nats)
  std::int64_t n_tokens = 0; ///< number of target tokens
  /// Mean loss over target tokens (0 when there are none).
  [[nodiscard]] double mean() const { return n_tokens ? loss_sum / static_cast<double>(n_tokens) : 0.0; }
};

/// Options of forward().
struct ForwardOptions {
  bool compute_loss = true;  ///< false: skip the classifier (e.g. when only hidden states are wanted)
  int loss_chunk_rows = 256; ///< rows of full-vocab logits alive at once
};

namespace detail {

/// RMSNorm forward: y = x / rms(x) · w.  // x, y (N, D)
inline void rmsnorm_forward(const Matrix& x, const Vector& w, float eps, Matrix& y, Vector& rstd) {
  const Eigen::Index n = x.rows(), d = x.cols();
  y.resize(n, d);
  rstd.resize(n);
HDPISSA_LLAMA_OMP(omp parallel for schedule(static) if (n > 64))
  for (Eigen::Index i = 0; i < n; ++i) {
    const float ms = x.row(i).squaredNorm() / static_cast<float>(d);
    const float r = 1.0f / std::sqrt(ms + eps);
    rstd(i) = r;
    y.row(i) = (x.row(i) * r).cwiseProduct(w.transpose());
  }
}

/// RMSNorm backward: dx += ∂/∂x, gw += Σ_rows dy·x·rstd (when gw).  // (N, D)
inline void rmsnorm_backward(const Matrix& x, const Vector& rstd, const Vector& w, const Matrix& dy, Matrix& dx,
                             Vector* gw) {
  const Eigen::Index n = x.rows(), d = x.cols();
HDPISSA_LLAMA_OMP(omp parallel for schedule(static) if (n > 64))
  for (Eigen::Index i = 0; i < n; ++i) {
    const float r = rstd(i);
    const Eigen::RowVectorXf g = dy.row(i).cwiseProduct(w.transpose());  // dy ∘ w
    const float dot = g.dot(x.row(i));
    dx.row(i) += r * g - (r * r * r * dot / static_cast<float>(d)) * x.row(i);
  }
  if (gw) {
    // Σ_i dy_i ∘ x_i · rstd_i, column-wise
    *gw += (dy.cwiseProduct(x).transpose() * rstd);
  }
}

/// RoPE tables for positions [0, T): cos/sin of pos·inv_freq (angle rounded to float like HF).
inline void rope_tables(const ModelConfig& c, int T, Matrix& cos_t, Matrix& sin_t) {
  const auto inv = c.rope_inv_freq();
  const int half = c.head_dim / 2;
  cos_t.resize(T, half);
  sin_t.resize(T, half);
  for (int t = 0; t < T; ++t)
    for (int i = 0; i < half; ++i) {
      const float angle = static_cast<float>(t) * static_cast<float>(inv[i]);
      cos_t(t, i) = static_cast<float>(std::cos(static_cast<double>(angle)));
      sin_t(t, i) = static_cast<float>(std::sin(static_cast<double>(angle)));
    }
}

/// Applies rotate-half RoPE in place to `m` (rows, n_heads·hd), row r at position pos_of(r).
/// `inverse` applies the transpose rotation (the backward).
template <class PosOf>
void rope_apply(Matrix& m, int n_heads, int hd, const Matrix& cos_t, const Matrix& sin_t, PosOf pos_of, bool inverse) {
  const int half = hd / 2;
  const Eigen::Index n = m.rows();
  const float sgn = inverse ? -1.0f : 1.0f;
HDPISSA_LLAMA_OMP(omp parallel for schedule(static) if (n > 64))
  for (Eigen::Index r = 0; r < n; ++r) {
    const int pos = pos_of(r);
    float* row = m.row(r).data();
    const float* cs = cos_t.row(pos).data();
    const float* sn = sin_t.row(pos).data();
    for (int h = 0; h < n_heads; ++h) {
      float* x = row + h * hd;
      for (int i = 0; i < half; ++i) {
        const float a = x[i], b = x[i + half], c = cs[i], s = sgn * sn[i];
        x[i] = a * c - b * s;
        x[i + half] = b * c + a * s;
      }
    }
  }
}

/// First key position visible from query position `pos` with attention window `window` (0 = full
/// causal). transformers' masking_utils: sliding_window_causal_mask_function(W) =
/// and_masks(sliding_window_overlay(W), causal_mask_function), where sliding_window_overlay allows
/// `kv_idx > q_idx - sliding_window` and causal allows `kv_idx <= q_idx`; so query i sees the W keys
/// max(0, i − W + 1) .. i.
inline int first_visible_key(int pos, int window) { return window > 0 ? std::max(0, pos - window + 1) : 0; }

/// Causal attention of one head. Queries are at absolute positions q_offset + i, keys at 0..m-1;
/// `window` > 0 restricts query i to the keys first_visible_key(q_offset + i, window) .. q_offset + i.
/// S is a scratch (n, m). O (n, hd) is written; lse (n) receives the row log-sum-exp if non-null.
template <class QB, class KB, class VB, class OB>
void attention_head_forward(const QB& Q, const KB& K, const VB& V, int q_offset, float scale, Matrix& S, OB&& O,
                            float* lse, int window = 0) {
  const Eigen::Index n = Q.rows(), m = K.rows();
  S.resize(n, m);
  S.noalias() = (Q * K.transpose()) * scale;
  for (Eigen::Index i = 0; i < n; ++i) {
    const Eigen::Index last = std::min<Eigen::Index>(m - 1, q_offset + i);  // causal: keys ≤ position
    const Eigen::Index first = first_visible_key(static_cast<int>(q_offset + i), window);
    auto row = S.row(i);
    const float mx = row.segment(first, last + 1 - first).maxCoeff();
    double sum = 0.0;
    for (Eigen::Index j = 0; j < first; ++j) row(j) = 0.0f;
    for (Eigen::Index j = first; j <= last; ++j) {
      const float e = std::exp(row(j) - mx);
      row(j) = e;
      sum += e;
    }
    for (Eigen::Index j = last + 1; j < m; ++j) row(j) = 0.0f;
    row.segment(first, last + 1 - first) *= static_cast<float>(1.0 / sum);
    if (lse) lse[i] = mx + static_cast<float>(std::log(sum));
  }
  O.noalias() = S * V;
}

/// Adds a linear's frozen bias (if any) to every row of its output Y (tokens, out).
inline void add_bias(const Vector* b, Matrix& Y) {
  if (b) Y.rowwise() += b->transpose();
}

/// SiLU.
inline float silu(float x) { return x / (1.0f + std::exp(-x)); }

/// A target linear through the hooks, with the CPU model's Eigen operands as library views.
inline void linear_forward(CpuHooks& h, LinearId id, const Matrix& W, ConstMatrixRef X, MatrixRef Y) {
  h.forward(id, view_of(W), view_of(X), view_of(Y));
}
inline void linear_backward(CpuHooks& h, LinearId id, const Matrix& W, ConstMatrixRef X, ConstMatrixRef dY,
                            MatrixRef dX) {
  h.backward(id, view_of(W), view_of(X), view_of(dY), view_of(dX));
}

}  // namespace detail

/// Runs the model on `batch`, saving what backward() needs in `acts`, and returns the loss
/// (cross-entropy of labels[b, t+1] given tokens ≤ t, mean over non-masked targets).
inline LossResult forward(const ModelWeights& w, const Batch& batch, CpuHooks& hooks, Activations& acts,
                          const ForwardOptions& opt = {}) {
  batch.check(w.config.vocab_size, "forward");
  const ModelConfig& c = w.config;
  const int B = batch.batch_size, T = batch.seq_len;
  if (T > c.max_seq_len)
    throw LlamaError(cat("forward: sequence length ", T, " exceeds max_position_embeddings ", c.max_seq_len));
  const Eigen::Index N = static_cast<Eigen::Index>(B) * T;
  const int D = c.dim, hd = c.head_dim, nh = c.n_heads, nkv = c.n_kv_heads, group = nh / nkv;
  acts.batch_size = B;
  acts.seq_len = T;
  acts.tokens = batch.input_ids;
  acts.labels = batch.labels;
  acts.lengths = batch.lengths;
  detail::rope_tables(c, T, acts.rope_cos, acts.rope_sin);
  acts.layers.resize(c.n_layers);
  auto pos_of = [T](Eigen::Index r) { return static_cast<int>(r % T); };

  Matrix x(N, D);  // (N, dim)
  for (Eigen::Index r = 0; r < N; ++r) x.row(r) = w.embed.row(batch.input_ids[r]);
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  Matrix tmp(N, D);
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    LayerActivations& a = acts.layers[l];
    a.x = x;
    detail::rmsnorm_forward(a.x, lw.attn_norm, c.norm_eps, a.xn1, a.rstd1);
    a.q.resize(N, c.q_dim());
    a.k.resize(N, c.kv_dim());
    a.v.resize(N, c.kv_dim());
    detail::linear_forward(hooks, {l, Module::q}, lw.wq, a.xn1, a.q);
    detail::linear_forward(hooks, {l, Module::k}, lw.wk, a.xn1, a.k);
    detail::linear_forward(hooks, {l, Module::v}, lw.wv, a.xn1, a.v);
    detail::add_bias(lw.bias(Module::q), a.q);  // Qwen2: bias after X·Wᵀ (adapters never see it), before RoPE
    detail::add_bias(lw.bias(Module::k), a.k);
    detail::add_bias(lw.bias(Module::v), a.v);
    detail::rope_apply(a.q, nh, hd, acts.rope_cos, acts.rope_sin, pos_of, false);
    detail::rope_apply(a.k, nkv, hd, acts.rope_cos, acts.rope_sin, pos_of, false);
    a.attn.setZero(N, c.q_dim());
    a.lse.setZero(N, nh);
    const int window = c.attention_window(l);
HDPISSA_LLAMA_OMP(omp parallel)
    {
      Matrix S;
      Vector lse_buf;
HDPISSA_LLAMA_OMP(omp for schedule(dynamic) collapse(2))
      for (int b = 0; b < B; ++b)
        for (int h = 0; h < nh; ++h) {
          const int L = batch.lengths[b];
          const Eigen::Index base = static_cast<Eigen::Index>(b) * T;
          const int g = h / group;
          lse_buf.resize(L);
          detail::attention_head_forward(a.q.block(base, h * hd, L, hd), a.k.block(base, g * hd, L, hd),
                                         a.v.block(base, g * hd, L, hd), 0, scale, S,
                                         a.attn.block(base, h * hd, L, hd), lse_buf.data(), window);
          a.lse.block(base, h, L, 1) = lse_buf;
        }
    }
    detail::linear_forward(hooks, {l, Module::o}, lw.wo, a.attn, tmp);
    a.h = a.x + tmp;
    detail::rmsnorm_forward(a.h, lw.ffn_norm, c.norm_eps, a.xn2, a.rstd2);
    a.gate.resize(N, c.hidden_dim);
    a.up.resize(N, c.hidden_dim);
    detail::linear_forward(hooks, {l, Module::gate}, lw.w_gate, a.xn2, a.gate);
    detail::linear_forward(hooks, {l, Module::up}, lw.w_up, a.xn2, a.up);
    a.act.resize(N, c.hidden_dim);
HDPISSA_LLAMA_OMP(omp parallel for schedule(static) if (N > 64))
    for (Eigen::Index r = 0; r < N; ++r)
      for (Eigen::Index j = 0; j < c.hidden_dim; ++j) a.act(r, j) = detail::silu(a.gate(r, j)) * a.up(r, j);
    detail::linear_forward(hooks, {l, Module::down}, lw.w_down, a.act, tmp);
    x = a.h + tmp;
  }
  acts.x_final = std::move(x);
  detail::rmsnorm_forward(acts.x_final, w.final_norm, c.norm_eps, acts.xn_final, acts.rstd_final);

  // targets: row (b, t) predicts labels[b, t+1]
  acts.target_rows.clear();
  acts.target_ids.clear();
  batch.for_each_target([&acts](std::int64_t row, std::int32_t lab) {
    acts.target_rows.push_back(row);
    acts.target_ids.push_back(lab);
  });
  LossResult res;
  res.n_tokens = static_cast<std::int64_t>(acts.target_rows.size());
  if (!opt.compute_loss || res.n_tokens == 0) return res;
  const Matrix& C = w.classifier();  // (vocab, dim)
  const std::int64_t chunk = std::max(1, opt.loss_chunk_rows);
  Matrix xc, logits;
  for (std::int64_t s = 0; s < res.n_tokens; s += chunk) {
    const std::int64_t n = std::min(chunk, res.n_tokens - s);
    xc.resize(n, D);
    for (std::int64_t i = 0; i < n; ++i) xc.row(i) = acts.xn_final.row(acts.target_rows[s + i]);
    logits.resize(n, c.vocab_size);
    logits.noalias() = xc * C.transpose();  // (n, vocab)
    for (std::int64_t i = 0; i < n; ++i) {
      const float mx = logits.row(i).maxCoeff();
      const double lse = mx + std::log(static_cast<double>((logits.row(i).array() - mx).exp().sum()));
      res.loss_sum += lse - logits(i, acts.target_ids[s + i]);
    }
  }
  return res;
}

/// Backpropagates `grad_scale` · mean loss of the last forward() through the model. Target linears
/// go through `hooks.backward` (which owns their weight / adapter gradients); when `grads` is
/// non-null the other parameters' gradients (embedding, norms, lm_head / tied embedding, frozen q/k/v biases) are
/// ACCUMULATED into it. Use grad_scale = 1/accumulation_steps for gradient accumulation.
inline void backward(const ModelWeights& w, const Activations& acts, CpuHooks& hooks, ModelWeights* grads,
                     float grad_scale = 1.0f, int loss_chunk_rows = 256) {
  const ModelConfig& c = w.config;
  const int B = acts.batch_size, T = acts.seq_len;
  const Eigen::Index N = static_cast<Eigen::Index>(B) * T;
  const int D = c.dim, hd = c.head_dim, nh = c.n_heads, nkv = c.n_kv_heads, group = nh / nkv;
  if (acts.layers.size() != static_cast<std::size_t>(c.n_layers) || acts.xn_final.rows() != N)
    throw LlamaError("backward: expected the activations of a forward() with these weights, found none / other shapes");
  auto pos_of = [T](Eigen::Index r) { return static_cast<int>(r % T); };
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));

  // ---- loss → d xn_final, classifier gradient (logits recomputed chunk by chunk)
  Matrix d_xn = Matrix::Zero(N, D);  // (N, dim)
  const auto n_tok = static_cast<std::int64_t>(acts.target_rows.size());
  if (n_tok > 0) {
    const Matrix& C = w.classifier();
    Matrix* gC = grads ? &grads->classifier() : nullptr;
    const float coef = grad_scale / static_cast<float>(n_tok);
    const std::int64_t chunk = std::max(1, loss_chunk_rows);
    Matrix xc, logits, dxc;
    for (std::int64_t s = 0; s < n_tok; s += chunk) {
      const std::int64_t n = std::min(chunk, n_tok - s);
      xc.resize(n, D);
      for (std::int64_t i = 0; i < n; ++i) xc.row(i) = acts.xn_final.row(acts.target_rows[s + i]);
      logits.resize(n, c.vocab_size);
      logits.noalias() = xc * C.transpose();
      for (std::int64_t i = 0; i < n; ++i) {  // logits → coef·(softmax − onehot)
        auto row = logits.row(i);
        const float mx = row.maxCoeff();
        row = (row.array() - mx).exp();
        row *= coef / row.sum();
        row(acts.target_ids[s + i]) -= coef;
      }
      dxc.resize(n, D);
      dxc.noalias() = logits * C;  // (n, dim)
      for (std::int64_t i = 0; i < n; ++i) d_xn.row(acts.target_rows[s + i]) += dxc.row(i);
      if (gC) gC->noalias() += logits.transpose() * xc;  // (vocab, dim)
    }
  }
  Matrix dx = Matrix::Zero(N, D);  // ∂/∂ residual stream
  detail::rmsnorm_backward(acts.x_final, acts.rstd_final, w.final_norm, d_xn, dx, grads ? &grads->final_norm : nullptr);

  Matrix d_act(N, c.hidden_dim), d_gate(N, c.hidden_dim), d_up(N, c.hidden_dim);
  Matrix d_xn2(N, D), d_tmp(N, D), d_attn(N, c.q_dim());
  Matrix dq(N, c.q_dim()), dk(N, c.kv_dim()), dv(N, c.kv_dim());
  for (int l = c.n_layers - 1; l >= 0; --l) {
    const LayerWeights& lw = w.layers[l];
    const LayerActivations& a = acts.layers[l];
    LayerWeights* gl = grads ? &grads->layers[l] : nullptr;
    // x_out = h + down(act): dh = dx
    detail::linear_backward(hooks, {l, Module::down}, lw.w_down, a.act, dx, d_act);
HDPISSA_LLAMA_OMP(omp parallel for schedule(static) if (N > 64))
    for (Eigen::Index r = 0; r < N; ++r)
      for (Eigen::Index j = 0; j < c.hidden_dim; ++j) {
        const float g = a.gate(r, j);
        const float sig = 1.0f / (1.0f + std::exp(-g));
        d_up(r, j) = d_act(r, j) * g * sig;
        d_gate(r, j) = d_act(r, j) * a.up(r, j) * sig * (1.0f + g * (1.0f - sig));
      }
    detail::linear_backward(hooks, {l, Module::up}, lw.w_up, a.xn2, d_up, d_xn2);
    detail::linear_backward(hooks, {l, Module::gate}, lw.w_gate, a.xn2, d_gate, d_tmp);
    d_xn2 += d_tmp;
    detail::rmsnorm_backward(a.h, a.rstd2, lw.ffn_norm, d_xn2, dx, gl ? &gl->ffn_norm : nullptr);  // dx is now dh
    // h = x + o(attn)
    detail::linear_backward(hooks, {l, Module::o}, lw.wo, a.attn, dx, d_attn);
    dq.setZero();
    dk.setZero();
    dv.setZero();
    const int window = c.attention_window(l);
HDPISSA_LLAMA_OMP(omp parallel)
    {
      Matrix S, dP, dKacc, dVacc;
      Vector Drow;
HDPISSA_LLAMA_OMP(omp for schedule(dynamic) collapse(2))
      for (int b = 0; b < B; ++b)
        for (int g = 0; g < nkv; ++g) {
          const int L = acts.lengths[b];
          const Eigen::Index base = static_cast<Eigen::Index>(b) * T;
          const auto K = a.k.block(base, g * hd, L, hd);
          const auto V = a.v.block(base, g * hd, L, hd);
          dKacc.setZero(L, hd);
          dVacc.setZero(L, hd);
          for (int h = g * group; h < (g + 1) * group; ++h) {
            const auto Q = a.q.block(base, h * hd, L, hd);
            const auto O = a.attn.block(base, h * hd, L, hd);
            const auto dO = d_attn.block(base, h * hd, L, hd);
            S.resize(L, L);
            S.noalias() = (Q * K.transpose()) * scale;
            for (int i = 0; i < L; ++i) {  // P = exp(S − lse), causal (within the window)
              const float lse = a.lse(base + i, h);
              const int first = detail::first_visible_key(i, window);
              for (int j = 0; j < first; ++j) S(i, j) = 0.0f;
              for (int j = first; j <= i; ++j) S(i, j) = std::exp(S(i, j) - lse);
              for (int j = i + 1; j < L; ++j) S(i, j) = 0.0f;
            }
            dP.resize(L, L);
            dP.noalias() = dO * V.transpose();  // (L, L)
            Drow = dO.cwiseProduct(O).rowwise().sum();
            for (int i = 0; i < L; ++i)  // dS = P ∘ (dP − D); P is 0 outside the window
              for (int j = 0; j <= i; ++j) dP(i, j) = S(i, j) * (dP(i, j) - Drow(i));
            for (int i = 0; i < L; ++i)
              for (int j = i + 1; j < L; ++j) dP(i, j) = 0.0f;
            dq.block(base, h * hd, L, hd).noalias() = (dP * K) * scale;
            dKacc.noalias() += (dP.transpose() * Q) * scale;
            dVacc.noalias() += S.transpose() * dO;
          }
          dk.block(base, g * hd, L, hd) = dKacc;
          dv.block(base, g * hd, L, hd) = dVacc;
        }
    }
    detail::rope_apply(dq, nh, hd, acts.rope_cos, acts.rope_sin, pos_of, true);
    detail::rope_apply(dk, nkv, hd, acts.rope_cos, acts.rope_sin, pos_of, true);
    if (gl) {  // frozen biases: their gradient (Σ over rows of ∂/∂Y; padding rows are zero) for checks only
      if (Vector* b = gl->bias(Module::q)) *b += dq.colwise().sum().transpose();
      if (Vector* b = gl->bias(Module::k)) *b += dk.colwise().sum().transpose();
      if (Vector* b = gl->bias(Module::v)) *b += dv.colwise().sum().transpose();
    }
    detail::linear_backward(hooks, {l, Module::v}, lw.wv, a.xn1, dv, d_xn2);  // d_xn2 reused as (N, dim) scratch
    detail::linear_backward(hooks, {l, Module::k}, lw.wk, a.xn1, dk, d_tmp);
    d_xn2 += d_tmp;
    detail::linear_backward(hooks, {l, Module::q}, lw.wq, a.xn1, dq, d_tmp);
    d_xn2 += d_tmp;
    detail::rmsnorm_backward(a.x, a.rstd1, lw.attn_norm, d_xn2, dx, gl ? &gl->attn_norm : nullptr);
  }
  if (grads) {
    for (Eigen::Index r = 0; r < N; ++r) {
      if (r % T >= acts.lengths[r / T]) continue;  // padding rows carry no gradient
      grads->embed.row(acts.tokens[r]) += dx.row(r);
    }
  }
}

/// Logits `(rows.size(), vocab)` for chosen flattened rows (b·T + t) of the last forward().
inline Matrix logits_at(const ModelWeights& w, const Activations& acts, const std::vector<std::int64_t>& rows) {
  Matrix x(static_cast<Eigen::Index>(rows.size()), w.config.dim);
  for (std::size_t i = 0; i < rows.size(); ++i) x.row(static_cast<Eigen::Index>(i)) = acts.xn_final.row(rows[i]);
  Matrix out = x * w.classifier().transpose();
  return out;
}

/// Mean held-out loss over batches (forward only, plain or adapter linears through `hooks`).
template <class BatchRange>
LossResult evaluate_loss(const ModelWeights& w, const BatchRange& batches, CpuHooks& hooks) {
  Activations acts;
  LossResult total;
  for (const Batch& b : batches) {
    const LossResult r = forward(w, b, hooks, acts);
    total.loss_sum += r.loss_sum;
    total.n_tokens += r.n_tokens;
  }
  return total;
}

/// Per-layer key/value cache of one sequence for incremental decoding.
struct KVCache {
  std::vector<Matrix> k;  ///< n_layers × (capacity, n_kv·hd), after RoPE
  std::vector<Matrix> v;  ///< n_layers × (capacity, n_kv·hd)
  int length = 0;         ///< tokens cached

  /// Empty cache able to hold `capacity` positions.
  KVCache(const ModelConfig& c, int capacity) : k(c.n_layers), v(c.n_layers) {
    for (int l = 0; l < c.n_layers; ++l) {
      k[l].resize(capacity, c.kv_dim());
      v[l].resize(capacity, c.kv_dim());
    }
  }
  /// Maximum number of positions.
  [[nodiscard]] int capacity() const { return k.empty() ? 0 : static_cast<int>(k[0].rows()); }
};

/// Appends `tokens` to the sequence in `cache` and returns their logits (tokens.size(), vocab).
inline Matrix forward_incremental(const ModelWeights& w, const std::vector<std::int32_t>& tokens, KVCache& cache,
                                  CpuHooks& hooks) {
  const ModelConfig& c = w.config;
  const int n = static_cast<int>(tokens.size()), p0 = cache.length;
  if (n == 0) return Matrix(0, c.vocab_size);
  if (p0 + n > cache.capacity() || p0 + n > c.max_seq_len)
    throw LlamaError(cat("generation: expected at most ", std::min(cache.capacity(), c.max_seq_len), " positions, found ",
                         p0 + n));
  const int D = c.dim, hd = c.head_dim, nh = c.n_heads, group = nh / c.n_kv_heads;
  Matrix cos_t, sin_t;
  detail::rope_tables(c, p0 + n, cos_t, sin_t);
  auto pos_of = [p0](Eigen::Index r) { return p0 + static_cast<int>(r); };
  Matrix x(n, D), xn, q(n, c.q_dim()), kn(n, c.kv_dim()), vn(n, c.kv_dim()), attn(n, c.q_dim()), tmp(n, D);
  Matrix gate(n, c.hidden_dim), up(n, c.hidden_dim), S;
  Vector rstd;
  for (int i = 0; i < n; ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size)
      throw LlamaError(cat("generation: expected token ids in [0, ", c.vocab_size, "), found ", tokens[i]));
    x.row(i) = w.embed.row(tokens[i]);
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  for (int l = 0; l < c.n_layers; ++l) {
    const LayerWeights& lw = w.layers[l];
    detail::rmsnorm_forward(x, lw.attn_norm, c.norm_eps, xn, rstd);
    detail::linear_forward(hooks, {l, Module::q}, lw.wq, xn, q);
    detail::linear_forward(hooks, {l, Module::k}, lw.wk, xn, kn);
    detail::linear_forward(hooks, {l, Module::v}, lw.wv, xn, vn);
    detail::add_bias(lw.bias(Module::q), q);
    detail::add_bias(lw.bias(Module::k), kn);
    detail::add_bias(lw.bias(Module::v), vn);
    detail::rope_apply(q, nh, hd, cos_t, sin_t, pos_of, false);
    detail::rope_apply(kn, c.n_kv_heads, hd, cos_t, sin_t, pos_of, false);
    cache.k[l].middleRows(p0, n) = kn;
    cache.v[l].middleRows(p0, n) = vn;
    for (int h = 0; h < nh; ++h) {
      const int g = h / group;
      detail::attention_head_forward(q.middleCols(h * hd, hd), cache.k[l].block(0, g * hd, p0 + n, hd),
                                     cache.v[l].block(0, g * hd, p0 + n, hd), p0, scale, S,
                                     attn.middleCols(h * hd, hd), nullptr, c.attention_window(l));
    }
    detail::linear_forward(hooks, {l, Module::o}, lw.wo, attn, tmp);
    x += tmp;
    detail::rmsnorm_forward(x, lw.ffn_norm, c.norm_eps, xn, rstd);
    detail::linear_forward(hooks, {l, Module::gate}, lw.w_gate, xn, gate);
    detail::linear_forward(hooks, {l, Module::up}, lw.w_up, xn, up);
    for (Eigen::Index r = 0; r < n; ++r)
      for (Eigen::Index j = 0; j < c.hidden_dim; ++j) gate(r, j) = detail::silu(gate(r, j)) * up(r, j);
    detail::linear_forward(hooks, {l, Module::down}, lw.w_down, gate, tmp);
    x += tmp;
  }
  cache.length = p0 + n;
  detail::rmsnorm_forward(x, w.final_norm, c.norm_eps, xn, rstd);
  Matrix logits = xn * w.classifier().transpose();  // (n, vocab)
  return logits;
}

/// Options of generate_greedy.
struct GenerateOptions {
  int max_new_tokens = 256;                ///< stop after this many new tokens
  std::optional<std::int32_t> stop_token;  ///< stop (not emitted) when produced, e.g. EOS; also BOS
                                           ///< in llama2.c's convention — pass what you need
};

/// Greedy (temperature 0) decoding from `prompt` (which should start with BOS). Returns the new
/// tokens only. Ties break to the lowest id (like torch.argmax).
inline std::vector<std::int32_t> generate_greedy(const ModelWeights& w, const std::vector<std::int32_t>& prompt,
                                                 const GenerateOptions& opt, CpuHooks& hooks) {
  if (prompt.empty()) throw LlamaError("generate_greedy: expected a non-empty prompt (at least BOS), found none");
  const int capacity = std::min<int>(w.config.max_seq_len, static_cast<int>(prompt.size()) + opt.max_new_tokens);
  KVCache cache(w.config, capacity);
  std::vector<std::int32_t> out;
  Matrix logits = forward_incremental(w, prompt, cache, hooks);
  while (static_cast<int>(out.size()) < opt.max_new_tokens) {
    Eigen::Index best = 0;
    logits.row(logits.rows() - 1).maxCoeff(&best);
    const auto tok = static_cast<std::int32_t>(best);
    if (opt.stop_token && tok == *opt.stop_token) break;
    out.push_back(tok);
    if (static_cast<int>(out.size()) >= opt.max_new_tokens || cache.length >= capacity) break;
    logits = forward_incremental(w, {tok}, cache, hooks);
  }
  return out;
}

/// generate_greedy with plain linears.
inline std::vector<std::int32_t> generate_greedy(const ModelWeights& w, const std::vector<std::int32_t>& prompt,
                                                 const GenerateOptions& opt = {}) {
  CpuHooks plain;
  return generate_greedy(w, prompt, opt, plain);
}

}  // namespace hdpissa::llama
