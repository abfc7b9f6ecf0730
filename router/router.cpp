// Router configuration validation and the factory that maps router.type to an implementation.
#include "router/router.h"

#include <cmath>

#include "router/topk_router.h"
#include "runtime/core/error.h"

namespace dirmoe {

void validate_router_config(const RouterConfig& cfg, int64_t hidden, int num_experts) {
  DIRMOE_CHECK(cfg.type == "topk", "router.type: unknown router type '", cfg.type,
               "' (supported: topk)");
  DIRMOE_CHECK(num_experts >= 1, "router: num_experts must be >= 1, got ", num_experts);
  DIRMOE_CHECK(hidden >= 1, "router: hidden size must be >= 1, got ", hidden);
  DIRMOE_CHECK(cfg.k >= 1 && cfg.k <= num_experts,
               "router.k must be in [1, num_experts=", num_experts, "], got ", cfg.k);
  DIRMOE_CHECK(std::isfinite(cfg.aux_loss_coef) && cfg.aux_loss_coef >= 0,
               "router.aux_loss_coef must be finite and >= 0, got ", cfg.aux_loss_coef);
  DIRMOE_CHECK(std::isfinite(cfg.z_loss_coef) && cfg.z_loss_coef >= 0,
               "router.z_loss_coef must be finite and >= 0, got ", cfg.z_loss_coef);
}

template <class T>
std::unique_ptr<Router<T>> make_router(const RouterConfig& cfg, int64_t hidden, int num_experts,
                                       const std::string& prefix) {
  validate_router_config(cfg, hidden, num_experts);
  if (cfg.type == "topk") return std::make_unique<TopKRouter<T>>(cfg, hidden, num_experts, prefix);
  DIRMOE_FAIL("router.type: unknown router type '", cfg.type, "'");
}

template std::unique_ptr<Router<float>> make_router<float>(const RouterConfig&, int64_t, int,
                                                           const std::string&);
template std::unique_ptr<Router<double>> make_router<double>(const RouterConfig&, int64_t, int,
                                                             const std::string&);

}  // namespace dirmoe
