// End-to-end observability: a real 2-rank run with profiling writes a Chrome trace whose events
// are complete and nest inside their rank's step, and traffic records whose dispatched rows agree
// with the monitor's tokens per expert; `dirmoe report` on that run writes every plot as a valid
// PNG (chunk CRCs, IHDR, inflated IDAT size, row filters) with text in its margins, and handles
// missing, partial and truncated input.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "e2e_util.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

using namespace dirmoe::e2e;

const int kSteps = 6;
const int64_t kSeq = 32, kBatch = 2, kK = 2;

// One profiled run shared by the tests of this file (rank count 2, every 2nd step profiled).
const fs::path& run_dir() {
  static fs::path dir = [] {
    fs::path p = fs::current_path() / "e2e_runs" / "observe";
    fs::remove_all(p);
    fs::create_directories(p);
    Proc r = sh(mpiexec(2) + bin() + " train --config " + env("DIRMOE_SOURCE_DIR") +
                "/configs/tiny.yaml --set data.paths=[" + corpus() + "] --set model.seq_len=" +
                std::to_string(kSeq) + " --set train.micro_batch=" + std::to_string(kBatch) +
                " --set train.steps=" + std::to_string(kSteps) +
                " --set train.eval_interval=3 --set train.eval_batches=1 --set profile.every=2" +
                " --set checkpoint.at_end=false" + " --run-dir " + p.string());
    EXPECT_EQ(r.code, 0) << r.output;
    return p;
  }();
  return dir;
}

std::vector<json> jsonl(const fs::path& p) {
  std::ifstream in(p);
  std::vector<json> out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

TEST(Trace, ValidChromeTraceWithPhasesInsideSteps) {
  ASSERT_TRUE(fs::exists(corpus() + ".idx")) << "bundled corpus missing";
  std::ifstream in(run_dir() / "trace.json");
  ASSERT_TRUE(in.good());
  json trace;
  ASSERT_NO_THROW(trace = json::parse(in));
  ASSERT_TRUE(trace.contains("traceEvents"));
  const auto& ev = trace["traceEvents"];
  const std::set<std::string> names = {"step",       "attention", "router",  "permute",
                                       "all-to-all", "experts",   "combine", "optimizer"};
  // Steps per rank, sorted by start.
  std::map<int, std::vector<std::pair<double, double>>> steps;
  std::map<std::string, int> seen;
  for (const auto& e : ev) {
    for (const char* k : {"name", "ph", "ts", "dur", "pid", "tid"})
      ASSERT_TRUE(e.contains(k)) << "event without '" << k << "': " << e.dump();
    EXPECT_EQ(e["ph"], "X");
    EXPECT_GE(e["dur"].get<double>(), 0.0);
    EXPECT_TRUE(names.count(e["name"].get<std::string>())) << e["name"];
    ++seen[e["name"].get<std::string>()];
    if (e["name"] == "step")
      steps[e["pid"].get<int>()].push_back(
          {e["ts"].get<double>(), e["ts"].get<double>() + e["dur"].get<double>()});
  }
  for (const auto& n : names) EXPECT_GT(seen[n], 0) << "no '" << n << "' event";
  ASSERT_EQ(steps.size(), 2u);  // one track per rank
  for (const auto& [pid, s] : steps) EXPECT_EQ(s.size(), static_cast<size_t>(kSteps / 2)) << pid;
  for (const auto& e : ev) {
    if (e["name"] == "step") continue;
    const double b = e["ts"].get<double>(), f = b + e["dur"].get<double>();
    bool inside = false;
    for (const auto& [sb, sf] : steps[e["pid"].get<int>()]) inside |= b >= sb && f <= sf + 1e-3;
    EXPECT_TRUE(inside) << "event outside every step of its rank: " << e.dump();
  }
}

TEST(Traffic, DispatchedRowsMatchTheMonitorsTokensPerExpert) {
  auto metrics = jsonl(run_dir() / "metrics.jsonl");
  auto traffic = jsonl(run_dir() / "traffic.jsonl");
  // 3 profiled steps x 4 layers x (dispatch, combine) x (forward, backward).
  ASSERT_EQ(traffic.size(), 3u * 4 * 4);
  std::map<int64_t, json> by_step;
  for (const auto& m : metrics)
    if (m.contains("loss")) by_step[m["step"].get<int64_t>()] = m;
  for (const auto& t : traffic) {
    const int64_t step = t["step"].get<int64_t>();
    EXPECT_EQ(step % 2, 0);
    ASSERT_TRUE(by_step[step].contains("alltoall_time_s"));
    int64_t sent = 0;
    for (const auto& row : t["tokens"])
      for (const auto& v : row) sent += v.get<int64_t>();
    int64_t routed = 0;
    for (const auto& c : by_step[step]["layers"][t["layer"].get<int>()]["tokens_per_expert"])
      routed += c.get<int64_t>();
    EXPECT_EQ(sent, routed) << t.dump();  // dropless: every (token, expert) row travels once
    EXPECT_EQ(sent, 2 * kBatch * kSeq * kK);
    EXPECT_EQ(t["row_bytes"].get<int64_t>(), 128 * 4);
  }
  // The monitor's per-rank rows add up to the routed tokens, and the per-source counts too.
  const auto& l0 = by_step[kSteps]["layers"][0];
  int64_t ranks = 0, sources = 0;
  for (const auto& v : l0["rank_tokens"]) ranks += v.get<int64_t>();
  for (const auto& v : l0["source_tokens_per_expert"][0]) sources += v.get<int64_t>();
  EXPECT_EQ(ranks, 2 * kBatch * kSeq * kK);
  EXPECT_EQ(sources, 2 * kBatch * kSeq * kK);
  for (const char* k : {"load_cv", "load_entropy", "rank_max_over_mean", "rank_cv", "dead_experts"})
    EXPECT_TRUE(l0.contains(k)) << k;
}

// Undoes the PNG row filters (None, Sub, Up, Average, Paeth; PNG spec section 9) of 8-bit RGB
// scanlines: `raw` holds h rows of a filter byte and 3w bytes; returns the h x w x 3 pixels.
std::vector<uint8_t> unfilter(const std::vector<uint8_t>& raw, uint32_t w, uint32_t h, bool* ok) {
  const size_t stride = 3 * static_cast<size_t>(w);
  std::vector<uint8_t> px(stride * h);
  *ok = true;
  for (uint32_t y = 0; y < h; ++y) {
    const uint8_t type = raw[y * (stride + 1)];
    const uint8_t* in = raw.data() + y * (stride + 1) + 1;
    uint8_t* row = px.data() + y * stride;
    const uint8_t* up = y > 0 ? row - stride : nullptr;
    for (size_t i = 0; i < stride; ++i) {
      const int a = i >= 3 ? row[i - 3] : 0, b = up ? up[i] : 0, c = up && i >= 3 ? up[i - 3] : 0;
      int pred = 0;
      switch (type) {
        case 0:
          pred = 0;
          break;
        case 1:
          pred = a;
          break;
        case 2:
          pred = b;
          break;
        case 3:
          pred = (a + b) / 2;
          break;
        case 4: {
          const int p = a + b - c, pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
          pred = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
          break;
        }
        default:
          *ok = false;
          return px;
      }
      row[i] = static_cast<uint8_t>(in[i] + pred);
    }
  }
  return px;
}

// Checks a PNG completely: signature, chunk CRCs, IHDR, IDAT inflating to h * (1 + 3w) bytes, row
// filters; then its pixels: not blank, and text (dark pixels) in the margins that hold the title
// (top), the x axis label (bottom) and the y axis label or row labels (left).
void expect_valid_png(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  ASSERT_TRUE(in.good()) << p;
  std::vector<uint8_t> b((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  ASSERT_GE(b.size(), 8u);
  ASSERT_TRUE(std::equal(sig, sig + 8, b.begin())) << p;
  auto u32 = [&](size_t o) {
    return (uint32_t{b[o]} << 24) | (uint32_t{b[o + 1]} << 16) | (uint32_t{b[o + 2]} << 8) |
           b[o + 3];
  };
  size_t o = 8;
  uint32_t w = 0, h = 0;
  std::vector<uint8_t> idat;
  bool end = false;
  while (o + 12 <= b.size()) {
    const uint32_t len = u32(o);
    ASSERT_LE(o + 12 + len, b.size()) << p;
    const std::string type(b.begin() + o + 4, b.begin() + o + 8);
    const uLong crc = crc32(0L, b.data() + o + 4, len + 4);
    ASSERT_EQ(crc, u32(o + 8 + len)) << p << ": bad CRC in " << type;
    if (type == "IHDR") {
      w = u32(o + 8);
      h = u32(o + 12);
      EXPECT_EQ(b[o + 16], 8);  // bit depth
      EXPECT_EQ(b[o + 17], 2);  // truecolour
      EXPECT_EQ(b[o + 20], 0);  // not interlaced
    } else if (type == "IDAT") {
      idat.insert(idat.end(), b.begin() + o + 8, b.begin() + o + 8 + len);
    } else if (type == "IEND") {
      end = true;
    }
    o += 12 + len;
  }
  ASSERT_TRUE(end) << p;
  ASSERT_GT(w, 100u);
  ASSERT_GT(h, 100u);
  std::vector<uint8_t> raw(static_cast<size_t>(h) * (1 + 3 * w) + 1);
  uLongf n = raw.size();
  ASSERT_EQ(uncompress(raw.data(), &n, idat.data(), idat.size()), Z_OK) << p;
  ASSERT_EQ(n, static_cast<uLongf>(h) * (1 + 3 * w)) << p;
  bool ok = false;
  const std::vector<uint8_t> px = unfilter(raw, w, h, &ok);
  ASSERT_TRUE(ok) << p << ": unknown row filter";
  auto at = [&](uint32_t x, uint32_t y) {
    return px.data() + (static_cast<size_t>(y) * w + x) * 3;
  };
  // Not a blank image: more than two distinct colours.
  std::set<uint32_t> colours;
  for (uint32_t y = 0; y < h; y += 3)
    for (uint32_t x = 0; x < w; x += 3) {
      const uint8_t* c = at(x, y);
      colours.insert((uint32_t{c[0]} << 16) | (uint32_t{c[1]} << 8) | c[2]);
    }
  EXPECT_GT(colours.size(), 2u) << p;
  auto dark = [&](uint32_t x0, uint32_t y0, uint32_t x1, uint32_t y1) {
    int count = 0;
    for (uint32_t y = y0; y < y1; ++y)
      for (uint32_t x = x0; x < x1; ++x) {
        const uint8_t* c = at(x, y);
        count += c[0] < 128 && c[1] < 128 && c[2] < 128;
      }
    return count;
  };
  EXPECT_GE(dark(0, 0, w, 35), 30) << p << ": no title";
  EXPECT_GE(dark(0, h - 30, w, h), 30) << p << ": no x axis label";
  EXPECT_GE(dark(0, 0, 30, h), 30) << p << ": no y axis label or row labels";
}

const std::vector<std::string> kPlots = {"loss.png",      "active_experts.png", "expert_load.png",
                                         "rank_load.png", "source_routing.png", "traffic.png"};

TEST(Report, WritesEveryPlotAndTheSummary) {
  fs::path out = run_dir().parent_path() / "observe_report";
  fs::remove_all(out);
  Proc r = sh(bin() + " report " + run_dir().string() + " --out " + out.string() +
                  " --network-gbps 400 --gpus-per-node 1",
              120);
  ASSERT_EQ(r.code, 0) << r.output;
  for (const char* s : {"loss: train", "throughput:", "sparsity:", "vs target k = 2",
                        "most imbalanced layers", "most loaded experts", "most loaded ranks",
                        "all-to-all:", "traffic:", "projection: 2 ranks on 2 node(s)"})
    EXPECT_NE(r.output.find(s), std::string::npos) << s << "\n" << r.output;
  for (const auto& p : kPlots) expect_valid_png(out / p);
}

// A plot that cannot be written (here a directory stands where loss.png goes) is an error naming
// the file, not a crash.
TEST(Report, UnwritablePlotIsAClearError) {
  fs::path out = run_dir().parent_path() / "blocked_report";
  fs::remove_all(out);
  fs::create_directories(out / "loss.png");
  Proc r = sh(bin() + " report " + run_dir().string() + " --out " + out.string(), 60);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(
      r.output.find("error: report: plot: cannot write '" + (out / "loss.png").string() + "'"),
      std::string::npos)
      << r.output;
}

void copy_run(const fs::path& to) {
  fs::remove_all(to);
  fs::create_directories(to);
  for (const char* f : {"metrics.jsonl", "traffic.jsonl", "config.resolved.yaml", "trace.json"})
    fs::copy_file(run_dir() / f, to / f);
}

TEST(Report, MissingDirectoryIsAClearError) {
  Proc r = sh(bin() + " report /nonexistent/run_dir", 60);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("run directory '/nonexistent/run_dir' does not exist"), std::string::npos)
      << r.output;
  fs::path empty = run_dir().parent_path() / "empty_run";
  fs::remove_all(empty);
  fs::create_directories(empty);
  r = sh(bin() + " report " + empty.string(), 60);
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("has no metrics.jsonl"), std::string::npos) << r.output;
}

TEST(Report, TruncatedLastLinesAndMissingTrafficStillReport) {
  fs::path dir = run_dir().parent_path() / "killed_run";
  copy_run(dir);
  // A run killed mid-write: the last metrics and traffic lines end half way.
  for (const char* f : {"metrics.jsonl", "traffic.jsonl"}) {
    const auto size = fs::file_size(dir / f);
    fs::resize_file(dir / f, size - 40);
  }
  Proc r = sh(bin() + " report " + dir.string(), 120);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("metrics.jsonl:" + std::to_string(kSteps + 1) + ": truncated last line"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("traffic.jsonl:48: truncated last line"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("steps 1-" + std::to_string(kSteps - 1) + " of " +
                          std::to_string(kSteps) + " (incomplete"),
            std::string::npos)
      << r.output;
  for (const auto& p : kPlots) expect_valid_png(dir / "report" / p);

  fs::remove(dir / "traffic.jsonl");
  fs::remove_all(dir / "report");
  r = sh(bin() + " report " + dir.string(), 120);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("no traffic.jsonl: the run was not profiled"), std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dir / "report" / "traffic.png"));
  expect_valid_png(dir / "report" / "expert_load.png");
}

TEST(Report, StepRangeOutsideTheRunReportsEverything) {
  Proc r = sh(bin() + " report " + run_dir().string() + " --out " +
                  (run_dir().parent_path() / "range_report").string() + " --steps 100:200",
              120);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("--steps 100:200 lies outside the recorded steps 1-" +
                          std::to_string(kSteps) + ": reporting every recorded step"),
            std::string::npos)
      << r.output;
  r = sh(bin() + " report " + run_dir().string() + " --steps 5:3", 60);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("--steps '5:3' is not a range A:B with A <= B"), std::string::npos)
      << r.output;
}

// A blend of two sources (the same corpus twice, weights 0.3/0.7) with a profile range past the
// run: the per-source counts add up to the tokens per expert, and the range is reported.
TEST(Profile, RangeOutsideTheRunWarnsAndTheReportSaysWhy) {
  fs::path dir = run_dir().parent_path() / "profile_outside";
  fs::remove_all(dir);
  Proc r = sh(mpiexec(2) + bin() + " train --config " + env("DIRMOE_SOURCE_DIR") +
              "/configs/tiny.yaml --set \"data.paths=[0.3, " + corpus() + ", 0.7, " + corpus() +
              "]\" --set model.seq_len=16 --set train.micro_batch=2 --set train.steps=2" +
              " --set train.eval_interval=0 --set train.eval_batches=1 --set profile.every=0" +
              " --set \"profile.steps=[5, 9]\" --run-dir " + dir.string());
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("profile.steps [5, 9] lies outside this run (steps 1-2)"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dir / "trace.json") && fs::file_size(dir / "trace.json") > 60);
  int64_t per_source[2] = {0, 0};
  for (const auto& rec : jsonl(dir / "metrics.jsonl")) {
    if (!rec.contains("layers")) continue;
    for (const auto& l : rec["layers"]) {
      const auto& st = l["source_tokens_per_expert"];
      ASSERT_EQ(st.size(), 2u);
      for (size_t e = 0; e < l["tokens_per_expert"].size(); ++e) {
        EXPECT_EQ(st[0][e].get<int64_t>() + st[1][e].get<int64_t>(),
                  l["tokens_per_expert"][e].get<int64_t>());
        per_source[0] += st[0][e].get<int64_t>();
        per_source[1] += st[1][e].get<int64_t>();
      }
    }
  }
  EXPECT_GT(per_source[0], 0);
  EXPECT_GT(per_source[1], per_source[0]);  // 8 samples drawn 0.3 / 0.7
  r = sh(bin() + " report " + dir.string(), 60);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(fs::exists(dir / "report" / "source_routing.png"));
  EXPECT_NE(r.output.find("profile.steps [5, 9] lies outside the recorded steps 1-2"),
            std::string::npos)
      << r.output;
}

}  // namespace
