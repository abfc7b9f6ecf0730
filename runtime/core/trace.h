// Step profiling hooks: named phase ranges (Chrome-trace / Perfetto events, NVTX ranges on CUDA
// builds) and all-to-all traffic records. One process-wide recorder; when it is not armed a
// TraceScope costs one load and one branch, so the hooks stay in the hot path permanently.
#pragma once

#include <chrono>
#include <cstdint>
#include <utility>
#include <vector>

#if defined(DIRMOE_WITH_NVTX)
#include <nvtx3/nvToolsExt.h>
#endif

namespace dirmoe::trace {

// Phase names (trace event names and NVTX range names).
enum class Phase : uint8_t {
  kStep,
  kAttention,
  kRouter,
  kPermute,
  kAllToAll,
  kExperts,
  kCombine,
  kOptimizer,
  kCount
};
const char* phase_name(Phase p);

enum class Direction : uint8_t { kDispatch, kCombine };
enum class Pass : uint8_t { kForward, kBackward };

struct Event {
  Phase phase;
  Pass pass;
  int64_t begin_ns;  // since the recorder's epoch
  int64_t end_ns;
};

// One all_to_all_v of the MoE exchange as seen by this rank.
struct TrafficRecord {
  int layer = -1;
  Direction direction = Direction::kDispatch;
  Pass pass = Pass::kForward;
  std::vector<int64_t> send_rows;  // [ep] rows this rank sent to each EP peer
  int64_t row_bytes = 0;           // bytes per row
  double seconds = 0;              // wall time of the all_to_all_v on this rank
};

class Recorder {
 public:
  static Recorder& get();
  // Process-wide epoch for event timestamps (call once, after a barrier, so ranks on one host
  // share an origin).
  void set_epoch();
  int64_t now_ns() const {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() -
                                                                epoch_)
        .count();
  }
  // Arms recording for one step; disarm() stops it. Events and records of the step stay until
  // clear().
  void arm() { armed_ = true; }
  void disarm() { armed_ = false; }
  bool armed() const { return armed_; }
  void clear() {
    events_.clear();
    traffic_.clear();
  }
  void add_event(const Event& e) { events_.push_back(e); }
  void add_traffic(TrafficRecord r) { traffic_.push_back(std::move(r)); }
  const std::vector<Event>& events() const { return events_; }
  const std::vector<TrafficRecord>& traffic() const { return traffic_; }
  // The pass the model is in (forward/backward), set by the model around its passes.
  void set_pass(Pass p) { pass_ = p; }
  Pass pass() const { return pass_; }
  // Called at both ends of every range while armed (e.g. a device synchronisation, so that the
  // host times of an asynchronous GPU step are the device's); null: none.
  void set_sync_hook(void (*hook)()) { sync_hook_ = hook; }
  void sync() const {
    if (sync_hook_ != nullptr) sync_hook_();
  }

 private:
  bool armed_ = false;
  Pass pass_ = Pass::kForward;
  void (*sync_hook_)() = nullptr;
  std::chrono::steady_clock::time_point epoch_ = std::chrono::steady_clock::now();
  std::vector<Event> events_;
  std::vector<TrafficRecord> traffic_;
};

// RAII phase range: a trace event when the recorder is armed, an NVTX range on CUDA builds.
class Scope {
 public:
  explicit Scope(Phase p) : phase_(p) {
#if defined(DIRMOE_WITH_NVTX)
    nvtxRangePushA(phase_name(p));
#endif
    Recorder& r = Recorder::get();
    if (r.armed()) {
      r.sync();
      begin_ns_ = r.now_ns();
    }
  }
  ~Scope() { end(); }
  // Ends the range early (idempotent).
  void end() {
    if (ended_) return;
    ended_ = true;
#if defined(DIRMOE_WITH_NVTX)
    nvtxRangePop();
#endif
    if (begin_ns_ >= 0) {
      Recorder& r = Recorder::get();
      r.sync();
      r.add_event({phase_, r.pass(), begin_ns_, r.now_ns()});
    }
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  Phase phase_;
  bool ended_ = false;
  int64_t begin_ns_ = -1;
};

// One all_to_all_v of the MoE exchange: `exchange()` runs inside an "all-to-all" range and, while
// the recorder is armed, a traffic record (rows sent per peer, row bytes, wall time) is appended.
// `wait()` is called around the exchange when armed, so that an asynchronous exchange (a device
// stream) is timed to its completion; pass a no-op for a blocking one.
template <class Exchange, class Wait>
void recorded_exchange(int layer, Direction dir, const std::vector<int64_t>& sent_rows,
                       int64_t row_bytes, Exchange&& exchange, Wait&& wait) {
  Recorder& rec = Recorder::get();
  const bool armed = rec.armed();
  int64_t t0 = 0;
  if (armed) {
    wait();
    t0 = rec.now_ns();
  }
  {
    Scope scope(Phase::kAllToAll);
    exchange();
  }
  if (!armed) return;
  wait();
  TrafficRecord r;
  r.layer = layer;
  r.direction = dir;
  r.pass = rec.pass();
  r.send_rows = sent_rows;
  r.row_bytes = row_bytes;
  r.seconds = static_cast<double>(rec.now_ns() - t0) * 1e-9;
  rec.add_traffic(std::move(r));
}

}  // namespace dirmoe::trace
