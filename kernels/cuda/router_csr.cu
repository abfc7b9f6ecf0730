// Variable-length routing on the device: per-token assignment counts to CSR offsets (one-block
// exclusive scan, deterministic) and the compaction of padded per-token lists into the CSR arrays.
#include <cstdint>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/common.cuh"

namespace dirmoe::cuda {
namespace {

constexpr int kScanThreads = 1024;
constexpr int kCompactThreads = 256;

// Each thread scans a contiguous chunk sequentially; the chunk totals are scanned across the block.
__global__ void __launch_bounds__(kScanThreads)
    offsets_kernel(int64_t* offsets, const int32_t* counts, int64_t N) {
  __shared__ int64_t part[kScanThreads];
  const int64_t chunk = (N + kScanThreads - 1) / kScanThreads;
  const int64_t lo = threadIdx.x * chunk, hi = lo + chunk < N ? lo + chunk : N;
  int64_t s = 0;
  for (int64_t t = lo; t < hi; ++t) s += counts[t];
  part[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    int64_t acc = 0;
    for (int i = 0; i < kScanThreads; ++i) {
      const int64_t v = part[i];
      part[i] = acc;
      acc += v;
    }
    offsets[N] = acc;
  }
  __syncthreads();
  int64_t acc = part[threadIdx.x];
  for (int64_t t = lo; t < hi; ++t) {
    offsets[t] = acc;
    acc += counts[t];
  }
}

__global__ void compact_kernel(int32_t* experts, float* weights, const int32_t* padded_experts,
                               const float* padded_weights, const int64_t* offsets, int64_t N,
                               int stride) {
  const int64_t t = int64_t(blockIdx.x) * kCompactThreads + threadIdx.x;
  if (t >= N) return;
  const int64_t a0 = offsets[t], n = offsets[t + 1] - a0;
  for (int64_t j = 0; j < n; ++j) {
    experts[a0 + j] = padded_experts[t * stride + j];
    weights[a0 + j] = padded_weights[t * stride + j];
  }
}

}  // namespace

void router_offsets(int64_t* offsets, const int32_t* counts, int64_t N, cudaStream_t stream) {
  DIRMOE_CHECK(N >= 0, "router_offsets: negative token count ", N);
  detail::NvtxRange range("router_offsets");
  offsets_kernel<<<1, kScanThreads, 0, stream>>>(offsets, counts, N);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

void router_compact(int32_t* experts, float* weights, const int32_t* padded_experts,
                    const float* padded_weights, const int64_t* offsets, int64_t N, int stride,
                    cudaStream_t stream) {
  if (N == 0) return;
  detail::NvtxRange range("router_compact");
  const int grid = static_cast<int>((N + kCompactThreads - 1) / kCompactThreads);
  compact_kernel<<<grid, kCompactThreads, 0, stream>>>(experts, weights, padded_experts,
                                                       padded_weights, offsets, N, stride);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace dirmoe::cuda
