// The run configuration: YAML -> typed structs, validated once. Unknown keys (with their line),
// wrong types and out-of-range values are errors that name the key; `--set a.b=v` overrides go
// through the same schema, so a key that does not exist is refused too.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "experts/moe_layer.h"
#include "runtime/data/dataset.h"
#include "runtime/observe_config.h"

namespace dirmoe {

struct ModelConfig {
  int64_t vocab_size = 50257;
  int64_t vocab_multiple = 1024;  // the embedding and LM head are padded to a multiple of this
  int64_t hidden = 128;
  int layers = 4;
  int heads = 4;
  int kv_heads = 2;
  int64_t ffn_hidden = 256;  // per-expert SwiGLU width
  double rope_base = 10000.0;
  double init_std = 0.02;
  int64_t seq_len = 128;
  double norm_eps = 1e-5;
  std::string dtype = "f32";  // CPU arithmetic: f32 | f64

  int64_t padded_vocab() const { return (vocab_size + vocab_multiple - 1) / vocab_multiple * vocab_multiple; }
  int64_t head_dim() const { return hidden / heads; }
};

struct ParallelConfig {
  int ep = 1;                                // expert-parallel group size
  std::vector<std::vector<int>> placement;   // experts.placement: explicit lists per EP rank
};

struct TrainConfig {
  int64_t micro_batch = 4;  // sequences per rank per micro-batch
  int grad_accum = 1;
  int64_t steps = 100;
  double lr = 3e-3;
  int64_t warmup = 10;
  double min_lr = 3e-4;
  double weight_decay = 0.1;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double clip = 1.0;  // 0 = no clipping
  uint64_t seed = 1234;
  int64_t eval_interval = 50;  // 0 = only at the start and the end
  int64_t eval_batches = 4;    // micro-batches per rank per evaluation
  int64_t log_interval = 10;
  int64_t stop_at = 0;  // 0 = run to `steps`; else end after this step with a checkpoint
  int max_nonfinite_steps = 5;  // abort after this many non-finite steps in a row (each skipped)
  double watchdog_s = 600;      // end the job when a step makes no progress this long (0 = off)
};

struct CheckpointConfig {
  int64_t interval = 0;   // every N steps (0 = only at the end, at stop_at and on SIGTERM/SIGUSR1)
  int keep = 3;           // newest K kept
  bool at_end = true;     // also after the last step
  std::string dir;        // default RUN_DIR/checkpoints
  std::string resume;     // "" | auto | a step_<N> directory (dirmoe train --resume)
};

struct OutputConfig {
  std::string run_dir = "runs/default";
  bool tensorboard = true;  // RUN_DIR/events.out.tfevents.* beside metrics.jsonl (rank 0)
};

struct Config {
  ModelConfig model;
  MoEConfig moe;
  ParallelConfig parallel;
  TrainConfig train;
  data::DataConfig data;
  OutputConfig output;
  CheckpointConfig checkpoint;
  MonitorConfig monitor;
  ProfileConfig profile;
  std::string device = "cpu";  // cpu | auto (CUDA comes with the GPU backend)
  std::string source;          // file it was loaded from
};

// Loads `path`, applies the `key=value` overrides in order, validates. Errors name file, key, line.
Config load_config(const std::string& path, const std::vector<std::string>& overrides = {});
// Parses YAML text (for tests); `origin` names it in messages.
Config parse_config(const std::string& yaml_text, const std::vector<std::string>& overrides,
                    const std::string& origin);
// Checks that depend on the launch: world size divisible by ep, placement sized to ep.
void validate_for_world(const Config& cfg, int world_size);
// The resolved configuration as YAML (every key, defaults included).
std::string to_yaml(const Config& cfg);

struct ParamCounts {
  int64_t total = 0;       // every parameter (padded vocabulary rows included)
  int64_t active = 0;      // per token: non-expert params + k experts per MoE layer
  int64_t expert = 0;      // all expert parameters
  int64_t per_rank = 0;    // held by one rank: replicated + its local experts (max over ranks)
};
ParamCounts count_params(const Config& cfg);
// Bytes per rank: weights, gradients, AdamW moments, and an activation estimate for one micro-batch.
struct MemoryEstimate {
  int64_t params = 0, grads = 0, optimizer = 0, activations = 0;
  int64_t total() const { return params + grads + optimizer + activations; }
};
MemoryEstimate estimate_memory(const Config& cfg);

}  // namespace dirmoe
