// Minimal leveled logging. Info goes to stdout from rank 0 only by default; warnings and errors go
// to stderr from every rank, prefixed with the rank. Level from DIRMOE_LOG_LEVEL (debug|info|warn).
#pragma once

#include <string>

#include "runtime/core/error.h"

namespace dirmoe {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

void set_log_rank(int rank, int world);
void set_log_level(LogLevel level);
LogLevel log_level();
void log_message(LogLevel level, bool all_ranks, const std::string& msg);

template <class... Args>
void log_info(const Args&... args) { log_message(LogLevel::kInfo, false, detail::concat(args...)); }
template <class... Args>
void log_debug(const Args&... args) { log_message(LogLevel::kDebug, true, detail::concat(args...)); }
template <class... Args>
void log_warn(const Args&... args) { log_message(LogLevel::kWarn, true, detail::concat(args...)); }
template <class... Args>
void log_error(const Args&... args) { log_message(LogLevel::kError, true, detail::concat(args...)); }

}  // namespace dirmoe
