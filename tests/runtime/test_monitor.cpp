// Load monitor: load statistics against hand-computed values; dead-expert and imbalance episodes
// warn once per episode and name layer, expert and rank; per-layer fields land in the record.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/config.h"
#include "runtime/core/error.h"
#include "runtime/monitor.h"

namespace dirmoe {
namespace {

TEST(LoadStats, HandComputedValues) {
  const int64_t uniform[4] = {5, 5, 5, 5};
  LoadStats u = load_stats(uniform, 4);
  EXPECT_DOUBLE_EQ(u.max_over_mean, 1.0);
  EXPECT_DOUBLE_EQ(u.cv, 0.0);
  EXPECT_NEAR(u.entropy, 1.0, 1e-15);

  const int64_t one_hot[4] = {0, 0, 8, 0};
  LoadStats o = load_stats(one_hot, 4);
  EXPECT_DOUBLE_EQ(o.max_over_mean, 4.0);
  EXPECT_DOUBLE_EQ(o.cv, std::sqrt(3.0));  // values 0,0,4*mean,0: std = mean*sqrt(3)
  EXPECT_DOUBLE_EQ(o.entropy, 0.0);
  EXPECT_EQ(o.argmax, 2);

  // {1, 3}: mean 2, max/mean 1.5, std 1 -> cv 0.5, entropy (-(1/4)ln(1/4) - (3/4)ln(3/4)) / ln 2.
  const int64_t two[2] = {1, 3};
  LoadStats t = load_stats(two, 2);
  EXPECT_DOUBLE_EQ(t.max_over_mean, 1.5);
  EXPECT_DOUBLE_EQ(t.cv, 0.5);
  EXPECT_NEAR(t.entropy, 0.8112781244591328, 1e-15);
  EXPECT_EQ(t.argmax, 1);

  const int64_t none[3] = {0, 0, 0};
  EXPECT_EQ(load_stats(none, 3).max_over_mean, 0.0);
}

nlohmann::json record(int layers) {
  nlohmann::json rec;
  rec["layers"] = nlohmann::json::array();
  for (int l = 0; l < layers; ++l) rec["layers"].push_back({{"layer", l}});
  return rec;
}

int count(const std::string& text, const std::string& needle) {
  int n = 0;
  for (size_t p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1)) ++n;
  return n;
}

TEST(LoadMonitor, EpisodesWarnOnceAndNameLayerExpertRank) {
  MonitorConfig cfg;
  cfg.max_over_mean = 2.0;
  cfg.patience = 3;
  cfg.dead_window = 4;
  // 4 experts on 2 EP ranks, 4 ranks in all (experts 2, 3 on rank 1 and its replica rank 3).
  LoadMonitor mon(cfg, Placement::contiguous(4, 2), /*layers=*/1, /*world=*/4, /*rank=*/0,
                  /*sources=*/2);
  // Steps 1-6: expert 3 starves, expert 2 holds 10 of 16 (max/mean 2.5); steps 7-8 balanced.
  const int64_t skew[4] = {3, 3, 10, 0}, flat[4] = {4, 4, 4, 4};
  testing::internal::CaptureStderr();
  testing::internal::CaptureStdout();
  nlohmann::json last;
  for (int64_t step = 1; step <= 8; ++step) {
    mon.begin_step();
    if (step <= 6) mon.add_received(0, 10);  // this rank's rows; the others stay 0 (no reduce)
    int64_t* s1 = mon.source_counts(0, 1);
    s1[2] += 7;
    nlohmann::json rec = record(1);
    mon.finish_step(step, step <= 6 ? skew : flat, rec);
    if (step == 6) last = rec;
  }
  const std::string err = testing::internal::GetCapturedStderr();
  const std::string out = testing::internal::GetCapturedStdout();
  EXPECT_EQ(count(err, "load above monitor.max_over_mean"), 1) << err;
  EXPECT_NE(
      err.find("step 3: layer 0 load above monitor.max_over_mean = 2.00 for 3 steps: expert 2 "
               "on rank 1 (replicas on rank 3) has 2.50x the mean expert load, rank 0 "
               "receives 4.00x the mean rank load"),
      std::string::npos)
      << err;
  EXPECT_EQ(count(err, "received no tokens"), 1) << err;
  EXPECT_NE(err.find("step 4: layer 0 expert 3 on rank 1 (replicas on rank 3) received no tokens "
                     "for 4 steps"),
            std::string::npos)
      << err;
  EXPECT_NE(out.find("step 7: layer 0 load back under"), std::string::npos) << out;
  EXPECT_NE(out.find("step 7: layer 0 expert 3 receives tokens again after 6 idle steps"),
            std::string::npos)
      << out;

  const auto& l0 = last["layers"][0];
  EXPECT_EQ(l0["dead_experts"], nlohmann::json::array({3}));
  EXPECT_EQ(last["dead_experts"].get<int64_t>(), 1);
  EXPECT_EQ(l0["rank_tokens"], nlohmann::json::array({10, 0, 0, 0}));
  EXPECT_DOUBLE_EQ(l0["rank_max_over_mean"].get<double>(), 4.0);
  // {3,3,10,0}: mean 4, variance (1+1+36+16)/4 = 13.5.
  EXPECT_DOUBLE_EQ(l0["load_cv"].get<double>(), std::sqrt(13.5) / 4);
  EXPECT_EQ(l0["source_tokens_per_expert"], nlohmann::json::parse("[[0,0,0,0],[0,0,7,0]]"));
  EXPECT_EQ(last["worst_layer"].get<int>(), 0);
}

// A layer where no token selected any expert (remoe can close every gate): reported once per
// episode by step and layer, listed in the record, loads 0 (never 0/0), and its end noted.
TEST(LoadMonitor, LayerWithoutAnyRoutedTokenIsReportedByStepAndLayer) {
  MonitorConfig cfg;
  LoadMonitor mon(cfg, Placement::contiguous(4, 2), /*layers=*/2, /*world=*/2, /*rank=*/0,
                  /*sources=*/1);
  // Layer 0 routes normally; layer 1 routes nothing at steps 2-4.
  const int64_t busy[8] = {2, 2, 2, 2, 1, 3, 2, 2}, empty[8] = {2, 2, 2, 2, 0, 0, 0, 0};
  testing::internal::CaptureStderr();
  testing::internal::CaptureStdout();
  nlohmann::json at3;
  for (int64_t step = 1; step <= 5; ++step) {
    mon.begin_step();
    nlohmann::json rec = record(2);
    mon.finish_step(step, step >= 2 && step <= 4 ? empty : busy, rec);
    if (step == 3) at3 = rec;
    if (step == 5) {
      EXPECT_FALSE(rec.contains("layers_without_tokens"));
    }
  }
  const std::string err = testing::internal::GetCapturedStderr();
  const std::string out = testing::internal::GetCapturedStdout();
  EXPECT_EQ(count(err, "no token of the global batch selected any expert"), 1) << err;
  EXPECT_NE(err.find("step 2: layer 1: no token of the global batch selected any expert"),
            std::string::npos)
      << err;
  EXPECT_NE(out.find("step 5: layer 1 routes tokens again after 3 step(s) without any"),
            std::string::npos)
      << out;
  EXPECT_EQ(at3["layers_without_tokens"], nlohmann::json::array({1}));
  const auto& l1 = at3["layers"][1];
  EXPECT_EQ(l1["load_cv"].get<double>(), 0.0);
  EXPECT_EQ(l1["load_entropy"].get<double>(), 0.0);
  EXPECT_EQ(l1["rank_max_over_mean"].get<double>(), 0.0);
}

const char* kYaml = R"(model:
  hidden: 64
  vocab_size: 1000
  vocab_multiple: 128
  seq_len: 16
data:
  paths: [corpus/a]
monitor:
  max_over_mean: 3
  patience: 5
profile:
  every: 0
  steps: [4, 9]
  trace: false
)";

std::string error_of(const std::vector<std::string>& sets) {
  try {
    parse_config(kYaml, sets, "test.yaml");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(ObserveConfig, KeysParseRoundTripAndBadValuesNameTheKey) {
  Config c = parse_config(kYaml, {}, "test.yaml");
  EXPECT_EQ(c.monitor.max_over_mean, 3.0);
  EXPECT_EQ(c.monitor.patience, 5);
  EXPECT_EQ(c.monitor.dead_window, 50);
  EXPECT_EQ(c.profile.every, 0);
  EXPECT_EQ(c.profile.first, 4);
  EXPECT_EQ(c.profile.last, 9);
  EXPECT_FALSE(c.profile.trace);
  EXPECT_FALSE(c.profile.profiles(3));
  EXPECT_TRUE(c.profile.profiles(4));
  EXPECT_TRUE(c.profile.profiles(9));
  EXPECT_FALSE(c.profile.profiles(10));
  Config back = parse_config(to_yaml(c), {}, "resolved");
  EXPECT_EQ(back.profile.first, 4);
  EXPECT_EQ(back.profile.last, 9);
  EXPECT_EQ(back.monitor.patience, 5);
  EXPECT_FALSE(back.profile.trace);
  Config every = parse_config(kYaml, {"profile.steps=null", "profile.every=10"}, "test.yaml");
  EXPECT_TRUE(every.profile.profiles(20));
  EXPECT_FALSE(every.profile.profiles(15));

  EXPECT_NE(error_of({"profile.steps=[9, 4]"}).find("profile.steps"), std::string::npos);
  EXPECT_NE(error_of({"profile.steps=7"}).find("expected [first, last]"), std::string::npos);
  EXPECT_NE(error_of({"profile.every=-1"}).find("profile.every"), std::string::npos);
  EXPECT_NE(error_of({"monitor.max_over_mean=0.5"}).find("monitor.max_over_mean"),
            std::string::npos);
  EXPECT_NE(error_of({"monitor.patience=0"}).find("monitor.patience"), std::string::npos);
  EXPECT_NE(error_of({"monitor.dead_window=0"}).find("monitor.dead_window"), std::string::npos);
  EXPECT_NE(error_of({"monitor.nope=1"}).find("no such configuration key"), std::string::npos);
}

}  // namespace
}  // namespace dirmoe
