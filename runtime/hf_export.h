// `dirmoe export hf`: a checkpoint of a topk-router model as a Hugging Face Mixtral checkpoint
// (config.json, model-0000i-of-0000n.safetensors shards, model.safetensors.index.json) that
// transformers' MixtralForCausalLM loads. Mixtral renormalises its top-k weights and never drops
// tokens, so only topk with moe.router.renormalize: true and a dropless MoE can be exported; any
// other router is refused rather than exported wrongly.
#pragma once

#include <cstdint>
#include <string>

#include "runtime/config.h"

namespace dirmoe {

struct HfExportSummary {
  int num_shards = 0;
  int num_tensors = 0;
  int64_t total_bytes = 0;
  int64_t step = 0;
  bool replaced = false;  // an earlier export in out_dir was replaced
};

// Throws (naming the key) when the model cannot be expressed as Mixtral.
void check_mixtral_compatible(const Config& cfg);

// checkpoint_dir: a step_<N> directory (or a checkpoint root: its newest checkpoint). Tensors are
// written as F32; shards hold at most max_shard_bytes (at least one tensor each). out_dir must be
// absent, empty, or an earlier dirmoe export (replaced entirely, stale shards included); any other
// directory, a file, or an unwritable location is refused before anything is written. The files
// are written into out_dir.tmp/ (beside it) and moved into place when complete.
HfExportSummary export_hf_mixtral(const std::string& checkpoint_dir, const std::string& out_dir,
                                  int64_t max_shard_bytes = int64_t{2} << 30);

}  // namespace dirmoe
