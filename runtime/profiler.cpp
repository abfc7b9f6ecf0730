// Step profiler (see profiler.h).
#include "runtime/profiler.h"

#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/core/dtype.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"
#include "runtime/core/trace.h"

namespace dirmoe {
namespace {

const char* direction_name(trace::Direction d) {
  return d == trace::Direction::kDispatch ? "dispatch" : "combine";
}
const char* pass_name(trace::Pass p) { return p == trace::Pass::kForward ? "forward" : "backward"; }

}  // namespace

Profiler::Profiler(const ProfileConfig& cfg, Communicator& world, int ep,
                   const std::filesystem::path& run_dir, int64_t last_step)
    : cfg_(cfg), world_(world), W_(world.size()), rank_(world.rank()), ep_(ep), run_dir_(run_dir) {
  world_.barrier();
  trace::Recorder::get().set_epoch();
  trace::Recorder::get().disarm();
  trace::Recorder::get().clear();
  if (!cfg_.enabled()) return;
  if (cfg_.first > 0 && rank_ == 0) {
    if (cfg_.first > last_step)
      log_message(LogLevel::kWarn, false,
                  "profile.steps [" + std::to_string(cfg_.first) + ", " +
                      std::to_string(cfg_.last) + "] lies outside this run (steps 1-" +
                      std::to_string(last_step) + "): the range profiles nothing");
    else if (cfg_.last > last_step)
      log_message(LogLevel::kWarn, false,
                  "profile.steps [" + std::to_string(cfg_.first) + ", " +
                      std::to_string(cfg_.last) + "] extends past the last step " +
                      std::to_string(last_step) + ": profiling steps " +
                      std::to_string(cfg_.first) + "-" + std::to_string(last_step));
  }
  if (rank_ != 0) return;
  traffic_.open(run_dir_ / "traffic.jsonl", std::ios::trunc);
  DIRMOE_CHECK(traffic_.good(), "cannot write ", (run_dir_ / "traffic.jsonl").string());
  if (cfg_.trace) {
    trace_.open(run_dir_ / "trace.json", std::ios::trunc);
    DIRMOE_CHECK(trace_.good(), "cannot write ", (run_dir_ / "trace.json").string());
    trace_ << "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n";
    trace_open_ = true;
  }
}

Profiler::~Profiler() { finish(); }

void Profiler::finish() {
  if (!trace_open_) return;
  trace_ << "\n]}\n";
  trace_.close();
  trace_open_ = false;
}

bool Profiler::begin_step(int64_t step) {
  active_ = cfg_.profiles(step);
  trace::Recorder& rec = trace::Recorder::get();
  rec.clear();
  if (active_) rec.arm();
  return active_;
}

double Profiler::end_step(int64_t step) {
  if (!active_) return 0;
  active_ = false;
  trace::Recorder& rec = trace::Recorder::get();
  rec.disarm();
  const auto& traffic = rec.traffic();
  // Every rank runs the same exchanges in the same order; check it before gathering.
  int64_t n[2] = {static_cast<int64_t>(traffic.size()), -static_cast<int64_t>(traffic.size())};
  world_.all_reduce(n, 2, DType::kI64, ReduceOp::kMax);
  DIRMOE_CHECK(n[0] == -n[1], "profiler: step ", step,
               ": ranks recorded different numbers of "
               "all-to-all exchanges (",
               -n[1], " to ", n[0], ")");
  const size_t K = traffic.size();
  // Rows sent to each world rank, per record: [K, W]; then the gathered [W, K, W].
  std::vector<int64_t> mine(K * W_, 0), rows(static_cast<size_t>(W_) * K * W_, 0);
  std::vector<double> my_secs(K, 0), secs(static_cast<size_t>(W_) * K, 0);
  const int group0 = (rank_ / ep_) * ep_;
  for (size_t k = 0; k < K; ++k) {
    const auto& r = traffic[k];
    for (size_t j = 0; j < r.send_rows.size(); ++j) mine[k * W_ + group0 + j] = r.send_rows[j];
    my_secs[k] = r.seconds;
  }
  if (K > 0) {
    world_.all_gather(mine.data(), rows.data(), static_cast<int64_t>(mine.size()), DType::kI64);
    world_.all_gather(my_secs.data(), secs.data(), static_cast<int64_t>(K), DType::kF64);
  }
  double alltoall_s = 0;
  if (rank_ == 0) write_traffic(step, K, rows, secs, &alltoall_s);
  world_.broadcast(&alltoall_s, 1, DType::kF64, 0);

  if (cfg_.trace) {
    // Events as [phase, pass, begin_ns, end_ns], padded to the longest list.
    const auto& ev = rec.events();
    int64_t longest = static_cast<int64_t>(ev.size());
    world_.all_reduce(&longest, 1, DType::kI64, ReduceOp::kMax);
    std::vector<int64_t> flat(static_cast<size_t>(longest) * 4, -1);
    for (size_t i = 0; i < ev.size(); ++i) {
      flat[i * 4] = static_cast<int64_t>(ev[i].phase);
      flat[i * 4 + 1] = static_cast<int64_t>(ev[i].pass);
      flat[i * 4 + 2] = ev[i].begin_ns;
      flat[i * 4 + 3] = ev[i].end_ns;
    }
    std::vector<int64_t> all(flat.size() * W_);
    if (longest > 0)
      world_.all_gather(flat.data(), all.data(), static_cast<int64_t>(flat.size()), DType::kI64);
    if (rank_ == 0) write_trace(all, longest);
  }
  rec.clear();
  return alltoall_s;
}

void Profiler::write_traffic(int64_t step, size_t K, const std::vector<int64_t>& rows,
                             const std::vector<double>& secs, double* alltoall_s) {
  const auto& traffic = trace::Recorder::get().traffic();
  std::vector<int> occurrence;  // micro-batch index of each record: repeats of (layer, dir, pass)
  for (size_t k = 0; k < K; ++k) {
    int seen = 0;
    for (size_t j = 0; j < k; ++j)
      seen += traffic[j].layer == traffic[k].layer &&
              traffic[j].direction == traffic[k].direction && traffic[j].pass == traffic[k].pass;
    occurrence.push_back(seen);
  }
  for (size_t k = 0; k < K; ++k) {
    const auto& r = traffic[k];
    nlohmann::json tokens = nlohmann::json::array(), bytes = nlohmann::json::array();
    std::vector<double> times(W_);
    double tmax = 0;
    int64_t offrank = 0;
    for (int src = 0; src < W_; ++src) {
      std::vector<int64_t> t(W_), b(W_);
      for (int dst = 0; dst < W_; ++dst) {
        t[dst] = rows[(static_cast<size_t>(src) * K + k) * W_ + dst];
        b[dst] = t[dst] * r.row_bytes;
        if (dst != src) offrank += b[dst];
      }
      tokens.push_back(t);
      bytes.push_back(b);
      times[src] = secs[static_cast<size_t>(src) * K + k];
      tmax = std::max(tmax, times[src]);
    }
    *alltoall_s += tmax;
    nlohmann::json j = {{"step", step},
                        {"micro_batch", occurrence[k]},
                        {"layer", r.layer},
                        {"direction", direction_name(r.direction)},
                        {"pass", pass_name(r.pass)},
                        {"ranks", W_},
                        {"ep", ep_},
                        {"row_bytes", r.row_bytes},
                        {"tokens", tokens},
                        {"bytes", bytes},
                        {"time_s", times},
                        {"time_max_s", tmax},
                        {"offrank_bytes", offrank},
                        {"bandwidth_GBps", tmax > 0 ? offrank / (tmax * W_) / 1e9 : 0.0}};
    traffic_ << j.dump() << '\n';
  }
  traffic_.flush();
}

void Profiler::write_trace(const std::vector<int64_t>& all, int64_t per_rank) {
  if (!trace_open_) return;
  char buf[256];
  for (int r = 0; r < W_; ++r) {
    for (int64_t i = 0; i < per_rank; ++i) {
      const int64_t* e = all.data() + (static_cast<size_t>(r) * per_rank + i) * 4;
      if (e[0] < 0) continue;
      const auto phase = static_cast<trace::Phase>(e[0]);
      const char* pass = phase == trace::Phase::kStep || phase == trace::Phase::kOptimizer
                             ? nullptr
                             : pass_name(static_cast<trace::Pass>(e[1]));
      int len = std::snprintf(
          buf, sizeof buf,
          "%s{\"name\":\"%s\",\"cat\":\"dirmoe\",\"ph\":\"X\",\"ts\":%.3f,\"dur\":%.3f,\"pid\":%d,"
          "\"tid\":0%s%s%s}",
          first_event_ ? "" : ",\n", trace::phase_name(phase), e[2] / 1e3, (e[3] - e[2]) / 1e3, r,
          pass ? ",\"args\":{\"pass\":\"" : "", pass ? pass : "", pass ? "\"}" : "");
      trace_.write(buf, len);
      first_event_ = false;
    }
  }
  trace_.flush();
}

}  // namespace dirmoe
