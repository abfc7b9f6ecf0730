// `dirmoe report` (see report.h). Every input is read defensively: a missing file is skipped with a
// message, a line that does not parse (a run killed mid-write leaves a truncated last line) is
// named and ignored, and what remains is reported.
#include "launch/report/report.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <string>
#include <vector>

#include "launch/report/plot.h"
#include "runtime/config.h"

namespace dirmoe {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using plot::Figure;

void note(const std::string& s) { std::printf("note: %s\n", s.c_str()); }

// Parsed lines of a jsonl file; unparsable lines are reported and skipped.
std::vector<json> read_jsonl(const fs::path& path, bool* ok) {
  std::vector<json> out;
  std::ifstream in(path);
  *ok = in.good();
  if (!*ok) return out;
  std::string line;
  int64_t n = 0;
  std::vector<std::pair<int64_t, std::string>> bad;
  while (std::getline(in, line)) {
    ++n;
    if (line.empty()) continue;
    try {
      json j = json::parse(line);
      if (!j.is_object()) throw std::runtime_error("not a JSON object");
      out.push_back(std::move(j));
    } catch (const std::exception& e) {
      bad.emplace_back(n, e.what());
    }
  }
  for (const auto& [ln, what] : bad) {
    const bool last = ln == n;
    note(
        path.string() + ":" + std::to_string(ln) + ": " +
        (last ? "truncated last line (the run was stopped while writing it?)" : "unreadable line") +
        ", skipped");
    (void)what;
  }
  return out;
}

double num(const json& j, const char* key, double fallback = NAN) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : fallback;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string human_bytes(double b) {
  const char* unit[] = {"B", "KB", "MB", "GB", "TB"};
  int i = 0;
  while (std::abs(b) >= 1000 && i < 4) b /= 1000, ++i;
  return fmt(i == 0 ? "%.0f" : "%.2f", b) + " " + unit[i];
}

double median(std::vector<double> v) {
  v.erase(std::remove_if(v.begin(), v.end(), [](double x) { return !std::isfinite(x); }), v.end());
  if (v.empty()) return NAN;
  std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
  return v[v.size() / 2];
}

struct Run {
  fs::path dir;
  std::vector<json> steps;  // training step records (have "loss"), in step order
  std::vector<json> evals;  // records with "eval_loss"
  std::vector<json> traffic;
  bool have_config = false;
  Config cfg;
  int layers = 0, experts = 0, ranks = 0, sources = 0;
};

// Per-layer array field of a step record, or empty.
std::vector<double> layer_field(const json& rec, int l, const char* key) {
  std::vector<double> out;
  if (!rec.contains("layers") || !rec["layers"].is_array() ||
      static_cast<int>(rec["layers"].size()) <= l)
    return out;
  const json& lj = rec["layers"][l];
  if (!lj.contains(key) || !lj[key].is_array()) return out;
  for (const auto& v : lj[key]) out.push_back(v.is_number() ? v.get<double>() : NAN);
  return out;
}

bool parse_range(const std::string& s, int64_t* a, int64_t* b) {
  const auto colon = s.find(':');
  if (colon == std::string::npos) return false;
  try {
    size_t used = 0;
    *a = std::stoll(s.substr(0, colon), &used);
    if (used != colon) return false;
    const std::string rest = s.substr(colon + 1);
    *b = std::stoll(rest, &used);
    return used == rest.size() && *a <= *b;
  } catch (...) {
    return false;
  }
}

// ---- plots ----

std::string plot_loss(const Run& run, const fs::path& out) {
  plot::LineChart ch{"Loss", "step", "cross-entropy", {}, false};
  plot::Series tr{"train", {}, {}, plot::series_color(0)};
  for (const auto& r : run.steps) {
    tr.x.push_back(num(r, "step"));
    tr.y.push_back(num(r, "loss"));
  }
  ch.series.push_back(tr);
  plot::Series ev{"eval", {}, {}, plot::series_color(1), 2, 0, true};
  for (const auto& r : run.evals) {
    ev.x.push_back(num(r, "step"));
    ev.y.push_back(num(r, "eval_loss"));
  }
  if (!ev.x.empty()) ch.series.push_back(ev);
  Figure c(900, 500);
  plot::draw_line_chart(c, 0, 0, 900, 500, ch);
  const fs::path p = out / "loss.png";
  c.write_png(p.string());
  return p.string();
}

std::string plot_active(const Run& run, const fs::path& out, double target_k) {
  plot::LineChart ch{"Active experts per token", "step", "experts per token", {}, true};
  for (int l = 0; l < run.layers; ++l) {
    plot::Series s{"layer " + std::to_string(l), {}, {}, plot::series_color(l + 2), 1};
    for (const auto& r : run.steps) {
      if (!r.contains("layers") || static_cast<int>(r["layers"].size()) <= l) continue;
      s.x.push_back(num(r, "step"));
      s.y.push_back(num(r["layers"][l], "active_experts"));
    }
    ch.series.push_back(s);
  }
  plot::Series mean{"mean", {}, {}, plot::series_color(0), 3};
  for (const auto& r : run.steps) {
    mean.x.push_back(num(r, "step"));
    mean.y.push_back(num(r, "active_experts"));
  }
  ch.series.push_back(mean);
  if (std::isfinite(target_k) && !run.steps.empty()) {
    plot::Series t{"target k = " + fmt("%g", target_k), {}, {}, plot::kBlack, 2, 6};
    t.x = {num(run.steps.front(), "step"), num(run.steps.back(), "step")};
    t.y = {target_k, target_k};
    ch.series.push_back(t);
  }
  Figure c(900, 500);
  plot::draw_line_chart(c, 0, 0, 900, 500, ch);
  const fs::path p = out / "active_experts.png";
  c.write_png(p.string());
  return p.string();
}

std::string plot_expert_load(const Run& run, const fs::path& out) {
  const int panel_h = std::max(180, std::min(320, 40 + 18 * run.experts + 60));
  const int W = 1000, H = panel_h * std::max(1, run.layers);
  Figure c(W, H);
  // Load relative to the mean expert (1 = balanced), per step; colour range shared by all panels.
  double vmax = 2.0;
  std::vector<std::vector<double>> vals(run.layers);
  for (int l = 0; l < run.layers; ++l) {
    vals[l].assign(static_cast<size_t>(run.experts) * run.steps.size(), NAN);
    for (size_t s = 0; s < run.steps.size(); ++s) {
      const auto tpe = layer_field(run.steps[s], l, "tokens_per_expert");
      if (static_cast<int>(tpe.size()) != run.experts) continue;
      const double total = std::accumulate(tpe.begin(), tpe.end(), 0.0);
      if (total <= 0) continue;
      for (int e = 0; e < run.experts; ++e) {
        const double v = tpe[e] / (total / run.experts);
        vals[l][static_cast<size_t>(e) * run.steps.size() + s] = v;
        vmax = std::max(vmax, v);
      }
    }
  }
  vmax = std::ceil(vmax);
  for (int l = 0; l < run.layers; ++l) {
    plot::Heatmap m;
    m.title = "Expert load, layer " + std::to_string(l) + " (tokens / mean expert)";
    m.xlabel = "step";
    m.ylabel = "expert";
    m.value_label = "load / mean";
    m.rows = run.experts;
    m.cols = static_cast<int>(run.steps.size());
    m.values = vals[l];
    m.col_first = run.steps.empty() ? 0 : num(run.steps.front(), "step");
    m.col_last = run.steps.empty() ? 1 : num(run.steps.back(), "step");
    m.vmin = 0;
    m.vmax = vmax;
    plot::draw_heatmap(c, 0, l * panel_h, W, panel_h, m);
  }
  const fs::path p = out / "expert_load.png";
  c.write_png(p.string());
  return p.string();
}

std::string plot_rank_load(const Run& run, const fs::path& out) {
  plot::LineChart ch{"Rank load (tokens received, max / mean)", "step", "max / mean", {}, false};
  for (int l = 0; l < run.layers; ++l) {
    plot::Series s{"layer " + std::to_string(l), {}, {}, plot::series_color(l)};
    for (const auto& r : run.steps) {
      if (!r.contains("layers") || static_cast<int>(r["layers"].size()) <= l) continue;
      s.x.push_back(num(r, "step"));
      s.y.push_back(num(r["layers"][l], "rank_max_over_mean"));
    }
    ch.series.push_back(s);
  }
  Figure c(900, 500);
  plot::draw_line_chart(c, 0, 0, 900, 500, ch);
  const fs::path p = out / "rank_load.png";
  c.write_png(p.string());
  return p.string();
}

// Sum over records of `field` (a ranks x ranks matrix) divided by the number of profiled steps.
std::vector<double> traffic_matrix(const std::vector<json>& traffic, int R, const char* field,
                                   int64_t* num_steps) {
  std::vector<double> m(static_cast<size_t>(R) * R, 0.0);
  std::vector<int64_t> steps;
  for (const auto& t : traffic) {
    steps.push_back(t.value("step", int64_t{0}));
    const json& mat = t[field];
    for (int s = 0; s < R; ++s)
      for (int d = 0; d < R; ++d) m[static_cast<size_t>(s) * R + d] += mat[s][d].get<double>();
  }
  std::sort(steps.begin(), steps.end());
  *num_steps = std::unique(steps.begin(), steps.end()) - steps.begin();
  for (double& v : m) v /= std::max<int64_t>(1, *num_steps);
  return m;
}

std::string plot_traffic(const Run& run, const fs::path& out) {
  const int R = run.ranks;
  int64_t n = 0;
  std::vector<double> mb = traffic_matrix(run.traffic, R, "bytes", &n);
  for (double& v : mb) v /= 1e6;
  plot::Heatmap m;
  m.title = "All-to-all traffic per step (MB)";
  m.xlabel = "destination rank";
  m.ylabel = "source rank";
  m.value_label = "MB per step";
  m.rows = m.cols = R;
  m.values = mb;
  for (int r = 0; r < R; ++r) {
    m.row_labels.push_back(std::to_string(r));
    m.col_labels.push_back(std::to_string(r));
  }
  m.vmin = 0;
  m.vmax = std::max(1e-9, *std::max_element(mb.begin(), mb.end()));
  m.annotate = R <= 16;
  const int side = std::clamp(80 * R, 400, 900);
  Figure c(side + 240, side + 80);
  plot::draw_heatmap(c, 0, 0, side + 240, side + 80, m);
  const fs::path p = out / "traffic.png";
  c.write_png(p.string());
  return p.string();
}

std::string plot_sources(const Run& run, const fs::path& out, const std::vector<std::string>& names,
                         std::vector<std::vector<double>>* shares) {
  // Share of each source's assignments per expert, summed over the reported steps.
  const int S = run.sources, E = run.experts;
  shares->assign(run.layers, std::vector<double>(static_cast<size_t>(S) * E, 0.0));
  for (int l = 0; l < run.layers; ++l) {
    auto& sh = (*shares)[l];
    for (const auto& r : run.steps) {
      if (!r.contains("layers") || static_cast<int>(r["layers"].size()) <= l) continue;
      const json& lj = r["layers"][l];
      if (!lj.contains("source_tokens_per_expert")) continue;
      const json& st = lj["source_tokens_per_expert"];
      for (int s = 0; s < S && s < static_cast<int>(st.size()); ++s)
        for (int e = 0; e < E && e < static_cast<int>(st[s].size()); ++e)
          sh[static_cast<size_t>(s) * E + e] += st[s][e].get<double>();
    }
    for (int s = 0; s < S; ++s) {
      double tot = 0;
      for (int e = 0; e < E; ++e) tot += sh[static_cast<size_t>(s) * E + e];
      for (int e = 0; e < E; ++e) {
        double& v = sh[static_cast<size_t>(s) * E + e];
        v = tot > 0 ? v / tot : NAN;
      }
    }
  }
  double vmax = 0;
  for (const auto& sh : *shares)
    for (double v : sh)
      if (std::isfinite(v)) vmax = std::max(vmax, v);
  const int cols = std::min(2, std::max(1, run.layers));
  const int rows = (run.layers + cols - 1) / cols;
  const int pw = 560, ph = std::max(200, 110 + 26 * S);
  Figure c(pw * cols, ph * std::max(1, rows));
  for (int l = 0; l < run.layers; ++l) {
    plot::Heatmap m;
    m.title = "Layer " + std::to_string(l) + ": routing share per source";
    m.xlabel = "expert";
    m.ylabel = "";
    m.value_label = "share";
    m.rows = S;
    m.cols = E;
    m.values = (*shares)[l];
    m.row_labels = names;
    for (int e = 0; e < E; ++e) m.col_labels.push_back(std::to_string(e));
    m.vmin = 0;
    m.vmax = vmax > 0 ? vmax : 1;
    m.annotate = true;
    m.annotate_format = "%.2f";
    plot::draw_heatmap(c, (l % cols) * pw, (l / cols) * ph, pw, ph, m);
  }
  const fs::path p = out / "source_routing.png";
  c.write_png(p.string());
  return p.string();
}

// ---- projection ----

struct Projection {
  double seconds = 0;      // projected all-to-all time per step
  double inter_bytes = 0;  // per step
  double intra_bytes = 0;  // per step (other ranks on the same node)
  int nodes = 0;
};

Projection project(const std::vector<json>& traffic, int R, int G, double net_gbps,
                   double intra_GBps) {
  Projection p;
  p.nodes = (R + G - 1) / G;
  const double net_Bps = net_gbps * 1e9 / 8, intra_Bps = intra_GBps * 1e9;
  std::vector<int64_t> steps;
  for (const auto& t : traffic) {
    steps.push_back(t.value("step", int64_t{0}));
    std::vector<double> node_out(p.nodes, 0), node_in(p.nodes, 0), rank_out(R, 0), rank_in(R, 0);
    for (int s = 0; s < R; ++s)
      for (int d = 0; d < R; ++d) {
        if (s == d) continue;
        const double b = t["bytes"][s][d].get<double>();
        if (s / G != d / G) {
          node_out[s / G] += b;
          node_in[d / G] += b;
          p.inter_bytes += b;
        } else {
          rank_out[s] += b;
          rank_in[d] += b;
          p.intra_bytes += b;
        }
      }
    double t_inter = 0, t_intra = 0;
    for (int n = 0; n < p.nodes; ++n) t_inter = std::max({t_inter, node_out[n], node_in[n]});
    for (int r = 0; r < R; ++r) t_intra = std::max({t_intra, rank_out[r], rank_in[r]});
    p.seconds += std::max(t_inter / net_Bps, t_intra / intra_Bps);
  }
  std::sort(steps.begin(), steps.end());
  const double n = std::max<double>(
      1.0, static_cast<double>(std::unique(steps.begin(), steps.end()) - steps.begin()));
  p.seconds /= n;
  p.inter_bytes /= n;
  p.intra_bytes /= n;
  return p;
}

}  // namespace

int run_report(const ReportOptions& o) {
  Run run;
  run.dir = o.run_dir;
  std::error_code ec;
  if (!fs::is_directory(run.dir, ec)) {
    std::fprintf(stderr, "error: report: run directory '%s' does not exist\n", o.run_dir.c_str());
    return 1;
  }
  bool ok = false;
  std::vector<json> metrics = read_jsonl(run.dir / "metrics.jsonl", &ok);
  if (!ok) {
    std::fprintf(stderr,
                 "error: report: '%s' has no metrics.jsonl: not a run directory, or the run ended "
                 "before rank 0 opened it\n",
                 o.run_dir.c_str());
    return 1;
  }
  const fs::path cfg_path = run.dir / "config.resolved.yaml";
  if (fs::exists(cfg_path)) {
    try {
      run.cfg = load_config(cfg_path.string());
      run.have_config = true;
    } catch (const std::exception& e) {
      note(std::string("config.resolved.yaml not usable (") + e.what() +
           "): targets and run length unknown");
    }
  } else {
    note("no config.resolved.yaml in " + o.run_dir + ": targets and run length unknown");
  }

  int64_t first = 1, last = INT64_MAX;
  const bool ranged = !o.steps.empty();
  if (ranged && !parse_range(o.steps, &first, &last)) {
    std::fprintf(stderr, "error: report: --steps '%s' is not a range A:B with A <= B\n",
                 o.steps.c_str());
    return 1;
  }
  int64_t max_step = 0;
  for (const auto& r : metrics)
    if (r.contains("loss")) max_step = std::max<int64_t>(max_step, r.value("step", int64_t{0}));
  if (ranged && (last < 1 || first > max_step)) {
    note("--steps " + o.steps + " lies outside the recorded steps 1-" + std::to_string(max_step) +
         ": reporting every recorded step");
    first = 1, last = INT64_MAX;
  } else if (ranged && last > max_step) {
    note("--steps " + o.steps + " extends past the last recorded step " + std::to_string(max_step) +
         ": reporting steps " + std::to_string(first) + "-" + std::to_string(max_step));
  }
  auto in_range = [&](int64_t s) { return s >= first && s <= last; };
  for (const auto& r : metrics) {
    const int64_t s = r.value("step", int64_t{-1});
    if (r.contains("eval_loss") && (in_range(s) || (s == 0 && first <= 1))) run.evals.push_back(r);
    if (r.contains("loss") && in_range(s)) run.steps.push_back(r);
  }
  if (run.steps.empty()) {
    std::printf("report: %s: no training step recorded%s; nothing to plot\n", o.run_dir.c_str(),
                run.evals.empty() ? "" : " (only the initial evaluation)");
    return 1;
  }
  const json& l0 = run.steps.back();
  run.layers = l0.contains("layers") ? static_cast<int>(l0["layers"].size()) : 0;
  if (run.layers > 0) {
    run.experts = static_cast<int>(layer_field(l0, 0, "tokens_per_expert").size());
    run.ranks = static_cast<int>(layer_field(l0, 0, "rank_tokens").size());
    if (l0["layers"][0].contains("source_tokens_per_expert"))
      run.sources = static_cast<int>(l0["layers"][0]["source_tokens_per_expert"].size());
  }

  bool have_traffic = false;
  std::vector<json> traffic = read_jsonl(run.dir / "traffic.jsonl", &have_traffic);
  int64_t traffic_out_of_range = 0;
  for (auto& t : traffic) {
    if (!t.contains("bytes") || !t.contains("ranks")) continue;
    if (!in_range(t.value("step", int64_t{-1}))) {
      ++traffic_out_of_range;
      continue;
    }
    const int R = t["ranks"].get<int>();
    if (run.ranks == 0) run.ranks = R;
    if (R != run.ranks || t["bytes"].size() != static_cast<size_t>(R)) continue;
    run.traffic.push_back(std::move(t));
  }

  // ---- summary ----
  const int64_t configured =
      run.have_config ? (run.cfg.train.stop_at > 0 ? run.cfg.train.stop_at : run.cfg.train.steps)
                      : 0;
  const int64_t s_first = run.steps.front().value("step", int64_t{0});
  const int64_t s_last = run.steps.back().value("step", int64_t{0});
  std::printf("run %s: steps %lld-%lld", o.run_dir.c_str(), static_cast<long long>(s_first),
              static_cast<long long>(s_last));
  if (configured > 0) {
    std::printf(" of %lld", static_cast<long long>(configured));
    if (max_step < configured)
      std::printf(" (incomplete: the run stopped after step %lld)",
                  static_cast<long long>(max_step));
  }
  std::printf(" | %d MoE layers, %d experts, %d ranks\n", run.layers, run.experts, run.ranks);

  const size_t tail = std::max<size_t>(1, run.steps.size() / 10);
  auto tail_mean = [&](auto get) {
    double s = 0;
    int n = 0;
    for (size_t i = run.steps.size() - tail; i < run.steps.size(); ++i) {
      const double v = get(run.steps[i]);
      if (std::isfinite(v)) s += v, ++n;
    }
    return n ? s / n : NAN;
  };
  std::printf("loss: train %.4f -> %.4f (mean of the last %zu steps %.4f)",
              num(run.steps.front(), "loss"), num(run.steps.back(), "loss"), tail,
              tail_mean([](const json& r) { return num(r, "loss"); }));
  if (!run.evals.empty())
    std::printf(" | eval %.4f (step %lld) -> %.4f (step %lld)", num(run.evals.front(), "eval_loss"),
                static_cast<long long>(run.evals.front().value("step", int64_t{0})),
                num(run.evals.back(), "eval_loss"),
                static_cast<long long>(run.evals.back().value("step", int64_t{0})));
  std::printf("\n");
  std::vector<double> tps, st;
  for (const auto& r : run.steps) {
    tps.push_back(num(r, "tokens_per_s"));
    st.push_back(num(r, "step_time_s"));
  }
  std::printf("throughput: median %.0f tokens/s, median step %.3f s\n", median(tps), median(st));

  const double target_k = run.have_config ? run.cfg.moe.router.k : NAN;
  const double active = tail_mean([](const json& r) { return num(r, "active_experts"); });
  std::printf("sparsity: %.3f active experts per token (mean of the last %zu steps)", active, tail);
  if (std::isfinite(target_k))
    std::printf(" vs target k = %g (%+.1f%%)", target_k, 100 * (active - target_k) / target_k);
  std::printf("\n");

  // Imbalance: per layer mean over the reported steps of expert and rank max/mean.
  struct LayerLoad {
    int layer;
    double expert = 0, rank = 0, cv = 0;
  };
  std::vector<LayerLoad> ll(run.layers);
  std::vector<std::vector<double>> expert_tokens(run.layers, std::vector<double>(run.experts, 0.0));
  std::vector<std::vector<double>> rank_tokens(run.layers, std::vector<double>(run.ranks, 0.0));
  for (int l = 0; l < run.layers; ++l) {
    ll[l].layer = l;
    int n = 0;
    for (const auto& r : run.steps) {
      if (!r.contains("layers") || static_cast<int>(r["layers"].size()) <= l) continue;
      const json& lj = r["layers"][l];
      ll[l].expert += num(lj, "load_max_over_mean", 0);
      ll[l].rank += num(lj, "rank_max_over_mean", 0);
      ll[l].cv += num(lj, "load_cv", 0);
      ++n;
      const auto tpe = layer_field(r, l, "tokens_per_expert");
      for (int e = 0; e < run.experts && e < static_cast<int>(tpe.size()); ++e)
        expert_tokens[l][e] += tpe[e];
      const auto rt = layer_field(r, l, "rank_tokens");
      for (int k = 0; k < run.ranks && k < static_cast<int>(rt.size()); ++k)
        rank_tokens[l][k] += rt[k];
    }
    if (n) ll[l].expert /= n, ll[l].rank /= n, ll[l].cv /= n;
  }
  std::sort(ll.begin(), ll.end(),
            [](const LayerLoad& a, const LayerLoad& b) { return a.expert > b.expert; });
  std::printf(
      "most imbalanced layers (mean over steps of expert max/mean | cv | rank max/mean):\n");
  for (int i = 0; i < std::min<int>(o.top, static_cast<int>(ll.size())); ++i)
    std::printf("  layer %d: %.2f | %.2f | %.2f\n", ll[i].layer, ll[i].expert, ll[i].cv,
                ll[i].rank);
  struct Item {
    int layer, index;
    double over_mean, share;
  };
  std::vector<Item> ex, rk;
  for (int l = 0; l < run.layers; ++l) {
    const double te = std::accumulate(expert_tokens[l].begin(), expert_tokens[l].end(), 0.0);
    for (int e = 0; e < run.experts; ++e)
      if (te > 0)
        ex.push_back({l, e, expert_tokens[l][e] / (te / run.experts), expert_tokens[l][e] / te});
    const double tr = std::accumulate(rank_tokens[l].begin(), rank_tokens[l].end(), 0.0);
    for (int k = 0; k < run.ranks; ++k)
      if (tr > 0)
        rk.push_back({l, k, rank_tokens[l][k] / (tr / run.ranks), rank_tokens[l][k] / tr});
  }
  auto by_load = [](const Item& a, const Item& b) { return a.over_mean > b.over_mean; };
  std::sort(ex.begin(), ex.end(), by_load);
  std::sort(rk.begin(), rk.end(), by_load);
  std::printf("most loaded experts (tokens over the reported steps):");
  for (int i = 0; i < std::min<int>(o.top, static_cast<int>(ex.size())); ++i)
    std::printf("%s layer %d expert %d %.1f%% (%.2fx mean)", i ? "," : "", ex[i].layer, ex[i].index,
                100 * ex[i].share, ex[i].over_mean);
  std::printf("\nmost loaded ranks (rows received):");
  for (int i = 0; i < std::min<int>(o.top, static_cast<int>(rk.size())); ++i)
    std::printf("%s layer %d rank %d %.1f%% (%.2fx mean)", i ? "," : "", rk[i].layer, rk[i].index,
                100 * rk[i].share, rk[i].over_mean);
  std::printf("\n");
  std::string dead;
  for (int l = 0; l < run.layers; ++l)
    for (double e : layer_field(run.steps.back(), l, "dead_experts"))
      dead += (dead.empty() ? "" : ", ") + std::string("layer ") + std::to_string(l) + " expert " +
              fmt("%.0f", e);
  std::printf("dead experts at step %lld: %s\n", static_cast<long long>(s_last),
              dead.empty() ? "none" : dead.c_str());

  // All-to-all share over the profiled steps.
  double a2a = 0, step_time = 0;
  int profiled = 0;
  for (const auto& r : run.steps)
    if (r.contains("alltoall_time_s")) {
      a2a += num(r, "alltoall_time_s", 0);
      step_time += num(r, "step_time_s", 0);
      ++profiled;
    }
  if (!have_traffic) {
    note(
        "no traffic.jsonl: the run was not profiled (profile.every: 0 and no profile.steps); "
        "no traffic plot, no projection");
  } else if (run.traffic.empty()) {
    std::string why = traffic_out_of_range ? std::to_string(traffic_out_of_range) +
                                                 " records lie outside the reported steps"
                                           : "the file holds no records";
    if (run.have_config && run.cfg.profile.first > 0 && run.cfg.profile.first > max_step)
      why += "; profile.steps [" + std::to_string(run.cfg.profile.first) + ", " +
             std::to_string(run.cfg.profile.last) + "] lies outside the recorded steps 1-" +
             std::to_string(max_step);
    note("traffic.jsonl: nothing to report (" + why + ")");
  }
  if (profiled > 0)
    std::printf(
        "all-to-all: %.1f%% of the step over %d profiled steps (%.2f ms of %.2f ms per step)\n",
        100 * a2a / step_time, profiled, 1e3 * a2a / profiled, 1e3 * step_time / profiled);
  if (!run.traffic.empty()) {
    int64_t n = 0;
    const auto bytes = traffic_matrix(run.traffic, run.ranks, "bytes", &n);
    double total = 0, off = 0;
    for (int s = 0; s < run.ranks; ++s)
      for (int d = 0; d < run.ranks; ++d) {
        total += bytes[static_cast<size_t>(s) * run.ranks + d];
        if (s != d) off += bytes[static_cast<size_t>(s) * run.ranks + d];
      }
    std::vector<double> bw;
    for (const auto& t : run.traffic) bw.push_back(num(t, "bandwidth_GBps"));
    std::printf(
        "traffic: %s per step (%s to other ranks) over %lld profiled steps, %zu exchanges; "
        "median effective bandwidth %.3f GB/s per rank\n",
        human_bytes(total).c_str(), human_bytes(off).c_str(), static_cast<long long>(n),
        run.traffic.size(), median(bw));
  }
  if (o.network_gbps > 0 || o.gpus_per_node > 0) {
    if (!(o.network_gbps > 0 && o.gpus_per_node > 0)) {
      note("the projection needs both --network-gbps and --gpus-per-node");
    } else if (run.traffic.empty()) {
      note("no traffic records: nothing to project");
    } else {
      const Projection p =
          project(run.traffic, run.ranks, o.gpus_per_node, o.network_gbps, o.intra_node_GBps);
      std::printf(
          "projection: %d ranks on %d node(s) of %d, %.0f Gbit/s per node between nodes, "
          "%.0f GB/s per rank inside a node: inter-node %s, intra-node %s per step -> "
          "all-to-all %.3f ms per step",
          run.ranks, p.nodes, o.gpus_per_node, o.network_gbps, o.intra_node_GBps,
          human_bytes(p.inter_bytes).c_str(), human_bytes(p.intra_bytes).c_str(), 1e3 * p.seconds);
      if (profiled > 0) std::printf(" (measured here: %.3f ms)", 1e3 * a2a / profiled);
      std::printf("\n");
    }
  }

  // ---- plots ----
  const fs::path out = o.out_dir.empty() ? run.dir / "report" : fs::path(o.out_dir);
  fs::create_directories(out, ec);
  if (ec) {
    std::fprintf(stderr, "error: report: cannot create '%s': %s\n", out.string().c_str(),
                 ec.message().c_str());
    return 1;
  }
  std::vector<std::string> written;
  written.push_back(plot_loss(run, out));
  if (run.layers > 0) {
    written.push_back(plot_active(run, out, target_k));
    if (run.experts > 0) written.push_back(plot_expert_load(run, out));
    if (run.ranks > 0) written.push_back(plot_rank_load(run, out));
    if (run.sources > 0 && run.experts > 0) {
      std::vector<std::string> names;
      for (int s = 0; s < run.sources; ++s) {
        std::string n = "source " + std::to_string(s);
        if (run.have_config && s < static_cast<int>(run.cfg.data.sources.size()))
          n = fs::path(run.cfg.data.sources[s].path).filename().string();
        names.push_back(n.size() > 18 ? n.substr(0, 18) : n);
      }
      std::vector<std::vector<double>> shares;
      written.push_back(plot_sources(run, out, names, &shares));
    }
  }
  if (!run.traffic.empty()) written.push_back(plot_traffic(run, out));
  std::printf("plots:");
  for (const auto& w : written) std::printf(" %s", w.c_str());
  std::printf("\n");
  return 0;
}

void register_report_command(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<ReportOptions>();
  auto* r = app.add_subcommand("report", "summarise a run directory and write PNG plots");
  r->add_option("run_dir", o->run_dir, "the run directory (output.run_dir)")->required();
  r->add_option("--out", o->out_dir, "where to write the plots (default RUN_DIR/report)");
  r->add_option("--network-gbps", o->network_gbps,
                "project the all-to-all on nodes linked at this many Gbit/s per node")
      ->check(CLI::PositiveNumber);
  r->add_option("--gpus-per-node", o->gpus_per_node, "ranks per node for the projection")
      ->check(CLI::PositiveNumber);
  r->add_option("--intra-node-GBps", o->intra_node_GBps,
                "per-rank bandwidth inside a node for the projection (GB/s)")
      ->check(CLI::PositiveNumber);
  r->add_option("--steps", o->steps, "report only steps A:B");
  r->add_option("--top", o->top, "layers/experts/ranks to list")->check(CLI::PositiveNumber);
  r->callback([o, exit_code] {
    try {
      *exit_code = run_report(*o);
    } catch (const std::exception& e) {  // a plot that cannot be written, a corrupt record
      std::fprintf(stderr, "error: report: %s\n", e.what());
      *exit_code = 1;
    }
  });
}

}  // namespace dirmoe
