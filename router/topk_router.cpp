// topk router forward/backward. The per-token softmax, top-k, loss terms and backward algebra are
// kernels/routing/topk.h's (in double whatever T is, the code the CUDA kernels run); the logits
// GEMMs go through the CPU op set.
#include "router/topk_router.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/ops.h"
#include "kernels/routing/topk.h"
#include "runtime/core/error.h"

namespace dirmoe {
template <class T>
TopKRouter<T>::TopKRouter(const RouterConfig& cfg, int64_t hidden, int num_experts,
                          const std::string& prefix)
    : cfg_(cfg), d_(hidden), E_(num_experts) {
  validate_router_config(cfg, hidden, num_experts);
  weight_ = Parameter<T>(prefix + ".weight", Shape{num_experts, hidden}, ParamKind::kReplicated);
  fraction_.assign(E_, 0.0);
  prob_sum_.assign(E_, 0.0);
  dp_.assign(E_, 0.0);
}

// NOTE: experts are ranked by logit (softmax is monotone), ties broken by the lower expert index;
// within a token the chosen experts are listed most probable first.
template <class T>
void TopKRouter<T>::forward(const T* h, int64_t N, const RouterContext& ctx, Routing<T>& out) {
  DIRMOE_CHECK(N >= 0, "router ", weight_.name, ": negative token count ", N);
  DIRMOE_CHECK(N == 0 || h != nullptr, "router ", weight_.name, ": null input for ", N, " tokens");
  const int k = cfg_.k;
  N_ = N;
  has_forward_ = true;
  h_.grow(N * d_);
  logits_.grow(N * E_);
  probs_.grow(N * E_);
  std::copy(h, h + N * d_, h_.data());
  if (N > 0) cpu::linear_forward(logits_.data(), h, weight_.value.data(), N, d_, E_);

  lse_.resize(N);
  out.num_tokens = N;
  out.num_experts = E_;
  out.offsets.resize(N + 1);
  out.experts.resize(N * k);
  out.weights.resize(N * k);
  std::fill(prob_sum_.begin(), prob_sum_.end(), 0.0);
  std::fill(fraction_.begin(), fraction_.end(), 0.0);
  double entropy = 0, top1 = 0, z = 0, undispatched = 0;

  for (int64_t t = 0; t < N; ++t) {
    const T* l = logits_.data() + t * E_;
    const routing::TopKToken<double> r = routing::topk_token_forward<double, T>(
        l, E_, k, cfg_.renormalize, probs_.data() + t * E_, prob_sum_.data(), &entropy,
        out.experts.data() + t * k, out.weights.data() + t * k);
    DIRMOE_CHECK(r.bad_expert < 0, "router ", weight_.name, ": non-finite logits at token ", t,
                 " (global ", ctx.global_token0 + t, "), expert ", r.bad_expert, ", layer ",
                 ctx.layer);
    lse_[t] = r.lse;
    z += r.lse * r.lse;
    top1 += r.pmax;
    undispatched += std::max(0.0, 1.0 - r.chosen);
    out.offsets[t] = t * k;
    for (int j = 0; j < k; ++j) fraction_[out.experts[t * k + j]] += 1.0;
  }
  out.offsets[N] = N * k;
  offsets_ = out.offsets;
  experts_ = out.experts;

  double aux = 0;
  if (N > 0) {
    const double assignments = static_cast<double>(N) * k;
    for (int i = 0; i < E_; ++i) {
      fraction_[i] /= assignments;
      aux += fraction_[i] * (prob_sum_[i] / static_cast<double>(N));
    }
  }
  stats_.aux_loss = cfg_.aux_loss_coef * E_ * aux;
  stats_.z_loss = N > 0 ? cfg_.z_loss_coef * z / static_cast<double>(N) : 0.0;
  stats_.mean_active = k;
  const double inv_n = N > 0 ? 1.0 / static_cast<double>(N) : 0.0;
  // undispatched_mass: probability outside the k chosen experts (before any renormalisation).
  stats_.scalars = {{"target_k", static_cast<double>(k)},
                    {"undispatched_mass", undispatched * inv_n},
                    {"entropy", entropy * inv_n},
                    {"top1_prob", top1 * inv_n}};
}

template <class T>
void TopKRouter<T>::backward(const T* dweights, double loss_scale, T* dh) {
  DIRMOE_CHECK(has_forward_, "router ", weight_.name, ": backward called before forward");
  const int64_t N = N_;
  if (N == 0) return;
  DIRMOE_CHECK(dweights != nullptr && dh != nullptr, "router ", weight_.name,
               ": null dweights or dh");
  dlogits_.grow(N * E_);
  // d(aux)/dp_ti = coef * E * f_i / N; d(z)/dl_ti = coef_z * 2 * lse_t * p_ti / N.
  const double aux_scale = loss_scale * cfg_.aux_loss_coef * E_ / static_cast<double>(N);
  const double z_scale = loss_scale * cfg_.z_loss_coef * 2.0 / static_cast<double>(N);
  for (int64_t t = 0; t < N; ++t) {
    const int64_t a0 = offsets_[t], a1 = offsets_[t + 1];
    routing::topk_token_backward<double, T, T>(
        probs_.data() + t * E_, E_, experts_.data() + a0, dweights + a0, static_cast<int>(a1 - a0),
        cfg_.renormalize, fraction_.data(), aux_scale, z_scale * lse_[t], dp_.data(),
        dlogits_.data() + t * E_);
  }
  cpu::linear_backward(dh, weight_.grad.data(), dlogits_.data(), h_.data(), weight_.value.data(), N,
                       d_, E_, /*accumulate_dx=*/true);
}

template class TopKRouter<float>;
template class TopKRouter<double>;

}  // namespace dirmoe
