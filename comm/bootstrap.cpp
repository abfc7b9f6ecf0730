// MPI start-up, topology discovery and job-wide abort.
#include "comm/bootstrap.h"

#include <mpi.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "comm/launch_env.h"
#include "comm/mpi_communicator.h"
#include "runtime/core/error.h"
#include "runtime/core/logging.h"

namespace dirmoe {

Topology discover_topology() {
  Topology t;
  DIRMOE_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &t.rank));
  DIRMOE_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &t.world_size));
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  t.hostname = host;

  MPI_Comm node_comm;
  DIRMOE_MPI_CHECK(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, t.rank, MPI_INFO_NULL,
                                       &node_comm));
  DIRMOE_MPI_CHECK(MPI_Comm_rank(node_comm, &t.local_rank));
  DIRMOE_MPI_CHECK(MPI_Comm_size(node_comm, &t.local_size));
  // Node leader = lowest world rank on the node; nodes numbered by their leaders' ranks.
  int leader = t.rank;
  DIRMOE_MPI_CHECK(MPI_Allreduce(MPI_IN_PLACE, &leader, 1, MPI_INT, MPI_MIN, node_comm));
  MPI_Comm_free(&node_comm);
  std::vector<int> leaders(t.world_size);
  DIRMOE_MPI_CHECK(MPI_Allgather(&leader, 1, MPI_INT, leaders.data(), 1, MPI_INT, MPI_COMM_WORLD));
  std::vector<int> unique = leaders;
  std::sort(unique.begin(), unique.end());
  unique.erase(std::unique(unique.begin(), unique.end()), unique.end());
  t.num_nodes = static_cast<int>(unique.size());
  t.node_id = static_cast<int>(std::lower_bound(unique.begin(), unique.end(), leader) - unique.begin());
  return t;
}

MpiRuntime::MpiRuntime(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
      std::fprintf(stderr, "error: MPI_Init failed\n");
      std::exit(2);
    }
    owns_mpi_ = true;
  }
  // Errors come back as return codes so that DIRMOE_MPI_CHECK can name the failing call.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  topology_ = discover_topology();
  set_error_context("rank " + std::to_string(topology_.rank) + "/" +
                    std::to_string(topology_.world_size) + " on " + topology_.hostname);
  set_log_rank(topology_.rank, topology_.world_size);
  // Every rank gets the same verdict, so all of them stop here together, before any work.
  std::vector<std::string> disagreements;
  try {
    disagreements = verify_launch_environment(topology_);
  } catch (const std::exception& e) {
    disagreements = {e.what()};
  }
  if (!disagreements.empty()) {
    if (topology_.rank == 0) {
      std::fprintf(stderr, "error: the launcher's view of this job disagrees with MPI's:\n");
      for (const std::string& d : disagreements) std::fprintf(stderr, "  %s\n", d.c_str());
      std::fprintf(stderr, "(DIRMOE_LAUNCH_CHECK=0 skips this check)\n");
    }
    MPI_Finalize();
    std::exit(2);
  }
  world_ = std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, false, "world");
}

MpiRuntime::~MpiRuntime() {
  world_.reset();
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (owns_mpi_ && !finalized) MPI_Finalize();
}

void abort_job(int code) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  std::fflush(stdout);
  std::fflush(stderr);
  if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

}  // namespace dirmoe
