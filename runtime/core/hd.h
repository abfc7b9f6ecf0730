// DIRMOE_HD marks math that both backends run (DESIGN.md section 7): per-token router math, Gamma and
// Dirichlet functions, AdamW per element, norms per row. The CPU calls it in loops, CUDA kernels per
// thread, so the CPU tests cover the arithmetic the GPU runs.
// NOTE: a DIRMOE_HD function must stay header-only and use only what has a device version (no
// std::vector, no exceptions, <cmath> functions through their unqualified or ::std names that
// CUDA provides).
#pragma once

#if defined(__CUDACC__)
#define DIRMOE_HD __host__ __device__ __forceinline__
#else
#define DIRMOE_HD inline
#endif
