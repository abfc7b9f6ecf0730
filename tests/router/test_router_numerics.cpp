// Router numerics: the Gamma sampler (moments, Kolmogorov-Smirnov), the implicit-reparameterisation
// gradient against the 40-digit oracle, the Dirichlet KL against its oracle and finite differences,
// the prior calibration by Monte Carlo, ProbMoE's subset DP against brute-force enumeration and
// chi-square tests of its sampler, and the schedules.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "router/dirichlet.h"
#include "router/gamma.h"
#include "router/noise.h"
#include "router/schedule.h"
#include "router/subset.h"
#include "router_test_util.h"

namespace dirmoe {
namespace {

using test::expect_error;

// ---- Gamma ------------------------------------------------------------------------------------

TEST(IncompleteGamma, ClosedFormsAndComplement) {
  for (double x : {1e-8, 0.1, 1.0, 3.0, 20.0}) {
    const LogIncGamma e = log_incomplete_gamma(1.0, std::log(x));
    EXPECT_NEAR(std::exp(e.log_p), -std::expm1(-x), 1e-15 + 1e-13 * -std::expm1(-x)) << x;
    EXPECT_NEAR(e.log_q, -x, 1e-13 * std::max(1.0, x)) << x;
    const LogIncGamma h = log_incomplete_gamma(0.5, std::log(x));
    EXPECT_NEAR(std::exp(h.log_p), std::erf(std::sqrt(x)), 1e-14) << x;
    EXPECT_NEAR(std::exp(h.log_q), std::erfc(std::sqrt(x)),
                1e-14 * std::erfc(std::sqrt(x)) + 1e-300)
        << x;
  }
  const LogIncGamma z = log_incomplete_gamma(0.3, -INFINITY);
  EXPECT_EQ(z.log_p, -INFINITY);
  EXPECT_EQ(z.log_q, 0.0);
}

TEST(GammaGradient, MatchesOracleOnEveryRow) {
  const auto rows = test::read_csv(test::data_path("gamma_grad.csv"));
  ASSERT_EQ(rows.size(), 227u);
  double worst = 0, worst_torch = 0, worst_quantile = 0;
  for (const auto& r : rows) {
    const double a = std::stod(r[0]), cdf = std::stod(r[1]), x = std::stod(r[2]);
    const double exact = std::stod(r[3]), torch = std::stod(r[4]);
    const double got = gamma_dx_dalpha(a, x);
    ASSERT_TRUE(std::isfinite(got)) << "alpha " << a << " x " << x;
    const double rel = std::abs(got - exact) / std::abs(exact);
    EXPECT_LE(rel, 1e-4) << "alpha " << a << " cdf " << cdf << " x " << x;
    worst = std::max(worst, rel);
    worst_torch = std::max(worst_torch, std::abs(torch - exact) / std::abs(exact));
    const double q = std::exp(gamma_log_quantile(a, cdf));
    worst_quantile = std::max(worst_quantile, std::abs(q - x) / x);
  }
  EXPECT_LE(worst_quantile, 1e-12);
  std::printf(
      "dG/dalpha vs oracle (227 rows, alpha 0.01..300, x down to %.3g): worst relative "
      "error %.3g (PyTorch _standard_gamma_grad: %.3g); quantile worst %.3g\n",
      5.66e-301, worst, worst_torch, worst_quantile);
}

TEST(GammaGradient, FiniteAndPositiveForTinyAndHugeSamples) {
  for (double a : {1e-3, 0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 300.0, 1e4, 1e5, 2e5, 1e7}) {
    for (double log_x : {-1e5, -2000.0, std::log(1e-300), std::log(1e-150), -20.0, -1.0, 0.0,
                         std::log(a), std::log(a) + 1, std::log(a) + 5, std::log(1e3 * a + 50)}) {
      const double g = gamma_dlogx_dalpha(a, log_x);
      EXPECT_TRUE(std::isfinite(g) && g > 0) << "alpha " << a << " log x " << log_x << ": " << g;
      const double dx = gamma_dx_dalpha(a, std::exp(log_x));
      EXPECT_TRUE(std::isfinite(dx) && dx >= 0) << "alpha " << a << " log x " << log_x;
    }
    const double dx = gamma_dx_dalpha(a, 1e-150);
    EXPECT_TRUE(std::isfinite(dx) && dx > 0) << a;
  }
  EXPECT_EQ(gamma_dx_dalpha(0.5, 0.0), 0.0);
}

// d log x / d alpha at a fixed CDF level equals the derivative of the quantile function.
TEST(GammaGradient, EqualsDerivativeOfTheQuantile) {
  double worst = 0;
  for (double a : {0.02, 0.3, 1.0, 4.0, 50.0, 2000.0}) {
    for (double p : {1e-6, 0.01, 0.3, 0.5, 0.8, 0.999}) {
      double aa = a;
      const double num = test::richardson([&] { return gamma_log_quantile(aa, p); }, aa, 1e-3 * a);
      const double ana = gamma_dlogx_dalpha(a, gamma_log_quantile(a, p));
      worst = std::max(worst, std::abs(num - ana) / std::abs(ana));
    }
  }
  EXPECT_LE(worst, 1e-7);
}

std::vector<double> draw_log_gamma(double a, int n, bool inverse, uint64_t seed) {
  RouterContext ctx{seed, 7, 3, 1000, true};
  RouterNoise noise(ctx, NoisePurpose::kGamma);
  std::vector<double> out(n);
  for (int t = 0; t < n; ++t) {
    auto draw = [&](uint32_t attempt) { return noise.block(t, 0, attempt); };
    out[t] = inverse ? sample_log_gamma_inverse(a, draw) : sample_log_gamma(a, draw);
  }
  return out;
}

// Under Marsaglia-Tsang draws, the implicit gradient is unbiased: E[dx/da] = dE[x]/da = 1 and
// E[d log x/da] = psi'(a).
TEST(GammaGradient, UnbiasedUnderMarsagliaTsangDraws) {
  const int n = 20000;
  for (double a : {0.1, 1.0, 10.0}) {
    const auto lx = draw_log_gamma(a, n, false, 99);
    double s = 0, s2 = 0, l = 0, l2 = 0;
    for (double y : lx) {
      const double g = gamma_dlogx_dalpha(a, y), dx = std::exp(y) * g;
      s += dx;
      s2 += dx * dx;
      l += g;
      l2 += g * g;
    }
    const double m = s / n, se = std::sqrt((s2 / n - m * m) / n);
    const double ml = l / n, sel = std::sqrt((l2 / n - ml * ml) / n);
    EXPECT_LE(std::abs(m - 1.0), 4 * se) << a;
    EXPECT_LE(std::abs(ml - trigamma(a)), 4 * sel) << a;
  }
}

struct SamplerCase {
  bool inverse;
};
class GammaSamplerTest : public ::testing::TestWithParam<SamplerCase> {};

TEST_P(GammaSamplerTest, MomentsAndKolmogorovSmirnov) {
  const bool inverse = GetParam().inverse;
  const int n = 20000;
  for (double a : {0.01, 0.1, 0.5, 1.0, 2.0, 10.0, 100.0}) {
    auto lx = draw_log_gamma(a, n, inverse, 12345);
    double s = 0, s2 = 0;
    for (double y : lx) {
      ASSERT_TRUE(std::isfinite(y)) << a;
      const double x = std::exp(y);
      s += x;
      s2 += x * x;
    }
    const double mean = s / n, var = (s2 - n * mean * mean) / (n - 1);
    const double se_mean = std::sqrt(a / n), se_var = std::sqrt((2 * a * a + 6 * a) / n);
    // KS on log x (monotone transform: same statistic), CDF from the log-space incomplete gamma.
    std::sort(lx.begin(), lx.end());
    double D = 0;
    for (int i = 0; i < n; ++i) {
      const double F = std::exp(log_incomplete_gamma(a, lx[i]).log_p);
      D = std::max({D, F - static_cast<double>(i) / n, static_cast<double>(i + 1) / n - F});
    }
    const double sn = std::sqrt(static_cast<double>(n));
    const double p = test::kolmogorov_tail((sn + 0.12 + 0.11 / sn) * D);
    std::printf(
        "gamma sampler %-15s alpha %6g: mean %.5g (%+.2f se) var %.5g (%+.2f se) KS D "
        "%.4f p %.3f  (min sample e^%.4g)\n",
        inverse ? "inverse_cdf" : "marsaglia_tsang", a, mean, (mean - a) / se_mean, var,
        (var - a) / se_var, D, p, lx.front());
    EXPECT_LE(std::abs(mean - a), 3 * se_mean) << a;
    EXPECT_LE(std::abs(var - a), 3 * se_var) << a;
    EXPECT_GT(p, 0.01) << a;
  }
}
INSTANTIATE_TEST_SUITE_P(Samplers, GammaSamplerTest,
                         ::testing::Values(SamplerCase{false}, SamplerCase{true}),
                         [](const auto& info) {
                           return std::string(info.param.inverse ? "InverseCdf" : "MarsagliaTsang");
                         });

TEST(GammaSampler, NoiseIsKeyedByGlobalToken) {
  RouterContext a{5, 2, 1, 100, true}, b{5, 2, 1, 96, true};
  RouterNoise na(a, NoisePurpose::kGamma), nb(b, NoisePurpose::kGamma);
  for (int t = 0; t < 8; ++t) {
    auto da = [&](uint32_t k) { return na.block(t, 3, k); };
    auto db = [&](uint32_t k) { return nb.block(t + 4, 3, k); };
    EXPECT_EQ(sample_log_gamma(0.3, da), sample_log_gamma(0.3, db));
  }
  RouterContext c{5, 3, 1, 100, true};  // another step: other draws
  RouterNoise nc(c, NoisePurpose::kGamma);
  EXPECT_NE(na.uniform(0, 0), nc.uniform(0, 0));
  RouterContext l{5, 2, 2, 100, true};  // another layer
  EXPECT_NE(na.uniform(0, 0), RouterNoise(l, NoisePurpose::kGamma).uniform(0, 0));
  EXPECT_NE(na.uniform(0, 0), RouterNoise(a, NoisePurpose::kGate).uniform(0, 0));
}

// ---- Dirichlet --------------------------------------------------------------------------------

TEST(DirichletKl, MatchesOracleOnEveryRow) {
  const auto rows = test::read_csv(test::data_path("dirichlet_kl.csv"));
  ASSERT_EQ(rows.size(), 200u);
  double worst = 0;
  for (const auto& r : rows) {
    const auto q = test::parse_vector(r[1]), p = test::parse_vector(r[2]);
    ASSERT_EQ(q.size(), p.size());
    ASSERT_EQ(static_cast<int>(q.size()), std::stoi(r[0]));
    const double exact = std::stod(r[3]);
    const double got = dirichlet_kl(q.data(), p.data(), static_cast<int>(q.size()));
    const double rel = std::abs(got - exact) / std::abs(exact);
    EXPECT_LE(rel, 1e-9) << "row with E = " << r[0];
    worst = std::max(worst, rel);
  }
  std::printf(
      "Dirichlet KL vs oracle (200 rows, E 2..32, concentrations 1e-3..500): worst "
      "relative error %.3g\n",
      worst);
}

TEST(DirichletKl, GradientsMatchFiniteDifferences) {
  const auto rows = test::read_csv(test::data_path("dirichlet_kl.csv"));
  test::GradError worst;
  for (size_t row = 0; row < rows.size(); row += 7) {
    auto q = test::parse_vector(rows[row][1]), p = test::parse_vector(rows[row][2]);
    const int E = static_cast<int>(q.size());
    std::vector<double> dq(E), dp(E), nq(E), np(E);
    dirichlet_kl_grad(q.data(), p.data(), E, dq.data(), dp.data());
    auto f = [&] { return dirichlet_kl(q.data(), p.data(), E); };
    for (int i = 0; i < E; ++i) {
      nq[i] = test::richardson(f, q[i], 1e-3 * q[i]);
      np[i] = test::richardson(f, p[i], 1e-3 * p[i]);
    }
    for (auto [num, ana] : {std::pair{&nq, &dq}, std::pair{&np, &dp}}) {
      const auto e = test::grad_error(*num, *ana);
      worst.elementwise = std::max(worst.elementwise, e.elementwise);
      worst.normwise = std::max(worst.normwise, e.normwise);
    }
  }
  EXPECT_LE(worst.elementwise, 1e-6);
  EXPECT_LE(worst.normwise, 1e-6);
  std::printf("Dirichlet KL gradients vs Richardson differences: worst element %.3g, norm %.3g\n",
              worst.elementwise, worst.normwise);
}

TEST(DirichletKl, ZeroAtEqualityPositiveOtherwise) {
  std::vector<double> a = {0.3, 2.0, 7.5}, b = {0.3, 2.0, 7.5}, c = {1.0, 1.0, 1.0};
  EXPECT_NEAR(dirichlet_kl(a.data(), b.data(), 3), 0.0, 1e-13);
  EXPECT_GT(dirichlet_kl(a.data(), c.data(), 3), 0.0);
  std::vector<double> g(3), gp(3);
  dirichlet_kl_grad(a.data(), b.data(), 3, g.data(), gp.data());
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(g[i], 0.0, 1e-12);
    EXPECT_NEAR(gp[i], 0.0, 1e-12);
  }
}

struct PriorCase {
  int E, k;
  double m, h;
};

TEST(PriorCalibration, MonteCarloConfirmsActiveMassAndSimpsonIndex) {
  const int n = 80000;
  for (PriorCase pc :
       {PriorCase{8, 1, 0.8, 0.75}, PriorCase{8, 2, 0.6, 0.5}, PriorCase{16, 4, 0.5, 0.3},
        PriorCase{4, 1, 0.25, 0.4}, PriorCase{64, 8, 0.9, 0.2}}) {
    const DirichletPrior p = calibrate_dirichlet_prior(pc.E, pc.k, pc.m, pc.h);
    EXPECT_NEAR(prior_active_mass(p, pc.E, pc.k), pc.m, 1e-12);
    EXPECT_NEAR(prior_mean_simpson(p, pc.E, pc.k), pc.h, 1e-12);
    if (std::abs(pc.m * pc.E - pc.k) < 1e-12) {
      EXPECT_NEAR(p.lambda, (1 - pc.h) / (pc.h * pc.E - 1), 1e-12);  // symmetric closed form
    }
    std::vector<double> alpha(pc.E);
    for (int i = 0; i < pc.E; ++i) alpha[i] = p.lambda * (i < pc.k ? p.a_hi : p.a_lo);
    EXPECT_NEAR(dirichlet_mean_simpson(alpha.data(), pc.E), pc.h, 1e-12);
    RouterContext ctx{2024, 0, 0, 0, true};
    RouterNoise noise(ctx, NoisePurpose::kGamma);
    std::vector<double> lg(pc.E);
    double ms = 0, ms2 = 0, ss = 0, ss2 = 0;
    for (int t = 0; t < n; ++t) {
      double mx = -INFINITY;
      for (int i = 0; i < pc.E; ++i) {
        auto draw = [&](uint32_t a) { return noise.block(t, i, a); };
        lg[i] = sample_log_gamma(alpha[i], draw);
        mx = std::max(mx, lg[i]);
      }
      double z = 0;
      for (int i = 0; i < pc.E; ++i) z += std::exp(lg[i] - mx);
      double mass = 0, simpson = 0;
      for (int i = 0; i < pc.E; ++i) {
        const double th = std::exp(lg[i] - mx) / z;
        if (i < pc.k) mass += th;
        simpson += th * th;
      }
      ms += mass;
      ms2 += mass * mass;
      ss += simpson;
      ss2 += simpson * simpson;
    }
    const double m = ms / n, s = ss / n;
    const double se_m = std::sqrt((ms2 / n - m * m) / n), se_s = std::sqrt((ss2 / n - s * s) / n);
    std::printf(
        "prior E=%d k=%d m=%.2f h=%.2f: a_hi/a_lo %.4g lambda_p %.4g | MC (%d draws) "
        "active mass %.4f (rel %+.2f%%, se %.2f%%) Simpson %.4f (rel %+.2f%%, se %.2f%%)\n",
        pc.E, pc.k, pc.m, pc.h, p.a_hi / p.a_lo, p.lambda, n, m, 100 * (m / pc.m - 1),
        100 * se_m / pc.m, s, 100 * (s / pc.h - 1), 100 * se_s / pc.h);
    EXPECT_LE(std::abs(m / pc.m - 1), 0.01);
    EXPECT_LE(std::abs(s / pc.h - 1), 0.01);
    EXPECT_LE(3 * se_m / pc.m, 0.01);  // the 1% check has power
    EXPECT_LE(3 * se_s / pc.h, 0.01);
  }
}

TEST(PriorCalibration, SimpsonFloorAndSymmetricCase) {
  EXPECT_NEAR(prior_simpson_floor(8, 2, 0.25), 1.0 / 8, 1e-15);
  const DirichletPrior p = calibrate_dirichlet_prior(8, 2, 0.25, 0.4);
  EXPECT_NEAR(p.a_hi, 1.0, 1e-15);
  EXPECT_NEAR(p.lambda, (1 - 0.4) / (0.4 * 8 - 1), 1e-14);
  expect_error([] { calibrate_dirichlet_prior(8, 1, 0.8, 0.5); }, "Simpson index");
}

// ---- ProbMoE subset DP ------------------------------------------------------------------------

struct Enumerated {
  std::vector<double> size_prob;  // [E+1]
  std::vector<double> mu;         // [E]
  std::map<int, double> subset;   // bitmask -> probability
};

// P(S) ~ prod_S p prod_notS (1 - p) restricted to |S| in [k_min, k_max], by enumeration.
Enumerated enumerate(const std::vector<double>& l, int k_min, int k_max) {
  const int E = static_cast<int>(l.size());
  Enumerated r;
  r.size_prob.assign(E + 1, 0.0);
  r.mu.assign(E, 0.0);
  double z = 0;
  for (int mask = 0; mask < (1 << E); ++mask) {
    const int k = __builtin_popcount(mask);
    if (k < k_min || k > k_max) continue;
    double w = 1;
    for (int i = 0; i < E; ++i) {
      const double p = 1 / (1 + std::exp(-l[i]));
      w *= (mask >> i & 1) ? p : 1 - p;
    }
    r.subset[mask] = w;
    r.size_prob[k] += w;
    for (int i = 0; i < E; ++i)
      if (mask >> i & 1) r.mu[i] += w;
    z += w;
  }
  for (auto& [m, w] : r.subset) w /= z;
  for (double& v : r.size_prob) v /= z;
  for (double& v : r.mu) v /= z;
  return r;
}

TEST(SubsetDP, MarginalsEqualEnumerationUpTo12Experts) {
  double worst = 0, worst_size = 0;
  for (int E = 1; E <= 12; ++E) {
    const auto l = test::randn(E, 100 + E, 2.0);
    for (int k = 1; k <= E; ++k) {
      SubsetDP dp(E, k);
      dp.build(l.data(), k, k);
      std::vector<double> mu(E);
      dp.marginals(mu.data());
      const Enumerated ref = enumerate(l, k, k);
      double sum = 0;
      for (int i = 0; i < E; ++i) {
        worst = std::max(worst, std::abs(mu[i] - ref.mu[i]));
        sum += mu[i];
      }
      EXPECT_NEAR(sum, k, 1e-12);
    }
    // Dynamic-k: P(k) ~ Z_k over [k_min, k_max].
    for (int k_min = 1; k_min <= E; ++k_min) {
      for (int k_max = k_min; k_max <= E; k_max += 2) {
        SubsetDP dp(E, k_max);
        dp.build(l.data(), k_min, k_max);
        std::vector<double> mu(E);
        dp.marginals(mu.data());
        const Enumerated ref = enumerate(l, k_min, k_max);
        for (int k = 0; k <= E; ++k)
          worst_size = std::max(worst_size,
                                std::abs((k <= k_max ? dp.size_prob(k) : 0.0) - ref.size_prob[k]));
        for (int i = 0; i < E; ++i) worst = std::max(worst, std::abs(mu[i] - ref.mu[i]));
      }
    }
  }
  EXPECT_LE(worst, 1e-9);
  EXPECT_LE(worst_size, 1e-9);
  std::printf(
      "ProbMoE DP vs enumeration (E = 1..12, every k and [k_min, k_max]): worst marginal "
      "error %.3g, worst P(k) error %.3g\n",
      worst, worst_size);
}

TEST(SubsetDP, HessianVectorProductMatchesDifferencesOfMarginals) {
  const int E = 9;
  auto l = test::randn(E, 7, 1.5);
  const auto v = test::randn(E, 8);
  for (auto [k_min, k_max] : {std::pair{3, 3}, std::pair{2, 5}}) {
    SubsetDP dp(E, k_max);
    std::vector<double> mu(E), hv(E), num(E, 0.0);
    dp.build(l.data(), k_min, k_max);
    dp.marginals(mu.data(), v.data(), hv.data());
    for (int m = 0; m < E; ++m) {
      // (dmu/dl) v = gradient of <v, mu> (the Hessian is symmetric).
      auto f = [&] {
        dp.build(l.data(), k_min, k_max);
        std::vector<double> x(E);
        dp.marginals(x.data());
        return std::inner_product(x.begin(), x.end(), v.begin(), 0.0);
      };
      num[m] = test::richardson(f, l[m], 1e-3);
    }
    const auto e = test::grad_error(num, hv);
    EXPECT_LE(e.elementwise, 1e-7) << k_min << ".." << k_max;
    EXPECT_LE(e.normwise, 1e-8) << k_min << ".." << k_max;
  }
}

// Chi-square p-value: Q(df/2, x/2).
double chi2_pvalue(double x, int df) {
  return std::exp(log_incomplete_gamma(0.5 * df, std::log(0.5 * x)).log_q);
}

TEST(SubsetDP, SampledSubsetsPassChiSquare) {
  struct Case {
    int E, k_min, k_max;
  };
  const int n = 40000;
  for (Case c : {Case{6, 3, 3}, Case{7, 2, 2}, Case{5, 1, 3}}) {
    const auto l = test::randn(c.E, 31 + c.E, 1.0);
    SubsetDP dp(c.E, c.k_max);
    dp.build(l.data(), c.k_min, c.k_max);
    const Enumerated ref = enumerate(l, c.k_min, c.k_max);
    RouterContext ctx{77, 4, 2, 0, true};
    RouterNoise sub(ctx, NoisePurpose::kSubset), size(ctx, NoisePurpose::kSubsetSize);
    std::map<int, int> counts;
    std::vector<int32_t> chosen(c.E);
    for (int t = 0; t < n; ++t) {
      const int k = dp.sample_size(size.uniform(t, 0));
      const int m = dp.sample(
          k, [&](int i) { return sub.uniform(t, i); }, chosen.data());
      ASSERT_EQ(m, k);
      int mask = 0;
      for (int j = 0; j < m; ++j) mask |= 1 << chosen[j];
      ASSERT_EQ(__builtin_popcount(mask), k);
      ++counts[mask];
    }
    double chi2 = 0;
    for (const auto& [mask, p] : ref.subset) {
      const double expect = n * p, got = counts.count(mask) ? counts[mask] : 0;
      chi2 += (got - expect) * (got - expect) / expect;
    }
    const int df = static_cast<int>(ref.subset.size()) - 1;
    const double pv = chi2_pvalue(chi2, df);
    std::printf(
        "ProbMoE sampler E=%d k in [%d,%d]: %d draws over %zu subsets, chi2 %.2f (df %d), "
        "p %.3f\n",
        c.E, c.k_min, c.k_max, n, ref.subset.size(), chi2, df, pv);
    EXPECT_GT(pv, 0.01);
  }
}

TEST(SubsetDP, ExtremeLogitsStayFinite) {
  const std::vector<double> l = {60, -60, 0, 45, -45, 700, -700};
  const int E = static_cast<int>(l.size());
  SubsetDP dp(E, 4);
  const double lz = dp.build(l.data(), 1, 4);
  EXPECT_TRUE(std::isfinite(lz));
  std::vector<double> mu(E), v(E, 1.0), hv(E);
  dp.marginals(mu.data(), v.data(), hv.data());
  for (int i = 0; i < E; ++i) {
    EXPECT_TRUE(std::isfinite(mu[i]) && mu[i] >= -1e-15 && mu[i] <= 1 + 1e-12) << i;
    EXPECT_TRUE(std::isfinite(hv[i])) << i;
  }
}

// ---- Schedules --------------------------------------------------------------------------------

TEST(Schedule, ValuesOfEachType) {
  const Schedule c = Schedule::constant(0.3);
  EXPECT_EQ(c.at(0), 0.3);
  EXPECT_EQ(c.at(1000), 0.3);
  const Schedule e = Schedule::exponential(1.0, 0.9, 0.2);
  EXPECT_DOUBLE_EQ(e.at(0), 1.0);
  EXPECT_DOUBLE_EQ(e.at(2), 0.81);
  EXPECT_DOUBLE_EQ(e.at(100), 0.2);
  EXPECT_DOUBLE_EQ(e.at(-1), 1.0);
  Schedule lin;
  lin.type = ScheduleType::kLinear;
  lin.start = 0;
  lin.end = 2;
  lin.steps = 10;
  EXPECT_DOUBLE_EQ(lin.at(5), 1.0);
  EXPECT_DOUBLE_EQ(lin.at(50), 2.0);
  Schedule cos = lin;
  cos.type = ScheduleType::kCosine;
  EXPECT_DOUBLE_EQ(cos.at(0), 0.0);
  EXPECT_NEAR(cos.at(5), 1.0, 1e-15);
  EXPECT_DOUBLE_EQ(cos.at(10), 2.0);
  EXPECT_EQ(parse_schedule_type("cosine"), ScheduleType::kCosine);
  EXPECT_THROW(parse_schedule_type("step"), std::invalid_argument);
}

TEST(Schedule, ValidationNamesTheKey) {
  expect_error([] { validate_schedule(Schedule::exponential(1.0, 0.9, 2.0), "x.tau", 0, true); },
               "x.tau.floor: must not exceed x.tau.start");
  expect_error([] { validate_schedule(Schedule::exponential(1.0, 1.5, 0.1), "x.tau", 0, true); },
               "x.tau.rate");
  expect_error([] { validate_schedule(Schedule::exponential(1.0, 0.9, 0.0), "x.tau", 0, true); },
               "x.tau.floor: must be > 0");
  expect_error([] { validate_schedule(Schedule::constant(-1), "x.beta", 0, false); },
               "x.beta: must be >= 0");
  Schedule lin;
  lin.type = ScheduleType::kLinear;
  lin.start = 1;
  lin.end = -1;
  lin.steps = 3;
  expect_error([&] { validate_schedule(lin, "x.w", 0, false); }, "x.w.end");
  lin.end = 1;
  lin.steps = 0;
  expect_error([&] { validate_schedule(lin, "x.w", 0, false); }, "x.w.steps");
}

}  // namespace
}  // namespace dirmoe
