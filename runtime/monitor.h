// Load-asymmetry monitor: per MoE layer and step, from globally reduced counts, the expert and rank
// loads (max/mean, coefficient of variation), the entropy of the expert load, dead experts and the
// routing distribution of each data source of the blend; warnings (rank 0, once per episode) when
// a layer stays above `monitor.max_over_mean` for `monitor.patience` steps or an expert starves
// for `monitor.dead_window` steps.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "experts/placement.h"
#include "runtime/observe_config.h"

namespace dirmoe {

// Load statistics of one count vector.
struct LoadStats {
  double max_over_mean = 0;  // 0 when the total is 0
  double cv = 0;             // population standard deviation / mean
  double entropy = 0;        // of the normalised counts, divided by log(n) (1 = uniform); n > 1
  int argmax = 0;            // first index of the maximum
};
LoadStats load_stats(const int64_t* counts, int n);

class LoadMonitor {
 public:
  // world_size ranks in EP groups of placement.ep_size(); world rank r holds the experts of EP rank
  // r % ep (its EP group is r / ep).
  LoadMonitor(const MonitorConfig& cfg, const Placement& placement, int num_layers, int world_size,
              int rank, int num_sources);

  // Per step: begin_step(), then per micro-batch and layer the local observations, then
  // reduce() (collective over `world`), then finish_step() on every rank.
  void begin_step();
  // Rows this rank's experts processed in `layer` (one micro-batch).
  void add_received(int layer, int64_t rows);
  // Assignments of tokens from a sample of `source` to `expert` in `layer`.
  int64_t* source_counts(int layer, int source) {
    return local_.data() + rank_off_ + (static_cast<size_t>(layer) * num_sources_ + source) * E_;
  }
  void reduce(Communicator& world);
  // counts[l*E + e]: global tokens per expert of the step. Adds the monitor's fields to the
  // per-layer objects of rec["layers"] and to rec; warns on rank 0. Returns the console fragment
  // for the worst layer (by expert max/mean).
  std::string finish_step(int64_t step, const int64_t* counts, nlohmann::json& rec);

  // State of the last finish_step (tests).
  const std::vector<std::vector<int64_t>>& zero_run() const { return zero_run_; }

 private:
  std::string where_expert(int e) const;

  MonitorConfig cfg_;
  Placement placement_;
  int L_, E_, W_, rank_, num_sources_;
  size_t rank_off_;                             // start of the source counts in local_
  std::vector<int64_t> local_;                  // [L*W received rows | L*S*E source counts]
  std::vector<int64_t> above_;                  // [L] consecutive steps above the bound
  std::vector<bool> warned_;                    // [L] warning given in the current episode
  std::vector<std::vector<int64_t>> zero_run_;  // [L][E] consecutive steps with no tokens
  std::vector<int64_t> empty_run_;              // [L] consecutive steps with no routed token
};

}  // namespace dirmoe
