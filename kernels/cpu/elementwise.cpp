// Elementwise helpers used around the optimiser and gradient clipping.
#include "kernels/cpu/ops.h"

namespace dirmoe::cpu {

template <class T>
double sum_squares(const T* x, int64_t n) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int j = 0; j < 4; ++j) acc[j] += double(x[i + j]) * double(x[i + j]);
  }
  for (; i < n; ++i) acc[0] += double(x[i]) * double(x[i]);
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

template <class T>
void scale_inplace(T* x, int64_t n, double s) {
  const T st = T(s);
  for (int64_t i = 0; i < n; ++i) x[i] *= st;
}

template <class T>
void add_inplace(T* y, const T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

template double sum_squares<float>(const float*, int64_t);
template double sum_squares<double>(const double*, int64_t);
template void scale_inplace<float>(float*, int64_t, double);
template void scale_inplace<double>(double*, int64_t, double);
template void add_inplace<float>(float*, const float*, int64_t);
template void add_inplace<double>(double*, const double*, int64_t);

}  // namespace dirmoe::cpu
