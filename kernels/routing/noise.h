// Philox keys of the routers' random draws as a plain value both backends hold: every draw is a
// pure function of (seed, step, layer, global token, expert, purpose, attempt), so EP=N equals
// EP=1 and a kernel reproduces the CPU router's draws bit for bit.
#pragma once

#include <cstdint>

#include "runtime/core/hd.h"
#include "runtime/core/philox.h"

namespace dirmoe {

enum class NoisePurpose : uint32_t {
  kGate = 1,        // DirMoE logistic gate noise
  kGamma = 2,       // DirMoE Gamma draws (one Philox block per attempt)
  kSubset = 3,      // ProbMoE inclusion uniforms
  kSubsetSize = 4,  // ProbMoE Dynamic-k size uniform
};

namespace routing {

// NOTE: counter layout (i0, i1, i2, stream) = (global token bits 0-31, expert | attempt << 16,
// step, token bits 32-43 << 20 | layer << 4 | purpose); the key is the seed xor a router constant,
// so router draws never coincide with parameter initialisation draws. Experts < 65536,
// layers < 65536, attempts < 65536, global tokens < 2^44.
struct NoiseKey {
  uint64_t seed = 0;  // already xor-ed with kRouterSeedSalt
  uint32_t step = 0;
  uint32_t layer_purpose = 0;  // layer << 4 | purpose
  int64_t token0 = 0;          // global index of local token 0

  static constexpr uint64_t kRouterSeedSalt = 0x7A3C5E9B1D2F4861ull;
  static NoiseKey make(uint64_t seed, int64_t step, int layer, int64_t global_token0,
                       NoisePurpose purpose) {
    NoiseKey k;
    k.seed = seed ^ kRouterSeedSalt;
    k.step = static_cast<uint32_t>(step);
    k.layer_purpose =
        (static_cast<uint32_t>(layer) & 0xFFFFu) << 4 | (static_cast<uint32_t>(purpose) & 0xFu);
    k.token0 = global_token0;
    return k;
  }

  // Philox block for local token t (global index token0 + t), expert e, attempt a.
  DIRMOE_HD Philox4 block(int64_t t, int e, uint32_t attempt = 0) const {
    const uint64_t g = static_cast<uint64_t>(token0 + t);
    PhiloxStream s{seed, static_cast<uint32_t>((g >> 32) & 0xFFFu) << 20 | layer_purpose};
    return s.at(static_cast<uint32_t>(g), (static_cast<uint32_t>(e) & 0xFFFFu) | attempt << 16,
                step);
  }
  // Uniform in (0, 1) with 53 random bits.
  DIRMOE_HD double uniform(int64_t t, int e, uint32_t attempt = 0) const {
    const Philox4 r = block(t, e, attempt);
    return uniform53(r.v[0], r.v[1]);
  }
};

// The Gamma sampler's draw for (token, expert): a functor so kernels can pass it by value.
struct GammaDraw {
  NoiseKey key;
  int64_t t;
  int e;
  DIRMOE_HD Philox4 operator()(uint32_t attempt) const { return key.block(t, e, attempt); }
};

}  // namespace routing
}  // namespace dirmoe
