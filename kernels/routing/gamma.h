// Gamma-distribution numerics shared by the CPU router and the CUDA kernels: digamma/trigamma, the
// regularised incomplete gamma function in log space (power series below x = a + 1, continued
// fraction above, differentiated term by term after Moore, AS 187), Gamma(alpha, 1) sampling
// (Marsaglia-Tsang, or inversion) and the implicit-reparameterisation gradient d(log x)/dalpha.
// NOTE: samples are carried as log x so that alpha << 1 draws (x far below 1e-308) stay usable.
#pragma once

#include <cstdint>

#include "kernels/routing/math.h"
#include "runtime/core/hd.h"
#include "runtime/core/philox.h"

namespace dirmoe::routing {

constexpr double kGammaEps = 1e-16;
constexpr int kGammaMaxTerms = 1000000;
// Above this shape the Wilson-Hilferty cube-root approximation of the quantile is used for
// d(log x)/da (relative error O(a^-1.5): 1.2e-8 at a = 1e5) instead of the O(sqrt(a))-term sums.
constexpr double kGammaLargeAlpha = 1e5;
// Marsaglia-Tsang attempts per draw; attempt kGammaBoostAttempt is reserved for the a < 1 boost.
constexpr uint32_t kGammaMaxAttempts = 64;
constexpr uint32_t kGammaBoostAttempt = 0xFFFF;

// psi(x), x > 0.
template <class S>
DIRMOE_HD S digamma(S x) {
  S r = 0;
  while (x < 10) {
    r -= S(1) / x;
    x += 1;
  }
  const S f = S(1) / (x * x);
  const S t =
      f * (S(-1.0 / 12) +
           f * (S(1.0 / 120) +
                f * (S(-1.0 / 252) +
                     f * (S(1.0 / 240) +
                          f * (S(-1.0 / 132) + f * (S(691.0 / 32760) + f * S(-1.0 / 12)))))));
  return r + r_log(x) - S(0.5) / x + t;
}

// psi'(x), x > 0.
template <class S>
DIRMOE_HD S trigamma(S x) {
  S r = 0;
  while (x < 10) {
    r += S(1) / (x * x);
    x += 1;
  }
  const S f = S(1) / (x * x);
  const S t =
      S(1.0 / 6) +
      f * (S(-1.0 / 30) +
           f * (S(1.0 / 42) + f * (S(-1.0 / 30) + f * (S(5.0 / 66) + f * (S(-691.0 / 2730) +
                                                                          f * S(7.0) / S(6))))));
  return r + S(1) / x + S(0.5) * f + t * f / x;
}

// sum_n t_n with t_0 = 1/a, t_n = t_{n-1} x / (a + n), and sum_{n>=1} t_n sum_{j=1..n} 1/(a+j).
template <class S>
struct GammaSeries {
  S t;
  S u;
};
template <class S>
DIRMOE_HD GammaSeries<S> gamma_series(S a, S x) {
  S term = S(1) / a, t = term, u = 0, h = 0;
  for (int n = 1; n < kGammaMaxTerms; ++n) {
    term *= x / (a + n);
    h += S(1) / (a + n);
    t += term;
    u += term * h;
    if (term <= S(kGammaEps) * t && term * h <= S(kGammaEps) * u) break;
  }
  return {t, u};
}

// C = 1/(b0 + a1/(b1 + a2/(b2 + ...))), b_n = x + 2n + 1 - a, a_n = -n (n - a), and dC/da.
template <class S>
struct GammaFraction {
  S c;
  S dc;
};
template <class S>
DIRMOE_HD GammaFraction<S> gamma_fraction(S a, S x) {
  S p2 = 1, p1 = x + 1 - a, q2 = 0, q1 = 1;  // convergents n-2, n-1
  S dp2 = 0, dp1 = -1, dq2 = 0, dq1 = 0;     // their a-derivatives
  S c = q1 / p1, dc = (dq1 * p1 - q1 * dp1) / (p1 * p1);
  for (int n = 1; n < kGammaMaxTerms; ++n) {
    const S an = -n * (n - a), bn = x + 2 * n + 1 - a;
    const S p = bn * p1 + an * p2, q = bn * q1 + an * q2;
    const S dp = -p1 + bn * dp1 + n * p2 + an * dp2;
    const S dq = -q1 + bn * dq1 + n * q2 + an * dq2;
    const S s = S(1) / p;
    p2 = p1 * s, q2 = q1 * s, dp2 = dp1 * s, dq2 = dq1 * s;
    p1 = 1, q1 = q * s, dp1 = dp * s, dq1 = dq * s;
    const S c_new = q1, dc_new = dq1 - q1 * dp1;
    const bool done = r_abs(c_new - c) <= S(kGammaEps) * r_abs(c_new) &&
                      r_abs(dc_new - dc) <= S(kGammaEps) * r_abs(dc_new);
    c = c_new;
    dc = dc_new;
    if (done && n > 2) break;
  }
  return {c, dc};
}

// log(x^a e^-x / Gamma(a)).
template <class S>
DIRMOE_HD S gamma_log_prefactor(S a, S log_x) {
  const S x = r_exp(log_x);
  return a * log_x - x - r_lgamma(a);
}

// Inverse standard normal CDF (Acklam's rational approximation, |rel err| < 1.2e-9): a start value.
template <class S>
DIRMOE_HD S normal_quantile(S p) {
  const S lo = S(0.02425);
  const bool upper = p > 1 - lo;
  if (upper) p = 1 - p;
  S out;
  if (p < lo) {
    const S q = r_sqrt(-2 * r_log(p));
    out = (((((S(-7.784894002430293e-03) * q + S(-3.223964580411365e-01)) * q +
              S(-2.400758277161838e+00)) *
                 q +
             S(-2.549732539343734e+00)) *
                q +
            S(4.374664141464968e+00)) *
               q +
           S(2.938163982698783e+00)) /
          ((((S(7.784695709041462e-03) * q + S(3.224671290700398e-01)) * q +
             S(2.445134137142996e+00)) *
                q +
            S(3.754408661907416e+00)) *
               q +
           1);
    return upper ? -out : out;
  }
  const S q = p - S(0.5), r = q * q;
  out = (((((S(-3.969683028665376e+01) * r + S(2.209460984245205e+02)) * r +
            S(-2.759285104469687e+02)) *
               r +
           S(1.383577518672690e+02)) *
              r +
          S(-3.066479806614716e+01)) *
             r +
         S(2.506628277459239e+00)) *
        q /
        (((((S(-5.447609879822406e+01) * r + S(1.615858368580409e+02)) * r +
            S(-1.556989798598866e+02)) *
               r +
           S(6.680131188771972e+01)) *
              r +
          S(-1.328068155288572e+01)) *
             r +
         1);
  return upper ? -out : out;
}

// log P(a, x) and log Q(a, x) = log(1 - P), P the regularised lower incomplete gamma function,
// for a > 0 and x = exp(log_x) (log_x may be -inf).
template <class S>
struct LogIncGammaT {
  S log_p;
  S log_q;
};
template <class S>
DIRMOE_HD LogIncGammaT<S> log_incomplete_gamma(S a, S log_x) {
  const S inf = r_inf<S>();
  if (log_x == -inf) return {-inf, S(0)};
  if (log_x == inf) return {S(0), -inf};
  const S x = r_exp(log_x);
  if (x < a + 1) {
    const S log_p = gamma_log_prefactor(a, log_x) + r_log(gamma_series(a, x).t);
    return {log_p, log_p < S(-0.6931) ? r_log1p(-r_exp(log_p)) : r_log(-r_expm1(log_p))};
  }
  const S log_q = gamma_log_prefactor(a, log_x) + r_log(gamma_fraction(a, x).c);
  return {log_q < S(-0.6931) ? r_log1p(-r_exp(log_q)) : r_log(-r_expm1(log_q)), log_q};
}

// d(log x)/da for x ~ Gamma(a, 1) held at a fixed CDF level, x = exp(log_x): finite for every
// a > 0 and every representable log_x (x may underflow to 0).
template <class S>
DIRMOE_HD S gamma_dlogx_dalpha(S a, S log_x) {
  if (log_x == r_inf<S>()) return S(0);
  if (a > S(kGammaLargeAlpha)) {
    // Wilson-Hilferty: F(x; a) ~ Phi(z), z = 3 sqrt(a) (w - 1 + 1/(9a)), w = (x/a)^(1/3); implicit
    // differentiation at fixed F. Only within |z| < 8; the series and the fraction converge fast
    // in the far tails.
    const S w = r_exp((log_x - r_log(a)) / S(3));
    const S z = S(3) * r_sqrt(a) * (w - S(1) + S(1) / (S(9) * a));
    if (r_abs(z) < S(8)) return (S(1.5) - S(0.5) * w + S(1) / (S(6) * a)) / (a * w);
  }
  const S x = r_exp(log_x);
  if (x < a + 1) {
    // P = x^a e^-x T / Gamma(a):  d(log x)/da = T (psi(a) - log x) + sum t_n H_n, rewritten with
    // psi(a) + 1/a = psi(a + 1) so that nothing cancels as a -> 0.
    const GammaSeries<S> s = gamma_series(a, x);
    return s.t * (digamma(a + 1) - log_x) + s.u;
  }
  const GammaFraction<S> f = gamma_fraction(a, x);
  return f.c * (log_x - digamma(a)) + f.dc;
}

// log of the p-quantile of Gamma(a, 1), p in (0, 1): Newton in log x on log P (or log Q above the
// median), bracketed. Accurate to a few ulp of log x.
template <class S>
DIRMOE_HD S gamma_log_quantile(S a, S p) {
  const S q = 1 - p;
  const bool lower = p <= S(0.5);
  const S target = lower ? r_log(p) : r_log(q);
  // Start: the small-x bound P <= x^a / Gamma(a + 1) (a lower bound on the root), or
  // Wilson-Hilferty. log P and log Q are concave in log x, so Newton converges monotonically from
  // below the root (lower branch) and after one overshoot otherwise; the bracket guards the rest.
  const S y_small = (r_log(p) + r_lgamma(a + 1)) / a;
  const S w = S(1) - S(1) / (S(9) * a) + normal_quantile(p) / (S(3) * r_sqrt(a));
  S y = y_small;
  if (w > 0) {
    const S y_wh = r_log(a) + S(3) * r_log(w);
    y = lower ? r_max(y_wh, y_small) : y_wh;
  }
  S lo = -r_inf<S>(), hi = r_inf<S>();
  for (int it = 0; it < 200; ++it) {
    const LogIncGammaT<S> g = log_incomplete_gamma(a, y);
    const S lp = lower ? g.log_p : g.log_q;
    // phi(y) increasing in y for the lower branch, decreasing for the upper one.
    const S phi = lp - target;
    if ((phi < 0) == lower)
      lo = r_max(lo, y);
    else
      hi = r_min(hi, y);
    if (phi == 0) break;
    const S log_density_x = a * y - r_exp(y) - r_lgamma(a);  // log(x * pdf(x))
    S dphi = r_exp(log_density_x - lp);
    if (!lower) dphi = -dphi;
    S step = phi / dphi;
    if (!r_isfinite(step)) step = (phi < 0) == lower ? S(-1) : S(1);
    S y_new = y - step;
    if (!(y_new > lo && y_new < hi)) {
      if (r_isfinite(lo) && r_isfinite(hi))
        y_new = S(0.5) * (lo + hi);
      else
        y_new = r_isfinite(lo) ? lo + S(1) : hi - S(1);
    }
    if (r_abs(y_new - y) <= S(2e-15) * r_max(S(1), r_abs(y))) {
      y = y_new;
      break;
    }
    y = y_new;
  }
  return y;
}

// Marsaglia-Tsang (2000) for Gamma(a, 1); for a < 1 the boost x = y * u^(1/a), y ~ Gamma(a + 1),
// is applied in log space. `draw(attempt)` returns independent Philox words per attempt. Returns
// log x.
template <class S, class Draw>
DIRMOE_HD S sample_log_gamma(S a, const Draw& draw) {
  const S b = a < S(1) ? a + S(1) : a;
  const S d = b - S(1.0 / 3.0), c = S(1) / r_sqrt(S(9) * d);
  // NOTE: the acceptance rate is above 95% for every a; after kGammaMaxAttempts rejections (never
  // seen in practice) the mode-like value d is returned so that the draw stays deterministic.
  S log_x = r_log(d);
  for (uint32_t attempt = 0; attempt < kGammaMaxAttempts; ++attempt) {
    const Philox4 r = draw(attempt);
    const S u1 = S(uniform_open(r.v[0])), u2 = S(uniform_open(r.v[1]));
    const S n = r_sqrt(S(-2) * r_log(u1)) * r_cos(S(6.283185307179586476925) * u2);
    const S v = S(1) + c * n;
    if (v <= 0) continue;
    const S log_v3 = S(3) * r_log(v);
    const S v3 = v * v * v;
    if (r_log(S(uniform_open(r.v[2]))) < S(0.5) * n * n + d - d * v3 + d * log_v3) {
      log_x = r_log(d) + log_v3;
      break;
    }
  }
  if (a < S(1)) {
    const Philox4 r = draw(kGammaBoostAttempt);
    log_x += r_log(S(uniform53(r.v[0], r.v[1]))) / a;
  }
  return log_x;
}

// Inversion sampler: log of the u-quantile with u from the boost-free first draw. Slower than
// Marsaglia-Tsang but a smooth function of a at fixed noise (gradient checks, exact reparam.).
template <class S, class Draw>
DIRMOE_HD S sample_log_gamma_inverse(S a, const Draw& draw) {
  const Philox4 r = draw(0);
  return gamma_log_quantile(a, S(uniform53(r.v[0], r.v[1])));
}

}  // namespace dirmoe::routing
