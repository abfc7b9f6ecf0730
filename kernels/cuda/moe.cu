// MoE token permutation on device: the plan (counts per (dst rank, local expert) and each
// assignment's send row, stable in token order, optional capacity), the row permutation, the
// weighted un-permute/combine with its backward, and the wire <-> expert regrouping of received
// rows. NOTE: the plan is exact integer work: per-chunk histograms, scans, then ranks within a
// chunk by warp match + popcount, so the result equals the CPU Dispatcher's, independent of
// scheduling.
#include <initializer_list>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/common.cuh"

namespace dirmoe::cuda {
namespace {

constexpr int kChunk = 256;  // assignments per plan block (one per thread)
constexpr int kScanThreads = 256;

__device__ __forceinline__ int group_of(int32_t e, const int32_t* owner, const int32_t* local_index,
                                        int E, int max_local, int G) {
  if (e < 0 || e >= E) return -1;
  const int g = owner[e] * max_local + local_index[e];
  return (g >= 0 && g < G) ? g : -1;
}

// Exclusive scan over a block; `total` receives the block's sum. warp_sums holds 32 values.
__device__ __forceinline__ int64_t block_exclusive_scan(int64_t v, int64_t* warp_sums,
                                                        int64_t& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  constexpr int kWarps = kScanThreads / 32;
  int64_t inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int64_t up = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += up;
  }
  __syncthreads();
  if (lane == 31) warp_sums[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    int64_t w = lane < kWarps ? warp_sums[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const int64_t up = __shfl_up_sync(0xffffffffu, w, o);
      if (lane >= o) w += up;
    }
    if (lane < kWarps) warp_sums[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  total = warp_sums[kWarps - 1];
  const int64_t warp_base = warp > 0 ? warp_sums[warp - 1] : 0;
  return warp_base + inc - v;
}

// table[g * num_chunks + c] = assignments of chunk c that go to group g.
__global__ void __launch_bounds__(kChunk)
    plan_histogram_kernel(int32_t* table, const int32_t* experts, int64_t nnz, const int32_t* owner,
                          const int32_t* local_index, int E, int max_local, int G,
                          int64_t num_chunks, int64_t* first_bad) {
  extern __shared__ int32_t hist[];  // (G)
  for (int g = threadIdx.x; g < G; g += kChunk) hist[g] = 0;
  __syncthreads();
  const int64_t a = int64_t(blockIdx.x) * kChunk + threadIdx.x;
  if (a < nnz) {
    const int g = group_of(experts[a], owner, local_index, E, max_local, G);
    if (g >= 0) {
      atomicAdd(&hist[g], 1);
    } else if (first_bad != nullptr) {
      atomicMin(reinterpret_cast<unsigned long long*>(first_bad),
                static_cast<unsigned long long>(a));
    }
  }
  __syncthreads();
  for (int g = threadIdx.x; g < G; g += kChunk)
    table[int64_t(g) * num_chunks + blockIdx.x] = hist[g];
}

// Block g: exclusive scan of its row of the table (chunk bases within the group) and the kept
// count.
__global__ void __launch_bounds__(kScanThreads)
    plan_group_scan_kernel(int64_t* counts, int32_t* table, int64_t num_chunks, int64_t capacity) {
  __shared__ int64_t warp_sums[32];
  int32_t* row = table + int64_t(blockIdx.x) * num_chunks;
  int64_t carry = 0;
  for (int64_t c0 = 0; c0 < num_chunks; c0 += kScanThreads) {
    const int64_t c = c0 + threadIdx.x;
    const int64_t v = c < num_chunks ? row[c] : 0;
    int64_t total = 0;
    const int64_t ex = block_exclusive_scan(v, warp_sums, total);
    if (c < num_chunks) row[c] = static_cast<int32_t>(carry + ex);
    carry += total;
  }
  if (threadIdx.x == 0) counts[blockIdx.x] = (capacity < 0 || carry < capacity) ? carry : capacity;
}

// One block: group_offset[g] = sum of counts[g' < g].
__global__ void __launch_bounds__(kScanThreads)
    plan_offsets_kernel(int64_t* group_offset, const int64_t* counts, int G) {
  __shared__ int64_t warp_sums[32];
  int64_t carry = 0;
  for (int g0 = 0; g0 < G; g0 += kScanThreads) {
    const int g = g0 + threadIdx.x;
    const int64_t v = g < G ? counts[g] : 0;
    int64_t total = 0;
    const int64_t ex = block_exclusive_scan(v, warp_sums, total);
    if (g < G) group_offset[g] = carry + ex;
    carry += total;
  }
}

// slot[a] = group_offset[g] + rank of a among the assignments of group g (token order), or -1.
__global__ void __launch_bounds__(kChunk)
    plan_slot_kernel(int64_t* slot, const int32_t* experts, int64_t nnz, const int32_t* owner,
                     const int32_t* local_index, int E, int max_local, int G,
                     const int32_t* chunk_base, int64_t num_chunks, const int64_t* group_offset,
                     int64_t capacity) {
  extern __shared__ int32_t running[];  // (G) assignments of earlier warps of this chunk
  for (int g = threadIdx.x; g < G; g += kChunk) running[g] = 0;
  const int64_t a = int64_t(blockIdx.x) * kChunk + threadIdx.x;
  const int g = a < nnz ? group_of(experts[a], owner, local_index, E, max_local, G) : -1;
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  const unsigned peers = __match_any_sync(0xffffffffu, g);
  const int rank_in_warp = __popc(peers & ((1u << lane) - 1u));
  const bool leader = lane == __ffs(peers) - 1;
  int base = 0;
  __syncthreads();
  for (int w = 0; w < kChunk / 32; ++w) {
    if (warp == w && g >= 0) base = running[g];
    __syncthreads();
    if (warp == w && g >= 0 && leader) running[g] += __popc(peers);
    __syncthreads();
  }
  if (a >= nnz) return;
  if (g < 0) {
    slot[a] = -1;
    return;
  }
  const int64_t rank =
      int64_t(chunk_base[int64_t(g) * num_chunks + blockIdx.x]) + base + rank_in_warp;
  slot[a] = (capacity < 0 || rank < capacity) ? group_offset[g] + rank : -1;
}

// Copies kN elements of T exactly (one 16-byte access when kN * sizeof(T) == 16).
template <class T, int kN>
__device__ __forceinline__ void copy_pack(T* dst, const T* src) {
  if constexpr (kN * sizeof(T) == 16) {
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
  } else {
#pragma unroll
    for (int i = 0; i < kN; ++i) dst[i] = src[i];
  }
}

template <class T, int kVec>
__global__ void permute_kernel(T* send, const T* x, const int64_t* offsets, const int64_t* slot,
                               int64_t N, int64_t width) {
  for (int64_t t = blockIdx.x; t < N; t += gridDim.x) {
    const int64_t a0 = offsets[t], a1 = offsets[t + 1];
    const T* src = x + t * width;  // (width)
    for (int64_t j = int64_t(threadIdx.x) * kVec; j < width; j += int64_t(blockDim.x) * kVec) {
      alignas(16) T v[kVec];
      copy_pack<T, kVec>(v, src + j);
      for (int64_t a = a0; a < a1; ++a) {
        const int64_t s = slot[a];
        if (s >= 0) copy_pack<T, kVec>(send + s * width + j, v);
      }
    }
  }
}

template <class T, int kVec>
__global__ void permute_backward_kernel(T* dx, const T* d_send, const int64_t* offsets,
                                        const int64_t* slot, int64_t N, int64_t width,
                                        bool accumulate) {
  for (int64_t t = blockIdx.x; t < N; t += gridDim.x) {
    const int64_t a0 = offsets[t], a1 = offsets[t + 1];
    T* dst = dx + t * width;  // (width)
    for (int64_t j = int64_t(threadIdx.x) * kVec; j < width; j += int64_t(blockDim.x) * kVec) {
      float acc[kVec];
      if (accumulate) {
        detail::load_float<T, kVec>(acc, dst + j);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[e] = 0.f;
      }
      for (int64_t a = a0; a < a1; ++a) {
        const int64_t s = slot[a];
        if (s < 0) continue;
        float v[kVec];
        detail::load_float<T, kVec>(v, d_send + s * width + j);
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[e] += v[e];
      }
      detail::store_float<T, kVec>(dst + j, acc);
    }
  }
}

template <class T, int kVec>
__global__ void combine_kernel(T* y, const T* back, const float* weights, const int64_t* offsets,
                               const int64_t* slot, int64_t N, int64_t width, bool accumulate) {
  for (int64_t t = blockIdx.x; t < N; t += gridDim.x) {
    const int64_t a0 = offsets[t], a1 = offsets[t + 1];
    T* dst = y + t * width;  // (width)
    for (int64_t j = int64_t(threadIdx.x) * kVec; j < width; j += int64_t(blockDim.x) * kVec) {
      float acc[kVec];
      if (accumulate) {
        detail::load_float<T, kVec>(acc, dst + j);
      } else {
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[e] = 0.f;
      }
      for (int64_t a = a0; a < a1; ++a) {
        const int64_t s = slot[a];
        if (s < 0) continue;
        const float w = weights[a];
        float v[kVec];
        detail::load_float<T, kVec>(v, back + s * width + j);
#pragma unroll
        for (int e = 0; e < kVec; ++e) acc[e] += w * v[e];
      }
      detail::store_float<T, kVec>(dst + j, acc);
    }
  }
}

// One warp per token.
template <class T>
__global__ void combine_backward_kernel(T* d_back, float* d_weights, const T* dy, const T* back,
                                        const float* weights, const int64_t* offsets,
                                        const int64_t* slot, int64_t N, int64_t width) {
  const int lane = threadIdx.x & 31;
  const int64_t stride = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t t = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; t < N; t += stride) {
    const T* g = dy + t * width;  // (width)
    for (int64_t a = offsets[t]; a < offsets[t + 1]; ++a) {
      const int64_t s = slot[a];
      if (s < 0) {
        if (lane == 0) d_weights[a] = 0.f;
        continue;
      }
      const float w = weights[a];
      const T* b = back + s * width;
      T* db = d_back + s * width;
      float dot = 0.f;
      for (int64_t j = lane; j < width; j += 32) {
        const float gj = detail::to_float(g[j]);
        dot += gj * detail::to_float(b[j]);
        db[j] = detail::from_float<T>(w * gj);
      }
      dot = detail::warp_sum(dot);
      if (lane == 0) d_weights[a] = dot;
    }
  }
}

// Block = one (src rank, local expert) group: a contiguous run of rows in both layouts.
template <class T, int kVec>
__global__ void regroup_kernel(T* out, const T* in, const int64_t* recv_counts, int ep,
                               int max_local, int num_local, int64_t width, bool wire_to_expert) {
  __shared__ int64_t red[2][32];
  const int src = blockIdx.x / num_local, le = blockIdx.x % num_local;
  const int gidx = src * max_local + le;
  const int G = ep * max_local;
  int64_t wire = 0, block = 0;
  for (int i = threadIdx.x; i < G; i += blockDim.x) {
    const int64_t c = recv_counts[i];
    const int s2 = i / max_local, l2 = i % max_local;
    if (i < gidx) wire += c;
    if (l2 < le || (l2 == le && s2 < src)) block += c;
  }
  wire = detail::warp_sum(wire);
  block = detail::warp_sum(block);
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  if (lane == 0) {
    red[0][warp] = wire;
    red[1][warp] = block;
  }
  __syncthreads();
  wire = block = 0;
  for (int w = 0; w < int(blockDim.x / 32); ++w) {
    wire += red[0][w];
    block += red[1][w];
  }
  const int64_t n = recv_counts[gidx] * width;
  const T* src_rows = in + (wire_to_expert ? wire : block) * width;
  T* dst_rows = out + (wire_to_expert ? block : wire) * width;
  for (int64_t j = int64_t(threadIdx.x) * kVec; j < n; j += int64_t(blockDim.x) * kVec) {
    copy_pack<T, kVec>(dst_rows + j, src_rows + j);
  }
}

size_t align256(size_t b) { return (b + 255) / 256 * 256; }

void check_rows(int64_t N, int64_t width) {
  DIRMOE_CHECK(N >= 0 && width >= 1, "MoE rows: bad shape N=", N, " width=", width);
}

template <class T>
bool vector_ok(int64_t width, std::initializer_list<const void*> ptrs) {
  if (width % detail::vec_of<T>() != 0) return false;
  for (const void* p : ptrs) {
    if (!detail::aligned16(p)) return false;
  }
  return true;
}

}  // namespace

size_t moe_plan_scratch_bytes(int64_t nnz, int ep, int max_local) {
  const int64_t chunks = std::max<int64_t>(1, (nnz + kChunk - 1) / kChunk);
  const int64_t G = int64_t(ep) * max_local;
  return align256(sizeof(int32_t) * G * chunks) + align256(sizeof(int64_t) * G);
}

void moe_plan(int64_t* counts, int64_t* slot, const int32_t* experts, int64_t nnz,
              const int32_t* owner, const int32_t* local_index, int num_experts, int ep,
              int max_local, int64_t capacity, int64_t* d_first_bad, void* scratch,
              size_t scratch_bytes, cudaStream_t stream) {
  DIRMOE_CHECK(nnz >= 0 && num_experts > 0 && ep > 0 && max_local > 0,
               "moe_plan: bad sizes nnz=", nnz, " E=", num_experts, " ep=", ep,
               " max_local=", max_local);
  const int G = ep * max_local;
  DIRMOE_CHECK(G <= 12 * 1024, "moe_plan: ", G, " (dst rank, local expert) groups exceed 12288");
  const size_t need = moe_plan_scratch_bytes(nnz, ep, max_local);
  DIRMOE_CHECK(scratch != nullptr && scratch_bytes >= need, "moe_plan: scratch of ", scratch_bytes,
               " bytes, need ", need);
  detail::NvtxRange range("moe_plan");
  const int64_t chunks = std::max<int64_t>(1, (nnz + kChunk - 1) / kChunk);
  DIRMOE_CHECK(chunks <= detail::kMaxGridX, "moe_plan: too many assignments (", nnz, ")");
  auto* table = static_cast<int32_t*>(scratch);  // (G, chunks)
  auto* group_offset = reinterpret_cast<int64_t*>(static_cast<char*>(scratch) +
                                                  align256(sizeof(int32_t) * G * chunks));  // (G)
  const size_t smem = sizeof(int32_t) * G;
  plan_histogram_kernel<<<static_cast<unsigned>(chunks), kChunk, smem, stream>>>(
      table, experts, nnz, owner, local_index, num_experts, max_local, G, chunks, d_first_bad);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
  plan_group_scan_kernel<<<G, kScanThreads, 0, stream>>>(counts, table, chunks, capacity);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
  plan_offsets_kernel<<<1, kScanThreads, 0, stream>>>(group_offset, counts, G);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
  if (nnz == 0) return;
  plan_slot_kernel<<<static_cast<unsigned>(chunks), kChunk, smem, stream>>>(
      slot, experts, nnz, owner, local_index, num_experts, max_local, G, table, chunks,
      group_offset, capacity);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template <class T>
void moe_permute(T* send, const T* x, const int64_t* offsets, const int64_t* slot, int64_t N,
                 int64_t width, cudaStream_t stream) {
  check_rows(N, width);
  if (N == 0) return;
  detail::NvtxRange range("moe_permute");
  constexpr int kVec = detail::vec_of<T>();
  const int grid = detail::grid_for(N, 1);
  if (vector_ok<T>(width, {send, x})) {
    permute_kernel<T, kVec><<<grid, 128, 0, stream>>>(send, x, offsets, slot, N, width);
  } else {
    permute_kernel<T, 1><<<grid, 128, 0, stream>>>(send, x, offsets, slot, N, width);
  }
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template <class T>
void moe_permute_backward(T* dx, const T* d_send, const int64_t* offsets, const int64_t* slot,
                          int64_t N, int64_t width, bool accumulate, cudaStream_t stream) {
  check_rows(N, width);
  if (N == 0) return;
  detail::NvtxRange range("moe_permute_backward");
  constexpr int kVec = detail::vec_of<T>();
  const int grid = detail::grid_for(N, 1);
  if (vector_ok<T>(width, {dx, d_send})) {
    permute_backward_kernel<T, kVec>
        <<<grid, 128, 0, stream>>>(dx, d_send, offsets, slot, N, width, accumulate);
  } else {
    permute_backward_kernel<T, 1>
        <<<grid, 128, 0, stream>>>(dx, d_send, offsets, slot, N, width, accumulate);
  }
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template <class T>
void moe_unpermute_combine(T* y, const T* back, const float* weights, const int64_t* offsets,
                           const int64_t* slot, int64_t N, int64_t width, bool accumulate,
                           cudaStream_t stream) {
  check_rows(N, width);
  if (N == 0) return;
  detail::NvtxRange range("moe_unpermute_combine");
  constexpr int kVec = detail::vec_of<T>();
  const int grid = detail::grid_for(N, 1);
  if (vector_ok<T>(width, {y, back})) {
    combine_kernel<T, kVec>
        <<<grid, 128, 0, stream>>>(y, back, weights, offsets, slot, N, width, accumulate);
  } else {
    combine_kernel<T, 1>
        <<<grid, 128, 0, stream>>>(y, back, weights, offsets, slot, N, width, accumulate);
  }
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template <class T>
void moe_combine_backward(T* d_back, float* d_weights, const T* dy, const T* back,
                          const float* weights, const int64_t* offsets, const int64_t* slot,
                          int64_t N, int64_t width, cudaStream_t stream) {
  check_rows(N, width);
  if (N == 0) return;
  detail::NvtxRange range("moe_combine_backward");
  combine_backward_kernel<T><<<detail::grid_for(N, 4), 128, 0, stream>>>(
      d_back, d_weights, dy, back, weights, offsets, slot, N, width);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

template <class T>
void moe_regroup(T* out, const T* in, const int64_t* recv_counts, int ep, int max_local,
                 int num_local, int64_t width, bool wire_to_expert, cudaStream_t stream) {
  DIRMOE_CHECK(ep > 0 && max_local > 0 && num_local >= 0 && num_local <= max_local && width >= 1,
               "moe_regroup: bad sizes ep=", ep, " max_local=", max_local, " num_local=", num_local,
               " width=", width);
  if (num_local == 0) return;
  detail::NvtxRange range("moe_regroup");
  constexpr int kVec = detail::vec_of<T>();
  const unsigned grid = static_cast<unsigned>(ep) * static_cast<unsigned>(num_local);
  if (vector_ok<T>(width, {out, in})) {
    regroup_kernel<T, kVec><<<grid, 256, 0, stream>>>(out, in, recv_counts, ep, max_local,
                                                      num_local, width, wire_to_expert);
  } else {
    regroup_kernel<T, 1><<<grid, 256, 0, stream>>>(out, in, recv_counts, ep, max_local, num_local,
                                                   width, wire_to_expert);
  }
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

#define DIRMOE_MOE_INSTANTIATE(T)                                                               \
  template void moe_permute<T>(T*, const T*, const int64_t*, const int64_t*, int64_t, int64_t,  \
                               cudaStream_t);                                                   \
  template void moe_permute_backward<T>(T*, const T*, const int64_t*, const int64_t*, int64_t,  \
                                        int64_t, bool, cudaStream_t);                           \
  template void moe_unpermute_combine<T>(T*, const T*, const float*, const int64_t*,            \
                                         const int64_t*, int64_t, int64_t, bool, cudaStream_t); \
  template void moe_combine_backward<T>(T*, float*, const T*, const T*, const float*,           \
                                        const int64_t*, const int64_t*, int64_t, int64_t,       \
                                        cudaStream_t);                                          \
  template void moe_regroup<T>(T*, const T*, const int64_t*, int, int, int, int64_t, bool,      \
                               cudaStream_t);
DIRMOE_MOE_INSTANTIATE(float)
DIRMOE_MOE_INSTANTIATE(bf16)
#undef DIRMOE_MOE_INSTANTIATE

}  // namespace dirmoe::cuda
