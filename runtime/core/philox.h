// Counter-based Philox4x32-10 (Salmon et al., SC'11; Random123). Every random draw in dirmoe is a
// pure function of (seed, stream, counter), so CPU and GPU, and EP=N and EP=1, see the same numbers.
// NOTE: usable from CUDA device code: keep it header-only, branch-free and free of std:: calls
// that have no device version.
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/core/hd.h"

namespace dirmoe {

struct Philox4 {
  uint32_t v[4];
};

DIRMOE_HD void philox_mulhilo(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

// The Philox4x32 bijection with 10 rounds: counter (c0..c3), key (k0, k1).
DIRMOE_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, lo0, hi1, lo1;
    philox_mulhilo(kM0, c0, &hi0, &lo0);
    philox_mulhilo(kM1, c2, &hi1, &lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += kW0;
    k1 += kW1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Uniform in the open interval (0, 1) from 32 random bits (never 0 or 1, so log(u) is finite).
DIRMOE_HD double uniform_open(uint32_t bits) { return (static_cast<double>(bits) + 0.5) * 0x1p-32; }

// Uniform in (0, 1) with 53 random bits, for samplers that need the resolution.
DIRMOE_HD double uniform53(uint32_t a, uint32_t b) {
  uint64_t x = (static_cast<uint64_t>(a) << 21) ^ static_cast<uint64_t>(b >> 11);
  x &= (uint64_t{1} << 53) - 1;
  return (static_cast<double>(x) + 0.5) * 0x1p-53;
}

// A named random stream: key = seed, counter = (i0, i1, i2, stream). Callers pick indices so that
// each draw has a distinct counter, e.g. (global token, expert, step, layer*16 + purpose).
struct PhiloxStream {
  uint64_t seed = 0;
  uint32_t stream = 0;
  DIRMOE_HD Philox4 at(uint32_t i0, uint32_t i1, uint32_t i2) const {
    return philox4x32_10(i0, i1, i2, stream, static_cast<uint32_t>(seed),
                         static_cast<uint32_t>(seed >> 32));
  }
  // Standard normal by Box-Muller on the first two words; the second pair is unused.
  DIRMOE_HD double normal(uint32_t i0, uint32_t i1, uint32_t i2) const {
    Philox4 r = at(i0, i1, i2);
    double u1 = uniform53(r.v[0], r.v[1]);
    double u2 = uniform53(r.v[2], r.v[3]);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586476925 * u2);
  }
  DIRMOE_HD double uniform(uint32_t i0, uint32_t i1, uint32_t i2) const {
    Philox4 r = at(i0, i1, i2);
    return uniform53(r.v[0], r.v[1]);
  }
};

// 32-bit FNV-1a of a string: stable stream ids from names (parameter initialisation).
inline uint32_t stable_hash32(const char* s) {
  uint32_t h = 2166136261u;
  for (; *s; ++s) h = (h ^ static_cast<uint8_t>(*s)) * 16777619u;
  return h;
}

}  // namespace dirmoe
