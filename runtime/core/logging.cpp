// Leveled logging with rank prefixes; the level comes from DIRMOE_LOG_LEVEL, parsed strictly.
#include "runtime/core/logging.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace dirmoe {
namespace {
int g_rank = 0;
int g_world = 1;
std::mutex g_mutex;

LogLevel level_from_env() {
  const char* s = std::getenv("DIRMOE_LOG_LEVEL");
  if (!s || !*s) return LogLevel::kInfo;
  if (!std::strcmp(s, "debug")) return LogLevel::kDebug;
  if (!std::strcmp(s, "info")) return LogLevel::kInfo;
  if (!std::strcmp(s, "warn")) return LogLevel::kWarn;
  if (!std::strcmp(s, "error")) return LogLevel::kError;
  std::fprintf(stderr, "DIRMOE_LOG_LEVEL=%s is not one of debug|info|warn|error; using info\n", s);
  return LogLevel::kInfo;
}
LogLevel& level_storage() {
  static LogLevel level = level_from_env();
  return level;
}
}  // namespace

void set_log_rank(int rank, int world) {
  g_rank = rank;
  g_world = world;
}
void set_log_level(LogLevel level) { level_storage() = level; }
LogLevel log_level() { return level_storage(); }

void log_message(LogLevel level, bool all_ranks, const std::string& msg) {
  if (level < log_level()) return;
  if (!all_ranks && g_rank != 0) return;
  std::lock_guard<std::mutex> lock(g_mutex);
  FILE* out = level >= LogLevel::kWarn ? stderr : stdout;
  const char* tag = level == LogLevel::kWarn ? "warning: " : level == LogLevel::kError ? "error: " : "";
  if (g_world > 1 && all_ranks)
    std::fprintf(out, "[rank %d] %s%s\n", g_rank, tag, msg.c_str());
  else
    std::fprintf(out, "%s%s\n", tag, msg.c_str());
  std::fflush(out);
}
}  // namespace dirmoe
