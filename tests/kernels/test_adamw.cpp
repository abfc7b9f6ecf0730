// AdamW against a scalar reference written from the torch.optim.AdamW documentation, the first
// bias-corrected step moving each parameter by ~lr*sign(g), and pure weight decay.
#include <cmath>

#include "kernels/cpu/ops.h"
#include "tests/kernels/kernel_test_util.h"

namespace dirmoe::cpu::testing {
namespace {

// One parameter, following the pseudo-code of torch.optim.AdamW (amsgrad=False, maximize=False):
//   theta <- theta - gamma*lambda*theta; m <- b1 m + (1-b1) g; v <- b2 v + (1-b2) g^2;
//   mhat <- m / (1 - b1^t); vhat <- v / (1 - b2^t);
//   theta <- theta - gamma mhat / (sqrt(vhat) + eps)
struct ScalarAdamW {
  double theta, m = 0.0, v = 0.0;
  void step(double g, int t, double gamma, double b1, double b2, double eps, double lambda) {
    theta = theta - gamma * lambda * theta;
    m = b1 * m + (1.0 - b1) * g;
    v = b2 * v + (1.0 - b2) * g * g;
    double mhat = m / (1.0 - std::pow(b1, t));
    double vhat = v / (1.0 - std::pow(b2, t));
    theta = theta - gamma * mhat / (std::sqrt(vhat) + eps);
  }
};

TEST(AdamW, SeveralStepsMatchScalarReference) {
  const int64_t n = 37;
  const int num_steps = 6;
  std::vector<double> p = randn(n, 111);
  std::vector<double> m(n, 0.0), v(n, 0.0);
  std::vector<float> pf = to_float(p), mf(n, 0.0f), vf(n, 0.0f);
  std::vector<ScalarAdamW> ref;
  for (int64_t i = 0; i < n; ++i) ref.push_back({double(pf[i])});
  std::vector<double> pd = to_float_and_back(p);
  const double b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
  for (int t = 1; t <= num_steps; ++t) {
    const std::vector<double> g = to_float_and_back(randn(n, 200 + t, 0.5));
    const double lr = 1e-2 / t;  // changes every step, as under a schedule
    AdamWParams hp;
    hp.lr = lr;
    hp.beta1 = b1;
    hp.beta2 = b2;
    hp.eps = eps;
    hp.weight_decay = wd;
    hp.step = t;
    adamw_update(pd.data(), g.data(), m.data(), v.data(), n, hp);
    const std::vector<float> gf = to_float(g);
    adamw_update(pf.data(), gf.data(), mf.data(), vf.data(), n, hp);
    for (int64_t i = 0; i < n; ++i) ref[i].step(g[i], t, lr, b1, b2, eps, wd);
  }
  std::vector<double> ref_p(n), ref_m(n), ref_v(n);
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_NEAR(pd[i], ref[i].theta, 1e-14 * (1.0 + std::abs(ref[i].theta))) << i;
    EXPECT_NEAR(m[i], ref[i].m, 1e-15) << i;
    EXPECT_NEAR(v[i], ref[i].v, 1e-15) << i;
    ref_p[i] = ref[i].theta;
    ref_m[i] = ref[i].m;
    ref_v[i] = ref[i].v;
  }
  expect_close_to_double("adamw param", pf, ref_p, 1e-6);
  expect_close_to_double("adamw m", mf, ref_m, 1e-6);
  expect_close_to_double("adamw v", vf, ref_v, 1e-6);
}

TEST(AdamW, FirstStepMovesByLrTimesSign) {
  const int64_t n = 64;
  const std::vector<double> p0 = randn(n, 121);
  std::vector<double> g = randn(n, 122);
  for (auto& x : g) x = x >= 0 ? x + 1e-3 : x - 1e-3;  // |g| >> eps
  std::vector<double> p = p0, m(n, 0.0), v(n, 0.0);
  AdamWParams hp;
  hp.lr = 3e-3;
  hp.step = 1;
  adamw_update(p.data(), g.data(), m.data(), v.data(), n, hp);
  for (int64_t i = 0; i < n; ++i) {
    const double expected = -hp.lr * (g[i] > 0 ? 1.0 : -1.0);
    EXPECT_NEAR(p[i] - p0[i], expected, hp.lr * 1e-4) << i;
  }
}

TEST(AdamW, ZeroGradientLeavesOnlyDecoupledDecay) {
  const int64_t n = 8;
  const std::vector<double> p0 = randn(n, 131), g(n, 0.0);
  std::vector<double> p = p0, m(n, 0.0), v(n, 0.0);
  AdamWParams hp;
  hp.lr = 0.01;
  hp.weight_decay = 0.5;
  hp.step = 3;
  adamw_update(p.data(), g.data(), m.data(), v.data(), n, hp);
  for (int64_t i = 0; i < n; ++i) EXPECT_DOUBLE_EQ(p[i], p0[i] * (1.0 - 0.01 * 0.5));
}

}  // namespace
}  // namespace dirmoe::cpu::testing
