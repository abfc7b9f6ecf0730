// Cross-entropy over a padded vocabulary: uniform logits give log(V), a naive reference,
// dlogits by finite differences (padding columns, ignored row), aliasing, float vs double.
#include <cmath>
#include <string>

#include "kernels/cpu/ops.h"
#include "runtime/core/error.h"
#include "tests/kernels/kernel_test_util.h"

namespace dirmoe::cpu::testing {
namespace {

TEST(CrossEntropy, UniformLogitsGiveLogV) {
  for (int64_t V : {7, 51200}) {
    const int64_t N = 3, Vp = V + 64;
    std::vector<double> logits(N * Vp, 0.0);
    for (int64_t n = 0; n < N; ++n) {
      for (int64_t i = V; i < Vp; ++i) logits[n * Vp + i] = 1e4;  // padding must not count
    }
    const std::vector<int32_t> targets = {0, int32_t(V - 1), int32_t(V / 2)};
    std::vector<double> losses(N), lse(N);
    cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V, Vp);
    const std::vector<float> logits_f = to_float(logits);
    std::vector<float> losses_f(N), lse_f(N);
    cross_entropy_forward(losses_f.data(), lse_f.data(), logits_f.data(), targets.data(), N, V, Vp);
    for (int64_t n = 0; n < N; ++n) {
      EXPECT_EQ(losses[n], std::log(double(V))) << V;
      EXPECT_EQ(losses_f[n], float(std::log(double(V)))) << V;
    }
    for (double& x : logits) x += 3.25;  // a constant shift changes nothing
    cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V, Vp);
    for (int64_t n = 0; n < N; ++n) EXPECT_DOUBLE_EQ(losses[n], std::log(double(V))) << V;
  }
}

TEST(CrossEntropy, ForwardMatchesNaiveReference) {
  const int64_t N = 5, V = 300, Vp = 320;
  const std::vector<double> logits = randn(N * Vp, 101, 4.0);
  const std::vector<int32_t> targets = {17, -1, 0, 299, 150};
  std::vector<double> losses(N, 9.0), lse(N);
  cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V, Vp);
  for (int64_t n = 0; n < N; ++n) {
    long double z = 0.0L;
    for (int64_t i = 0; i < V; ++i) z += std::exp((long double)logits[n * Vp + i]);
    const double ref_lse = double(std::log(z));
    EXPECT_NEAR(lse[n], ref_lse, 1e-13);
    const double ref_loss = targets[n] < 0 ? 0.0 : ref_lse - logits[n * Vp + targets[n]];
    EXPECT_NEAR(losses[n], ref_loss, 1e-13);
  }
  EXPECT_EQ(losses[1], 0.0);
}

TEST(CrossEntropy, BackwardMatchesFiniteDifferences) {
  const int64_t N = 4, V = 7, Vp = 10;
  const std::vector<int32_t> targets = {2, -1, 6, 0};
  const double c = 0.37;  // L = c * sum(losses), so scale = c
  std::vector<double> logits = randn(N * Vp, 102, 2.0);
  std::vector<double> losses(N), lse(N);
  auto loss = [&] {
    cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V, Vp);
    double s = 0.0;
    for (double l : losses) s += c * l;
    return s;
  };
  const std::vector<double> num = numeric_grad(logits, loss);
  loss();
  std::vector<double> dlogits(N * Vp, 5.0);
  cross_entropy_backward(dlogits.data(), logits.data(), lse.data(), targets.data(), c, N, V, Vp);
  expect_grad_close("cross_entropy dlogits", num, dlogits);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t i = 0; i < Vp; ++i) {
      if (i >= V || targets[n] < 0) {
        EXPECT_EQ(dlogits[n * Vp + i], 0.0) << n << " " << i;
      }
    }
  }

  std::vector<double> alias = logits;  // dlogits written over the logits
  cross_entropy_backward(alias.data(), alias.data(), lse.data(), targets.data(), c, N, V, Vp);
  EXPECT_EQ(alias, dlogits);
}

TEST(CrossEntropy, RejectsBadTargets) {
  const int64_t N = 2, V = 7, Vp = 8;
  std::vector<double> logits(N * Vp, 0.0), losses(N), lse(N);
  for (int32_t bad : {7, -2}) {
    const std::vector<int32_t> targets = {1, bad};
    try {
      cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V, Vp);
      FAIL() << "no throw for target " << bad;
    } catch (const Error& e) {
      const std::string w = e.what();
      EXPECT_NE(w.find("target " + std::to_string(bad) + " at row 1"), std::string::npos) << w;
    }
  }
}

TEST(CrossEntropy, FloatMatchesDoubleOnTheLmHeadVocabulary) {
  const int64_t N = 6, V = 51200, Vp = 51264;
  std::vector<double> logits = to_float_and_back(randn(N * Vp, 103, 3.0));
  logits[4] = -1e4;        // deep underflow of exp
  logits[Vp + 11] = 40.0;  // one dominant logit
  const std::vector<int32_t> targets = {5, 11, -1, 0, 51199, 777};
  std::vector<double> losses(N), lse(N), dl(N * Vp);
  cross_entropy_forward(losses.data(), lse.data(), logits.data(), targets.data(), N, V, Vp);
  cross_entropy_backward(dl.data(), logits.data(), lse.data(), targets.data(), 0.5, N, V, Vp);
  const std::vector<float> lf = to_float(logits);
  std::vector<float> losses_f(N), lse_f(N), dl_f(N * Vp);
  cross_entropy_forward(losses_f.data(), lse_f.data(), lf.data(), targets.data(), N, V, Vp);
  cross_entropy_backward(dl_f.data(), lf.data(), lse_f.data(), targets.data(), 0.5, N, V, Vp);
  expect_close_to_double("cross_entropy losses", losses_f, losses);
  expect_close_to_double("cross_entropy lse", lse_f, lse);
  expect_close_to_double("cross_entropy dlogits", dl_f, dl);
  EXPECT_EQ(dl_f[4], 0.0f);  // exp(-1e4 - lse) underflows to exactly 0
  // Softmax probabilities elementwise (not only relative to the largest one).
  double worst = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    if (targets[n] < 0) continue;
    for (int64_t i = 0; i < V; ++i) {
      if (i == targets[n]) continue;
      const double p = dl[n * Vp + i];
      if (p < 1e-30) continue;
      worst = std::max(worst, std::abs(double(dl_f[n * Vp + i]) - p) / p);
    }
  }
  std::printf("[ f32-f64 ] %-40s worst rel %.2e\n", "cross_entropy probabilities", worst);
  EXPECT_LE(worst, 1e-5);
}

}  // namespace
}  // namespace dirmoe::cpu::testing
