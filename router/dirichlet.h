// Dirichlet numerics for the DirMoE ELBO: the closed-form KL divergence between two Dirichlet
// distributions with its gradients, the expected Simpson index, and the prior calibration that maps
// a target active mass m and Simpson index h to prior concentrations (DESIGN.md section 4).
#pragma once

namespace dirmoe {

// KL(Dir(aq) || Dir(ap)) for E concentrations each; all entries > 0.
double dirichlet_kl(const double* aq, const double* ap, int E);
// The same, and its gradients: daq[E] = dKL/daq, dap[E] = dKL/dap (either may be null).
double dirichlet_kl_grad(const double* aq, const double* ap, int E, double* daq, double* dap);

// E[sum_i theta_i^2] for theta ~ Dir(alpha).
double dirichlet_mean_simpson(const double* alpha, int E);

// Prior concentrations alpha_p = lambda * (z * a_hi + (1 - z) * a_lo). With k of E experts active
// (z = 1), the expected active mass is k a_hi / (k a_hi + (E - k) a_lo) and the expected Simpson
// index follows from lambda.
struct DirichletPrior {
  double a_hi = 1;
  double a_lo = 1;
  double lambda = 1;
};
// a_hi / a_lo = (m / (1 - m)) (E - k) / k with a_lo = 1, and lambda such that the expected Simpson
// index with k active experts is h (symmetric case: lambda = (1 - h) / (h E - 1)). Needs k < E,
// m in (0, 1) and h in (simpson_floor, 1); for k = E the prior is symmetric (a_hi = a_lo = 1).
DirichletPrior calibrate_dirichlet_prior(int E, int k, double m, double h);
// The infimum of the reachable expected Simpson index for (E, k, m): the Simpson index of the mean
// (lambda -> infinity). h must exceed it.
double prior_simpson_floor(int E, int k, double m);
// Expected active mass and Simpson index of the prior with the first k experts active.
double prior_active_mass(const DirichletPrior& p, int E, int k);
double prior_mean_simpson(const DirichletPrior& p, int E, int k);

}  // namespace dirmoe
