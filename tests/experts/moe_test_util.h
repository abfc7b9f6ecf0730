// Test helpers for the experts layer: a size-1 Communicator, parameters filled from their names
// (so any rank can rebuild any expert), tie-free token generation, a dense MoE reference written
// with plain loops, and the gradient-check error measure.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "runtime/core/philox.h"
#include "runtime/core/tensor.h"

namespace dirmoe::testing {

// The EP group of one rank: every collective is a copy.
class SelfCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "self"; }
  void all_to_all_v(const void* send, const int64_t* send_counts, void* recv,
                    const int64_t* recv_counts, DType dtype) override {
    DIRMOE_CHECK(send_counts[0] == recv_counts[0], "self all_to_all_v: counts differ");
    copy(send, recv, send_counts[0], dtype);
  }
  void all_to_all(const void* send, void* recv, int64_t count, DType dtype) override {
    copy(send, recv, count, dtype);
  }
  void all_reduce(void*, int64_t, DType, ReduceOp) override {}
  void all_gather(const void* send, void* recv, int64_t count, DType dtype) override {
    copy(send, recv, count, dtype);
  }
  void broadcast(void*, int64_t, DType, int) override {}
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int, const std::string&) const override {
    return std::make_unique<SelfCommunicator>();
  }

 private:
  static void copy(const void* src, void* dst, int64_t count, DType dtype) {
    if (count > 0 && src != dst) std::memcpy(dst, src, count * dtype_size(dtype));
  }
};

inline double normal_at(uint64_t seed, uint32_t stream, int64_t i) {
  return PhiloxStream{seed, stream}.normal(static_cast<uint32_t>(i), static_cast<uint32_t>(i >> 32),
                                           0);
}

// Deterministic N(0, scale^2) values keyed by the parameter name.
template <class T>
void fill_by_name(T* data, int64_t n, const std::string& name, double scale) {
  const uint32_t stream = stable_hash32(name.c_str());
  for (int64_t i = 0; i < n; ++i) data[i] = static_cast<T>(scale * normal_at(77, stream, i));
}

inline double param_scale(const std::string& name) {
  return name.find(".router.") != std::string::npos ? 1.0 : 0.4;
}

template <class T>
void init_params(const std::vector<Parameter<T>*>& params) {
  for (Parameter<T>* p : params) {
    fill_by_name(p->value.data(), p->numel(), p->name, param_scale(p->name));
    p->grad.zero();
  }
}

// All weights of one MoE layer, every expert, rebuilt from the names.
struct DenseMoE {
  int E = 0, k = 0;
  int64_t d = 0, f = 0;
  bool renormalize = false;
  std::vector<double> router;                   // [E,d]
  std::vector<std::vector<double>> w1, w2, w3;  // per expert [f,d], [d,f], [f,d]

  DenseMoE(int layer, int num_experts, int64_t hidden, int64_t ffn, int topk, bool renorm)
      : E(num_experts), k(topk), d(hidden), f(ffn), renormalize(renorm) {
    const std::string prefix = "layers." + std::to_string(layer) + ".moe";
    router.resize(E * d);
    fill_by_name(router.data(), E * d, prefix + ".router.weight",
                 param_scale(prefix + ".router.weight"));
    for (int e = 0; e < E; ++e) {
      const std::string name = prefix + ".experts." + std::to_string(e);
      for (auto [w, suffix] : {std::pair{&w1, ".w1"}, {&w2, ".w2"}, {&w3, ".w3"}}) {
        w->emplace_back(f * d);
        fill_by_name(w->back().data(), f * d, name + suffix, param_scale(name + suffix));
      }
    }
  }

  std::vector<double> logits(const double* x) const {  // x[d] -> [E]
    std::vector<double> l(E, 0.0);
    for (int e = 0; e < E; ++e)
      for (int64_t j = 0; j < d; ++j) l[e] += router[e * d + j] * x[j];
    return l;
  }

  // Top-k by plain sorting (ties to the lower index): (expert, weight) pairs, most probable first.
  std::vector<std::pair<int, double>> route(const double* x) const {
    std::vector<double> l = logits(x);
    const double mx = *std::max_element(l.begin(), l.end());
    double s = 0;
    for (double v : l) s += std::exp(v - mx);
    std::vector<int> idx(E);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return l[a] > l[b]; });
    std::vector<std::pair<int, double>> out;
    double chosen = 0;
    for (int j = 0; j < k; ++j) {
      out.emplace_back(idx[j], std::exp(l[idx[j]] - mx) / s);
      chosen += out.back().second;
    }
    if (renormalize)
      for (auto& p : out) p.second /= chosen;
    return out;
  }

  // Gap between the k-th and (k+1)-th logit (infinite when k == E).
  double margin(const double* x) const {
    if (k == E) return INFINITY;
    std::vector<double> l = logits(x);
    std::sort(l.begin(), l.end(), std::greater<double>());
    return l[k - 1] - l[k];
  }

  std::vector<double> expert(int e, const double* x) const {  // SwiGLU_e(x[d]) -> [d]
    std::vector<double> a(f), y(d, 0.0);
    for (int64_t i = 0; i < f; ++i) {
      double h1 = 0, h3 = 0;
      for (int64_t j = 0; j < d; ++j) {
        h1 += w1[e][i * d + j] * x[j];
        h3 += w3[e][i * d + j] * x[j];
      }
      a[i] = h1 / (1 + std::exp(-h1)) * h3;
    }
    for (int64_t j = 0; j < d; ++j)
      for (int64_t i = 0; i < f; ++i) y[j] += w2[e][j * f + i] * a[i];
    return y;
  }

  // y[N,d] = sum over chosen experts of w * SwiGLU_e(x). keep(t, e) false drops the pair.
  template <class Keep>
  std::vector<double> forward(const std::vector<double>& x, int64_t N, Keep keep) const {
    std::vector<double> y(N * d, 0.0);
    for (int64_t t = 0; t < N; ++t) {
      for (auto [e, w] : route(&x[t * d])) {
        if (!keep(t, e)) continue;
        std::vector<double> o = expert(e, &x[t * d]);
        for (int64_t j = 0; j < d; ++j) y[t * d + j] += w * o[j];
      }
    }
    return y;
  }
  std::vector<double> forward(const std::vector<double>& x, int64_t N) const {
    return forward(x, N, [](int64_t, int) { return true; });
  }

  // Tokens x[N,d] ~ N(0,1) keyed by (seed, token); a token is redrawn until its top-k margin is at
  // least min_margin, so finite differences never change the selection.
  std::vector<double> tokens(int64_t N, uint32_t seed, double min_margin) const {
    std::vector<double> x(N * d);
    for (int64_t t = 0; t < N; ++t) {
      for (uint32_t attempt = 0;; ++attempt) {
        for (int64_t j = 0; j < d; ++j) x[t * d + j] = normal_at(seed, 1000 + attempt, t * d + j);
        if (margin(&x[t * d]) >= min_margin) break;
      }
    }
    return x;
  }
};

// An uneven explicit placement for an EP group of ep ranks: the layout [[0,1,2],[3],[4,5],[6,7]]
// for 4 ranks; otherwise 2*ep+1 experts, rank r holding r+ep then r (rank ep-1 also the last one).
inline std::vector<std::vector<int>> uneven_lists(int ep) {
  if (ep == 4) return {{0, 1, 2}, {3}, {4, 5}, {6, 7}};
  std::vector<std::vector<int>> lists(ep);
  for (int r = 0; r < ep; ++r) lists[r] = {r + ep, r};
  lists[ep - 1].push_back(2 * ep);
  return lists;
}
inline int num_listed(const std::vector<std::vector<int>>& lists) {
  int n = 0;
  for (const auto& l : lists) n += static_cast<int>(l.size());
  return n;
}

// Gradient-check error: max over i of |num_i - ana_i| / max(|num_i|, |ana_i|, 1e-3 * max_j
// |ana_j|).
inline double grad_error(const std::vector<double>& num, const std::vector<double>& ana) {
  double scale = 0;
  for (double a : ana) scale = std::max(scale, std::abs(a));
  double worst = 0;
  for (size_t i = 0; i < num.size(); ++i) {
    const double den = std::max({std::abs(num[i]), std::abs(ana[i]), 1e-3 * scale, 1e-300});
    worst = std::max(worst, std::abs(num[i] - ana[i]) / den);
  }
  return worst;
}

// max |got - ref| / (atol + rtol * |ref|) over the elements: <= 1 passes.
template <class A, class B>
double tol_ratio(const A& got, const B& ref, double atol, double rtol) {
  double worst = 0;
  for (int64_t i = 0; i < static_cast<int64_t>(ref.size()); ++i) {
    const double g = static_cast<double>(got[i]), r = static_cast<double>(ref[i]);
    worst = std::max(worst, std::abs(g - r) / (atol + rtol * std::abs(r)));
  }
  return worst;
}

}  // namespace dirmoe::testing
