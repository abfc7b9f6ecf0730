// Multi-rank tests of the MPI communicator. Payloads encode (source rank, destination rank, index)
// so every rank knows exactly what it must receive; counts of wrong elements are all-reduced.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdint>
#include <numeric>
#include <vector>

#include "comm/bootstrap.h"
#include "comm/mpi_communicator.h"
#include "runtime/core/error.h"

namespace dirmoe {
namespace {

MpiCommunicator world() { return MpiCommunicator(MPI_COMM_WORLD, false, "world"); }

int64_t global_errors(Communicator& c, int64_t local) {
  c.all_reduce(&local, 1, DType::kI64, ReduceOp::kSum);
  return local;
}

// Uneven, zero-including counts: src sends (src + 2*dst) % 5 elements to dst.
int64_t count_of(int src, int dst) { return (src + 2 * dst) % 5; }
double payload(int src, int dst, int64_t i) { return src * 1000.0 + dst * 10.0 + i * 0.25; }

TEST(MpiCommunicator, AllToAllVDeliversEncodedPayloads) {
  auto c = world();
  const int n = c.size(), me = c.rank();
  std::vector<int64_t> sc(n), rc(n);
  for (int r = 0; r < n; ++r) {
    sc[r] = count_of(me, r);
    rc[r] = count_of(r, me);
  }
  std::vector<double> send, recv(std::accumulate(rc.begin(), rc.end(), int64_t{0}), -1.0);
  for (int r = 0; r < n; ++r)
    for (int64_t i = 0; i < sc[r]; ++i) send.push_back(payload(me, r, i));
  c.all_to_all_v(send.data(), sc.data(), recv.data(), rc.data(), DType::kF64);
  int64_t bad = 0, off = 0;
  for (int r = 0; r < n; ++r)
    for (int64_t i = 0; i < rc[r]; ++i) bad += recv[off++] != payload(r, me, i);
  EXPECT_EQ(global_errors(c, bad), 0);
}

TEST(MpiCommunicator, AllToAllFixedCountExchangesCounts) {
  auto c = world();
  const int n = c.size(), me = c.rank();
  std::vector<int64_t> send(n * 3), recv(n * 3, -1);
  for (int r = 0; r < n; ++r)
    for (int j = 0; j < 3; ++j) send[r * 3 + j] = me * 100 + r * 10 + j;
  c.all_to_all(send.data(), recv.data(), 3, DType::kI64);
  int64_t bad = 0;
  for (int r = 0; r < n; ++r)
    for (int j = 0; j < 3; ++j) bad += recv[r * 3 + j] != r * 100 + me * 10 + j;
  EXPECT_EQ(global_errors(c, bad), 0);
}

TEST(MpiCommunicator, AllReduceSumMaxMinMatchClosedForm) {
  auto c = world();
  const int n = c.size(), me = c.rank();
  std::vector<float> s = {1.0f * me, 2.0f};
  c.all_reduce(s.data(), 2, DType::kF32, ReduceOp::kSum);
  EXPECT_EQ(s[0], n * (n - 1) / 2.0f);
  EXPECT_EQ(s[1], 2.0f * n);
  int32_t mx = me, mn = me;
  c.all_reduce(&mx, 1, DType::kI32, ReduceOp::kMax);
  c.all_reduce(&mn, 1, DType::kI32, ReduceOp::kMin);
  EXPECT_EQ(mx, n - 1);
  EXPECT_EQ(mn, 0);
}

TEST(MpiCommunicator, AllGatherAndBroadcast) {
  auto c = world();
  const int n = c.size(), me = c.rank();
  int64_t mine[2] = {me, me * me};
  std::vector<int64_t> all(2 * n, -1);
  c.all_gather(mine, all.data(), 2, DType::kI64);
  int64_t bad = 0;
  for (int r = 0; r < n; ++r) bad += all[2 * r] != r || all[2 * r + 1] != r * r;
  double v = me == n - 1 ? 3.5 : 0.0;
  c.broadcast(&v, 1, DType::kF64, n - 1);
  bad += v != 3.5;
  EXPECT_EQ(global_errors(c, bad), 0);
}

TEST(MpiCommunicator, SplitFormsGroupsOrderedByKey) {
  auto c = world();
  const int n = c.size(), me = c.rank();
  auto sub = c.split(me % 2, -me, "parity");  // reversed order inside each group
  int expected_size = (n + 1 - me % 2) / 2;
  EXPECT_EQ(sub->size(), expected_size);
  EXPECT_EQ(sub->name(), "parity");
  int64_t sum = me;
  sub->all_reduce(&sum, 1, DType::kI64, ReduceOp::kSum);
  int64_t want = 0;
  for (int r = me % 2; r < n; r += 2) want += r;
  EXPECT_EQ(sum, want);
  int higher = 0;  // ranks in my group with a larger world rank come first
  for (int r = me % 2; r < n; r += 2) higher += r > me;
  EXPECT_EQ(sub->rank(), higher);
}

TEST(MpiCommunicator, BadArgumentsGiveClearErrors) {
  auto c = world();
  double v = 0;
  try {
    c.broadcast(&v, 1, DType::kF64, c.size());
    FAIL() << "no error for an out-of-range root";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("root"), std::string::npos) << e.what();
  }
  int64_t big = int64_t{1} << 40;
  EXPECT_THROW(c.all_reduce(&v, big, DType::kF64, ReduceOp::kSum), Error);
}

TEST(Topology, LocalRanksAreConsistentOnOneMachine) {
  Topology t = discover_topology();
  auto c = world();
  EXPECT_EQ(t.world_size, c.size());
  EXPECT_EQ(t.rank, c.rank());
  // All ranks of a CTest run share this machine: one node, local rank == rank.
  EXPECT_EQ(t.num_nodes, 1);
  EXPECT_EQ(t.node_id, 0);
  EXPECT_EQ(t.local_size, t.world_size);
  EXPECT_EQ(t.local_rank, t.rank);
  EXPECT_FALSE(t.hostname.empty());
}

}  // namespace
}  // namespace dirmoe
