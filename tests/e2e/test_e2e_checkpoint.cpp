// End-to-end checkpoint and fault tests of the `dirmoe` executable under mpiexec: exact resume
// (bit for bit) on EP=1 and EP=2; re-sharding EP=2 -> EP=4 and -> EP=1; SIGUSR1 stops with a
// checkpoint; a rank killed by SIGKILL or hung ends the job in time naming the rank, and resume
// goes on; a full or unwritable checkpoint directory leaves the previous checkpoint untouched; a
// corrupted newest checkpoint makes --resume auto fall back; non-finite steps are skipped, located
// and, too many in a row, end the run.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "e2e_util.h"

namespace {

using namespace dirmoe::e2e;

fs::path work_dir(const std::string& name) { return dirmoe::e2e::work_dir("e2e_ckpt_runs", name); }

using Clock = std::chrono::steady_clock;

// The tiny preset, shrunk (2 layers of width 64, seq 32, 2 sequences per micro-batch) so that a
// run and its checkpoints (~100 MB) take little time.
std::string job(int steps, const std::string& extra = "") {
  return " train --config " + src() + "/configs/tiny.yaml --set data.paths=[" + corpus() +
         "] --set model.hidden=64 --set model.layers=2 --set model.ffn_hidden=128" +
         " --set model.seq_len=32 --set train.micro_batch=2 --set train.steps=" +
         std::to_string(steps) + " --set train.eval_interval=0 --set train.eval_batches=1" +
         " --set train.log_interval=1 --set train.warmup=2" + extra;
}

void exact_resume(int np, const std::string& router = "", const std::string& tag = "") {
  require_corpus();
  const std::string ep = " --set parallel.ep=" + std::to_string(np) + router;
  fs::path full = work_dir(tag + "full_ep" + std::to_string(np)),
           part = work_dir(tag + "part_ep" + std::to_string(np));
  Proc a = sh(mpiexec(np) + bin() + job(6, ep) + " --run-dir " + full.string());
  ASSERT_EQ(a.code, 0) << a.output;
  Proc b = sh(mpiexec(np) + bin() + job(6, ep + " --set train.stop_at=3") + " --run-dir " +
              part.string());
  ASSERT_EQ(b.code, 0) << b.output;
  ASSERT_EQ(step_loss_map(part).size(), 3u);
  EXPECT_TRUE(fs::exists(part / "checkpoints" / "step_3" / "manifest.json"));
  Proc c = sh(mpiexec(np) + bin() + job(6, ep) + " --resume auto --run-dir " + part.string());
  ASSERT_EQ(c.code, 0) << c.output;
  EXPECT_TRUE(has(c, "resumed from " + (part / "checkpoints" / "step_3").string() + " at step 3"))
      << c.output;
  auto la = step_loss_map(full), lb = step_loss_map(part);
  ASSERT_EQ(la.size(), 6u);
  ASSERT_EQ(lb.size(), 6u);
  int equal = 0;
  for (int s = 1; s <= 6; ++s) {
    EXPECT_EQ(la[s], lb[s]) << "step " << s;  // bit for bit
    equal += la[s] == lb[s];
  }
  std::printf(
      "%sEP=%d on %d rank(s): stopped at step 3 and resumed: %d/6 per-step losses bit-identical "
      "to the uninterrupted run (step 6: %.17g vs %.17g)\n",
      tag.c_str(), np, np, equal, lb[6], la[6]);
  if (router.find("remoe") == std::string::npos) return;
  // The controller's lambda comes back from the checkpoint: the same value at every step.
  auto ra = records(full), rb = records(part);
  std::map<int, double> lam_a, lam_b;
  for (const auto& r : ra)
    if (r.contains("remoe_lambda")) lam_a[r["step"].get<int>()] = r["remoe_lambda"].get<double>();
  for (const auto& r : rb)
    if (r.contains("remoe_lambda")) lam_b[r["step"].get<int>()] = r["remoe_lambda"].get<double>();
  ASSERT_EQ(lam_a.size(), 6u);
  EXPECT_EQ(lam_a, lam_b);
  EXPECT_NE(lam_a[4], 0.5) << "lambda must have moved away from lambda_init by step 4";
  std::printf("%slambda at steps 1..6:", tag.c_str());
  for (const auto& [s, v] : lam_b) std::printf(" %.6g", v);
  std::printf("\n");
}

// lambda_init and alpha chosen so that the L1 term moves the weights and the controller's lambda
// changes every step: a resume that lost lambda would not reproduce the losses.
const char* kReMoE =
    " --set moe.router.type=remoe --set moe.router.k=1 --set moe.router.remoe.lambda_init=0.5"
    " --set moe.router.remoe.alpha=2";

TEST(Resume, ExactOnOneRank) { exact_resume(1); }
TEST(Resume, ExactOnTwoRanksWithEp2) { exact_resume(2); }
TEST(Resume, ReMoEExactOnOneRank) { exact_resume(1, kReMoE, "remoe_"); }
TEST(Resume, ReMoEExactOnTwoRanksWithEp2) { exact_resume(2, kReMoE, "remoe_"); }

// A ReMoE checkpoint without the controller's lambda is refused by name (auto falls back).
TEST(Resume, ReMoECheckpointWithoutLambdaIsRefused) {
  require_corpus();
  fs::path dir = work_dir("remoe_nolambda");
  const std::string remoe = std::string(kReMoE) + " --set parallel.ep=1";
  Proc a = sh(mpiexec(1) + bin() + job(2, remoe) + " --run-dir " + dir.string());
  ASSERT_EQ(a.code, 0) << a.output;
  const fs::path state = dir / "checkpoints" / "step_2" / "trainer_state.json";
  std::ifstream in(state);
  nlohmann::json st = nlohmann::json::parse(in);
  in.close();
  ASSERT_TRUE(st.contains("remoe_lambda"));
  st.erase("remoe_lambda");
  std::ofstream(state) << st.dump(2);
  Proc b = sh(mpiexec(1) + bin() + job(4, remoe) + " --resume " +
              (dir / "checkpoints" / "step_2").string() + " --run-dir " + dir.string());
  EXPECT_NE(b.code, 0) << b.output;
  EXPECT_TRUE(has(b, "remoe_lambda")) << b.output;
  EXPECT_TRUE(has(b, "trainer_state.json")) << b.output;
}

TEST(Resume, ReshardingEp2ToEp4AndEp1GivesTheSameNextStepLoss) {
  require_corpus();
  // The global batch stays 8 sequences: 2 ranks x 2 micro-batches, 4 x 1, 1 x 4.
  fs::path a = work_dir("rs_ep2"), b = work_dir("rs_ep4"), c = work_dir("rs_ep1");
  Proc r = sh(mpiexec(2) + bin() + job(4, " --set train.grad_accum=2 --set train.stop_at=3") +
              " --run-dir " + a.string());
  ASSERT_EQ(r.code, 0) << r.output;
  const std::string ck = (a / "checkpoints" / "step_3").string();
  r = sh(mpiexec(2) + bin() + job(4, " --set train.grad_accum=2 --set checkpoint.at_end=false") +
         " --resume auto --run-dir " + a.string());
  ASSERT_EQ(r.code, 0) << r.output;
  r = sh(mpiexec(4) + bin() + job(4, " --set parallel.ep=4 --set checkpoint.at_end=false") +
         " --resume " + ck + " --run-dir " + b.string());
  ASSERT_EQ(r.code, 0) << r.output;
  r = sh(mpiexec(1) + bin() +
         job(4, " --set parallel.ep=1 --set train.grad_accum=4 --set checkpoint.at_end=false") +
         " --resume " + ck + " --run-dir " + c.string());
  ASSERT_EQ(r.code, 0) << r.output;
  const double ref = step_loss_map(a).at(4);
  const double l4 = step_loss_map(b).at(4), l1 = step_loss_map(c).at(4);
  EXPECT_LE(std::abs(l4 - ref) / ref, 1e-6) << l4 << " vs " << ref;
  EXPECT_LE(std::abs(l1 - ref) / ref, 1e-6) << l1 << " vs " << ref;
  std::printf(
      "step 4 after the EP=2 checkpoint of step 3: EP=2 %.10f | EP=4 %.10f (rel %.2e) | EP=1 "
      "%.10f (rel %.2e)\n",
      ref, l4, std::abs(l4 - ref) / ref, l1, std::abs(l1 - ref) / ref);
}

TEST(Signals, Sigusr1StopsAfterTheStepWithACheckpoint) {
  require_corpus();
  fs::path dir = work_dir("signal");
  const std::string log = (dir / "out.log").string();
  std::string cmd = "timeout -s KILL 120 " + mpiexec(2) + bin() + job(500) + " --run-dir " +
                    dir.string() + " > " + log + " 2>&1 & echo $!";
  FILE* p = ::popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  int pid = 0;
  ASSERT_EQ(std::fscanf(p, "%d", &pid), 1);
  ::pclose(p);
  for (int i = 0; i < 600 && records(dir).size() < 3; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ASSERT_GE(records(dir).size(), 3u) << "no training progress";
  // `timeout` runs mpirun as its child: signal mpirun, which forwards SIGUSR1 to the ranks.
  std::system(("pkill -USR1 -P " + std::to_string(pid)).c_str());
  for (int i = 0; i < 600 && ::kill(pid, 0) == 0; ++i) {
    ::waitpid(pid, nullptr, WNOHANG);
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::ifstream in(log);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string out = ss.str();
  EXPECT_NE(out.find("signal 10 received: stopping after step"), std::string::npos) << out;
  auto losses = step_loss_map(dir);
  ASSERT_FALSE(losses.empty());
  const int last = losses.rbegin()->first;
  EXPECT_LT(last, 500);
  EXPECT_TRUE(fs::exists(dir / "checkpoints" / ("step_" + std::to_string(last)) / "manifest.json"))
      << out;
}

TEST(Faults, KilledRankEndsTheJobNamingItAndResumeGoesOn) {
  require_corpus();
  fs::path dir = work_dir("sigkill");
  const std::string base = " --set checkpoint.interval=2 --set train.watchdog_s=30";
  Proc r = sh("env DIRMOE_FAULT=kill:1:5 " + mpiexec(2) + bin() + job(8, base) + " --run-dir " +
                  dir.string(),
              90);
  // mpirun itself exits 137 (its rank's signal); the test's limit is 90 s.
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_LT(r.seconds, 60.0) << "hit the time limit: " << r.output;
  EXPECT_TRUE(has(r, "process rank 1")) << r.output;  // mpirun names the lost rank
  EXPECT_TRUE(has(r, "exited on signal 9")) << r.output;
  std::printf("rank 1 killed in step 5: job ended in %.1f s with exit code %d\n", r.seconds,
              r.code);
  const fs::path ck = dir / "checkpoints";
  EXPECT_TRUE(fs::exists(ck / "step_4" / "manifest.json"));
  EXPECT_FALSE(fs::exists(ck / "step_6"));
  Proc c = sh(mpiexec(2) + bin() + job(8, base) + " --resume auto --run-dir " + dir.string());
  ASSERT_EQ(c.code, 0) << c.output;
  EXPECT_TRUE(has(c, "resumed from " + (ck / "step_4").string())) << c.output;
  auto losses = step_loss_map(dir);
  EXPECT_EQ(losses.size(), 8u);
  EXPECT_TRUE(fs::exists(ck / "step_8" / "manifest.json"));
}

TEST(Faults, HungRankEndsTheJobWithinTheWatchdogTimeout) {
  require_corpus();
  fs::path dir = work_dir("hang");
  Proc r = sh("env DIRMOE_FAULT=hang:1:3 " + mpiexec(2) + bin() +
                  job(6, " --set train.watchdog_s=4") + " --run-dir " + dir.string(),
              90);
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.code, 137) << "hit the test's time limit: " << r.output;
  EXPECT_TRUE(has(r, "watchdog: step 3 (training step) made no progress")) << r.output;
  EXPECT_LT(r.seconds, 40.0);
  std::printf("rank 1 hung in step 3, train.watchdog_s = 4: job ended in %.1f s\n", r.seconds);
}

std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::ifstream in(e.path(), std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    out[e.path().filename().string()] = ss.str();
  }
  return out;
}

TEST(Faults, FullCheckpointDirectoryLeavesThePreviousOneUntouched) {
  require_corpus();
  fs::path dir = work_dir("full");
  Proc r = sh(mpiexec(2) + bin() + job(4, " --set train.stop_at=2") + " --run-dir " + dir.string());
  ASSERT_EQ(r.code, 0) << r.output;
  const fs::path prev = dir / "checkpoints" / "step_2";
  auto before = snapshot(prev);
  // An 8 MB file size limit (RLIMIT_FSIZE): the 80 MB replicated file cannot be written, as on a
  // full disk (the write fails with EFBIG instead of ENOSPC; the same path handles both).
  r = sh("prlimit --fsize=8000000 " + mpiexec(2) + bin() + job(4) + " --resume auto --run-dir " +
         dir.string());
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.code, 137) << r.output;
  EXPECT_TRUE(has(r, "checkpoint of step 4 could not be written")) << r.output;
  EXPECT_TRUE(has(r, "File too large")) << r.output;
  EXPECT_TRUE(has(r, "the previous checkpoint (" + prev.string() + ") is untouched")) << r.output;
  EXPECT_EQ(snapshot(prev), before);
  EXPECT_FALSE(fs::exists(dir / "checkpoints" / "step_4.tmp"));
  EXPECT_FALSE(fs::exists(dir / "checkpoints" / "step_4"));
  std::ifstream latest(dir / "checkpoints" / "latest");
  std::string target;
  std::getline(latest, target);
  EXPECT_EQ(target, "step_2");
}

TEST(Faults, UnwritableCheckpointDirectoryLeavesThePreviousOneUntouched) {
  require_corpus();
  fs::path dir = work_dir("unwritable");
  Proc r = sh(mpiexec(2) + bin() + job(4, " --set train.stop_at=2") + " --run-dir " + dir.string());
  ASSERT_EQ(r.code, 0) << r.output;
  const fs::path ck = dir / "checkpoints", prev = ck / "step_2";
  auto before = snapshot(prev);
  // Root writes anywhere, so as root the resumed run drops to the `nobody` user: it may write its
  // run directory but not the checkpoint directory.
  std::string as_user;
  if (::geteuid() == 0) {
    as_user = "setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp ";
    fs::permissions(dir, fs::perms::all);
    for (const auto& f : fs::directory_iterator(dir))
      if (f.is_regular_file()) fs::permissions(f.path(), fs::perms::all);
  }
  fs::permissions(ck, fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                          fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec);
  r = sh(as_user + mpiexec(2) + bin() + job(4) + " --resume auto --run-dir " + dir.string());
  fs::permissions(ck, fs::perms::owner_all, fs::perm_options::add);
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.code, 137) << r.output;
  EXPECT_TRUE(has(r, "resumed from " + prev.string())) << r.output;
  EXPECT_TRUE(has(r, "checkpoint of step 4 could not be written")) << r.output;
  EXPECT_TRUE(has(r, "Permission denied")) << r.output;
  EXPECT_TRUE(has(r, "the previous checkpoint (" + prev.string() + ") is untouched")) << r.output;
  EXPECT_EQ(snapshot(prev), before);
}

TEST(Faults, CorruptedNewestCheckpointMakesAutoFallBack) {
  require_corpus();
  fs::path dir = work_dir("corrupt");
  Proc r = sh(mpiexec(2) + bin() + job(4, " --set checkpoint.interval=2") + " --run-dir " +
              dir.string());
  ASSERT_EQ(r.code, 0) << r.output;
  const fs::path bad = dir / "checkpoints" / "step_4" / "experts-ep1.safetensors";
  fs::resize_file(bad, fs::file_size(bad) / 2);
  r = sh(mpiexec(2) + bin() + job(6, " --set checkpoint.interval=2") + " --resume auto --run-dir " +
         dir.string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(has(r, "checkpoint refused")) << r.output;
  EXPECT_TRUE(has(r, bad.string() + "': tensor '")) << r.output;
  EXPECT_TRUE(has(r, "resumed from " + (dir / "checkpoints" / "step_2").string())) << r.output;
  EXPECT_EQ(step_loss_map(dir).size(), 6u);
  // An explicit path to a damaged checkpoint is an error, not a fallback.
  fs::path bad6 = dir / "checkpoints" / "step_6" / "replicated.safetensors";
  fs::resize_file(bad6, 1000);
  r = sh(mpiexec(2) + bin() + job(8) + " --resume " + (dir / "checkpoints" / "step_6").string() +
         " --run-dir " + dir.string());
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r, bad6.string())) << r.output;
}

TEST(Faults, NonFiniteStepIsSkippedLocatedAndLimited) {
  require_corpus();
  fs::path dir = work_dir("nonfinite");
  Proc r = sh("env DIRMOE_FAULT=nan:3:3:layers.1.attn.wq " + mpiexec(2) + bin() +
              job(5, " --set train.max_nonfinite_steps=2") + " --run-dir " + dir.string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(has(r, "step 3: non-finite gradient")) << r.output;
  EXPECT_TRUE(has(r, "first non-finite gradient of layers.1.attn.wq (layer 1)")) << r.output;
  EXPECT_TRUE(has(r, "step skipped (1 in a row")) << r.output;
  auto recs = records(dir);
  int skipped = 0;
  for (const auto& rec : recs) skipped += rec.value("skipped", false) ? rec["step"].get<int>() : 0;
  EXPECT_EQ(skipped, 3);
  // An expert tensor on rank 1 only, every step from 2: the run ends after 2 in a row.
  r = sh("env DIRMOE_FAULT=nan:2:9:layers.1.moe.experts.6.w2 " + mpiexec(2) + bin() +
         job(8, " --set train.max_nonfinite_steps=2") + " --run-dir " + dir.string());
  EXPECT_NE(r.code, 0) << r.output;
  EXPECT_NE(r.code, 137) << r.output;
  EXPECT_TRUE(has(r, "gradient of layers.1.moe.experts.6.w2 (layer 1)")) << r.output;
  EXPECT_TRUE(has(r, "step 3: 2 non-finite steps in a row (train.max_nonfinite_steps = 2)"))
      << r.output;
}

TEST(Export, HfCommandWritesMixtralAndRefusesUnrenormalisedTopk) {
  require_corpus();
  fs::path dir = work_dir("export");
  // The default job renormalises its top-2 weights, as Mixtral does.
  Proc r = sh(mpiexec(2) + bin() + job(2) + " --run-dir " + (dir / "run").string());
  ASSERT_EQ(r.code, 0) << r.output;
  r = sh(bin() + " export hf --checkpoint " + (dir / "run" / "checkpoints").string() + " --out " +
             (dir / "hf").string() + " --max-shard-size 0.005",
         60);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(has(r, "exported step 2: ")) << r.output;
  std::ifstream cf(dir / "hf" / "config.json");
  auto c = nlohmann::json::parse(cf);
  EXPECT_EQ(c["model_type"], "mixtral");
  EXPECT_EQ(c["vocab_size"], 51200);
  EXPECT_EQ(c["dirmoe_vocab_size"], 50257);
  EXPECT_EQ(c["num_hidden_layers"], 2);
  EXPECT_EQ(c["hidden_size"], 64);
  EXPECT_EQ(c["rope_parameters"]["rope_theta"], 10000.0);
  auto shard_files = [&] {
    std::ifstream ix(dir / "hf" / "model.safetensors.index.json");
    auto index = nlohmann::json::parse(ix);
    std::set<std::string> shards;
    for (const auto& [k, v] : index["weight_map"].items()) shards.insert(v.get<std::string>());
    return shards;
  };
  const auto many = shard_files();
  EXPECT_GT(many.size(), 2u);
  for (const auto& f : many) EXPECT_TRUE(fs::exists(dir / "hf" / f)) << f;

  // Again into the same folder, in fewer shards: the earlier export is replaced, nothing stale.
  r = sh(bin() + " export hf --checkpoint " + (dir / "run" / "checkpoints").string() + " --out " +
             (dir / "hf").string() + " --max-shard-size 0.02",
         60);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(has(r, "(replacing the earlier export there)")) << r.output;
  const auto fewer = shard_files();
  EXPECT_LT(fewer.size(), many.size());
  std::set<std::string> on_disk;
  for (const auto& e : fs::directory_iterator(dir / "hf")) on_disk.insert(e.path().filename());
  std::set<std::string> expected = fewer;
  expected.insert({"config.json", "model.safetensors.index.json"});
  EXPECT_EQ(on_disk, expected);

  // An unwritable location is refused before anything is written: as root, the export runs as
  // `nobody` into a read-only parent that already holds an export, which stays as it was.
  if (::geteuid() == 0) {
    const fs::path ro = dir / "readonly";
    fs::create_directories(ro);
    fs::copy(dir / "hf", ro / "hf");
    for (const auto& p : {dir, dir / "run", dir / "run" / "checkpoints"})
      fs::permissions(p, fs::perms::others_read | fs::perms::others_exec, fs::perm_options::add);
    fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                            fs::perms::group_exec | fs::perms::others_read |
                            fs::perms::others_exec);
    const auto before = snapshot(ro / "hf");
    r = sh("setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp " + bin() +
               " export hf --checkpoint " + (dir / "run" / "checkpoints").string() + " --out " +
               (ro / "hf").string(),
           60);
    fs::permissions(ro, fs::perms::owner_all, fs::perm_options::add);
    EXPECT_EQ(r.code, 1) << r.output;
    EXPECT_TRUE(has(r, "error: export hf: cannot write " + (ro / "hf").string() + ".tmp"))
        << r.output;
    EXPECT_TRUE(has(r, "Permission denied")) << r.output;
    EXPECT_EQ(snapshot(ro / "hf"), before);
    EXPECT_FALSE(fs::exists(ro / "hf.tmp"));
  }

  // A model that does not renormalise its top-2 weights: refused, nothing exported.
  r = sh(mpiexec(1) + bin() + job(1, " --set parallel.ep=1 --set moe.router.renormalize=false") +
         " --run-dir " + (dir / "plain").string());
  ASSERT_EQ(r.code, 0) << r.output;
  r = sh(bin() + " export hf --checkpoint " + (dir / "plain" / "checkpoints" / "step_1").string() +
             " --out " + (dir / "hf_plain").string(),
         60);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_TRUE(has(r, "moe.router.renormalize = false")) << r.output;
  EXPECT_FALSE(fs::exists(dir / "hf_plain"));
  EXPECT_FALSE(fs::exists(dir / "hf_plain.tmp"));
}

TEST(BadInput, MalformedFaultVariableIsRefused) {
  Proc r = sh("env DIRMOE_FAULT=kill:x:1 " + bin() + job(2, " --set parallel.ep=1") +
                  " --run-dir " + work_dir("badfault").string(),
              60);
  EXPECT_NE(r.code, 0);
  EXPECT_TRUE(has(r, "DIRMOE_FAULT='kill:x:1'")) << r.output;
}

}  // namespace
