// End-to-end tests of the dirmoe, probmoe and remoe routers through the `dirmoe` executable under
// mpiexec: EP=N on N ranks equals one rank with N-fold gradient accumulation step for step (router
// noise is keyed by global token), and the per-layer router figures reach metrics.jsonl.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "e2e_util.h"

namespace {

using namespace dirmoe::e2e;

fs::path work_dir(const std::string& name) { return dirmoe::e2e::work_dir("e2e_router_runs", name); }



// np ranks with EP = np against one rank accumulating np micro-batches; `router` (the --set
// arguments selecting the router) applies to both runs.
void expect_same_losses(int np, const std::string& name, const std::string& router) {
  require_corpus();
  fs::path a = work_dir(name + "_ep" + std::to_string(np));
  fs::path b = work_dir(name + "_accum" + std::to_string(np));
  Proc ra = sh(mpiexec(np) + bin() + small_job(20) + router +
               " --set parallel.ep=" + std::to_string(np) + " --run-dir " + a.string());
  ASSERT_EQ(ra.code, 0) << ra.output;
  Proc rb = sh(mpiexec(1) + bin() + small_job(20) + router +
               " --set parallel.ep=1 --set train.grad_accum=" + std::to_string(np) + " --run-dir " +
               b.string());
  ASSERT_EQ(rb.code, 0) << rb.output;
  auto la = step_losses(a), lb = step_losses(b);
  ASSERT_EQ(la.size(), 20u);
  ASSERT_EQ(lb.size(), 20u);
  double worst = 0;
  for (size_t i = 0; i < la.size(); ++i) {
    double rel = std::abs(la[i] - lb[i]) / std::abs(lb[i]);
    worst = std::max(worst, rel);
    EXPECT_LE(rel, 1e-5) << name << " step " << i + 1 << ": ep=" << np << " " << la[i]
                         << " vs accum " << lb[i];
  }
  auto ra_rec = records(a), rb_rec = records(b);
  const double act_a = ra_rec.back()["active_experts"].get<double>();
  const double act_b = rb_rec.back()["active_experts"].get<double>();
  EXPECT_NEAR(act_a, act_b, 1e-9) << "the routing itself must agree";
  if (ra_rec.back().contains("remoe_lambda")) {  // the controller saw the same sparsity
    int same = 0;
    for (size_t i = 0; i < ra_rec.size(); ++i) {
      if (!ra_rec[i].contains("remoe_lambda")) continue;
      EXPECT_EQ(ra_rec[i]["remoe_lambda"].get<double>(), rb_rec[i]["remoe_lambda"].get<double>())
          << "step " << ra_rec[i]["step"];
      same += ra_rec[i]["remoe_lambda"] == rb_rec[i]["remoe_lambda"];
    }
    std::printf("%s: remoe lambda equal on %d steps, last %.6g\n", name.c_str(), same,
                ra_rec.back()["remoe_lambda"].get<double>());
  }
  std::printf(
      "%s: EP=%d on %d ranks vs 1 rank x %d accumulation: 20 steps, loss %.6f -> %.6f, "
      "worst relative difference %.3g, active experts %.4f vs %.4f\n",
      name.c_str(), np, np, np, lb.front(), lb.back(), worst, act_a, act_b);
  EXPECT_LT(lb.back(), lb.front());  // it trains
}

// dirmoe drops the undispatched mass (moe.router.renormalize: false), as its README figures were
// measured.
const char* kDirMoE =
    " --set moe.router.type=dirmoe --set moe.router.k=1 --set moe.router.renormalize=false";
const char* kProbExact = " --set moe.router.type=probmoe --set moe.router.k=2";
const char* kProbDynamic =
    " --set moe.router.type=probmoe --set moe.router.probmoe.mode=dynamic"
    " --set moe.router.probmoe.k_min=1 --set moe.router.probmoe.k_max=3";

// lambda_init large enough that the L1 term and the controller shape these 20 steps, small enough
// that the gates stay open.
const char* kReMoE =
    " --set moe.router.type=remoe --set moe.router.k=1 --set moe.router.remoe.lambda_init=1e-4";

TEST(RouterEquivalence, ReMoEEp2EqualsOneRankWithAccumulation) {
  expect_same_losses(2, "remoe", kReMoE);
}
TEST(RouterEquivalence, ReMoEEp4EqualsOneRankWithAccumulation) {
  expect_same_losses(4, "remoe", kReMoE);
}

TEST(RouterEquivalence, DirMoEEp2EqualsOneRankWithAccumulation) {
  expect_same_losses(2, "dirmoe", kDirMoE);
}
TEST(RouterEquivalence, DirMoEEp4EqualsOneRankWithAccumulation) {
  expect_same_losses(4, "dirmoe", kDirMoE);
}
TEST(RouterEquivalence, ProbMoEExactEp2EqualsOneRankWithAccumulation) {
  expect_same_losses(2, "probmoe_exact", kProbExact);
}
TEST(RouterEquivalence, ProbMoEExactEp4EqualsOneRankWithAccumulation) {
  expect_same_losses(4, "probmoe_exact", kProbExact);
}
TEST(RouterEquivalence, ProbMoEDynamicEp2EqualsOneRankWithAccumulation) {
  expect_same_losses(2, "probmoe_dynamic", kProbDynamic);
}

TEST(RouterMetrics, DirMoEFiguresPerLayerInMetrics) {
  require_corpus();
  fs::path dir = work_dir("dirmoe_metrics");
  Proc r = sh(mpiexec(2) + bin() + small_job(3) + kDirMoE + " --run-dir " + dir.string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("active"), std::string::npos);
  auto recs = records(dir);
  ASSERT_GE(recs.size(), 4u);
  const auto& last = recs.back();
  ASSERT_EQ(last["layers"].size(), 4u);
  for (const auto& layer : last["layers"]) {
    for (const char* k : {"tokens_per_expert", "load_max_over_mean", "active_experts", "target_k",
                          "undispatched_mass", "kl", "recon", "sparsity", "sum_gates", "tau",
                          "lambda_q", "gate_entropy", "near_binary", "dead_experts"})
      EXPECT_TRUE(layer.contains(k)) << k;
    EXPECT_EQ(layer["target_k"].get<double>(), 1.0);
    EXPECT_GE(layer["active_experts"].get<double>(), 1.0);
  }
  std::ifstream resolved(dir / "config.resolved.yaml");
  std::stringstream ss;
  ss << resolved.rdbuf();
  EXPECT_NE(ss.str().find("dirmoe:"), std::string::npos);
  EXPECT_NE(ss.str().find("lambda_sparsity"), std::string::npos);
}

TEST(RouterMetrics, ReMoEFiguresPerLayerInMetricsAndOnTheConsole) {
  require_corpus();
  fs::path dir = work_dir("remoe_metrics");
  Proc r = sh(mpiexec(2) + bin() + small_job(3) + kReMoE + " --run-dir " + dir.string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("/ k 1 (sparsity "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("no expert"), std::string::npos) << r.output;
  auto recs = records(dir);
  ASSERT_GE(recs.size(), 4u);
  float lambda = static_cast<float>(1e-4);
  for (const auto& rec : recs) {
    if (!rec.contains("loss")) continue;
    // The controller's trace from the recorded sparsity: times alpha below 7/8, else divided.
    EXPECT_EQ(rec["remoe_lambda"].get<double>(), static_cast<double>(lambda)) << rec["step"];
    const double sp = rec["sparsity"].get<double>();
    lambda = sp < 0.875 ? lambda * 1.2f : lambda / 1.2f;
    EXPECT_EQ(rec["remoe_lambda_next"].get<double>(), static_cast<double>(lambda));
    double mean_sparsity = 0;
    for (const auto& layer : rec["layers"]) {
      for (const char* k :
           {"tokens_per_expert", "load_max_over_mean", "load_cv", "active_experts", "target_k",
            "sparsity", "no_expert", "lambda", "l1_reg", "l1_load", "gate_mean", "dead_experts"})
        EXPECT_TRUE(layer.contains(k)) << k;
      EXPECT_EQ(layer["target_k"].get<double>(), 1.0);
      EXPECT_NEAR(layer["sparsity"].get<double>(),
                  1.0 - layer["active_experts"].get<double>() / 8.0, 1e-12);
      mean_sparsity += layer["sparsity"].get<double>() / 4;
    }
    EXPECT_NEAR(mean_sparsity, sp, 1e-12);
  }
  std::ifstream resolved(dir / "config.resolved.yaml");
  std::stringstream ss;
  ss << resolved.rdbuf();
  EXPECT_NE(ss.str().find("remoe:"), std::string::npos);
  EXPECT_NE(ss.str().find("lambda_init"), std::string::npos);
}

// A strong L1 term closes every gate: the layers with no routed token are reported by step and
// layer, and the run goes on with finite losses.
TEST(RouterMetrics, ReMoELayerWithoutAnyExpertIsReportedAndHandled) {
  require_corpus();
  fs::path dir = work_dir("remoe_empty");
  Proc r = sh(mpiexec(2) + bin() + small_job(12) +
              " --set moe.router.type=remoe --set moe.router.k=1"
              " --set moe.router.remoe.lambda_init=1e4 --set train.lr=0.05 --set train.warmup=0" +
              " --run-dir " + dir.string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("no token of the global batch selected any expert"), std::string::npos)
      << r.output;
  int empty_steps = 0;
  for (const auto& rec : records(dir)) {
    if (!rec.contains("loss")) continue;
    EXPECT_TRUE(std::isfinite(rec["loss"].get<double>())) << rec["step"];
    EXPECT_FALSE(rec.contains("skipped")) << rec["step"];
    if (!rec.contains("layers_without_tokens")) continue;
    ++empty_steps;
    for (int l : rec["layers_without_tokens"]) {
      const auto& layer = rec["layers"][l];
      EXPECT_EQ(layer["active_experts"].get<double>(), 0.0);
      EXPECT_EQ(layer["no_expert"].get<double>(), 1.0);
      EXPECT_EQ(layer["load_max_over_mean"].get<double>(), 0.0);
      EXPECT_EQ(layer["l1_reg"].get<double>(), 0.0);
    }
  }
  EXPECT_GT(empty_steps, 0);
  std::printf("remoe lambda_init 1e4: %d steps with a layer without any routed token\n",
              empty_steps);
}

TEST(RouterBadInput, ReMoEBadControllerEndsEveryRank) {
  for (auto [set, key] :
       {std::pair{" --set moe.router.remoe.alpha=1", "moe.router.remoe.alpha"},
        {" --set moe.router.remoe.lambda_init=-1e-8", "moe.router.remoe.lambda_init"},
        {" --set moe.router.k=9", "moe.router.k"}}) {
    Proc r = sh(mpiexec(2) + bin() + small_job(2) + kReMoE + set + " --run-dir " +
                    work_dir("bad_remoe").string(),
                60);
    EXPECT_NE(r.code, 0) << r.output;
    EXPECT_NE(r.code, 137) << "killed by the time limit (a hang): " << r.output;
    EXPECT_NE(r.output.find(key), std::string::npos) << r.output;
  }
}

TEST(RouterBadInput, BadRouterConfigEndsEveryRank) {
  Proc r =
      sh(mpiexec(2) + bin() + small_job(2) + kDirMoE +
             " --set moe.router.dirmoe.prior.m=1.5 --run-dir " + work_dir("bad_router").string(),
         60);
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.code, 137) << "killed by the time limit (a hang): " << r.output;
  EXPECT_NE(r.output.find("moe.router.dirmoe.prior.m"), std::string::npos) << r.output;
}

}  // namespace
