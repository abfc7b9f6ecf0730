// AdamW on fp32 master weights and moments (PyTorch semantics, kernels/math/adamw.h: the CPU
// path's own per-element math), optionally writing the bf16 matmul copy: one tensor per launch
// (adamw_update), or every tensor of a MultiTensorPlan in one launch (multi_tensor_adamw), with
// the gradient norm of the plan's groups in two (multi_tensor_sum_squares).
#include <cmath>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/common.cuh"
#include "kernels/math/adamw.h"

namespace dirmoe::cuda {
namespace {

using Coeffs = math::AdamWCoeffs<float>;

template <int kVec>
__global__ void adamw_kernel(float* param, bf16* param_bf16, const float* grad, float* m, float* v,
                             int64_t n, Coeffs c, const float* grad_scale) {
  const float gs = grad_scale != nullptr ? *grad_scale : 1.0f;
  for (int64_t i = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kVec; i < n;
       i += int64_t(gridDim.x) * blockDim.x * kVec) {
    float p[kVec], g[kVec], mi[kVec], vi[kVec];
    detail::load_float<float, kVec>(p, param + i);
    detail::load_float<float, kVec>(g, grad + i);
    detail::load_float<float, kVec>(mi, m + i);
    detail::load_float<float, kVec>(vi, v + i);
#pragma unroll
    for (int e = 0; e < kVec; ++e) math::adamw_element(p[e], g[e] * gs, mi[e], vi[e], c);
    detail::store_float<float, kVec>(param + i, p);
    detail::store_float<float, kVec>(m + i, mi);
    detail::store_float<float, kVec>(v + i, vi);
    if (param_bf16 != nullptr) {
#pragma unroll
      for (int e = 0; e < kVec; ++e) param_bf16[i + e] = __float2bfloat16_rn(p[e]);
    }
  }
}

}  // namespace

void adamw_update(float* param, bf16* param_bf16, const float* grad, float* m, float* v, int64_t n,
                  const AdamWParams& p, const float* d_grad_scale, cudaStream_t stream) {
  DIRMOE_CHECK(p.step >= 1, "AdamW step is 1-based, got ", p.step);
  DIRMOE_CHECK(n >= 0, "AdamW: negative size ", n);
  if (n == 0) return;
  detail::NvtxRange range("adamw_update");
  const Coeffs c = math::adamw_coeffs<float>(p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, p.step);
  if (n % 4 == 0 && detail::aligned16(param) && detail::aligned16(grad) && detail::aligned16(m) &&
      detail::aligned16(v)) {
    adamw_kernel<4><<<detail::grid_for(n / 4, 256), 256, 0, stream>>>(param, param_bf16, grad, m, v,
                                                                      n, c, d_grad_scale);
  } else {
    adamw_kernel<1><<<detail::grid_for(n, 256), 256, 0, stream>>>(param, param_bf16, grad, m, v, n,
                                                                  c, d_grad_scale);
  }
  DIRMOE_CUDA_LAUNCH_CHECK(stream);
}

}  // namespace dirmoe::cuda
