// Causal grouped-query attention. Per (batch, query head) the score matrix is one GEMM into an
// (S, S) scratch buffer allocated once per call; masked entries are zeroed so P V is a plain GEMM.
// Backward recomputes P from the saved logsumexp.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/ops.h"
#include "runtime/core/error.h"

namespace dirmoe::cpu {
namespace {

void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K, float alpha,
          const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
          int64_t ldc) {
  cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void gemm(CBLAS_TRANSPOSE ta, CBLAS_TRANSPOSE tb, int64_t M, int64_t N, int64_t K, double alpha,
          const double* A, int64_t lda, const double* B, int64_t ldb, double beta, double* C,
          int64_t ldc) {
  cblas_dgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void check_shape(int64_t B, int64_t S, int64_t Hq, int64_t Hkv, int64_t hd) {
  DIRMOE_CHECK(B >= 0 && S >= 0 && hd > 0, "bad attention shape B=", B, " S=", S, " hd=", hd);
  DIRMOE_CHECK(Hq > 0 && Hkv > 0 && Hq % Hkv == 0, "query heads (", Hq,
               ") must be a positive multiple of kv heads (", Hkv, ")");
}

}  // namespace

template <class T>
void attention_forward(T* out, T* lse, const T* q, const T* k, const T* v, int64_t B, int64_t S,
                       int64_t Hq, int64_t Hkv, int64_t hd) {
  check_shape(B, S, Hq, Hkv, hd);
  if (B == 0 || S == 0) return;
  const int64_t group = Hq / Hkv;
  const int64_t ldq = Hq * hd, ldk = Hkv * hd;
  const T scale = T(1.0 / std::sqrt(double(hd)));
  std::vector<T> P(S * S);  // (S, S) scores, then probabilities; row s valid for t <= s
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < Hq; ++h) {
      const T* qh = q + b * S * ldq + h * hd;            // (S, hd), row stride ldq
      const T* kh = k + b * S * ldk + (h / group) * hd;  // (S, hd), row stride ldk
      const T* vh = v + b * S * ldk + (h / group) * hd;  // (S, hd), row stride ldk
      T* oh = out + b * S * ldq + h * hd;                // (S, hd), row stride ldq
      T* lse_h = lse + (b * Hq + h) * S;                 // (S)
      gemm(CblasNoTrans, CblasTrans, S, S, hd, scale, qh, ldq, kh, ldk, T(0), P.data(), S);
      for (int64_t s = 0; s < S; ++s) {
        T* row = P.data() + s * S;
        const T m = *std::max_element(row, row + s + 1);
        T sum = 0;
        for (int64_t t = 0; t <= s; ++t) {
          row[t] = std::exp(row[t] - m);
          sum += row[t];
        }
        const T inv = T(1) / sum;
        for (int64_t t = 0; t <= s; ++t) row[t] *= inv;
        std::fill(row + s + 1, row + S, T(0));
        lse_h[s] = m + std::log(sum);
      }
      gemm(CblasNoTrans, CblasNoTrans, S, hd, S, T(1), P.data(), S, vh, ldk, T(0), oh, ldq);
    }
  }
}

template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* out, const T* lse, int64_t B, int64_t S, int64_t Hq, int64_t Hkv,
                        int64_t hd) {
  check_shape(B, S, Hq, Hkv, hd);
  if (B == 0 || S == 0) return;
  const int64_t group = Hq / Hkv;
  const int64_t ldq = Hq * hd, ldk = Hkv * hd;
  const T scale = T(1.0 / std::sqrt(double(hd)));
  std::fill_n(dk, B * S * ldk, T(0));
  std::fill_n(dv, B * S * ldk, T(0));
  std::vector<T> P(S * S);   // (S, S) probabilities, zero above the diagonal
  std::vector<T> dS(S * S);  // (S, S) dL/dP, then dL/d(unscaled scores)
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t hk = h / group;
      const T* qh = q + b * S * ldq + h * hd;      // (S, hd), row stride ldq
      const T* kh = k + b * S * ldk + hk * hd;     // (S, hd), row stride ldk
      const T* vh = v + b * S * ldk + hk * hd;     // (S, hd), row stride ldk
      const T* oh = out + b * S * ldq + h * hd;    // (S, hd), row stride ldq
      const T* doh = dout + b * S * ldq + h * hd;  // (S, hd), row stride ldq
      T* dqh = dq + b * S * ldq + h * hd;          // (S, hd), row stride ldq
      T* dkh = dk + b * S * ldk + hk * hd;         // (S, hd), row stride ldk
      T* dvh = dv + b * S * ldk + hk * hd;         // (S, hd), row stride ldk
      const T* lse_h = lse + (b * Hq + h) * S;     // (S)
      gemm(CblasNoTrans, CblasTrans, S, S, hd, scale, qh, ldq, kh, ldk, T(0), P.data(), S);
      gemm(CblasNoTrans, CblasTrans, S, S, hd, T(1), doh, ldq, vh, ldk, T(0), dS.data(), S);
      for (int64_t s = 0; s < S; ++s) {
        T* p = P.data() + s * S;
        T* ds = dS.data() + s * S;
        const T* o = oh + s * ldq;
        const T* g = doh + s * ldq;
        T D = 0;  // sum_t p_t dp_t = <dout_s, out_s>
        for (int64_t j = 0; j < hd; ++j) D += g[j] * o[j];
        const T l = lse_h[s];
        for (int64_t t = 0; t <= s; ++t) {
          p[t] = std::exp(p[t] - l);
          ds[t] = p[t] * (ds[t] - D) * scale;
        }
        std::fill(p + s + 1, p + S, T(0));
        std::fill(ds + s + 1, ds + S, T(0));
      }
      gemm(CblasNoTrans, CblasNoTrans, S, hd, S, T(1), dS.data(), S, kh, ldk, T(0), dqh, ldq);
      gemm(CblasTrans, CblasNoTrans, S, hd, S, T(1), dS.data(), S, qh, ldq, T(1), dkh, ldk);
      gemm(CblasTrans, CblasNoTrans, S, hd, S, T(1), P.data(), S, doh, ldq, T(1), dvh, ldk);
    }
  }
}

template void attention_forward<float>(float*, float*, const float*, const float*, const float*,
                                       int64_t, int64_t, int64_t, int64_t, int64_t);
template void attention_forward<double>(double*, double*, const double*, const double*,
                                        const double*, int64_t, int64_t, int64_t, int64_t, int64_t);
template void attention_backward<float>(float*, float*, float*, const float*, const float*,
                                        const float*, const float*, const float*, const float*,
                                        int64_t, int64_t, int64_t, int64_t, int64_t);
template void attention_backward<double>(double*, double*, double*, const double*, const double*,
                                         const double*, const double*, const double*, const double*,
                                         int64_t, int64_t, int64_t, int64_t, int64_t);

}  // namespace dirmoe::cpu
