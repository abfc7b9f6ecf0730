// The host side of `dirmoe bench a2a`: its options and their validation, the synthetic routing
// (Philox, keyed by seed, rank and token), the dispatch counts and byte matrix that routing
// implies, the closed form of one checked dispatch + combine, and nccl-tests' bandwidth formulas.
// Plain C++, so the CPU tests cover everything here; launch/bench_a2a.cpp runs it on the GPU.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "experts/placement.h"

namespace CLI {
class App;
}

namespace dirmoe {

struct BenchA2aOptions {
  int64_t tokens = 0;  // per rank
  int64_t hidden = 0;
  int experts = 0;
  int ep = 0;
  int top_k = 1;
  double skew = 0.0;  // fraction of tokens whose first expert is expert 0
  std::string dtype = "bf16";
  int iters = 20;
  int warmup = 5;
  uint64_t seed = 1234;
};

// Adds the options of `bench a2a` to cmd (both builds share them, so --help is the same).
void add_bench_a2a_options(CLI::App& cmd, BenchA2aOptions& opt);
// Throws an Error naming the offending option: ep must equal the world size (one EP group), the
// experts are placed contiguously (Placement::contiguous), so ep must divide them.
void validate_bench_a2a_options(const BenchA2aOptions& opt, int world_size);

// Routing in CSR form, as Routing<float>: token t's assignments are [offsets[t], offsets[t+1]).
struct SyntheticRouting {
  int64_t num_tokens = 0;
  std::vector<int64_t> offsets;  // [N+1]
  std::vector<int32_t> experts;  // [nnz] distinct within a token
  std::vector<float> weights;    // [nnz] 2^-j for the j-th assignment of a token
};

// top_k distinct experts per token from PhiloxStream{seed, rank} at (token, draw, 0). The first
// expert is expert 0 with probability skew, else uniform over all E; the others are uniform over
// the experts not chosen yet. skew = 0: every expert equally popular.
SyntheticRouting synthetic_routing(uint64_t seed, int rank, int64_t tokens, int num_experts,
                                   int top_k, double skew);

// Rows this rank sends per (dst rank, local expert): counts[dst * max_local + local_index], the
// layout moe_plan writes (dropless), computed here independently of it.
std::vector<int64_t> dispatch_counts(const SyntheticRouting& routing, const Placement& placement);
// Rows per destination rank: the sum of each dst's max_local counts.
std::vector<int64_t> rows_per_peer(const std::vector<int64_t>& counts, int ep, int max_local);

struct PeerSummary {
  int64_t min = 0, max = 0, total = 0;
  double mean = 0;
};
// min / mean / max / total of one row or column of the byte matrix (self included).
PeerSummary summarize(const std::vector<int64_t>& values);
// Column `dst` of a row-major [ep, ep] matrix.
std::vector<int64_t> column(const std::vector<int64_t>& matrix, int ep, int dst);

// Bytes one rank sends per dispatch + combine, averaged over ranks: the dispatch matrix and its
// transpose (the combine), self chunks included as in nccl-tests' alltoall (whose S is
// count * n * sizeof(type)). rows_matrix: [ep, ep] rows src -> dst.
double mean_bytes_per_rank(const std::vector<int64_t>& rows_matrix, int ep, int64_t row_bytes);
// The same without the diagonal: what actually leaves a rank.
double mean_offrank_bytes_per_rank(const std::vector<int64_t>& rows_matrix, int ep,
                                   int64_t row_bytes);

// nccl-tests (doc/PERFORMANCE.md): algbw = S / t, alltoall busbw = algbw * (n-1)/n. In GB/s (1e9).
struct Bandwidth {
  double algbw_gbs = 0, busbw_gbs = 0;
};
Bandwidth alltoall_bandwidth(double bytes, double seconds, int ranks);

// The payload x[t, c] of token t on `rank`: an integer in [-2, 2] (exact in bf16 and fp32, so the
// checked dispatch + combine is exact up to the final rounding).
float payload_value(uint64_t seed, int rank, int64_t token, int64_t col);
// Round to nearest even bf16, returned as a float (the device's __float2bfloat16_rn).
float round_to_bf16(float x);
// The checked dispatch + combine, expert e multiplying its rows by (1 + e):
// y = sum_j w_j * rnd((1 + e_j) x), accumulated in fp32 in assignment order, then rnd; rnd is
// round_to_bf16 when bf16, else the identity.
float expected_combined(float x, const int32_t* experts, const float* weights, int64_t k,
                        bool bf16);

}  // namespace dirmoe
