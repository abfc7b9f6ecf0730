// RMSNorm: hand-computed values, dx and dw by finite differences, accumulate flag, float vs double.
#include <cmath>

#include "kernels/cpu/ops.h"
#include "tests/kernels/kernel_test_util.h"

namespace dirmoe::cpu::testing {
namespace {

TEST(RmsNorm, MatchesHandComputation) {
  // x = (3, 4), eps = 0: mean(x^2) = 12.5, rstd = 1/sqrt(12.5).
  const std::vector<double> x = {3.0, 4.0}, w = {1.0, -2.0};
  std::vector<double> out(2), rstd(1);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), 1, 2, 0.0);
  EXPECT_NEAR(rstd[0], 0.28284271247461901, 1e-15);
  EXPECT_NEAR(out[0], 0.84852813742385702, 1e-15);
  EXPECT_NEAR(out[1], -2.2627416997969521, 1e-15);

  // Two rows with eps: row 1 = (1, 2, 3, 4) has mean square 7.5; row 2 = (0, 0, 0, 0) -> 0.
  const std::vector<double> x2 = {1, 2, 3, 4, 0, 0, 0, 0}, w2 = {1.0, 0.5, 2.0, -1.0};
  const double eps = 1e-5;
  std::vector<double> out2(8), rstd2(2);
  rmsnorm_forward(out2.data(), rstd2.data(), x2.data(), w2.data(), 2, 4, eps);
  const double r = 1.0 / std::sqrt(7.5 + eps);
  EXPECT_NEAR(rstd2[0], r, 1e-15);
  EXPECT_NEAR(rstd2[1], 1.0 / std::sqrt(eps), 1e-9);
  const double expect[4] = {1.0 * r, 2.0 * r * 0.5, 3.0 * r * 2.0, -4.0 * r};
  for (int j = 0; j < 4; ++j) EXPECT_NEAR(out2[j], expect[j], 1e-15);
  for (int j = 4; j < 8; ++j) EXPECT_EQ(out2[j], 0.0);
}

TEST(RmsNorm, BackwardMatchesFiniteDifferences) {
  const int64_t N = 3, d = 6;
  const double eps = 1e-5;
  std::vector<double> x = randn(N * d, 21);
  std::vector<double> w = uniform(d, 22, 0.5, 1.5);
  const std::vector<double> R = randn(N * d, 23);
  std::vector<double> out(N * d), rstd(N);
  auto loss = [&] {
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, d, eps);
    return dot(out, R);
  };
  const std::vector<double> num_dx = numeric_grad(x, loss);
  const std::vector<double> num_dw = numeric_grad(w, loss);
  loss();
  const std::vector<double> dw0 = randn(d, 24), dx0 = randn(N * d, 25);
  std::vector<double> dx(N * d, 7.0), dw = dw0;
  rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), N, d);
  for (int64_t j = 0; j < d; ++j) dw[j] -= dw0[j];
  expect_grad_close("rmsnorm dx", num_dx, dx);
  expect_grad_close("rmsnorm dw (accumulated)", num_dw, dw);

  std::vector<double> dx_acc = dx0, dw_unused(d, 0.0);
  rmsnorm_backward(dx_acc.data(), dw_unused.data(), R.data(), x.data(), w.data(), rstd.data(), N, d,
                   /*accumulate_dx=*/true);
  for (int64_t i = 0; i < N * d; ++i) dx_acc[i] -= dx0[i];
  expect_grad_close("rmsnorm dx (accumulate_dx)", num_dx, dx_acc);
}

TEST(RmsNorm, FloatMatchesDouble) {
  const int64_t N = 16, d = 128;
  const double eps = 1e-5;
  const std::vector<double> x = randn(N * d, 26), w = uniform(d, 27, 0.5, 1.5),
                            dout = randn(N * d, 28);
  std::vector<double> out(N * d), rstd(N), dx(N * d), dw(d, 0.0);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), N, d, eps);
  rmsnorm_backward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), N, d);
  const std::vector<float> xf = to_float(x), wf = to_float(w), doutf = to_float(dout);
  std::vector<float> outf(N * d), rstdf(N), dxf(N * d), dwf(d, 0.0f);
  rmsnorm_forward(outf.data(), rstdf.data(), xf.data(), wf.data(), N, d, eps);
  rmsnorm_backward(dxf.data(), dwf.data(), doutf.data(), xf.data(), wf.data(), rstdf.data(), N, d);
  expect_close_to_double("rmsnorm out", outf, out);
  expect_close_to_double("rmsnorm rstd", rstdf, rstd);
  expect_close_to_double("rmsnorm dx", dxf, dx);
  expect_close_to_double("rmsnorm dw", dwf, dw);
}

}  // namespace
}  // namespace dirmoe::cpu::testing
