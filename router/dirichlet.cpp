// Dirichlet KL and Simpson index (through the shared kernels/routing/dirichlet.h) and the prior
// calibration (see dirichlet.h).
#include "router/dirichlet.h"

#include <cmath>

#include "kernels/routing/dirichlet.h"
#include "runtime/core/error.h"

namespace dirmoe {

double dirichlet_kl(const double* aq, const double* ap, int E) {
  return routing::dirichlet_kl_grad<double>(aq, ap, E, nullptr, nullptr);
}

double dirichlet_kl_grad(const double* aq, const double* ap, int E, double* daq, double* dap) {
  return routing::dirichlet_kl_grad<double>(aq, ap, E, daq, dap);
}

double dirichlet_mean_simpson(const double* alpha, int E) {
  return routing::dirichlet_mean_simpson<double>(alpha, E);
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
