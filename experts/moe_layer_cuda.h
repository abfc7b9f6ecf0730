// The MoE layer on the GPU: the same route -> plan -> permute -> all_to_all_v -> local SwiGLU
// experts -> all_to_all_v back -> un-permute -> weighted combine as experts/moe_layer.h, with the
// rows, the experts and the permutations on the device (kernels/cuda) and the token exchange on a
// device communicator (NCCL). The router runs on the host with the CPU routers (router/), on the
// fp32 hidden states copied from the device: the same routing, noise and loss terms as the CPU path
// by construction, for topk, dirmoe and probmoe alike; the dispatch counts cross a host
// communicator (MPI), since the all_to_all_v sizes must be known on the host anyway.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "experts/moe_layer.h"
#include "experts/placement.h"
#include "kernels/cuda/device_buffer.h"
#include "router/router.h"

namespace dirmoe {

// T: float (fp32 mode, parity with the CPU) or __nv_bfloat16 (bf16 activations and matmul weights,
// fp32 master weights and gradients).
template <class T>
class CudaMoELayer {
 public:
  // host_comm and dev_comm: the EP group over MPI and over a device communicator, same ranks in the
  // same order (size == placement.ep_size()). Kernels, cuBLAS and dev_comm share `stream`; the
  // handle is bound to it by the caller. Expert parameters are named as on the CPU
  // ("layers.{layer}.moe.experts.{e}.w1|w2|w3").
  CudaMoELayer(const MoEConfig& cfg, const Placement& placement, Communicator* host_comm,
               Communicator* dev_comm, int layer, cublasHandle_t handle, cudaStream_t stream);
  ~CudaMoELayer();

  // x[N,d] -> y[N,d] (overwritten), device pointers. Collective over the EP group.
  void forward(const T* x, T* y, int64_t N, const RouterContext& ctx);
  // dy[N,d] -> dx[N,d] (overwritten), parameter gradients +=. Collective over the EP group.
  void backward(const T* dy, double loss_scale, T* dx);

  double router_loss() const;
  std::vector<Parameter<float>*> router_parameters();       // host, replicated
  std::vector<cuda::DeviceParameter*> expert_parameters();  // device, this rank's experts
  const MoEStats& stats() const;
  const Routing<float>& routing() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dirmoe
