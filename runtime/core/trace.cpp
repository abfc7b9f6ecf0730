// The process-wide profiling recorder (see trace.h).
#include "runtime/core/trace.h"

namespace dirmoe::trace {

const char* phase_name(Phase p) {
  switch (p) {
    case Phase::kStep:
      return "step";
    case Phase::kAttention:
      return "attention";
    case Phase::kRouter:
      return "router";
    case Phase::kPermute:
      return "permute";
    case Phase::kAllToAll:
      return "all-to-all";
    case Phase::kExperts:
      return "experts";
    case Phase::kCombine:
      return "combine";
    case Phase::kOptimizer:
      return "optimizer";
    case Phase::kCount:
      break;
  }
  return "?";
}

Recorder& Recorder::get() {
  static Recorder recorder;
  return recorder;
}

void Recorder::set_epoch() { epoch_ = std::chrono::steady_clock::now(); }

}  // namespace dirmoe::trace
