// The Router interface (DESIGN.md section 4): hidden states in, a variable-length Routing out (per
// token a list of (expert, weight)), plus the router's own loss terms and statistics; backward
// takes dL/dweights and returns dL/dh, accumulating the router's parameter gradients.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "router/schedule.h"
#include "runtime/core/tensor.h"

namespace dirmoe {

// CSR over tokens: token t routes to experts[offsets[t] .. offsets[t+1]) with the matching weights.
// Experts within a token are distinct global expert ids.
template <class T>
struct Routing {
  int64_t num_tokens = 0;
  int num_experts = 0;
  std::vector<int64_t> offsets;  // [N+1]
  std::vector<int32_t> experts;  // [nnz]
  std::vector<T> weights;        // [nnz]
  int64_t nnz() const { return static_cast<int64_t>(experts.size()); }
};

// Where a forward happens: random draws are keyed by (seed, step, layer, global token, expert).
struct RouterContext {
  uint64_t seed = 0;
  int64_t step = 0;
  int layer = 0;
  int64_t global_token0 = 0;  // global index of the first token of this micro-batch
  bool training = true;
  // ReMoE: the L1 weight lambda of this step (the trainer's controller, fp32 value); < 0 means
  // moe.router.remoe.lambda_init. Other routers ignore it.
  double remoe_lambda = -1;
};

// DirMoE (DESIGN.md section 4): Bernoulli gates z relaxed as sigmoid((l + g) / tau), Dirichlet
// contributions theta ~ Dir(alpha_q), weights r = z theta / sum(z theta), trained with an ELBO.
struct DirMoEPriorConfig {
  // Calibrated prior: target expected active mass m and Simpson index h (with k active experts).
  double m = 0.8;
  double h = 0.75;
  // Explicit prior: when any of the three is set (non-zero) all three must be positive, and m and
  // h are ignored.
  double a_hi = 0;
  double a_lo = 0;
  double lambda_p = 0;
  bool is_explicit() const { return a_hi != 0 || a_lo != 0 || lambda_p != 0; }
};

struct DirMoEConfig {
  // Gate temperature: tau_t = max(tau_min, tau_0 * rho^t) by default (start, rate, floor).
  Schedule tau = Schedule::exponential(1.0, 0.99, 0.1);
  // Dispatch: experts with r >= r_min, at most max_active per token (largest r first).
  double r_min = 0.05;
  int max_active = 4;
  // Posterior concentration scale (the concentration schedule): alpha_q = lambda_q * (...).
  Schedule lambda_q = Schedule::constant(1.0);
  // Positivity floor added to softplus for a_hi and a_lo.
  double alpha_floor = 1e-2;
  DirMoEPriorConfig prior;
  Schedule beta = Schedule::constant(0.01);            // KL weight
  Schedule recon_weight = Schedule::constant(0.1);     // reconstruction weight
  Schedule lambda_sparsity = Schedule::constant(0.1);  // weight of (sum z - k)^2
  // What the sparsity penalty counts: "sample" = the relaxed gates of the drawn sample,
  // (sum_i z_i - k)^2; "expected" = the expected number of open gates under the logistic noise,
  // (sum_i sigmoid(l_i) - k)^2 (P(z_i > 1/2) = sigmoid(l_i)): no variance term, and a gradient
  // that does not fade with the temperature.
  std::string sparsity_on = "sample";
  std::string eval = "gate";                           // gate | soft | sample
  std::string gamma_sampler = "marsaglia_tsang";       // marsaglia_tsang | inverse_cdf
};

// ProbMoE: k-subsets with P(S) ~ prod_S p_i prod_notS (1 - p_j), p = sigmoid(l).
struct ProbMoEConfig {
  std::string mode = "exact";  // exact (k = router.k) | dynamic (k in [k_min, k_max])
  int k_min = 1;
  int k_max = 2;
};

// ReMoE: R = ReLU(h W), expert e active iff R_e > 0 with weight R_e; an L1 term weighted by the
// load, lambda E sum_e mean_t(R_te) n_e / (N k), whose lambda the trainer steers once per step
// toward the sparsity 1 - k/E (times alpha below it, divided by alpha at or above it).
struct ReMoEConfig {
  double lambda_init = 1e-8;  // lambda_0
  double alpha = 1.2;         // multiplier per step, > 1
};

// Typed router configuration, validated by validate_router_config (the config loader calls it).
struct RouterConfig {
  std::string type = "topk";    // topk | dirmoe | probmoe | remoe
  int k = 2;                    // topk/probmoe exact: experts per token; dirmoe, remoe: target k
  bool renormalize = false;     // topk: renormalise the k probabilities to sum 1; dirmoe:
                                // renormalise r over the dispatched experts
  double aux_loss_coef = 1e-2;  // Switch load-balancing loss coefficient (every router)
  double z_loss_coef = 0.0;     // router z-loss coefficient (0 = off; topk, probmoe)
  DirMoEConfig dirmoe;
  ProbMoEConfig probmoe;
  ReMoEConfig remoe;
};

struct RouterStats {
  double aux_loss = 0;     // weighted load-balancing loss of the last forward
  double z_loss = 0;       // weighted z-loss of the last forward
  double mean_active = 0;  // mean experts per token
  // Further named scalars for the metrics (e.g. entropy); stable order.
  std::vector<std::pair<std::string, double>> scalars;
};

template <class T>
class Router {
 public:
  virtual ~Router() = default;
  virtual std::string type() const = 0;
  // h[N,d] -> out. Keeps what backward needs until the next forward.
  virtual void forward(const T* h, int64_t N, const RouterContext& ctx, Routing<T>& out) = 0;
  // Sum of the router's own weighted loss terms for the last forward (added to the training loss).
  virtual double loss() const = 0;
  // dweights[nnz] = dL/d(weights of the last Routing). loss_scale multiplies the gradient of the
  // router's own loss terms (the same factor the LM loss of this micro-batch gets).
  // dh[N,d] += dL/dh; parameter gradients +=.
  virtual void backward(const T* dweights, double loss_scale, T* dh) = 0;
  virtual std::vector<Parameter<T>*> parameters() = 0;
  virtual const RouterStats& stats() const = 0;
};

// Throws a dirmoe::Error naming the offending key (moe.router.type, moe.router.k,
// moe.router.dirmoe.tau.floor, ...) when cfg does not fit a model with `num_experts` experts of
// width `hidden`.
void validate_router_config(const RouterConfig& cfg, int64_t hidden, int num_experts);

// Validates cfg against the model (k in [1, E], coefficients >= 0, known type) and builds the
// router. Parameter names start with `prefix` (e.g. "layers.3.moe.router").
template <class T>
std::unique_ptr<Router<T>> make_router(const RouterConfig& cfg, int64_t hidden, int num_experts,
                                       const std::string& prefix);

}  // namespace dirmoe
