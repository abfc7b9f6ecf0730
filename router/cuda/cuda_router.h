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
#include "router/dirichlet.h"
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

// DirMoE on the device (DirMoERouter's semantics: gates, Gamma draws with the same Philox
// counters, r_min / max_active dispatch, KL, reconstruction through a fp32 cuBLAS decoder,
// sparsity, load balancing). Schedules are evaluated on the host at the forward's step.
// NOTE: the routing's nnz lives on the device (out.offsets[N]); out.nnz holds the capacity
// N * max_active until read_stats() sets the actual count.
template <class T>
class CudaDirMoERouter {
 public:
  CudaDirMoERouter(const RouterConfig& cfg, int64_t hidden, int num_experts,
                   const std::string& prefix, cublasHandle_t handle, cudaStream_t stream);

  void forward(const T* d_h, int64_t N, const RouterContext& ctx, DeviceRouting& out);
  void backward(const float* d_dweights, double loss_scale, T* d_dh);
  // Synchronises, reads the statistics (and the routing's nnz into the last `out`), and throws
  // naming layer, token and expert for a non-finite logit or concentration pre-activation.
  const RouterStats& read_stats();
  double loss() const { return loss_; }  // after read_stats()

  cuda::DeviceParameter& weight() { return weight_; }              // [3E,d]
  cuda::DeviceParameter& decoder() { return decoder_; }            // [d,E]
  cuda::DeviceParameter& decoder_bias() { return decoder_bias_; }  // [d]
  const DirichletPrior& prior() const { return prior_; }
  // Saved rows of the last forward: cuda::kDirMoERows arrays [N,E] (z, a_hi, a_lo, alpha, dlogg,
  // g_s, r, dkl_q, dkl_p, soft), then sum_z[N], kept[N].
  const double* saved() const { return saved_.data(); }

 private:
  cuda::DirMoEKernelParams kernel_params(const RouterContext& ctx, bool noisy, bool hard) const;

  RouterConfig cfg_;
  int64_t d_;
  int E_;
  int max_active_;
  DirichletPrior prior_;
  cublasHandle_t handle_;
  cudaStream_t stream_;
  cuda::DeviceParameter weight_, decoder_, decoder_bias_;
  RouterStats stats_;
  double loss_ = 0;
  RouterContext ctx_;
  int64_t last_step_ = 0;
  int64_t N_ = 0;
  bool has_forward_ = false;
  bool differentiable_ = false;
  double tau_ = 1, lambda_q_ = 1, beta_ = 0, recon_w_ = 0, lambda_s_ = 0;
  cuda::DirMoEKernelParams params_;
  DeviceRouting* last_out_ = nullptr;

  cuda::DeviceBuffer<float> h32_;               // [N,d]
  cuda::DeviceBuffer<float> u_;                 // [N,3E]
  cuda::DeviceBuffer<double> saved_;            // [kDirMoERows*N*E + 2N]
  cuda::DeviceBuffer<float> r_t_;               // [N,E]
  cuda::DeviceBuffer<float> err_;               // [N,d]
  cuda::DeviceBuffer<int32_t> padded_experts_;  // [N, max_active]
  cuda::DeviceBuffer<float> padded_weights_;    // [N, max_active]
  cuda::DeviceBuffer<int32_t> counts_;          // [N]
  cuda::DeviceBuffer<double> rows_;             // [N, dirmoe_stat_columns(E)]
  cuda::DeviceBuffer<double> sums_;
  cuda::DeviceBuffer<double> fraction_;   // [E]
  cuda::DeviceBuffer<double> stats_dev_;  // [kDirMoEStats]
  cuda::DeviceBuffer<int64_t> bad_;       // [1]
  cuda::DeviceBuffer<int64_t> offsets_;   // [N+1]
  cuda::DeviceBuffer<int32_t> experts_;   // [N * max_active]
  cuda::DeviceBuffer<float> dr_t_;        // [N,E]
  cuda::DeviceBuffer<float> du_;          // [N,3E]
  cuda::DeviceBuffer<float> dh32_;
  cuda::DeviceBuffer<T> dh_t_;
};

// ProbMoE on the device (ProbMoERouter's semantics: exact k-subset sampling from the log-space DP
// with the CPU's Philox draws, Dynamic-k, the straight-through weights and the marginals'
// Hessian-vector product in backward). Subset sizes up to cuda::kProbMoEMaxK.
// NOTE: as for DirMoE, out.nnz is the capacity N * k_max until read_stats() sets the count.
template <class T>
class CudaProbMoERouter {
 public:
  CudaProbMoERouter(const RouterConfig& cfg, int64_t hidden, int num_experts,
                    const std::string& prefix, cublasHandle_t handle, cudaStream_t stream);

  void forward(const T* d_h, int64_t N, const RouterContext& ctx, DeviceRouting& out);
  void backward(const float* d_dweights, double loss_scale, T* d_dh);
  const RouterStats& read_stats();
  double loss() const { return stats_.aux_loss + stats_.z_loss; }  // after read_stats()

  cuda::DeviceParameter& weight() { return weight_; }     // [E,d]
  const double* marginals() const { return mu_.data(); }  // [N,E] of the last forward

 private:
  RouterConfig cfg_;
  int64_t d_;
  int E_;
  cuda::ProbMoEKernelParams params_;
  cublasHandle_t handle_;
  cudaStream_t stream_;
  cuda::DeviceParameter weight_;
  RouterStats stats_;
  RouterContext ctx_;
  int64_t N_ = 0;
  bool has_forward_ = false;
  DeviceRouting* last_out_ = nullptr;

  cuda::DeviceBuffer<float> h32_;               // [N,d]
  cuda::DeviceBuffer<float> logits_;            // [N,E]
  cuda::DeviceBuffer<double> s_;                // [N,E] softmax
  cuda::DeviceBuffer<double> mu_;               // [N,E]
  cuda::DeviceBuffer<double> lse_;              // [N]
  cuda::DeviceBuffer<int32_t> padded_experts_;  // [N, k_max]
  cuda::DeviceBuffer<float> padded_weights_;    // [N, k_max]
  cuda::DeviceBuffer<int32_t> counts_;          // [N]
  cuda::DeviceBuffer<double> rows_;             // [N, probmoe_stat_columns(E)]
  cuda::DeviceBuffer<double> sums_;
  cuda::DeviceBuffer<double> fraction_;   // [E]
  cuda::DeviceBuffer<double> stats_dev_;  // [kProbMoEStats]
  cuda::DeviceBuffer<int64_t> bad_;       // [1]
  cuda::DeviceBuffer<int64_t> offsets_;   // [N+1]
  cuda::DeviceBuffer<int32_t> experts_;   // [N * k_max]
  cuda::DeviceBuffer<float> dlogits_;     // [N,E]
  cuda::DeviceBuffer<float> dh32_;
  cuda::DeviceBuffer<T> dh_t_;
};

// ReMoE on the device (ReMoERouter's semantics: R = ReLU(h W), the open gates in increasing expert
// id with weight R_e, 0..E experts per token, the load-weighted L1 term with the trainer's lambda).
// NOTE: as for DirMoE, out.nnz is the capacity N * E until read_stats() sets the count.
template <class T>
class CudaReMoERouter {
 public:
  CudaReMoERouter(const RouterConfig& cfg, int64_t hidden, int num_experts,
                  const std::string& prefix, cublasHandle_t handle, cudaStream_t stream);

  void forward(const T* d_h, int64_t N, const RouterContext& ctx, DeviceRouting& out);
  // d_dweights may be null when read_stats() found an empty routing.
  void backward(const float* d_dweights, double loss_scale, T* d_dh);
  const RouterStats& read_stats();
  double loss() const { return l1_; }  // after read_stats()
  double lambda() const { return lambda_; }

  cuda::DeviceParameter& weight() { return weight_; }     // [E,d]
  const float* logits() const { return logits_.data(); }  // [N,E] of the last forward

 private:
  RouterConfig cfg_;
  int64_t d_;
  int E_;
  cublasHandle_t handle_;
  cudaStream_t stream_;
  cuda::DeviceParameter weight_;
  RouterStats stats_;
  RouterContext ctx_;
  double l1_ = 0;
  double lambda_ = 0;
  int64_t N_ = 0;
  int64_t nnz_read_ = -1;  // nnz of the last forward once read_stats() read it
  bool has_forward_ = false;
  DeviceRouting* last_out_ = nullptr;

  cuda::DeviceBuffer<float> h32_;               // [N,d]
  cuda::DeviceBuffer<float> logits_;            // [N,E]
  cuda::DeviceBuffer<int32_t> padded_experts_;  // [N,E]
  cuda::DeviceBuffer<float> padded_weights_;    // [N,E]
  cuda::DeviceBuffer<int32_t> counts_;          // [N]
  cuda::DeviceBuffer<double> rows_;             // [N, remoe_stat_columns(E)]
  cuda::DeviceBuffer<double> sums_;             // [remoe_stat_columns(E)]
  cuda::DeviceBuffer<double> coef_;             // [E] dL1/dR_te
  cuda::DeviceBuffer<double> stats_dev_;        // [kReMoEStats]
  cuda::DeviceBuffer<int64_t> bad_;             // [1]
  cuda::DeviceBuffer<int64_t> offsets_;         // [N+1]
  cuda::DeviceBuffer<int32_t> experts_;         // [N*E]
  cuda::DeviceBuffer<float> dlogits_;           // [N,E]
  cuda::DeviceBuffer<float> dh32_;
  cuda::DeviceBuffer<T> dh_t_;
};

}  // namespace dirmoe
