// Error context, the DIRMOE_DEBUG switch and the throw helpers behind the check macros.
#include "runtime/core/error.h"

#include <cstdlib>
#include <cstring>

namespace dirmoe {
namespace {
std::string& context_storage() {
  static std::string context;
  return context;
}
std::string with_context(const std::string& what) {
  return error_context().empty() ? what : "[" + error_context() + "] " + what;
}
}  // namespace

void set_error_context(const std::string& context) { context_storage() = context; }
const std::string& error_context() { return context_storage(); }

bool debug_errors() {
  const char* v = std::getenv("DIRMOE_DEBUG");
  return v && *v && std::strcmp(v, "0") != 0;
}

void validate_debug_env() {
  const char* v = std::getenv("DIRMOE_DEBUG");
  if (!v || !*v || !std::strcmp(v, "0") || !std::strcmp(v, "1")) return;
  throw Error(std::string("DIRMOE_DEBUG must be 0 or 1, got '") + v + "'");
}

namespace detail {
void throw_error(const char* file, int line, const std::string& what) {
  const std::string location = concat(file, ":", line);
  throw Error(with_context(what) + " (" + location + ")", with_context(what), "", location);
}

void throw_check(const char* file, int line, const char* expr, const std::string& message) {
  const std::string location = concat(file, ":", line);
  const std::string expression = expr ? expr : "";
  // A check without a message has only its expression to say.
  const std::string user =
      with_context(message.empty() ? "internal check failed: " + expression : message);
  std::string what = user;
  if (debug_errors()) {
    what = with_context((expr ? "check failed: " + expression + ": " : std::string()) + message) +
           " (" + location + ")";
  }
  throw Error(what, user, expression, location);
}
}  // namespace detail
}  // namespace dirmoe
