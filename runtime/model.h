// The LLaMA-MoE model: token embedding, L blocks of {RMSNorm -> GQA attention with RoPE ->
// residual -> RMSNorm -> MoE (experts sharded over the EP group) -> residual}, final RMSNorm, an
// untied LM head over the padded vocabulary and cross-entropy. Forward and backward for one
// micro-batch; activations are kept in buffers that only grow.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "experts/moe_layer.h"
#include "experts/placement.h"
#include "runtime/config.h"
#include "runtime/core/tensor.h"

namespace dirmoe {

struct MicroBatchResult {
  double ce_loss = 0;      // mean cross-entropy over the micro-batch's B*S targets
  double router_loss = 0;  // sum over MoE layers of the routers' weighted loss terms
};

// The initial value of the parameter `name` (n elements) from a counter-based normal stream keyed by
// (seed, name): the same whatever the sharding or the device. Norm weights are 1; attn.wo and the
// experts' w2 use init_std / sqrt(2 * layers), everything else init_std.
template <class T>
void init_parameter(const ModelConfig& m, const std::string& name, T* values, int64_t n,
                    uint64_t seed);

template <class T>
class Model {
 public:
  // ep_comm: this rank's expert-parallel group; the rank owns placement.local_experts(ep rank).
  Model(const Config& cfg, Communicator* ep_comm, const Placement& placement);
  ~Model();

  // Every parameter by init_parameter(seed).
  void init_weights(uint64_t seed);

  // tokens[B, S+1]: inputs tokens[:, :S], targets tokens[:, 1:]. When `backward`, accumulates
  // loss_scale * d(ce_loss + router_loss)/d(theta) into the parameter gradients. ctx.global_token0
  // is the global index of this micro-batch's first token; ctx.layer is set per layer.
  MicroBatchResult forward_backward(const int32_t* tokens, int64_t B, RouterContext ctx,
                                    double loss_scale, bool backward);

  std::vector<Parameter<T>*> parameters();  // replicated first, then expert parameters
  // Logits [B*S, padded vocab] of the last forward_backward with backward = false.
  const T* logits() const;
  int num_layers() const;
  const MoEStats& moe_stats(int layer) const;
  // The routing of layer `layer` in the last forward (token order: b * seq_len + s).
  const Routing<T>& routing(int layer) const;
  const Config& config() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dirmoe
