// The interposed CUDA runtime entry points (kernels/cuda/api_counters.h): each call is counted
// once and answered by libcudart itself (the same error code as a direct call to libcudart's
// function without a GPU; real allocations and the pageable/pinned distinction with one).
#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <vector>

#include "kernels/cuda/api_counters.h"
#include "tests/gpu/gpu_test_util.h"

namespace dirmoe::cuda::testing {
namespace {

TEST(ApiCounters, CountsEachCallAndForwardsToTheRuntime) {
  using MallocFn = cudaError_t (*)(void**, size_t);
  auto runtime_malloc = reinterpret_cast<MallocFn>(dlsym(RTLD_NEXT, "cudaMalloc"));
  ASSERT_NE(runtime_malloc, nullptr) << "libcudart's cudaMalloc not found behind the interposer";
  const ApiCounts before = api_counts();
  void* p = nullptr;
  const cudaError_t ours = cudaMalloc(&p, 1 << 20);
  (void)cudaGetLastError();
  ApiCounts d = api_counts() - before;
  EXPECT_EQ(d.allocs, 1);
  EXPECT_EQ(d.frees, 0);
  if (ours != cudaSuccess) {  // no GPU: the runtime's own answer, passed through
    void* q = nullptr;
    EXPECT_EQ(runtime_malloc(&q, 1 << 20), ours);
    (void)cudaGetLastError();
    EXPECT_EQ((api_counts() - before).allocs, 1) << "a direct call to libcudart must not count";
    GTEST_SKIP() << "no GPU: counting and forwarding checked, not real allocations ("
                 << cudaGetErrorString(ours) << ")";
  }
  ASSERT_EQ(cudaFree(p), cudaSuccess);
  d = api_counts() - before;
  EXPECT_EQ(d.frees, 1);

  // Pinned versus pageable: only the copy into pageable memory is a blocking copy.
  cudaStream_t s;
  ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
  DeviceBuffer<float> dev(256);
  float* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(reinterpret_cast<void**>(&pinned), 256 * sizeof(float)), cudaSuccess);
  std::vector<float> pageable(256);
  const ApiCounts c0 = api_counts();
  ASSERT_EQ(cudaMemcpyAsync(pinned, dev.data(), 256 * sizeof(float), cudaMemcpyDeviceToHost, s),
            cudaSuccess);
  EXPECT_EQ((api_counts() - c0).blocking_copies, 0);
  ASSERT_EQ(
      cudaMemcpyAsync(pageable.data(), dev.data(), 256 * sizeof(float), cudaMemcpyDeviceToHost, s),
      cudaSuccess);
  EXPECT_EQ((api_counts() - c0).blocking_copies, 1);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  EXPECT_EQ((api_counts() - c0).syncs, 1);
  EXPECT_EQ((api_counts() - c0).host_syncs(), 2);
  ASSERT_EQ(cudaFreeHost(pinned), cudaSuccess);
  ASSERT_EQ(cudaStreamDestroy(s), cudaSuccess);
}

}  // namespace
}  // namespace dirmoe::cuda::testing
