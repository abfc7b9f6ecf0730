// Keys for the routers' random draws (the shared kernels/routing/noise.h key, built from a
// RouterContext): every draw is a pure function of (seed, step, layer, global token, expert,
// purpose, attempt) through the shared Philox4x32-10, so EP=N equals EP=1 and the GPU routers
// reproduce the CPU draws.
#pragma once

#include <cstdint>

#include "kernels/routing/noise.h"
#include "router/router.h"

namespace dirmoe {

class RouterNoise {
 public:
  RouterNoise(const RouterContext& ctx, NoisePurpose purpose)
      : key_(routing::NoiseKey::make(ctx.seed, ctx.step, ctx.layer, ctx.global_token0, purpose)) {}

  // Philox block for local token t (global index token0 + t), expert e, attempt a.
  Philox4 block(int64_t t, int e, uint32_t attempt = 0) const { return key_.block(t, e, attempt); }
  // Uniform in (0, 1) with 53 random bits.
  double uniform(int64_t t, int e, uint32_t attempt = 0) const {
    return key_.uniform(t, e, attempt);
  }
  const routing::NoiseKey& key() const { return key_; }

 private:
  routing::NoiseKey key_;
};

}  // namespace dirmoe
