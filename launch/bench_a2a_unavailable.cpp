// `dirmoe bench a2a` in a build without the CUDA path: the command and its options exist and it
// says why it cannot run, rather than being unknown.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <memory>

#include "launch/bench_a2a_host.h"
#include "launch/commands.h"

namespace dirmoe {

void register_bench_a2a_command(CLI::App& bench, int* exit_code) {
  auto opt = std::make_shared<BenchA2aOptions>();
  auto* cmd = bench.add_subcommand("a2a", "time the MoE token exchange on GPUs (CUDA builds only)");
  add_bench_a2a_options(*cmd, *opt);
  cmd->callback([exit_code]() {
    std::fprintf(stderr,
                 "error: this dirmoe was built without the CUDA path (DIRMOE_CUDA=OFF or no "
                 "CUDA compiler found): bench a2a needs it\n");
    *exit_code = 1;
  });
}

}  // namespace dirmoe
