// CUDA linear (cuBLAS), fused cross-entropy, AdamW and the grad-norm helpers against the CPU
// reference (kernels/cpu in double) over named grids, f32 and bf16; outputs sentinel-guarded.
#include <cublas_v2.h>
#include <gtest/gtest.h>

#include <climits>
#include <tuple>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/api.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace dirmoe::cuda::testing {
namespace {

template <class Case>
std::string case_name(const ::testing::TestParamInfo<std::tuple<Case, bool>>& info) {
  return param_name(std::get<0>(info.param).name) + (std::get<1>(info.param) ? "_bf16" : "_f32");
}

class Cublas {
 public:
  Cublas() {
    DIRMOE_CUBLAS_CHECK(cublasCreate(&handle_));
    workspace_.resize(32 << 20);
    DIRMOE_CUBLAS_CHECK(cublasSetWorkspace(handle_, workspace_.data(), workspace_.bytes()));
  }
  ~Cublas() { (void)cublasDestroy(handle_); }
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
  DeviceBuffer<uint8_t> workspace_;
};

// ---- linear ------------------------------------------------------------------------------------
struct LinearCase {
  const char* name;
  int64_t N, in, out;
};
const LinearCase kLinearCases[] = {
    {"single_row", 1, 16, 8},      {"odd_sizes", 33, 17, 45}, {"qkv_768", 512, 768, 2304},
    {"down_proj", 256, 2048, 768}, {"empty_inner", 4, 0, 3},
};

template <class T>
void run_linear(const LinearCase& c) {
  const char* dt = dtype_label<T>();
  Tol tol = tolerance<T>(Op::kLinear);
  Cublas blas;
  const auto x = representable<T>(randn(c.N * c.in, 70));
  const auto W = representable<T>(
      randn(c.out * c.in, 71, 1.0 / std::sqrt(double(std::max<int64_t>(c.in, 1)))));
  const auto y0 = representable<T>(randn(c.N * c.out, 72));
  auto d_x = to_device_as<T>(x), d_W = to_device_as<T>(W);
  const std::string base = std::string("/") + c.name + "/" + dt;
  for (bool accumulate : {false, true}) {
    std::vector<double> ref = y0;
    cpu::linear_forward(ref.data(), x.data(), W.data(), c.N, c.in, c.out, accumulate);
    Guarded<T> y(c.N * c.out);
    if (accumulate) y.set(convert_to<T>(y0));
    linear_forward<T>(blas.get(), y.data(), d_x.data(), d_W.data(), c.N, c.in, c.out, accumulate,
                      nullptr);
    expect_close(std::string(accumulate ? "linear_fwd(y+=)" : "linear_fwd(y=)") + base, y.doubles(),
                 ref, tol);
    expect_guard("linear y", y);
  }
  const auto dy = representable<T>(randn(c.N * c.out, 73));
  const auto dx0 = representable<T>(randn(c.N * c.in, 74));
  const auto dW0 = to_doubles(convert_to<float>(randn(c.out * c.in, 75)));
  auto d_dy = to_device_as<T>(dy);
  for (bool accumulate : {false, true}) {
    std::vector<double> dx_ref = dx0, dW_ref = dW0;
    cpu::linear_backward(dx_ref.data(), dW_ref.data(), dy.data(), x.data(), W.data(), c.N, c.in,
                         c.out, accumulate);
    Guarded<T> dx(c.N * c.in);
    Guarded<float> dW(c.out * c.in);
    if (accumulate) dx.set(convert_to<T>(dx0));
    dW.set(convert_to<float>(dW0));
    linear_backward<T>(blas.get(), dx.data(), dW.data(), d_dy.data(), d_x.data(), d_W.data(), c.N,
                       c.in, c.out, accumulate, nullptr);
    expect_close(std::string(accumulate ? "linear_bwd(dx+=)" : "linear_bwd(dx=)") + base,
                 dx.doubles(), dx_ref, tol);
    // dW is fp32 whatever T is; it sums N products.
    const Tol tol_dw{kF32Tol[static_cast<int>(Op::kLinear)].atol * std::sqrt(double(c.N)),
                     kF32Tol[static_cast<int>(Op::kLinear)].rtol};
    expect_close("linear_bwd(dW+=)" + base, dW.doubles(), dW_ref, tol_dw);
    expect_guard("linear dx", dx);
    expect_guard("linear dW", dW);
  }
}

class LinearCuda : public ::testing::TestWithParam<std::tuple<LinearCase, bool>> {};
TEST_P(LinearCuda, MatchesCpu) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const auto& [c, bf] = GetParam();
  bf ? run_linear<bf16>(c) : run_linear<float>(c);
}
INSTANTIATE_TEST_SUITE_P(Grid, LinearCuda,
                         ::testing::Combine(::testing::ValuesIn(kLinearCases), ::testing::Bool()),
                         case_name<LinearCase>);

// ---- cross-entropy -----------------------------------------------------------------------------
struct CrossEntropyCase {
  const char* name;
  int64_t N, V, Vp;
};
const CrossEntropyCase kCrossEntropyCases[] = {
    {"vocab_of_one", 3, 1, 1},
    {"padded_64", 7, 50, 64},
    {"odd_padded_width", 5, 33, 37},
    {"gpt2_vocab", 64, 50257, 50304},
};

template <class T>
void run_cross_entropy(const CrossEntropyCase& c) {
  const char* dt = dtype_label<T>();
  const Tol tol = tolerance<T>(Op::kCrossEntropy);
  auto logits = representable<T>(randn(c.N * c.Vp, 80, 2.0));
  std::mt19937_64 rng(81);
  std::vector<int32_t> targets(c.N);
  int64_t valid = 0;
  for (int64_t n = 0; n < c.N; ++n) {
    targets[n] = (n % 4 == 3) ? -1 : static_cast<int32_t>(rng() % c.V);
    valid += targets[n] >= 0;
  }
  const double scale = 1.0 / double(std::max<int64_t>(valid, 1));
  std::vector<double> loss_ref(c.N), lse_ref(c.N), dlog_ref(c.N * c.Vp);
  cpu::cross_entropy_forward(loss_ref.data(), lse_ref.data(), logits.data(), targets.data(), c.N,
                             c.V, c.Vp);
  cpu::cross_entropy_backward(dlog_ref.data(), logits.data(), lse_ref.data(), targets.data(), scale,
                              c.N, c.V, c.Vp);
  auto d_logits = to_device_as<T>(logits);
  auto d_targets = to_device(targets);
  const std::string base = std::string("/") + c.name + "/" + dt;
  const Tol tol_f32 = kF32Tol[static_cast<int>(Op::kCrossEntropy)];
  const Tol tol_grad{tol.atol * scale, tol.rtol};

  Guarded<float> loss(c.N), lse(c.N);
  cross_entropy_forward<T>(loss.data(), lse.data(), d_logits.data(), d_targets.data(), c.N, c.V,
                           c.Vp, nullptr, nullptr);
  expect_close("cross_entropy_fwd(loss)" + base, loss.doubles(), loss_ref, tol_f32);
  expect_close("cross_entropy_fwd(lse)" + base, lse.doubles(), lse_ref, tol_f32);
  expect_guard("ce loss", loss);

  Guarded<T> dlog(c.N * c.Vp);
  cross_entropy_backward<T>(dlog.data(), d_logits.data(), lse.data(), d_targets.data(),
                            float(scale), c.N, c.V, c.Vp, nullptr);
  expect_close("cross_entropy_bwd(dlogits)" + base, dlog.doubles(), dlog_ref, tol_grad);
  expect_guard("ce dlogits", dlog);

  // Fused, in place: the gradient overwrites the logits.
  Guarded<T> inplace(c.N * c.Vp);
  inplace.set(convert_to<T>(logits));
  Guarded<float> loss2(c.N), lse2(c.N);
  cross_entropy_fused<T>(loss2.data(), lse2.data(), inplace.data(), inplace.data(),
                         d_targets.data(), float(scale), c.N, c.V, c.Vp, nullptr, nullptr);
  expect_close("cross_entropy_fused_inplace(loss)" + base, loss2.doubles(), loss_ref, tol_f32);
  expect_close("cross_entropy_fused_inplace(dlogits)" + base, inplace.doubles(), dlog_ref,
               tol_grad);
  expect_guard("ce fused", inplace);
}

class CrossEntropyCuda : public ::testing::TestWithParam<std::tuple<CrossEntropyCase, bool>> {};
TEST_P(CrossEntropyCuda, MatchesCpu) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const auto& [c, bf] = GetParam();
  bf ? run_cross_entropy<bf16>(c) : run_cross_entropy<float>(c);
}
INSTANTIATE_TEST_SUITE_P(Grid, CrossEntropyCuda,
                         ::testing::Combine(::testing::ValuesIn(kCrossEntropyCases),
                                            ::testing::Bool()),
                         case_name<CrossEntropyCase>);

TEST(CrossEntropyCudaEdge, BadTargetIsReportedAndZeroed) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const int64_t N = 4, V = 10, Vp = 16;
  auto d_logits = to_device_as<float>(randn(N * Vp, 90));
  auto d_targets = to_device(std::vector<int32_t>{3, -1, 10, -5});
  auto d_bad = to_device(std::vector<int64_t>{INT64_MAX});
  DeviceBuffer<float> loss(N), lse(N), dlog(N * Vp);
  cross_entropy_fused<float>(loss.data(), lse.data(), dlog.data(), d_logits.data(),
                             d_targets.data(), 1.f, N, V, Vp, d_bad.data(), nullptr);
  const auto l = loss.download();
  const auto g = dlog.download();
  EXPECT_EQ(d_bad.download()[0], 2);
  EXPECT_EQ(l[2], 0.f);
  EXPECT_EQ(l[3], 0.f);
  for (int64_t j = 0; j < Vp; ++j) {
    EXPECT_EQ(g[2 * Vp + j], 0.f);
    EXPECT_EQ(g[3 * Vp + j], 0.f);
  }
}

// ---- AdamW -------------------------------------------------------------------------------------
struct AdamWCase {
  const char* name;
  int64_t n;
  double weight_decay;
  bool grad_scale;
};
const AdamWCase kAdamWCases[] = {
    {"one", 1, 0.0, false},
    {"odd_wd", 1003, 0.1, false},
    {"vector_clip", 1 << 16, 0.1, true},
};

TEST(AdamWCuda, MatchesCpuOverSteps) {
  DIRMOE_SKIP_WITHOUT_GPU();
  for (const auto& c : kAdamWCases) {
    auto p = to_doubles(convert_to<float>(randn(c.n, 100)));
    std::vector<double> m(c.n, 0.0), v(c.n, 0.0);
    DeviceBuffer<float> d_p = to_device_as<float>(p), d_m(c.n), d_v(c.n), d_g(c.n);
    d_m.fill_bytes(0);
    d_v.fill_bytes(0);
    Guarded<bf16> p16(c.n);
    const float gs = 0.5f;
    auto d_gs = to_device(std::vector<float>{gs});
    for (int step = 1; step <= 3; ++step) {
      auto g = to_doubles(convert_to<float>(randn(c.n, 200 + step)));
      d_g.upload(convert_to<float>(g));
      cpu::AdamWParams cp;
      cp.lr = 1e-2;
      cp.weight_decay = c.weight_decay;
      cp.step = step;
      AdamWParams gp;
      gp.lr = cp.lr;
      gp.weight_decay = cp.weight_decay;
      gp.step = step;
      if (c.grad_scale) {
        for (auto& e : g) e *= gs;
      }
      cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), c.n, cp);
      adamw_update(d_p.data(), p16.data(), d_g.data(), d_m.data(), d_v.data(), c.n, gp,
                   c.grad_scale ? d_gs.data() : nullptr, nullptr);
    }
    const auto got = d_p.download();
    const std::string base = std::string("/") + c.name + "/f32";
    expect_close("adamw(param,3_steps)" + base, to_doubles(got), p,
                 kF32Tol[static_cast<int>(Op::kAdamW)]);
    expect_close("adamw(m)" + base, to_doubles(d_m.download()), m,
                 kF32Tol[static_cast<int>(Op::kAdamW)]);
    expect_close("adamw(v)" + base, to_doubles(d_v.download()), v,
                 kF32Tol[static_cast<int>(Op::kAdamW)]);
    expect_exact("adamw(bf16_copy==round(param))" + base, p16.doubles(),
                 to_doubles(convert_to<bf16>(to_doubles(got))));
    expect_guard("adamw bf16 copy", p16);
  }
}

// ---- multi-tensor AdamW and gradient norm ------------------------------------------------------
// The chunk plan is host logic: checked here without a GPU. Every element of every tensor is in
// exactly one chunk, chunks are group-major and start at multiples of 4.
TEST(MultiTensorChunks, CoverEveryElementOnceGroupMajor) {
  std::vector<MultiTensor> t(5);
  const int64_t sizes[] = {1, 70000, 0, 131072, 5};
  const int groups[] = {1, 0, 0, 1, 0};
  for (int i = 0; i < 5; ++i) {
    t[i].n = sizes[i];
    t[i].group = groups[i];
  }
  std::vector<int64_t> gb;
  const auto chunks = multi_tensor_chunks(t, 2, 65536, &gb);
  ASSERT_EQ(gb.size(), 3u);
  // group 0: tensor 1 (2 chunks), tensor 4 (1); group 1: tensor 0 (1), tensor 3 (2)
  ASSERT_EQ(chunks.size(), 6u);
  EXPECT_EQ(gb, (std::vector<int64_t>{0, 3, 6}));
  std::vector<int64_t> covered(5, 0);
  for (size_t c = 0; c < chunks.size(); ++c) {
    const MultiTensorChunk& k = chunks[c];
    EXPECT_EQ(k.begin % 4, 0);
    EXPECT_LT(k.begin, k.end);
    EXPECT_LE(k.end - k.begin, 65536);
    EXPECT_EQ(k.group, groups[k.tensor]);
    EXPECT_EQ(static_cast<int64_t>(c) >= gb[1], k.group == 1) << "chunk " << c;
    EXPECT_EQ(k.begin, covered[k.tensor]) << "chunks of a tensor in order, no gap or overlap";
    covered[k.tensor] = k.end;
  }
  for (int i = 0; i < 5; ++i) EXPECT_EQ(covered[i], sizes[i]) << "tensor " << i;
  t[2].group = 2;
  EXPECT_THROW(multi_tensor_chunks(t, 2, 65536, &gb), Error);
  t[2].group = 0;
  EXPECT_THROW(multi_tensor_chunks(t, 2, 65537, &gb), Error);
}

// One launch over tensors of odd sizes, with and without decay and bf16 copies, against
// cpu::adamw_update per tensor over 3 steps; the gradient norm of both groups against a double
// reference, and deterministic.
TEST(AdamWMultiTensorCuda, MatchesCpuPerTensorOverSteps) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const int64_t sizes[] = {1, 3, 1003, 65536, 65537, 200000};
  const int n_t = 6;
  std::vector<std::vector<double>> p(n_t), m(n_t), v(n_t), g(n_t);
  std::vector<DeviceBuffer<float>> dp, dg, dm, dv;
  std::vector<Guarded<bf16>> half;
  std::vector<MultiTensor> list;
  for (int i = 0; i < n_t; ++i) {
    const int64_t n = sizes[i];
    p[i] = to_doubles(convert_to<float>(randn(n, 300 + i)));
    m[i].assign(n, 0.0);
    v[i].assign(n, 0.0);
    dp.push_back(to_device_as<float>(p[i]));
    dg.emplace_back(n);
    dm.emplace_back(n);
    dv.emplace_back(n);
    dm.back().fill_bytes(0);
    dv.back().fill_bytes(0);
    half.emplace_back(n);
  }
  for (int i = 0; i < n_t; ++i)
    list.push_back({dp[i].data(), i % 2 == 0 ? half[i].data() : nullptr, dg[i].data(), dm[i].data(),
                    dv[i].data(), sizes[i], i % 3 != 0, i % 2});
  std::vector<int64_t> gb;
  const auto chunks = multi_tensor_chunks(list, 2, kMultiTensorChunk, &gb);
  auto d_list = to_device(list);
  auto d_chunks = to_device(chunks);
  auto d_gb = to_device(gb);
  DeviceBuffer<double> sumsq(2),
      scratch(
          static_cast<int64_t>(multi_tensor_scratch_doubles(static_cast<int64_t>(chunks.size()))));
  const float gs = 0.5f;
  auto d_gs = to_device(std::vector<float>{gs});
  for (int step = 1; step <= 3; ++step) {
    double ref_sq[2] = {0, 0};
    for (int i = 0; i < n_t; ++i) {
      g[i] = to_doubles(convert_to<float>(randn(sizes[i], 400 + 10 * step + i)));
      dg[i].upload(convert_to<float>(g[i]));
      for (double e : g[i]) ref_sq[i % 2] += e * e;
    }
    multi_tensor_sum_squares(sumsq.data(), d_list.data(), d_chunks.data(),
                             static_cast<int64_t>(chunks.size()), d_gb.data(), 2, scratch.data(),
                             nullptr);
    const auto got_sq = sumsq.download();
    expect_close("multi_tensor_sum_squares/step" + std::to_string(step) + "/f32",
                 {got_sq[0], got_sq[1]}, {ref_sq[0], ref_sq[1]}, {1e-12, 1e-12});
    multi_tensor_sum_squares(sumsq.data(), d_list.data(), d_chunks.data(),
                             static_cast<int64_t>(chunks.size()), d_gb.data(), 2, scratch.data(),
                             nullptr);
    EXPECT_EQ(sumsq.download(), got_sq) << "multi_tensor_sum_squares is not deterministic";
    AdamWParams gp;
    gp.lr = 1e-2;
    gp.weight_decay = 0.1;
    gp.step = step;
    multi_tensor_adamw(d_list.data(), d_chunks.data(), static_cast<int64_t>(chunks.size()), gp,
                       d_gs.data(), nullptr);
    for (int i = 0; i < n_t; ++i) {
      cpu::AdamWParams cp;
      cp.lr = gp.lr;
      cp.weight_decay = list[i].decay ? gp.weight_decay : 0.0;
      cp.step = step;
      std::vector<double> gi = g[i];
      for (auto& e : gi) e *= gs;
      cpu::adamw_update(p[i].data(), gi.data(), m[i].data(), v[i].data(), sizes[i], cp);
    }
  }
  for (int i = 0; i < n_t; ++i) {
    const std::string base = "/n" + std::to_string(sizes[i]) + "/f32";
    const auto got = dp[i].download();
    expect_close("multi_adamw(param,3_steps)" + base, to_doubles(got), p[i],
                 kF32Tol[static_cast<int>(Op::kAdamW)]);
    expect_close("multi_adamw(m)" + base, to_doubles(dm[i].download()), m[i],
                 kF32Tol[static_cast<int>(Op::kAdamW)]);
    expect_close("multi_adamw(v)" + base, to_doubles(dv[i].download()), v[i],
                 kF32Tol[static_cast<int>(Op::kAdamW)]);
    if (i % 2 == 0) {
      expect_exact("multi_adamw(bf16_copy==round(param))" + base, half[i].doubles(),
                   to_doubles(convert_to<bf16>(to_doubles(got))));
      expect_guard("multi_adamw bf16 copy", half[i]);
    }
  }
}

// ---- grad norm, clipping, elementwise ----------------------------------------------------------
template <class T>
void run_sum_squares(int64_t n) {
  const auto x = representable<T>(randn(n, 110));
  const std::string base = "/n" + std::to_string(n) + "/" + dtype_label<T>();
  double ref = 0.0;
  for (double e : x) ref += e * e;
  auto d_x = to_device_as<T>(x);
  DeviceBuffer<double> out(1), scratch(static_cast<int64_t>(sum_squares_scratch_doubles(n)));
  sum_squares<T>(out.data(), d_x.data(), n, false, scratch.data(), nullptr);
  const double first = out.download()[0];
  sum_squares<T>(out.data(), d_x.data(), n, true, scratch.data(), nullptr);
  const double twice = out.download()[0];
  expect_close("sum_squares" + base, {first}, {ref}, {1e-12, 1e-12});
  expect_close("sum_squares(accumulate)" + base, {twice}, {2 * ref}, {1e-12, 1e-12});
  sum_squares<T>(out.data(), d_x.data(), n, false, scratch.data(), nullptr);
  EXPECT_EQ(out.download()[0], first) << "sum_squares is not deterministic" << base;
}

TEST(GradNormCuda, SumSquaresMatchesDoubleReference) {
  DIRMOE_SKIP_WITHOUT_GPU();
  for (int64_t n : {int64_t(0), int64_t(1), int64_t(1000), int64_t((1 << 20) + 3)}) {
    run_sum_squares<float>(n);
    run_sum_squares<bf16>(n);
  }
}

TEST(GradNormCuda, ClipCoefficientAndScaling) {
  DIRMOE_SKIP_WITHOUT_GPU();
  auto d_sumsq = to_device(std::vector<double>{16.0});  // norm 4
  DeviceBuffer<float> scale(1);
  clip_coefficient(scale.data(), d_sumsq.data(), 1.0, nullptr);
  EXPECT_FLOAT_EQ(scale.download()[0], float(1.0 / (4.0 + 1e-6)));
  clip_coefficient(scale.data(), d_sumsq.data(), 10.0, nullptr);
  EXPECT_EQ(scale.download()[0], 1.0f);
  clip_coefficient(scale.data(), d_sumsq.data(), 0.0, nullptr);
  EXPECT_EQ(scale.download()[0], 1.0f);

  const int64_t n = 1001;
  const auto x = to_doubles(convert_to<float>(randn(n, 120)));
  auto d_x = to_device_as<float>(x);
  scale_inplace<float>(d_x.data(), n, 0.25f, nullptr);
  std::vector<double> ref = x;
  for (auto& e : ref) e *= 0.25;
  expect_exact("scale_inplace(x*0.25)/f32", to_doubles(d_x.download()), ref);
  auto d_s = to_device(std::vector<float>{2.0f});
  scale_inplace_device<float>(d_x.data(), n, d_s.data(), nullptr);
  for (auto& e : ref) e *= 2.0;
  expect_exact("scale_inplace_device(x*2)/f32", to_doubles(d_x.download()), ref);

  const auto y = to_doubles(convert_to<float>(randn(n, 121)));
  auto d_y = to_device_as<float>(y);
  add_inplace<float>(d_y.data(), d_x.data(), n, nullptr);
  std::vector<double> sum(n);
  for (int64_t i = 0; i < n; ++i) sum[i] = double(float(y[i] + ref[i]));
  expect_exact("add_inplace/f32", to_doubles(d_y.download()), sum);

  DeviceBuffer<bf16> d_h(n);
  convert<float, bf16>(d_h.data(), d_y.data(), n, nullptr);
  expect_exact("convert(f32->bf16)", to_doubles(d_h.download()),
               to_doubles(convert_to<bf16>(to_doubles(d_y.download()))));
}

}  // namespace
}  // namespace dirmoe::cuda::testing
