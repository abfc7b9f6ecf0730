// ProbMoE's k-subset dynamic program (see subset.h). L[i][j] = logaddexp(L[i-1][j], L[i-1][j-1] +
// l_{i-1}); the adjoint pass splits each cell's adjoint between its two parents with weights
// w1 = exp(L[i-1][j] - L[i][j]) and w2 = 1 - w1, which stay in [0, 1].
#include "router/subset.h"

#include <algorithm>

#include "runtime/core/error.h"

namespace dirmoe {
namespace {

double log_add(double a, double b) {
  if (a == -INFINITY) return b;
  if (b == -INFINITY) return a;
  const double m = std::max(a, b);
  return m + std::log1p(std::exp(-std::abs(a - b)));
}

}  // namespace

SubsetDP::SubsetDP(int num_experts, int k_max) : E_(num_experts), K_(k_max) {
  DIRMOE_CHECK(E_ >= 1 && K_ >= 0 && K_ <= E_, "SubsetDP: need 0 <= k_max <= E, got k_max = ", K_,
               ", E = ", E_);
  l_.assign(E_, 0.0);
  const size_t n = static_cast<size_t>(E_ + 1) * (K_ + 1);
  table_.assign(n, -INFINITY);
  dtable_.assign(n, 0.0);
  adj_.assign(n, 0.0);
  dadj_.assign(n, 0.0);
}

double SubsetDP::build(const double* l, int k_min, int k_max) {
  DIRMOE_CHECK(k_min >= 0 && k_min <= k_max && k_max <= K_, "SubsetDP: size range [", k_min, ", ",
               k_max, "] outside [0, ", K_, "]");
  std::copy(l, l + E_, l_.begin());
  k_min_ = k_min;
  k_hi_ = k_max;
  for (int j = 0; j <= K_; ++j) at(0, j) = j == 0 ? 0.0 : -INFINITY;
  for (int i = 1; i <= E_; ++i) {
    at(i, 0) = 0.0;
    for (int j = 1; j <= K_; ++j) at(i, j) = log_add(at(i - 1, j), at(i - 1, j - 1) + l_[i - 1]);
  }
  double z = -INFINITY;
  for (int k = k_min; k <= k_max; ++k) z = log_add(z, log_esp(k));
  log_z_ = z;
  return z;
}

double SubsetDP::size_prob(int k) const {
  if (k < k_min_ || k > k_hi_) return 0.0;
  return std::exp(log_esp(k) - log_z_);
}

int SubsetDP::sample_size(double u) const {
  double c = 0;
  for (int k = k_min_; k < k_hi_; ++k) {
    c += size_prob(k);
    if (u < c) return k;
  }
  return k_hi_;
}

void SubsetDP::marginals(double* mu, const double* v, double* hv) {
  const bool tangent = v != nullptr && hv != nullptr;
  std::fill(mu, mu + E_, 0.0);
  if (tangent) {
    std::fill(hv, hv + E_, 0.0);
    std::fill(dtable_.begin(), dtable_.end(), 0.0);
    for (int i = 1; i <= E_; ++i) {
      for (int j = 1; j <= K_; ++j) {
        const double lij = at(i, j);
        if (lij == -INFINITY) continue;
        const double w1 = std::exp(at(i - 1, j) - lij);
        const double w2 = std::exp(at(i - 1, j - 1) + l_[i - 1] - lij);
        dtable_[i * (K_ + 1) + j] = w1 * dtable_[(i - 1) * (K_ + 1) + j] +
                                    w2 * (dtable_[(i - 1) * (K_ + 1) + j - 1] + v[i - 1]);
      }
    }
  }
  std::fill(adj_.begin(), adj_.end(), 0.0);
  std::fill(dadj_.begin(), dadj_.end(), 0.0);
  double dlog_z = 0;
  if (tangent)
    for (int k = k_min_; k <= k_hi_; ++k) dlog_z += size_prob(k) * dtable_[E_ * (K_ + 1) + k];
  for (int k = k_min_; k <= k_hi_; ++k) {
    adj_[E_ * (K_ + 1) + k] = size_prob(k);
    if (tangent) dadj_[E_ * (K_ + 1) + k] = size_prob(k) * (dtable_[E_ * (K_ + 1) + k] - dlog_z);
  }
  for (int i = E_; i >= 1; --i) {
    const int row = i * (K_ + 1), prev = (i - 1) * (K_ + 1);
    for (int j = K_; j >= 1; --j) {
      const double a = adj_[row + j];
      const double lij = at(i, j);
      if (lij == -INFINITY || (a == 0 && !(tangent && dadj_[row + j] != 0))) continue;
      const double w1 = std::exp(at(i - 1, j) - lij);
      const double w2 = std::exp(at(i - 1, j - 1) + l_[i - 1] - lij);
      adj_[prev + j] += a * w1;
      adj_[prev + j - 1] += a * w2;
      mu[i - 1] += a * w2;
      if (tangent) {
        const double da = dadj_[row + j];
        const double dw1 = w1 * (dtable_[prev + j] - dtable_[row + j]);
        const double dw2 = w2 * (dtable_[prev + j - 1] + v[i - 1] - dtable_[row + j]);
        dadj_[prev + j] += da * w1 + a * dw1;
        dadj_[prev + j - 1] += da * w2 + a * dw2;
        hv[i - 1] += da * w2 + a * dw2;
      }
    }
  }
}

}  // namespace dirmoe
