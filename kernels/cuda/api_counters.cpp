// The interposed CUDA runtime entry points behind api_counters.h: each counts, then calls
// libcudart's own (found with dlsym(RTLD_NEXT)).
#include "kernels/cuda/api_counters.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <atomic>

namespace dirmoe::cuda {
namespace {

std::atomic<int64_t> g_allocs{0}, g_frees{0}, g_syncs{0}, g_blocking{0};

// The next definition of `name` after this executable's: libcudart's.
template <class Fn>
Fn real(const char* name) {
  static_assert(sizeof(Fn) == sizeof(void*));
  void* p = dlsym(RTLD_NEXT, name);
  return reinterpret_cast<Fn>(p);
}

// True when `p` is host memory the runtime does not know (pageable): a copy from or to it is
// synchronous whatever the API says.
bool pageable(const void* p) {
  cudaPointerAttributes a{};
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return true;
  }
  return a.type == cudaMemoryTypeUnregistered;
}

}  // namespace

ApiCounts api_counts() {
  return {g_allocs.load(), g_frees.load(), g_syncs.load(), g_blocking.load()};
}

ApiCounts operator-(const ApiCounts& a, const ApiCounts& b) {
  return {a.allocs - b.allocs, a.frees - b.frees, a.syncs - b.syncs,
          a.blocking_copies - b.blocking_copies};
}

}  // namespace dirmoe::cuda

using dirmoe::cuda::g_allocs;
using dirmoe::cuda::g_blocking;
using dirmoe::cuda::g_frees;
using dirmoe::cuda::g_syncs;
using dirmoe::cuda::pageable;
using dirmoe::cuda::real;

// Each wrapper resolves libcudart's function once; a runtime without it answers as the runtime
// would for an unsupported call.
#define DIRMOE_FORWARD(name, counter, params, args)         \
  extern "C" cudaError_t name params {                      \
    using Fn = cudaError_t(*) params;                       \
    static Fn fn = real<Fn>(#name);                         \
    counter.fetch_add(1, std::memory_order_relaxed);        \
    return fn != nullptr ? fn args : cudaErrorNotSupported; \
  }

DIRMOE_FORWARD(cudaMalloc, g_allocs, (void** p, size_t n), (p, n))
DIRMOE_FORWARD(cudaMallocHost, g_allocs, (void** p, size_t n), (p, n))
DIRMOE_FORWARD(cudaHostAlloc, g_allocs, (void** p, size_t n, unsigned int f), (p, n, f))
DIRMOE_FORWARD(cudaMallocAsync, g_allocs, (void** p, size_t n, cudaStream_t s), (p, n, s))
DIRMOE_FORWARD(cudaFree, g_frees, (void* p), (p))
DIRMOE_FORWARD(cudaFreeHost, g_frees, (void* p), (p))
DIRMOE_FORWARD(cudaFreeAsync, g_frees, (void* p, cudaStream_t s), (p, s))
DIRMOE_FORWARD(cudaDeviceSynchronize, g_syncs, (void), ())
DIRMOE_FORWARD(cudaStreamSynchronize, g_syncs, (cudaStream_t s), (s))
DIRMOE_FORWARD(cudaEventSynchronize, g_syncs, (cudaEvent_t e), (e))
DIRMOE_FORWARD(cudaMemcpy, g_blocking, (void* d, const void* s, size_t n, cudaMemcpyKind k),
               (d, s, n, k))

extern "C" cudaError_t cudaMemcpyAsync(void* d, const void* s, size_t n, cudaMemcpyKind k,
                                       cudaStream_t st) {
  using Fn = cudaError_t (*)(void*, const void*, size_t, cudaMemcpyKind, cudaStream_t);
  static Fn fn = real<Fn>("cudaMemcpyAsync");
  if ((k == cudaMemcpyDeviceToHost && pageable(d)) || (k == cudaMemcpyHostToDevice && pageable(s)))
    g_blocking.fetch_add(1, std::memory_order_relaxed);
  return fn != nullptr ? fn(d, s, n, k, st) : cudaErrorNotSupported;
}
