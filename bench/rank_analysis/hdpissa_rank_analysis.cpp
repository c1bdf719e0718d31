// hdpissa-rank-analysis: effective rank of a fine-tune's update ΔW = W_final − W_init, per target
// layer (spec §8). See rank_analysis.hpp for the metrics and the precision argument behind --tau.
//
//   hdpissa-rank-analysis --init ../shared/data/stories260K-hf --final out/hdpissa-K8
//       --label hdpissa-K8 --csv k8.csv --json k8.json
//
// Exit status: 0 ok, 1 bad input (missing file / tensor, shape mismatch, ...), 2 bad command line.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>

#include "rank_analysis.hpp"

namespace {

using hdpissa::rank_analysis::Options;

[[noreturn]] void usage(const char* why, int code) {
  std::fprintf(code ? stderr : stdout,
               "%s%s"
               "usage: hdpissa-rank-analysis --init PATH --final PATH [options]\n"
               "  PATH: an HF checkpoint directory (model.safetensors or a sharded index) or a .safetensors file\n"
               "  --layers A,B,...   tensor names to analyse (default: every *_proj.weight of --modules)\n"
               "  --layers-file F    tensor names, one per line\n"
               "  --modules LIST     default selection, comma-separated (default q,k,v,o,gate,up,down)\n"
               "  --tau T            numerical rank = #{σ_i > T σ_1} (default 1e-3: 1-3 orders above the fp32\n"
               "                     storage-rounding floor of ΔW, which is reported per layer)\n"
               "  --energy E         energy rank: smallest k with Σ_{i≤k} σ_i² ≥ E Σ σ_i² (default 0.9)\n"
               "  --subspace-rank N  also report ‖ΔW outside {X V_Nᵀ + U_N Y}‖_F / ‖ΔW‖_F, (U_N, V_N) = top-N singular\n"
               "                     vectors of W_init: HD-PiSSA's first-order subspace for N = K·r (spec §4)\n"
               "  --label NAME       method label written to the CSV / JSON\n"
               "  --csv FILE         per-layer metrics\n"
               "  --json FILE        per-layer metrics and full spectra (for plot_spectra.py)\n"
               "  --threads T        layers analysed concurrently (default 1; results are identical)\n"
               "  --per-layer        print every layer, not only the per-module means\n",
               why, *why ? "\n" : "");
  std::exit(code);
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, sep);)
    if (!item.empty()) out.push_back(item);
  return out;
}

double to_double(const char* flag, const char* s) {
  char* end = nullptr;
  const double v = std::strtod(s, &end);
  if (!*s || *end) usage((std::string(flag) + ": expected a number, found '" + s + "'").c_str(), 2);
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  bool per_layer = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto need = [&]() -> const char* {
      if (i + 1 >= argc) usage(("missing value after " + a).c_str(), 2);
      return argv[++i];
    };
    if (a == "--init") o.init = need();
    else if (a == "--final") o.final_ = need();
    else if (a == "--layers") o.layers = split(need(), ',');
    else if (a == "--layers-file") {
      const std::string f = need();
      std::ifstream in(f);
      if (!in) usage(("--layers-file: cannot read '" + f + "'").c_str(), 2);
      for (std::string line; std::getline(in, line);)
        if (!line.empty() && line[0] != '#') o.layers.push_back(line);
    } else if (a == "--modules") o.modules = split(need(), ',');
    else if (a == "--tau") o.tau = to_double("--tau", need());
    else if (a == "--energy") o.energy = to_double("--energy", need());
    else if (a == "--subspace-rank") {
      const double v = to_double("--subspace-rank", need());
      if (v < 1 || v != double(long(v))) usage("--subspace-rank: expected a positive integer", 2);
      o.subspace_rank = long(v);
    } else if (a == "--label") o.label = need();
    else if (a == "--csv") o.csv = need();
    else if (a == "--json") o.json = need();
    else if (a == "--threads") {
      const double v = to_double("--threads", need());
      if (v < 1 || v > 1024 || v != double(long(v))) usage("--threads: expected an integer in [1, 1024]", 2);
      o.threads = int(v);
    } else if (a == "--per-layer") per_layer = true;
    else if (a == "--help" || a == "-h") usage("Effective rank of ΔW = W_final − W_init per target layer.", 0);
    else usage(("unknown flag '" + a + "'").c_str(), 2);
  }
  if (o.init.empty() || o.final_.empty()) usage("--init and --final are required", 2);
  try {
    const auto rs = hdpissa::rank_analysis::analyse(o);
    if (!o.csv.empty()) hdpissa::rank_analysis::write_csv(o.csv, rs, o);
    if (!o.json.empty()) hdpissa::rank_analysis::write_json(o.json, rs, o);
    hdpissa::rank_analysis::print_table(stdout, rs, o, per_layer);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hdpissa-rank-analysis: error: %s\n", e.what());
    return 1;
  }
}
