// Shared helpers of the GPU tests: clean skipping without a GPU, the per-dtype tolerance tables,
// sentinel-guarded device outputs (CUB style: unwritten or overrun elements are caught), host
// conversions and comparisons that print the worst absolute and relative error of every check.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cuda/device_buffer.h"

namespace dirmoe::cuda::testing {

using bf16 = __nv_bfloat16;

// No driver or no device (cudaGetDeviceCount failing or returning 0) means "no GPU", not a crash.
inline bool gpu_available() {
  static const bool available = [] {
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      return false;
    }
    return n > 0;
  }();
  return available;
}

#define DIRMOE_SKIP_WITHOUT_GPU()                                                    \
  do {                                                                               \
    if (!::dirmoe::cuda::testing::gpu_available()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

// ---- tolerances: |got - ref| <= atol + rtol * |ref|, one table per dtype ----------------------
enum class Op {
  kEmbedding,
  kRmsNorm,
  kRope,
  kAttention,
  kLinear,
  kSwiglu,
  kCrossEntropy,
  kAdamW,
  kMoe,
  kRouter,      // router outputs after the fp32 logits GEMM (probabilities, weights, loss terms)
  kRouterMath,  // router kernels on the CPU's own logits: double math, libm last-bit differences
  kCount
};

struct Tol {
  double atol, rtol;
};

// fp32 kernels against the double reference: differences come from fp32 arithmetic order only.
inline constexpr Tol kF32Tol[] = {
    /* kEmbedding    */ {0.0, 0.0},
    /* kRmsNorm      */ {1e-5, 1e-5},
    /* kRope         */ {1e-6, 1e-5},
    /* kAttention    */ {1e-4, 1e-3},
    /* kLinear       */ {2e-5, 1e-4},
    /* kSwiglu       */ {1e-6, 1e-5},
    /* kCrossEntropy */ {2e-5, 1e-5},
    /* kAdamW        */ {1e-6, 1e-5},
    /* kMoe          */ {1e-5, 1e-5},
    /* kRouter       */ {2e-5, 1e-4},
    /* kRouterMath   */ {1e-7, 1e-6},
};
// bf16 activations (8 significant bits) with fp32 accumulation: the output rounding dominates.
inline constexpr Tol kBf16Tol[] = {
    /* kEmbedding    */ {0.0, 0.0},
    /* kRmsNorm      */ {1e-2, 1e-2},
    /* kRope         */ {1e-2, 1e-2},
    /* kAttention    */ {2e-2, 2e-2},
    /* kLinear       */ {2e-2, 2e-2},
    /* kSwiglu       */ {1e-2, 1e-2},
    /* kCrossEntropy */ {2e-3, 1e-2},
    /* kAdamW        */ {1e-6, 1e-5},
    /* kMoe          */ {1e-2, 1e-2},
    /* kRouter       */ {2e-5, 1e-4},  // the router runs fp32 on the bf16 input's exact values
    /* kRouterMath   */ {1e-7, 1e-6},
};
static_assert(sizeof(kF32Tol) / sizeof(Tol) == static_cast<size_t>(Op::kCount));
static_assert(sizeof(kBf16Tol) / sizeof(Tol) == static_cast<size_t>(Op::kCount));

template <class T>
Tol tolerance(Op op) {
  return std::is_same_v<T, float> ? kF32Tol[static_cast<int>(op)] : kBf16Tol[static_cast<int>(op)];
}

template <class T>
const char* dtype_label() {
  return std::is_same_v<T, float> ? "f32" : "bf16";
}

// ---- host data ---------------------------------------------------------------------------------
inline double to_double(float x) { return x; }
inline double to_double(bf16 x) { return static_cast<double>(__bfloat162float(x)); }
template <class T>
T from_double(double x) {
  if constexpr (std::is_same_v<T, float>) {
    return static_cast<float>(x);
  } else {
    return __float2bfloat16_rn(static_cast<float>(x));
  }
}

template <class T>
std::vector<T> convert_to(const std::vector<double>& x) {
  std::vector<T> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = from_double<T>(x[i]);
  return y;
}
template <class T>
std::vector<double> to_doubles(const std::vector<T>& x) {
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = to_double(x[i]);
  return y;
}

// Values exactly representable in T, so the double reference sees the GPU's inputs.
template <class T>
std::vector<double> representable(std::vector<double> x) {
  for (auto& e : x) e = to_double(from_double<T>(e));
  return x;
}

inline std::vector<double> randn(int64_t n, uint64_t seed, double stddev = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, stddev);
  std::vector<double> x(static_cast<size_t>(n));
  for (auto& e : x) e = dist(rng);
  return x;
}

inline std::vector<double> uniform(int64_t n, uint64_t seed, double lo, double hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> x(static_cast<size_t>(n));
  for (auto& e : x) e = dist(rng);
  return x;
}

template <class T>
DeviceBuffer<T> to_device(const std::vector<T>& h) {
  DeviceBuffer<T> d;
  d.upload(h);
  return d;
}
template <class T>
DeviceBuffer<T> to_device_as(const std::vector<double>& h) {
  return to_device(convert_to<T>(h));
}

// ---- sentinel-guarded outputs ------------------------------------------------------------------
// n elements plus kGuard trailing elements, every byte set to `byte` (0xFF: NaN for floats).
// After the op, values() returns the first n and guard_intact() says nothing was written past them.
template <class T>
class Guarded {
 public:
  static constexpr int64_t kGuard = 64;
  explicit Guarded(int64_t n, int byte = 0xFF) : n_(n), byte_(byte), buf_(n + kGuard) {
    buf_.fill_bytes(byte);
    sync();
  }
  T* data() { return buf_.data(); }
  int64_t size() const { return n_; }
  std::vector<T> values() const {
    sync();
    auto all = buf_.download();
    all.resize(static_cast<size_t>(n_));
    return all;
  }
  std::vector<double> doubles() const { return to_doubles(values()); }
  // Overwrites the first n elements (for accumulate tests), keeping the guard.
  void set(const std::vector<T>& h) {
    DIRMOE_CUDA_CHECK(
        cudaMemcpy(buf_.data(), h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  bool guard_intact() const {
    sync();
    auto all = buf_.download();
    const auto* bytes = reinterpret_cast<const unsigned char*>(all.data() + n_);
    for (size_t i = 0; i < kGuard * sizeof(T); ++i) {
      if (bytes[i] != static_cast<unsigned char>(byte_)) return false;
    }
    return true;
  }

 private:
  static void sync() { DIRMOE_CUDA_CHECK(cudaDeviceSynchronize()); }
  int64_t n_;
  int byte_;
  DeviceBuffer<T> buf_;
};

// ---- comparisons -------------------------------------------------------------------------------
// Prints "[ gpu-cpu ] <what>: n, max abs err, max rel err (over |ref| > atol), bad" and fails on
// any element outside atol + rtol*|ref| (NaN, e.g. an unwritten sentinel, is always outside).
inline void expect_close(const std::string& what, const std::vector<double>& got,
                         const std::vector<double>& ref, Tol tol) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double max_abs = 0.0, max_rel = 0.0;
  int64_t bad = 0, first_bad = -1;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = std::abs(got[i] - ref[i]);
    const bool ok = d <= tol.atol + tol.rtol * std::abs(ref[i]);
    if (!ok) {
      if (first_bad < 0) first_bad = static_cast<int64_t>(i);
      ++bad;
    }
    if (std::isnan(d)) {
      max_abs = INFINITY;
      continue;
    }
    max_abs = std::max(max_abs, d);
    if (std::abs(ref[i]) > std::max(tol.atol, 1e-30))
      max_rel = std::max(max_rel, d / std::abs(ref[i]));
  }
  std::printf(
      "[ gpu-cpu ] %-58s n=%-9zu max_abs=%.2e max_rel=%.2e (atol %.0e, rtol %.0e) bad=%lld\n",
      what.c_str(), ref.size(), max_abs, max_rel, tol.atol, tol.rtol, static_cast<long long>(bad));
  if (bad > 0) {
    ADD_FAILURE() << what << ": " << bad << " of " << ref.size()
                  << " elements outside tolerance; first at " << first_bad << ": got "
                  << got[first_bad] << ", expected " << ref[first_bad];
  }
}

// Integer (or bit-exact) outputs: every element equal.
template <class A, class B>
void expect_exact(const std::string& what, const std::vector<A>& got, const std::vector<B>& ref) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  int64_t bad = 0, first_bad = -1;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!(static_cast<double>(got[i]) == static_cast<double>(ref[i]))) {
      if (first_bad < 0) first_bad = static_cast<int64_t>(i);
      ++bad;
    }
  }
  std::printf("[ gpu-cpu ] %-58s n=%-9zu exact, mismatches=%lld\n", what.c_str(), ref.size(),
              static_cast<long long>(bad));
  if (bad > 0) {
    ADD_FAILURE() << what << ": " << bad << " of " << ref.size() << " elements differ; first at "
                  << first_bad << ": got " << static_cast<double>(got[first_bad]) << ", expected "
                  << static_cast<double>(ref[first_bad]);
  }
}

template <class T>
void expect_guard(const std::string& what, const Guarded<T>& out) {
  EXPECT_TRUE(out.guard_intact()) << what << ": wrote past the end of its output";
}

// Test-name suffix from a case name (gtest allows only [A-Za-z0-9_]).
inline std::string param_name(const std::string& s) {
  std::string r;
  for (char c : s) r += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return r;
}

}  // namespace dirmoe::cuda::testing
