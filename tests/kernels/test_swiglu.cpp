// SwiGLU: closed-form values, backward by finite differences, float vs double.
#include <cmath>

#include "kernels/cpu/ops.h"
#include "tests/kernels/kernel_test_util.h"

namespace dirmoe::cpu::testing {
namespace {

TEST(SwiGlu, ForwardMatchesClosedForm) {
  const std::vector<double> gate = {0.0, 1.0, -2.0, 30.0, -40.0}, up = {3.0, 2.0, -1.5, 0.5, 2.0};
  std::vector<double> out(gate.size());
  swiglu_forward(out.data(), gate.data(), up.data(), int64_t(gate.size()));
  EXPECT_EQ(out[0], 0.0);
  EXPECT_NEAR(out[1], 2.0 / (1.0 + std::exp(-1.0)), 1e-15);
  EXPECT_NEAR(out[2], -1.5 * -2.0 / (1.0 + std::exp(2.0)), 1e-15);
  EXPECT_NEAR(out[3], 15.0, 1e-11);
  EXPECT_NEAR(out[4], 0.0, 1e-15);
}

TEST(SwiGlu, BackwardMatchesFiniteDifferences) {
  const int64_t n = 40;
  std::vector<double> gate = randn(n, 91, 2.0), up = randn(n, 92);
  const std::vector<double> R = randn(n, 93);
  std::vector<double> out(n);
  auto loss = [&] {
    swiglu_forward(out.data(), gate.data(), up.data(), n);
    return dot(out, R);
  };
  const std::vector<double> num_g = numeric_grad(gate, loss), num_u = numeric_grad(up, loss);
  std::vector<double> dgate(n, 4.0), dup(n, 4.0);
  swiglu_backward(dgate.data(), dup.data(), R.data(), gate.data(), up.data(), n);
  expect_grad_close("swiglu dgate", num_g, dgate);
  expect_grad_close("swiglu dup", num_u, dup);
}

TEST(SwiGlu, FloatMatchesDouble) {
  const int64_t n = 4096;
  const std::vector<double> gate = randn(n, 94, 3.0), up = randn(n, 95), dout = randn(n, 96);
  std::vector<double> out(n), dg(n), du(n);
  swiglu_forward(out.data(), gate.data(), up.data(), n);
  swiglu_backward(dg.data(), du.data(), dout.data(), gate.data(), up.data(), n);
  const std::vector<float> gf = to_float(gate), uf = to_float(up), df = to_float(dout);
  std::vector<float> outf(n), dgf(n), duf(n);
  swiglu_forward(outf.data(), gf.data(), uf.data(), n);
  swiglu_backward(dgf.data(), duf.data(), df.data(), gf.data(), uf.data(), n);
  expect_close_to_double("swiglu out", outf, out);
  expect_close_to_double("swiglu dgate", dgf, dg);
  expect_close_to_double("swiglu dup", duf, du);
}

}  // namespace
}  // namespace dirmoe::cpu::testing
