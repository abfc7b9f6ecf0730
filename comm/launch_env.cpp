// Launcher variables (Open MPI, Slurm, PMIx) against MPI's topology: parsing, the consistency
// check over all ranks, and the collective that runs it at start-up.
#include "comm/launch_env.h"

#include <mpi.h>

#include <charconv>
#include <cstdlib>
#include <set>

#include "runtime/core/error.h"
#include "runtime/core/logging.h"

namespace dirmoe {

namespace {

// Every variable read_launch_env may look at.
const char* const kLaunchVariables[] = {
    "OMPI_COMM_WORLD_RANK",
    "OMPI_COMM_WORLD_SIZE",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "OMPI_COMM_WORLD_LOCAL_SIZE",
    "PMIX_RANK",
    "SLURM_STEP_ID",
    "SLURM_PROCID",
    "SLURM_STEP_NUM_TASKS",
    "SLURM_NTASKS",
    "SLURM_LOCALID",
    "SLURM_NODEID",
    "SLURM_STEP_NUM_NODES",
    "SLURM_NNODES",
    "SLURM_STEP_TASKS_PER_NODE",
    "SLURM_TASKS_PER_NODE",
};

const std::string* find(const EnvMap& env, const std::string& name) {
  auto it = env.find(name);
  return it == env.end() ? nullptr : &it->second;
}

bool parse_count(const std::string& text, int* out) {
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, *out);
  return ec == std::errc() && ptr == end && !text.empty() && *out >= 0;
}

// Reads the first of `names` that is set; a value that is not a non-negative integer is a problem.
LaunchValue read_value(const EnvMap& env, std::initializer_list<const char*> names,
                       std::vector<std::string>* problems) {
  LaunchValue v;
  for (const char* name : names) {
    const std::string* text = find(env, name);
    if (!text) continue;
    if (parse_count(*text, &v.value)) {
      v.var = name;
    } else {
      problems->push_back(std::string(name) + "='" + *text + "' is not a non-negative integer");
    }
    return v;
  }
  return v;
}

std::string where(int rank, const Topology& t) {
  return "rank " + std::to_string(rank) + " (host " + t.hostname + ")";
}

}  // namespace

const char* launcher_name(Launcher launcher) {
  switch (launcher) {
    case Launcher::kMpirun:
      return "mpirun";
    case Launcher::kSrun:
      return "srun";
    case Launcher::kPmix:
      return "pmix";
    case Launcher::kNone:
      break;
  }
  return "none";
}

EnvMap launch_variables_from_environment() {
  EnvMap env;
  for (const char* name : kLaunchVariables)
    if (const char* v = std::getenv(name)) env[name] = v;
  return env;
}

std::vector<int> parse_slurm_tasks_per_node(const std::string& text) {
  std::vector<int> out;
  size_t pos = 0;
  auto fail = [&]() {
    DIRMOE_FAIL("Slurm task counts per node '", text, "' are malformed (expected e.g. '2(x3),1')");
  };
  if (text.empty()) fail();
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    std::string item =
        text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    int tasks = 0, repeat = 1;
    size_t paren = item.find("(x");
    if (paren == std::string::npos) {
      if (!parse_count(item, &tasks)) fail();
    } else {
      if (item.back() != ')' || !parse_count(item.substr(0, paren), &tasks) ||
          !parse_count(item.substr(paren + 2, item.size() - paren - 3), &repeat) || repeat < 1)
        fail();
    }
    out.insert(out.end(), repeat, tasks);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

LaunchEnv read_launch_env(const EnvMap& env) {
  LaunchEnv le;
  auto& p = le.problems;
  if (find(env, "OMPI_COMM_WORLD_RANK")) {
    le.launcher = Launcher::kMpirun;
    le.rank.push_back(read_value(env, {"OMPI_COMM_WORLD_RANK"}, &p));
    le.world_size = read_value(env, {"OMPI_COMM_WORLD_SIZE"}, &p);
    le.local_rank = read_value(env, {"OMPI_COMM_WORLD_LOCAL_RANK"}, &p);
    le.local_size = read_value(env, {"OMPI_COMM_WORLD_LOCAL_SIZE"}, &p);
  } else if (find(env, "SLURM_STEP_ID") && find(env, "SLURM_PROCID")) {
    le.launcher = Launcher::kSrun;
    le.rank.push_back(read_value(env, {"SLURM_PROCID"}, &p));
    le.world_size = read_value(env, {"SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"}, &p);
    le.local_rank = read_value(env, {"SLURM_LOCALID"}, &p);
    le.node_id = read_value(env, {"SLURM_NODEID"}, &p);
    le.num_nodes = read_value(env, {"SLURM_STEP_NUM_NODES", "SLURM_NNODES"}, &p);
    for (const char* name : {"SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"}) {
      const std::string* text = find(env, name);
      if (!text || !le.node_id.stated()) continue;
      try {
        std::vector<int> per_node = parse_slurm_tasks_per_node(*text);
        if (le.node_id.value < static_cast<int>(per_node.size())) {
          le.local_size.var = std::string(name) + "[" + std::to_string(le.node_id.value) + "]";
          le.local_size.value = per_node[le.node_id.value];
        } else {
          p.push_back(std::string(name) + "='" + *text + "' lists " +
                      std::to_string(per_node.size()) +
                      " node(s) but SLURM_NODEID=" + std::to_string(le.node_id.value));
        }
      } catch (const Error&) {
        p.push_back(std::string(name) + "='" + *text + "' is not a Slurm task count list");
      }
      break;
    }
  } else if (find(env, "PMIX_RANK")) {
    le.launcher = Launcher::kPmix;
  } else if (const std::string* ntasks = find(env, "SLURM_NTASKS")) {
    int n = 0;
    if (parse_count(*ntasks, &n) && n > 1)
      le.notes.push_back("this is a Slurm job with SLURM_NTASKS=" + *ntasks +
                         ", but the process was started without srun or mpirun, so it runs "
                         "alone; start it with `srun --mpi=pmix`");
  }
  // PMIx states the rank under every PMIx launcher (Open MPI's own runtime and srun --mpi=pmix).
  if (find(env, "PMIX_RANK")) le.rank.push_back(read_value(env, {"PMIX_RANK"}, &p));
  std::erase_if(le.rank, [](const LaunchValue& v) { return !v.stated(); });
  return le;
}

std::vector<std::string> check_launch_consistency(const std::vector<EnvMap>& env_of_rank,
                                                  const std::vector<Topology>& mpi_of_rank) {
  DIRMOE_CHECK(env_of_rank.size() == mpi_of_rank.size(),
               "launch check needs one environment per "
               "rank: ",
               env_of_rank.size(), " environments for ", mpi_of_rank.size(), " ranks");
  std::vector<std::string> out;
  auto said = [](const LaunchValue& v) { return v.var + "=" + std::to_string(v.value); };
  // Node partition: first rank seen per SLURM_NODEID and per MPI node.
  std::map<int, int> first_rank_of_env_node, first_rank_of_mpi_node;
  for (size_t r = 0; r < env_of_rank.size(); ++r) {
    const Topology& t = mpi_of_rank[r];
    const std::string at = where(static_cast<int>(r), t);
    LaunchEnv le = read_launch_env(env_of_rank[r]);
    for (const std::string& problem : le.problems) out.push_back(at + ": " + problem);
    for (const LaunchValue& v : le.rank)
      if (v.value != t.rank)
        out.push_back(at + ": " + said(v) + ", but MPI_Comm_rank says " + std::to_string(t.rank));
    if (le.world_size.stated() && le.world_size.value != t.world_size)
      out.push_back(at + ": " + said(le.world_size) + ", but MPI_COMM_WORLD has " +
                    std::to_string(t.world_size) + " rank(s)");
    if (le.local_rank.stated() && le.local_rank.value != t.local_rank)
      out.push_back(at + ": " + said(le.local_rank) + ", but it is local rank " +
                    std::to_string(t.local_rank) + " of " + std::to_string(t.local_size) +
                    " on its node by MPI_Comm_split_type(MPI_COMM_TYPE_SHARED)");
    if (le.local_size.stated() && le.local_size.value != t.local_size)
      out.push_back(at + ": " + said(le.local_size) + ", but MPI finds " +
                    std::to_string(t.local_size) + " rank(s) on its node");
    if (le.num_nodes.stated() && le.num_nodes.value != t.num_nodes)
      out.push_back(at + ": " + said(le.num_nodes) + ", but MPI finds " +
                    std::to_string(t.num_nodes) + " node(s)");
    if (le.node_id.stated()) {
      auto [env_it, env_new] = first_rank_of_env_node.emplace(le.node_id.value, r);
      auto [mpi_it, mpi_new] = first_rank_of_mpi_node.emplace(t.node_id, r);
      const int s_env = env_it->second, s_mpi = mpi_it->second;
      if (!env_new && mpi_of_rank[s_env].node_id != t.node_id)
        out.push_back(at + ": " + said(le.node_id) + " as rank " + std::to_string(s_env) +
                      " (host " + mpi_of_rank[s_env].hostname +
                      ") has, but MPI puts them on "
                      "different nodes (" +
                      std::to_string(mpi_of_rank[s_env].node_id) + " and " +
                      std::to_string(t.node_id) + ")");
      else if (!mpi_new && s_mpi != s_env)
        out.push_back(at + ": " + said(le.node_id) + ", but rank " + std::to_string(s_mpi) +
                      " (host " + mpi_of_rank[s_mpi].hostname +
                      "), on the same node by MPI, has "
                      "SLURM_NODEID=" +
                      env_of_rank[s_mpi].at("SLURM_NODEID"));
    }
  }
  return out;
}

std::vector<std::string> verify_launch_environment(const Topology& topology) {
  if (const char* knob = std::getenv("DIRMOE_LAUNCH_CHECK")) {
    const std::string k = knob;
    DIRMOE_CHECK(k == "0" || k == "1", "DIRMOE_LAUNCH_CHECK must be 0 or 1, got '", k, "'");
    if (k == "0") return {};
  }
  // Each rank's record: six topology ints, then "host\0KEY\0VALUE\0KEY\0VALUE\0...".
  const EnvMap mine = launch_variables_from_environment();
  std::string blob = topology.hostname;
  blob.push_back('\0');
  for (const auto& [k, v] : mine) {
    blob += k;
    blob.push_back('\0');
    blob += v;
    blob.push_back('\0');
  }
  const int world = topology.world_size;
  int ints[6] = {topology.rank,       topology.world_size, topology.local_rank,
                 topology.local_size, topology.node_id,    topology.num_nodes};
  std::vector<int> all_ints(6 * world), lengths(world), offsets(world);
  DIRMOE_MPI_CHECK(MPI_Allgather(ints, 6, MPI_INT, all_ints.data(), 6, MPI_INT, MPI_COMM_WORLD));
  int length = static_cast<int>(blob.size());
  DIRMOE_MPI_CHECK(MPI_Allgather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, MPI_COMM_WORLD));
  int total = 0;
  for (int r = 0; r < world; ++r) {
    offsets[r] = total;
    total += lengths[r];
  }
  std::string all(total, '\0');
  DIRMOE_MPI_CHECK(MPI_Allgatherv(blob.data(), length, MPI_CHAR, all.data(), lengths.data(),
                                  offsets.data(), MPI_CHAR, MPI_COMM_WORLD));
  std::vector<EnvMap> envs(world);
  std::vector<Topology> topos(world);
  for (int r = 0; r < world; ++r) {
    const int* v = &all_ints[6 * r];
    topos[r] = Topology{v[0], v[1], v[2], v[3], v[4], v[5], ""};
    std::vector<std::string> fields;
    for (size_t pos = offsets[r], end = offsets[r] + lengths[r]; pos < end;) {
      size_t nul = all.find('\0', pos);
      fields.push_back(all.substr(pos, nul - pos));
      pos = nul + 1;
    }
    topos[r].hostname = fields.at(0);
    for (size_t i = 1; i + 1 < fields.size(); i += 2) envs[r][fields[i]] = fields[i + 1];
  }
  if (topology.rank == 0)
    for (const std::string& note : read_launch_env(mine).notes)
      log_message(LogLevel::kWarn, false, note);
  return check_launch_consistency(envs, topos);
}

}  // namespace dirmoe
