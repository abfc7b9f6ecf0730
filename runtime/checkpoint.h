// Checkpoints: RUN_DIR/checkpoints/step_<N>/ holds replicated.safetensors (every replicated
// parameter with its AdamW moments, written once by rank 0), experts-ep<r>.safetensors (EP rank r
// of the first expert replica: its experts under their GLOBAL names, with moments),
// trainer_state.json (step, data cursor, seed, schedule values, config hash, which file holds which
// expert) and manifest.json (file sizes and CRC-32s, written last). A checkpoint is written into
// step_<N>.tmp/, every file fsynced, renamed, the parent fsynced, then the `latest` pointer
// replaced; the newest `keep` are kept. Loading re-shards: each rank reads the experts it owns now
// from whichever file holds them, so the EP size may differ from the one that wrote the checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "runtime/config.h"
#include "runtime/core/tensor.h"

namespace dirmoe {

// The training state around the tensors. Everything else (LR, data order, router noise) is a pure
// function of the global step, the seed and the configuration.
struct TrainerState {
  int64_t step = 0;          // optimizer steps completed
  int64_t next_sample = 0;   // data cursor: first training sample of the next step
  int64_t global_batch = 0;  // sequences per step: micro_batch * grad_accum * world
  uint64_t seed = 0;         // Philox key; the counters are (step, layer, global token, expert)
  double lr = 0;             // learning rate of the last step
  int consecutive_nonfinite = 0;
  // ReMoE: the controller's lambda for the next step (an fp32 value); -1 for other routers.
  double remoe_lambda = -1;
};

// The directory checkpoints go to: checkpoint.dir, default RUN_DIR/checkpoints.
std::string checkpoint_root(const Config& cfg);
// step_<N> directories under root that have a manifest, newest first (the `latest` target first
// when it is valid).
std::vector<std::string> list_checkpoints(const std::string& root);
// Flattened resolved configuration ("model.hidden" -> "128"), the basis of the config hash.
std::string config_hash(const Config& cfg);

template <class T>
class Checkpointer {
 public:
  // params: the model's parameters on this rank; m, v: their AdamW moments (same order).
  // ep_comm: this rank's EP group; replica: index of this rank's expert replica (0 writes experts).
  Checkpointer(const Config& cfg, Communicator& world, Communicator& ep_comm, int replica,
               std::vector<Parameter<T>*> params, std::vector<Buffer<T>*> m,
               std::vector<Buffer<T>*> v);

  // Collective. Writes step_<state.step>; returns its path. On any rank's failure (unwritable or
  // full directory) the partial step_<N>.tmp is removed, the previous checkpoint is left as it was,
  // and every rank throws an error that says so.
  std::string save(const TrainerState& state);

  // Collective. Loads `dir` (a step_<N> directory) into the parameters and moments and returns its
  // state; refuses a corrupted or truncated file, a wrong shape or dtype and a different model
  // (naming the file and the tensor or key) on every rank.
  TrainerState load(const std::string& dir);

  // Collective. `spec` = "auto": the newest checkpoint under checkpoint_root() that loads, falling
  // back to older ones with a warning for each one refused; none -> returns false (fresh start).
  // Otherwise `spec` is a step_<N> directory or a checkpoint root; a refusal is an error.
  bool resume(const std::string& spec, TrainerState* state, std::string* loaded_from);

 private:
  void write_own_files(const std::string& tmp, const TrainerState& state);
  TrainerState load_local(const std::string& dir);

  const Config& cfg_;
  Communicator& world_;
  Communicator& ep_comm_;
  int replica_;
  std::vector<Parameter<T>*> params_;
  std::vector<Buffer<T>*> m_, v_;
};

}  // namespace dirmoe
