// Internal helpers of kernels/cuda (never included outside it): the launch check, NVTX ranges,
// float <-> T conversion, 16-byte vector access and warp reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <nvtx3/nvToolsExt.h>

#include <algorithm>
#include <cstdint>

#include "runtime/core/cuda_check.h"

#ifdef DIRMOE_CUDA_SYNC_CHECK
#define DIRMOE_CUDA_SYNC_AFTER_OPS 1
#else
#define DIRMOE_CUDA_SYNC_AFTER_OPS 0
#endif

// After every <<<>>>: the launch error now; with DIRMOE_CUDA_SYNC_CHECK the execution error too.
#define DIRMOE_CUDA_LAUNCH_CHECK(stream)                                              \
  do {                                                                                \
    DIRMOE_CUDA_CHECK(cudaGetLastError());                                            \
    if (DIRMOE_CUDA_SYNC_AFTER_OPS) DIRMOE_CUDA_CHECK(cudaStreamSynchronize(stream)); \
  } while (0)

namespace dirmoe::cuda::detail {

// One NVTX range per public op (a no-op unless a profiler is attached).
class NvtxRange {
 public:
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};

constexpr int kMaxGridX = 1 << 30;

inline int grid_for(int64_t work, int per_block, int max_blocks = 65536) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, max_blocks)));
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// kVec elements of T in 16 bytes.
template <class T>
__host__ __device__ constexpr int vec_of() {
  return 16 / static_cast<int>(sizeof(T));
}

// Loads/stores kN consecutive elements as floats; kN * sizeof(T) == 16 means one 16-byte access
// (the address must then be 16-byte aligned), otherwise element by element.
template <class T, int kN>
__device__ __forceinline__ void load_float(float (&dst)[kN], const T* src) {
  if constexpr (kN * sizeof(T) == 16) {
    const uint4 raw = *reinterpret_cast<const uint4*>(src);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int i = 0; i < kN; ++i) dst[i] = to_float(e[i]);
  } else {
#pragma unroll
    for (int i = 0; i < kN; ++i) dst[i] = to_float(src[i]);
  }
}

template <class T, int kN>
__device__ __forceinline__ void store_float(T* dst, const float (&src)[kN]) {
  if constexpr (kN * sizeof(T) == 16) {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int i = 0; i < kN; ++i) e[i] = from_float<T>(src[i]);
    *reinterpret_cast<uint4*>(dst) = raw;
  } else {
#pragma unroll
    for (int i = 0; i < kN; ++i) dst[i] = from_float<T>(src[i]);
  }
}

template <class V>
__device__ __forceinline__ V warp_sum(V v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over a block of kThreads threads in a fixed tree order (deterministic); every thread gets the
// result. `red` holds kThreads / 32 values.
template <int kThreads, class V>
__device__ __forceinline__ V block_sum(V v, V* red) {
  constexpr int kWarps = kThreads / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  V t = lane < kWarps ? red[lane] : V(0);
  return warp_sum(t);
}

}  // namespace dirmoe::cuda::detail
