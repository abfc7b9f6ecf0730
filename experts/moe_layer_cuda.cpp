// The GPU MoE layer (see moe_layer_cuda.h). One stream carries the kernels, cuBLAS and the device
// communicator; the host waits on it only where the host needs a result: the hidden states for the
// router, the dispatch counts, and the weight gradients for the router backward.
#include "experts/moe_layer_cuda.h"

#include <algorithm>
#include <string>
#include <type_traits>

#include "kernels/cuda/api.cuh"
#include "runtime/core/cuda_check.h"
#include "runtime/core/error.h"
#include "runtime/core/trace.h"

namespace dirmoe {
namespace {

template <class T>
constexpr DType device_dtype() {
  return std::is_same_v<T, float> ? DType::kF32 : DType::kBF16;
}

template <class V>
void upload_async(cuda::DeviceBuffer<V>& dst, const V* src, int64_t n, cudaStream_t stream) {
  dst.grow(std::max<int64_t>(n, 1));
  if (n > 0) {
    DIRMOE_CUDA_CHECK(cudaMemcpyAsync(dst.data(), src, static_cast<size_t>(n) * sizeof(V),
                                      cudaMemcpyHostToDevice, stream));
  }
}

template <class V>
void download_sync(V* dst, const V* src, int64_t n, cudaStream_t stream) {
  if (n > 0) {
    DIRMOE_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * sizeof(V),
                                      cudaMemcpyDeviceToHost, stream));
  }
  DIRMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace

template <class T>
struct CudaMoELayer<T>::Impl {
  Impl(const MoEConfig& c, const Placement& p, Communicator* hc, Communicator* dc, int l,
       cublasHandle_t h, cudaStream_t s)
      : cfg(c), placement(p), host_comm(hc), dev_comm(dc), layer(l), handle(h), stream(s) {
    DIRMOE_CHECK(hc != nullptr && dc != nullptr, "moe (cuda): null EP communicator");
    DIRMOE_CHECK(hc->size() == dc->size() && hc->rank() == dc->rank(),
                 "moe (cuda): the host and device EP communicators differ (rank ", hc->rank(), "/",
                 hc->size(), " against ", dc->rank(), "/", dc->size(), ")");
    DIRMOE_CHECK(placement.num_experts() == cfg.num_experts, "moe: the placement covers ",
                 placement.num_experts(), " experts but moe.num_experts is ", cfg.num_experts);
    placement.check_ep_size(hc->size());
    ep = hc->size();
    rank = hc->rank();
    max_local = placement.max_local_experts();
    const std::string prefix = "layers." + std::to_string(layer) + ".moe";
    router = make_router<float>(cfg.router, cfg.hidden, cfg.num_experts, prefix + ".router");
    const int64_t d = cfg.hidden, f = cfg.ffn_hidden;
    const bool half = !std::is_same_v<T, float>;
    for (int e : placement.local_experts(rank)) {
      const std::string name = prefix + ".experts." + std::to_string(e);
      w1.push_back(std::make_unique<cuda::DeviceParameter>(name + ".w1", std::vector<int64_t>{f, d},
                                                           half, true, e));
      w2.push_back(std::make_unique<cuda::DeviceParameter>(name + ".w2", std::vector<int64_t>{d, f},
                                                           half, true, e));
      w3.push_back(std::make_unique<cuda::DeviceParameter>(name + ".w3", std::vector<int64_t>{f, d},
                                                           half, true, e));
    }
    num_local = static_cast<int>(w1.size());
    std::vector<int32_t> owner(cfg.num_experts), local(cfg.num_experts);
    for (int e = 0; e < cfg.num_experts; ++e) {
      owner[e] = placement.owner(e);
      local[e] = placement.local_index(e);
    }
    d_owner.upload(owner);
    d_local.upload(local);
    counts.assign(static_cast<size_t>(ep) * max_local, 0);
    recv_counts.assign(counts.size(), 0);
    d_recv_counts.resize(static_cast<int64_t>(counts.size()));
    d_counts.resize(static_cast<int64_t>(counts.size()));
    send_rows.assign(ep, 0);
    recv_rows.assign(ep, 0);
    send_elems.assign(ep, 0);
    recv_elems.assign(ep, 0);
    expert_offset.assign(num_local + 1, 0);
    stats.tokens_per_expert.assign(cfg.num_experts, 0);
  }

  // all_to_all_v of rows of width d on the device communicator (trace::recorded_exchange; while
  // profiling, timed between two stream synchronisations).
  void exchange(const T* send, const std::vector<int64_t>& s_rows, T* recv,
                const std::vector<int64_t>& r_rows, trace::Direction dir) {
    const int64_t d = cfg.hidden;
    for (int r = 0; r < ep; ++r) {
      send_elems[r] = s_rows[r] * d;
      recv_elems[r] = r_rows[r] * d;
    }
    trace::recorded_exchange(
        layer, dir, s_rows, d * static_cast<int64_t>(sizeof(T)),
        [&] {
          dev_comm->all_to_all_v(send, send_elems.data(), recv, recv_elems.data(),
                                 device_dtype<T>());
        },
        [&] { DIRMOE_CUDA_CHECK(cudaStreamSynchronize(stream)); });
  }

  MoEConfig cfg;
  Placement placement;
  Communicator* host_comm;
  Communicator* dev_comm;
  int layer;
  cublasHandle_t handle;
  cudaStream_t stream;
  int ep = 1, rank = 0, max_local = 1, num_local = 0;

  std::unique_ptr<Router<float>> router;
  std::vector<std::unique_ptr<cuda::DeviceParameter>> w1, w2, w3;
  Routing<float> routing;
  MoEStats stats;
  int64_t N = 0, nnz = 0, num_send = 0, R = 0;
  bool has_forward = false;

  // Host side of the plan.
  std::vector<float> h_x;   // [N,d] hidden states for the router
  std::vector<float> h_dw;  // [nnz] dL/dweights for the router backward
  std::vector<float> h_dx;  // [N,d] the router's dL/dh
  std::vector<int64_t> counts, recv_counts, send_rows, recv_rows, send_elems, recv_elems;
  std::vector<int64_t> expert_offset;  // [num_local + 1] in the expert layout

  // Device side.
  cuda::DeviceBuffer<int32_t> d_owner, d_local, d_experts;
  cuda::DeviceBuffer<int64_t> d_offsets, d_slot, d_counts, d_recv_counts;
  cuda::DeviceBuffer<float> d_weights, d_dweights, d_xf;
  cuda::DeviceBuffer<uint8_t> d_plan_scratch;
  cuda::DeviceBuffer<T> send, wire, back;     // send layout, wire layout, send layout (results)
  cuda::DeviceBuffer<T> xe, h1, h3, act, oe;  // expert layout, kept for backward
  cuda::DeviceBuffer<T> dact, dh1, dh3, dxe, d_hdx;
};

template <class T>
CudaMoELayer<T>::CudaMoELayer(const MoEConfig& cfg, const Placement& placement,
                              Communicator* host_comm, Communicator* dev_comm, int layer,
                              cublasHandle_t handle, cudaStream_t stream)
    : impl_(std::make_unique<Impl>(cfg, placement, host_comm, dev_comm, layer, handle, stream)) {}

template <class T>
CudaMoELayer<T>::~CudaMoELayer() = default;

template <class T>
void CudaMoELayer<T>::forward(const T* x, T* y, int64_t N, const RouterContext& ctx) {
  Impl& m = *impl_;
  const int64_t d = m.cfg.hidden, f = m.cfg.ffn_hidden;
  cudaStream_t st = m.stream;
  DIRMOE_CHECK(N >= 0, "moe (cuda): negative token count ", N);
  DIRMOE_CHECK(N == 0 || (x != nullptr && y != nullptr), "moe (cuda): null x or y for ", N,
               " tokens");
  {
    trace::Scope scope(trace::Phase::kRouter);
    m.h_x.resize(static_cast<size_t>(N * d));
    const float* xf = nullptr;
    if constexpr (std::is_same_v<T, float>) {
      xf = x;
    } else {
      m.d_xf.grow(std::max<int64_t>(N * d, 1));
      if (N > 0) cuda::convert<T, float>(m.d_xf.data(), x, N * d, st);
      xf = m.d_xf.data();
    }
    download_sync(m.h_x.data(), xf, N * d, st);
    m.router->forward(m.h_x.data(), N, ctx, m.routing);
  }
  const Routing<float>& r = m.routing;
  const int64_t nnz = r.nnz();
  DIRMOE_CHECK(r.num_tokens == N && static_cast<int64_t>(r.offsets.size()) == N + 1 &&
                   r.offsets[0] == 0 && r.offsets[N] == nnz &&
                   static_cast<int64_t>(r.weights.size()) == nnz,
               "moe (cuda): router '", m.router->type(), "' returned a malformed routing");
  // NOTE: the same checks, in the same words, as the CPU dispatcher (experts/dispatcher.cpp).
  const int E = m.cfg.num_experts;
  std::fill(m.stats.tokens_per_expert.begin(), m.stats.tokens_per_expert.end(), 0);
  for (int64_t a = 0; a < nnz; ++a) {
    const int e = r.experts[a];
    DIRMOE_CHECK(e >= 0 && e < E, "dispatcher: assignment ", a, " names expert ", e,
                 ", outside [0, ", E, ")");
    ++m.stats.tokens_per_expert[e];
  }

  // Plan on the device, counts to the host, count exchange over the host communicator.
  {
    trace::Scope scope(trace::Phase::kPermute);
    upload_async(m.d_offsets, r.offsets.data(), N + 1, st);
    upload_async(m.d_experts, r.experts.data(), nnz, st);
    upload_async(m.d_weights, r.weights.data(), nnz, st);
    m.d_slot.grow(std::max<int64_t>(nnz, 1));
    const size_t scratch = cuda::moe_plan_scratch_bytes(nnz, m.ep, m.max_local);
    m.d_plan_scratch.grow(static_cast<int64_t>(std::max<size_t>(scratch, 1)));
    cuda::moe_plan(m.d_counts.data(), m.d_slot.data(), m.d_experts.data(), nnz, m.d_owner.data(),
                   m.d_local.data(), m.cfg.num_experts, m.ep, m.max_local, moe_capacity(m.cfg, N),
                   nullptr, m.d_plan_scratch.data(), scratch, st);
    download_sync(m.counts.data(), m.d_counts.data(), static_cast<int64_t>(m.counts.size()), st);
  }
  m.host_comm->all_to_all(m.counts.data(), m.recv_counts.data(), m.max_local, DType::kI64);
  int64_t kept = 0;
  m.R = 0;
  for (int p = 0; p < m.ep; ++p) {
    m.send_rows[p] = m.recv_rows[p] = 0;
    for (int le = 0; le < m.max_local; ++le) {
      m.send_rows[p] += m.counts[p * m.max_local + le];
      m.recv_rows[p] += m.recv_counts[p * m.max_local + le];
    }
    kept += m.send_rows[p];
    m.R += m.recv_rows[p];
  }
  for (int p = 0; p < m.ep; ++p)
    for (int le = 0; le < m.max_local; ++le) {
      const int64_t n = m.recv_counts[p * m.max_local + le];
      DIRMOE_CHECK(n >= 0 && (le < m.num_local || n == 0), "dispatcher: rank ", p, " sent ", n,
                   " rows for local expert slot ", le, " but this rank owns ", m.num_local,
                   " experts (inconsistent placements across ranks?)");
    }
  for (int le = 0; le < m.num_local; ++le) {
    int64_t rows = 0;
    for (int p = 0; p < m.ep; ++p) rows += m.recv_counts[p * m.max_local + le];
    m.expert_offset[le + 1] = m.expert_offset[le] + rows;
  }
  upload_async(m.d_recv_counts, m.recv_counts.data(), static_cast<int64_t>(m.recv_counts.size()),
               st);
  const int64_t R = m.R;
  m.nnz = nnz;
  m.num_send = kept;
  m.send.grow(std::max<int64_t>(kept * d, 1));
  m.back.grow(std::max<int64_t>(kept * d, 1));
  m.wire.grow(std::max<int64_t>(R * d, 1));
  m.xe.grow(std::max<int64_t>(R * d, 1));
  m.oe.grow(std::max<int64_t>(R * d, 1));
  m.h1.grow(std::max<int64_t>(R * f, 1));
  m.h3.grow(std::max<int64_t>(R * f, 1));
  m.act.grow(std::max<int64_t>(R * f, 1));

  if (N > 0) {
    trace::Scope scope(trace::Phase::kPermute);
    cuda::moe_permute(m.send.data(), x, m.d_offsets.data(), m.d_slot.data(), N, d, st);
  }
  m.exchange(m.send.data(), m.send_rows, m.wire.data(), m.recv_rows, trace::Direction::kDispatch);
  if (R > 0) {
    trace::Scope scope(trace::Phase::kPermute);
    cuda::moe_regroup(m.xe.data(), m.wire.data(), m.d_recv_counts.data(), m.ep, m.max_local,
                      m.num_local, d, /*wire_to_expert=*/true, st);
  }
  for (int le = 0; le < m.num_local; ++le) {
    const int64_t off = m.expert_offset[le], n = m.expert_offset[le + 1] - off;
    if (n == 0) continue;
    trace::Scope scope(trace::Phase::kExperts);
    T* h1 = m.h1.data() + off * f;
    T* h3 = m.h3.data() + off * f;
    T* act = m.act.data() + off * f;
    const T* xe = m.xe.data() + off * d;
    cuda::linear_forward<T>(m.handle, h1, xe, m.w1[le]->template weights<T>(), n, d, f, false, st);
    cuda::linear_forward<T>(m.handle, h3, xe, m.w3[le]->template weights<T>(), n, d, f, false, st);
    cuda::swiglu_forward<T>(act, h1, h3, n * f, st);
    cuda::linear_forward<T>(m.handle, m.oe.data() + off * d, act, m.w2[le]->template weights<T>(),
                            n, f, d, false, st);
  }
  if (R > 0) {
    trace::Scope scope(trace::Phase::kPermute);
    cuda::moe_regroup(m.wire.data(), m.oe.data(), m.d_recv_counts.data(), m.ep, m.max_local,
                      m.num_local, d, /*wire_to_expert=*/false, st);
  }
  m.exchange(m.wire.data(), m.recv_rows, m.back.data(), m.send_rows, trace::Direction::kCombine);
  if (N > 0) {
    trace::Scope scope(trace::Phase::kCombine);
    cuda::moe_unpermute_combine(y, m.back.data(), m.d_weights.data(), m.d_offsets.data(),
                                m.d_slot.data(), N, d, /*accumulate=*/false, st);
  }
  m.N = N;
  m.has_forward = true;
  m.stats.dropped = nnz - kept;
  m.stats.received = R;
  m.stats.router_loss = m.router->loss();
  m.stats.router = m.router->stats();
}

template <class T>
void CudaMoELayer<T>::backward(const T* dy, double loss_scale, T* dx) {
  Impl& m = *impl_;
  DIRMOE_CHECK(m.has_forward, "moe (cuda): backward called before forward");
  const int64_t d = m.cfg.hidden, f = m.cfg.ffn_hidden, N = m.N, nnz = m.nnz, R = m.R;
  cudaStream_t st = m.stream;
  DIRMOE_CHECK(N == 0 || (dy != nullptr && dx != nullptr), "moe (cuda): null dy or dx for ", N,
               " tokens");
  m.d_dweights.grow(std::max<int64_t>(nnz, 1));
  m.dact.grow(std::max<int64_t>(R * f, 1));
  m.dh1.grow(std::max<int64_t>(R * f, 1));
  m.dh3.grow(std::max<int64_t>(R * f, 1));
  m.dxe.grow(std::max<int64_t>(R * d, 1));
  if (N > 0) {  // backward of the weighted combine: rows w * dy in the send layout, dL/dw
    trace::Scope scope(trace::Phase::kCombine);
    cuda::moe_combine_backward(m.send.data(), m.d_dweights.data(), dy, m.back.data(),
                               m.d_weights.data(), m.d_offsets.data(), m.d_slot.data(), N, d, st);
  }
  m.exchange(m.send.data(), m.send_rows, m.wire.data(), m.recv_rows, trace::Direction::kDispatch);
  if (R > 0) {
    trace::Scope scope(trace::Phase::kPermute);
    cuda::moe_regroup(m.oe.data(), m.wire.data(), m.d_recv_counts.data(), m.ep, m.max_local,
                      m.num_local, d, /*wire_to_expert=*/true, st);
  }
  for (int le = 0; le < m.num_local; ++le) {
    const int64_t off = m.expert_offset[le], n = m.expert_offset[le + 1] - off;
    if (n == 0) continue;
    trace::Scope scope(trace::Phase::kExperts);
    T* dact = m.dact.data() + off * f;
    T* dh1 = m.dh1.data() + off * f;
    T* dh3 = m.dh3.data() + off * f;
    T* dxe = m.dxe.data() + off * d;
    const T* xe = m.xe.data() + off * d;
    cuda::linear_backward<T>(m.handle, dact, m.w2[le]->grad.data(), m.oe.data() + off * d,
                             m.act.data() + off * f, m.w2[le]->template weights<T>(), n, f, d,
                             false, st);
    cuda::swiglu_backward<T>(dh1, dh3, dact, m.h1.data() + off * f, m.h3.data() + off * f, n * f,
                             st);
    cuda::linear_backward<T>(m.handle, dxe, m.w1[le]->grad.data(), dh1, xe,
                             m.w1[le]->template weights<T>(), n, d, f, false, st);
    cuda::linear_backward<T>(m.handle, dxe, m.w3[le]->grad.data(), dh3, xe,
                             m.w3[le]->template weights<T>(), n, d, f, /*accumulate_dx=*/true, st);
  }
  if (R > 0) {
    trace::Scope scope(trace::Phase::kPermute);
    cuda::moe_regroup(m.wire.data(), m.dxe.data(), m.d_recv_counts.data(), m.ep, m.max_local,
                      m.num_local, d, /*wire_to_expert=*/false, st);
  }
  m.exchange(m.wire.data(), m.recv_rows, m.back.data(), m.send_rows, trace::Direction::kCombine);
  if (N > 0) {  // backward of the token -> assignment fan-out
    trace::Scope scope(trace::Phase::kCombine);
    cuda::moe_permute_backward(dx, m.back.data(), m.d_offsets.data(), m.d_slot.data(), N, d,
                               /*accumulate=*/false, st);
  }
  // The router's backward on the host: dL/dweights down, dL/dh up, added to dx.
  trace::Scope scope(trace::Phase::kRouter);
  m.h_dw.resize(static_cast<size_t>(nnz));
  download_sync(m.h_dw.data(), m.d_dweights.data(), nnz, st);
  m.h_dx.assign(static_cast<size_t>(N * d), 0.0f);
  m.router->backward(m.h_dw.data(), loss_scale, m.h_dx.data());
  if (N == 0) return;
  m.d_xf.grow(N * d);
  upload_async(m.d_xf, m.h_dx.data(), N * d, st);
  if constexpr (std::is_same_v<T, float>) {
    cuda::add_inplace<float>(dx, m.d_xf.data(), N * d, st);
  } else {
    m.d_hdx.grow(N * d);
    cuda::convert<float, T>(m.d_hdx.data(), m.d_xf.data(), N * d, st);
    cuda::add_inplace<T>(dx, m.d_hdx.data(), N * d, st);
  }
  // h_dx is read by the copy above: keep the host from reusing it before the copy is done.
  DIRMOE_CUDA_CHECK(cudaStreamSynchronize(st));
}

template <class T>
double CudaMoELayer<T>::router_loss() const {
  return impl_->router->loss();
}

template <class T>
std::vector<Parameter<float>*> CudaMoELayer<T>::router_parameters() {
  return impl_->router->parameters();
}

template <class T>
std::vector<cuda::DeviceParameter*> CudaMoELayer<T>::expert_parameters() {
  std::vector<cuda::DeviceParameter*> out;
  for (size_t le = 0; le < impl_->w1.size(); ++le) {
    out.push_back(impl_->w1[le].get());
    out.push_back(impl_->w2[le].get());
    out.push_back(impl_->w3[le].get());
  }
  return out;
}

template <class T>
const MoEStats& CudaMoELayer<T>::stats() const {
  return impl_->stats;
}

template <class T>
const Routing<float>& CudaMoELayer<T>::routing() const {
  return impl_->routing;
}

template class CudaMoELayer<float>;
template class CudaMoELayer<__nv_bfloat16>;

}  // namespace dirmoe
