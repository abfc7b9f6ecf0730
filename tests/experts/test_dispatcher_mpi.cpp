// Dispatcher over MPI ranks with payloads that encode their origin: every row sent is
// (source rank, token, expert, assignment), so each rank rebuilds every rank's routing and checks
// exactly which rows it received, in which order, and what came back. Wrong rows are counted and
// all-reduced so every rank agrees on the verdict.
#include <gtest/gtest.h>
#include <mpi.h>

#include <algorithm>
#include <random>
#include <vector>

#include "comm/mpi_communicator.h"
#include "experts/dispatcher.h"
#include "tests/experts/moe_test_util.h"

namespace dirmoe {
namespace {

struct Assignment {
  int64_t token;
  int expert;
};

// Rank r's routing, a pure function of (r, E): 3 + 2r tokens (none on rank 1 when
// `empty_rank1`), 1..3 distinct experts per token in a scrambled order.
std::vector<Assignment> routing_of(int r, int E, bool empty_rank1) {
  const int64_t N = (empty_rank1 && r == 1) ? 0 : 3 + 2 * r;
  std::vector<Assignment> out;
  for (int64_t t = 0; t < N; ++t) {
    std::mt19937 gen(static_cast<uint32_t>(1000 * r + t));
    std::vector<int> perm(E);
    for (int e = 0; e < E; ++e) perm[e] = e;
    std::shuffle(perm.begin(), perm.end(), gen);
    const int k = 1 + static_cast<int>(gen() % std::min(3, E));
    for (int j = 0; j < k; ++j) out.push_back({t, perm[j]});
  }
  return out;
}

// kept[a] under a per-expert capacity (< 0: unlimited), first come first kept.
std::vector<bool> kept_of(const std::vector<Assignment>& as, int E, int64_t capacity) {
  std::vector<int64_t> used(E, 0);
  std::vector<bool> kept(as.size());
  for (size_t a = 0; a < as.size(); ++a) kept[a] = capacity < 0 || used[as[a].expert]++ < capacity;
  return kept;
}

int64_t all_sum(Communicator& comm, int64_t v) {
  comm.all_reduce(&v, 1, DType::kI64, ReduceOp::kSum);
  return v;
}

void run_case(const Placement& placement, int64_t capacity, bool empty_rank1) {
  MpiCommunicator world(MPI_COMM_WORLD, false, "ep");
  const int ws = world.size(), me = world.rank(), E = placement.num_experts();
  Dispatcher<double> disp(placement, &world);
  const std::vector<Assignment> mine = routing_of(me, E, empty_rank1);
  const int64_t nnz = static_cast<int64_t>(mine.size());
  std::vector<int32_t> experts(nnz);
  std::vector<int64_t> token_of(nnz);
  for (int64_t a = 0; a < nnz; ++a) {
    experts[a] = mine[a].expert;
    token_of[a] = mine[a].token;
  }
  disp.plan(experts.data(), nnz, capacity);

  // Expected expert layout on this rank.
  const std::vector<int>& local = placement.local_experts(me);
  std::vector<double> expected;  // [R,4]
  std::vector<int64_t> expected_offset;
  for (int e : local) {
    expected_offset.push_back(static_cast<int64_t>(expected.size()) / 4);
    for (int src = 0; src < ws; ++src) {
      const std::vector<Assignment> theirs = routing_of(src, E, empty_rank1);
      const std::vector<bool> kept = kept_of(theirs, E, capacity);
      for (size_t a = 0; a < theirs.size(); ++a) {
        if (theirs[a].expert != e || !kept[a]) continue;
        expected.insert(expected.end(),
                        {static_cast<double>(src), static_cast<double>(theirs[a].token),
                         static_cast<double>(e), static_cast<double>(a)});
      }
    }
  }
  const int64_t R = static_cast<int64_t>(expected.size()) / 4;
  int64_t wrong = 0;
  if (disp.num_received() != R) ++wrong;
  for (size_t le = 0; le < local.size(); ++le)
    if (disp.expert_offset(static_cast<int>(le)) != expected_offset[le]) ++wrong;

  // Forward direction, per-assignment rows: (src, token, expert, assignment).
  std::vector<double> rows(nnz * 4);
  for (int64_t a = 0; a < nnz; ++a) {
    rows[a * 4 + 0] = me;
    rows[a * 4 + 1] = static_cast<double>(mine[a].token);
    rows[a * 4 + 2] = mine[a].expert;
    rows[a * 4 + 3] = static_cast<double>(a);
  }
  std::vector<double> got(std::max<int64_t>(disp.num_received(), R) * 4, -1.0);
  disp.dispatch(rows.data(), nullptr, 4, got.data());
  for (int64_t i = 0; i < R * 4; ++i) wrong += got[i] != expected[i];

  // Token rows through row_index: (src, token) per token.
  const int64_t N = nnz ? mine.back().token + 1 : 0;
  std::vector<double> token_rows(N * 2);
  for (int64_t t = 0; t < N; ++t) {
    token_rows[t * 2] = me;
    token_rows[t * 2 + 1] = static_cast<double>(t);
  }
  std::vector<double> got_tokens(std::max<int64_t>(disp.num_received(), R) * 2, -1.0);
  disp.dispatch(token_rows.data(), token_of.data(), 2, got_tokens.data());
  for (int64_t i = 0; i < R; ++i) {
    wrong += got_tokens[i * 2] != expected[i * 4];
    wrong += got_tokens[i * 2 + 1] != expected[i * 4 + 1];
  }

  // Return direction: each owner stamps its rank into the assignment column.
  std::vector<double> back(got);
  for (int64_t i = 0; i < disp.num_received(); ++i) back[i * 4 + 3] += 1000.0 * (me + 1);
  std::vector<double> res(nnz * 4, -1.0);
  disp.combine(back.data(), 4, res.data());
  const std::vector<bool> kept = kept_of(mine, E, capacity);
  int64_t dropped = 0;
  for (int64_t a = 0; a < nnz; ++a) {
    const int owner = placement.owner(mine[a].expert);
    const double want[4] = {static_cast<double>(me), static_cast<double>(mine[a].token),
                            static_cast<double>(mine[a].expert), a + 1000.0 * (owner + 1)};
    for (int j = 0; j < 4; ++j) wrong += res[a * 4 + j] != (kept[a] ? want[j] : 0.0);
    wrong += disp.kept(a) != kept[a];
    dropped += !kept[a];
  }
  if (disp.num_dropped() != dropped) ++wrong;

  // Traffic bookkeeping: what is sent to r is what r receives from me.
  std::vector<int64_t> sent_to(ws), recv_by(ws * ws);
  world.all_gather(disp.recv_rows().data(), recv_by.data(), ws, DType::kI64);
  for (int r = 0; r < ws; ++r) wrong += disp.send_rows()[r] != recv_by[r * ws + me];
  const int64_t total_sent = all_sum(world, nnz - dropped);
  const int64_t total_recv = all_sum(world, disp.num_received());
  EXPECT_EQ(total_sent, total_recv);
  EXPECT_EQ(wrong, 0) << "rank " << me << ": wrong rows/counts";
  const int64_t wrong_all = all_sum(world, wrong);
  EXPECT_EQ(wrong_all, 0) << "wrong rows summed over ranks";
}

int world_size() {
  int ws = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &ws);
  return ws;
}

TEST(DispatcherMpi, ContiguousPayloadOrigin) {
  const int ws = world_size();
  run_case(Placement::contiguous(2 * ws, ws), -1, false);
}

TEST(DispatcherMpi, UnevenPayloadOrigin) {
  const auto lists = testing::uneven_lists(world_size());
  run_case(Placement::explicit_lists(testing::num_listed(lists), lists), -1, false);
}

TEST(DispatcherMpi, UnevenWithEmptyRank) {
  const auto lists = testing::uneven_lists(world_size());
  run_case(Placement::explicit_lists(testing::num_listed(lists), lists), -1, true);
}

TEST(DispatcherMpi, CapacityDropsArePerSourceRank) {
  const int ws = world_size();
  for (int64_t capacity : {0, 1, 2}) run_case(Placement::contiguous(2 * ws, ws), capacity, false);
  const auto lists = testing::uneven_lists(ws);
  run_case(Placement::explicit_lists(testing::num_listed(lists), lists), 1, true);
}

}  // namespace
}  // namespace dirmoe
