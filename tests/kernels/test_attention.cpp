// Causal GQA attention: forward against a naive full-matrix reference with an explicit mask,
// dq/dk/dv by finite differences (GQA, MHA, MQA, S = 1), float vs double, bad head counts.
#include <cmath>
#include <limits>
#include <string>

#include "kernels/cpu/ops.h"
#include "runtime/core/error.h"
#include "tests/kernels/kernel_test_util.h"

namespace dirmoe::cpu::testing {
namespace {

struct Shape {
  int64_t B, S, Hq, Hkv, hd;
  int64_t q_size() const { return B * S * Hq * hd; }
  int64_t kv_size() const { return B * S * Hkv * hd; }
};

// Full (S, S) score matrix per (b, h), -inf above the diagonal, softmax, then P V.
void ref_attention(std::vector<double>& out, std::vector<double>& lse, const std::vector<double>& q,
                   const std::vector<double>& k, const std::vector<double>& v, const Shape& sh) {
  const auto [B, S, Hq, Hkv, hd] = sh;
  const double inf = std::numeric_limits<double>::infinity();
  out.assign(sh.q_size(), 0.0);
  lse.assign(B * Hq * S, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t h = 0; h < Hq; ++h) {
      const int64_t hk = h * Hkv / Hq;
      std::vector<std::vector<double>> score(S, std::vector<double>(S));
      for (int64_t s = 0; s < S; ++s) {
        for (int64_t t = 0; t < S; ++t) {
          double a = 0.0;
          for (int64_t j = 0; j < hd; ++j) {
            a += q[((b * S + s) * Hq + h) * hd + j] * k[((b * S + t) * Hkv + hk) * hd + j];
          }
          score[s][t] = t <= s ? a / std::sqrt(double(hd)) : -inf;
        }
      }
      for (int64_t s = 0; s < S; ++s) {
        double m = -inf;
        for (int64_t t = 0; t < S; ++t) m = std::max(m, score[s][t]);
        double z = 0.0;
        for (int64_t t = 0; t < S; ++t) z += std::exp(score[s][t] - m);
        lse[(b * Hq + h) * S + s] = m + std::log(z);
        for (int64_t t = 0; t < S; ++t) {
          const double p = std::exp(score[s][t] - m) / z;
          for (int64_t j = 0; j < hd; ++j) {
            out[((b * S + s) * Hq + h) * hd + j] += p * v[((b * S + t) * Hkv + hk) * hd + j];
          }
        }
      }
    }
  }
}

TEST(Attention, ForwardMatchesNaiveReference) {
  for (const Shape sh :
       {Shape{2, 7, 4, 2, 8}, Shape{1, 9, 3, 3, 4}, Shape{2, 5, 4, 1, 6}, Shape{1, 1, 2, 1, 4}}) {
    const std::vector<double> q = randn(sh.q_size(), 41), k = randn(sh.kv_size(), 42),
                              v = randn(sh.kv_size(), 43);
    std::vector<double> out(sh.q_size()), lse(sh.B * sh.Hq * sh.S), ref_out, ref_lse;
    attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), sh.B, sh.S, sh.Hq,
                      sh.Hkv, sh.hd);
    ref_attention(ref_out, ref_lse, q, k, v, sh);
    for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], ref_out[i], 1e-12) << i;
    for (size_t i = 0; i < lse.size(); ++i) EXPECT_NEAR(lse[i], ref_lse[i], 1e-12) << i;
  }
}

TEST(Attention, FirstTokenAttendsOnlyToItself) {
  const Shape sh{2, 4, 4, 2, 8};
  const std::vector<double> q = randn(sh.q_size(), 44), k = randn(sh.kv_size(), 45),
                            v = randn(sh.kv_size(), 46);
  std::vector<double> out(sh.q_size()), lse(sh.B * sh.Hq * sh.S);
  attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), sh.B, sh.S, sh.Hq, sh.Hkv,
                    sh.hd);
  for (int64_t b = 0; b < sh.B; ++b) {
    for (int64_t h = 0; h < sh.Hq; ++h) {
      const int64_t hk = h / (sh.Hq / sh.Hkv);
      for (int64_t j = 0; j < sh.hd; ++j) {
        EXPECT_NEAR(out[((b * sh.S) * sh.Hq + h) * sh.hd + j],
                    v[((b * sh.S) * sh.Hkv + hk) * sh.hd + j], 1e-15);
      }
    }
  }
}

void check_gradients(const Shape& sh, const std::string& name) {
  std::vector<double> q = randn(sh.q_size(), 51), k = randn(sh.kv_size(), 52),
                      v = randn(sh.kv_size(), 53);
  const std::vector<double> R = randn(sh.q_size(), 54);
  std::vector<double> out(sh.q_size()), lse(sh.B * sh.Hq * sh.S);
  auto loss = [&] {
    attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), sh.B, sh.S, sh.Hq,
                      sh.Hkv, sh.hd);
    return dot(out, R);
  };
  const std::vector<double> num_q = numeric_grad(q, loss), num_k = numeric_grad(k, loss),
                            num_v = numeric_grad(v, loss);
  loss();
  std::vector<double> dq(sh.q_size(), 9.0), dk(sh.kv_size(), 9.0), dv(sh.kv_size(), 9.0);
  attention_backward(dq.data(), dk.data(), dv.data(), R.data(), q.data(), k.data(), v.data(),
                     out.data(), lse.data(), sh.B, sh.S, sh.Hq, sh.Hkv, sh.hd);
  if (sh.S == 1) {
    // One key per query: the softmax is identically 1, so dq = dk = 0 up to rounding.
    for (size_t i = 0; i < dq.size(); ++i) {
      EXPECT_LE(std::abs(dq[i]), 1e-12) << i;
      EXPECT_LE(std::abs(num_q[i]), 1e-9) << i;
    }
    for (size_t i = 0; i < dk.size(); ++i) {
      EXPECT_LE(std::abs(dk[i]), 1e-12) << i;
      EXPECT_LE(std::abs(num_k[i]), 1e-9) << i;
    }
  } else {
    expect_grad_close("attention " + name + " dq", num_q, dq);
    expect_grad_close("attention " + name + " dk", num_k, dk);
  }
  expect_grad_close("attention " + name + " dv", num_v, dv);
}

TEST(Attention, BackwardGqaMatchesFiniteDifferences) {
  check_gradients({2, 6, 4, 2, 8}, "GQA 4/2");
}
TEST(Attention, BackwardMhaMatchesFiniteDifferences) {
  check_gradients({2, 5, 3, 3, 4}, "MHA 3/3");
}
TEST(Attention, BackwardMqaMatchesFiniteDifferences) {
  check_gradients({1, 5, 4, 1, 4}, "MQA 4/1");
}
TEST(Attention, BackwardSingleTokenMatchesFiniteDifferences) {
  check_gradients({3, 1, 4, 2, 8}, "S=1 4/2");
}

TEST(Attention, FloatMatchesDouble) {
  const Shape sh{2, 128, 4, 2, 32};
  const std::vector<double> q = randn(sh.q_size(), 61), k = randn(sh.kv_size(), 62),
                            v = randn(sh.kv_size(), 63), dout = randn(sh.q_size(), 64);
  std::vector<double> out(sh.q_size()), lse(sh.B * sh.Hq * sh.S), dq(sh.q_size()), dk(sh.kv_size()),
      dv(sh.kv_size());
  attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), sh.B, sh.S, sh.Hq, sh.Hkv,
                    sh.hd);
  attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(),
                     out.data(), lse.data(), sh.B, sh.S, sh.Hq, sh.Hkv, sh.hd);
  const std::vector<float> qf = to_float(q), kf = to_float(k), vf = to_float(v),
                           doutf = to_float(dout);
  std::vector<float> outf(sh.q_size()), lsef(lse.size()), dqf(sh.q_size()), dkf(sh.kv_size()),
      dvf(sh.kv_size());
  attention_forward(outf.data(), lsef.data(), qf.data(), kf.data(), vf.data(), sh.B, sh.S, sh.Hq,
                    sh.Hkv, sh.hd);
  attention_backward(dqf.data(), dkf.data(), dvf.data(), doutf.data(), qf.data(), kf.data(),
                     vf.data(), outf.data(), lsef.data(), sh.B, sh.S, sh.Hq, sh.Hkv, sh.hd);
  expect_close_to_double("attention out", outf, out);
  expect_close_to_double("attention lse", lsef, lse);
  expect_close_to_double("attention dq", dqf, dq);
  expect_close_to_double("attention dk", dkf, dk);
  expect_close_to_double("attention dv", dvf, dv);
}

TEST(Attention, RejectsHeadCountsThatDoNotDivide) {
  std::vector<double> buf(1024, 0.0);
  try {
    attention_forward(buf.data(), buf.data(), buf.data(), buf.data(), buf.data(), 1, 2, 4, 3, 4);
    FAIL() << "no throw";
  } catch (const Error& e) {
    const std::string w = e.what();
    EXPECT_NE(w.find("(4)"), std::string::npos) << w;
    EXPECT_NE(w.find("(3)"), std::string::npos) << w;
  }
}

}  // namespace
}  // namespace dirmoe::cpu::testing
