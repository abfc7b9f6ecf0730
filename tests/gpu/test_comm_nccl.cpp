// Multi-rank tests of the NCCL communicator under mpiexec. Without a GPU only the MPI_Bcast of the
// unique id and device selection run (ncclGetUniqueId needs no GPU); with one, every collective
// moves payloads that encode (source rank, destination rank, index), split is checked, and the
// watchdog must turn a collective that a peer never joins into an error naming it.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstring>
#include <numeric>
#include <vector>

#include "comm/nccl_communicator.h"
#include "kernels/cuda/device_buffer.h"
#include "runtime/core/error.h"
#include "tests/gpu/gpu_test_util.h"

namespace dirmoe {
namespace {

using cuda::DeviceBuffer;

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// Every rank must agree before entering NCCL bootstrap, so GPU presence is all-reduced.
bool all_have_gpu() {
  int ok = cuda::testing::gpu_available() ? 1 : 0;
  MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  return ok == 1;
}

#define SKIP_UNLESS_ALL_HAVE_GPU()                                       \
  do {                                                                   \
    if (!all_have_gpu()) GTEST_SKIP() << "no CUDA device on every rank"; \
  } while (0)

int64_t global_errors(int64_t local) {
  MPI_Allreduce(MPI_IN_PLACE, &local, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
  return local;
}

// Tests run 2 ranks on one GPU (NCCL_HOSTID tells NCCL they are different hosts), so sharing is
// explicitly allowed here.
NcclOptions test_options(double timeout_s = 120.0) {
  NcclOptions o;
  o.timeout_s = timeout_s;
  o.abort_job = false;
  o.allow_shared_gpu = true;
  return o;
}

// ---- no GPU needed
// -------------------------------------------------------------------------------
TEST(NcclBootstrap, UniqueIdBroadcastReachesEveryRank) {
  const int n = world_size();
  for (int root : {0, n - 1}) {
    const ncclUniqueId id = broadcast_unique_id(MPI_COMM_WORLD, root);
    std::vector<char> all(sizeof(ncclUniqueId) * n);
    MPI_Allgather(&id, sizeof(id), MPI_BYTE, all.data(), sizeof(id), MPI_BYTE, MPI_COMM_WORLD);
    int64_t bad = 0;
    for (int r = 0; r < n; ++r) {
      bad += std::memcmp(all.data() + r * sizeof(id), all.data(), sizeof(id)) != 0;
    }
    bool nonzero = false;
    for (size_t i = 0; i < sizeof(id); ++i) nonzero |= id.internal[i] != 0;
    EXPECT_TRUE(nonzero) << "root " << root << " broadcast an all-zero id";
    EXPECT_EQ(global_errors(bad), 0) << "ranks received different ids from root " << root;
  }
}

TEST(NcclBootstrap, SuccessiveIdsDiffer) {
  const ncclUniqueId a = broadcast_unique_id(MPI_COMM_WORLD, 0);
  const ncclUniqueId b = broadcast_unique_id(MPI_COMM_WORLD, 0);
  EXPECT_NE(std::memcmp(&a, &b, sizeof(a)), 0);
}

TEST(NcclBootstrap, DeviceSelection) {
  EXPECT_EQ(select_device(0, 1, 1, false), 0);
  EXPECT_EQ(select_device(3, 8, 8, false), 3);
  EXPECT_EQ(select_device(1, 2, 4, false), 1);
  EXPECT_EQ(select_device(5, 8, 2, true), 1);
  try {
    select_device(1, 2, 1, false);
    ADD_FAILURE() << "two ranks on one GPU must fail without allow_shared_gpu";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("2 ranks on this node but only 1"), std::string::npos) << msg;
  }
  EXPECT_THROW(select_device(0, 1, 0, true), Error);
}

// ---- GPU ---------------------------------------------------------------------------------------
int64_t count_of(int src, int dst) { return (src + 2 * dst) % 5 + (src == dst ? 3 : 0); }
float payload(int src, int dst, int64_t i) { return src * 1000.0f + dst * 10.0f + i * 0.25f; }

class NcclComm : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!all_have_gpu()) GTEST_SKIP() << "no CUDA device on every rank";
    comm_ = NcclCommunicator::create(MPI_COMM_WORLD, "world", test_options());
  }
  void TearDown() override { comm_.reset(); }
  std::unique_ptr<NcclCommunicator> comm_;
};

TEST_F(NcclComm, AllToAllVDeliversEncodedPayloads) {
  const int n = comm_->size(), me = comm_->rank();
  EXPECT_EQ(me, world_rank());
  std::vector<int64_t> sc(n), rc(n);
  std::vector<float> send;
  for (int r = 0; r < n; ++r) {
    sc[r] = count_of(me, r);
    rc[r] = count_of(r, me);
    for (int64_t i = 0; i < sc[r]; ++i) send.push_back(payload(me, r, i));
  }
  const int64_t total = std::accumulate(rc.begin(), rc.end(), int64_t{0});
  DeviceBuffer<float> d_send;
  d_send.upload(send);
  DeviceBuffer<float> d_recv(total);
  d_recv.fill_bytes(0xFF);
  comm_->all_to_all_v(d_send.data(), sc.data(), d_recv.data(), rc.data(), DType::kF32);
  comm_->synchronize();
  const auto recv = d_recv.download();
  int64_t bad = 0, off = 0;
  for (int r = 0; r < n; ++r)
    for (int64_t i = 0; i < rc[r]; ++i) bad += recv[off++] != payload(r, me, i);
  EXPECT_EQ(global_errors(bad), 0);
  EXPECT_GE(comm_->sequence(), 1u);
}

TEST_F(NcclComm, AllToAllFixedCountExchangesCounts) {
  const int n = comm_->size(), me = comm_->rank();
  std::vector<int64_t> send(n * 3);
  for (int r = 0; r < n; ++r)
    for (int j = 0; j < 3; ++j) send[r * 3 + j] = me * 100 + r * 10 + j;
  DeviceBuffer<int64_t> d_send, d_recv(n * 3);
  d_send.upload(send);
  comm_->all_to_all(d_send.data(), d_recv.data(), 3, DType::kI64);
  comm_->synchronize();
  const auto recv = d_recv.download();
  int64_t bad = 0;
  for (int r = 0; r < n; ++r)
    for (int j = 0; j < 3; ++j) bad += recv[r * 3 + j] != r * 100 + me * 10 + j;
  EXPECT_EQ(global_errors(bad), 0);
}

TEST_F(NcclComm, AllReduceSumMaxMinMatchClosedForm) {
  const int n = comm_->size(), me = comm_->rank();
  const int64_t count = 1000;
  std::vector<float> f(count);
  std::vector<int64_t> a(count), b(count);
  std::vector<cuda::testing::bf16> h(count);
  for (int64_t i = 0; i < count; ++i) {
    f[i] = float(me + 1) * float(i % 7);
    a[i] = me * 1000 + i;
    b[i] = me * 1000 + i;
    h[i] = __float2bfloat16_rn(float(me + 1));
  }
  DeviceBuffer<float> d_f;
  DeviceBuffer<int64_t> d_a, d_b;
  DeviceBuffer<cuda::testing::bf16> d_h;
  d_f.upload(f);
  d_a.upload(a);
  d_b.upload(b);
  d_h.upload(h);
  comm_->all_reduce(d_f.data(), count, DType::kF32, ReduceOp::kSum);
  comm_->all_reduce(d_a.data(), count, DType::kI64, ReduceOp::kMax);
  comm_->all_reduce(d_b.data(), count, DType::kI64, ReduceOp::kMin);
  comm_->all_reduce(d_h.data(), count, DType::kBF16, ReduceOp::kSum);
  comm_->synchronize();
  const auto rf = d_f.download();
  const auto ra = d_a.download();
  const auto rb = d_b.download();
  const auto rh = d_h.download();
  const float ranks_sum = float(n * (n + 1) / 2);
  int64_t bad = 0;
  for (int64_t i = 0; i < count; ++i) {
    bad += rf[i] != ranks_sum * float(i % 7);
    bad += ra[i] != (n - 1) * 1000 + i;
    bad += rb[i] != i;
    bad += __bfloat162float(rh[i]) != ranks_sum;
  }
  EXPECT_EQ(global_errors(bad), 0);
}

TEST_F(NcclComm, AllGatherAndBroadcast) {
  const int n = comm_->size(), me = comm_->rank();
  const int64_t count = 5;
  std::vector<int32_t> mine(count);
  for (int64_t i = 0; i < count; ++i) mine[i] = me * 100 + int32_t(i);
  DeviceBuffer<int32_t> d_mine, d_all(n * count);
  d_mine.upload(mine);
  comm_->all_gather(d_mine.data(), d_all.data(), count, DType::kI32);
  const int root = n - 1;
  std::vector<double> bc(17, me == root ? 3.5 : -1.0);
  for (size_t i = 0; i < bc.size(); ++i) bc[i] += me == root ? double(i) : 0.0;
  DeviceBuffer<double> d_bc;
  d_bc.upload(bc);
  comm_->broadcast(d_bc.data(), 17, DType::kF64, root);
  comm_->synchronize();
  const auto all = d_all.download();
  const auto got = d_bc.download();
  int64_t bad = 0;
  for (int r = 0; r < n; ++r)
    for (int64_t i = 0; i < count; ++i) bad += all[r * count + i] != r * 100 + i;
  for (size_t i = 0; i < got.size(); ++i) bad += got[i] != 3.5 + double(i);
  EXPECT_EQ(global_errors(bad), 0);
  comm_->barrier();
}

TEST_F(NcclComm, SplitFormsSubCommunicators) {
  const int n = comm_->size(), me = comm_->rank();
  const int color = me % 2;
  auto sub = comm_->split(color, -me, "parity");
  ASSERT_NE(sub, nullptr);
  const int expected_size = (n - color + 1) / 2;
  EXPECT_EQ(sub->size(), expected_size);
  // Key -rank: the highest world rank of the color comes first.
  int higher = 0;
  for (int r = me + 1; r < n; ++r) higher += (r % 2 == color);
  EXPECT_EQ(sub->rank(), higher);
  DeviceBuffer<int32_t> d(1);
  d.upload({me});
  sub->all_reduce(d.data(), 1, DType::kI32, ReduceOp::kSum);
  static_cast<NcclCommunicator*>(sub.get())->synchronize();
  int want = 0;
  for (int r = color; r < n; r += 2) want += r;
  EXPECT_EQ(d.download()[0], want);
  sub.reset();
  auto none = comm_->split(me == 0 ? -1 : 0, 0, "without-rank-0");
  EXPECT_EQ(none == nullptr, me == 0);
  if (none) {
    EXPECT_EQ(none->size(), n - 1);
  }
}

TEST(NcclWatchdog, CollectiveThatAPeerNeverJoinsIsNamed) {
  if (world_size() < 2) GTEST_SKIP() << "needs at least two ranks";
  SKIP_UNLESS_ALL_HAVE_GPU();
  const double timeout = 3.0;
  auto comm = NcclCommunicator::create(MPI_COMM_WORLD, "watched", test_options(timeout));
  DeviceBuffer<float> d(16);
  d.fill_bytes(0);
  if (comm->rank() == 0) {
    comm->all_reduce(d.data(), 16, DType::kF32, ReduceOp::kSum);  // #1, never matched
    const auto t0 = std::chrono::steady_clock::now();
    try {
      comm->synchronize();
      ADD_FAILURE() << "synchronize returned although rank 1 never joined the all-reduce";
    } catch (const Error& e) {
      const std::string msg = e.what();
      std::printf("[ info    ] watchdog message: %s\n", msg.c_str());
      EXPECT_NE(msg.find("all_reduce #1"), std::string::npos) << msg;
      EXPECT_NE(msg.find("'watched'"), std::string::npos) << msg;
      EXPECT_NE(msg.find("rank 0/"), std::string::npos) << msg;
      EXPECT_NE(msg.find("did not complete"), std::string::npos) << msg;
    }
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_LT(waited, timeout + 30.0);
    EXPECT_THROW(comm->all_reduce(d.data(), 16, DType::kF32, ReduceOp::kSum), Error);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (comm->rank() != 0) comm->abort();
  comm.reset();
}

}  // namespace
}  // namespace dirmoe
