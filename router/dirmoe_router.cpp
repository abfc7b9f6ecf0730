// DirMoE router forward/backward. The head GEMM and the decoder GEMMs go through the CPU op set;
// gates, Gamma draws, weights, the ELBO terms and the per-row chain rule run in double.
#include "router/dirmoe_router.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/cpu/ops.h"
#include "router/gamma.h"
#include "router/noise.h"
#include "runtime/core/error.h"

namespace dirmoe {
namespace {

double softplus(double x) { return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x))); }

double sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double e = std::exp(x);
  return e / (1.0 + e);
}

double binary_entropy(double z) {
  double h = 0;
  if (z > 0) h -= z * std::log(z);
  if (z < 1) h -= (1 - z) * std::log1p(-z);
  return h;
}

}  // namespace

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
  const bool inverse = c.gamma_sampler == "inverse_cdf";
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

  const RouterNoise gate_noise(ctx, NoisePurpose::kGate);
  const RouterNoise gamma_noise(ctx, NoisePurpose::kGamma);
  out.num_tokens = N;
  out.num_experts = E;
  out.offsets.assign(N + 1, 0);
  out.experts.clear();
  out.weights.clear();
  std::fill(load_.begin(), load_.end(), 0);
  std::fill(prob_sum_.begin(), prob_sum_.end(), 0.0);
  double undispatched = 0, kl_sum = 0, sp_sum = 0, sum_gates = 0, entropy = 0;
  int64_t near_binary = 0, open_gates = 0, no_open = 0;

  for (int64_t t = 0; t < N; ++t) {
    const T* u = u_.data() + t * 3 * E;
    double* z = z_.data() + t * E;
    double* ahi = a_hi_.data() + t * E;
    double* alo = a_lo_.data() + t * E;
    double* alpha = alpha_.data() + t * E;
    double* dlogg = dlogg_.data() + t * E;
    double* gs = g_s_.data() + t * E;
    double* r = r_.data() + t * E;
    double* logw = row_.data();
    double* logz = logz_.data();
    int any_on = 0, best = 0;
    for (int i = 0; i < E; ++i) {
      const double l = static_cast<double>(u[i]);
      DIRMOE_CHECK(std::isfinite(l), "router ", weight_.name, ": non-finite logits at token ", t,
                   " (global ", ctx.global_token0 + t, ")");
      ahi[i] = softplus(static_cast<double>(u[E + i])) + c.alpha_floor;
      alo[i] = softplus(static_cast<double>(u[2 * E + i])) + c.alpha_floor;
      if (l > static_cast<double>(u[best])) best = i;
      if (hard) {
        z[i] = l >= 0 ? 1.0 : 0.0;
        any_on += l >= 0;
      } else {
        double x = l;
        if (noisy) {
          const double v = gate_noise.uniform(t, i);
          x += std::log(v) - std::log1p(-v);
        }
        x /= tau_;
        z[i] = sigmoid(x);
        logz[i] = -softplus(-x);
      }
    }
    if (hard) {
      if (any_on == 0) z[best] = 1.0;
      for (int i = 0; i < E; ++i) logz[i] = z[i] > 0 ? 0.0 : -INFINITY;
    }
    double s = 0;
    for (int i = 0; i < E; ++i) {
      alpha[i] = lambda_q_ * (z[i] * ahi[i] + (1 - z[i]) * alo[i]);
      s += z[i];
    }
    {
      const double lmax = static_cast<double>(u[best]);
      double acc = 0;
      for (int i = 0; i < E; ++i) acc += std::exp(static_cast<double>(u[i]) - lmax);
      for (int i = 0; i < E; ++i) {
        const double p = std::exp(static_cast<double>(u[i]) - lmax) / acc;
        soft_[t * E + i] = p;
        prob_sum_[i] += p;
      }
    }
    sum_z_[t] = s;
    if (noisy) {
      for (int i = 0; i < E; ++i) {
        auto draw = [&](uint32_t attempt) { return gamma_noise.block(t, i, attempt); };
        const double logg =
            inverse ? sample_log_gamma_inverse(alpha[i], draw) : sample_log_gamma(alpha[i], draw);
        dlogg[i] = gamma_dlogx_dalpha(alpha[i], logg);
        logw[i] = logz[i] + logg;
        gs[i] = logg;
      }
    } else {
      // Mean of the Dirichlet: theta = alpha / sum(alpha) (the normaliser cancels in r).
      for (int i = 0; i < E; ++i) {
        gs[i] = std::log(alpha[i]);
        logw[i] = logz[i] + gs[i];
        dlogg[i] = 0;
      }
    }
    double mx = -INFINITY;
    for (int i = 0; i < E; ++i) mx = std::max(mx, logw[i]);
    double acc = 0;
    for (int i = 0; i < E; ++i) acc += std::exp(logw[i] - mx);
    const double lse = mx + std::log(acc);
    for (int i = 0; i < E; ++i) {
      r[i] = std::exp(logw[i] - lse);
      gs[i] = std::exp(gs[i] - lse);
      r_t_[t * E + i] = static_cast<T>(r[i]);
    }

    // Dispatch.
    std::iota(order_.begin(), order_.end(), 0);
    std::sort(order_.begin(), order_.end(),
              [r](int32_t a, int32_t b) { return r[a] > r[b] || (r[a] == r[b] && a < b); });
    int n = 0;
    double kept = 0;
    while (n < max_active_ && (n == 0 || (r[order_[n]] > 0 && r[order_[n]] >= c.r_min)))
      kept += r[order_[n++]];
    kept_[t] = kept;
    undispatched += std::max(0.0, 1.0 - kept);
    for (int j = 0; j < n; ++j) {
      const int32_t e = order_[j];
      out.experts.push_back(e);
      out.weights.push_back(static_cast<T>(cfg_.renormalize ? r[e] / kept : r[e]));
      ++load_[e];
    }
    out.offsets[t + 1] = static_cast<int64_t>(out.experts.size());

    // KL and sparsity terms.
    for (int i = 0; i < E; ++i)
      ap_[i] = prior_.lambda * (z[i] * prior_.a_hi + (1 - z[i]) * prior_.a_lo);
    kl_sum += dirichlet_kl_grad(alpha, ap_.data(), E, dkl_q_.data() + t * E, dkl_p_.data() + t * E);
    if (expected_count_) {
      double ps = 0;
      for (int i = 0; i < E; ++i) ps += sigmoid(static_cast<double>(u[i]));
      sum_z_[t] = ps;  // the backward's count
      sp_sum += (ps - cfg_.k) * (ps - cfg_.k);
    } else {
      sp_sum += (s - cfg_.k) * (s - cfg_.k);
    }
    sum_gates += s;
    int open = 0;
    for (int i = 0; i < E; ++i) {
      entropy += binary_entropy(z[i]);
      near_binary += (z[i] < 0.05 || z[i] > 0.95);
      open += z[i] >= 0.5;
    }
    open_gates += open;
    no_open += open == 0;
  }
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

  const double ks = loss_scale * beta_ * inv_n;
  const double ss = loss_scale * lambda_s_ * 2.0 * inv_n;
  const double dprior = prior_.lambda * (prior_.a_hi - prior_.a_lo);
  const double aux_scale = loss_scale * cfg_.aux_loss_coef * E * inv_n;
  for (int64_t t = 0; t < N; ++t) {
    const double* z = z_.data() + t * E;
    const double* r = r_.data() + t * E;
    double* dr = row_.data();
    for (int i = 0; i < E; ++i) dr[i] = static_cast<double>(dr_t_[t * E + i]);
    const int64_t a0 = offsets_[t], a1 = offsets_[t + 1];
    if (cfg_.renormalize) {
      const double kept = kept_[t];
      double wdot = 0;
      for (int64_t a = a0; a < a1; ++a)
        wdot += static_cast<double>(dweights[a]) * r[experts_[a]] / kept;
      for (int64_t a = a0; a < a1; ++a)
        dr[experts_[a]] += (static_cast<double>(dweights[a]) - wdot) / kept;
    } else {
      for (int64_t a = a0; a < a1; ++a) dr[experts_[a]] += static_cast<double>(dweights[a]);
    }
    const double* soft = soft_.data() + t * E;
    double dot = 0, aux_dot = 0;
    for (int i = 0; i < E; ++i) {
      dot += r[i] * dr[i];
      aux_dot += soft[i] * fraction_[i];
    }
    const T* u = u_.data() + t * 3 * E;
    T* du = du_.data() + t * 3 * E;
    const double sp = ss * (sum_z_[t] - cfg_.k);
    for (int i = 0; i < E; ++i) {
      const int64_t ti = t * E + i;
      const double c = dr[i] - dot;
      const double dalpha = r[i] * c * dlogg_[ti] + ks * dkl_q_[ti];
      const double dz = g_s_[ti] * c + dalpha * lambda_q_ * (a_hi_[ti] - a_lo_[ti]) +
                        ks * dkl_p_[ti] * dprior + (expected_count_ ? 0.0 : sp);
      double dl = dz * z[i] * (1 - z[i]) / tau_ + aux_scale * soft[i] * (fraction_[i] - aux_dot);
      if (expected_count_) {
        const double p = sigmoid(static_cast<double>(u[i]));
        dl += sp * p * (1 - p);
      }
      du[i] = static_cast<T>(dl);
      du[E + i] =
          static_cast<T>(dalpha * lambda_q_ * z[i] * sigmoid(static_cast<double>(u[E + i])));
      du[2 * E + i] = static_cast<T>(dalpha * lambda_q_ * (1 - z[i]) *
                                     sigmoid(static_cast<double>(u[2 * E + i])));
    }
  }
  cpu::linear_backward(dh, weight_.grad.data(), du_.data(), h_.data(), weight_.value.data(), N, d,
                       3 * E, /*accumulate_dx=*/true);
}

template class DirMoERouter<float>;
template class DirMoERouter<double>;

}  // namespace dirmoe
