// LLaMA-MoE forward/backward on the CPU op set; see model.h.
#include "runtime/model.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/cpu/ops.h"
#include "runtime/core/error.h"
#include "runtime/core/philox.h"
#include "runtime/core/trace.h"

namespace dirmoe {

template <class T>
struct Model<T>::Impl {
  struct Layer {
    Parameter<T> attn_norm, wq, wk, wv, wo, ffn_norm;
    std::unique_ptr<MoELayer<T>> moe;
    // Saved activations of the last forward, N = B*S rows.
    Buffer<T> x_in;    // [N,d] residual stream entering the block
    Buffer<T> rstd1;   // [N]
    Buffer<T> xn1;     // [N,d]
    Buffer<T> q;       // [N,Hq*hd] after RoPE
    Buffer<T> k;       // [N,Hkv*hd] after RoPE
    Buffer<T> v;       // [N,Hkv*hd]
    Buffer<T> att;     // [N,Hq*hd]
    Buffer<T> lse;     // [B,Hq,S]
    Buffer<T> x_mid;   // [N,d] after the attention residual
    Buffer<T> rstd2;   // [N]
    Buffer<T> xn2;     // [N,d]
  };

  Config cfg;
  int64_t d, hd, Hq, Hkv, Vp, V, S;
  Parameter<T> embed, final_norm, lm_head;
  std::vector<Layer> layers;

  Buffer<T> x;         // [N,d] residual stream
  Buffer<T> moe_out;   // [N,d]
  Buffer<T> rstd_f;    // [N]
  Buffer<T> xf;        // [N,d]
  Buffer<T> logits;    // [N,Vp] (reused for dlogits)
  Buffer<T> ce_lse;    // [N]
  Buffer<T> losses;    // [N]
  Buffer<int32_t> inputs, targets;  // [N]
  // Backward scratch.
  Buffer<T> dres, dtmp, dq, dk, dv, datt;

  Impl(const Config& c, Communicator* ep_comm, const Placement& placement) : cfg(c) {
    const auto& m = cfg.model;
    d = m.hidden;
    hd = m.head_dim();
    Hq = m.heads;
    Hkv = m.kv_heads;
    Vp = m.padded_vocab();
    V = m.vocab_size;
    S = m.seq_len;
    embed = Parameter<T>("embed", {Vp, d});
    final_norm = Parameter<T>("final_norm", {d});
    lm_head = Parameter<T>("lm_head", {Vp, d});
    final_norm.decay = false;
    MoEConfig moe_cfg = cfg.moe;
    moe_cfg.hidden = d;
    moe_cfg.ffn_hidden = m.ffn_hidden;
    layers.resize(m.layers);
    for (int l = 0; l < m.layers; ++l) {
      auto& L = layers[l];
      std::string p = "layers." + std::to_string(l) + ".";
      L.attn_norm = Parameter<T>(p + "attn_norm", {d});
      L.wq = Parameter<T>(p + "attn.wq", {Hq * hd, d});
      L.wk = Parameter<T>(p + "attn.wk", {Hkv * hd, d});
      L.wv = Parameter<T>(p + "attn.wv", {Hkv * hd, d});
      L.wo = Parameter<T>(p + "attn.wo", {d, Hq * hd});
      L.ffn_norm = Parameter<T>(p + "ffn_norm", {d});
      L.attn_norm.decay = L.ffn_norm.decay = false;
      L.moe = std::make_unique<MoELayer<T>>(moe_cfg, placement, ep_comm, l);
    }
  }

  void ensure(int64_t B) {
    int64_t N = B * S;
    if (x.size() >= N * d) return;
    for (auto& L : layers) {
      L.x_in.resize(N * d);
      L.rstd1.resize(N);
      L.xn1.resize(N * d);
      L.q.resize(N * Hq * hd);
      L.k.resize(N * Hkv * hd);
      L.v.resize(N * Hkv * hd);
      L.att.resize(N * Hq * hd);
      L.lse.resize(B * Hq * S);
      L.x_mid.resize(N * d);
      L.rstd2.resize(N);
      L.xn2.resize(N * d);
    }
    x.resize(N * d);
    moe_out.resize(N * d);
    rstd_f.resize(N);
    xf.resize(N * d);
    logits.resize(N * Vp);
    ce_lse.resize(N);
    losses.resize(N);
    inputs.resize(N);
    targets.resize(N);
    dres.resize(N * d);
    dtmp.resize(N * d);
    dq.resize(N * Hq * hd);
    dk.resize(N * Hkv * hd);
    dv.resize(N * Hkv * hd);
    datt.resize(N * Hq * hd);
  }

  MicroBatchResult run(const int32_t* tokens, int64_t B, RouterContext ctx, double loss_scale,
                       bool backward) {
    ensure(B);
    const int64_t N = B * S;
    const double eps = cfg.model.norm_eps, base = cfg.model.rope_base;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t s = 0; s < S; ++s) {
        inputs[b * S + s] = tokens[b * (S + 1) + s];
        targets[b * S + s] = tokens[b * (S + 1) + s + 1];
      }
    // ---- forward ----
    trace::Recorder::get().set_pass(trace::Pass::kForward);
    cpu::embedding_forward(x.data(), inputs.data(), embed.value.data(), N, d, Vp);
    MicroBatchResult res;
    for (size_t l = 0; l < layers.size(); ++l) {
      auto& L = layers[l];
      trace::Scope attention_scope(trace::Phase::kAttention);
      std::copy(x.data(), x.data() + N * d, L.x_in.data());
      cpu::rmsnorm_forward(L.xn1.data(), L.rstd1.data(), x.data(), L.attn_norm.value.data(), N, d, eps);
      cpu::linear_forward(L.q.data(), L.xn1.data(), L.wq.value.data(), N, d, Hq * hd);
      cpu::linear_forward(L.k.data(), L.xn1.data(), L.wk.value.data(), N, d, Hkv * hd);
      cpu::linear_forward(L.v.data(), L.xn1.data(), L.wv.value.data(), N, d, Hkv * hd);
      cpu::rope_forward(L.q.data(), B, S, Hq, hd, base);
      cpu::rope_forward(L.k.data(), B, S, Hkv, hd, base);
      cpu::attention_forward(L.att.data(), L.lse.data(), L.q.data(), L.k.data(), L.v.data(), B, S,
                             Hq, Hkv, hd);
      cpu::linear_forward(x.data(), L.att.data(), L.wo.value.data(), N, Hq * hd, d,
                          /*accumulate=*/true);
      std::copy(x.data(), x.data() + N * d, L.x_mid.data());
      cpu::rmsnorm_forward(L.xn2.data(), L.rstd2.data(), x.data(), L.ffn_norm.value.data(), N, d, eps);
      attention_scope.end();
      ctx.layer = static_cast<int>(l);
      L.moe->forward(L.xn2.data(), moe_out.data(), N, ctx);
      cpu::add_inplace(x.data(), moe_out.data(), N * d);
      res.router_loss += L.moe->router_loss();
    }
    cpu::rmsnorm_forward(xf.data(), rstd_f.data(), x.data(), final_norm.value.data(), N, d, eps);
    cpu::linear_forward(logits.data(), xf.data(), lm_head.value.data(), N, d, Vp);
    cpu::cross_entropy_forward(losses.data(), ce_lse.data(), logits.data(), targets.data(), N, V, Vp);
    double total = 0;
    for (int64_t i = 0; i < N; ++i) total += losses[i];
    res.ce_loss = total / static_cast<double>(N);
    if (!backward) return res;

    // ---- backward ----
    trace::Recorder::get().set_pass(trace::Pass::kBackward);
    cpu::cross_entropy_backward(logits.data(), logits.data(), ce_lse.data(), targets.data(),
                                loss_scale / static_cast<double>(N), N, V, Vp);
    cpu::linear_backward(dtmp.data(), lm_head.grad.data(), logits.data(), xf.data(),
                         lm_head.value.data(), N, d, Vp);
    cpu::rmsnorm_backward(dres.data(), final_norm.grad.data(), dtmp.data(), x.data(),
                          final_norm.value.data(), rstd_f.data(), N, d);
    for (int l = static_cast<int>(layers.size()) - 1; l >= 0; --l) {
      auto& L = layers[l];
      // x_out = x_mid + moe(rmsnorm(x_mid))
      L.moe->backward(dres.data(), loss_scale, dtmp.data());
      cpu::rmsnorm_backward(dres.data(), L.ffn_norm.grad.data(), dtmp.data(), L.x_mid.data(),
                            L.ffn_norm.value.data(), L.rstd2.data(), N, d, /*accumulate_dx=*/true);
      // x_mid = x_in + attention(rmsnorm(x_in)) wo^T
      trace::Scope attention_scope(trace::Phase::kAttention);
      cpu::linear_backward(datt.data(), L.wo.grad.data(), dres.data(), L.att.data(),
                           L.wo.value.data(), N, Hq * hd, d);
      cpu::attention_backward(dq.data(), dk.data(), dv.data(), datt.data(), L.q.data(), L.k.data(),
                              L.v.data(), L.att.data(), L.lse.data(), B, S, Hq, Hkv, hd);
      cpu::rope_backward(dq.data(), B, S, Hq, hd, base);
      cpu::rope_backward(dk.data(), B, S, Hkv, hd, base);
      cpu::linear_backward(dtmp.data(), L.wq.grad.data(), dq.data(), L.xn1.data(),
                           L.wq.value.data(), N, d, Hq * hd);
      cpu::linear_backward(dtmp.data(), L.wk.grad.data(), dk.data(), L.xn1.data(),
                           L.wk.value.data(), N, d, Hkv * hd, /*accumulate_dx=*/true);
      cpu::linear_backward(dtmp.data(), L.wv.grad.data(), dv.data(), L.xn1.data(),
                           L.wv.value.data(), N, d, Hkv * hd, /*accumulate_dx=*/true);
      cpu::rmsnorm_backward(dres.data(), L.attn_norm.grad.data(), dtmp.data(), L.x_in.data(),
                            L.attn_norm.value.data(), L.rstd1.data(), N, d, /*accumulate_dx=*/true);
    }
    cpu::embedding_backward(embed.grad.data(), inputs.data(), dres.data(), N, d);
    return res;
  }

  std::vector<Parameter<T>*> params() {
    std::vector<Parameter<T>*> out = {&embed};
    std::vector<Parameter<T>*> experts;
    for (auto& L : layers) {
      for (auto* p : {&L.attn_norm, &L.wq, &L.wk, &L.wv, &L.wo, &L.ffn_norm}) out.push_back(p);
      for (auto* p : L.moe->parameters())
        (p->kind == ParamKind::kExpert ? experts : out).push_back(p);
    }
    out.push_back(&final_norm);
    out.push_back(&lm_head);
    out.insert(out.end(), experts.begin(), experts.end());
    return out;
  }
};

template <class T>
Model<T>::Model(const Config& cfg, Communicator* ep_comm, const Placement& placement)
    : impl_(std::make_unique<Impl>(cfg, ep_comm, placement)) {}
template <class T>
Model<T>::~Model() = default;

template <class T>
void init_parameter(const ModelConfig& m, const std::string& name, T* values, int64_t n,
                    uint64_t seed) {
  auto ends_with = [&](const char* suffix) {
    std::string s(suffix);
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  if (ends_with("norm")) {
    std::fill(values, values + n, T(1));
    return;
  }
  const double scaled = m.init_std / std::sqrt(2.0 * m.layers);
  const double std = (ends_with("attn.wo") || ends_with(".w2")) ? scaled : m.init_std;
  PhiloxStream rng{seed, stable_hash32(name.c_str())};
  for (int64_t i = 0; i < n; ++i)
    values[i] = static_cast<T>(std * rng.normal(static_cast<uint32_t>(i),
                                                static_cast<uint32_t>(i >> 32), 0));
}

template void init_parameter<float>(const ModelConfig&, const std::string&, float*, int64_t,
                                    uint64_t);
template void init_parameter<double>(const ModelConfig&, const std::string&, double*, int64_t,
                                     uint64_t);

template <class T>
void Model<T>::init_weights(uint64_t seed) {
  for (Parameter<T>* p : parameters())
    init_parameter(impl_->cfg.model, p->name, p->value.data(), p->numel(), seed);
}

template <class T>
MicroBatchResult Model<T>::forward_backward(const int32_t* tokens, int64_t B, RouterContext ctx,
                                            double loss_scale, bool backward) {
  DIRMOE_CHECK(B >= 1, "micro-batch size must be positive, got ", B);
  return impl_->run(tokens, B, ctx, loss_scale, backward);
}

template <class T>
std::vector<Parameter<T>*> Model<T>::parameters() { return impl_->params(); }
template <class T>
const T* Model<T>::logits() const { return impl_->logits.data(); }
template <class T>
int Model<T>::num_layers() const { return static_cast<int>(impl_->layers.size()); }
template <class T>
const MoEStats& Model<T>::moe_stats(int layer) const { return impl_->layers.at(layer).moe->stats(); }

template <class T>
const Routing<T>& Model<T>::routing(int layer) const {
  return impl_->layers.at(layer).moe->routing();
}
template <class T>
const Config& Model<T>::config() const { return impl_->cfg; }

template class Model<float>;
template class Model<double>;

}  // namespace dirmoe
