// The CUDA / cuBLAS / NCCL check macros: each throws dirmoe::Error naming the expression and the
// library's own message (no GPU needed: the error codes are passed in directly).
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <nccl.h>

#include <string>

#include "runtime/core/cuda_check.h"
#include "tests/gpu/gpu_test_util.h"

namespace dirmoe {
namespace {

template <class F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

cudaError_t returns(cudaError_t e) { return e; }
cublasStatus_t returns(cublasStatus_t s) { return s; }
ncclResult_t returns(ncclResult_t r) { return r; }

TEST(CudaCheck, SuccessDoesNotThrow) {
  EXPECT_NO_THROW(DIRMOE_CUDA_CHECK(returns(cudaSuccess)));
  EXPECT_NO_THROW(DIRMOE_CUBLAS_CHECK(returns(CUBLAS_STATUS_SUCCESS)));
  EXPECT_NO_THROW(DIRMOE_NCCL_CHECK(returns(ncclSuccess)));
}

TEST(CudaCheck, CudaErrorNamesExpressionAndLibraryMessage) {
  const std::string msg = message_of([] { DIRMOE_CUDA_CHECK(returns(cudaErrorInvalidValue)); });
  EXPECT_NE(msg.find("returns(cudaErrorInvalidValue)"), std::string::npos) << msg;
  EXPECT_NE(msg.find("cudaErrorInvalidValue"), std::string::npos) << msg;
  EXPECT_NE(msg.find("invalid argument"), std::string::npos) << msg;
  EXPECT_NE(msg.find("test_cuda_check.cpp"), std::string::npos) << msg;
  EXPECT_NE(msg.find("device"), std::string::npos) << msg;
}

TEST(CudaCheck, CublasErrorNamesStatus) {
  const std::string msg =
      message_of([] { DIRMOE_CUBLAS_CHECK(returns(CUBLAS_STATUS_NOT_INITIALIZED)); });
  EXPECT_NE(msg.find("cuBLAS call failed"), std::string::npos) << msg;
  EXPECT_NE(msg.find("CUBLAS_STATUS_NOT_INITIALIZED"), std::string::npos) << msg;
}

TEST(CudaCheck, NcclErrorNamesResult) {
  const std::string msg = message_of([] { DIRMOE_NCCL_CHECK(returns(ncclInvalidArgument)); });
  EXPECT_NE(msg.find("NCCL call failed"), std::string::npos) << msg;
  EXPECT_NE(msg.find("invalid argument"), std::string::npos) << msg;
}

TEST(CudaCheck, NoGpuIsReportedNotFatal) {
  // Without a driver cudaGetDeviceCount fails: gpu_available() says false and nothing crashes.
  const bool available = cuda::testing::gpu_available();
  std::printf("[ info    ] GPU available: %s\n", available ? "yes" : "no");
  int n = -1;
  const cudaError_t e = cudaGetDeviceCount(&n);
  EXPECT_EQ(available, e == cudaSuccess && n > 0);
  (void)cudaGetLastError();
  int version = 0;
  DIRMOE_NCCL_CHECK(ncclGetVersion(&version));
  std::printf("[ info    ] NCCL version code %d\n", version);
  EXPECT_GE(version, 22000);
}

}  // namespace
}  // namespace dirmoe
