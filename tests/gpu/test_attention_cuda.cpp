// CUDA flash-style attention (forward: out + logsumexp; backward: dq, dk, dv) against the CPU
// reference in double over a named (B, S, Hq, Hkv, hd) grid that includes S not a multiple of the
// 64-row tile, GQA and MQA, and every supported head dim (bf16 at 64/128: the tensor-core path).
#include <gtest/gtest.h>

#include <tuple>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/api.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace dirmoe::cuda::testing {
namespace {

struct AttentionCase {
  const char* name;
  int64_t B, S, Hq, Hkv, hd;
};
const AttentionCase kAttentionCases[] = {
    {"single_token", 1, 1, 1, 1, 32},
    {"one_full_tile_mha", 1, 64, 2, 2, 64},
    {"gqa_s67", 2, 67, 4, 2, 64},
    {"hd32_s130", 2, 130, 2, 2, 32},
    {"hd96_s100_gqa3", 1, 100, 3, 1, 96},
    {"hd128_s200_mqa", 1, 200, 4, 1, 128},
    {"mqa_s257", 1, 257, 8, 1, 64},
    {"model_b2_s512_gqa", 2, 512, 12, 4, 64},
    // bf16 at head dims 64 and 128 runs the tensor-core kernels: whole and partial 64-row tiles
    // (S = 5 leaves three of the four warps past the end), B > 1, groups of 1 and 3.
    {"hd64_s5_gqa3", 1, 5, 3, 1, 64},
    {"hd64_b2_s128_mha", 2, 128, 2, 2, 64},
    {"hd64_b3_s200_gqa3", 3, 200, 6, 2, 64},
    {"hd128_b2_s128_gqa3", 2, 128, 6, 2, 128},
    {"hd128_b2_s130_mha", 2, 130, 2, 2, 128},
};

template <class T>
void run_attention(const AttentionCase& c) {
  const char* dt = dtype_label<T>();
  const Tol tol = tolerance<T>(Op::kAttention);
  const int64_t nq = c.B * c.S * c.Hq * c.hd, nk = c.B * c.S * c.Hkv * c.hd;
  const int64_t nl = c.B * c.Hq * c.S;
  const auto q = representable<T>(randn(nq, 50));
  const auto k = representable<T>(randn(nk, 51));
  const auto v = representable<T>(randn(nk, 52));
  std::vector<double> out_ref(nq), lse_ref(nl);
  cpu::attention_forward(out_ref.data(), lse_ref.data(), q.data(), k.data(), v.data(), c.B, c.S,
                         c.Hq, c.Hkv, c.hd);

  auto d_q = to_device_as<T>(q), d_k = to_device_as<T>(k), d_v = to_device_as<T>(v);
  Guarded<T> out(nq);
  Guarded<float> lse(nl);
  attention_forward<T>(out.data(), lse.data(), d_q.data(), d_k.data(), d_v.data(), c.B, c.S, c.Hq,
                       c.Hkv, c.hd, nullptr);
  const std::string base = std::string("/") + c.name + "/" + dt;
  expect_close("attention_fwd(out)" + base, out.doubles(), out_ref, tol);
  expect_close("attention_fwd(lse)" + base, lse.doubles(), lse_ref,
               kF32Tol[static_cast<int>(Op::kAttention)]);
  expect_guard("attention out", out);
  expect_guard("attention lse", lse);

  // Backward from the GPU's own forward outputs (as the trainer runs it); the reference uses its
  // own, so the comparison also covers the consistency of out and lse.
  const auto dout = representable<T>(randn(nq, 53));
  std::vector<double> dq_ref(nq), dk_ref(nk), dv_ref(nk);
  cpu::attention_backward(dq_ref.data(), dk_ref.data(), dv_ref.data(), dout.data(), q.data(),
                          k.data(), v.data(), out_ref.data(), lse_ref.data(), c.B, c.S, c.Hq, c.Hkv,
                          c.hd);
  auto d_dout = to_device_as<T>(dout);
  Guarded<T> dq(nq), dk(nk), dv(nk);
  DeviceBuffer<float> scratch(
      static_cast<int64_t>(attention_backward_scratch_floats(c.B, c.S, c.Hq)));
  attention_backward<T>(dq.data(), dk.data(), dv.data(), d_dout.data(), d_q.data(), d_k.data(),
                        d_v.data(), out.data(), lse.data(), c.B, c.S, c.Hq, c.Hkv, c.hd,
                        scratch.data(), nullptr);
  // dk/dv sum over the query heads of a group and over S queries: scale the absolute tolerance.
  const double fan = std::sqrt(double(c.Hq / c.Hkv));
  expect_close("attention_bwd(dq)" + base, dq.doubles(), dq_ref, tol);
  expect_close("attention_bwd(dk)" + base, dk.doubles(), dk_ref, {tol.atol * fan, tol.rtol});
  expect_close("attention_bwd(dv)" + base, dv.doubles(), dv_ref, {tol.atol * fan, tol.rtol});
  expect_guard("attention dq", dq);
  expect_guard("attention dk", dk);
  expect_guard("attention dv", dv);
}

class AttentionCuda : public ::testing::TestWithParam<std::tuple<AttentionCase, bool>> {};
TEST_P(AttentionCuda, MatchesCpu) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const auto& [c, bf] = GetParam();
  bf ? run_attention<bf16>(c) : run_attention<float>(c);
}
INSTANTIATE_TEST_SUITE_P(Grid, AttentionCuda,
                         ::testing::Combine(::testing::ValuesIn(kAttentionCases),
                                            ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<AttentionCase, bool>>& info) {
                           return param_name(std::get<0>(info.param).name) +
                                  (std::get<1>(info.param) ? "_bf16" : "_f32");
                         });

TEST(AttentionCudaEdge, BackwardIsDeterministic) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const int64_t B = 1, S = 300, Hq = 4, Hkv = 2, hd = 64;
  const int64_t nq = B * S * Hq * hd, nk = B * S * Hkv * hd;
  auto q = to_device_as<bf16>(randn(nq, 60)), k = to_device_as<bf16>(randn(nk, 61));
  auto v = to_device_as<bf16>(randn(nk, 62)), g = to_device_as<bf16>(randn(nq, 63));
  DeviceBuffer<bf16> out(nq);
  DeviceBuffer<float> lse(B * Hq * S);
  attention_forward<bf16>(out.data(), lse.data(), q.data(), k.data(), v.data(), B, S, Hq, Hkv, hd,
                          nullptr);
  DeviceBuffer<float> scratch(static_cast<int64_t>(attention_backward_scratch_floats(B, S, Hq)));
  std::vector<bf16> first;
  for (int rep = 0; rep < 3; ++rep) {
    DeviceBuffer<bf16> dq(nq), dk(nk), dv(nk);
    attention_backward<bf16>(dq.data(), dk.data(), dv.data(), g.data(), q.data(), k.data(),
                             v.data(), out.data(), lse.data(), B, S, Hq, Hkv, hd, scratch.data(),
                             nullptr);
    auto all = dq.download();
    auto kk = dk.download();
    all.insert(all.end(), kk.begin(), kk.end());
    if (rep == 0) first = all;
    EXPECT_EQ(std::memcmp(first.data(), all.data(), all.size() * sizeof(bf16)), 0) << "rep " << rep;
  }
}

TEST(AttentionCudaEdge, UnsupportedHeadDimFailsLoudly) {
  DIRMOE_SKIP_WITHOUT_GPU();
  DeviceBuffer<float> buf(4 * 48), lse(4);
  EXPECT_THROW(attention_forward<float>(buf.data(), lse.data(), buf.data(), buf.data(), buf.data(),
                                        1, 4, 1, 1, 48, nullptr),
               Error);
}

}  // namespace
}  // namespace dirmoe::cuda::testing
