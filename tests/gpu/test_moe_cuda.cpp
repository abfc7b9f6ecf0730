// CUDA MoE permutation (plan, permute, combine and their backward, wire <-> expert regroup) against
// a CPU reference written here after experts/dispatcher.cpp: integer outputs (counts, slots) and
// permuted rows compared exactly, weighted sums against double within the per-dtype tolerance.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <numeric>
#include <tuple>

#include "kernels/cuda/api.cuh"
#include "tests/gpu/gpu_test_util.h"

namespace dirmoe::cuda::testing {
namespace {

struct MoeCase {
  const char* name;
  int64_t N;                            // tokens
  int E;                                // experts
  std::vector<std::vector<int>> lists;  // experts of each EP rank (the placement)
  int k_max;                            // experts per token drawn in [0, k_max]
  int64_t capacity;                     // < 0: keep all
  int64_t width;                        // row width
  bool bad_expert;                      // plant one expert id outside [0, E)
};

std::vector<std::vector<int>> contiguous(int E, int ep) {
  std::vector<std::vector<int>> lists(ep);
  for (int e = 0; e < E; ++e) lists[e / (E / ep)].push_back(e);
  return lists;
}

const MoeCase kMoeCases[] = {
    {"contiguous_ep2", 100, 8, contiguous(8, 2), 2, -1, 32, false},
    {"uneven_ep3", 333, 7, {{0, 5}, {1, 2, 3}, {4, 6}}, 3, -1, 24, false},
    {"capacity_drops", 500, 4, contiguous(4, 2), 2, 60, 16, false},
    {"single_rank", 1000, 16, contiguous(16, 1), 4, -1, 64, false},
    {"many_groups_ep8", 3000, 64, contiguous(64, 8), 8, -1, 128, false},
    {"odd_width_bad_expert", 77, 6, contiguous(6, 3), 3, -1, 7, true},
    {"no_tokens", 0, 4, contiguous(4, 2), 2, -1, 8, false},
};

struct Routing {
  std::vector<int64_t> offsets;  // [N+1]
  std::vector<int32_t> experts;  // [nnz]
  std::vector<double> weights;   // [nnz]
};

Routing make_routing(const MoeCase& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Routing r;
  r.offsets.push_back(0);
  std::vector<int32_t> all(c.E);
  std::iota(all.begin(), all.end(), 0);
  for (int64_t t = 0; t < c.N; ++t) {
    const int k = static_cast<int>(rng() % (c.k_max + 1));
    std::shuffle(all.begin(), all.end(), rng);
    for (int i = 0; i < k && i < c.E; ++i) {
      r.experts.push_back(all[i]);
      r.weights.push_back(double(float(double(rng() % 1000 + 1) / 1000.0)));
    }
    r.offsets.push_back(static_cast<int64_t>(r.experts.size()));
  }
  if (c.bad_expert && !r.experts.empty()) r.experts[r.experts.size() / 2] = c.E + 3;
  return r;
}

struct PlacementArrays {
  std::vector<int32_t> owner, local;  // [E]
  int ep = 1, max_local = 1;
};

PlacementArrays placement_of(const MoeCase& c) {
  PlacementArrays p;
  p.ep = static_cast<int>(c.lists.size());
  p.owner.assign(c.E, -1);
  p.local.assign(c.E, -1);
  p.max_local = 0;
  for (int r = 0; r < p.ep; ++r) {
    p.max_local = std::max(p.max_local, static_cast<int>(c.lists[r].size()));
    for (size_t i = 0; i < c.lists[r].size(); ++i) {
      p.owner[c.lists[r][i]] = r;
      p.local[c.lists[r][i]] = static_cast<int32_t>(i);
    }
  }
  return p;
}

// Dispatcher::plan on the host (bad experts dropped instead of thrown).
void ref_plan(const std::vector<int32_t>& experts, const PlacementArrays& p, int E,
              int64_t capacity, std::vector<int64_t>& counts, std::vector<int64_t>& slot) {
  const int G = p.ep * p.max_local;
  counts.assign(G, 0);
  slot.assign(experts.size(), -1);
  std::vector<int64_t> kept(E, 0);
  for (size_t a = 0; a < experts.size(); ++a) {
    const int e = experts[a];
    if (e < 0 || e >= E) continue;
    if (capacity >= 0 && kept[e] >= capacity) continue;
    ++kept[e];
    ++counts[p.owner[e] * p.max_local + p.local[e]];
    slot[a] = 0;
  }
  std::vector<int64_t> cursor(G, 0);
  for (int g = 1; g < G; ++g) cursor[g] = cursor[g - 1] + counts[g - 1];
  for (size_t a = 0; a < experts.size(); ++a) {
    if (slot[a] < 0) continue;
    const int e = experts[a];
    slot[a] = cursor[p.owner[e] * p.max_local + p.local[e]]++;
  }
}

template <class T>
void run_moe(const MoeCase& c) {
  const char* dt = dtype_label<T>();
  const Tol tol = tolerance<T>(Op::kMoe);
  const std::string base = std::string("/") + c.name + "/" + dt;
  const Routing r = make_routing(c, 300);
  const PlacementArrays p = placement_of(c);
  const int64_t nnz = static_cast<int64_t>(r.experts.size());
  const int G = p.ep * p.max_local;

  std::vector<int64_t> counts_ref, slot_ref;
  ref_plan(r.experts, p, c.E, c.capacity, counts_ref, slot_ref);
  const int64_t S = std::accumulate(counts_ref.begin(), counts_ref.end(), int64_t{0});

  auto d_experts = to_device(r.experts);
  auto d_offsets = to_device(r.offsets);
  auto d_owner = to_device(p.owner), d_local = to_device(p.local);
  auto d_bad = to_device(std::vector<int64_t>{INT64_MAX});
  Guarded<int64_t> counts(G, 0x5A), slot(nnz, 0x5A);
  DeviceBuffer<uint8_t> scratch(
      static_cast<int64_t>(moe_plan_scratch_bytes(nnz, p.ep, p.max_local)));
  moe_plan(counts.data(), slot.data(), d_experts.data(), nnz, d_owner.data(), d_local.data(), c.E,
           p.ep, p.max_local, c.capacity, d_bad.data(), scratch.data(),
           static_cast<size_t>(scratch.size()), nullptr);
  expect_exact("moe_plan(counts)" + base, counts.values(), counts_ref);
  expect_exact("moe_plan(slot)" + base, slot.values(), slot_ref);
  expect_guard("moe counts", counts);
  expect_guard("moe slot", slot);
  if (c.bad_expert && nnz > 0) {
    EXPECT_EQ(d_bad.download()[0], nnz / 2) << "first bad assignment" << base;
  } else {
    EXPECT_EQ(d_bad.download()[0], INT64_MAX) << base;
  }
  if (c.capacity >= 0) {
    EXPECT_LT(S, nnz) << "the capacity case should drop assignments" << base;
  }

  // Permute token rows into the send layout: an exact copy.
  const int64_t W = c.width;
  const auto x = representable<T>(randn(c.N * W, 301));
  std::vector<double> send_ref(S * W, 0.0);
  for (int64_t t = 0; t < c.N; ++t)
    for (int64_t a = r.offsets[t]; a < r.offsets[t + 1]; ++a)
      if (slot_ref[a] >= 0) std::copy_n(x.begin() + t * W, W, send_ref.begin() + slot_ref[a] * W);
  auto d_x = to_device_as<T>(x);
  Guarded<T> send(S * W);
  moe_permute<T>(send.data(), d_x.data(), d_offsets.data(), slot.data(), c.N, W, nullptr);
  expect_exact("moe_permute(send_rows)" + base, send.doubles(), send_ref);
  expect_guard("moe send", send);

  // Weighted combine of expert outputs back to tokens, and its backward.
  const auto back = representable<T>(randn(S * W, 302));
  const auto y0 = representable<T>(randn(c.N * W, 303));
  auto d_back = to_device_as<T>(back);
  auto d_w = to_device_as<float>(r.weights);
  for (bool accumulate : {false, true}) {
    std::vector<double> y_ref(c.N * W, 0.0);
    if (accumulate) y_ref = y0;
    for (int64_t t = 0; t < c.N; ++t)
      for (int64_t a = r.offsets[t]; a < r.offsets[t + 1]; ++a)
        if (slot_ref[a] >= 0)
          for (int64_t j = 0; j < W; ++j)
            y_ref[t * W + j] += r.weights[a] * back[slot_ref[a] * W + j];
    Guarded<T> y(c.N * W);
    if (accumulate) y.set(convert_to<T>(y0));
    moe_unpermute_combine<T>(y.data(), d_back.data(), d_w.data(), d_offsets.data(), slot.data(),
                             c.N, W, accumulate, nullptr);
    expect_close(std::string(accumulate ? "moe_combine(y+=)" : "moe_combine(y=)") + base,
                 y.doubles(), y_ref, tol);
    expect_guard("moe y", y);
  }

  const auto dy = representable<T>(randn(c.N * W, 304));
  auto d_dy = to_device_as<T>(dy);
  std::vector<double> dback_ref(S * W, 0.0), dw_ref(nnz, 0.0);
  for (int64_t t = 0; t < c.N; ++t)
    for (int64_t a = r.offsets[t]; a < r.offsets[t + 1]; ++a) {
      if (slot_ref[a] < 0) continue;
      for (int64_t j = 0; j < W; ++j) {
        dback_ref[slot_ref[a] * W + j] = r.weights[a] * dy[t * W + j];
        dw_ref[a] += dy[t * W + j] * back[slot_ref[a] * W + j];
      }
    }
  Guarded<T> dback(S * W);
  Guarded<float> dw(nnz);
  moe_combine_backward<T>(dback.data(), dw.data(), d_dy.data(), d_back.data(), d_w.data(),
                          d_offsets.data(), slot.data(), c.N, W, nullptr);
  expect_close("moe_combine_bwd(d_back)" + base, dback.doubles(), dback_ref, tol);
  const Tol f32 = kF32Tol[static_cast<int>(Op::kMoe)];
  expect_close("moe_combine_bwd(d_weights)" + base, dw.doubles(), dw_ref,
               {f32.atol * std::sqrt(double(W)), f32.rtol});
  expect_guard("moe d_back", dback);
  expect_guard("moe d_weights", dw);

  std::vector<double> dx_ref(c.N * W, 0.0);
  for (int64_t t = 0; t < c.N; ++t)
    for (int64_t a = r.offsets[t]; a < r.offsets[t + 1]; ++a)
      if (slot_ref[a] >= 0)
        for (int64_t j = 0; j < W; ++j) dx_ref[t * W + j] += back[slot_ref[a] * W + j];
  Guarded<T> dx(c.N * W);
  moe_permute_backward<T>(dx.data(), d_back.data(), d_offsets.data(), slot.data(), c.N, W, false,
                          nullptr);
  expect_close("moe_permute_bwd(dx)" + base, dx.doubles(), dx_ref, tol);
  expect_guard("moe dx", dx);
}

class MoeCuda : public ::testing::TestWithParam<std::tuple<MoeCase, bool>> {};
TEST_P(MoeCuda, MatchesCpuReference) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const auto& [c, bf] = GetParam();
  bf ? run_moe<bf16>(c) : run_moe<float>(c);
}
INSTANTIATE_TEST_SUITE_P(Grid, MoeCuda,
                         ::testing::Combine(::testing::ValuesIn(kMoeCases), ::testing::Bool()),
                         [](const ::testing::TestParamInfo<std::tuple<MoeCase, bool>>& info) {
                           return param_name(std::get<0>(info.param).name) +
                                  (std::get<1>(info.param) ? "_bf16" : "_f32");
                         });

// Dispatcher::regroup on the host.
std::vector<double> ref_regroup(const std::vector<double>& in, const std::vector<int64_t>& rc,
                                int ep, int max_local, int num_local, int64_t W,
                                bool wire_to_expert) {
  std::vector<int64_t> wire_off(ep * max_local), block_off(ep * max_local);
  int64_t wire = 0;
  for (int g = 0; g < ep * max_local; ++g) {
    wire_off[g] = wire;
    wire += rc[g];
  }
  int64_t off = 0;
  for (int le = 0; le < num_local; ++le)
    for (int src = 0; src < ep; ++src) {
      block_off[src * max_local + le] = off;
      off += rc[src * max_local + le];
    }
  std::vector<double> out(in.size(), 0.0);
  for (int src = 0; src < ep; ++src)
    for (int le = 0; le < num_local; ++le) {
      const int g = src * max_local + le;
      const int64_t w = wire_off[g] * W, b = block_off[g] * W, n = rc[g] * W;
      if (wire_to_expert) {
        std::copy_n(in.begin() + w, n, out.begin() + b);
      } else {
        std::copy_n(in.begin() + b, n, out.begin() + w);
      }
    }
  return out;
}

TEST(MoeCudaRegroup, WireAndExpertLayoutsMatchDispatcher) {
  DIRMOE_SKIP_WITHOUT_GPU();
  const int ep = 3, max_local = 3, num_local = 2;
  for (int64_t W : {int64_t(7), int64_t(24)}) {
    std::mt19937_64 rng(400 + W);
    std::vector<int64_t> rc(ep * max_local, 0);
    for (int src = 0; src < ep; ++src)
      for (int le = 0; le < num_local; ++le) rc[src * max_local + le] = int64_t(rng() % 6);
    rc[1] = 0;  // an empty block
    const int64_t R = std::accumulate(rc.begin(), rc.end(), int64_t{0});
    auto d_rc = to_device(rc);
    for (bool to_expert : {true, false}) {
      const auto in = representable<bf16>(randn(R * W, 401));
      const auto ref = ref_regroup(in, rc, ep, max_local, num_local, W, to_expert);
      auto d_in = to_device_as<bf16>(in);
      Guarded<bf16> out(R * W);
      moe_regroup<bf16>(out.data(), d_in.data(), d_rc.data(), ep, max_local, num_local, W,
                        to_expert, nullptr);
      expect_exact(
          std::string(to_expert ? "moe_regroup(wire->expert)" : "moe_regroup(expert->wire)") +
              "/W" + std::to_string(W) + "/bf16",
          out.doubles(), ref);
      expect_guard("moe regroup", out);
    }
  }
}

}  // namespace
}  // namespace dirmoe::cuda::testing
