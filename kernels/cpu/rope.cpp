// Rotary position embedding, Hugging Face rotate_half layout: element i pairs with i + hd/2.
// Angles are computed in double; backward applies the inverse (transposed) rotation.
#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"
#include "runtime/core/error.h"

namespace dirmoe::cpu {
namespace {

// sign = +1 rotates by +angle (forward), -1 by -angle (backward).
template <class T>
void rope_rotate(T* x, int64_t B, int64_t S, int64_t H, int64_t hd, double base, double sign) {
  DIRMOE_CHECK(hd > 0 && hd % 2 == 0, "RoPE needs an even head dim, got ", hd);
  const int64_t half = hd / 2;
  std::vector<double> inv_freq(half);  // (hd/2)
  for (int64_t i = 0; i < half; ++i) {
    inv_freq[i] = std::pow(base, -2.0 * double(i) / double(hd));
  }
  std::vector<T> cos_s(half), sin_s(half);  // (hd/2) for the current position
  for (int64_t s = 0; s < S; ++s) {
    for (int64_t i = 0; i < half; ++i) {
      const double a = double(s) * inv_freq[i];
      cos_s[i] = T(std::cos(a));
      sin_s[i] = T(sign * std::sin(a));
    }
    for (int64_t b = 0; b < B; ++b) {
      T* xs = x + (b * S + s) * H * hd;  // (H, hd)
      for (int64_t h = 0; h < H; ++h) {
        T* lo = xs + h * hd;
        T* hi = lo + half;
        for (int64_t i = 0; i < half; ++i) {
          const T x1 = lo[i], x2 = hi[i];
          lo[i] = x1 * cos_s[i] - x2 * sin_s[i];
          hi[i] = x2 * cos_s[i] + x1 * sin_s[i];
        }
      }
    }
  }
}

}  // namespace

template <class T>
void rope_forward(T* x, int64_t B, int64_t S, int64_t H, int64_t hd, double base) {
  rope_rotate(x, B, S, H, hd, base, 1.0);
}

template <class T>
void rope_backward(T* dx, int64_t B, int64_t S, int64_t H, int64_t hd, double base) {
  rope_rotate(dx, B, S, H, hd, base, -1.0);
}

template void rope_forward<float>(float*, int64_t, int64_t, int64_t, int64_t, double);
template void rope_forward<double>(double*, int64_t, int64_t, int64_t, int64_t, double);
template void rope_backward<float>(float*, int64_t, int64_t, int64_t, int64_t, double);
template void rope_backward<double>(double*, int64_t, int64_t, int64_t, int64_t, double);

}  // namespace dirmoe::cpu
