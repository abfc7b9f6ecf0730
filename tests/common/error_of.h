// The message of the dirmoe::Error that f() throws, or "" when it throws none.
#pragma once

#include <string>

#include "runtime/core/error.h"

namespace dirmoe::test {

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace dirmoe::test
