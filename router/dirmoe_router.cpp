// DirMoE router forward/backward. The head GEMM and the decoder GEMMs go through the CPU op set;
// gates, Gamma draws, weights, the ELBO terms and the per-row chain rule are kernels/routing/
// dirmoe.h's per-token code (in double, the code the CUDA kernels run).
#include "router/dirmoe_router.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/ops.h"
#include "kernels/routing/dirmoe.h"
#include "router/noise.h"
#include "runtime/core/error.h"

namespace dirmoe {
template <class T>
DirMoERouter<T>::DirMoERouter(const RouterConfig& cfg, int64_t hidden, int num_experts,
                              const std::string& prefix)
    : cfg_(cfg), d_(hidden), E_(num_experts) {
  validate_router_config(cfg, hidden, num_experts);
  DIRMOE_CHECK(cfg.type == "dirmoe", "DirMoERouter built for router type '", cfg.type, "'");
  max_active_ = std::min(cfg.dirmoe.max_active, num_experts);
  const DirMoEPriorConfig& p = cfg.dirmoe.prior;
  if (p.is_explicit()) {
    prior_.a_hi = p.a_hi;
    prior_.a_lo = p.a_lo;
    prior_.lambda = p.lambda_p;
  } else {
    prior_ = calibrate_dirichlet_prior(num_experts, cfg.k, p.m, p.h);
  }
  weight_ = Parameter<T>(prefix + ".weight", Shape{3 * num_experts, hidden});
  decoder_ = Parameter<T>(prefix + ".decoder.weight", Shape{hidden, num_experts});
  decoder_bias_ = Parameter<T>(prefix + ".decoder.bias", Shape{hidden});
  decoder_bias_.decay = false;
  order_.resize(E_);
  row_.resize(E_);
  logz_.resize(E_);
  ap_.resize(E_);
  load_.assign(E_, 0);
  fraction_.assign(E_, 0.0);
  prob_sum_.assign(E_, 0.0);
}

template <class T>
routing::DirMoETokenParams<double> DirMoERouter<T>::token_params(const RouterContext& ctx,
                                                                 bool noisy, bool hard) const {
  const DirMoEConfig& c = cfg_.dirmoe;
  routing::DirMoETokenParams<double> p;
  p.E = E_;
  p.k = cfg_.k;
  p.max_active = max_active_;
  p.r_min = c.r_min;
  p.tau = tau_;
  p.lambda_q = lambda_q_;
  p.alpha_floor = c.alpha_floor;
  p.prior_a_hi = prior_.a_hi;
  p.prior_a_lo = prior_.a_lo;
  p.prior_lambda = prior_.lambda;
  p.noisy = noisy;
  p.hard = hard;
  p.inverse = c.gamma_sampler == "inverse_cdf";
  p.expected_count = c.sparsity_on == "expected";
  p.renormalize = cfg_.renormalize;
  p.gate_noise = RouterNoise(ctx, NoisePurpose::kGate).key();
  p.gamma_noise = RouterNoise(ctx, NoisePurpose::kGamma).key();
  return p;
}

template <class T>
routing::DirMoERow<double> DirMoERouter<T>::saved_row(int64_t t) {
  const int64_t te = t * E_;
  return {z_.data() + te,     a_hi_.data() + te, a_lo_.data() + te, alpha_.data() + te,
          dlogg_.data() + te, g_s_.data() + te,  r_.data() + te,    dkl_q_.data() + te,
          dkl_p_.data() + te, soft_.data() + te};
}

// NOTE: experts of a token are dispatched largest r first (ties: lower index), while r >= r_min,
// r > 0 and fewer than max_active are taken; the largest is always taken. Weights are r (or r
// renormalised over the dispatched set when router.renormalize); 1 - sum of dispatched r is the
// undispatched mass.
template <class T>
void DirMoERouter<T>::forward(const T* h, int64_t N, const RouterContext& ctx, Routing<T>& out) {
  DIRMOE_CHECK(N >= 0, "router ", weight_.name, ": negative token count ", N);
  DIRMOE_CHECK(N == 0 || h != nullptr, "router ", weight_.name, ": null input for ", N, " tokens");
  const DirMoEConfig& c = cfg_.dirmoe;
  const int E = E_;
  const int64_t d = d_;
  if (ctx.training) last_step_ = ctx.step;
  const int64_t step = last_step_;
  tau_ = c.tau.at(step);
  lambda_q_ = c.lambda_q.at(step);
  beta_ = c.beta.at(step);
  recon_w_ = c.recon_weight.at(step);
  lambda_s_ = c.lambda_sparsity.at(step);
  const bool noisy = ctx.training || c.eval == "sample";
  const bool hard = !ctx.training && c.eval == "gate";
  expected_count_ = c.sparsity_on == "expected";
  N_ = N;
  has_forward_ = true;
  differentiable_ = noisy;

  h_.grow(N * d);
  u_.grow(N * 3 * E);
  r_t_.grow(N * E);
  err_.grow(N * d);
  for (auto* v : {&z_, &a_hi_, &a_lo_, &alpha_, &dlogg_, &g_s_, &r_, &dkl_q_, &dkl_p_, &soft_})
    grow_vector(*v, N * E);
  grow_vector(sum_z_, N);
  grow_vector(kept_, N);
  std::copy(h, h + N * d, h_.data());
  if (N > 0) cpu::linear_forward(u_.data(), h, weight_.value.data(), N, d, 3 * E);

  const routing::DirMoETokenParams<double> params = token_params(ctx, noisy, hard);
  out.num_tokens = N;
  out.num_experts = E;
  out.offsets.assign(N + 1, 0);
  out.experts.resize(N * max_active_);
  out.weights.resize(N * max_active_);
  std::fill(load_.begin(), load_.end(), 0);
  std::fill(prob_sum_.begin(), prob_sum_.end(), 0.0);
  double undispatched = 0, kl_sum = 0, sp_sum = 0, sum_gates = 0, entropy = 0;
  int64_t near_binary = 0, open_gates = 0, no_open = 0, assigned = 0;

  for (int64_t t = 0; t < N; ++t) {
    const int64_t te = t * E;
    const routing::DirMoERow<double> row = saved_row(t);
    const routing::DirMoEToken<double> r = routing::dirmoe_token_forward<double, T>(
        params, u_.data() + t * 3 * E, t, row, r_t_.data() + te, out.experts.data() + assigned,
        out.weights.data() + assigned, prob_sum_.data(), &entropy, order_.data(), row_.data(),
        logz_.data(), ap_.data());
    DIRMOE_CHECK(r.bad_expert < 0, "router ", weight_.name, ": non-finite ",
                 r.bad_concentration ? "concentration pre-activations" : "logits", " at token ", t,
                 " (global ", ctx.global_token0 + t, "), expert ", r.bad_expert, ", layer ",
                 ctx.layer);
    sum_z_[t] = r.sum_z;
    kept_[t] = r.kept;
    undispatched += std::max(0.0, 1.0 - r.kept);
    for (int j = 0; j < r.num_dispatched; ++j) ++load_[out.experts[assigned + j]];
    assigned += r.num_dispatched;
    out.offsets[t + 1] = assigned;
    kl_sum += r.kl;
    sp_sum += r.sparsity;
    sum_gates += r.sum_gates;
    near_binary += r.near_binary;
    open_gates += r.open;
    no_open += r.open == 0;
  }
  out.experts.resize(assigned);
  out.weights.resize(assigned);
  offsets_ = out.offsets;
  experts_ = out.experts;

  // Reconstruction of the input from r: err = r V^T + b - h.
  double recon_sum = 0;
  if (N > 0) {
    cpu::linear_forward(err_.data(), r_t_.data(), decoder_.value.data(), N, E, d);
    const T* b = decoder_bias_.value.data();
    for (int64_t t = 0; t < N; ++t) {
      T* e = err_.data() + t * d;
      double sq = 0;
      for (int64_t j = 0; j < d; ++j) {
        const double v = static_cast<double>(e[j]) + static_cast<double>(b[j]) -
                         static_cast<double>(h[t * d + j]);
        e[j] = static_cast<T>(v);
        sq += v * v;
      }
      recon_sum += sq / static_cast<double>(d);
    }
  }

  const double inv_n = N > 0 ? 1.0 / static_cast<double>(N) : 0.0;
  const double kl = beta_ * kl_sum * inv_n, recon = recon_w_ * recon_sum * inv_n,
               sparsity = lambda_s_ * sp_sum * inv_n;
  // Switch load balancing on the gate logits, as in topk: coef * E * sum_i f_i P_i, f_i the share
  // of the dispatched (token, expert) pairs sent to i, P_i the mean softmax(l)_i. (Through z or r
  // the signal would vanish once the gates saturate at low temperature, and through z alone it
  // would pull the gate level against the sparsity term.)
  int dead = 0;
  double aux = 0;
  const double nnz = static_cast<double>(out.nnz());
  for (int e = 0; e < E; ++e) {
    dead += load_[e] == 0;
    fraction_[e] = nnz > 0 ? static_cast<double>(load_[e]) / nnz : 0.0;
    aux += fraction_[e] * prob_sum_[e] * inv_n;
  }
  stats_.aux_loss = cfg_.aux_loss_coef * E * aux;
  loss_ = kl + recon + sparsity + stats_.aux_loss;
  stats_.z_loss = 0;
  stats_.mean_active = static_cast<double>(out.nnz()) * inv_n;
  stats_.scalars = {{"target_k", static_cast<double>(cfg_.k)},
                    {"undispatched_mass", undispatched * inv_n},
                    {"kl", kl},
                    {"recon", recon},
                    {"sparsity", sparsity},
                    {"sum_gates", sum_gates * inv_n},
                    {"open_gates", static_cast<double>(open_gates) * inv_n},
                    {"no_open_gate", static_cast<double>(no_open) * inv_n},
                    {"tau", tau_},
                    {"lambda_q", lambda_q_},
                    {"gate_entropy", entropy * inv_n / E},
                    {"near_binary", static_cast<double>(near_binary) * inv_n / E},
                    {"dead_experts", static_cast<double>(dead)}};
}

template <class T>
void DirMoERouter<T>::backward(const T* dweights, double loss_scale, T* dh) {
  DIRMOE_CHECK(has_forward_, "router ", weight_.name, ": backward called before forward");
  DIRMOE_CHECK(differentiable_, "router ", weight_.name,
               ": backward after an evaluation forward with deterministic gates (eval: ",
               cfg_.dirmoe.eval, ")");
  const int64_t N = N_;
  if (N == 0) return;
  DIRMOE_CHECK(dweights != nullptr && dh != nullptr, "router ", weight_.name,
               ": null dweights or dh");
  const int E = E_;
  const int64_t d = d_;
  const double inv_n = 1.0 / static_cast<double>(N);
  du_.grow(N * 3 * E);
  dr_t_.grow(N * E);

  // Reconstruction: d/d(err) of recon_w * mean_t |err_t|^2 / d.
  const double rs = loss_scale * recon_w_ * 2.0 * inv_n / static_cast<double>(d);
  T* db = decoder_bias_.grad.data();
  for (int64_t t = 0; t < N; ++t) {
    T* e = err_.data() + t * d;
    for (int64_t j = 0; j < d; ++j) {
      e[j] = static_cast<T>(rs * static_cast<double>(e[j]));
      db[j] += e[j];
    }
  }
  cpu::linear_backward(dr_t_.data(), decoder_.grad.data(), err_.data(), r_t_.data(),
                       decoder_.value.data(), N, E, d);

  const routing::DirMoETokenParams<double> params = token_params(RouterContext{}, true, false);
  routing::DirMoEBackwardScales<double> scales;
  scales.ks = loss_scale * beta_ * inv_n;
  scales.ss = loss_scale * lambda_s_ * 2.0 * inv_n;
  scales.dprior = prior_.lambda * (prior_.a_hi - prior_.a_lo);
  scales.aux_scale = loss_scale * cfg_.aux_loss_coef * E * inv_n;
  for (int64_t t = 0; t < N; ++t) {
    double* dr = row_.data();
    for (int i = 0; i < E; ++i) dr[i] = static_cast<double>(dr_t_[t * E + i]);
    const int64_t a0 = offsets_[t], a1 = offsets_[t + 1];
    routing::dirmoe_token_backward<double, T, T>(
        params, scales, u_.data() + t * 3 * E, saved_row(t), sum_z_[t], kept_[t],
        experts_.data() + a0, dweights + a0, static_cast<int>(a1 - a0), fraction_.data(), dr,
        du_.data() + t * 3 * E);
  }
  cpu::linear_backward(dh, weight_.grad.data(), du_.data(), h_.data(), weight_.value.data(), N, d,
                       3 * E, /*accumulate_dx=*/true);
}

template class DirMoERouter<float>;
template class DirMoERouter<double>;

}  // namespace dirmoe
