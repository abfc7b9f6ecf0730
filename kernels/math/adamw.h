// AdamW per element (PyTorch semantics: decoupled weight decay, bias-corrected moments), written
// once for both backends: kernels/cpu/adamw.cpp calls it in a loop, the CUDA kernels per thread.
// The per-step coefficients are computed in double on the host, then rounded to T.
#pragma once

#include <cmath>
#include <cstdint>

#include "runtime/core/hd.h"

namespace dirmoe::math {

template <class T>
struct AdamWCoeffs {
  T b1, b2, ob1, ob2;  // beta1, beta2, 1 - beta1, 1 - beta2
  T decay;             // 1 - lr * weight_decay (1 for a tensor without decay)
  T step_size;         // lr / (1 - beta1^t)
  T inv_sqrt_bc2;      // 1 / sqrt(1 - beta2^t)
  T eps;
};

// Host only (std::pow in double). step is 1-based.
template <class T>
inline AdamWCoeffs<T> adamw_coeffs(double lr, double beta1, double beta2, double eps,
                                   double weight_decay, int64_t step) {
  const double bc1 = 1.0 - std::pow(beta1, double(step));
  const double bc2 = 1.0 - std::pow(beta2, double(step));
  return {T(beta1),
          T(beta2),
          T(1.0 - beta1),
          T(1.0 - beta2),
          T(1.0 - lr * weight_decay),
          T(lr / bc1),
          T(1.0 / std::sqrt(bc2)),
          T(eps)};
}

// One element: m, v and p updated in place from the gradient g.
template <class T>
DIRMOE_HD void adamw_element(T& p, T g, T& m, T& v, const AdamWCoeffs<T>& c) {
  using std::sqrt;
  m = c.b1 * m + c.ob1 * g;
  v = c.b2 * v + c.ob2 * g * g;
  p = p * c.decay - c.step_size * m / (sqrt(v) * c.inv_sqrt_bc2 + c.eps);
}

}  // namespace dirmoe::math
