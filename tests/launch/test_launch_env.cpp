// The launcher/MPI consistency check as a pure function: environments as mpirun, srun and a Slurm
// batch shell really set them (values seen under Open MPI 4.1 and Slurm 22.05), each against a
// hand-written MPI topology; every disagreement must name the variable and both values.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "comm/launch_env.h"
#include "runtime/core/error.h"

namespace dirmoe {
namespace {

// MPI's view of rank r when ranks are laid out in blocks of `per_node` per node.
std::vector<Topology> block_topology(int world, int per_node, const std::string& host = "n") {
  std::vector<Topology> out;
  const int nodes = (world + per_node - 1) / per_node;
  for (int r = 0; r < world; ++r) {
    const int node = r / per_node;
    const int local_size = std::min(per_node, world - node * per_node);
    out.push_back(
        Topology{r, world, r % per_node, local_size, node, nodes, host + std::to_string(node)});
  }
  return out;
}

EnvMap mpirun_env(int rank, int world, int local, int local_size) {
  return {{"OMPI_COMM_WORLD_RANK", std::to_string(rank)},
          {"OMPI_COMM_WORLD_SIZE", std::to_string(world)},
          {"OMPI_COMM_WORLD_LOCAL_RANK", std::to_string(local)},
          {"OMPI_COMM_WORLD_LOCAL_SIZE", std::to_string(local_size)},
          {"PMIX_RANK", std::to_string(rank)}};
}

EnvMap srun_env(int rank, int world, int local, int node, int nodes, const std::string& per_node) {
  return {{"SLURM_STEP_ID", "0"},
          {"SLURM_PROCID", std::to_string(rank)},
          {"SLURM_STEP_NUM_TASKS", std::to_string(world)},
          {"SLURM_NTASKS", std::to_string(world)},
          {"SLURM_LOCALID", std::to_string(local)},
          {"SLURM_NODEID", std::to_string(node)},
          {"SLURM_STEP_NUM_NODES", std::to_string(nodes)},
          {"SLURM_STEP_TASKS_PER_NODE", per_node},
          {"PMIX_RANK", std::to_string(rank)}};
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& m : v) s += m + "\n";
  return s;
}

TEST(LaunchEnv, DetectsEachLauncher) {
  EXPECT_EQ(read_launch_env(mpirun_env(1, 4, 1, 2)).launcher, Launcher::kMpirun);
  EXPECT_EQ(read_launch_env(srun_env(1, 4, 1, 0, 2, "2(x2)")).launcher, Launcher::kSrun);
  EXPECT_EQ(read_launch_env({{"PMIX_RANK", "3"}}).launcher, Launcher::kPmix);
  EXPECT_EQ(read_launch_env({}).launcher, Launcher::kNone);
  EXPECT_STREQ(launcher_name(Launcher::kSrun), "srun");
}

TEST(LaunchEnv, ReadsEveryValueWithItsVariable) {
  LaunchEnv le = read_launch_env(srun_env(5, 6, 1, 1, 2, "4,2"));
  ASSERT_EQ(le.rank.size(), 2u);
  EXPECT_EQ(le.rank[0].var, "SLURM_PROCID");
  EXPECT_EQ(le.rank[0].value, 5);
  EXPECT_EQ(le.rank[1].var, "PMIX_RANK");
  EXPECT_EQ(le.world_size.var, "SLURM_STEP_NUM_TASKS");
  EXPECT_EQ(le.world_size.value, 6);
  EXPECT_EQ(le.local_rank.value, 1);
  EXPECT_EQ(le.node_id.value, 1);
  EXPECT_EQ(le.num_nodes.value, 2);
  EXPECT_EQ(le.local_size.var, "SLURM_STEP_TASKS_PER_NODE[1]");
  EXPECT_EQ(le.local_size.value, 2);
  EXPECT_TRUE(le.problems.empty()) << joined(le.problems);
}

// mpirun inside a Slurm allocation: every rank inherits the batch shell's SLURM_PROCID=0 and
// SLURM_LOCALID=0 (seen under sbatch + mpirun); they describe the allocation and must be ignored.
TEST(LaunchEnv, MpirunInsideSlurmIgnoresInheritedSlurmVariables) {
  std::vector<EnvMap> envs;
  for (int r = 0; r < 4; ++r) {
    EnvMap e = mpirun_env(r, 4, r % 2, 2);
    e["SLURM_PROCID"] = "0";
    e["SLURM_LOCALID"] = "0";
    e["SLURM_NODEID"] = "0";
    e["SLURM_STEP_ID"] = "0";  // orted itself was started by srun
    e["SLURM_NTASKS"] = "2";
    envs.push_back(e);
  }
  EXPECT_EQ(joined(check_launch_consistency(envs, block_topology(4, 2))), "");
}

TEST(LaunchEnv, ConsistentLaunchesPass) {
  std::vector<EnvMap> mp, sr, none(1);
  for (int r = 0; r < 4; ++r) mp.push_back(mpirun_env(r, 4, r % 2, 2));
  for (int r = 0; r < 5; ++r) sr.push_back(srun_env(r, 5, r % 3, r / 3, 2, "3,2"));
  EXPECT_EQ(joined(check_launch_consistency(mp, block_topology(4, 2))), "");
  EXPECT_EQ(joined(check_launch_consistency(sr, block_topology(5, 3))), "");
  EXPECT_EQ(joined(check_launch_consistency(none, block_topology(1, 1))), "");
}

TEST(LaunchEnv, RankMismatchNamesVariableAndBothValues) {
  std::vector<EnvMap> envs;
  for (int r = 0; r < 2; ++r) envs.push_back(mpirun_env(r, 2, r, 2));
  envs[1]["OMPI_COMM_WORLD_RANK"] = "3";
  auto msgs = check_launch_consistency(envs, block_topology(2, 2));
  ASSERT_EQ(msgs.size(), 1u) << joined(msgs);
  EXPECT_EQ(msgs[0], "rank 1 (host n0): OMPI_COMM_WORLD_RANK=3, but MPI_Comm_rank says 1");
}

TEST(LaunchEnv, WorldSizeMismatchNamesVariableAndBothValues) {
  // sbatch --ntasks=4 but MPI saw 2 ranks (e.g. two separate jobs of 2).
  std::vector<EnvMap> envs;
  for (int r = 0; r < 2; ++r) {
    envs.push_back(srun_env(r, 4, r, 0, 1, "4"));
    envs.back().erase("SLURM_STEP_NUM_TASKS");
  }
  auto msgs = check_launch_consistency(envs, block_topology(2, 2));
  ASSERT_EQ(msgs.size(), 4u) << joined(msgs);
  EXPECT_EQ(msgs[0], "rank 0 (host n0): SLURM_NTASKS=4, but MPI_COMM_WORLD has 2 rank(s)");
  EXPECT_EQ(msgs[1],
            "rank 0 (host n0): SLURM_STEP_TASKS_PER_NODE[0]=4, but MPI finds 2 rank(s) "
            "on its node");
}

TEST(LaunchEnv, LocalRankMismatchAgainstSharedMemorySplit) {
  std::vector<EnvMap> envs;
  for (int r = 0; r < 4; ++r) envs.push_back(mpirun_env(r, 4, r % 2, 2));
  // MPI sees all four on one node (e.g. a hostfile naming one machine twice under two names).
  auto msgs = check_launch_consistency(envs, block_topology(4, 4));
  ASSERT_EQ(msgs.size(), 6u) << joined(msgs);
  EXPECT_EQ(msgs[0],
            "rank 0 (host n0): OMPI_COMM_WORLD_LOCAL_SIZE=2, but MPI finds 4 rank(s) on "
            "its node");
  EXPECT_EQ(msgs[1],
            "rank 1 (host n0): OMPI_COMM_WORLD_LOCAL_SIZE=2, but MPI finds 4 rank(s) on "
            "its node");
  EXPECT_EQ(msgs[2],
            "rank 2 (host n0): OMPI_COMM_WORLD_LOCAL_RANK=0, but it is local rank 2 of 4 "
            "on its node by MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)");
}

TEST(LaunchEnv, NodesComparedAsPartition) {
  // Slurm numbers nodes by host list: rank 0 may sit on SLURM_NODEID 1. Same partition: fine.
  std::vector<EnvMap> envs;
  for (int r = 0; r < 4; ++r) envs.push_back(srun_env(r, 4, r % 2, 1 - r / 2, 2, "2(x2)"));
  EXPECT_EQ(joined(check_launch_consistency(envs, block_topology(4, 2))), "");

  // Two MPI nodes that Slurm calls one.
  for (int r = 0; r < 4; ++r) envs[r]["SLURM_NODEID"] = "0";
  auto msgs = check_launch_consistency(envs, block_topology(4, 2));
  ASSERT_EQ(msgs.size(), 2u) << joined(msgs);
  EXPECT_EQ(msgs[0],
            "rank 2 (host n1): SLURM_NODEID=0 as rank 0 (host n0) has, but MPI puts them "
            "on different nodes (0 and 1)");

  // One MPI node that Slurm splits in two.
  for (int r = 0; r < 4; ++r) envs[r]["SLURM_NODEID"] = std::to_string(r / 2);
  msgs = check_launch_consistency(envs, block_topology(4, 4));
  bool found = false;
  for (const auto& m : msgs)
    found |= m ==
             "rank 2 (host n0): SLURM_NODEID=1, but rank 0 (host n0), on the same node by "
             "MPI, has SLURM_NODEID=0";
  EXPECT_TRUE(found) << joined(msgs);
  found = false;
  for (const auto& m : msgs)
    found |= m == "rank 0 (host n0): SLURM_STEP_NUM_NODES=2, but MPI finds 1 node(s)";
  EXPECT_TRUE(found) << joined(msgs);
}

TEST(LaunchEnv, MalformedValuesAreNamed) {
  std::vector<EnvMap> envs = {mpirun_env(0, 1, 0, 1)};
  envs[0]["OMPI_COMM_WORLD_SIZE"] = "two";
  auto msgs = check_launch_consistency(envs, block_topology(1, 1));
  ASSERT_EQ(msgs.size(), 1u) << joined(msgs);
  EXPECT_EQ(msgs[0], "rank 0 (host n0): OMPI_COMM_WORLD_SIZE='two' is not a non-negative integer");

  envs = {srun_env(0, 1, 0, 0, 1, "1(x")};
  msgs = check_launch_consistency(envs, block_topology(1, 1));
  ASSERT_EQ(msgs.size(), 1u) << joined(msgs);
  EXPECT_EQ(msgs[0],
            "rank 0 (host n0): SLURM_STEP_TASKS_PER_NODE='1(x' is not a Slurm task count "
            "list");
}

TEST(LaunchEnv, BatchShellWithoutSrunIsANote) {
  LaunchEnv le = read_launch_env({{"SLURM_NTASKS", "2"}, {"SLURM_PROCID", "0"}});
  EXPECT_EQ(le.launcher, Launcher::kNone);
  ASSERT_EQ(le.notes.size(), 1u);
  EXPECT_NE(le.notes[0].find("SLURM_NTASKS=2"), std::string::npos) << le.notes[0];
  EXPECT_NE(le.notes[0].find("srun --mpi=pmix"), std::string::npos) << le.notes[0];
  EXPECT_TRUE(le.rank.empty());
}

TEST(SlurmTasksPerNode, ExpandsCompressedLists) {
  EXPECT_EQ(parse_slurm_tasks_per_node("2"), (std::vector<int>{2}));
  EXPECT_EQ(parse_slurm_tasks_per_node("2(x3),1"), (std::vector<int>{2, 2, 2, 1}));
  EXPECT_EQ(parse_slurm_tasks_per_node("4,2(x2)"), (std::vector<int>{4, 2, 2}));
  for (const char* bad : {"", "x", "2(x0)", "2(x3", "2,,1", "-1", "2(3)"})
    EXPECT_THROW(parse_slurm_tasks_per_node(bad), Error) << "'" << bad << "'";
}

}  // namespace
}  // namespace dirmoe
