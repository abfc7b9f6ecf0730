// The host side of `dirmoe bench a2a`: option validation names the option, the synthetic routing
// has the popularity its definition implies, its byte matrix equals what the CPU Dispatcher plans
// over MPI, bandwidths follow nccl-tests' formulas, and the checked closed form rounds as bf16
// does.
#include <gtest/gtest.h>
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <cmath>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "comm/mpi_communicator.h"
#include "experts/dispatcher.h"
#include "launch/bench_a2a_host.h"
#include "tests/common/error_of.h"

namespace dirmoe {
namespace {

BenchA2aOptions parse(const std::string& args) {
  CLI::App app("bench a2a");
  BenchA2aOptions opt;
  add_bench_a2a_options(app, opt);
  app.parse(args, false);
  return opt;
}

// A valid command line with `option` given `value` instead (or added).
std::string with(const std::string& option, const std::string& value) {
  const std::vector<std::pair<std::string, std::string>> base = {
      {"--tokens", "64"}, {"--hidden", "32"}, {"--experts", "8"}, {"--ep", "2"}};
  std::string out;
  bool found = false;
  for (const auto& [k, v] : base) {
    out += " " + k + " " + (k == option ? value : v);
    found |= k == option;
  }
  if (!found && !option.empty()) out += " " + option + " " + value;
  return out;
}

TEST(BenchA2aOptions, AcceptsAValidCommandLine) {
  const BenchA2aOptions o = parse(with("", "") + " --top-k 2 --skew 0.5 --dtype f32");
  EXPECT_EQ(o.tokens, 64);
  EXPECT_EQ(o.top_k, 2);
  EXPECT_EQ(o.dtype, "f32");
  EXPECT_EQ(test::error_of([&] { validate_bench_a2a_options(o, 2); }), "");
}

TEST(BenchA2aOptions, RequiresTheSizes) {
  EXPECT_THROW(parse("--hidden 32 --experts 8 --ep 2"), CLI::RequiredError);
  EXPECT_THROW(parse("--tokens 64 --hidden 32 --experts 8"), CLI::RequiredError);
}

TEST(BenchA2aOptions, EachBadValueNamesItsOption) {
  const struct {
    const char* option;
    const char* value;
    int world;
    const char* named;  // in the message
  } cases[] = {
      {"--tokens", "0", 2, "--tokens"},
      {"--tokens", "-3", 2, "--tokens"},
      {"--hidden", "0", 2, "--hidden"},
      {"--ep", "4", 2, "--ep 4"},
      {"--experts", "7", 2, "--experts 7"},
      {"--top-k", "9", 2, "--top-k"},
      {"--top-k", "0", 2, "--top-k"},
      {"--skew", "1", 2, "--skew"},
      {"--skew", "-0.1", 2, "--skew"},
      {"--dtype", "f16", 2, "--dtype"},
      {"--iters", "0", 2, "--iters"},
      {"--warmup", "-1", 2, "--warmup"},
      {"", "", 3, "--ep 2"},
  };
  for (const auto& c : cases) {
    const BenchA2aOptions o = parse(with(c.option, c.value));
    const std::string msg = test::error_of([&] { validate_bench_a2a_options(o, c.world); });
    EXPECT_NE(msg.find(c.named), std::string::npos) << c.option << " " << c.value << ": " << msg;
  }
}

TEST(BenchA2aRouting, IsDeterministicDistinctAndWeightedByPowersOfTwo) {
  const SyntheticRouting a = synthetic_routing(7, 1, 500, 8, 3, 0.3);
  const SyntheticRouting b = synthetic_routing(7, 1, 500, 8, 3, 0.3);
  const SyntheticRouting c = synthetic_routing(7, 2, 500, 8, 3, 0.3);
  EXPECT_EQ(a.experts, b.experts);
  EXPECT_NE(a.experts, c.experts);  // keyed by rank
  ASSERT_EQ(a.offsets.size(), 501u);
  for (int64_t t = 0; t < 500; ++t) {
    ASSERT_EQ(a.offsets[t + 1] - a.offsets[t], 3);
    std::set<int32_t> seen;
    for (int64_t j = 0; j < 3; ++j) {
      const int32_t e = a.experts[a.offsets[t] + j];
      EXPECT_TRUE(e >= 0 && e < 8);
      seen.insert(e);
      EXPECT_EQ(a.weights[a.offsets[t] + j], std::ldexp(1.0f, -static_cast<int>(j)));
    }
    EXPECT_EQ(seen.size(), 3u) << "token " << t;
  }
}

// First choice: expert 0 with probability skew + (1 - skew) / E, any other with (1 - skew) / E.
TEST(BenchA2aRouting, PopularityFollowsTheSkew) {
  const int64_t n = 20000;
  const int E = 8;
  for (double skew : {0.0, 0.4}) {
    const SyntheticRouting r = synthetic_routing(11, 0, n, E, 1, skew);
    std::vector<int64_t> hits(E, 0);
    for (int32_t e : r.experts) ++hits[e];
    for (int e = 0; e < E; ++e) {
      const double p = (e == 0 ? skew : 0.0) + (1.0 - skew) / E;
      const double sigma = std::sqrt(n * p * (1 - p));
      EXPECT_NEAR(static_cast<double>(hits[e]), n * p, 5 * sigma) << "skew " << skew << " e " << e;
    }
  }
}

// The counts and byte matrix from the host routing equal what the CPU Dispatcher plans and
// exchanges over MPI for the same assignments (an independent implementation of the same plan).
TEST(BenchA2aRouting, ByteMatrixMatchesTheDispatcher) {
  MpiCommunicator world(MPI_COMM_WORLD, false, "ep");
  const int ep = world.size(), rank = world.rank();
  const Placement placement = Placement::contiguous(4 * ep, ep);
  const SyntheticRouting r = synthetic_routing(3, rank, 300, 4 * ep, 2, 0.5);
  const std::vector<int64_t> counts = dispatch_counts(r, placement);
  const std::vector<int64_t> rows = rows_per_peer(counts, ep, placement.max_local_experts());
  Dispatcher<float> dispatcher(placement, &world);
  dispatcher.plan(r.experts.data(), static_cast<int64_t>(r.experts.size()), -1);
  EXPECT_EQ(rows, dispatcher.send_rows());
  std::vector<int64_t> matrix(static_cast<size_t>(ep) * ep);
  world.all_gather(rows.data(), matrix.data(), ep, DType::kI64);
  EXPECT_EQ(column(matrix, ep, rank), dispatcher.recv_rows());
  int64_t total = 0;
  for (int64_t v : rows) total += v;
  EXPECT_EQ(total, 600);
}

TEST(BenchA2aBandwidth, FollowsNcclTestsForAnEvenAllToAll) {
  // nccl-tests alltoall: S = count * n * sizeof(type) per rank; busbw = algbw (n-1)/n.
  const int n = 4;
  const int64_t rows_per_peer_ = 10, row_bytes = 1536;
  std::vector<int64_t> matrix(n * n, rows_per_peer_);
  const double per_direction = static_cast<double>(rows_per_peer_ * n * row_bytes);
  EXPECT_DOUBLE_EQ(mean_bytes_per_rank(matrix, n, row_bytes), 2 * per_direction);
  // What leaves a rank is the (n-1)/n the bus-bandwidth factor stands for.
  EXPECT_DOUBLE_EQ(mean_offrank_bytes_per_rank(matrix, n, row_bytes),
                   2 * per_direction * (n - 1) / n);
  const Bandwidth b = alltoall_bandwidth(3e9, 1.5, n);
  EXPECT_DOUBLE_EQ(b.algbw_gbs, 2.0);
  EXPECT_DOUBLE_EQ(b.busbw_gbs, 1.5);
  EXPECT_DOUBLE_EQ(alltoall_bandwidth(1e9, 1.0, 1).busbw_gbs, 0.0);
}

TEST(BenchA2aBandwidth, SummarisesRowsAndColumns) {
  const std::vector<int64_t> m = {1, 2, 3, 4, 5, 6, 7, 8, 9};  // [3, 3]
  const PeerSummary s = summarize(column(m, 3, 1));            // 2, 5, 8
  EXPECT_EQ(s.min, 2);
  EXPECT_EQ(s.max, 8);
  EXPECT_EQ(s.total, 15);
  EXPECT_DOUBLE_EQ(s.mean, 5.0);
  // Uneven: the diagonal 1 + 5 + 9 stays home.
  EXPECT_DOUBLE_EQ(mean_offrank_bytes_per_rank(m, 3, 2), 2.0 * (45 - 15) * 2 / 3);
}

TEST(BenchA2aCheck, RoundsToNearestEvenBf16) {
  EXPECT_EQ(round_to_bf16(1.0f), 1.0f);
  EXPECT_EQ(round_to_bf16(1.0f + std::ldexp(1.0f, -8)), 1.0f);  // tie, even stays
  EXPECT_EQ(round_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 1.0f + std::ldexp(1.0f, -6));
  EXPECT_EQ(round_to_bf16(257.0f), 256.0f);
  EXPECT_EQ(round_to_bf16(259.0f), 260.0f);
  EXPECT_EQ(round_to_bf16(-258.0f), -258.0f);
}

TEST(BenchA2aCheck, ClosedFormOfTheCombine) {
  const int32_t one[] = {3};
  const float w1[] = {1.0f};
  EXPECT_EQ(expected_combined(2.0f, one, w1, 1, true), 8.0f);
  const int32_t two[] = {0, 2};
  const float w2[] = {1.0f, 0.5f};
  EXPECT_EQ(expected_combined(-1.0f, two, w2, 2, false), -2.5f);
  const int32_t big[] = {256};
  EXPECT_EQ(expected_combined(1.0f, big, w1, 1, true), 256.0f);  // 257 rounds to even
  EXPECT_EQ(expected_combined(1.0f, big, w1, 1, false), 257.0f);
  std::set<float> values;
  for (int64_t c = 0; c < 200; ++c) values.insert(payload_value(5, 1, 17, c));
  EXPECT_EQ(values, (std::set<float>{-2, -1, 0, 1, 2}));
}

}  // namespace
}  // namespace dirmoe
