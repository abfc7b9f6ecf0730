// Step profiler: on the steps `profile:` selects, arms trace::Recorder, then gathers every rank's
// phase events and all-to-all traffic records to rank 0, which appends them to
// RUN_DIR/traffic.jsonl (one line per exchange: layer, direction, pass, rank x rank tokens and
// bytes, time per rank, effective bandwidth) and RUN_DIR/trace.json (Chrome trace / Perfetto:
// pid = rank, complete "X" events in microseconds). On other steps it costs nothing.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <vector>

#include "comm/communicator.h"
#include "runtime/observe_config.h"

namespace dirmoe {

class Profiler {
 public:
  // Collective over `world` (a barrier sets the common time origin). `run_dir` is used on rank 0;
  // ep: EP group size (world rank r is EP rank r % ep of group r / ep); last_step: the run's last
  // step, to tell the user when profile.steps lies (partly) outside the run.
  Profiler(const ProfileConfig& cfg, Communicator& world, int ep,
           const std::filesystem::path& run_dir, int64_t last_step);
  ~Profiler();

  // 1-based step. Returns whether the step is profiled (the same answer on every rank).
  bool begin_step(int64_t step);
  // Collective when the step was profiled. Returns the step's all-to-all time: the sum over its
  // exchanges of the slowest rank's time (0 when not profiled).
  double end_step(int64_t step);
  // Closes trace.json (also done by the destructor).
  void finish();

 private:
  void write_traffic(int64_t step, size_t num_records, const std::vector<int64_t>& rows,
                     const std::vector<double>& secs, double* alltoall_s);
  void write_trace(const std::vector<int64_t>& events, int64_t per_rank);

  ProfileConfig cfg_;
  Communicator& world_;
  int W_, rank_, ep_;
  bool active_ = false;
  bool trace_open_ = false;
  bool first_event_ = true;
  std::ofstream traffic_, trace_;
  std::filesystem::path run_dir_;
};

}  // namespace dirmoe
