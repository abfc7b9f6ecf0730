// The training loop: micro-batches with gradient accumulation, the all-reduce of replicated
// gradients over the world and of expert gradients over the ranks holding the same experts,
// global-norm clipping, AdamW, warmup + cosine LR, periodic evaluation, metrics and console lines.
#pragma once

#include <string>
#include <vector>

#include "comm/bootstrap.h"
#include "runtime/config.h"

namespace dirmoe {

struct TrainSummary {
  int64_t steps_run = 0;
  double initial_eval_loss = 0;
  double final_eval_loss = 0;
  double final_train_loss = 0;
  double seconds = 0;
  std::vector<double> losses;  // per step, mean over the global batch
};

// Trains per `cfg` on the ranks of `mpi`. Rank 0 writes RUN_DIR/config.resolved.yaml and
// RUN_DIR/metrics.jsonl. Collective: every rank calls it.
TrainSummary train(const Config& cfg, MpiRuntime& mpi);

}  // namespace dirmoe
