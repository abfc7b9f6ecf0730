// AdamW with PyTorch semantics (decoupled weight decay, bias-corrected moments). The per-step
// coefficients are computed in double; the element loop runs in T so that it vectorises.
#include <cmath>

#include "kernels/cpu/ops.h"
#include "runtime/core/error.h"

namespace dirmoe::cpu {

template <class T>
void adamw_update(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWParams& p) {
  DIRMOE_CHECK(p.step >= 1, "AdamW step is 1-based, got ", p.step);
  const double b1 = p.beta1, b2 = p.beta2;
  const double decay = 1.0 - p.lr * p.weight_decay;
  const double bc1 = 1.0 - std::pow(b1, double(p.step));
  const double bc2 = 1.0 - std::pow(b2, double(p.step));
  const T tb1 = T(b1), tb2 = T(b2), ob1 = T(1.0 - b1), ob2 = T(1.0 - b2);
  const T tdecay = T(decay), step_size = T(p.lr / bc1), inv_sqrt_bc2 = T(1.0 / std::sqrt(bc2));
  const T eps = T(p.eps);
  for (int64_t i = 0; i < n; ++i) {
    const T g = grad[i];
    const T mi = tb1 * m[i] + ob1 * g;
    const T vi = tb2 * v[i] + ob2 * g * g;
    m[i] = mi;
    v[i] = vi;
    param[i] = param[i] * tdecay - step_size * mi / (std::sqrt(vi) * inv_sqrt_bc2 + eps);
  }
}

template void adamw_update<float>(float*, const float*, float*, float*, int64_t,
                                  const AdamWParams&);
template void adamw_update<double>(double*, const double*, double*, double*, int64_t,
                                   const AdamWParams&);

}  // namespace dirmoe::cpu
