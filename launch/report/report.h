// `dirmoe report RUN_DIR`: a summary of a training run (loss, throughput, sparsity against target,
// load asymmetry, all-to-all share of the step, a multi-node projection of the recorded traffic)
// and PNG plots, from RUN_DIR/metrics.jsonl, traffic.jsonl and config.resolved.yaml.
#pragma once

#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace dirmoe {

struct ReportOptions {
  std::string run_dir;
  std::string out_dir;           // default RUN_DIR/report
  double network_gbps = 0;       // per-node inter-node bandwidth, Gbit/s per direction; 0 = none
  int gpus_per_node = 0;         // ranks per node for the projection
  double intra_node_GBps = 450;  // per-rank intra-node bandwidth, GB/s per direction
  std::string steps;             // "A:B" restricts the report to steps A..B
  int top = 3;                   // how many layers/experts/ranks to list
};

// Returns the exit code: 0 when a report was produced (possibly from a partial run directory, with
// a message saying what was skipped), 1 when nothing could be reported.
int run_report(const ReportOptions& opts);

// Registers `dirmoe report`; sets *exit_code when it ran.
void register_report_command(CLI::App& app, int* exit_code);

}  // namespace dirmoe
