// ProbMoE router forward/backward. Per token: softmax, the subset DP (normaliser, marginals,
// sampling) and, in backward, the marginals' Hessian-vector product for the mu path of the
// straight-through weights; all in double. The logits GEMMs go through the CPU op set.
#include "router/probmoe_router.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/cpu/ops.h"
#include "router/noise.h"
#include "runtime/core/error.h"

namespace dirmoe {
namespace {

double binary_entropy(double p) {
  double h = 0;
  if (p > 0) h -= p * std::log(p);
  if (p < 1) h -= (1 - p) * std::log1p(-p);
  return h;
}

}  // namespace

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
  chosen_.resize(E_);
  row_.resize(E_);
  ds_.resize(E_);
  c_.resize(E_);
  hv_.resize(E_);
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

  const RouterNoise subset_noise(ctx, NoisePurpose::kSubset);
  const RouterNoise size_noise(ctx, NoisePurpose::kSubsetSize);
  out.num_tokens = N;
  out.num_experts = E;
  out.offsets.assign(N + 1, 0);
  out.experts.clear();
  out.weights.clear();
  std::fill(fraction_.begin(), fraction_.end(), 0.0);
  std::fill(prob_sum_.begin(), prob_sum_.end(), 0.0);
  double z2 = 0, undispatched = 0, expected_k = 0, entropy = 0;
  int64_t near_binary = 0;

  for (int64_t t = 0; t < N; ++t) {
    const T* lt = logits_.data() + t * E;
    double* l = row_.data();
    double* s = probs_.data() + t * E;
    double mx = -INFINITY;
    for (int i = 0; i < E; ++i) {
      l[i] = static_cast<double>(lt[i]);
      mx = std::max(mx, l[i]);
    }
    double acc = 0;
    for (int i = 0; i < E; ++i) acc += std::exp(l[i] - mx);
    const double lse = mx + std::log(acc);
    DIRMOE_CHECK(std::isfinite(lse), "router ", weight_.name, ": non-finite logits at token ", t,
                 " (global ", ctx.global_token0 + t, ")");
    lse_[t] = lse;
    z2 += lse * lse;
    for (int i = 0; i < E; ++i) {
      s[i] = std::exp(l[i] - lse);
      prob_sum_[i] += s[i];
      const double p = 1.0 / (1.0 + std::exp(-l[i]));
      entropy += binary_entropy(p);
      near_binary += (p < 0.05 || p > 0.95);
    }
    dp_.build(l, k_lo_, k_hi_);
    dp_.marginals(mu_.data() + t * E);
    for (int k = k_lo_; k <= k_hi_; ++k) expected_k += k * dp_.size_prob(k);

    int n;
    if (ctx.training) {
      const int k = dynamic_ ? dp_.sample_size(size_noise.uniform(t, 0)) : k_lo_;
      n = dp_.sample(
          k, [&](int i) { return subset_noise.uniform(t, i); }, chosen_.data());
    } else {
      int k = k_lo_;
      if (dynamic_) {
        int positive = 0;
        for (int i = 0; i < E; ++i) positive += l[i] > 0;
        k = std::clamp(positive, k_lo_, k_hi_);
      }
      std::iota(chosen_.begin(), chosen_.end(), 0);
      std::partial_sort(chosen_.begin(), chosen_.begin() + k, chosen_.end(),
                        [l](int a, int b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
      n = k;
    }
    std::sort(chosen_.begin(), chosen_.begin() + n,
              [s](int a, int b) { return s[a] > s[b] || (s[a] == s[b] && a < b); });
    double kept = 0;
    for (int j = 0; j < n; ++j) {
      const int32_t e = chosen_[j];
      out.experts.push_back(e);
      out.weights.push_back(static_cast<T>(s[e]));
      fraction_[e] += 1.0;
      kept += s[e];
    }
    undispatched += std::max(0.0, 1.0 - kept);
    out.offsets[t + 1] = static_cast<int64_t>(out.experts.size());
  }
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
  for (int64_t t = 0; t < N; ++t) {
    const double* s = probs_.data() + t * E;
    double* l = row_.data();
    for (int i = 0; i < E; ++i) {
      l[i] = static_cast<double>(logits_[t * E + i]);
      ds_[i] = aux_scale * fraction_[i];
      c_[i] = 0;
    }
    for (int64_t a = offsets_[t]; a < offsets_[t + 1]; ++a) {
      const int e = experts_[a];
      const double dw = static_cast<double>(dweights[a]);
      ds_[e] += dw;
      c_[e] = dw * s[e];
    }
    dp_.build(l, k_lo_, k_hi_);
    dp_.marginals(mu_.data() + t * E, c_.data(), hv_.data());
    double dot = 0;
    for (int i = 0; i < E; ++i) dot += s[i] * ds_[i];
    T* dl = dlogits_.data() + t * E;
    const double zt = z_scale * lse_[t];
    for (int i = 0; i < E; ++i) dl[i] = static_cast<T>(s[i] * (ds_[i] - dot) + zt * s[i] + hv_[i]);
  }
  cpu::linear_backward(dh, weight_.grad.data(), dlogits_.data(), h_.data(), weight_.value.data(), N,
                       d_, E, /*accumulate_dx=*/true);
}

template class ProbMoERouter<float>;
template class ProbMoERouter<double>;

}  // namespace dirmoe
