// topk router kernels and the statistic reduction all routers use: one thread per token runs the
// shared per-token code of kernels/routing (the code the CPU routers run), in double; statistics go
// to per-token rows reduced per column in a fixed order, and the loss terms are finished on the
// device, so nothing leaves it until the step reads.
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/routing/topk.h"

namespace dirmoe::cuda {
namespace {

constexpr int kTokenThreads = 128;
constexpr int kSumThreads = 256;

__device__ __forceinline__ void report_bad(int64_t* d_bad, int64_t t, int e) {
  if (d_bad == nullptr) return;
  const unsigned long long code =
      static_cast<unsigned long long>(t) << kRouterBadShift | static_cast<unsigned>(e);
  atomicMin(reinterpret_cast<unsigned long long*>(d_bad), code);
}

__global__ void __launch_bounds__(kSumThreads)
    column_sums_kernel(double* out, const double* rows, int64_t N, int C) {
  __shared__ double red[kSumThreads / 32];
  const int c = blockIdx.x;
  double s = 0;
  for (int64_t t = threadIdx.x; t < N; t += kSumThreads) s += rows[t * C + c];
  s = detail::block_sum<kSumThreads>(s, red);
  if (threadIdx.x == 0) out[c] = s;
}

__global__ void __launch_bounds__(kTokenThreads)
    topk_forward_kernel(int64_t* offsets, int32_t* experts, float* weights, float* probs,
                        double* lse, double* stat_rows, const float* logits, int64_t N, int E,
                        int k, bool renormalize, int64_t* d_bad) {
  const int64_t t = int64_t(blockIdx.x) * kTokenThreads + threadIdx.x;
  if (t == 0) offsets[N] = N * k;
  if (t >= N) return;
  const int C = topk_stat_columns(E);
  double* row = stat_rows + t * C;
  for (int c = 0; c < C; ++c) row[c] = 0;
  int32_t* ex = experts + t * k;
  float* w = weights + t * k;
  offsets[t] = t * k;
  const routing::TopKToken<double> r = routing::topk_token_forward<double, float>(
      logits + t * E, E, k, renormalize, probs + t * E, row, &row[2 * E + 1], ex, w);
  if (r.bad_expert >= 0) {
    report_bad(d_bad, t, r.bad_expert);
    for (int j = 0; j < k; ++j) {
      ex[j] = j;
      w[j] = 0.f;
    }
    for (int i = 0; i < E; ++i) probs[t * E + i] = 0.f;
    lse[t] = 0;
    return;
  }
  lse[t] = r.lse;
  for (int j = 0; j < k; ++j) row[E + ex[j]] += 1.0;
  row[2 * E] = r.lse * r.lse;
  row[2 * E + 2] = r.pmax;
  row[2 * E + 3] = routing::r_max(0.0, 1.0 - r.chosen);
}

__global__ void topk_finalize_kernel(double* fraction, double* stats, const double* sums, int64_t N,
                                     int E, int k, double aux_coef, double z_coef) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  double aux = 0;
  const double assignments = static_cast<double>(N) * k;
  for (int i = 0; i < E; ++i) {
    fraction[i] = N > 0 ? sums[E + i] / assignments : 0.0;
    if (N > 0) aux += fraction[i] * (sums[i] / static_cast<double>(N));
  }
  const double inv_n = N > 0 ? 1.0 / static_cast<double>(N) : 0.0;
  stats[0] = aux_coef * E * aux;
  stats[1] = z_coef * sums[2 * E] * inv_n;
  stats[2] = sums[2 * E + 3] * inv_n;
  stats[3] = sums[2 * E + 1] * inv_n;
  stats[4] = sums[2 * E + 2] * inv_n;
}

__global__ void __launch_bounds__(kTokenThreads)
    topk_backward_kernel(float* dlogits, const float* probs, const double* lse,
                         const int64_t* offsets, const int32_t* experts, const float* dweights,
                         const double* fraction, int64_t N, int E, bool renormalize,
                         double aux_scale, double z_scale) {
  const int64_t t = int64_t(blockIdx.x) * kTokenThreads + threadIdx.x;
  if (t >= N) return;
  double dp[kRouterMaxExperts];
  const int64_t a0 = offsets[t], a1 = offsets[t + 1];
  routing::topk_token_backward<double, float, float>(
      probs + t * E, E, experts + a0, dweights + a0, static_cast<int>(a1 - a0), renormalize,
      fraction, aux_scale, z_scale * lse[t], dp, dlogits + t * E);
}

void check_experts(int E, const char* op) {
  DIRMOE_CHECK(E >= 1 && E <= kRouterMaxExperts, op, ": ", E, " experts outside [1, ",
               kRouterMaxExperts, "]");
}

}  // namespace

void router_column_sums(double* out, const double* rows, int64_t N, int C, cudaStream_t stream) {
  DIRMOE_CHECK(N >= 0 && C >= 0, "router_column_sums: bad shape N=", N, " C=", C);
  if (C == 0) return;
  detail::NvtxRange range("router_column_sums");
  column_sums_kernel<<<C, kSumThreads, 0, stream>>>(out, rows, N, C);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

void topk_route_forward(int64_t* offsets, int32_t* experts, float* weights, float* probs,
                        double* lse, double* stat_rows, const float* logits, int64_t N, int E,
                        int k, bool renormalize, int64_t* d_bad, cudaStream_t stream) {
  check_experts(E, "topk_route_forward");
  DIRMOE_CHECK(N >= 0 && k >= 1 && k <= E, "topk_route_forward: bad shape N=", N, " k=", k,
               " E=", E);
  detail::NvtxRange range("topk_route_forward");
  const int grid = std::max(1, static_cast<int>((N + kTokenThreads - 1) / kTokenThreads));
  topk_forward_kernel<<<grid, kTokenThreads, 0, stream>>>(
      offsets, experts, weights, probs, lse, stat_rows, logits, N, E, k, renormalize, d_bad);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

void topk_route_finalize(double* fraction, double* stats, const double* sums, int64_t N, int E,
                         int k, double aux_coef, double z_coef, cudaStream_t stream) {
  check_experts(E, "topk_route_finalize");
  topk_finalize_kernel<<<1, 32, 0, stream>>>(fraction, stats, sums, N, E, k, aux_coef, z_coef);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

void topk_route_backward(float* dlogits, const float* probs, const double* lse,
                         const int64_t* offsets, const int32_t* experts, const float* dweights,
                         const double* fraction, int64_t N, int E, bool renormalize,
                         double aux_scale, double z_scale, cudaStream_t stream) {
  check_experts(E, "topk_route_backward");
  if (N == 0) return;
  detail::NvtxRange range("topk_route_backward");
  const int blocks = static_cast<int>((N + kTokenThreads - 1) / kTokenThreads);
  topk_backward_kernel<<<blocks, kTokenThreads, 0, stream>>>(dlogits, probs, lse, offsets, experts,
                                                             dweights, fraction, N, E, renormalize,
                                                             aux_scale, z_scale);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace dirmoe::cuda
