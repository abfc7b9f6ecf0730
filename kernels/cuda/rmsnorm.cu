// RMSNorm forward (one warp per row) and backward (row chunks: dx per row, dw partial sums per
// chunk in scratch, then a column reduction in chunk order, so dw is deterministic).
#include "kernels/cuda/api.cuh"
#include "kernels/cuda/common.cuh"

namespace dirmoe::cuda {
namespace {

using detail::from_float;
using detail::load_float;
using detail::store_float;

constexpr int kFwdThreads = 128;
constexpr int kBwdThreads = 256;
constexpr int kBwdRows = 32;  // rows per backward chunk (one block)

template <class T, int kVec>
__global__ void __launch_bounds__(kFwdThreads)
    rmsnorm_forward_kernel(T* out, float* rstd, const T* x, const float* w, int64_t N, int64_t d,
                           float eps) {
  const int lane = threadIdx.x & 31;
  constexpr int kWarps = kFwdThreads / 32;
  const int64_t stride = int64_t(gridDim.x) * kWarps;
  for (int64_t n = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; n < N; n += stride) {
    const T* xr = x + n * d;  // (d)
    T* yr = out + n * d;      // (d)
    float ss = 0.f;
    for (int64_t j = int64_t(lane) * kVec; j < d; j += 32 * kVec) {
      float v[kVec];
      load_float<T, kVec>(v, xr + j);
#pragma unroll
      for (int i = 0; i < kVec; ++i) ss += v[i] * v[i];
    }
    ss = detail::warp_sum(ss);
    const float r = 1.0f / sqrtf(ss / float(d) + eps);
    if (lane == 0) rstd[n] = r;
    for (int64_t j = int64_t(lane) * kVec; j < d; j += 32 * kVec) {
      float v[kVec];
      load_float<T, kVec>(v, xr + j);
#pragma unroll
      for (int i = 0; i < kVec; ++i) v[i] = v[i] * r * w[j + i];
      store_float<T, kVec>(yr + j, v);
    }
  }
}

// Block = one chunk of kBwdRows rows. partial[chunk, d] receives the chunk's dw.
template <class T, int kVec>
__global__ void __launch_bounds__(kBwdThreads)
    rmsnorm_backward_kernel(T* dx, float* partial, const T* dout, const T* x, const float* w,
                            const float* rstd, int64_t N, int64_t d, bool accumulate_dx) {
  __shared__ float s_r[kBwdRows];
  __shared__ float s_c[kBwdRows];
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  const int64_t n0 = int64_t(blockIdx.x) * kBwdRows;
  const int rows = N - n0 < kBwdRows ? static_cast<int>(N - n0) : kBwdRows;
  for (int rr = warp; rr < rows; rr += kBwdThreads / 32) {
    const int64_t n = n0 + rr;
    const T* gr = dout + n * d;
    const T* xr = x + n * d;
    float gwx = 0.f;
    for (int64_t j = int64_t(lane) * kVec; j < d; j += 32 * kVec) {
      float g[kVec], xv[kVec];
      load_float<T, kVec>(g, gr + j);
      load_float<T, kVec>(xv, xr + j);
#pragma unroll
      for (int i = 0; i < kVec; ++i) gwx += g[i] * w[j + i] * xv[i];
    }
    gwx = detail::warp_sum(gwx);
    if (lane == 0) {
      const float r = rstd[n];
      s_r[rr] = r;
      s_c[rr] = gwx * r * r * r / float(d);
    }
  }
  __syncthreads();
  for (int64_t j = int64_t(threadIdx.x) * kVec; j < d; j += int64_t(kBwdThreads) * kVec) {
    float wv[kVec], dw[kVec];
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      wv[i] = w[j + i];
      dw[i] = 0.f;
    }
    for (int rr = 0; rr < rows; ++rr) {
      const int64_t off = (n0 + rr) * d + j;
      float g[kVec], xv[kVec], o[kVec];
      load_float<T, kVec>(g, dout + off);
      load_float<T, kVec>(xv, x + off);
      if (accumulate_dx) load_float<T, kVec>(o, dx + off);
      const float r = s_r[rr], c = s_c[rr];
#pragma unroll
      for (int i = 0; i < kVec; ++i) {
        dw[i] += g[i] * xv[i] * r;
        const float v = r * g[i] * wv[i] - c * xv[i];
        o[i] = accumulate_dx ? o[i] + v : v;
      }
      store_float<T, kVec>(dx + off, o);
    }
#pragma unroll
    for (int i = 0; i < kVec; ++i) partial[int64_t(blockIdx.x) * d + j + i] = dw[i];
  }
}

__global__ void column_sum_kernel(float* dw, const float* partial, int64_t chunks, int64_t d) {
  for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < d;
       j += int64_t(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int64_t c = 0; c < chunks; ++c) s += partial[c * d + j];
    dw[j] += s;
  }
}

void check_shape(int64_t N, int64_t d) {
  DIRMOE_CHECK(N >= 0 && d > 0, "bad RMSNorm shape N=", N, " d=", d);
}

}  // namespace

template <class T>
void rmsnorm_forward(T* out, float* rstd, const T* x, const float* w, int64_t N, int64_t d,
                     float eps, cudaStream_t stream) {
  check_shape(N, d);
  if (N == 0) return;
  detail::NvtxRange range("rmsnorm_forward");
  constexpr int kVec = detail::vec_of<T>();
  const int grid = detail::grid_for(N, kFwdThreads / 32);
  if (d % kVec == 0 && detail::aligned16(out) && detail::aligned16(x)) {
    rmsnorm_forward_kernel<T, kVec><<<grid, kFwdThreads, 0, stream>>>(out, rstd, x, w, N, d, eps);
  } else {
    rmsnorm_forward_kernel<T, 1><<<grid, kFwdThreads, 0, stream>>>(out, rstd, x, w, N, d, eps);
  }
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

size_t rmsnorm_backward_scratch_floats(int64_t N, int64_t d) {
  return static_cast<size_t>((N + kBwdRows - 1) / kBwdRows) * static_cast<size_t>(d);
}

template <class T>
void rmsnorm_backward(T* dx, float* dw, const T* dout, const T* x, const float* w,
                      const float* rstd, int64_t N, int64_t d, bool accumulate_dx, float* scratch,
                      cudaStream_t stream) {
  check_shape(N, d);
  if (N == 0) return;
  DIRMOE_CHECK(scratch != nullptr, "rmsnorm_backward: null scratch (need ",
               rmsnorm_backward_scratch_floats(N, d), " floats)");
  detail::NvtxRange range("rmsnorm_backward");
  constexpr int kVec = detail::vec_of<T>();
  const int64_t chunks = (N + kBwdRows - 1) / kBwdRows;
  DIRMOE_CHECK(chunks <= detail::kMaxGridX, "rmsnorm_backward: too many rows (", N, ")");
  const int grid = static_cast<int>(chunks);
  if (d % kVec == 0 && detail::aligned16(dx) && detail::aligned16(dout) && detail::aligned16(x)) {
    rmsnorm_backward_kernel<T, kVec>
        <<<grid, kBwdThreads, 0, stream>>>(dx, scratch, dout, x, w, rstd, N, d, accumulate_dx);
  } else {
    rmsnorm_backward_kernel<T, 1>
        <<<grid, kBwdThreads, 0, stream>>>(dx, scratch, dout, x, w, rstd, N, d, accumulate_dx);
  }
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
  column_sum_kernel<<<detail::grid_for(d, 256), 256, 0, stream>>>(dw, scratch, chunks, d);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int64_t, int64_t,
                                     float, cudaStream_t);
template void rmsnorm_forward<bf16>(bf16*, float*, const bf16*, const float*, int64_t, int64_t,
                                    float, cudaStream_t);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*,
                                      const float*, int64_t, int64_t, bool, float*, cudaStream_t);
template void rmsnorm_backward<bf16>(bf16*, float*, const bf16*, const bf16*, const float*,
                                     const float*, int64_t, int64_t, bool, float*, cudaStream_t);

}  // namespace dirmoe::cuda
