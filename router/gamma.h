// Gamma-distribution numerics for the DirMoE router: digamma/trigamma, the regularised incomplete
// gamma function in log space, Gamma(alpha, 1) sampling (Marsaglia-Tsang, or inversion), and the
// implicit-reparameterisation gradient dx/dalpha = -(dF/dalpha)(x; alpha) / pdf(x; alpha).
// NOTE: samples are carried as log x so that alpha << 1 draws (x far below 1e-308) stay usable.
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/core/philox.h"

namespace dirmoe {

double digamma(double x);   // psi(x), x > 0
double trigamma(double x);  // psi'(x), x > 0

// log P(a, x) and log Q(a, x) = log(1 - P), P the regularised lower incomplete gamma function,
// for a > 0 and x = exp(log_x) (log_x may be -inf).
struct LogIncGamma {
  double log_p;
  double log_q;
};
LogIncGamma log_incomplete_gamma(double a, double log_x);

// d(log x)/da for x ~ Gamma(a, 1) held at a fixed CDF level, x = exp(log_x): finite for every
// a > 0 and every representable log_x (x may underflow to 0).
double gamma_dlogx_dalpha(double a, double log_x);
// dx/da = x * d(log x)/da.
double gamma_dx_dalpha(double a, double x);

// log of the p-quantile of Gamma(a, 1), p in (0, 1): Newton in log x on log P (or log Q above the
// median), bracketed. Accurate to a few ulp of log x.
double gamma_log_quantile(double a, double p);

// Marsaglia-Tsang (2000) for Gamma(a, 1); for a < 1 the boost x = y * u^(1/a), y ~ Gamma(a + 1),
// is applied in log space. `draw(attempt)` returns independent Philox words per attempt; attempt
// kGammaBoostAttempt is reserved for the boost uniform. Returns log x.
constexpr uint32_t kGammaMaxAttempts = 64;
constexpr uint32_t kGammaBoostAttempt = 0xFFFF;

template <class Draw>
double sample_log_gamma(double a, Draw&& draw) {
  const double b = a < 1.0 ? a + 1.0 : a;
  const double d = b - 1.0 / 3.0, c = 1.0 / std::sqrt(9.0 * d);
  // NOTE: the acceptance rate is above 95% for every a; after kGammaMaxAttempts rejections (never
  // seen in practice) the mode-like value d is returned so that the draw stays deterministic.
  double log_x = std::log(d);
  for (uint32_t attempt = 0; attempt < kGammaMaxAttempts; ++attempt) {
    const Philox4 r = draw(attempt);
    const double u1 = uniform_open(r.v[0]), u2 = uniform_open(r.v[1]);
    const double n = std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586476925 * u2);
    const double v = 1.0 + c * n;
    if (v <= 0) continue;
    const double log_v3 = 3.0 * std::log(v);
    const double v3 = v * v * v;
    if (std::log(uniform_open(r.v[2])) < 0.5 * n * n + d - d * v3 + d * log_v3) {
      log_x = std::log(d) + log_v3;
      break;
    }
  }
  if (a < 1.0) {
    const Philox4 r = draw(kGammaBoostAttempt);
    log_x += std::log(uniform53(r.v[0], r.v[1])) / a;
  }
  return log_x;
}

// Inversion sampler: log of the u-quantile with u from the boost-free first draw. Slower than
// Marsaglia-Tsang but a smooth function of a at fixed noise (gradient checks, exact reparam.).
template <class Draw>
double sample_log_gamma_inverse(double a, Draw&& draw) {
  const Philox4 r = draw(0);
  return gamma_log_quantile(a, uniform53(r.v[0], r.v[1]));
}

}  // namespace dirmoe
