// Router hyper-parameter schedules: evaluation, range and validation.
#include "router/schedule.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "runtime/core/error.h"

namespace dirmoe {

Schedule Schedule::constant(double v) {
  Schedule s;
  s.start = s.end = v;
  return s;
}

Schedule Schedule::exponential(double start, double rate, double floor) {
  Schedule s;
  s.type = ScheduleType::kExponential;
  s.start = start;
  s.rate = rate;
  s.floor = floor;
  return s;
}

double Schedule::at(int64_t step) const {
  const double t = static_cast<double>(std::max<int64_t>(step, 0));
  switch (type) {
    case ScheduleType::kConstant:
      return start;
    case ScheduleType::kLinear: {
      const double f = steps > 0 ? std::min(1.0, t / static_cast<double>(steps)) : 1.0;
      return start + (end - start) * f;
    }
    case ScheduleType::kCosine: {
      const double f = steps > 0 ? std::min(1.0, t / static_cast<double>(steps)) : 1.0;
      return end + (start - end) * 0.5 * (1.0 + std::cos(M_PI * f));
    }
    case ScheduleType::kExponential:
      return std::max(floor, start * std::pow(rate, t));
  }
  return start;
}

double Schedule::min_value() const {
  switch (type) {
    case ScheduleType::kConstant:
      return start;
    case ScheduleType::kLinear:
    case ScheduleType::kCosine:
      return std::min(start, end);
    case ScheduleType::kExponential:
      return rate == 1.0 ? std::max(floor, start) : std::min(start, floor);
  }
  return start;
}

double Schedule::max_value() const {
  switch (type) {
    case ScheduleType::kConstant:
      return start;
    case ScheduleType::kLinear:
    case ScheduleType::kCosine:
      return std::max(start, end);
    case ScheduleType::kExponential:
      return std::max(start, floor);
  }
  return start;
}

const char* schedule_type_name(ScheduleType t) {
  switch (t) {
    case ScheduleType::kConstant:
      return "constant";
    case ScheduleType::kLinear:
      return "linear";
    case ScheduleType::kCosine:
      return "cosine";
    case ScheduleType::kExponential:
      return "exponential";
  }
  return "?";
}

ScheduleType parse_schedule_type(const std::string& name) {
  if (name == "constant") return ScheduleType::kConstant;
  if (name == "linear") return ScheduleType::kLinear;
  if (name == "cosine") return ScheduleType::kCosine;
  if (name == "exponential") return ScheduleType::kExponential;
  throw std::invalid_argument("unknown schedule type '" + name +
                              "' (available: constant, linear, cosine, exponential)");
}

void validate_schedule(const Schedule& s, const std::string& key, double lower, bool strict) {
  auto below = [&](double v) { return !std::isfinite(v) || (strict ? v <= lower : v < lower); };
  const char* bound = strict ? "> " : ">= ";
  if (below(s.start))
    DIRMOE_FAIL(key, (s.type == ScheduleType::kConstant ? "" : ".start"), ": must be ", bound,
                lower, ", got ", s.start);
  switch (s.type) {
    case ScheduleType::kConstant:
      break;
    case ScheduleType::kLinear:
    case ScheduleType::kCosine:
      if (below(s.end)) DIRMOE_FAIL(key, ".end: must be ", bound, lower, ", got ", s.end);
      if (s.steps < 1)
        DIRMOE_FAIL(key, ".steps: a ", schedule_type_name(s.type),
                    " schedule needs steps >= 1, got ", s.steps);
      break;
    case ScheduleType::kExponential:
      if (!(s.rate > 0 && s.rate <= 1))
        DIRMOE_FAIL(key, ".rate: must lie in (0, 1] (decay per step), got ", s.rate);
      if (below(s.floor)) DIRMOE_FAIL(key, ".floor: must be ", bound, lower, ", got ", s.floor);
      if (s.floor > s.start)
        DIRMOE_FAIL(key, ".floor: must not exceed ", key, ".start = ", s.start, ", got ", s.floor);
      break;
  }
}

}  // namespace dirmoe
