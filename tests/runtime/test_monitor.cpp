// Load monitor: load statistics against hand-computed values; dead-expert and imbalance episodes
// warn once per episode and name layer, expert and rank; per-layer fields land in the record.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

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
  EXPECT_NE(err.find("step 3: layer 0 load above monitor.max_over_mean = 2.00 for 3 steps: expert 2 "
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
  EXPECT_EQ(l0["source_tokens_per_expert"],
            nlohmann::json::parse("[[0,0,0,0],[0,0,7,0]]"));
  EXPECT_EQ(last["worst_layer"].get<int>(), 0);
}

}  // namespace
}  // namespace dirmoe
