// The CPU routers run the shared per-token code of kernels/routing (the code the CUDA kernels run
// per thread): each router's routing equals, bit for bit, a loop that calls the shared functions
// one token at a time with token-local scratch and accumulators, the way a kernel thread does;
// the statistics reduced from those per-token values match the router's sequential sums. Also the
// shared functions instantiated in float against double.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/routing/dirmoe.h"
#include "kernels/routing/gamma.h"
#include "kernels/routing/probmoe.h"
#include "kernels/routing/topk.h"
#include "router/dirmoe_router.h"
#include "router/noise.h"
#include "router/probmoe_router.h"
#include "router/topk_router.h"
#include "router_test_util.h"

namespace dirmoe {
namespace {

constexpr int64_t kTokens = 97, kHidden = 12;

template <class P>
void fill(P& p, uint32_t seed, double scale) {
  const std::vector<double> v = test::randn(p.numel(), seed, scale);
  for (int64_t i = 0; i < p.numel(); ++i) p.value[i] = static_cast<float>(v[i]);
}

std::vector<float> input(uint32_t seed) {
  const std::vector<double> v = test::randn(kTokens * kHidden, seed);
  return std::vector<float>(v.begin(), v.end());
}

RouterContext context() {
  RouterContext ctx;
  ctx.seed = 1234;
  ctx.step = 5;
  ctx.layer = 3;
  ctx.global_token0 = 4096;
  return ctx;
}

void expect_same_routing(const Routing<float>& got, const std::vector<int64_t>& offsets,
                         const std::vector<int32_t>& experts, const std::vector<float>& weights) {
  ASSERT_EQ(got.offsets, offsets);
  ASSERT_EQ(got.experts, experts);
  ASSERT_EQ(got.weights.size(), weights.size());
  for (size_t a = 0; a < weights.size(); ++a) EXPECT_EQ(got.weights[a], weights[a]) << a;
}

TEST(RoutingShared, TopKRouterRunsTheSharedTokenCode) {
  for (bool renorm : {false, true}) {
    RouterConfig cfg;
    cfg.k = 2;
    cfg.renormalize = renorm;
    const int E = 8;
    TopKRouter<float> router(cfg, kHidden, E, "r");
    fill(router.weight(), 7, 0.8);
    const std::vector<float> h = input(8);
    Routing<float> out;
    router.forward(h.data(), kTokens, context(), out);

    std::vector<float> logits(kTokens * E), p(E);
    cpu::linear_forward(logits.data(), h.data(), router.weight().value.data(), kTokens, kHidden, E);
    std::vector<int64_t> offsets(kTokens + 1, 0);
    std::vector<int32_t> experts(kTokens * cfg.k);
    std::vector<float> weights(kTokens * cfg.k);
    std::vector<double> prob_rows(kTokens * E, 0.0), entropy(kTokens, 0.0);
    for (int64_t t = 0; t < kTokens; ++t) {
      const auto r = routing::topk_token_forward<double, float>(
          logits.data() + t * E, E, cfg.k, renorm, p.data(), prob_rows.data() + t * E, &entropy[t],
          experts.data() + t * cfg.k, weights.data() + t * cfg.k);
      ASSERT_LT(r.bad_expert, 0);
      offsets[t + 1] = (t + 1) * cfg.k;
      for (int i = 0; i < E; ++i) EXPECT_EQ(p[i], router.probs()[t * E + i]);
    }
    expect_same_routing(out, offsets, experts, weights);
    double ent = 0;
    for (double e : entropy) ent += e;
    for (const auto& [name, v] : router.stats().scalars) {
      if (name == "entropy") {
        EXPECT_NEAR(v, ent / kTokens, 1e-12);
      }
    }
  }
}

TEST(RoutingShared, DirMoERouterRunsTheSharedTokenCode) {
  RouterConfig cfg;
  cfg.type = "dirmoe";
  cfg.k = 2;
  cfg.dirmoe.r_min = 0.08;
  cfg.dirmoe.max_active = 3;
  const int E = 8;
  DirMoERouter<float> router(cfg, kHidden, E, "r");
  fill(router.weight(), 11, 0.7);
  fill(router.decoder(), 12, 0.5);
  const std::vector<float> h = input(13);
  const RouterContext ctx = context();
  Routing<float> out;
  router.forward(h.data(), kTokens, ctx, out);

  const int64_t step = ctx.step;
  routing::DirMoETokenParams<double> c;
  c.E = E;
  c.k = cfg.k;
  c.max_active = cfg.dirmoe.max_active;
  c.r_min = cfg.dirmoe.r_min;
  c.tau = cfg.dirmoe.tau.at(step);
  c.lambda_q = cfg.dirmoe.lambda_q.at(step);
  c.alpha_floor = cfg.dirmoe.alpha_floor;
  c.prior_a_hi = router.prior().a_hi;
  c.prior_a_lo = router.prior().a_lo;
  c.prior_lambda = router.prior().lambda;
  c.gate_noise = RouterNoise(ctx, NoisePurpose::kGate).key();
  c.gamma_noise = RouterNoise(ctx, NoisePurpose::kGamma).key();

  std::vector<float> u(kTokens * 3 * E), r_t(E);
  cpu::linear_forward(u.data(), h.data(), router.weight().value.data(), kTokens, kHidden, 3 * E);
  std::vector<int64_t> offsets(kTokens + 1, 0);
  std::vector<int32_t> experts, order(E);
  std::vector<float> weights;
  std::vector<double> rows(10 * E), logw(E), logz(E), ap(E), prob(E);
  double sum_gates = 0;
  for (int64_t t = 0; t < kTokens; ++t) {
    double* b = rows.data();
    const routing::DirMoERow<double> row{b,         b + E,     b + 2 * E, b + 3 * E, b + 4 * E,
                                         b + 5 * E, b + 6 * E, b + 7 * E, b + 8 * E, b + 9 * E};
    int32_t ex[8];
    float w[8];
    double entropy = 0;
    std::fill(prob.begin(), prob.end(), 0.0);
    const auto r = routing::dirmoe_token_forward<double, float>(
        c, u.data() + t * 3 * E, t, row, r_t.data(), ex, w, prob.data(), &entropy, order.data(),
        logw.data(), logz.data(), ap.data());
    ASSERT_LT(r.bad_expert, 0);
    for (int j = 0; j < r.num_dispatched; ++j) {
      experts.push_back(ex[j]);
      weights.push_back(w[j]);
    }
    offsets[t + 1] = static_cast<int64_t>(experts.size());
    for (int i = 0; i < E; ++i) {
      EXPECT_EQ(row.z[i], router.gates()[t * E + i]);
      EXPECT_EQ(row.r[i], router.weights_r()[t * E + i]);
      EXPECT_EQ(row.alpha[i], router.alpha_q()[t * E + i]);
    }
    sum_gates += r.sum_gates;
  }
  expect_same_routing(out, offsets, experts, weights);
  for (const auto& [name, v] : router.stats().scalars) {
    if (name == "sum_gates") {
      EXPECT_NEAR(v, sum_gates / kTokens, 1e-12);
    }
  }
}

TEST(RoutingShared, ProbMoERouterRunsTheSharedTokenCode) {
  for (const char* mode : {"exact", "dynamic"}) {
    RouterConfig cfg;
    cfg.type = "probmoe";
    cfg.k = 2;
    cfg.probmoe.mode = mode;
    cfg.probmoe.k_min = 1;
    cfg.probmoe.k_max = 3;
    const int E = 8;
    ProbMoERouter<float> router(cfg, kHidden, E, "r");
    fill(router.weight(), 21, 0.9);
    const std::vector<float> h = input(22);
    const RouterContext ctx = context();
    Routing<float> out;
    router.forward(h.data(), kTokens, ctx, out);

    const bool dynamic = cfg.probmoe.mode == "dynamic";
    routing::ProbMoETokenParams<double> c;
    c.E = E;
    c.k_lo = dynamic ? cfg.probmoe.k_min : cfg.k;
    c.k_hi = dynamic ? cfg.probmoe.k_max : cfg.k;
    c.dynamic = dynamic;
    c.subset_noise = RouterNoise(ctx, NoisePurpose::kSubset).key();
    c.size_noise = RouterNoise(ctx, NoisePurpose::kSubsetSize).key();
    const int K = c.k_hi;
    std::vector<double> l(E), table((E + 1) * (K + 1)), adj(table.size()), dadj(table.size());
    routing::SubsetView<double> dp;
    dp.E = E;
    dp.K = K;
    dp.l = l.data();
    dp.table = table.data();
    dp.adj = adj.data();
    dp.dadj = dadj.data();

    std::vector<float> logits(kTokens * E);
    cpu::linear_forward(logits.data(), h.data(), router.weight().value.data(), kTokens, kHidden, E);
    std::vector<int64_t> offsets(kTokens + 1, 0);
    std::vector<int32_t> experts;
    std::vector<float> weights;
    std::vector<double> s(E), mu(E), prob(E);
    for (int64_t t = 0; t < kTokens; ++t) {
      int32_t ex[8];
      float w[8];
      double entropy = 0, expected_k = 0;
      const auto r = routing::probmoe_token_forward<double, float>(
          c, logits.data() + t * E, t, l.data(), dp, s.data(), mu.data(), ex, w, prob.data(),
          &entropy, &expected_k);
      ASSERT_LT(r.bad_expert, 0);
      for (int j = 0; j < r.num_dispatched; ++j) {
        experts.push_back(ex[j]);
        weights.push_back(w[j]);
      }
      offsets[t + 1] = static_cast<int64_t>(experts.size());
      for (int i = 0; i < E; ++i) EXPECT_EQ(mu[i], router.marginals()[t * E + i]);
    }
    expect_same_routing(out, offsets, experts, weights);
  }
}

// Non-finite concentration pre-activations are reported by token and expert (not turned into NaN
// routing), and concentrations at the floor are never sampled as zero.
TEST(RoutingShared, DirMoEConcentrationsReportedAndFloored) {
  RouterConfig cfg;
  cfg.type = "dirmoe";
  cfg.k = 2;
  const int E = 8;
  cfg.dirmoe.lambda_q = Schedule::constant(0.5);
  cfg.dirmoe.alpha_floor = 1e-3;
  DirMoERouter<float> router(cfg, kHidden, E, "layers.2.moe.router");
  fill(router.weight(), 31, 0.3);
  // a_hi and a_lo pre-activations of every expert far below zero: softplus underflows to 0.
  for (int64_t j = 0; j < kHidden; ++j)
    for (int i = E; i < 3 * E; ++i) router.weight().value[i * kHidden + j] = 0;
  std::vector<float> h = input(32);
  for (int64_t t = 0; t < kTokens; ++t) h[t * kHidden] = 1.0f;
  for (int i = E; i < 3 * E; ++i) router.weight().value[i * kHidden] = -800.0f;
  RouterContext ctx = context();
  Routing<float> out;
  router.forward(h.data(), kTokens, ctx, out);
  const double floor = 0.5 * 1e-3;
  for (double a : router.alpha_q()) EXPECT_GE(a, floor);
  for (float w : out.weights) EXPECT_TRUE(std::isfinite(w) && w > 0) << w;

  // a_hi of expert 5 overflows to +inf for token 40 only.
  router.weight().value[(E + 5) * kHidden + 3] = 3e38f;
  h[40 * kHidden + 3] = 4.0f;
  for (int64_t t = 0; t < kTokens; ++t)
    if (t != 40) h[t * kHidden + 3] = 0.0f;
  try {
    router.forward(h.data(), kTokens, ctx, out);
    ADD_FAILURE() << "non-finite concentration not reported";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("non-finite concentration pre-activations at token 40 "
                                         "(global 4136), expert 5, layer 3"),
              std::string::npos)
        << e.what();
  }
}

// The shared functions are templated on the scalar: float instances track double to float
// precision (the kernels run double by default; float is the minimum the design allows).
TEST(RoutingShared, FloatInstancesTrackDouble) {
  double worst_psi = 0, worst_grad = 0;
  for (double a : {0.05, 0.3, 1.0, 2.5, 7.0, 40.0}) {
    const double psi = routing::digamma<double>(a);
    worst_psi = std::max(worst_psi, std::abs(routing::digamma<float>(static_cast<float>(a)) - psi) /
                                        std::max(1.0, std::abs(psi)));
    for (double q : {0.1, 0.5, 0.9}) {
      const double lx = routing::gamma_log_quantile<double>(a, q);
      const double g = routing::gamma_dlogx_dalpha<double>(a, lx);
      const float gf =
          routing::gamma_dlogx_dalpha<float>(static_cast<float>(a), static_cast<float>(lx));
      worst_grad = std::max(worst_grad, std::abs(gf - g) / std::max(1.0, std::abs(g)));
    }
  }
  std::printf("float vs double: digamma worst %.3g, d(log G)/dalpha worst %.3g\n", worst_psi,
              worst_grad);
  EXPECT_LT(worst_psi, 1e-5);
  EXPECT_LT(worst_grad, 1e-4);
}

}  // namespace
}  // namespace dirmoe
