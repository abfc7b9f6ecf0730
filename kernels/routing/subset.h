// ProbMoE's k-subset dynamic program on caller-owned tables, shared by the CPU router and the CUDA
// kernels. With p_i = sigmoid(l_i), P(S) ~ prod_{i in S} exp(l_i) / e_k(exp(l)); the log-space
// table L[i][j] = log e_j(exp(l_0 .. l_{i-1})) = logaddexp(L[i-1][j], L[i-1][j-1] + l_{i-1}) gives
// the normaliser, the inclusion marginals (its gradient, by an adjoint pass that splits each cell's
// adjoint between its parents with weights in [0, 1]), their Hessian-vector product (forward mode
// through the adjoint pass), exact subset sampling and Dynamic-k's P(k) ~ Z_k, in O(E k) per token.
#pragma once

#include <cstdint>

#include "kernels/routing/math.h"
#include "runtime/core/hd.h"

namespace dirmoe::routing {

template <class S>
DIRMOE_HD S log_add(S a, S b) {
  const S inf = r_inf<S>();
  if (a == -inf) return b;
  if (b == -inf) return a;
  const S m = r_max(a, b);
  return m + r_log1p(r_exp(-r_abs(a - b)));
}

// One token's DP over E experts and subset sizes up to K. The caller owns the storage:
// l[E], table[(E+1)(K+1)]; marginals() with a tangent also needs dtable, and always adj and dadj,
// each [(E+1)(K+1)].
template <class S>
struct SubsetView {
  int E = 0, K = 0;
  int k_min = 0, k_hi = 0;  // range of the last build
  S log_z = 0;
  const S* l = nullptr;
  S* table = nullptr;
  S* dtable = nullptr;
  S* adj = nullptr;
  S* dadj = nullptr;

  DIRMOE_HD S at(int i, int j) const { return table[i * (K + 1) + j]; }
  DIRMOE_HD S log_esp(int k) const { return table[E * (K + 1) + k]; }

  // Fills the table for l and returns log Z = log sum_{k in [k_min, k_max]} e_k(exp l) (Z_k and e_k
  // differ by prod_j (1 - p_j), common to every k). Needs 0 <= k_min <= k_max <= K.
  DIRMOE_HD S build(int kmin, int kmax) {
    const S inf = r_inf<S>();
    k_min = kmin;
    k_hi = kmax;
    for (int j = 0; j <= K; ++j) table[j] = j == 0 ? S(0) : -inf;
    for (int i = 1; i <= E; ++i) {
      table[i * (K + 1)] = S(0);
      for (int j = 1; j <= K; ++j)
        table[i * (K + 1) + j] = log_add(at(i - 1, j), at(i - 1, j - 1) + l[i - 1]);
    }
    S z = -inf;
    for (int k = kmin; k <= kmax; ++k) z = log_add(z, log_esp(k));
    log_z = z;
    return z;
  }

  // P(|S| = k) of the last build: e_k / sum over [k_min, k_max]; 0 outside.
  DIRMOE_HD S size_prob(int k) const {
    if (k < k_min || k > k_hi) return S(0);
    return r_exp(log_esp(k) - log_z);
  }

  // Subset size from a uniform u in (0, 1) by inversion of size_prob.
  DIRMOE_HD int sample_size(S u) const {
    S c = 0;
    for (int k = k_min; k < k_hi; ++k) {
      c += size_prob(k);
      if (u < c) return k;
    }
    return k_hi;
  }

  // Exact draw of a k-subset (k in [0, K]) by the backward pass over the table: expert i is taken
  // with probability exp(L[i][j-1] + l_i - L[i+1][j]) given j still to take. uniform(i) in (0, 1)
  // is the draw for expert i. Writes the experts in decreasing index order; returns their count.
  template <class Uniform>
  DIRMOE_HD int sample(int k, const Uniform& uniform, int32_t* out) const {
    int j = k, n = 0;
    for (int i = E; i >= 1 && j > 0; --i) {
      const S take = r_exp(at(i - 1, j - 1) + l[i - 1] - at(i, j));
      if (j == i || S(uniform(i - 1)) < take) {
        out[n++] = i - 1;
        --j;
      }
    }
    return n;
  }

  // mu[E] = dlogZ/dl: P(i in S). With v, also hv[E] = (dmu/dl) v (the Hessian of log Z is
  // symmetric, so this is also v^T dmu/dl).
  DIRMOE_HD void marginals(S* mu, const S* v = nullptr, S* hv = nullptr) {
    const S inf = r_inf<S>();
    const bool tangent = v != nullptr && hv != nullptr;
    const int n = (E + 1) * (K + 1);
    for (int i = 0; i < E; ++i) mu[i] = 0;
    if (tangent) {
      for (int i = 0; i < E; ++i) hv[i] = 0;
      for (int c = 0; c < n; ++c) dtable[c] = 0;
      for (int i = 1; i <= E; ++i) {
        for (int j = 1; j <= K; ++j) {
          const S lij = at(i, j);
          if (lij == -inf) continue;
          const S w1 = r_exp(at(i - 1, j) - lij);
          const S w2 = r_exp(at(i - 1, j - 1) + l[i - 1] - lij);
          dtable[i * (K + 1) + j] = w1 * dtable[(i - 1) * (K + 1) + j] +
                                    w2 * (dtable[(i - 1) * (K + 1) + j - 1] + v[i - 1]);
        }
      }
    }
    for (int c = 0; c < n; ++c) {
      adj[c] = 0;
      dadj[c] = 0;
    }
    S dlog_z = 0;
    if (tangent)
      for (int k = k_min; k <= k_hi; ++k) dlog_z += size_prob(k) * dtable[E * (K + 1) + k];
    for (int k = k_min; k <= k_hi; ++k) {
      adj[E * (K + 1) + k] = size_prob(k);
      if (tangent) dadj[E * (K + 1) + k] = size_prob(k) * (dtable[E * (K + 1) + k] - dlog_z);
    }
    for (int i = E; i >= 1; --i) {
      const int row = i * (K + 1), prev = (i - 1) * (K + 1);
      for (int j = K; j >= 1; --j) {
        const S a = adj[row + j];
        const S lij = at(i, j);
        if (lij == -inf || (a == 0 && !(tangent && dadj[row + j] != 0))) continue;
        const S w1 = r_exp(at(i - 1, j) - lij);
        const S w2 = r_exp(at(i - 1, j - 1) + l[i - 1] - lij);
        adj[prev + j] += a * w1;
        adj[prev + j - 1] += a * w2;
        mu[i - 1] += a * w2;
        if (tangent) {
          const S da = dadj[row + j];
          const S dw1 = w1 * (dtable[prev + j] - dtable[row + j]);
          const S dw2 = w2 * (dtable[prev + j - 1] + v[i - 1] - dtable[row + j]);
          dadj[prev + j] += da * w1 + a * dw1;
          dadj[prev + j - 1] += da * w2 + a * dw2;
          hv[i - 1] += da * w2 + a * dw2;
        }
      }
    }
  }
};

}  // namespace dirmoe::routing
