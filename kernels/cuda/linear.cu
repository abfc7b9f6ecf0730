// Linear layer through cuBLAS (cublasGemmEx, fp32 accumulation). Row-major y = x W^T is the
// column-major product y^T = W^T-view(op T) x^T-view, so no transposes are materialised.
// NOTE: no kernel of our own here except the empty-inner-dimension fill (cudaMemsetAsync).
#include <limits>
#include <type_traits>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/common.cuh"

namespace dirmoe::cuda {
namespace {

template <class T>
constexpr cudaDataType_t cuda_type() {
  if constexpr (std::is_same_v<T, float>) {
    return CUDA_R_32F;
  } else {
    return CUDA_R_16BF;
  }
}

int as_int(int64_t v, const char* what) {
  DIRMOE_CHECK(v <= std::numeric_limits<int>::max(), "linear: ", what, " = ", v,
               " exceeds cuBLAS's 32-bit sizes");
  return static_cast<int>(v);
}

// Column-major C[m,n] = alpha op(A) op(B) + beta C, A/B of type TA, C of type TC, fp32 compute.
template <class TA, class TC>
void gemm(cublasHandle_t handle, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n,
          int64_t k, const TA* A, int64_t lda, const TA* B, int64_t ldb, float beta, TC* C,
          int64_t ldc) {
  const float alpha = 1.0f;
  DIRMOE_CUBLAS_CHECK(cublasGemmEx(handle, ta, tb, as_int(m, "m"), as_int(n, "n"), as_int(k, "k"),
                                   &alpha, A, cuda_type<TA>(), as_int(lda, "lda"), B,
                                   cuda_type<TA>(), as_int(ldb, "ldb"), &beta, C, cuda_type<TC>(),
                                   as_int(ldc, "ldc"), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
}

// NOTE: cublasSetStream drops a workspace given by cublasSetWorkspace, so the handle is rebound
// only when the caller passes a stream other than the one it was bound to at init.
void bind_stream(cublasHandle_t handle, cudaStream_t stream) {
  cudaStream_t current = nullptr;
  DIRMOE_CUBLAS_CHECK(cublasGetStream(handle, &current));
  if (current != stream) DIRMOE_CUBLAS_CHECK(cublasSetStream(handle, stream));
}

void check_shape(int64_t N, int64_t in, int64_t out) {
  DIRMOE_CHECK(N >= 0 && in >= 0 && out >= 0, "bad linear shape N=", N, " in=", in, " out=", out);
}

}  // namespace

template <class T>
void linear_forward(cublasHandle_t handle, T* y, const T* x, const T* W, int64_t N, int64_t in,
                    int64_t out, bool accumulate, cudaStream_t stream) {
  check_shape(N, in, out);
  if (N == 0 || out == 0) return;
  detail::NvtxRange range("linear_forward");
  if (in == 0) {
    if (!accumulate) DIRMOE_CUDA_CHECK(cudaMemsetAsync(y, 0, sizeof(T) * N * out, stream));
    return;
  }
  bind_stream(handle, stream);
  // y^T[out, N] = W(op T, stored [in, out] column-major) x^T[in, N]
  gemm<T, T>(handle, CUBLAS_OP_T, CUBLAS_OP_N, out, N, in, W, in, x, in, accumulate ? 1.f : 0.f, y,
             out);
  if (DIRMOE_CUDA_SYNC_AFTER_OPS) DIRMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
}

template <class T>
void linear_backward(cublasHandle_t handle, T* dx, float* dW, const T* dy, const T* x, const T* W,
                     int64_t N, int64_t in, int64_t out, bool accumulate_dx, cudaStream_t stream) {
  check_shape(N, in, out);
  if (N == 0 || in == 0) return;
  detail::NvtxRange range("linear_backward");
  bind_stream(handle, stream);
  if (dx != nullptr) {
    if (out == 0) {
      if (!accumulate_dx) DIRMOE_CUDA_CHECK(cudaMemsetAsync(dx, 0, sizeof(T) * N * in, stream));
    } else {
      // dx^T[in, N] = W(stored [in, out] column-major) dy^T[out, N]
      gemm<T, T>(handle, CUBLAS_OP_N, CUBLAS_OP_N, in, N, out, W, in, dy, out,
                 accumulate_dx ? 1.f : 0.f, dx, in);
    }
  }
  if (dW != nullptr && out > 0) {
    // dW^T[in, out] += x^T[in, N] (dy^T[out, N])^T
    gemm<T, float>(handle, CUBLAS_OP_N, CUBLAS_OP_T, in, out, N, x, in, dy, out, 1.f, dW, in);
  }
  if (DIRMOE_CUDA_SYNC_AFTER_OPS) DIRMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
}

template void linear_forward<float>(cublasHandle_t, float*, const float*, const float*, int64_t,
                                    int64_t, int64_t, bool, cudaStream_t);
template void linear_forward<bf16>(cublasHandle_t, bf16*, const bf16*, const bf16*, int64_t,
                                   int64_t, int64_t, bool, cudaStream_t);
template void linear_backward<float>(cublasHandle_t, float*, float*, const float*, const float*,
                                     const float*, int64_t, int64_t, int64_t, bool, cudaStream_t);
template void linear_backward<bf16>(cublasHandle_t, bf16*, float*, const bf16*, const bf16*,
                                    const bf16*, int64_t, int64_t, int64_t, bool, cudaStream_t);

}  // namespace dirmoe::cuda
