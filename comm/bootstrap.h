// MPI start-up and topology: rank, world, local rank and node from MPI itself (MPI_Comm_split_type
// with MPI_COMM_TYPE_SHARED, which is right under mpirun and srun alike), and the job-wide abort.
#pragma once

#include <memory>
#include <string>

#include "comm/communicator.h"

namespace dirmoe {

struct Topology {
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;   // rank among the processes on this node
  int local_size = 1;   // processes on this node
  int node_id = 0;      // 0..num_nodes-1, ordered by the lowest world rank on each node
  int num_nodes = 1;
  std::string hostname;
};

// Owns MPI for the life of the process: MPI_Init in the constructor (unless already initialised),
// MPI_Finalize in the destructor. Sets the error and log context ("rank r/w on host").
class MpiRuntime {
 public:
  MpiRuntime(int* argc, char*** argv);
  ~MpiRuntime();
  MpiRuntime(const MpiRuntime&) = delete;
  MpiRuntime& operator=(const MpiRuntime&) = delete;

  const Topology& topology() const { return topology_; }
  Communicator& world() { return *world_; }

 private:
  Topology topology_;
  std::unique_ptr<Communicator> world_;
  bool owns_mpi_ = false;
};

// Computes the topology of MPI_COMM_WORLD (MPI must be initialised).
Topology discover_topology();

// Ends the whole job (every rank) with the given exit code: MPI_Abort when MPI is up, else exit.
[[noreturn]] void abort_job(int code);

}  // namespace dirmoe
