// Gradient reduction, global-norm clipping and AdamW for CudaModel, with the semantics of the CPU
// trainer's step (runtime/trainer.cpp): replicated gradients summed over the world, expert
// gradients over the ranks holding the same experts, the norm over every parameter counted once,
// then clip and AdamW with fp32 master weights and moments on the device (the bf16 matmul copies
// refreshed in the same kernel). The routers' parameters live on the host with the routers and are
// reduced and updated there. Nothing is allocated after construction.
#pragma once

#include <memory>

#include "comm/communicator.h"
#include "runtime/config.h"
#include "runtime/cuda_model.h"

namespace dirmoe {

template <class T>
class CudaOptimizer {
 public:
  // world_dev / replica_dev: device communicators on the model's stream (world; the ranks with the
  // same EP rank); world_host, ep_host: the world and the EP group over MPI.
  CudaOptimizer(CudaModel<T>& model, const TrainConfig& train, Communicator* world_dev,
                Communicator* replica_dev, Communicator* world_host, Communicator* ep_host);
  ~CudaOptimizer();

  // Reduces the gradients; returns the global gradient norm.
  double reduce_gradients();
  // clip (when train.clip > 0 and the norm exceeds it) and one AdamW step at learning rate lr;
  // step1 is the 1-based step for bias correction.
  void apply(double grad_norm, double lr, int64_t step1);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dirmoe
