// Helpers of the end-to-end tests: run the dirmoe binary through mpiexec with a hard time limit,
// read a run directory's metrics.jsonl. Paths come from CTest's environment (DIRMOE_SOURCE_DIR,
// DIRMOE_BIN, DIRMOE_MPIEXEC).
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dirmoe::e2e {

namespace fs = std::filesystem;

inline std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

struct Proc {
  int code = -1;        // exit code, or 128 + signal
  std::string output;   // stdout and stderr
  double seconds = 0;   // wall clock
};

// Runs a shell command, killed after timeout_s; stdout+stderr captured.
inline Proc sh(const std::string& cmd, int timeout_s = 300) {
  static int serial = 0;
  fs::path log = fs::temp_directory_path() / ("dirmoe_e2e_" + std::to_string(::getpid()) + "_" +
                                              std::to_string(serial++) + ".log");
  std::string full =
      "timeout -s KILL " + std::to_string(timeout_s) + " " + cmd + " > " + log.string() + " 2>&1";
  auto t0 = std::chrono::steady_clock::now();
  int rc = std::system(full.c_str());
  Proc r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.code = WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
  std::ifstream in(log);
  std::stringstream ss;
  ss << in.rdbuf();
  r.output = ss.str();
  fs::remove(log);
  return r;
}

inline bool has(const Proc& r, const std::string& needle) {
  return r.output.find(needle) != std::string::npos;
}

inline std::string src() { return env("DIRMOE_SOURCE_DIR"); }
inline std::string bin() { return env("DIRMOE_BIN"); }
inline std::string corpus() { return src() + "/data/brown/brown_gpt2"; }
inline std::string mpiexec(int np) {
  return env("DIRMOE_MPIEXEC") + " -n " + std::to_string(np) + " --oversubscribe ";
}

// An empty directory <cwd>/<group>/<name>.
inline fs::path work_dir(const std::string& group, const std::string& name) {
  fs::path p = fs::current_path() / group / name;
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

inline void require_corpus() {
  ASSERT_TRUE(fs::exists(corpus() + ".idx"))
      << "bundled corpus missing at " << corpus()
      << ".idx: run `bash launch/data/build_default_corpus.sh` (the README's setup does)";
}

inline std::vector<nlohmann::json> records(const fs::path& run_dir) {
  std::ifstream in(run_dir / "metrics.jsonl");
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

// Training losses in step order.
inline std::vector<double> step_losses(const fs::path& run_dir) {
  std::vector<double> out;
  for (const auto& r : records(run_dir))
    if (r.contains("loss")) out.push_back(r["loss"].get<double>());
  return out;
}

// step -> training loss.
inline std::map<int, double> step_loss_map(const fs::path& run_dir) {
  std::map<int, double> out;
  for (const auto& r : records(run_dir))
    if (r.contains("loss")) out[r["step"].get<int>()] = r["loss"].get<double>();
  return out;
}

// Small but real: the tiny preset shortened for tests (no final checkpoint).
inline std::string small_job(int steps) {
  return " train --config " + src() + "/configs/tiny.yaml --set data.paths=[" + corpus() +
         "] --set model.seq_len=32 --set train.micro_batch=2 --set train.steps=" +
         std::to_string(steps) + " --set train.eval_interval=0 --set train.eval_batches=1" +
         " --set train.log_interval=5 --set checkpoint.at_end=false";
}

}  // namespace dirmoe::e2e
