// MoE layer on one rank (EP group of size 1): forward against the dense reference,
// finite-difference gradients in double for x and every parameter, capacity dropping, names and bad
// inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "experts/moe_layer.h"
#include "runtime/core/error.h"
#include "tests/experts/moe_test_util.h"

namespace dirmoe {
namespace {

using testing::DenseMoE;
using testing::SelfCommunicator;

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

MoEConfig small_config(int E, int64_t d, int64_t f, int k, bool renorm, double cf) {
  MoEConfig cfg;
  cfg.num_experts = E;
  cfg.hidden = d;
  cfg.ffn_hidden = f;
  cfg.capacity_factor = cf;
  cfg.router.k = k;
  cfg.router.renormalize = renorm;
  cfg.router.aux_loss_coef = 0.1;
  cfg.router.z_loss_coef = 0.01;
  return cfg;
}

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <class T>
void check_forward(bool renorm, double rtol) {
  const int E = 6, k = 2, layer = 2;
  const int64_t d = 8, f = 12, N = 13;
  SelfCommunicator comm;
  MoEConfig cfg = small_config(E, d, f, k, renorm, 0.0);
  MoELayer<T> moe(cfg, Placement::contiguous(E, 1), &comm, layer);
  testing::init_params(moe.parameters());
  DenseMoE ref(layer, E, d, f, k, renorm);
  std::vector<double> x = ref.tokens(N, 1, 1e-3);
  std::vector<T> xt = cast<T>(x), y(N * d);
  moe.forward(xt.data(), y.data(), N, RouterContext{});
  std::vector<double> y_ref = ref.forward(x, N);
  EXPECT_LE(testing::tol_ratio(y, y_ref, rtol, rtol), 1.0);
  EXPECT_EQ(moe.stats().received, N * k);
  EXPECT_EQ(moe.stats().dropped, 0);
  int64_t total = 0;
  for (int e = 0; e < E; ++e) total += moe.stats().tokens_per_expert[e];
  EXPECT_EQ(total, N * k);
  EXPECT_EQ(moe.stats().router_loss, moe.router_loss());
  EXPECT_GT(moe.router_loss(), 0.0);
}

TEST(MoELayer, ForwardMatchesDenseReferenceDouble) {
  check_forward<double>(false, 1e-12);
  check_forward<double>(true, 1e-12);
}

TEST(MoELayer, ForwardMatchesDenseReferenceFloat) {
  check_forward<float>(false, 1e-5);
  check_forward<float>(true, 1e-5);
}

struct GradCase {
  bool renormalize;
  double capacity_factor;
  bool permuted_placement;
};

class MoEGradTest : public ::testing::TestWithParam<GradCase> {};

// L = sum_t <g_t, y_t> + s * router_loss; every gradient against central differences.
TEST_P(MoEGradTest, FiniteDifferencesDouble) {
  const GradCase gc = GetParam();
  const int E = 4, k = 2, layer = 0;
  const int64_t d = 6, f = 5, N = 11;
  const double s = 0.7, eps = 1e-5;
  SelfCommunicator comm;
  MoEConfig cfg = small_config(E, d, f, k, gc.renormalize, gc.capacity_factor);
  Placement placement = gc.permuted_placement ? Placement::explicit_lists(E, {{2, 0, 3, 1}})
                                              : Placement::contiguous(E, 1);
  MoELayer<double> moe(cfg, placement, &comm, layer);
  testing::init_params(moe.parameters());
  DenseMoE ref(layer, E, d, f, k, gc.renormalize);
  std::vector<double> x = ref.tokens(N, 2, 0.05);
  std::vector<double> g(N * d), y(N * d), dx(N * d);
  for (int64_t i = 0; i < N * d; ++i) g[i] = testing::normal_at(3, 0, i);

  moe.forward(x.data(), y.data(), N, RouterContext{});
  const std::vector<int32_t> chosen = moe.routing().experts;
  if (gc.capacity_factor > 0) {
    EXPECT_GT(moe.stats().dropped, 0);
  }
  moe.backward(g.data(), s, dx.data());

  auto loss = [&]() {
    moe.forward(x.data(), y.data(), N, RouterContext{});
    EXPECT_EQ(moe.routing().experts, chosen) << "finite-difference step changed the selection";
    double L = s * moe.router_loss();
    for (int64_t i = 0; i < N * d; ++i) L += g[i] * y[i];
    return L;
  };
  auto numeric = [&](double* v, int64_t n) {
    std::vector<double> out(n);
    for (int64_t i = 0; i < n; ++i) {
      const double saved = v[i];
      v[i] = saved + eps;
      const double lp = loss();
      v[i] = saved - eps;
      const double lm = loss();
      v[i] = saved;
      out[i] = (lp - lm) / (2 * eps);
    }
    return out;
  };

  double worst = testing::grad_error(numeric(x.data(), N * d), dx);
  EXPECT_LE(worst, 1e-6) << "dx";
  for (Parameter<double>* p : moe.parameters()) {
    std::vector<double> ana(p->grad.begin(), p->grad.end());
    const double err = testing::grad_error(numeric(p->value.data(), p->numel()), ana);
    EXPECT_LE(err, 1e-6) << p->name;
    worst = std::max(worst, err);
  }
  std::printf("moe renorm=%d cf=%.2f permuted=%d: worst grad error %.3g\n", gc.renormalize,
              gc.capacity_factor, gc.permuted_placement, worst);
  EXPECT_LE(worst, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Cases, MoEGradTest,
                         ::testing::Values(GradCase{false, 0.0, false}, GradCase{true, 0.0, true},
                                           GradCase{false, 0.6, false}),
                         [](const ::testing::TestParamInfo<GradCase>& info) {
                           const GradCase& c = info.param;
                           return std::string(c.renormalize ? "Renorm" : "Plain") +
                                  (c.capacity_factor > 0 ? "Capacity" : "Dropless") +
                                  (c.permuted_placement ? "Permuted" : "Contiguous");
                         });

// ReMoE through the MoE layer: tokens with any number of experts, none included (y_t = 0), against
// the dense reference with ReLU gates, and every gradient against central differences.
TEST(MoELayer, ReMoEVariableExpertsIncludingNoneMatchReferenceAndDifferences) {
  const int E = 4, layer = 1;
  const int64_t d = 6, f = 5, N = 16;
  const double s = 0.7, eps = 1e-5;
  SelfCommunicator comm;
  MoEConfig cfg = small_config(E, d, f, 1, false, 0.0);
  cfg.router.type = "remoe";
  MoELayer<double> moe(cfg, Placement::contiguous(E, 1), &comm, layer);
  testing::init_params(moe.parameters());
  DenseMoE ref(layer, E, d, f, 1, false);
  std::vector<double> x(N * d);
  for (int64_t i = 0; i < N * d; ++i) x[i] = testing::normal_at(21, 0, i);
  for (int64_t j = 0; j < d; ++j) {  // token 0 against the sum of the router rows: no expert
    x[j] = 0;
    for (int e = 0; e < E; ++e) x[j] -= 0.5 * ref.router[e * d + j];
  }
  // The reference: gates R_e = max(l_e, 0); no token sits near the kink.
  std::vector<double> y_ref(N * d, 0.0);
  int64_t none = 0, many = 0, nnz = 0;
  for (int64_t t = 0; t < N; ++t) {
    const std::vector<double> l = ref.logits(&x[t * d]);
    int n = 0;
    for (int e = 0; e < E; ++e) {
      ASSERT_GT(std::abs(l[e]), 1e-3) << "token " << t << " expert " << e;
      if (l[e] <= 0) continue;
      ++n;
      const std::vector<double> o = ref.expert(e, &x[t * d]);
      for (int64_t j = 0; j < d; ++j) y_ref[t * d + j] += l[e] * o[j];
    }
    none += n == 0;
    many += n >= 2;
    nnz += n;
  }
  ASSERT_GT(none, 0) << "the case must hold a token without any expert";
  ASSERT_GT(many, 0);
  RouterContext ctx;
  ctx.remoe_lambda = 0.2;
  std::vector<double> y(N * d), dx(N * d), g(N * d);
  moe.forward(x.data(), y.data(), N, ctx);
  EXPECT_LE(testing::tol_ratio(y, y_ref, 1e-12, 1e-12), 1.0);
  EXPECT_EQ(moe.stats().received, nnz);
  EXPECT_GT(moe.router_loss(), 0.0);
  for (int64_t i = 0; i < N * d; ++i) g[i] = testing::normal_at(3, 0, i);
  const std::vector<int32_t> chosen = moe.routing().experts;
  moe.backward(g.data(), s, dx.data());
  auto loss = [&]() {
    moe.forward(x.data(), y.data(), N, ctx);
    EXPECT_EQ(moe.routing().experts, chosen) << "finite-difference step changed the selection";
    double L = s * moe.router_loss();
    for (int64_t i = 0; i < N * d; ++i) L += g[i] * y[i];
    return L;
  };
  auto numeric = [&](double* v, int64_t n) {
    std::vector<double> out(n);
    for (int64_t i = 0; i < n; ++i) {
      const double saved = v[i];
      v[i] = saved + eps;
      const double lp = loss();
      v[i] = saved - eps;
      const double lm = loss();
      v[i] = saved;
      out[i] = (lp - lm) / (2 * eps);
    }
    return out;
  };
  double worst = testing::grad_error(numeric(x.data(), N * d), dx);
  EXPECT_LE(worst, 1e-6) << "dx";
  for (Parameter<double>* p : moe.parameters()) {
    std::vector<double> ana(p->grad.begin(), p->grad.end());
    const double err = testing::grad_error(numeric(p->value.data(), p->numel()), ana);
    EXPECT_LE(err, 1e-6) << p->name;
    worst = std::max(worst, err);
  }
  std::printf("moe remoe: %ld tokens, %ld without an expert, %ld with 2+: worst grad error %.3g\n",
              static_cast<long>(N), static_cast<long>(none), static_cast<long>(many), worst);
}

// Every gate closed: nothing is exchanged, the output and the input gradient are zero, no NaN.
TEST(MoELayer, ReMoENoTokenRoutedGivesZeroOutput) {
  const int E = 4;
  const int64_t d = 6, f = 5, N = 9;
  SelfCommunicator comm;
  MoEConfig cfg = small_config(E, d, f, 1, false, 0.0);
  cfg.router.type = "remoe";
  cfg.capacity_factor = 1.0;  // the capacity path with nothing to keep
  MoELayer<float> moe(cfg, Placement::contiguous(E, 1), &comm, 0);
  testing::init_params(moe.parameters());
  Parameter<float>* w = moe.parameters()[0];
  ASSERT_EQ(w->name, "layers.0.moe.router.weight");
  for (int64_t i = 0; i < w->numel(); ++i) w->value[i] = -std::abs(w->value[i]) - 0.1f;
  std::vector<float> x(N * d), y(N * d, 1.0f), dx(N * d, 1.0f), g(N * d, 1.0f);
  for (int64_t i = 0; i < N * d; ++i)
    x[i] = std::abs(static_cast<float>(testing::normal_at(5, 0, i)));
  moe.forward(x.data(), y.data(), N, RouterContext{});
  EXPECT_EQ(moe.routing().nnz(), 0);
  EXPECT_EQ(moe.stats().received, 0);
  EXPECT_EQ(moe.stats().dropped, 0);
  EXPECT_EQ(moe.router_loss(), 0.0);
  for (float v : y) EXPECT_EQ(v, 0.0f);
  moe.backward(g.data(), 1.0, dx.data());
  for (float v : dx) EXPECT_EQ(v, 0.0f);
  for (Parameter<float>* p : moe.parameters())
    for (int64_t i = 0; i < p->numel(); ++i) EXPECT_EQ(p->grad[i], 0.0f) << p->name;
}

// Every token prefers its own expert; capacity ceil(1.0 * 8 * 1 / 4) = 2 per expert keeps the
// first two tokens of expert 0 and drops tokens 2, 3, 4.
TEST(MoELayer, CapacityDropsExactlyTheLatestTokens) {
  const int E = 4, layer = 1;
  const int64_t d = 4, f = 3, N = 8;
  SelfCommunicator comm;
  MoEConfig cfg = small_config(E, d, f, 1, false, 1.0);
  MoELayer<double> moe(cfg, Placement::contiguous(E, 1), &comm, layer);
  testing::init_params(moe.parameters());
  Parameter<double>* router = moe.parameters()[0];
  router->value.zero();
  for (int e = 0; e < E; ++e) router->value[e * d + e] = 4.0;
  const int target[N] = {0, 0, 0, 0, 0, 1, 1, 2};
  std::vector<double> x(N * d);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t j = 0; j < d; ++j) x[t * d + j] = (j == target[t] ? 1.0 : 0.0) + 0.01 * j;
  std::vector<double> y(N * d), dx(N * d), dy(N * d, 1.0);
  moe.forward(x.data(), y.data(), N, RouterContext{});
  EXPECT_EQ(moe.stats().dropped, 3);
  EXPECT_EQ(moe.stats().received, 5);
  EXPECT_EQ(moe.stats().tokens_per_expert, (std::vector<int64_t>{5, 2, 1, 0}));

  DenseMoE ref(layer, E, d, f, 1, false);
  std::copy(router->value.begin(), router->value.end(), ref.router.begin());
  std::vector<double> y_ref = ref.forward(x, N, [](int64_t t, int) { return t < 2 || t > 4; });
  EXPECT_LE(testing::tol_ratio(y, y_ref, 1e-12, 1e-12), 1.0);
  for (int64_t t = 2; t <= 4; ++t)
    for (int64_t j = 0; j < d; ++j) EXPECT_EQ(y[t * d + j], 0.0);
  moe.backward(dy.data(), 1.0, dx.data());
  EXPECT_EQ(moe.stats().dropped, 3);
}

// k = 2 and random routing: the number dropped equals a per-expert count in token order.
TEST(MoELayer, CapacityCountMatchesSimulation) {
  const int E = 5, k = 2, layer = 0;
  const int64_t d = 6, f = 4, N = 17;
  const double cf = 0.75;
  SelfCommunicator comm;
  MoEConfig cfg = small_config(E, d, f, k, true, cf);
  MoELayer<double> moe(cfg, Placement::contiguous(E, 1), &comm, layer);
  testing::init_params(moe.parameters());
  DenseMoE ref(layer, E, d, f, k, true);
  std::vector<double> x = ref.tokens(N, 4, 1e-3), y(N * d);
  moe.forward(x.data(), y.data(), N, RouterContext{});
  const int64_t capacity = static_cast<int64_t>(std::ceil(cf * N * k / E));
  std::vector<int64_t> used(E, 0), routed(E, 0);
  std::vector<std::vector<bool>> keep(N, std::vector<bool>(E, false));
  int64_t dropped = 0;
  for (int64_t t = 0; t < N; ++t) {
    for (auto [e, w] : ref.route(&x[t * d])) {
      ++routed[e];
      if (used[e] < capacity) {
        ++used[e];
        keep[t][e] = true;
      } else {
        ++dropped;
      }
    }
  }
  EXPECT_GT(dropped, 0);
  EXPECT_EQ(moe.stats().dropped, dropped);
  EXPECT_EQ(moe.stats().received, N * k - dropped);
  EXPECT_EQ(moe.stats().tokens_per_expert, routed);
  std::vector<double> y_ref = ref.forward(x, N, [&](int64_t t, int e) { return keep[t][e]; });
  EXPECT_LE(testing::tol_ratio(y, y_ref, 1e-12, 1e-12), 1.0);
}

TEST(MoELayer, BuffersReusedAcrossBatchSizes) {
  const int E = 4, k = 2, layer = 0;
  const int64_t d = 5, f = 7;
  SelfCommunicator comm;
  MoELayer<double> moe(small_config(E, d, f, k, false, 0.0), Placement::contiguous(E, 1), &comm,
                       layer);
  testing::init_params(moe.parameters());
  DenseMoE ref(layer, E, d, f, k, false);
  for (int64_t N : {20, 3, 0, 9}) {
    std::vector<double> x = ref.tokens(N, 10 + N, 1e-3), y(N * d, 123.0), dx(N * d, 5.0);
    std::vector<double> dy(N * d, 0.0);
    moe.forward(x.data(), y.data(), N, RouterContext{});
    EXPECT_LE(testing::tol_ratio(y, ref.forward(x, N), 1e-12, 1e-12), 1.0) << "N=" << N;
    moe.backward(dy.data(), 0.0, dx.data());
    for (double v : dx) EXPECT_EQ(v, 0.0);
  }
}

TEST(MoELayer, ParameterNamesKindsAndShapes) {
  SelfCommunicator comm;
  MoELayer<float> moe(small_config(3, 4, 6, 1, false, 0.0),
                      Placement::explicit_lists(3, {{1, 2, 0}}), &comm, 7);
  std::vector<Parameter<float>*> params = moe.parameters();
  ASSERT_EQ(params.size(), 10u);
  EXPECT_EQ(params[0]->name, "layers.7.moe.router.weight");
  EXPECT_EQ(params[0]->kind, ParamKind::kReplicated);
  EXPECT_EQ(params[0]->shape, (Shape{3, 4}));
  const int order[3] = {1, 2, 0};
  for (int i = 0; i < 3; ++i) {
    const std::string base = "layers.7.moe.experts." + std::to_string(order[i]);
    EXPECT_EQ(params[1 + 3 * i]->name, base + ".w1");
    EXPECT_EQ(params[2 + 3 * i]->name, base + ".w2");
    EXPECT_EQ(params[3 + 3 * i]->name, base + ".w3");
    EXPECT_EQ(params[1 + 3 * i]->shape, (Shape{6, 4}));
    EXPECT_EQ(params[2 + 3 * i]->shape, (Shape{4, 6}));
    EXPECT_EQ(params[3 + 3 * i]->shape, (Shape{6, 4}));
    for (int j = 1; j <= 3; ++j) {
      EXPECT_EQ(params[j + 3 * i]->kind, ParamKind::kExpert);
      EXPECT_EQ(params[j + 3 * i]->expert, order[i]);
    }
  }
  for (Parameter<float>* p : params)
    for (float v : p->value) EXPECT_EQ(v, 0.0f);
}

TEST(MoELayer, BadConfiguration) {
  SelfCommunicator comm;
  MoEConfig cfg = small_config(4, 4, 4, 2, false, 0.0);
  expect_error([&] { MoELayer<double>(cfg, Placement::contiguous(8, 1), &comm, 0); },
               "covers 8 experts but moe.num_experts is 4");
  expect_error([&] { MoELayer<double>(cfg, Placement::contiguous(4, 2), &comm, 0); },
               "EP group of size 1");
  expect_error([&] { MoELayer<double>(cfg, Placement::contiguous(4, 1), nullptr, 0); },
               "null EP communicator");
  MoEConfig bad = cfg;
  bad.ffn_hidden = 0;
  expect_error([&] { MoELayer<double>(bad, Placement::contiguous(4, 1), &comm, 0); },
               "moe.ffn_hidden");
  bad = cfg;
  bad.capacity_factor = NAN;
  expect_error([&] { MoELayer<double>(bad, Placement::contiguous(4, 1), &comm, 0); },
               "moe.capacity_factor");
  bad = cfg;
  bad.router.k = 5;
  expect_error([&] { MoELayer<double>(bad, Placement::contiguous(4, 1), &comm, 0); }, "router.k");
  MoELayer<double> moe(cfg, Placement::contiguous(4, 1), &comm, 0);
  std::vector<double> buf(16);
  expect_error([&] { moe.backward(buf.data(), 1.0, buf.data()); }, "before forward");
  expect_error([&] { moe.forward(nullptr, buf.data(), 4, RouterContext{}); }, "null x or y");
}

}  // namespace
}  // namespace dirmoe
