// Shape formatting.
#include "runtime/core/tensor.h"

#include <sstream>

namespace dirmoe {
std::string shape_str(const Shape& s) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < s.size(); ++i) out << (i ? "," : "") << s[i];
  out << ']';
  return out.str();
}
}  // namespace dirmoe
