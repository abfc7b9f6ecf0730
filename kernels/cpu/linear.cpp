// Linear layer y = x W^T through CBLAS (row-major), plus the BLAS thread-count knob.
#include <cblas.h>

#include <algorithm>

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

// C[M,N] = (beta ? C : 0) + A B for an empty inner dimension.
template <class T>
void empty_k(T* C, int64_t M, int64_t N, bool accumulate) {
  if (!accumulate) std::fill_n(C, M * N, T(0));
}

}  // namespace

template <class T>
void linear_forward(T* y, const T* x, const T* W, int64_t N, int64_t in, int64_t out,
                    bool accumulate) {
  DIRMOE_CHECK(N >= 0 && in >= 0 && out >= 0, "bad linear shape N=", N, " in=", in, " out=", out);
  if (N == 0 || out == 0) return;
  if (in == 0) return empty_k(y, N, out, accumulate);
  gemm(CblasNoTrans, CblasTrans, N, out, in, T(1), x, in, W, in, accumulate ? T(1) : T(0), y, out);
}

template <class T>
void linear_backward(T* dx, T* dW, const T* dy, const T* x, const T* W, int64_t N, int64_t in,
                     int64_t out, bool accumulate_dx) {
  DIRMOE_CHECK(N >= 0 && in >= 0 && out >= 0, "bad linear shape N=", N, " in=", in, " out=", out);
  if (N == 0 || in == 0) return;
  if (dx != nullptr) {
    if (out == 0) {
      empty_k(dx, N, in, accumulate_dx);
    } else {
      gemm(CblasNoTrans, CblasNoTrans, N, in, out, T(1), dy, out, W, in,
           accumulate_dx ? T(1) : T(0), dx, in);
    }
  }
  if (dW != nullptr && out > 0) {
    gemm(CblasTrans, CblasNoTrans, out, in, N, T(1), dy, out, x, in, T(1), dW, in);
  }
}

void set_blas_threads(int n) {
  DIRMOE_CHECK(n >= 1, "BLAS thread count must be >= 1, got ", n);
  openblas_set_num_threads(n);
}

template void linear_forward<float>(float*, const float*, const float*, int64_t, int64_t, int64_t,
                                    bool);
template void linear_forward<double>(double*, const double*, const double*, int64_t, int64_t,
                                     int64_t, bool);
template void linear_backward<float>(float*, float*, const float*, const float*, const float*,
                                     int64_t, int64_t, int64_t, bool);
template void linear_backward<double>(double*, double*, const double*, const double*, const double*,
                                      int64_t, int64_t, int64_t, bool);

}  // namespace dirmoe::cpu
