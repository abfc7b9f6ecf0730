// Learning-rate schedule: linear warmup from 0, then cosine decay to min_lr at the last step
// (Megatron-LM's "cosine" decay style).
#pragma once

#include <cmath>
#include <cstdint>

namespace dirmoe {

// lr for 0-based step s of `steps`.
inline double lr_at(int64_t s, int64_t steps, double lr, double min_lr, int64_t warmup) {
  if (warmup > 0 && s < warmup) return lr * static_cast<double>(s + 1) / static_cast<double>(warmup);
  int64_t decay_steps = steps - warmup;
  if (decay_steps <= 0) return lr;
  double progress = std::min(1.0, static_cast<double>(s - warmup) / static_cast<double>(decay_steps));
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

}  // namespace dirmoe
