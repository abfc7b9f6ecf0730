// Counts of the CUDA runtime calls that stall a training step: allocations and frees (each may
// synchronise the device), and host synchronisations (stream, event and device synchronise, the
// synchronous copies, and asynchronous copies to or from pageable host memory, which the runtime
// performs synchronously). `dirmoe bench train` prints them per step after the warm-up.
// NOTE: counted by interposing the runtime's entry points in the executables that link
// dirmoe_cuda_api_counters (calls from our code; cuBLAS and NCCL carry their own runtime), then
// forwarding to libcudart's: independent of how our call sites are written.
#pragma once

#include <cstdint>

namespace dirmoe::cuda {

struct ApiCounts {
  int64_t allocs = 0;  // cudaMalloc, cudaMallocHost, cudaHostAlloc, cudaMallocAsync
  int64_t frees = 0;   // cudaFree, cudaFreeHost, cudaFreeAsync
  int64_t syncs = 0;   // cudaDeviceSynchronize, cudaStreamSynchronize, cudaEventSynchronize
  int64_t blocking_copies = 0;  // cudaMemcpy, cudaMemcpyAsync to/from pageable host memory
  int64_t host_syncs() const { return syncs + blocking_copies; }
};

// Counts since the process started (all threads).
ApiCounts api_counts();
ApiCounts operator-(const ApiCounts& a, const ApiCounts& b);

}  // namespace dirmoe::cuda
