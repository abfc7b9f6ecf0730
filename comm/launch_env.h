// What the launcher (Open MPI's mpirun, Slurm's srun, a PMIx launcher) tells each process about its
// place in the job -- rank, world size, local rank, node -- checked against MPI's own view
// (MPI_Comm_rank/size and the MPI_COMM_TYPE_SHARED split of bootstrap.h) before training starts, so
// that a job laid out differently from what the user asked for stops with a message naming both.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "comm/bootstrap.h"

namespace dirmoe {

using EnvMap = std::map<std::string, std::string>;

// Who started the process, decided from its environment in this order: Open MPI's mpirun/orted
// (OMPI_COMM_WORLD_RANK; Slurm variables are then the enclosing allocation's, not this process's),
// Slurm's srun (SLURM_STEP_ID and SLURM_PROCID), another PMIx launcher (PMIX_RANK), none.
enum class Launcher { kNone, kMpirun, kSrun, kPmix };
const char* launcher_name(Launcher launcher);

// One value the launcher states, with the variable it came from; var is empty when not stated.
struct LaunchValue {
  std::string var;
  int value = -1;
  bool stated() const { return !var.empty(); }
};

struct LaunchEnv {
  Launcher launcher = Launcher::kNone;
  // Every variable stating the world rank (OMPI_COMM_WORLD_RANK | SLURM_PROCID, and PMIX_RANK).
  std::vector<LaunchValue> rank;
  LaunchValue world_size;  // OMPI_COMM_WORLD_SIZE | SLURM_STEP_NUM_TASKS (else SLURM_NTASKS)
  LaunchValue local_rank;  // OMPI_COMM_WORLD_LOCAL_RANK | SLURM_LOCALID
  LaunchValue local_size;  // OMPI_COMM_WORLD_LOCAL_SIZE | SLURM_STEP_TASKS_PER_NODE[node]
  LaunchValue node_id;     // SLURM_NODEID
  LaunchValue num_nodes;   // SLURM_STEP_NUM_NODES (else SLURM_NNODES)
  std::vector<std::string> problems;  // malformed values, each naming the variable and its text
  std::vector<std::string> notes;     // harmless but worth saying (e.g. a Slurm job without srun)
};

// The variables read_launch_env looks at, taken from the process environment.
EnvMap launch_variables_from_environment();

// Parses one process's launcher variables. Pure: no MPI, no process environment.
LaunchEnv read_launch_env(const EnvMap& env);

// Expands Slurm's compressed task counts per node, "2(x3),1" -> {2, 2, 2, 1}; throws dirmoe::Error
// naming the text when it is malformed.
std::vector<int> parse_slurm_tasks_per_node(const std::string& text);

// Checks what the launcher told every rank against MPI's topology of the same rank
// (env_of_rank[r] and mpi_of_rank[r] for every world rank r). Each disagreement is one message
// naming the rank, its host, the variable, its value and MPI's value; empty when consistent.
// Node ids are compared as a partition: ranks share a SLURM_NODEID exactly when MPI puts them on
// one node (Slurm numbers nodes by host list, MPI by lowest rank; both are valid numberings).
std::vector<std::string> check_launch_consistency(const std::vector<EnvMap>& env_of_rank,
                                                  const std::vector<Topology>& mpi_of_rank);

// Collective over MPI_COMM_WORLD: gathers every rank's launcher variables and topology and runs
// check_launch_consistency on the whole table, so every rank returns the same messages. Empty
// when consistent, or when DIRMOE_LAUNCH_CHECK=0 turns the check off.
std::vector<std::string> verify_launch_environment(const Topology& topology);

}  // namespace dirmoe
