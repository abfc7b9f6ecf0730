// Multi-tensor AdamW and gradient norm: every parameter of the model in one launch (AdamW) or two
// (sum of squares per group, deterministic), instead of one or two per tensor. The tensors are cut
// into chunks once (multi_tensor_chunks, host); each CTA takes one chunk. The per-element math is
// kernels/math/adamw.h, the CPU path's own.
#include <algorithm>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/math/adamw.h"
#include "runtime/core/error.h"

namespace dirmoe::cuda {
namespace {

constexpr int kThreads = 256;
using Coeffs = math::AdamWCoeffs<float>;

__device__ __forceinline__ bool aligned16_dev(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

__global__ void __launch_bounds__(kThreads)
    multi_adamw_kernel(const MultiTensor* tensors, const MultiTensorChunk* chunks,
                       Coeffs with_decay, Coeffs without_decay, const float* grad_scale) {
  const MultiTensorChunk ch = chunks[blockIdx.x];
  const MultiTensor t = tensors[ch.tensor];
  const Coeffs c = t.decay ? with_decay : without_decay;
  const float gs = grad_scale != nullptr ? *grad_scale : 1.0f;
  int64_t tail = ch.begin;
  // NOTE: chunk starts are multiples of 4 elements, so 16-byte alignment of a chunk follows from
  // that of the tensor's buffers.
  if (aligned16_dev(t.param) && aligned16_dev(t.grad) && aligned16_dev(t.m) && aligned16_dev(t.v)) {
    const int64_t nvec = (ch.end - ch.begin) / 4;
    for (int64_t j = threadIdx.x; j < nvec; j += kThreads) {
      const int64_t i = ch.begin + 4 * j;
      float p[4], g[4], m[4], v[4];
      detail::load_float<float, 4>(p, t.param + i);
      detail::load_float<float, 4>(g, t.grad + i);
      detail::load_float<float, 4>(m, t.m + i);
      detail::load_float<float, 4>(v, t.v + i);
#pragma unroll
      for (int e = 0; e < 4; ++e) math::adamw_element(p[e], g[e] * gs, m[e], v[e], c);
      detail::store_float<float, 4>(t.param + i, p);
      detail::store_float<float, 4>(t.m + i, m);
      detail::store_float<float, 4>(t.v + i, v);
      if (t.param_bf16 != nullptr) {
#pragma unroll
        for (int e = 0; e < 4; ++e) t.param_bf16[i + e] = __float2bfloat16_rn(p[e]);
      }
    }
    tail = ch.begin + 4 * nvec;
  }
  for (int64_t i = tail + threadIdx.x; i < ch.end; i += kThreads) {
    float p = t.param[i], m = t.m[i], v = t.v[i];
    math::adamw_element(p, t.grad[i] * gs, m, v, c);
    t.param[i] = p;
    t.m[i] = m;
    t.v[i] = v;
    if (t.param_bf16 != nullptr) t.param_bf16[i] = __float2bfloat16_rn(p);
  }
}

__global__ void __launch_bounds__(kThreads)
    multi_sumsq_partial_kernel(double* partial, const MultiTensor* tensors,
                               const MultiTensorChunk* chunks) {
  __shared__ double red[kThreads / 32];
  const MultiTensorChunk ch = chunks[blockIdx.x];
  const float* g = tensors[ch.tensor].grad;
  double acc = 0.0;
  for (int64_t i = ch.begin + threadIdx.x; i < ch.end; i += kThreads) {
    const double e = g[i];
    acc += e * e;
  }
  acc = detail::block_sum<kThreads>(acc, red);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// One CTA per group: its chunks' partials in a fixed order.
__global__ void __launch_bounds__(kThreads)
    multi_sumsq_final_kernel(double* out, const double* partial, const int64_t* group_begin) {
  __shared__ double red[kThreads / 32];
  const int grp = blockIdx.x;
  double acc = 0.0;
  for (int64_t i = group_begin[grp] + threadIdx.x; i < group_begin[grp + 1]; i += kThreads)
    acc += partial[i];
  acc = detail::block_sum<kThreads>(acc, red);
  if (threadIdx.x == 0) out[grp] = acc;
}

}  // namespace

std::vector<MultiTensorChunk> multi_tensor_chunks(const std::vector<MultiTensor>& tensors,
                                                  int num_groups, int64_t max_chunk,
                                                  std::vector<int64_t>* group_begin) {
  DIRMOE_CHECK(num_groups >= 1, "multi_tensor_chunks: num_groups must be >= 1, got ", num_groups);
  DIRMOE_CHECK(max_chunk >= 4 && max_chunk % 4 == 0,
               "multi_tensor_chunks: the chunk must be a positive multiple of 4, got ", max_chunk);
  DIRMOE_CHECK(tensors.size() < (size_t(1) << 31), "multi_tensor_chunks: too many tensors");
  std::vector<MultiTensorChunk> chunks;
  std::vector<int64_t> begin(static_cast<size_t>(num_groups) + 1, 0);
  for (int g = 0; g < num_groups; ++g) {
    begin[g] = static_cast<int64_t>(chunks.size());
    for (size_t i = 0; i < tensors.size(); ++i) {
      const MultiTensor& t = tensors[i];
      DIRMOE_CHECK(t.group >= 0 && t.group < num_groups, "multi_tensor_chunks: tensor ", i,
                   " is in group ", t.group, ", outside [0, ", num_groups, ")");
      DIRMOE_CHECK(t.n >= 0, "multi_tensor_chunks: tensor ", i, " has negative size ", t.n);
      if (t.group != g) continue;
      for (int64_t b = 0; b < t.n; b += max_chunk)
        chunks.push_back({static_cast<int32_t>(i), g, b, std::min(t.n, b + max_chunk)});
    }
  }
  begin[num_groups] = static_cast<int64_t>(chunks.size());
  if (group_begin != nullptr) *group_begin = std::move(begin);
  return chunks;
}

size_t multi_tensor_scratch_doubles(int64_t num_chunks) {
  return static_cast<size_t>(std::max<int64_t>(num_chunks, 1));
}

void multi_tensor_sum_squares(double* d_sumsq, const MultiTensor* d_tensors,
                              const MultiTensorChunk* d_chunks, int64_t num_chunks,
                              const int64_t* d_group_begin, int num_groups, double* scratch,
                              cudaStream_t stream) {
  DIRMOE_CHECK(num_chunks >= 0 && num_chunks < (int64_t(1) << 31) && num_groups >= 1,
               "multi_tensor_sum_squares: bad plan (", num_chunks, " chunks, ", num_groups,
               " groups)");
  detail::NvtxRange range("multi_tensor_sum_squares");
  if (num_chunks > 0) {
    multi_sumsq_partial_kernel<<<static_cast<unsigned>(num_chunks), kThreads, 0, stream>>>(
        scratch, d_tensors, d_chunks);
    DIRMOE_CUDA_LAUNCH_CHECK(stream);
  }
  multi_sumsq_final_kernel<<<num_groups, kThreads, 0, stream>>>(d_sumsq, scratch, d_group_begin);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

void multi_tensor_adamw(const MultiTensor* d_tensors, const MultiTensorChunk* d_chunks,
                        int64_t num_chunks, const AdamWParams& p, const float* d_grad_scale,
                        cudaStream_t stream) {
  DIRMOE_CHECK(p.step >= 1, "AdamW step is 1-based, got ", p.step);
  DIRMOE_CHECK(num_chunks >= 0 && num_chunks < (int64_t(1) << 31), "multi_tensor_adamw: bad plan (",
               num_chunks, " chunks)");
  if (num_chunks == 0) return;
  detail::NvtxRange range("multi_tensor_adamw");
  const Coeffs with =
      math::adamw_coeffs<float>(p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, p.step);
  const Coeffs without = math::adamw_coeffs<float>(p.lr, p.beta1, p.beta2, p.eps, 0.0, p.step);
  multi_adamw_kernel<<<static_cast<unsigned>(num_chunks), kThreads, 0, stream>>>(
      d_tensors, d_chunks, with, without, d_grad_scale);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace dirmoe::cuda
