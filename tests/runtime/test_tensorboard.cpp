// TensorBoard writer: CRC-32C against published check values, the tag scheme of a metrics record,
// event file naming, and a write that fails (file size limit) cut back to its whole records. The
// wire format itself is decoded by an independent reader in tensorboard_events_test.py; the
// writer's cost per step is printed (a figure, not a pass/fail bound).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <string>

#include "runtime/config.h"
#include "runtime/core/error.h"
#include "runtime/tensorboard.h"

namespace dirmoe {
namespace {

namespace fs = std::filesystem;

fs::path scratch_root() {
  return fs::temp_directory_path() / ("dirmoe_tb_" + std::to_string(::getpid()));
}

fs::path scratch(const std::string& name) {
  fs::path p = scratch_root() / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

struct RemoveScratch : ::testing::Environment {
  void TearDown() override { fs::remove_all(scratch_root()); }
};
const auto* const kRemoveScratch = ::testing::AddGlobalTestEnvironment(new RemoveScratch);

uint32_t crc_of(const std::string& s) { return tfevents::crc32c(s.data(), s.size()); }

// RFC 3720 (iSCSI) appendix B.4 and the CRC catalogue's check value of CRC-32/ISCSI.
TEST(Crc32c, PublishedCheckValues) {
  EXPECT_EQ(crc_of("123456789"), 0xE3069283u);
  EXPECT_EQ(crc_of(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(crc_of(std::string(32, '\xff')), 0x62A8AB43u);
  std::string up, down;
  for (int i = 0; i < 32; ++i) {
    up.push_back(static_cast<char>(i));
    down.push_back(static_cast<char>(31 - i));
  }
  EXPECT_EQ(crc_of(up), 0x46DD794Eu);
  EXPECT_EQ(crc_of(down), 0x113FDB5Cu);
  EXPECT_EQ(crc_of(""), 0u);
  // Continuing over a split gives the CRC of the whole.
  const std::string a = "brain.Event", b = ":2";
  EXPECT_EQ(tfevents::crc32c(b.data(), b.size(), crc_of(a)), crc_of(a + b));
}

TEST(TensorBoardTags, RecordFieldsMapToTheDocumentedTags) {
  auto rec = nlohmann::json::parse(R"({
    "step": 7, "loss": 2.5, "router_loss": 0.01, "lr": 0.003, "tokens": 512, "skipped": true,
    "eval_loss": 2.75, "note": "text", "worst": [1, 2],
    "layers": [{"layer": 0, "active_experts": 2.0, "load_cv": 0.5, "tokens_per_expert": [1, 2],
                "dead_experts": [], "source_tokens_per_expert": [[1, 2]]},
               {"layer": 1, "active_experts": 1.5, "load_cv": 0.25, "tau": 0.9}]})");
  std::map<std::string, double> got;
  for (const auto& s : tfevents::scalars_of_record(rec)) {
    EXPECT_TRUE(got.emplace(s.tag, s.value).second) << "tag twice: " << s.tag;
  }
  const std::map<std::string, double> want = {{"train/loss", 2.5},
                                              {"train/router_loss", 0.01},
                                              {"train/lr", 0.003},
                                              {"train/tokens", 512},
                                              {"train/skipped", 1},
                                              {"eval/loss", 2.75},
                                              {"layer_00/active_experts", 2},
                                              {"layer_00/load_cv", 0.5},
                                              {"layer_01/active_experts", 1.5},
                                              {"layer_01/load_cv", 0.25},
                                              {"layer_01/tau", 0.9}};
  EXPECT_EQ(got, want);

  // An eval-only record (step 0) has one tag; 100+ layers widen the index for every layer.
  auto eval = tfevents::scalars_of_record(nlohmann::json::parse(R"({"step":0,"eval_loss":9})"));
  ASSERT_EQ(eval.size(), 1u);
  EXPECT_EQ(eval[0].tag, "eval/loss");
  nlohmann::json many = {{"step", 1}, {"layers", nlohmann::json::array()}};
  for (int l = 0; l < 101; ++l) many["layers"].push_back({{"layer", l}, {"cv", l}});
  auto wide = tfevents::scalars_of_record(many);
  ASSERT_EQ(wide.size(), 101u);
  EXPECT_EQ(wide.front().tag, "layer_000/cv");
  EXPECT_EQ(wide.back().tag, "layer_100/cv");
}

TEST(TensorBoardConfig, OutputTensorboardKeyParsesRoundTripsAndRefusesNonBooleans) {
  const std::string yaml = "model:\n  seq_len: 16\ndata:\n  paths: [corpus/a]\n";
  EXPECT_TRUE(parse_config(yaml, {}, "test.yaml").output.tensorboard);
  const Config off = parse_config(yaml, {"output.tensorboard=false"}, "test.yaml");
  EXPECT_FALSE(off.output.tensorboard);
  EXPECT_FALSE(parse_config(to_yaml(off), {}, "resolved").output.tensorboard);
  try {
    parse_config(yaml, {"output.tensorboard=sometimes"}, "test.yaml");
    FAIL() << "output.tensorboard=sometimes accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("output.tensorboard"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("true or false"), std::string::npos) << e.what();
  }
}

TEST(TensorBoardWriter, NamesFilesAsTensorBoardExpectsOnePerStart) {
  const fs::path dir = scratch("names");
  char host[256] = {0};
  ASSERT_EQ(::gethostname(host, sizeof host - 1), 0);
  const std::regex pattern("events\\.out\\.tfevents\\.([0-9]{10})\\." + std::string(host) +
                           "(\\.([0-9]+))?");
  std::set<std::string> names;
  std::map<std::string, int> per_second;
  for (int i = 0; i < 3; ++i) {
    const double t0 = tfevents::unix_time();
    TensorBoardWriter w(dir, 0);
    const std::string name = w.path().filename().string();
    std::smatch m;
    ASSERT_TRUE(std::regex_match(name, m, pattern)) << name;
    const double secs = std::stod(m[1].str());
    EXPECT_LE(secs, tfevents::unix_time());
    EXPECT_GE(secs, std::floor(t0));
    // Within one second the names take suffixes .1, .2, ... in creation order.
    const int n = per_second[m[1].str()]++;
    EXPECT_EQ(m[3].str(), n == 0 ? "" : std::to_string(n)) << name;
    names.insert(name);
  }
  EXPECT_EQ(names.size(), 3u);
}

TEST(TensorBoardWriter, MissingDirectoryIsAnErrorNamingTheFileAndTheKey) {
  const fs::path dir = scratch("missing") / "not" / "there";
  try {
    TensorBoardWriter w(dir, 0);
    FAIL() << "no error for " << dir;
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find((dir / "events.out.tfevents.").string()), std::string::npos) << msg;
    EXPECT_NE(msg.find("No such file or directory"), std::string::npos) << msg;
    EXPECT_NE(msg.find("output.tensorboard=false"), std::string::npos) << msg;
  }
}

// Under a file size limit the record that does not fit is cut off whole: the file ends exactly
// after the last record that fitted, and later records are not attempted.
TEST(TensorBoardWriter, FailedWriteLeavesOnlyWholeRecords) {
  const fs::path dir = scratch("limit");
  std::vector<tfevents::Scalar> values;
  for (int i = 0; i < 40; ++i) values.push_back({"layer_00/value_" + std::to_string(i), i * 0.5});
  const int64_t one =
      static_cast<int64_t>(tfevents::frame_record(tfevents::scalars_event(1.0, 1, values)).size());
  TensorBoardWriter w(dir, 0);
  const int64_t head = w.bytes();
  ASSERT_EQ(static_cast<int64_t>(fs::file_size(w.path())), head);

  struct rlimit old;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
  struct rlimit lim = old;
  lim.rlim_cur = static_cast<rlim_t>(head + 2 * one + one / 2);  // room for 2.5 records
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &lim), 0);
  for (int s = 1; s <= 4; ++s) w.write_scalars(s, values, 1.0 + s);
  ::setrlimit(RLIMIT_FSIZE, &old);
  ::signal(SIGXFSZ, old_handler);

  EXPECT_FALSE(w.ok());
  EXPECT_EQ(w.bytes(), head + 2 * one);
  EXPECT_EQ(static_cast<int64_t>(fs::file_size(w.path())), head + 2 * one);
  w.write_scalars(5, values, 6.0);  // after a failure: nothing more
  EXPECT_EQ(static_cast<int64_t>(fs::file_size(w.path())), head + 2 * one);
}

// A record shaped like the default job's (topk, 4 layers of 8 experts): bytes and microseconds
// per step.
TEST(TensorBoardWriter, CostPerStep) {
  nlohmann::json rec = {{"loss", 7.1},
                        {"router_loss", 0.02},
                        {"lr", 0.003},
                        {"grad_norm", 1.2},
                        {"tokens_per_s", 1700.0},
                        {"step_time_s", 0.6},
                        {"tokens", 1024},
                        {"load_max_over_mean", 2.5},
                        {"active_experts", 2.0},
                        {"worst_layer", 3},
                        {"dead_experts", 0},
                        {"rank_max_over_mean", 1.3},
                        {"alltoall_time_s", 0.08}};
  nlohmann::json layers = nlohmann::json::array();
  for (int l = 0; l < 4; ++l)
    layers.push_back({{"layer", l},
                      {"tokens_per_expert", std::vector<int>(8, 256)},
                      {"load_max_over_mean", 2.5},
                      {"aux_loss", 0.01},
                      {"z_loss", 0.0},
                      {"active_experts", 2.0},
                      {"dropped", 0},
                      {"load_cv", 0.8},
                      {"load_entropy", 0.9},
                      {"rank_tokens", {1024, 1024}},
                      {"rank_max_over_mean", 1.3},
                      {"rank_cv", 0.2},
                      {"dead_experts", nlohmann::json::array()},
                      {"entropy", 0.6},  // the topk router's own figures
                      {"top1_prob", 0.4},
                      {"target_k", 2},
                      {"undispatched_mass", 0.3},
                      {"source_tokens_per_expert", {std::vector<int>(8, 256)}}});
  rec["layers"] = layers;
  const fs::path dir = scratch("cost");
  TensorBoardWriter w(dir, 0);
  const int64_t head = w.bytes();
  const int steps = 2000;
  auto t0 = std::chrono::steady_clock::now();
  for (int s = 1; s <= steps; ++s) {
    rec["step"] = s;
    w.write_record(rec);
  }
  const double us =
      std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  const size_t tags = tfevents::scalars_of_record(rec).size();
  ASSERT_TRUE(w.ok());
  EXPECT_EQ(tags, 13u + 4u * 13u);
  const double per_step = static_cast<double>(w.bytes() - head) / steps;
  EXPECT_EQ(static_cast<int64_t>(fs::file_size(w.path())), w.bytes());
  std::printf(
      "tensorboard writer: %zu scalars per step (4 layers), %.0f bytes per step, %.1f us "
      "per step (mean of %d: flatten, encode, CRC, write)\n",
      tags, per_step, us / steps, steps);
}

}  // namespace
}  // namespace dirmoe
