// Shared helpers of the router tests: error expectation, random vectors, Richardson-extrapolated
// central differences and the gradient error measures (element-wise and norm-wise).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "runtime/core/error.h"

namespace dirmoe::test {

template <class F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected a dirmoe::Error mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos)
        << "message '" << e.what() << "' does not mention '" << needle << "'";
  }
}

inline std::vector<double> randn(size_t n, uint32_t seed, double scale = 1.0) {
  std::mt19937_64 gen(seed);
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<double> v(n);
  for (double& x : v) x = dist(gen);
  return v;
}

// Richardson-extrapolated central difference of f at x[i]: (4 D(h/2) - D(h)) / 3, error O(h^4).
inline double richardson(const std::function<double()>& f, double& x, double h) {
  const double x0 = x;
  auto central = [&](double s) {
    x = x0 + s;
    const double fp = f();
    x = x0 - s;
    const double fm = f();
    x = x0;
    return (fp - fm) / (2 * s);
  };
  return (4 * central(h / 2) - central(h)) / 3;
}

struct GradError {
  double elementwise = 0;  // max |num - ana| / max(|num| + |ana|, 1e-3 max|ana|)
  double normwise = 0;     // |num - ana|_2 / |num|_2
};

inline GradError grad_error(const std::vector<double>& num, const std::vector<double>& ana) {
  double scale = 0, diff2 = 0, norm2 = 0;
  for (double a : ana) scale = std::max(scale, std::abs(a));
  GradError e;
  for (size_t i = 0; i < num.size(); ++i) {
    const double den = std::max({std::abs(num[i]) + std::abs(ana[i]), 1e-3 * scale, 1e-300});
    e.elementwise = std::max(e.elementwise, std::abs(num[i] - ana[i]) / den);
    diff2 += (num[i] - ana[i]) * (num[i] - ana[i]);
    norm2 += num[i] * num[i];
  }
  e.normwise = norm2 > 0 ? std::sqrt(diff2 / norm2) : std::sqrt(diff2);
  return e;
}

// Rows of a CSV file with a header line; fields as strings.
inline std::vector<std::vector<std::string>> read_csv(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << "cannot read " << path;
  std::vector<std::vector<std::string>> rows;
  std::string line;
  std::getline(in, line);
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::vector<std::string> f;
    std::stringstream ss(line);
    for (std::string x; std::getline(ss, x, ',');) f.push_back(x);
    rows.push_back(f);
  }
  return rows;
}

inline std::vector<double> parse_vector(const std::string& s) {
  std::stringstream ss(s);
  std::vector<double> v;
  for (double x; ss >> x;) v.push_back(x);
  return v;
}

inline std::string data_path(const std::string& name) {
  return std::string(DIRMOE_ROUTER_TEST_DATA) + "/" + name;
}

// Kolmogorov distribution tail P(K > lambda).
inline double kolmogorov_tail(double lambda) {
  if (lambda < 0.2) return 1.0;
  double s = 0;
  for (int k = 1; k <= 100; ++k)
    s += 2 * ((k % 2) ? 1 : -1) * std::exp(-2.0 * k * k * lambda * lambda);
  return std::clamp(s, 0.0, 1.0);
}

}  // namespace dirmoe::test
