// Softmax cross-entropy over a padded vocabulary, one block per row: an online max/sum pass gives
// the logsumexp, a second pass writes the gradient (fused, it reads the row from L2 again).
#include "kernels/cuda/api.cuh"
#include "kernels/cuda/common.cuh"

namespace dirmoe::cuda {
namespace {

using detail::load_float;
using detail::store_float;

constexpr int kThreads = 256;

// (m, s) pairs: s = sum exp(x - m).
__device__ __forceinline__ void lse_combine(float& m, float& s, float mo, float so) {
  const float mn = fmaxf(m, mo);
  if (mn == -INFINITY) {
    s = 0.f;
  } else {
    s = s * expf(m - mn) + so * expf(mo - mn);
  }
  m = mn;
}

template <class T, int kVec, bool kForward, bool kBackward>
__global__ void __launch_bounds__(kThreads)
    cross_entropy_kernel(float* losses, float* lse_out, T* dlogits, const T* logits,
                         const float* lse_in, const int32_t* targets, float scale, int64_t N,
                         int64_t V, int64_t Vp, int64_t* first_bad) {
  __shared__ float red_m[kThreads / 32], red_s[kThreads / 32];
  __shared__ float s_lse;
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const T* row = logits + n * Vp;  // (Vp), first V real
    const int32_t tgt = targets[n];
    const bool bad = !(tgt == -1 || (tgt >= 0 && tgt < V));
    const bool ignore = tgt < 0 || bad;
    float lse;
    if constexpr (kForward) {
      float m = -INFINITY, s = 0.f;
      for (int64_t j = int64_t(threadIdx.x) * kVec; j < V; j += int64_t(kThreads) * kVec) {
        float x[kVec];
        load_float<T, kVec>(x, row + j);
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          if (j + e >= V) break;
          if (x[e] > m) {
            s = s * expf(m - x[e]) + 1.f;
            m = x[e];
          } else {
            s += expf(x[e] - m);
          }
        }
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const float mo = __shfl_xor_sync(0xffffffffu, m, o);
        const float so = __shfl_xor_sync(0xffffffffu, s, o);
        lse_combine(m, s, mo, so);
      }
      if (lane == 0) {
        red_m[warp] = m;
        red_s[warp] = s;
      }
      __syncthreads();
      if (threadIdx.x == 0) {
        float mt = red_m[0], st = red_s[0];
        for (int w = 1; w < kThreads / 32; ++w) lse_combine(mt, st, red_m[w], red_s[w]);
        const float l = mt + logf(st);
        s_lse = l;
        lse_out[n] = l;
        losses[n] = ignore ? 0.f : l - detail::to_float(row[tgt]);
        if (bad && first_bad != nullptr) {
          atomicMin(reinterpret_cast<unsigned long long*>(first_bad),
                    static_cast<unsigned long long>(n));
        }
      }
      __syncthreads();
      lse = s_lse;
    } else {
      lse = lse_in[n];
    }
    if constexpr (kBackward) {
      T* drow = dlogits + n * Vp;  // (Vp); may alias row
      for (int64_t j = int64_t(threadIdx.x) * kVec; j < Vp; j += int64_t(kThreads) * kVec) {
        float x[kVec];
        load_float<T, kVec>(x, row + j);
#pragma unroll
        for (int e = 0; e < kVec; ++e) {
          const int64_t col = j + e;
          x[e] = (ignore || col >= V) ? 0.f : scale * expf(x[e] - lse) - (col == tgt ? scale : 0.f);
        }
        store_float<T, kVec>(drow + j, x);
      }
    }
    __syncthreads();
  }
}

void check_shape(int64_t N, int64_t V, int64_t Vp) {
  DIRMOE_CHECK(N >= 0 && V > 0 && V <= Vp, "bad cross-entropy shape N=", N, " V=", V, " Vp=", Vp);
}

template <class T, bool kForward, bool kBackward>
void launch(float* losses, float* lse, T* dlogits, const T* logits, const float* lse_in,
            const int32_t* targets, float scale, int64_t N, int64_t V, int64_t Vp,
            int64_t* first_bad, cudaStream_t stream) {
  constexpr int kVec = detail::vec_of<T>();
  const int grid = detail::grid_for(N, 1, detail::kMaxGridX);
  const bool vec =
      Vp % kVec == 0 && detail::aligned16(logits) && (!kBackward || detail::aligned16(dlogits));
  if (vec) {
    cross_entropy_kernel<T, kVec, kForward, kBackward><<<grid, kThreads, 0, stream>>>(
        losses, lse, dlogits, logits, lse_in, targets, scale, N, V, Vp, first_bad);
  } else {
    cross_entropy_kernel<T, 1, kForward, kBackward><<<grid, kThreads, 0, stream>>>(
        losses, lse, dlogits, logits, lse_in, targets, scale, N, V, Vp, first_bad);
  }
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace

template <class T>
void cross_entropy_forward(float* losses, float* lse, const T* logits, const int32_t* targets,
                           int64_t N, int64_t V, int64_t Vp, int64_t* d_first_bad,
                           cudaStream_t stream) {
  check_shape(N, V, Vp);
  if (N == 0) return;
  detail::NvtxRange range("cross_entropy_forward");
  launch<T, true, false>(losses, lse, nullptr, logits, nullptr, targets, 0.f, N, V, Vp, d_first_bad,
                         stream);
}

template <class T>
void cross_entropy_backward(T* dlogits, const T* logits, const float* lse, const int32_t* targets,
                            float scale, int64_t N, int64_t V, int64_t Vp, cudaStream_t stream) {
  check_shape(N, V, Vp);
  if (N == 0) return;
  detail::NvtxRange range("cross_entropy_backward");
  launch<T, false, true>(nullptr, nullptr, dlogits, logits, lse, targets, scale, N, V, Vp, nullptr,
                         stream);
}

template <class T>
void cross_entropy_fused(float* losses, float* lse, T* dlogits, const T* logits,
                         const int32_t* targets, float scale, int64_t N, int64_t V, int64_t Vp,
                         int64_t* d_first_bad, cudaStream_t stream) {
  check_shape(N, V, Vp);
  if (N == 0) return;
  detail::NvtxRange range("cross_entropy_fused");
  launch<T, true, true>(losses, lse, dlogits, logits, nullptr, targets, scale, N, V, Vp,
                        d_first_bad, stream);
}

template void cross_entropy_forward<float>(float*, float*, const float*, const int32_t*, int64_t,
                                           int64_t, int64_t, int64_t*, cudaStream_t);
template void cross_entropy_forward<bf16>(float*, float*, const bf16*, const int32_t*, int64_t,
                                          int64_t, int64_t, int64_t*, cudaStream_t);
template void cross_entropy_backward<float>(float*, const float*, const float*, const int32_t*,
                                            float, int64_t, int64_t, int64_t, cudaStream_t);
template void cross_entropy_backward<bf16>(bf16*, const bf16*, const float*, const int32_t*, float,
                                           int64_t, int64_t, int64_t, cudaStream_t);
template void cross_entropy_fused<float>(float*, float*, float*, const float*, const int32_t*,
                                         float, int64_t, int64_t, int64_t, int64_t*, cudaStream_t);
template void cross_entropy_fused<bf16>(float*, float*, bf16*, const bf16*, const int32_t*, float,
                                        int64_t, int64_t, int64_t, int64_t*, cudaStream_t);

}  // namespace dirmoe::cuda
