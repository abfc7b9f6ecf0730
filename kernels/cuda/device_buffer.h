// RAII owner of device memory (cudaFree only in its deleter) with host <-> device copies, for
// init-time allocations, scratch and tests, and the device-side trainable parameter. Plain C++: no
// kernels here.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "runtime/core/cuda_check.h"

namespace dirmoe::cuda {

template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(int64_t n) { resize(n); }
  DeviceBuffer(DeviceBuffer&&) noexcept = default;
  DeviceBuffer& operator=(DeviceBuffer&&) noexcept = default;

  // Reallocates (contents are lost) unless the size is unchanged.
  void resize(int64_t n) {
    DIRMOE_CHECK(n >= 0, "negative device buffer size ", n);
    if (n == size_) return;
    ptr_.reset();
    size_ = 0;
    if (n > 0) {
      void* p = nullptr;
      DIRMOE_CUDA_CHECK(cudaMalloc(&p, static_cast<size_t>(n) * sizeof(T)));
      ptr_.reset(static_cast<T*>(p));
    }
    size_ = n;
  }
  // Reallocates (contents are lost) only when n exceeds the size: activation buffers that only
  // grow.
  void grow(int64_t n) {
    if (n > size_) resize(n);
  }
  T* data() { return ptr_.get(); }
  const T* data() const { return ptr_.get(); }
  int64_t size() const { return size_; }
  size_t bytes() const { return static_cast<size_t>(size_) * sizeof(T); }

  // Every byte set to `byte` (sentinels: 0xFF makes floats NaN).
  void fill_bytes(int byte, cudaStream_t stream = nullptr) {
    if (size_ > 0) DIRMOE_CUDA_CHECK(cudaMemsetAsync(data(), byte, bytes(), stream));
  }
  void upload(const std::vector<T>& h_src) {
    resize(static_cast<int64_t>(h_src.size()));
    if (size_ > 0) {
      DIRMOE_CUDA_CHECK(cudaMemcpy(data(), h_src.data(), bytes(), cudaMemcpyHostToDevice));
    }
  }
  std::vector<T> download() const {
    std::vector<T> h_dst(static_cast<size_t>(size_));
    if (size_ > 0) {
      DIRMOE_CUDA_CHECK(cudaMemcpy(h_dst.data(), data(), bytes(), cudaMemcpyDeviceToHost));
    }
    return h_dst;
  }

 private:
  struct Free {
    void operator()(T* p) const { (void)cudaFree(p); }
  };
  std::unique_ptr<T, Free> ptr_;
  int64_t size_ = 0;
};

// Page-locked host memory: copies between it and the device are asynchronous (from pageable
// memory the runtime copies synchronously). Only grows; cudaFreeHost only in its deleter.
template <class T>
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  void grow(int64_t n) {
    DIRMOE_CHECK(n >= 0, "negative pinned buffer size ", n);
    if (n <= size_) return;
    ptr_.reset();
    size_ = 0;
    void* p = nullptr;
    DIRMOE_CUDA_CHECK(cudaMallocHost(&p, static_cast<size_t>(n) * sizeof(T)));
    ptr_.reset(static_cast<T*>(p));
    size_ = n;
  }
  T* data() { return ptr_.get(); }
  const T* data() const { return ptr_.get(); }
  T& operator[](int64_t i) { return ptr_.get()[i]; }
  int64_t size() const { return size_; }

 private:
  struct Free {
    void operator()(T* p) const { (void)cudaFreeHost(p); }
  };
  std::unique_ptr<T, Free> ptr_;
  int64_t size_ = 0;
};

// A trainable tensor on the device (the GPU counterpart of dirmoe::Parameter): fp32 master weights
// and fp32 gradients; `half` holds the bf16 copy the matmuls read when the model runs in bf16
// (empty in fp32 mode). Names, shapes and kinds follow the CPU model's parameters one for one.
struct DeviceParameter {
  std::string name;
  std::vector<int64_t> shape;
  bool expert = false;  // ParamKind::kExpert on the CPU side
  int expert_index = -1;
  bool decay = true;
  DeviceBuffer<float> master;
  DeviceBuffer<float> grad;
  DeviceBuffer<__nv_bfloat16> half;

  DeviceParameter() = default;
  DeviceParameter(std::string n, std::vector<int64_t> s, bool with_half, bool is_expert = false,
                  int e = -1)
      : name(std::move(n)), shape(std::move(s)), expert(is_expert), expert_index(e) {
    master.resize(numel());
    grad.resize(numel());
    if (with_half) half.resize(numel());
  }
  // grad = 0, ordered on `stream`.
  void zero_grad(cudaStream_t stream) { grad.fill_bytes(0, stream); }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t x : shape) n *= x;
    return n;
  }
  // The weights the matmuls of a T model read: the master itself (float) or its bf16 copy.
  template <class T>
  const T* weights() const {
    if constexpr (std::is_same_v<T, float>) {
      return master.data();
    } else {
      return half.data();
    }
  }
};

}  // namespace dirmoe::cuda
