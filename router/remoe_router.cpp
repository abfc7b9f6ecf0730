// ReMoE router forward/backward: the logits GEMMs go through the CPU op set, the gates, the L1
// term and the per-token chain rule through the DIRMOE_HD functions of kernels/routing/remoe.h.
#include "router/remoe_router.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/ops.h"
#include "kernels/routing/remoe.h"
#include "runtime/core/error.h"

namespace dirmoe {

template <class T>
ReMoERouter<T>::ReMoERouter(const RouterConfig& cfg, int64_t hidden, int num_experts,
                            const std::string& prefix)
    : cfg_(cfg), d_(hidden), E_(num_experts) {
  validate_router_config(cfg, hidden, num_experts);
  DIRMOE_CHECK(cfg.type == "remoe", "ReMoERouter built for router type '", cfg.type, "'");
  weight_ = Parameter<T>(prefix + ".weight", Shape{num_experts, hidden});
  count_.assign(E_, 0);
  gate_sum_.assign(E_, 0.0);
  coef_.assign(E_, 0.0);
  dw_.assign(E_, 0.0);
}

template <class T>
void ReMoERouter<T>::forward(const T* h, int64_t N, const RouterContext& ctx, Routing<T>& out) {
  DIRMOE_CHECK(N >= 0, "router ", weight_.name, ": negative token count ", N);
  DIRMOE_CHECK(N == 0 || h != nullptr, "router ", weight_.name, ": null input for ", N, " tokens");
  const int E = E_, k = cfg_.k;
  lambda_ = remoe_lambda_of(ctx.remoe_lambda, cfg_.remoe.lambda_init);
  N_ = N;
  has_forward_ = true;
  h_.grow(N * d_);
  logits_.grow(N * E);
  std::copy(h, h + N * d_, h_.data());
  if (N > 0) cpu::linear_forward(logits_.data(), h, weight_.value.data(), N, d_, E);

  out.num_tokens = N;
  out.num_experts = E;
  out.offsets.assign(N + 1, 0);
  out.experts.resize(N * E);
  out.weights.resize(N * E);
  std::fill(count_.begin(), count_.end(), 0);
  std::fill(gate_sum_.begin(), gate_sum_.end(), 0.0);
  int64_t nnz = 0, none = 0;
  for (int64_t t = 0; t < N; ++t) {
    const T* l = logits_.data() + t * E;
    const int bad = remoe_first_nonfinite(l, E);
    DIRMOE_CHECK(bad < 0, "router ", weight_.name, ": non-finite logit at token ", t, " (global ",
                 ctx.global_token0 + t, "), expert ", bad);
    const int n = remoe_route_token(l, E, out.experts.data() + nnz, out.weights.data() + nnz);
    for (int j = 0; j < n; ++j) {
      const int32_t e = out.experts[nnz + j];
      ++count_[e];
      gate_sum_[e] += static_cast<double>(out.weights[nnz + j]);
    }
    none += n == 0;
    nnz += n;
    out.offsets[t + 1] = nnz;
  }
  out.experts.resize(nnz);
  out.weights.resize(nnz);
  offsets_ = out.offsets;
  experts_ = out.experts;
  for (int e = 0; e < E; ++e) coef_[e] = remoe_l1_coef(lambda_, E, k, count_[e], N);
  l1_ = remoe_l1(lambda_, E, k, gate_sum_.data(), count_.data(), N);
  const double l1_unweighted = remoe_l1(1.0, E, k, gate_sum_.data(), count_.data(), N);

  double gate_total = 0;
  for (int e = 0; e < E; ++e) gate_total += gate_sum_[e];
  const ReMoESummary sum = remoe_summary(nnz, none, gate_total, N, E);
  stats_.aux_loss = 0;
  stats_.z_loss = 0;
  stats_.mean_active = sum.mean_active;
  // NOTE: a micro-batch whose tokens all select no expert has nnz = 0: every figure stays finite
  // (sparsity 1, no_expert 1, L1 term 0) and the layer's MoE output is zero.
  stats_.scalars = {{"target_k", static_cast<double>(k)},
                    {"sparsity", sum.sparsity},
                    {"no_expert", sum.no_expert},
                    {"lambda", lambda_},
                    {"l1_reg", l1_},
                    {"l1_load", l1_unweighted},
                    {"gate_mean", sum.gate_mean}};
}

template <class T>
void ReMoERouter<T>::backward(const T* dweights, double loss_scale, T* dh) {
  DIRMOE_CHECK(has_forward_, "router ", weight_.name, ": backward called before forward");
  const int64_t N = N_;
  if (N == 0) return;
  DIRMOE_CHECK(dh != nullptr && (dweights != nullptr || experts_.empty()), "router ", weight_.name,
               ": null dweights or dh");
  const int E = E_;
  dlogits_.grow(N * E);
  for (int64_t t = 0; t < N; ++t) {
    std::fill(dw_.begin(), dw_.end(), 0.0);
    for (int64_t a = offsets_[t]; a < offsets_[t + 1]; ++a)
      dw_[experts_[a]] = static_cast<double>(dweights[a]);
    remoe_token_backward(logits_.data() + t * E, dw_.data(), coef_.data(), loss_scale, E,
                         dlogits_.data() + t * E);
  }
  cpu::linear_backward(dh, weight_.grad.data(), dlogits_.data(), h_.data(), weight_.value.data(), N,
                       d_, E, /*accumulate_dx=*/true);
}

template class ReMoERouter<float>;
template class ReMoERouter<double>;

}  // namespace dirmoe
