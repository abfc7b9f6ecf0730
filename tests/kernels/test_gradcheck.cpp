// The gradient-check helper itself: it must pass an exact gradient and reject a slightly wrong one.
#include <cmath>

#include "tests/kernels/kernel_test_util.h"

namespace dirmoe::cpu::testing {
namespace {

TEST(GradCheck, AcceptsExactAndRejectsPerturbedGradient) {
  std::vector<double> x = randn(20, 1);
  auto loss = [&] {
    double s = 0.0;
    for (size_t i = 0; i < x.size(); ++i) s += std::sin(x[i]) * double(i + 1);
    return s;
  };
  std::vector<double> ana(x.size());
  for (size_t i = 0; i < x.size(); ++i) ana[i] = std::cos(x[i]) * double(i + 1);
  const std::vector<double> num = numeric_grad(x, loss);
  EXPECT_LE(grad_error(num, ana).normwise, 1e-9);
  EXPECT_LE(grad_error(num, ana).worst_floored, 1e-8);
  ana[7] *= 1.0 + 1e-4;
  EXPECT_GT(grad_error(num, ana).worst_floored, 1e-6);
}

}  // namespace
}  // namespace dirmoe::cpu::testing
