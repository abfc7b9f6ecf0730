// Hyper-parameter schedules for router scalars (temperature, concentration, loss weights): one
// small value type that any scalar knob can hold; evaluated at the optimizer step.
#pragma once

#include <cstdint>
#include <string>

namespace dirmoe {

enum class ScheduleType { kConstant, kLinear, kCosine, kExponential };

// constant:    start
// linear:      start -> end over `steps` steps, then end
// cosine:      start -> end along a half cosine over `steps` steps, then end
// exponential: max(floor, start * rate^step)   (rate in (0, 1]: decay toward the floor)
struct Schedule {
  ScheduleType type = ScheduleType::kConstant;
  double start = 0;
  double end = 0;
  int64_t steps = 0;
  double rate = 1;
  double floor = 0;

  static Schedule constant(double v);
  static Schedule exponential(double start, double rate, double floor);
  // Value at optimizer step `step` (negative steps count as 0).
  double at(int64_t step) const;
  // Smallest and largest value the schedule ever takes.
  double min_value() const;
  double max_value() const;
};

const char* schedule_type_name(ScheduleType t);
// Throws std::invalid_argument listing the supported names.
ScheduleType parse_schedule_type(const std::string& name);

// Throws a dirmoe::Error naming `key` (e.g. "moe.router.dirmoe.tau.floor") when the schedule is
// malformed or takes a value below `lower` (strictly below when `strict`).
void validate_schedule(const Schedule& s, const std::string& key, double lower, bool strict);

}  // namespace dirmoe
