// MoE layer: router -> Dispatcher (plan, all_to_all_v) -> local SwiGLU experts -> Dispatcher back
// -> weighted combine; backward runs the same exchanges with gradients, then the router backward.
#include "experts/moe_layer.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "experts/dispatcher.h"
#include "kernels/cpu/ops.h"
#include "runtime/core/error.h"
#include "runtime/core/trace.h"

namespace dirmoe {
namespace {

const Placement& checked_placement(const MoEConfig& cfg, const Placement& placement,
                                   Communicator* comm) {
  DIRMOE_CHECK(comm != nullptr, "moe: null EP communicator");
  DIRMOE_CHECK(cfg.num_experts >= 1, "moe.num_experts must be >= 1, got ", cfg.num_experts);
  DIRMOE_CHECK(cfg.hidden >= 1, "moe.hidden must be >= 1, got ", cfg.hidden);
  DIRMOE_CHECK(cfg.ffn_hidden >= 1, "moe.ffn_hidden must be >= 1, got ", cfg.ffn_hidden);
  DIRMOE_CHECK(std::isfinite(cfg.capacity_factor), "moe.capacity_factor must be finite, got ",
               cfg.capacity_factor);
  DIRMOE_CHECK(placement.num_experts() == cfg.num_experts, "moe: the placement covers ",
               placement.num_experts(), " experts but moe.num_experts is ", cfg.num_experts);
  placement.check_ep_size(comm->size());
  return placement;
}

}  // namespace

int64_t moe_capacity(const MoEConfig& cfg, int64_t N) {
  if (cfg.capacity_factor <= 0) return -1;
  return static_cast<int64_t>(
      std::ceil(cfg.capacity_factor * static_cast<double>(N) * cfg.router.k / cfg.num_experts));
}

template <class T>
struct MoELayer<T>::Impl {
  Impl(const MoEConfig& c, const Placement& p, Communicator* comm, int layer)
      : cfg(c), placement(checked_placement(c, p, comm)), comm(comm), dispatcher(placement, comm) {
    const std::string prefix = "layers." + std::to_string(layer) + ".moe";
    router = make_router<T>(cfg.router, cfg.hidden, cfg.num_experts, prefix + ".router");
    const int64_t d = cfg.hidden, f = cfg.ffn_hidden;
    for (int e : placement.local_experts(comm->rank())) {
      const std::string name = prefix + ".experts." + std::to_string(e);
      w1.push_back(
          std::make_unique<Parameter<T>>(name + ".w1", Shape{f, d}, ParamKind::kExpert, e));
      w2.push_back(
          std::make_unique<Parameter<T>>(name + ".w2", Shape{d, f}, ParamKind::kExpert, e));
      w3.push_back(
          std::make_unique<Parameter<T>>(name + ".w3", Shape{f, d}, ParamKind::kExpert, e));
    }
    stats.tokens_per_expert.assign(cfg.num_experts, 0);
    dispatcher.set_trace_layer(layer);
  }

  MoEConfig cfg;
  Placement placement;
  Communicator* comm;
  Dispatcher<T> dispatcher;
  std::unique_ptr<Router<T>> router;
  std::vector<std::unique_ptr<Parameter<T>>> w1, w2, w3;  // per local expert: [f,d], [d,f], [f,d]
  Routing<T> routing;
  MoEStats stats;

  int64_t N = 0;
  bool has_forward = false;
  std::vector<int64_t> token_of;  // [nnz] token of each assignment
  // Expert layout (R rows received by this rank's experts), kept for backward.
  Buffer<T> xe;    // [R,d]
  Buffer<T> h1;    // [R,f] gate pre-activation
  Buffer<T> h3;    // [R,f] up projection
  Buffer<T> act;   // [R,f] silu(h1) * h3
  Buffer<T> oe;    // [R,d] expert outputs; backward: their gradients
  Buffer<T> out;   // [nnz,d] expert output per assignment (zero when dropped)
  Buffer<T> rows;  // [nnz,d] backward: w * dy per assignment, then dx per assignment
  Buffer<T> dw;    // [nnz] dL/dweights
  Buffer<T> dact;  // [R,f]
  Buffer<T> dh1;   // [R,f]
  Buffer<T> dh3;   // [R,f]
  Buffer<T> dxe;   // [R,d]
};

template <class T>
MoELayer<T>::MoELayer(const MoEConfig& cfg, const Placement& placement, Communicator* ep_comm,
                      int layer)
    : impl_(std::make_unique<Impl>(cfg, placement, ep_comm, layer)) {}

template <class T>
MoELayer<T>::~MoELayer() = default;

template <class T>
void MoELayer<T>::forward(const T* x, T* y, int64_t N, const RouterContext& ctx) {
  Impl& m = *impl_;
  const int64_t d = m.cfg.hidden, f = m.cfg.ffn_hidden;
  DIRMOE_CHECK(N >= 0, "moe: negative token count ", N);
  DIRMOE_CHECK(N == 0 || (x != nullptr && y != nullptr), "moe: null x or y for ", N, " tokens");
  {
    trace::Scope scope(trace::Phase::kRouter);
    m.router->forward(x, N, ctx, m.routing);
  }
  const Routing<T>& r = m.routing;
  const int64_t nnz = r.nnz();
  DIRMOE_CHECK(r.num_tokens == N && static_cast<int64_t>(r.offsets.size()) == N + 1 &&
                   r.offsets[0] == 0 && r.offsets[N] == nnz &&
                   static_cast<int64_t>(r.weights.size()) == nnz,
               "moe: router '", m.router->type(), "' returned a malformed routing");

  m.token_of.resize(nnz);
  std::fill(m.stats.tokens_per_expert.begin(), m.stats.tokens_per_expert.end(), 0);
  for (int64_t t = 0; t < N; ++t) {
    for (int64_t a = r.offsets[t]; a < r.offsets[t + 1]; ++a) m.token_of[a] = t;
  }
  m.dispatcher.plan(r.experts.data(), nnz, moe_capacity(m.cfg, N));
  for (int64_t a = 0; a < nnz; ++a) ++m.stats.tokens_per_expert[r.experts[a]];

  const int64_t R = m.dispatcher.num_received();
  m.xe.grow(R * d);
  m.h1.grow(R * f);
  m.h3.grow(R * f);
  m.act.grow(R * f);
  m.oe.grow(R * d);
  m.out.grow(nnz * d);
  m.dispatcher.dispatch(x, m.token_of.data(), d, m.xe.data());
  for (int le = 0; le < m.dispatcher.num_local_experts(); ++le) {
    const int64_t n = m.dispatcher.expert_rows(le), off = m.dispatcher.expert_offset(le);
    if (n == 0) continue;
    trace::Scope scope(trace::Phase::kExperts);
    T* h1 = m.h1.data() + off * f;
    T* h3 = m.h3.data() + off * f;
    T* act = m.act.data() + off * f;
    const T* xe = m.xe.data() + off * d;
    cpu::linear_forward(h1, xe, m.w1[le]->value.data(), n, d, f);
    cpu::linear_forward(h3, xe, m.w3[le]->value.data(), n, d, f);
    cpu::swiglu_forward(act, h1, h3, n * f);
    cpu::linear_forward(m.oe.data() + off * d, act, m.w2[le]->value.data(), n, f, d);
  }
  m.dispatcher.combine(m.oe.data(), d, m.out.data());

  {
    trace::Scope scope(trace::Phase::kCombine);
    std::fill(y, y + N * d, T{});
    for (int64_t a = 0; a < nnz; ++a) {
      const T w = r.weights[a];
      const T* o = m.out.data() + a * d;
      T* yt = y + m.token_of[a] * d;
      for (int64_t j = 0; j < d; ++j) yt[j] += w * o[j];
    }
  }
  m.N = N;
  m.has_forward = true;
  m.stats.dropped = m.dispatcher.num_dropped();
  m.stats.received = R;
  m.stats.router_loss = m.router->loss();
  m.stats.router = m.router->stats();
}

template <class T>
void MoELayer<T>::backward(const T* dy, double loss_scale, T* dx) {
  Impl& m = *impl_;
  DIRMOE_CHECK(m.has_forward, "moe: backward called before forward");
  const int64_t d = m.cfg.hidden, f = m.cfg.ffn_hidden, N = m.N;
  DIRMOE_CHECK(N == 0 || (dy != nullptr && dx != nullptr), "moe: null dy or dx for ", N, " tokens");
  const Routing<T>& r = m.routing;
  const int64_t nnz = r.nnz();
  const int64_t R = m.dispatcher.num_received();
  m.dw.grow(nnz);
  m.rows.grow(nnz * d);
  m.dact.grow(R * f);
  m.dh1.grow(R * f);
  m.dh3.grow(R * f);
  m.dxe.grow(R * d);

  {
    trace::Scope scope(trace::Phase::kCombine);  // backward of the weighted combine
    for (int64_t a = 0; a < nnz; ++a) {
      const T* g = dy + m.token_of[a] * d;
      const T* o = m.out.data() + a * d;
      T* row = m.rows.data() + a * d;
      const T w = r.weights[a];
      T dot = 0;
      for (int64_t j = 0; j < d; ++j) {
        dot += g[j] * o[j];
        row[j] = w * g[j];
      }
      m.dw[a] = dot;
    }
  }
  m.dispatcher.dispatch(m.rows.data(), nullptr, d, m.oe.data());
  for (int le = 0; le < m.dispatcher.num_local_experts(); ++le) {
    const int64_t n = m.dispatcher.expert_rows(le), off = m.dispatcher.expert_offset(le);
    if (n == 0) continue;
    trace::Scope scope(trace::Phase::kExperts);
    T* dact = m.dact.data() + off * f;
    T* dh1 = m.dh1.data() + off * f;
    T* dh3 = m.dh3.data() + off * f;
    T* dxe = m.dxe.data() + off * d;
    const T* xe = m.xe.data() + off * d;
    cpu::linear_backward(dact, m.w2[le]->grad.data(), m.oe.data() + off * d, m.act.data() + off * f,
                         m.w2[le]->value.data(), n, f, d);
    cpu::swiglu_backward(dh1, dh3, dact, m.h1.data() + off * f, m.h3.data() + off * f, n * f);
    cpu::linear_backward(dxe, m.w1[le]->grad.data(), dh1, xe, m.w1[le]->value.data(), n, d, f);
    cpu::linear_backward(dxe, m.w3[le]->grad.data(), dh3, xe, m.w3[le]->value.data(), n, d, f,
                         /*accumulate_dx=*/true);
  }
  m.dispatcher.combine(m.dxe.data(), d, m.rows.data());

  {
    trace::Scope scope(trace::Phase::kCombine);  // backward of the token -> assignment fan-out
    std::fill(dx, dx + N * d, T{});
    for (int64_t a = 0; a < nnz; ++a) {
      const T* row = m.rows.data() + a * d;
      T* dxt = dx + m.token_of[a] * d;
      for (int64_t j = 0; j < d; ++j) dxt[j] += row[j];
    }
  }
  trace::Scope scope(trace::Phase::kRouter);
  m.router->backward(m.dw.data(), loss_scale, dx);
}

template <class T>
double MoELayer<T>::router_loss() const {
  return impl_->router->loss();
}

template <class T>
std::vector<Parameter<T>*> MoELayer<T>::parameters() {
  std::vector<Parameter<T>*> params = impl_->router->parameters();
  for (size_t le = 0; le < impl_->w1.size(); ++le) {
    params.push_back(impl_->w1[le].get());
    params.push_back(impl_->w2[le].get());
    params.push_back(impl_->w3[le].get());
  }
  return params;
}

template <class T>
const MoEStats& MoELayer<T>::stats() const {
  return impl_->stats;
}

template <class T>
const Routing<T>& MoELayer<T>::routing() const {
  return impl_->routing;
}

template <class T>
const Dispatcher<T>& MoELayer<T>::dispatcher() const {
  return impl_->dispatcher;
}

template class MoELayer<float>;
template class MoELayer<double>;

}  // namespace dirmoe
