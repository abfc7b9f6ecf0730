// The DirMoE router (DESIGN.md section 4): which experts fire comes from relaxed Bernoulli gates
// z = sigmoid((l + g) / tau), how much each contributes from theta ~ Dir(alpha_q) (normalised Gamma
// draws, implicit reparameterisation); weights r = z theta / sum(z theta). Trained with ELBO terms:
// reconstruction of the (stop-gradient) input from r, beta * KL(Dir(alpha_q) || Dir(alpha_p)) and
// lambda_s * (sum z - k)^2; plus (our addition, router.aux_loss_coef, 0 = off) the Switch
// load-balancing loss on the gate logits.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/routing/dirmoe.h"
#include "router/dirichlet.h"
#include "router/router.h"
#include "runtime/core/tensor.h"

namespace dirmoe {

template <class T>
class DirMoERouter final : public Router<T> {
 public:
  DirMoERouter(const RouterConfig& cfg, int64_t hidden, int num_experts, const std::string& prefix);

  std::string type() const override { return "dirmoe"; }
  // Training (and eval: sample) draws gate and Gamma noise keyed by (seed, step, layer, global
  // token, expert). Evaluation uses the last training step's schedules.
  void forward(const T* h, int64_t N, const RouterContext& ctx, Routing<T>& out) override;
  double loss() const override { return loss_; }
  void backward(const T* dweights, double loss_scale, T* dh) override;
  std::vector<Parameter<T>*> parameters() override { return {&weight_, &decoder_, &decoder_bias_}; }
  const RouterStats& stats() const override { return stats_; }

  Parameter<T>& weight() { return weight_; }
  Parameter<T>& decoder() { return decoder_; }
  Parameter<T>& decoder_bias() { return decoder_bias_; }
  const DirichletPrior& prior() const { return prior_; }
  // Per-token values of the last forward, [N,E] row-major.
  const std::vector<double>& gates() const { return z_; }
  const std::vector<double>& weights_r() const { return r_; }
  const std::vector<double>& alpha_q() const { return alpha_; }

 private:
  // The per-token code's view of the configuration and schedules of the last forward.
  routing::DirMoETokenParams<double> token_params(const RouterContext& ctx, bool noisy,
                                                  bool hard) const;
  routing::DirMoERow<double> saved_row(int64_t t);  // token t's saved rows

  RouterConfig cfg_;
  int64_t d_;
  int E_;
  int max_active_;
  DirichletPrior prior_;
  Parameter<T> weight_;        // [3E,d]: gate logits l, a_hi, a_lo pre-activations
  Parameter<T> decoder_;       // [d,E]: reconstruction decoder r -> h
  Parameter<T> decoder_bias_;  // [d]
  RouterStats stats_;
  double loss_ = 0;
  int64_t last_step_ = 0;

  // Saved by forward for backward (grow-only).
  int64_t N_ = 0;
  bool has_forward_ = false;
  bool differentiable_ = false;  // false after an evaluation forward with deterministic gates
  bool expected_count_ = false;  // sparsity penalty on sum_i sigmoid(l_i) (sparsity_on: expected)
  double tau_ = 1, lambda_q_ = 1, beta_ = 0, recon_w_ = 0, lambda_s_ = 0;
  Buffer<T> h_;                   // [N,d] copy of the input
  Buffer<T> u_;                   // [N,3E] head outputs
  Buffer<T> du_;                  // [N,3E] backward scratch
  Buffer<T> r_t_;                 // [N,E] r in T for the decoder GEMM
  Buffer<T> dr_t_;                // [N,E] backward: dL/dr from the reconstruction
  Buffer<T> err_;                 // [N,d] decoder output - h; backward: scaled error
  std::vector<double> z_;         // [N,E] gates
  std::vector<double> a_hi_;      // [N,E]
  std::vector<double> a_lo_;      // [N,E]
  std::vector<double> alpha_;     // [N,E] alpha_q
  std::vector<double> dlogg_;     // [N,E] d(log G)/d(alpha_q)
  std::vector<double> g_s_;       // [N,E] G / sum_j z_j G_j  (= r / z)
  std::vector<double> r_;         // [N,E]
  std::vector<double> dkl_q_;     // [N,E] dKL/dalpha_q
  std::vector<double> dkl_p_;     // [N,E] dKL/dalpha_p
  std::vector<double> soft_;      // [N,E] softmax of the gate logits (load balancing)
  std::vector<double> sum_z_;     // [N]
  std::vector<double> kept_;      // [N] dispatched mass sum_D r
  std::vector<int64_t> offsets_;  // [N+1] copy of the routing CSR
  std::vector<int32_t> experts_;  // [nnz]
  std::vector<int32_t> order_;    // [E] scratch
  std::vector<double> row_;       // [E] scratch
  std::vector<double> logz_;      // [E] scratch: log z
  std::vector<double> ap_;        // [E] scratch: prior concentrations
  std::vector<int64_t> load_;     // [E] tokens per expert of the last forward
  std::vector<double> fraction_;  // [E] share of the dispatched pairs per expert
  std::vector<double> prob_sum_;  // [E] sum over tokens of softmax(l)_i
};

}  // namespace dirmoe
