// YAML `monitor:` and `profile:` blocks: load-asymmetry warnings and all-to-all profiling.
#pragma once

#include <cstdint>

namespace dirmoe {

struct MonitorConfig {
  double max_over_mean = 2.0;  // warn when a layer's expert or rank max/mean load exceeds this ...
  int64_t patience = 20;       // ... for this many consecutive steps (one warning per episode)
  int64_t dead_window = 50;    // an expert with no tokens for this many steps is dead
};

struct ProfileConfig {
  int64_t every = 10;  // profile steps every, 2*every, ...; 0 = only the range below
  int64_t first = 0;   // profile.steps: [first, last] (1-based, inclusive); 0 = none
  int64_t last = 0;
  bool trace = true;  // write RUN_DIR/trace.json (Chrome trace / Perfetto)

  bool enabled() const { return every > 0 || first > 0; }
  bool profiles(int64_t step) const {  // step is 1-based
    return (every > 0 && step % every == 0) || (first > 0 && step >= first && step <= last);
  }
};

}  // namespace dirmoe
