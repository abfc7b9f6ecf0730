// The closed-form KL divergence between two Dirichlet distributions and its gradients, shared by
// the CPU DirMoE router and the CUDA kernels (one token's E concentrations at a time).
#pragma once

#include "kernels/routing/gamma.h"
#include "kernels/routing/math.h"
#include "runtime/core/hd.h"

namespace dirmoe::routing {

// KL(Dir(aq) || Dir(ap)) for E concentrations each (all > 0), and its gradients daq[E] = dKL/daq,
// dap[E] = dKL/dap (either may be null):
// KL = lgamma(A) - sum lgamma(aq) - lgamma(B) + sum lgamma(ap) + sum (aq - ap)(psi(aq) - psi(A)),
// dKL/daq_i = (aq_i - ap_i) psi'(aq_i) - (A - B) psi'(A),
// dKL/dap_i = psi(ap_i) - psi(B) - psi(aq_i) + psi(A); A = sum aq, B = sum ap.
template <class S>
DIRMOE_HD S dirichlet_kl_grad(const S* aq, const S* ap, int E, S* daq, S* dap) {
  S A = 0, B = 0;
  for (int i = 0; i < E; ++i) {
    A += aq[i];
    B += ap[i];
  }
  const S psi_A = digamma(A), psi_B = digamma(B);
  S kl = r_lgamma(A) - r_lgamma(B);
  for (int i = 0; i < E; ++i) {
    const S psi_q = digamma(aq[i]);
    kl += r_lgamma(ap[i]) - r_lgamma(aq[i]) + (aq[i] - ap[i]) * (psi_q - psi_A);
    if (dap) dap[i] = digamma(ap[i]) - psi_B - psi_q + psi_A;
  }
  if (daq) {
    const S tA = (A - B) * trigamma(A);
    for (int i = 0; i < E; ++i) daq[i] = (aq[i] - ap[i]) * trigamma(aq[i]) - tA;
  }
  return kl;
}

// E[sum_i theta_i^2] for theta ~ Dir(alpha).
template <class S>
DIRMOE_HD S dirichlet_mean_simpson(const S* alpha, int E) {
  S a0 = 0, s = 0;
  for (int i = 0; i < E; ++i) a0 += alpha[i];
  for (int i = 0; i < E; ++i) s += alpha[i] * (alpha[i] + 1);
  return s / (a0 * (a0 + 1));
}

}  // namespace dirmoe::routing
