// The LLaMA-MoE model on the GPU: the same blocks, parameter names and forward/backward as
// runtime/model.h, on kernels/cuda with one stream and one cuBLAS handle, the experts in
// CudaMoELayer (NCCL token exchange, host routers). T = float runs every op in fp32 (parity with
// the CPU model); T = __nv_bfloat16 keeps activations and matmul weights in bf16 with fp32
// accumulation, fp32 master weights and fp32 gradients. Activations are device buffers that only
// grow, so a steady-state step of one micro-batch shape allocates nothing.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "comm/communicator.h"
#include "experts/moe_layer.h"
#include "experts/placement.h"
#include "kernels/cuda/device_buffer.h"
#include "runtime/config.h"
#include "runtime/model.h"

namespace dirmoe {

template <class T>
class CudaModel {
 public:
  // ep_host / ep_dev: this rank's EP group over MPI and over the device communicator (NCCL), which
  // must run on `stream`. The current CUDA device is the one used.
  CudaModel(const Config& cfg, Communicator* ep_host, Communicator* ep_dev,
            const Placement& placement, cudaStream_t stream);
  ~CudaModel();

  // init_parameter(seed) for every parameter (computed on the host, then uploaded): the same
  // initial weights as Model<T>::init_weights.
  void init_weights(uint64_t seed);
  // After the fp32 master weights changed outside the optimizer (init, checkpoint load): refresh
  // the bf16 copies the matmuls read. A no-op in fp32 mode.
  void refresh_half_weights();

  // Every gradient (device and router) = 0.
  void zero_grad();

  // tokens[B, S+1] on the HOST, as Model::forward_backward; gradients (fp32) accumulate.
  MicroBatchResult forward_backward(const int32_t* tokens, int64_t B, RouterContext ctx,
                                    double loss_scale, bool backward);

  // Device parameters (replicated first, then this rank's experts) and the routers' parameters,
  // which live on the host with the routers (replicated).
  std::vector<cuda::DeviceParameter*> device_parameters();
  std::vector<Parameter<float>*> router_parameters();
  int num_layers() const;
  const MoEStats& moe_stats(int layer) const;
  const Routing<float>& routing(int layer) const;
  const Config& config() const;
  cudaStream_t stream() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dirmoe
