// See cuda_optimizer.h.
#include "runtime/cuda_optimizer.h"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/api.cuh"
#include "runtime/core/cuda_check.h"
#include "runtime/core/error.h"
#include "runtime/core/trace.h"

namespace dirmoe {

template <class T>
struct CudaOptimizer<T>::Impl {
  CudaModel<T>& model;
  TrainConfig train;
  Communicator *world_dev, *replica_dev, *world_host, *ep_host;
  cudaStream_t stream;
  std::vector<cuda::DeviceParameter*> params;               // the model's, in its order
  std::vector<cuda::DeviceParameter*> replicated, experts;  // the same, split by kind
  std::vector<Parameter<float>*> routers;
  std::vector<cuda::DeviceBuffer<float>> m_dev, v_dev;  // per entry of params
  std::vector<std::vector<float>> m_host, v_host;       // per router parameter
  cuda::DeviceBuffer<double> sumsq;                     // [2]: replicated, experts
  cuda::DeviceBuffer<double> scratch;
  cuda::DeviceBuffer<float> scale;  // [1]: the clip coefficient
  std::vector<float> flat;          // router gradients for one all-reduce
  // Every device parameter as one multi-tensor list: AdamW in one launch, the gradient norm of
  // the two groups (0 replicated, 1 experts) in two.
  cuda::DeviceBuffer<cuda::MultiTensor> d_tensors;
  cuda::DeviceBuffer<cuda::MultiTensorChunk> d_chunks;
  cuda::DeviceBuffer<int64_t> d_group_begin;
  int64_t num_chunks = 0;

  Impl(CudaModel<T>& m, const TrainConfig& t, Communicator* wd, Communicator* rd, Communicator* wh,
       Communicator* eh)
      : model(m),
        train(t),
        world_dev(wd),
        replica_dev(rd),
        world_host(wh),
        ep_host(eh),
        stream(m.stream()),
        params(m.device_parameters()) {
    size_t most = 1;
    for (cuda::DeviceParameter* p : params) {
      (p->expert ? experts : replicated).push_back(p);
      m_dev.emplace_back(p->numel());
      v_dev.emplace_back(p->numel());
      m_dev.back().fill_bytes(0, stream);
      v_dev.back().fill_bytes(0, stream);
      most = std::max(most, cuda::sum_squares_scratch_doubles(p->numel()));
    }
    int64_t router_numel = 0;
    for (Parameter<float>* p : model.router_parameters()) {
      routers.push_back(p);
      m_host.emplace_back(p->numel(), 0.0f);
      v_host.emplace_back(p->numel(), 0.0f);
      router_numel += p->numel();
    }
    flat.resize(static_cast<size_t>(router_numel));
    std::vector<cuda::MultiTensor> list;
    for (size_t i = 0; i < params.size(); ++i) {
      cuda::DeviceParameter* p = params[i];
      list.push_back({p->master.data(), p->half.size() > 0 ? p->half.data() : nullptr,
                      p->grad.data(), m_dev[i].data(), v_dev[i].data(), p->numel(), p->decay,
                      p->expert ? 1 : 0});
    }
    std::vector<int64_t> group_begin;
    const std::vector<cuda::MultiTensorChunk> chunks =
        cuda::multi_tensor_chunks(list, 2, cuda::kMultiTensorChunk, &group_begin);
    num_chunks = static_cast<int64_t>(chunks.size());
    d_tensors.resize(std::max<int64_t>(1, static_cast<int64_t>(list.size())));
    d_chunks.resize(std::max<int64_t>(1, num_chunks));
    if (!list.empty()) d_tensors.upload(list);
    if (!chunks.empty()) d_chunks.upload(chunks);
    d_group_begin.resize(static_cast<int64_t>(group_begin.size()));
    d_group_begin.upload(group_begin);
    most = std::max(most, cuda::multi_tensor_scratch_doubles(num_chunks));
    sumsq.resize(2);
    scratch.resize(static_cast<int64_t>(most));
    scale.resize(1);
    DIRMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
};

template <class T>
CudaOptimizer<T>::CudaOptimizer(CudaModel<T>& model, const TrainConfig& train,
                                Communicator* world_dev, Communicator* replica_dev,
                                Communicator* world_host, Communicator* ep_host)
    : impl_(std::make_unique<Impl>(model, train, world_dev, replica_dev, world_host, ep_host)) {}

template <class T>
CudaOptimizer<T>::~CudaOptimizer() = default;

template <class T>
double CudaOptimizer<T>::reduce_gradients() {
  Impl& o = *impl_;
  cudaStream_t st = o.stream;
  if (o.world_dev->size() > 1)
    for (cuda::DeviceParameter* p : o.replicated)
      o.world_dev->all_reduce(p->grad.data(), p->numel(), DType::kF32, ReduceOp::kSum);
  if (o.replica_dev->size() > 1)
    for (cuda::DeviceParameter* p : o.experts)
      o.replica_dev->all_reduce(p->grad.data(), p->numel(), DType::kF32, ReduceOp::kSum);
  cuda::multi_tensor_sum_squares(o.sumsq.data(), o.d_tensors.data(), o.d_chunks.data(),
                                 o.num_chunks, o.d_group_begin.data(), 2, o.scratch.data(), st);
  double sq[2] = {0, 0};
  DIRMOE_CUDA_CHECK(cudaMemcpyAsync(sq, o.sumsq.data(), sizeof sq, cudaMemcpyDeviceToHost, st));
  // Router gradients (host): one all-reduce over the world.
  size_t off = 0;
  for (Parameter<float>* p : o.routers) {
    std::copy(p->grad.data(), p->grad.data() + p->numel(), o.flat.data() + off);
    off += static_cast<size_t>(p->numel());
  }
  if (o.world_host->size() > 1 && off > 0)
    o.world_host->all_reduce(o.flat.data(), static_cast<int64_t>(off), DType::kF32, ReduceOp::kSum);
  off = 0;
  for (Parameter<float>* p : o.routers) {
    std::copy(o.flat.data() + off, o.flat.data() + off + p->numel(), p->grad.data());
    off += static_cast<size_t>(p->numel());
  }
  const double router_sq = cpu::sum_squares(o.flat.data(), static_cast<int64_t>(o.flat.size()));
  DIRMOE_CUDA_CHECK(cudaStreamSynchronize(st));
  double expert_sq = sq[1];
  o.ep_host->all_reduce(&expert_sq, 1, DType::kF64, ReduceOp::kSum);
  return std::sqrt(sq[0] + router_sq + expert_sq);
}

template <class T>
void CudaOptimizer<T>::apply(double grad_norm, double lr, int64_t step1) {
  Impl& o = *impl_;
  cudaStream_t st = o.stream;
  const TrainConfig& t = o.train;
  const double clip = (t.clip > 0 && grad_norm > t.clip) ? t.clip / (grad_norm + 1e-6) : 1.0;
  const float clip_f = static_cast<float>(clip);
  DIRMOE_CUDA_CHECK(
      cudaMemcpyAsync(o.scale.data(), &clip_f, sizeof clip_f, cudaMemcpyHostToDevice, st));
  cuda::AdamWParams ap;
  ap.lr = lr;
  ap.beta1 = t.beta1;
  ap.beta2 = t.beta2;
  ap.eps = t.eps;
  ap.weight_decay = t.weight_decay;  // on the tensors marked decay
  ap.step = step1;
  cuda::multi_tensor_adamw(o.d_tensors.data(), o.d_chunks.data(), o.num_chunks, ap, o.scale.data(),
                           st);
  for (size_t i = 0; i < o.routers.size(); ++i) {
    Parameter<float>* p = o.routers[i];
    if (clip != 1.0) cpu::scale_inplace(p->grad.data(), p->numel(), clip);
    cpu::AdamWParams ap{lr, t.beta1, t.beta2, t.eps, p->decay ? t.weight_decay : 0.0, step1};
    cpu::adamw_update(p->value.data(), p->grad.data(), o.m_host[i].data(), o.v_host[i].data(),
                      p->numel(), ap);
  }
  // clip_f is read by the copy above; the stream must be past it before the frame ends.
  DIRMOE_CUDA_CHECK(cudaStreamSynchronize(st));
}

template class CudaOptimizer<float>;
template class CudaOptimizer<__nv_bfloat16>;

}  // namespace dirmoe
