// `dirmoe bench train` in a build without the CUDA path: the command exists and says why it
// cannot run, rather than being unknown.
#include <CLI/CLI.hpp>
#include <cstdio>

#include "launch/commands.h"

namespace dirmoe {

void register_bench_train_command(CLI::App& bench, int* exit_code) {
  auto* cmd = bench.add_subcommand("train", "time the training step on the GPU (CUDA builds only)");
  cmd->allow_extras();
  cmd->callback([exit_code]() {
    std::fprintf(stderr, "error: this dirmoe was built without the CUDA path (DIRMOE_CUDA=OFF or no "
                         "CUDA compiler found): bench train needs it\n");
    *exit_code = 1;
  });
}

}  // namespace dirmoe
