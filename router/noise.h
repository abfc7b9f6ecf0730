// Keys for the routers' random draws: every draw is a pure function of (seed, step, layer, global
// token, expert, purpose, attempt) through the shared Philox4x32-10, so EP=N equals EP=1 and a GPU
// implementation can reproduce the CPU draws.
#pragma once

#include <cstdint>

#include "router/router.h"
#include "runtime/core/philox.h"

namespace dirmoe {

enum class NoisePurpose : uint32_t {
  kGate = 1,        // DirMoE logistic gate noise
  kGamma = 2,       // DirMoE Gamma draws (one Philox block per attempt)
  kSubset = 3,      // ProbMoE inclusion uniforms
  kSubsetSize = 4,  // ProbMoE Dynamic-k size uniform
};

// NOTE: counter layout (i0, i1, i2, stream) = (global token bits 0-31, expert | attempt << 16,
// step, token bits 32-43 << 20 | layer << 4 | purpose); the key is the seed xor a router constant,
// so router draws never coincide with parameter initialisation draws. Experts < 65536,
// layers < 65536, attempts < 65536, global tokens < 2^44.
class RouterNoise {
 public:
  RouterNoise(const RouterContext& ctx, NoisePurpose purpose)
      : seed_(ctx.seed ^ 0x7A3C5E9B1D2F4861ull),
        step_(static_cast<uint32_t>(ctx.step)),
        layer_purpose_((static_cast<uint32_t>(ctx.layer) & 0xFFFFu) << 4 |
                       (static_cast<uint32_t>(purpose) & 0xFu)),
        token0_(ctx.global_token0) {}

  // Philox block for local token t (global index token0 + t), expert e, attempt a.
  Philox4 block(int64_t t, int e, uint32_t attempt = 0) const {
    const uint64_t g = static_cast<uint64_t>(token0_ + t);
    PhiloxStream s{seed_, static_cast<uint32_t>((g >> 32) & 0xFFFu) << 20 | layer_purpose_};
    return s.at(static_cast<uint32_t>(g), (static_cast<uint32_t>(e) & 0xFFFFu) | attempt << 16,
                step_);
  }
  // Uniform in (0, 1) with 53 random bits.
  double uniform(int64_t t, int e, uint32_t attempt = 0) const {
    const Philox4 r = block(t, e, attempt);
    return uniform53(r.v[0], r.v[1]);
  }

 private:
  uint64_t seed_;
  uint32_t step_;
  uint32_t layer_purpose_;
  int64_t token0_;
};

}  // namespace dirmoe
