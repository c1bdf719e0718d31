// tests/analysis: hdpissa-rank-analysis on synthetic checkpoints whose ΔW has a known spectrum.
//  - exact case: W_init on a 2⁻⁸ grid, ΔW a signed permuted diagonal of powers of two, so every
//    stored value and every difference is exact: the spectrum and all metrics compare exactly;
//  - generic case: ΔW = U diag(s) Vᵀ with random orthonormal U, V, stored in F32: σ matches s to the
//    fp32 storage-rounding floor, which the tool estimates; in BF16 the tool flags the floor;
//  - the default layer selection, explicit layers, sharded checkpoints, CSV / JSON outputs;
//  - bad inputs: missing files, missing tensors, mismatched shapes, truncated files, bad options.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "rank_analysis.hpp"

namespace fs = std::filesystem;
using namespace hdpissa;
using namespace hdpissa::rank_analysis;

namespace {

fs::path scratch(const std::string& name) {
  const fs::path p = fs::path(HDPISSA_ANALYSIS_SCRATCH) / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

struct Tensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::vector<float> data;
};

void write(const fs::path& file, const std::vector<Tensor>& ts, llama::DType dtype = llama::DType::F32) {
  std::vector<llama::TensorToWrite> w;
  for (const auto& t : ts) w.push_back({t.name, t.shape, t.data.data()});
  llama::write_safetensors(file, w, dtype);
}

/// W_init entries k/256, |k| ≤ 64: exact in fp32 and bf16, and W_init + ΔW below is exact in fp32.
std::vector<float> grid_matrix(long rows, long cols, unsigned seed) {
  std::mt19937 g(seed);
  std::uniform_int_distribution<int> k(-64, 64);
  std::vector<float> m(std::size_t(rows * cols));
  for (auto& x : m) x = float(k(g)) / 256.f;
  return m;
}

/// Adds a signed permuted diagonal with entries `s` to `w` (rows, cols): its singular values are |s|.
void add_permuted_diagonal(std::vector<float>& w, long rows, long cols, const std::vector<float>& s, unsigned seed) {
  std::vector<long> pr(static_cast<std::size_t>(rows)), pc(static_cast<std::size_t>(cols));
  std::iota(pr.begin(), pr.end(), 0);
  std::iota(pc.begin(), pc.end(), 0);
  std::mt19937 g(seed);
  std::shuffle(pr.begin(), pr.end(), g);
  std::shuffle(pc.begin(), pc.end(), g);
  for (std::size_t i = 0; i < s.size(); ++i)
    w[std::size_t(pr[i] * cols + pc[i])] += (i % 2 ? -1.f : 1.f) * s[i];
}

/// Reference metrics straight from the definitions (independent of rank_metrics' code path).
double entropy_rank(const std::vector<double>& s) {
  double sum = 0, h = 0;
  for (double x : s) sum += x;
  for (double x : s)
    if (x > 0) h -= x / sum * std::log(x / sum);
  return std::exp(h);
}

/// A small two-layer "model": every target projection + tensors that must be ignored.
struct Model {
  std::vector<Tensor> init, fin;
};

Model exact_model() {
  Model m;
  const std::vector<float> s5 = {8, 4, 2, 1, 0.5f}, s1 = {3};
  struct P { const char* name; long rows, cols; const std::vector<float>* s; };
  const P ps[] = {{"model.layers.0.self_attn.q_proj.weight", 16, 12, &s5},
                  {"model.layers.0.mlp.down_proj.weight", 12, 20, &s1},
                  {"model.layers.1.self_attn.k_proj.weight", 8, 12, nullptr}};  // untouched: ΔW = 0
  unsigned seed = 1;
  for (const auto& p : ps) {
    auto w0 = grid_matrix(p.rows, p.cols, seed++);
    auto w1 = w0;
    if (p.s) add_permuted_diagonal(w1, p.rows, p.cols, *p.s, seed++);
    m.init.push_back({p.name, {p.rows, p.cols}, w0});
    m.fin.push_back({p.name, {p.rows, p.cols}, w1});
  }
  for (auto* v : {&m.init, &m.fin}) {
    v->push_back({"model.embed_tokens.weight", {10, 12}, grid_matrix(10, 12, 99)});
    v->push_back({"model.layers.0.input_layernorm.weight", {12}, std::vector<float>(12, 1.f)});
  }
  m.fin[3].data[0] += 1.f;  // embeddings changed: must not be analysed by default
  return m;
}

/// Random (rows, k) matrix with orthonormal columns (modified Gram-Schmidt in double).
std::vector<double> orthonormal(long rows, long k, std::mt19937& g) {
  std::normal_distribution<double> n;
  std::vector<double> q(std::size_t(rows * k));
  for (auto& x : q) x = n(g);
  for (long j = 0; j < k; ++j) {
    for (long p = 0; p < j; ++p) {
      double d = 0;
      for (long i = 0; i < rows; ++i) d += q[i * k + j] * q[i * k + p];
      for (long i = 0; i < rows; ++i) q[i * k + j] -= d * q[i * k + p];
    }
    double nn = 0;
    for (long i = 0; i < rows; ++i) nn += q[i * k + j] * q[i * k + j];
    for (long i = 0; i < rows; ++i) q[i * k + j] /= std::sqrt(nn);
  }
  return q;
}

/// W_init gaussian (std 0.02), ΔW = U diag(s) Vᵀ, both stored in `dtype`.
Model generic_model(long rows, long cols, const std::vector<double>& s, unsigned seed = 7) {
  std::mt19937 g(seed);
  std::normal_distribution<double> n(0, 0.02);
  const long k = long(s.size());
  const auto U = orthonormal(rows, k, g), V = orthonormal(cols, k, g);
  Model m;
  std::vector<float> w0(std::size_t(rows * cols)), w1(w0.size());
  for (long i = 0; i < rows; ++i)
    for (long j = 0; j < cols; ++j) {
      const float a = float(n(g));
      double d = 0;
      for (long p = 0; p < k; ++p) d += U[i * k + p] * s[std::size_t(p)] * V[j * k + p];
      w0[std::size_t(i * cols + j)] = a;
      w1[std::size_t(i * cols + j)] = float(double(a) + d);
    }
  const std::string name = "model.layers.2.mlp.up_proj.weight";
  m.init.push_back({name, {rows, cols}, w0});
  m.fin.push_back({name, {rows, cols}, w1});
  return m;
}

Options opts(const fs::path& a, const fs::path& b) {
  Options o;
  o.init = a;
  o.final_ = b;
  return o;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("exact synthetic checkpoints: known spectrum, known metrics") {
  const auto dir = scratch("exact");
  const Model m = exact_model();
  fs::create_directories(dir / "init");
  fs::create_directories(dir / "final");
  write(dir / "init" / "model.safetensors", m.init);
  write(dir / "final" / "model.safetensors", m.fin);

  Options o = opts(dir / "init", dir / "final");
  const auto rs = analyse(o);
  REQUIRE(rs.size() == 3);  // the three projections, ordered by (layer, module); embeddings / norms skipped
  CHECK(rs[0].name == "model.layers.0.self_attn.q_proj.weight");
  CHECK(rs[1].name == "model.layers.0.mlp.down_proj.weight");
  CHECK(rs[2].name == "model.layers.1.self_attn.k_proj.weight");
  CHECK(rs[0].module == "q");
  CHECK(rs[0].layer == 0);
  CHECK(rs[1].module == "down");
  CHECK(rs[2].layer == 1);

  SUBCASE("rank-5 ΔW with σ = 8, 4, 2, 1, 0.5") {
    const auto& r = rs[0];
    CHECK(r.rows == 16);
    CHECK(r.cols == 12);
    REQUIRE(r.sigma.size() == 12);
    const std::vector<double> s = {8, 4, 2, 1, 0.5};
    for (std::size_t i = 0; i < 12; ++i) CHECK(r.sigma[i] == doctest::Approx(i < 5 ? s[i] : 0.0).epsilon(1e-13));
    for (std::size_t i = 5; i < 12; ++i) CHECK(std::abs(r.sigma[i]) < 1e-13);
    CHECK(r.metrics.sigma_max == doctest::Approx(8).epsilon(1e-14));
    CHECK(r.metrics.numerical_rank == 5);
    CHECK(r.metrics.energy90_rank == 2);  // 64 + 16 = 80 ≥ 0.9 · 85.25
    CHECK(r.metrics.stable_rank == doctest::Approx(85.25 / 64).epsilon(1e-12));
    CHECK(r.metrics.entropy_rank == doctest::Approx(entropy_rank(s)).epsilon(1e-9));
    CHECK(r.delta_fro == doctest::Approx(std::sqrt(85.25)).epsilon(1e-14));
    CHECK(r.rank_above_noise == 5);
    CHECK_FALSE(r.within_noise);
  }
  SUBCASE("τ moves the numerical rank") {
    o.tau = 0.2;  // σ/σ₁ = 1, .5, .25, .125, .0625
    CHECK(analyse(o)[0].metrics.numerical_rank == 3);
    o.tau = 0.1;
    CHECK(analyse(o)[0].metrics.numerical_rank == 4);
    o.energy = 0.99;  // 85.25 · 0.99 = 84.4 > 84 + ...: needs σ = 1 too (85 ≥ 84.4)
    CHECK(analyse(o)[0].metrics.energy90_rank == 4);
  }
  SUBCASE("rank-1 and zero updates") {
    CHECK(rs[1].metrics.numerical_rank == 1);
    CHECK(rs[1].metrics.stable_rank == doctest::Approx(1));
    CHECK(rs[1].metrics.entropy_rank == doctest::Approx(1));
    CHECK(rs[1].sigma.size() == 12);
    CHECK(rs[2].metrics.numerical_rank == 0);
    CHECK(rs[2].delta_fro == 0);
    CHECK_FALSE(rs[2].within_noise);
  }
  SUBCASE("module filter and explicit layers") {
    o.modules = {"down"};
    auto d = analyse(o);
    REQUIRE(d.size() == 1);
    CHECK(d[0].module == "down");
    o.layers = {"model.embed_tokens.weight"};  // any 2-D tensor by name
    d = analyse(o);
    REQUIRE(d.size() == 1);
    CHECK(d[0].module == "");
    CHECK(d[0].metrics.numerical_rank == 1);
  }
  SUBCASE("a single .safetensors file is accepted as well as a directory") {
    const auto r = analyse(opts(dir / "init" / "model.safetensors", dir / "final"));
    CHECK(r.size() == 3);
    CHECK(r[0].metrics.numerical_rank == 5);
  }
  SUBCASE("CSV and JSON outputs") {
    o.csv = dir / "m.csv";
    o.json = dir / "m.json";
    o.label = "synthetic";
    write_csv(o.csv, rs, o);
    write_json(o.json, rs, o);
    std::ifstream c(o.csv);
    std::vector<std::string> lines;
    for (std::string l; std::getline(c, l);) lines.push_back(l);
    REQUIRE(lines.size() == 4);
    CHECK(lines[0].rfind("label,name,layer,module,rows,cols", 0) == 0);
    CHECK(lines[1].rfind("synthetic,model.layers.0.self_attn.q_proj.weight,0,q,16,12,F32,", 0) == 0);
    std::ifstream jf(o.json);
    const auto j = nlohmann::json::parse(jf);
    CHECK(j["label"] == "synthetic");
    CHECK(j["tau"].get<double>() == 1e-3);
    REQUIRE(j["layers"].size() == 3);
    CHECK(j["layers"][0]["numerical_rank"] == 5);
    CHECK(j["layers"][0]["shape"][0] == 16);
    CHECK(j["layers"][0]["sigma"].size() == 12);
    CHECK(j["layers"][0]["sigma"][1].get<double>() == doctest::Approx(4));
    const auto sm = summarise(rs);
    CHECK(sm.back().module == "all");
    CHECK(sm.back().count == 3);
    CHECK(sm.back().numerical_rank == doctest::Approx(2.0));  // (5 + 1 + 0) / 3
  }
}

TEST_CASE("generic ΔW = U diag(s) Vᵀ: σ recovered to the storage floor, BF16 flagged") {
  const long rows = 48, cols = 40;
  std::vector<double> s;
  for (int i = 0; i < 10; ++i) s.push_back(0.01 * std::pow(10.0, -i / 4.0));
  const Model m = generic_model(rows, cols, s);
  const auto dir = scratch("generic");

  SUBCASE("F32") {
    write(dir / "a.safetensors", m.init);
    write(dir / "b.safetensors", m.fin);
    const auto rs = analyse(opts(dir / "a.safetensors", dir / "b.safetensors"));
    REQUIRE(rs.size() == 1);
    const auto& r = rs[0];
    CHECK(r.noise_floor > 0);
    CHECK(r.noise_floor < 1e-7);  // u · rms(W) · (√48 + √40) / √3 ≈ 9e-9
    for (std::size_t i = 0; i < s.size(); ++i) CHECK(std::abs(r.sigma[i] - s[i]) <= r.noise_floor);
    for (std::size_t i = s.size(); i < r.sigma.size(); ++i) CHECK(r.sigma[i] <= r.noise_floor);
    CHECK(r.metrics.numerical_rank == 10);  // smallest σ/σ₁ = 10^-2.25 > 1e-3
    CHECK(r.rank_above_noise == 10);
    CHECK_FALSE(r.within_noise);
    double ss = 0;
    for (double x : s) ss += x * x;
    CHECK(r.metrics.stable_rank == doctest::Approx(ss / (s[0] * s[0])).epsilon(1e-6));
    CHECK(r.metrics.entropy_rank == doctest::Approx(entropy_rank(s)).epsilon(1e-3));  // tail: rounding only
  }
  SUBCASE("BF16 storage: the rounding floor exceeds τσ₁ and is reported") {
    write(dir / "a.safetensors", m.init, llama::DType::BF16);
    write(dir / "b.safetensors", m.fin, llama::DType::BF16);
    const auto rs = analyse(opts(dir / "a.safetensors", dir / "b.safetensors"));
    REQUIRE(rs.size() == 1);
    CHECK(rs[0].dtype == "BF16");
    CHECK(rs[0].noise_floor > 1e-5);
    CHECK(rs[0].within_noise);
    CHECK(rs[0].metrics.numerical_rank > 10);  // rounding makes ΔW look full-rank
    CHECK(rs[0].rank_above_noise < rs[0].metrics.numerical_rank);
  }
}

TEST_CASE("share of ΔW outside the first-order subspace {X V_Nᵀ + U_N Y} of W_init") {
  // W_init = U diag(s) Vᵀ with known U, V; ΔW = U_N Y + X V_Nᵀ (inside) + c·u_10 v_12ᵀ (outside).
  const long rows = 24, cols = 20, k = 20, N = 4;
  std::mt19937 g(11);
  std::normal_distribution<double> nd;
  const auto U = orthonormal(rows, k, g), V = orthonormal(cols, k, g);
  std::vector<double> w0(std::size_t(rows * cols), 0.0), in(w0.size(), 0.0), out(w0.size(), 0.0);
  std::vector<double> Y(std::size_t(N * cols)), X(std::size_t(rows * N));
  for (auto& y : Y) y = 0.01 * nd(g);
  for (auto& x : X) x = 0.01 * nd(g);
  for (long i = 0; i < rows; ++i)
    for (long j = 0; j < cols; ++j) {
      double w = 0, a = 0;
      for (long p = 0; p < k; ++p) w += U[i * k + p] * (1.0 + 0.1 * double(k - p)) * V[j * k + p];
      for (long p = 0; p < N; ++p) a += U[i * k + p] * Y[p * cols + j] + X[i * N + p] * V[j * k + p];
      w0[std::size_t(i * cols + j)] = w;
      in[std::size_t(i * cols + j)] = a;
      out[std::size_t(i * cols + j)] = 0.02 * U[i * k + 10] * V[j * k + 12];
    }
  double n_in = 0, n_out = 0;
  for (std::size_t i = 0; i < in.size(); ++i) n_in += in[i] * in[i], n_out += out[i] * out[i];
  const auto dir = scratch("subspace");
  auto save = [&](const std::string& file, double c_in, double c_out) {
    std::vector<float> f(w0.size());
    for (std::size_t i = 0; i < f.size(); ++i) f[i] = float(w0[i] + c_in * in[i] + c_out * out[i]);
    write(dir / file, {{"model.layers.0.self_attn.o_proj.weight", {rows, cols}, f}});
  };
  save("w0.safetensors", 0, 0);
  save("inside.safetensors", 1, 0);
  save("outside.safetensors", 0, 1);
  save("mixed.safetensors", 1, 1);
  auto run = [&](const std::string& file, long n) {
    Options o = opts(dir / "w0.safetensors", dir / file);
    o.subspace_rank = n;
    return analyse(o).at(0);
  };
  CHECK(run("inside.safetensors", N).outside_subspace < 1e-4);  // fp32 storage rounding only
  CHECK(run("outside.safetensors", N).outside_subspace == doctest::Approx(1).epsilon(1e-4));
  CHECK(run("mixed.safetensors", N).outside_subspace ==
        doctest::Approx(std::sqrt(n_out / (n_in + n_out))).epsilon(1e-3));
  CHECK(run("mixed.safetensors", N).metrics.numerical_rank == 2 * N + 1);  // rank(in) ≤ 2N, + 1
  CHECK(run("mixed.safetensors", 0).outside_subspace == -1);  // not requested
  CHECK(run("outside.safetensors", 13).outside_subspace < 1e-4);  // u_10, v_12 both inside N = 13
  CHECK(error_of([&] { run("inside.safetensors", 21); }).find("exceeds min(out, in) = 20") != std::string::npos);
}

TEST_CASE("--threads: the same results in the same order as a serial run; errors as in a serial run") {
  // Eight layers of different spectra (generic ΔW per layer), analysed with 1, 3 and 16 threads.
  const auto dir = scratch("threads");
  std::vector<Tensor> init, fin;
  for (int l = 0; l < 8; ++l) {
    std::vector<double> s;
    for (int i = 0; i <= l; ++i) s.push_back(0.01 * std::pow(10.0, -i / 3.0));
    Model m = generic_model(20 + 2 * l, 16, s, 100 + l);
    for (auto& t : m.init) t.name = "model.layers." + std::to_string(l) + ".mlp.up_proj.weight";
    for (auto& t : m.fin) t.name = "model.layers." + std::to_string(l) + ".mlp.up_proj.weight";
    init.push_back(m.init.at(0));
    fin.push_back(m.fin.at(0));
  }
  write(dir / "a.safetensors", init);
  write(dir / "b.safetensors", fin);
  Options o = opts(dir / "a.safetensors", dir / "b.safetensors");
  o.subspace_rank = 4;
  const auto serial = analyse(o);
  REQUIRE(serial.size() == 8);
  for (int l = 0; l < 8; ++l) CHECK(serial[std::size_t(l)].metrics.numerical_rank == l + 1);  // σ_l/σ_0 ≥ 10^-7/3 > τ
  for (int t : {3, 16}) {
    o.threads = t;
    const auto par = analyse(o);
    REQUIRE(par.size() == serial.size());
    for (std::size_t i = 0; i < par.size(); ++i) {
      CHECK(par[i].name == serial[i].name);
      CHECK(par[i].sigma == serial[i].sigma);  // bit-identical: the same code on the same data
      CHECK(par[i].outside_subspace == serial[i].outside_subspace);
    }
  }
  // Layers 2 and 5 missing from the final checkpoint: the error names layer 2, as a serial run does.
  auto broken = fin;
  broken.erase(broken.begin() + 5);
  broken.erase(broken.begin() + 2);
  write(dir / "c.safetensors", broken);
  o.final_ = dir / "c.safetensors";
  o.threads = 1;
  const auto e1 = error_of([&] { analyse(o); });
  o.threads = 8;
  CHECK(error_of([&] { analyse(o); }) == e1);
  CHECK(e1.find("model.layers.2.mlp.up_proj.weight") != std::string::npos);
  o.threads = 0;
  CHECK(error_of([&] { analyse(o); }).find("--threads") != std::string::npos);
}

TEST_CASE("sharded checkpoint directories") {
  const auto dir = scratch("sharded");
  const Model m = exact_model();
  for (const char* sub : {"init", "final"}) {
    const auto& ts = std::string(sub) == "init" ? m.init : m.fin;
    fs::create_directories(dir / sub);
    write(dir / sub / "model-00001-of-00002.safetensors", {ts[0], ts[1]});
    write(dir / sub / "model-00002-of-00002.safetensors", {ts[2], ts[3], ts[4]});
    nlohmann::json idx;
    idx["weight_map"] = nlohmann::json::object();
    for (int i = 0; i < 5; ++i)
      idx["weight_map"][ts[std::size_t(i)].name] = i < 2 ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
    std::ofstream(dir / sub / "model.safetensors.index.json") << idx.dump();
  }
  const auto rs = analyse(opts(dir / "init", dir / "final"));
  REQUIRE(rs.size() == 3);
  CHECK(rs[0].metrics.numerical_rank == 5);
  CHECK(rs[2].metrics.numerical_rank == 0);
}

TEST_CASE("bad inputs: errors say what was expected and what was found") {
  const auto dir = scratch("bad");
  const Model m = exact_model();
  write(dir / "init.safetensors", m.init);
  const auto init = dir / "init.safetensors";

  SUBCASE("missing files") {
    const auto e = error_of([&] { analyse(opts(dir / "nope", init)); });
    CHECK(e.find("checkpoint not found") != std::string::npos);
    CHECK(e.find("nope") != std::string::npos);
    CHECK(error_of([&] { analyse(opts(init, dir / "nope2")); }).find("nope2") != std::string::npos);
    fs::create_directories(dir / "empty");
    CHECK(error_of([&] { analyse(opts(dir / "empty", init)); }).find("found neither") != std::string::npos);
  }
  SUBCASE("missing tensor in the final checkpoint") {
    auto fin = m.fin;
    fin.erase(fin.begin() + 1);  // no down_proj
    write(dir / "final.safetensors", fin);
    const auto e = error_of([&] { analyse(opts(init, dir / "final.safetensors")); });
    CHECK(e.find("model.layers.0.mlp.down_proj.weight") != std::string::npos);
    CHECK(e.find("not found") != std::string::npos);
  }
  SUBCASE("mismatched shapes") {
    auto fin = m.fin;
    fin[0].shape = {12, 16};  // same numel, transposed shape
    write(dir / "final.safetensors", fin);
    const auto e = error_of([&] { analyse(opts(init, dir / "final.safetensors")); });
    CHECK(e.find("shapes differ") != std::string::npos);
    CHECK(e.find("[16, 12]") != std::string::npos);
    CHECK(e.find("[12, 16]") != std::string::npos);
  }
  SUBCASE("explicit layer that does not exist / is not 2-D") {
    write(dir / "final.safetensors", m.fin);
    Options o = opts(init, dir / "final.safetensors");
    o.layers = {"model.layers.9.self_attn.q_proj.weight"};
    CHECK(error_of([&] { analyse(o); }).find("expected tensor 'model.layers.9.self_attn.q_proj.weight'") !=
          std::string::npos);
    o.layers = {"model.layers.0.input_layernorm.weight"};
    CHECK(error_of([&] { analyse(o); }).find("expected a 2-D weight") != std::string::npos);
  }
  SUBCASE("no target projections") {
    write(dir / "only_embed.safetensors", {m.init[3]});
    CHECK(error_of([&] { analyse(opts(dir / "only_embed.safetensors", dir / "only_embed.safetensors")); })
              .find("found none") != std::string::npos);
  }
  SUBCASE("truncated file") {
    write(dir / "final.safetensors", m.fin);
    fs::resize_file(dir / "final.safetensors", fs::file_size(dir / "final.safetensors") - 100);
    CHECK(error_of([&] { analyse(opts(init, dir / "final.safetensors")); }).find("truncated") != std::string::npos);
  }
  SUBCASE("bad thresholds") {
    Options o = opts(init, init);
    o.tau = 0;
    CHECK_THROWS_AS(analyse(o), InvalidArgument);
    o.tau = 1e-3;
    o.energy = 1.5;
    CHECK_THROWS_AS(analyse(o), InvalidArgument);
  }
}
