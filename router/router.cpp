// Router configuration validation and the factory that maps router.type to an implementation.
#include "router/router.h"

#include <cmath>
#include <sstream>

#include "router/dirichlet.h"
#include "router/dirmoe_router.h"
#include "router/probmoe_router.h"
#include "router/remoe_router.h"
#include "router/topk_router.h"
#include "runtime/core/error.h"

namespace dirmoe {
namespace {

void require(bool ok, const char* key, const std::string& what) {
  if (!ok) DIRMOE_FAIL(key, ": ", what);
}

template <class V>
std::string str(V v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

void validate_dirmoe(const RouterConfig& cfg, int E) {
  const DirMoEConfig& c = cfg.dirmoe;
  validate_schedule(c.tau, "moe.router.dirmoe.tau", 0.0, /*strict=*/true);
  require(std::isfinite(c.r_min) && c.r_min >= 0 && c.r_min <= 1, "moe.router.dirmoe.r_min",
          "must lie in [0, 1], got " + str(c.r_min));
  require(c.max_active >= 1, "moe.router.dirmoe.max_active",
          "must be >= 1 (at most this many experts run per token), got " + str(c.max_active));
  validate_schedule(c.lambda_q, "moe.router.dirmoe.lambda_q", 0.0, /*strict=*/true);
  require(std::isfinite(c.alpha_floor) && c.alpha_floor > 0, "moe.router.dirmoe.alpha_floor",
          "must be positive, got " + str(c.alpha_floor));
  validate_schedule(c.beta, "moe.router.dirmoe.beta", 0.0, /*strict=*/false);
  validate_schedule(c.recon_weight, "moe.router.dirmoe.recon_weight", 0.0, /*strict=*/false);
  validate_schedule(c.lambda_sparsity, "moe.router.dirmoe.lambda_sparsity", 0.0,
                    /*strict=*/false);
  require(c.sparsity_on == "sample" || c.sparsity_on == "expected",
          "moe.router.dirmoe.sparsity_on",
          "unknown count '" + c.sparsity_on + "' (available: sample, expected)");
  require(c.eval == "gate" || c.eval == "soft" || c.eval == "sample", "moe.router.dirmoe.eval",
          "unknown evaluation rule '" + c.eval + "' (available: gate, soft, sample)");
  require(c.gamma_sampler == "marsaglia_tsang" || c.gamma_sampler == "inverse_cdf",
          "moe.router.dirmoe.gamma_sampler",
          "unknown sampler '" + c.gamma_sampler + "' (available: marsaglia_tsang, inverse_cdf)");
  const DirMoEPriorConfig& p = c.prior;
  if (p.is_explicit()) {
    require(std::isfinite(p.a_hi) && p.a_hi > 0, "moe.router.dirmoe.prior.a_hi",
            "must be positive when the prior is given explicitly (a_hi, a_lo, lambda_p), got " +
                str(p.a_hi));
    require(std::isfinite(p.a_lo) && p.a_lo > 0, "moe.router.dirmoe.prior.a_lo",
            "must be positive when the prior is given explicitly (a_hi, a_lo, lambda_p), got " +
                str(p.a_lo));
    require(std::isfinite(p.lambda_p) && p.lambda_p > 0, "moe.router.dirmoe.prior.lambda_p",
            "must be positive when the prior is given explicitly (a_hi, a_lo, lambda_p), got " +
                str(p.lambda_p));
    return;
  }
  require(p.m > 0 && p.m < 1, "moe.router.dirmoe.prior.m",
          "target active mass must lie in (0, 1), got " + str(p.m));
  const double lo = prior_simpson_floor(E, cfg.k, p.m);
  require(p.h > lo && p.h < 1, "moe.router.dirmoe.prior.h",
          "target Simpson index must lie in (" + str(lo) + ", 1) for moe.num_experts = " + str(E) +
              ", moe.router.k = " + str(cfg.k) + ", prior.m = " + str(p.m) +
              " (1/E = " + str(1.0 / E) + " when m = k/E), got " + str(p.h));
}

void validate_probmoe(const RouterConfig& cfg, int E) {
  const ProbMoEConfig& c = cfg.probmoe;
  require(c.mode == "exact" || c.mode == "dynamic", "moe.router.probmoe.mode",
          "unknown mode '" + c.mode + "' (available: exact, dynamic)");
  if (c.mode != "dynamic") return;
  require(c.k_min >= 1, "moe.router.probmoe.k_min", "must be >= 1, got " + str(c.k_min));
  require(c.k_max <= E, "moe.router.probmoe.k_max",
          "must lie in [1, moe.num_experts = " + str(E) + "], got " + str(c.k_max));
  require(c.k_min <= c.k_max, "moe.router.probmoe.k_min",
          "must not exceed moe.router.probmoe.k_max = " + str(c.k_max) + ", got " + str(c.k_min));
}

void validate_remoe(const RouterConfig& cfg) {
  const ReMoEConfig& c = cfg.remoe;
  require(std::isfinite(c.lambda_init) && c.lambda_init > 0, "moe.router.remoe.lambda_init",
          "must be > 0 (lambda is only ever multiplied or divided), got " + str(c.lambda_init));
  const float l32 = static_cast<float>(c.lambda_init);
  require(std::isfinite(l32) && l32 > 0, "moe.router.remoe.lambda_init",
          "must be a positive fp32 value (lambda is kept in fp32), got " + str(c.lambda_init));
  require(std::isfinite(c.alpha) && c.alpha > 1, "moe.router.remoe.alpha",
          "must be > 1 (lambda is multiplied or divided by it once per step), got " + str(c.alpha));
  require(static_cast<float>(c.alpha) > 1.0f, "moe.router.remoe.alpha",
          "must stay > 1 in fp32, got " + str(c.alpha));
}

}  // namespace

void validate_router_config(const RouterConfig& cfg, int64_t hidden, int num_experts) {
  require(
      cfg.type == "topk" || cfg.type == "dirmoe" || cfg.type == "probmoe" || cfg.type == "remoe",
      "moe.router.type",
      "unknown router type '" + cfg.type + "' (available: topk, dirmoe, probmoe, remoe)");
  require(num_experts >= 1, "moe.num_experts", "must be >= 1, got " + str(num_experts));
  require(hidden >= 1, "model.hidden", "must be >= 1, got " + str(hidden));
  require(cfg.k >= 1 && cfg.k <= num_experts, "moe.router.k",
          "must lie in [1, moe.num_experts = " + str(num_experts) + "], got " + str(cfg.k));
  require(std::isfinite(cfg.aux_loss_coef) && cfg.aux_loss_coef >= 0, "moe.router.aux_loss_coef",
          "must be finite and >= 0, got " + str(cfg.aux_loss_coef));
  require(std::isfinite(cfg.z_loss_coef) && cfg.z_loss_coef >= 0, "moe.router.z_loss_coef",
          "must be finite and >= 0, got " + str(cfg.z_loss_coef));
  if (cfg.type == "dirmoe") validate_dirmoe(cfg, num_experts);
  if (cfg.type == "probmoe") validate_probmoe(cfg, num_experts);
  if (cfg.type == "remoe") validate_remoe(cfg);
}

template <class T>
std::unique_ptr<Router<T>> make_router(const RouterConfig& cfg, int64_t hidden, int num_experts,
                                       const std::string& prefix) {
  validate_router_config(cfg, hidden, num_experts);
  if (cfg.type == "topk") return std::make_unique<TopKRouter<T>>(cfg, hidden, num_experts, prefix);
  if (cfg.type == "dirmoe")
    return std::make_unique<DirMoERouter<T>>(cfg, hidden, num_experts, prefix);
  if (cfg.type == "probmoe")
    return std::make_unique<ProbMoERouter<T>>(cfg, hidden, num_experts, prefix);
  if (cfg.type == "remoe")
    return std::make_unique<ReMoERouter<T>>(cfg, hidden, num_experts, prefix);
  DIRMOE_FAIL("moe.router.type: unknown router type '", cfg.type, "'");
}

template std::unique_ptr<Router<float>> make_router<float>(const RouterConfig&, int64_t, int,
                                                           const std::string&);
template std::unique_ptr<Router<double>> make_router<double>(const RouterConfig&, int64_t, int,
                                                             const std::string&);

}  // namespace dirmoe
