// runtime/core: check macros, Philox4x32-10 against the Random123 known-answer vectors, buffers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "runtime/core/dtype.h"
#include "runtime/core/error.h"
#include "runtime/core/philox.h"
#include "runtime/core/tensor.h"

namespace dirmoe {
namespace {

// Sets DIRMOE_DEBUG for one scope (unset when value is null) and restores it.
class ScopedDebugEnv {
 public:
  explicit ScopedDebugEnv(const char* value) {
    if (const char* v = std::getenv("DIRMOE_DEBUG")) saved_ = v, had_ = true;
    if (value)
      ::setenv("DIRMOE_DEBUG", value, 1);
    else
      ::unsetenv("DIRMOE_DEBUG");
  }
  ~ScopedDebugEnv() {
    if (had_)
      ::setenv("DIRMOE_DEBUG", saved_.c_str(), 1);
    else
      ::unsetenv("DIRMOE_DEBUG");
  }

 private:
  std::string saved_;
  bool had_ = false;
};

Error check_error(int n) {
  try {
    DIRMOE_CHECK(n > 0, "n must be positive, got ", n);
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no throw";
  return Error("");
}

TEST(CheckMacros, CheckThrowsTheMessageAloneAndKeepsExpressionAndLocation) {
  ScopedDebugEnv env(nullptr);
  const Error e = check_error(-3);
  EXPECT_EQ(std::string(e.what()), "n must be positive, got -3");
  EXPECT_EQ(e.message(), "n must be positive, got -3");
  EXPECT_EQ(e.expression(), "n > 0");
  EXPECT_NE(e.location().find("test_core.cpp:"), std::string::npos) << e.location();
  ScopedDebugEnv off("0");
  EXPECT_EQ(std::string(check_error(-3).what()), "n must be positive, got -3");
}

TEST(CheckMacros, DebugModeShowsExpressionAndLocation) {
  ScopedDebugEnv env("1");
  const Error e = check_error(-3);
  const std::string w = e.what();
  EXPECT_EQ(w.rfind("check failed: n > 0: n must be positive, got -3 (", 0), 0u) << w;
  EXPECT_NE(w.find("test_core.cpp:"), std::string::npos) << w;
  EXPECT_EQ(e.message(), "n must be positive, got -3");
}

TEST(CheckMacros, DebugVariableIsParsedStrictly) {
  for (const char* ok : {"0", "1", ""}) {
    ScopedDebugEnv env(ok);
    EXPECT_NO_THROW(validate_debug_env()) << ok;
  }
  ScopedDebugEnv env("yes");
  try {
    validate_debug_env();
    FAIL() << "DIRMOE_DEBUG=yes accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "DIRMOE_DEBUG must be 0 or 1, got 'yes'");
  }
}

TEST(CheckMacros, CheckWithoutMessageNamesItsExpression) {
  ScopedDebugEnv env(nullptr);
  try {
    int k = 0;
    DIRMOE_CHECK(k == 1);
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "internal check failed: k == 1");
  }
}

TEST(CheckMacros, PassingCheckDoesNothingAndMacrosAreStatements) {
  int evaluated = 0;
  if (true)
    DIRMOE_CHECK(++evaluated == 1, "once");
  else
    DIRMOE_FAIL("unreachable");
  EXPECT_EQ(evaluated, 1);
}

TEST(CheckMacros, FailCarriesContext) {
  ScopedDebugEnv env(nullptr);
  set_error_context("rank 3/4 on test-host");
  try {
    DIRMOE_FAIL("broken ", 42);
  } catch (const Error& e) {
    std::string w = e.what();
    EXPECT_EQ(w, "[rank 3/4 on test-host] broken 42");
    EXPECT_EQ(e.expression(), "");
    EXPECT_NE(e.location().find("test_core.cpp:"), std::string::npos);
  }
  set_error_context("");
}

// Known-answer vectors of Random123 (kat_vectors, philox4x32 with 10 rounds).
TEST(Philox, MatchesRandom123KnownAnswers) {
  Philox4 a = philox4x32_10(0, 0, 0, 0, 0, 0);
  EXPECT_EQ(a.v[0], 0x6627e8d5u);
  EXPECT_EQ(a.v[1], 0xe169c58du);
  EXPECT_EQ(a.v[2], 0xbc57ac4cu);
  EXPECT_EQ(a.v[3], 0x9b00dbd8u);
  Philox4 b =
      philox4x32_10(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu);
  EXPECT_EQ(b.v[0], 0x408f276du);
  EXPECT_EQ(b.v[1], 0x41c83b0eu);
  EXPECT_EQ(b.v[2], 0xa20bc7c6u);
  EXPECT_EQ(b.v[3], 0x6d5451fdu);
  Philox4 c =
      philox4x32_10(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u);
  EXPECT_EQ(c.v[0], 0xd16cfe09u);
  EXPECT_EQ(c.v[1], 0x94fdccebu);
  EXPECT_EQ(c.v[2], 0x5001e420u);
  EXPECT_EQ(c.v[3], 0x24126ea1u);
}

TEST(Philox, UniformAndNormalMomentsMatchClosedForm) {
  PhiloxStream s{1234, 7};
  const int n = 200000;
  double su = 0, su2 = 0, sn = 0, sn2 = 0;
  double umin = 1, umax = 0;
  for (int i = 0; i < n; ++i) {
    double u = s.uniform(i, 0, 0), z = s.normal(i, 1, 0);
    su += u;
    su2 += u * u;
    sn += z;
    sn2 += z * z;
    umin = std::min(umin, u);
    umax = std::max(umax, u);
  }
  EXPECT_GT(umin, 0.0);
  EXPECT_LT(umax, 1.0);
  // Mean of U(0,1) is 1/2 with standard error sqrt(1/12/n); normal mean 0, var 1.
  EXPECT_NEAR(su / n, 0.5, 4 * std::sqrt(1.0 / 12 / n));
  EXPECT_NEAR(su2 / n - (su / n) * (su / n), 1.0 / 12, 4 * std::sqrt(1.0 / 180 / n));
  EXPECT_NEAR(sn / n, 0.0, 4 * std::sqrt(1.0 / n));
  EXPECT_NEAR(sn2 / n, 1.0, 4 * std::sqrt(2.0 / n));
}

TEST(Philox, StreamsAndCountersAreIndependentAndPure) {
  PhiloxStream a{99, 1}, b{99, 2}, c{100, 1};
  EXPECT_EQ(a.at(5, 6, 7).v[0], a.at(5, 6, 7).v[0]);
  EXPECT_NE(a.at(5, 6, 7).v[0], b.at(5, 6, 7).v[0]);
  EXPECT_NE(a.at(5, 6, 7).v[0], c.at(5, 6, 7).v[0]);
  EXPECT_NE(a.at(5, 6, 7).v[0], a.at(6, 6, 7).v[0]);
}

TEST(Buffer, ZeroInitialisedAlignedAndResizable) {
  Buffer<float> b(37);
  EXPECT_EQ(b.size(), 37);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % 64, 0u);
  for (float x : b) EXPECT_EQ(x, 0.0f);
  b[3] = 2.0f;
  b.zero();
  EXPECT_EQ(b[3], 0.0f);
  EXPECT_THROW(b.resize(-1), Error);
}

TEST(Parameter, ShapeAndStorage) {
  Parameter<double> p("layers.0.moe.experts.5.w1", {4, 3}, ParamKind::kExpert, 5);
  EXPECT_EQ(p.numel(), 12);
  EXPECT_EQ(p.value.size(), 12);
  EXPECT_EQ(p.grad.size(), 12);
  EXPECT_EQ(shape_str(p.shape), "[4,3]");
}

TEST(DType, SizesNamesAndDispatch) {
  EXPECT_EQ(dtype_size(DType::kBF16), 2u);
  EXPECT_EQ(dtype_name(DType::kI64), "i64");
  EXPECT_EQ(dispatch_float(DType::kF64, [](auto x) { return sizeof(x); }), 8u);
  EXPECT_THROW(dispatch_float(DType::kI32, [](auto x) { return sizeof(x); }), Error);
}

}  // namespace
}  // namespace dirmoe
