// Per-token math of the DirMoE router, shared by the CPU DirMoERouter and the CUDA kernels: heads
// (gate logit, softplus concentrations + floor), relaxed Bernoulli gates, Dirichlet contributions
// as normalised Gamma(alpha_q, 1) draws (log space) with their implicit-reparameterisation
// gradient, r = z theta / sum(z theta), the r_min / max_active dispatch, the closed-form KL against
// the gated prior, the sparsity count, and the per-token chain rule of the backward.
#pragma once

#include <cstdint>

#include "kernels/routing/dirichlet.h"
#include "kernels/routing/gamma.h"
#include "kernels/routing/gates.h"
#include "kernels/routing/math.h"
#include "kernels/routing/noise.h"
#include "kernels/routing/topk.h"
#include "runtime/core/hd.h"

namespace dirmoe::routing {

// Everything a token's forward and backward need besides its own rows (plain values).
template <class S>
struct DirMoETokenParams {
  int E = 0;
  int k = 1;                // target number of open gates
  int max_active = 1;       // at most this many experts dispatched (<= E)
  S r_min = 0;              // dispatch threshold on r
  S tau = 1, lambda_q = 1;  // gate temperature, posterior concentration scale
  S alpha_floor = 0;        // added to softplus for a_hi and a_lo
  S prior_a_hi = 1, prior_a_lo = 1, prior_lambda = 1;
  bool noisy = true;            // gate and Gamma noise (training, eval: sample)
  bool hard = false;            // evaluation with deterministic gates: z = [l >= 0]
  bool inverse = false;         // inverse-CDF Gamma sampler instead of Marsaglia-Tsang
  bool expected_count = false;  // sparsity on sum_i sigmoid(l_i)
  bool renormalize = false;     // weights r / (dispatched mass)
  NoiseKey gate_noise;
  NoiseKey gamma_noise;
};

// One token's saved rows, each [E] (what the backward reads).
template <class S>
struct DirMoERow {
  S* z;
  S* a_hi;
  S* a_lo;
  S* alpha;
  S* dlogg;  // d(log G)/d(alpha_q)
  S* g_s;    // G / sum_j z_j G_j  (= r / z)
  S* r;
  S* dkl_q;
  S* dkl_p;
  S* soft;  // softmax of the gate logits (load balancing)
};

template <class S>
struct DirMoEToken {
  int num_dispatched = 0;
  S sum_z = 0;      // the sparsity count the backward uses
  S sum_gates = 0;  // sum_i z_i
  S kept = 0;       // dispatched mass
  S kl = 0;
  S sparsity = 0;                  // (count - k)^2
  int open = 0;                    // gates >= 1/2
  int near_binary = 0;             // gates < 0.05 or > 0.95
  int bad_expert = -1;             // first expert with a non-finite gate logit or concentration
  bool bad_concentration = false;  // which of the two bad_expert names
};

// NOTE: experts of a token are dispatched largest r first (ties: lower index), while r >= r_min,
// r > 0 and fewer than max_active are taken; the largest is always taken. Weights are r (or r
// renormalised over the dispatched set). alpha_q is clamped to lambda_q * alpha_floor from below
// (only rounding can take it there), so a Gamma shape is never zero.
// u[3E]: head outputs (gate logits, a_hi and a_lo pre-activations) of local token t.
// Scratch: order[E], logw[E], logz[E], ap[E]. Writes row, r_t[E] (r in T), experts/weights
// [num_dispatched]; prob_acc[E] += softmax(l), *entropy_acc += sum_i H(z_i).
template <class S, class T>
DIRMOE_HD DirMoEToken<S> dirmoe_token_forward(const DirMoETokenParams<S>& c, const T* u, int64_t t,
                                              const DirMoERow<S>& row, T* r_t, int32_t* experts,
                                              T* weights, S* prob_acc, S* entropy_acc,
                                              int32_t* order, S* logw, S* logz, S* ap) {
  const int E = c.E;
  DirMoEToken<S> out;
  for (int i = 0; i < E; ++i) {
    if (!r_isfinite(static_cast<S>(u[i]))) {
      out.bad_expert = i;
      return out;
    }
    if (!r_isfinite(static_cast<S>(u[E + i])) || !r_isfinite(static_cast<S>(u[2 * E + i]))) {
      out.bad_expert = i;
      out.bad_concentration = true;
      return out;
    }
  }
  S* z = row.z;
  S* alpha = row.alpha;
  S* gs = row.g_s;
  S* r = row.r;
  int any_on = 0, best = 0;
  for (int i = 0; i < E; ++i) {
    const S l = static_cast<S>(u[i]);
    row.a_hi[i] = softplus(static_cast<S>(u[E + i])) + c.alpha_floor;
    row.a_lo[i] = softplus(static_cast<S>(u[2 * E + i])) + c.alpha_floor;
    if (l > static_cast<S>(u[best])) best = i;
    if (c.hard) {
      z[i] = l >= 0 ? S(1) : S(0);
      any_on += l >= 0;
    } else {
      const S v = c.noisy ? static_cast<S>(c.gate_noise.uniform(t, i)) : S(0.5);
      const Gate<S> g = relaxed_gate(l, v, c.noisy, c.tau);
      z[i] = g.z;
      logz[i] = g.log_z;
    }
  }
  if (c.hard) {
    if (any_on == 0) z[best] = 1;
    for (int i = 0; i < E; ++i) logz[i] = z[i] > 0 ? S(0) : -r_inf<S>();
  }
  const S alpha_min = c.lambda_q * c.alpha_floor;
  S s = 0;
  for (int i = 0; i < E; ++i) {
    alpha[i] = c.lambda_q * (z[i] * row.a_hi[i] + (1 - z[i]) * row.a_lo[i]);
    if (alpha[i] < alpha_min) alpha[i] = alpha_min;
    s += z[i];
  }
  {
    const S lmax = static_cast<S>(u[best]);
    S acc = 0;
    for (int i = 0; i < E; ++i) acc += r_exp(static_cast<S>(u[i]) - lmax);
    for (int i = 0; i < E; ++i) {
      const S p = r_exp(static_cast<S>(u[i]) - lmax) / acc;
      row.soft[i] = p;
      prob_acc[i] += p;
    }
  }
  out.sum_z = s;
  if (c.noisy) {
    for (int i = 0; i < E; ++i) {
      const GammaDraw draw{c.gamma_noise, t, i};
      const S logg =
          c.inverse ? sample_log_gamma_inverse(alpha[i], draw) : sample_log_gamma(alpha[i], draw);
      row.dlogg[i] = gamma_dlogx_dalpha(alpha[i], logg);
      logw[i] = logz[i] + logg;
      gs[i] = logg;
    }
  } else {
    // Mean of the Dirichlet: theta = alpha / sum(alpha) (the normaliser cancels in r).
    for (int i = 0; i < E; ++i) {
      gs[i] = r_log(alpha[i]);
      logw[i] = logz[i] + gs[i];
      row.dlogg[i] = 0;
    }
  }
  S mx = -r_inf<S>();
  for (int i = 0; i < E; ++i) mx = r_max(mx, logw[i]);
  S acc = 0;
  for (int i = 0; i < E; ++i) acc += r_exp(logw[i] - mx);
  const S lse = mx + r_log(acc);
  for (int i = 0; i < E; ++i) {
    r[i] = r_exp(logw[i] - lse);
    gs[i] = r_exp(gs[i] - lse);
    r_t[i] = static_cast<T>(r[i]);
  }

  // Dispatch.
  topk_select(r, E, c.max_active, order);
  int n = 0;
  S kept = 0;
  while (n < c.max_active && (n == 0 || (r[order[n]] > 0 && r[order[n]] >= c.r_min)))
    kept += r[order[n++]];
  out.kept = kept;
  out.num_dispatched = n;
  for (int j = 0; j < n; ++j) {
    const int32_t e = order[j];
    experts[j] = e;
    weights[j] = static_cast<T>(c.renormalize ? r[e] / kept : r[e]);
  }

  // KL and sparsity terms.
  for (int i = 0; i < E; ++i)
    ap[i] = c.prior_lambda * (z[i] * c.prior_a_hi + (1 - z[i]) * c.prior_a_lo);
  out.kl = dirichlet_kl_grad(alpha, ap, E, row.dkl_q, row.dkl_p);
  if (c.expected_count) {
    S ps = 0;
    for (int i = 0; i < E; ++i) ps += sigmoid(static_cast<S>(u[i]));
    out.sum_z = ps;  // the backward's count
    out.sparsity = (ps - c.k) * (ps - c.k);
  } else {
    out.sparsity = (s - c.k) * (s - c.k);
  }
  out.sum_gates = s;
  int open = 0, near = 0;
  for (int i = 0; i < E; ++i) {
    *entropy_acc += binary_entropy(z[i]);
    near += (z[i] < S(0.05) || z[i] > S(0.95));
    open += z[i] >= S(0.5);
  }
  out.open = open;
  out.near_binary = near;
  return out;
}

// Loss scales of the backward (per token, already divided by N and times the loss scale).
template <class S>
struct DirMoEBackwardScales {
  S ks = 0;         // beta: KL
  S ss = 0;         // 2 lambda_s: sparsity
  S aux_scale = 0;  // aux_loss_coef * E: load balancing
  S dprior = 0;     // prior_lambda * (prior_a_hi - prior_a_lo)
};

// One token's backward. dr[E] enters holding dL/dr from the reconstruction and is updated with the
// routing's dweights[n] (experts[n]); fraction[E] the dispatched share per expert; sum_z and kept
// from the forward. du[3E] = dL/d(head outputs).
template <class S, class T, class W>
DIRMOE_HD void dirmoe_token_backward(const DirMoETokenParams<S>& c,
                                     const DirMoEBackwardScales<S>& b, const T* u,
                                     const DirMoERow<S>& row, S sum_z, S kept,
                                     const int32_t* experts, const W* dweights, int n,
                                     const S* fraction, S* dr, T* du) {
  const int E = c.E;
  const S* z = row.z;
  const S* r = row.r;
  if (c.renormalize) {
    S wdot = 0;
    for (int a = 0; a < n; ++a) wdot += static_cast<S>(dweights[a]) * r[experts[a]] / kept;
    for (int a = 0; a < n; ++a) dr[experts[a]] += (static_cast<S>(dweights[a]) - wdot) / kept;
  } else {
    for (int a = 0; a < n; ++a) dr[experts[a]] += static_cast<S>(dweights[a]);
  }
  const S* soft = row.soft;
  S dot = 0, aux_dot = 0;
  for (int i = 0; i < E; ++i) {
    dot += r[i] * dr[i];
    aux_dot += soft[i] * fraction[i];
  }
  const S sp = b.ss * (sum_z - c.k);
  for (int i = 0; i < E; ++i) {
    const S cc = dr[i] - dot;
    const S dalpha = r[i] * cc * row.dlogg[i] + b.ks * row.dkl_q[i];
    const S dz = row.g_s[i] * cc + dalpha * c.lambda_q * (row.a_hi[i] - row.a_lo[i]) +
                 b.ks * row.dkl_p[i] * b.dprior + (c.expected_count ? S(0) : sp);
    S dl = dz * z[i] * (1 - z[i]) / c.tau + b.aux_scale * soft[i] * (fraction[i] - aux_dot);
    if (c.expected_count) {
      const S p = sigmoid(static_cast<S>(u[i]));
      dl += sp * p * (1 - p);
    }
    du[i] = static_cast<T>(dl);
    du[E + i] = static_cast<T>(dalpha * c.lambda_q * z[i] * sigmoid(static_cast<S>(u[E + i])));
    du[2 * E + i] =
        static_cast<T>(dalpha * c.lambda_q * (1 - z[i]) * sigmoid(static_cast<S>(u[2 * E + i])));
  }
}

}  // namespace dirmoe::routing
