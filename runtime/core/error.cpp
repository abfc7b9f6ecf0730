// Error context and the throw helper behind the check macros.
#include "runtime/core/error.h"

namespace dirmoe {
namespace {
std::string& context_storage() {
  static std::string context;
  return context;
}
}  // namespace

void set_error_context(const std::string& context) { context_storage() = context; }
const std::string& error_context() { return context_storage(); }

namespace detail {
void throw_error(const char* file, int line, const std::string& what) {
  std::ostringstream msg;
  if (!error_context().empty()) msg << "[" << error_context() << "] ";
  msg << what << " (" << file << ":" << line << ")";
  throw Error(msg.str());
}
}  // namespace detail
}  // namespace dirmoe
