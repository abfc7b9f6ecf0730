// RMSNorm forward/backward; row statistics accumulated in double.
#include <cmath>

#include "kernels/cpu/ops.h"

namespace dirmoe::cpu {

template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int64_t N, int64_t d, double eps) {
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * d;  // (d)
    T* yr = out + n * d;      // (d)
    double ss = 0.0;
    for (int64_t j = 0; j < d; ++j) ss += double(xr[j]) * double(xr[j]);
    const double r = 1.0 / std::sqrt(ss / double(d) + eps);
    rstd[n] = T(r);
    for (int64_t j = 0; j < d; ++j) yr[j] = T(double(xr[j]) * r) * w[j];
  }
}

template <class T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int64_t N,
                      int64_t d, bool accumulate_dx) {
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * d;     // (d)
    const T* gr = dout + n * d;  // (d)
    T* dxr = dx + n * d;         // (d)
    const double r = double(rstd[n]);
    double gwx = 0.0;  // sum_j dout_j * w_j * x_j
    for (int64_t j = 0; j < d; ++j) {
      gwx += double(gr[j]) * double(w[j]) * double(xr[j]);
      dw[j] += T(double(gr[j]) * double(xr[j]) * r);
    }
    const double c = gwx * r * r * r / double(d);
    for (int64_t j = 0; j < d; ++j) {
      const T g = T(r * double(gr[j]) * double(w[j]) - c * double(xr[j]));
      dxr[j] = accumulate_dx ? dxr[j] + g : g;
    }
  }
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int64_t, int64_t,
                                     double);
template void rmsnorm_forward<double>(double*, double*, const double*, const double*, int64_t,
                                      int64_t, double);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*,
                                      const float*, int64_t, int64_t, bool);
template void rmsnorm_backward<double>(double*, double*, const double*, const double*,
                                       const double*, const double*, int64_t, int64_t, bool);

}  // namespace dirmoe::cpu
