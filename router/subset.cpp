// ProbMoE's k-subset dynamic program (see subset.h): the tables of one token, the arithmetic in
// kernels/routing/subset.h.
#include "router/subset.h"

#include <algorithm>

#include "runtime/core/error.h"

namespace dirmoe {

SubsetDP::SubsetDP(int num_experts, int k_max) {
  DIRMOE_CHECK(num_experts >= 1 && k_max >= 0 && k_max <= num_experts,
               "SubsetDP: need 0 <= k_max <= E, got k_max = ", k_max, ", E = ", num_experts);
  l_.assign(num_experts, 0.0);
  const size_t n = static_cast<size_t>(num_experts + 1) * (k_max + 1);
  table_.assign(n, -INFINITY);
  dtable_.assign(n, 0.0);
  adj_.assign(n, 0.0);
  dadj_.assign(n, 0.0);
  view_.E = num_experts;
  view_.K = k_max;
  bind();
}

SubsetDP::SubsetDP(const SubsetDP& o)
    : l_(o.l_), table_(o.table_), dtable_(o.dtable_), adj_(o.adj_), dadj_(o.dadj_), view_(o.view_) {
  bind();
}

SubsetDP& SubsetDP::operator=(const SubsetDP& o) {
  l_ = o.l_;
  table_ = o.table_;
  dtable_ = o.dtable_;
  adj_ = o.adj_;
  dadj_ = o.dadj_;
  view_ = o.view_;
  bind();
  return *this;
}

void SubsetDP::bind() {
  view_.l = l_.data();
  view_.table = table_.data();
  view_.dtable = dtable_.data();
  view_.adj = adj_.data();
  view_.dadj = dadj_.data();
}

double SubsetDP::build(const double* l, int k_min, int k_max) {
  DIRMOE_CHECK(k_min >= 0 && k_min <= k_max && k_max <= view_.K, "SubsetDP: size range [", k_min,
               ", ", k_max, "] outside [0, ", view_.K, "]");
  std::copy(l, l + view_.E, l_.begin());
  return view_.build(k_min, k_max);
}

}  // namespace dirmoe
