// ProbMoE router kernels (Exact-k and Dynamic-k): one thread per token runs kernels/routing/
// probmoe.h in double on token-local DP tables (subset sizes up to kProbMoEMaxK), with the CPU's
// Philox subset and size draws; statistics reduced per column and finished on the device.
#include <cstdint>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/routing/probmoe.h"

namespace dirmoe::cuda {
namespace {

constexpr int kTokenThreads = 64;
constexpr int kTable = (kRouterMaxExperts + 1) * (kProbMoEMaxK + 1);

__device__ routing::ProbMoETokenParams<double> token_params(const ProbMoEKernelParams& p) {
  routing::ProbMoETokenParams<double> c;
  c.E = p.E;
  c.k_lo = p.k_lo;
  c.k_hi = p.k_hi;
  c.dynamic = p.dynamic;
  c.training = p.training;
  c.subset_noise = routing::NoiseKey{p.subset_seed, p.step, p.subset_layer_purpose, p.token0};
  c.size_noise = routing::NoiseKey{p.size_seed, p.step, p.size_layer_purpose, p.token0};
  return c;
}

__global__ void __launch_bounds__(kTokenThreads)
    probmoe_forward_kernel(double* s, double* mu, double* lse, int32_t* padded_experts,
                           float* padded_weights, int32_t* counts, double* stat_rows,
                           const float* logits, int64_t N, ProbMoEKernelParams p, int64_t* d_bad) {
  const int64_t t = int64_t(blockIdx.x) * kTokenThreads + threadIdx.x;
  if (t >= N) return;
  const int E = p.E, C = probmoe_stat_columns(E);
  const routing::ProbMoETokenParams<double> c = token_params(p);
  double l[kRouterMaxExperts], table[kTable], adj[kTable], dadj[kTable];
  routing::SubsetView<double> dp;
  dp.E = E;
  dp.K = p.k_hi;
  dp.l = l;
  dp.table = table;
  dp.adj = adj;
  dp.dadj = dadj;
  double* st = stat_rows + t * C;
  for (int i = 0; i < C; ++i) st[i] = 0;
  int32_t* ex = padded_experts + t * p.k_hi;
  float* w = padded_weights + t * p.k_hi;
  const routing::ProbMoEToken<double> r = routing::probmoe_token_forward<double, float>(
      c, logits + t * E, t, l, dp, s + t * E, mu + t * E, ex, w, st, &st[2 * E + 1],
      &st[2 * E + 3]);
  if (r.bad_expert >= 0) {
    if (d_bad != nullptr)
      atomicMin(reinterpret_cast<unsigned long long*>(d_bad),
                static_cast<unsigned long long>(t) << kRouterBadShift | r.bad_expert);
    for (int i = 0; i < E; ++i) s[t * E + i] = mu[t * E + i] = 0;
    for (int i = 0; i < C; ++i) st[i] = 0;
    lse[t] = 0;
    counts[t] = 1;
    ex[0] = 0;
    w[0] = 0.f;
    return;
  }
  lse[t] = r.lse;
  counts[t] = r.num_dispatched;
  for (int j = 0; j < r.num_dispatched; ++j) st[E + ex[j]] += 1.0;
  st[2 * E] = r.lse * r.lse;
  st[2 * E + 2] = r.near_binary;
  st[2 * E + 4] = routing::r_max(0.0, 1.0 - r.kept);
}

__global__ void probmoe_finalize_kernel(double* fraction, double* stats, const double* sums,
                                        int64_t N, int E, double aux_coef, double z_coef) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  const double inv_n = N > 0 ? 1.0 / static_cast<double>(N) : 0.0;
  double nnz = 0;
  for (int e = 0; e < E; ++e) nnz += sums[E + e];
  double aux = 0;
  int dead = 0;
  for (int e = 0; e < E; ++e) {
    dead += sums[E + e] == 0;
    fraction[e] = nnz > 0 ? sums[E + e] / nnz : 0.0;
    if (N > 0) aux += fraction[e] * sums[e] / static_cast<double>(N);
  }
  stats[0] = aux_coef * E * aux;
  stats[1] = z_coef * sums[2 * E] * inv_n;
  stats[2] = nnz * inv_n;
  stats[3] = sums[2 * E + 3] * inv_n;
  stats[4] = sums[2 * E + 4] * inv_n;
  stats[5] = sums[2 * E + 1] * inv_n / E;
  stats[6] = sums[2 * E + 2] * inv_n / E;
  stats[7] = dead;
}

__global__ void __launch_bounds__(kTokenThreads)
    probmoe_backward_kernel(float* dlogits, const float* logits, const double* s, const double* lse,
                            const int64_t* offsets, const int32_t* experts, const float* dweights,
                            const double* fraction, int64_t N, ProbMoEKernelParams p,
                            double aux_scale, double z_scale) {
  const int64_t t = int64_t(blockIdx.x) * kTokenThreads + threadIdx.x;
  if (t >= N) return;
  const int E = p.E;
  const routing::ProbMoETokenParams<double> c = token_params(p);
  double l[kRouterMaxExperts], ds[kRouterMaxExperts], cv[kRouterMaxExperts], hv[kRouterMaxExperts],
      mu[kRouterMaxExperts];
  double table[kTable], dtable[kTable], adj[kTable], dadj[kTable];
  routing::SubsetView<double> dp;
  dp.E = E;
  dp.K = p.k_hi;
  dp.l = l;
  dp.table = table;
  dp.dtable = dtable;
  dp.adj = adj;
  dp.dadj = dadj;
  const int64_t a0 = offsets[t], a1 = offsets[t + 1];
  routing::probmoe_token_backward<double, float, float>(
      c, logits + t * E, s + t * E, lse[t], experts + a0, dweights + a0, static_cast<int>(a1 - a0),
      fraction, aux_scale, z_scale, l, dp, ds, cv, hv, mu, dlogits + t * E);
}

void check_params(const ProbMoEKernelParams& p, const char* op) {
  DIRMOE_CHECK(p.E >= 1 && p.E <= kRouterMaxExperts, op, ": ", p.E, " experts outside [1, ",
               kRouterMaxExperts, "]");
  DIRMOE_CHECK(p.k_lo >= 1 && p.k_lo <= p.k_hi && p.k_hi <= p.E && p.k_hi <= kProbMoEMaxK, op,
               ": subset sizes [", p.k_lo, ", ", p.k_hi, "] outside [1, min(E, ", kProbMoEMaxK,
               ")]");
}

}  // namespace

void probmoe_route_forward(double* s, double* mu, double* lse, int32_t* padded_experts,
                           float* padded_weights, int32_t* counts, double* stat_rows,
                           const float* logits, int64_t N, const ProbMoEKernelParams& p,
                           int64_t* d_bad, cudaStream_t stream) {
  check_params(p, "probmoe_route_forward");
  if (N == 0) return;
  detail::NvtxRange range("probmoe_route_forward");
  const int grid = static_cast<int>((N + kTokenThreads - 1) / kTokenThreads);
  probmoe_forward_kernel<<<grid, kTokenThreads, 0, stream>>>(
      s, mu, lse, padded_experts, padded_weights, counts, stat_rows, logits, N, p, d_bad);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

void probmoe_route_finalize(double* fraction, double* stats, const double* sums, int64_t N, int E,
                            double aux_coef, double z_coef, cudaStream_t stream) {
  probmoe_finalize_kernel<<<1, 32, 0, stream>>>(fraction, stats, sums, N, E, aux_coef, z_coef);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

void probmoe_route_backward(float* dlogits, const float* logits, const double* s, const double* lse,
                            const int64_t* offsets, const int32_t* experts, const float* dweights,
                            const double* fraction, int64_t N, const ProbMoEKernelParams& p,
                            double aux_scale, double z_scale, cudaStream_t stream) {
  check_params(p, "probmoe_route_backward");
  if (N == 0) return;
  detail::NvtxRange range("probmoe_route_backward");
  const int grid = static_cast<int>((N + kTokenThreads - 1) / kTokenThreads);
  probmoe_backward_kernel<<<grid, kTokenThreads, 0, stream>>>(
      dlogits, logits, s, lse, offsets, experts, dweights, fraction, N, p, aux_scale, z_scale);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace dirmoe::cuda
