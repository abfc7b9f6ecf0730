// SwiGLU gate, elementwise: out = silu(gate) * up, 16-byte vector accesses where aligned.
#include "kernels/cuda/api.cuh"
#include "kernels/cuda/common.cuh"

namespace dirmoe::cuda {
namespace {

using detail::load_float;
using detail::store_float;

__device__ __forceinline__ float sigmoid(float a) { return 1.0f / (1.0f + expf(-a)); }

// Elements [0, n) in chunks of kVec (n % kVec == 0 for kVec > 1).
template <class T, int kVec>
__global__ void swiglu_forward_kernel(T* out, const T* gate, const T* up, int64_t n) {
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec; i < n;
       i += int64_t(gridDim.x) * blockDim.x * kVec) {
    float a[kVec], u[kVec];
    load_float<T, kVec>(a, gate + i);
    load_float<T, kVec>(u, up + i);
#pragma unroll
    for (int e = 0; e < kVec; ++e) a[e] = a[e] * sigmoid(a[e]) * u[e];
    store_float<T, kVec>(out + i, a);
  }
}

template <class T, int kVec>
__global__ void swiglu_backward_kernel(T* dgate, T* dup, const T* dout, const T* gate, const T* up,
                                       int64_t n) {
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec; i < n;
       i += int64_t(gridDim.x) * blockDim.x * kVec) {
    float a[kVec], u[kVec], g[kVec], da[kVec], du[kVec];
    load_float<T, kVec>(a, gate + i);
    load_float<T, kVec>(u, up + i);
    load_float<T, kVec>(g, dout + i);
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      const float sig = sigmoid(a[e]);
      du[e] = g[e] * a[e] * sig;
      da[e] = g[e] * u[e] * sig * (1.0f + a[e] * (1.0f - sig));
    }
    store_float<T, kVec>(dgate + i, da);
    store_float<T, kVec>(dup + i, du);
  }
}

}  // namespace

template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t n, cudaStream_t stream) {
  DIRMOE_CHECK(n >= 0, "swiglu: negative size ", n);
  if (n == 0) return;
  detail::NvtxRange range("swiglu_forward");
  constexpr int kVec = detail::vec_of<T>();
  if (n % kVec == 0 && detail::aligned16(out) && detail::aligned16(gate) && detail::aligned16(up)) {
    swiglu_forward_kernel<T, kVec>
        <<<detail::grid_for(n / kVec, 256), 256, 0, stream>>>(out, gate, up, n);
  } else {
    swiglu_forward_kernel<T, 1><<<detail::grid_for(n, 256), 256, 0, stream>>>(out, gate, up, n);
  }
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t n,
                     cudaStream_t stream) {
  DIRMOE_CHECK(n >= 0, "swiglu: negative size ", n);
  if (n == 0) return;
  detail::NvtxRange range("swiglu_backward");
  constexpr int kVec = detail::vec_of<T>();
  if (n % kVec == 0 && detail::aligned16(dgate) && detail::aligned16(dup) &&
      detail::aligned16(dout) && detail::aligned16(gate) && detail::aligned16(up)) {
    swiglu_backward_kernel<T, kVec>
        <<<detail::grid_for(n / kVec, 256), 256, 0, stream>>>(dgate, dup, dout, gate, up, n);
  } else {
    swiglu_backward_kernel<T, 1>
        <<<detail::grid_for(n, 256), 256, 0, stream>>>(dgate, dup, dout, gate, up, n);
  }
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template void swiglu_forward<float>(float*, const float*, const float*, int64_t, cudaStream_t);
template void swiglu_forward<bf16>(bf16*, const bf16*, const bf16*, int64_t, cudaStream_t);
template void swiglu_backward<float>(float*, float*, const float*, const float*, const float*,
                                     int64_t, cudaStream_t);
template void swiglu_backward<bf16>(bf16*, bf16*, const bf16*, const bf16*, const bf16*, int64_t,
                                    cudaStream_t);

}  // namespace dirmoe::cuda
