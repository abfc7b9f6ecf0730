// Surviving preemption and faults: SIGTERM/SIGUSR1 turn into a "checkpoint and stop" request that
// all ranks agree on at a step boundary; a watchdog thread ends the job when a step stalls (a lost
// rank or a hung collective, which MPI does not detect by itself); DIRMOE_FAULT injects faults for
// tests; the first non-finite tensor of a step is located for the report.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "runtime/core/tensor.h"

namespace dirmoe {

// Installs SIGTERM/SIGUSR1 handlers that record the signal (SIGXFSZ is ignored so that a file size
// limit surfaces as a write error). Returns the pending signal number, 0 when none.
void install_stop_signal_handlers();
int pending_stop_signal();

// Fault injection for tests, from DIRMOE_FAULT (parsed strictly; unset = none):
//   kill:RANK:STEP   rank RANK sends itself SIGKILL in the middle of step STEP (1-based)
//   hang:RANK:STEP   rank RANK stops making progress there (sleeps forever)
//   nan:FIRST:LAST:TENSOR   the gradient of parameter TENSOR gets a NaN in steps FIRST..LAST
struct FaultPlan {
  enum class Kind { kNone, kKill, kHang, kNan } kind = Kind::kNone;
  int rank = -1;
  int64_t step = -1, last = -1;
  std::string tensor;
  static FaultPlan from_env();  // throws naming DIRMOE_FAULT on a malformed value
  // Called mid-step (after the forward of the first micro-batch) on every rank.
  void maybe_fire(int rank, int64_t step) const;
  // Whether the gradient of `name` is to be poisoned in `step` (1-based).
  bool poisons(const std::string& name, int64_t step1) const {
    return kind == Kind::kNan && step1 >= step && step1 <= last && name == tensor;
  }
};

// Ends the job (std::_Exit(code) after a message on stderr) when no heartbeat arrives for
// `timeout_s` seconds; 0 disables it. The MPI launcher then ends the other ranks.
class Watchdog {
 public:
  Watchdog(double timeout_s, int rank);
  ~Watchdog();
  void beat(int64_t step, const char* phase);  // progress; phase names what runs next
  void pause();                                // e.g. while a checkpoint is written
 private:
  void loop();
  double timeout_s_;
  int rank_;
  std::atomic<int64_t> last_ns_{0};
  std::atomic<int64_t> step_{0};
  std::atomic<const char*> phase_{"start"};
  std::atomic<bool> paused_{true}, stop_{false};
  std::thread thread_;
};

// Collective over `world`: the first non-finite tensor of a step over all ranks, as
// "parameter NAME (layer i)" when a weight is non-finite (forward order), else "gradient of NAME
// (layer i)" in the order backward produces gradients; "" when every tensor is finite (then only
// the loss was). *owner is the rank that holds it.
template <class T>
std::string first_nonfinite(const std::vector<Parameter<T>*>& params, int num_layers,
                            Communicator& world, int* owner);

}  // namespace dirmoe
