#pragma once
/// \file rank_analysis.hpp
/// The core of `hdpissa-rank-analysis`: for every target linear layer of two checkpoints (initial
/// and final, HF safetensors), the singular spectrum of ΔW = W_final − W_init, computed in double,
/// and the effective-rank metrics of spec §8 (hdpissa::rank_metrics). Header-only so that the CLI
/// (hdpissa_rank_analysis.cpp) and the tests (tests/analysis) run exactly the same code.
///
/// Precision. Both checkpoints are read as float (F32 / BF16 / F16 storage) and widened to double
/// before the subtraction, so ΔW is the exact difference of the *stored* values and the SVD adds
/// only double rounding (~1e-16 σ₁). What remains is the storage rounding of W_final: each stored
/// entry carries an error up to u·|w| (u = 2⁻²⁴ for F32, 2⁻⁸ for BF16, 2⁻¹¹ for F16). Treated as iid
/// noise of standard deviation u·rms(W)/√3, its spectral norm is about u·rms(W)·(√out + √in)/√3 —
/// `noise_floor` below. Singular values of ΔW under it are indistinguishable from rounding. The
/// numerical rank's default τ = 1e-3 keeps τσ₁ one to three orders above that floor for fp32
/// checkpoints of realistic fine-tunes (e.g. 4096×4096, rms(W) 0.02: floor ≈ 1e-7 vs σ₁(ΔW) of
/// 1e-3…1e-2); for BF16 checkpoints and small learning rates the floor can exceed σ₁ itself, which
/// the tool reports (`within_noise`) instead of printing a rank made of rounding.

#include <algorithm>
#include <atomic>
#include <exception>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include <hdpissa/hdpissa.hpp>

#include "llama/safetensors.hpp"

namespace hdpissa::rank_analysis {

/// What to analyse and where to write it.
struct Options {
  std::filesystem::path init;            ///< initial checkpoint: HF directory or a .safetensors file
  std::filesystem::path final_;          ///< final checkpoint, same forms
  std::vector<std::string> layers;       ///< explicit tensor names; empty: every target projection
  std::vector<std::string> modules = {"q", "k", "v", "o", "gate", "up", "down"};  ///< default selection
  double tau = 1e-3;                     ///< relative threshold of the numerical rank
  double energy = 0.9;                   ///< energy fraction of the energy rank
  long subspace_rank = 0;                ///< N > 0: also measure ΔW outside {X V_Nᵀ + U_N Y} of W_init
  std::filesystem::path csv;             ///< per-layer metrics (empty: not written)
  std::filesystem::path json;            ///< spectra + metrics (empty: not written)
  std::string label;                     ///< method label stored in the outputs (e.g. "hdpissa-K8")
  int threads = 1;                       ///< layers analysed concurrently (results keep the layer order)
};

/// Metrics of one layer's ΔW.
struct LayerResult {
  std::string name;              ///< tensor name, e.g. model.layers.3.self_attn.q_proj.weight
  int layer = -1;                ///< decoder layer index parsed from the name (-1: none)
  std::string module;            ///< q, k, v, o, gate, up, down, or "" for other tensors
  long rows = 0, cols = 0;       ///< (out, in)
  std::string dtype;             ///< storage dtype of the final checkpoint's tensor
  double init_fro = 0;           ///< ‖W_init‖_F
  double delta_fro = 0;          ///< ‖ΔW‖_F
  double noise_floor = 0;        ///< estimated spectral norm of the storage rounding of W_final
  long rank_above_noise = 0;     ///< #{σ_i > noise_floor}
  bool within_noise = false;     ///< τσ₁ ≤ noise_floor: the numerical rank counts rounding
  std::vector<double> sigma;     ///< singular values of ΔW, descending, min(out, in) of them
  RankMetrics metrics;           ///< spec §8 metrics at Options::tau / energy
  /// ‖ΔW − P ΔW‖_F / ‖ΔW‖_F with P the projection onto {X V_Nᵀ + U_N Y}, (U_N, V_N) the top-N
  /// singular vectors of W_init: the share of the update outside HD-PiSSA's first-order subspace
  /// (spec §4; N = Kr). −1 when not requested (Options::subspace_rank = 0).
  double outside_subspace = -1;
};

/// Unit roundoff of a storage dtype.
inline double unit_roundoff(llama::DType d) {
  switch (d) {
    case llama::DType::F32: return std::ldexp(1.0, -24);
    case llama::DType::BF16: return std::ldexp(1.0, -8);
    case llama::DType::F16: return std::ldexp(1.0, -11);
    default: return 0.0;  // integers: exact
  }
}

/// The tensors of one checkpoint: an HF directory (model.safetensors or a sharded index) or a
/// single .safetensors file. Every tensor name is known (for the default layer selection).
class Checkpoint {
 public:
  explicit Checkpoint(const std::filesystem::path& path) : path_(path) {
    namespace fs = std::filesystem;
    if (!fs::exists(path)) throw InvalidArgument(hdpissa::cat("checkpoint not found: ", path.string()));
    if (fs::is_directory(path)) {
      const auto index = path / "model.safetensors.index.json", single = path / "model.safetensors";
      if (fs::exists(index)) {
        std::ifstream in(index);
        nlohmann::json j;
        try {
          j = nlohmann::json::parse(in);
        } catch (const nlohmann::json::exception& e) {
          throw InvalidArgument(hdpissa::cat(index.string(), ": expected JSON, parse failed (", e.what(), ")"));
        }
        if (!j.contains("weight_map") || !j["weight_map"].is_object())
          throw InvalidArgument(hdpissa::cat(index.string(), ": expected an object 'weight_map'"));
        std::map<std::string, std::size_t> files;
        for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
          const std::string f = it.value().get<std::string>();
          if (files.emplace(f, files_.size()).second) add(path / f);
        }
      } else if (fs::exists(single)) {
        add(single);
      } else {
        throw InvalidArgument(hdpissa::cat(path.string(),
                                           ": expected an HF checkpoint directory with model.safetensors or "
                                           "model.safetensors.index.json, found neither"));
      }
    } else {
      add(path);  // a single file: SafetensorsFile validates the format and reports what is wrong
    }
  }

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  [[nodiscard]] bool contains(const std::string& name) const { return where_.count(name) != 0; }
  /// Names of all tensors, sorted.
  [[nodiscard]] std::vector<std::string> names() const {
    std::vector<std::string> n;
    for (const auto& [k, v] : where_) n.push_back(k);
    return n;
  }
  /// Header entry of `name`; throws naming the tensor and the checkpoint if absent.
  [[nodiscard]] const llama::TensorInfo& info(const std::string& name) const { return file(name).info(name); }
  /// Tensor `name` widened to double.
  [[nodiscard]] std::vector<double> read(const std::string& name) const {
    const auto f = file(name).read(name);
    return {f.begin(), f.end()};
  }

 private:
  void add(const std::filesystem::path& f) {
    files_.push_back(std::make_shared<llama::SafetensorsFile>(f));
    for (const auto& [name, info] : files_.back()->tensors()) where_.emplace(name, files_.size() - 1);
  }
  [[nodiscard]] const llama::SafetensorsFile& file(const std::string& name) const {
    auto it = where_.find(name);
    if (it == where_.end())
      throw InvalidArgument(hdpissa::cat(path_.string(), ": expected tensor '", name, "', not found in the checkpoint"));
    return *files_[it->second];
  }

  std::filesystem::path path_;
  std::vector<std::shared_ptr<llama::SafetensorsFile>> files_;
  std::map<std::string, std::size_t> where_;
};

/// The module ("q", ..., "down") and decoder-layer index of an HF tensor name; module "" if the
/// name is not one of the seven target projections.
inline std::pair<std::string, int> classify(const std::string& name) {
  static const std::regex proj(R"((?:^|\.)(q|k|v|o|gate|up|down)_proj\.weight$)");
  static const std::regex layer(R"((?:^|\.)layers\.(\d+)\.)");
  std::smatch m;
  std::string module;
  if (std::regex_search(name, m, proj)) module = m[1];
  int idx = -1;
  if (std::regex_search(name, m, layer)) idx = std::stoi(m[1]);
  return {module, idx};
}

/// Order of the seven modules in tables (q, k, v, o, gate, up, down).
inline int module_order(const std::string& m) {
  static const char* order[] = {"q", "k", "v", "o", "gate", "up", "down"};
  for (int i = 0; i < 7; ++i)
    if (m == order[i]) return i;
  return 7;
}

/// The tensors to analyse: the explicit list, else every 2-D target projection of `init` whose
/// module is in `modules`, ordered by (layer, module).
inline std::vector<std::string> select_layers(const Checkpoint& init, const Options& o) {
  if (!o.layers.empty()) return o.layers;
  std::vector<std::string> out;
  for (const auto& n : init.names()) {
    const auto [mod, idx] = classify(n);
    if (mod.empty() || init.info(n).shape.size() != 2) continue;
    if (std::find(o.modules.begin(), o.modules.end(), mod) == o.modules.end()) continue;
    out.push_back(n);
  }
  if (out.empty())
    throw InvalidArgument(hdpissa::cat(init.path().string(),
                                       ": expected target projections (*.{q,k,v,o,gate,up,down}_proj.weight), found none; "
                                       "pass tensor names with --layers"));
  std::stable_sort(out.begin(), out.end(), [](const std::string& a, const std::string& b) {
    const auto ca = classify(a), cb = classify(b);
    return std::tuple(ca.second, module_order(ca.first), a) < std::tuple(cb.second, module_order(cb.first), b);
  });
  return out;
}

/// ΔW's spectrum and metrics for one tensor present in both checkpoints.
inline LayerResult analyse_layer(const Checkpoint& init, const Checkpoint& fin, const std::string& name,
                                 double tau, double energy, long subspace_rank = 0) {
  const auto& a = init.info(name);
  if (!fin.contains(name))
    throw InvalidArgument(hdpissa::cat(fin.path().string(), ": expected tensor '", name,
                                       "' (present in the initial checkpoint ", init.path().string(), "), not found"));
  const auto& b = fin.info(name);
  if (a.shape != b.shape)
    throw InvalidArgument(hdpissa::cat("tensor '", name, "': shapes differ: initial ", llama::shape_string(a.shape),
                                       " in ", init.path().string(), ", final ", llama::shape_string(b.shape), " in ",
                                       fin.path().string()));
  if (a.shape.size() != 2)
    throw InvalidArgument(hdpissa::cat("tensor '", name, "': expected a 2-D weight (out, in), found shape ",
                                       llama::shape_string(a.shape)));
  LayerResult r;
  r.name = name;
  std::tie(r.module, r.layer) = classify(name);
  r.rows = long(a.shape[0]);
  r.cols = long(a.shape[1]);
  r.dtype = llama::dtype_name(b.dtype);
  const std::vector<double> w0 = init.read(name), w1 = fin.read(name);
  EigenBackend<double> be;
  auto dW = be.make_matrix(r.rows, r.cols);  // (out, in)
  double sq0 = 0, sq1 = 0, sqd = 0;
  for (std::size_t i = 0; i < w0.size(); ++i) {
    const double d = w1[i] - w0[i];  // exact: both are floats widened to double
    dW.data()[i] = d;
    sq0 += w0[i] * w0[i];
    sq1 += w1[i] * w1[i];
    sqd += d * d;
  }
  HDPISSA_REQUIRE(std::isfinite(sqd), "tensor '", name, "': expected finite weights, found NaN/Inf in ΔW");
  r.init_fro = std::sqrt(sq0);
  r.delta_fro = std::sqrt(sqd);
  const double rms1 = std::sqrt(sq1 / double(w1.size()));
  r.noise_floor = std::max(unit_roundoff(a.dtype), unit_roundoff(b.dtype)) * rms1 *
                  (std::sqrt(double(r.rows)) + std::sqrt(double(r.cols))) / std::sqrt(3.0);
  r.sigma = singular_values(be, dW.cview());
  r.metrics = rank_metrics(r.sigma, tau, energy);
  for (double s : r.sigma) r.rank_above_noise += s > r.noise_floor;
  r.within_noise = r.metrics.sigma_max > 0 && tau * r.metrics.sigma_max <= r.noise_floor;
  if (subspace_rank > 0) {
    const long k = std::min(r.rows, r.cols);
    HDPISSA_REQUIRE(subspace_rank <= k, "--subspace-rank ", subspace_rank, " exceeds min(out, in) = ", k,
                    " of tensor '", name, "' ", shape_str(r.rows, r.cols));
    auto W0 = be.make_matrix(r.rows, r.cols), U = be.make_matrix(r.rows, k), S = be.make_matrix(1, k),
         Vt = be.make_matrix(k, r.cols);
    std::copy(w0.begin(), w0.end(), W0.data());
    be.thin_svd(W0.cview(), U.view(), S.view(), Vt.view());
    // ΔW − P ΔW = (I − U_N U_Nᵀ) ΔW (I − V_N V_Nᵀ): the part no first-order step can produce.
    const auto D = EigenBackend<double>::map(dW.cview());
    const auto Un = EigenBackend<double>::map(U.cview()).leftCols(subspace_rank);
    const auto Vn = EigenBackend<double>::map(Vt.cview()).topRows(subspace_rank);  // (N, in)
    Eigen::MatrixXd left = D - Un * (Un.transpose() * D);
    Eigen::MatrixXd outside = left - (left * Vn.transpose()) * Vn;
    r.outside_subspace = r.delta_fro > 0 ? outside.norm() / r.delta_fro : 0.0;
  }
  return r;
}

/// Analyses every selected layer (see select_layers).
inline std::vector<LayerResult> analyse(const Options& o) {
  HDPISSA_REQUIRE(o.tau > 0 && o.tau < 1, "--tau: expected a value in (0, 1), found ", o.tau);
  HDPISSA_REQUIRE(o.energy > 0 && o.energy <= 1, "--energy: expected a value in (0, 1], found ", o.energy);
  HDPISSA_REQUIRE(o.threads >= 1, "--threads: expected a positive count, found ", o.threads);
  const Checkpoint init(o.init), fin(o.final_);  // memory-mapped: concurrent reads are safe
  const auto names = select_layers(init, o);
  std::vector<LayerResult> out(names.size());
  std::vector<std::exception_ptr> errors(names.size());
  std::atomic<std::size_t> next{0};
  auto work = [&] {
    for (std::size_t i; (i = next.fetch_add(1)) < names.size();) {
      try {
        out[i] = analyse_layer(init, fin, names[i], o.tau, o.energy, o.subspace_rank);
      } catch (...) {
        errors[i] = std::current_exception();
      }
    }
  };
  const auto n_threads = std::min<std::size_t>(std::size_t(o.threads), names.size());
  std::vector<std::thread> pool;
  for (std::size_t t = 1; t < n_threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  for (const auto& e : errors)  // the first failing layer in layer order, as in a serial run
    if (e) std::rethrow_exception(e);
  return out;
}

/// Per-module means of the metrics (key "all": over every layer).
struct ModuleSummary {
  std::string module;
  int count = 0;
  double numerical_rank = 0, energy_rank = 0, stable_rank = 0, entropy_rank = 0, delta_fro = 0;
  double outside_subspace = 0;  ///< mean of LayerResult::outside_subspace (−1 if not measured)
  int within_noise = 0;
};

inline std::vector<ModuleSummary> summarise(const std::vector<LayerResult>& rs) {
  std::map<std::string, ModuleSummary> by;
  auto add = [](ModuleSummary& s, const LayerResult& r) {
    ++s.count;
    s.numerical_rank += double(r.metrics.numerical_rank);
    s.energy_rank += double(r.metrics.energy90_rank);
    s.stable_rank += r.metrics.stable_rank;
    s.entropy_rank += r.metrics.entropy_rank;
    s.delta_fro += r.delta_fro;
    s.outside_subspace += r.outside_subspace;
    s.within_noise += r.within_noise;
  };
  ModuleSummary all{"all"};
  for (const auto& r : rs) {
    auto& s = by[r.module.empty() ? std::string("other") : r.module];
    s.module = r.module.empty() ? "other" : r.module;
    add(s, r);
    add(all, r);
  }
  std::vector<ModuleSummary> out;
  for (auto& [k, s] : by) out.push_back(s);
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return module_order(a.module) < module_order(b.module); });
  out.push_back(all);
  for (auto& s : out) {
    const double n = std::max(1, s.count);
    s.numerical_rank /= n, s.energy_rank /= n, s.stable_rank /= n, s.entropy_rank /= n, s.delta_fro /= n,
        s.outside_subspace /= n;
  }
  return out;
}

/// CSV: one row per layer.
inline void write_csv(const std::filesystem::path& path, const std::vector<LayerResult>& rs, const Options& o) {
  std::ofstream f(path);
  if (!f) throw InvalidArgument(hdpissa::cat("cannot write CSV file ", path.string()));
  f << "label,name,layer,module,rows,cols,dtype,init_fro,delta_fro,sigma_max,noise_floor,tau,numerical_rank,"
       "rank_above_noise,within_noise,energy_rank,stable_rank,entropy_rank,subspace_rank,outside_subspace\n";
  char buf[512];
  for (const auto& r : rs) {
    std::snprintf(buf, sizeof buf, "%s,%s,%d,%s,%ld,%ld,%s,%.9g,%.9g,%.9g,%.6g,%.6g,%ld,%ld,%d,%ld,%.9g,%.9g,%ld,%.6g\n",
                  o.label.c_str(), r.name.c_str(), r.layer, r.module.c_str(), r.rows, r.cols, r.dtype.c_str(),
                  r.init_fro, r.delta_fro, r.metrics.sigma_max, r.noise_floor, o.tau, r.metrics.numerical_rank,
                  r.rank_above_noise, int(r.within_noise), r.metrics.energy90_rank, r.metrics.stable_rank,
                  r.metrics.entropy_rank, o.subspace_rank, r.outside_subspace);
    f << buf;
  }
  if (!f) throw InvalidArgument(hdpissa::cat("failed writing CSV file ", path.string()));
}

/// JSON: inputs, thresholds, per layer shape, metrics and the full spectrum.
inline nlohmann::json to_json(const std::vector<LayerResult>& rs, const Options& o) {
  nlohmann::json j;
  j["label"] = o.label;
  j["init"] = o.init.string();
  j["final"] = o.final_.string();
  j["tau"] = o.tau;
  j["energy"] = o.energy;
  j["subspace_rank"] = o.subspace_rank;
  j["layers"] = nlohmann::json::array();
  for (const auto& r : rs) {
    j["layers"].push_back({{"name", r.name},
                           {"layer", r.layer},
                           {"module", r.module},
                           {"shape", {r.rows, r.cols}},
                           {"dtype", r.dtype},
                           {"init_fro", r.init_fro},
                           {"delta_fro", r.delta_fro},
                           {"noise_floor", r.noise_floor},
                           {"numerical_rank", r.metrics.numerical_rank},
                           {"rank_above_noise", r.rank_above_noise},
                           {"outside_subspace", r.outside_subspace},
                           {"within_noise", r.within_noise},
                           {"energy_rank", r.metrics.energy90_rank},
                           {"stable_rank", r.metrics.stable_rank},
                           {"entropy_rank", r.metrics.entropy_rank},
                           {"sigma", r.sigma}});
  }
  return j;
}

inline void write_json(const std::filesystem::path& path, const std::vector<LayerResult>& rs, const Options& o) {
  std::ofstream f(path);
  if (!f) throw InvalidArgument(hdpissa::cat("cannot write JSON file ", path.string()));
  f << to_json(rs, o).dump(1) << "\n";
  if (!f) throw InvalidArgument(hdpissa::cat("failed writing JSON file ", path.string()));
}

/// Human-readable table: every layer when `per_layer`, then the per-module means.
inline void print_table(std::FILE* out, const std::vector<LayerResult>& rs, const Options& o, bool per_layer) {
  std::fprintf(out, "ΔW = final − initial; numerical rank at τ = %g, energy rank at %g%%%s\n", o.tau,
               100 * o.energy, o.label.empty() ? "" : hdpissa::cat("; ", o.label).c_str());
  if (per_layer) {
    std::fprintf(out, "%-44s %11s %10s %10s %6s %6s %8s %8s\n", "layer", "(out, in)", "|dW|_F", "sigma_1", "num", "E90",
                 "stable", "entropy");
    for (const auto& r : rs)
      std::fprintf(out, "%-44s %11s %10.3e %10.3e %6ld %6ld %8.2f %8.2f%s\n", r.name.c_str(),
                   hdpissa::cat("(", r.rows, ", ", r.cols, ")").c_str(), r.delta_fro, r.metrics.sigma_max,
                   r.metrics.numerical_rank, r.metrics.energy90_rank, r.metrics.stable_rank, r.metrics.entropy_rank,
                   r.within_noise ? "  (tau*sigma_1 under the storage-rounding floor)" : "");
  }
  std::fprintf(out, "%-8s %6s %10s %8s %8s %8s %8s%s\n", "module", "layers", "|dW|_F", "num", "E90", "stable",
               "entropy", o.subspace_rank > 0 ? hdpissa::cat("  outside(N=", o.subspace_rank, ")").c_str() : "");
  for (const auto& s : summarise(rs))
    std::fprintf(out, "%-8s %6d %10.3e %8.2f %8.2f %8.2f %8.2f%s\n", s.module.c_str(), s.count, s.delta_fro,
                 s.numerical_rank, s.energy_rank, s.stable_rank, s.entropy_rank,
                 o.subspace_rank > 0 ? hdpissa::cat("  ", s.outside_subspace).c_str() : "");
  int noisy = 0, zero = 0;
  for (const auto& r : rs) noisy += r.within_noise, zero += r.metrics.sigma_max == 0;
  if (zero) std::fprintf(out, "note: %d of %zu layers have ΔW = 0 exactly (untrained or frozen)\n", zero, rs.size());
  if (noisy)
    std::fprintf(out,
                 "warning: %d of %zu layers have τσ₁ at or below the estimated storage-rounding floor of W_final "
                 "(dtype %s): their numerical rank counts rounding, not training\n",
                 noisy, rs.size(), rs.empty() ? "?" : rs.front().dtype.c_str());
}

}  // namespace hdpissa::rank_analysis
