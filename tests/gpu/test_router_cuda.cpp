// The device routers against the CPU routers on the same weights and inputs, over named grids
// (N in {1, 7, 8192}, E in {8, 16}, k in {1, 2}; fp32 and bf16 models): routing decisions (experts
// per token, their order, counts) exactly on tie-free inputs, weights, probabilities, loss terms
// and gradients within the tolerance table; the router kernels on the CPU's own logits (double
// math on both sides); non-finite logits reported with token and expert. DirMoE the same way,
// including its Philox gate and Gamma draws, saved per-token rows and all parameter gradients;
// ProbMoE (exact and Dynamic-k, training draws and evaluation) with its marginals; ReMoE (ReLU
// gates, 0..E experts per token, the L1 term at lambda 0 and 0.3, every gate closed).
#include <cublas_v2.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/api.cuh"
#include "kernels/routing/subset.h"
#include "router/cuda/cuda_router.h"
#include "router/dirmoe_router.h"
#include "router/noise.h"
#include "router/probmoe_router.h"
#include "router/remoe_router.h"
#include "router/topk_router.h"
#include "tests/gpu/gpu_test_util.h"

namespace dirmoe::cuda::testing {
namespace {

constexpr int64_t kHidden = 64;

class Blas {
 public:
  explicit Blas(cudaStream_t stream) {
    DIRMOE_CUBLAS_CHECK(cublasCreate(&handle_));
    DIRMOE_CUBLAS_CHECK(cublasSetStream(handle_, stream));
    workspace_.resize(32 << 20);
    DIRMOE_CUBLAS_CHECK(cublasSetWorkspace(handle_, workspace_.data(), workspace_.bytes()));
  }
  ~Blas() { (void)cublasDestroy(handle_); }
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
  DeviceBuffer<uint8_t> workspace_;
};

struct RouterCase {
  const char* name;
  int64_t N;
  int E, k;
  bool renormalize;
};
const RouterCase kTopKCases[] = {
    {"N1_E8_k1", 1, 8, 1, false},         {"N1_E8_k2", 1, 8, 2, false},
    {"N1_E16_k1", 1, 16, 1, false},       {"N1_E16_k2", 1, 16, 2, false},
    {"N7_E8_k1", 7, 8, 1, false},         {"N7_E8_k2", 7, 8, 2, false},
    {"N7_E16_k1", 7, 16, 1, false},       {"N7_E16_k2", 7, 16, 2, false},
    {"N8192_E8_k1", 8192, 8, 1, false},   {"N8192_E8_k2", 8192, 8, 2, false},
    {"N8192_E16_k1", 8192, 16, 1, false}, {"N8192_E16_k2", 8192, 16, 2, false},
    {"N7_E16_k2_renorm", 7, 16, 2, true}, {"N8192_E8_k2_renorm", 8192, 8, 2, true},
};

// Logits of h[N,d] W[E,d]^T in double.
std::vector<double> logits_of(const std::vector<double>& h, const std::vector<double>& W, int64_t N,
                              int E) {
  std::vector<double> l(N * E, 0.0);
  for (int64_t t = 0; t < N; ++t)
    for (int e = 0; e < E; ++e) {
      double s = 0;
      for (int64_t j = 0; j < kHidden; ++j) s += h[t * kHidden + j] * W[e * kHidden + j];
      l[t * E + e] = s;
    }
  return l;
}

// Tie-free inputs (DESIGN.md section 6): a token whose k+1 largest logits lie closer than `gap`
// to each other gets a fresh input row, so fp32 GEMM rounding (~1e-6) cannot reorder experts.
template <class T>
std::vector<double> tie_free_input(const std::vector<double>& W, int64_t N, int E, int k,
                                   uint64_t seed) {
  const double gap = 1e-3;
  std::vector<double> h = representable<T>(randn(N * kHidden, seed));
  for (int64_t t = 0; t < N; ++t) {
    for (uint64_t attempt = 1;; ++attempt) {
      std::vector<double> row(h.begin() + t * kHidden, h.begin() + (t + 1) * kHidden);
      std::vector<double> l = logits_of(row, W, 1, E);
      std::sort(l.begin(), l.end(), std::greater<double>());
      bool ok = true;
      for (int j = 0; j < std::min(k + 1, E) - 1; ++j) ok = ok && l[j] - l[j + 1] > gap;
      if (ok) break;
      const std::vector<double> fresh =
          representable<T>(randn(kHidden, seed * 1000003 + t * 131 + attempt));
      std::copy(fresh.begin(), fresh.end(), h.begin() + t * kHidden);
    }
  }
  return h;
}

double stat(const RouterStats& s, const std::string& name) {
  for (const auto& [n, v] : s.scalars)
    if (n == name) return v;
  ADD_FAILURE() << "no statistic " << name;
  return 0;
}

template <class T>
void run_topk(const RouterCase& c) {
  const std::string base = std::string("/") + c.name + "/" + dtype_label<T>();
  RouterConfig cfg;
  cfg.type = "topk";
  cfg.k = c.k;
  cfg.renormalize = c.renormalize;
  cfg.aux_loss_coef = 0.05;
  cfg.z_loss_coef = 0.01;
  const std::vector<double> W = randn(c.E * kHidden, 501 + c.E, 0.25);
  const std::vector<double> h = tie_free_input<T>(W, c.N, c.E, c.k, 502 + c.N);
  const std::vector<double> dweights = randn(c.N * c.k, 503);
  const double loss_scale = 0.5;
  RouterContext ctx;
  ctx.layer = 2;

  // CPU reference.
  TopKRouter<float> cpu(cfg, kHidden, c.E, "router");
  for (int64_t i = 0; i < cpu.weight().numel(); ++i)
    cpu.weight().value[i] = static_cast<float>(W[i]);
  cpu.weight().grad.zero();
  const std::vector<float> h32(h.begin(), h.end());
  Routing<float> ref;
  cpu.forward(h32.data(), c.N, ctx, ref);
  const std::vector<double> ref_probs(cpu.probs(), cpu.probs() + c.N * c.E);
  const std::vector<float> dw32(dweights.begin(), dweights.end());
  std::vector<float> ref_dh(c.N * kHidden, 0.f);
  cpu.backward(dw32.data(), loss_scale, ref_dh.data());

  // Device.
  cudaStream_t stream = nullptr;
  Blas blas(stream);
  CudaTopKRouter<T> gpu(cfg, kHidden, c.E, "router", blas.get(), stream);
  gpu.weight().master.upload(std::vector<float>(W.begin(), W.end()));
  auto d_h = to_device_as<T>(h);
  DeviceRouting out;
  gpu.forward(d_h.data(), c.N, ctx, out);
  const RouterStats& st = gpu.read_stats();
  ASSERT_EQ(out.nnz, ref.nnz());
  expect_exact("topk_offsets" + base, out.offsets.download(), ref.offsets);
  expect_exact("topk_experts" + base, out.experts.download(), ref.experts);
  const Tol tol = tolerance<T>(Op::kRouter);
  expect_close("topk_weights" + base, to_doubles(out.weights.download()), to_doubles(ref.weights),
               tol);
  DeviceBuffer<float> probs_copy(c.N * c.E);
  if (c.N > 0)
    DIRMOE_CUDA_CHECK(cudaMemcpy(probs_copy.data(), gpu.probs(), sizeof(float) * c.N * c.E,
                                 cudaMemcpyDeviceToDevice));
  expect_close("topk_probs" + base, to_doubles(probs_copy.download()), ref_probs, tol);
  const RouterStats& rs = cpu.stats();
  expect_close("topk_loss_terms" + base,
               {st.aux_loss, st.z_loss, stat(st, "undispatched_mass"), stat(st, "entropy"),
                stat(st, "top1_prob")},
               {rs.aux_loss, rs.z_loss, stat(rs, "undispatched_mass"), stat(rs, "entropy"),
                stat(rs, "top1_prob")},
               tol);

  auto d_dw = to_device(dw32);
  Guarded<T> d_dh(c.N * kHidden, 0);  // dh accumulates: starts at zero
  gpu.backward(d_dw.data(), loss_scale, d_dh.data());
  DIRMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  expect_close("topk_dh" + base, d_dh.doubles(), to_doubles(ref_dh), tolerance<T>(Op::kLinear));
  expect_guard("topk_dh" + base, d_dh);
  std::vector<double> ref_dW(cpu.weight().numel());
  for (int64_t i = 0; i < cpu.weight().numel(); ++i) ref_dW[i] = cpu.weight().grad[i];
  expect_close("topk_dW" + base, to_doubles(gpu.weight().grad.download()), ref_dW,
               kF32Tol[static_cast<int>(Op::kLinear)]);
}

using TopKParam = std::tuple<RouterCase, bool>;
class TopKRouterCuda : public ::testing::TestWithParam<TopKParam> {};

TEST_P(TopKRouterCuda, MatchesCpuRouter) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const auto& [c, bf16_model] = GetParam();
  if (bf16_model)
    run_topk<bf16>(c);
  else
    run_topk<float>(c);
}

INSTANTIATE_TEST_SUITE_P(Grid, TopKRouterCuda,
                         ::testing::Combine(::testing::ValuesIn(kTopKCases), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<TopKParam>& info) {
                           return param_name(std::get<0>(info.param).name) +
                                  (std::get<1>(info.param) ? "_bf16" : "_f32");
                         });

// The kernels on the CPU router's own fp32 logits: the same double per-token code on both sides,
// so decisions agree even where logits tie, and values to libm's last bits.
TEST(TopKRouterKernels, CpuLogitsGiveTheCpuRouting) {
  DIRMOE_SKIP_WITHOUT_GPU();
  for (int k : {1, 2}) {
    const int64_t N = 4096;
    const int E = 16;
    RouterConfig cfg;
    cfg.k = k;
    TopKRouter<float> cpu(cfg, kHidden, E, "router");
    const std::vector<double> W = randn(E * kHidden, 601, 0.25);
    for (int64_t i = 0; i < cpu.weight().numel(); ++i)
      cpu.weight().value[i] = static_cast<float>(W[i]);
    // Coarse inputs so that some tokens have exactly tied logits.
    std::vector<double> h = randn(N * kHidden, 602);
    for (double& x : h) x = std::round(x * 2) / 2;
    const std::vector<float> h32(h.begin(), h.end());
    Routing<float> ref;
    cpu.forward(h32.data(), N, RouterContext{}, ref);
    std::vector<float> logits(N * E);
    cpu::linear_forward(logits.data(), h32.data(), cpu.weight().value.data(), N, kHidden, E);

    auto d_logits = to_device(logits);
    DeviceBuffer<int64_t> offsets(N + 1), bad(1);
    DeviceBuffer<int32_t> experts(N * k);
    DeviceBuffer<float> weights(N * k), probs(N * E);
    DeviceBuffer<double> lse(N), rows(N * topk_stat_columns(E));
    bad.fill_bytes(0x7F);
    topk_route_forward(offsets.data(), experts.data(), weights.data(), probs.data(), lse.data(),
                       rows.data(), d_logits.data(), N, E, k, false, bad.data(), nullptr);
    DIRMOE_CUDA_CHECK(cudaDeviceSynchronize());
    const std::string base = "/N4096_E16_k" + std::to_string(k) + "_cpu_logits/f32";
    expect_exact("topk_math_experts" + base, experts.download(), ref.experts);
    expect_close("topk_math_weights" + base, to_doubles(weights.download()),
                 to_doubles(ref.weights), kF32Tol[static_cast<int>(Op::kRouterMath)]);
    EXPECT_EQ(bad.download()[0], kRouterNoBad);
  }
}

TEST(TopKRouterKernels, NonFiniteLogitsNameTokenAndExpert) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const int64_t N = 300;
  const int E = 8, k = 2;
  std::vector<float> logits(N * E, 0.25f);
  logits[211 * E + 5] = NAN;
  logits[17 * E + 3] = INFINITY;
  auto d_logits = to_device(logits);
  DeviceBuffer<int64_t> offsets(N + 1), bad(1);
  DeviceBuffer<int32_t> experts(N * k);
  DeviceBuffer<float> weights(N * k), probs(N * E);
  DeviceBuffer<double> lse(N), rows(N * topk_stat_columns(E));
  bad.fill_bytes(0x7F);
  topk_route_forward(offsets.data(), experts.data(), weights.data(), probs.data(), lse.data(),
                     rows.data(), d_logits.data(), N, E, k, false, bad.data(), nullptr);
  DIRMOE_CUDA_CHECK(cudaDeviceSynchronize());
  EXPECT_EQ(bad.download()[0], (int64_t{17} << kRouterBadShift) | 3);
  const std::vector<float> w = weights.download();
  EXPECT_EQ(w[17 * k], 0.f);
  EXPECT_EQ(w[211 * k + 1], 0.f);

  // Through the router class: the error names the layer, token and expert.
  RouterConfig cfg;
  cfg.k = k;
  Blas blas(nullptr);
  CudaTopKRouter<float> router(cfg, kHidden, E, "layers.4.moe.router", blas.get(), nullptr);
  std::vector<float> h(N * kHidden, 0.5f);
  h[42 * kHidden + 7] = NAN;
  auto d_h = to_device(h);
  DeviceRouting out;
  RouterContext ctx;
  ctx.layer = 4;
  ctx.global_token0 = 1000;
  router.forward(d_h.data(), N, ctx, out);
  try {
    router.read_stats();
    ADD_FAILURE() << "non-finite logits not reported";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("non-finite logits at token 42 (global 1042), expert 0, layer 4"),
              std::string::npos)
        << msg;
  }
}

// ---- dirmoe ------------------------------------------------------------------------------------
struct DirMoECase {
  const char* name;
  int64_t N;
  int E, k, max_active;
  bool renormalize = false;
  const char* sparsity_on = "sample";
  const char* sampler = "marsaglia_tsang";
  const char* eval = nullptr;  // evaluation forward with this rule (no backward)
};
const DirMoECase kDirMoECases[] = {
    {"N1_E8_k1", 1, 8, 1, 2},
    {"N1_E16_k2", 1, 16, 2, 3},
    {"N7_E8_k1", 7, 8, 1, 2},
    {"N7_E8_k2", 7, 8, 2, 3},
    {"N7_E16_k1", 7, 16, 1, 2},
    {"N7_E16_k2", 7, 16, 2, 3},
    {"N8192_E8_k1", 8192, 8, 1, 2},
    {"N8192_E8_k2", 8192, 8, 2, 3},
    {"N8192_E16_k1", 8192, 16, 1, 2},
    {"N8192_E16_k2", 8192, 16, 2, 4},
    {"N8192_E8_k2_renorm", 8192, 8, 2, 3, true},
    {"N8192_E8_k2_expected", 8192, 8, 2, 3, false, "expected"},
    {"N1024_E8_k2_inverse_cdf", 1024, 8, 2, 3, false, "sample", "inverse_cdf"},
    {"N8192_E8_k2_eval_gate", 8192, 8, 2, 3, false, "sample", "marsaglia_tsang", "gate"},
    {"N8192_E8_k2_eval_soft", 8192, 8, 2, 3, false, "sample", "marsaglia_tsang", "soft"},
    {"N8192_E8_k2_eval_sample", 8192, 8, 2, 3, false, "sample", "marsaglia_tsang", "sample"},
};

RouterConfig dirmoe_config(const DirMoECase& c) {
  RouterConfig cfg;
  cfg.type = "dirmoe";
  cfg.k = c.k;
  cfg.renormalize = c.renormalize;
  cfg.aux_loss_coef = 0.05;
  DirMoEConfig& d = cfg.dirmoe;
  d.tau = Schedule::exponential(1.2, 0.9, 0.5);
  d.r_min = 0.05;
  d.max_active = c.max_active;
  d.lambda_q = Schedule::constant(2.0);
  d.alpha_floor = 0.05;
  d.prior.m = 0.7;
  d.prior.h = 0.5;
  d.beta = Schedule::constant(0.3);
  d.recon_weight = Schedule::constant(0.7);
  d.lambda_sparsity = Schedule::constant(0.4);
  d.sparsity_on = c.sparsity_on;
  d.gamma_sampler = c.sampler;
  if (c.eval != nullptr) d.eval = c.eval;
  return cfg;
}

// Tie-free inputs for DirMoE: every token's largest max_active + 1 weights r lie more than `gap`
// apart and from r_min, and (deterministic gates) its gate logits more than `gap` from 0; other
// tokens get fresh inputs (the noise is keyed by token, so the rest stay as they are).
template <class T>
std::vector<double> dirmoe_tie_free_input(DirMoERouter<float>& cpu, const RouterConfig& cfg,
                                          const std::vector<double>& W, const DirMoECase& c,
                                          const RouterContext& ctx, uint64_t seed) {
  const double gap = 1e-4;
  std::vector<double> h = representable<T>(randn(c.N * kHidden, seed));
  for (uint64_t round = 1; round < 100; ++round) {
    const std::vector<float> h32(h.begin(), h.end());
    Routing<float> r;
    cpu.forward(h32.data(), c.N, ctx, r);
    int64_t redrawn = 0;
    for (int64_t t = 0; t < c.N; ++t) {
      std::vector<double> rt(cpu.weights_r().begin() + t * c.E,
                             cpu.weights_r().begin() + (t + 1) * c.E);
      std::sort(rt.begin(), rt.end(), std::greater<double>());
      bool ok = true;
      for (int j = 0; j < std::min(c.max_active + 1, c.E); ++j) {
        if (j + 1 < c.E && j < c.max_active) ok = ok && rt[j] - rt[j + 1] > gap;
        ok = ok && std::abs(rt[j] - cfg.dirmoe.r_min) > gap;
      }
      std::vector<double> row(h.begin() + t * kHidden, h.begin() + (t + 1) * kHidden);
      const std::vector<double> l = logits_of(row, W, 1, c.E);  // the gate rows come first
      for (int i = 0; i < c.E; ++i) ok = ok && std::abs(l[i]) > gap;
      if (ok) continue;
      ++redrawn;
      const std::vector<double> fresh =
          representable<T>(randn(kHidden, seed * 7919 + t * 131 + round));
      std::copy(fresh.begin(), fresh.end(), h.begin() + t * kHidden);
    }
    if (redrawn == 0) return h;
  }
  ADD_FAILURE() << "no tie-free DirMoE input found";
  return h;
}

template <class T>
void run_dirmoe(const DirMoECase& c) {
  const std::string base = std::string("/") + c.name + "/" + dtype_label<T>();
  const RouterConfig cfg = dirmoe_config(c);
  const std::vector<double> W = randn(3 * c.E * kHidden, 701 + c.E, 0.3);
  const std::vector<double> V = randn(kHidden * c.E, 702, 0.5);
  const std::vector<double> b = randn(kHidden, 703, 0.3);
  RouterContext train_ctx;
  train_ctx.seed = 99;
  train_ctx.step = 3;
  train_ctx.layer = 1;
  train_ctx.global_token0 = 12345;
  RouterContext ctx = train_ctx;
  ctx.training = c.eval == nullptr;

  DirMoERouter<float> cpu(cfg, kHidden, c.E, "router");
  for (int64_t i = 0; i < cpu.weight().numel(); ++i)
    cpu.weight().value[i] = static_cast<float>(W[i]);
  for (int64_t i = 0; i < cpu.decoder().numel(); ++i)
    cpu.decoder().value[i] = static_cast<float>(V[i]);
  for (int64_t i = 0; i < kHidden; ++i) cpu.decoder_bias().value[i] = static_cast<float>(b[i]);
  Routing<float> warm;
  if (!ctx.training) {  // evaluation uses the last training step's schedules
    const std::vector<float> h1(kHidden, 0.1f);
    cpu.forward(h1.data(), 1, train_ctx, warm);
  }
  const std::vector<double> h = dirmoe_tie_free_input<T>(cpu, cfg, W, c, ctx, 704 + c.N);
  const std::vector<float> h32(h.begin(), h.end());
  Routing<float> ref;
  cpu.forward(h32.data(), c.N, ctx, ref);

  cudaStream_t stream = nullptr;
  Blas blas(stream);
  CudaDirMoERouter<T> gpu(cfg, kHidden, c.E, "router", blas.get(), stream);
  gpu.weight().master.upload(std::vector<float>(W.begin(), W.end()));
  gpu.decoder().master.upload(std::vector<float>(V.begin(), V.end()));
  gpu.decoder_bias().master.upload(std::vector<float>(b.begin(), b.end()));
  DeviceRouting out;
  if (!ctx.training) {
    const std::vector<double> h1(kHidden, 0.1);
    auto d_h1 = to_device_as<T>(h1);
    gpu.forward(d_h1.data(), 1, train_ctx, out);
    gpu.read_stats();
  }
  auto d_h = to_device_as<T>(h);
  gpu.forward(d_h.data(), c.N, ctx, out);
  const RouterStats st = gpu.read_stats();
  ASSERT_EQ(out.nnz, ref.nnz());
  expect_exact("dirmoe_offsets" + base, out.offsets.download(), ref.offsets);
  std::vector<int32_t> experts = out.experts.download();
  std::vector<float> weights = out.weights.download();
  experts.resize(ref.nnz());
  weights.resize(ref.nnz());
  expect_exact("dirmoe_experts" + base, experts, ref.experts);
  const Tol tol = tolerance<T>(Op::kRouter);
  expect_close("dirmoe_weights" + base, to_doubles(weights), to_doubles(ref.weights), tol);
  DeviceBuffer<double> saved_copy(kDirMoERows * c.N * c.E);
  DIRMOE_CUDA_CHECK(
      cudaMemcpy(saved_copy.data(), gpu.saved(), saved_copy.bytes(), cudaMemcpyDeviceToDevice));
  const std::vector<double> saved = saved_copy.download();
  const int64_t NE = c.N * c.E;
  auto first = [NE](const std::vector<double>& v) {
    return std::vector<double>(v.begin(), v.begin() + NE);
  };
  expect_close("dirmoe_gates" + base, std::vector<double>(saved.begin(), saved.begin() + NE),
               first(cpu.gates()), tol);
  expect_close("dirmoe_alpha_q" + base,
               std::vector<double>(saved.begin() + 3 * NE, saved.begin() + 4 * NE),
               first(cpu.alpha_q()), tol);
  expect_close("dirmoe_r" + base,
               std::vector<double>(saved.begin() + 6 * NE, saved.begin() + 7 * NE),
               first(cpu.weights_r()), tol);
  const RouterStats& rs = cpu.stats();
  std::vector<double> got{st.aux_loss, gpu.loss()}, want{rs.aux_loss, cpu.loss()};
  for (const char* name :
       {"undispatched_mass", "kl", "recon", "sparsity", "sum_gates", "gate_entropy", "tau"}) {
    got.push_back(stat(st, name));
    want.push_back(stat(rs, name));
  }
  expect_close("dirmoe_loss_terms" + base, got, want, tol);
  expect_exact("dirmoe_counts" + base,
               std::vector<double>{st.mean_active, stat(st, "dead_experts")},
               std::vector<double>{rs.mean_active, stat(rs, "dead_experts")});
  // Gates on the 1/2 and 0.05/0.95 thresholds: a gate within rounding of one may count either way.
  const Tol count_tol{2.0 / static_cast<double>(c.N), 0.0};
  expect_close("dirmoe_gate_counts" + base,
               {stat(st, "open_gates"), stat(st, "no_open_gate"), stat(st, "near_binary")},
               {stat(rs, "open_gates"), stat(rs, "no_open_gate"), stat(rs, "near_binary")},
               count_tol);
  if (!ctx.training && cfg.dirmoe.eval != "sample") return;

  const std::vector<double> dweights = randn(ref.nnz(), 705);
  const std::vector<float> dw32(dweights.begin(), dweights.end());
  const double loss_scale = 0.5;
  for (Parameter<float>* q : cpu.parameters()) q->grad.zero();
  std::vector<float> ref_dh(c.N * kHidden, 0.f);
  cpu.backward(dw32.data(), loss_scale, ref_dh.data());
  auto d_dw = to_device(dw32);
  Guarded<T> d_dh(c.N * kHidden, 0);
  gpu.backward(d_dw.data(), loss_scale, d_dh.data());
  DIRMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  expect_close("dirmoe_dh" + base, d_dh.doubles(), to_doubles(ref_dh), tolerance<T>(Op::kLinear));
  expect_guard("dirmoe_dh" + base, d_dh);
  const Tol f32 = kF32Tol[static_cast<int>(Op::kLinear)];
  auto grad_of = [](Parameter<float>& q) {
    std::vector<double> g(q.numel());
    for (int64_t i = 0; i < q.numel(); ++i) g[i] = q.grad[i];
    return g;
  };
  expect_close("dirmoe_dW" + base, to_doubles(gpu.weight().grad.download()), grad_of(cpu.weight()),
               f32);
  expect_close("dirmoe_ddecoder" + base, to_doubles(gpu.decoder().grad.download()),
               grad_of(cpu.decoder()), f32);
  expect_close("dirmoe_dbias" + base, to_doubles(gpu.decoder_bias().grad.download()),
               grad_of(cpu.decoder_bias()), f32);
}

using DirMoEParam = std::tuple<DirMoECase, bool>;
class DirMoERouterCuda : public ::testing::TestWithParam<DirMoEParam> {};

TEST_P(DirMoERouterCuda, MatchesCpuRouter) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const auto& [c, bf16_model] = GetParam();
  if (bf16_model)
    run_dirmoe<bf16>(c);
  else
    run_dirmoe<float>(c);
}

INSTANTIATE_TEST_SUITE_P(Grid, DirMoERouterCuda,
                         ::testing::Combine(::testing::ValuesIn(kDirMoECases), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<DirMoEParam>& info) {
                           return param_name(std::get<0>(info.param).name) +
                                  (std::get<1>(info.param) ? "_bf16" : "_f32");
                         });

// ---- probmoe -----------------------------------------------------------------------------------
struct ProbMoECase {
  const char* name;
  int64_t N;
  int E, k;
  bool dynamic = false;
  bool training = true;
};
const ProbMoECase kProbMoECases[] = {
    {"N1_E8_k1", 1, 8, 1},
    {"N1_E16_k2", 1, 16, 2},
    {"N7_E8_k1", 7, 8, 1},
    {"N7_E8_k2", 7, 8, 2},
    {"N7_E16_k1", 7, 16, 1},
    {"N7_E16_k2", 7, 16, 2},
    {"N8192_E8_k1", 8192, 8, 1},
    {"N8192_E8_k2", 8192, 8, 2},
    {"N8192_E16_k1", 8192, 16, 1},
    {"N8192_E16_k2", 8192, 16, 2},
    {"N8192_E8_dynamic_1_3", 8192, 8, 2, true},
    {"N8192_E16_dynamic_1_3", 8192, 16, 2, true},
    {"N8192_E8_k2_eval", 8192, 8, 2, false, false},
    {"N8192_E16_dynamic_1_3_eval", 8192, 16, 2, true, false},
};

// Whether a token's draws (or, in evaluation, its logits) stay more than `gap` away from every
// decision threshold: subset inclusion probabilities, the Dynamic-k size CDF, the order of the
// chosen experts' softmax, and (evaluation) the k-th logit and zero.
bool probmoe_tie_free(const std::vector<double>& l, const routing::ProbMoETokenParams<double>& c,
                      int64_t t, double gap) {
  const int E = c.E, K = c.k_hi;
  std::vector<double> table((E + 1) * (K + 1)), adj(table.size()), dadj(table.size());
  routing::SubsetView<double> dp;
  dp.E = E;
  dp.K = K;
  dp.l = l.data();
  dp.table = table.data();
  dp.adj = adj.data();
  dp.dadj = dadj.data();
  dp.build(c.k_lo, c.k_hi);
  std::vector<int> chosen;
  if (c.training) {
    int k = c.k_lo;
    if (c.dynamic) {
      const double u = c.size_noise.uniform(t, 0);
      double cdf = 0;
      for (int q = c.k_lo; q < c.k_hi; ++q) {
        cdf += dp.size_prob(q);
        if (std::abs(u - cdf) < gap) return false;
      }
      k = dp.sample_size(u);
    }
    int j = k;
    for (int i = E; i >= 1 && j > 0; --i) {
      const double take = std::exp(dp.at(i - 1, j - 1) + l[i - 1] - dp.at(i, j));
      const double u = c.subset_noise.uniform(t, i - 1);
      if (j != i && std::abs(u - take) < gap) return false;
      if (j == i || u < take) {
        chosen.push_back(i - 1);
        --j;
      }
    }
  } else {
    std::vector<double> sorted = l;
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    for (int i = 0; i + 1 < std::min(c.k_hi + 1, E); ++i)
      if (sorted[i] - sorted[i + 1] < gap) return false;
    for (double x : l)
      if (std::abs(x) < gap) return false;
  }
  std::vector<double> s;
  for (int e : chosen) s.push_back(l[e]);
  std::sort(s.begin(), s.end());
  for (size_t i = 1; i < s.size(); ++i)
    if (s[i] - s[i - 1] < gap) return false;
  return true;
}

template <class T>
void run_probmoe(const ProbMoECase& c) {
  const std::string base = std::string("/") + c.name + "/" + dtype_label<T>();
  RouterConfig cfg;
  cfg.type = "probmoe";
  cfg.k = c.k;
  cfg.aux_loss_coef = 0.05;
  cfg.z_loss_coef = 0.01;
  cfg.probmoe.mode = c.dynamic ? "dynamic" : "exact";
  cfg.probmoe.k_min = 1;
  cfg.probmoe.k_max = 3;
  RouterContext ctx;
  ctx.seed = 77;
  ctx.step = 4;
  ctx.layer = 3;
  ctx.global_token0 = 999;
  ctx.training = c.training;
  routing::ProbMoETokenParams<double> params;
  params.E = c.E;
  params.k_lo = c.dynamic ? 1 : c.k;
  params.k_hi = c.dynamic ? 3 : c.k;
  params.dynamic = c.dynamic;
  params.training = c.training;
  params.subset_noise = RouterNoise(ctx, NoisePurpose::kSubset).key();
  params.size_noise = RouterNoise(ctx, NoisePurpose::kSubsetSize).key();

  const std::vector<double> W = randn(c.E * kHidden, 801 + c.E, 0.25);
  std::vector<double> h = representable<T>(randn(c.N * kHidden, 802 + c.N));
  for (int64_t t = 0; t < c.N; ++t) {
    for (uint64_t attempt = 1;; ++attempt) {
      std::vector<double> row(h.begin() + t * kHidden, h.begin() + (t + 1) * kHidden);
      if (probmoe_tie_free(logits_of(row, W, 1, c.E), params, t, 1e-4)) break;
      const std::vector<double> fresh =
          representable<T>(randn(kHidden, 803 * 1000003 + t * 131 + attempt));
      std::copy(fresh.begin(), fresh.end(), h.begin() + t * kHidden);
    }
  }

  ProbMoERouter<float> cpu(cfg, kHidden, c.E, "router");
  for (int64_t i = 0; i < cpu.weight().numel(); ++i)
    cpu.weight().value[i] = static_cast<float>(W[i]);
  cpu.weight().grad.zero();
  const std::vector<float> h32(h.begin(), h.end());
  Routing<float> ref;
  cpu.forward(h32.data(), c.N, ctx, ref);

  cudaStream_t stream = nullptr;
  Blas blas(stream);
  CudaProbMoERouter<T> gpu(cfg, kHidden, c.E, "router", blas.get(), stream);
  gpu.weight().master.upload(std::vector<float>(W.begin(), W.end()));
  auto d_h = to_device_as<T>(h);
  DeviceRouting out;
  gpu.forward(d_h.data(), c.N, ctx, out);
  const RouterStats st = gpu.read_stats();
  ASSERT_EQ(out.nnz, ref.nnz());
  expect_exact("probmoe_offsets" + base, out.offsets.download(), ref.offsets);
  std::vector<int32_t> experts = out.experts.download();
  std::vector<float> weights = out.weights.download();
  experts.resize(ref.nnz());
  weights.resize(ref.nnz());
  expect_exact("probmoe_experts" + base, experts, ref.experts);
  const Tol tol = tolerance<T>(Op::kRouter);
  expect_close("probmoe_weights" + base, to_doubles(weights), to_doubles(ref.weights), tol);
  DeviceBuffer<double> mu_copy(c.N * c.E);
  DIRMOE_CUDA_CHECK(
      cudaMemcpy(mu_copy.data(), gpu.marginals(), mu_copy.bytes(), cudaMemcpyDeviceToDevice));
  expect_close("probmoe_marginals" + base, mu_copy.download(),
               std::vector<double>(cpu.marginals().begin(), cpu.marginals().begin() + c.N * c.E),
               tol);
  const RouterStats& rs = cpu.stats();
  std::vector<double> got{st.aux_loss, st.z_loss}, want{rs.aux_loss, rs.z_loss};
  for (const char* name : {"expected_k", "undispatched_mass", "gate_entropy"}) {
    got.push_back(stat(st, name));
    want.push_back(stat(rs, name));
  }
  expect_close("probmoe_loss_terms" + base, got, want, tol);
  expect_exact("probmoe_counts" + base,
               std::vector<double>{st.mean_active, stat(st, "dead_experts")},
               std::vector<double>{rs.mean_active, stat(rs, "dead_experts")});

  const std::vector<double> dweights = randn(ref.nnz(), 804);
  const std::vector<float> dw32(dweights.begin(), dweights.end());
  std::vector<float> ref_dh(c.N * kHidden, 0.f);
  cpu.backward(dw32.data(), 0.5, ref_dh.data());
  auto d_dw = to_device(dw32);
  Guarded<T> d_dh(c.N * kHidden, 0);
  gpu.backward(d_dw.data(), 0.5, d_dh.data());
  DIRMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  expect_close("probmoe_dh" + base, d_dh.doubles(), to_doubles(ref_dh), tolerance<T>(Op::kLinear));
  expect_guard("probmoe_dh" + base, d_dh);
  std::vector<double> ref_dW(cpu.weight().numel());
  for (int64_t i = 0; i < cpu.weight().numel(); ++i) ref_dW[i] = cpu.weight().grad[i];
  expect_close("probmoe_dW" + base, to_doubles(gpu.weight().grad.download()), ref_dW,
               kF32Tol[static_cast<int>(Op::kLinear)]);
}

using ProbMoEParam = std::tuple<ProbMoECase, bool>;
class ProbMoERouterCuda : public ::testing::TestWithParam<ProbMoEParam> {};

TEST_P(ProbMoERouterCuda, MatchesCpuRouter) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const auto& [c, bf16_model] = GetParam();
  if (bf16_model)
    run_probmoe<bf16>(c);
  else
    run_probmoe<float>(c);
}

INSTANTIATE_TEST_SUITE_P(Grid, ProbMoERouterCuda,
                         ::testing::Combine(::testing::ValuesIn(kProbMoECases), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<ProbMoEParam>& info) {
                           return param_name(std::get<0>(info.param).name) +
                                  (std::get<1>(info.param) ? "_bf16" : "_f32");
                         });

// ---- remoe -------------------------------------------------------------------------------------
struct ReMoECase {
  const char* name;
  int64_t N;
  int E;
  double lambda;
  bool closed = false;  // every gate closed: W < 0 and h > 0, so every logit is negative
};
const ReMoECase kReMoECases[] = {
    {"N1_E8_l0", 1, 8, 0.0},           {"N1_E8_l03", 1, 8, 0.3},
    {"N1_E16_l0", 1, 16, 0.0},         {"N1_E16_l03", 1, 16, 0.3},
    {"N7_E8_l0", 7, 8, 0.0},           {"N7_E8_l03", 7, 8, 0.3},
    {"N7_E16_l0", 7, 16, 0.0},         {"N7_E16_l03", 7, 16, 0.3},
    {"N8192_E8_l0", 8192, 8, 0.0},     {"N8192_E8_l03", 8192, 8, 0.3},
    {"N8192_E16_l0", 8192, 16, 0.0},   {"N8192_E16_l03", 8192, 16, 0.3},
    {"N7_E8_closed", 7, 8, 0.3, true}, {"N8192_E16_closed", 8192, 16, 0.3, true},
};

template <class T>
void run_remoe(const ReMoECase& c) {
  const std::string base = std::string("/") + c.name + "/" + dtype_label<T>();
  RouterConfig cfg;
  cfg.type = "remoe";
  cfg.k = 2;
  RouterContext ctx;
  ctx.layer = 5;
  ctx.global_token0 = 321;
  ctx.remoe_lambda = c.lambda;

  std::vector<double> W = randn(c.E * kHidden, 1001 + c.E, 0.25);
  std::vector<double> h = representable<T>(randn(c.N * kHidden, 1002 + c.N));
  if (c.closed) {
    for (double& w : W) w = -std::abs(w);
    for (double& x : h) x = std::abs(x);
  }
  // No logit within 1e-4 of 0, so fp32 GEMM rounding cannot open or close a gate.
  for (int64_t t = 0; t < c.N; ++t) {
    for (uint64_t attempt = 1;; ++attempt) {
      std::vector<double> row(h.begin() + t * kHidden, h.begin() + (t + 1) * kHidden);
      const std::vector<double> l = logits_of(row, W, 1, c.E);
      if (std::all_of(l.begin(), l.end(), [](double x) { return std::abs(x) > 1e-4; })) break;
      std::vector<double> fresh =
          representable<T>(randn(kHidden, 1003 * 1000003 + t * 131 + attempt));
      if (c.closed)
        for (double& x : fresh) x = std::abs(x);
      std::copy(fresh.begin(), fresh.end(), h.begin() + t * kHidden);
    }
  }

  ReMoERouter<float> cpu(cfg, kHidden, c.E, "router");
  for (int64_t i = 0; i < cpu.weight().numel(); ++i)
    cpu.weight().value[i] = static_cast<float>(W[i]);
  cpu.weight().grad.zero();
  const std::vector<float> h32(h.begin(), h.end());
  Routing<float> ref;
  cpu.forward(h32.data(), c.N, ctx, ref);
  if (c.closed) {
    ASSERT_EQ(ref.nnz(), 0);
  }

  cudaStream_t stream = nullptr;
  Blas blas(stream);
  CudaReMoERouter<T> gpu(cfg, kHidden, c.E, "router", blas.get(), stream);
  gpu.weight().master.upload(std::vector<float>(W.begin(), W.end()));
  auto d_h = to_device_as<T>(h);
  DeviceRouting out;
  gpu.forward(d_h.data(), c.N, ctx, out);
  const RouterStats st = gpu.read_stats();
  ASSERT_EQ(out.nnz, ref.nnz());
  expect_exact("remoe_offsets" + base, out.offsets.download(), ref.offsets);
  std::vector<int32_t> experts = out.experts.download();
  std::vector<float> weights = out.weights.download();
  experts.resize(ref.nnz());
  weights.resize(ref.nnz());
  expect_exact("remoe_experts" + base, experts, ref.experts);
  const Tol tol = tolerance<T>(Op::kRouter);
  expect_close("remoe_weights" + base, to_doubles(weights), to_doubles(ref.weights), tol);
  const RouterStats& rs = cpu.stats();
  std::vector<double> got{gpu.loss()}, want{cpu.loss()};
  for (const char* name : {"l1_reg", "l1_load", "gate_mean"}) {
    got.push_back(stat(st, name));
    want.push_back(stat(rs, name));
  }
  expect_close("remoe_loss_terms" + base, got, want, tol);
  std::vector<double> counts{st.mean_active, st.aux_loss, st.z_loss},
      ref_counts{rs.mean_active, rs.aux_loss, rs.z_loss};
  for (const char* name : {"sparsity", "no_expert", "lambda", "target_k"}) {
    counts.push_back(stat(st, name));
    ref_counts.push_back(stat(rs, name));
  }
  expect_exact("remoe_counts" + base, counts, ref_counts);
  for (const auto& [name, v] : st.scalars) EXPECT_TRUE(std::isfinite(v)) << name << base;
  if (c.closed) {
    EXPECT_EQ(gpu.loss(), 0.0) << base;
    EXPECT_EQ(stat(st, "sparsity"), 1.0) << base;
    EXPECT_EQ(stat(st, "no_expert"), 1.0) << base;
  }

  const std::vector<double> dweights = randn(ref.nnz(), 1004);
  const std::vector<float> dw32(dweights.begin(), dweights.end());
  std::vector<float> ref_dh(c.N * kHidden, 0.f);
  cpu.backward(dw32.data(), 0.5, ref_dh.data());
  // An empty routing takes no dweights.
  DeviceBuffer<float> d_dw;
  if (ref.nnz() > 0) d_dw = to_device(dw32);
  Guarded<T> d_dh(c.N * kHidden, 0);
  gpu.backward(ref.nnz() > 0 ? d_dw.data() : nullptr, 0.5, d_dh.data());
  DIRMOE_CUDA_CHECK(cudaStreamSynchronize(stream));
  expect_close("remoe_dh" + base, d_dh.doubles(), to_doubles(ref_dh), tolerance<T>(Op::kLinear));
  expect_guard("remoe_dh" + base, d_dh);
  std::vector<double> ref_dW(cpu.weight().numel());
  for (int64_t i = 0; i < cpu.weight().numel(); ++i) ref_dW[i] = cpu.weight().grad[i];
  expect_close("remoe_dW" + base, to_doubles(gpu.weight().grad.download()), ref_dW,
               kF32Tol[static_cast<int>(Op::kLinear)]);
}

using ReMoEParam = std::tuple<ReMoECase, bool>;
class ReMoERouterCuda : public ::testing::TestWithParam<ReMoEParam> {};

TEST_P(ReMoERouterCuda, MatchesCpuRouter) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const auto& [c, bf16_model] = GetParam();
  if (bf16_model)
    run_remoe<bf16>(c);
  else
    run_remoe<float>(c);
}

INSTANTIATE_TEST_SUITE_P(Grid, ReMoERouterCuda,
                         ::testing::Combine(::testing::ValuesIn(kReMoECases), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<ReMoEParam>& info) {
                           return param_name(std::get<0>(info.param).name) +
                                  (std::get<1>(info.param) ? "_bf16" : "_f32");
                         });

TEST(ReMoERouterKernels, NonFiniteLogitsNameTokenAndExpert) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const int64_t N = 300;
  const int E = 8;
  RouterConfig cfg;
  cfg.type = "remoe";
  Blas blas(nullptr);
  CudaReMoERouter<float> router(cfg, kHidden, E, "layers.4.moe.router", blas.get(), nullptr);
  std::vector<float> W(E * kHidden, 0.01f);
  router.weight().master.upload(W);
  std::vector<float> h(N * kHidden, 0.5f);
  h[42 * kHidden + 7] = NAN;
  h[200 * kHidden + 1] = INFINITY;
  auto d_h = to_device(h);
  DeviceRouting out;
  RouterContext ctx;
  ctx.layer = 4;
  ctx.global_token0 = 1000;
  router.forward(d_h.data(), N, ctx, out);
  try {
    router.read_stats();
    ADD_FAILURE() << "non-finite logits not reported";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("non-finite logit at token 42 (global 1042), expert 0, layer 4"),
              std::string::npos)
        << msg;
  }
  // The CPU router names the same token and expert.
  ReMoERouter<float> cpu(cfg, kHidden, E, "layers.4.moe.router");
  for (int64_t i = 0; i < cpu.weight().numel(); ++i) cpu.weight().value[i] = W[i];
  Routing<float> ref;
  try {
    cpu.forward(h.data(), N, ctx, ref);
    ADD_FAILURE() << "CPU router: non-finite logits not reported";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("non-finite logit at token 42 (global 1042), expert 0"), std::string::npos)
        << msg;
  }
}

// ---- throughput probe (no assertions, as test_perf_cuda): the tracker's shape, 8192 tokens x
// hidden 768 x 8 experts in a bf16 model, forward (with the step's one read of the statistics)
// and backward per layer; the host routers took 17 ms (topk) and 113-150 ms (dirmoe) forward.
template <class Router>
void perf_router(const char* name, Router& router, int64_t N, int64_t d) {
  const std::vector<double> W = randn(router.weight().numel(), 901, 0.03);
  router.weight().master.upload(std::vector<float>(W.begin(), W.end()));
  auto d_h = to_device_as<bf16>(randn(N * d, 902));
  DeviceBuffer<bf16> d_dh(N * d);
  d_dh.fill_bytes(0);
  DeviceBuffer<float> d_dw(N * 8);
  d_dw.fill_bytes(0);
  DeviceRouting out;
  RouterContext ctx;
  auto run = [&](bool backward) {
    cudaEvent_t a, b;
    DIRMOE_CUDA_CHECK(cudaEventCreate(&a));
    DIRMOE_CUDA_CHECK(cudaEventCreate(&b));
    constexpr int kReps = 10;
    float total = 0.f;
    for (int i = 0; i < kReps + 2; ++i) {
      ctx.step = i;
      router.forward(d_h.data(), N, ctx, out);
      router.read_stats();
      DIRMOE_CUDA_CHECK(cudaEventRecord(a));
      if (backward) {
        router.backward(d_dw.data(), 1.0, d_dh.data());
      } else {
        router.forward(d_h.data(), N, ctx, out);
        router.read_stats();
      }
      DIRMOE_CUDA_CHECK(cudaEventRecord(b));
      DIRMOE_CUDA_CHECK(cudaEventSynchronize(b));
      float ms = 0.f;
      DIRMOE_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
      if (i >= 2) total += ms;
    }
    (void)cudaEventDestroy(a);
    (void)cudaEventDestroy(b);
    return total / kReps;
  };
  const double fwd = run(false), bwd = run(true);
  std::printf("[ perf    ] router %-24s bf16 N=%lld d=%lld E=8  fwd+read %8.3f ms  bwd %8.3f ms\n",
              name, static_cast<long long>(N), static_cast<long long>(d), fwd, bwd);
}

TEST(RouterPerfCuda, TrackerShape) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const int64_t N = 8192, d = 768;
  const int E = 8;
  Blas blas(nullptr);
  {
    RouterConfig cfg;
    cfg.k = 2;
    CudaTopKRouter<bf16> r(cfg, d, E, "router", blas.get(), nullptr);
    perf_router("topk k=2", r, N, d);
  }
  {
    RouterConfig cfg;
    cfg.type = "dirmoe";
    cfg.k = 2;
    cfg.dirmoe.max_active = 4;
    CudaDirMoERouter<bf16> r(cfg, d, E, "router", blas.get(), nullptr);
    perf_router("dirmoe k=2 max_active=4", r, N, d);
  }
  for (const char* mode : {"exact", "dynamic"}) {
    RouterConfig cfg;
    cfg.type = "probmoe";
    cfg.k = 2;
    cfg.probmoe.mode = mode;
    cfg.probmoe.k_min = 1;
    cfg.probmoe.k_max = 3;
    CudaProbMoERouter<bf16> r(cfg, d, E, "router", blas.get(), nullptr);
    perf_router(std::string("probmoe ").append(mode).c_str(), r, N, d);
  }
  {
    RouterConfig cfg;
    cfg.type = "remoe";
    cfg.k = 2;
    CudaReMoERouter<bf16> r(cfg, d, E, "router", blas.get(), nullptr);
    perf_router("remoe k=2", r, N, d);
  }
}

}  // namespace
}  // namespace dirmoe::cuda::testing
