// Token embedding lookup (vectorised row copy) and its scatter-add backward (fp32 atomics).
#include "kernels/cuda/api.cuh"
#include "kernels/cuda/common.cuh"

namespace dirmoe::cuda {
namespace {

using detail::grid_for;

// One block per row (grid-stride); kVec elements per access.
template <class T, int kVec>
__global__ void embedding_forward_kernel(T* out, const int32_t* tokens, const T* table, int64_t N,
                                         int64_t d, int64_t V, int64_t* first_bad) {
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const int32_t tok = tokens[n];
    const bool ok = tok >= 0 && tok < V;
    if (!ok && first_bad != nullptr && threadIdx.x == 0) {
      atomicMin(reinterpret_cast<unsigned long long*>(first_bad),
                static_cast<unsigned long long>(n));
    }
    T* dst = out + n * d;                                // (d)
    const T* src = table + (ok ? int64_t(tok) : 0) * d;  // (d)
    for (int64_t j = int64_t(threadIdx.x) * kVec; j < d; j += int64_t(blockDim.x) * kVec) {
      float v[kVec];
      if (ok) {
        detail::load_float<T, kVec>(v, src + j);
      } else {
#pragma unroll
        for (int i = 0; i < kVec; ++i) v[i] = 0.f;
      }
      detail::store_float<T, kVec>(dst + j, v);
    }
  }
}

template <class T>
__global__ void embedding_backward_kernel(float* dtable, const int32_t* tokens, const T* dout,
                                          int64_t N, int64_t d, int64_t V) {
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const int32_t tok = tokens[n];
    if (tok < 0 || tok >= V) continue;
    float* row = dtable + int64_t(tok) * d;  // (d)
    const T* g = dout + n * d;               // (d)
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
      atomicAdd(row + j, detail::to_float(g[j]));
  }
}

}  // namespace

template <class T>
void embedding_forward(T* out, const int32_t* tokens, const T* table, int64_t N, int64_t d,
                       int64_t V, int64_t* d_first_bad, cudaStream_t stream) {
  DIRMOE_CHECK(N >= 0 && d > 0 && V > 0, "bad embedding shape N=", N, " d=", d, " V=", V);
  if (N == 0) return;
  detail::NvtxRange range("embedding_forward");
  constexpr int kVec = detail::vec_of<T>();
  const int grid = grid_for(N, 1);
  if (d % kVec == 0 && detail::aligned16(out) && detail::aligned16(table)) {
    embedding_forward_kernel<T, kVec>
        <<<grid, 128, 0, stream>>>(out, tokens, table, N, d, V, d_first_bad);
  } else {
    embedding_forward_kernel<T, 1>
        <<<grid, 128, 0, stream>>>(out, tokens, table, N, d, V, d_first_bad);
  }
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template <class T>
void embedding_backward(float* dtable, const int32_t* tokens, const T* dout, int64_t N, int64_t d,
                        int64_t V, cudaStream_t stream) {
  DIRMOE_CHECK(N >= 0 && d > 0 && V > 0, "bad embedding shape N=", N, " d=", d, " V=", V);
  if (N == 0) return;
  detail::NvtxRange range("embedding_backward");
  embedding_backward_kernel<T><<<grid_for(N, 1), 256, 0, stream>>>(dtable, tokens, dout, N, d, V);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template void embedding_forward<float>(float*, const int32_t*, const float*, int64_t, int64_t,
                                       int64_t, int64_t*, cudaStream_t);
template void embedding_forward<bf16>(bf16*, const int32_t*, const bf16*, int64_t, int64_t, int64_t,
                                      int64_t*, cudaStream_t);
template void embedding_backward<float>(float*, const int32_t*, const float*, int64_t, int64_t,
                                        int64_t, cudaStream_t);
template void embedding_backward<bf16>(float*, const int32_t*, const bf16*, int64_t, int64_t,
                                       int64_t, cudaStream_t);

}  // namespace dirmoe::cuda
