// Subcommands other than `train`, kept apart from main() so tests can call them.
#pragma once

#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace dirmoe {

// `dirmoe config check`: resolved config, parameter counts, memory estimate per rank.
int run_config_check(const std::string& config, const std::vector<std::string>& sets, int world);

// `dirmoe data prepare|inspect`; sets *exit_code when one of them ran.
void register_data_commands(CLI::App& app, int* exit_code);

// `dirmoe topology`: each rank's place and a verified all-to-all with per-peer byte counts.
void register_topology_command(CLI::App& app, int* exit_code);
// `dirmoe export hf`; sets *exit_code when it ran.
void register_export_commands(CLI::App& app, int* exit_code);
// `dirmoe bench train` under `bench` (GPU builds; other builds get a command that says so).
void register_bench_train_command(CLI::App& bench, int* exit_code);
// `dirmoe bench a2a` under `bench` (GPU builds; other builds get a command that says so).
void register_bench_a2a_command(CLI::App& bench, int* exit_code);

}  // namespace dirmoe
