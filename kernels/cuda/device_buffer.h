// RAII owner of device memory (cudaFree only in its deleter) with host <-> device copies, for
// init-time allocations, scratch and tests. Plain C++: no kernels here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
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

}  // namespace dirmoe::cuda
