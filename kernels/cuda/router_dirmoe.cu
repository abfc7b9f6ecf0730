// DirMoE router kernels: one thread per token runs kernels/routing/dirmoe.h (gates with Philox
// logistic noise, Gamma draws with the same counters as the CPU, implicit gradient, KL, sparsity,
// r_min / max_active dispatch) in double; the reconstruction residual per token row; statistics
// reduced per column and finished on the device; the backward's per-token chain rule.
#include <cstdint>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/routing/dirmoe.h"

namespace dirmoe::cuda {
namespace {

constexpr int kTokenThreads = 64;
constexpr int kRowThreads = 256;

__device__ routing::DirMoETokenParams<double> token_params(const DirMoEKernelParams& p) {
  routing::DirMoETokenParams<double> c;
  c.E = p.E;
  c.k = p.k;
  c.max_active = p.max_active;
  c.r_min = p.r_min;
  c.tau = p.tau;
  c.lambda_q = p.lambda_q;
  c.alpha_floor = p.alpha_floor;
  c.prior_a_hi = p.prior_a_hi;
  c.prior_a_lo = p.prior_a_lo;
  c.prior_lambda = p.prior_lambda;
  c.noisy = p.noisy;
  c.hard = p.hard;
  c.inverse = p.inverse;
  c.expected_count = p.expected_count;
  c.renormalize = p.renormalize;
  c.gate_noise = routing::NoiseKey{p.gate_seed, p.step, p.gate_layer_purpose, p.token0};
  c.gamma_noise = routing::NoiseKey{p.gamma_seed, p.step, p.gamma_layer_purpose, p.token0};
  return c;
}

__device__ routing::DirMoERow<double> saved_row(double* saved, int64_t N, int E, int64_t t) {
  const int64_t NE = N * E, o = t * E;
  return {saved + o,          saved + NE + o,     saved + 2 * NE + o, saved + 3 * NE + o,
          saved + 4 * NE + o, saved + 5 * NE + o, saved + 6 * NE + o, saved + 7 * NE + o,
          saved + 8 * NE + o, saved + 9 * NE + o};
}

__global__ void __launch_bounds__(kTokenThreads)
    dirmoe_forward_kernel(double* saved, float* r_t, int32_t* padded_experts, float* padded_weights,
                          int32_t* counts, double* stat_rows, const float* u, int64_t N,
                          DirMoEKernelParams p, int64_t* d_bad) {
  const int64_t t = int64_t(blockIdx.x) * kTokenThreads + threadIdx.x;
  if (t >= N) return;
  const int E = p.E, C = dirmoe_stat_columns(E);
  const routing::DirMoETokenParams<double> c = token_params(p);
  const routing::DirMoERow<double> row = saved_row(saved, N, E, t);
  double* st = stat_rows + t * C;
  for (int i = 0; i < C; ++i) st[i] = 0;
  int32_t order[kRouterMaxExperts];
  double logw[kRouterMaxExperts], logz[kRouterMaxExperts], ap[kRouterMaxExperts];
  int32_t* ex = padded_experts + t * p.max_active;
  float* w = padded_weights + t * p.max_active;
  const routing::DirMoEToken<double> r = routing::dirmoe_token_forward<double, float>(
      c, u + t * 3 * E, t, row, r_t + t * E, ex, w, st, &st[2 * E + 4], order, logw, logz, ap);
  double* sum_z = saved + kDirMoERows * N * E;
  double* kept = sum_z + N;
  if (r.bad_expert >= 0) {
    if (d_bad != nullptr) {
      const int code = r.bad_expert | (r.bad_concentration ? kRouterBadConcentration : 0);
      atomicMin(reinterpret_cast<unsigned long long*>(d_bad),
                static_cast<unsigned long long>(t) << kRouterBadShift | code);
    }
    for (int i = 0; i < E; ++i) r_t[t * E + i] = 0.f;
    for (int a = 0; a < kDirMoERows; ++a)
      for (int i = 0; i < E; ++i) saved[a * N * E + t * E + i] = 0;
    counts[t] = 1;
    ex[0] = 0;
    w[0] = 0.f;
    sum_z[t] = 0;
    kept[t] = 1;
    for (int i = 0; i < C; ++i) st[i] = 0;
    return;
  }
  counts[t] = r.num_dispatched;
  for (int j = 0; j < r.num_dispatched; ++j) st[E + ex[j]] += 1.0;
  sum_z[t] = r.sum_z;
  kept[t] = r.kept;
  st[2 * E] = routing::r_max(0.0, 1.0 - r.kept);
  st[2 * E + 1] = r.kl;
  st[2 * E + 2] = r.sparsity;
  st[2 * E + 3] = r.sum_gates;
  st[2 * E + 5] = r.near_binary;
  st[2 * E + 6] = r.open;
  st[2 * E + 7] = r.open == 0 ? 1.0 : 0.0;
}

// One block per token row: err += b - h, |err|^2 / d into the recon column.
__global__ void __launch_bounds__(kRowThreads)
    recon_forward_kernel(float* err, double* stat_rows, const float* bias, const float* h,
                         int64_t d, int C) {
  __shared__ double red[kRowThreads / 32];
  const int64_t t = blockIdx.x;
  double sq = 0;
  for (int64_t j = threadIdx.x; j < d; j += kRowThreads) {
    const double v = static_cast<double>(err[t * d + j]) + static_cast<double>(bias[j]) -
                     static_cast<double>(h[t * d + j]);
    err[t * d + j] = static_cast<float>(v);
    sq += v * v;
  }
  sq = detail::block_sum<kRowThreads>(sq, red);
  if (threadIdx.x == 0) stat_rows[t * C + C - 1] = sq / static_cast<double>(d);
}

__global__ void dirmoe_finalize_kernel(double* fraction, double* stats, const double* sums,
                                       int64_t N, int E, double aux_coef, double beta,
                                       double recon_w, double lambda_s) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  const double inv_n = N > 0 ? 1.0 / static_cast<double>(N) : 0.0;
  double nnz = 0;
  for (int e = 0; e < E; ++e) nnz += sums[E + e];
  double aux = 0;
  int dead = 0;
  for (int e = 0; e < E; ++e) {
    dead += sums[E + e] == 0;
    fraction[e] = nnz > 0 ? sums[E + e] / nnz : 0.0;
    aux += fraction[e] * sums[e] * inv_n;
  }
  const double kl = beta * sums[2 * E + 1] * inv_n, recon = recon_w * sums[2 * E + 8] * inv_n,
               sparsity = lambda_s * sums[2 * E + 2] * inv_n, aux_loss = aux_coef * E * aux;
  stats[0] = aux_loss;
  stats[1] = kl + recon + sparsity + aux_loss;
  stats[2] = nnz * inv_n;
  stats[3] = sums[2 * E] * inv_n;
  stats[4] = kl;
  stats[5] = recon;
  stats[6] = sparsity;
  stats[7] = sums[2 * E + 3] * inv_n;
  stats[8] = sums[2 * E + 6] * inv_n;
  stats[9] = sums[2 * E + 7] * inv_n;
  stats[10] = sums[2 * E + 4] * inv_n / E;
  stats[11] = sums[2 * E + 5] * inv_n / E;
  stats[12] = dead;
}

// One block per column j: err[:, j] *= scale, dbias[j] += the column's sum.
__global__ void __launch_bounds__(kRowThreads)
    recon_backward_kernel(float* err, float* dbias, double scale, int64_t N, int64_t d) {
  __shared__ double red[kRowThreads / 32];
  const int64_t j = blockIdx.x;
  double s = 0;
  for (int64_t t = threadIdx.x; t < N; t += kRowThreads) {
    const float e = static_cast<float>(scale * static_cast<double>(err[t * d + j]));
    err[t * d + j] = e;
    s += e;
  }
  s = detail::block_sum<kRowThreads>(s, red);
  if (threadIdx.x == 0) dbias[j] += static_cast<float>(s);
}

__global__ void __launch_bounds__(kTokenThreads)
    dirmoe_backward_kernel(float* du, const float* dr_t, const double* saved, const float* u,
                           const int64_t* offsets, const int32_t* experts, const float* dweights,
                           const double* fraction, int64_t N, DirMoEKernelParams p,
                           routing::DirMoEBackwardScales<double> scales) {
  const int64_t t = int64_t(blockIdx.x) * kTokenThreads + threadIdx.x;
  if (t >= N) return;
  const int E = p.E;
  const routing::DirMoETokenParams<double> c = token_params(p);
  const routing::DirMoERow<double> row = saved_row(const_cast<double*>(saved), N, E, t);
  const double* sum_z = saved + kDirMoERows * N * E;
  const double* kept = sum_z + N;
  double dr[kRouterMaxExperts];
  for (int i = 0; i < E; ++i) dr[i] = static_cast<double>(dr_t[t * E + i]);
  const int64_t a0 = offsets[t], a1 = offsets[t + 1];
  routing::dirmoe_token_backward<double, float, float>(
      c, scales, u + t * 3 * E, row, sum_z[t], kept[t], experts + a0, dweights + a0,
      static_cast<int>(a1 - a0), fraction, dr, du + t * 3 * E);
}

void check_params(const DirMoEKernelParams& p, const char* op) {
  DIRMOE_CHECK(p.E >= 1 && p.E <= kRouterMaxExperts, op, ": ", p.E, " experts outside [1, ",
               kRouterMaxExperts, "]");
  DIRMOE_CHECK(p.max_active >= 1 && p.max_active <= p.E, op, ": max_active ", p.max_active,
               " outside [1, ", p.E, "]");
}

}  // namespace

void dirmoe_route_forward(double* saved, float* r_t, int32_t* padded_experts, float* padded_weights,
                          int32_t* counts, double* stat_rows, const float* u, int64_t N,
                          const DirMoEKernelParams& p, int64_t* d_bad, cudaStream_t stream) {
  check_params(p, "dirmoe_route_forward");
  if (N == 0) return;
  detail::NvtxRange range("dirmoe_route_forward");
  const int grid = static_cast<int>((N + kTokenThreads - 1) / kTokenThreads);
  dirmoe_forward_kernel<<<grid, kTokenThreads, 0, stream>>>(
      saved, r_t, padded_experts, padded_weights, counts, stat_rows, u, N, p, d_bad);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

void dirmoe_recon_forward(float* err, double* stat_rows, const float* bias, const float* h,
                          int64_t N, int64_t d, int E, cudaStream_t stream) {
  if (N == 0) return;
  detail::NvtxRange range("dirmoe_recon_forward");
  DIRMOE_CHECK(N <= detail::kMaxGridX, "dirmoe_recon_forward: ", N, " tokens");
  recon_forward_kernel<<<static_cast<int>(N), kRowThreads, 0, stream>>>(err, stat_rows, bias, h, d,
                                                                        dirmoe_stat_columns(E));
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

void dirmoe_route_finalize(double* fraction, double* stats, const double* sums, int64_t N, int E,
                           double aux_coef, double beta, double recon_w, double lambda_s,
                           cudaStream_t stream) {
  dirmoe_finalize_kernel<<<1, 32, 0, stream>>>(fraction, stats, sums, N, E, aux_coef, beta, recon_w,
                                               lambda_s);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

void dirmoe_recon_backward(float* err, float* dbias, double scale, int64_t N, int64_t d,
                           cudaStream_t stream) {
  if (N == 0 || d == 0) return;
  detail::NvtxRange range("dirmoe_recon_backward");
  recon_backward_kernel<<<static_cast<int>(d), kRowThreads, 0, stream>>>(err, dbias, scale, N, d);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

void dirmoe_route_backward(float* du, const float* dr_t, const double* saved, const float* u,
                           const int64_t* offsets, const int32_t* experts, const float* dweights,
                           const double* fraction, int64_t N, const DirMoEKernelParams& p,
                           double ks, double ss, double aux_scale, double dprior,
                           cudaStream_t stream) {
  check_params(p, "dirmoe_route_backward");
  if (N == 0) return;
  detail::NvtxRange range("dirmoe_route_backward");
  routing::DirMoEBackwardScales<double> scales;
  scales.ks = ks;
  scales.ss = ss;
  scales.aux_scale = aux_scale;
  scales.dprior = dprior;
  const int grid = static_cast<int>((N + kTokenThreads - 1) / kTokenThreads);
  dirmoe_backward_kernel<<<grid, kTokenThreads, 0, stream>>>(du, dr_t, saved, u, offsets, experts,
                                                             dweights, fraction, N, p, scales);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace dirmoe::cuda
