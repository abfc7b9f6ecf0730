// SwiGLU gate: out = silu(gate) * up, elementwise.
#include <cmath>

#include "kernels/cpu/ops.h"

namespace dirmoe::cpu {

template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T a = gate[i];
    const T sig = T(1) / (T(1) + std::exp(-a));
    out[i] = a * sig * up[i];
  }
}

template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T a = gate[i], u = up[i], g = dout[i];
    const T sig = T(1) / (T(1) + std::exp(-a));
    const T silu = a * sig;
    dup[i] = g * silu;
    dgate[i] = g * u * sig * (T(1) + a * (T(1) - sig));
  }
}

template void swiglu_forward<float>(float*, const float*, const float*, int64_t);
template void swiglu_forward<double>(double*, const double*, const double*, int64_t);
template void swiglu_backward<float>(float*, float*, const float*, const float*, const float*,
                                     int64_t);
template void swiglu_backward<double>(double*, double*, const double*, const double*, const double*,
                                      int64_t);

}  // namespace dirmoe::cpu
