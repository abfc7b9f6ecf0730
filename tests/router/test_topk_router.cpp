// topk router: finite-difference gradients in double (routing weights + aux + z loss), the aux
// and z losses on hand-computed cases, tie-breaking, float/double agreement and config errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "router/router.h"
#include "router/topk_router.h"
#include "runtime/core/error.h"

namespace dirmoe {
namespace {

// A router's named statistic; fails the test when it is missing.
double scalar(const RouterStats& st, const std::string& name) {
  for (const auto& [k, v] : st.scalars)
    if (k == name) return v;
  ADD_FAILURE() << "no router statistic named " << name;
  return NAN;
}

template <class F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected a dirmoe::Error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message '" << e.what() << "' does not mention '" << needle << "'";
  }
}

std::vector<double> randn(size_t n, uint32_t seed, double scale = 1.0) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<double> v(n);
  for (double& x : v) x = dist(gen);
  return v;
}

// Redraws token rows until the k-th and (k+1)-th logits are at least `gap` apart.
std::vector<double> tie_free_tokens(const std::vector<double>& W, int64_t N, int64_t d, int E,
                                    int k, uint32_t seed, double gap) {
  std::vector<double> h(N * d);
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> dist(0.0, 1.0);
  for (int64_t t = 0; t < N; ++t) {
    for (;;) {
      for (int64_t j = 0; j < d; ++j) h[t * d + j] = dist(gen);
      std::vector<double> l(E, 0.0);
      for (int e = 0; e < E; ++e)
        for (int64_t j = 0; j < d; ++j) l[e] += W[e * d + j] * h[t * d + j];
      std::sort(l.begin(), l.end(), std::greater<double>());
      if (k == E || l[k - 1] - l[k] >= gap) break;
    }
  }
  return h;
}

double grad_error(const std::vector<double>& num, const std::vector<double>& ana) {
  double scale = 0;
  for (double a : ana) scale = std::max(scale, std::abs(a));
  double worst = 0;
  for (size_t i = 0; i < num.size(); ++i) {
    const double den = std::max({std::abs(num[i]), std::abs(ana[i]), 1e-3 * scale, 1e-300});
    worst = std::max(worst, std::abs(num[i] - ana[i]) / den);
  }
  return worst;
}

struct GradCase {
  int E, k;
  bool renormalize;
  double aux, z;
};

class TopKGradTest : public ::testing::TestWithParam<GradCase> {};

// L = sum_a c_a * weight_a + s * (aux + z); dL/dh and dL/dW against central differences.
TEST_P(TopKGradTest, FiniteDifferencesDouble) {
  const GradCase gc = GetParam();
  const int64_t N = 9, d = 5;
  RouterConfig cfg;
  cfg.k = gc.k;
  cfg.renormalize = gc.renormalize;
  cfg.aux_loss_coef = gc.aux;
  cfg.z_loss_coef = gc.z;
  TopKRouter<double> router(cfg, d, gc.E, "layers.0.moe.router");
  std::vector<double> W = randn(gc.E * d, 11, 0.8);
  std::copy(W.begin(), W.end(), router.weight().value.data());
  std::vector<double> h = tie_free_tokens(W, N, d, gc.E, gc.k, 12, 0.05);
  const double s = 0.7;
  const std::vector<double> c = randn(N * gc.k, 13);

  RouterContext ctx;
  Routing<double> routing;
  router.forward(h.data(), N, ctx, routing);
  const std::vector<int32_t> chosen = routing.experts;
  ASSERT_EQ(routing.nnz(), N * gc.k);
  auto loss = [&]() {
    Routing<double> r;
    router.forward(h.data(), N, ctx, r);
    EXPECT_EQ(r.experts, chosen) << "finite-difference step changed the selection";
    double L = s * router.loss();
    for (int64_t a = 0; a < r.nnz(); ++a) L += c[a] * r.weights[a];
    return L;
  };

  router.forward(h.data(), N, ctx, routing);
  std::vector<double> dh(N * d, 0.0);
  router.weight().grad.zero();
  router.backward(c.data(), s, dh.data());
  std::vector<double> dW(router.weight().grad.begin(), router.weight().grad.end());

  const double eps = 1e-5;
  auto numeric = [&](double* x, size_t n) {
    std::vector<double> g(n);
    for (size_t i = 0; i < n; ++i) {
      const double saved = x[i];
      x[i] = saved + eps;
      const double lp = loss();
      x[i] = saved - eps;
      const double lm = loss();
      x[i] = saved;
      g[i] = (lp - lm) / (2 * eps);
    }
    return g;
  };
  const std::vector<double> num_dh = numeric(h.data(), h.size());
  const std::vector<double> num_dW = numeric(router.weight().value.data(), W.size());
  const double err_h = grad_error(num_dh, dh), err_W = grad_error(num_dW, dW);
  std::printf("topk E=%d k=%d renorm=%d: grad error dh %.3g dW %.3g\n", gc.E, gc.k, gc.renormalize,
              err_h, err_W);
  EXPECT_LE(err_h, 1e-6);
  EXPECT_LE(err_W, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Cases, TopKGradTest,
                         ::testing::Values(GradCase{6, 2, false, 0.1, 0.01},
                                           GradCase{6, 2, true, 0.1, 0.01},
                                           GradCase{6, 3, true, 0.3, 0.05},
                                           GradCase{4, 1, false, 0.2, 0.02},
                                           GradCase{4, 4, true, 0.1, 0.01}),
                         [](const ::testing::TestParamInfo<GradCase>& info) {
                           const GradCase& c = info.param;
                           return "E" + std::to_string(c.E) + "k" + std::to_string(c.k) +
                                  (c.renormalize ? "Renorm" : "Plain");
                         });

// W = 0: every token sees uniform probabilities; ties go to the lowest indices, so each token
// picks experts 0..k-1, f_i = 1/k for those, P_i = 1/E and aux = coef * E * k * (1/k)(1/E) = coef.
TEST(TopKRouter, UniformRoutingClosedForm) {
  const int E = 8, k = 2;
  const int64_t N = 5, d = 3;
  RouterConfig cfg;
  cfg.k = k;
  cfg.aux_loss_coef = 0.01;
  cfg.z_loss_coef = 0.001;
  TopKRouter<double> router(cfg, d, E, "r");
  std::vector<double> h = randn(N * d, 3);
  Routing<double> r;
  router.forward(h.data(), N, RouterContext{}, r);
  ASSERT_EQ(r.num_tokens, N);
  ASSERT_EQ(r.nnz(), N * k);
  for (int64_t t = 0; t < N; ++t) {
    EXPECT_EQ(r.offsets[t], t * k);
    EXPECT_EQ(r.experts[t * k + 0], 0);
    EXPECT_EQ(r.experts[t * k + 1], 1);
    EXPECT_DOUBLE_EQ(r.weights[t * k + 0], 1.0 / E);
  }
  EXPECT_NEAR(router.stats().aux_loss, 0.01, 1e-15);
  EXPECT_NEAR(router.stats().z_loss, 0.001 * std::log(8.0) * std::log(8.0), 1e-15);
  EXPECT_NEAR(router.loss(), router.stats().aux_loss + router.stats().z_loss, 1e-15);
  EXPECT_EQ(router.stats().mean_active, k);
  EXPECT_NEAR(scalar(router.stats(), "entropy"), std::log(8.0), 1e-12);
  EXPECT_EQ(scalar(router.stats(), "target_k"), 2.0);
  EXPECT_NEAR(scalar(router.stats(), "undispatched_mass"), 1.0 - 2.0 / E, 1e-15);

  cfg.renormalize = true;
  TopKRouter<double> renorm(cfg, d, E, "r");
  renorm.forward(h.data(), N, RouterContext{}, r);
  EXPECT_DOUBLE_EQ(r.weights[0], 0.5);
  EXPECT_DOUBLE_EQ(r.weights[1], 0.5);
}

// E=2, k=1, W = [[1],[-1]], h = (ln2, ln2, -ln2): p0 = (.8, .8, .2) so experts (0, 0, 1),
// f = (2/3, 1/3), P = (0.6, 0.4), aux = coef * 2 * (0.4 + 0.4/3) = coef * 16/15;
// every logsumexp is ln(2 + 1/2).
TEST(TopKRouter, SkewedRoutingClosedForm) {
  RouterConfig cfg;
  cfg.k = 1;
  cfg.aux_loss_coef = 0.3;
  cfg.z_loss_coef = 0.02;
  TopKRouter<double> router(cfg, 1, 2, "r");
  router.weight().value[0] = 1;
  router.weight().value[1] = -1;
  const double l2 = std::log(2.0);
  std::vector<double> h = {l2, l2, -l2};
  Routing<double> r;
  router.forward(h.data(), 3, RouterContext{}, r);
  EXPECT_EQ(r.experts, (std::vector<int32_t>{0, 0, 1}));
  EXPECT_NEAR(r.weights[0], 0.8, 1e-15);
  EXPECT_NEAR(r.weights[2], 0.8, 1e-15);
  EXPECT_NEAR(router.stats().aux_loss, 0.3 * 16.0 / 15.0, 1e-14);
  EXPECT_NEAR(router.stats().z_loss, 0.02 * std::pow(std::log(2.5), 2), 1e-15);
  const double ent = -(0.8 * std::log(0.8) + 0.2 * std::log(0.2));
  EXPECT_NEAR(scalar(router.stats(), "entropy"), ent, 1e-14);
  EXPECT_NEAR(scalar(router.stats(), "undispatched_mass"), 0.2, 1e-15);
}

TEST(TopKRouter, TiesGoToLowerExpertIndex) {
  RouterConfig cfg;
  cfg.k = 2;
  TopKRouter<double> router(cfg, 1, 4, "r");
  // logits (1, 3, 3, 1) for h = 1.
  const double w[4] = {1, 3, 3, 1};
  std::copy(w, w + 4, router.weight().value.data());
  const double h = 1;
  Routing<double> r;
  router.forward(&h, 1, RouterContext{}, r);
  EXPECT_EQ(r.experts, (std::vector<int32_t>{1, 2}));
  cfg.k = 3;
  TopKRouter<double> router3(cfg, 1, 4, "r");
  std::copy(w, w + 4, router3.weight().value.data());
  router3.forward(&h, 1, RouterContext{}, r);
  EXPECT_EQ(r.experts, (std::vector<int32_t>{1, 2, 0}));
}

TEST(TopKRouter, EmptyBatch) {
  RouterConfig cfg;
  TopKRouter<double> router(cfg, 4, 4, "r");
  Routing<double> r;
  router.forward(nullptr, 0, RouterContext{}, r);
  EXPECT_EQ(r.nnz(), 0);
  ASSERT_EQ(r.offsets.size(), 1u);
  EXPECT_EQ(router.loss(), 0.0);
  router.backward(nullptr, 1.0, nullptr);
}

TEST(TopKRouter, FloatMatchesDouble) {
  const int E = 8, k = 2;
  const int64_t N = 16, d = 12;
  RouterConfig cfg;
  cfg.k = k;
  cfg.renormalize = true;
  cfg.z_loss_coef = 1e-3;
  auto rf = make_router<float>(cfg, d, E, "layers.1.moe.router");
  auto rd = make_router<double>(cfg, d, E, "layers.1.moe.router");
  ASSERT_EQ(rf->parameters().size(), 1u);
  EXPECT_EQ(rf->parameters()[0]->name, "layers.1.moe.router.weight");
  EXPECT_EQ(rf->parameters()[0]->shape, (Shape{E, d}));
  EXPECT_EQ(rf->parameters()[0]->kind, ParamKind::kReplicated);
  EXPECT_EQ(rf->type(), "topk");
  std::vector<double> W = randn(E * d, 5, 0.5);
  std::vector<double> h = tie_free_tokens(W, N, d, E, k, 6, 0.01);
  std::vector<float> hf(h.begin(), h.end());
  for (int64_t i = 0; i < E * d; ++i) {
    rd->parameters()[0]->value[i] = W[i];
    rf->parameters()[0]->value[i] = static_cast<float>(W[i]);
  }
  Routing<float> outf;
  Routing<double> outd;
  rf->forward(hf.data(), N, RouterContext{}, outf);
  rd->forward(h.data(), N, RouterContext{}, outd);
  EXPECT_EQ(outf.experts, outd.experts);
  for (int64_t a = 0; a < outd.nnz(); ++a) EXPECT_NEAR(outf.weights[a], outd.weights[a], 1e-5);
  EXPECT_NEAR(rf->loss(), rd->loss(), 1e-5);
  std::vector<float> dwf(outf.nnz(), 1.0f), dhf(N * d, 0.0f);
  std::vector<double> dwd(outd.nnz(), 1.0), dhd(N * d, 0.0);
  rf->backward(dwf.data(), 2.0, dhf.data());
  rd->backward(dwd.data(), 2.0, dhd.data());
  for (int64_t i = 0; i < N * d; ++i) EXPECT_NEAR(dhf[i], dhd[i], 1e-5);
  for (int64_t i = 0; i < E * d; ++i)
    EXPECT_NEAR(rf->parameters()[0]->grad[i], rd->parameters()[0]->grad[i], 1e-5);
}

TEST(TopKRouter, BackwardAccumulates) {
  RouterConfig cfg;
  const int64_t N = 3, d = 4;
  const int E = 5;
  TopKRouter<double> router(cfg, d, E, "r");
  std::vector<double> W = randn(E * d, 8);
  std::copy(W.begin(), W.end(), router.weight().value.data());
  std::vector<double> h = randn(N * d, 9);
  Routing<double> r;
  router.forward(h.data(), N, RouterContext{}, r);
  std::vector<double> dw(r.nnz(), 1.0), dh1(N * d, 0.0), dh2(N * d, 5.0);
  router.backward(dw.data(), 1.0, dh1.data());
  std::vector<double> g1(router.weight().grad.begin(), router.weight().grad.end());
  router.backward(dw.data(), 1.0, dh2.data());
  for (int64_t i = 0; i < N * d; ++i) EXPECT_NEAR(dh2[i], dh1[i] + 5.0, 1e-14);
  for (int64_t i = 0; i < E * d; ++i) EXPECT_NEAR(router.weight().grad[i], 2 * g1[i], 1e-14);
}

TEST(TopKRouter, BadConfigNamesTheField) {
  RouterConfig ok;
  EXPECT_NO_THROW(validate_router_config(ok, 8, 4));
  RouterConfig c = ok;
  c.k = 5;
  expect_error([&] { make_router<float>(c, 8, 4, "r"); }, "router.k");
  c.k = 0;
  expect_error([&] { make_router<float>(c, 8, 4, "r"); }, "router.k");
  c = ok;
  c.aux_loss_coef = -1e-3;
  expect_error([&] { make_router<double>(c, 8, 4, "r"); }, "router.aux_loss_coef");
  c.aux_loss_coef = NAN;
  expect_error([&] { make_router<double>(c, 8, 4, "r"); }, "router.aux_loss_coef");
  c = ok;
  c.z_loss_coef = -0.5;
  expect_error([&] { make_router<double>(c, 8, 4, "r"); }, "router.z_loss_coef");
  c = ok;
  c.type = "switch";
  expect_error([&] { make_router<double>(c, 8, 4, "r"); }, "router.type");
  expect_error([&] { make_router<double>(c, 8, 4, "r"); }, "switch");
  c = ok;
  expect_error([&] { TopKRouter<double>(c, 0, 4, "r"); }, "hidden");
}

TEST(TopKRouter, BadInputs) {
  RouterConfig cfg;
  TopKRouter<double> router(cfg, 2, 4, "layers.2.moe.router");
  std::vector<double> dh(4, 0.0), dw(4, 0.0);
  expect_error([&] { router.backward(dw.data(), 1.0, dh.data()); }, "before forward");
  Routing<double> r;
  expect_error([&] { router.forward(nullptr, 3, RouterContext{}, r); }, "null input");
  std::vector<double> h = {NAN, 1.0};
  router.weight().value[0] = 1;
  expect_error([&] { router.forward(h.data(), 1, RouterContext{}, r); }, "non-finite");
}

}  // namespace
}  // namespace dirmoe
