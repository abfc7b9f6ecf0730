// `dirmoe config check`.
#include <cstdio>

#include "launch/commands.h"
#include "runtime/config.h"
#include "runtime/core/logging.h"
#include "runtime/data/dataset.h"

namespace dirmoe {
namespace {
std::string human(double n, const char* unit) {
  const char* prefixes[] = {"", "K", "M", "G", "T"};
  int i = 0;
  while (n >= 1000 && i < 4) {
    n /= 1000;
    ++i;
  }
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f %s%s", n, prefixes[i], unit);
  return buf;
}
std::string gib(int64_t bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f MiB", bytes / 1048576.0);
  return buf;
}
}  // namespace

int run_config_check(const std::string& path, const std::vector<std::string>& sets, int world) {
  Config cfg = load_config(path, sets);
  if (world <= 0) world = cfg.parallel.ep;
  validate_for_world(cfg, world);
  // The data may be prepared after the check, so a missing source is a warning, not an error.
  for (const auto& src : cfg.data.sources) {
    if (data::data_source_exists(src.path)) continue;
    log_warn("data.paths: ", src.path, " does not exist (neither ", src.path, ".idx + ", src.path,
             ".bin nor an llm.c shard file of that name, relative to the working directory); "
             "training fails unless it is created first");
  }
  std::printf("# resolved configuration (%s)\n%s", path.c_str(), to_yaml(cfg).c_str());
  ParamCounts p = count_params(cfg);
  MemoryEstimate m = estimate_memory(cfg);
  std::printf("\nparameters: total %s (%lld), active per token %s (%lld), experts %s\n",
              human(p.total, "").c_str(), static_cast<long long>(p.total),
              human(p.active, "").c_str(), static_cast<long long>(p.active),
              human(p.expert, "").c_str());
  std::printf("ranks: %d (ep %d, expert replicas %d); parameters per rank %s\n", world,
              cfg.parallel.ep, world / cfg.parallel.ep, human(p.per_rank, "").c_str());
  std::printf(
      "memory per rank (estimate, %s): weights %s, grads %s, AdamW %s, activations %s "
      "(micro-batch %lld x %lld) = %s\n",
      cfg.model.dtype.c_str(), gib(m.params).c_str(), gib(m.grads).c_str(),
      gib(m.optimizer).c_str(), gib(m.activations).c_str(),
      static_cast<long long>(cfg.train.micro_batch), static_cast<long long>(cfg.model.seq_len),
      gib(m.total()).c_str());
  return 0;
}

}  // namespace dirmoe
