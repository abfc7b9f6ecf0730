// Throughput probes (no assertions): bf16 cuBLAS GEMMs and flash attention forward/backward at
// 185M-model shapes, reported in TFLOP/s so each GPU run records where the building blocks stand.
#include <cublas_v2.h>
#include <gtest/gtest.h>

#include <functional>

#include "kernels/cuda/api.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace dirmoe::cuda::testing {
namespace {

// Mean milliseconds per call over `reps` after `warmup` calls.
double time_ms(const std::function<void()>& fn, int warmup = 3, int reps = 10) {
  for (int i = 0; i < warmup; ++i) fn();
  cudaEvent_t start, stop;
  DIRMOE_CUDA_CHECK(cudaEventCreate(&start));
  DIRMOE_CUDA_CHECK(cudaEventCreate(&stop));
  DIRMOE_CUDA_CHECK(cudaEventRecord(start));
  for (int i = 0; i < reps; ++i) fn();
  DIRMOE_CUDA_CHECK(cudaEventRecord(stop));
  DIRMOE_CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = 0.f;
  DIRMOE_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  (void)cudaEventDestroy(start);
  (void)cudaEventDestroy(stop);
  return double(ms) / reps;
}

void report(const char* what, double flops, double ms) {
  std::printf("[ perf    ] %-58s %8.3f ms  %7.1f TFLOP/s\n", what, ms, flops / (ms * 1e-3) / 1e12);
}

TEST(PerfCuda, LinearBf16) {
  DIRMOE_SKIP_WITHOUT_GPU();
  cublasHandle_t h;
  DIRMOE_CUBLAS_CHECK(cublasCreate(&h));
  DeviceBuffer<uint8_t> ws(32 << 20);
  DIRMOE_CUBLAS_CHECK(cublasSetWorkspace(h, ws.data(), ws.bytes()));
  struct Shape {
    const char* name;
    int64_t N, in, out;
  };
  const Shape shapes[] = {{"linear_fwd bf16 N=16384 768->2304 (qkv)", 16384, 768, 2304},
                          {"linear_fwd bf16 N=16384 768->50304 (lm head)", 16384, 768, 50304},
                          {"linear_fwd bf16 N=8192 8192->8192", 8192, 8192, 8192}};
  for (const auto& s : shapes) {
    DeviceBuffer<bf16> x(s.N * s.in), W(s.out * s.in), y(s.N * s.out), dx(s.N * s.in);
    DeviceBuffer<float> dW(s.out * s.in);
    x.fill_bytes(0x3c);
    W.fill_bytes(0x3c);
    dW.fill_bytes(0);
    const double flops = 2.0 * s.N * s.in * s.out;
    report(s.name, flops, time_ms([&] {
             linear_forward<bf16>(h, y.data(), x.data(), W.data(), s.N, s.in, s.out, false,
                                  nullptr);
           }));
    std::string b = std::string(s.name) + " bwd(dx+dW)";
    report(b.c_str(), 2 * flops, time_ms([&] {
             linear_backward<bf16>(h, dx.data(), dW.data(), y.data(), x.data(), W.data(), s.N, s.in,
                                   s.out, false, nullptr);
           }));
  }
  (void)cublasDestroy(h);
}

TEST(PerfCuda, AttentionBf16) {
  DIRMOE_SKIP_WITHOUT_GPU();
  struct Shape {
    const char* name;
    int64_t B, S, Hq, Hkv, hd;
  };
  const Shape shapes[] = {{"attention bf16 B=16 S=1024 Hq=12 Hkv=4 hd=64", 16, 1024, 12, 4, 64},
                          {"attention bf16 B=4 S=2048 Hq=16 Hkv=8 hd=128", 4, 2048, 16, 8, 128}};
  for (const auto& s : shapes) {
    const int64_t nq = s.B * s.S * s.Hq * s.hd, nk = s.B * s.S * s.Hkv * s.hd;
    auto q = to_device_as<bf16>(randn(nq, 1, 0.5)), k = to_device_as<bf16>(randn(nk, 2, 0.5));
    auto v = to_device_as<bf16>(randn(nk, 3)), g = to_device_as<bf16>(randn(nq, 4));
    DeviceBuffer<bf16> out(nq), dq(nq), dk(nk), dv(nk);
    DeviceBuffer<float> lse(s.B * s.Hq * s.S);
    DeviceBuffer<float> scratch(
        static_cast<int64_t>(attention_backward_scratch_floats(s.B, s.S, s.Hq)));
    // Causal: half of the S x S score matrix; forward 2 GEMMs, backward 5 (model FLOPs).
    const double fwd = 2.0 * 2.0 * s.B * s.Hq * double(s.S) * s.S * s.hd / 2.0;
    report((std::string(s.name) + " fwd").c_str(), fwd, time_ms([&] {
             attention_forward<bf16>(out.data(), lse.data(), q.data(), k.data(), v.data(), s.B, s.S,
                                     s.Hq, s.Hkv, s.hd, nullptr);
           }));
    report((std::string(s.name) + " bwd").c_str(), 2.5 * fwd, time_ms([&] {
             attention_backward<bf16>(dq.data(), dk.data(), dv.data(), g.data(), q.data(), k.data(),
                                      v.data(), out.data(), lse.data(), s.B, s.S, s.Hq, s.Hkv, s.hd,
                                      scratch.data(), nullptr);
           }));
  }
}

}  // namespace
}  // namespace dirmoe::cuda::testing
