// Throughput probes (no assertions): bf16 cuBLAS GEMMs and flash attention forward/backward at
// 185M-model shapes, reported in TFLOP/s so each GPU run records where the building blocks stand.
// The `[ perf    ] key=...` lines share their keys with bench/gpu/torch_reference.py, so the GPU
// suite's summary prints PyTorch's time beside ours for the same shapes.
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

// A figure the PyTorch reference measures too (same key, same FLOP convention).
void report_key(const char* key, double flops, double ms) {
  std::printf("[ perf    ] key=%s %.3f ms %.1f TFLOP/s\n", key, ms, flops / (ms * 1e-3) / 1e12);
}

// The shapes of bench/gpu/torch_reference.py: llama185m-e8 at micro-batch 8 x 1024.
TEST(PerfCuda, TorchReferenceShapes) {
  DIRMOE_SKIP_WITHOUT_GPU();
  cublasHandle_t h;
  DIRMOE_CUBLAS_CHECK(cublasCreate(&h));
  DeviceBuffer<uint8_t> ws(32 << 20);
  DIRMOE_CUBLAS_CHECK(cublasSetWorkspace(h, ws.data(), ws.bytes()));
  {  // causal GQA attention, B 8, S 1024, 12 query / 4 KV heads, head dim 64
    const int64_t B = 8, S = 1024, Hq = 12, Hkv = 4, hd = 64;
    const int64_t nq = B * S * Hq * hd, nk = B * S * Hkv * hd;
    auto q = to_device_as<bf16>(randn(nq, 1, 0.5)), k = to_device_as<bf16>(randn(nk, 2, 0.5));
    auto v = to_device_as<bf16>(randn(nk, 3)), g = to_device_as<bf16>(randn(nq, 4));
    DeviceBuffer<bf16> out(nq), dq(nq), dk(nk), dv(nk);
    DeviceBuffer<float> lse(B * Hq * S);
    DeviceBuffer<float> scratch(static_cast<int64_t>(attention_backward_scratch_floats(B, S, Hq)));
    const double fwd = 2.0 * 2.0 * B * Hq * double(S) * S * hd / 2.0;
    report_key("attn_fwd_bwd", 3.5 * fwd, time_ms([&] {
                 attention_forward<bf16>(out.data(), lse.data(), q.data(), k.data(), v.data(), B, S,
                                         Hq, Hkv, hd, nullptr);
                 attention_backward<bf16>(dq.data(), dk.data(), dv.data(), g.data(), q.data(),
                                          k.data(), v.data(), out.data(), lse.data(), B, S, Hq, Hkv,
                                          hd, scratch.data(), nullptr);
               }));
  }
  {  // one expert's SwiGLU GEMMs at 1024 tokens: w1, w3 (768 -> 3072) and w2 (3072 -> 768)
    const int64_t N = 1024, d = 768, f = 3072;
    DeviceBuffer<bf16> x(N * d), W1(f * d), W3(f * d), W2(d * f), a(N * f), b(N * f), y(N * d),
        dx(N * d), da(N * f);
    DeviceBuffer<float> dW1(f * d), dW3(f * d), dW2(d * f);
    for (auto* buf : {&x, &W1, &W3, &W2, &a, &b, &y}) buf->fill_bytes(0x3c);
    const double flops = 3 * 2.0 * N * d * f;
    report_key("expert_gemm_fwd", flops, time_ms([&] {
                 linear_forward<bf16>(h, a.data(), x.data(), W1.data(), N, d, f, false, nullptr);
                 linear_forward<bf16>(h, b.data(), x.data(), W3.data(), N, d, f, false, nullptr);
                 linear_forward<bf16>(h, y.data(), a.data(), W2.data(), N, f, d, false, nullptr);
               }));
    report_key("expert_gemm_bwd", 2 * flops, time_ms([&] {
                 linear_backward<bf16>(h, da.data(), dW2.data(), y.data(), a.data(), W2.data(), N,
                                       f, d, false, nullptr);
                 linear_backward<bf16>(h, dx.data(), dW1.data(), a.data(), x.data(), W1.data(), N,
                                       d, f, false, nullptr);
                 linear_backward<bf16>(h, dx.data(), dW3.data(), b.data(), x.data(), W3.data(), N,
                                       d, f, true, nullptr);
               }));
  }
  {  // LM head (8192 x 768 -> 51200) with cross-entropy, forward and backward
    const int64_t N = 8192, d = 768, V = 50257, Vp = 51200;
    auto x = to_device_as<bf16>(randn(N * d, 5, 0.5));
    auto W = to_device_as<bf16>(randn(Vp * d, 6, 0.02));
    std::vector<int32_t> tgt(N);
    for (int64_t i = 0; i < N; ++i) tgt[i] = static_cast<int32_t>((i * 7919) % V);
    auto targets = to_device(tgt);
    DeviceBuffer<bf16> logits(N * Vp), dx(N * d);
    DeviceBuffer<float> dW(Vp * d), losses(N), lse(N);
    DeviceBuffer<int64_t> first_bad(1);
    const double flops = 3 * 2.0 * N * d * Vp;
    report_key(
        "lm_head_ce_fwd_bwd", flops, time_ms([&] {
          linear_forward<bf16>(h, logits.data(), x.data(), W.data(), N, d, Vp, false, nullptr);
          cross_entropy_fused<bf16>(losses.data(), lse.data(), logits.data(), logits.data(),
                                    targets.data(), 1.0f / N, N, V, Vp, first_bad.data(), nullptr);
          linear_backward<bf16>(h, dx.data(), dW.data(), logits.data(), x.data(), W.data(), N, d,
                                Vp, false, nullptr);
        }));
  }
  (void)cublasDestroy(h);
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
