// MPI implementation of the Communicator interface. Counts are int64 in the interface; MPI takes
// int counts, so larger transfers are refused with a clear error rather than truncated.
#include "comm/mpi_communicator.h"

#include <climits>
#include <vector>

#include "runtime/core/error.h"

namespace dirmoe {

MPI_Datatype mpi_datatype(DType dtype) {
  switch (dtype) {
    case DType::kF32: return MPI_FLOAT;
    case DType::kF64: return MPI_DOUBLE;
    case DType::kI32: return MPI_INT32_T;
    case DType::kI64: return MPI_INT64_T;
    case DType::kU16: return MPI_UINT16_T;
    case DType::kU8: return MPI_UINT8_T;
    case DType::kBF16:
    case DType::kF16: return MPI_UINT16_T;  // moved as raw 16-bit words, never reduced
  }
  DIRMOE_FAIL("no MPI datatype for dtype ", dtype_name(dtype));
}

namespace {
MPI_Op mpi_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return MPI_SUM;
    case ReduceOp::kMax: return MPI_MAX;
    case ReduceOp::kMin: return MPI_MIN;
  }
  DIRMOE_FAIL("unknown reduce op");
}

int checked_int(int64_t v, const char* what, const std::string& comm) {
  DIRMOE_CHECK(v >= 0 && v <= INT_MAX, what, " = ", v, " does not fit an MPI count on communicator ",
               comm);
  return static_cast<int>(v);
}
}  // namespace

MpiCommunicator::MpiCommunicator(MPI_Comm comm, bool owned, std::string name)
    : comm_(comm), owned_(owned), name_(std::move(name)) {
  DIRMOE_MPI_CHECK(MPI_Comm_rank(comm_, &rank_));
  DIRMOE_MPI_CHECK(MPI_Comm_size(comm_, &size_));
}

MpiCommunicator::~MpiCommunicator() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owned_ && !finalized && comm_ != MPI_COMM_NULL) MPI_Comm_free(&comm_);
}

void MpiCommunicator::all_to_all_v(const void* send, const int64_t* send_counts, void* recv,
                                   const int64_t* recv_counts, DType dtype) {
  std::vector<int> sc(size_), sd(size_), rc(size_), rd(size_);
  int64_t soff = 0, roff = 0;
  for (int r = 0; r < size_; ++r) {
    sc[r] = checked_int(send_counts[r], "all_to_all_v send count", name_);
    rc[r] = checked_int(recv_counts[r], "all_to_all_v recv count", name_);
    sd[r] = checked_int(soff, "all_to_all_v send displacement", name_);
    rd[r] = checked_int(roff, "all_to_all_v recv displacement", name_);
    soff += send_counts[r];
    roff += recv_counts[r];
  }
  MPI_Datatype t = mpi_datatype(dtype);
  DIRMOE_MPI_CHECK(MPI_Alltoallv(send, sc.data(), sd.data(), t, recv, rc.data(), rd.data(), t, comm_));
}

void MpiCommunicator::all_to_all(const void* send, void* recv, int64_t count, DType dtype) {
  int c = checked_int(count, "all_to_all count", name_);
  MPI_Datatype t = mpi_datatype(dtype);
  DIRMOE_MPI_CHECK(MPI_Alltoall(send, c, t, recv, c, t, comm_));
}

void MpiCommunicator::all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op) {
  DIRMOE_CHECK(dtype != DType::kBF16 && dtype != DType::kF16, "all_reduce on ", dtype_name(dtype),
               " is not supported on the MPI communicator");
  if (count == 0) return;
  int c = checked_int(count, "all_reduce count", name_);
  DIRMOE_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, buf, c, mpi_datatype(dtype), mpi_op(op), comm_));
}

void MpiCommunicator::all_gather(const void* send, void* recv, int64_t count, DType dtype) {
  int c = checked_int(count, "all_gather count", name_);
  MPI_Datatype t = mpi_datatype(dtype);
  DIRMOE_MPI_CHECK(MPI_Allgather(send, c, t, recv, c, t, comm_));
}

void MpiCommunicator::broadcast(void* buf, int64_t count, DType dtype, int root) {
  DIRMOE_CHECK(root >= 0 && root < size_, "broadcast root ", root, " outside communicator ", name_,
               " of size ", size_);
  int c = checked_int(count, "broadcast count", name_);
  DIRMOE_MPI_CHECK(MPI_Bcast(buf, c, mpi_datatype(dtype), root, comm_));
}

void MpiCommunicator::barrier() { DIRMOE_MPI_CHECK(MPI_Barrier(comm_)); }

std::unique_ptr<Communicator> MpiCommunicator::split(int color, int key,
                                                     const std::string& name) const {
  MPI_Comm out = MPI_COMM_NULL;
  DIRMOE_MPI_CHECK(MPI_Comm_split(comm_, color, key, &out));
  return std::make_unique<MpiCommunicator>(out, true, name);
}

}  // namespace dirmoe
