// Softmax cross-entropy over a padded vocabulary (only the first V of Vp columns are real).
// NOTE: rows are long (the LM head vocabulary), so the float path uses a branch-free exp that
// the compiler vectorises (max error ~2 ulp) and several independent partial sums.
#include <algorithm>
#include <bit>
#include <cmath>

#include "kernels/cpu/ops.h"
#include "runtime/core/error.h"

namespace dirmoe::cpu {
namespace {

constexpr int kLanes = 8;

// exp(x) for float: x = n ln2 + r with |r| <= ln2/2, degree-7 Taylor for exp(r), 2^n via the
// exponent bits. Inputs below ~-87.3 (where 2^n would leave the normal range) return 0.
inline float exp_fast(float x) {
  constexpr float kLo = -87.3365f, kHi = 88.3762f;
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float xc = x < kLo ? kLo : (x > kHi ? kHi : x);
  const float t = xc * 1.44269504088896341f + kRound;
  const float n = t - kRound;
  const int32_t ni = std::bit_cast<int32_t>(t) - std::bit_cast<int32_t>(kRound);
  float r = xc - n * 0.693145751953125f;
  r = r - n * 1.428606765330187e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float e = p * std::bit_cast<float>((ni + 127) << 23);
  return x < kLo ? 0.0f : e;
}

inline float exp_row(float x) { return exp_fast(x); }
inline double exp_row(double x) { return std::exp(x); }

template <class T>
T row_max(const T* x, int64_t n) {
  T acc[kLanes];
  std::fill_n(acc, kLanes, x[0]);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] = x[i + j] > acc[j] ? x[i + j] : acc[j];
  }
  for (; i < n; ++i) acc[0] = x[i] > acc[0] ? x[i] : acc[0];
  return *std::max_element(acc, acc + kLanes);
}

// sum_i exp(x_i - m), partial sums in T, combined in double.
template <class T>
double row_sum_exp(const T* x, int64_t n, T m) {
  T acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) acc[j] += exp_row(x[i + j] - m);
  }
  for (; i < n; ++i) acc[0] += exp_row(x[i] - m);
  double s = 0.0;
  for (int j = 0; j < kLanes; ++j) s += double(acc[j]);
  return s;
}

void check_shape(int64_t N, int64_t V, int64_t Vp) {
  DIRMOE_CHECK(N >= 0 && V > 0 && V <= Vp, "bad cross-entropy shape N=", N, " V=", V, " Vp=", Vp);
}

void check_target(int32_t tgt, int64_t n, int64_t V) {
  DIRMOE_CHECK(tgt == -1 || (tgt >= 0 && tgt < V), "target ", tgt, " at row ", n,
               " is outside [0, ", V, ") and not -1 (ignored)");
}

}  // namespace

template <class T>
void cross_entropy_forward(T* losses, T* lse, const T* logits, const int32_t* targets, int64_t N,
                           int64_t V, int64_t Vp) {
  check_shape(N, V, Vp);
  for (int64_t n = 0; n < N; ++n) {
    const int32_t tgt = targets[n];
    check_target(tgt, n, V);
    const T* row = logits + n * Vp;  // (Vp), first V real
    const T m = row_max(row, V);
    const T l = T(double(m) + std::log(row_sum_exp(row, V, m)));
    lse[n] = l;
    losses[n] = tgt < 0 ? T(0) : l - row[tgt];
  }
}

template <class T>
void cross_entropy_backward(T* dlogits, const T* logits, const T* lse, const int32_t* targets,
                            double scale, int64_t N, int64_t V, int64_t Vp) {
  check_shape(N, V, Vp);
  const T sc = T(scale);
  for (int64_t n = 0; n < N; ++n) {
    const int32_t tgt = targets[n];
    check_target(tgt, n, V);
    const T* row = logits + n * Vp;  // (Vp)
    T* drow = dlogits + n * Vp;      // (Vp); may alias row
    if (tgt < 0) {
      std::fill_n(drow, Vp, T(0));
      continue;
    }
    const T l = lse[n];
    for (int64_t i = 0; i < V; ++i) drow[i] = sc * exp_row(row[i] - l);
    drow[tgt] -= sc;
    std::fill(drow + V, drow + Vp, T(0));
  }
}

template void cross_entropy_forward<float>(float*, float*, const float*, const int32_t*, int64_t,
                                           int64_t, int64_t);
template void cross_entropy_forward<double>(double*, double*, const double*, const int32_t*,
                                            int64_t, int64_t, int64_t);
template void cross_entropy_backward<float>(float*, const float*, const float*, const int32_t*,
                                            double, int64_t, int64_t, int64_t);
template void cross_entropy_backward<double>(double*, const double*, const double*, const int32_t*,
                                             double, int64_t, int64_t, int64_t);

}  // namespace dirmoe::cpu
