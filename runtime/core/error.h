// Error type and check macros shared by every layer. Library code throws dirmoe::Error carrying the
// rank/host context, a message naming the key, file or rank at fault, and (for developers) the
// failing expression and file:line; `main` catches it, prints it and aborts the whole MPI job so
// that no rank is left waiting. what() shows the expression and location only in debug mode
// (DIRMOE_DEBUG=1); failed library calls (MPI, CUDA, cuBLAS, NCCL) always show both.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace dirmoe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what), message_(what) {}
  Error(const std::string& what, std::string message, std::string expression, std::string location)
      : std::runtime_error(what),
        message_(std::move(message)),
        expression_(std::move(expression)),
        location_(std::move(location)) {}
  // The sentence for the user, with the rank context.
  const std::string& message() const { return message_; }
  // The C++ condition of a failed DIRMOE_CHECK (empty for DIRMOE_FAIL).
  const std::string& expression() const { return expression_; }
  // "file:line" of the check.
  const std::string& location() const { return location_; }

 private:
  std::string message_, expression_, location_;
};

// Process-wide context ("rank 1/4 on host-a") prefixed to every error; set once by comm bootstrap.
void set_error_context(const std::string& context);
const std::string& error_context();

// DIRMOE_DEBUG: unset, empty or "0" = errors are the message alone; "1" = they also show the
// failing expression and file:line. Read at every throw (errors are rare), so tests may set it.
bool debug_errors();
// Throws an Error unless DIRMOE_DEBUG is unset, empty, "0" or "1" (main calls it first; until
// then, any other value counts as "1").
void validate_debug_env();

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
// A failed library call: expression and location always shown.
[[noreturn]] void throw_error(const char* file, int line, const std::string& what);
// A failed DIRMOE_CHECK (expr = its condition) or a DIRMOE_FAIL (expr = nullptr).
[[noreturn]] void throw_check(const char* file, int line, const char* expr,
                              const std::string& message);
}  // namespace detail

}  // namespace dirmoe

// Fails with a message when cond is false: DIRMOE_CHECK(n > 0, "n must be positive, got ", n).
#define DIRMOE_CHECK(cond, ...)                                                   \
  do {                                                                            \
    if (!(cond)) {                                                                \
      ::dirmoe::detail::throw_check(__FILE__, __LINE__, #cond,                    \
                                    ::dirmoe::detail::concat("", ##__VA_ARGS__)); \
    }                                                                             \
  } while (0)

#define DIRMOE_FAIL(...)                                                  \
  do {                                                                    \
    ::dirmoe::detail::throw_check(__FILE__, __LINE__, nullptr,            \
                                  ::dirmoe::detail::concat(__VA_ARGS__)); \
  } while (0)

// Wraps an MPI call; the library's error string is part of the message. Needs <mpi.h>.
#define DIRMOE_MPI_CHECK(expr)                                                      \
  do {                                                                              \
    int dirmoe_mpi_rc_ = (expr);                                                    \
    if (dirmoe_mpi_rc_ != MPI_SUCCESS) {                                            \
      char dirmoe_mpi_msg_[MPI_MAX_ERROR_STRING];                                   \
      int dirmoe_mpi_len_ = 0;                                                      \
      MPI_Error_string(dirmoe_mpi_rc_, dirmoe_mpi_msg_, &dirmoe_mpi_len_);          \
      ::dirmoe::detail::throw_error(                                                \
          __FILE__, __LINE__,                                                       \
          ::dirmoe::detail::concat("MPI call failed: " #expr ": ",                  \
                                   std::string(dirmoe_mpi_msg_, dirmoe_mpi_len_))); \
    }                                                                               \
  } while (0)
