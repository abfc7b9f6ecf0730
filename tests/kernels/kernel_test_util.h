// Shared helpers for the CPU kernel tests: seeded random buffers, central-difference gradients,
// gradient/closeness comparisons that report their worst errors.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace dirmoe::cpu::testing {

inline std::vector<double> randn(int64_t n, uint64_t seed, double stddev = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, stddev);
  std::vector<double> x(n);
  for (auto& e : x) e = dist(rng);
  return x;
}

inline std::vector<double> uniform(int64_t n, uint64_t seed, double lo, double hi) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> x(n);
  for (auto& e : x) e = dist(rng);
  return x;
}

inline std::vector<float> to_float(const std::vector<double>& x) {
  return std::vector<float>(x.begin(), x.end());
}

// Values that float holds exactly, so float and double runs see the same inputs.
inline std::vector<double> to_float_and_back(const std::vector<double>& x) {
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = double(float(x[i]));
  return y;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// dL/dx by central differences; loss() reads x (perturbed in place, restored afterwards).
inline std::vector<double> numeric_grad(std::vector<double>& x, const std::function<double()>& loss,
                                        double h = 1e-5) {
  std::vector<double> g(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const double x0 = x[i];
    x[i] = x0 + h;
    const double lp = loss();
    x[i] = x0 - h;
    const double lm = loss();
    x[i] = x0;
    g[i] = (lp - lm) / (2.0 * h);
  }
  return g;
}

struct GradError {
  double normwise = 0.0;       // ||num - ana|| / max(||num|| + ||ana||, 1e-8)
  double worst = 0.0;          // max_i |num-ana| / max(|num|+|ana|, 1e-8)
  double worst_floored = 0.0;  // same with the floor raised to 1e-3 * max_i(|num|+|ana|)
};

inline GradError grad_error(const std::vector<double>& num, const std::vector<double>& ana) {
  GradError e;
  double dn = 0.0, nn = 0.0, na = 0.0, scale = 0.0;
  for (size_t i = 0; i < num.size(); ++i) {
    dn += (num[i] - ana[i]) * (num[i] - ana[i]);
    nn += num[i] * num[i];
    na += ana[i] * ana[i];
    scale = std::max(scale, std::abs(num[i]) + std::abs(ana[i]));
  }
  e.normwise = std::sqrt(dn) / std::max(std::sqrt(nn) + std::sqrt(na), 1e-8);
  for (size_t i = 0; i < num.size(); ++i) {
    const double d = std::abs(num[i] - ana[i]);
    const double s = std::abs(num[i]) + std::abs(ana[i]);
    e.worst = std::max(e.worst, d / std::max(s, 1e-8));
    e.worst_floored = std::max(e.worst_floored, d / std::max(s, std::max(1e-3 * scale, 1e-8)));
  }
  return e;
}

// Asserts the norm-wise and the (floored) element-wise relative errors are within tol, and prints
// all three figures so the suite log records how close each check came.
inline void expect_grad_close(const std::string& name, const std::vector<double>& num,
                              const std::vector<double>& ana, double tol = 1e-6) {
  ASSERT_EQ(num.size(), ana.size()) << name;
  double scale = 0.0;
  for (size_t i = 0; i < num.size(); ++i) scale = std::max(scale, std::abs(num[i]));
  EXPECT_GT(scale, 0.0) << name << ": gradient is identically zero, the check proves nothing";
  const GradError e = grad_error(num, ana);
  std::printf("[ gradchk ] %-40s normwise %.2e  worst elem %.2e  worst elem (floored) %.2e\n",
              name.c_str(), e.normwise, e.worst, e.worst_floored);
  EXPECT_LE(e.normwise, tol) << name;
  EXPECT_LE(e.worst_floored, tol) << name;
}

// Float result against the double result: |got - ref| <= rtol * (|ref| + max|ref|) elementwise.
template <class A>
void expect_close_to_double(const std::string& name, const std::vector<A>& got,
                            const std::vector<double>& ref, double rtol = 1e-5) {
  ASSERT_EQ(got.size(), ref.size()) << name;
  double scale = 0.0;
  for (double r : ref) scale = std::max(scale, std::abs(r));
  double worst = 0.0;
  int64_t bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = std::abs(double(got[i]) - ref[i]);
    worst = std::max(worst, d / std::max(std::abs(ref[i]) + scale, 1e-30));
    if (d > rtol * (std::abs(ref[i]) + scale)) ++bad;
  }
  std::printf("[ f32-f64 ] %-40s worst rel %.2e\n", name.c_str(), worst);
  EXPECT_EQ(bad, 0) << name << ": " << bad << " of " << ref.size()
                    << " elements outside tolerance, worst rel " << worst;
}

}  // namespace dirmoe::cpu::testing
