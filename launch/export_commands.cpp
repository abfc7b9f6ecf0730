// `dirmoe export hf --checkpoint DIR --out DIR`: a checkpoint as a Hugging Face Mixtral model.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <memory>
#include <string>

#include "launch/commands.h"
#include "runtime/hf_export.h"

namespace dirmoe {

void register_export_commands(CLI::App& app, int* exit_code) {
  auto* exp = app.add_subcommand("export", "convert checkpoints to other formats");
  exp->require_subcommand(1);
  auto* hf = exp->add_subcommand(
      "hf",
      "write a topk-router checkpoint as a Hugging Face Mixtral model (config.json, "
      "safetensors shards, model.safetensors.index.json)");
  struct Opts {
    std::string checkpoint, out;
    double max_shard_gb = 2.0;
  };
  auto o = std::make_shared<Opts>();
  hf->add_option("--checkpoint", o->checkpoint,
                 "a step_<N> checkpoint directory, or a checkpoint directory (its newest)")
      ->required();
  hf->add_option("--out", o->out,
                 "output directory: new, empty, or an earlier export (replaced entirely)")
      ->required();
  hf->add_option("--max-shard-size", o->max_shard_gb, "largest shard in GB (default 2)")
      ->check(CLI::PositiveNumber);
  hf->callback([o, exit_code] {
    try {
      auto s =
          export_hf_mixtral(o->checkpoint, o->out, static_cast<int64_t>(o->max_shard_gb * 1e9));
      std::printf("exported step %lld: %d tensors, %.1f MB in %d shard(s) to %s%s\n",
                  static_cast<long long>(s.step), s.num_tensors, s.total_bytes / 1e6, s.num_shards,
                  o->out.c_str(), s.replaced ? " (replacing the earlier export there)" : "");
      *exit_code = 0;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: %s\n", e.what());
      *exit_code = 1;
    }
  });
}

}  // namespace dirmoe
