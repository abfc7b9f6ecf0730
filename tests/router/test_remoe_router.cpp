// ReMoE router: forward against a plain-loop reference (routing, the load-weighted L1 term,
// statistics), backward against Richardson differences in double (points kept away from the ReLU
// kink), a micro-batch where no token selects any expert, the lambda controller against its closed
// form, and config errors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "kernels/routing/remoe.h"
#include "router/remoe_router.h"
#include "router/router.h"
#include "router_test_util.h"

namespace dirmoe {
namespace {

using test::expect_error;

RouterConfig config(int k) {
  RouterConfig cfg;
  cfg.type = "remoe";
  cfg.k = k;
  return cfg;
}

// Weights with a strong first column of -1 and hidden states whose first feature spans [-3, 3]:
// token 0 has every logit negative (no expert), the last token every logit positive (all E).
struct Case {
  int64_t N = 12, d = 5;
  int E = 6, k = 2;
  std::vector<double> w, h;
  Case() {
    w = test::randn(E * d, 11, 0.3);
    for (int e = 0; e < E; ++e) w[e * d] = -1.0 + 0.05 * e;
    h = test::randn(N * d, 12, 0.3);
    for (int64_t t = 0; t < N; ++t) h[t * d] = 3.0 - 6.0 * static_cast<double>(t) / (N - 1);
  }
  double logit(int64_t t, int e) const {
    double l = 0;
    for (int64_t j = 0; j < d; ++j) l += w[e * d + j] * h[t * d + j];
    return l;
  }
};

template <class T>
std::unique_ptr<ReMoERouter<T>> make(const Case& c, int k) {
  auto r = std::make_unique<ReMoERouter<T>>(config(k), c.d, c.E, "r");
  for (int64_t i = 0; i < c.E * c.d; ++i) r->weight().value[i] = static_cast<T>(c.w[i]);
  return r;
}

double stat(const RouterStats& s, const std::string& name) {
  for (const auto& [n, v] : s.scalars)
    if (n == name) return v;
  ADD_FAILURE() << "no router statistic '" << name << "'";
  return NAN;
}

TEST(ReMoERouter, ForwardMatchesPlainLoops) {
  const Case c;
  auto router = make<double>(c, c.k);
  RouterContext ctx;
  ctx.remoe_lambda = 0.25;
  Routing<double> r;
  router->forward(c.h.data(), c.N, ctx, r);
  ASSERT_EQ(static_cast<int64_t>(r.offsets.size()), c.N + 1);
  std::vector<double> gate_sum(c.E, 0.0), count(c.E, 0.0);
  int64_t nnz = 0, none = 0;
  for (int64_t t = 0; t < c.N; ++t) {
    std::vector<int32_t> want_e;
    std::vector<double> want_w;
    for (int e = 0; e < c.E; ++e) {
      const double l = c.logit(t, e);
      if (l > 0) {
        want_e.push_back(e);
        want_w.push_back(l);
        gate_sum[e] += l;
        count[e] += 1;
      }
    }
    none += want_e.empty();
    nnz += static_cast<int64_t>(want_e.size());
    ASSERT_EQ(r.offsets[t + 1] - r.offsets[t], static_cast<int64_t>(want_e.size()))
        << "token " << t;
    for (size_t j = 0; j < want_e.size(); ++j) {
      EXPECT_EQ(r.experts[r.offsets[t] + j], want_e[j]);
      EXPECT_NEAR(r.weights[r.offsets[t] + j], want_w[j], 1e-14);
    }
  }
  EXPECT_EQ(r.offsets[0], 0);
  EXPECT_EQ(r.offsets[1], 0) << "token 0 must select no expert";
  EXPECT_EQ(r.offsets[c.N] - r.offsets[c.N - 1], c.E) << "the last token must select every expert";
  // L_reg = lambda E sum_e (sum_t R_te / N) (n_e / (N k)), written out.
  double l1 = 0;
  for (int e = 0; e < c.E; ++e) l1 += (gate_sum[e] / c.N) * (count[e] / (c.N * c.k));
  l1 *= 0.25 * c.E;
  EXPECT_NEAR(router->loss(), l1, 1e-14 * l1);
  const RouterStats& s = router->stats();
  EXPECT_DOUBLE_EQ(s.mean_active, static_cast<double>(nnz) / c.N);
  EXPECT_DOUBLE_EQ(stat(s, "sparsity"), 1.0 - static_cast<double>(nnz) / (c.N * c.E));
  EXPECT_DOUBLE_EQ(stat(s, "no_expert"), static_cast<double>(none) / c.N);
  EXPECT_EQ(stat(s, "lambda"), 0.25);
  EXPECT_NEAR(stat(s, "l1_load") * 0.25, l1, 1e-14 * l1);
  EXPECT_EQ(s.aux_loss, 0.0);
  std::printf("remoe forward: %ld tokens, %ld assignments, %ld without an expert, L1 %.6g\n",
              static_cast<long>(c.N), static_cast<long>(nnz), static_cast<long>(none), l1);
}

TEST(ReMoERouter, UnsetLambdaIsLambdaInitInFp32) {
  const Case c;
  RouterConfig cfg = config(1);
  cfg.remoe.lambda_init = 0.1;  // not an fp32 value
  ReMoERouter<double> router(cfg, c.d, c.E, "r");
  Routing<double> r;
  router.forward(c.h.data(), c.N, RouterContext{}, r);
  EXPECT_EQ(router.lambda(), static_cast<double>(0.1f));
}

struct GradCase {
  const char* name;
  double lambda;
  double loss_scale;
};
class ReMoEGradTest : public ::testing::TestWithParam<GradCase> {};

// f = sum_a c_a w_a + loss_scale * L_reg with n_e held at the base point (ReMoE treats it as a
// constant; away from the kink no difference step changes it, which is checked).
TEST_P(ReMoEGradTest, FiniteDifferences) {
  const GradCase gc = GetParam();
  Case c;
  auto router = make<double>(c, c.k);
  RouterContext ctx;
  ctx.remoe_lambda = gc.lambda;
  Routing<double> r;
  router->forward(c.h.data(), c.N, ctx, r);
  double closest = INFINITY;
  for (int64_t t = 0; t < c.N; ++t)
    for (int e = 0; e < c.E; ++e) closest = std::min(closest, std::abs(c.logit(t, e)));
  ASSERT_GT(closest, 1e-2) << "a test point sits on the ReLU kink";
  const std::vector<int32_t> experts0 = r.experts;
  const std::vector<int64_t> offsets0 = r.offsets;
  const std::vector<double> coef = test::randn(c.N * c.E, 13);
  auto objective = [&] {
    router->forward(c.h.data(), c.N, ctx, r);
    double f = gc.loss_scale * router->loss();
    for (int64_t t = 0; t < c.N; ++t)
      for (int64_t a = r.offsets[t]; a < r.offsets[t + 1]; ++a)
        f += coef[t * c.E + r.experts[a]] * r.weights[a];
    return f;
  };
  objective();
  std::vector<double> dw(r.nnz()), dh(c.N * c.d, 0.0);
  for (int64_t t = 0; t < c.N; ++t)
    for (int64_t a = r.offsets[t]; a < r.offsets[t + 1]; ++a) dw[a] = coef[t * c.E + r.experts[a]];
  router->weight().grad.zero();
  router->backward(dw.data(), gc.loss_scale, dh.data());
  for (auto [name, x, g, n] :
       {std::tuple{"weight", router->weight().value.data(),
                   static_cast<const double*>(router->weight().grad.data()), c.E * c.d},
        std::tuple{"h", c.h.data(), static_cast<const double*>(dh.data()), c.N * c.d}}) {
    std::vector<double> num(n), ana(g, g + n);
    for (int64_t i = 0; i < n; ++i) num[i] = test::richardson(objective, x[i], 1e-4);
    const auto e = test::grad_error(num, ana);
    std::printf("remoe FD %-10s %-7s: worst element %.3g, norm-wise %.3g\n", gc.name, name,
                e.elementwise, e.normwise);
    EXPECT_LE(e.elementwise, 1e-6) << name;
    EXPECT_LE(e.normwise, 1e-6) << name;
  }
  objective();
  EXPECT_EQ(r.experts, experts0) << "a difference step crossed the ReLU kink";
  EXPECT_EQ(r.offsets, offsets0);
}

INSTANTIATE_TEST_SUITE_P(Cases, ReMoEGradTest,
                         ::testing::Values(GradCase{"lm_only", 0.0, 1.0},
                                           GradCase{"lm_and_l1", 0.3, 0.7},
                                           GradCase{"l1_strong", 5.0, 1.3}),
                         [](const auto& info) { return std::string(info.param.name); });

// Every logit negative: no assignment at all; the loss, the statistics and the gradients stay
// finite (zero), nothing is divided by zero.
TEST(ReMoERouter, NoTokenSelectsAnyExpert) {
  Case c;
  for (double& v : c.w) v = -std::abs(v) - 0.1;
  for (double& v : c.h) v = std::abs(v) + 0.1;
  auto router = make<double>(c, 1);
  RouterContext ctx;
  ctx.remoe_lambda = 1.0;
  Routing<double> r;
  router->forward(c.h.data(), c.N, ctx, r);
  EXPECT_EQ(r.nnz(), 0);
  EXPECT_EQ(router->loss(), 0.0);
  const RouterStats& s = router->stats();
  EXPECT_EQ(s.mean_active, 0.0);
  EXPECT_EQ(stat(s, "sparsity"), 1.0);
  EXPECT_EQ(stat(s, "no_expert"), 1.0);
  for (const auto& [name, v] : s.scalars) EXPECT_TRUE(std::isfinite(v)) << name;
  std::vector<double> dh(c.N * c.d, 0.0);
  router->weight().grad.zero();
  router->backward(nullptr, 1.0, dh.data());
  for (double v : dh) EXPECT_EQ(v, 0.0);
  for (int64_t i = 0; i < router->weight().numel(); ++i) EXPECT_EQ(router->weight().grad[i], 0.0);
  Routing<double> empty;
  router->forward(c.h.data(), 0, ctx, empty);  // an empty micro-batch
  EXPECT_EQ(empty.nnz(), 0);
  EXPECT_EQ(router->loss(), 0.0);
}

TEST(ReMoERouter, FloatRoutesLikeDouble) {
  const Case c;
  auto rd = make<double>(c, c.k);
  auto rf = make<float>(c, c.k);
  std::vector<float> hf(c.h.begin(), c.h.end());
  Routing<double> a;
  Routing<float> b;
  rd->forward(c.h.data(), c.N, RouterContext{}, a);
  rf->forward(hf.data(), c.N, RouterContext{}, b);
  EXPECT_EQ(a.offsets, b.offsets);
  EXPECT_EQ(a.experts, b.experts);
  for (int64_t i = 0; i < a.nnz(); ++i) EXPECT_NEAR(b.weights[i], a.weights[i], 1e-5);
}

// A scripted sparsity sequence: lambda_n = fp32(lambda_0) * fp32(alpha)^(ups_n - downs_n), each
// fp32 multiply or divide rounding by at most 2^-24 relative; ties (sparsity == target) go down.
TEST(ReMoEController, FollowsTheClosedFormTrace) {
  const int E = 8;
  for (int k : {1, 2}) {
    const double target = remoe_target_sparsity(k, E);
    EXPECT_EQ(target, 1.0 - k / 8.0);
    const float alpha = static_cast<float>(1.2);
    float lambda = static_cast<float>(1e-8);
    std::vector<double> seq;
    for (int i = 0; i < 60; ++i) seq.push_back(0.5);                 // too dense: 60 ups
    for (int i = 0; i < 7; ++i) seq.push_back(target);               // at the target: 7 downs
    for (int i = 0; i < 40; ++i) seq.push_back(i % 3 ? 0.99 : 0.1);  // 26 downs, 14 ups
    int net = 0;
    double worst = 0;
    for (size_t n = 0; n < seq.size(); ++n) {
      const float before = lambda;
      lambda = remoe_next_lambda(lambda, seq[n], target, alpha);
      const bool up = seq[n] < target;
      EXPECT_EQ(lambda > before, up) << "step " << n;
      net += up ? 1 : -1;
      const double closed =
          static_cast<double>(static_cast<float>(1e-8)) * std::pow(static_cast<double>(alpha), net);
      const double rel = std::abs(static_cast<double>(lambda) - closed) / closed;
      worst = std::max(worst, rel);
      EXPECT_LE(rel, 1.01 * (n + 1) * 0x1p-24) << "step " << n;
    }
    EXPECT_EQ(net, 60 - 7 - 26 + 14);
    std::printf(
        "remoe controller k=%d: %zu steps, net %d ups, lambda %.6g, worst relative "
        "distance to the closed form %.3g\n",
        k, seq.size(), net, static_cast<double>(lambda), worst);
  }
  // ~100 steps of growth for lambda_0 = 1e-8 to reach O(1): 1.2^101 = 9.9e7.
  float l = static_cast<float>(1e-8);
  int steps = 0;
  while (l < 0.99f) {
    l = remoe_next_lambda(l, 0.0, 0.875, static_cast<float>(1.2));
    ++steps;
  }
  EXPECT_EQ(steps, static_cast<int>(std::ceil(std::log(0.99e8) / std::log(1.2))));
}

TEST(ReMoERouter, ConfigErrorsNameTheKey) {
  RouterConfig c = config(1);
  c.remoe.alpha = 1.0;
  expect_error([&] { validate_router_config(c, 4, 8); }, "moe.router.remoe.alpha: must be > 1");
  c.remoe.alpha = 0.5;
  expect_error([&] { validate_router_config(c, 4, 8); }, "moe.router.remoe.alpha");
  c.remoe.alpha = 1.0 + 1e-9;  // rounds to 1 in fp32
  expect_error([&] { validate_router_config(c, 4, 8); }, "moe.router.remoe.alpha");
  c = config(1);
  c.remoe.lambda_init = -1e-8;
  expect_error([&] { validate_router_config(c, 4, 8); }, "moe.router.remoe.lambda_init");
  c.remoe.lambda_init = std::numeric_limits<double>::quiet_NaN();
  expect_error([&] { validate_router_config(c, 4, 8); }, "moe.router.remoe.lambda_init");
  c.remoe.lambda_init = 1e300;  // overflows fp32
  expect_error([&] { validate_router_config(c, 4, 8); }, "moe.router.remoe.lambda_init");
  expect_error([] { validate_router_config(config(0), 4, 8); },
               "moe.router.k: must lie in [1, moe.num_experts = 8]");
  expect_error([] { validate_router_config(config(9), 4, 8); },
               "moe.router.k: must lie in [1, moe.num_experts = 8]");
  EXPECT_NO_THROW(validate_router_config(config(8), 4, 8));
  EXPECT_EQ(make_router<float>(config(1), 4, 8, "p")->type(), "remoe");
}

}  // namespace
}  // namespace dirmoe
