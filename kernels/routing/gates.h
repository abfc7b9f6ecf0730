// Elementwise gate functions of the routers (softplus, sigmoid, binary entropy, the relaxed
// Bernoulli gate with logistic noise), shared by the CPU routers and the CUDA kernels.
#pragma once

#include "kernels/routing/math.h"
#include "runtime/core/hd.h"

namespace dirmoe::routing {

template <class S>
DIRMOE_HD S softplus(S x) {
  return r_max(x, S(0)) + r_log1p(r_exp(-r_abs(x)));
}

template <class S>
DIRMOE_HD S sigmoid(S x) {
  if (x >= 0) return S(1) / (S(1) + r_exp(-x));
  const S e = r_exp(x);
  return e / (S(1) + e);
}

template <class S>
DIRMOE_HD S binary_entropy(S z) {
  S h = 0;
  if (z > 0) h -= z * r_log(z);
  if (z < 1) h -= (1 - z) * r_log1p(-z);
  return h;
}

// Gumbel-sigmoid (binary Concrete) gate: x = (l + log v - log(1 - v)) / tau for a uniform v in
// (0, 1) (no noise when !noisy); z = sigmoid(x) and log z = -softplus(-x), kept in log space so
// that closed gates stay usable in the weights' log-sum-exp.
template <class S>
struct Gate {
  S z;
  S log_z;
};
template <class S>
DIRMOE_HD Gate<S> relaxed_gate(S l, S v, bool noisy, S tau) {
  S x = l;
  if (noisy) x += r_log(v) - r_log1p(-v);
  x /= tau;
  return {sigmoid(x), -softplus(-x)};
}

}  // namespace dirmoe::routing
