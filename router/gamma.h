// Gamma-distribution numerics for the DirMoE router in double: digamma/trigamma, the regularised
// incomplete gamma function in log space, Gamma(alpha, 1) sampling (Marsaglia-Tsang, or inversion)
// and the implicit-reparameterisation gradient dx/dalpha = -(dF/dalpha)(x; alpha) / pdf(x; alpha).
// Thin wrappers over the shared kernels/routing/gamma.h, the code the CUDA kernels run.
// NOTE: samples are carried as log x so that alpha << 1 draws (x far below 1e-308) stay usable.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/routing/gamma.h"
#include "runtime/core/philox.h"

namespace dirmoe {

inline double digamma(double x) { return routing::digamma<double>(x); }    // psi(x), x > 0
inline double trigamma(double x) { return routing::trigamma<double>(x); }  // psi'(x), x > 0

// log P(a, x) and log Q(a, x) = log(1 - P), P the regularised lower incomplete gamma function,
// for a > 0 and x = exp(log_x) (log_x may be -inf).
using LogIncGamma = routing::LogIncGammaT<double>;
inline LogIncGamma log_incomplete_gamma(double a, double log_x) {
  return routing::log_incomplete_gamma<double>(a, log_x);
}

// d(log x)/da for x ~ Gamma(a, 1) held at a fixed CDF level, x = exp(log_x): finite for every
// a > 0 and every representable log_x (x may underflow to 0).
inline double gamma_dlogx_dalpha(double a, double log_x) {
  return routing::gamma_dlogx_dalpha<double>(a, log_x);
}
// dx/da = x * d(log x)/da.
inline double gamma_dx_dalpha(double a, double x) {
  if (x <= 0) return 0.0;
  return x * gamma_dlogx_dalpha(a, std::log(x));
}

// log of the p-quantile of Gamma(a, 1), p in (0, 1): Newton in log x on log P (or log Q above the
// median), bracketed. Accurate to a few ulp of log x.
inline double gamma_log_quantile(double a, double p) {
  return routing::gamma_log_quantile<double>(a, p);
}

// Marsaglia-Tsang (2000) for Gamma(a, 1); for a < 1 the boost x = y * u^(1/a), y ~ Gamma(a + 1),
// is applied in log space. `draw(attempt)` returns independent Philox words per attempt; attempt
// kGammaBoostAttempt is reserved for the boost uniform. Returns log x.
constexpr uint32_t kGammaMaxAttempts = routing::kGammaMaxAttempts;
constexpr uint32_t kGammaBoostAttempt = routing::kGammaBoostAttempt;

template <class Draw>
double sample_log_gamma(double a, Draw&& draw) {
  return routing::sample_log_gamma<double>(a, draw);
}

// Inversion sampler: log of the u-quantile with u from the boost-free first draw. Slower than
// Marsaglia-Tsang but a smooth function of a at fixed noise (gradient checks, exact reparam.).
template <class Draw>
double sample_log_gamma_inverse(double a, Draw&& draw) {
  return routing::sample_log_gamma_inverse<double>(a, draw);
}

}  // namespace dirmoe
