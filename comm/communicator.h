// The collective interface that the token exchange and gradient reductions use. MpiCommunicator
// implements it over host buffers; an NCCL communicator (GPU path) implements the same calls.
// Counts are in ELEMENTS of `dtype`; displacements are implied (contiguous, grouped by rank).
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "runtime/core/dtype.h"

namespace dirmoe {

enum class ReduceOp : uint8_t { kSum, kMax, kMin };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "world", "ep", "expert-replica", ... for messages

  // send holds, for each destination rank r in order, send_counts[r] elements; recv receives, for
  // each source rank r in order, recv_counts[r] elements. Both count arrays have size() entries.
  virtual void all_to_all_v(const void* send, const int64_t* send_counts, void* recv,
                            const int64_t* recv_counts, DType dtype) = 0;
  // Fixed-size all-to-all: count elements to and from every rank (the count exchange).
  virtual void all_to_all(const void* send, void* recv, int64_t count, DType dtype) = 0;
  virtual void all_reduce(void* buf, int64_t count, DType dtype, ReduceOp op) = 0;  // in place
  // recv holds size() * count elements, rank r's at offset r * count.
  virtual void all_gather(const void* send, void* recv, int64_t count, DType dtype) = 0;
  virtual void broadcast(void* buf, int64_t count, DType dtype, int root) = 0;
  virtual void barrier() = 0;
  // Ranks with the same color form a new communicator, ordered by key (then by old rank).
  virtual std::unique_ptr<Communicator> split(int color, int key, const std::string& name) const = 0;
};

}  // namespace dirmoe
