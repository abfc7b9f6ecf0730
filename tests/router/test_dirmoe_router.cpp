// DirMoE router: finite-difference gradients in double with the noise held fixed (inversion
// sampler), routing invariants, noise keyed by global token (a split batch routes like the whole),
// float/double agreement, the evaluation rules, statistics and config errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>
#include <string>
#include <vector>

#include "router/dirmoe_router.h"
#include "router/router.h"
#include "router_test_util.h"

namespace dirmoe {
namespace {

using test::expect_error;

RouterConfig base_config() {
  RouterConfig cfg;
  cfg.type = "dirmoe";
  cfg.k = 2;
  cfg.aux_loss_coef = 0.2;
  DirMoEConfig& c = cfg.dirmoe;
  c.tau = Schedule::exponential(1.2, 0.9, 0.5);
  c.r_min = 0.1;
  c.max_active = 3;
  c.lambda_q = Schedule::constant(2.0);
  c.alpha_floor = 0.05;
  c.prior.m = 0.7;
  c.prior.h = 0.5;
  c.beta = Schedule::constant(0.3);
  c.recon_weight = Schedule::constant(0.7);
  c.lambda_sparsity = Schedule::constant(0.4);
  c.gamma_sampler = "inverse_cdf";
  return cfg;
}

template <class T>
void fill(Parameter<T>& p, const std::vector<double>& v) {
  for (int64_t i = 0; i < p.numel(); ++i) p.value[i] = static_cast<T>(v[i]);
}

template <class T>
std::unique_ptr<DirMoERouter<T>> make(const RouterConfig& cfg, int64_t d, int E, uint32_t seed) {
  auto r = std::make_unique<DirMoERouter<T>>(cfg, d, E, "r");
  fill(r->weight(), test::randn(3 * E * d, seed, 0.6));
  fill(r->decoder(), test::randn(d * E, seed + 1, 0.5));
  fill(r->decoder_bias(), test::randn(d, seed + 2, 0.3));
  return r;
}

struct GradCase {
  const char* name;
  bool renormalize;
  double r_min;
  int max_active;
  int64_t step;
  const char* sparsity_on = "sample";
};

class DirMoEGradTest : public ::testing::TestWithParam<GradCase> {};

// L = sum_(t,e) c[t,e] w_te + loss(); every gradient against Richardson central differences.
TEST_P(DirMoEGradTest, FiniteDifferencesDouble) {
  const GradCase gc = GetParam();
  const int64_t N = 7, d = 6;
  const int E = 5;
  RouterConfig cfg = base_config();
  cfg.renormalize = gc.renormalize;
  cfg.dirmoe.r_min = gc.r_min;
  cfg.dirmoe.max_active = gc.max_active;
  cfg.dirmoe.sparsity_on = gc.sparsity_on;
  auto router = make<double>(cfg, d, E, 11);
  std::vector<double> h = test::randn(N * d, 12), coef = test::randn(N * E, 13);
  const RouterContext ctx{42, gc.step, 1, 640, true};
  Routing<double> routing;

  // The reconstruction target is the stop-gradient input: when h is differenced, the target stays
  // at h0 (the router's own recon term is swapped for one against h0).
  const std::vector<double> h0 = h;
  bool fixed_target = false;
  auto objective = [&] {
    router->forward(h.data(), N, ctx, routing);
    double f = router->loss();
    for (int64_t t = 0; t < N; ++t)
      for (int64_t a = routing.offsets[t]; a < routing.offsets[t + 1]; ++a)
        f += coef[t * E + routing.experts[a]] * routing.weights[a];
    if (fixed_target) {
      f -= router->stats().scalars[3].second;
      const auto& V = router->decoder().value;
      const auto& b = router->decoder_bias().value;
      double recon = 0;
      for (int64_t t = 0; t < N; ++t) {
        for (int64_t j = 0; j < d; ++j) {
          double x = b[j] - h0[t * d + j];
          for (int i = 0; i < E; ++i) x += V[j * E + i] * router->weights_r()[t * E + i];
          recon += x * x / d;
        }
      }
      f += cfg.dirmoe.recon_weight.at(gc.step) * recon / N;
    }
    return f;
  };
  objective();
  const std::vector<int32_t> experts0 = routing.experts;
  std::vector<double> dw(routing.nnz()), dh(N * d, 0.0);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t a = routing.offsets[t]; a < routing.offsets[t + 1]; ++a)
      dw[a] = coef[t * E + routing.experts[a]];
  for (auto* p : router->parameters()) p->grad.zero();
  router->backward(dw.data(), 1.0, dh.data());

  struct Tensor {
    const char* name;
    double* x;
    const double* g;
    int64_t n;
  };
  std::vector<Tensor> tensors = {
      {"weight", router->weight().value.data(), router->weight().grad.data(),
       router->weight().numel()},
      {"decoder", router->decoder().value.data(), router->decoder().grad.data(),
       router->decoder().numel()},
      {"decoder_bias", router->decoder_bias().value.data(), router->decoder_bias().grad.data(),
       router->decoder_bias().numel()},
      {"h", h.data(), dh.data(), N * d}};
  for (const Tensor& tn : tensors) {
    fixed_target = tn.x == h.data();
    std::vector<double> num(tn.n), ana(tn.g, tn.g + tn.n);
    for (int64_t i = 0; i < tn.n; ++i) num[i] = test::richardson(objective, tn.x[i], 1e-4);
    const auto e = test::grad_error(num, ana);
    std::printf("dirmoe FD %-22s %-12s: worst element %.3g, norm-wise %.3g\n", gc.name, tn.name,
                e.elementwise, e.normwise);
    EXPECT_LE(e.elementwise, 1e-6) << tn.name;
    EXPECT_LE(e.normwise, 1e-6) << tn.name;
  }
  objective();
  EXPECT_EQ(routing.experts, experts0) << "the dispatched set moved during differencing";
}

INSTANTIATE_TEST_SUITE_P(Cases, DirMoEGradTest,
                         ::testing::Values(GradCase{"rmin_max3", false, 0.1, 3, 0},
                                           GradCase{"renormalized", true, 0.1, 3, 4},
                                           GradCase{"all_dispatched", false, 0.0, 5, 9},
                                           GradCase{"top1", true, 0.0, 1, 2},
                                           GradCase{"expected_count", false, 0.1, 3, 3,
                                                    "expected"}),
                         [](const auto& info) { return std::string(info.param.name); });

TEST(DirMoERouter, RoutingInvariantsAndStatistics) {
  const int64_t N = 64, d = 8;
  const int E = 8;
  RouterConfig cfg = base_config();
  cfg.dirmoe.gamma_sampler = "marsaglia_tsang";
  auto router = make<double>(cfg, d, E, 3);
  auto h = test::randn(N * d, 4);
  Routing<double> r;
  router->forward(h.data(), N, RouterContext{1, 0, 0, 0, true}, r);
  ASSERT_EQ(r.offsets.size(), static_cast<size_t>(N + 1));
  double undispatched = 0;
  for (int64_t t = 0; t < N; ++t) {
    const int64_t n = r.offsets[t + 1] - r.offsets[t];
    EXPECT_GE(n, 1);
    EXPECT_LE(n, 3);
    std::set<int> seen;
    double kept = 0;
    const double* rt = router->weights_r().data() + t * E;
    double total = 0;
    for (int i = 0; i < E; ++i) total += rt[i];
    EXPECT_NEAR(total, 1.0, 1e-12);
    for (int64_t a = r.offsets[t]; a < r.offsets[t + 1]; ++a) {
      EXPECT_TRUE(seen.insert(r.experts[a]).second);
      EXPECT_DOUBLE_EQ(r.weights[a], rt[r.experts[a]]);
      if (a > r.offsets[t]) {
        EXPECT_GE(r.weights[a - 1], r.weights[a]);
        EXPECT_GE(r.weights[a], cfg.dirmoe.r_min);
      }
      kept += r.weights[a];
    }
    for (int i = 0; i < E; ++i) {
      if (!seen.count(i) && n < cfg.dirmoe.max_active) {
        EXPECT_LT(rt[i], cfg.dirmoe.r_min);
      }
    }
    undispatched += 1 - kept;
  }
  const RouterStats& s = router->stats();
  EXPECT_DOUBLE_EQ(s.mean_active, static_cast<double>(r.nnz()) / N);
  std::vector<std::string> names;
  for (const auto& [k, v] : s.scalars) {
    names.push_back(k);
    EXPECT_TRUE(std::isfinite(v)) << k;
  }
  EXPECT_EQ(names, (std::vector<std::string>{"target_k", "undispatched_mass", "kl", "recon",
                                             "sparsity", "sum_gates", "open_gates", "no_open_gate",
                                             "tau", "lambda_q", "gate_entropy", "near_binary",
                                             "dead_experts"}));
  EXPECT_NEAR(s.scalars[1].second, undispatched / N, 1e-12);
  EXPECT_DOUBLE_EQ(s.scalars[0].second, 2.0);
  EXPECT_DOUBLE_EQ(s.scalars[8].second, 1.2);
  EXPECT_GT(s.aux_loss, 0.0);
  EXPECT_NEAR(router->loss(),
              s.aux_loss + s.scalars[2].second + s.scalars[3].second + s.scalars[4].second, 1e-12);
}

// EP=N equals EP=1 for this router: noise is keyed by global token, so two halves routed with
// their global offsets give the routing of the whole batch.
TEST(DirMoERouter, SplitBatchRoutesLikeTheWholeBatch) {
  const int64_t N = 24, d = 8;
  const int E = 8;
  for (const char* sampler : {"marsaglia_tsang", "inverse_cdf"}) {
    RouterConfig cfg = base_config();
    cfg.dirmoe.gamma_sampler = sampler;
    cfg.aux_loss_coef = 0;  // batch-level; the per-token ELBO terms average over the halves
    auto router = make<double>(cfg, d, E, 5);
    auto h = test::randn(N * d, 6);
    Routing<double> whole, a, b;
    router->forward(h.data(), N, RouterContext{9, 3, 2, 1000, true}, whole);
    const double loss_whole = router->loss();
    router->forward(h.data(), N / 2, RouterContext{9, 3, 2, 1000, true}, a);
    const double loss_a = router->loss();
    router->forward(h.data() + N / 2 * d, N / 2, RouterContext{9, 3, 2, 1000 + N / 2, true}, b);
    const double loss_b = router->loss();
    std::vector<int32_t> experts = a.experts;
    experts.insert(experts.end(), b.experts.begin(), b.experts.end());
    std::vector<double> weights = a.weights;
    weights.insert(weights.end(), b.weights.begin(), b.weights.end());
    EXPECT_EQ(experts, whole.experts) << sampler;
    EXPECT_EQ(weights, whole.weights) << sampler;
    EXPECT_NEAR(0.5 * (loss_a + loss_b), loss_whole, 1e-12 * std::abs(loss_whole));
    Routing<double> other;
    router->forward(h.data(), N, RouterContext{9, 4, 2, 1000, true}, other);
    EXPECT_NE(other.weights, whole.weights) << "a new step must draw new noise";
  }
}

TEST(DirMoERouter, FloatAgreesWithDouble) {
  const int64_t N = 32, d = 8;
  const int E = 8;
  RouterConfig cfg = base_config();
  cfg.dirmoe.gamma_sampler = "marsaglia_tsang";
  auto rd = make<double>(cfg, d, E, 21);
  auto rf = make<float>(cfg, d, E, 21);
  auto h = test::randn(N * d, 22);
  std::vector<float> hf(h.begin(), h.end());
  Routing<double> a;
  Routing<float> b;
  const RouterContext ctx{3, 1, 0, 0, true};
  rd->forward(h.data(), N, ctx, a);
  rf->forward(hf.data(), N, ctx, b);
  ASSERT_EQ(a.experts, b.experts);
  for (int64_t i = 0; i < a.nnz(); ++i) EXPECT_NEAR(a.weights[i], b.weights[i], 2e-5);
  EXPECT_NEAR(rd->loss(), rf->loss(), 1e-5 * std::abs(rd->loss()));
  std::vector<double> dw(a.nnz(), 0.5), dh(N * d, 0.0);
  std::vector<float> dwf(b.nnz(), 0.5f), dhf(N * d, 0.0f);
  rd->backward(dw.data(), 1.0, dh.data());
  rf->backward(dwf.data(), 1.0, dhf.data());
  double scale = 0;
  for (double v : dh) scale = std::max(scale, std::abs(v));
  for (int64_t i = 0; i < N * d; ++i) EXPECT_NEAR(dh[i], dhf[i], 1e-4 * scale);
}

TEST(DirMoERouter, EvaluationRules) {
  const int64_t N = 40, d = 8;
  const int E = 8;
  RouterConfig cfg = base_config();
  cfg.dirmoe.r_min = 0.0;
  cfg.dirmoe.max_active = E;
  auto router = make<double>(cfg, d, E, 31);
  auto h = test::randn(N * d, 32);
  // Gate: experts with l >= 0 (the largest logit when none), weights a_hi / sum over them.
  Routing<double> g1, g2;
  router->forward(h.data(), N, RouterContext{1, -1, 0, 0, false}, g1);
  router->forward(h.data(), N, RouterContext{2, -1, 0, 77, false}, g2);
  EXPECT_EQ(g1.experts, g2.experts);
  EXPECT_EQ(g1.weights, g2.weights);
  std::vector<double> u(N * 3 * E, 0.0);
  const auto& W = router->weight().value;
  for (int64_t t = 0; t < N; ++t)
    for (int o = 0; o < 3 * E; ++o)
      for (int64_t j = 0; j < d; ++j) u[t * 3 * E + o] += W[o * d + j] * h[t * d + j];
  for (int64_t t = 0; t < N; ++t) {
    std::set<int> on;
    int best = 0;
    for (int i = 0; i < E; ++i) {
      if (u[t * 3 * E + i] >= 0) on.insert(i);
      if (u[t * 3 * E + i] > u[t * 3 * E + best]) best = i;
    }
    if (on.empty()) on.insert(best);
    std::set<int> got(g1.experts.begin() + g1.offsets[t], g1.experts.begin() + g1.offsets[t + 1]);
    EXPECT_EQ(got, on) << "token " << t;
    double total = 0;
    for (int64_t a = g1.offsets[t]; a < g1.offsets[t + 1]; ++a) total += g1.weights[a];
    EXPECT_NEAR(total, 1.0, 1e-12);
  }
  expect_error(
      [&] {
        std::vector<double> dw(g1.nnz()), dh(N * d);
        router->backward(dw.data(), 1.0, dh.data());
      },
      "evaluation forward");
  // Soft and sample rules run and route every token.
  for (const char* rule : {"soft", "sample"}) {
    RouterConfig c2 = cfg;
    c2.dirmoe.eval = rule;
    auto r2 = make<double>(c2, d, E, 31);
    Routing<double> out;
    r2->forward(h.data(), N, RouterContext{1, -1, 0, 0, false}, out);
    for (int64_t t = 0; t < N; ++t) EXPECT_GE(out.offsets[t + 1] - out.offsets[t], 1) << rule;
  }
}

TEST(DirMoERouter, ExtremeInputsStayFinite) {
  const int64_t N = 6, d = 4;
  const int E = 6;
  RouterConfig cfg = base_config();
  cfg.dirmoe.gamma_sampler = "marsaglia_tsang";
  cfg.dirmoe.tau = Schedule::constant(0.01);
  cfg.dirmoe.alpha_floor = 1e-4;
  cfg.dirmoe.lambda_q = Schedule::constant(0.01);
  auto router = make<double>(cfg, d, E, 41);
  for (auto& w : router->weight().value) w *= 40;
  auto h = test::randn(N * d, 42, 3.0);
  Routing<double> r;
  router->forward(h.data(), N, RouterContext{1, 0, 0, 0, true}, r);
  EXPECT_TRUE(std::isfinite(router->loss()));
  for (double w : r.weights) EXPECT_TRUE(std::isfinite(w));
  std::vector<double> dw(r.nnz(), 1.0), dh(N * d, 0.0);
  router->backward(dw.data(), 1.0, dh.data());
  for (double v : dh) EXPECT_TRUE(std::isfinite(v));
  for (double v : router->weight().grad) EXPECT_TRUE(std::isfinite(v));
}

TEST(DirMoERouter, ParametersAndNames) {
  auto router = make<float>(base_config(), 8, 4, 1);
  auto params = router->parameters();
  ASSERT_EQ(params.size(), 3u);
  EXPECT_EQ(params[0]->name, "r.weight");
  EXPECT_EQ(params[0]->shape, (Shape{12, 8}));
  EXPECT_EQ(params[1]->name, "r.decoder.weight");
  EXPECT_EQ(params[1]->shape, (Shape{8, 4}));
  EXPECT_EQ(params[2]->name, "r.decoder.bias");
  EXPECT_FALSE(params[2]->decay);
  auto via_factory = make_router<double>(base_config(), 8, 4, "x");
  EXPECT_EQ(via_factory->type(), "dirmoe");
}

TEST(DirMoERouter, ConfigErrorsNameTheKey) {
  auto bad = [](auto mutate, const std::string& needle) {
    RouterConfig c = base_config();
    mutate(c);
    expect_error([&] { validate_router_config(c, 8, 5); }, needle);
  };
  bad([](RouterConfig& c) { c.k = 6; }, "moe.router.k: must lie in [1, moe.num_experts = 5]");
  bad([](RouterConfig& c) { c.dirmoe.prior.m = 1.0; }, "moe.router.dirmoe.prior.m");
  bad([](RouterConfig& c) { c.dirmoe.prior.m = 0.0; }, "moe.router.dirmoe.prior.m");
  bad([](RouterConfig& c) { c.dirmoe.prior.h = 0.1; }, "moe.router.dirmoe.prior.h");
  bad([](RouterConfig& c) { c.dirmoe.prior.h = 1.0; }, "moe.router.dirmoe.prior.h");
  bad([](RouterConfig& c) { c.dirmoe.beta = Schedule::constant(-0.1); },
      "moe.router.dirmoe.beta: must be >= 0");
  bad([](RouterConfig& c) { c.dirmoe.lambda_sparsity = Schedule::constant(-1); },
      "moe.router.dirmoe.lambda_sparsity");
  bad([](RouterConfig& c) { c.dirmoe.recon_weight = Schedule::constant(-1); },
      "moe.router.dirmoe.recon_weight");
  bad([](RouterConfig& c) { c.dirmoe.tau = Schedule::constant(-0.5); },
      "moe.router.dirmoe.tau: must be > 0");
  bad([](RouterConfig& c) { c.dirmoe.tau = Schedule::exponential(0.5, 0.99, 0.8); },
      "moe.router.dirmoe.tau.floor: must not exceed moe.router.dirmoe.tau.start");
  bad([](RouterConfig& c) { c.dirmoe.max_active = 0; }, "moe.router.dirmoe.max_active");
  bad([](RouterConfig& c) { c.dirmoe.r_min = 1.5; }, "moe.router.dirmoe.r_min");
  bad([](RouterConfig& c) { c.dirmoe.alpha_floor = 0; }, "moe.router.dirmoe.alpha_floor");
  bad([](RouterConfig& c) { c.dirmoe.sparsity_on = "mean"; }, "moe.router.dirmoe.sparsity_on");
  bad([](RouterConfig& c) { c.dirmoe.lambda_q = Schedule::constant(0); },
      "moe.router.dirmoe.lambda_q");
  bad([](RouterConfig& c) { c.dirmoe.eval = "argmax"; }, "moe.router.dirmoe.eval");
  bad([](RouterConfig& c) { c.dirmoe.gamma_sampler = "x"; }, "moe.router.dirmoe.gamma_sampler");
  bad([](RouterConfig& c) { c.dirmoe.prior.a_hi = 3; }, "moe.router.dirmoe.prior.a_lo");
  bad([](RouterConfig& c) { c.dirmoe.prior.a_hi = -3; }, "moe.router.dirmoe.prior.a_hi");
  RouterConfig ok = base_config();
  ok.dirmoe.prior.a_hi = 5;
  ok.dirmoe.prior.a_lo = 1;
  ok.dirmoe.prior.lambda_p = 0.5;
  ok.dirmoe.prior.m = 7;  // ignored with an explicit prior
  EXPECT_NO_THROW(validate_router_config(ok, 8, 5));
  DirMoERouter<double> r(ok, 8, 5, "r");
  EXPECT_EQ(r.prior().a_hi, 5);
  EXPECT_EQ(r.prior().lambda, 0.5);
}

}  // namespace
}  // namespace dirmoe
