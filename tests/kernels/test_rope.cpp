// RoPE: a hand-rotated 2-dim and 4-dim case, inverse = identity, relative-position property,
// backward by finite differences, float vs double.
#include <cmath>

#include "kernels/cpu/ops.h"
#include "tests/kernels/kernel_test_util.h"

namespace dirmoe::cpu::testing {
namespace {

TEST(Rope, TwoDimMatchesCosSinByHand) {
  const int64_t S = 5;  // hd = 2: one pair, theta_0 = 1, angle = s
  std::vector<double> x(S * 2);
  for (int64_t s = 0; s < S; ++s) {
    x[2 * s] = 0.3 + s;
    x[2 * s + 1] = -1.1 + 0.5 * s;
  }
  std::vector<double> y = x;
  rope_forward(y.data(), 1, S, 1, 2, 10000.0);
  for (int64_t s = 0; s < S; ++s) {
    const double a = double(s), x0 = x[2 * s], x1 = x[2 * s + 1];
    EXPECT_NEAR(y[2 * s], x0 * std::cos(a) - x1 * std::sin(a), 1e-14) << s;
    EXPECT_NEAR(y[2 * s + 1], x1 * std::cos(a) + x0 * std::sin(a), 1e-14) << s;
  }
}

TEST(Rope, FourDimUsesRotateHalfPairs) {
  // hd = 4, base = 100: pair (0, 2) turns by s, pair (1, 3) by s / 10.
  const int64_t S = 3;
  const std::vector<double> x = randn(S * 4, 31);
  std::vector<double> y = x;
  rope_forward(y.data(), 1, S, 1, 4, 100.0);
  for (int64_t s = 0; s < S; ++s) {
    const double* xs = x.data() + 4 * s;
    const double* ys = y.data() + 4 * s;
    for (int i = 0; i < 2; ++i) {
      const double a = s * (i == 0 ? 1.0 : 0.1);
      EXPECT_NEAR(ys[i], xs[i] * std::cos(a) - xs[i + 2] * std::sin(a), 1e-14);
      EXPECT_NEAR(ys[i + 2], xs[i + 2] * std::cos(a) + xs[i] * std::sin(a), 1e-14);
    }
  }
}

TEST(Rope, BackwardIsTheInverseRotation) {
  const int64_t B = 2, S = 7, H = 3, hd = 8;
  const std::vector<double> x = randn(B * S * H * hd, 32);
  std::vector<double> y = x;
  rope_forward(y.data(), B, S, H, hd, 10000.0);
  double moved = 0.0;
  for (size_t i = 0; i < x.size(); ++i) moved = std::max(moved, std::abs(y[i] - x[i]));
  EXPECT_GT(moved, 0.1);
  rope_backward(y.data(), B, S, H, hd, 10000.0);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[i], x[i], 1e-13) << i;
}

TEST(Rope, DotProductDependsOnlyOnRelativePosition) {
  const int64_t S = 40, hd = 16;
  const std::vector<double> q = randn(hd, 33), k = randn(hd, 34);
  std::vector<double> qs(S * hd), ks(S * hd);  // the same vector at every position
  for (int64_t s = 0; s < S; ++s) {
    std::copy(q.begin(), q.end(), qs.begin() + s * hd);
    std::copy(k.begin(), k.end(), ks.begin() + s * hd);
  }
  rope_forward(qs.data(), 1, S, 1, hd, 10000.0);
  rope_forward(ks.data(), 1, S, 1, hd, 10000.0);
  auto score = [&](int64_t m, int64_t n) {
    double s = 0.0;
    for (int64_t j = 0; j < hd; ++j) s += qs[m * hd + j] * ks[n * hd + j];
    return s;
  };
  for (int64_t delta : {0, 1, 3, 17}) {
    const double ref = score(delta, 0);
    for (int64_t n : {1, 5, 22}) EXPECT_NEAR(score(n + delta, n), ref, 1e-12) << delta << " " << n;
  }
  EXPECT_GT(std::abs(score(3, 0) - score(4, 0)), 1e-3);  // it does depend on the offset
}

TEST(Rope, BackwardMatchesFiniteDifferences) {
  const int64_t B = 2, S = 4, H = 2, hd = 6;
  std::vector<double> x = randn(B * S * H * hd, 35);
  const std::vector<double> R = randn(x.size(), 36);
  auto loss = [&] {
    std::vector<double> y = x;
    rope_forward(y.data(), B, S, H, hd, 500.0);
    return dot(y, R);
  };
  const std::vector<double> num = numeric_grad(x, loss);
  std::vector<double> dx = R;
  rope_backward(dx.data(), B, S, H, hd, 500.0);
  expect_grad_close("rope dx", num, dx);
}

TEST(Rope, FloatMatchesDouble) {
  const int64_t B = 2, S = 256, H = 4, hd = 32;
  const std::vector<double> x = randn(B * S * H * hd, 37);
  std::vector<double> y = x;
  rope_forward(y.data(), B, S, H, hd, 10000.0);
  std::vector<float> yf = to_float(x);
  rope_forward(yf.data(), B, S, H, hd, 10000.0);
  expect_close_to_double("rope forward", yf, y);
  rope_backward(y.data(), B, S, H, hd, 10000.0);
  rope_backward(yf.data(), B, S, H, hd, 10000.0);
  expect_close_to_double("rope backward", yf, y);
}

}  // namespace
}  // namespace dirmoe::cpu::testing
