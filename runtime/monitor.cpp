// Load-asymmetry monitor (see monitor.h).
#include "runtime/monitor.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "runtime/core/dtype.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"

namespace dirmoe {
namespace {

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

}  // namespace

LoadStats load_stats(const int64_t* counts, int n) {
  LoadStats s;
  if (n <= 0) return s;
  double total = 0, mx = -1;
  for (int i = 0; i < n; ++i) {
    total += static_cast<double>(counts[i]);
    if (counts[i] > mx) {
      mx = static_cast<double>(counts[i]);
      s.argmax = i;
    }
  }
  if (total <= 0) return s;
  const double mean = total / n;
  double var = 0, h = 0;
  for (int i = 0; i < n; ++i) {
    const double c = static_cast<double>(counts[i]);
    var += (c - mean) * (c - mean);
    if (c > 0) h -= (c / total) * std::log(c / total);
  }
  s.max_over_mean = mx / mean;
  s.cv = std::sqrt(var / n) / mean;
  s.entropy = n > 1 ? h / std::log(static_cast<double>(n)) : 1.0;
  return s;
}

LoadMonitor::LoadMonitor(const MonitorConfig& cfg, const Placement& placement, int num_layers,
                         int world_size, int rank, int num_sources)
    : cfg_(cfg),
      placement_(placement),
      L_(num_layers),
      E_(placement.num_experts()),
      W_(world_size),
      rank_(rank),
      num_sources_(std::max(1, num_sources)) {
  DIRMOE_CHECK(W_ % placement.ep_size() == 0, "monitor: world size ", W_,
               " is not a multiple of the EP size ", placement.ep_size());
  rank_off_ = static_cast<size_t>(L_) * W_;
  local_.assign(rank_off_ + static_cast<size_t>(L_) * num_sources_ * E_, 0);
  above_.assign(L_, 0);
  warned_.assign(L_, false);
  zero_run_.assign(L_, std::vector<int64_t>(E_, 0));
  empty_run_.assign(L_, 0);
}

void LoadMonitor::begin_step() { std::fill(local_.begin(), local_.end(), 0); }

void LoadMonitor::add_received(int layer, int64_t rows) {
  local_[static_cast<size_t>(layer) * W_ + rank_] += rows;
}

void LoadMonitor::reduce(Communicator& world) {
  world.all_reduce(local_.data(), static_cast<int64_t>(local_.size()), DType::kI64, ReduceOp::kSum);
}

std::string LoadMonitor::where_expert(int e) const {
  const int ep = placement_.ep_size(), owner = placement_.owner(e);
  std::string s = "rank " + std::to_string(owner);
  for (int g = 1; g < W_ / ep; ++g)
    s += (g == 1 ? " (replicas on rank " : ", ") + std::to_string(g * ep + owner);
  if (W_ / ep > 1) s += ")";
  return s;
}

std::string LoadMonitor::finish_step(int64_t step, const int64_t* counts, nlohmann::json& rec) {
  auto& layers = rec["layers"];
  DIRMOE_CHECK(layers.is_array() && static_cast<int>(layers.size()) == L_,
               "monitor: the metrics record has no per-layer entries");
  int worst = 0;
  double worst_ratio = -1, worst_rank_ratio = 0;
  int64_t dead_total = 0;
  std::string fragment;
  std::vector<int> empty_layers;
  for (int l = 0; l < L_; ++l) {
    const int64_t* tpe = counts + static_cast<size_t>(l) * E_;
    const int64_t* rank_rows = local_.data() + static_cast<size_t>(l) * W_;
    const LoadStats ex = load_stats(tpe, E_);
    int64_t routed = 0;
    for (int e = 0; e < E_; ++e) routed += tpe[e];
    // A router that may give a token no expert (remoe) can give none to every token of a layer:
    // the layer's MoE output is then zero (the loads above are 0, never 0/0).
    if (routed == 0) {
      empty_layers.push_back(l);
      if (empty_run_[l]++ == 0 && rank_ == 0)
        log_message(LogLevel::kWarn, false,
                    "monitor: step " + std::to_string(step) + ": layer " + std::to_string(l) +
                        ": no token of the global batch selected any expert; the layer's MoE "
                        "output is zero and its router gets no gradient from the loss");
    } else {
      if (empty_run_[l] > 0 && rank_ == 0)
        log_message(LogLevel::kInfo, false,
                    "monitor: step " + std::to_string(step) + ": layer " + std::to_string(l) +
                        " routes tokens again after " + std::to_string(empty_run_[l]) +
                        " step(s) without any");
      empty_run_[l] = 0;
    }
    const LoadStats rk = load_stats(rank_rows, W_);
    auto& lj = layers[l];
    lj["load_cv"] = ex.cv;
    lj["load_entropy"] = ex.entropy;
    lj["rank_tokens"] = std::vector<int64_t>(rank_rows, rank_rows + W_);
    lj["rank_max_over_mean"] = rk.max_over_mean;
    lj["rank_cv"] = rk.cv;
    std::vector<int> dead;
    for (int e = 0; e < E_; ++e) {
      int64_t& run = zero_run_[l][e];
      if (tpe[e] == 0) {
        ++run;
        if (run == cfg_.dead_window && rank_ == 0)
          log_message(LogLevel::kWarn, false,
                      "monitor: step " + std::to_string(step) + ": layer " + std::to_string(l) +
                          " expert " + std::to_string(e) + " on " + where_expert(e) +
                          " received no tokens for " + std::to_string(run) +
                          " steps (monitor.dead_window)");
      } else {
        if (run >= cfg_.dead_window && rank_ == 0)
          log_message(LogLevel::kInfo, false,
                      "monitor: step " + std::to_string(step) + ": layer " + std::to_string(l) +
                          " expert " + std::to_string(e) + " receives tokens again after " +
                          std::to_string(run) + " idle steps");
        run = 0;
      }
      if (run >= cfg_.dead_window) dead.push_back(e);
    }
    dead_total += static_cast<int64_t>(dead.size());
    lj["dead_experts"] = dead;
    nlohmann::json per_source = nlohmann::json::array();
    for (int s = 0; s < num_sources_; ++s) {
      const int64_t* sc =
          local_.data() + rank_off_ + (static_cast<size_t>(l) * num_sources_ + s) * E_;
      per_source.push_back(std::vector<int64_t>(sc, sc + E_));
    }
    lj["source_tokens_per_expert"] = per_source;

    if (ex.max_over_mean > worst_ratio) {
      worst_ratio = ex.max_over_mean;
      worst_rank_ratio = rk.max_over_mean;
      worst = l;
      fragment = "load max/mean " + fixed(ex.max_over_mean, 2) + " cv " + fixed(ex.cv, 2) +
                 " ranks " + fixed(rk.max_over_mean, 2) + " (layer " + std::to_string(l) + ")";
    }

    const bool over = cfg_.max_over_mean > 0 && (ex.max_over_mean > cfg_.max_over_mean ||
                                                 rk.max_over_mean > cfg_.max_over_mean);
    if (over) {
      if (++above_[l] >= cfg_.patience && !warned_[l]) {
        warned_[l] = true;
        if (rank_ == 0)
          log_message(LogLevel::kWarn, false,
                      "monitor: step " + std::to_string(step) + ": layer " + std::to_string(l) +
                          " load above monitor.max_over_mean = " + fixed(cfg_.max_over_mean, 2) +
                          " for " + std::to_string(above_[l]) + " steps: expert " +
                          std::to_string(ex.argmax) + " on " + where_expert(ex.argmax) + " has " +
                          fixed(ex.max_over_mean, 2) + "x the mean expert load, rank " +
                          std::to_string(rk.argmax) + " receives " + fixed(rk.max_over_mean, 2) +
                          "x the mean rank load");
      }
    } else {
      if (warned_[l] && rank_ == 0)
        log_message(LogLevel::kInfo, false,
                    "monitor: step " + std::to_string(step) + ": layer " + std::to_string(l) +
                        " load back under monitor.max_over_mean after " +
                        std::to_string(above_[l]) + " steps");
      above_[l] = 0;
      warned_[l] = false;
    }
  }
  rec["worst_layer"] = worst;
  rec["rank_max_over_mean"] = worst_rank_ratio;
  rec["dead_experts"] = dead_total;
  if (!empty_layers.empty()) rec["layers_without_tokens"] = empty_layers;
  return fragment;
}

}  // namespace dirmoe
