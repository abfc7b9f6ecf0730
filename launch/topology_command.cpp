// `dirmoe topology`: checks a launch before a long job. Prints each rank's place (rank, local
// rank, node, host, launcher) after the launcher/MPI consistency check, then runs an all-to-all
// whose payload encodes (source, destination, index), verifies every element received, and prints
// the bytes each rank sent to each peer, classed as self, intra-node or inter-node traffic.
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "comm/bootstrap.h"
#include "comm/launch_env.h"
#include "launch/commands.h"
#include "runtime/core/error.h"

namespace dirmoe {
namespace {

struct TopologyOptions {
  int64_t bytes_per_peer = 1 << 20;
  int iters = 4;
};

// Element i of what `src` sends to `dst`; the receiver regenerates it to verify.
int32_t payload(int src, int dst, int64_t i) {
  uint64_t x = (static_cast<uint64_t>(src) << 40) ^ (static_cast<uint64_t>(dst) << 20) ^
               static_cast<uint64_t>(i);
  x *= 0x9E3779B97F4A7C15ull;
  return static_cast<int32_t>(x >> 33);
}

int run_topology(const TopologyOptions& opt) {
  MpiRuntime mpi(nullptr, nullptr);
  const Topology& t = mpi.topology();
  try {
    DIRMOE_CHECK(opt.bytes_per_peer >= 4 && opt.bytes_per_peer % 4 == 0,
                 "--bytes-per-peer must be a positive multiple of 4, got ", opt.bytes_per_peer);
    DIRMOE_CHECK(opt.iters >= 1, "--iters must be at least 1, got ", opt.iters);
    Communicator& world = mpi.world();
    const int w = t.world_size;

    // Everyone's place, gathered so rank 0 prints one ordered table.
    LaunchEnv le = read_launch_env(launch_variables_from_environment());
    int mine[5] = {t.local_rank, t.local_size, t.node_id, t.num_nodes,
                   static_cast<int>(le.launcher)};
    std::vector<int> places(5 * w);
    world.all_gather(mine, places.data(), 5, DType::kI32);
    char host[64] = {0};
    std::snprintf(host, sizeof host, "%s", t.hostname.c_str());
    std::vector<char> hosts(64 * w);
    world.all_gather(host, hosts.data(), 64, DType::kU8);
    if (t.rank == 0)
      for (int r = 0; r < w; ++r) {
        const int* p = &places[5 * r];
        std::printf(
            "topology rank=%d world=%d local_rank=%d local_size=%d node=%d nodes=%d "
            "host=%s launcher=%s\n",
            r, w, p[0], p[1], p[2], p[3], &hosts[64 * r],
            launcher_name(static_cast<Launcher>(p[4])));
      }

    // The all-to-all: n int32 to and from every rank, payload keyed by (src, dst, index).
    const int64_t n = opt.bytes_per_peer / 4;
    std::vector<int32_t> send(n * w), recv(n * w);  // [w][n]
    std::vector<int64_t> counts(w, n);
    for (int dst = 0; dst < w; ++dst)
      for (int64_t i = 0; i < n; ++i) send[dst * n + i] = payload(t.rank, dst, i);
    world.barrier();
    auto start = std::chrono::steady_clock::now();
    for (int it = 0; it < opt.iters; ++it)
      world.all_to_all_v(send.data(), counts.data(), recv.data(), counts.data(), DType::kI32);
    double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    int64_t wrong = 0;
    for (int src = 0; src < w; ++src)
      for (int64_t i = 0; i < n; ++i) wrong += recv[src * n + i] != payload(src, t.rank, i);
    world.all_reduce(&wrong, 1, DType::kI64, ReduceOp::kSum);
    world.all_reduce(&seconds, 1, DType::kF64, ReduceOp::kMax);

    // Bytes sent per (source, peer), classed by MPI's node ids.
    if (t.rank == 0) {
      int64_t bytes[3] = {0, 0, 0};  // self, intra-node, inter-node
      const char* kinds[3] = {"self", "intra", "inter"};
      for (int src = 0; src < w; ++src)
        for (int dst = 0; dst < w; ++dst) {
          const int a = places[5 * src + 2], b = places[5 * dst + 2];
          const int kind = src == dst ? 0 : (a == b ? 1 : 2);
          const int64_t sent = opt.bytes_per_peer * opt.iters;
          bytes[kind] += sent;
          std::printf("traffic src=%d dst=%d src_node=%d dst_node=%d kind=%s bytes=%lld\n", src,
                      dst, a, b, kinds[kind], static_cast<long long>(sent));
        }
      const double moved = static_cast<double>(bytes[1] + bytes[2]) / opt.iters / w;
      std::printf(
          "all-to-all ranks=%d nodes=%d bytes_per_peer=%lld iters=%d self_bytes=%lld "
          "intra_bytes=%lld inter_bytes=%lld wrong=%lld seconds=%.6f "
          "per_rank_GBps=%.3f\n",
          w, t.num_nodes, static_cast<long long>(opt.bytes_per_peer), opt.iters,
          static_cast<long long>(bytes[0]), static_cast<long long>(bytes[1]),
          static_cast<long long>(bytes[2]), static_cast<long long>(wrong), seconds,
          moved / (seconds / opt.iters) / 1e9);
      std::fflush(stdout);
    }
    if (wrong != 0) {
      if (t.rank == 0)
        std::fprintf(stderr, "error: %lld element(s) of the all-to-all arrived wrong\n",
                     static_cast<long long>(wrong));
      return 1;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    if (t.world_size > 1) abort_job(1);
    return 1;
  }
}

}  // namespace

void register_topology_command(CLI::App& app, int* exit_code) {
  auto opt = std::make_shared<TopologyOptions>();
  auto* cmd = app.add_subcommand(
      "topology",
      "check a launch: every rank's place (rank, local rank, node, host), then an "
      "all-to-all verified element by element, its bytes per peer classed "
      "self/intra-node/inter-node");
  cmd->add_option("--bytes-per-peer", opt->bytes_per_peer,
                  "bytes each rank sends to every rank per all-to-all (multiple of 4)")
      ->capture_default_str();
  cmd->add_option("--iters", opt->iters, "all-to-alls to run")->capture_default_str();
  cmd->callback([opt, exit_code]() { *exit_code = run_topology(*opt); });
}

}  // namespace dirmoe
