// CUDA embedding, RMSNorm, RoPE and SwiGLU against the CPU reference (kernels/cpu in double) over
// named shape grids, f32 and bf16; outputs sentinel-guarded.
#include <gtest/gtest.h>

#include <climits>
#include <tuple>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/api.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace dirmoe::cuda::testing {
namespace {

template <class Case>
std::string case_name(const ::testing::TestParamInfo<std::tuple<Case, bool>>& info) {
  return param_name(std::get<0>(info.param).name) + (std::get<1>(info.param) ? "_bf16" : "_f32");
}

template <class Case>
std::string label(const Case& c, const char* op, const char* dt) {
  return std::string(op) + "/" + c.name + "/" + dt;
}

// ---- embedding ---------------------------------------------------------------------------------
struct EmbeddingCase {
  const char* name;
  int64_t N, d, V;
};
const EmbeddingCase kEmbeddingCases[] = {
    {"one_token", 1, 8, 4},
    {"odd_width", 37, 19, 11},
    {"repeats_small_vocab", 500, 64, 7},
    {"lm_768", 2048, 768, 5000},
};

template <class T>
void run_embedding(const EmbeddingCase& c) {
  const char* dt = dtype_label<T>();
  const auto table = representable<T>(randn(c.V * c.d, 1));
  std::mt19937_64 rng(2);
  std::vector<int32_t> tokens(c.N);
  for (auto& t : tokens) t = static_cast<int32_t>(rng() % c.V);
  std::vector<double> ref(c.N * c.d);
  cpu::embedding_forward(ref.data(), tokens.data(), table.data(), c.N, c.d, c.V);

  auto d_table = to_device_as<T>(table);
  auto d_tokens = to_device(tokens);
  Guarded<T> out(c.N * c.d);
  embedding_forward<T>(out.data(), d_tokens.data(), d_table.data(), c.N, c.d, c.V, nullptr,
                       nullptr);
  expect_exact(label(c, "embedding_fwd", dt), out.doubles(), ref);
  expect_guard("embedding_fwd", out);

  const auto dout = representable<T>(randn(c.N * c.d, 3));
  const auto dtable0 = randn(c.V * c.d, 4);
  std::vector<double> dref = to_doubles(convert_to<float>(dtable0));
  cpu::embedding_backward(dref.data(), tokens.data(), dout.data(), c.N, c.d);
  auto d_dout = to_device_as<T>(dout);
  Guarded<float> dtable(c.V * c.d);
  dtable.set(convert_to<float>(dtable0));
  embedding_backward<T>(dtable.data(), d_tokens.data(), d_dout.data(), c.N, c.d, c.V, nullptr);
  expect_close(label(c, "embedding_bwd(dtable+=)", dt), dtable.doubles(), dref,
               kF32Tol[static_cast<int>(Op::kRmsNorm)]);
  expect_guard("embedding_bwd", dtable);
}

class EmbeddingCuda : public ::testing::TestWithParam<std::tuple<EmbeddingCase, bool>> {};
TEST_P(EmbeddingCuda, MatchesCpu) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const auto& [c, bf] = GetParam();
  bf ? run_embedding<bf16>(c) : run_embedding<float>(c);
}
INSTANTIATE_TEST_SUITE_P(Grid, EmbeddingCuda,
                         ::testing::Combine(::testing::ValuesIn(kEmbeddingCases),
                                            ::testing::Bool()),
                         case_name<EmbeddingCase>);

TEST(EmbeddingCudaEdge, BadTokenGivesZeroRowAndReportsFirstPosition) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const int64_t N = 6, d = 8, V = 5;
  std::vector<int32_t> tokens = {0, 4, 7, 1, -2, 2};
  auto d_tokens = to_device(tokens);
  auto d_table = to_device_as<float>(randn(V * d, 5));
  auto d_bad = to_device(std::vector<int64_t>{INT64_MAX});
  Guarded<float> out(N * d);
  embedding_forward<float>(out.data(), d_tokens.data(), d_table.data(), N, d, V, d_bad.data(),
                           nullptr);
  const auto got = out.values();
  for (int64_t j = 0; j < d; ++j) {
    EXPECT_EQ(got[2 * d + j], 0.f);
    EXPECT_EQ(got[4 * d + j], 0.f);
  }
  EXPECT_EQ(d_bad.download()[0], 2);
}

// ---- RMSNorm -----------------------------------------------------------------------------------
struct NormCase {
  const char* name;
  int64_t N, d;
};
const NormCase kNormCases[] = {
    {"one_row", 1, 8},        {"odd_width", 33, 37},   {"rows_not_multiple_of_chunk", 70, 256},
    {"model_768", 4096, 768}, {"wide_4096", 16, 4096},
};

template <class T>
void run_rmsnorm(const NormCase& c) {
  const char* dt = dtype_label<T>();
  const Tol tol = tolerance<T>(Op::kRmsNorm);
  const double eps = 1e-5;
  const auto x = representable<T>(randn(c.N * c.d, 10));
  const auto w = to_doubles(convert_to<float>(uniform(c.d, 11, 0.5, 1.5)));
  std::vector<double> out_ref(c.N * c.d), rstd_ref(c.N);
  cpu::rmsnorm_forward(out_ref.data(), rstd_ref.data(), x.data(), w.data(), c.N, c.d, eps);

  auto d_x = to_device_as<T>(x);
  auto d_w = to_device_as<float>(w);
  Guarded<T> out(c.N * c.d);
  Guarded<float> rstd(c.N);
  rmsnorm_forward<T>(out.data(), rstd.data(), d_x.data(), d_w.data(), c.N, c.d, float(eps),
                     nullptr);
  expect_close(label(c, "rmsnorm_fwd(out)", dt), out.doubles(), out_ref, tol);
  expect_close(label(c, "rmsnorm_fwd(rstd)", dt), rstd.doubles(), rstd_ref,
               kF32Tol[static_cast<int>(Op::kRmsNorm)]);
  expect_guard("rmsnorm out", out);
  expect_guard("rmsnorm rstd", rstd);

  // Backward uses the reference rstd (rounded to fp32) so both sides see identical inputs.
  const auto rstd_f = to_doubles(convert_to<float>(rstd_ref));
  const auto dout = representable<T>(randn(c.N * c.d, 12));
  const auto dx0 = representable<T>(randn(c.N * c.d, 13));
  const auto dw0 = to_doubles(convert_to<float>(randn(c.d, 14)));
  for (bool accumulate : {false, true}) {
    std::vector<double> dx_ref = dx0, dw_ref = dw0;
    cpu::rmsnorm_backward(dx_ref.data(), dw_ref.data(), dout.data(), x.data(), w.data(),
                          rstd_f.data(), c.N, c.d, accumulate);
    auto d_dout = to_device_as<T>(dout);
    auto d_rstd = to_device_as<float>(rstd_f);
    Guarded<T> dx(c.N * c.d);
    Guarded<float> dw(c.d);
    if (accumulate) dx.set(convert_to<T>(dx0));
    dw.set(convert_to<float>(dw0));
    DeviceBuffer<float> scratch(static_cast<int64_t>(rmsnorm_backward_scratch_floats(c.N, c.d)));
    rmsnorm_backward<T>(dx.data(), dw.data(), d_dout.data(), d_x.data(), d_w.data(), d_rstd.data(),
                        c.N, c.d, accumulate, scratch.data(), nullptr);
    const std::string tag = accumulate ? "(dx+=)" : "(dx=)";
    expect_close(label(c, ("rmsnorm_bwd" + tag).c_str(), dt), dx.doubles(), dx_ref, tol);
    // dw sums N products: its tolerance scales with sqrt(N) of the per-element one.
    const Tol tol_dw{tol.atol * std::sqrt(double(c.N)), tol.rtol};
    expect_close(label(c, ("rmsnorm_bwd" + tag + "(dw+=)").c_str(), dt), dw.doubles(), dw_ref,
                 tol_dw);
    expect_guard("rmsnorm dx", dx);
    expect_guard("rmsnorm dw", dw);
  }
}

class RmsNormCuda : public ::testing::TestWithParam<std::tuple<NormCase, bool>> {};
TEST_P(RmsNormCuda, MatchesCpu) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const auto& [c, bf] = GetParam();
  bf ? run_rmsnorm<bf16>(c) : run_rmsnorm<float>(c);
}
INSTANTIATE_TEST_SUITE_P(Grid, RmsNormCuda,
                         ::testing::Combine(::testing::ValuesIn(kNormCases), ::testing::Bool()),
                         case_name<NormCase>);

TEST(RmsNormCudaEdge, BackwardIsDeterministic) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const int64_t N = 1000, d = 512;
  auto d_x = to_device_as<float>(randn(N * d, 20));
  auto d_g = to_device_as<float>(randn(N * d, 21));
  auto d_w = to_device_as<float>(uniform(d, 22, 0.5, 1.5));
  auto d_r = to_device_as<float>(uniform(N, 23, 0.5, 1.5));
  DeviceBuffer<float> scratch(static_cast<int64_t>(rmsnorm_backward_scratch_floats(N, d)));
  std::vector<float> first;
  for (int rep = 0; rep < 3; ++rep) {
    DeviceBuffer<float> dx(N * d), dw(d);
    dw.fill_bytes(0);
    rmsnorm_backward<float>(dx.data(), dw.data(), d_g.data(), d_x.data(), d_w.data(), d_r.data(), N,
                            d, false, scratch.data(), nullptr);
    const auto got = dw.download();
    if (rep == 0) first = got;
    EXPECT_EQ(std::memcmp(first.data(), got.data(), d * sizeof(float)), 0) << "rep " << rep;
  }
}

// ---- RoPE --------------------------------------------------------------------------------------
struct RopeCase {
  const char* name;
  int64_t B, S, H, hd;
  int64_t pad;  // extra elements per (b, s) row: the heads sit inside a wider (fused) row
};
const RopeCase kRopeCases[] = {
    {"small", 1, 5, 2, 8, 0},
    {"odd_seq", 2, 37, 3, 64, 0},
    {"model_hd64", 2, 256, 12, 64, 0},
    {"hd128_fused_row", 1, 129, 4, 128, 3 * 128},
};

template <class T>
void run_rope(const RopeCase& c) {
  const char* dt = dtype_label<T>();
  const Tol tol = tolerance<T>(Op::kRope);
  const double base = 10000.0;
  const int64_t row = c.H * c.hd + c.pad, half = c.hd / 2;
  DeviceBuffer<float> cos_t(c.S * half), sin_t(c.S * half);
  rope_table(cos_t.data(), sin_t.data(), c.S, c.hd, base, nullptr);
  std::vector<double> cos_ref(c.S * half), sin_ref(c.S * half);
  for (int64_t s = 0; s < c.S; ++s)
    for (int64_t i = 0; i < half; ++i) {
      const double a = double(s) * std::pow(base, -2.0 * double(i) / double(c.hd));
      cos_ref[s * half + i] = double(float(std::cos(a)));
      sin_ref[s * half + i] = double(float(std::sin(a)));
    }
  expect_close(label(c, "rope_table(cos)", dt), to_doubles(cos_t.download()), cos_ref,
               {1e-7, 1e-6});
  expect_close(label(c, "rope_table(sin)", dt), to_doubles(sin_t.download()), sin_ref,
               {1e-7, 1e-6});

  const auto xfull = representable<T>(randn(c.B * c.S * row, 30));
  std::vector<double> heads(c.B * c.S * c.H * c.hd);  // (B, S, H, hd) view of the fused rows
  for (int64_t r = 0; r < c.B * c.S; ++r)
    std::copy_n(xfull.begin() + r * row, c.H * c.hd, heads.begin() + r * c.H * c.hd);
  for (bool backward : {false, true}) {
    std::vector<double> ref = heads;
    if (backward) {
      cpu::rope_backward(ref.data(), c.B, c.S, c.H, c.hd, base);
    } else {
      cpu::rope_forward(ref.data(), c.B, c.S, c.H, c.hd, base);
    }
    Guarded<T> x(c.B * c.S * row);
    x.set(convert_to<T>(xfull));
    if (backward) {
      rope_backward<T>(x.data(), cos_t.data(), sin_t.data(), c.B, c.S, c.H, c.hd, row, nullptr);
    } else {
      rope_forward<T>(x.data(), cos_t.data(), sin_t.data(), c.B, c.S, c.H, c.hd, row, nullptr);
    }
    const auto got = x.doubles();
    std::vector<double> got_heads(heads.size()), got_pad, want_pad;
    for (int64_t r = 0; r < c.B * c.S; ++r) {
      std::copy_n(got.begin() + r * row, c.H * c.hd, got_heads.begin() + r * c.H * c.hd);
      got_pad.insert(got_pad.end(), got.begin() + r * row + c.H * c.hd,
                     got.begin() + (r + 1) * row);
      want_pad.insert(want_pad.end(), xfull.begin() + r * row + c.H * c.hd,
                      xfull.begin() + (r + 1) * row);
    }
    expect_close(label(c, backward ? "rope_bwd" : "rope_fwd", dt), got_heads, ref, tol);
    expect_exact(label(c, backward ? "rope_bwd(untouched_pad)" : "rope_fwd(untouched_pad)", dt),
                 got_pad, want_pad);
    expect_guard("rope", x);
  }
}

class RopeCuda : public ::testing::TestWithParam<std::tuple<RopeCase, bool>> {};
TEST_P(RopeCuda, MatchesCpu) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const auto& [c, bf] = GetParam();
  bf ? run_rope<bf16>(c) : run_rope<float>(c);
}
INSTANTIATE_TEST_SUITE_P(Grid, RopeCuda,
                         ::testing::Combine(::testing::ValuesIn(kRopeCases), ::testing::Bool()),
                         case_name<RopeCase>);

// ---- SwiGLU ------------------------------------------------------------------------------------
struct SwigluCase {
  const char* name;
  int64_t n;
  int64_t offset;  // elements: a nonzero offset misaligns the pointers (scalar path)
};
const SwigluCase kSwigluCases[] = {
    {"one", 1, 0},
    {"odd", 1001, 0},
    {"vector_path", 4096 * 8, 0},
    {"misaligned", 4096, 1},
};

template <class T>
void run_swiglu(const SwigluCase& c) {
  const char* dt = dtype_label<T>();
  const Tol tol = tolerance<T>(Op::kSwiglu);
  const auto gate = representable<T>(randn(c.n, 40, 3.0));
  const auto up = representable<T>(randn(c.n, 41));
  const auto dout = representable<T>(randn(c.n, 42));
  std::vector<double> out_ref(c.n), dg_ref(c.n), du_ref(c.n);
  cpu::swiglu_forward(out_ref.data(), gate.data(), up.data(), c.n);
  cpu::swiglu_backward(dg_ref.data(), du_ref.data(), dout.data(), gate.data(), up.data(), c.n);

  auto pad = [&](const std::vector<double>& v) {
    std::vector<double> p(c.offset, 0.0);
    p.insert(p.end(), v.begin(), v.end());
    return to_device_as<T>(p);
  };
  auto d_gate = pad(gate), d_up = pad(up), d_dout = pad(dout);
  const int64_t o = c.offset;
  Guarded<T> out(c.n + o), dg(c.n + o), du(c.n + o);
  swiglu_forward<T>(out.data() + o, d_gate.data() + o, d_up.data() + o, c.n, nullptr);
  swiglu_backward<T>(dg.data() + o, du.data() + o, d_dout.data() + o, d_gate.data() + o,
                     d_up.data() + o, c.n, nullptr);
  auto tail = [&](const Guarded<T>& g) {
    auto v = g.doubles();
    return std::vector<double>(v.begin() + o, v.end());
  };
  expect_close(label(c, "swiglu_fwd", dt), tail(out), out_ref, tol);
  expect_close(label(c, "swiglu_bwd(dgate)", dt), tail(dg), dg_ref, tol);
  expect_close(label(c, "swiglu_bwd(dup)", dt), tail(du), du_ref, tol);
  expect_guard("swiglu out", out);
  expect_guard("swiglu dgate", dg);
  expect_guard("swiglu dup", du);
}

class SwigluCuda : public ::testing::TestWithParam<std::tuple<SwigluCase, bool>> {};
TEST_P(SwigluCuda, MatchesCpu) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const auto& [c, bf] = GetParam();
  bf ? run_swiglu<bf16>(c) : run_swiglu<float>(c);
}
INSTANTIATE_TEST_SUITE_P(Grid, SwigluCuda,
                         ::testing::Combine(::testing::ValuesIn(kSwigluCases), ::testing::Bool()),
                         case_name<SwigluCase>);

}  // namespace
}  // namespace dirmoe::cuda::testing
