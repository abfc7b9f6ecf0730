// The topk router (Switch/Megatron baseline, DESIGN.md section 4): softmax over one linear d -> E,
// the k most probable experts per token, Switch load-balancing loss and optional z-loss.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "router/router.h"
#include "runtime/core/tensor.h"

namespace dirmoe {

template <class T>
class TopKRouter final : public Router<T> {
 public:
  TopKRouter(const RouterConfig& cfg, int64_t hidden, int num_experts, const std::string& prefix);

  std::string type() const override { return "topk"; }
  void forward(const T* h, int64_t N, const RouterContext& ctx, Routing<T>& out) override;
  double loss() const override { return stats_.aux_loss + stats_.z_loss; }
  void backward(const T* dweights, double loss_scale, T* dh) override;
  std::vector<Parameter<T>*> parameters() override { return {&weight_}; }
  const RouterStats& stats() const override { return stats_; }

  Parameter<T>& weight() { return weight_; }
  // Softmax probabilities of the last forward, [N,E].
  const T* probs() const { return probs_.data(); }

 private:
  RouterConfig cfg_;
  int64_t d_;
  int E_;
  Parameter<T> weight_;  // [E,d]
  RouterStats stats_;

  // Saved by forward for backward (grow-only).
  int64_t N_ = 0;
  bool has_forward_ = false;
  Buffer<T> h_;                   // [N,d] copy of the input
  Buffer<T> logits_;              // [N,E]
  Buffer<T> probs_;               // [N,E]
  Buffer<T> dlogits_;             // [N,E] backward scratch
  std::vector<double> lse_;       // [N] logsumexp of the logits
  std::vector<double> fraction_;  // [E] f_i: share of the N*k assignments sent to i
  std::vector<double> prob_sum_;  // [E] sum over tokens of p_i
  std::vector<int64_t> offsets_;  // [N+1] copy of the routing CSR
  std::vector<int32_t> experts_;  // [nnz]
  std::vector<double> dp_;        // [E] backward scratch
};

}  // namespace dirmoe
