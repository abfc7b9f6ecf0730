// Host side of `dirmoe bench a2a` (see bench_a2a_host.h).
#include "launch/bench_a2a_host.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstring>

#include "runtime/core/error.h"
#include "runtime/core/philox.h"

namespace dirmoe {

void add_bench_a2a_options(CLI::App& cmd, BenchA2aOptions& opt) {
  cmd.add_option("--tokens", opt.tokens, "tokens per rank")->required();
  cmd.add_option("--hidden", opt.hidden, "hidden size: elements per token row")->required();
  cmd.add_option("--experts", opt.experts, "experts, placed contiguously over the EP ranks")
      ->required();
  cmd.add_option("--ep", opt.ep, "expert-parallel ranks (must equal the number of ranks)")
      ->required();
  cmd.add_option("--top-k", opt.top_k, "experts per token")->capture_default_str();
  cmd.add_option("--skew", opt.skew,
                 "in [0, 1): fraction of tokens whose first expert is expert 0 (0: uniform)")
      ->capture_default_str();
  cmd.add_option("--dtype", opt.dtype, "row element type: bf16 or f32")->capture_default_str();
  cmd.add_option("--iters", opt.iters, "timed iterations")->capture_default_str();
  cmd.add_option("--warmup", opt.warmup, "untimed iterations first")->capture_default_str();
  cmd.add_option("--seed", opt.seed, "seed of the synthetic routing and payload")
      ->capture_default_str();
}

void validate_bench_a2a_options(const BenchA2aOptions& o, int world_size) {
  DIRMOE_CHECK(o.tokens >= 1 && o.tokens <= (int64_t{1} << 31),
               "bench a2a: --tokens must be in [1, 2^31], got ", o.tokens);
  DIRMOE_CHECK(o.hidden >= 1, "bench a2a: --hidden must be at least 1, got ", o.hidden);
  DIRMOE_CHECK(o.experts >= 1 && o.experts <= 12 * 1024,
               "bench a2a: --experts must be in [1, 12288], got ", o.experts);
  DIRMOE_CHECK(o.ep >= 1, "bench a2a: --ep must be at least 1, got ", o.ep);
  DIRMOE_CHECK(o.ep == world_size, "bench a2a: --ep ", o.ep, " but the job has ", world_size,
               " rank(s): the benchmark runs one EP group, start it with mpirun -np ", o.ep);
  DIRMOE_CHECK(o.experts % o.ep == 0, "bench a2a: --experts ", o.experts,
               " is not a multiple of --ep ", o.ep, " (experts are placed contiguously)");
  DIRMOE_CHECK(o.top_k >= 1 && o.top_k <= o.experts, "bench a2a: --top-k must be in [1, --experts ",
               o.experts, "], got ", o.top_k);
  DIRMOE_CHECK(o.skew >= 0.0 && o.skew < 1.0, "bench a2a: --skew must be in [0, 1), got ", o.skew);
  DIRMOE_CHECK(o.dtype == "bf16" || o.dtype == "f32",
               "bench a2a: --dtype must be bf16 or f32, got '", o.dtype, "'");
  DIRMOE_CHECK(o.iters >= 1, "bench a2a: --iters must be at least 1, got ", o.iters);
  DIRMOE_CHECK(o.warmup >= 0, "bench a2a: --warmup must be >= 0, got ", o.warmup);
}

SyntheticRouting synthetic_routing(uint64_t seed, int rank, int64_t tokens, int num_experts,
                                   int top_k, double skew) {
  DIRMOE_CHECK(tokens >= 0 && num_experts >= 1 && top_k >= 1 && top_k <= num_experts,
               "synthetic_routing: bad sizes tokens=", tokens, " E=", num_experts, " k=", top_k);
  SyntheticRouting r;
  r.num_tokens = tokens;
  r.offsets.resize(static_cast<size_t>(tokens + 1));
  r.experts.reserve(static_cast<size_t>(tokens * top_k));
  r.weights.reserve(static_cast<size_t>(tokens * top_k));
  const PhiloxStream rng{seed, static_cast<uint32_t>(rank)};
  std::vector<int32_t> free(static_cast<size_t>(num_experts));
  for (int64_t t = 0; t < tokens; ++t) {
    r.offsets[static_cast<size_t>(t)] = static_cast<int64_t>(r.experts.size());
    for (int e = 0; e < num_experts; ++e) free[static_cast<size_t>(e)] = e;
    int num_free = num_experts;
    const auto tok = static_cast<uint32_t>(t);
    for (int j = 0; j < top_k; ++j) {
      int pick = 0;  // index into free[0, num_free)
      if (j == 0 && skew > 0 && rng.uniform(tok, 0, 1) < skew) {
        pick = 0;  // free[0] is expert 0 before the first draw
      } else {
        const double u = rng.uniform(tok, static_cast<uint32_t>(j), 0);
        pick = std::min(num_free - 1, static_cast<int>(u * num_free));
      }
      r.experts.push_back(free[static_cast<size_t>(pick)]);
      r.weights.push_back(std::ldexp(1.0f, -j));
      free.erase(free.begin() + pick);
      free.push_back(-1);
      --num_free;
    }
  }
  r.offsets[static_cast<size_t>(tokens)] = static_cast<int64_t>(r.experts.size());
  return r;
}

std::vector<int64_t> dispatch_counts(const SyntheticRouting& routing, const Placement& placement) {
  const int ep = placement.ep_size(), max_local = placement.max_local_experts();
  std::vector<int64_t> counts(static_cast<size_t>(ep) * max_local, 0);
  for (int32_t e : routing.experts) {
    DIRMOE_CHECK(e >= 0 && e < placement.num_experts(), "dispatch_counts: expert ", e,
                 " outside [0, ", placement.num_experts(), ")");
    ++counts[static_cast<size_t>(placement.owner(e)) * max_local + placement.local_index(e)];
  }
  return counts;
}

std::vector<int64_t> rows_per_peer(const std::vector<int64_t>& counts, int ep, int max_local) {
  DIRMOE_CHECK(static_cast<int64_t>(counts.size()) == int64_t{ep} * max_local,
               "rows_per_peer: ", counts.size(), " counts for ep ", ep, " x max_local ", max_local);
  std::vector<int64_t> rows(static_cast<size_t>(ep), 0);
  for (int p = 0; p < ep; ++p)
    for (int le = 0; le < max_local; ++le)
      rows[static_cast<size_t>(p)] += counts[static_cast<size_t>(p) * max_local + le];
  return rows;
}

PeerSummary summarize(const std::vector<int64_t>& values) {
  PeerSummary s;
  if (values.empty()) return s;
  s.min = *std::min_element(values.begin(), values.end());
  s.max = *std::max_element(values.begin(), values.end());
  for (int64_t v : values) s.total += v;
  s.mean = static_cast<double>(s.total) / static_cast<double>(values.size());
  return s;
}

std::vector<int64_t> column(const std::vector<int64_t>& matrix, int ep, int dst) {
  std::vector<int64_t> c(static_cast<size_t>(ep));
  for (int s = 0; s < ep; ++s)
    c[static_cast<size_t>(s)] = matrix.at(static_cast<size_t>(s) * ep + dst);
  return c;
}

double mean_bytes_per_rank(const std::vector<int64_t>& rows_matrix, int ep, int64_t row_bytes) {
  double rows = 0;
  for (int64_t v : rows_matrix) rows += static_cast<double>(v);
  return 2.0 * rows * static_cast<double>(row_bytes) / ep;
}

double mean_offrank_bytes_per_rank(const std::vector<int64_t>& rows_matrix, int ep,
                                   int64_t row_bytes) {
  double rows = 0;
  for (int s = 0; s < ep; ++s)
    for (int d = 0; d < ep; ++d)
      if (s != d) rows += static_cast<double>(rows_matrix.at(static_cast<size_t>(s) * ep + d));
  return 2.0 * rows * static_cast<double>(row_bytes) / ep;
}

Bandwidth alltoall_bandwidth(double bytes, double seconds, int ranks) {
  Bandwidth b;
  if (seconds <= 0 || ranks < 1) return b;
  b.algbw_gbs = bytes / seconds * 1e-9;
  b.busbw_gbs = b.algbw_gbs * (ranks - 1) / ranks;
  return b;
}

float payload_value(uint64_t seed, int rank, int64_t token, int64_t col) {
  const PhiloxStream rng{seed ^ 0xa2a0a2a0ULL, static_cast<uint32_t>(rank)};
  const Philox4 r = rng.at(static_cast<uint32_t>(token), static_cast<uint32_t>(col),
                           static_cast<uint32_t>(col >> 32));
  return static_cast<float>(static_cast<int>(r.v[0] % 5u) - 2);
}

float round_to_bf16(float x) {
  uint32_t u = 0;
  std::memcpy(&u, &x, sizeof(u));
  if ((u & 0x7f800000u) == 0x7f800000u) {  // inf / nan: truncate, keep nan quiet
    u &= 0xffff0000u;
    if ((u & 0x007f0000u) == 0 && x != x) u |= 0x00400000u;
  } else {
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
  }
  float y = 0;
  std::memcpy(&y, &u, sizeof(y));
  return y;
}

float expected_combined(float x, const int32_t* experts, const float* weights, int64_t k,
                        bool bf16) {
  float acc = 0.0f;
  for (int64_t j = 0; j < k; ++j) {
    float v = static_cast<float>(1 + experts[j]) * x;
    if (bf16) v = round_to_bf16(v);
    acc += weights[j] * v;
  }
  return bf16 ? round_to_bf16(acc) : acc;
}

}  // namespace dirmoe
