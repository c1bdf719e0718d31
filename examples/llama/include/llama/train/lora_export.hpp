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
///    learned update ΔW = W_final − W_init of every target as a truncated LoRA (truncated_delta.hpp),
///    each layer's kept share of ‖ΔW‖²_F in the log and in DIR/lora_export.json. Where W lives: the
///    CPU engine truncates on the host (truncated_delta over the live state); the CUDA engine on
///    the GPU (AdapterExportInputs::truncate: ΔW formed, decomposed and truncated on the device in
///    double, only the R factors downloaded; no host copy of the trained W is made).
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
#include "llama/train/truncated_delta.hpp"
#include "llama/weights.hpp"

namespace hdpissa::llama {

/// What the adapter outputs are made from (all borrowed).
struct AdapterExportInputs {
  const TrainOptions* o = nullptr;
  std::vector<LinearId> targets;
  const TrainState* state = nullptr;   ///< the live state: weight.<name> (W, W_res), adapter.<name>.A / .B
                                       ///< (may be null for a truncated export with `truncate`)
  /// W_init of a target (the base checkpoint's); the reference may be valid only until the next call
  std::function<const Matrix&(LinearId)> initial;
  const TrainState* pissa_init = nullptr;  ///< PiSSA's A0, B0 (adapter.*) from the start; null: recomputed
  const ModelWeights* frame = nullptr; ///< the base model's other parameters (PiSSA's residual model)
  SaveOptions save;                    ///< as the merged model (PiSSA's residual model)
  std::ostream* log = nullptr;
  /// Truncated export where W lives (the GPU engine): target i (position in `targets`), its W_init,
  /// rank, energy → its TruncatedDelta. Empty: truncated_delta on the host over `state`.
  std::function<TruncatedDelta(std::size_t, const Matrix&, int, double)> truncate;
  std::string truncation_device = "cuda";  ///< where `truncate` runs (lora_export.json "computed_on")
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
  auto shape = [&](LinearId id) {  // from the config when there is a frame (no read of a stored W_init)
    if (in.frame) return linear_shape(in.frame->config, id.module);
    const Matrix& w0 = in.initial(id);
    return std::pair<std::int64_t, std::int64_t>{w0.rows(), w0.cols()};
  };
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
  report["computed_on"] = in.truncate ? in.truncation_device + " (double)" : std::string("host (double)");
  report["layers"] = nlohmann::ordered_json::array();
  std::vector<PeftLoraLayer> layers;
  std::vector<int> ranks;
  double total_sq = 0, kept_sq = 0;
  for (std::size_t i = 0; i < in.targets.size(); ++i) {
    const LinearId& id = in.targets[i];
    const auto [out, inn] = shape(id);
    HDPISSA_REQUIRE(in.truncate || in.state, "adapter export: expected the live state or a truncation where W lives");
    TruncatedDelta t =
        in.truncate ? in.truncate(i, in.initial(id), o.export_lora_rank, o.export_lora_energy)
                    : truncated_delta(detail::state_matrix(*in.state, "weight." + id.hf_name(), out, inn),
                                      in.initial(id), o.export_lora_rank, o.export_lora_energy);
    total_sq += t.delta_sq;
    kept_sq += t.kept_share * t.delta_sq;
    report["layers"].push_back(
        {{"name", peft_module_path(id)}, {"rank", t.rank}, {"kept_share", t.kept_share},
         {"delta_frobenius_sq", t.delta_sq},
         {"svd", truncation_uses_randomized_svd(out, inn, o.export_lora_rank, o.export_lora_energy) ? "randomized" : "exact"}});
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
