// ProbMoE router forward/backward. Per token: softmax, the subset DP (normaliser, marginals,
// sampling) and, in backward, the marginals' Hessian-vector product for the mu path of the
// straight-through weights: kernels/routing/probmoe.h's per-token code in double (the code the CUDA
// kernels run). The logits GEMMs go through the CPU op set.
#include "router/probmoe_router.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/ops.h"
#include "kernels/routing/probmoe.h"
#include "router/noise.h"
#include "runtime/core/error.h"

namespace dirmoe {
template <class T>
ProbMoERouter<T>::ProbMoERouter(const RouterConfig& cfg, int64_t hidden, int num_experts,
                                const std::string& prefix)
    : cfg_(cfg),
      dynamic_(cfg.probmoe.mode == "dynamic"),
      d_(hidden),
      E_(num_experts),
      k_lo_(dynamic_ ? cfg.probmoe.k_min : cfg.k),
      k_hi_(dynamic_ ? cfg.probmoe.k_max : cfg.k),
      dp_(num_experts, std::min(num_experts, dynamic_ ? cfg.probmoe.k_max : cfg.k)) {
  validate_router_config(cfg, hidden, num_experts);
  DIRMOE_CHECK(cfg.type == "probmoe", "ProbMoERouter built for router type '", cfg.type, "'");
  weight_ = Parameter<T>(prefix + ".weight", Shape{num_experts, hidden});
  fraction_.assign(E_, 0.0);
  prob_sum_.assign(E_, 0.0);
  row_.resize(E_);
  ds_.resize(E_);
  c_.resize(E_);
  hv_.resize(E_);
}

template <class T>
routing::ProbMoETokenParams<double> ProbMoERouter<T>::token_params(const RouterContext& ctx) const {
  routing::ProbMoETokenParams<double> p;
  p.E = E_;
  p.k_lo = k_lo_;
  p.k_hi = k_hi_;
  p.dynamic = dynamic_;
  p.training = ctx.training;
  p.subset_noise = RouterNoise(ctx, NoisePurpose::kSubset).key();
  p.size_noise = RouterNoise(ctx, NoisePurpose::kSubsetSize).key();
  return p;
}

// NOTE: within a token the chosen experts are listed by decreasing weight (ties: lower index).
template <class T>
void ProbMoERouter<T>::forward(const T* h, int64_t N, const RouterContext& ctx, Routing<T>& out) {
  DIRMOE_CHECK(N >= 0, "router ", weight_.name, ": negative token count ", N);
  DIRMOE_CHECK(N == 0 || h != nullptr, "router ", weight_.name, ": null input for ", N, " tokens");
  const int E = E_;
  N_ = N;
  has_forward_ = true;
  h_.grow(N * d_);
  logits_.grow(N * E);
  grow_vector(probs_, N * E);
  grow_vector(mu_, N * E);
  grow_vector(lse_, N);
  std::copy(h, h + N * d_, h_.data());
  if (N > 0) cpu::linear_forward(logits_.data(), h, weight_.value.data(), N, d_, E);

  const routing::ProbMoETokenParams<double> params = token_params(ctx);
  routing::SubsetView<double> dp = dp_.view();
  dp.l = row_.data();
  out.num_tokens = N;
  out.num_experts = E;
  out.offsets.assign(N + 1, 0);
  out.experts.resize(N * k_hi_);
  out.weights.resize(N * k_hi_);
  std::fill(fraction_.begin(), fraction_.end(), 0.0);
  std::fill(prob_sum_.begin(), prob_sum_.end(), 0.0);
  double z2 = 0, undispatched = 0, expected_k = 0, entropy = 0;
  int64_t near_binary = 0, assigned = 0;

  for (int64_t t = 0; t < N; ++t) {
    const routing::ProbMoEToken<double> r = routing::probmoe_token_forward<double, T>(
        params, logits_.data() + t * E, t, row_.data(), dp, probs_.data() + t * E,
        mu_.data() + t * E, out.experts.data() + assigned, out.weights.data() + assigned,
        prob_sum_.data(), &entropy, &expected_k);
    DIRMOE_CHECK(r.bad_expert < 0, "router ", weight_.name, ": non-finite logits at token ", t,
                 " (global ", ctx.global_token0 + t, "), expert ", r.bad_expert, ", layer ",
                 ctx.layer);
    lse_[t] = r.lse;
    z2 += r.lse * r.lse;
    near_binary += r.near_binary;
    for (int j = 0; j < r.num_dispatched; ++j) fraction_[out.experts[assigned + j]] += 1.0;
    undispatched += std::max(0.0, 1.0 - r.kept);
    assigned += r.num_dispatched;
    out.offsets[t + 1] = assigned;
  }
  out.experts.resize(assigned);
  out.weights.resize(assigned);
  offsets_ = out.offsets;
  experts_ = out.experts;

  const int64_t nnz = out.nnz();
  double aux = 0;
  int dead = 0;
  for (int i = 0; i < E; ++i) {
    dead += fraction_[i] == 0;
    if (nnz > 0) fraction_[i] /= static_cast<double>(nnz);
    if (N > 0) aux += fraction_[i] * prob_sum_[i] / static_cast<double>(N);
  }
  const double inv_n = N > 0 ? 1.0 / static_cast<double>(N) : 0.0;
  stats_.aux_loss = cfg_.aux_loss_coef * E * aux;
  stats_.z_loss = cfg_.z_loss_coef * z2 * inv_n;
  stats_.mean_active = static_cast<double>(nnz) * inv_n;
  stats_.scalars = {{"target_k", static_cast<double>(cfg_.k)},
                    {"expected_k", expected_k * inv_n},
                    {"undispatched_mass", undispatched * inv_n},
                    {"gate_entropy", entropy * inv_n / E},
                    {"near_binary", static_cast<double>(near_binary) * inv_n / E},
                    {"dead_experts", static_cast<double>(dead)}};
}

// w_i = (stopgrad(z_i - mu_i) + mu_i) s_i for the chosen i, s = softmax(l):
// dL/dl = softmax backward of (z_i dw_i + aux) + (dmu/dl) c with c_i = dw_i s_i.
template <class T>
void ProbMoERouter<T>::backward(const T* dweights, double loss_scale, T* dh) {
  DIRMOE_CHECK(has_forward_, "router ", weight_.name, ": backward called before forward");
  const int64_t N = N_;
  if (N == 0) return;
  DIRMOE_CHECK(dweights != nullptr && dh != nullptr, "router ", weight_.name,
               ": null dweights or dh");
  const int E = E_;
  dlogits_.grow(N * E);
  const double aux_scale = loss_scale * cfg_.aux_loss_coef * E / static_cast<double>(N);
  const double z_scale = loss_scale * cfg_.z_loss_coef * 2.0 / static_cast<double>(N);
  const routing::ProbMoETokenParams<double> params = token_params(RouterContext{});
  routing::SubsetView<double> dp = dp_.view();
  dp.l = row_.data();
  for (int64_t t = 0; t < N; ++t) {
    const int64_t a0 = offsets_[t], a1 = offsets_[t + 1];
    routing::probmoe_token_backward<double, T, T>(
        params, logits_.data() + t * E, probs_.data() + t * E, lse_[t], experts_.data() + a0,
        dweights + a0, static_cast<int>(a1 - a0), fraction_.data(), aux_scale, z_scale, row_.data(),
        dp, ds_.data(), c_.data(), hv_.data(), mu_.data() + t * E, dlogits_.data() + t * E);
  }
  cpu::linear_backward(dh, weight_.grad.data(), dlogits_.data(), h_.data(), weight_.value.data(), N,
                       d_, E, /*accumulate_dx=*/true);
}

template class ProbMoERouter<float>;
template class ProbMoERouter<double>;

}  // namespace dirmoe
