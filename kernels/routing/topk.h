// Per-token math of the topk router (softmax, top-k with ties to the lower index, the terms of the
// Switch load-balancing loss and the z-loss, and the backward to d logits), shared by the CPU
// TopKRouter and the CUDA router kernels. S is the arithmetic (double by default on both backends),
// T the storage type of logits and probabilities, W that of the routing weights' gradients.
#pragma once

#include <cstdint>

#include "kernels/routing/math.h"
#include "runtime/core/hd.h"

namespace dirmoe::routing {

// Inserts expert i into best[0..n) (n < cap grows it), kept in decreasing key order with ties to
// the lower index; for i visited in increasing order the first `cap` of the order survive.
template <class K>
DIRMOE_HD void topk_insert(const K* key, int32_t i, int32_t* best, int* n, int cap) {
  int j = *n < cap ? (*n)++ : cap;
  // A later (higher) index never beats an equal key: strict comparison.
  while (j > 0 && key[i] > key[best[j - 1]]) {
    if (j < cap) best[j] = best[j - 1];
    --j;
  }
  if (j < cap) best[j] = i;
}

// The k largest of key[E], largest first, ties to the lower index (key must be free of NaN).
template <class K>
DIRMOE_HD void topk_select(const K* key, int E, int k, int32_t* best) {
  int n = 0;
  for (int32_t i = 0; i < E; ++i) topk_insert(key, i, best, &n, k);
}

// First expert with a non-finite logit, or -1.
template <class T>
DIRMOE_HD int first_nonfinite(const T* x, int E) {
  for (int i = 0; i < E; ++i)
    if (!r_isfinite(static_cast<double>(x[i]))) return i;
  return -1;
}

template <class S>
struct TopKToken {
  S lse = 0;            // logsumexp of the logits (z-loss term lse^2)
  S pmax = 0;           // largest probability
  S chosen = 0;         // probability of the k chosen experts (before renormalisation)
  int bad_expert = -1;  // first expert with a non-finite logit (then nothing else is written)
};

// One token: p[E] = softmax(l) rounded to T; prob_acc[E] += p (in S), *entropy_acc -= sum p log p;
// experts[k], weights[k] the k most probable experts (most probable first) and their p (or p
// renormalised over the k when renormalize).
template <class S, class T>
DIRMOE_HD TopKToken<S> topk_token_forward(const T* l, int E, int k, bool renormalize, T* p,
                                          S* prob_acc, S* entropy_acc, int32_t* experts,
                                          T* weights) {
  TopKToken<S> out;
  S mx = -r_inf<S>();
  for (int i = 0; i < E; ++i) mx = r_max(mx, static_cast<S>(l[i]));
  S s = 0;
  for (int i = 0; i < E; ++i) s += r_exp(static_cast<S>(l[i]) - mx);
  const S lse = mx + r_log(s);
  if (!r_isfinite(lse)) {
    out.bad_expert = first_nonfinite(l, E);
    if (out.bad_expert < 0) out.bad_expert = 0;
    return out;
  }
  out.lse = lse;
  S pmax = 0;
  for (int i = 0; i < E; ++i) {
    const S pi = r_exp(static_cast<S>(l[i]) - lse);
    p[i] = static_cast<T>(pi);
    prob_acc[i] += pi;
    if (pi > 0) *entropy_acc -= pi * r_log(pi);
    pmax = r_max(pmax, pi);
  }
  out.pmax = pmax;
  topk_select(l, E, k, experts);
  S chosen = 0;
  for (int j = 0; j < k; ++j) chosen += static_cast<S>(p[experts[j]]);
  out.chosen = chosen;
  for (int j = 0; j < k; ++j) {
    const int32_t e = experts[j];
    const S w = renormalize ? static_cast<S>(p[e]) / chosen : static_cast<S>(p[e]);
    weights[j] = static_cast<T>(w);
  }
  return out;
}

// One token's backward: p[E] the forward's probabilities, experts[n] / dweights[n] its routing
// and dL/dweights, fraction[E] the share of assignments per expert, aux_scale = d(aux)/dp_i per
// unit fraction, zt = d(z-loss)/dl_i per unit p_i. dp[E] is scratch; dl[E] = dL/dlogits.
template <class S, class T, class W>
DIRMOE_HD void topk_token_backward(const T* p, int E, const int32_t* experts, const W* dweights,
                                   int n, bool renormalize, const S* fraction, S aux_scale, S zt,
                                   S* dp, T* dl) {
  for (int i = 0; i < E; ++i) dp[i] = aux_scale * fraction[i];
  if (renormalize) {
    S chosen = 0, wdot = 0;
    for (int a = 0; a < n; ++a) chosen += static_cast<S>(p[experts[a]]);
    for (int a = 0; a < n; ++a)
      wdot += static_cast<S>(dweights[a]) * static_cast<S>(p[experts[a]]) / chosen;
    for (int a = 0; a < n; ++a) dp[experts[a]] += (static_cast<S>(dweights[a]) - wdot) / chosen;
  } else {
    for (int a = 0; a < n; ++a) dp[experts[a]] += static_cast<S>(dweights[a]);
  }
  S dot = 0;
  for (int i = 0; i < E; ++i) dot += static_cast<S>(p[i]) * dp[i];
  for (int i = 0; i < E; ++i) {
    const S pi = static_cast<S>(p[i]);
    dl[i] = static_cast<T>(pi * (dp[i] - dot) + zt * pi);
  }
}

}  // namespace dirmoe::routing
