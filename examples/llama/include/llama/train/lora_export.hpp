#pragma once
/// \file lora_export.hpp
/// hdpissa-train's PEFT adapter outputs (format: llama/peft_export.hpp), written after the merged
/// model into TrainOptions::adapter_dir() (--adapter-output, default <output>/adapter):
///  - lora: the trained adapter (lora_A = A, lora_B = B, lora_alpha = s·r): on the original base.
///  - pissa, following PEFT's conventions:
///      DIR        the update as a plain rank-2r LoRA on the ORIGINAL base, as PEFT's
///                 save_pretrained(…, path_initial_model_for_weight_conversion=…) writes it:
///                 lora_A = [A; A0], lora_B = [B, −B0], r' = 2r, lora_alpha' = 2·lora_alpha, so
///                 W + s(B A − B0 A0) = W_res + s·B A;
///      DIR/pissa  the PiSSA adapter itself (A, B; init_lora_weights true, as PEFT's PiSSA example
///                 saves it, so that loading does not run the SVD again) with the residual base it
///                 belongs to in DIR/pissa/residual_model (W_res = W − s·B0 A0 in the target linears).
///  - hdpissa, lora-dwu, pissa-dwu, full with --export-lora-rank R / --export-lora-energy E: the
///    learned update ΔW = W_final − W_init of every target as a truncated LoRA (truncated_delta()),
///    each layer's kept share of ‖ΔW‖²_F in the log and in DIR/lora_export.json.
/// W_init is the base checkpoint's target weights: the trainer keeps a host copy of them (the CPU
/// path trains the host model in place; the GPU path's host model is the base itself).

#include <cmath>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "hdpissa/hdpissa.hpp"
#include "llama/checkpoint.hpp"
#include "llama/peft_export.hpp"
#include "llama/train/options.hpp"
#include "llama/train/state.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama {

/// A rank-R LoRA of an update ΔW: B A = U_R diag(S_R) V_Rᵀ, the best rank-R approximation.
/// Convention: B = U_R √S_R (out, R), A = √S_R V_Rᵀ (R, in), to be used at scaling 1
/// (lora_alpha = r): the exported adapter's s·B A is exactly the truncated SVD.
struct TruncatedDelta {
  Matrix A;                 // (R, in)
  Matrix B;                 // (out, R)
  int rank = 0;             ///< R
  double delta_sq = 0;      ///< ‖ΔW‖²_F
  double kept_share = 1;    ///< Σ_{i<R} σ_i² / ‖ΔW‖²_F (1 for ΔW = 0)
  std::vector<double> singular_values;  ///< the σ_i computed (all of them, or the top ones of a randomized SVD)
};

/// Truncates ΔW (out, in) to rank `rank`, or (energy > 0) to the smallest rank whose σ_i² keep a
/// share `energy` of ‖ΔW‖²_F. SVD in double: exact (Eigen BDCSVD), or randomized
/// (RandomizedSvd) for a fixed rank below min(out, in)/2 of a layer with min(out, in) > 1024.
inline TruncatedDelta truncated_delta(const Matrix& dW, int rank, double energy) {
  using Backend = hdpissa::EigenBackend<double>;
  Backend b;
  const index_t m = dW.rows(), n = dW.cols(), k = std::min(m, n);
  HDPISSA_REQUIRE(rank > 0 || energy > 0, "truncated_delta: expected a rank > 0 or an energy share in (0, 1]");
  auto D = b.make_matrix(m, n);
  for (index_t i = 0; i < m * n; ++i) D.data()[i] = double(dW.data()[i]);
  TruncatedDelta t;
  t.delta_sq = b.sum_squares(D);
  const index_t want = energy > 0 ? k : std::min<index_t>(rank, k);
  const bool randomized = energy == 0 && k > 1024 && want < k / 2;
  auto svd = randomized ? hdpissa::RandomizedSvd{}.top_k(b, D, want) : hdpissa::ExactSvd{}.top_k(b, D, k);
  const index_t got = svd.S.cols();
  t.singular_values.assign(svd.S.data(), svd.S.data() + got);
  index_t R = want;
  if (energy > 0) {  // the smallest R with Σ_{i<R} σ_i² ≥ energy·‖ΔW‖²
    double acc = 0;
    R = 1;
    for (index_t i = 0; i < got; ++i) {
      acc += t.singular_values[i] * t.singular_values[i];
      R = i + 1;
      if (acc >= energy * t.delta_sq) break;
    }
  }
  double kept = 0;
  for (index_t i = 0; i < R; ++i) kept += t.singular_values[i] * t.singular_values[i];
  t.kept_share = t.delta_sq > 0 ? std::min(1.0, kept / t.delta_sq) : 1.0;
  t.rank = int(R);
  t.A.resize(R, n);
  t.B.resize(m, R);
  for (index_t i = 0; i < R; ++i) {
    const double root = std::sqrt(t.singular_values[i]);
    for (index_t j = 0; j < n; ++j) t.A(i, j) = float(root * svd.Vt.data()[i * n + j]);
    for (index_t j = 0; j < m; ++j) t.B(j, i) = float(svd.U.data()[j * svd.U.cols() + i] * root);
  }
  return t;
}

/// What the adapter outputs are made from (all borrowed).
struct AdapterExportInputs {
  const TrainOptions* o = nullptr;
  std::vector<LinearId> targets;
  const TrainState* state = nullptr;   ///< the live state: weight.<name> (W, W_res), adapter.<name>.A / .B
  std::function<const Matrix&(LinearId)> initial;  ///< W_init of a target (the base checkpoint's)
  const TrainState* pissa_init = nullptr;  ///< PiSSA's A0, B0 (adapter.*) from the start; null: recomputed
  const ModelWeights* frame = nullptr; ///< the base model's other parameters (PiSSA's residual model)
  SaveOptions save;                    ///< as the merged model (PiSSA's residual model)
  std::ostream* log = nullptr;
};

namespace detail {
inline Matrix state_matrix(const TrainState& s, const std::string& name, std::int64_t rows, std::int64_t cols) {
  const StateTensor& t = s.at(name, rows, cols, "adapter export");
  return Eigen::Map<const Matrix>(t.data.data(), rows, cols);
}
/// PiSSA's initial factors of W (A0 (r, in), B0 (out, r)), as AdapterMethod makes them.
inline std::pair<Matrix, Matrix> pissa_factors(const TrainOptions& o, const Matrix& W) {
  hdpissa::EigenBackend<float> b;
  const ConstMatrixView<float> Wv{W.data(), W.rows(), W.cols()};
  auto set = o.svd == SvdKind::Randomized ? hdpissa::PissaInit<hdpissa::RandomizedSvd>{1, o.rank}(b, Wv)
                                          : hdpissa::PissaInit<hdpissa::ExactSvd>{1, o.rank}(b, Wv);
  const double s = o.adapter_scaling();
  if (s != 1.0) {
    b.scale(set.A.view(), float(1.0 / std::sqrt(s)));
    b.scale(set.B.view(), float(1.0 / std::sqrt(s)));
  }
  return {Eigen::Map<const Matrix>(set.A.data(), set.A.rows(), set.A.cols()),
          Eigen::Map<const Matrix>(set.B.data(), set.B.rows(), set.B.cols())};
}
}  // namespace detail

/// Writes the adapter outputs of the run (see the file comment) into o.adapter_dir(). Returns the
/// report of a truncated export ({} otherwise): per layer its rank and kept share of ‖ΔW‖²_F.
inline nlohmann::json write_adapter_outputs(const AdapterExportInputs& in) {
  namespace fs = std::filesystem;
  const TrainOptions& o = *in.o;
  const fs::path dir = o.adapter_dir();
  std::ostream& log = in.log ? *in.log : std::cout;
  PeftLoraConfig cfg;
  cfg.target_modules = o.target_modules();
  cfg.base_model_name_or_path = o.model;
  auto shape = [&](LinearId id) { return std::pair<std::int64_t, std::int64_t>{in.initial(id).rows(), in.initial(id).cols()}; };
  const double s = o.adapter_scaling();

  if (o.uses_adapter()) {
    const int r = o.rank;
    std::vector<PeftLoraLayer> trained, converted;
    for (const LinearId& id : in.targets) {
      const auto [out, inn] = shape(id);
      const std::string n = "adapter." + id.hf_name();
      PeftLoraLayer l{id, detail::state_matrix(*in.state, n + ".A", r, inn), detail::state_matrix(*in.state, n + ".B", out, r)};
      if (o.method == Method::Pissa) {
        auto [A0, B0] = in.pissa_init ? std::pair<Matrix, Matrix>{detail::state_matrix(*in.pissa_init, n + ".A", r, inn),
                                                                  detail::state_matrix(*in.pissa_init, n + ".B", out, r)}
                                      : detail::pissa_factors(o, in.initial(id));
        PeftLoraLayer c{id, Matrix(2 * r, inn), Matrix(out, 2 * r)};
        c.A << l.A, A0;
        c.B << l.B, -B0;
        converted.push_back(std::move(c));
      }
      trained.push_back(std::move(l));
    }
    cfg.r = r;
    cfg.lora_alpha = s * r;
    if (o.method == Method::Lora) {
      write_peft_adapter(dir, cfg, trained);
      log << "PEFT LoRA adapter (r " << r << ", lora_alpha " << cfg.lora_alpha << ") written to " << dir.string() << "\n";
      return {};
    }
    PeftLoraConfig conv = cfg;  // PEFT's conversion: r and lora_alpha doubled, the scaling kept
    conv.r = 2 * r;
    conv.lora_alpha = 2 * cfg.lora_alpha;
    write_peft_adapter(dir, conv, converted, {{"format", "pt"}, {"hdpissa_converted_from", "pissa"}});
    write_peft_adapter(dir / "pissa", cfg, trained, {{"format", "pt"}, {"hdpissa_init", "pissa"}});
    ModelWeights residual = *in.frame;
    for (const LinearId& id : in.targets) {
      const auto [out, inn] = shape(id);
      residual.linear(id) = detail::state_matrix(*in.state, "weight." + id.hf_name(), out, inn);
    }
    save_hf_checkpoint(dir / "pissa" / "residual_model", residual, in.save);
    log << "PEFT adapters written to " << dir.string() << ": the update as a rank-" << 2 * r
        << " LoRA on the original base; pissa/: the PiSSA adapter (r " << r << ") on pissa/residual_model\n";
    return {};
  }

  // ΔW → truncated LoRA (DWU methods, full).
  nlohmann::ordered_json report;
  report["method"] = name_of(o.method);
  report["rank"] = o.export_lora_rank > 0 ? nlohmann::ordered_json(o.export_lora_rank) : nlohmann::ordered_json(nullptr);
  report["energy"] = o.export_lora_energy > 0 ? nlohmann::ordered_json(o.export_lora_energy) : nlohmann::ordered_json(nullptr);
  report["convention"] = "B = U_R sqrt(S_R), A = sqrt(S_R) V_R^T, lora_alpha = r (scaling 1)";
  report["layers"] = nlohmann::ordered_json::array();
  std::vector<PeftLoraLayer> layers;
  std::vector<int> ranks;
  double total_sq = 0, kept_sq = 0;
  for (const LinearId& id : in.targets) {
    const auto [out, inn] = shape(id);
    const Matrix dW = detail::state_matrix(*in.state, "weight." + id.hf_name(), out, inn) - in.initial(id);
    TruncatedDelta t = truncated_delta(dW, o.export_lora_rank, o.export_lora_energy);
    total_sq += t.delta_sq;
    kept_sq += t.kept_share * t.delta_sq;
    report["layers"].push_back({{"name", peft_module_path(id)}, {"rank", t.rank}, {"kept_share", t.kept_share},
                                {"delta_frobenius_sq", t.delta_sq}});
    log << "lora export: " << peft_module_path(id) << " rank " << t.rank << " keeps " << 100.0 * t.kept_share
        << "% of |dW|^2\n";
    ranks.push_back(t.rank);
    layers.push_back({id, std::move(t.A), std::move(t.B)});
  }
  cfg.r = ranks.empty() ? 1 : *std::max_element(ranks.begin(), ranks.end());
  cfg.lora_alpha = cfg.r;
  for (std::size_t i = 0; i < layers.size(); ++i)
    if (ranks[i] != cfg.r) {
      cfg.rank_pattern[peft_pattern_key(layers[i].id)] = ranks[i];
      cfg.alpha_pattern[peft_pattern_key(layers[i].id)] = ranks[i];
    }
  report["kept_share_total"] = total_sq > 0 ? kept_sq / total_sq : 1.0;
  write_peft_adapter(dir, cfg, layers, {{"format", "pt"}, {"hdpissa_export", "truncated delta W"}});
  write_file_atomic(dir / "lora_export.json", report.dump(2) + "\n");
  log << "truncated LoRA of dW (r " << cfg.r << (cfg.rank_pattern.empty() ? "" : ", per-layer ranks in rank_pattern")
      << ") keeps " << 100.0 * double(report["kept_share_total"]) << "% of |dW|^2; written to " << dir.string() << "\n";
  return nlohmann::json::parse(report.dump());
}

}  // namespace hdpissa::llama
