// Traffic profiling exactness: every rank routes a closed-form skew (rank s sends (s+1)(e+1)
// assignments to expert e, two experts per EP rank) through the Dispatcher in two layers, forward
// and backward, with the Profiler armed; rank 0 parses RUN_DIR/traffic.jsonl back and checks the
// rank x rank token and byte matrices of every (layer, direction, pass) against the formula, for
// EP = world and, on 4 ranks, two EP groups of 2 (block-diagonal traffic). Also checks trace.json
// holds one complete event per phase range, nested inside its step.
#include <gtest/gtest.h>
#include <mpi.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "comm/mpi_communicator.h"
#include "experts/dispatcher.h"
#include "runtime/core/trace.h"
#include "runtime/profiler.h"

namespace dirmoe {
namespace {

namespace fs = std::filesystem;

// Rows rank s sends to EP rank (world) d in the dispatch: sum over d's experts 2j, 2j+1 (j = d's
// EP rank) of (s+1)(e+1) = (s+1)(4j+3); zero across EP groups.
int64_t dispatch_rows(int s, int d, int ep) {
  if (s / ep != d / ep) return 0;
  return static_cast<int64_t>(s + 1) * (4 * (d % ep) + 3);
}

fs::path shared_dir(MpiCommunicator& world, const std::string& name) {
  // Rank 0 names and creates the directory; the name is the same on every rank.
  fs::path p = fs::temp_directory_path() / (name + "_" + std::to_string(world.size()));
  if (world.rank() == 0) {
    fs::remove_all(p);
    fs::create_directories(p);
  }
  world.barrier();
  return p;
}

void run_skew(int ep) {
  MpiCommunicator world(MPI_COMM_WORLD, false, "world");
  const int W = world.size(), me = world.rank();
  ASSERT_EQ(W % ep, 0);
  auto ep_comm = world.split(me / ep, me, "ep");
  const int E = 2 * ep, L = 2;
  const Placement placement = Placement::contiguous(E, ep);
  const fs::path dir = shared_dir(world, "dirmoe_traffic_ep" + std::to_string(ep));

  std::vector<int32_t> experts;  // s = me: (s+1)(e+1) assignments to expert e, interleaved
  for (int e = 0; e < E; ++e)
    for (int i = 0; i < (me + 1) * (e + 1); ++i) experts.push_back(e);
  const int64_t nnz = static_cast<int64_t>(experts.size());

  std::vector<std::unique_ptr<Dispatcher<double>>> disp;
  for (int l = 0; l < L; ++l) {
    disp.push_back(std::make_unique<Dispatcher<double>>(placement, ep_comm.get()));
    disp.back()->set_trace_layer(l);
  }
  auto width = [](int l) { return static_cast<int64_t>(3 + l); };
  ProfileConfig cfg;
  cfg.every = 2;
  {
    Profiler prof(cfg, world, ep, dir, 2);
    for (int64_t step = 1; step <= 2; ++step) {
      EXPECT_EQ(prof.begin_step(step), step == 2);
      trace::Scope step_scope(trace::Phase::kStep);
      trace::Recorder::get().set_pass(trace::Pass::kForward);
      for (int l = 0; l < L; ++l) {
        const int64_t w = width(l);
        disp[l]->plan(experts.data(), nnz, -1);
        std::vector<double> in(nnz * w, 1.0), ex(disp[l]->num_received() * w), out(nnz * w);
        disp[l]->dispatch(in.data(), nullptr, w, ex.data());
        disp[l]->combine(ex.data(), w, out.data());
      }
      trace::Recorder::get().set_pass(trace::Pass::kBackward);
      for (int l = L - 1; l >= 0; --l) {
        const int64_t w = width(l);
        std::vector<double> in(nnz * w, 1.0), ex(disp[l]->num_received() * w), out(nnz * w);
        disp[l]->dispatch(in.data(), nullptr, w, ex.data());
        disp[l]->combine(ex.data(), w, out.data());
      }
      step_scope.end();
      const double a2a = prof.end_step(step);
      if (step == 1)
        EXPECT_EQ(a2a, 0.0);
      else
        EXPECT_GT(a2a, 0.0);
    }
  }
  if (me != 0) return;

  std::ifstream in(dir / "traffic.jsonl");
  ASSERT_TRUE(in.good());
  std::vector<nlohmann::json> recs;
  for (std::string line; std::getline(in, line);) recs.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(recs.size(), static_cast<size_t>(4 * L));  // 2 directions x 2 passes x L layers
  int64_t checked = 0;
  for (const auto& r : recs) {
    EXPECT_EQ(r["step"].get<int64_t>(), 2);
    EXPECT_EQ(r["micro_batch"].get<int>(), 0);
    EXPECT_EQ(r["ranks"].get<int>(), W);
    EXPECT_EQ(r["ep"].get<int>(), ep);
    const int l = r["layer"].get<int>();
    const bool dispatch = r["direction"] == "dispatch";
    const int64_t row_bytes = width(l) * static_cast<int64_t>(sizeof(double));
    EXPECT_EQ(r["row_bytes"].get<int64_t>(), row_bytes);
    int64_t offrank = 0;
    for (int s = 0; s < W; ++s)
      for (int d = 0; d < W; ++d) {
        // The combine sends back what the dispatch brought: rows s -> d = dispatch rows d -> s.
        const int64_t want = dispatch ? dispatch_rows(s, d, ep) : dispatch_rows(d, s, ep);
        EXPECT_EQ(r["tokens"][s][d].get<int64_t>(), want)
            << "layer " << l << " " << r["direction"] << " " << r["pass"] << " " << s << "->" << d;
        EXPECT_EQ(r["bytes"][s][d].get<int64_t>(), want * row_bytes);
        if (s != d) offrank += want * row_bytes;
        ++checked;
      }
    EXPECT_EQ(r["offrank_bytes"].get<int64_t>(), offrank);
    EXPECT_EQ(r["time_s"].size(), static_cast<size_t>(W));
  }
  // Every (layer, direction, pass) exactly once, in execution order.
  const char* order[4][2] = {{"dispatch", "forward"},
                             {"combine", "forward"},
                             {"dispatch", "backward"},
                             {"combine", "backward"}};
  for (int i = 0; i < 4 * L; ++i) {
    const int half = i / (2 * L), within = i % (2 * L);
    const int layer = half == 0 ? within / 2 : L - 1 - within / 2;
    EXPECT_EQ(recs[i]["layer"].get<int>(), layer) << i;
    EXPECT_EQ(recs[i]["direction"], order[2 * half + within % 2][0]) << i;
    EXPECT_EQ(recs[i]["pass"], order[2 * half + within % 2][1]) << i;
  }
  std::printf("traffic exactness: %d ranks, ep %d: %lld matrix entries equal the closed form\n", W,
              ep, static_cast<long long>(checked));

  // trace.json: valid JSON; one step per rank; every event complete and inside its rank's step.
  std::ifstream tin(dir / "trace.json");
  const nlohmann::json trace = nlohmann::json::parse(tin);
  const auto& events = trace["traceEvents"];
  std::vector<double> step_begin(W, -1), step_end(W, -1);
  for (const auto& e : events)
    if (e["name"] == "step") {
      const int pid = e["pid"].get<int>();
      EXPECT_LT(step_begin[pid], 0) << "two steps on rank " << pid;
      step_begin[pid] = e["ts"].get<double>();
      step_end[pid] = step_begin[pid] + e["dur"].get<double>();
    }
  int a2a = 0;
  for (const auto& e : events) {
    for (const char* k : {"name", "ph", "ts", "dur", "pid", "tid"}) ASSERT_TRUE(e.contains(k)) << k;
    EXPECT_EQ(e["ph"], "X");
    const int pid = e["pid"].get<int>();
    ASSERT_GE(step_begin[pid], 0) << "rank " << pid << " has no step event";
    EXPECT_GE(e["ts"].get<double>(), step_begin[pid]);
    EXPECT_LE(e["ts"].get<double>() + e["dur"].get<double>(), step_end[pid] + 1e-3);
    a2a += e["name"] == "all-to-all";
  }
  EXPECT_EQ(a2a, W * 4 * L);
}

TEST(TrafficProfile, ClosedFormSkewEpEqualsWorld) {
  run_skew(MpiCommunicator(MPI_COMM_WORLD, false, "w").size());
}

TEST(TrafficProfile, ClosedFormSkewTwoRankEpGroups) {
  MpiCommunicator world(MPI_COMM_WORLD, false, "w");
  if (world.size() % 2 != 0 || world.size() == 2) GTEST_SKIP() << "needs 4 ranks in EP groups of 2";
  run_skew(2);
}

}  // namespace
}  // namespace dirmoe
