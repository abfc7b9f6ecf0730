// Device routers (see cuda_router.h): host orchestration only, the kernels live in kernels/cuda.
#include "router/cuda/cuda_router.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "router/noise.h"
#include "kernels/routing/remoe.h"
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

template <class T>
CudaDirMoERouter<T>::CudaDirMoERouter(const RouterConfig& cfg, int64_t hidden, int num_experts,
                                      const std::string& prefix, cublasHandle_t handle,
                                      cudaStream_t stream)
    : cfg_(cfg), d_(hidden), E_(num_experts), handle_(handle), stream_(stream) {
  validate_router_config(cfg, hidden, num_experts);
  DIRMOE_CHECK(cfg.type == "dirmoe", "CudaDirMoERouter built for router type '", cfg.type, "'");
  DIRMOE_CHECK(num_experts <= cuda::kRouterMaxExperts,
               "moe.num_experts: the GPU routers take at most ", cuda::kRouterMaxExperts,
               " experts, got ", num_experts);
  max_active_ = std::min(cfg.dirmoe.max_active, num_experts);
  const DirMoEPriorConfig& p = cfg.dirmoe.prior;
  if (p.is_explicit()) {
    prior_.a_hi = p.a_hi;
    prior_.a_lo = p.a_lo;
    prior_.lambda = p.lambda_p;
  } else {
    prior_ = calibrate_dirichlet_prior(num_experts, cfg.k, p.m, p.h);
  }
  weight_ = cuda::DeviceParameter(prefix + ".weight", {3 * num_experts, hidden}, false);
  decoder_ = cuda::DeviceParameter(prefix + ".decoder.weight", {hidden, num_experts}, false);
  decoder_bias_ = cuda::DeviceParameter(prefix + ".decoder.bias", {hidden}, false);
  decoder_bias_.decay = false;
  for (cuda::DeviceParameter* q : {&weight_, &decoder_, &decoder_bias_}) {
    q->master.fill_bytes(0, stream_);
    q->zero_grad(stream_);
  }
  sums_.resize(cuda::dirmoe_stat_columns(E_));
  fraction_.resize(E_);
  stats_dev_.resize(cuda::kDirMoEStats);
  bad_.resize(1);
}

template <class T>
cuda::DirMoEKernelParams CudaDirMoERouter<T>::kernel_params(const RouterContext& ctx, bool noisy,
                                                            bool hard) const {
  const DirMoEConfig& c = cfg_.dirmoe;
  cuda::DirMoEKernelParams p;
  p.E = E_;
  p.k = cfg_.k;
  p.max_active = max_active_;
  p.r_min = c.r_min;
  p.tau = tau_;
  p.lambda_q = lambda_q_;
  p.alpha_floor = c.alpha_floor;
  p.prior_a_hi = prior_.a_hi;
  p.prior_a_lo = prior_.a_lo;
  p.prior_lambda = prior_.lambda;
  p.noisy = noisy;
  p.hard = hard;
  p.inverse = c.gamma_sampler == "inverse_cdf";
  p.expected_count = c.sparsity_on == "expected";
  p.renormalize = cfg_.renormalize;
  const routing::NoiseKey gate = RouterNoise(ctx, NoisePurpose::kGate).key();
  const routing::NoiseKey gamma = RouterNoise(ctx, NoisePurpose::kGamma).key();
  p.gate_seed = gate.seed;
  p.gamma_seed = gamma.seed;
  p.step = gate.step;
  p.gate_layer_purpose = gate.layer_purpose;
  p.gamma_layer_purpose = gamma.layer_purpose;
  p.token0 = gate.token0;
  return p;
}

template <class T>
void CudaDirMoERouter<T>::forward(const T* d_h, int64_t N, const RouterContext& ctx,
                                  DeviceRouting& out) {
  DIRMOE_CHECK(N >= 0, "router ", weight_.name, ": negative token count ", N);
  DIRMOE_CHECK(N == 0 || d_h != nullptr, "router ", weight_.name, ": null input for ", N,
               " tokens");
  const DirMoEConfig& c = cfg_.dirmoe;
  const int E = E_;
  const int64_t d = d_;
  if (ctx.training) last_step_ = ctx.step;
  tau_ = c.tau.at(last_step_);
  lambda_q_ = c.lambda_q.at(last_step_);
  beta_ = c.beta.at(last_step_);
  recon_w_ = c.recon_weight.at(last_step_);
  lambda_s_ = c.lambda_sparsity.at(last_step_);
  const bool noisy = ctx.training || c.eval == "sample";
  const bool hard = !ctx.training && c.eval == "gate";
  N_ = N;
  ctx_ = ctx;
  has_forward_ = true;
  differentiable_ = noisy;
  params_ = kernel_params(ctx, noisy, hard);
  last_out_ = &out;

  h32_.grow(N * d);
  u_.grow(N * 3 * E);
  saved_.grow(cuda::kDirMoERows * N * E + 2 * N);
  r_t_.grow(N * E);
  err_.grow(N * d);
  padded_experts_.grow(N * max_active_);
  padded_weights_.grow(N * max_active_);
  counts_.grow(N);
  rows_.grow(N * cuda::dirmoe_stat_columns(E));
  out.num_tokens = N;
  out.num_experts = E;
  out.nnz = N * max_active_;
  out.offsets.grow(N + 1);
  out.experts.grow(N * max_active_);
  out.weights.grow(N * max_active_);
  bad_.fill_bytes(0x7F, stream_);
  to_fp32(h32_.data(), d_h, N * d, stream_);
  if (N > 0) {
    cuda::linear_forward<float>(handle_, u_.data(), h32_.data(), weight_.master.data(), N, d, 3 * E,
                                false, stream_);
    cuda::dirmoe_route_forward(saved_.data(), r_t_.data(), padded_experts_.data(),
                               padded_weights_.data(), counts_.data(), rows_.data(), u_.data(), N,
                               params_, bad_.data(), stream_);
    cuda::linear_forward<float>(handle_, err_.data(), r_t_.data(), decoder_.master.data(), N, E, d,
                                false, stream_);
    cuda::dirmoe_recon_forward(err_.data(), rows_.data(), decoder_bias_.master.data(), h32_.data(),
                               N, d, E, stream_);
  }
  cuda::router_offsets(out.offsets.data(), counts_.data(), N, stream_);
  cuda::router_compact(out.experts.data(), out.weights.data(), padded_experts_.data(),
                       padded_weights_.data(), out.offsets.data(), N, max_active_, stream_);
  offsets_.grow(N + 1);
  experts_.grow(N * max_active_);
  DIRMOE_CUDA_CHECK(cudaMemcpyAsync(offsets_.data(), out.offsets.data(), sizeof(int64_t) * (N + 1),
                                    cudaMemcpyDeviceToDevice, stream_));
  if (N > 0)
    DIRMOE_CUDA_CHECK(cudaMemcpyAsync(experts_.data(), out.experts.data(),
                                      sizeof(int32_t) * N * max_active_, cudaMemcpyDeviceToDevice,
                                      stream_));
  cuda::router_column_sums(sums_.data(), rows_.data(), N, cuda::dirmoe_stat_columns(E), stream_);
  cuda::dirmoe_route_finalize(fraction_.data(), stats_dev_.data(), sums_.data(), N, E,
                              cfg_.aux_loss_coef, beta_, recon_w_, lambda_s_, stream_);
}

template <class T>
void CudaDirMoERouter<T>::backward(const float* d_dweights, double loss_scale, T* d_dh) {
  DIRMOE_CHECK(has_forward_, "router ", weight_.name, ": backward called before forward");
  DIRMOE_CHECK(differentiable_, "router ", weight_.name,
               ": backward after an evaluation forward with deterministic gates (eval: ",
               cfg_.dirmoe.eval, ")");
  const int64_t N = N_;
  if (N == 0) return;
  DIRMOE_CHECK(d_dweights != nullptr && d_dh != nullptr, "router ", weight_.name,
               ": null dweights or dh");
  const int E = E_;
  const int64_t d = d_;
  const double inv_n = 1.0 / static_cast<double>(N);
  dr_t_.grow(N * E);
  du_.grow(N * 3 * E);
  cuda::dirmoe_recon_backward(err_.data(), decoder_bias_.grad.data(),
                              loss_scale * recon_w_ * 2.0 * inv_n / static_cast<double>(d), N, d,
                              stream_);
  cuda::linear_backward<float>(handle_, dr_t_.data(), decoder_.grad.data(), err_.data(),
                               r_t_.data(), decoder_.master.data(), N, E, d, false, stream_);
  cuda::dirmoe_route_backward(du_.data(), dr_t_.data(), saved_.data(), u_.data(), offsets_.data(),
                              experts_.data(), d_dweights, fraction_.data(), N, params_,
                              loss_scale * beta_ * inv_n, loss_scale * lambda_s_ * 2.0 * inv_n,
                              loss_scale * cfg_.aux_loss_coef * E * inv_n,
                              prior_.lambda * (prior_.a_hi - prior_.a_lo), stream_);
  add_input_grad<T>(handle_, d_dh, dh32_, dh_t_, weight_.grad.data(), du_.data(), h32_.data(),
                    weight_.master.data(), N, d, 3 * E, stream_);
}

template <class T>
const RouterStats& CudaDirMoERouter<T>::read_stats() {
  DIRMOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  const std::vector<double> s = stats_dev_.download();
  const std::vector<int64_t> bad = bad_.download();
  if (bad[0] != cuda::kRouterNoBad) {
    const bool conc = (bad[0] & cuda::kRouterBadConcentration) != 0;
    throw_if_bad(bad[0] & ~int64_t{cuda::kRouterBadConcentration}, weight_.name, ctx_,
                 conc ? "concentration pre-activations" : "logits");
  }
  if (last_out_ != nullptr && N_ > 0) {
    DIRMOE_CUDA_CHECK(
        cudaMemcpy(&last_out_->nnz, offsets_.data() + N_, sizeof(int64_t), cudaMemcpyDeviceToHost));
  }
  stats_.aux_loss = s[0];
  loss_ = s[1];
  stats_.z_loss = 0;
  stats_.mean_active = s[2];
  stats_.scalars = {{"target_k", static_cast<double>(cfg_.k)},
                    {"undispatched_mass", s[3]},
                    {"kl", s[4]},
                    {"recon", s[5]},
                    {"sparsity", s[6]},
                    {"sum_gates", s[7]},
                    {"open_gates", s[8]},
                    {"no_open_gate", s[9]},
                    {"tau", tau_},
                    {"lambda_q", lambda_q_},
                    {"gate_entropy", s[10]},
                    {"near_binary", s[11]},
                    {"dead_experts", s[12]}};
  return stats_;
}

template class CudaDirMoERouter<float>;
template class CudaDirMoERouter<cuda::bf16>;

template <class T>
CudaProbMoERouter<T>::CudaProbMoERouter(const RouterConfig& cfg, int64_t hidden, int num_experts,
                                        const std::string& prefix, cublasHandle_t handle,
                                        cudaStream_t stream)
    : cfg_(cfg), d_(hidden), E_(num_experts), handle_(handle), stream_(stream) {
  validate_router_config(cfg, hidden, num_experts);
  DIRMOE_CHECK(cfg.type == "probmoe", "CudaProbMoERouter built for router type '", cfg.type, "'");
  DIRMOE_CHECK(num_experts <= cuda::kRouterMaxExperts,
               "moe.num_experts: the GPU routers take at most ", cuda::kRouterMaxExperts,
               " experts, got ", num_experts);
  const bool dynamic = cfg.probmoe.mode == "dynamic";
  params_.E = num_experts;
  params_.k_lo = dynamic ? cfg.probmoe.k_min : cfg.k;
  params_.k_hi = dynamic ? cfg.probmoe.k_max : cfg.k;
  params_.dynamic = dynamic;
  DIRMOE_CHECK(params_.k_hi <= cuda::kProbMoEMaxK,
               dynamic ? "moe.router.probmoe.k_max" : "moe.router.k",
               ": the GPU ProbMoE router takes subsets of at most ", cuda::kProbMoEMaxK,
               " experts, got ", params_.k_hi);
  weight_ = cuda::DeviceParameter(prefix + ".weight", {num_experts, hidden}, false);
  weight_.master.fill_bytes(0, stream_);
  weight_.zero_grad(stream_);
  sums_.resize(cuda::probmoe_stat_columns(E_));
  fraction_.resize(E_);
  stats_dev_.resize(cuda::kProbMoEStats);
  bad_.resize(1);
}

template <class T>
void CudaProbMoERouter<T>::forward(const T* d_h, int64_t N, const RouterContext& ctx,
                                   DeviceRouting& out) {
  DIRMOE_CHECK(N >= 0, "router ", weight_.name, ": negative token count ", N);
  DIRMOE_CHECK(N == 0 || d_h != nullptr, "router ", weight_.name, ": null input for ", N,
               " tokens");
  const int E = E_, kmax = params_.k_hi;
  N_ = N;
  ctx_ = ctx;
  has_forward_ = true;
  last_out_ = &out;
  params_.training = ctx.training;
  const routing::NoiseKey subset = RouterNoise(ctx, NoisePurpose::kSubset).key();
  const routing::NoiseKey size = RouterNoise(ctx, NoisePurpose::kSubsetSize).key();
  params_.subset_seed = subset.seed;
  params_.size_seed = size.seed;
  params_.step = subset.step;
  params_.subset_layer_purpose = subset.layer_purpose;
  params_.size_layer_purpose = size.layer_purpose;
  params_.token0 = subset.token0;

  h32_.grow(N * d_);
  logits_.grow(N * E);
  s_.grow(N * E);
  mu_.grow(N * E);
  lse_.grow(N);
  padded_experts_.grow(N * kmax);
  padded_weights_.grow(N * kmax);
  counts_.grow(N);
  rows_.grow(N * cuda::probmoe_stat_columns(E));
  out.num_tokens = N;
  out.num_experts = E;
  out.nnz = N * kmax;
  out.offsets.grow(N + 1);
  out.experts.grow(N * kmax);
  out.weights.grow(N * kmax);
  bad_.fill_bytes(0x7F, stream_);
  to_fp32(h32_.data(), d_h, N * d_, stream_);
  if (N > 0) {
    cuda::linear_forward<float>(handle_, logits_.data(), h32_.data(), weight_.master.data(), N, d_,
                                E, false, stream_);
    cuda::probmoe_route_forward(s_.data(), mu_.data(), lse_.data(), padded_experts_.data(),
                                padded_weights_.data(), counts_.data(), rows_.data(),
                                logits_.data(), N, params_, bad_.data(), stream_);
  }
  cuda::router_offsets(out.offsets.data(), counts_.data(), N, stream_);
  cuda::router_compact(out.experts.data(), out.weights.data(), padded_experts_.data(),
                       padded_weights_.data(), out.offsets.data(), N, kmax, stream_);
  offsets_.grow(N + 1);
  experts_.grow(N * kmax);
  DIRMOE_CUDA_CHECK(cudaMemcpyAsync(offsets_.data(), out.offsets.data(), sizeof(int64_t) * (N + 1),
                                    cudaMemcpyDeviceToDevice, stream_));
  if (N > 0)
    DIRMOE_CUDA_CHECK(cudaMemcpyAsync(experts_.data(), out.experts.data(),
                                      sizeof(int32_t) * N * kmax, cudaMemcpyDeviceToDevice,
                                      stream_));
  cuda::router_column_sums(sums_.data(), rows_.data(), N, cuda::probmoe_stat_columns(E), stream_);
  cuda::probmoe_route_finalize(fraction_.data(), stats_dev_.data(), sums_.data(), N, E,
                               cfg_.aux_loss_coef, cfg_.z_loss_coef, stream_);
}

template <class T>
void CudaProbMoERouter<T>::backward(const float* d_dweights, double loss_scale, T* d_dh) {
  DIRMOE_CHECK(has_forward_, "router ", weight_.name, ": backward called before forward");
  const int64_t N = N_;
  if (N == 0) return;
  DIRMOE_CHECK(d_dweights != nullptr && d_dh != nullptr, "router ", weight_.name,
               ": null dweights or dh");
  dlogits_.grow(N * E_);
  cuda::probmoe_route_backward(
      dlogits_.data(), logits_.data(), s_.data(), lse_.data(), offsets_.data(), experts_.data(),
      d_dweights, fraction_.data(), N, params_,
      loss_scale * cfg_.aux_loss_coef * E_ / static_cast<double>(N),
      loss_scale * cfg_.z_loss_coef * 2.0 / static_cast<double>(N), stream_);
  add_input_grad<T>(handle_, d_dh, dh32_, dh_t_, weight_.grad.data(), dlogits_.data(), h32_.data(),
                    weight_.master.data(), N, d_, E_, stream_);
}

template <class T>
const RouterStats& CudaProbMoERouter<T>::read_stats() {
  DIRMOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  const std::vector<double> s = stats_dev_.download();
  const std::vector<int64_t> bad = bad_.download();
  throw_if_bad(bad[0], weight_.name, ctx_, "logits");
  if (last_out_ != nullptr && N_ > 0) {
    DIRMOE_CUDA_CHECK(
        cudaMemcpy(&last_out_->nnz, offsets_.data() + N_, sizeof(int64_t), cudaMemcpyDeviceToHost));
  }
  stats_.aux_loss = s[0];
  stats_.z_loss = s[1];
  stats_.mean_active = s[2];
  stats_.scalars = {{"target_k", static_cast<double>(cfg_.k)},
                    {"expected_k", s[3]},
                    {"undispatched_mass", s[4]},
                    {"gate_entropy", s[5]},
                    {"near_binary", s[6]},
                    {"dead_experts", s[7]}};
  return stats_;
}

template class CudaProbMoERouter<float>;
template class CudaProbMoERouter<cuda::bf16>;

template <class T>
CudaReMoERouter<T>::CudaReMoERouter(const RouterConfig& cfg, int64_t hidden, int num_experts,
                                    const std::string& prefix, cublasHandle_t handle,
                                    cudaStream_t stream)
    : cfg_(cfg), d_(hidden), E_(num_experts), handle_(handle), stream_(stream) {
  validate_router_config(cfg, hidden, num_experts);
  DIRMOE_CHECK(cfg.type == "remoe", "CudaReMoERouter built for router type '", cfg.type, "'");
  DIRMOE_CHECK(num_experts <= cuda::kRouterMaxExperts,
               "moe.num_experts: the GPU routers take at most ", cuda::kRouterMaxExperts,
               " experts, got ", num_experts);
  weight_ = cuda::DeviceParameter(prefix + ".weight", {num_experts, hidden}, false);
  weight_.master.fill_bytes(0, stream_);
  weight_.zero_grad(stream_);
  sums_.resize(cuda::remoe_stat_columns(E_));
  coef_.resize(E_);
  stats_dev_.resize(cuda::kReMoEStats);
  bad_.resize(1);
}

template <class T>
void CudaReMoERouter<T>::forward(const T* d_h, int64_t N, const RouterContext& ctx,
                                 DeviceRouting& out) {
  DIRMOE_CHECK(N >= 0, "router ", weight_.name, ": negative token count ", N);
  DIRMOE_CHECK(N == 0 || d_h != nullptr, "router ", weight_.name, ": null input for ", N,
               " tokens");
  const int E = E_;
  lambda_ = remoe_lambda_of(ctx.remoe_lambda, cfg_.remoe.lambda_init);
  N_ = N;
  ctx_ = ctx;
  has_forward_ = true;
  nnz_read_ = -1;
  last_out_ = &out;

  h32_.grow(N * d_);
  logits_.grow(N * E);
  padded_experts_.grow(N * E);
  padded_weights_.grow(N * E);
  counts_.grow(N);
  rows_.grow(N * cuda::remoe_stat_columns(E));
  out.num_tokens = N;
  out.num_experts = E;
  out.nnz = N * E;
  out.offsets.grow(N + 1);
  out.experts.grow(N * E);
  out.weights.grow(N * E);
  bad_.fill_bytes(0x7F, stream_);
  to_fp32(h32_.data(), d_h, N * d_, stream_);
  if (N > 0) {
    cuda::linear_forward<float>(handle_, logits_.data(), h32_.data(), weight_.master.data(), N, d_,
                                E, false, stream_);
    cuda::remoe_route_forward(padded_experts_.data(), padded_weights_.data(), counts_.data(),
                              rows_.data(), logits_.data(), N, E, bad_.data(), stream_);
  }
  cuda::router_offsets(out.offsets.data(), counts_.data(), N, stream_);
  cuda::router_compact(out.experts.data(), out.weights.data(), padded_experts_.data(),
                       padded_weights_.data(), out.offsets.data(), N, E, stream_);
  offsets_.grow(N + 1);
  experts_.grow(N * E);
  DIRMOE_CUDA_CHECK(cudaMemcpyAsync(offsets_.data(), out.offsets.data(), sizeof(int64_t) * (N + 1),
                                    cudaMemcpyDeviceToDevice, stream_));
  if (N > 0)
    DIRMOE_CUDA_CHECK(cudaMemcpyAsync(experts_.data(), out.experts.data(), sizeof(int32_t) * N * E,
                                      cudaMemcpyDeviceToDevice, stream_));
  cuda::router_column_sums(sums_.data(), rows_.data(), N, cuda::remoe_stat_columns(E), stream_);
  cuda::remoe_route_finalize(coef_.data(), stats_dev_.data(), sums_.data(), N, E, cfg_.k, lambda_,
                             stream_);
}

template <class T>
void CudaReMoERouter<T>::backward(const float* d_dweights, double loss_scale, T* d_dh) {
  DIRMOE_CHECK(has_forward_, "router ", weight_.name, ": backward called before forward");
  const int64_t N = N_;
  if (N == 0) return;
  DIRMOE_CHECK(d_dh != nullptr && (d_dweights != nullptr || nnz_read_ == 0), "router ",
               weight_.name, ": null dweights or dh");
  dlogits_.grow(N * E_);
  cuda::remoe_route_backward(dlogits_.data(), logits_.data(), offsets_.data(), experts_.data(),
                             d_dweights, coef_.data(), N, E_, loss_scale, stream_);
  add_input_grad<T>(handle_, d_dh, dh32_, dh_t_, weight_.grad.data(), dlogits_.data(), h32_.data(),
                    weight_.master.data(), N, d_, E_, stream_);
}

template <class T>
const RouterStats& CudaReMoERouter<T>::read_stats() {
  DIRMOE_CUDA_CHECK(cudaStreamSynchronize(stream_));
  const std::vector<double> s = stats_dev_.download();
  const std::vector<int64_t> bad = bad_.download();
  throw_if_bad(bad[0], weight_.name, ctx_, "logit");
  int64_t nnz = 0;
  if (N_ > 0)
    DIRMOE_CUDA_CHECK(
        cudaMemcpy(&nnz, offsets_.data() + N_, sizeof(int64_t), cudaMemcpyDeviceToHost));
  nnz_read_ = nnz;
  if (last_out_ != nullptr) last_out_->nnz = nnz;
  l1_ = s[0];
  stats_.aux_loss = 0;
  stats_.z_loss = 0;
  stats_.mean_active = s[2];
  stats_.scalars = {{"target_k", static_cast<double>(cfg_.k)},
                    {"sparsity", s[3]},
                    {"no_expert", s[4]},
                    {"lambda", lambda_},
                    {"l1_reg", s[0]},
                    {"l1_load", s[1]},
                    {"gate_mean", s[5]}};
  return stats_;
}

template class CudaReMoERouter<float>;
template class CudaReMoERouter<cuda::bf16>;

}  // namespace dirmoe
