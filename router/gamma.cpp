// Gamma numerics (see gamma.h). The incomplete gamma function and its a-derivative use the power
// series below x = a + 1 and the continued fraction above it, differentiated term by term (the
// derivative recurrences of Moore, AS 187), so the gradient keeps full precision in both tails.
#include "router/gamma.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace dirmoe {
namespace {

constexpr double kEps = 1e-16;
constexpr int kMaxTerms = 1000000;
// Above this shape the Wilson-Hilferty cube-root approximation of the quantile is used for
// d(log x)/da (relative error O(a^-1.5): 1.2e-8 at a = 1e5) instead of the O(sqrt(a))-term sums.
constexpr double kLargeAlpha = 1e5;

// sum_n t_n with t_0 = 1/a, t_n = t_{n-1} x / (a + n), and sum_{n>=1} t_n sum_{j=1..n} 1/(a+j).
struct Series {
  double t;
  double u;
};
Series gamma_series(double a, double x) {
  double term = 1.0 / a, t = term, u = 0, h = 0;
  for (int n = 1; n < kMaxTerms; ++n) {
    term *= x / (a + n);
    h += 1.0 / (a + n);
    t += term;
    u += term * h;
    if (term <= kEps * t && term * h <= kEps * u) break;
  }
  return {t, u};
}

// C = 1/(b0 + a1/(b1 + a2/(b2 + ...))), b_n = x + 2n + 1 - a, a_n = -n (n - a), and dC/da.
struct Fraction {
  double c;
  double dc;
};
Fraction gamma_fraction(double a, double x) {
  double p2 = 1, p1 = x + 1 - a, q2 = 0, q1 = 1;  // convergents n-2, n-1
  double dp2 = 0, dp1 = -1, dq2 = 0, dq1 = 0;     // their a-derivatives
  double c = q1 / p1, dc = (dq1 * p1 - q1 * dp1) / (p1 * p1);
  for (int n = 1; n < kMaxTerms; ++n) {
    const double an = -n * (n - a), bn = x + 2 * n + 1 - a;
    const double p = bn * p1 + an * p2, q = bn * q1 + an * q2;
    const double dp = -p1 + bn * dp1 + n * p2 + an * dp2;
    const double dq = -q1 + bn * dq1 + n * q2 + an * dq2;
    const double s = 1.0 / p;
    p2 = p1 * s, q2 = q1 * s, dp2 = dp1 * s, dq2 = dq1 * s;
    p1 = 1, q1 = q * s, dp1 = dp * s, dq1 = dq * s;
    const double c_new = q1, dc_new = dq1 - q1 * dp1;
    const bool done = std::abs(c_new - c) <= kEps * std::abs(c_new) &&
                      std::abs(dc_new - dc) <= kEps * std::abs(dc_new);
    c = c_new;
    dc = dc_new;
    if (done && n > 2) break;
  }
  return {c, dc};
}

// log(x^a e^-x / Gamma(a)).
double log_prefactor(double a, double log_x) {
  const double x = std::exp(log_x);
  return a * log_x - x - std::lgamma(a);
}

// Inverse standard normal CDF (Acklam's rational approximation, |rel err| < 1.2e-9): a start value.
double normal_quantile(double p) {
  static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02,  -2.759285104469687e+02,
                             1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                             6.680131188771972e+01, -1.328068155288572e+01};
  static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                             -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                             3.754408661907416e+00};
  const double lo = 0.02425;
  if (p < lo) {
    const double q = std::sqrt(-2 * std::log(p));
    return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
           ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  if (p > 1 - lo) return -normal_quantile(1 - p);
  const double q = p - 0.5, r = q * q;
  return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
         (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
}

}  // namespace

double digamma(double x) {
  double r = 0;
  while (x < 10) {
    r -= 1.0 / x;
    x += 1;
  }
  const double f = 1.0 / (x * x);
  const double t =
      f * (-1.0 / 12 +
           f * (1.0 / 120 +
                f * (-1.0 / 252 +
                     f * (1.0 / 240 + f * (-1.0 / 132 + f * (691.0 / 32760 + f * (-1.0 / 12)))))));
  return r + std::log(x) - 0.5 / x + t;
}

double trigamma(double x) {
  double r = 0;
  while (x < 10) {
    r += 1.0 / (x * x);
    x += 1;
  }
  const double f = 1.0 / (x * x);
  const double t =
      1.0 / 6 +
      f * (-1.0 / 30 +
           f * (1.0 / 42 + f * (-1.0 / 30 + f * (5.0 / 66 + f * (-691.0 / 2730 + f * 7.0 / 6)))));
  return r + 1.0 / x + 0.5 * f + t * f / x;
}

LogIncGamma log_incomplete_gamma(double a, double log_x) {
  if (log_x == -INFINITY) return {-INFINITY, 0.0};
  if (log_x == INFINITY) return {0.0, -INFINITY};
  const double x = std::exp(log_x);
  if (x < a + 1) {
    const double log_p = log_prefactor(a, log_x) + std::log(gamma_series(a, x).t);
    return {log_p, log_p < -0.6931 ? std::log1p(-std::exp(log_p)) : std::log(-std::expm1(log_p))};
  }
  const double log_q = log_prefactor(a, log_x) + std::log(gamma_fraction(a, x).c);
  return {log_q < -0.6931 ? std::log1p(-std::exp(log_q)) : std::log(-std::expm1(log_q)), log_q};
}

double gamma_dlogx_dalpha(double a, double log_x) {
  if (log_x == INFINITY) return 0.0;
  if (a > kLargeAlpha) {
    // Wilson-Hilferty: F(x; a) ~ Phi(z), z = 3 sqrt(a) (w - 1 + 1/(9a)), w = (x/a)^(1/3); implicit
    // differentiation at fixed F. Only within |z| < 8; the series and the fraction converge fast
    // in the far tails.
    const double w = std::exp((log_x - std::log(a)) / 3.0);
    const double z = 3.0 * std::sqrt(a) * (w - 1.0 + 1.0 / (9.0 * a));
    if (std::abs(z) < 8.0) return (1.5 - 0.5 * w + 1.0 / (6.0 * a)) / (a * w);
  }
  const double x = std::exp(log_x);
  if (x < a + 1) {
    // P = x^a e^-x T / Gamma(a):  d(log x)/da = T (psi(a) - log x) + sum t_n H_n, rewritten with
    // psi(a) + 1/a = psi(a + 1) so that nothing cancels as a -> 0.
    const Series s = gamma_series(a, x);
    return s.t * (digamma(a + 1) - log_x) + s.u;
  }
  const Fraction f = gamma_fraction(a, x);
  return f.c * (log_x - digamma(a)) + f.dc;
}

double gamma_dx_dalpha(double a, double x) {
  if (x <= 0) return 0.0;
  return x * gamma_dlogx_dalpha(a, std::log(x));
}

double gamma_log_quantile(double a, double p) {
  const double q = 1.0 - p;
  const bool lower = p <= 0.5;
  const double target = lower ? std::log(p) : std::log(q);
  // Start: the small-x bound P <= x^a / Gamma(a + 1) (a lower bound on the root), or
  // Wilson-Hilferty. log P and log Q are concave in log x, so Newton converges monotonically from
  // below the root (lower branch) and after one overshoot otherwise; the bracket guards the rest.
  const double y_small = (std::log(p) + std::lgamma(a + 1)) / a;
  const double w = 1.0 - 1.0 / (9.0 * a) + normal_quantile(p) / (3.0 * std::sqrt(a));
  double y = y_small;
  if (w > 0) {
    const double y_wh = std::log(a) + 3.0 * std::log(w);
    y = lower ? std::max(y_wh, y_small) : y_wh;
  }
  double lo = -INFINITY, hi = INFINITY;
  for (int it = 0; it < 200; ++it) {
    const LogIncGamma g = log_incomplete_gamma(a, y);
    const double lp = lower ? g.log_p : g.log_q;
    // phi(y) increasing in y for the lower branch, decreasing for the upper one.
    const double phi = lp - target;
    if ((phi < 0) == lower)
      lo = std::max(lo, y);
    else
      hi = std::min(hi, y);
    if (phi == 0) break;
    const double log_density_x = a * y - std::exp(y) - std::lgamma(a);  // log(x * pdf(x))
    double dphi = std::exp(log_density_x - lp);
    if (!lower) dphi = -dphi;
    double step = phi / dphi;
    if (!std::isfinite(step)) step = (phi < 0) == lower ? -1.0 : 1.0;
    double y_new = y - step;
    if (!(y_new > lo && y_new < hi)) {
      if (std::isfinite(lo) && std::isfinite(hi))
        y_new = 0.5 * (lo + hi);
      else
        y_new = std::isfinite(lo) ? lo + 1.0 : hi - 1.0;
    }
    if (std::abs(y_new - y) <= 2e-15 * std::max(1.0, std::abs(y))) {
      y = y_new;
      break;
    }
    y = y_new;
  }
  return y;
}

}  // namespace dirmoe
