// Check macros for the CUDA runtime, cuBLAS and NCCL, in the style of DIRMOE_MPI_CHECK: the failing
// expression, the library's own message and the current device go into a dirmoe::Error.
// NOTE: this header includes no CUDA header; the use site includes the library it checks
// (<cuda_runtime_api.h>, <cublas_v2.h>, <nccl.h>), so code without NCCL never needs its headers.
#pragma once

#include "runtime/core/error.h"

// Wraps a CUDA runtime call (or cudaGetLastError() after a launch). The pending non-sticky error is
// cleared so that a later launch check does not report it a second time.
#define DIRMOE_CUDA_CHECK(expr)                                                          \
  do {                                                                                   \
    const cudaError_t dirmoe_cuda_rc_ = (expr);                                          \
    if (dirmoe_cuda_rc_ != cudaSuccess) {                                                \
      (void)cudaGetLastError();                                                          \
      int dirmoe_cuda_dev_ = -1;                                                         \
      (void)cudaGetDevice(&dirmoe_cuda_dev_);                                            \
      ::dirmoe::detail::throw_error(                                                     \
          __FILE__, __LINE__,                                                            \
          ::dirmoe::detail::concat(                                                      \
              "CUDA call failed: " #expr ": ", cudaGetErrorName(dirmoe_cuda_rc_), ": ",  \
              cudaGetErrorString(dirmoe_cuda_rc_), " (device ", dirmoe_cuda_dev_, ")")); \
    }                                                                                    \
  } while (0)

// Wraps a cuBLAS call.
#define DIRMOE_CUBLAS_CHECK(expr)                                                              \
  do {                                                                                         \
    const cublasStatus_t dirmoe_cublas_rc_ = (expr);                                           \
    if (dirmoe_cublas_rc_ != CUBLAS_STATUS_SUCCESS) {                                          \
      int dirmoe_cuda_dev_ = -1;                                                               \
      (void)cudaGetDevice(&dirmoe_cuda_dev_);                                                  \
      ::dirmoe::detail::throw_error(                                                           \
          __FILE__, __LINE__,                                                                  \
          ::dirmoe::detail::concat(                                                            \
              "cuBLAS call failed: " #expr ": ", cublasGetStatusName(dirmoe_cublas_rc_), ": ", \
              cublasGetStatusString(dirmoe_cublas_rc_), " (device ", dirmoe_cuda_dev_, ")"));  \
    }                                                                                          \
  } while (0)

// Wraps an NCCL call; ncclInProgress counts as failure here (non-blocking communicators handle it
// themselves, see comm/nccl_communicator.cpp). ncclGetLastError adds NCCL's detailed reason.
#define DIRMOE_NCCL_CHECK(expr)                                                                 \
  do {                                                                                          \
    const ncclResult_t dirmoe_nccl_rc_ = (expr);                                                \
    if (dirmoe_nccl_rc_ != ncclSuccess) {                                                       \
      int dirmoe_cuda_dev_ = -1;                                                                \
      (void)cudaGetDevice(&dirmoe_cuda_dev_);                                                   \
      const char* dirmoe_nccl_last_ = ncclGetLastError(nullptr);                                \
      ::dirmoe::detail::throw_error(                                                            \
          __FILE__, __LINE__,                                                                   \
          ::dirmoe::detail::concat(                                                             \
              "NCCL call failed: " #expr ": ", ncclGetErrorString(dirmoe_nccl_rc_),             \
              (dirmoe_nccl_last_ && *dirmoe_nccl_last_) ? ": " : "",                            \
              dirmoe_nccl_last_ ? dirmoe_nccl_last_ : "", " (device ", dirmoe_cuda_dev_, ")")); \
    }                                                                                           \
  } while (0)
