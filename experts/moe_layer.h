// The MoE layer: route -> count exchange -> permute -> all_to_all_v -> local SwiGLU experts ->
// all_to_all_v back -> un-permute -> weighted combine, and its backward. Dropless by default.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "experts/dispatcher.h"
#include "experts/placement.h"
#include "router/router.h"
#include "runtime/core/tensor.h"

namespace dirmoe {

struct MoEConfig {
  int num_experts = 8;
  int64_t hidden = 128;
  int64_t ffn_hidden = 256;      // per-expert SwiGLU width
  double capacity_factor = 0.0;  // <= 0: dropless; else per-expert capacity
                                 // ceil(cf * N_local * k / E) per source rank, extra dropped
  RouterConfig router;
};

// Per-expert capacity for N tokens of one rank: ceil(capacity_factor * N * k / E), or -1 (dropless)
// when capacity_factor <= 0.
int64_t moe_capacity(const MoEConfig& cfg, int64_t N);

struct MoEStats {
  std::vector<int64_t> tokens_per_expert;  // [E] (token, expert) pairs routed from THIS rank's
                                           // micro-batch, before dropping
  int64_t dropped = 0;                     // (token, expert) pairs dropped by capacity
  int64_t received = 0;                    // rows this rank's experts processed
  double router_loss = 0;                  // Router::loss()
  RouterStats router;
};

template <class T>
class MoELayer {
 public:
  // ep_comm: the EP group (size == placement.ep_size()); this rank owns
  // placement.local_experts(ep_comm->rank()). Expert params: "layers.{layer}.moe.experts.{e}.w1"
  // [f,d] (gate), ".w3" [f,d] (up), ".w2" [d,f] (down), kind kExpert with the global index e.
  MoELayer(const MoEConfig& cfg, const Placement& placement, Communicator* ep_comm, int layer);
  ~MoELayer();

  // x[N,d] -> y[N,d] (overwritten). Collective over the EP group.
  void forward(const T* x, T* y, int64_t N, const RouterContext& ctx);
  // dy[N,d] -> dx[N,d] (overwritten), parameter gradients +=. Collective over the EP group.
  void backward(const T* dy, double loss_scale, T* dx);

  double router_loss() const;
  std::vector<Parameter<T>*> parameters();  // router params (replicated) then local experts
  const MoEStats& stats() const;
  // The routing and the dispatch plan of the last forward (metrics, traffic records, tests).
  const Routing<T>& routing() const;
  const Dispatcher<T>& dispatcher() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dirmoe
