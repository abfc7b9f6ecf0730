// Which EP rank owns which experts: contiguous blocks by default, or an explicit (possibly uneven)
// list per EP rank. Validated: every expert exactly once, every list non-empty.
#pragma once

#include <vector>

namespace dirmoe {

class Placement {
 public:
  static Placement contiguous(int num_experts, int ep_size);  // needs ep_size | num_experts
  static Placement explicit_lists(int num_experts, const std::vector<std::vector<int>>& lists);

  int num_experts() const { return static_cast<int>(owner_.size()); }
  int ep_size() const { return static_cast<int>(lists_.size()); }
  int owner(int expert) const { return owner_.at(expert); }
  int local_index(int expert) const { return local_index_.at(expert); }
  const std::vector<int>& local_experts(int ep_rank) const { return lists_.at(ep_rank); }
  const std::vector<std::vector<int>>& lists() const { return lists_; }
  int max_local_experts() const;
  // Fails (naming both sizes) unless there is exactly one list per rank of an EP group of ep_size.
  void check_ep_size(int ep_size) const;

 private:
  std::vector<int> owner_;        // [E] owning EP rank
  std::vector<int> local_index_;  // [E] index within the owner's list
  std::vector<std::vector<int>> lists_;
};

}  // namespace dirmoe
