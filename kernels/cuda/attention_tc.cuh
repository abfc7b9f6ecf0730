// Internal to kernels/cuda: the tensor-core (bf16 WMMA) fast path of causal GQA attention, for
// head dims 64 and 128. attention.cu decides per call whether it applies (attention_tc_covers)
// and otherwise runs its general fp32-SIMT kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace dirmoe::cuda::detail {

// True when the fast path handles this call: head dim 64 or 128 and every pointer 16-byte aligned
// (any B, S, Hq, Hkv: partial tiles are masked inside the kernels).
bool attention_tc_covers(int64_t hd, const void* const* ptrs, int n_ptrs);

// Same contract as attention_forward<bf16> in api.cuh; shapes already checked by the caller.
void attention_tc_forward(__nv_bfloat16* out, float* lse, const __nv_bfloat16* q,
                          const __nv_bfloat16* k, const __nv_bfloat16* v, int64_t B, int64_t S,
                          int64_t Hq, int64_t Hkv, int64_t hd, cudaStream_t stream);

// dq, dk, dv overwritten, deterministic. D[B, Hq, S] = rowsum(dout * out), computed by the caller.
void attention_tc_backward(__nv_bfloat16* dq, __nv_bfloat16* dk, __nv_bfloat16* dv,
                           const __nv_bfloat16* dout, const __nv_bfloat16* q,
                           const __nv_bfloat16* k, const __nv_bfloat16* v, const float* lse,
                           const float* D, int64_t B, int64_t S, int64_t Hq, int64_t Hkv,
                           int64_t hd, cudaStream_t stream);

}  // namespace dirmoe::cuda::detail
