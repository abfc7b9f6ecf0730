// The ProbMoE router (Exact-k and Dynamic-k): p = sigmoid(l) over one linear d -> E; a k-subset S
// is drawn exactly from P(S) ~ prod_S p_i prod_notS (1 - p_j) (Dynamic-k first draws k in
// [k_min, k_max] with P(k) ~ Z_k); combine weights w = (stopgrad(z - mu) + mu) * softmax(l), mu the
// inclusion marginals. Optional Switch load-balancing loss and z-loss as in topk.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/routing/probmoe.h"
#include "router/router.h"
#include "router/subset.h"
#include "runtime/core/tensor.h"

namespace dirmoe {

template <class T>
class ProbMoERouter final : public Router<T> {
 public:
  ProbMoERouter(const RouterConfig& cfg, int64_t hidden, int num_experts,
                const std::string& prefix);

  std::string type() const override { return "probmoe"; }
  // Training draws subsets keyed by (seed, step, layer, global token, expert); evaluation takes
  // the k largest logits (Dynamic-k: k = clip(#{l_i > 0}, k_min, k_max)).
  void forward(const T* h, int64_t N, const RouterContext& ctx, Routing<T>& out) override;
  double loss() const override { return stats_.aux_loss + stats_.z_loss; }
  void backward(const T* dweights, double loss_scale, T* dh) override;
  std::vector<Parameter<T>*> parameters() override { return {&weight_}; }
  const RouterStats& stats() const override { return stats_; }

  Parameter<T>& weight() { return weight_; }
  // Inclusion marginals of the last forward, [N,E].
  const std::vector<double>& marginals() const { return mu_; }

 private:
  routing::ProbMoETokenParams<double> token_params(const RouterContext& ctx) const;

  RouterConfig cfg_;
  bool dynamic_;
  int64_t d_;
  int E_;
  int k_lo_, k_hi_;      // subset size range ([k, k] for exact)
  Parameter<T> weight_;  // [E,d]
  RouterStats stats_;
  SubsetDP dp_;

  // Saved by forward for backward (grow-only).
  int64_t N_ = 0;
  bool has_forward_ = false;
  Buffer<T> h_;                   // [N,d] copy of the input
  Buffer<T> logits_;              // [N,E]
  Buffer<T> dlogits_;             // [N,E] backward scratch
  std::vector<double> probs_;     // [N,E] softmax(l)
  std::vector<double> mu_;        // [N,E] inclusion marginals
  std::vector<double> lse_;       // [N] logsumexp of the logits
  std::vector<double> fraction_;  // [E] share of the assignments sent to each expert
  std::vector<double> prob_sum_;  // [E] sum over tokens of softmax(l)_i
  std::vector<int64_t> offsets_;  // [N+1] copy of the routing CSR
  std::vector<int32_t> experts_;  // [nnz]
  std::vector<double> row_;       // [E] scratch: logits in double
  std::vector<double> ds_;        // [E] scratch: dL/dsoftmax
  std::vector<double> c_;         // [E] scratch: coefficients on mu
  std::vector<double> hv_;        // [E] scratch: (dmu/dl) c
};

}  // namespace dirmoe
