// Error type and check macros shared by every layer. Library code throws dirmoe::Error carrying the
// failing expression, file:line, the rank/host context and the library's own message; `main`
// catches it, prints it and aborts the whole MPI job so that no rank is left waiting.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace dirmoe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Process-wide context ("rank 1/4 on host-a") prefixed to every error; set once by comm bootstrap.
void set_error_context(const std::string& context);
const std::string& error_context();

namespace detail {
template <class... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
[[noreturn]] void throw_error(const char* file, int line, const std::string& what);
}  // namespace detail

}  // namespace dirmoe

// Fails with a message when cond is false: DIRMOE_CHECK(n > 0, "n must be positive, got ", n).
#define DIRMOE_CHECK(cond, ...)                                                              \
  do {                                                                                       \
    if (!(cond)) {                                                                           \
      ::dirmoe::detail::throw_error(__FILE__, __LINE__,                                      \
                                    ::dirmoe::detail::concat("check failed: " #cond ": ",    \
                                                             ##__VA_ARGS__));                \
    }                                                                                        \
  } while (0)

#define DIRMOE_FAIL(...)                                                                     \
  do {                                                                                       \
    ::dirmoe::detail::throw_error(__FILE__, __LINE__, ::dirmoe::detail::concat(__VA_ARGS__)); \
  } while (0)

// Wraps an MPI call; the library's error string is part of the message. Needs <mpi.h>.
#define DIRMOE_MPI_CHECK(expr)                                                                 \
  do {                                                                                         \
    int dirmoe_mpi_rc_ = (expr);                                                               \
    if (dirmoe_mpi_rc_ != MPI_SUCCESS) {                                                       \
      char dirmoe_mpi_msg_[MPI_MAX_ERROR_STRING];                                              \
      int dirmoe_mpi_len_ = 0;                                                                 \
      MPI_Error_string(dirmoe_mpi_rc_, dirmoe_mpi_msg_, &dirmoe_mpi_len_);                     \
      ::dirmoe::detail::throw_error(                                                           \
          __FILE__, __LINE__,                                                                  \
          ::dirmoe::detail::concat("MPI call failed: " #expr ": ",                             \
                                   std::string(dirmoe_mpi_msg_, dirmoe_mpi_len_)));            \
    }                                                                                          \
  } while (0)
