// ReMoE per-token math (ReLU routing, Wang, Zhu, Chen, ICLR 2025) and its sparsity controller,
// header-only DIRMOE_HD so the CPU router and a GPU kernel run the same arithmetic. Gates are
// R = ReLU(l) (subgradient 0 at l = 0); the L1 term is the Switch loss with R for the
// probabilities and the count of non-zero gates n_e (a constant) for the tokens per expert.
#pragma once

#include <cstdint>

#include "kernels/routing/math.h"
#include "runtime/core/hd.h"

namespace dirmoe {

// The lambda of a forward: the trainer's controller value when it set one (>= 0), else
// moe.router.remoe.lambda_init as the controller holds it (fp32).
DIRMOE_HD double remoe_lambda_of(double ctx_lambda, double lambda_init) {
  return ctx_lambda >= 0 ? ctx_lambda : static_cast<double>(static_cast<float>(lambda_init));
}

// The first expert whose logit is not finite, -1 when all are.
template <class L>
DIRMOE_HD int remoe_first_nonfinite(const L* logits, int E) {
  for (int e = 0; e < E; ++e)
    if (!routing::r_isfinite(static_cast<double>(logits[e]))) return e;
  return -1;
}

DIRMOE_HD double remoe_gate(double logit) { return logit > 0 ? logit : 0.0; }
DIRMOE_HD double remoe_gate_grad(double logit) { return logit > 0 ? 1.0 : 0.0; }

// One token: the experts with a positive logit, in increasing expert order, weight R_e = l_e.
// experts/weights hold at least E entries; returns how many were written (0..E).
template <class L, class W>
DIRMOE_HD int remoe_route_token(const L* logits, int E, int32_t* experts, W* weights) {
  int n = 0;
  for (int e = 0; e < E; ++e) {
    const double l = static_cast<double>(logits[e]);
    if (l > 0) {
      experts[n] = e;
      weights[n] = static_cast<W>(l);
      ++n;
    }
  }
  return n;
}

// dL_reg / dR_te for L_reg = lambda E sum_e (sum_t R_te / N) (n_e / (N k)): the same for every
// token t; 0 when N == 0.
DIRMOE_HD double remoe_l1_coef(double lambda, int E, int k, int64_t n_e, int64_t N) {
  if (N <= 0) return 0.0;
  const double n = static_cast<double>(N);
  return lambda * E * static_cast<double>(n_e) / (n * n * k);
}

// L_reg from the per-expert sums gate_sum[e] = sum_t R_te and counts n[e] over N tokens.
template <class C>
DIRMOE_HD double remoe_l1(double lambda, int E, int k, const double* gate_sum, const C* n,
                          int64_t N) {
  if (N <= 0) return 0.0;
  double s = 0;
  for (int e = 0; e < E; ++e) s += gate_sum[e] * static_cast<double>(n[e]);
  const double nn = static_cast<double>(N);
  return lambda * E * s / (nn * nn * k);
}

// One token's dL/dl_e = [l_e > 0] (dw_e + loss_scale * coef_e); dw_dense[e]: dL/dR_te from the
// LM path (0 for experts the token does not use).
template <class L, class D>
DIRMOE_HD void remoe_token_backward(const L* logits, const double* dw_dense, const double* coef,
                                    double loss_scale, int E, D* dlogits) {
  for (int e = 0; e < E; ++e) {
    const double g = remoe_gate_grad(static_cast<double>(logits[e]));
    dlogits[e] = static_cast<D>(g * (dw_dense[e] + loss_scale * coef[e]));
  }
}

// The routing figures of N tokens with nnz assignments, `none` tokens without an expert and
// gate_total = sum of the weights. NOTE: nnz = 0 keeps every figure finite (sparsity 1).
struct ReMoESummary {
  double mean_active, sparsity, no_expert, gate_mean;
};
DIRMOE_HD ReMoESummary remoe_summary(int64_t nnz, int64_t none, double gate_total, int64_t N,
                                     int E) {
  const double inv_n = N > 0 ? 1.0 / static_cast<double>(N) : 0.0;
  ReMoESummary s;
  s.mean_active = static_cast<double>(nnz) * inv_n;
  s.sparsity = N > 0 ? 1.0 - static_cast<double>(nnz) * inv_n / E : 0.0;
  s.no_expert = static_cast<double>(none) * inv_n;
  s.gate_mean = nnz > 0 ? gate_total / static_cast<double>(nnz) : 0.0;
  return s;
}

// The controller's target: the share of zero gates when k of E experts are active, 1 - k/E.
DIRMOE_HD double remoe_target_sparsity(int k, int E) {
  return 1.0 - static_cast<double>(k) / static_cast<double>(E);
}

// One optimizer step of the controller, in fp32 as ReMoE keeps it: lambda * alpha while the
// measured sparsity is below the target, lambda / alpha otherwise.
DIRMOE_HD float remoe_next_lambda(float lambda, double sparsity, double target, float alpha) {
  return sparsity < target ? lambda * alpha : lambda / alpha;
}

}  // namespace dirmoe
