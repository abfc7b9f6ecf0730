// AdamW on fp32 master weights and moments (PyTorch semantics); the per-step coefficients are
// computed in double on the host as the CPU path does, optionally writing the bf16 matmul copy.
#include <cmath>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/common.cuh"

namespace dirmoe::cuda {
namespace {

struct Coeffs {
  float b1, b2, ob1, ob2, decay, step_size, inv_sqrt_bc2, eps;
};

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
    for (int e = 0; e < kVec; ++e) {
      const float ge = g[e] * gs;
      mi[e] = c.b1 * mi[e] + c.ob1 * ge;
      vi[e] = c.b2 * vi[e] + c.ob2 * ge * ge;
      p[e] = p[e] * c.decay - c.step_size * mi[e] / (sqrtf(vi[e]) * c.inv_sqrt_bc2 + c.eps);
    }
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
  const double bc1 = 1.0 - std::pow(p.beta1, double(p.step));
  const double bc2 = 1.0 - std::pow(p.beta2, double(p.step));
  const Coeffs c{float(p.beta1),
                 float(p.beta2),
                 float(1.0 - p.beta1),
                 float(1.0 - p.beta2),
                 float(1.0 - p.lr * p.weight_decay),
                 float(p.lr / bc1),
                 float(1.0 / std::sqrt(bc2)),
                 float(p.eps)};
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
