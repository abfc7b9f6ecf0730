// The `dirmoe` executable: CLI11 subcommands. Every error is caught here; under MPI with more
// than one rank it ends the whole job with MPI_Abort so no rank is left waiting in a collective.
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "comm/bootstrap.h"
#include "launch/commands.h"
#include "launch/report/report.h"
#include "runtime/config.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/trainer.h"

namespace {

int cmd_train(const std::string& config, const std::vector<std::string>& sets,
              const std::string& run_dir, int* argc, char*** argv) {
  dirmoe::MpiRuntime mpi(argc, argv);
  try {
    std::vector<std::string> all = sets;
    if (!run_dir.empty()) all.push_back("output.run_dir=" + run_dir);
    dirmoe::Config cfg = dirmoe::load_config(config, all);
    DIRMOE_CHECK(cfg.device != "cuda" && cfg.model.dtype != "bf16",
                 "dirmoe train runs on the CPU (device: cpu or auto, model.dtype f32 or f64); ",
                 "the GPU model is measured by `dirmoe bench train`");
    dirmoe::train(cfg, mpi);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    if (mpi.topology().world_size > 1) dirmoe::abort_job(1);
    return 1;
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    dirmoe::validate_debug_env();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  CLI::App app{"dirmoe: Mixture-of-Experts training with expert parallelism"};
  app.require_subcommand(1);
  int exit_code = 0;

  std::string config, run_dir;
  std::vector<std::string> sets;
  auto* train = app.add_subcommand("train", "train a model described by a YAML config");
  train->add_option("--config", config, "YAML configuration file")->required();
  train->add_option("--set", sets, "override a key: --set train.steps=10 (repeatable)");
  train->add_option("--run-dir", run_dir, "run directory (overrides output.run_dir)");
  std::string resume;
  train->add_option("--resume", resume,
                    "continue from a checkpoint: auto (the newest valid one under checkpoint.dir) "
                    "or a step_<N> directory");

  auto* cfg_cmd = app.add_subcommand("config", "configuration tools");
  cfg_cmd->require_subcommand(1);
  auto* check = cfg_cmd->add_subcommand(
      "check", "print the resolved config, parameter counts and memory per rank");
  int world = 0;
  check->add_option("--config", config, "YAML configuration file")->required();
  check->add_option("--set", sets, "override a key (repeatable)");
  check->add_option("--world", world, "number of ranks to check against (default: parallel.ep)");

  dirmoe::register_data_commands(app, &exit_code);
  dirmoe::register_topology_command(app, &exit_code);
  dirmoe::register_export_commands(app, &exit_code);
  dirmoe::register_report_command(app, &exit_code);
  auto* bench = app.add_subcommand("bench", "benchmarks of the GPU path");
  bench->require_subcommand(1);
  dirmoe::register_bench_train_command(*bench, &exit_code);
  dirmoe::register_bench_a2a_command(*bench, &exit_code);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (!resume.empty()) sets.push_back("checkpoint.resume=" + resume);
  if (train->parsed()) return cmd_train(config, sets, run_dir, &argc, &argv);
  if (check->parsed()) {
    try {
      return dirmoe::run_config_check(config, sets, world);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      return 1;
    }
  }
  return exit_code;
}
