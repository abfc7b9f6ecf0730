// Linear (CBLAS): forward against a naive triple loop (float and double), accumulate flags,
// dx/dW by finite differences, null outputs skipped.
#include "kernels/cpu/ops.h"
#include "tests/kernels/kernel_test_util.h"

namespace dirmoe::cpu::testing {
namespace {

// y[N,out] = x[N,in] W[out,in]^T, accumulated in double.
std::vector<double> ref_linear(const std::vector<double>& x, const std::vector<double>& W,
                               int64_t N, int64_t in, int64_t out) {
  std::vector<double> y(N * out, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t o = 0; o < out; ++o) {
      double s = 0.0;
      for (int64_t i = 0; i < in; ++i) s += x[n * in + i] * W[o * in + i];
      y[n * out + o] = s;
    }
  }
  return y;
}

TEST(Linear, ForwardMatchesTripleLoop) {
  const int64_t N = 13, in = 37, out = 19;
  const std::vector<double> x = randn(N * in, 71), W = randn(out * in, 72), y0 = randn(N * out, 73);
  const std::vector<double> ref = ref_linear(x, W, N, in, out);

  std::vector<double> y(N * out, 5.0);
  linear_forward(y.data(), x.data(), W.data(), N, in, out);
  for (int64_t i = 0; i < N * out; ++i) EXPECT_NEAR(y[i], ref[i], 1e-12) << i;
  std::vector<double> y_acc = y0;
  linear_forward(y_acc.data(), x.data(), W.data(), N, in, out, /*accumulate=*/true);
  for (int64_t i = 0; i < N * out; ++i) EXPECT_NEAR(y_acc[i], y0[i] + ref[i], 1e-12) << i;

  const std::vector<float> xf = to_float(x), Wf = to_float(W);
  std::vector<float> yf(N * out, 5.0f);
  linear_forward(yf.data(), xf.data(), Wf.data(), N, in, out);
  expect_close_to_double("linear forward", yf, ref);
  std::vector<float> yf_acc = to_float(y0);
  linear_forward(yf_acc.data(), xf.data(), Wf.data(), N, in, out, /*accumulate=*/true);
  std::vector<double> ref_acc(N * out);
  for (int64_t i = 0; i < N * out; ++i) ref_acc[i] = y0[i] + ref[i];
  expect_close_to_double("linear forward accumulate", yf_acc, ref_acc);
}

TEST(Linear, BackwardMatchesFiniteDifferences) {
  const int64_t N = 5, in = 7, out = 4;
  std::vector<double> x = randn(N * in, 74), W = randn(out * in, 75);
  const std::vector<double> R = randn(N * out, 76);
  std::vector<double> y(N * out);
  auto loss = [&] {
    linear_forward(y.data(), x.data(), W.data(), N, in, out);
    return dot(y, R);
  };
  const std::vector<double> num_dx = numeric_grad(x, loss), num_dW = numeric_grad(W, loss);
  const std::vector<double> dx0 = randn(N * in, 77), dW0 = randn(out * in, 78);

  std::vector<double> dx(N * in, 3.0), dW = dW0;
  linear_backward(dx.data(), dW.data(), R.data(), x.data(), W.data(), N, in, out);
  for (int64_t i = 0; i < out * in; ++i) dW[i] -= dW0[i];
  expect_grad_close("linear dx (overwrite)", num_dx, dx);
  expect_grad_close("linear dW (accumulated)", num_dW, dW);

  std::vector<double> dx_acc = dx0;
  linear_backward(dx_acc.data(), static_cast<double*>(nullptr), R.data(), x.data(), W.data(), N, in,
                  out, /*accumulate_dx=*/true);
  for (int64_t i = 0; i < N * in; ++i) dx_acc[i] -= dx0[i];
  expect_grad_close("linear dx (accumulate_dx, dW null)", num_dx, dx_acc);

  std::vector<double> dW_only = dW0;
  linear_backward(static_cast<double*>(nullptr), dW_only.data(), R.data(), x.data(), W.data(), N,
                  in, out);
  for (int64_t i = 0; i < out * in; ++i) dW_only[i] -= dW0[i];
  expect_grad_close("linear dW (dx null)", num_dW, dW_only);
}

TEST(Linear, FloatBackwardMatchesDouble) {
  const int64_t N = 64, in = 128, out = 96;
  const std::vector<double> x = randn(N * in, 79), W = randn(out * in, 80), dy = randn(N * out, 81);
  std::vector<double> dx(N * in), dW(out * in, 0.0);
  linear_backward(dx.data(), dW.data(), dy.data(), x.data(), W.data(), N, in, out);
  const std::vector<float> xf = to_float(x), Wf = to_float(W), dyf = to_float(dy);
  std::vector<float> dxf(N * in), dWf(out * in, 0.0f);
  linear_backward(dxf.data(), dWf.data(), dyf.data(), xf.data(), Wf.data(), N, in, out);
  expect_close_to_double("linear dx", dxf, dx);
  expect_close_to_double("linear dW", dWf, dW);
}

TEST(Linear, HandlesEmptyInnerDimension) {
  std::vector<double> y = {1.0, 2.0, 3.0, 4.0}, x, W;
  linear_forward(y.data(), x.data(), W.data(), 2, 0, 2, /*accumulate=*/true);
  EXPECT_EQ(y, (std::vector<double>{1.0, 2.0, 3.0, 4.0}));
  linear_forward(y.data(), x.data(), W.data(), 2, 0, 2);
  EXPECT_EQ(y, (std::vector<double>(4, 0.0)));
}

}  // namespace
}  // namespace dirmoe::cpu::testing
