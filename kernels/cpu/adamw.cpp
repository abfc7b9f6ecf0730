// AdamW with PyTorch semantics (decoupled weight decay, bias-corrected moments); math in double.
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
  for (int64_t i = 0; i < n; ++i) {
    const double g = double(grad[i]);
    const double mi = b1 * double(m[i]) + (1.0 - b1) * g;
    const double vi = b2 * double(v[i]) + (1.0 - b2) * g * g;
    m[i] = T(mi);
    v[i] = T(vi);
    const double update = (mi / bc1) / (std::sqrt(vi / bc2) + p.eps);
    param[i] = T(double(param[i]) * decay - p.lr * update);
  }
}

template void adamw_update<float>(float*, const float*, float*, float*, int64_t,
                                  const AdamWParams&);
template void adamw_update<double>(double*, const double*, double*, double*, int64_t,
                                   const AdamWParams&);

}  // namespace dirmoe::cpu
