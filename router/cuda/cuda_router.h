// The routers on the device: the same configuration, routing and loss terms as the CPU routers
// (router/), with parameters, activations, routing and statistics on the GPU. Per-token math runs
// the shared kernels/routing code in double; the router GEMMs are fp32 cuBLAS whatever the model
// dtype T (float or bf16). Statistics and the non-finite check are read once, by read_stats().
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/api.cuh"
#include "kernels/cuda/device_buffer.h"
#include "router/router.h"

namespace dirmoe {

// Routing<T> on the device, in the same CSR layout (what kernels/cuda/moe.cu takes).
struct DeviceRouting {
  int64_t num_tokens = 0;
  int num_experts = 0;
  int64_t nnz = 0;                      // assignments (known on the host for topk: N * k)
  cuda::DeviceBuffer<int64_t> offsets;  // [N+1]
  cuda::DeviceBuffer<int32_t> experts;  // [nnz]
  cuda::DeviceBuffer<float> weights;    // [nnz]
};

// topk on the device (TopKRouter's semantics: softmax over one linear d -> E, the k most probable
// experts with ties to the lower index, Switch load-balancing loss, optional z-loss).
// NOTE: the handle must be bound to `stream` (cublasSetStream) by the caller.
template <class T>
class CudaTopKRouter {
 public:
  CudaTopKRouter(const RouterConfig& cfg, int64_t hidden, int num_experts,
                 const std::string& prefix, cublasHandle_t handle, cudaStream_t stream);

  // h[N,d] on the device -> out. Keeps what backward needs until the next forward.
  void forward(const T* d_h, int64_t N, const RouterContext& ctx, DeviceRouting& out);
  // d_dweights[nnz] = dL/d(weights of the last routing); d_dh[N,d] += dL/dh; weight grad +=.
  void backward(const float* d_dweights, double loss_scale, T* d_dh);
  // Synchronises the stream, reads the statistics of the last forward and throws a dirmoe::Error
  // naming the layer, token and expert when a logit was not finite.
  const RouterStats& read_stats();
  double loss() const { return stats_.aux_loss + stats_.z_loss; }  // after read_stats()

  cuda::DeviceParameter& weight() { return weight_; }          // [E,d] fp32
  const float* probs() const { return probs_.data(); }         // [N,E] of the last forward
  const double* d_stats() const { return stats_dev_.data(); }  // [kTopKStats]

 private:
  RouterConfig cfg_;
  int64_t d_;
  int E_;
  cublasHandle_t handle_;
  cudaStream_t stream_;
  cuda::DeviceParameter weight_;
  RouterStats stats_;
  RouterContext ctx_;
  int64_t N_ = 0;
  bool has_forward_ = false;

  cuda::DeviceBuffer<float> h32_;         // [N,d] fp32 copy of the input
  cuda::DeviceBuffer<float> logits_;      // [N,E]
  cuda::DeviceBuffer<float> probs_;       // [N,E]
  cuda::DeviceBuffer<double> lse_;        // [N]
  cuda::DeviceBuffer<double> rows_;       // [N, topk_stat_columns(E)]
  cuda::DeviceBuffer<double> sums_;       // [topk_stat_columns(E)]
  cuda::DeviceBuffer<double> fraction_;   // [E]
  cuda::DeviceBuffer<double> stats_dev_;  // [kTopKStats]
  cuda::DeviceBuffer<int64_t> bad_;       // [1] first non-finite (token << 16 | expert)
  cuda::DeviceBuffer<int64_t> offsets_;   // [N+1] routing CSR of the last forward
  cuda::DeviceBuffer<int32_t> experts_;   // [nnz]
  cuda::DeviceBuffer<float> dlogits_;     // [N,E]
  cuda::DeviceBuffer<float> dh32_;        // [N,d] (bf16 models)
  cuda::DeviceBuffer<T> dh_t_;            // [N,d] (bf16 models)
};

}  // namespace dirmoe
