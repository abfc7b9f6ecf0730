// AdamW with PyTorch semantics (decoupled weight decay, bias-corrected moments): the per-element
// math of kernels/math/adamw.h (shared with the CUDA kernels) in a loop over T.
#include "kernels/math/adamw.h"

#include <cmath>

#include "kernels/cpu/ops.h"
#include "runtime/core/error.h"

namespace dirmoe::cpu {

template <class T>
void adamw_update(T* param, const T* grad, T* m, T* v, int64_t n, const AdamWParams& p) {
  DIRMOE_CHECK(p.step >= 1, "AdamW step is 1-based, got ", p.step);
  const math::AdamWCoeffs<T> c =
      math::adamw_coeffs<T>(p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, p.step);
  for (int64_t i = 0; i < n; ++i) math::adamw_element(param[i], grad[i], m[i], v[i], c);
}

template void adamw_update<float>(float*, const float*, float*, float*, int64_t,
                                  const AdamWParams&);
template void adamw_update<double>(double*, const double*, double*, double*, int64_t,
                                   const AdamWParams&);

}  // namespace dirmoe::cpu
