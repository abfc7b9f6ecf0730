// Elementwise helpers: sum of squares accumulated in double, in-place scale and add.
#include "kernels/cpu/ops.h"
#include "tests/kernels/kernel_test_util.h"

namespace dirmoe::cpu::testing {
namespace {

TEST(Elementwise, SumSquaresAccumulatesInDouble) {
  const int64_t n = 1 << 22;
  const std::vector<float> x(n, 0.1f);
  const double expected = double(n) * double(0.1f) * double(0.1f);
  EXPECT_NEAR(sum_squares(x.data(), n), expected, 1e-9 * expected);
  const std::vector<double> y = {1.0, -2.0, 3.0, 0.5, -0.25};
  EXPECT_DOUBLE_EQ(sum_squares(y.data(), 5), 1.0 + 4.0 + 9.0 + 0.25 + 0.0625);
  EXPECT_EQ(sum_squares(y.data(), 0), 0.0);
}

TEST(Elementwise, ScaleAndAdd) {
  std::vector<double> y = {1.0, 2.0, 3.0};
  const std::vector<double> x = {0.5, -1.0, 4.0};
  scale_inplace(y.data(), 3, -2.0);
  EXPECT_EQ(y, (std::vector<double>{-2.0, -4.0, -6.0}));
  add_inplace(y.data(), x.data(), 3);
  EXPECT_EQ(y, (std::vector<double>{-1.5, -5.0, -2.0}));
  std::vector<float> yf = {1.0f, 2.0f};
  const std::vector<float> xf = {0.25f, 0.5f};
  scale_inplace(yf.data(), 2, 0.5);
  add_inplace(yf.data(), xf.data(), 2);
  EXPECT_EQ(yf, (std::vector<float>{0.75f, 1.5f}));
}

}  // namespace
}  // namespace dirmoe::cpu::testing
