// ReMoE router kernels (ReLU routing): one thread per token runs kernels/routing/remoe.h (gates, the
// experts in increasing id order, the chain rule through ReLU); the per-token statistic rows are
// reduced per column in a fixed order and the L1 term is finished on the device.
#include <cstdint>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/routing/remoe.h"

namespace dirmoe::cuda {
namespace {

constexpr int kTokenThreads = 128;

__global__ void __launch_bounds__(kTokenThreads)
    remoe_forward_kernel(int32_t* padded_experts, float* padded_weights, int32_t* counts,
                         double* stat_rows, const float* logits, int64_t N, int E, int64_t* d_bad) {
  const int64_t t = int64_t(blockIdx.x) * kTokenThreads + threadIdx.x;
  if (t >= N) return;
  const int C = remoe_stat_columns(E);
  const float* l = logits + t * E;
  double* st = stat_rows + t * C;
  for (int i = 0; i < C; ++i) st[i] = 0;
  const int bad = remoe_first_nonfinite(l, E);
  if (bad >= 0) {
    if (d_bad != nullptr)
      atomicMin(reinterpret_cast<unsigned long long*>(d_bad),
                static_cast<unsigned long long>(t) << kRouterBadShift | bad);
    counts[t] = 0;
    return;
  }
  int32_t* ex = padded_experts + t * E;
  float* w = padded_weights + t * E;
  const int n = remoe_route_token(l, E, ex, w);
  counts[t] = n;
  for (int j = 0; j < n; ++j) {
    st[ex[j]] = static_cast<double>(w[j]);
    st[E + ex[j]] = 1.0;
  }
  st[2 * E] = n == 0 ? 1.0 : 0.0;
}

__global__ void remoe_finalize_kernel(double* coef, double* stats, const double* sums, int64_t N,
                                      int E, int k, double lambda) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  int64_t count[kRouterMaxExperts];
  int64_t nnz = 0;
  double gate_total = 0;
  for (int e = 0; e < E; ++e) {
    count[e] = static_cast<int64_t>(sums[E + e]);
    nnz += count[e];
    gate_total += sums[e];
  }
  for (int e = 0; e < E; ++e) coef[e] = remoe_l1_coef(lambda, E, k, count[e], N);
  const ReMoESummary s = remoe_summary(nnz, static_cast<int64_t>(sums[2 * E]), gate_total, N, E);
  stats[0] = remoe_l1(lambda, E, k, sums, count, N);
  stats[1] = remoe_l1(1.0, E, k, sums, count, N);
  stats[2] = s.mean_active;
  stats[3] = s.sparsity;
  stats[4] = s.no_expert;
  stats[5] = s.gate_mean;
}

__global__ void __launch_bounds__(kTokenThreads)
    remoe_backward_kernel(float* dlogits, const float* logits, const int64_t* offsets,
                          const int32_t* experts, const float* dweights, const double* coef,
                          int64_t N, int E, double loss_scale) {
  const int64_t t = int64_t(blockIdx.x) * kTokenThreads + threadIdx.x;
  if (t >= N) return;
  double dw[kRouterMaxExperts];
  for (int e = 0; e < E; ++e) dw[e] = 0;
  for (int64_t a = offsets[t]; a < offsets[t + 1]; ++a)
    dw[experts[a]] = static_cast<double>(dweights[a]);
  remoe_token_backward(logits + t * E, dw, coef, loss_scale, E, dlogits + t * E);
}

void check_experts(int E, const char* op) {
  DIRMOE_CHECK(E >= 1 && E <= kRouterMaxExperts, op, ": ", E, " experts outside [1, ",
               kRouterMaxExperts, "]");
}

}  // namespace

void remoe_route_forward(int32_t* padded_experts, float* padded_weights, int32_t* counts,
                         double* stat_rows, const float* logits, int64_t N, int E, int64_t* d_bad,
                         cudaStream_t stream) {
  check_experts(E, "remoe_route_forward");
  DIRMOE_CHECK(N >= 0, "remoe_route_forward: negative token count ", N);
  if (N == 0) return;
  detail::NvtxRange range("remoe_route_forward");
  const int grid = static_cast<int>((N + kTokenThreads - 1) / kTokenThreads);
  remoe_forward_kernel<<<grid, kTokenThreads, 0, stream>>>(padded_experts, padded_weights, counts,
                                                           stat_rows, logits, N, E, d_bad);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

void remoe_route_finalize(double* coef, double* stats, const double* sums, int64_t N, int E, int k,
                          double lambda, cudaStream_t stream) {
  check_experts(E, "remoe_route_finalize");
  remoe_finalize_kernel<<<1, 32, 0, stream>>>(coef, stats, sums, N, E, k, lambda);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

void remoe_route_backward(float* dlogits, const float* logits, const int64_t* offsets,
                          const int32_t* experts, const float* dweights, const double* coef,
                          int64_t N, int E, double loss_scale, cudaStream_t stream) {
  check_experts(E, "remoe_route_backward");
  if (N == 0) return;
  detail::NvtxRange range("remoe_route_backward");
  const int grid = static_cast<int>((N + kTokenThreads - 1) / kTokenThreads);
  remoe_backward_kernel<<<grid, kTokenThreads, 0, stream>>>(dlogits, logits, offsets, experts,
                                                            dweights, coef, N, E, loss_scale);
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace dirmoe::cuda
