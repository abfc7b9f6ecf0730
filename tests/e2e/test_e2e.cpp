// End-to-end tests of the `dirmoe` executable under mpiexec: EP=N on N ranks equals one rank with
// N-fold gradient accumulation step for step; the default model learns on the bundled corpus; bad
// input ends every rank with a clear message and a non-zero exit, never a hang.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "e2e_util.h"

namespace {

using namespace dirmoe::e2e;

fs::path work_dir(const std::string& name) { return dirmoe::e2e::work_dir("e2e_runs", name); }



// np ranks with EP = ep (np / ep expert replicas) against one rank accumulating np micro-batches.
void expect_same_losses(int np, const std::string& extra_ep, int ep = 0) {
  if (ep == 0) ep = np;
  require_corpus();
  fs::path a = work_dir("ep" + std::to_string(np)), b = work_dir("accum" + std::to_string(np));
  Proc ra = sh(mpiexec(np) + bin() + small_job(20) + " --set parallel.ep=" + std::to_string(ep) +
              extra_ep + " --run-dir " + a.string());
  ASSERT_EQ(ra.code, 0) << ra.output;
  Proc rb = sh(mpiexec(1) + bin() + small_job(20) + " --set parallel.ep=1 --set train.grad_accum=" +
              std::to_string(np) + " --run-dir " + b.string());
  ASSERT_EQ(rb.code, 0) << rb.output;
  auto la = step_losses(a), lb = step_losses(b);
  ASSERT_EQ(la.size(), 20u);
  ASSERT_EQ(lb.size(), 20u);
  double worst = 0;
  for (size_t i = 0; i < la.size(); ++i) {
    double rel = std::abs(la[i] - lb[i]) / std::abs(lb[i]);
    worst = std::max(worst, rel);
    EXPECT_LE(rel, 1e-5) << "step " << i + 1 << ": ep=" << np << " " << la[i] << " vs accum "
                         << lb[i];
  }
  std::printf("EP=%d on %d ranks vs 1 rank x %d accumulation: 20 steps, loss %.6f -> %.6f, worst "
              "relative difference %.3g\n", ep, np, np, lb.front(), lb.back(), worst);
  EXPECT_LT(lb.back(), lb.front());  // it trains
}

TEST(Equivalence, Ep2OnTwoRanksEqualsOneRankWithAccumulation) { expect_same_losses(2, ""); }
TEST(Equivalence, Ep4OnFourRanksEqualsOneRankWithAccumulation) { expect_same_losses(4, ""); }
TEST(Equivalence, UnevenPlacementOnFourRanksEqualsOneRank) {
  expect_same_losses(4, " --set \"experts.placement=[[0,1,2],[3],[4,5],[6,7]]\"");
}

TEST(Equivalence, Ep2WithTwoExpertReplicasOnFourRanksEqualsOneRank) {
  expect_same_losses(4, "", 2);
}

TEST(Learning, TinyModelEvalLossFallsOnRealText) {
  require_corpus();
  fs::path dir = work_dir("learn");
  Proc r = sh(mpiexec(2) + bin() + " train --config " + src() + "/configs/tiny.yaml --set data.paths=[" +
             corpus() + "] --set train.steps=60 --set model.seq_len=64 --set train.eval_interval=30 " +
             "--run-dir " + dir.string());
  ASSERT_EQ(r.code, 0) << r.output;
  double first = NAN, last = NAN;
  for (const auto& rec : records(dir))
    if (rec.contains("eval_loss")) (std::isnan(first) ? first : last) = rec["eval_loss"].get<double>();
  std::printf("eval loss %.4f -> %.4f after 60 steps\n", first, last);
  EXPECT_NEAR(first, std::log(50257.0), 0.5);  // near-uniform prediction at init
  EXPECT_LT(last, first - 2.5);
  EXPECT_TRUE(fs::exists(dir / "config.resolved.yaml"));
  EXPECT_NE(r.output.find("tok/s"), std::string::npos);
  EXPECT_NE(r.output.find("load max/mean"), std::string::npos);
  EXPECT_NE(r.output.find("ETA"), std::string::npos);
  // metrics.jsonl: one object per step with the per-layer MoE figures.
  auto recs = records(dir);
  ASSERT_EQ(recs.size(), 61u);  // initial evaluation + 60 steps
  const auto& s = recs.back();
  for (const char* k : {"step", "loss", "lr", "grad_norm", "tokens_per_s", "layers"})
    EXPECT_TRUE(s.contains(k)) << k;
  ASSERT_EQ(s["layers"].size(), 4u);
  int64_t total = 0;
  for (auto c : s["layers"][0]["tokens_per_expert"]) total += c.get<int64_t>();
  EXPECT_EQ(total, 2 * 4 * 64 * 2);  // ranks * micro_batch * seq * k
  EXPECT_GE(s["layers"][0]["load_max_over_mean"].get<double>(), 1.0);
}

void expect_clean_failure(const Proc& r, const std::string& needle) {
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.code, 137) << "killed by the time limit (a hang): " << r.output;
  EXPECT_NE(r.output.find(needle), std::string::npos) << "'" << needle << "' not in:\n" << r.output;
}

TEST(BadInput, UnknownKeyInFileNamesKeyAndLine) {
  fs::path dir = work_dir("bad_key");
  std::ofstream(dir / "bad.yaml") << "model:\n  hidden: 64\n  hiden: 3\n";
  expect_clean_failure(sh(mpiexec(2) + bin() + " train --config " + (dir / "bad.yaml").string(), 60),
                       "bad.yaml:3: unknown key 'model.hiden'");
}

TEST(BadInput, SetOnMissingKey) {
  expect_clean_failure(sh(bin() + " config check --config " + src() + "/configs/tiny.yaml --set model.nope=1", 60),
                       "--set model.nope: no such configuration key");
}

TEST(BadInput, EpNotDividingWorldEndsAllRanks) {
  expect_clean_failure(sh(mpiexec(3) + bin() + small_job(2) + " --run-dir " + work_dir("ep3").string(), 60),
                       "parallel.ep = 2 does not divide the number of ranks (3)");
}

TEST(BadInput, MissingDataFileNamesThePath) {
  expect_clean_failure(sh(mpiexec(2) + bin() + small_job(2) + " --set data.paths=[/nonexistent/corpus] --run-dir " +
                          work_dir("nodata").string(), 60),
                       "/nonexistent/corpus");
}

TEST(ConfigCheck, PrintsResolvedConfigCountsAndMemory) {
  Proc r = sh(bin() + " config check --config " + src() + "/configs/tiny.yaml", 60);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("resolved configuration"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("parameters: total"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("memory per rank"), std::string::npos) << r.output;
}

TEST(ConfigCheck, WarnsAboutDataPathsThatDoNotExist) {
  require_corpus();
  Proc r = sh(bin() + " config check --config " + src() + "/configs/tiny.yaml --set \"data.paths=[" +
                  corpus() + ", /nonexistent/corpus]\"",
              60);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("warning: data.paths: /nonexistent/corpus does not exist"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find(corpus() + " does not exist"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("parameters: total"), std::string::npos) << r.output;
}

}  // namespace
