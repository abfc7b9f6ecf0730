// The ReMoE router (ReLU routing, Wang, Zhu, Chen, ICLR 2025): R = ReLU(h W) over one linear
// d -> E, no softmax and no top-k; expert e runs for a token iff R_e > 0, with weight R_e, so a
// token may use any number of experts, none included. Its loss is the load-weighted L1 term
// lambda E sum_e mean_t(R_te) n_e / (N k) (n_e: tokens with R_e > 0, a constant); lambda comes
// from the trainer's controller through RouterContext::remoe_lambda (per-token math: kernels/routing/remoe.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "router/router.h"
#include "runtime/core/tensor.h"

namespace dirmoe {

template <class T>
class ReMoERouter final : public Router<T> {
 public:
  ReMoERouter(const RouterConfig& cfg, int64_t hidden, int num_experts, const std::string& prefix);

  std::string type() const override { return "remoe"; }
  // Deterministic (no noise): training and evaluation route alike.
  void forward(const T* h, int64_t N, const RouterContext& ctx, Routing<T>& out) override;
  double loss() const override { return l1_; }
  void backward(const T* dweights, double loss_scale, T* dh) override;
  std::vector<Parameter<T>*> parameters() override { return {&weight_}; }
  const RouterStats& stats() const override { return stats_; }

  Parameter<T>& weight() { return weight_; }
  // lambda of the last forward.
  double lambda() const { return lambda_; }

 private:
  RouterConfig cfg_;
  int64_t d_;
  int E_;
  Parameter<T> weight_;  // [E,d]
  RouterStats stats_;
  double l1_ = 0;
  double lambda_ = 0;

  // Saved by forward for backward (grow-only).
  int64_t N_ = 0;
  bool has_forward_ = false;
  Buffer<T> h_;                   // [N,d] copy of the input
  Buffer<T> logits_;              // [N,E]
  Buffer<T> dlogits_;             // [N,E] backward scratch
  std::vector<int64_t> count_;    // [E] n_e: tokens with R_e > 0
  std::vector<double> gate_sum_;  // [E] sum over tokens of R_e
  std::vector<double> coef_;      // [E] dL_reg/dR_te
  std::vector<double> dw_;        // [E] backward scratch: dL/dR of one token
  std::vector<int64_t> offsets_;  // [N+1] copy of the routing CSR
  std::vector<int32_t> experts_;  // [nnz]
};

}  // namespace dirmoe
