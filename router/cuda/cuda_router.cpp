// Device routers (see cuda_router.h): host orchestration only, the kernels live in kernels/cuda.
#include "router/cuda/cuda_router.h"

#include <type_traits>
#include <vector>

#include "runtime/core/error.h"

namespace dirmoe {
namespace {

// The fp32 copy of a device activation (converted from bf16, or copied).
template <class T>
void to_fp32(float* dst, const T* src, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    DIRMOE_CUDA_CHECK(
        cudaMemcpyAsync(dst, src, sizeof(float) * n, cudaMemcpyDeviceToDevice, stream));
  } else {
    cuda::convert<T, float>(dst, src, n, stream);
  }
}

// dh[N,d] += dL/dh = dlogits @ W: straight into dh for fp32 models, through an fp32 scratch and a
// rounding to T for bf16 ones.
template <class T>
void add_input_grad(cublasHandle_t handle, T* d_dh, cuda::DeviceBuffer<float>& dh32,
                    cuda::DeviceBuffer<T>& dh_t, float* dW, const float* dlogits, const float* h32,
                    const float* W, int64_t N, int64_t d, int64_t out, cudaStream_t stream) {
  if constexpr (std::is_same_v<T, float>) {
    cuda::linear_backward<float>(handle, d_dh, dW, dlogits, h32, W, N, d, out,
                                 /*accumulate_dx=*/true, stream);
  } else {
    dh32.grow(N * d);
    dh_t.grow(N * d);
    cuda::linear_backward<float>(handle, dh32.data(), dW, dlogits, h32, W, N, d, out,
                                 /*accumulate_dx=*/false, stream);
    cuda::convert<float, T>(dh_t.data(), dh32.data(), N * d, stream);
    cuda::add_inplace<T>(d_dh, dh_t.data(), N * d, stream);
  }
}

// The routing's CSR as backward reads it (the caller may reuse `out` meanwhile).
void copy_routing(cuda::DeviceBuffer<int64_t>& offsets, cuda::DeviceBuffer<int32_t>& experts,
                  const DeviceRouting& out, cudaStream_t stream) {
  offsets.grow(out.num_tokens + 1);
  experts.grow(out.nnz);
  DIRMOE_CUDA_CHECK(cudaMemcpyAsync(offsets.data(), out.offsets.data(),
                                    sizeof(int64_t) * (out.num_tokens + 1),
                                    cudaMemcpyDeviceToDevice, stream));
  if (out.nnz > 0)
    DIRMOE_CUDA_CHECK(cudaMemcpyAsync(experts.data(), out.experts.data(), sizeof(int32_t) * out.nnz,
                                      cudaMemcpyDeviceToDevice, stream));
}

// Throws the CPU routers' message for a non-finite input reported by a kernel.
void throw_if_bad(int64_t bad, const std::string& name, const RouterContext& ctx,
                  const char* what) {
  if (bad == cuda::kRouterNoBad) return;
  const int64_t t = bad >> cuda::kRouterBadShift;
  const int64_t e = bad & ((int64_t{1} << cuda::kRouterBadShift) - 1);
  DIRMOE_FAIL("router ", name, ": non-finite ", what, " at token ", t, " (global ",
              ctx.global_token0 + t, "), expert ", e, ", layer ", ctx.layer);
}

}  // namespace

template <class T>
CudaTopKRouter<T>::CudaTopKRouter(const RouterConfig& cfg, int64_t hidden, int num_experts,
                                  const std::string& prefix, cublasHandle_t handle,
                                  cudaStream_t stream)
    : cfg_(cfg), d_(hidden), E_(num_experts), handle_(handle), stream_(stream) {
  validate_router_config(cfg, hidden, num_experts);
  DIRMOE_CHECK(cfg.type == "topk", "CudaTopKRouter built for router type '", cfg.type, "'");
  DIRMOE_CHECK(num_experts <= cuda::kRouterMaxExperts,
               "moe.num_experts: the GPU routers take at most ", cuda::kRouterMaxExperts,
               " experts, got ", num_experts);
  weight_ = cuda::DeviceParameter(prefix + ".weight", {num_experts, hidden}, /*with_half=*/false);
  weight_.master.fill_bytes(0, stream_);
  weight_.zero_grad(stream_);
  sums_.resize(cuda::topk_stat_columns(E_));
  fraction_.resize(E_);
  stats_dev_.resize(cuda::kTopKStats);
  bad_.resize(1);
}

template <class T>
void CudaTopKRouter<T>::forward(const T* d_h, int64_t N, const RouterContext& ctx,
                                DeviceRouting& out) {
  DIRMOE_CHECK(N >= 0, "router ", weight_.name, ": negative token count ", N);
  DIRMOE_CHECK(N == 0 || d_h != nullptr, "router ", weight_.name, ": null input for ", N,
               " tokens");
  const int k = cfg_.k;
  N_ = N;
  ctx_ = ctx;
  has_forward_ = true;
  h32_.grow(N * d_);
  logits_.grow(N * E_);
  probs_.grow(N * E_);
  lse_.grow(N);
  rows_.grow(N * cuda::topk_stat_columns(E_));
  out.num_tokens = N;
  out.num_experts = E_;
  out.nnz = N * k;
  out.offsets.grow(N + 1);
  out.experts.grow(N * k);
  out.weights.grow(N * k);
  bad_.fill_bytes(0x7F, stream_);
  to_fp32(h32_.data(), d_h, N * d_, stream_);
  if (N > 0)
    cuda::linear_forward<float>(handle_, logits_.data(), h32_.data(), weight_.master.data(), N, d_,
                                E_, /*accumulate=*/false, stream_);
  cuda::topk_route_forward(out.offsets.data(), out.experts.data(), out.weights.data(),
                           probs_.data(), lse_.data(), rows_.data(), logits_.data(), N, E_, k,
                           cfg_.renormalize, bad_.data(), stream_);
  copy_routing(offsets_, experts_, out, stream_);
  cuda::router_column_sums(sums_.data(), rows_.data(), N, cuda::topk_stat_columns(E_), stream_);
  cuda::topk_route_finalize(fraction_.data(), stats_dev_.data(), sums_.data(), N, E_, k,
                            cfg_.aux_loss_coef, cfg_.z_loss_coef, stream_);
}

template <class T>
void CudaTopKRouter<T>::backward(const float* d_dweights, double loss_scale, T* d_dh) {
  DIRMOE_CHECK(has_forward_, "router ", weight_.name, ": backward called before forward");
  const int64_t N = N_;
  if (N == 0) return;
  DIRMOE_CHECK(d_dweights != nullptr && d_dh != nullptr, "router ", weight_.name,
               ": null dweights or dh");
  dlogits_.grow(N * E_);
  const double aux_scale = loss_scale * cfg_.aux_loss_coef * E_ / static_cast<double>(N);
  const double z_scale = loss_scale * cfg_.z_loss_coef * 2.0 / static_cast<double>(N);
  cuda::topk_route_backward(dlogits_.data(), probs_.data(), lse_.data(), offsets_.data(),
                            experts_.data(), d_dweights, fraction_.data(), N, E_, cfg_.renormalize,
                            aux_scale, z_scale, stream_);
  add_input_grad<T>(handle_, d_dh, dh32_, dh_t_, weight_.grad.data(), dlogits_.data(), h32_.data(),
                    weight_.master.data(), N, d_, E_, stream_);
}

template <class T>
const RouterStats& CudaTopKRouter<T>::read_stats() {
  DIRMOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  const std::vector<double> s = stats_dev_.download();
  const std::vector<int64_t> bad = bad_.download();
  throw_if_bad(bad[0], weight_.name, ctx_, "logits");
  stats_.aux_loss = s[0];
  stats_.z_loss = s[1];
  stats_.mean_active = cfg_.k;
  stats_.scalars = {{"target_k", static_cast<double>(cfg_.k)},
                    {"undispatched_mass", s[2]},
                    {"entropy", s[3]},
                    {"top1_prob", s[4]}};
  return stats_;
}

template class CudaTopKRouter<float>;
template class CudaTopKRouter<cuda::bf16>;

}  // namespace dirmoe
