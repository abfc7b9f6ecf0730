// ProbMoE router: finite differences in double of the straight-through surrogate with the noise
// held fixed (Exact-k and Dynamic-k), sampled routing against the exact marginals, evaluation
// rules, noise keyed by global token, statistics and config errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "router/probmoe_router.h"
#include "router/router.h"
#include "router_test_util.h"

namespace dirmoe {
namespace {

using test::expect_error;

RouterConfig config(const char* mode, int k, int k_min, int k_max) {
  RouterConfig cfg;
  cfg.type = "probmoe";
  cfg.k = k;
  cfg.probmoe.mode = mode;
  cfg.probmoe.k_min = k_min;
  cfg.probmoe.k_max = k_max;
  cfg.aux_loss_coef = 0.05;
  cfg.z_loss_coef = 0.01;
  return cfg;
}

template <class T>
std::unique_ptr<ProbMoERouter<T>> make(const RouterConfig& cfg, int64_t d, int E, uint32_t seed,
                                       double scale = 0.6) {
  auto r = std::make_unique<ProbMoERouter<T>>(cfg, d, E, "r");
  const auto w = test::randn(E * d, seed, scale);
  for (int64_t i = 0; i < E * d; ++i) r->weight().value[i] = static_cast<T>(w[i]);
  return r;
}

struct GradCase {
  const char* name;
  const char* mode;
  int k, k_min, k_max;
};
class ProbMoEGradTest : public ::testing::TestWithParam<GradCase> {};

// The combine weights are w = (stopgrad(z - mu) + mu) softmax(l): their gradient is that of the
// surrogate sum c_te (z_te - mu0_te + mu_te) s_te + aux + z-loss with mu0 the marginals at the base
// point, which is what is differenced here (z = 1 on the sampled subset, held fixed by the noise).
TEST_P(ProbMoEGradTest, StraightThroughSurrogateFiniteDifferences) {
  const GradCase gc = GetParam();
  const int64_t N = 6, d = 5;
  const int E = 6;
  RouterConfig cfg = config(gc.mode, gc.k, gc.k_min, gc.k_max);
  auto router = make<double>(cfg, d, E, 3);
  std::vector<double> h = test::randn(N * d, 4), coef = test::randn(N * E, 5);
  const RouterContext ctx{17, 5, 2, 320, true};
  Routing<double> routing;
  router->forward(h.data(), N, ctx, routing);
  const std::vector<double> mu0 = router->marginals();
  const std::vector<int32_t> experts0 = routing.experts;
  auto objective = [&] {
    router->forward(h.data(), N, ctx, routing);
    double f = router->loss();
    for (int64_t t = 0; t < N; ++t) {
      for (int64_t a = routing.offsets[t]; a < routing.offsets[t + 1]; ++a) {
        const int64_t te = t * E + routing.experts[a];
        f += coef[te] * (1.0 - mu0[te] + router->marginals()[te]) * routing.weights[a];
      }
    }
    return f;
  };
  objective();
  std::vector<double> dw(routing.nnz()), dh(N * d, 0.0);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t a = routing.offsets[t]; a < routing.offsets[t + 1]; ++a)
      dw[a] = coef[t * E + routing.experts[a]];
  router->weight().grad.zero();
  router->backward(dw.data(), 1.0, dh.data());

  for (auto [name, x, g, n] :
       {std::tuple{"weight", router->weight().value.data(),
                   static_cast<const double*>(router->weight().grad.data()), E * d},
        std::tuple{"h", h.data(), static_cast<const double*>(dh.data()), N * d}}) {
    std::vector<double> num(n), ana(g, g + n);
    for (int64_t i = 0; i < n; ++i) num[i] = test::richardson(objective, x[i], 1e-4);
    const auto e = test::grad_error(num, ana);
    std::printf("probmoe FD %-8s %-7s: worst element %.3g, norm-wise %.3g\n", gc.name, name,
                e.elementwise, e.normwise);
    EXPECT_LE(e.elementwise, 1e-6) << name;
    EXPECT_LE(e.normwise, 1e-6) << name;
  }
  objective();
  EXPECT_EQ(routing.experts, experts0) << "the sampled subsets moved during differencing";
}

INSTANTIATE_TEST_SUITE_P(Cases, ProbMoEGradTest,
                         ::testing::Values(GradCase{"exact2", "exact", 2, 1, 2},
                                           GradCase{"exact4", "exact", 4, 1, 4},
                                           GradCase{"dynamic", "dynamic", 2, 1, 4}),
                         [](const auto& info) { return std::string(info.param.name); });

// Many tokens with the same hidden state: the frequency of each expert in the sampled subsets
// estimates the exact marginal mu_i.
TEST(ProbMoERouter, SampledInclusionFrequenciesMatchMarginals) {
  const int64_t N = 20000, d = 4;
  const int E = 7;
  for (const char* mode : {"exact", "dynamic"}) {
    RouterConfig cfg = config(mode, 3, 1, 5);
    auto router = make<double>(cfg, d, E, 8, 1.0);
    auto one = test::randn(d, 9);
    std::vector<double> h(N * d);
    for (int64_t t = 0; t < N; ++t) std::copy(one.begin(), one.end(), h.begin() + t * d);
    Routing<double> r;
    router->forward(h.data(), N, RouterContext{5, 0, 0, 0, true}, r);
    std::vector<double> freq(E, 0.0);
    for (int32_t e : r.experts) freq[e] += 1.0 / N;
    double worst_z = 0;
    for (int i = 0; i < E; ++i) {
      const double mu = router->marginals()[i];
      const double se = std::sqrt(mu * (1 - mu) / N) + 1e-12;
      worst_z = std::max(worst_z, std::abs(freq[i] - mu) / se);
    }
    std::printf(
        "probmoe %-7s: inclusion frequencies over %ld draws vs exact marginals: worst "
        "|z| %.2f\n",
        mode, static_cast<long>(N), worst_z);
    EXPECT_LE(worst_z, 4.0) << mode;
  }
}

TEST(ProbMoERouter, EvaluationTakesTheLargestLogits) {
  const int64_t N = 50, d = 6;
  const int E = 8;
  for (const char* mode : {"exact", "dynamic"}) {
    RouterConfig cfg = config(mode, 3, 2, 4);
    auto router = make<double>(cfg, d, E, 10);
    auto h = test::randn(N * d, 11);
    Routing<double> r;
    router->forward(h.data(), N, RouterContext{1, -1, 0, 0, false}, r);
    const auto& W = router->weight().value;
    for (int64_t t = 0; t < N; ++t) {
      std::vector<double> l(E, 0.0);
      for (int e = 0; e < E; ++e)
        for (int64_t j = 0; j < d; ++j) l[e] += W[e * d + j] * h[t * d + j];
      int k = 3;
      if (std::string(mode) == "dynamic") {
        int positive = 0;
        for (double v : l) positive += v > 0;
        k = std::clamp(positive, 2, 4);
      }
      std::vector<int> order(E);
      for (int i = 0; i < E; ++i) order[i] = i;
      std::sort(order.begin(), order.end(), [&](int a, int b) { return l[a] > l[b]; });
      std::set<int> want(order.begin(), order.begin() + k);
      std::set<int> got(r.experts.begin() + r.offsets[t], r.experts.begin() + r.offsets[t + 1]);
      EXPECT_EQ(got, want) << mode << " token " << t;
      double mx = *std::max_element(l.begin(), l.end()), z = 0;
      for (double v : l) z += std::exp(v - mx);
      for (int64_t a = r.offsets[t]; a < r.offsets[t + 1]; ++a)
        EXPECT_NEAR(r.weights[a], std::exp(l[r.experts[a]] - mx) / z, 1e-12);
    }
  }
}

TEST(ProbMoERouter, SplitBatchRoutesLikeTheWholeBatch) {
  const int64_t N = 30, d = 6;
  const int E = 8;
  for (const char* mode : {"exact", "dynamic"}) {
    auto router = make<double>(config(mode, 2, 1, 4), d, E, 12);
    auto h = test::randn(N * d, 13);
    Routing<double> whole, a, b;
    router->forward(h.data(), N, RouterContext{4, 6, 1, 500, true}, whole);
    router->forward(h.data(), 10, RouterContext{4, 6, 1, 500, true}, a);
    router->forward(h.data() + 10 * d, N - 10, RouterContext{4, 6, 1, 510, true}, b);
    std::vector<int32_t> experts = a.experts;
    experts.insert(experts.end(), b.experts.begin(), b.experts.end());
    std::vector<double> weights = a.weights;
    weights.insert(weights.end(), b.weights.begin(), b.weights.end());
    EXPECT_EQ(experts, whole.experts) << mode;
    EXPECT_EQ(weights, whole.weights) << mode;
  }
}

TEST(ProbMoERouter, StatisticsAndRoutingShape) {
  const int64_t N = 40, d = 6;
  const int E = 8;
  auto router = make<float>(config("dynamic", 2, 1, 4), d, E, 14);
  auto hd = test::randn(N * d, 15);
  std::vector<float> h(hd.begin(), hd.end());
  Routing<float> r;
  router->forward(h.data(), N, RouterContext{1, 0, 0, 0, true}, r);
  for (int64_t t = 0; t < N; ++t) {
    const int64_t n = r.offsets[t + 1] - r.offsets[t];
    EXPECT_GE(n, 1);
    EXPECT_LE(n, 4);
  }
  const RouterStats& s = router->stats();
  EXPECT_DOUBLE_EQ(s.mean_active, static_cast<double>(r.nnz()) / N);
  std::vector<std::string> names;
  for (const auto& [k, v] : s.scalars) {
    names.push_back(k);
    EXPECT_TRUE(std::isfinite(v)) << k;
  }
  EXPECT_EQ(names, (std::vector<std::string>{"target_k", "expected_k", "undispatched_mass",
                                             "gate_entropy", "near_binary", "dead_experts"}));
  EXPECT_GE(s.scalars[1].second, 1.0);
  EXPECT_LE(s.scalars[1].second, 4.0);
  EXPECT_GT(router->loss(), 0.0);
  auto via_factory = make_router<double>(config("exact", 2, 1, 2), d, E, "x");
  EXPECT_EQ(via_factory->type(), "probmoe");
}

TEST(ProbMoERouter, ConfigErrorsNameTheKey) {
  expect_error([] { validate_router_config(config("exact", 9, 1, 2), 4, 8); },
               "moe.router.k: must lie in [1, moe.num_experts = 8]");
  expect_error([] { validate_router_config(config("dynamic", 2, 3, 2), 4, 8); },
               "moe.router.probmoe.k_min: must not exceed moe.router.probmoe.k_max = 2");
  expect_error([] { validate_router_config(config("dynamic", 2, 1, 9), 4, 8); },
               "moe.router.probmoe.k_max");
  expect_error([] { validate_router_config(config("dynamic", 2, 0, 2), 4, 8); },
               "moe.router.probmoe.k_min");
  expect_error([] { validate_router_config(config("sometimes", 2, 1, 2), 4, 8); },
               "moe.router.probmoe.mode");
  RouterConfig neg = config("exact", 2, 1, 2);
  neg.aux_loss_coef = -1;
  expect_error([&] { validate_router_config(neg, 4, 8); }, "moe.router.aux_loss_coef");
  EXPECT_NO_THROW(validate_router_config(config("exact", 2, 5, 1), 4, 8));  // unused in exact
}

}  // namespace
}  // namespace dirmoe
