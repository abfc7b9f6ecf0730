// Placement construction and validation: contiguous blocks (ep | E) or explicit per-rank lists.
#include "experts/placement.h"

#include <algorithm>

#include "runtime/core/error.h"

namespace dirmoe {

Placement Placement::contiguous(int num_experts, int ep_size) {
  DIRMOE_CHECK(num_experts >= 1, "placement: num_experts must be >= 1, got ", num_experts);
  DIRMOE_CHECK(ep_size >= 1, "placement: ep size must be >= 1, got ", ep_size);
  DIRMOE_CHECK(num_experts % ep_size == 0, "placement: contiguous placement needs the ep size (",
               ep_size, ") to divide num_experts (", num_experts,
               "); use an explicit experts.placement list for uneven shards");
  const int per_rank = num_experts / ep_size;
  std::vector<std::vector<int>> lists(ep_size);
  for (int r = 0; r < ep_size; ++r)
    for (int j = 0; j < per_rank; ++j) lists[r].push_back(r * per_rank + j);
  return explicit_lists(num_experts, lists);
}

Placement Placement::explicit_lists(int num_experts, const std::vector<std::vector<int>>& lists) {
  DIRMOE_CHECK(num_experts >= 1, "placement: num_experts must be >= 1, got ", num_experts);
  DIRMOE_CHECK(!lists.empty(), "placement: the explicit list has no EP ranks");
  Placement p;
  p.owner_.assign(num_experts, -1);
  p.local_index_.assign(num_experts, -1);
  for (size_t r = 0; r < lists.size(); ++r) {
    DIRMOE_CHECK(!lists[r].empty(), "placement: EP rank ", r, " has an empty expert list");
    for (size_t j = 0; j < lists[r].size(); ++j) {
      const int e = lists[r][j];
      DIRMOE_CHECK(e >= 0 && e < num_experts, "placement: EP rank ", r, " lists expert ", e,
                   ", outside [0, ", num_experts, ")");
      DIRMOE_CHECK(p.owner_[e] < 0, "placement: expert ", e, " is listed twice (EP ranks ",
                   p.owner_[e], " and ", r, ")");
      p.owner_[e] = static_cast<int>(r);
      p.local_index_[e] = static_cast<int>(j);
    }
  }
  for (int e = 0; e < num_experts; ++e)
    DIRMOE_CHECK(p.owner_[e] >= 0, "placement: expert ", e, " is not listed for any EP rank");
  p.lists_ = lists;
  return p;
}

int Placement::max_local_experts() const {
  size_t m = 0;
  for (const auto& l : lists_) m = std::max(m, l.size());
  return static_cast<int>(m);
}

void Placement::check_ep_size(int ep_size) const {
  DIRMOE_CHECK(static_cast<int>(lists_.size()) == ep_size, "placement: ", lists_.size(),
               " expert lists given for an EP group of size ", ep_size,
               " (need one list per EP rank)");
}

}  // namespace dirmoe
