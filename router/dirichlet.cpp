// Dirichlet KL, Simpson index and prior calibration (see dirichlet.h).
#include "router/dirichlet.h"

#include <cmath>

#include "router/gamma.h"
#include "runtime/core/error.h"

namespace dirmoe {

double dirichlet_kl(const double* aq, const double* ap, int E) {
  return dirichlet_kl_grad(aq, ap, E, nullptr, nullptr);
}

// KL = lgamma(A) - sum lgamma(aq) - lgamma(B) + sum lgamma(ap) + sum (aq - ap)(psi(aq) - psi(A)),
// A = sum aq, B = sum ap.
// dKL/daq_i = (aq_i - ap_i) psi'(aq_i) - (A - B) psi'(A);  dKL/dap_i = psi(ap_i) - psi(B) -
// psi(aq_i)
// + psi(A).
double dirichlet_kl_grad(const double* aq, const double* ap, int E, double* daq, double* dap) {
  double A = 0, B = 0;
  for (int i = 0; i < E; ++i) {
    A += aq[i];
    B += ap[i];
  }
  const double psi_A = digamma(A), psi_B = digamma(B);
  double kl = std::lgamma(A) - std::lgamma(B);
  for (int i = 0; i < E; ++i) {
    const double psi_q = digamma(aq[i]);
    kl += std::lgamma(ap[i]) - std::lgamma(aq[i]) + (aq[i] - ap[i]) * (psi_q - psi_A);
    if (dap) dap[i] = digamma(ap[i]) - psi_B - psi_q + psi_A;
  }
  if (daq) {
    const double tA = (A - B) * trigamma(A);
    for (int i = 0; i < E; ++i) daq[i] = (aq[i] - ap[i]) * trigamma(aq[i]) - tA;
  }
  return kl;
}

double dirichlet_mean_simpson(const double* alpha, int E) {
  double a0 = 0, s = 0;
  for (int i = 0; i < E; ++i) a0 += alpha[i];
  for (int i = 0; i < E; ++i) s += alpha[i] * (alpha[i] + 1);
  return s / (a0 * (a0 + 1));
}

namespace {
// Unscaled prior (a_hi for the k active experts, a_lo for the rest): sum and sum of squares.
void prior_moments(const DirichletPrior& p, int E, int k, double* a0, double* a2) {
  *a0 = k * p.a_hi + (E - k) * p.a_lo;
  *a2 = k * p.a_hi * p.a_hi + (E - k) * p.a_lo * p.a_lo;
}
}  // namespace

double prior_simpson_floor(int E, int k, double m) {
  if (k >= E) return 1.0 / E;
  DirichletPrior p;
  p.a_hi = (m / (1 - m)) * (E - k) / k;
  double a0, a2;
  prior_moments(p, E, k, &a0, &a2);
  return a2 / (a0 * a0);
}

// E[Simpson] = (lambda a2 + a0) / (a0 (lambda a0 + 1)) = h  <=>  lambda = a0 (1 - h) / (h a0^2 -
// a2).
DirichletPrior calibrate_dirichlet_prior(int E, int k, double m, double h) {
  DIRMOE_CHECK(E >= 1 && k >= 1 && k <= E, "prior calibration: need 1 <= k <= E, got k = ", k,
               ", E = ", E);
  DirichletPrior p;
  if (k < E) p.a_hi = (m / (1 - m)) * (E - k) / k;
  double a0, a2;
  prior_moments(p, E, k, &a0, &a2);
  const double denom = h * a0 * a0 - a2;
  DIRMOE_CHECK(h < 1 && denom > 0, "prior calibration: Simpson index h = ", h, " must lie in (",
               a2 / (a0 * a0), ", 1) for E = ", E, ", k = ", k, ", m = ", m);
  p.lambda = a0 * (1 - h) / denom;
  return p;
}

double prior_active_mass(const DirichletPrior& p, int E, int k) {
  double a0, a2;
  prior_moments(p, E, k, &a0, &a2);
  return k * p.a_hi / a0;
}

double prior_mean_simpson(const DirichletPrior& p, int E, int k) {
  double a0, a2;
  prior_moments(p, E, k, &a0, &a2);
  const double l = p.lambda;
  return (l * a2 + a0) / (a0 * (l * a0 + 1));
}

}  // namespace dirmoe
