// Communicator over NCCL for device buffers: calls are enqueued on the communicator's stream and
// return without waiting (synchronize() waits). Non-blocking communicators watched by one
// process-wide thread: a failed collective, or one not done after timeout_s, aborts every NCCL
// communicator of the process and prints rank, communicator, operation and sequence number; then
// the job is aborted, or (abort_job = false) the next call throws the same message.
#pragma once

#include <cuda_runtime_api.h>
#include <mpi.h>
#include <nccl.h>

#include <cstdint>
#include <memory>
#include <string>

#include "comm/communicator.h"

namespace dirmoe {

struct NcclOptions {
  double timeout_s = 600.0;       // a collective (or init/finalize) older than this is a hang
  bool abort_job = true;          // on failure: print, then MPI_Abort the job (false: throw)
  bool allow_shared_gpu = false;  // more ranks than GPUs on a node (tests, debugging only)
};

// The CUDA device of a rank: local_rank when local_size <= num_devices; local_rank % num_devices
// when sharing is allowed; otherwise an error naming both counts.
int select_device(int local_rank, int local_size, int num_devices, bool allow_shared_gpu);

// Rank `root` of comm draws an NCCL unique id and MPI_Bcast hands it to every rank. Collective over
// comm; needs no GPU.
ncclUniqueId broadcast_unique_id(MPI_Comm comm, int root);

struct NcclState;  // shared with the watchdog (nccl_communicator.cpp)

class NcclCommunicator final : public Communicator {
 public:
  // Collective over mpi_comm: picks the device from the node-local rank (select_device), makes it
  // current, bootstraps NCCL through MPI and creates a non-blocking stream unless one is given
  // (a given stream is not owned).
  static std::unique_ptr<NcclCommunicator> create(MPI_Comm mpi_comm, const std::string& name,
                                                  const NcclOptions& options = {},
                                                  cudaStream_t stream = nullptr);
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return name_; }

  // Buffers are device pointers; count arrays are host arrays (as in Communicator).
  void all_to_all_v(const void* send, const int64_t* send_counts, void* recv,
                    const int64_t* recv_counts, DType dtype) override;
  void all_to_all(const void* send, void* recv, int64_t count, DType dtype) override;
  void all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op) override;
  void all_gather(const void* send, void* recv, int64_t count, DType dtype) override;
  void broadcast(void* buf, int64_t count, DType dtype, int root) override;
  // An all-reduce of one word, then synchronize(): returns once every rank has arrived.
  void barrier() override;
  // ncclCommSplit; a negative color leaves this rank out (returns null). Shares the stream.
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) const override;

  cudaStream_t stream() const { return stream_; }
  int device() const { return device_; }
  ncclComm_t nccl_comm() const;
  uint64_t sequence() const { return seq_; }  // operations issued so far
  // Waits until everything issued on the stream is done; throws the watchdog's failure, if any.
  void synchronize();
  // Aborts this communicator now (peers' pending operations then fail or time out).
  void abort();

 private:
  NcclCommunicator(std::shared_ptr<NcclState> state, std::string name, int rank, int size,
                   int device, cudaStream_t stream, bool owns_stream, const NcclOptions& options);
  template <class Enqueue>
  void issue(const char* op, Enqueue&& enqueue);

  std::shared_ptr<NcclState> state_;
  std::string name_;
  int rank_ = 0;
  int size_ = 1;
  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  bool owns_stream_ = false;
  NcclOptions options_;
  uint64_t seq_ = 0;
  int32_t* d_word_ = nullptr;  // (1) barrier payload
};

}  // namespace dirmoe
