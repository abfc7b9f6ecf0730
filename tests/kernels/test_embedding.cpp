// Embedding: exact row copies, scatter-add backward by finite differences, bad ids rejected.
#include <string>

#include "kernels/cpu/ops.h"
#include "runtime/core/error.h"
#include "tests/kernels/kernel_test_util.h"

namespace dirmoe::cpu::testing {
namespace {

TEST(Embedding, ForwardCopiesRows) {
  const int64_t V = 9, d = 4, N = 5;
  const std::vector<int32_t> tokens = {8, 0, 3, 3, 5};
  const std::vector<double> table = randn(V * d, 11);
  std::vector<double> out(N * d);
  embedding_forward(out.data(), tokens.data(), table.data(), N, d, V);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t j = 0; j < d; ++j) EXPECT_EQ(out[n * d + j], table[tokens[n] * d + j]);
  }
}

TEST(Embedding, BackwardMatchesFiniteDifferences) {
  const int64_t V = 7, d = 5, N = 6;
  const std::vector<int32_t> tokens = {3, 1, 3, 6, 0, 3};  // repeats exercise accumulation
  std::vector<double> table = randn(V * d, 12);
  const std::vector<double> R = randn(N * d, 13);
  std::vector<double> out(N * d);
  auto loss = [&] {
    embedding_forward(out.data(), tokens.data(), table.data(), N, d, V);
    return dot(out, R);
  };
  const std::vector<double> num = numeric_grad(table, loss);
  const std::vector<double> base = randn(V * d, 14);
  std::vector<double> dtable = base;
  embedding_backward(dtable.data(), tokens.data(), R.data(), N, d);
  for (int64_t i = 0; i < V * d; ++i) dtable[i] -= base[i];
  expect_grad_close("embedding dtable", num, dtable);
  for (int64_t j = 0; j < d; ++j) EXPECT_EQ(dtable[2 * d + j], 0.0);  // token 2 unused
}

TEST(Embedding, OutOfRangeIdThrowsNamingTheId) {
  const int64_t V = 50, d = 3;
  const std::vector<double> table(V * d, 1.0);
  std::vector<double> out(3 * d);
  for (int32_t bad : {1234, 50, -5}) {
    const std::vector<int32_t> tokens = {1, 2, bad};
    try {
      embedding_forward(out.data(), tokens.data(), table.data(), 3, d, V);
      FAIL() << "no throw for id " << bad;
    } catch (const Error& e) {
      const std::string w = e.what();
      EXPECT_NE(w.find("token id " + std::to_string(bad)), std::string::npos) << w;
      EXPECT_NE(w.find("position 2"), std::string::npos) << w;
    }
  }
}

TEST(Embedding, FloatMatchesDouble) {
  const int64_t V = 11, d = 6, N = 8;
  const std::vector<int32_t> tokens = {10, 0, 4, 4, 7, 1, 10, 2};
  const std::vector<double> table = randn(V * d, 15);
  const std::vector<double> dout = randn(N * d, 16);
  std::vector<double> out(N * d), dtable(V * d, 0.0);
  embedding_forward(out.data(), tokens.data(), table.data(), N, d, V);
  embedding_backward(dtable.data(), tokens.data(), dout.data(), N, d);
  const std::vector<float> table_f = to_float(table), dout_f = to_float(dout);
  std::vector<float> out_f(N * d), dtable_f(V * d, 0.0f);
  embedding_forward(out_f.data(), tokens.data(), table_f.data(), N, d, V);
  embedding_backward(dtable_f.data(), tokens.data(), dout_f.data(), N, d);
  expect_close_to_double("embedding out", out_f, out);
  expect_close_to_double("embedding dtable", dtable_f, dtable);
}

}  // namespace
}  // namespace dirmoe::cpu::testing
