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
#include <fstream>
#include <vector>
#include <sstream>
#include <string>

#include "llama/cli.hpp"
#include "rank_analysis.hpp"

namespace {

using hdpissa::rank_analysis::Options;

}  // namespace

int main(int argc, char** argv) {
  namespace cli = hdpissa::llama::cli;
  Options o;
  bool per_layer = false;
  CLI::App app{"Effective rank of dW = W_final - W_init per target layer (spec section 8).", "hdpissa-rank-analysis"};
  cli::setup(app);
  app.footer("PATH: an HF checkpoint directory (model.safetensors or a sharded index) or a .safetensors file");
  app.add_option("--init", o.init, "the checkpoint before fine-tuning")->type_name("PATH")->required();
  app.add_option("--final", o.final_, "the checkpoint after fine-tuning")->type_name("PATH")->required();
  app.add_option_function<std::vector<std::string>>(
         "--layers", [&o](const std::vector<std::string>& v) { o.layers = cli::split_list(v); },
         "tensor names to analyse, comma- or space-separated (default: every *_proj.weight of --modules)")
      ->type_name("A,B,...")->expected(1, -1)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option_function<std::string>(
         "--layers-file",
         [&o](const std::string& f) {
           std::ifstream in(f);
           if (!in) throw cli::UsageError("--layers-file: cannot read '" + f + "'");
           for (std::string line; std::getline(in, line);)
             if (!line.empty() && line[0] != '#') o.layers.push_back(line);
         },
         "tensor names, one per line")->type_name("FILE");
  app.add_option_function<std::vector<std::string>>(
         "--modules,--targets", [&o](const std::vector<std::string>& v) {
           o.modules = cli::split_list(v);
           if (o.modules == std::vector<std::string>{"all-linear"}) o.modules = {"q", "k", "v", "o", "gate", "up", "down"};
         },
         "default selection, comma- or space-separated, or all-linear (default q,k,v,o,gate,up,down)")
      ->type_name("LIST")->expected(1, -1)->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  app.add_option("--tau", o.tau, "numerical rank = #{s_i > T s_1} (default 1e-3: 1-3 orders above the fp32 "
                                 "storage-rounding floor of dW, which is reported per layer)")->type_name("T");
  app.add_option("--energy", o.energy, "energy rank: smallest k with sum_{i<=k} s_i^2 >= E sum s_i^2 (default 0.9)")
      ->type_name("E")->check(CLI::Range(0.0, 1.0));
  app.add_option("--subspace-rank", o.subspace_rank,
                 "also report |dW outside {X V_N^T + U_N Y}|_F / |dW|_F, (U_N, V_N) = top-N singular vectors of "
                 "W_init: HD-PiSSA's first-order subspace for N = K r (spec section 4)")
      ->type_name("N")->check(CLI::PositiveNumber);
  app.add_option("--label", o.label, "method label written to the CSV / JSON")->type_name("NAME");
  app.add_option("--csv", o.csv, "per-layer metrics")->type_name("FILE");
  app.add_option("--json", o.json, "per-layer metrics and full spectra (for plot_spectra.py)")->type_name("FILE");
  app.add_option("--threads", o.threads, "layers analysed concurrently (default 1; results are identical)")
      ->type_name("T")->check(CLI::Range(1, 1024));
  app.add_flag("--per-layer", per_layer, "print every layer, not only the per-module means");
  try {
    if (cli::parse(app, std::vector<std::string>(argv + 1, argv + argc)) != cli::Outcome::Run) return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hdpissa-rank-analysis: error: %s\n", e.what());
    return 2;
  }
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
