// Scalar math for the shared router headers: one overload set for float and double that resolves
// to the C library on the host and to CUDA's device functions in kernels, so a DIRMOE_HD function
// templated on the scalar calls the same routine on both backends.
#pragma once

#include <cmath>

#include "runtime/core/hd.h"

namespace dirmoe::routing {

DIRMOE_HD double r_exp(double x) { return ::exp(x); }
DIRMOE_HD float r_exp(float x) { return ::expf(x); }
DIRMOE_HD double r_log(double x) { return ::log(x); }
DIRMOE_HD float r_log(float x) { return ::logf(x); }
DIRMOE_HD double r_log1p(double x) { return ::log1p(x); }
DIRMOE_HD float r_log1p(float x) { return ::log1pf(x); }
DIRMOE_HD double r_expm1(double x) { return ::expm1(x); }
DIRMOE_HD float r_expm1(float x) { return ::expm1f(x); }
DIRMOE_HD double r_sqrt(double x) { return ::sqrt(x); }
DIRMOE_HD float r_sqrt(float x) { return ::sqrtf(x); }
DIRMOE_HD double r_cos(double x) { return ::cos(x); }
DIRMOE_HD float r_cos(float x) { return ::cosf(x); }
DIRMOE_HD double r_abs(double x) { return ::fabs(x); }
DIRMOE_HD float r_abs(float x) { return ::fabsf(x); }
DIRMOE_HD double r_lgamma(double x) { return ::lgamma(x); }
DIRMOE_HD float r_lgamma(float x) { return ::lgammaf(x); }
template <class S>
DIRMOE_HD S r_max(S a, S b) {
  return a < b ? b : a;
}
template <class S>
DIRMOE_HD S r_min(S a, S b) {
  return b < a ? b : a;
}
template <class S>
DIRMOE_HD bool r_isfinite(S x) {
#if defined(__CUDA_ARCH__)
  return isfinite(x);
#else
  return std::isfinite(x);
#endif
}
template <class S>
DIRMOE_HD S r_inf() {
  return static_cast<S>(HUGE_VAL);
}

}  // namespace dirmoe::routing
