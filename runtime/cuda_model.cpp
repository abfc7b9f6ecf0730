// LLaMA-MoE forward/backward on kernels/cuda; see cuda_model.h. The op sequence is Model<T>::run's,
// one for one, so that fp32 mode reproduces the CPU model up to float reassociation.
#include "runtime/cuda_model.h"

#include <cublas_v2.h>

#include <algorithm>
#include <string>
#include <type_traits>

#include "experts/moe_layer_cuda.h"
#include "kernels/cuda/api.cuh"
#include "kernels/cuda/device_buffer.h"
#include "runtime/core/cuda_check.h"
#include "runtime/core/error.h"
#include "runtime/core/trace.h"

namespace dirmoe {
namespace {

constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;
// Tokens per LM-head chunk: 2048 x 51200 logits are 200 MB in bf16 (0.8 GB for a whole 8 x 1024
// micro-batch), and a 2048 x 768 x 51200 GEMM still fills the GPU.
constexpr int64_t kHeadChunkRows = 2048;

}  // namespace

template <class T>
struct CudaModel<T>::Impl {
  using DP = cuda::DeviceParameter;
  template <class V>
  using DB = cuda::DeviceBuffer<V>;
  static constexpr bool kHalf = !std::is_same_v<T, float>;
  // The weights a T matmul reads: the fp32 master or its bf16 copy.
  static const T* w(const DP& p) { return p.template weights<T>(); }

  struct Layer {
    DP attn_norm, wq, wk, wv, wo, ffn_norm;
    std::unique_ptr<CudaMoELayer<T>> moe;
    DB<T> x_in, xn1, q, k, v, att, x_mid, xn2;
    DB<float> rstd1, rstd2, lse;
  };

  Config cfg;
  cudaStream_t stream;
  cublasHandle_t handle = nullptr;
  DB<uint8_t> cublas_workspace;
  int64_t d, hd, Hq, Hkv, Vp, V, S;
  DP embed, final_norm, lm_head;
  std::vector<Layer> layers;
  DB<float> rope_cos, rope_sin;

  int64_t capacity_B = 0;
  DB<T> x, moe_out, xf, logits, dres, dtmp, dq, dk, dv, datt;
  DB<float> rstd_f, ce_lse, losses, norm_scratch, attn_scratch;
  DB<int32_t> inputs, targets;
  cuda::PinnedBuffer<int32_t> h_inputs, h_targets;  // [N]
  cuda::PinnedBuffer<float> h_losses;               // [N]

  Impl(const Config& c, Communicator* ep_host, Communicator* ep_dev, const Placement& placement,
       cudaStream_t st)
      : cfg(c), stream(st) {
    const auto& m = cfg.model;
    d = m.hidden;
    hd = m.head_dim();
    Hq = m.heads;
    Hkv = m.kv_heads;
    Vp = m.padded_vocab();
    V = m.vocab_size;
    S = m.seq_len;
    DIRMOE_CHECK(hd == 32 || hd == 64 || hd == 96 || hd == 128,
                 "model: the CUDA attention supports "
                 "head dims 32, 64, 96 and 128, but hidden / heads = ",
                 hd);
    DIRMOE_CUBLAS_CHECK(cublasCreate(&handle));
    DIRMOE_CUBLAS_CHECK(cublasSetStream(handle, stream));
    cublas_workspace.resize(static_cast<int64_t>(kCublasWorkspaceBytes));
    DIRMOE_CUBLAS_CHECK(
        cublasSetWorkspace(handle, cublas_workspace.data(), cublas_workspace.bytes()));

    embed = DP("embed", {Vp, d}, kHalf);
    final_norm = DP("final_norm", {d}, false);
    lm_head = DP("lm_head", {Vp, d}, kHalf);
    final_norm.decay = false;
    MoEConfig moe_cfg = cfg.moe;
    moe_cfg.hidden = d;
    moe_cfg.ffn_hidden = m.ffn_hidden;
    layers.resize(m.layers);
    for (int l = 0; l < m.layers; ++l) {
      Layer& L = layers[l];
      const std::string p = "layers." + std::to_string(l) + ".";
      L.attn_norm = DP(p + "attn_norm", {d}, false);
      L.wq = DP(p + "attn.wq", {Hq * hd, d}, kHalf);
      L.wk = DP(p + "attn.wk", {Hkv * hd, d}, kHalf);
      L.wv = DP(p + "attn.wv", {Hkv * hd, d}, kHalf);
      L.wo = DP(p + "attn.wo", {d, Hq * hd}, kHalf);
      L.ffn_norm = DP(p + "ffn_norm", {d}, false);
      L.attn_norm.decay = L.ffn_norm.decay = false;
      L.moe =
          std::make_unique<CudaMoELayer<T>>(moe_cfg, placement, ep_host, ep_dev, l, handle, stream);
    }
    rope_cos.resize(S * hd / 2);
    rope_sin.resize(S * hd / 2);
    cuda::rope_table(rope_cos.data(), rope_sin.data(), S, hd, m.rope_base, stream);
    // Uploads above went through the legacy default stream, which does not order with `stream`.
    DIRMOE_CUDA_CHECK(cudaDeviceSynchronize());
  }

  ~Impl() {
    if (handle != nullptr) (void)cublasDestroy(handle);
  }

  std::vector<DP*> replicated() {
    std::vector<DP*> out = {&embed};
    for (Layer& L : layers)
      for (DP* p : {&L.attn_norm, &L.wq, &L.wk, &L.wv, &L.wo, &L.ffn_norm}) out.push_back(p);
    out.push_back(&final_norm);
    out.push_back(&lm_head);
    return out;
  }

  void ensure(int64_t B) {
    if (B <= capacity_B) return;
    const int64_t N = B * S;
    for (Layer& L : layers) {
      L.x_in.resize(N * d);
      L.xn1.resize(N * d);
      L.q.resize(N * Hq * hd);
      L.k.resize(N * Hkv * hd);
      L.v.resize(N * Hkv * hd);
      L.att.resize(N * Hq * hd);
      L.x_mid.resize(N * d);
      L.xn2.resize(N * d);
      L.rstd1.resize(N);
      L.rstd2.resize(N);
      L.lse.resize(B * Hq * S);
    }
    for (DB<T>* b : {&x, &moe_out, &xf, &dres, &dtmp}) b->resize(N * d);
    logits.resize(std::min(N, kHeadChunkRows) * Vp);
    dq.resize(N * Hq * hd);
    datt.resize(N * Hq * hd);
    dk.resize(N * Hkv * hd);
    dv.resize(N * Hkv * hd);
    rstd_f.resize(N);
    ce_lse.resize(N);
    losses.resize(N);
    norm_scratch.resize(static_cast<int64_t>(cuda::rmsnorm_backward_scratch_floats(N, d)));
    attn_scratch.resize(static_cast<int64_t>(cuda::attention_backward_scratch_floats(B, S, Hq)));
    inputs.resize(N);
    targets.resize(N);
    capacity_B = B;
  }

  void copy(T* dst, const T* src, int64_t n) {
    DIRMOE_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * sizeof(T),
                                      cudaMemcpyDeviceToDevice, stream));
  }

  MicroBatchResult run(const int32_t* tokens, int64_t B, RouterContext ctx, double loss_scale,
                       bool backward) {
    ensure(B);
    const int64_t N = B * S;
    const float eps = static_cast<float>(cfg.model.norm_eps);
    cudaStream_t st = stream;
    h_inputs.grow(N);
    h_targets.grow(N);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s) {
        h_inputs[b * S + s] = tokens[b * (S + 1) + s];
        h_targets[b * S + s] = tokens[b * (S + 1) + s + 1];
      }
    // NOTE: the CPU kernels' checks in their words (kernels/cpu/embedding.cpp, cross_entropy.cpp),
    // made on the host where the tokens are, before anything reaches the device.
    for (int64_t n = 0; n < N; ++n) {
      const int32_t tok = h_inputs[n], tgt = h_targets[n];
      DIRMOE_CHECK(tok >= 0 && tok < Vp, "token id ", tok, " at position ", n,
                   " is outside the vocabulary [0, ", Vp, ")");
      DIRMOE_CHECK(tgt == -1 || (tgt >= 0 && tgt < V), "target ", tgt, " at row ", n,
                   " is outside [0, ", V, ") and not -1 (ignored)");
    }
    DIRMOE_CUDA_CHECK(cudaMemcpyAsync(inputs.data(), h_inputs.data(), N * sizeof(int32_t),
                                      cudaMemcpyHostToDevice, st));
    DIRMOE_CUDA_CHECK(cudaMemcpyAsync(targets.data(), h_targets.data(), N * sizeof(int32_t),
                                      cudaMemcpyHostToDevice, st));
    // ---- forward ----
    trace::Recorder::get().set_pass(trace::Pass::kForward);
    cuda::embedding_forward<T>(x.data(), inputs.data(), w(embed), N, d, Vp, nullptr, st);
    MicroBatchResult res;
    for (size_t l = 0; l < layers.size(); ++l) {
      Layer& L = layers[l];
      trace::Scope attention_scope(trace::Phase::kAttention);
      copy(L.x_in.data(), x.data(), N * d);
      cuda::rmsnorm_forward<T>(L.xn1.data(), L.rstd1.data(), x.data(), L.attn_norm.master.data(), N,
                               d, eps, st);
      cuda::linear_forward<T>(handle, L.q.data(), L.xn1.data(), w(L.wq), N, d, Hq * hd, false, st);
      cuda::linear_forward<T>(handle, L.k.data(), L.xn1.data(), w(L.wk), N, d, Hkv * hd, false, st);
      cuda::linear_forward<T>(handle, L.v.data(), L.xn1.data(), w(L.wv), N, d, Hkv * hd, false, st);
      cuda::rope_forward<T>(L.q.data(), rope_cos.data(), rope_sin.data(), B, S, Hq, hd, 0, st);
      cuda::rope_forward<T>(L.k.data(), rope_cos.data(), rope_sin.data(), B, S, Hkv, hd, 0, st);
      cuda::attention_forward<T>(L.att.data(), L.lse.data(), L.q.data(), L.k.data(), L.v.data(), B,
                                 S, Hq, Hkv, hd, st);
      cuda::linear_forward<T>(handle, x.data(), L.att.data(), w(L.wo), N, Hq * hd, d,
                              /*accumulate=*/true, st);
      copy(L.x_mid.data(), x.data(), N * d);
      cuda::rmsnorm_forward<T>(L.xn2.data(), L.rstd2.data(), x.data(), L.ffn_norm.master.data(), N,
                               d, eps, st);
      attention_scope.end();
      ctx.layer = static_cast<int>(l);
      L.moe->forward(L.xn2.data(), moe_out.data(), N, ctx);
      cuda::add_inplace<T>(x.data(), moe_out.data(), N * d, st);
      res.router_loss += L.moe->router_loss();
    }
    cuda::rmsnorm_forward<T>(xf.data(), rstd_f.data(), x.data(), final_norm.master.data(), N, d,
                             eps, st);
    // The LM head and cross-entropy in chunks of kHeadChunkRows tokens, so the [N, Vp] logits are
    // never all resident: per chunk the logits, the loss and dlogits (in place), and when training
    // the head's backward at once (dx rows of the chunk into dtmp, dW accumulated).
    for (int64_t r0 = 0; r0 < N; r0 += kHeadChunkRows) {
      const int64_t rows = std::min(kHeadChunkRows, N - r0);
      const T* xr = xf.data() + r0 * d;
      cuda::linear_forward<T>(handle, logits.data(), xr, w(lm_head), rows, d, Vp, false, st);
      if (backward) {
        cuda::cross_entropy_fused<T>(losses.data() + r0, ce_lse.data() + r0, logits.data(),
                                     logits.data(), targets.data() + r0,
                                     static_cast<float>(loss_scale / N), rows, V, Vp, nullptr, st);
        cuda::linear_backward<T>(handle, dtmp.data() + r0 * d, lm_head.grad.data(), logits.data(),
                                 xr, w(lm_head), rows, d, Vp, false, st);
      } else {
        cuda::cross_entropy_forward<T>(losses.data() + r0, ce_lse.data() + r0, logits.data(),
                                       targets.data() + r0, rows, V, Vp, nullptr, st);
      }
    }
    h_losses.grow(N);
    DIRMOE_CUDA_CHECK(cudaMemcpyAsync(h_losses.data(), losses.data(), N * sizeof(float),
                                      cudaMemcpyDeviceToHost, st));
    DIRMOE_CUDA_CHECK(cudaStreamSynchronize(st));
    double total = 0;
    for (int64_t i = 0; i < N; ++i) total += h_losses[i];
    res.ce_loss = total / static_cast<double>(N);
    if (!backward) return res;

    // ---- backward ----
    trace::Recorder::get().set_pass(trace::Pass::kBackward);
    // dtmp holds dL/dxf from the chunked head above.
    cuda::rmsnorm_backward<T>(dres.data(), final_norm.grad.data(), dtmp.data(), x.data(),
                              final_norm.master.data(), rstd_f.data(), N, d, false,
                              norm_scratch.data(), st);
    for (int l = static_cast<int>(layers.size()) - 1; l >= 0; --l) {
      Layer& L = layers[l];
      L.moe->backward(dres.data(), loss_scale, dtmp.data());
      cuda::rmsnorm_backward<T>(dres.data(), L.ffn_norm.grad.data(), dtmp.data(), L.x_mid.data(),
                                L.ffn_norm.master.data(), L.rstd2.data(), N, d,
                                /*accumulate_dx=*/true, norm_scratch.data(), st);
      trace::Scope attention_scope(trace::Phase::kAttention);
      cuda::linear_backward<T>(handle, datt.data(), L.wo.grad.data(), dres.data(), L.att.data(),
                               w(L.wo), N, Hq * hd, d, false, st);
      cuda::attention_backward<T>(dq.data(), dk.data(), dv.data(), datt.data(), L.q.data(),
                                  L.k.data(), L.v.data(), L.att.data(), L.lse.data(), B, S, Hq, Hkv,
                                  hd, attn_scratch.data(), st);
      cuda::rope_backward<T>(dq.data(), rope_cos.data(), rope_sin.data(), B, S, Hq, hd, 0, st);
      cuda::rope_backward<T>(dk.data(), rope_cos.data(), rope_sin.data(), B, S, Hkv, hd, 0, st);
      cuda::linear_backward<T>(handle, dtmp.data(), L.wq.grad.data(), dq.data(), L.xn1.data(),
                               w(L.wq), N, d, Hq * hd, false, st);
      cuda::linear_backward<T>(handle, dtmp.data(), L.wk.grad.data(), dk.data(), L.xn1.data(),
                               w(L.wk), N, d, Hkv * hd, /*accumulate_dx=*/true, st);
      cuda::linear_backward<T>(handle, dtmp.data(), L.wv.grad.data(), dv.data(), L.xn1.data(),
                               w(L.wv), N, d, Hkv * hd, /*accumulate_dx=*/true, st);
      cuda::rmsnorm_backward<T>(dres.data(), L.attn_norm.grad.data(), dtmp.data(), L.x_in.data(),
                                L.attn_norm.master.data(), L.rstd1.data(), N, d,
                                /*accumulate_dx=*/true, norm_scratch.data(), st);
    }
    cuda::embedding_backward<T>(embed.grad.data(), inputs.data(), dres.data(), N, d, Vp, st);
    DIRMOE_CUDA_CHECK(cudaStreamSynchronize(st));
    return res;
  }
};

template <class T>
CudaModel<T>::CudaModel(const Config& cfg, Communicator* ep_host, Communicator* ep_dev,
                        const Placement& placement, cudaStream_t stream)
    : impl_(std::make_unique<Impl>(cfg, ep_host, ep_dev, placement, stream)) {}
template <class T>
CudaModel<T>::~CudaModel() = default;

template <class T>
void CudaModel<T>::init_weights(uint64_t seed) {
  std::vector<float> host;
  for (cuda::DeviceParameter* p : device_parameters()) {
    host.resize(static_cast<size_t>(p->numel()));
    init_parameter(impl_->cfg.model, p->name, host.data(), p->numel(), seed);
    p->master.upload(host);
  }
  for (Parameter<float>* p : router_parameters())
    init_parameter(impl_->cfg.model, p->name, p->value.data(), p->numel(), seed);
  // upload() copies through the legacy default stream: finish it before `stream` reads the weights.
  DIRMOE_CUDA_CHECK(cudaDeviceSynchronize());
  refresh_half_weights();
}

template <class T>
void CudaModel<T>::zero_grad() {
  for (cuda::DeviceParameter* p : device_parameters()) p->zero_grad(impl_->stream);
  for (Parameter<float>* p : router_parameters()) p->grad.zero();
  DIRMOE_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
}

template <class T>
void CudaModel<T>::refresh_half_weights() {
  for (cuda::DeviceParameter* p : device_parameters())
    if (p->half.size() > 0)
      cuda::convert<float, __nv_bfloat16>(p->half.data(), p->master.data(), p->numel(),
                                          impl_->stream);
  DIRMOE_CUDA_CHECK(cudaStreamSynchronize(impl_->stream));
}

template <class T>
MicroBatchResult CudaModel<T>::forward_backward(const int32_t* tokens, int64_t B, RouterContext ctx,
                                                double loss_scale, bool backward) {
  DIRMOE_CHECK(B >= 1, "micro-batch size must be positive, got ", B);
  return impl_->run(tokens, B, ctx, loss_scale, backward);
}

template <class T>
std::vector<cuda::DeviceParameter*> CudaModel<T>::device_parameters() {
  std::vector<cuda::DeviceParameter*> out = impl_->replicated();
  for (auto& L : impl_->layers)
    for (cuda::DeviceParameter* p : L.moe->expert_parameters()) out.push_back(p);
  return out;
}

template <class T>
std::vector<Parameter<float>*> CudaModel<T>::router_parameters() {
  std::vector<Parameter<float>*> out;
  for (auto& L : impl_->layers)
    for (Parameter<float>* p : L.moe->router_parameters()) out.push_back(p);
  return out;
}

template <class T>
int CudaModel<T>::num_layers() const {
  return static_cast<int>(impl_->layers.size());
}
template <class T>
const MoEStats& CudaModel<T>::moe_stats(int layer) const {
  return impl_->layers.at(layer).moe->stats();
}
template <class T>
const Routing<float>& CudaModel<T>::routing(int layer) const {
  return impl_->layers.at(layer).moe->routing();
}
template <class T>
const Config& CudaModel<T>::config() const {
  return impl_->cfg;
}
template <class T>
cudaStream_t CudaModel<T>::stream() const {
  return impl_->stream;
}

template class CudaModel<float>;
template class CudaModel<__nv_bfloat16>;

}  // namespace dirmoe
