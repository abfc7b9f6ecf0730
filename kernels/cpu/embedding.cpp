// Token embedding lookup and its scatter-add backward.
#include <algorithm>

#include "kernels/cpu/ops.h"
#include "runtime/core/error.h"

namespace dirmoe::cpu {

template <class T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, int64_t N, int64_t d,
                       int64_t V) {
  for (int64_t n = 0; n < N; ++n) {
    const int32_t tok = tokens[n];
    DIRMOE_CHECK(tok >= 0 && tok < V, "token id ", tok, " at position ", n,
                 " is outside the vocabulary [0, ", V, ")");
    std::copy_n(table + tok * d, d, out + n * d);
  }
}

template <class T>
void embedding_backward(T* dtable, const int32_t* tokens, const T* dout, int64_t N, int64_t d) {
  for (int64_t n = 0; n < N; ++n) {
    const int32_t tok = tokens[n];
    DIRMOE_CHECK(tok >= 0, "token id ", tok, " at position ", n, " is negative");
    T* row = dtable + tok * d;  // (d)
    const T* g = dout + n * d;  // (d)
    for (int64_t j = 0; j < d; ++j) row[j] += g[j];
  }
}

template void embedding_forward<float>(float*, const int32_t*, const float*, int64_t, int64_t,
                                       int64_t);
template void embedding_forward<double>(double*, const int32_t*, const double*, int64_t, int64_t,
                                        int64_t);
template void embedding_backward<float>(float*, const int32_t*, const float*, int64_t, int64_t);
template void embedding_backward<double>(double*, const int32_t*, const double*, int64_t, int64_t);

}  // namespace dirmoe::cpu
