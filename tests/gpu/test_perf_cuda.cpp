// Throughput probes (no assertions): bf16 cuBLAS GEMMs and flash attention forward/backward at
// 185M-model shapes, reported in TFLOP/s so each GPU run records where the building blocks stand.
// The `[ perf    ] key=...` lines share their keys with bench/gpu/torch_reference.py, so the GPU
// suite's summary prints PyTorch's time beside ours for the same shapes.
#include <cublas_v2.h>
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

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

// The experts' forward GEMMs of one MoE layer (8 experts, SwiGLU 768 -> 3072 -> 768) three ways,
// to choose how the layer issues them: a loop of cublasGemmEx per expert and matrix (today's 24
// calls), cublasGemmStridedBatchedEx over padded capacity (3 calls), and
// cublasGemmGroupedBatchedEx (w1 and w3 of every expert in one call, w2 in another). Balanced
// (1024 tokens each) and uneven counts (grouped and loop only: strided needs padding to the
// largest). Same FLOPs counted for each: the real tokens.
TEST(PerfCuda, ExpertGemmStrategies) {
  DIRMOE_SKIP_WITHOUT_GPU();
  cublasHandle_t h;
  DIRMOE_CUBLAS_CHECK(cublasCreate(&h));
  DeviceBuffer<uint8_t> ws(32 << 20);
  DIRMOE_CUBLAS_CHECK(cublasSetWorkspace(h, ws.data(), ws.bytes()));
  const int E = 8, d = 768, f = 3072;
  const int cap = 2048;  // rows per expert slot (padded capacity)
  DeviceBuffer<bf16> x(int64_t(E) * cap * d), W1(int64_t(E) * f * d), W3(int64_t(E) * f * d),
      W2(int64_t(E) * d * f), h1(int64_t(E) * cap * f), h3(int64_t(E) * cap * f),
      y(int64_t(E) * cap * d);
  for (auto* b : {&x, &W1, &W3, &W2, &h1, &h3}) b->fill_bytes(0x3c);
  const float one = 1.0f, zero = 0.0f;
  struct Counts {
    const char* name;
    int n[8];
  };
  const Counts cases[] = {{"balanced", {1024, 1024, 1024, 1024, 1024, 1024, 1024, 1024}},
                          {"uneven", {2048, 1536, 1280, 1024, 768, 640, 512, 384}}};
  for (const Counts& c : cases) {
    double flops = 0;
    for (int e = 0; e < E; ++e) flops += 3 * 2.0 * c.n[e] * d * f;
    const std::string tag = std::string("experts_fwd ") + c.name + " E=8 768->3072->768 ";
    report((tag + "loop of 24 cublasGemmEx").c_str(), flops, time_ms([&] {
             for (int e = 0; e < E; ++e) {
               const int64_t xo = int64_t(e) * cap * d, ho = int64_t(e) * cap * f;
               const int64_t wo = int64_t(e) * f * d;
               linear_forward<bf16>(h, h1.data() + ho, x.data() + xo, W1.data() + wo, c.n[e], d, f,
                                    false, nullptr);
               linear_forward<bf16>(h, h3.data() + ho, x.data() + xo, W3.data() + wo, c.n[e], d, f,
                                    false, nullptr);
               linear_forward<bf16>(h, y.data() + xo, h1.data() + ho, W2.data() + wo, c.n[e], f, d,
                                    false, nullptr);
             }
           }));
    if (std::string(c.name) == "balanced") {
      // Column-major C[m = out, n = N] = W(op T, [in, out]) x^T[in, N], per expert slot.
      auto strided = [&](bf16* C, const bf16* A, const bf16* B, int out, int in, int N) {
        DIRMOE_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
            h, CUBLAS_OP_T, CUBLAS_OP_N, out, N, in, &one, A, CUDA_R_16BF, in,
            static_cast<long long>(out) * in, B, CUDA_R_16BF, in, static_cast<long long>(cap) * in,
            &zero, C, CUDA_R_16BF, out, static_cast<long long>(cap) * out, E, CUBLAS_COMPUTE_32F,
            CUBLAS_GEMM_DEFAULT));
      };
      report((tag + "3 cublasGemmStridedBatchedEx").c_str(), flops, time_ms([&] {
               strided(h1.data(), W1.data(), x.data(), f, d, 1024);
               strided(h3.data(), W3.data(), x.data(), f, d, 1024);
               strided(y.data(), W2.data(), h1.data(), d, f, 1024);
             }));
    }
    // Grouped: one group per distinct token count (w1 and w3 of that expert share it).
    std::vector<const void*> A13, B13, A2, B2;
    std::vector<void*> C13, C2;
    std::vector<int> m13, n13, k13, m2, n2, k2, size13, size2;
    std::vector<cublasOperation_t> ta13, tb13, ta2, tb2;
    std::vector<float> alpha13, beta13, alpha2, beta2;
    for (int e = 0; e < E; ++e) {
      const int64_t xo = int64_t(e) * cap * d, ho = int64_t(e) * cap * f, wo = int64_t(e) * f * d;
      A13.insert(A13.end(), {W1.data() + wo, W3.data() + wo});
      B13.insert(B13.end(), {x.data() + xo, x.data() + xo});
      C13.insert(C13.end(), {h1.data() + ho, h3.data() + ho});
      m13.push_back(f), n13.push_back(c.n[e]), k13.push_back(d), size13.push_back(2);
      ta13.push_back(CUBLAS_OP_T), tb13.push_back(CUBLAS_OP_N);
      alpha13.push_back(1), beta13.push_back(0);
      A2.push_back(W2.data() + wo), B2.push_back(h1.data() + ho), C2.push_back(y.data() + xo);
      m2.push_back(d), n2.push_back(c.n[e]), k2.push_back(f), size2.push_back(1);
      ta2.push_back(CUBLAS_OP_T), tb2.push_back(CUBLAS_OP_N);
      alpha2.push_back(1), beta2.push_back(0);
    }
    auto dA13 = to_device(A13), dB13 = to_device(B13), dA2 = to_device(A2), dB2 = to_device(B2);
    auto dC13 = to_device(C13), dC2 = to_device(C2);
    std::vector<int> lda13(k13), ldb13(k13), ldc13(m13), lda2(k2), ldb2(k2), ldc2(m2);
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
    auto grouped = [&] {
      st = cublasGemmGroupedBatchedEx(h, ta13.data(), tb13.data(), m13.data(), n13.data(),
                                      k13.data(), alpha13.data(), dA13.data(), CUDA_R_16BF,
                                      lda13.data(), dB13.data(), CUDA_R_16BF, ldb13.data(),
                                      beta13.data(), dC13.data(), CUDA_R_16BF, ldc13.data(), E,
                                      size13.data(), CUBLAS_COMPUTE_32F);
      if (st != CUBLAS_STATUS_SUCCESS) return;
      st = cublasGemmGroupedBatchedEx(
          h, ta2.data(), tb2.data(), m2.data(), n2.data(), k2.data(), alpha2.data(), dA2.data(),
          CUDA_R_16BF, lda2.data(), dB2.data(), CUDA_R_16BF, ldb2.data(), beta2.data(), dC2.data(),
          CUDA_R_16BF, ldc2.data(), E, size2.data(), CUBLAS_COMPUTE_32F);
    };
    grouped();
    if (st != CUBLAS_STATUS_SUCCESS) {
      std::printf("[ perf    ] %s2 cublasGemmGroupedBatchedEx: not supported here (%s)\n",
                  tag.c_str(), cublasGetStatusString(st));
      continue;
    }
    report((tag + "2 cublasGemmGroupedBatchedEx").c_str(), flops, time_ms(grouped));
  }
  (void)cublasDestroy(h);
}

}  // namespace
}  // namespace dirmoe::cuda::testing
