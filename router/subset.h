// The conditional-Bernoulli (k-subset) distribution behind ProbMoE: with p_i = sigmoid(l_i),
// P(S) ~ prod_{i in S} p_i prod_{j not in S} (1 - p_j) over subsets of size k, i.e. proportional to
// prod_{i in S} exp(l_i) / e_k(exp(l)). A log-space dynamic program over the elementary symmetric
// polynomials e_j gives the normaliser, the inclusion marginals (its gradient), their
// Hessian-vector product, exact subset sampling (backward pass over the table) and Dynamic-k's P(k)
// ~ Z_k, all in O(E k) per token.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/routing/subset.h"

namespace dirmoe {

// Owns the tables of kernels/routing/subset.h's SubsetView for one token at a time (the code the
// CUDA kernels run per token).
class SubsetDP {
 public:
  SubsetDP(int num_experts, int k_max);
  SubsetDP(const SubsetDP& o);
  SubsetDP& operator=(const SubsetDP& o);

  // Builds the table for logits l[E] and returns log Z = log sum_{k in [k_min, k_max]} e_k(exp l)
  // (Z_k and e_k differ by prod_j (1 - p_j), common to every k).
  double build(const double* l, int k_min, int k_max);
  // log e_k(exp l) of the last build, k in [0, k_max].
  double log_esp(int k) const { return view_.log_esp(k); }
  // P(|S| = k) of the last build: e_k / sum over [k_min, k_max]; 0 outside.
  double size_prob(int k) const { return view_.size_prob(k); }
  // mu[E] = dlogZ/dl: P(i in S). With v, also hv[E] = (dmu/dl) v (the Hessian of log Z is
  // symmetric, so this is also v^T dmu/dl), by forward-mode differentiation of the adjoint pass.
  void marginals(double* mu, const double* v = nullptr, double* hv = nullptr) {
    view_.marginals(mu, v, hv);
  }
  // Subset size from a uniform u in (0, 1) by inversion of size_prob.
  int sample_size(double u) const { return view_.sample_size(u); }
  // Exact draw of a k-subset (k in [0, k_max]) by the backward pass over the table: expert i is
  // taken with probability exp(L[i][j-1] + l_i - L[i+1][j]) given j still to take.
  // uniform(i) in (0, 1) is the draw for expert i. Writes the experts in decreasing index order.
  template <class Uniform>
  int sample(int k, Uniform&& uniform, int32_t* out) const {
    return view_.sample(k, uniform, out);
  }

  // The tables as the shared per-token code takes them (its l must be pointed at the logits).
  routing::SubsetView<double> view() const { return view_; }

  int num_experts() const { return view_.E; }
  int k_max() const { return view_.K; }

 private:
  void bind();  // points view_ at this object's tables

  std::vector<double> l_;       // [E]
  std::vector<double> table_;   // [E+1, K+1]: L[i][j] = log e_j(exp(l_0 .. l_{i-1}))
  std::vector<double> dtable_;  // [E+1, K+1] tangent of L along v
  std::vector<double> adj_;     // [E+1, K+1] adjoint dlogZ/dL
  std::vector<double> dadj_;    // [E+1, K+1] tangent of the adjoint
  routing::SubsetView<double> view_;
};

}  // namespace dirmoe
