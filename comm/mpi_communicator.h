// Communicator over an MPI communicator and host buffers (Open MPI here is not CUDA-aware).
#pragma once

#include <mpi.h>

#include "comm/communicator.h"

namespace dirmoe {

class MpiCommunicator final : public Communicator {
 public:
  // Wraps comm; when owned, MPI_Comm_free is called on destruction.
  MpiCommunicator(MPI_Comm comm, bool owned, std::string name);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return name_; }
  MPI_Comm comm() const { return comm_; }

  void all_to_all_v(const void* send, const int64_t* send_counts, void* recv,
                    const int64_t* recv_counts, DType dtype) override;
  void all_to_all(const void* send, void* recv, int64_t count, DType dtype) override;
  void all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op) override;
  void all_gather(const void* send, void* recv, int64_t count, DType dtype) override;
  void broadcast(void* buf, int64_t count, DType dtype, int root) override;
  void barrier() override;
  std::unique_ptr<Communicator> split(int color, int key, const std::string& name) const override;

 private:
  MPI_Comm comm_;
  bool owned_;
  std::string name_;
  int rank_ = 0;
  int size_ = 1;
};

MPI_Datatype mpi_datatype(DType dtype);

}  // namespace dirmoe
