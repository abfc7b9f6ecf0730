// Per-token math of the ProbMoE router (Exact-k and Dynamic-k), shared by the CPU ProbMoERouter and
// the CUDA kernels: softmax, the subset DP's normaliser and marginals, exact k-subset sampling (or
// the evaluation rule), weights w = (stopgrad(z - mu) + mu) * softmax(l), and the backward through
// the marginals' Hessian-vector product.
#pragma once

#include <cstdint>

#include "kernels/routing/gates.h"
#include "kernels/routing/math.h"
#include "kernels/routing/noise.h"
#include "kernels/routing/subset.h"
#include "kernels/routing/topk.h"
#include "runtime/core/hd.h"

namespace dirmoe::routing {

template <class S>
struct ProbMoETokenParams {
  int E = 0;
  int k_lo = 1, k_hi = 1;  // subset size range ([k, k] for exact)
  bool dynamic = false;
  bool training = true;  // sample; else the k largest logits
  NoiseKey subset_noise;
  NoiseKey size_noise;
};

template <class S>
struct ProbMoEToken {
  int num_dispatched = 0;
  S lse = 0;
  S kept = 0;           // softmax mass of the chosen experts
  int near_binary = 0;  // sigmoid(l_i) < 0.05 or > 0.95
  int bad_expert = -1;  // first expert with a non-finite logit (then nothing else is written)
};

// The subset-inclusion uniform of (token, expert).
struct SubsetUniform {
  NoiseKey key;
  int64_t t;
  DIRMOE_HD double operator()(int i) const { return key.uniform(t, i); }
};

// NOTE: within a token the chosen experts are listed by decreasing weight (ties: lower index).
// lt[E] logits of local token t; l[E] scratch that dp.l must point at; dp bound to its tables.
// Writes s[E] = softmax, mu[E] marginals, experts/weights[num_dispatched]; prob_acc[E] += s,
// *entropy_acc += sum_i H(sigmoid(l_i)), *expected_k_acc += sum_k k P(k).
template <class S, class T>
DIRMOE_HD ProbMoEToken<S> probmoe_token_forward(const ProbMoETokenParams<S>& c, const T* lt,
                                                int64_t t, S* l, SubsetView<S>& dp, S* s, S* mu,
                                                int32_t* experts, T* weights, S* prob_acc,
                                                S* entropy_acc, S* expected_k_acc) {
  const int E = c.E;
  ProbMoEToken<S> out;
  S mx = -r_inf<S>();
  for (int i = 0; i < E; ++i) {
    l[i] = static_cast<S>(lt[i]);
    mx = r_max(mx, l[i]);
  }
  S acc = 0;
  for (int i = 0; i < E; ++i) acc += r_exp(l[i] - mx);
  const S lse = mx + r_log(acc);
  if (!r_isfinite(lse)) {
    out.bad_expert = first_nonfinite(lt, E);
    if (out.bad_expert < 0) out.bad_expert = 0;
    return out;
  }
  out.lse = lse;
  int near = 0;
  for (int i = 0; i < E; ++i) {
    s[i] = r_exp(l[i] - lse);
    prob_acc[i] += s[i];
    const S p = S(1) / (S(1) + r_exp(-l[i]));
    *entropy_acc += binary_entropy(p);
    near += (p < S(0.05) || p > S(0.95));
  }
  out.near_binary = near;
  dp.build(c.k_lo, c.k_hi);
  dp.marginals(mu);
  for (int k = c.k_lo; k <= c.k_hi; ++k) *expected_k_acc += k * dp.size_prob(k);

  int n;
  if (c.training) {
    const int k = c.dynamic ? dp.sample_size(static_cast<S>(c.size_noise.uniform(t, 0))) : c.k_lo;
    n = dp.sample(k, SubsetUniform{c.subset_noise, t}, experts);
  } else {
    int k = c.k_lo;
    if (c.dynamic) {
      int positive = 0;
      for (int i = 0; i < E; ++i) positive += l[i] > 0;
      k = positive < c.k_lo ? c.k_lo : (positive > c.k_hi ? c.k_hi : positive);
    }
    topk_select(l, E, k, experts);
    n = k;
  }
  // Insertion sort by decreasing s, ties to the lower index.
  for (int j = 1; j < n; ++j) {
    const int32_t e = experts[j];
    int m = j;
    while (m > 0 &&
           (s[e] > s[experts[m - 1]] || (s[e] == s[experts[m - 1]] && e < experts[m - 1]))) {
      experts[m] = experts[m - 1];
      --m;
    }
    experts[m] = e;
  }
  S kept = 0;
  for (int j = 0; j < n; ++j) {
    weights[j] = static_cast<T>(s[experts[j]]);
    kept += s[experts[j]];
  }
  out.kept = kept;
  out.num_dispatched = n;
  return out;
}

// One token's backward: w_i = (stopgrad(z_i - mu_i) + mu_i) s_i for the chosen i, s = softmax(l):
// dL/dl = softmax backward of (z_i dw_i + aux) + (dmu/dl) c with c_i = dw_i s_i. lt[E] the
// forward's logits, s[E] its softmax, lse its logsumexp; l, ds, cvec, hv, mu [E] scratch (dp.l
// must point at l); zt_scale = d(z-loss)/dl_i per unit lse * p_i. dl[E] = dL/dlogits.
template <class S, class T, class W>
DIRMOE_HD void probmoe_token_backward(const ProbMoETokenParams<S>& c, const T* lt, const S* s,
                                      S lse, const int32_t* experts, const W* dweights, int n,
                                      const S* fraction, S aux_scale, S z_scale, S* l,
                                      SubsetView<S>& dp, S* ds, S* cvec, S* hv, S* mu, T* dl) {
  const int E = c.E;
  for (int i = 0; i < E; ++i) {
    l[i] = static_cast<S>(lt[i]);
    ds[i] = aux_scale * fraction[i];
    cvec[i] = 0;
  }
  for (int a = 0; a < n; ++a) {
    const int e = experts[a];
    const S dw = static_cast<S>(dweights[a]);
    ds[e] += dw;
    cvec[e] = dw * s[e];
  }
  dp.build(c.k_lo, c.k_hi);
  dp.marginals(mu, cvec, hv);
  S dot = 0;
  for (int i = 0; i < E; ++i) dot += s[i] * ds[i];
  const S zt = z_scale * lse;
  for (int i = 0; i < E; ++i) dl[i] = static_cast<T>(s[i] * (ds[i] - dot) + zt * s[i] + hv[i]);
}

}  // namespace dirmoe::routing
